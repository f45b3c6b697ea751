//! `/metrics` end to end: the real agent's Prometheus text, parsed by prometheus-parse, moves
//! while a viewer watches; with access keys on it needs the WHEP bearer token; it can be
//! turned off. Runs only inside a loopback-only network namespace.

mod common;

use common::viewer::TestViewer;
use common::whep::http;
use common::{keys_auth_section, require_loopback_only_network, Agent, AgentOptions};
use std::collections::BTreeMap;
use std::time::Duration;

/// Each sample by `name{label=value,…}` (labels sorted); a histogram by its count.
async fn scrape(port: u16, headers: &[(&str, &str)]) -> BTreeMap<String, f64> {
    let reply = http(port, "GET", "/metrics", headers, "").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        reply.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    common::prometheus::samples(&reply.body)
}

fn get(samples: &BTreeMap<String, f64>, name: &str) -> f64 {
    *samples
        .get(name)
        .unwrap_or_else(|| panic!("{name} missing from {samples:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn counters_move_while_a_viewer_watches_and_its_end_is_counted() {
    require_loopback_only_network();
    let agent = Agent::start(AgentOptions {
        http: true,
        ..Default::default()
    });
    agent.wait_for_log("peercam ready", Duration::from_secs(10));
    let idle = scrape(agent.http_port, &[]).await;
    assert!(idle.keys().all(|name| name.starts_with("peercam_")));
    assert_eq!(get(&idle, "peercam_viewers{}"), 0.0);
    assert_eq!(get(&idle, "peercam_camera_available{}"), 1.0);
    assert!(get(&idle, "peercam_frames_captured_total{}") > 0.0);
    assert_eq!(
        get(&idle, "peercam_frames_encoded_total{}"),
        0.0,
        "nobody watches"
    );

    let viewer = TestViewer::start(agent.mqtt_port, &agent.device).await;
    viewer.wait_for_frames(30, Duration::from_secs(20)).await;
    let watching = scrape(agent.http_port, &[]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let later = scrape(agent.http_port, &[]).await;
    assert_eq!(get(&later, "peercam_viewers{}"), 1.0);
    assert_eq!(get(&later, "peercam_pending_sessions{}"), 0.0);
    for moving in [
        "peercam_frames_captured_total{}",
        "peercam_frames_encoded_total{}",
        "peercam_sent_bytes_total{}",
        "peercam_encode_seconds{}",
    ] {
        assert!(
            get(&later, moving) > get(&watching, moving),
            "{moving}: {} then {}",
            get(&watching, moving),
            get(&later, moving)
        );
    }
    assert!(
        get(&later, "peercam_keyframes_total{kind=forced}") >= 1.0,
        "the join's IDR"
    );
    assert!(
        later.contains_key("peercam_keyframes_total{kind=periodic}"),
        "both kinds are reported: {later:#?}"
    );
    assert_eq!(get(&later, "peercam_mqtt_reconnects_total{}"), 0.0);

    viewer.leave().await;
    let mut ended = 0.0;
    for _ in 0..50 {
        let after = scrape(agent.http_port, &[]).await;
        ended = after
            .get("peercam_sessions_ended_total{reason=viewer-hangup}")
            .copied()
            .unwrap_or(0.0);
        if ended >= 1.0 {
            assert_eq!(get(&after, "peercam_viewers{}"), 0.0);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ended, 1.0, "the hangup is counted by its reason");
    println!(
        "figures: /metrics while watching 2 s: +{} frames encoded, +{} bytes sent",
        get(&later, "peercam_frames_encoded_total{}")
            - get(&watching, "peercam_frames_encoded_total{}"),
        get(&later, "peercam_sent_bytes_total{}") - get(&watching, "peercam_sent_bytes_total{}"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_access_keys_metrics_need_the_whep_bearer_token_and_can_be_turned_off() {
    require_loopback_only_network();
    let agent = Agent::start(AgentOptions {
        http: true,
        auth_section: keys_auth_section(&[]),
        ..Default::default()
    });
    agent.wait_for_log("peercam ready", Duration::from_secs(10));
    let refused = http(agent.http_port, "GET", "/metrics", &[], "").await;
    assert_eq!(refused.status, 401, "{refused:?}");
    assert_eq!(refused.header("www-authenticate"), Some("Bearer"));
    assert!(
        !refused.body.contains("peercam_"),
        "no figures without a token"
    );
    let access = agent.access("grafana", "1h");
    let bearer = format!("Bearer {}", access["whep_token"].as_str().unwrap());
    let samples = scrape(agent.http_port, &[("Authorization", &bearer)]).await;
    assert_eq!(get(&samples, "peercam_camera_available{}"), 1.0);
    drop(agent);

    let off = Agent::start(AgentOptions {
        http: true,
        extra_sections: "[metrics]\nenabled = false\n".into(),
        ..Default::default()
    });
    off.wait_for_log("peercam ready", Duration::from_secs(10));
    let missing = http(off.http_port, "GET", "/metrics", &[], "").await;
    // Not served, and said so: a scraper gets a 404 with the reason, not the page.
    assert_eq!(missing.status, 404, "{missing:?}");
    assert!(missing.body.contains("metrics are off"), "{missing:?}");
    assert!(!missing.body.contains("peercam_frames"), "{missing:?}");
}
