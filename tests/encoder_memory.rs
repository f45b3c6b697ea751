//! What a 720p encoder keeps resident: the growth of this process's anonymous memory
//! (`RssAnon` in /proc/self/status) while one is made and encodes a few frames. This test
//! binary holds this one test, so nothing else allocates meanwhile. openh264 sizes its
//! bitstream buffers for the worst case; the vendored openh264-sys2 (vendor/README.md)
//! takes them from calloc, so only what a frame writes becomes resident. It must never
//! depend on timing.

mod common;

use peercam::encode::{EncoderSettings, H264Encoder};
use peercam::source::testsrc::TestSource;

/// Growth allowed, in MiB. With calloc'd buffers a 720p encoder on two slice threads grew
/// this process by 7.4 MiB (reference pictures and the encoder's state); with openh264's
/// own malloc + memset, by 18.2 MiB: this catches the patch being lost.
const MAX_GROWTH_MIB: f64 = 12.0;

#[test]
fn a_720p_encoder_keeps_only_what_it_writes_resident() {
    let (width, height) = (1280, 720);
    // The frames are made first, so their memory is in the baseline.
    let mut source = TestSource::new(width, height, 30).expect("testsrc");
    let frames: Vec<_> = (0..10).map(|_| source.next_frame()).collect();
    let before = common::own_rss_anon_kib();
    let mut encoder = H264Encoder::new(EncoderSettings {
        width,
        height,
        fps: 30,
        bitrate_kbps: 2000,
        keyframe_interval_s: 2,
    })
    .expect("openh264 encoder");
    let mut keyframes = 0;
    for (index, frame) in frames.iter().enumerate() {
        // One forced IDR among P-frames: both kinds of picture write their buffers.
        if let Some(encoded) = encoder.encode(frame, index == 5).expect("encode") {
            keyframes += usize::from(encoded.keyframe);
        }
    }
    let grown_mib = common::own_rss_anon_kib().saturating_sub(before) as f64 / 1024.0;
    println!("720p encoder: anonymous memory grew by {grown_mib:.1} MiB over 10 frames");
    assert!(keyframes >= 2, "the first and the forced IDR: {keyframes}");
    assert!(
        grown_mib <= MAX_GROWTH_MIB,
        "a 720p encoder made this process {grown_mib:.1} MiB bigger (at most {MAX_GROWTH_MIB} MiB)"
    );
}
