//! `peercam probe`: capture and encode N frames from a source, synchronously, and report
//! the negotiated mode, the achieved capture rate and the per-frame conversion and encode
//! costs. An admin's tool; it never touches the network and never starts the service.

use crate::encode::passthrough::Passthrough;
use crate::encode::{EncoderSettings, H264Encoder};
use crate::source::testsrc::TestSource;
use crate::source::v4l2::{V4l2Options, V4l2Source};
use crate::source::{Captured, SourceError, VideoSource};
use std::time::{Duration, Instant};

/// What was measured; `Display` prints it as `key: value` lines.
#[derive(Debug, Clone)]
pub struct ProbeReport {
    pub source: String,
    pub mode: String,
    pub frames: u64,
    pub bad_frames: u64,
    pub capture_fps: f64,
    pub convert_ms_avg: f64,
    pub encode_ms_avg: f64,
    pub keyframes: u64,
    pub bitrate_kbps: f64,
}

impl std::fmt::Display for ProbeReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "source: {}", self.source)?;
        writeln!(f, "mode: {}", self.mode)?;
        writeln!(f, "frames: {}", self.frames)?;
        writeln!(f, "bad_frames: {}", self.bad_frames)?;
        writeln!(f, "capture_fps: {:.2}", self.capture_fps)?;
        writeln!(f, "convert_ms_per_frame: {:.3}", self.convert_ms_avg)?;
        writeln!(f, "encode_ms_per_frame: {:.3}", self.encode_ms_avg)?;
        writeln!(f, "keyframes: {}", self.keyframes)?;
        writeln!(f, "bitrate_kbps: {:.0}", self.bitrate_kbps)
    }
}

pub enum ProbeSource {
    TestSrc { width: u32, height: u32, fps: u32 },
    V4l2(V4l2Options),
}

/// Captures `frames` frames (after one warm-up frame, so device start-up is not counted)
/// and encodes each one, or passes it through for an H.264 camera.
pub fn probe(
    source: ProbeSource,
    frames: u64,
    settings: EncoderSettings,
) -> Result<ProbeReport, String> {
    let mut source: Box<dyn VideoSource> = match source {
        ProbeSource::TestSrc { width, height, fps } => {
            Box::new(TestSource::new(width, height, fps)?)
        }
        ProbeSource::V4l2(options) => Box::new(V4l2Source::new(options)),
    };
    let mut encoder: Option<H264Encoder> = None;
    let mut passthrough = Passthrough::default();
    let (mut convert, mut encode) = (Duration::ZERO, Duration::ZERO);
    let (mut keyframes, mut bytes, mut bad_frames) = (0u64, 0u64, 0u64);
    let mut mode = String::new();
    let mut started = None;
    let mut captured_frames = 0u64;
    while captured_frames < frames {
        let captured = match source.next_frame() {
            Ok(captured) => captured,
            Err(SourceError::Frame(reason)) => {
                bad_frames += 1;
                tracing::warn!("bad frame: {reason}");
                continue;
            }
            Err(err) => return Err(err.to_string()),
        };
        if started.is_none() {
            // Warm-up frame: the clock starts now, so the achieved rate is the stream's own.
            started = Some(Instant::now());
            mode = describe_mode(&captured);
            continue;
        }
        captured_frames += 1;
        convert += source.last_convert_time();
        let began = Instant::now();
        let encoded = match captured {
            Captured::Raw(frame) => {
                let encoder = match &mut encoder {
                    Some(encoder) => encoder,
                    None => encoder.insert(
                        H264Encoder::new(EncoderSettings {
                            width: frame.width,
                            height: frame.height,
                            ..settings
                        })
                        .map_err(|e| e.to_string())?,
                    ),
                };
                encoder.encode(&frame, false).map_err(|e| e.to_string())?
            }
            Captured::H264 {
                access_unit,
                capture_us,
                monotonic_us,
                sequence,
                ..
            } => passthrough.access_unit(&access_unit, capture_us, monotonic_us, sequence),
        };
        encode += began.elapsed();
        if let Some(encoded) = encoded {
            keyframes += u64::from(encoded.keyframe);
            bytes += encoded.access_unit.len() as u64;
        }
    }
    let elapsed = started
        .map(|s| s.elapsed())
        .unwrap_or_default()
        .as_secs_f64()
        .max(1e-9);
    let n = frames.max(1) as f64;
    Ok(ProbeReport {
        source: source.describe(),
        mode,
        frames,
        bad_frames,
        capture_fps: frames as f64 / elapsed,
        convert_ms_avg: convert.as_secs_f64() * 1000.0 / n,
        encode_ms_avg: encode.as_secs_f64() * 1000.0 / n,
        keyframes,
        bitrate_kbps: bytes as f64 * 8.0 / 1000.0 / elapsed,
    })
}

fn describe_mode(captured: &Captured) -> String {
    match captured {
        Captured::Raw(frame) => format!("{}x{} raw → I420 → openh264", frame.width, frame.height),
        Captured::H264 { width, height, .. } => format!("{width}x{height} H.264 passthrough"),
    }
}
