//! The media pipeline's threads: capture (source) → encode → fan-out. Capture and
//! encoding each run on a dedicated OS thread joined by a two-frame queue.
//! It must never block on viewers or the network: a slow encoder drops frames at capture.

use crate::encode::{EncoderSettings, H264Encoder};
use crate::fanout::FanOut;
use crate::source::{Frame, VideoSource};
use crate::telemetry::PipelineCounters;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, RecvTimeoutError, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Frames waiting between capture and encoder; more would only add latency.
const ENCODE_QUEUE_FRAMES: usize = 2;

/// Health and control shared with the service.
#[derive(Default)]
pub struct PipelineHealth {
    stop: AtomicBool,
    /// Unix ms of the last captured frame the encoder thread dealt with (0 = none yet).
    last_frame_ms: AtomicU64,
}

impl PipelineHealth {
    /// Unix ms of the last captured frame the encoder thread dealt with, encoded or (with
    /// no viewers) skipped: it stops moving when capture or encoding is stuck.
    pub fn last_frame_ms(&self) -> u64 {
        self.last_frame_ms.load(Ordering::Relaxed)
    }
}

pub struct Pipeline {
    health: Arc<PipelineHealth>,
    threads: Vec<JoinHandle<()>>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Pipeline {
    pub fn start(
        mut source: Box<dyn VideoSource>,
        encoder_settings: EncoderSettings,
        fanout: Arc<FanOut>,
        counters: Arc<PipelineCounters>,
    ) -> anyhow::Result<Self> {
        let mut encoder = H264Encoder::new(encoder_settings)?;
        tracing::info!(
            width = encoder_settings.width,
            height = encoder_settings.height,
            fps = encoder_settings.fps,
            bitrate_kbps = encoder_settings.bitrate_kbps,
            keyframe_interval_s = encoder_settings.keyframe_interval_s,
            "H.264 encoder ready (openh264, constrained baseline)"
        );
        let health = Arc::new(PipelineHealth::default());
        let (frames_tx, frames_rx) = sync_channel::<Frame>(ENCODE_QUEUE_FRAMES);

        let capture_health = Arc::clone(&health);
        let capture_counters = Arc::clone(&counters);
        let capture = std::thread::Builder::new()
            .name("capture".to_owned())
            .spawn(move || {
                tracing::info!(source = %source.describe(), "video source started");
                while !capture_health.stop.load(Ordering::Relaxed) {
                    let frame = match source.next_frame() {
                        Ok(frame) => frame,
                        Err(err) => {
                            tracing::error!("video source failed: {err}");
                            std::thread::sleep(Duration::from_millis(500));
                            continue;
                        }
                    };
                    capture_counters.record_captured();
                    match frames_tx.try_send(frame) {
                        Ok(()) => {}
                        Err(TrySendError::Full(_)) => capture_counters.record_dropped(),
                        Err(TrySendError::Disconnected(_)) => break,
                    }
                }
            })?;

        let encode_health = Arc::clone(&health);
        let keyframes = Arc::clone(fanout.keyframes());
        let encode = std::thread::Builder::new()
            .name("encode".to_owned())
            .spawn(move || {
                while !encode_health.stop.load(Ordering::Relaxed) {
                    let frame = match frames_rx.recv_timeout(Duration::from_millis(100)) {
                        Ok(frame) => frame,
                        Err(RecvTimeoutError::Timeout) => continue,
                        Err(RecvTimeoutError::Disconnected) => break,
                    };
                    encode_health
                        .last_frame_ms
                        .store(unix_ms(), Ordering::Relaxed);
                    if fanout.subscriber_count() == 0 {
                        // Nobody watches: spare the board the encoder's CPU and heat. A
                        // viewer's subscription requests an IDR, so it starts at once.
                        continue;
                    }
                    let started = Instant::now();
                    let force_keyframe = keyframes.take_due(started);
                    match encoder.encode(&frame, force_keyframe) {
                        Ok(Some(encoded)) => {
                            if force_keyframe && !encoded.keyframe {
                                keyframes.request();
                            }
                            counters.record_encoded(
                                encoded.access_unit.len(),
                                encoded.keyframe,
                                started.elapsed().as_micros() as u64,
                            );
                            fanout.publish(encoded);
                        }
                        Ok(None) => {
                            counters.record_dropped();
                            if force_keyframe {
                                // The rate controller skipped the forced IDR; ask again.
                                keyframes.request();
                            }
                        }
                        Err(err) => {
                            counters.record_dropped();
                            tracing::warn!("encoding failed: {err}");
                        }
                    }
                }
            })?;
        Ok(Self {
            health,
            threads: vec![capture, encode],
        })
    }

    pub fn health(&self) -> &Arc<PipelineHealth> {
        &self.health
    }

    /// Stops both threads and waits for them.
    pub fn stop(mut self) {
        self.health.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}
