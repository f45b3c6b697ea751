//! Benchmark (ignored by default; prints figures, asserts nothing about speed):
//! the agent's CPU use at 1280x720@30 with 1 and 5 viewers, time to first frame, and
//! capture-to-decode latency read from the stamp.
//! Run: scripts/in-loopback-netns cargo test --release --test bench -- --ignored --nocapture

mod common;

use common::viewer::TestViewer;
use common::{require_loopback_only_network, Agent, AgentOptions};
use std::time::{Duration, Instant};

fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / clock_ticks_per_second()
}

fn percentile(values: &[i64], p: f64) -> i64 {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    sorted
        .get(((sorted.len() as f64 - 1.0) * p) as usize)
        .copied()
        .unwrap_or(-1)
}

async fn measure(label: &str, pid: u32) {
    let (t0, c0) = (Instant::now(), cpu_seconds(pid));
    tokio::time::sleep(Duration::from_secs(10)).await;
    let percent = (cpu_seconds(pid) - c0) / t0.elapsed().as_secs_f64() * 100.0;
    println!("bench: {label}: agent CPU {percent:.1}% of one core");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "benchmark: prints figures"]
async fn agent_cpu_and_latency_at_720p30() {
    require_loopback_only_network();
    let agent = Agent::start(AgentOptions {
        width: 1280,
        height: 720,
        fps: 30,
        // Five viewers offer at once: room for all of them connecting together.
        webrtc_extra: "max_pending = 5".into(),
        ..Default::default()
    });
    measure("0 viewers (capture only; the encoder idles)", agent.pid()).await;
    for count in [1usize, 5] {
        let mut viewers = Vec::new();
        for _ in 0..count {
            viewers.push(TestViewer::start(agent.mqtt_port, &agent.device).await);
        }
        for viewer in &viewers {
            viewer.wait_for_frames(30, Duration::from_secs(30)).await;
        }
        measure(&format!("{count} viewer(s) at 1280x720@30"), agent.pid()).await;
        for (i, viewer) in viewers.iter().enumerate() {
            let stats = viewer.stats();
            println!(
                "bench: {count} viewer(s): viewer {i}: frames {} first frame {:?} after offer, latency p50 {} ms p95 {} ms, size {}x{}",
                stats.frames_decoded,
                stats.first_frame_after_offer,
                percentile(&stats.latencies_ms, 0.5),
                percentile(&stats.latencies_ms, 0.95),
                stats.width,
                stats.height
            );
        }
        for viewer in &viewers {
            viewer.hangup().await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
