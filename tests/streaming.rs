//! End-to-end streaming tests: the real agent binary, a real broker (embedded rumqttd or
//! mosquitto), and webrtc-rs test viewers that decode every frame. Loopback-only namespace.

mod common;

use common::viewer::{encoded_per_second, Observer, TestViewer};
use common::{require_loopback_only_network, Agent, AgentOptions, BrokerMode, Mosquitto};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

fn status_topic(device: &str) -> String {
    format!("peercam/{device}/status")
}

fn median(values: &[i64]) -> i64 {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    sorted.get(sorted.len() / 2).copied().unwrap_or(-1)
}

/// One viewer through the whole documented lifecycle; returns the viewer's figures.
async fn one_viewer_lifecycle(agent: &Agent) {
    let status = status_topic(&agent.device);
    let observer = Observer::start(agent.mqtt_port, std::slice::from_ref(&status)).await;
    let online = observer
        .wait_for(&status, Duration::from_secs(5), |v| v["state"] == "online")
        .await;
    assert_eq!(online["protocol"], 1);
    assert_eq!(online["video"]["codec"], "H264");
    assert_eq!(online["video"]["width"], 640);
    assert_eq!(online["viewers"], 0);
    assert_eq!(
        online["ice_servers"],
        Value::Array(vec![]),
        "no public STUN by default"
    );

    let viewer = TestViewer::start(agent.mqtt_port, &agent.device).await;
    let stats = viewer
        .wait_until(
            ">= 60 decoded frames and 3 telemetry messages",
            Duration::from_secs(20),
            |s| s.frames_decoded >= 60 && s.telemetry.len() >= 3,
        )
        .await;
    assert_eq!((stats.width, stats.height), (640, 480), "decoded size");
    assert_eq!(stats.decode_errors, 0);
    assert!(
        stats.distinct_pictures > 30,
        "the picture moves: {} distinct",
        stats.distinct_pictures
    );
    assert_eq!(
        stats.unreadable_stamps, 0,
        "every decoded frame carries a readable stamp"
    );
    assert_eq!(
        stats.latencies_ms.len() as u64,
        stats.frames_decoded,
        "one stamp reading per decoded frame"
    );
    let latency = median(&stats.latencies_ms);
    assert!(
        (0..5_000).contains(&latency),
        "stamp decodes to a sane capture time: {latency} ms"
    );
    let telemetry = stats.telemetry.last().unwrap();
    assert_eq!(telemetry["type"], "telemetry");
    assert_eq!(telemetry["video"]["width"], 640);
    assert!(telemetry["video"]["frames_encoded"].as_u64().unwrap() > 0);
    // A full /proc here: every host and process figure is read, none is null. The agent
    // encodes all along, so neither CPU figure can be 0 (tests/systemd.rs has /proc limited).
    assert!(telemetry["system"]["mem_total_bytes"].as_u64().unwrap() > 0);
    assert!(telemetry["system"]["mem_used_bytes"].as_u64().unwrap() > 0);
    assert!(telemetry["system"]["cpu_percent"].as_f64().unwrap() > 0.0);
    assert!(telemetry["system"]["load_avg_1m"].as_f64().is_some());
    assert!(telemetry["process"]["cpu_percent"].as_f64().unwrap() > 0.0);
    assert!(telemetry["process"]["rss_bytes"].as_u64().unwrap() > 0);
    assert_eq!(telemetry["viewers"], 1);
    let busy_status = observer
        .wait_for(&status, Duration::from_secs(5), |v| v["viewers"] == 1)
        .await;
    assert_eq!(busy_status["state"], "online");
    println!(
        "figures: frames={} first_frame_after_offer={:?} median_latency_ms={} telemetry_msgs={}",
        stats.frames_decoded,
        stats.first_frame_after_offer,
        latency,
        stats.telemetry.len()
    );

    // Hangs up, then disconnects from the broker cleanly.
    viewer.leave().await;
    observer
        .wait_for(&status, Duration::from_secs(5), |v| {
            v["viewers"] == 0 && v["state"] == "online"
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_viewer_streams_through_the_embedded_broker() {
    require_loopback_only_network();
    let agent = Agent::start(AgentOptions::default());
    one_viewer_lifecycle(&agent).await;
    agent.wait_for_log("reason=\"viewer-hangup\"", Duration::from_secs(5));
    // Two more ordinary goodbyes: a client that resets its connection after logging in,
    // and a port probe that never logs in.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut client = tokio::net::TcpStream::connect(("127.0.0.1", agent.mqtt_port))
            .await
            .unwrap();
        // MQTT 3.1.1 CONNECT, clean session, keep-alive 60 s, client id "goodbye".
        let connect = b"\x10\x13\x00\x04MQTT\x04\x02\x00\x3c\x00\x07goodbye";
        client.write_all(connect).await.unwrap();
        let mut connack = [0; 4];
        client.read_exact(&mut connack).await.unwrap();
        assert_eq!(connack, [0x20, 0x02, 0x00, 0x00], "CONNACK, accepted");
        client.set_zero_linger().unwrap();
        drop(client);
        drop(
            tokio::net::TcpStream::connect(("127.0.0.1", agent.mqtt_port))
                .await
                .unwrap(),
        );
    }
    // A viewer that came, watched and left cleanly is no news for journald: the embedded
    // broker, too, takes these goodbyes in its stride. (It logs within milliseconds.)
    tokio::time::sleep(Duration::from_secs(1)).await;
    let problems: Vec<String> = agent
        .log_lines()
        .into_iter()
        .filter(|line| line.contains(" WARN ") || line.contains(" ERROR "))
        // True in the loopback-only namespace, which has no multicast interface: the agent's
        // warning, and webrtc's error for the peer connection it then builds without mDNS.
        .filter(|line| {
            !line.contains("mDNS unavailable") && !line.contains("No such device (os error 19)")
        })
        .collect();
    assert_eq!(problems, Vec::<String>::new(), "{:#?}", agent.log_lines());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_viewer_streams_through_mosquitto() {
    require_loopback_only_network();
    let mosquitto = Mosquitto::start();
    let agent = Agent::start(AgentOptions {
        broker: BrokerMode::External(mosquitto.port),
        ..Default::default()
    });
    one_viewer_lifecycle(&agent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_viewers_share_one_encoder() {
    require_loopback_only_network();
    let fps = 15;
    let agent = Agent::start(AgentOptions {
        fps,
        // The five offer at once: room for all of them connecting together.
        webrtc_extra: "max_pending = 5".into(),
        ..Default::default()
    });
    let mut viewers = Vec::new();
    for _ in 0..5 {
        viewers.push(TestViewer::start(agent.mqtt_port, &agent.device).await);
    }
    for viewer in &viewers {
        viewer.wait_for_frames(30, Duration::from_secs(30)).await;
    }
    // frames_encoded must grow at the frame rate, not five times it.
    let first = viewers[0].stats().telemetry.last().cloned().unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let last = viewers[0].stats().telemetry.last().cloned().unwrap();
    let rate = encoded_per_second(&first, &last);
    println!(
        "figures: 5 viewers, frames_encoded rate {rate:.1}/s at {fps} fps, viewers={}",
        last["viewers"]
    );
    assert!(
        rate > fps as f64 * 0.5 && rate < fps as f64 * 1.5,
        "encoded {rate:.1} frames/s for {fps} fps"
    );
    assert_eq!(last["viewers"], 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_late_joiner_gets_a_keyframe_at_once() {
    require_loopback_only_network();
    let agent = Agent::start(AgentOptions {
        keyframe_interval_s: 10,
        ..Default::default()
    });
    let first = TestViewer::start(agent.mqtt_port, &agent.device).await;
    first.wait_for_frames(30, Duration::from_secs(15)).await;
    // Join mid-GOP: the periodic IDR is up to 10 s away.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let late = TestViewer::start(agent.mqtt_port, &agent.device).await;
    let stats = late.wait_for_frames(1, Duration::from_secs(10)).await;
    let wait = stats.first_frame_after_offer.unwrap();
    println!(
        "figures: late joiner first frame {} ms after its offer",
        wait.as_millis()
    );
    assert!(
        wait < Duration::from_secs(1),
        "first frame {wait:?} after the offer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_viewers_answers_busy() {
    require_loopback_only_network();
    let agent = Agent::start(AgentOptions {
        max_viewers: 1,
        ..Default::default()
    });
    let first = TestViewer::start(agent.mqtt_port, &agent.device).await;
    first.wait_for_frames(5, Duration::from_secs(15)).await;
    let second = TestViewer::start(agent.mqtt_port, &agent.device).await;
    let error = second.wait_for_error(Duration::from_secs(5)).await;
    assert_eq!(error["code"], "busy");
    assert!(error["message"].as_str().unwrap().contains("maximum of 1"));
    // The first viewer keeps streaming.
    let before = first.stats().frames_decoded;
    first
        .wait_until("first viewer still streams", Duration::from_secs(5), |s| {
            s.frames_decoded > before + 10
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_hangs_up_viewers_and_goes_offline() {
    require_loopback_only_network();
    // An external broker outlives the agent, so the offline status can be observed.
    let mosquitto = Mosquitto::start();
    let agent = Agent::start(AgentOptions {
        broker: BrokerMode::External(mosquitto.port),
        ..Default::default()
    });
    let status = status_topic(&agent.device);
    let observer = Observer::start(agent.mqtt_port, std::slice::from_ref(&status)).await;
    let viewer = TestViewer::start(agent.mqtt_port, &agent.device).await;
    viewer.wait_for_frames(10, Duration::from_secs(15)).await;
    let (exit, took) = agent.terminate();
    println!("figures: SIGTERM to exit {} ms", took.as_millis());
    assert!(exit.success(), "clean exit: {exit:?}");
    assert!(took < Duration::from_secs(3), "exit took {took:?}");
    let stats = viewer
        .wait_until("hangup", Duration::from_secs(3), |s| {
            s.camera_messages.iter().any(|m| m["type"] == "hangup")
        })
        .await;
    let hangup = stats
        .camera_messages
        .iter()
        .find(|m| m["type"] == "hangup")
        .unwrap();
    assert_eq!(hangup["reason"], "shutdown");
    let offline = observer
        .wait_for(&status, Duration::from_secs(3), |v| v["state"] == "offline")
        .await;
    assert_eq!(
        offline,
        serde_json::json!({"type": "status", "state": "offline", "device": "cam1"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_restart_heals_and_viewers_keep_streaming() {
    require_loopback_only_network();
    let mosquitto = Mosquitto::start();
    let agent = Agent::start(AgentOptions {
        broker: BrokerMode::External(mosquitto.port),
        ..Default::default()
    });
    let viewer = TestViewer::start(agent.mqtt_port, &agent.device).await;
    viewer.wait_for_frames(10, Duration::from_secs(15)).await;

    // SIGKILL: the broker gets no chance to say goodbye.
    drop(mosquitto);
    let port = agent.mqtt_port;
    agent.wait_for_log("lost or refused", Duration::from_secs(10));
    let connections_before = agent.count_log("MQTT connected");
    // Media does not go through the broker: the viewer keeps decoding while it is gone,
    // and it stays gone for longer than the reconnect backoff takes to reach its cap.
    let before = viewer.stats().frames_decoded;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let decoded_while_dead = viewer.stats().frames_decoded - before;
    assert!(
        decoded_while_dead >= 60,
        "{decoded_while_dead} frames decoded in the 10 s without a broker"
    );

    let _mosquitto = Mosquitto::start_on(port);
    let returned = std::time::Instant::now();
    while agent.count_log("MQTT connected") == connections_before {
        assert!(
            returned.elapsed() < Duration::from_secs(20),
            "the agent did not reconnect within 20 s of the broker's return"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reconnected_after = returned.elapsed();
    println!(
        "figures: {decoded_while_dead} frames decoded in 10 s without a broker; \
         reconnected {} ms after the broker's return",
        reconnected_after.as_millis()
    );
    // The reconnect backoff is capped at 4 s (src/signaling/mqtt.rs); slack for a busy
    // machine on top of the 5 s the camera promises.
    assert!(
        reconnected_after < Duration::from_secs(8),
        "reconnected {reconnected_after:?} after the broker's return"
    );
    let status = status_topic(&agent.device);
    let observer = Observer::start(port, std::slice::from_ref(&status)).await;
    // The camera reconnects, resubscribes and republishes its retained status.
    let online = observer
        .wait_for(&status, Duration::from_secs(20), |v| v["state"] == "online")
        .await;
    assert_eq!(
        online["viewers"], 1,
        "the viewer that never left is still counted"
    );
    let newcomer = TestViewer::start(port, &agent.device).await;
    newcomer.wait_for_frames(10, Duration::from_secs(15)).await;
}

/// A TCP proxy to `upstream` that holds back the broker's first bytes (its CONNACK) on each
/// connection for `delay`, as a distant or busy broker would. Returns its port and a count of
/// the connections it took.
async fn slow_broker_proxy(
    upstream: u16,
    delay: Duration,
) -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = Arc::clone(&connections);
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let broker = tokio::net::TcpStream::connect(("127.0.0.1", upstream))
                    .await
                    .unwrap();
                let (mut from_client, mut to_client) = client.into_split();
                let (mut from_broker, mut to_broker) = broker.into_split();
                let upstream_copy = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut from_client, &mut to_broker).await;
                });
                let mut first = vec![0; 4096];
                if let Ok(read @ 1..) = from_broker.read(&mut first).await {
                    tokio::time::sleep(delay).await;
                    if to_client.write_all(&first[..read]).await.is_ok() {
                        let _ = tokio::io::copy(&mut from_broker, &mut to_client).await;
                    }
                }
                upstream_copy.abort();
            });
        }
    });
    (port, connections)
}

/// A broker that takes longer to answer than the camera's 1 s heartbeat (TLS to a distant
/// broker, a busy one): the camera's connection attempt runs to its end instead of starting
/// over at every heartbeat or status change, and viewers are served through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_camera_connects_to_a_broker_slower_than_its_heartbeat() {
    require_loopback_only_network();
    let mosquitto = Mosquitto::start();
    let (port, connections) = slow_broker_proxy(mosquitto.port, Duration::from_millis(2500)).await;
    let agent = Agent::start(AgentOptions {
        broker: BrokerMode::External(port),
        ..Default::default()
    });
    let started = std::time::Instant::now();
    agent.wait_for_log("MQTT connected", Duration::from_secs(20));
    let took = started.elapsed();
    assert_eq!(
        connections.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one connection attempt, run to its end ({took:?})"
    );
    let viewer = TestViewer::start(port, &agent.device).await;
    let stats = viewer.wait_for_frames(30, Duration::from_secs(30)).await;
    assert_eq!((stats.width, stats.height), (640, 480));
    println!("figures: connected through a 2.5 s broker in {took:?}");
}

/// The keep-alive the camera asks its broker for in the tests below (the smallest allowed).
const KEEPALIVE: Duration = Duration::from_secs(5);

/// The camera dies (`KILL`: its socket closes at once) or hangs (`STOP`: its socket stays
/// open and silent, as for a board that lost power or its network): either way the
/// broker publishes its last will and the retained status reads `offline`. Returns how
/// long that took.
async fn status_after_agent_signal(signal: &str) -> Duration {
    let keepalive = KEEPALIVE;
    let mosquitto = Mosquitto::start();
    let agent = Agent::start(AgentOptions {
        broker: BrokerMode::External(mosquitto.port),
        mqtt_extra: format!("keepalive_s = {}", keepalive.as_secs()),
        ..Default::default()
    });
    let status = status_topic(&agent.device);
    let observer = Observer::start(agent.mqtt_port, std::slice::from_ref(&status)).await;
    observer
        .wait_for(&status, Duration::from_secs(5), |v| v["state"] == "online")
        .await;
    let viewer = TestViewer::start(agent.mqtt_port, &agent.device).await;
    viewer.wait_for_frames(10, Duration::from_secs(15)).await;

    let signalled = std::time::Instant::now();
    agent.signal(signal);
    let offline = observer
        .wait_for(&status, keepalive * 4, |v| v["state"] == "offline")
        .await;
    let took = signalled.elapsed();
    assert_eq!(
        offline,
        serde_json::json!({"type": "status", "state": "offline", "device": "cam1"})
    );
    // A reader that comes later finds it retained.
    let later = Observer::start(agent.mqtt_port, std::slice::from_ref(&status)).await;
    let retained = later
        .wait_for(&status, Duration::from_secs(5), |_| true)
        .await;
    assert_eq!(retained["state"], "offline");
    println!(
        "figures: SIG{signal}: status offline {} ms later (keepalive {} s)",
        took.as_millis(),
        keepalive.as_secs()
    );
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_reads_offline_through_the_last_will() {
    require_loopback_only_network();
    let took = status_after_agent_signal("KILL").await;
    // Within 1.5 keep-alives (in practice at once: the kernel closes the dead process's
    // socket), with slack for the will's delivery on a busy machine.
    assert!(
        took <= KEEPALIVE * 3 / 2 + Duration::from_secs(2),
        "offline after {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hung_agent_reads_offline_once_its_keepalive_lapses() {
    require_loopback_only_network();
    let took = status_after_agent_signal("STOP").await;
    // Its socket stayed open: only the broker's keep-alive timer could have noticed, 1.5
    // keep-alives after the agent's last packet, which went out at most one keep-alive
    // before the stop. mosquitto 2.0 checks that timer coarsely (about 10 s for a 5 s
    // keep-alive here), hence the wide upper bound.
    assert!(
        took >= Duration::from_secs(2) && took <= KEEPALIVE * 3,
        "offline after {took:?}"
    );
}

/// The camera watches its own retained status to put back the truth when another client
/// overwrites it. Neither the broker's copy from before it connected (here the last will
/// of the camera's previous life) nor the late echo of its own earlier status (viewers
/// joining at once change it faster than the broker echoes) is such an overwrite; a
/// forgery still is.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_camera_takes_neither_its_last_will_nor_its_own_echoes_for_an_overwrite() {
    require_loopback_only_network();
    const OVERWRITTEN: &str = "retained status was overwritten";
    let mosquitto = Mosquitto::start();
    let options = || AgentOptions {
        broker: BrokerMode::External(mosquitto.port),
        ..Default::default()
    };
    let status = status_topic("cam1");
    let observer = Observer::start(mosquitto.port, std::slice::from_ref(&status)).await;
    let first_life = Agent::start(options());
    observer
        .wait_for(&status, Duration::from_secs(10), |v| v["state"] == "online")
        .await;
    first_life.signal("KILL");
    observer
        .wait_for(&status, Duration::from_secs(10), |v| {
            v["state"] == "offline"
        })
        .await;
    drop(first_life);

    let agent = Agent::start(options());
    let mut joins = tokio::task::JoinSet::new();
    // Four: as many as may connect at once.
    for _ in 0..4 {
        let (port, device) = (agent.mqtt_port, agent.device.clone());
        joins.spawn(async move {
            let viewer = TestViewer::start(port, &device).await;
            viewer.wait_for_frames(10, Duration::from_secs(30)).await;
            viewer
        });
    }
    let viewers = joins.join_all().await;
    let four = observer
        .wait_for(&status, Duration::from_secs(10), |v| v["viewers"] == 4)
        .await;
    assert_eq!(four["state"], "online");
    let mut leaves = tokio::task::JoinSet::new();
    for viewer in viewers {
        leaves.spawn(viewer.leave());
    }
    leaves.join_all().await;
    observer
        .wait_for(&status, Duration::from_secs(10), |v| v["viewers"] == 0)
        .await;
    assert_eq!(agent.count_log(OVERWRITTEN), 0, "{:#?}", agent.log_lines());

    let forged = serde_json::json!({"type": "status", "state": "offline", "device": "cam1"});
    observer.publish_retained(&status, forged.to_string()).await;
    agent.wait_for_log(OVERWRITTEN, Duration::from_secs(5));
    assert_eq!(agent.count_log(OVERWRITTEN), 1);
}

/// UDP sockets a process holds, as (local address, port) from /proc/net/udp (this test's
/// namespace) matched against the process's socket descriptors.
fn udp_sockets_of(pid: u32) -> Vec<(String, u16)> {
    let inodes: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter_map(|target| {
            let text = target.to_string_lossy().into_owned();
            Some(text.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let table = std::fs::read_to_string("/proc/net/udp").unwrap();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (address, port) = fields.get(1)?.split_once(':')?;
            inodes
                .contains(*fields.get(9)?)
                .then(|| (address.to_owned(), u16::from_str_radix(port, 16).unwrap()))
        })
        .collect()
}

/// The ports of the camera's candidates: those in its answer (the host candidates) and
/// those it trickled.
fn candidate_ports(messages: &[serde_json::Value]) -> Vec<u16> {
    let in_answers = messages
        .iter()
        .filter(|m| m["type"] == "answer")
        .filter_map(|m| m["sdp"].as_str())
        .flat_map(|sdp| sdp.lines().filter_map(|line| line.strip_prefix("a=")))
        .filter(|line| line.starts_with("candidate:"));
    let trickled = messages
        .iter()
        .filter(|m| m["type"] == "candidate")
        .filter_map(|m| m["candidate"]["candidate"].as_str());
    in_answers
        .chain(trickled)
        .filter_map(|line| line.split_whitespace().nth(5)?.parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_viewers_share_one_udp_port() {
    require_loopback_only_network();
    let udp_port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let agent = Agent::start(AgentOptions {
        fps: 15,
        // The five offer at once: room for all of them connecting together.
        webrtc_extra: format!("udp_port = {udp_port}\nmax_pending = 5"),
        ..Default::default()
    });
    let mut viewers = Vec::new();
    for _ in 0..5 {
        viewers.push(TestViewer::start(agent.mqtt_port, &agent.device).await);
    }
    for viewer in &viewers {
        let stats = viewer.wait_for_frames(30, Duration::from_secs(30)).await;
        assert_eq!((stats.width, stats.height), (640, 480));
        let ports = candidate_ports(&stats.camera_messages);
        assert!(!ports.is_empty(), "the camera sent no candidates");
        assert!(
            ports.iter().all(|port| *port == udp_port),
            "candidates at ports {ports:?}, not only {udp_port}"
        );
    }
    let sockets = udp_sockets_of(agent.pid());
    println!("figures: 5 viewers streaming, the agent's UDP sockets: {sockets:?}");
    assert_eq!(
        sockets.len(),
        1,
        "one shared socket for every session: {sockets:?}"
    );
    assert_eq!(sockets[0].1, udp_port);
    // All five keep streaming over it, and leaving frees their sessions.
    for viewer in &viewers {
        let before = viewer.stats().frames_decoded;
        viewer
            .wait_for_frames(before + 15, Duration::from_secs(10))
            .await;
    }
    let status = status_topic(&agent.device);
    let observer = Observer::start(agent.mqtt_port, std::slice::from_ref(&status)).await;
    for viewer in &viewers {
        viewer.hangup().await;
    }
    observer
        .wait_for(&status, Duration::from_secs(10), |v| v["viewers"] == 0)
        .await;
    // The shared socket outlives the sessions, ready for the next viewer.
    assert_eq!(udp_sockets_of(agent.pid()), sockets);
    let late = TestViewer::start(agent.mqtt_port, &agent.device).await;
    late.wait_for_frames(15, Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn minted_turn_credentials_are_renewed_in_the_status_before_they_expire() {
    require_loopback_only_network();
    let secret = common::private_file("turn-renewal", "lab-turn-secret\n");
    // The shortest lifetime allowed, so the renewal (at half of it) comes within the test.
    let agent = Agent::start(AgentOptions {
        webrtc_extra: format!(
            "[[webrtc.ice_servers]]\nurls = [\"turn:127.0.0.1:9\"]\nsecret_file = \"{}\"\ncredential_ttl_s = 60\n",
            secret.display()
        ),
        ..Default::default()
    });
    let status = status_topic(&agent.device);
    let observer = Observer::start(agent.mqtt_port, std::slice::from_ref(&status)).await;
    let expiry_of = |v: &Value| -> Option<u64> {
        v["ice_servers"][0]["username"]
            .as_str()?
            .strip_suffix(":cam1")?
            .parse()
            .ok()
    };
    let first = observer
        .wait_for(&status, Duration::from_secs(10), |v| expiry_of(v).is_some())
        .await;
    let first_expiry = expiry_of(&first).unwrap();
    let renewed = observer
        .wait_for(&status, Duration::from_secs(45), |v| {
            expiry_of(v).is_some_and(|expiry| expiry > first_expiry)
        })
        .await;
    let expiry = expiry_of(&renewed).unwrap();
    let now = peercam::clock::unix_s();
    println!("figures: credential expiring at {first_expiry} renewed {} s before it, new one expires in {} s", first_expiry.saturating_sub(now), expiry - now);
    assert!(
        first_expiry > now,
        "renewed before the old credential expired"
    );
    assert!(
        (now + 50..=now + 61).contains(&expiry),
        "a fresh 60 s credential: {expiry} vs {now}"
    );
    let (username, credential) =
        peercam::ice::minted_credential(b"lab-turn-secret", "cam1", expiry);
    assert_eq!(renewed["ice_servers"][0]["username"], username);
    assert_eq!(renewed["ice_servers"][0]["credential"], credential);
    assert_eq!(renewed["state"], "online");
}
