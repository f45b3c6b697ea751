//! The whole service driven in-process: `service::run` with its stop token and reload
//! requests given by the test instead of OS signals. A real viewer watches over the
//! embedded broker while the test reloads the configuration and stops the service.
//! Runs only inside a loopback-only network namespace (scripts/in-loopback-netns).

mod common;

use common::viewer::{Observer, TestViewer};
use common::{free_port, require_loopback_only_network, InProcessAgent};
use std::time::{Duration, Instant};

fn config_text(mqtt_port: u16, max_viewers: usize) -> String {
    format!(
        r#"[device]
id = "inproc"
name = "In-process camera"
[video]
width = 320
height = 240
fps = 15
[broker]
listen = "127.0.0.1:{mqtt_port}"
ws_listen = "off"
[webrtc]
max_viewers = {max_viewers}
udp_addrs = ["127.0.0.1:0"]
[http]
listen = "off"
[telemetry]
interval_ms = 300
[auth]
mode = "open"
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_service_runs_in_process_reloads_and_stops_on_its_token() {
    require_loopback_only_network();
    let mqtt_port = free_port();
    let agent = InProcessAgent::start("inproc", &config_text(mqtt_port, 8), mqtt_port);
    let status = "peercam/inproc/status".to_owned();
    let observer = Observer::start(mqtt_port, std::slice::from_ref(&status)).await;
    observer
        .wait_for(&status, Duration::from_secs(10), |v| {
            v["state"] == "online" && v["max_viewers"] == 8
        })
        .await;

    let viewer = TestViewer::start(mqtt_port, "inproc").await;
    let stats = viewer.wait_for_frames(30, Duration::from_secs(30)).await;
    assert_eq!((stats.width, stats.height), (320, 240));

    // A reload applies max_viewers at once, and the viewer keeps playing.
    std::fs::write(&agent.config_path, config_text(mqtt_port, 3)).unwrap();
    agent.reload.send(()).await.unwrap();
    observer
        .wait_for(&status, Duration::from_secs(5), |v| {
            v["max_viewers"] == 3 && v["viewers"] == 1
        })
        .await;
    let before = viewer.stats().frames_decoded;
    viewer
        .wait_for_frames(before + 15, Duration::from_secs(10))
        .await;

    let stopping = Instant::now();
    agent.stop().await;
    let stopped_after = stopping.elapsed();
    let stats = viewer
        .wait_until("a shutdown hangup", Duration::from_secs(5), |s| {
            s.camera_messages
                .iter()
                .any(|m| m["type"] == "hangup" && m["reason"] == "shutdown")
        })
        .await;
    assert!(stats.frames_decoded >= before + 15);
    observer
        .wait_for(&status, Duration::from_secs(5), |v| v["state"] == "offline")
        .await;
    println!("figures: in-process service stopped {stopped_after:?} after its token was cancelled");
}
