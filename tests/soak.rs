//! Soak: many viewer sessions against one agent and its embedded broker, then proof that
//! they left nothing behind (RSS and open descriptors back near a warmed-up baseline, and
//! the retained status counting no viewer). Real agent binary, real webrtc-rs viewers that
//! decode, a quarter of them killed (a child process, SIGKILL) without a hangup so that
//! only ICE can tell the camera. Loopback-only namespace.
//!
//! CI runs the short form. The full form (issue 14: 2,000 sessions, 500 vanishing) is
//! `PEERCAM_SOAK_SESSIONS=2000 scripts/in-loopback-netns cargo test --test soak`.

mod common;

use common::viewer::{new_session_id, MqttEndpoint, Observer, TestViewer};
use common::{require_loopback_only_network, Agent, AgentOptions};
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Sessions in the CI form; `PEERCAM_SOAK_SESSIONS` sets another number.
const CI_SESSIONS: usize = 300;
/// Sessions between two footprint readings during the soak.
const ROUND: usize = 100;
/// Viewers on the go at once: keeps the wall time down without needing many cores.
const CONCURRENT_VIEWERS: usize = 4;
/// About one second of video at the soak's 15 fps.
const FRAMES_PER_VISIT: u64 = 15;
/// How long after the last session the footprint is read: the agent hands freed heap back
/// to the system 5 s after its last session task ends (session::trim_memory_once_idle).
const IDLE_SETTLE: Duration = Duration::from_secs(7);
/// How far RSS and descriptors may stay above the baseline once every session is gone.
const RSS_SLACK_BYTES: i64 = 5 * 1024 * 1024;
const FD_SLACK: i64 = 10;

/// Set (to "PORT DEVICE") in the child process that plays a vanishing viewer.
const VANISHING_VIEWER_ENV: &str = "PEERCAM_SOAK_VANISHING_VIEWER";
/// What the vanishing viewer prints once it has decoded its second of video.
const VANISHING_VIEWER_READY: &str = "vanishing-viewer: decoding";

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// VmRSS of a process, in bytes.
fn rss_bytes(pid: u32) -> i64 {
    let kib =
        common::proc_status_kib(&pid.to_string(), "VmRSS").expect("VmRSS in /proc/PID/status");
    kib as i64 * 1024
}

/// Open file descriptors of a process.
fn open_fds(pid: u32) -> i64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count() as i64
}

struct Footprint {
    rss: i64,
    fds: i64,
}

impl Footprint {
    fn of(pid: u32) -> Footprint {
        Footprint {
            rss: rss_bytes(pid),
            fds: open_fds(pid),
        }
    }
}

fn mib(bytes: i64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// A viewer that connects, decodes about a second of video and hangs up.
async fn visit(port: u16, device: &str) {
    let viewer = TestViewer::start(port, device).await;
    viewer
        .wait_for_frames(FRAMES_PER_VISIT, Duration::from_secs(30))
        .await;
    viewer.leave().await;
}

/// A viewer in a child process (this test binary, running [`vanishing_viewer`]) that
/// decodes about a second of video and is then killed: no hangup, no last will, no DTLS
/// close; its UDP port just goes silent.
async fn vanish(port: u16, device: &str) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "vanishing_viewer",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(VANISHING_VIEWER_ENV, format!("{port} {device}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start a vanishing viewer");
    let stdout = child.stdout.take().unwrap();
    let ready = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|line| line.contains(VANISHING_VIEWER_READY))
    })
    .await
    .unwrap();
    let _ = child.kill();
    let output = child.wait_with_output().unwrap();
    assert!(
        ready,
        "the vanishing viewer never decoded: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The vanishing viewer's body; it does nothing unless the soak started it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vanishing_viewer() {
    let Ok(spec) = std::env::var(VANISHING_VIEWER_ENV) else {
        return;
    };
    let (port, device) = spec.split_once(' ').unwrap();
    let endpoint = MqttEndpoint {
        hangup_as_last_will: false,
        ..MqttEndpoint::plain(port.parse().unwrap())
    };
    let viewer = TestViewer::start_on(&endpoint, device, &new_session_id(), None).await;
    viewer
        .wait_for_frames(FRAMES_PER_VISIT, Duration::from_secs(30))
        .await;
    println!("{VANISHING_VIEWER_READY}");
    // Held until the parent kills this process.
    std::future::pending::<()>().await;
}

/// Runs `sessions` sessions, `CONCURRENT_VIEWERS` at a time; every fourth vanishes.
/// Returns how many vanished.
async fn run_sessions(port: u16, device: &str, sessions: usize) -> usize {
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..CONCURRENT_VIEWERS {
        let (next, device) = (Arc::clone(&next), device.to_owned());
        workers.spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= sessions {
                    break;
                }
                if index % 4 == 3 {
                    vanish(port, &device).await;
                } else {
                    visit(port, &device).await;
                }
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        done.unwrap();
    }
    sessions / 4
}

/// Waits until the retained status counts no viewer, as a newcomer reads it.
async fn wait_for_no_viewers(port: u16, device: &str, timeout: Duration) {
    let status = format!("peercam/{device}/status");
    let reader = Observer::start(port, std::slice::from_ref(&status)).await;
    let deadline = Instant::now() + timeout;
    loop {
        let latest = reader.latest(&status);
        if latest
            .as_ref()
            .is_some_and(|v| v["state"] == "online" && v["viewers"] == 0)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the status still counts viewers after {timeout:?}: {latest:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `PEERCAM_SOAK_AGENT_WRAPPER`, a command the agent runs under to find what grows, e.g.
/// "heaptrack -o /tmp/soak" (the figures are then the wrapper's) or "env MALLOC_ARENA_MAX=1".
fn agent_wrapper() -> Vec<String> {
    std::env::var("PEERCAM_SOAK_AGENT_WRAPPER")
        .map(|wrapper| wrapper.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

fn soak_agent() -> Agent {
    Agent::start(AgentOptions {
        width: 320,
        height: 240,
        fps: 15,
        keyframe_interval_s: 1,
        // Vanished viewers hold their slot until ICE gives up on them (about 15 s).
        max_viewers: 32,
        webrtc_extra: "max_pending = 8\noffers_per_s = 20\noffer_burst = 20".into(),
        command_prefix: agent_wrapper(),
        ..Default::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sessions_leave_no_trace() {
    require_loopback_only_network();
    let sessions = env_count("PEERCAM_SOAK_SESSIONS", CI_SESSIONS);
    let agent = soak_agent();
    let (port, device, pid) = (agent.mqtt_port, agent.device.clone(), agent.pid());

    // Warm-up: the buffers, allocator arenas and high-water mark of a first round (with
    // vanished viewers lingering until ICE gives up on them, as they will all along) are
    // not growth.
    let warm_up = ROUND;
    let mut vanished = run_sessions(port, &device, warm_up).await;
    wait_for_no_viewers(port, &device, Duration::from_secs(60)).await;
    tokio::time::sleep(IDLE_SETTLE).await;
    let baseline = Footprint::of(pid);

    let started = Instant::now();
    // In rounds, to show the trend: growth that levels off is a high-water mark, growth
    // that keeps on is a leak.
    let mut done = 0;
    while done < sessions {
        let round = ROUND.min(sessions - done);
        vanished += run_sessions(port, &device, round).await;
        done += round;
        println!(
            "after {done} sessions: RSS {:.1} MiB, {} fds",
            mib(rss_bytes(pid)),
            open_fds(pid)
        );
    }
    let ran_for = started.elapsed();
    wait_for_no_viewers(port, &device, Duration::from_secs(60)).await;
    let drained_after = started.elapsed();
    tokio::time::sleep(IDLE_SETTLE).await;
    let after = Footprint::of(pid);

    let hung_up = warm_up + sessions - vanished;
    println!(
        "figures: {sessions} sessions ({} vanished) after {warm_up} warm-up, {CONCURRENT_VIEWERS} at a time, \
         in {:.0} s (no viewer left after {:.0} s); RSS {:.1} -> {:.1} MiB ({:+.2} MiB); fds {} -> {} ({:+})",
        sessions / 4,
        ran_for.as_secs_f64(),
        drained_after.as_secs_f64(),
        mib(baseline.rss),
        mib(after.rss),
        mib(after.rss - baseline.rss),
        baseline.fds,
        after.fds,
        after.fds - baseline.fds,
    );
    // Every session ended the way its viewer left: a hangup, or ICE giving up.
    assert_eq!(agent.count_log("reason=\"viewer-hangup\""), hung_up);
    assert_eq!(agent.count_log("reason=\"ice-failed\""), vanished);
    assert!(
        after.rss - baseline.rss <= RSS_SLACK_BYTES,
        "RSS grew by {:.2} MiB",
        mib(after.rss - baseline.rss)
    );
    assert!(
        after.fds - baseline.fds <= FD_SLACK,
        "{} more open descriptors",
        after.fds - baseline.fds
    );
}

/// One session id's whole signaling life, without media: a client connects as the viewer
/// of `sid`, subscribes to its answers, sends an offer the camera refuses, reads the
/// refusal, hangs up and disconnects. Every per-session topic, filter and client id the
/// broker sees for a viewer is touched.
async fn signaling_only_session(port: u16, device: &str, sid: &str) {
    let to_camera = format!("peercam/{device}/session/{sid}/to-camera");
    let to_viewer = format!("peercam/{device}/session/{sid}/to-viewer");
    let mut options = MqttOptions::new(format!("viewer-{sid}"), "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(5));
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    let life = async {
        loop {
            match eventloop.poll().await.expect("broker connection") {
                Event::Incoming(Packet::ConnAck(_)) => {
                    client
                        .subscribe(&to_viewer, QoS::AtLeastOnce)
                        .await
                        .unwrap();
                }
                Event::Incoming(Packet::SubAck(_)) => {
                    let offer = r#"{"type":"offer","sdp":"v=0"}"#;
                    client
                        .publish(&to_camera, QoS::AtLeastOnce, false, offer)
                        .await
                        .unwrap();
                }
                Event::Incoming(Packet::Publish(reply)) => {
                    assert!(String::from_utf8_lossy(&reply.payload).contains("error"));
                    let hangup = r#"{"type":"hangup"}"#;
                    client
                        .publish(&to_camera, QoS::AtLeastOnce, false, hangup)
                        .await
                        .unwrap();
                    client.disconnect().await.unwrap();
                }
                Event::Outgoing(Outgoing::Disconnect) => return,
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), life)
        .await
        .unwrap_or_else(|_| panic!("session {sid}: no refusal within 20 s"));
}

async fn churn_session_ids(port: u16, device: &str, count: usize) {
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (next, device) = (Arc::clone(&next), device.to_owned());
        workers.spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < count {
                signaling_only_session(port, &device, &new_session_id()).await;
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        done.unwrap();
    }
}

/// Session ids that come and go must not pile up in the embedded broker: rumqttd kept a
/// filter, its log, a topic cache entry and the client's metrics for every one, forever
/// (vendor/README.md). `PEERCAM_SOAK_SIDS` sets how many (the issue measured 10,000);
/// `PEERCAM_SOAK_AGENT_WRAPPER` as for the soak.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn session_ids_do_not_pile_up_in_the_broker() {
    require_loopback_only_network();
    let count = env_count("PEERCAM_SOAK_SIDS", 3000);
    let agent = Agent::start(AgentOptions {
        width: 320,
        height: 240,
        fps: 5,
        webrtc_extra: "offers_per_s = 100\noffer_burst = 100".into(),
        command_prefix: agent_wrapper(),
        ..Default::default()
    });
    let (port, device, pid) = (agent.mqtt_port, agent.device.clone(), agent.pid());
    churn_session_ids(port, &device, 500).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let baseline = Footprint::of(pid);
    let started = Instant::now();
    churn_session_ids(port, &device, count).await;
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = Footprint::of(pid);
    let growth = after.rss - baseline.rss;
    println!(
        "figures: {count} session ids in {:.0} s; RSS {:.1} -> {:.1} MiB ({:+.2} MiB, {:+.0} B per id); fds {} -> {}",
        took.as_secs_f64(),
        mib(baseline.rss),
        mib(after.rss),
        mib(growth),
        growth as f64 / count as f64,
        baseline.fds,
        after.fds,
    );
    assert!(
        growth <= RSS_SLACK_BYTES,
        "RSS grew by {:.2} MiB",
        mib(growth)
    );
}
