//! A wall-clock step mid-stream, as NTP gives a board without RTC: the whole service runs
//! in-process (`service::run`, testsrc), a real viewer decodes over the embedded broker,
//! and the test steps the process's Unix clock back an hour, then forward three, through
//! `clock::step_wall_clock_for_tests`. The stream must not notice: frames keep decoding
//! and RTP timestamps keep advancing at 90 kHz of real time. The latency stamp, Unix time
//! by design, does follow the step.
//! The step is process-wide, so this file holds this one test. Runs only inside a
//! loopback-only network namespace (scripts/in-loopback-netns).

mod common;

use common::viewer::{Observer, TestViewer};
use common::{free_port, require_loopback_only_network, InProcessAgent};
use std::time::{Duration, Instant};

const HOUR_US: i64 = 3_600 * 1_000_000;
const RTP_HZ: f64 = 90_000.0;

fn config_text(mqtt_port: u16) -> String {
    format!(
        r#"[device]
id = "clockstep"
name = "Clock step camera"
[video]
# Wide enough (48 cells of 8 px) to carry the latency stamp.
width = 384
height = 240
fps = 15
[broker]
listen = "127.0.0.1:{mqtt_port}"
ws_listen = "off"
[webrtc]
udp_addrs = ["127.0.0.1:0"]
[http]
listen = "off"
[auth]
mode = "open"
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rtp_timestamps_and_decoding_ride_out_wall_clock_steps_of_hours() {
    require_loopback_only_network();
    let mqtt_port = free_port();
    let agent = InProcessAgent::start("clockstep", &config_text(mqtt_port), mqtt_port);
    let status = "peercam/clockstep/status".to_owned();
    let observer = Observer::start(mqtt_port, std::slice::from_ref(&status)).await;
    observer
        .wait_for(&status, Duration::from_secs(10), |v| v["state"] == "online")
        .await;

    let viewer = TestViewer::start(mqtt_port, "clockstep").await;
    let before = viewer.wait_for_frames(15, Duration::from_secs(30)).await;
    assert!(
        !before.latencies_ms.is_empty(),
        "before any step, the stamp matches the viewer's clock: {before:?}"
    );

    let mut decoded = before.frames_decoded;
    for (step_hours, name) in [(-1, "back one hour"), (3, "forward three hours")] {
        peercam::clock::step_wall_clock_for_tests(step_hours * HOUR_US);
        let stepped_at = Instant::now();
        let unreadable = viewer.stats().unreadable_stamps;
        let after = viewer
            .wait_until(
                &format!("15 more decoded frames after the clock stepped {name}"),
                Duration::from_secs(20),
                |s| s.frames_decoded >= decoded + 15 && s.unreadable_stamps >= unreadable + 10,
            )
            .await;
        println!(
            "figures: clock stepped {name}: 15 more frames decoded {:?} later, {} decode errors",
            stepped_at.elapsed(),
            after.decode_errors
        );
        decoded = after.frames_decoded;
    }

    // The stamps after the steps are Unix time, hours away from the viewer's own clock:
    // the wall clock moved, and the picture says so.
    let stats = viewer.stats();
    assert_eq!(stats.decode_errors, 0, "{stats:?}");

    let frames = viewer.rtp_frames();
    assert!(frames.len() >= 45, "{} access units", frames.len());
    let mut largest_step = 0i64;
    for pair in frames.windows(2) {
        let ((_, earlier), (_, later)) = (pair[0], pair[1]);
        // Wrapping difference: RTP timestamps start at a random offset and wrap at 2^32.
        let ticks = i64::from(later.wrapping_sub(earlier) as i32);
        assert!(
            ticks >= 0,
            "RTP timestamp went back {} ticks ({earlier} → {later})",
            -ticks
        );
        largest_step = largest_step.max(ticks);
    }
    // Frames are 1/15 s apart; an hour would be 324,000,000 ticks. Allow for skipped frames.
    assert!(
        largest_step < 5 * RTP_HZ as i64,
        "an RTP step of {largest_step} ticks between two frames"
    );
    let ((first_at, first), (last_at, last)) = (frames[0], frames[frames.len() - 1]);
    let advanced = f64::from(last.wrapping_sub(first));
    let elapsed = last_at.duration_since(first_at).as_secs_f64();
    let rate = advanced / elapsed;
    println!(
        "figures: {} access units over {elapsed:.1} s, RTP advanced {rate:.0} ticks/s, \
         largest step between frames {largest_step} ticks",
        frames.len()
    );
    assert!(
        (RTP_HZ * 0.5..RTP_HZ * 2.0).contains(&rate),
        "RTP advanced {rate} ticks per second of real time"
    );

    agent.stop().await;
}
