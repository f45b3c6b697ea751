//! The agent on a broker across networks: a real mosquitto with a TLS listener only, client
//! certificates required, a password file and the ACL recipe of docs/security.md
//! (config/mosquitto/peercam.acl). Certificates are made at test time. Then each way the
//! connection can fail is logged once, naming the key to fix, while the agent stays up.
//! Runs only inside a loopback-only network namespace (scripts/in-loopback-netns).

mod common;

use common::tls::TestPki;
use common::viewer::{new_session_id, MqttEndpoint, Observer, TestViewer};
use common::{
    free_port, require_loopback_only_network, temp_dir, Agent, AgentOptions, BrokerMode, Mosquitto,
};
use rumqttc::v5::mqttbytes::v5::{Packet as V5Packet, PubAckReason};
use rumqttc::{TlsConfiguration, Transport};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const ACL: &str = include_str!("../config/mosquitto/peercam.acl");
const CAMERA_PASSWORD: &str = "camera-pw-7f3a";
const VIEWER_PASSWORD: &str = "viewer-pw-91c2";

/// A mosquitto password file for the camera (`cam1`) and a viewer (`alice`).
fn mosquitto_passwords(dir: &Path) -> PathBuf {
    let path = dir.join("mosquitto.passwd");
    for (i, (user, password)) in [("cam1", CAMERA_PASSWORD), ("alice", VIEWER_PASSWORD)]
        .into_iter()
        .enumerate()
    {
        let mut command = Command::new("mosquitto_passwd");
        if i == 0 {
            command.arg("-c");
        }
        let status = command
            .args(["-b"])
            .arg(&path)
            .args([user, password])
            .status()
            .expect("mosquitto_passwd (apt: mosquitto)");
        assert!(status.success());
    }
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    path
}

/// mosquitto with one TLS listener (no plain one), client certificates required, and
/// passwords; `extra` adds lines such as the ACL file.
fn tls_mosquitto(
    pki: &TestPki,
    server: &common::tls::Issued,
    dir: &Path,
    extra: &str,
) -> Mosquitto {
    let port = free_port();
    let passwords = mosquitto_passwords(dir);
    Mosquitto::start_with(
        port,
        &format!(
            "listener {port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\npassword_file {}\nallow_anonymous false\n{extra}",
            pki.ca.display(),
            server.cert.display(),
            server.key.display(),
            passwords.display(),
        ),
    )
}

/// A private file holding `password`, as `mqtt.password_file` wants it.
fn password_file(dir: &Path, name: &str, password: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("{password}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// The `[mqtt]` lines of a camera on a TLS broker.
fn mqtt_lines(
    password_file: &Path,
    ca_file: Option<&Path>,
    client: &common::tls::Issued,
) -> String {
    let mut lines = format!(
        "username = \"cam1\"\npassword_file = {:?}\ncert_file = {:?}\nkey_file = {:?}\n",
        password_file.display().to_string(),
        client.cert.display().to_string(),
        client.key.display().to_string(),
    );
    if let Some(ca) = ca_file {
        lines += &format!("ca_file = {:?}\n", ca.display().to_string());
    }
    lines
}

fn agent_on(url: String, mqtt_extra: String) -> Agent {
    Agent::start_unconnected(AgentOptions {
        broker: BrokerMode::Url(url),
        mqtt_extra,
        // Repeated failures are logged at debug level: show them, to count retries.
        env: vec![(
            "RUST_LOG".into(),
            "info,peercam::signaling::mqtt=debug".into(),
        )],
        ..Default::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_camera_and_a_viewer_stream_through_mosquitto_over_mutual_tls_with_passwords_and_the_acl_recipe(
) {
    require_loopback_only_network();
    assert!(
        include_str!("../docs/security.md").contains(ACL),
        "docs/security.md shows config/mosquitto/peercam.acl as it is"
    );
    let dir = temp_dir("mqtt-tls");
    let pki = TestPki::new(&dir);
    let acl = dir.join("peercam.acl");
    std::fs::write(&acl, ACL).unwrap();
    let mosquitto = tls_mosquitto(
        &pki,
        &pki.server,
        &dir,
        &format!("acl_file {}\n", acl.display()),
    );
    let port = mosquitto.port;

    let camera_cert = pki.client("cam1");
    let secret = password_file(&dir, "camera-password", CAMERA_PASSWORD);
    let started = Instant::now();
    let agent = Agent::start(AgentOptions {
        broker: BrokerMode::Url(format!("mqtts://localhost:{port}")),
        mqtt_extra: mqtt_lines(&secret, Some(&pki.ca), &camera_cert),
        ..Default::default()
    });
    let connected_after = started.elapsed();

    // Nothing passes in the clear: a plain MQTT client gets no CONNACK.
    let (_plain, mut plain_loop) =
        rumqttc::AsyncClient::new(rumqttc::MqttOptions::new("plain", "127.0.0.1", port), 8);
    let plain = tokio::time::timeout(Duration::from_secs(5), plain_loop.poll()).await;
    assert!(
        !matches!(
            plain,
            Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))))
        ),
        "a plain client connected: {plain:?}"
    );

    let viewer_cert = pki.client("alice");
    let viewer_endpoint = MqttEndpoint {
        host: "localhost".into(),
        tls: Some(pki.client_config(&viewer_cert)),
        credentials: Some(("alice".into(), VIEWER_PASSWORD.into())),
        sid_is_client_id: true,
        ..MqttEndpoint::plain(port)
    };
    let viewer =
        TestViewer::start_on(&viewer_endpoint, &agent.device, &new_session_id(), None).await;
    let stats = viewer.wait_for_frames(60, Duration::from_secs(30)).await;
    assert_eq!((stats.width, stats.height), (640, 480));

    // The ACL: a viewer that publishes a status (or on another session) is refused by the
    // broker (MQTT 5 says so in the PUBACK), and the camera's status stays its own.
    let status = format!("peercam/{}/status", agent.device);
    let mut options = rumqttc::v5::MqttOptions::new(new_session_id(), "localhost", port);
    options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        pki.client_config(&viewer_cert),
    )));
    options.set_credentials("alice", VIEWER_PASSWORD);
    let (forger, mut forger_loop) = rumqttc::v5::AsyncClient::new(options, 8);
    let forged = r#"{"type":"status","state":"offline","device":"cam1"}"#;
    let other_session = format!("peercam/{}/session/{}/to-viewer", agent.device, viewer.sid);
    for (topic, retain, payload) in [
        (&status, true, forged),
        (&other_session, false, r#"{"type":"hangup"}"#),
    ] {
        forger
            .publish(
                topic,
                rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                retain,
                payload,
            )
            .await
            .unwrap();
    }
    let mut refusals = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while refusals.len() < 2 && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(5), forger_loop.poll()).await {
            Ok(Ok(rumqttc::v5::Event::Incoming(V5Packet::PubAck(ack)))) => {
                refusals.push(ack.reason)
            }
            Ok(Ok(_)) => {}
            other => panic!("the forging viewer's connection failed: {other:?}"),
        }
    }
    assert_eq!(
        refusals,
        vec![PubAckReason::NotAuthorized, PubAckReason::NotAuthorized]
    );
    let reader = Observer::start_on(
        &MqttEndpoint {
            sid_is_client_id: false,
            ..viewer_endpoint.clone()
        },
        std::slice::from_ref(&status),
    )
    .await;
    let retained = reader
        .wait_for(&status, Duration::from_secs(5), |_| true)
        .await;
    assert_eq!(retained["state"], "online", "{retained}");
    assert_eq!(agent.count_log("retained status was overwritten"), 0);
    let before = viewer.stats().frames_decoded;
    let stats = viewer
        .wait_for_frames(before + 30, Duration::from_secs(10))
        .await;
    assert_eq!(
        stats
            .camera_messages
            .iter()
            .filter(|m| m["type"] == "hangup")
            .count(),
        0
    );

    for secret in [CAMERA_PASSWORD, VIEWER_PASSWORD] {
        assert!(
            agent.log_lines().iter().all(|line| !line.contains(secret)),
            "a password in the log"
        );
    }
    println!(
        "figures: mqtts + mTLS + password_file connected in {connected_after:?}; viewer decoded {} frames over TLS",
        stats.frames_decoded
    );
}

/// Waits for `line` in the agent's log, then for a few more retries: the line is logged
/// once as a warning, the retries at debug level, and the agent keeps running.
fn logged_once_while_retrying(agent: &mut Agent, line: &str) -> String {
    agent.wait_for_log(line, Duration::from_secs(15));
    // Backoff 250 ms, 500 ms, 1 s, 2 s: at least two more attempts within 4 s.
    let deadline = Instant::now() + Duration::from_secs(8);
    while Instant::now() < deadline {
        let retries = agent
            .log_lines()
            .iter()
            .filter(|l| l.contains("DEBUG") && l.contains(line))
            .count();
        if retries >= 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let lines = agent.log_lines();
    let warnings: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("WARN") && l.contains(line))
        .collect();
    let retries = lines
        .iter()
        .filter(|l| l.contains("DEBUG") && l.contains(line))
        .count();
    assert_eq!(warnings.len(), 1, "{line:?} once:\n{}", lines.join("\n"));
    assert!(retries >= 2, "retries of {line:?}:\n{}", lines.join("\n"));
    assert!(agent.is_running(), "the agent stays up");
    assert_eq!(agent.count_log("MQTT connected"), 0);
    for secret in [CAMERA_PASSWORD, "wrong-password"] {
        assert!(
            lines.iter().all(|l| !l.contains(secret)),
            "a password in the log"
        );
    }
    let warning = warnings[0];
    // The line as an admin reads it: from the key on.
    warning[warning.find("mqtt.").unwrap()..].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_tls_or_credential_failure_is_logged_once_naming_its_key_and_the_agent_stays_up() {
    require_loopback_only_network();
    let dir = temp_dir("mqtt-tls-failures");
    let pki = TestPki::new(&dir);
    let mosquitto = tls_mosquitto(&pki, &pki.server, &dir, "");
    let expired = tls_mosquitto(&pki, &pki.expired_server, &dir, "");
    let camera_cert = pki.client("cam1");
    let rogue_cert = pki.untrusted_client("rogue");
    let secret = password_file(&dir, "camera-password", CAMERA_PASSWORD);
    let wrong = password_file(&dir, "wrong-password", "wrong-password");
    let url = |host: &str, port: u16| format!("mqtts://{host}:{port}");
    let (port, expired_port) = (mosquitto.port, expired.port);

    // All at once: each agent retries on its own.
    let ca = Some(pki.ca.as_path());
    let agent = |host: &str, port: u16, ca: Option<&Path>, password: &Path, client| {
        agent_on(url(host, port), mqtt_lines(password, ca, client))
    };
    let mut unknown_ca = agent("localhost", port, None, &secret, &camera_cert);
    let mut wrong_name = agent("127.0.0.1", port, ca, &secret, &camera_cert);
    let mut expired_cert = agent("localhost", expired_port, ca, &secret, &camera_cert);
    let mut rejected = agent("localhost", port, ca, &secret, &rogue_cert);
    let mut bad_password = agent("localhost", port, ca, &wrong, &camera_cert);

    let cases = [
        (&mut unknown_ca, "mqtt.ca_file: the broker's certificate is signed by an unknown CA".to_owned()),
        (&mut wrong_name, "mqtt.broker: the broker's certificate is not valid for the host name \"127.0.0.1\"".to_owned()),
        (&mut expired_cert, format!("mqtt.broker: the certificate of the broker at localhost:{expired_port} expired")),
        (&mut rejected, format!("mqtt.cert_file: the broker at localhost:{port} rejected the client certificate")),
        (&mut bad_password, format!("mqtt.password_file: the broker at localhost:{port} refused the username \"cam1\" or its password")),
    ];
    for (agent, line) in cases {
        let logged = logged_once_while_retrying(agent, &line);
        println!("figures: failure line: {logged}");
    }

    // Fix the CA file and restart: it connects.
    let config = std::fs::read_to_string(&unknown_ca.config_path).unwrap();
    let fixed = config.replacen(
        "username = \"cam1\"",
        &format!(
            "username = \"cam1\"\nca_file = {:?}",
            pki.ca.display().to_string()
        ),
        1,
    );
    std::fs::write(&unknown_ca.config_path, fixed).unwrap();
    let fixed = unknown_ca.restart();
    fixed.wait_for_log("MQTT connected", Duration::from_secs(15));
    drop((wrong_name, expired_cert, rejected, bad_password));
}
