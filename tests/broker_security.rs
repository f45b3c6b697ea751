//! The embedded broker with users and TLS, against the real agent: anonymous and
//! wrong-password logins are refused, the right password works and a viewer logged in with
//! it watches; MQTT over TLS on broker.tls_listen presents the certificate `peercam cert`
//! wrote (re-read on SIGHUP), and a client that never finishes its handshake holds up no
//! one; a second agent reaches the broker over wss:// and is watched. Secrets stay out of
//! the log. Certificates and hashes are made by the peercam binary during the test.

mod common;

use common::viewer::TestViewer;
use common::{require_loopback_only_network, temp_dir, Agent, AgentOptions};
use rumqttc::{ConnectReturnCode, ConnectionError, Event, MqttOptions, Packet, Transport};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

const PASSWORD: &str = "correct horse battery staple";

/// `peercam passwd USER` with the password on stdin: the `[broker.users]` line.
fn passwd(user: &str, password: &str) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_peercam"))
        .args(["passwd", user])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let line = String::from_utf8(output.stdout).unwrap();
    assert!(
        line.starts_with(&format!("{user} = \"$argon2id$v=19$")),
        "{line}"
    );
    assert!(!line.contains(password));
    line
}

/// `peercam cert --host 127.0.0.1` into `dir`: (certificate, key).
fn cert(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let output = Command::new(env!("CARGO_BIN_EXE_peercam"))
        .args(["cert", "--host", "127.0.0.1", "--host", "localhost"])
        .arg("--cert")
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the key is the owner's only");
    (cert, key)
}

/// Connects once; `Ok` on a successful CONNACK, else what the client saw.
async fn connect(
    port: u16,
    login: Option<(&str, &str)>,
    transport: Option<Transport>,
) -> Result<(), String> {
    let mut options = MqttOptions::new(
        format!("probe-{:08x}", rand::random::<u32>()),
        "127.0.0.1",
        port,
    );
    options.set_keep_alive(Duration::from_secs(5));
    if let Some((user, password)) = login {
        options.set_credentials(user, password);
    }
    if let Some(transport) = transport {
        options.set_transport(transport);
    }
    let (_client, mut eventloop) = rumqttc::AsyncClient::new(options, 10);
    let outcome = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack)))
                    if ack.code == ConnectReturnCode::Success =>
                {
                    return Ok(())
                }
                Ok(Event::Incoming(Packet::ConnAck(ack))) => return Err(format!("{:?}", ack.code)),
                Ok(_) => {}
                Err(ConnectionError::ConnectionRefused(code)) => return Err(format!("{code:?}")),
                Err(err) => return Err(err.to_string()),
            }
        }
    })
    .await;
    outcome.unwrap_or_else(|_| Err("no answer within 10 s".into()))
}

fn users_section(line: &str) -> String {
    format!("[broker.users]\n{line}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_users_get_in_and_a_logged_in_viewer_watches() {
    require_loopback_only_network();
    let line = passwd("viewer", PASSWORD);
    // The agent's own connection logs in with its internal credential (Agent waits for it).
    let agent = Agent::start(AgentOptions {
        extra_sections: users_section(&line),
        ..Default::default()
    });
    let port = agent.mqtt_port;

    let anonymous = connect(port, None, None).await.unwrap_err();
    assert_eq!(anonymous, "NotAuthorized", "anonymous CONNECT");
    let wrong = connect(port, Some(("viewer", "battery staple")), None)
        .await
        .unwrap_err();
    assert_eq!(wrong, "NotAuthorized", "wrong password");
    let unknown = connect(port, Some(("mallory", PASSWORD)), None)
        .await
        .unwrap_err();
    assert_eq!(unknown, "NotAuthorized", "unknown user");
    connect(port, Some(("viewer", PASSWORD)), None)
        .await
        .expect("the right password gets in");

    let viewer = TestViewer::start_logged_in(port, &agent.device, ("viewer", PASSWORD)).await;
    let stats = viewer.wait_for_frames(60, Duration::from_secs(20)).await;
    assert!(stats.frames_decoded >= 60, "{stats:?}");
    viewer.hangup().await;

    let log = agent.log_lines().join("\n");
    assert!(!log.contains(PASSWORD), "a password in the log:\n{log}");
    assert!(!log.contains("$argon2"), "a hash in the log:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mqtt_over_tls_presents_the_peercam_certificate_and_a_stalled_handshake_blocks_no_one() {
    require_loopback_only_network();
    let dir = temp_dir("broker-tls");
    let (cert_file, key_file) = cert(&dir);
    std::fs::copy(&cert_file, dir.join("cert.pem.old")).unwrap();
    let tls_port = common::free_port();
    let line = passwd("viewer", PASSWORD);
    let agent = Agent::start(AgentOptions {
        broker_extra: format!("tls_listen = \"127.0.0.1:{tls_port}\""),
        extra_sections: format!(
            "[tls]\ncert_file = {:?}\nkey_file = {:?}\n{}",
            cert_file.display().to_string(),
            key_file.display().to_string(),
            users_section(&line)
        ),
        ..Default::default()
    });
    common::wait_for_port(tls_port, Duration::from_secs(5));

    // A client that connects and never says hello.
    let _stalled = std::net::TcpStream::connect(("127.0.0.1", tls_port)).unwrap();

    let trusting = |roots_pem: &Path| {
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for der in rustls_pki_types::CertificateDer::pem_file_iter(roots_pem).unwrap() {
            roots.add(der.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(Arc::new(config)))
    };
    let started = std::time::Instant::now();
    connect(
        tls_port,
        Some(("viewer", PASSWORD)),
        Some(trusting(&cert_file)),
    )
    .await
    .expect("MQTT over TLS with the right password");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the stalled client held up the listener"
    );
    let refused = connect(tls_port, None, Some(trusting(&cert_file)))
        .await
        .unwrap_err();
    assert_eq!(refused, "NotAuthorized", "TLS does not replace a login");

    // A client that trusts another certificate refuses this one.
    let other = temp_dir("broker-tls-other");
    let (other_cert, _) = cert(&other);
    let untrusted = connect(
        tls_port,
        Some(("viewer", PASSWORD)),
        Some(trusting(&other_cert)),
    )
    .await
    .unwrap_err();
    assert!(
        untrusted.to_lowercase().contains("certificate"),
        "{untrusted}"
    );

    // SIGHUP re-reads the files: the other certificate takes over for new connections.
    std::fs::copy(&other_cert, &cert_file).unwrap();
    std::fs::copy(other.join("key.pem"), &key_file).unwrap();
    agent.signal("HUP");
    agent.wait_for_log("TLS certificate re-read", Duration::from_secs(5));
    connect(
        tls_port,
        Some(("viewer", PASSWORD)),
        Some(trusting(&other_cert)),
    )
    .await
    .expect("the reloaded certificate");
    let stale = connect(
        tls_port,
        Some(("viewer", PASSWORD)),
        Some(trusting(&dir.join("cert.pem.old"))),
    )
    .await;
    assert!(stale.is_err(), "the old certificate is gone");
    drop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_camera_reaches_its_broker_over_a_secure_websocket() {
    require_loopback_only_network();
    let dir = temp_dir("broker-wss");
    let (cert_file, key_file) = cert(&dir);
    // The broker: an agent whose embedded broker's WebSocket listener speaks WSS.
    let broker = Agent::start(AgentOptions {
        extra_sections: format!(
            "[tls]\ncert_file = {:?}\nkey_file = {:?}\n",
            cert_file.display().to_string(),
            key_file.display().to_string()
        ),
        ..Default::default()
    });
    common::wait_for_port(broker.ws_port, Duration::from_secs(5));
    // The camera: a second agent that knows that broker only as wss://, trusting its
    // self-signed certificate through mqtt.ca_file.
    let camera = Agent::start(AgentOptions {
        device: "cam2".into(),
        broker: common::BrokerMode::Url(format!("wss://localhost:{}", broker.ws_port)),
        mqtt_extra: format!("ca_file = {:?}", cert_file.display().to_string()),
        ..Default::default()
    });
    camera.wait_for_log("MQTT connected", Duration::from_secs(10));
    // A viewer on the broker's plain listener watches the camera that came in over WSS.
    let viewer = TestViewer::start(broker.mqtt_port, "cam2").await;
    let stats = viewer.wait_for_frames(60, Duration::from_secs(20)).await;
    println!(
        "figures: camera over wss:// → viewer decoded {} frames",
        stats.frames_decoded
    );
    // Without the CA the failure is named as over mqtts://, and the agent stays up.
    let untrusting = Agent::start_unconnected(AgentOptions {
        device: "cam3".into(),
        broker: common::BrokerMode::Url(format!("wss://localhost:{}", broker.ws_port)),
        ..Default::default()
    });
    untrusting.wait_for_log(
        "mqtt.ca_file: the broker's certificate is signed by an unknown CA",
        Duration::from_secs(10),
    );
}
