//! Doors to the embedded broker besides its own TCP listener: MQTT over WebSocket (on
//! `broker.ws_listen`, and at `/mqtt` on the page's own port) and MQTT over TLS
//! (`broker.tls_listen`), plain or TLS as `[tls]` says. Each connection is relayed byte for
//! byte to the broker's TCP listener, which authenticates it like any other client.
//! It must never parse, alter or authenticate MQTT itself.

use crate::health::{self, Heartbeat};
use crate::listener::{Conn, Incoming};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// Where the page's server offers MQTT over WebSocket.
pub const MQTT_PATH: &str = "/mqtt";
/// The largest WebSocket message taken from a client: room for a few of the broker's
/// largest packets framed into one message.
const MAX_MESSAGE: usize = 4 * crate::signaling::protocol::MAX_PACKET_BYTES;

async fn upgrade(State(broker): State<SocketAddr>, ws: WebSocketUpgrade) -> Response {
    ws.protocols(["mqtt"])
        .max_message_size(MAX_MESSAGE)
        .on_upgrade(move |socket| relay_websocket(socket, broker))
}

/// `/mqtt`, for the page's own server.
pub fn mqtt_route(broker: SocketAddr) -> Router {
    Router::new()
        .route(MQTT_PATH, get(upgrade))
        .with_state(broker)
}

/// Every path, for the broker's own WebSocket listener (clients pick their own path).
pub fn websocket_app(broker: SocketAddr) -> Router {
    Router::new().fallback(upgrade).with_state(broker)
}

async fn connect(broker: SocketAddr) -> Option<TcpStream> {
    match TcpStream::connect(broker).await {
        Ok(stream) => {
            let _ = stream.set_nodelay(true);
            Some(stream)
        }
        Err(err) => {
            crate::warn_throttled!(
                "cannot reach the embedded broker at {broker} to relay a client: {err}"
            );
            None
        }
    }
}

/// MQTT over WebSocket is a byte stream cut into binary messages (MQTT 3.1.1 §6).
async fn relay_websocket(mut ws: WebSocket, broker: SocketAddr) {
    let Some(mut tcp) = connect(broker).await else {
        return;
    };
    let (mut from_broker, mut to_broker) = tcp.split();
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            message = ws.recv() => match message {
                Some(Ok(Message::Binary(data))) => {
                    if to_broker.write_all(&data).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                // Text is not MQTT; close, as the specification asks.
                Some(Ok(Message::Text(_) | Message::Close(_))) | Some(Err(_)) | None => break,
            },
            read = from_broker.read(&mut buffer) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if ws.send(Message::Binary(Bytes::copy_from_slice(&buffer[..n]))).await.is_err() {
                        break;
                    }
                }
            },
        }
    }
    let _ = ws.send(Message::Close(None)).await;
}

/// Serves the broker's WebSocket listener until `stop`, with the page server's limits.
pub async fn serve_websocket(
    incoming: Incoming,
    broker: SocketAddr,
    header_timeout: Duration,
    heartbeat: Heartbeat,
    stop: CancellationToken,
) {
    let app = crate::http::with_limits_and_security_headers(websocket_app(broker));
    crate::http::serve_connections(incoming, app, header_timeout, heartbeat, stop).await;
}

/// Relays each MQTT-over-TLS connection to the broker until `stop`.
pub async fn serve_tls(
    mut incoming: Incoming,
    broker: SocketAddr,
    heartbeat: Heartbeat,
    stop: CancellationToken,
) {
    let mut beats = tokio::time::interval(health::BEAT_INTERVAL);
    loop {
        let conn = tokio::select! {
            _ = stop.cancelled() => break,
            _ = beats.tick() => {
                heartbeat.beat();
                continue;
            }
            next = incoming.next() => match next {
                Some((conn, _)) => conn,
                None => break,
            },
        };
        tokio::spawn(relay_stream(conn, broker));
    }
}

async fn relay_stream(mut conn: Conn, broker: SocketAddr) {
    if let Some(mut tcp) = connect(broker).await {
        let _ = tokio::io::copy_bidirectional(&mut conn, &mut tcp).await;
    }
}
