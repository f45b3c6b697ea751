//! The first frame: a regression guard, not a benchmark (scripts/bench has the figures).
//! Sequential viewers join a 1280x720@30 camera; each must decode its first frame well
//! inside a second of its offer, and the agent must log every phase of each session's
//! start, in order, timed from the offer. Its packets carry the playout delay asked for.

mod common;

use common::viewer::TestViewer;
use common::{require_loopback_only_network, Agent, AgentOptions};
use std::time::Duration;

const PHASES: [&str; 6] = [
    "offer received",
    "answer published",
    "ice connected",
    "dtls connected",
    "first rtp sent",
    "first keyframe sent",
];

/// The `since_offer_ms` of each phase logged for `sid`, in log order.
fn logged_phases(log: &[String], sid: &str) -> Vec<(String, f64)> {
    log.iter()
        .filter(|line| line.contains(sid) && line.contains("session phase"))
        .filter_map(|line| {
            let phase = line.split("phase=\"").nth(1)?.split('"').next()?;
            let ms = line.split("since_offer_ms=\"").nth(1)?.split('"').next()?;
            Some((phase.to_owned(), ms.parse().ok()?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_see_their_first_frame_well_inside_a_second() {
    require_loopback_only_network();
    let agent = Agent::start(AgentOptions {
        width: 1280,
        height: 720,
        env: vec![("RUST_LOG".into(), "info,peercam::session=debug".into())],
        ..Default::default()
    });
    let mut first_frames = Vec::new();
    for _ in 0..5 {
        let viewer = TestViewer::start(agent.mqtt_port, &agent.device).await;
        let stats = viewer.wait_for_frames(1, Duration::from_secs(10)).await;
        let first = stats.first_frame_after_offer.unwrap();
        println!(
            "figures: first frame {:.1} ms after the offer; viewer's phases {:?}",
            first.as_secs_f64() * 1000.0,
            stats.phases
        );
        assert_eq!((stats.width, stats.height), (1280, 720));
        // webrtc.playout_delay_ms's default, [0, 100] ms in 10 ms units, 12 bits each.
        assert_eq!(
            stats.playout_delay.as_deref(),
            Some(&[0x00, 0x00, 0x0a][..])
        );
        assert!(
            first < Duration::from_secs(1),
            "first frame {first:?} after the offer"
        );
        first_frames.push(first);
        // Every phase is logged before the viewer can decode its first frame.
        let sid = viewer.sid.clone();
        viewer.leave().await;
        let phases = logged_phases(&agent.log_lines(), &sid);
        let names: Vec<&str> = phases.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, PHASES, "phases logged for {sid}: {phases:?}");
        assert!(
            phases.windows(2).all(|pair| pair[0].1 <= pair[1].1),
            "phases out of order: {phases:?}"
        );
        assert!(phases[5].1 < 1000.0, "{phases:?}");
    }
    first_frames.sort();
    println!(
        "figures: first frame after offer over {} joins: median {:?}, max {:?}",
        first_frames.len(),
        first_frames[first_frames.len() / 2],
        first_frames.last().unwrap()
    );
}
