//! Access keys end to end: the real agent with `auth.mode = "keys"`, keys printed by the
//! real `peercam access`, a signing test viewer, and an attacker that is a plain MQTT client
//! reading and writing every topic. Runs only inside a loopback-only network namespace.

mod common;

use common::viewer::{new_session_id, AccessKey, Observer, TestViewer};
use common::whep::{http, WhepViewer};
use common::{keys_auth_section, require_loopback_only_network, Agent, AgentOptions};
use serde_json::{json, Value};
use std::time::Duration;

/// An agent that admits only key holders; `mallory` is revoked.
fn keyed_agent() -> Agent {
    Agent::start(AgentOptions {
        http: true,
        auth_section: keys_auth_section(&["mallory"]),
        ..Default::default()
    })
}

/// The error the camera sends to an offer published by `attacker` on session `sid`.
async fn offer_error(attacker: &Observer, agent: &Agent, sid: &str, offer: Value) -> Value {
    let to_viewer = format!("peercam/{}/session/{sid}/to-viewer", agent.device);
    let to_camera = format!("peercam/{}/session/{sid}/to-camera", agent.device);
    attacker.publish(&to_camera, offer.to_string()).await;
    attacker
        .wait_for(&to_viewer, Duration::from_secs(5), |m| m["type"] == "error")
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_key_holders_watch_and_a_broker_attacker_cannot_hijack() {
    require_loopback_only_network();
    let agent = keyed_agent();
    let device = agent.device.clone();
    let attacker = Observer::start(agent.mqtt_port, &["peercam/#".to_owned()]).await;
    let status = attacker
        .wait_for(
            &format!("peercam/{device}/status"),
            Duration::from_secs(5),
            |v| v["state"] == "online",
        )
        .await;
    assert_eq!(status["auth"], "keys");

    let alice = AccessKey::from_json(&agent.access("alice", "1h"));
    let mallory = AccessKey::from_json(&agent.access("mallory", "1h"));
    let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 102\r\na=rtpmap:102 H264/90000\r\n";
    let expired = AccessKey {
        exp: 1_000_000_000,
        ..alice.clone()
    };
    let other_device = AccessKey {
        key: vec![0; 32],
        ..alice.clone()
    };
    let mut cases: Vec<(&str, Value, &str)> = Vec::new();
    let sid = |n: u32| format!("attack{n:04}x");
    cases.push((
        "no auth",
        json!({"type": "offer", "sdp": sdp}),
        "missing auth",
    ));
    let mut wrong_mac = alice.offer_auth(&sid(1), sdp);
    wrong_mac["mac"] = json!(alice.mac("something else"));
    cases.push((
        "a wrong mac",
        json!({"type": "offer", "sdp": sdp, "auth": wrong_mac}),
        "bad mac",
    ));
    cases.push((
        "expired",
        json!({"type": "offer", "sdp": sdp, "auth": expired.offer_auth(&sid(2), sdp)}),
        "expired",
    ));
    cases.push((
        "revoked",
        json!({"type": "offer", "sdp": sdp, "auth": mallory.offer_auth(&sid(3), sdp)}),
        "revoked",
    ));
    cases.push((
        "for another device",
        json!({"type": "offer", "sdp": sdp, "auth": other_device.offer_auth(&sid(4), sdp)}),
        "bad mac",
    ));
    let changed = sdp.replace("H264", "VP8");
    cases.push((
        "an SDP changed after signing",
        json!({"type": "offer", "sdp": changed, "auth": alice.offer_auth(&sid(5), sdp)}),
        "bad mac",
    ));
    for (n, (what, offer, cause)) in cases.into_iter().enumerate() {
        let sid = sid(n as u32);
        let error = offer_error(&attacker, &agent, &sid, offer).await;
        assert_eq!(error["code"], "unauthorized", "{what}: {error}");
        assert!(
            error["message"].as_str().unwrap().starts_with(cause),
            "{what}: {error}"
        );
        assert!(
            !agent
                .log_lines()
                .iter()
                .any(|l| l.contains(&sid) && l.contains("new viewer session")),
            "{what}: no session may start"
        );
    }

    // A key holder watches.
    let viewer_sid = new_session_id();
    let viewer =
        TestViewer::start_keyed(agent.mqtt_port, &device, &viewer_sid, Some(alice.clone())).await;
    let stats = viewer.wait_for_frames(60, Duration::from_secs(30)).await;
    assert_eq!((stats.width, stats.height), (640, 480));
    let to_camera = format!("peercam/{device}/session/{viewer_sid}/to-camera");
    let to_viewer = format!("peercam/{device}/session/{viewer_sid}/to-viewer");
    let answer = attacker
        .messages_on(&to_viewer)
        .into_iter()
        .find(|m| m["type"] == "answer")
        .expect("the attacker saw the answer");
    assert!(
        answer["mac"].is_string(),
        "the camera signs its answer: {answer}"
    );

    // (a) The viewer's auth replayed with the attacker's own SDP, on its sid and a new one.
    let offer = attacker
        .messages_on(&to_camera)
        .into_iter()
        .find(|m| m["type"] == "offer")
        .unwrap();
    let replay = json!({"type": "offer", "sdp": sdp, "auth": offer["auth"]});
    let error = offer_error(&attacker, &agent, &viewer_sid, replay.clone()).await;
    assert_eq!(error["code"], "unauthorized", "{error}");
    let error = offer_error(&attacker, &agent, &sid(99), replay).await;
    assert_eq!(error["code"], "unauthorized", "{error}");

    // (b) An unsigned hangup, and one with a forged mac, change nothing.
    attacker
        .publish(&to_camera, json!({"type": "hangup"}).to_string())
        .await;
    attacker
        .publish(
            &to_camera,
            json!({"type": "hangup", "mac": alice.mac("hangup\nother")}).to_string(),
        )
        .await;
    let before = viewer.stats().frames_decoded;
    viewer
        .wait_for_frames(before + 30, Duration::from_secs(10))
        .await;
    assert!(viewer
        .stats()
        .camera_messages
        .iter()
        .all(|m| m["type"] != "hangup"));

    // (c) A forged answer published the moment a new viewer offers is refused; it plays
    // from the camera's real answer.
    let second_sid = new_session_id();
    let second_to_viewer = format!("peercam/{device}/session/{second_sid}/to-viewer");
    let forger = tokio::spawn({
        let attacker_port = agent.mqtt_port;
        let second_to_camera = format!("peercam/{device}/session/{second_sid}/to-camera");
        let forged_sdp = answer["sdp"].clone();
        async move {
            let spy = Observer::start(attacker_port, std::slice::from_ref(&second_to_camera)).await;
            spy.wait_for(&second_to_camera, Duration::from_secs(20), |m| {
                m["type"] == "offer"
            })
            .await;
            let forged = json!({"type": "answer", "sdp": forged_sdp, "mac": "Zm9yZ2Vk"});
            spy.publish(&second_to_viewer, forged.to_string()).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second =
        TestViewer::start_keyed(agent.mqtt_port, &device, &second_sid, Some(alice.clone())).await;
    forger.await.unwrap();
    let stats = second.wait_for_frames(30, Duration::from_secs(30)).await;
    assert!(
        stats.rejected_answers >= 1,
        "the forged answer was refused: {stats:?}"
    );

    // The owner's signed hangup ends its session.
    viewer.hangup().await;
    agent.wait_for_log("reason=\"viewer-hangup\"", Duration::from_secs(5));
    println!(
        "figures: keyed viewer decoded {} frames; forged answers refused {}",
        stats.frames_decoded, stats.rejected_answers
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forged_retained_statuses_are_put_right_within_two_seconds() {
    require_loopback_only_network();
    let agent = keyed_agent();
    let status = format!("peercam/{}/status", agent.device);
    let attacker = Observer::start(agent.mqtt_port, std::slice::from_ref(&status)).await;
    let truth = attacker
        .wait_for(&status, Duration::from_secs(5), |v| v["state"] == "online")
        .await;
    let payload = "\"><img src=x onerror=window.__pwned=1>";
    let forgeries = [
        json!({"type": "status", "state": "offline", "device": agent.device}),
        json!({"type": "status", "state": payload, "device": agent.device, "name": payload}),
    ];
    for forged in forgeries {
        let before = attacker.messages_on(&status).len();
        let started = std::time::Instant::now();
        attacker.publish_retained(&status, forged.to_string()).await;
        // The forgery reaches every subscriber, then the camera puts its own status back.
        loop {
            let seen: Vec<Value> = attacker.messages_on(&status).split_off(before);
            let forged_at = seen.iter().position(|v| *v == forged);
            if forged_at.is_some_and(|at| seen[at..].contains(&truth)) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "not corrected within 2 s: {seen:#?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let corrected_after = started.elapsed();
        // A new subscriber, too, reads the truth from the broker's retained copy.
        let fresh = Observer::start(agent.mqtt_port, std::slice::from_ref(&status)).await;
        let retained = fresh
            .wait_for(&status, Duration::from_secs(5), |_| true)
            .await;
        assert_eq!(retained, truth);
        println!("figures: forged status corrected within {corrected_after:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn whep_needs_a_valid_bearer_token() {
    require_loopback_only_network();
    let agent = keyed_agent();
    agent.wait_for_log("WHEP endpoint at", Duration::from_secs(10));
    let port = agent.http_port;
    let sdp = [("Content-Type", "application/sdp")];
    let offer =
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 102\r\n";
    let none = http(port, "POST", "/whep", &sdp, offer).await;
    assert_eq!(none.status, 401, "{none:?}");
    assert_eq!(none.header("www-authenticate"), Some("Bearer"));
    let good = agent.access("tv", "1h");
    let token = good["whep_token"].as_str().unwrap();
    let forged = token.rsplit_once('.').unwrap().0.to_owned() + ".Zm9yZ2Vk";
    let revoked = agent.access("mallory", "1h");
    for (what, token, reason) in [
        ("forged", forged.as_str(), "bad mac"),
        (
            "revoked",
            revoked["whep_token"].as_str().unwrap(),
            "revoked",
        ),
        ("garbage", "not-a-token", "bad mac"),
    ] {
        let bearer = format!("Bearer {token}");
        let headers = [
            ("Content-Type", "application/sdp"),
            ("Authorization", bearer.as_str()),
        ];
        let refused = http(port, "POST", "/whep", &headers, offer).await;
        assert_eq!(refused.status, 403, "{what}: {refused:?}");
        assert!(refused.body.starts_with(reason), "{what}: {refused:?}");
    }
    let player = WhepViewer::start_with_token(port, token)
        .await
        .expect("201 with a valid token");
    let stats = player.wait_for_frames(30, Duration::from_secs(30)).await;
    assert_eq!((stats.width, stats.height), (640, 480));
}
