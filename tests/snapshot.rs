//! Snapshots end to end: the real agent's `GET /snapshot.jpg`, with and without access keys.
//! Each JPEG is decoded here and must show the configured size and a fresh latency stamp
//! (testsrc paints its capture time). Runs only inside a loopback-only network namespace.

mod common;

use common::whep::{get_with_bearer, http, HttpReply};
use common::{keys_auth_section, require_loopback_only_network, Agent, AgentOptions};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Checks a `200` snapshot reply: a JPEG of `width`x`height` whose stamp is within a second
/// of now and agrees with the capture-time header.
fn assert_fresh_jpeg(reply: &HttpReply, width: usize, height: usize) {
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.header("content-type"), Some("image/jpeg"));
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    let (w, h, stamp) = common::decode_stamped_jpeg(&reply.bytes);
    assert_eq!((w, h), (width, height));
    let stamp = stamp.expect("testsrc's stamp reads back from the JPEG");
    let age_ms = unix_ms().abs_diff(stamp);
    assert!(age_ms < 1000, "the snapshot is {age_ms} ms old");
    let header_ms: u64 = reply
        .header("x-peercam-capture-us")
        .expect("capture time header")
        .parse::<u64>()
        .unwrap()
        / 1000;
    assert_eq!(header_ms, stamp, "the header names the frame shown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_open_camera_serves_a_fresh_jpeg_of_its_size_without_any_viewer() {
    require_loopback_only_network();
    let agent = Agent::start(AgentOptions {
        http: true,
        width: 1280,
        height: 720,
        extra_sections: "[snapshot]\nquality = 70\n".into(),
        ..Default::default()
    });
    agent.wait_for_log("peercam ready", Duration::from_secs(10));
    let mut sizes = Vec::new();
    for _ in 0..3 {
        let reply = http(agent.http_port, "GET", "/snapshot.jpg", &[], "").await;
        assert_fresh_jpeg(&reply, 1280, 720);
        sizes.push(reply.bytes.len());
    }
    // Several askers at once share the next frame.
    let mut asks = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let port = agent.http_port;
        asks.spawn(async move { http(port, "GET", "/snapshot.jpg", &[], "").await });
    }
    for reply in asks.join_all().await {
        assert_fresh_jpeg(&reply, 1280, 720);
    }
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("snapshot-1280x720.jpg");
    let reply = http(agent.http_port, "GET", "/snapshot.jpg", &[], "").await;
    std::fs::write(&path, &reply.bytes).unwrap();
    println!(
        "figures: snapshot 1280x720 at quality 70: {sizes:?} bytes; saved {}",
        path.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_access_keys_a_snapshot_needs_the_whep_bearer_token() {
    require_loopback_only_network();
    let agent = Agent::start(AgentOptions {
        http: true,
        auth_section: keys_auth_section(&["mallory"]),
        ..Default::default()
    });
    agent.wait_for_log("peercam ready", Duration::from_secs(10));
    let port = agent.http_port;
    let none = http(port, "GET", "/snapshot.jpg", &[], "").await;
    assert_eq!(none.status, 401, "{none:?}");
    assert_eq!(none.header("www-authenticate"), Some("Bearer"));
    assert!(none.bytes.len() < 1000 && none.body.contains("access key"));

    let good = agent.access("tv", "1h");
    let token = good["whep_token"].as_str().unwrap();
    let forged = token.rsplit_once('.').unwrap().0.to_owned() + ".Zm9yZ2Vk";
    let revoked = agent.access("mallory", "1h");
    for (what, token) in [
        ("forged", forged.as_str()),
        ("revoked", revoked["whep_token"].as_str().unwrap()),
        ("garbage", "not-a-token"),
    ] {
        let refused = get_with_bearer(port, "/snapshot.jpg", token).await;
        assert_eq!(refused.status, 401, "{what}: {refused:?}");
    }
    let reply = get_with_bearer(port, "/snapshot.jpg", token).await;
    assert_fresh_jpeg(&reply, 640, 480);
}
