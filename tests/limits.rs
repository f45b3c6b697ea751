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
