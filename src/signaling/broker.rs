//! The embedded MQTT broker (rumqttd), so a camera works on a LAN with nothing else
//! installed. rumqttd serves plain TCP (`broker.listen`) and checks every login through its
//! auth hook against [`Gate`]; the WebSocket and TLS doors are relays in front of it
//! (`relay`). Packets are capped at the protocol's `MAX_PACKET_BYTES`. It must never start
//! half-way silently: a port it cannot take is a clear startup error.

use crate::health::Heartbeat;
use crate::signaling::broker_users::Gate;
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("embedded broker cannot listen on {addr} ({key}): {source}")]
    Bind {
        addr: SocketAddr,
        key: &'static str,
        source: std::io::Error,
    },
    #[error("embedded broker did not start: {0}")]
    Start(String),
}

fn ensure_free(addr: SocketAddr, key: &'static str) -> Result<(), BrokerError> {
    // rumqttd reports bind failures only in its own log; check first for a clear error.
    TcpListener::bind(addr)
        .map(drop)
        .map_err(|source| BrokerError::Bind { addr, key, source })
}

/// Whether a TCP socket in this network namespace listens on `addr`'s port, from
/// `/proc/self/net/tcp` (IPv4) or `tcp6` (visible under `ProcSubset=pid` too); `None`
/// when the table cannot be read.
fn is_listening(addr: SocketAddr) -> Option<bool> {
    let table = if addr.is_ipv4() {
        "/proc/self/net/tcp"
    } else {
        "/proc/self/net/tcp6"
    };
    let text = std::fs::read_to_string(table).ok()?;
    Some(lists_listener(&text, addr.port()))
}

/// Whether a `/proc/net/tcp`-format table has a socket in state LISTEN (0A) on `port`.
fn lists_listener(table: &str, port: u16) -> bool {
    table.lines().skip(1).any(|line| {
        let mut fields = line.split_whitespace();
        let local = fields.nth(1);
        let state = fields.nth(1);
        let local_port = local
            .and_then(|local| local.rsplit_once(':'))
            .and_then(|(_, hex)| u16::from_str_radix(hex, 16).ok());
        local_port == Some(port) && state == Some("0A")
    })
}

fn server(
    name: &str,
    listen: SocketAddr,
    gate: Option<Arc<Gate>>,
    max_packet_bytes: usize,
) -> rumqttd::ServerSettings {
    // rumqttd calls the hook on its listener's one thread: argon2 runs elsewhere.
    let external_auth: Option<rumqttd::AuthHandler> = gate.map(|gate| {
        Arc::new(move |_client_id, username, password| {
            let check = Arc::clone(&gate).check_async(username, password);
            Box::pin(check) as std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>
        }) as rumqttd::AuthHandler
    });
    rumqttd::ServerSettings {
        name: name.to_owned(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections: rumqttd::ConnectionSettings {
            connection_timeout_ms: 10_000,
            // Checked against each packet's length before its body is read: a larger
            // packet closes the connection that sent it, and no one else's.
            max_payload_size: max_packet_bytes,
            max_inflight_count: 256,
            auth: None,
            external_auth,
            dynamic_filters: true,
        },
    }
}

/// Starts the broker on its own threads and returns once it accepts TCP connections.
/// With a `gate`, every connection must log in. `running` is held by the broker's thread
/// for as long as the broker runs. `max_packet_bytes` caps every packet a client sends:
/// [`crate::signaling::protocol::MAX_PACKET_BYTES`] for signaling alone, more when snapshots go to MQTT.
pub fn start(
    listen: SocketAddr,
    gate: Option<Arc<Gate>>,
    running: Option<Heartbeat>,
    max_packet_bytes: usize,
) -> Result<(), BrokerError> {
    ensure_free(listen, "broker.listen")?;
    let users = gate.is_some();
    let config = rumqttd::Config {
        id: 0,
        router: rumqttd::RouterConfig {
            max_connections: 1024,
            max_outgoing_packet_count: 200,
            // rumqttd keeps what it routes in a log per filter, for subscribers that lag.
            // Signaling is read as it comes, so a small window does: with the usual
            // 10 x 1 MiB, the camera's one filter for every viewer's messages would grow
            // to 11 MiB and stay there (the soak, tests/soak.rs, holds RSS to +5 MB).
            max_segment_size: 256 * 1024,
            max_segment_count: 2,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([(
            "tcp".to_owned(),
            server("v4-tcp", listen, gate, max_packet_bytes),
        )])),
        v5: None,
        ws: None,
        cluster: None,
        console: None,
        bridge: None,
        prometheus: None,
        metrics: None,
    };
    std::thread::Builder::new()
        .name("mqtt-broker".to_owned())
        .spawn(move || {
            let _running = running;
            let mut broker = rumqttd::Broker::new(config);
            if let Err(err) = broker.start() {
                tracing::error!("embedded broker stopped: {err}");
            }
        })
        .map_err(|e| BrokerError::Start(e.to_string()))?;
    // Ready once the kernel lists its listening socket. Not probed by binding the port
    // ourselves: a probe holding the port at the instant rumqttd binds makes rumqttd's
    // listener fail (EADDRINUSE), and the broker thread end. Nor by connecting: the broker
    // would log a failed MQTT handshake.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let listening = is_listening(listen).unwrap_or_else(|| {
            // No table to read: give rumqttd a moment; the agent's client retries anyway.
            std::thread::sleep(Duration::from_millis(200));
            true
        });
        if listening {
            tracing::info!(%listen, users, "embedded MQTT broker listening");
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(BrokerError::Start(format!(
        "it did not take {listen} within 5 s"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_is_found_by_port_and_state() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:075B 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 0100007F:9C40 0100007F:075B 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1
";
        assert!(lists_listener(table, 1883));
        // 0x9C40 = 40000 is only a connected socket's port.
        assert!(!lists_listener(table, 40000));
        assert!(!lists_listener(table, 8883));
        assert!(!lists_listener("garbage\nno fields here", 1883));
    }

    #[test]
    fn the_kernel_lists_a_real_listener() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        assert_eq!(is_listening(addr), Some(true));
        drop(listener);
        assert_eq!(is_listening(addr), Some(false));
    }
}
