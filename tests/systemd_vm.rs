//! The viewer's half of tests/systemd-vm/run: the Rust test viewer (tests/common/viewer.rs)
//! watching the .deb-installed service that a real systemd (PID 1, in a VM) runs. It plays,
//! reads the telemetry the installed unit's sandbox lets through, and has systemd reload a
//! changed `webrtc.max_viewers` while it keeps playing. The VM's driver
//! (tests/systemd-vm/guest-check) starts the service first and checks the watchdog after.
//!
//! It must never run on a host: it rewrites /etc/peercam/peercam.toml and calls systemctl.
//! So the test is `#[ignore]`d (scripts/test's `cargo test` skips it) and also refuses to
//! run unless PEERCAM_SYSTEMD_VM=1, which only the VM's driver sets.

mod common;

use common::require_loopback_only_network;
use common::viewer::{Observer, TestViewer};
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

/// What the VM's driver configured: the installed config path, the device id and the
/// embedded broker's loopback port.
const CONFIG: &str = "/etc/peercam/peercam.toml";
const DEVICE: &str = "vm";
const MQTT_PORT: u16 = 1883;

/// `systemctl show -p NAME --value peercam`.
fn unit_property(name: &str) -> String {
    let output = Command::new("systemctl")
        .args(["show", "-p", name, "--value", "peercam"])
        .output()
        .expect("systemctl runs");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// The first telemetry message whose system CPU and used memory are both above zero.
fn with_system_figures(telemetry: &[Value]) -> Option<&Value> {
    telemetry.iter().find(|t| {
        let system = &t["system"];
        system["cpu_percent"].as_f64().is_some_and(|c| c > 0.0)
            && system["mem_used_bytes"].as_u64().is_some_and(|m| m > 0)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "runs only inside tests/systemd-vm/run's VM"]
async fn the_installed_service_plays_reports_and_reloads_under_systemd() {
    assert_eq!(
        std::env::var("PEERCAM_SYSTEMD_VM").as_deref(),
        Ok("1"),
        "this test rewrites {CONFIG} and drives systemctl: run it through tests/systemd-vm/run"
    );
    require_loopback_only_network();
    let status_topic = format!("peercam/{DEVICE}/status");
    let observer = Observer::start(MQTT_PORT, std::slice::from_ref(&status_topic)).await;
    let status = observer
        .wait_for(&status_topic, Duration::from_secs(30), |s| {
            s["state"] == "online"
        })
        .await;
    let max_before = status["max_viewers"]
        .as_u64()
        .expect("max_viewers in status");

    // Emulated CPU (TCG): generous waits; what is asserted is the outcome.
    let viewer = TestViewer::start(MQTT_PORT, DEVICE).await;
    let stats = viewer.wait_for_frames(30, Duration::from_secs(90)).await;
    assert!(stats.distinct_pictures > 1, "the picture moves: {stats:#?}");
    println!(
        "check: a viewer decodes frames: ok ({} frames {}x{}, first {} ms after the offer)",
        stats.frames_decoded,
        stats.width,
        stats.height,
        stats
            .first_frame_after_offer
            .unwrap_or_default()
            .as_millis()
    );

    let stats = viewer
        .wait_until(
            "telemetry with system CPU and memory",
            Duration::from_secs(30),
            |s| with_system_figures(&s.telemetry).is_some(),
        )
        .await;
    let telemetry = with_system_figures(&stats.telemetry).unwrap();
    println!(
        "check: telemetry carries system CPU and memory under the unit: ok (system {}, process {})",
        telemetry["system"], telemetry["process"]
    );

    // systemctl reload: ExecReload's SIGHUP; the same process applies the new max_viewers.
    let pid_before = unit_property("MainPID");
    let max_after = if max_before == 3 { 5 } else { 3 };
    let text = std::fs::read_to_string(CONFIG).unwrap();
    let from = format!("max_viewers = {max_before}\n");
    assert!(text.contains(&from), "{CONFIG} sets {from:?}:\n{text}");
    std::fs::write(
        CONFIG,
        text.replace(&from, &format!("max_viewers = {max_after}\n")),
    )
    .unwrap();
    let reload = Command::new("systemctl")
        .args(["reload", "peercam"])
        .status()
        .unwrap();
    assert!(reload.success(), "systemctl reload peercam: {reload}");
    observer
        .wait_for(&status_topic, Duration::from_secs(15), |s| {
            s["max_viewers"] == max_after && s["viewers"] == 1
        })
        .await;
    let before = viewer.stats().frames_decoded;
    let stats = viewer
        .wait_for_frames(before + 30, Duration::from_secs(60))
        .await;
    assert_eq!(
        unit_property("MainPID"),
        pid_before,
        "reloaded, not restarted"
    );
    assert_eq!(unit_property("ActiveState"), "active");
    println!(
        "check: systemctl reload applies max_viewers {max_before} -> {max_after} live: ok (same pid {pid_before}, viewer still counted, {} more frames decoded)",
        stats.frames_decoded - before
    );
    viewer.hangup().await;
}
