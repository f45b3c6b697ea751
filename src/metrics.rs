//! Prometheus metrics for `GET /metrics`: families the session core, the media senders and
//! signaling record into (atomics), and a collector that reads the pipeline's own counters
//! and the camera's state at scrape time, so nothing is counted twice. Every name starts
//! with `peercam_`. It must never block a recorder, and labels never carry unbounded
//! values (no viewer names, session ids or addresses): only end reasons and error codes.

use crate::pipeline::PipelineCounters;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use tokio::sync::watch;

/// One label with a value from a fixed set (an end reason, an error code, a keyframe kind).
pub type Label = [(&'static str, &'static str); 1];

/// The encoder's time per frame: 1 ms to about 0.5 s, doubling.
pub fn encode_seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 10))
}

/// What the parts record into; [`Metrics::render`] writes the text exposition.
pub struct Metrics {
    registry: Registry,
    /// Sessions ended, by `reason` (`EndReason::as_str`).
    pub sessions_ended: Family<Label, Counter>,
    /// Offers (and other messages) refused with an error, by `code` (`ErrorCode::as_str`).
    pub offers_rejected: Family<Label, Counter>,
    /// RTP payload bytes handed to viewers' connections.
    pub bytes_sent: Counter,
    /// Connections to the MQTT broker made again after one was lost.
    pub mqtt_reconnects: Counter,
    /// Viewers connected now.
    pub viewers: Gauge,
    /// Sessions offered but not yet connected.
    pub pending_sessions: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// The families, and a collector over `pipeline`'s counters (its encode-time histogram
    /// included) and `camera_available`.
    pub fn new(pipeline: Arc<PipelineCounters>, camera_available: watch::Receiver<bool>) -> Self {
        let mut registry = Registry::with_prefix("peercam");
        let metrics = Metrics {
            sessions_ended: Family::default(),
            offers_rejected: Family::default(),
            bytes_sent: Counter::default(),
            mqtt_reconnects: Counter::default(),
            viewers: Gauge::default(),
            pending_sessions: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "sessions_ended",
            "Viewer sessions ended, by reason",
            metrics.sessions_ended.clone(),
        );
        registry.register(
            "offers_rejected",
            "Offers and session messages refused with an error, by error code",
            metrics.offers_rejected.clone(),
        );
        registry.register(
            "sent_bytes",
            "RTP payload bytes handed to viewers' connections",
            metrics.bytes_sent.clone(),
        );
        registry.register(
            "mqtt_reconnects",
            "Connections to the MQTT broker made again after one was lost",
            metrics.mqtt_reconnects.clone(),
        );
        registry.register("viewers", "Viewers connected", metrics.viewers.clone());
        registry.register(
            "pending_sessions",
            "Sessions offered and not yet connected",
            metrics.pending_sessions.clone(),
        );
        registry.register(
            "encode_seconds",
            "Time to encode (or pass through) one frame",
            pipeline.encode_seconds.clone(),
        );
        registry.register_collector(Box::new(PipelineCollector {
            pipeline,
            camera_available,
        }));
        Metrics {
            registry,
            ..metrics
        }
    }

    /// The Prometheus text exposition (`text/plain; version=0.0.4`).
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    /// Counts a session that ended for `reason`.
    pub fn session_ended(&self, reason: &'static str) {
        self.sessions_ended
            .get_or_create(&[("reason", reason)])
            .inc();
    }

    /// Counts a refusal with `code`.
    pub fn offer_rejected(&self, code: &'static str) {
        self.offers_rejected.get_or_create(&[("code", code)]).inc();
    }
}

/// Reads what the pipeline already counts, at scrape time.
#[derive(Debug)]
struct PipelineCollector {
    pipeline: Arc<PipelineCounters>,
    camera_available: watch::Receiver<bool>,
}

fn encode_counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let counter = ConstCounter::new(value);
    counter.encode(encoder.encode_descriptor(name, help, None, counter.metric_type())?)
}

impl Collector for PipelineCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counted = self.pipeline.snapshot();
        for (name, help, value) in [
            (
                "frames_captured",
                "Frames the camera delivered",
                counted.frames_captured,
            ),
            (
                "frames_encoded",
                "Frames encoded (or passed through) and sent to the fan-out",
                counted.frames_encoded,
            ),
            (
                "frames_dropped",
                "Frames dropped: encoder behind, encode failures, malformed camera frames",
                counted.frames_dropped,
            ),
            (
                "encoder_restarts",
                "Times the encoder was rebuilt after failing repeatedly",
                counted.encoder_restarts,
            ),
        ] {
            encode_counter(&mut encoder, name, help, value)?;
        }
        let forced = counted.keyframes_forced.min(counted.keyframes);
        let mut keyframes = encoder.encode_descriptor(
            "keyframes",
            "Keyframes encoded: forced (a viewer joined or asked) or periodic (the interval, or the camera's own)",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (kind, value) in [("forced", forced), ("periodic", counted.keyframes - forced)] {
            let label = [("kind", kind)];
            ConstCounter::new(value).encode(keyframes.encode_family(&label)?)?;
        }
        let available = ConstGauge::new(i64::from(*self.camera_available.borrow()));
        available.encode(encoder.encode_descriptor(
            "camera_available",
            "1 while the camera delivers frames, 0 while it is gone or failing",
            None,
            available.metric_type(),
        )?)?;
        Ok(())
    }
}

/// The tests' Prometheus text reader, shared with tests/metrics.rs.
#[cfg(test)]
#[path = "../tests/common/prometheus.rs"]
mod prometheus_samples;

#[cfg(test)]
mod tests {
    use super::*;

    use super::prometheus_samples::samples as parse;

    #[test]
    fn the_exposition_parses_and_carries_every_family_with_the_prefix() {
        let pipeline = Arc::new(PipelineCounters::default());
        pipeline.record_captured();
        pipeline.record_captured();
        pipeline.record_encoded(1_000, true, 4_000);
        pipeline.record_forced_keyframe();
        pipeline.record_encoded(300, true, 12_000);
        pipeline.record_encoded(200, false, 2_000);
        pipeline.record_dropped();
        let (camera_tx, camera) = watch::channel(true);
        let metrics = Metrics::new(Arc::clone(&pipeline), camera);
        metrics.session_ended("hangup");
        metrics.session_ended("hangup");
        metrics.session_ended("ice-failed");
        metrics.offer_rejected("busy");
        metrics.bytes_sent.inc_by(5_000);
        metrics.viewers.set(2);
        metrics.pending_sessions.set(1);
        let samples = parse(&metrics.render());
        let expected = [
            ("peercam_frames_captured_total{}", 2.0),
            ("peercam_frames_encoded_total{}", 3.0),
            ("peercam_frames_dropped_total{}", 1.0),
            ("peercam_encoder_restarts_total{}", 0.0),
            ("peercam_keyframes_total{kind=forced}", 1.0),
            ("peercam_keyframes_total{kind=periodic}", 1.0),
            ("peercam_camera_available{}", 1.0),
            ("peercam_sessions_ended_total{reason=hangup}", 2.0),
            ("peercam_sessions_ended_total{reason=ice-failed}", 1.0),
            ("peercam_offers_rejected_total{code=busy}", 1.0),
            ("peercam_sent_bytes_total{}", 5_000.0),
            ("peercam_mqtt_reconnects_total{}", 0.0),
            ("peercam_viewers{}", 2.0),
            ("peercam_pending_sessions{}", 1.0),
            ("peercam_encode_seconds{}", 3.0),
        ];
        for (name, value) in expected {
            assert_eq!(samples.get(name), Some(&value), "{name} in {samples:#?}");
        }
        assert!(samples.keys().all(|name| name.starts_with("peercam_")));
        camera_tx.send_replace(false);
        let samples = parse(&metrics.render());
        assert_eq!(samples.get("peercam_camera_available{}"), Some(&0.0));
    }
}
