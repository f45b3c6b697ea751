//! ICE restart on a live session, end to end: the real agent with access keys, a webrtc-rs
//! test viewer that restarts ICE the way a browser does (a new offer with fresh ICE
//! credentials on the same sid), and a second key holder who tries to restart a session that
//! is not theirs. Runs only inside a loopback-only network namespace.

mod common;

use common::viewer::{receive_only_peer, AccessKey, Observer, Shared, TestViewer};
use common::{keys_auth_section, require_loopback_only_network, Agent, AgentOptions};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use webrtc::peer_connection::PeerConnectionEventHandler;

fn keyed_agent() -> Agent {
    Agent::start(AgentOptions {
        auth_section: keys_auth_section(&[]),
        ..Default::default()
    })
}

/// `peercam access --json` for `viewer`, run against the agent's own configuration.
fn access(agent: &Agent, viewer: &str) -> AccessKey {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_peercam"))
        .args(["access", "--viewer", viewer, "--expires-in", "1h", "--json"])
        .arg("--config")
        .arg(&agent.config_path)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    AccessKey::from_json(&serde_json::from_slice(&output.stdout).unwrap())
}

/// The `a=ice-ufrag` of an SDP (the first one: with BUNDLE every section has the same).
fn ice_ufrag(sdp: &str) -> String {
    sdp.lines()
        .find_map(|line| line.trim_end().strip_prefix("a=ice-ufrag:"))
        .unwrap_or_else(|| panic!("no ice-ufrag in {sdp}"))
        .to_owned()
}

fn answers(messages: &[Value]) -> Vec<String> {
    messages
        .iter()
        .filter(|m| m["type"] == "answer")
        .map(|m| m["sdp"].as_str().unwrap().to_owned())
        .collect()
}

/// A peer that only exists to make a genuine offer (its own fresh ICE credentials).
struct Silent;
#[async_trait::async_trait]
impl PeerConnectionEventHandler for Silent {}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_ice_restart_keeps_the_session_its_slot_and_its_video() {
    require_loopback_only_network();
    let agent = keyed_agent();
    let status_topic = format!("peercam/{}/status", agent.device);
    let observer = Observer::start(agent.mqtt_port, std::slice::from_ref(&status_topic)).await;
    let alice = access(&agent, "alice");
    let viewer = TestViewer::start_keyed(
        agent.mqtt_port,
        &agent.device,
        &common::viewer::new_session_id(),
        Some(alice),
    )
    .await;
    viewer.wait_for_frames(60, Duration::from_secs(20)).await;
    observer
        .wait_for(&status_topic, Duration::from_secs(5), |s| s["viewers"] == 1)
        .await;
    let first_offer = viewer.local_sdp().await;
    let before = viewer.stats();
    let first_answer = answers(&before.camera_messages)
        .pop()
        .expect("the first answer");

    // The restart: webrtc-rs's own ice_restart offer, on the same sid, signed by its key.
    let restarted_at = Instant::now();
    let restart_offer = viewer.restart_ice().await;
    assert_ne!(ice_ufrag(&restart_offer), ice_ufrag(&first_offer));
    let answered = viewer
        .wait_until("the restart's answer", Duration::from_secs(10), |s| {
            answers(&s.camera_messages).len() == 2
        })
        .await;
    let answer_ms = restarted_at.elapsed().as_millis();
    let restart_answer = answers(&answered.camera_messages).pop().unwrap();
    assert_ne!(
        ice_ufrag(&restart_answer),
        ice_ufrag(&first_answer),
        "the camera restarted with new credentials"
    );
    assert_eq!(
        answered.rejected_answers, 0,
        "both answers carry the session's mac"
    );
    assert!(
        !answered
            .camera_messages
            .iter()
            .any(|m| m["type"] == "error" || m["type"] == "hangup"),
        "{:?}",
        answered.camera_messages
    );

    // Frames keep decoding over the restarted ICE generation.
    let frames_at_answer = answered.frames_decoded;
    let after = viewer
        .wait_for_frames(frames_at_answer + 60, Duration::from_secs(15))
        .await;
    let playing_ms = restarted_at.elapsed().as_millis();
    // The camera drops what it sends while it switches to the new pair (a frame or so: rtc
    // clears the selected pair when it restarts) and sends a keyframe as soon as the
    // restarted connection is up, so the decoder is whole again at once: no more errors.
    let settled = viewer
        .wait_for_frames(after.frames_decoded + 30, Duration::from_secs(10))
        .await;
    assert_eq!(
        settled.decode_errors, after.decode_errors,
        "the decoder recovered after the restart"
    );
    let connected = |states: &[String]| states.iter().filter(|s| *s == "connected").count();
    assert_eq!(
        connected(&after.connection_states),
        2,
        "the viewer's connection went through the restart: {:?}",
        after.connection_states
    );
    assert_eq!(agent.count_log("answered an ICE restart"), 1);
    // The same session: one slot all along, nothing ended, no second peer.
    assert_eq!(agent.count_log("new viewer session"), 1);
    assert_eq!(agent.count_log("session ended"), 0);
    let counts: Vec<Value> = observer
        .messages_on(&status_topic)
        .iter()
        .filter(|s| s["state"] == "online")
        .map(|s| s["viewers"].clone())
        .collect();
    assert_eq!(counts.last(), Some(&json!(1)), "{counts:?}");
    assert!(
        !counts.iter().skip_while(|c| **c != 1).any(|c| *c != 1),
        "the viewer count never moved: {counts:?}"
    );

    // A copy of the restart offer is a QoS 1 duplicate: no answer, no error.
    viewer
        .publish_raw(
            json!({"type": "offer", "sdp": restart_offer, "auth": access(&agent, "alice").offer_auth(&viewer.sid, &restart_offer)})
                .to_string()
                .into_bytes(),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let last = viewer.stats();
    assert_eq!(answers(&last.camera_messages).len(), 2);
    assert!(!last.camera_messages.iter().any(|m| m["type"] == "error"));
    println!(
        "figures: ICE restart answered {answer_ms} ms after the restart offer; 60 more frames {playing_ms} ms after it; {} frames before, {} after, {} undecodable (lost in the switch)",
        before.frames_decoded, after.frames_decoded, after.decode_errors
    );
    viewer.hangup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn another_key_holder_cannot_restart_a_session_that_is_not_theirs() {
    require_loopback_only_network();
    let agent = keyed_agent();
    let viewer = TestViewer::start_keyed(
        agent.mqtt_port,
        &agent.device,
        &common::viewer::new_session_id(),
        Some(access(&agent, "alice")),
    )
    .await;
    viewer.wait_for_frames(30, Duration::from_secs(20)).await;

    // Bob holds a valid key of his own and makes a genuine offer with fresh credentials,
    // then sends it, signed with his key, on Alice's session id.
    let bob = access(&agent, "bob");
    let (bob_pc, _channel) = receive_only_peer(Arc::new(Silent), Shared::new()).await;
    let bob_offer = bob_pc.create_offer(None).await.unwrap().sdp;
    assert_ne!(ice_ufrag(&bob_offer), ice_ufrag(&viewer.local_sdp().await));
    viewer
        .publish_raw(
            json!({"type": "offer", "sdp": bob_offer, "auth": bob.offer_auth(&viewer.sid, &bob_offer)})
                .to_string()
                .into_bytes(),
        )
        .await;
    let error = viewer.wait_for_error(Duration::from_secs(5)).await;
    assert_eq!(error["code"], "unauthorized", "{error}");

    // Nothing changed: one answer, the same session, and the video goes on.
    let refused = viewer.stats();
    let more = viewer
        .wait_for_frames(refused.frames_decoded + 30, Duration::from_secs(10))
        .await;
    assert_eq!(answers(&more.camera_messages).len(), 1);
    assert!(!more.camera_messages.iter().any(|m| m["type"] == "hangup"));
    assert_eq!(agent.count_log("ICE restart requested"), 0);
    assert_eq!(agent.count_log("session ended"), 0);
    let _ = bob_pc.close().await;
    viewer.hangup().await;
}
