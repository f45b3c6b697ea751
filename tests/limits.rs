//! Session admission limits, end to end: the real agent, raw MQTT offers that never go
//! further (genuine webrtc-rs offers, no ICE follow-up), and real test viewers that must
//! still be served. Each test exceeds a limit, then shows a valid viewer decoding frames.
//! Runs only inside a loopback-only network namespace (scripts/in-loopback-netns).

mod common;

use common::viewer::{new_session_id, receive_only_peer, Observer, Shared, TestViewer};
use common::{require_loopback_only_network, Agent, AgentOptions};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use webrtc::peer_connection::PeerConnectionEventHandler;

/// `webrtc.max_pending`'s default.
const MAX_PENDING: usize = 4;
/// How long the agent's log may lag behind its MQTT replies (it comes through a pipe).
const LOG_WAIT: Duration = Duration::from_secs(5);

/// A peer that only exists to make a genuine offer.
struct Silent;
#[async_trait::async_trait]
impl PeerConnectionEventHandler for Silent {}

/// A genuine offer (recvonly H.264 + telemetry channel) from a peer that then goes away:
/// whoever sends it will never answer the camera's ICE.
async fn abandoned_offer() -> String {
    let (pc, _channel) = receive_only_peer(Arc::new(Silent), Shared::new()).await;
    let offer = pc.create_offer(None).await.unwrap();
    let _ = pc.close().await;
    offer.sdp
}

struct Sessions<'a> {
    observer: &'a Observer,
    device: &'a str,
}

impl Sessions<'_> {
    fn to_viewer(&self, sid: &str) -> String {
        format!("peercam/{}/session/{sid}/to-viewer", self.device)
    }

    /// Publishes `sdp` as the offer of a fresh sid for each of `count`, all at once, and
    /// returns each sid with the camera's reply (its answer or its error).
    async fn offer_all(&self, sdp: &str, count: usize) -> Vec<(String, Value)> {
        let sids: Vec<String> = (0..count).map(|_| new_session_id()).collect();
        let offer = json!({"type": "offer", "sdp": sdp}).to_string();
        for sid in &sids {
            let to_camera = format!("peercam/{}/session/{sid}/to-camera", self.device);
            self.observer.publish(&to_camera, offer.clone()).await;
        }
        let mut replies = Vec::new();
        for sid in sids {
            let reply = self
                .observer
                .wait_for(&self.to_viewer(&sid), Duration::from_secs(15), |m| {
                    m["type"] == "answer" || m["type"] == "error"
                })
                .await;
            replies.push((sid, reply));
        }
        replies
    }
}

/// The sids answered, and the messages of the errors (all `busy`).
fn answered_and_busy(replies: &[(String, Value)]) -> (Vec<String>, Vec<String>) {
    let answered = replies
        .iter()
        .filter(|(_, m)| m["type"] == "answer")
        .map(|(sid, _)| sid.clone())
        .collect();
    let busy = replies
        .iter()
        .filter(|(_, m)| m["type"] == "error")
        .map(|(_, m)| {
            assert_eq!(m["code"], "busy", "{m}");
            m["message"].as_str().unwrap().to_owned()
        })
        .collect();
    (answered, busy)
}

async fn wait_for_log_count(agent: &Agent, needle: &str, count: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while agent.count_log(needle) < count {
        assert!(
            Instant::now() < deadline,
            "agent logged {needle:?} {} times, not {count}, within {timeout:?}; log:\n{}",
            agent.count_log(needle),
            agent.log_lines().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn offers_that_never_connect_take_no_viewer_slot_and_a_viewer_is_served_after_them() {
    require_loopback_only_network();
    let agent = Agent::start(AgentOptions {
        connect_timeout_s: 3,
        ..Default::default()
    });
    let device = agent.device.clone();
    let status = format!("peercam/{device}/status");
    let observer = Observer::start(
        agent.mqtt_port,
        &[
            format!("peercam/{device}/session/+/to-viewer"),
            status.clone(),
        ],
    )
    .await;
    let sessions = Sessions {
        observer: &observer,
        device: &device,
    };

    // A viewer watches before the flood and throughout it.
    let watcher = TestViewer::start(agent.mqtt_port, &device).await;
    watcher.wait_for_frames(10, Duration::from_secs(15)).await;
    observer
        .wait_for(&status, Duration::from_secs(5), |v| v["viewers"] == 1)
        .await;

    let sdp = abandoned_offer().await;
    let replies = sessions.offer_all(&sdp, MAX_PENDING + 3).await;
    let (answered, busy) = answered_and_busy(&replies);
    println!(
        "figures: {} offers that never connect: {} answered, {} busy",
        replies.len(),
        answered.len(),
        busy.len()
    );
    assert_eq!(answered.len(), MAX_PENDING, "{replies:#?}");
    assert_eq!(busy.len(), 3, "{replies:#?}");
    for message in &busy {
        assert!(
            message.starts_with("too many sessions are connecting"),
            "{message}"
        );
    }
    wait_for_log_count(&agent, "new viewer session", 1 + MAX_PENDING, LOG_WAIT).await;
    assert_eq!(
        agent.count_log("new viewer session"),
        1 + MAX_PENDING,
        "a refused offer gets no peer connection"
    );
    // Pending sessions are not viewers: the status still counts one.
    assert_eq!(observer.latest(&status).unwrap()["viewers"], 1);

    // They time out; the watcher was never displaced and decodes on.
    for sid in &answered {
        let hangup = observer
            .wait_for(&sessions.to_viewer(sid), Duration::from_secs(15), |m| {
                m["type"] == "hangup"
            })
            .await;
        assert_eq!(hangup["reason"], "connect-timeout", "{hangup}");
    }
    wait_for_log_count(
        &agent,
        "reason=\"connect-timeout\"",
        MAX_PENDING,
        Duration::from_secs(10),
    )
    .await;
    let before = watcher.stats().frames_decoded;
    watcher
        .wait_for_frames(before + 20, Duration::from_secs(10))
        .await;

    // A new viewer is served.
    let newcomer = TestViewer::start(agent.mqtt_port, &device).await;
    newcomer.wait_for_frames(30, Duration::from_secs(15)).await;
    observer
        .wait_for(&status, Duration::from_secs(5), |v| v["viewers"] == 2)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn offers_beyond_the_rate_get_busy_and_a_viewer_is_served_once_the_bucket_refills() {
    require_loopback_only_network();
    let agent = Agent::start(AgentOptions {
        webrtc_extra: "offers_per_s = 1\noffer_burst = 2".into(),
        ..Default::default()
    });
    let device = agent.device.clone();
    let observer = Observer::start(
        agent.mqtt_port,
        &[format!("peercam/{device}/session/+/to-viewer")],
    )
    .await;
    let sessions = Sessions {
        observer: &observer,
        device: &device,
    };

    let sdp = abandoned_offer().await;
    let replies = sessions.offer_all(&sdp, 5).await;
    let (answered, busy) = answered_and_busy(&replies);
    println!(
        "figures: 5 offers at once with offers_per_s = 1, offer_burst = 2: {} answered, {} busy",
        answered.len(),
        busy.len()
    );
    // Offers arrive faster than one a second: the burst is all that gets in.
    assert_eq!(answered.len(), 2, "{replies:#?}");
    for message in &busy {
        assert!(message.starts_with("too many offers"), "{message}");
    }
    wait_for_log_count(&agent, "new viewer session", 2, LOG_WAIT).await;
    assert_eq!(
        agent.count_log("new viewer session"),
        2,
        "a refused offer gets no peer connection"
    );

    // Once a token is back (one a second), a real viewer is served.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let viewer = TestViewer::start(agent.mqtt_port, &device).await;
    viewer.wait_for_frames(30, Duration::from_secs(15)).await;
}

/// Reads from `stream` until the peer closes it; `Err` when it is still open after
/// `timeout`. Returns what was read.
async fn read_until_closed(
    stream: &mut tokio::net::TcpStream,
    timeout: Duration,
) -> Result<Vec<u8>, Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut received = Vec::new();
    let read_all = async {
        let mut buffer = [0u8; 4096];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    };
    match tokio::time::timeout(timeout, read_all).await {
        Ok(()) => Ok(received),
        Err(_) => Err(received),
    }
}

/// Sends one raw HTTP/1.1 request on a fresh connection (closed after the answer) and
/// returns the status line.
async fn http_status(port: u16, request: &[u8]) -> String {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    stream.write_all(request).await.unwrap();
    let answer = read_until_closed(&mut stream, Duration::from_secs(10))
        .await
        .expect("the server answers and closes");
    let answer = String::from_utf8_lossy(&answer).into_owned();
    answer.lines().next().unwrap_or_default().to_owned()
}

const GET_PAGE_CONFIG: &[u8] =
    b"GET /peercam.json HTTP/1.1\r\nHost: camera\r\nConnection: close\r\n\r\n";

/// A viewer decodes frames: the camera still serves while a limit is being exceeded.
async fn a_viewer_is_served(agent: &Agent) {
    let viewer = TestViewer::start(agent.mqtt_port, &agent.device).await;
    let stats = viewer.wait_for_frames(15, Duration::from_secs(20)).await;
    assert_eq!((stats.width, stats.height), (320, 240));
    viewer.hangup().await;
}

fn small_agent(http_extra: &str, extra_sections: &str) -> Agent {
    Agent::start(AgentOptions {
        width: 320,
        height: 240,
        http: true,
        http_extra: http_extra.into(),
        extra_sections: extra_sections.into(),
        ..Default::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn silent_and_idle_http_connections_are_closed_after_the_header_timeout() {
    use tokio::io::AsyncWriteExt;
    require_loopback_only_network();
    let agent = small_agent("header_timeout_s = 2", "");
    common::wait_for_port(agent.http_port, Duration::from_secs(10));
    let connect = || tokio::net::TcpStream::connect(("127.0.0.1", agent.http_port));

    // One says nothing at all; one sends half a request; one asks once and then idles.
    let started = Instant::now();
    let mut silent = connect().await.unwrap();
    let mut half = connect().await.unwrap();
    half.write_all(b"GET /peercam.json HTTP/1.1\r\nHost: cam")
        .await
        .unwrap();
    let mut idle = connect().await.unwrap();
    idle.write_all(b"GET /peercam.json HTTP/1.1\r\nHost: camera\r\n\r\n")
        .await
        .unwrap();

    a_viewer_is_served(&agent).await;
    assert_eq!(
        http_status(agent.http_port, GET_PAGE_CONFIG).await,
        "HTTP/1.1 200 OK"
    );

    for (name, stream) in [("silent", &mut silent), ("half a request", &mut half)] {
        let received = read_until_closed(stream, Duration::from_secs(20))
            .await
            .unwrap_or_else(|_| panic!("the {name} connection is still open after 20 s"));
        // hyper answers a header timeout with a 408 only once it has bytes; either way the
        // connection is gone and no request reached the application.
        let text = String::from_utf8_lossy(&received);
        assert!(!text.contains("200 OK"), "{name}: {text}");
    }
    let answered = read_until_closed(&mut idle, Duration::from_secs(20))
        .await
        .expect("the idle kept-alive connection is closed");
    assert!(
        String::from_utf8_lossy(&answered).starts_with("HTTP/1.1 200 OK"),
        "the idle connection's one request was answered first"
    );
    let elapsed = started.elapsed();
    println!(
        "silent, half-sent and idle connections closed within {elapsed:?} (header_timeout_s = 2)"
    );
    assert!(
        elapsed >= Duration::from_secs(2),
        "closed before the timeout: {elapsed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_body_over_the_limit_is_refused_and_a_viewer_is_served() {
    require_loopback_only_network();
    let agent = small_agent("", "[whep]\nenabled = true");
    common::wait_for_port(agent.http_port, Duration::from_secs(10));
    let big = "v=0\r\n".repeat(100 * 1024 / 5);
    // Announced too large: refused from its headers.
    let announced = format!(
        "POST /whep HTTP/1.1\r\nHost: camera\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{big}",
        big.len()
    );
    assert_eq!(
        http_status(agent.http_port, announced.as_bytes()).await,
        "HTTP/1.1 413 Payload Too Large"
    );
    // Chunked, so no length up front: refused once the limit is crossed.
    let chunked = format!(
        "POST /whep HTTP/1.1\r\nHost: camera\r\nContent-Type: application/sdp\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{big}\r\n0\r\n\r\n",
        big.len()
    );
    assert_eq!(
        http_status(agent.http_port, chunked.as_bytes()).await,
        "HTTP/1.1 413 Payload Too Large"
    );
    a_viewer_is_served(&agent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_over_the_limit_are_closed_at_once_and_a_freed_place_serves_again() {
    require_loopback_only_network();
    let agent = small_agent("max_connections = 4\nheader_timeout_s = 60", "");
    common::wait_for_port(agent.http_port, Duration::from_secs(10));
    let connect = || tokio::net::TcpStream::connect(("127.0.0.1", agent.http_port));
    // wait_for_port's probe held a place for a moment: let it go first.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut holders = Vec::new();
    for _ in 0..4 {
        holders.push(connect().await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut over = connect().await.unwrap();
    let started = Instant::now();
    read_until_closed(&mut over, Duration::from_secs(10))
        .await
        .expect("the fifth connection is closed");
    println!(
        "the connection over the limit was closed after {:?}",
        started.elapsed()
    );
    // The holders are still open (header_timeout_s = 60): the limit closed the fifth.
    for holder in &mut holders {
        assert!(read_until_closed(holder, Duration::from_millis(50))
            .await
            .is_err());
    }
    a_viewer_is_served(&agent).await;

    holders.pop();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // The server notices the closed holder when it reads its end.
        let status = http_status(agent.http_port, GET_PAGE_CONFIG).await;
        if status == "HTTP/1.1 200 OK" {
            break;
        }
        assert!(Instant::now() < deadline, "no place freed: {status:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(agent.count_log("http.listen: connection limit reached") >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_connections_to_the_broker_websocket_door_hold_up_no_browser() {
    require_loopback_only_network();
    let agent = small_agent("", "");
    common::wait_for_port(agent.ws_port, Duration::from_secs(10));
    // 50 connections that never start their WebSocket handshake, to the broker's door
    // and to the page server's /mqtt.
    let mut idle = Vec::new();
    for port in [agent.ws_port, agent.http_port] {
        for _ in 0..50 {
            idle.push(
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .unwrap(),
            );
        }
    }
    let status = format!("peercam/{}/status", agent.device);
    for (port, path) in [(agent.ws_port, "/"), (agent.http_port, "/mqtt")] {
        let endpoint = common::viewer::MqttEndpoint {
            websocket_path: Some(path.into()),
            ..common::viewer::MqttEndpoint::plain(port)
        };
        let started = Instant::now();
        let browser = Observer::start_on(&endpoint, std::slice::from_ref(&status)).await;
        let retained = browser
            .wait_for(&status, Duration::from_secs(10), |_| true)
            .await;
        let took = started.elapsed();
        println!("MQTT over WebSocket on :{port}{path} beside 50 idle connections: status after {took:?}");
        assert_eq!(retained["state"], "online", "{retained}");
        assert!(
            took < Duration::from_secs(2),
            "connecting took {took:?} beside 50 idle connections"
        );
    }
    // And a viewer signalling over the WebSocket, as the page does, watches.
    let endpoint = common::viewer::MqttEndpoint {
        websocket_path: Some("/mqtt".into()),
        ..common::viewer::MqttEndpoint::plain(agent.http_port)
    };
    let viewer = TestViewer::start_on(&endpoint, &agent.device, &new_session_id(), None).await;
    let stats = viewer.wait_for_frames(15, Duration::from_secs(20)).await;
    assert_eq!((stats.width, stats.height), (320, 240));
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_bad_messages_logs_one_line_per_interval_with_the_count_held_back() {
    require_loopback_only_network();
    let agent = small_agent("", "");
    let device = agent.device.clone();
    let observer = Observer::start(agent.mqtt_port, &[format!("peercam/{device}/status")]).await;
    let flood = |count: usize| {
        let observer = &observer;
        let device = &device;
        async move {
            for _ in 0..count {
                let to_camera = format!("peercam/{device}/session/{}/to-camera", new_session_id());
                observer.publish(&to_camera, "not json").await;
            }
        }
    };
    let started = Instant::now();
    flood(200).await;
    wait_for_log_count(&agent, "bad message from viewer", 1, LOG_WAIT).await;
    a_viewer_is_served(&agent).await;

    // One more after the interval: its line carries the count of those held back.
    let interval = peercam::log_throttle::INTERVAL;
    tokio::time::sleep(
        (started + interval + Duration::from_millis(500)).saturating_duration_since(Instant::now()),
    )
    .await;
    flood(1).await;
    wait_for_log_count(&agent, "bad message from viewer", 2, LOG_WAIT).await;
    let lines: Vec<String> = agent
        .log_lines()
        .into_iter()
        .filter(|line| line.contains("bad message from viewer"))
        .collect();
    let held_back = |line: &str| -> u64 {
        let (_, rest) = line.split_once("held_back=").expect("a held_back field");
        rest.split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    // Judged on the agent's own log times, so a slow machine cannot fake or break it:
    // lines at least an interval apart, and every message either logged or counted.
    for pair in lines.windows(2) {
        let gap = log_seconds_of_day(&pair[1]) - log_seconds_of_day(&pair[0]);
        assert!(
            gap.rem_euclid(86_400.0) >= interval.as_secs_f64() - 0.01,
            "{pair:?}"
        );
    }
    assert_eq!(held_back(&lines[0]), 0, "{}", lines[0]);
    let accounted: u64 = lines.len() as u64 + lines.iter().map(|l| held_back(l)).sum::<u64>();
    println!(
        "201 bad messages: {} lines, held_back {:?}",
        lines.len(),
        lines.iter().map(|l| held_back(l)).collect::<Vec<_>>()
    );
    // 201, unless the signaling backlog dropped some of the flood before the core saw it.
    assert!((101..=201).contains(&accounted), "{lines:#?}");
}

/// The time of day, in seconds, of an agent log line (`2026-11-26T10:37:00.741163Z ...`).
fn log_seconds_of_day(line: &str) -> f64 {
    let time = line
        .split_once('T')
        .and_then(|(_, rest)| rest.split_once('Z'))
        .map(|(time, _)| time)
        .unwrap_or_else(|| panic!("no timestamp in {line:?}"));
    time.split(':')
        .map(|part| part.parse::<f64>().unwrap())
        .fold(0.0, |seconds, part| seconds * 60.0 + part)
}
