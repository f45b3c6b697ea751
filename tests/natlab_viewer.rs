//! The NAT lab matrix (docs/nat.md) with the Rust test viewer (tests/common/viewer.rs:
//! webrtc-rs and openh264) in place of the page in Chromium. Same cases, same coturn on the
//! wan, same agent behind the camera's router as tests/browser/natlab.test.mjs. The case
//! table has one source, tests/browser/natlab-cases.mjs, read here through `node`. For each
//! case the test asserts decoded frames and the selected candidate pair, taken from the
//! viewer's own webrtc-rs stats. In a no-path case it asserts instead the camera's signed
//! hangup within `connect_timeout_s` and the freed slot in the status. NATLAB_CASE picks
//! the case.
//!
//! Where it runs: tests/natlab/run starts this binary inside tests/natlab/lab as
//! `lab-exec view <binary>`. So the whole test process lives in the viewer's namespace,
//! behind the viewer's router, where the page's Chromium runs. The viewer's sockets gather
//! and probe from there only. coturn and the agent start through `lab-exec wan` and
//! `lab-exec cam`, as in the Node test: a named namespace can be entered from any other.
//! Two other designs were rejected:
//! - re-executing this binary in the viewer's namespace would need a channel to bring the
//!   results back;
//! - `setns` moves one thread only, but webrtc-rs binds its sockets on tokio's worker
//!   threads.
//!
//! It must never run anywhere but the lab's viewer namespace. With NATLAB_CASE unset it
//! prints why and passes: scripts/test's `cargo test` runs every test binary in the
//! loopback-only namespace. With NATLAB_CASE set it refuses any namespace but `view`.
//! Checks that concern only the camera are left to the Chromium run: the vanished viewer
//! freed after a blip, and coturn refusing an expired credential.

mod common;

use common::viewer::{
    ice_servers_from_status, new_session_id, selected_pair_in, AccessKey, MqttEndpoint, Observer,
    PeerNetwork, TestViewer,
};
use common::{collect_output, private_file, temp_dir, Agent, AgentOptions, BrokerMode};
use serde_json::Value;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const DEVICE: &str = "cam1";

/// One case of the matrix as natlab-cases.mjs gives it. `rustViewer` overrides are
/// already applied.
struct LabCase {
    name: String,
    spec: Value,
    wan: String,
    turn_secret: String,
}

impl LabCase {
    /// The case NATLAB_CASE names, read from natlab-cases.mjs by node.
    fn load(name: &str) -> LabCase {
        let script = "import { CASES, WAN, TURN_SECRET } from './tests/browser/natlab-cases.mjs';
            const c = CASES[process.env.NATLAB_CASE];
            console.log(JSON.stringify(c ? { wan: WAN, turnSecret: TURN_SECRET, spec: { ...c, ...c.rustViewer } } : null));";
        let output = Command::new("node")
            .args(["--input-type=module", "-e", script])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("NATLAB_CASE", name)
            .output()
            .expect("node runs (it reads tests/browser/natlab-cases.mjs)");
        assert!(output.status.success(), "node: {output:?}");
        let read: Value = serde_json::from_slice(&output.stdout).unwrap();
        assert!(
            !read.is_null(),
            "NATLAB_CASE={name} names no case in natlab-cases.mjs"
        );
        LabCase {
            name: name.to_owned(),
            spec: read["spec"].clone(),
            wan: read["wan"].as_str().unwrap().to_owned(),
            turn_secret: read["turnSecret"].as_str().unwrap().to_owned(),
        }
    }

    fn no_path(&self) -> bool {
        self.spec["noPath"] == true
    }

    /// The address the viewer reaches the camera's broker on: the camera itself on its LAN,
    /// else its router, which forwards 1883.
    fn camera_host(&self) -> &'static str {
        if self.spec["view"] == "lan" {
            "10.1.0.2"
        } else {
            "198.51.100.10"
        }
    }
}

/// `lab-exec NS program args...`: runs in one of the lab's namespaces.
fn lab_exec(namespace: &str, program: &str) -> Command {
    let mut command = Command::new("lab-exec");
    command.arg(namespace).arg(program);
    command
}

/// Refuses to run outside the lab's viewer namespace: the viewer's ICE would gather and
/// probe wherever this process is.
fn require_viewer_namespace() {
    assert!(
        std::env::var_os("PEERCAM_LAB").is_some(),
        "NATLAB_CASE is set, but this is not inside tests/natlab/lab: run tests/natlab/run"
    );
    let identify = Command::new("ip").args(["netns", "identify"]).output();
    let namespace = identify
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    assert_eq!(
        namespace, "view",
        "the Rust viewer must run in the lab's viewer namespace (lab-exec view), not {namespace:?}"
    );
}

/// coturn on the wan, as natlab.test.mjs starts it: STUN for everyone, TURN over UDP and
/// TCP on 3478 for credentials minted from the shared secret. Killed on drop.
struct Coturn {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Coturn {
    fn start(case: &LabCase) -> Coturn {
        let dir = temp_dir("lab-coturn");
        let mut child = lab_exec("wan", "turnserver")
            .arg("-n")
            .arg(format!("--pidfile={}", dir.join("pid").display()))
            .arg(format!("--userdb={}", dir.join("turndb").display()))
            .arg(format!("--listening-ip={}", case.wan))
            .arg(format!("--relay-ip={}", case.wan))
            .args(["--listening-port=3478", "--use-auth-secret"])
            .arg(format!("--static-auth-secret={}", case.turn_secret))
            .args(["--realm=peercam-lab", "--no-tls", "--no-dtls", "--no-cli"])
            .args(["--fingerprint", "--log-file=stdout", "--simple-log"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start coturn (turnserver) through lab-exec wan");
        let log = collect_output(&mut child, "coturn");
        let mut coturn = Coturn { child, log };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = coturn.log.lock().unwrap().join("\n").to_lowercase();
            if log.contains("listener opened on") || log.contains("total general servers") {
                return coturn;
            }
            let exited = coturn.child.try_wait().unwrap();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "coturn not listening ({exited:?}):\n{log}"
            );
            drop(log);
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The agent in the camera's namespace, configured as natlab.test.mjs does: the embedded
/// broker on 1883 (the camera's router forwards it) open to anonymous clients, access keys
/// for viewers, the case's ICE servers (TURN with the secret in a file), all interfaces.
fn start_agent(case: &LabCase, connect_timeout_s: u64) -> Agent {
    let dir = temp_dir("lab-agent");
    let turn_secret = private_file("lab-turn", &format!("{}\n", case.turn_secret));
    let ice_servers: String = case.spec["iceServers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|server| {
            let urls = server["urls"].as_str().unwrap();
            let secret = if server["secret"] == true {
                format!("secret_file = {:?}\n", turn_secret.display().to_string())
            } else {
                String::new()
            };
            format!("[[webrtc.ice_servers]]\nurls = [{urls:?}]\n{secret}")
        })
        .collect();
    // The case's own [webrtc] lines (udp_port, public_ips) go before the server tables.
    let webrtc_lines = case.spec["webrtc"].as_str().unwrap_or_default();
    Agent::start(AgentOptions {
        device: DEVICE.into(),
        connect_timeout_s,
        broker: BrokerMode::EmbeddedOn(1883),
        // The lab's "internet" reaches the camera's broker; who may watch is the keys' job.
        broker_extra: "allow_anonymous = true".into(),
        auth_section: format!(
            "[auth]\nmode = \"keys\"\nsecret_file = {:?}\n",
            dir.join("secret").display().to_string()
        ),
        listen_host: "10.1.0.2".into(),
        udp_addrs: vec!["0.0.0.0:0".into()],
        webrtc_extra: format!("{webrtc_lines}\n{ice_servers}"),
        command_prefix: vec!["lab-exec".into(), "cam".into()],
        ..Default::default()
    })
}

fn median(values: &[i64]) -> Option<i64> {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    sorted.get(sorted.len() / 2).copied()
}

fn viewers_in(status: &Value) -> Option<u64> {
    status["viewers"].as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_rust_viewer_across_the_lab_case() {
    let Some(name) = std::env::var("NATLAB_CASE").ok().filter(|n| !n.is_empty()) else {
        eprintln!("natlab_viewer: skipped, NATLAB_CASE is unset (run through tests/natlab/run)");
        return;
    };
    require_viewer_namespace();
    let case = LabCase::load(&name);
    let title = case.spec["title"].as_str().unwrap_or_default().to_owned();
    eprintln!("natlab_viewer: case {title}, the Rust test viewer");

    let _coturn = Coturn::start(&case);
    // A case that must not connect waits the whole timeout out: a short one keeps the
    // matrix quick. What is asserted is the hangup within it, whatever its length.
    let connect_timeout_s = if case.no_path() { 5 } else { 15 };
    let agent = start_agent(&case, connect_timeout_s);
    let access = AccessKey::from_json(&agent.access("lab", "1h"));
    let endpoint = MqttEndpoint {
        host: case.camera_host().into(),
        // The page's keep-alive (mqtt.js's default): the broker waits 90 s before it
        // publishes the viewer's last will (its hangup), so a blip does not end the session.
        keep_alive: Duration::from_secs(60),
        ..MqttEndpoint::plain(1883)
    };

    // Like the page: the ICE servers come from the camera's retained status, with TURN
    // credentials the camera minted ("<expiry>:<device>"), never the shared secret.
    let status_topic = format!("peercam/{DEVICE}/status");
    let observer = Observer::start_on(&endpoint, std::slice::from_ref(&status_topic)).await;
    let status = observer
        .wait_for(&status_topic, Duration::from_secs(10), |s| {
            s["state"] == "online"
        })
        .await;
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let ice_servers = ice_servers_from_status(&status);
    for server in ice_servers.iter().filter(|s| !s.username.is_empty()) {
        let expiry = server.username.strip_suffix(&format!(":{DEVICE}"));
        let expiry: u64 = expiry.and_then(|e| e.parse().ok()).unwrap_or(0);
        assert!(expiry > now_s, "a minted TURN username: {server:?}");
        assert_ne!(
            server.credential, case.turn_secret,
            "the secret is never announced"
        );
    }

    let viewer = TestViewer::start_in(
        &endpoint,
        DEVICE,
        &new_session_id(),
        Some(access.clone()),
        &PeerNetwork {
            ice_servers,
            udp_addrs: vec!["0.0.0.0:0".to_owned()],
        },
    )
    .await;

    if case.no_path() {
        no_path_ends_with_a_hangup_and_a_free_slot(&case, &agent, &observer, &viewer, &access)
            .await;
        return;
    }
    plays_over_the_expected_pair(&case, &agent, &viewer).await;
    viewer.hangup().await;
}

/// No path between viewer and camera: the camera hangs up (signed) within
/// `connect_timeout_s` of the offer, and its status counts the slot as free again.
async fn no_path_ends_with_a_hangup_and_a_free_slot(
    case: &LabCase,
    agent: &Agent,
    observer: &Observer,
    viewer: &TestViewer,
    access: &AccessKey,
) {
    let status_topic = format!("peercam/{DEVICE}/status");
    let is_hangup = |m: &&Value| m["type"] == "hangup";
    let stats = viewer
        .wait_until("the camera's hangup", Duration::from_secs(20), |s| {
            s.camera_messages.iter().any(|m| is_hangup(&m))
        })
        .await;
    let hung_up_after = viewer.offer_sent().elapsed();
    let hangup = stats.camera_messages.iter().find(is_hangup).unwrap();
    let reason = hangup["reason"].as_str().unwrap_or_default();
    assert!(
        reason == "connect-timeout" || reason == "ice-failed",
        "the camera gave up on the path: {hangup}"
    );
    assert_eq!(
        hangup["mac"].as_str(),
        Some(access.mac(&format!("hangup\n{}", viewer.sid)).as_str()),
        "the camera's hangup is signed with the viewer's key"
    );
    // 5 s connect timeout; the margin is for the MQTT hop and the 50 ms polling.
    assert!(
        hung_up_after <= Duration::from_millis(6500),
        "the camera hung up {hung_up_after:?} after the offer, within connect_timeout_s = 5"
    );
    assert_eq!(stats.frames_decoded, 0);
    assert!(
        !stats.connection_states.iter().any(|s| s == "connected"),
        "the viewer never connected: {:?}",
        stats.connection_states
    );
    // The camera took the session (it answered) before it gave up on it. The status counts
    // connected viewers only, so it never counted this one; it must still say 0.
    assert!(
        stats.camera_messages.iter().any(|m| m["type"] == "answer"),
        "the camera answered the offer: {:?}",
        stats.camera_messages
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while observer.latest(&status_topic).and_then(|s| viewers_in(&s)) != Some(0) {
        assert!(
            Instant::now() < deadline,
            "the status still counts the session: {:?}",
            observer.latest(&status_topic)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        agent.count_log("session ended"),
        1,
        "{:#?}",
        agent.log_lines()
    );
    let why = case.spec["why"]
        .as_str()
        .map(|w| format!(" ({w})"))
        .unwrap_or_default();
    println!(
        "figures (rust viewer): case {}: no path{why}: camera hung up ({reason}) {} ms after the offer, viewers back to 0",
        case.name,
        hung_up_after.as_millis()
    );
}

/// A path exists: frames decode, and the pair the viewer's stats say ICE selected is the
/// one the case expects. With a blip, the same session plays again after the restore.
async fn plays_over_the_expected_pair(case: &LabCase, agent: &Agent, viewer: &TestViewer) {
    let stats = viewer.wait_for_frames(60, Duration::from_secs(20)).await;
    assert!(
        stats.distinct_pictures > 1,
        "the picture changes: {stats:#?}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let pair = loop {
        let report = viewer.stats_report().await;
        if let Some(pair) = selected_pair_in(&report) {
            break pair;
        }
        assert!(
            Instant::now() < deadline,
            "no selected pair in the viewer's stats: {report:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Stamp latency over two seconds of steady playing.
    let from = viewer.stats().latencies_ms.len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let latency_p50 = median(&viewer.stats().latencies_ms[from..]);
    let first_frame = stats.first_frame_after_offer.unwrap();
    let relay = pair
        .relay_protocol
        .as_ref()
        .map(|p| format!(", relay over {p}"))
        .unwrap_or_default();
    println!(
        "figures (rust viewer): case {}: pair {}/{} (camera at {}, {}{relay}), offer → first frame {} ms, stamp latency p50 {} ms",
        case.name,
        pair.local,
        pair.remote,
        pair.remote_address.as_deref().unwrap_or("?"),
        pair.protocol,
        first_frame.as_millis(),
        latency_p50.map_or("?".to_owned(), |l| l.to_string()),
    );
    assert!(latency_p50.is_some(), "stamps were read: {stats:#?}");

    if let Some(expected) = case.spec["pair"].as_array() {
        assert_eq!(
            [pair.local.as_str(), pair.remote.as_str()],
            [expected[0].as_str().unwrap(), expected[1].as_str().unwrap()],
            "selected pair (viewer's local / camera's remote)"
        );
    }
    if let Some(alternatives) = case.spec["pairs"].as_array() {
        let selected = [pair.local.as_str(), pair.remote.as_str()];
        assert!(
            alternatives
                .iter()
                .any(|expected| expected[0] == selected[0] && expected[1] == selected[1]),
            "selected pair {selected:?}, expected one of {alternatives:?}"
        );
    }
    if let Some(remote) = case.spec["remote"].as_str() {
        assert_eq!(pair.remote, remote, "the camera's candidate: {pair:?}");
    }
    if let Some(address) = case.spec["remoteAddress"].as_str() {
        // A peer-reflexive candidate has no stats entry, so no address to compare.
        if pair.remote != "prflx" {
            assert_eq!(pair.remote_address.as_deref(), Some(address), "{pair:?}");
        }
    }
    if let Some(relay) = case.spec["relay"].as_str() {
        assert!(
            pair.local == "relay" || pair.remote == "relay",
            "a relay pair: {pair:?}"
        );
        if pair.local == "relay" {
            assert_eq!(pair.relay_protocol.as_deref(), Some(relay), "{pair:?}");
        }
    }
    if let Some(blip_ms) = case.spec["blipMs"].as_u64() {
        plays_again_after_a_blip(case, agent, viewer, blip_ms).await;
    }
}

/// Drops everything between the viewer and the rest of the world for `blip_ms` (as
/// natlab.test.mjs does), then lets it through: the same session must play on.
async fn plays_again_after_a_blip(
    case: &LabCase,
    agent: &Agent,
    viewer: &TestViewer,
    blip_ms: u64,
) {
    let block = |op: &str| {
        let mut command = lab_exec("rview", "iptables");
        command.args([op, "FORWARD"]);
        if op == "-I" {
            command.arg("1");
        }
        let status = command.args(["-j", "DROP"]).status().unwrap();
        assert!(status.success(), "iptables {op} in rview");
    };
    block("-I");
    tokio::time::sleep(Duration::from_millis(blip_ms)).await;
    let frozen = viewer.stats().frames_decoded;
    block("-D");
    let restored_at = Instant::now();
    let stats = viewer
        .wait_until(
            "30 new frames after the blip",
            Duration::from_secs(30),
            |s| s.frames_decoded >= frozen + 30,
        )
        .await;
    let playing_again = restored_at.elapsed();
    println!(
        "figures (rust viewer): case {}: after a {blip_ms} ms blip, 30 new frames {} ms after the restore (viewer states {:?})",
        case.name,
        playing_again.as_millis(),
        stats.connection_states
    );
    assert!(
        !stats.camera_messages.iter().any(|m| m["type"] == "hangup"),
        "the camera kept the session: {:?}",
        stats.camera_messages
    );
    assert_eq!(
        agent.count_log("session ended"),
        0,
        "the same session carried on"
    );
}
