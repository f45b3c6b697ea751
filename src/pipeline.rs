//! The media pipeline's threads: capture (source) → encode → fan-out. Capture and
//! encoding each run on a dedicated OS thread joined by a two-frame queue.
//! It must never block on viewers or the network: a slow encoder drops frames at capture.
//! A failing camera is closed and retried with backoff here; the service never dies of it.
//! The pipeline owns its per-frame counters and health; telemetry and the watchdog only read them.

use crate::encode::passthrough::Passthrough;
use crate::encode::{EncoderSettings, H264Encoder};
use crate::fanout::FanOut;
use crate::snapshot::{SnapshotError, SnapshotJob, SnapshotRequests};
use crate::source::{Captured, SourceError, StreamedMode, VideoSource};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, RecvTimeoutError, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Frames waiting between capture and encoder; more would only add latency.
const ENCODE_QUEUE_FRAMES: usize = 2;
/// With nobody watching, the encoder keeps the newest captured frame; a viewer's keyframe
/// request then encodes it at once instead of waiting up to a frame interval for the next
/// capture. Older than this, it is not worth showing first (the camera has stalled).
const IDLE_FRAME_MAX_AGE: Duration = Duration::from_millis(100);
/// Reopening a failed camera: first retry after this, doubling up to `RETRY_MAX`.
const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Consecutive encode failures before the encoder is rebuilt (and again after twice, four
/// times … as many): one odd frame costs that frame, not a rebuild, while a wedged openh264
/// instance costs at most this many frames (a sixth of a second at 30 fps); a fault a
/// rebuild does not cure is retried ever more rarely instead of several times a second.
const ENCODE_FAILURES_BEFORE_REBUILD: u64 = 5;

/// `PipelineHealth::last_progress_us` before the pipeline made any progress.
const NO_PROGRESS: u64 = u64::MAX;

/// Health and control shared with the service.
pub struct PipelineHealth {
    stop: AtomicBool,
    /// The monotonic instant `last_progress_us` counts from.
    origin: Instant,
    /// Microseconds after `origin` of the pipeline's last progress (`NO_PROGRESS`: none
    /// yet): a frame through the encoder thread, or a retry of a failing camera.
    last_progress_us: AtomicU64,
    /// A keyframe is wanted from a source that encodes itself (H.264 passthrough).
    source_keyframe: AtomicBool,
    /// The camera was reopened: a passed-through stream starts afresh (new SPS/PPS, and
    /// no picture may go out before its first IDR).
    stream_restarted: AtomicBool,
}

impl Default for PipelineHealth {
    fn default() -> Self {
        PipelineHealth {
            stop: AtomicBool::new(false),
            origin: Instant::now(),
            last_progress_us: AtomicU64::new(NO_PROGRESS),
            source_keyframe: AtomicBool::new(false),
            stream_restarted: AtomicBool::new(false),
        }
    }
}

impl PipelineHealth {
    /// Time since the encoder thread last dealt with a frame (encoded, passed through or,
    /// with no viewers, skipped) or the camera was last retried; `None` before the first.
    /// It only grows when capture or encoding is stuck. Monotonic, so a wall-clock step
    /// (NTP, or a board without RTC setting its clock after boot) neither fakes nor hides
    /// a stall.
    pub fn stalled_for(&self) -> Option<Duration> {
        self.stalled_for_at(Instant::now())
    }

    fn stalled_for_at(&self, now: Instant) -> Option<Duration> {
        let last = self.last_progress_us.load(Ordering::Relaxed);
        (last != NO_PROGRESS)
            .then(|| now.saturating_duration_since(self.origin + Duration::from_micros(last)))
    }

    /// The watchdog's verdict now, for a pipeline allowed `stall_limit` without progress.
    pub fn liveness(&self, stall_limit: Duration) -> Liveness {
        Liveness::judge(self.stalled_for(), stall_limit)
    }

    fn progress(&self) {
        let since_origin = u64::try_from(self.origin.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.last_progress_us
            .store(since_origin.min(NO_PROGRESS - 1), Ordering::Relaxed);
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Sleeps up to `duration`, waking early on stop; counts as progress meanwhile.
    fn wait(&self, duration: Duration) {
        let until = Instant::now() + duration;
        while !self.stopping() && Instant::now() < until {
            self.progress();
            std::thread::sleep(Duration::from_millis(100).min(until - Instant::now()));
        }
    }
}

/// Counters the capture/encode pipeline bumps with relaxed atomics; cheap enough for the
/// per-frame path. All counters are cumulative since creation and wrap on overflow.
#[derive(Debug)]
pub struct PipelineCounters {
    pub frames_captured: AtomicU64,
    pub frames_encoded: AtomicU64,
    pub frames_dropped: AtomicU64,
    /// Of `frames_dropped`: frames the camera delivered malformed (impossible geometry,
    /// truncated, corrupt or oversized JPEG, flagged by the driver).
    pub frames_rejected: AtomicU64,
    pub keyframes: AtomicU64,
    pub bytes_encoded: AtomicU64,
    pub encode_us_total: AtomicU64,
    /// Times the encoder was rebuilt after repeated failures.
    pub encoder_restarts: AtomicU64,
    /// Of `keyframes`: IDRs forced for a viewer (a join, PLI or FIR).
    pub keyframes_forced: AtomicU64,
    /// Each frame's encode time, for `/metrics` (a histogram: atomics per bucket).
    pub encode_seconds: prometheus_client::metrics::histogram::Histogram,
}

impl Default for PipelineCounters {
    fn default() -> Self {
        PipelineCounters {
            frames_captured: AtomicU64::new(0),
            frames_encoded: AtomicU64::new(0),
            frames_dropped: AtomicU64::new(0),
            frames_rejected: AtomicU64::new(0),
            keyframes: AtomicU64::new(0),
            bytes_encoded: AtomicU64::new(0),
            encode_us_total: AtomicU64::new(0),
            encoder_restarts: AtomicU64::new(0),
            keyframes_forced: AtomicU64::new(0),
            encode_seconds: crate::metrics::encode_seconds_histogram(),
        }
    }
}

impl PipelineCounters {
    /// Records one frame coming out of the camera/test source.
    pub fn record_captured(&self) {
        self.frames_captured.fetch_add(1, Ordering::Relaxed);
    }

    /// Records one encoded frame of `bytes` bytes that took `encode_us` microseconds to encode.
    pub fn record_encoded(&self, bytes: usize, keyframe: bool, encode_us: u64) {
        self.frames_encoded.fetch_add(1, Ordering::Relaxed);
        self.bytes_encoded
            .fetch_add(u64::try_from(bytes).unwrap_or(u64::MAX), Ordering::Relaxed);
        if keyframe {
            self.keyframes.fetch_add(1, Ordering::Relaxed);
        }
        self.encode_us_total.fetch_add(encode_us, Ordering::Relaxed);
        self.encode_seconds.observe(encode_us as f64 / 1e6);
    }

    /// Records that the keyframe just encoded was forced for a viewer.
    pub fn record_forced_keyframe(&self) {
        self.keyframes_forced.fetch_add(1, Ordering::Relaxed);
    }

    /// Records one frame dropped before or instead of encoding.
    pub fn record_dropped(&self) {
        self.frames_dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// Records one frame the camera delivered malformed: rejected, so dropped as well.
    pub fn record_rejected(&self) {
        self.frames_rejected.fetch_add(1, Ordering::Relaxed);
        self.record_dropped();
    }

    /// Copies the counters. Each load is relaxed, so the copy is not one atomic cut across all
    /// counters; for once-a-second rates the skew of at most one frame is irrelevant.
    pub fn snapshot(&self) -> CountersSnapshot {
        CountersSnapshot {
            frames_captured: self.frames_captured.load(Ordering::Relaxed),
            frames_encoded: self.frames_encoded.load(Ordering::Relaxed),
            frames_dropped: self.frames_dropped.load(Ordering::Relaxed),
            frames_rejected: self.frames_rejected.load(Ordering::Relaxed),
            keyframes: self.keyframes.load(Ordering::Relaxed),
            bytes_encoded: self.bytes_encoded.load(Ordering::Relaxed),
            encode_us_total: self.encode_us_total.load(Ordering::Relaxed),
            encoder_restarts: self.encoder_restarts.load(Ordering::Relaxed),
            keyframes_forced: self.keyframes_forced.load(Ordering::Relaxed),
        }
    }
}

/// A plain copy of [`PipelineCounters`] at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CountersSnapshot {
    pub frames_captured: u64,
    pub frames_encoded: u64,
    pub frames_dropped: u64,
    pub frames_rejected: u64,
    pub keyframes: u64,
    pub bytes_encoded: u64,
    pub encode_us_total: u64,
    pub encoder_restarts: u64,
    pub keyframes_forced: u64,
}

/// Whether the pipeline still deserves the systemd watchdog's pings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// Progress within the stall limit, or none yet (the pipeline is still starting).
    Alive,
    /// No progress for this long, beyond the stall limit.
    Stalled(Duration),
}

impl Liveness {
    /// The verdict for a pipeline whose last progress was `stalled_for` ago (`None`: not
    /// yet). Pure, so the watchdog's rule is testable without a clock.
    pub fn judge(stalled_for: Option<Duration>, stall_limit: Duration) -> Liveness {
        match stalled_for {
            Some(age) if age > stall_limit => Liveness::Stalled(age),
            _ => Liveness::Alive,
        }
    }
}

pub struct Pipeline {
    health: Arc<PipelineHealth>,
    streamed_mode: watch::Receiver<Option<StreamedMode>>,
    encoder_restarts: watch::Receiver<u64>,
    threads: Vec<JoinHandle<()>>,
}

impl Pipeline {
    /// Starts capture and encoding. `camera_available` follows the source: false while a
    /// camera is gone or failing, true again once it delivers frames.
    pub fn start(
        source: Box<dyn VideoSource>,
        encoder_settings: EncoderSettings,
        fanout: Arc<FanOut>,
        counters: Arc<PipelineCounters>,
        camera_available: watch::Sender<bool>,
        snapshots: SnapshotSettings,
    ) -> anyhow::Result<Self> {
        let encoder = H264Encoder::new(encoder_settings)?;
        tracing::info!(
            width = encoder_settings.width,
            height = encoder_settings.height,
            fps = encoder_settings.fps,
            bitrate_kbps = encoder_settings.bitrate_kbps,
            keyframe_interval_s = encoder_settings.keyframe_interval_s,
            "H.264 encoder ready (openh264, constrained baseline)"
        );
        // Fix the origin of capture instants before the first frame, so none is clamped to it.
        crate::clock::monotonic_origin();
        let health = Arc::new(PipelineHealth::default());
        let (streamed_mode_tx, streamed_mode) = watch::channel(None);
        let (frames_tx, frames_rx) = sync_channel::<EncodeInput>(ENCODE_QUEUE_FRAMES);
        let idle_frame_held = Arc::new(AtomicBool::new(false));
        {
            // Only an encoder idling with a frame in hand is woken: a wake queued while
            // frames flow would only take a captured frame's place.
            let wake = frames_tx.clone();
            let idle_frame_held = Arc::clone(&idle_frame_held);
            fanout.keyframes().set_waker(move || {
                if idle_frame_held.load(Ordering::Acquire) {
                    let _ = wake.try_send(EncodeInput::KeyframeRequested);
                }
            });
        }
        let (encoder_restarts_tx, encoder_restarts) = watch::channel(0);

        let capture = {
            let health = Arc::clone(&health);
            let counters = Arc::clone(&counters);
            let keyframes = Arc::clone(fanout.keyframes());
            std::thread::Builder::new()
                .name("capture".to_owned())
                .spawn(move || {
                    capture_loop(
                        source,
                        frames_tx,
                        &health,
                        &counters,
                        &camera_available,
                        &streamed_mode_tx,
                        || keyframes.request(),
                    )
                })?
        };
        // One JPEG at a time, off the encode thread: a snapshot never delays the stream.
        let (snapshot_jobs, snapshot_queue) = sync_channel::<SnapshotJob>(1);
        let snapshot_worker = {
            let health = Arc::clone(&health);
            let requests = Arc::clone(&snapshots.requests);
            std::thread::Builder::new()
                .name("snapshot".to_owned())
                .spawn(move || {
                    while !health.stopping() {
                        match snapshot_queue.recv_timeout(Duration::from_millis(100)) {
                            Ok(job) => {
                                let result = job.run(snapshots.quality);
                                if let Err(err) = &result {
                                    tracing::warn!("snapshot failed: {err}");
                                }
                                requests.answer(move || result);
                            }
                            Err(RecvTimeoutError::Timeout) => continue,
                            Err(RecvTimeoutError::Disconnected) => break,
                        }
                    }
                })?
        };
        let encode = {
            let health = Arc::clone(&health);
            std::thread::Builder::new()
                .name("encode".to_owned())
                .spawn(move || {
                    let mut stage = EncodeStage {
                        encoder,
                        settings: encoder_settings,
                        passthrough: Passthrough::default(),
                        fanout,
                        counters,
                        failures: EncodeFailures::default(),
                        encoder_restarts: encoder_restarts_tx,
                        idle_frame: None,
                        idle_frame_held,
                        snapshots: SnapshotFeed {
                            requests: snapshots.requests,
                            jobs: snapshot_jobs,
                            source_keyframe_asked: false,
                        },
                    };
                    while !health.stopping() {
                        match frames_rx.recv_timeout(Duration::from_millis(100)) {
                            Ok(EncodeInput::Captured(captured)) => stage.handle(captured, &health),
                            Ok(EncodeInput::KeyframeRequested) => stage
                                .serve_request_from_idle_frame(
                                    &health,
                                    crate::clock::monotonic_us(),
                                ),
                            Err(RecvTimeoutError::Timeout) => continue,
                            Err(RecvTimeoutError::Disconnected) => break,
                        }
                    }
                })?
        };
        Ok(Self {
            health,
            streamed_mode,
            encoder_restarts,
            threads: vec![capture, encode, snapshot_worker],
        })
    }

    pub fn health(&self) -> &Arc<PipelineHealth> {
        &self.health
    }

    /// Size and rate of the frames being streamed (the camera's negotiated mode, which may
    /// differ from the configured one), once the first frame came; changes notify.
    pub fn streamed_mode(&self) -> watch::Receiver<Option<StreamedMode>> {
        self.streamed_mode.clone()
    }

    /// How many times the encoder was rebuilt after repeated failures; changes notify.
    pub fn encoder_restarts(&self) -> watch::Receiver<u64> {
        self.encoder_restarts.clone()
    }

    /// Stops both threads and waits for them.
    pub fn stop(mut self) {
        self.health.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Pulls frames from the source until stopped. Source failures close the device (the
/// source does that) and are retried with backoff; the first failure and the recovery are
/// logged once each, and `camera_available` follows them. `streamed_mode` follows the
/// mode the source reports for the frames it delivers.
fn capture_loop(
    mut source: Box<dyn VideoSource>,
    frames: std::sync::mpsc::SyncSender<EncodeInput>,
    health: &PipelineHealth,
    counters: &PipelineCounters,
    camera_available: &watch::Sender<bool>,
    streamed_mode: &watch::Sender<Option<StreamedMode>>,
    request_keyframe: impl Fn(),
) {
    tracing::info!(source = %source.describe(), "video source started");
    let mut failing_since: Option<Instant> = None;
    let mut retry = RETRY_FIRST;
    let mut bad_frames = 0u64;
    while !health.stopping() {
        if health.source_keyframe.swap(false, Ordering::Relaxed) {
            source.request_keyframe();
        }
        let captured = match source.next_frame() {
            Ok(captured) => captured,
            Err(SourceError::Frame(reason)) => {
                bad_frames += 1;
                counters.record_rejected();
                if bad_frames == 1 || bad_frames.is_power_of_two() {
                    tracing::warn!(bad_frames, "dropping a bad frame: {reason}");
                }
                continue;
            }
            Err(err) => {
                if failing_since.is_none() {
                    tracing::warn!("camera unavailable: {err}; retrying in the background");
                    failing_since = Some(Instant::now());
                    camera_available.send_replace(false);
                } else {
                    tracing::debug!("camera still unavailable: {err}");
                }
                health.wait(retry);
                retry = (retry * 2).min(RETRY_MAX);
                continue;
            }
        };
        if let Some(since) = failing_since.take() {
            tracing::info!(
                source = %source.describe(),
                after_ms = since.elapsed().as_millis() as u64,
                "camera is back; streaming resumes"
            );
            camera_available.send_replace(true);
            health.stream_restarted.store(true, Ordering::Relaxed);
            // Viewers still connected resume from a fresh keyframe.
            request_keyframe();
        }
        retry = RETRY_FIRST;
        if let Some(mode) = source.streamed_mode() {
            // Only a change wakes the status and telemetry tasks.
            streamed_mode.send_if_modified(|published| {
                let changed = *published != Some(mode);
                *published = Some(mode);
                changed
            });
        }
        counters.record_captured();
        match frames.try_send(EncodeInput::Captured(captured)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => counters.record_dropped(),
            Err(TrySendError::Disconnected(_)) => break,
        }
    }
}

/// Where snapshots come from: the requests every transport shares, and the JPEG quality.
pub struct SnapshotSettings {
    pub requests: Arc<SnapshotRequests>,
    pub quality: u8,
}

/// The encode thread's side of snapshots: it hands the worker a frame when one is asked for.
struct SnapshotFeed {
    requests: Arc<SnapshotRequests>,
    jobs: std::sync::mpsc::SyncSender<SnapshotJob>,
    /// A camera's own H.264 was asked for a keyframe to decode (cleared by the next IDR).
    source_keyframe_asked: bool,
}

impl SnapshotFeed {
    /// Gives the worker `job()` when a snapshot is wanted and none is being made.
    fn offer(&self, job: impl FnOnce() -> SnapshotJob) {
        if !self.requests.claim_frame() {
            return;
        }
        if self.jobs.try_send(job()).is_err() {
            // The worker has stopped (shutdown): nobody will answer otherwise.
            self.requests.answer(|| Err(SnapshotError::NoFrame));
        }
    }
}

/// What the encode thread receives.
enum EncodeInput {
    Captured(Captured),
    /// A viewer asked for a keyframe while the encoder idled with a frame in hand.
    KeyframeRequested,
}

/// The encode thread's state: raw frames go through openh264, a camera's own H.264
/// through `Passthrough`; both end in the fan-out.
struct EncodeStage {
    encoder: H264Encoder,
    settings: EncoderSettings,
    passthrough: Passthrough,
    fanout: Arc<FanOut>,
    counters: Arc<PipelineCounters>,
    failures: EncodeFailures,
    /// Rebuilds so far, for the status (the counters have them too, for telemetry).
    encoder_restarts: watch::Sender<u64>,
    /// The newest raw frame captured while nobody watched ([`IDLE_FRAME_MAX_AGE`]).
    idle_frame: Option<crate::source::Frame>,
    /// Whether `idle_frame` holds one: the keyframe waker reads it from other threads.
    idle_frame_held: Arc<AtomicBool>,
    snapshots: SnapshotFeed,
}

/// What to do after an encode failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterFailure {
    /// The first of a run: worth a warning.
    Warn,
    /// More of the same run: already reported.
    Quiet,
    /// Rebuild the encoder now (and say so).
    Rebuild,
}

/// Consecutive encode failures, and the rebuild decision. Pure, so it is tested by
/// driving it with results.
#[derive(Debug, Default)]
struct EncodeFailures {
    consecutive: u64,
}

impl EncodeFailures {
    /// One more failure in a row.
    fn failed(&mut self) -> AfterFailure {
        self.consecutive += 1;
        let runs = self.consecutive / ENCODE_FAILURES_BEFORE_REBUILD;
        if self.consecutive % ENCODE_FAILURES_BEFORE_REBUILD == 0 && runs.is_power_of_two() {
            AfterFailure::Rebuild
        } else if self.consecutive == 1 {
            AfterFailure::Warn
        } else {
            AfterFailure::Quiet
        }
    }

    /// A frame went through: the run (how many failed before it, if any) is over.
    fn succeeded(&mut self) -> Option<u64> {
        Some(std::mem::take(&mut self.consecutive)).filter(|&failed| failed > 0)
    }
}

impl EncodeStage {
    /// Counts a failed encode; warns on the first of a run and rebuilds the encoder when
    /// the run is long enough, so a wedged encoder neither floods the log nor stays wedged.
    fn encode_failed(&mut self, err: &crate::encode::EncodeError) {
        self.counters.record_dropped();
        match self.failures.failed() {
            AfterFailure::Warn => tracing::warn!("encoding failed: {err}"),
            AfterFailure::Quiet => {}
            AfterFailure::Rebuild => {
                let failures = self.failures.consecutive;
                match H264Encoder::new(self.settings) {
                    Ok(encoder) => {
                        self.encoder = encoder;
                        self.counters
                            .encoder_restarts
                            .fetch_add(1, Ordering::Relaxed);
                        self.encoder_restarts.send_modify(|restarts| *restarts += 1);
                        // Viewers resume from the new encoder's first picture, an IDR.
                        self.fanout.keyframes().request();
                        tracing::warn!(failures, "encoder rebuilt after {failures} failures in a row: {err}");
                    }
                    Err(rebuild) => tracing::warn!(
                        failures,
                        "encoding failed {failures} times in a row ({err}) and the encoder cannot be rebuilt: {rebuild}"
                    ),
                }
            }
        }
    }

    fn drop_idle_frame(&mut self) {
        if self.idle_frame.take().is_some() {
            self.idle_frame_held.store(false, Ordering::Release);
        }
    }

    /// A viewer's keyframe request woke the idle encoder at `now_us` (monotonic): encode
    /// the frame in hand now, when it is recent and somebody watches; otherwise the next
    /// capture serves the request.
    fn serve_request_from_idle_frame(&mut self, health: &PipelineHealth, now_us: u64) {
        let Some(frame) = self.idle_frame.take() else {
            return;
        };
        self.idle_frame_held.store(false, Ordering::Release);
        let age_us = now_us.saturating_sub(frame.monotonic_us);
        if u128::from(age_us) <= IDLE_FRAME_MAX_AGE.as_micros()
            && self.fanout.subscriber_count() > 0
        {
            self.handle(Captured::Raw(frame), health);
        }
    }

    fn encode_succeeded(&mut self) {
        if let Some(failures) = self.failures.succeeded() {
            tracing::info!(failures, "encoding works again");
        }
    }

    fn handle(&mut self, captured: Captured, health: &PipelineHealth) {
        health.progress();
        let started = Instant::now();
        let keyframes = Arc::clone(self.fanout.keyframes());
        match captured {
            Captured::H264 {
                access_unit,
                capture_us,
                monotonic_us,
                sequence,
                ..
            } => {
                if health.stream_restarted.swap(false, Ordering::Relaxed) {
                    self.passthrough.reset();
                }
                if keyframes.take_due(started) {
                    health.source_keyframe.store(true, Ordering::Relaxed);
                }
                if self.snapshots.requests.pending() && !self.snapshots.source_keyframe_asked {
                    // Only a keyframe decodes on its own.
                    self.snapshots.source_keyframe_asked = true;
                    health.source_keyframe.store(true, Ordering::Relaxed);
                }
                match self
                    .passthrough
                    .access_unit(&access_unit, capture_us, monotonic_us, sequence)
                {
                    Some(frame) => {
                        if frame.keyframe {
                            self.snapshots.source_keyframe_asked = false;
                            self.snapshots.offer(|| SnapshotJob::H264 {
                                access_unit: frame.access_unit.clone(),
                                capture_us: frame.capture_us,
                            });
                        }
                        self.counters.record_encoded(
                            frame.access_unit.len(),
                            frame.keyframe,
                            started.elapsed().as_micros() as u64,
                        );
                        self.fanout.publish(frame);
                    }
                    None => self.counters.record_dropped(),
                }
            }
            Captured::Raw(frame) => {
                if (frame.width, frame.height) != (self.settings.width, self.settings.height) {
                    // The camera runs another size than configured (nearest mode, or a
                    // different camera after a replug): follow it.
                    let settings = EncoderSettings {
                        width: frame.width,
                        height: frame.height,
                        ..self.settings
                    };
                    match H264Encoder::new(settings) {
                        Ok(encoder) => {
                            tracing::info!(
                                width = frame.width,
                                height = frame.height,
                                "encoder follows the camera's frame size"
                            );
                            self.encoder = encoder;
                            self.settings = settings;
                            keyframes.request();
                        }
                        Err(err) => {
                            self.counters.record_dropped();
                            tracing::warn!("cannot encode {}x{}: {err}", frame.width, frame.height);
                            return;
                        }
                    }
                }
                self.snapshots.offer(|| SnapshotJob::Raw(frame.clone()));
                if self.fanout.subscriber_count() == 0 {
                    // Nobody watches: spare the board the encoder's CPU and heat. A
                    // viewer's subscription requests an IDR, encoded from this frame at
                    // once if no newer one came by then.
                    self.idle_frame = Some(frame);
                    self.idle_frame_held.store(true, Ordering::Release);
                    return;
                }
                self.drop_idle_frame();
                let force_keyframe = keyframes.take_due(started);
                let result = self.encoder.encode(&frame, force_keyframe);
                match &result {
                    Ok(_) => self.encode_succeeded(),
                    Err(err) => self.encode_failed(err),
                }
                match result {
                    Ok(Some(encoded)) => {
                        if force_keyframe && !encoded.keyframe {
                            keyframes.request();
                        }
                        if force_keyframe && encoded.keyframe {
                            self.counters.record_forced_keyframe();
                        }
                        self.counters.record_encoded(
                            encoded.access_unit.len(),
                            encoded.keyframe,
                            started.elapsed().as_micros() as u64,
                        );
                        self.fanout.publish(encoded);
                    }
                    Ok(None) => {
                        self.counters.record_dropped();
                        if force_keyframe {
                            // The rate controller skipped the forced IDR; ask again.
                            keyframes.request();
                        }
                    }
                    Err(_) => {
                        if force_keyframe {
                            // The IDR this frame owed is still owed.
                            keyframes.request();
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_is_fed_until_progress_is_older_than_the_limit() {
        let limit = Duration::from_secs(5);
        assert_eq!(Liveness::judge(None, limit), Liveness::Alive);
        assert_eq!(
            Liveness::judge(Some(Duration::ZERO), limit),
            Liveness::Alive
        );
        assert_eq!(Liveness::judge(Some(limit), limit), Liveness::Alive);
        let late = limit + Duration::from_millis(1);
        assert_eq!(Liveness::judge(Some(late), limit), Liveness::Stalled(late));
    }

    #[test]
    fn stall_age_counts_on_the_monotonic_clock_from_the_last_progress() {
        let health = PipelineHealth::default();
        assert_eq!(health.stalled_for(), None, "no progress yet");
        health.progress();
        let last =
            health.origin + Duration::from_micros(health.last_progress_us.load(Ordering::Relaxed));
        assert_eq!(health.stalled_for_at(last), Some(Duration::ZERO));
        let later = last + Duration::from_secs(7);
        assert_eq!(health.stalled_for_at(later), Some(Duration::from_secs(7)));
        assert!(health.stalled_for().unwrap() < Duration::from_secs(5));
        assert_eq!(health.liveness(Duration::from_secs(5)), Liveness::Alive);
    }

    /// A camera that settled on a mode other than the configured one.
    struct NearestModeCamera;

    const VIVID_NEAREST: StreamedMode = StreamedMode {
        width: 1280,
        height: 720,
        fps: 12.5,
    };

    impl VideoSource for NearestModeCamera {
        fn next_frame(&mut self) -> Result<Captured, SourceError> {
            std::thread::sleep(Duration::from_millis(5));
            Ok(Captured::H264 {
                access_unit: Vec::new(),
                width: VIVID_NEAREST.width,
                height: VIVID_NEAREST.height,
                capture_us: 0,
                monotonic_us: 0,
                sequence: 0,
            })
        }

        fn describe(&self) -> String {
            "a camera in its nearest mode".to_owned()
        }

        fn streamed_mode(&self) -> Option<StreamedMode> {
            Some(VIVID_NEAREST)
        }
    }

    #[test]
    fn capture_publishes_the_mode_the_source_negotiated() {
        let health = PipelineHealth::default();
        let (frames_tx, frames_rx) = sync_channel(ENCODE_QUEUE_FRAMES);
        let (camera_tx, _camera) = watch::channel(true);
        let (mode_tx, mode) = watch::channel(None);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                capture_loop(
                    Box::new(NearestModeCamera),
                    frames_tx,
                    &health,
                    &PipelineCounters::default(),
                    &camera_tx,
                    &mode_tx,
                    || {},
                )
            });
            frames_rx.recv_timeout(Duration::from_secs(5)).unwrap();
            health.stop.store(true, Ordering::Relaxed);
        });
        assert_eq!(*mode.borrow(), Some(VIVID_NEAREST));
    }

    /// A camera whose driver describes its buffers impossibly: each capture goes through
    /// the real converter, which must refuse it.
    struct MalformedCamera {
        captures: usize,
    }

    impl VideoSource for MalformedCamera {
        fn next_frame(&mut self) -> Result<Captured, SourceError> {
            use crate::source::convert::{to_i420, Layout, PixelFormat};
            std::thread::sleep(Duration::from_millis(2));
            let layout = |format, width, height, stride| Layout {
                format,
                width,
                height,
                stride,
            };
            let cases = [
                (layout(PixelFormat::Yuyv, 64, 48, 100), vec![0; 8192]),
                (layout(PixelFormat::Nv12, 64, 0, 0), vec![0; 8192]),
                (layout(PixelFormat::Yu12, 64, 48, 0), vec![0; 100]),
                (
                    layout(PixelFormat::Mjpeg, 64, 48, 0),
                    b"\xff\xd8 cut".to_vec(),
                ),
            ];
            let (layout, data) = &cases[self.captures % cases.len()];
            self.captures += 1;
            let mut i420 = Vec::new();
            to_i420(*layout, data, &mut i420).map_err(|e| SourceError::Frame(e.to_string()))?;
            unreachable!("the converter accepted {layout:?}");
        }

        fn describe(&self) -> String {
            "a camera with impossible buffers".to_owned()
        }

        fn streamed_mode(&self) -> Option<StreamedMode> {
            None
        }
    }

    #[test]
    fn malformed_camera_frames_are_dropped_and_counted_as_rejected() {
        let health = PipelineHealth::default();
        let counters = PipelineCounters::default();
        let (frames_tx, frames_rx) = sync_channel(ENCODE_QUEUE_FRAMES);
        let (camera_tx, camera) = watch::channel(true);
        let (mode_tx, _mode) = watch::channel(None);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                capture_loop(
                    Box::new(MalformedCamera { captures: 0 }),
                    frames_tx,
                    &health,
                    &counters,
                    &camera_tx,
                    &mode_tx,
                    || {},
                )
            });
            let deadline = Instant::now() + Duration::from_secs(10);
            while counters.snapshot().frames_rejected < 8 {
                assert!(Instant::now() < deadline, "{:?}", counters.snapshot());
                std::thread::sleep(Duration::from_millis(5));
            }
            health.stop.store(true, Ordering::Relaxed);
        });
        let counted = counters.snapshot();
        assert_eq!(counted.frames_dropped, counted.frames_rejected);
        assert_eq!(counted.frames_captured, 0);
        assert!(frames_rx.try_recv().is_err(), "nothing reached the encoder");
        assert!(*camera.borrow(), "a bad frame is not a lost camera");
    }

    #[test]
    fn the_encoder_is_rebuilt_after_five_failures_in_a_row_then_ever_more_rarely() {
        use AfterFailure::*;
        let mut failures = EncodeFailures::default();
        let run: Vec<AfterFailure> = (0..40).map(|_| failures.failed()).collect();
        assert_eq!(run[..5], [Warn, Quiet, Quiet, Quiet, Rebuild]);
        let rebuilds: Vec<usize> = (1..=40).filter(|&n| run[n - 1] == Rebuild).collect();
        assert_eq!(rebuilds, [5, 10, 20, 40]);
        assert_eq!(failures.succeeded(), Some(40));
        assert_eq!(failures.succeeded(), None, "a success alone is no recovery");
        // Failures that never reach five in a row never rebuild; each run warns once.
        for _ in 0..3 {
            assert_eq!(failures.failed(), Warn);
            assert_eq!(failures.failed(), Quiet);
            assert_eq!(failures.failed(), Quiet);
            assert_eq!(failures.failed(), Quiet);
            assert_eq!(failures.succeeded(), Some(4));
        }
    }

    fn stage_for_test(
        settings: EncoderSettings,
        fanout: &Arc<FanOut>,
        counters: &Arc<PipelineCounters>,
    ) -> (EncodeStage, watch::Receiver<u64>) {
        let (restarts_tx, restarts) = watch::channel(0);
        let stage = EncodeStage {
            encoder: H264Encoder::new(settings).unwrap(),
            settings,
            passthrough: Passthrough::default(),
            fanout: Arc::clone(fanout),
            counters: Arc::clone(counters),
            failures: EncodeFailures::default(),
            encoder_restarts: restarts_tx,
            idle_frame: None,
            idle_frame_held: Arc::new(AtomicBool::new(false)),
            snapshots: SnapshotFeed {
                requests: Arc::new(SnapshotRequests::default()),
                jobs: sync_channel(1).0,
                source_keyframe_asked: false,
            },
        };
        (stage, restarts)
    }

    fn small_frame(sequence: u64, monotonic_us: u64) -> Captured {
        Captured::Raw(crate::source::Frame {
            width: 64,
            height: 48,
            i420: vec![100; 64 * 48 * 3 / 2].into(),
            capture_us: 0,
            monotonic_us,
            sequence,
        })
    }

    const SMALL: EncoderSettings = EncoderSettings {
        width: 64,
        height: 48,
        fps: 30,
        bitrate_kbps: 200,
        keyframe_interval_s: 600,
    };

    #[test]
    fn a_viewer_joining_an_idle_encoder_gets_the_frame_in_hand_as_a_keyframe() {
        let fanout = FanOut::new(Arc::new(crate::fanout::KeyframeRequests::default()));
        let counters = Arc::new(PipelineCounters::default());
        let (mut stage, _) = stage_for_test(SMALL, &fanout, &counters);
        let health = PipelineHealth::default();
        // Nobody watches: frames are kept, not encoded.
        stage.handle(small_frame(1, 1_000_000), &health);
        stage.handle(small_frame(2, 1_000_000), &health);
        assert_eq!(counters.snapshot().frames_encoded, 0);
        assert!(stage.idle_frame_held.load(Ordering::Acquire));

        let mut viewer = fanout.subscribe();
        stage.serve_request_from_idle_frame(&health, 1_010_000);
        let first = viewer
            .frames
            .try_recv()
            .expect("the kept frame, encoded at once");
        assert!(first.keyframe);
        assert_eq!(first.sequence, 2, "the newest frame captured while idle");
        assert!(!stage.idle_frame_held.load(Ordering::Acquire));
        // Served once: a second wake has nothing left to encode.
        stage.serve_request_from_idle_frame(&health, 1_010_000);
        assert!(viewer.frames.try_recv().is_err());
        assert_eq!(counters.snapshot().frames_encoded, 1);
    }

    #[test]
    fn a_snapshot_is_taken_from_the_next_frame_even_with_nobody_watching() {
        let fanout = FanOut::new(Arc::new(crate::fanout::KeyframeRequests::default()));
        let counters = Arc::new(PipelineCounters::default());
        let (mut stage, _) = stage_for_test(SMALL, &fanout, &counters);
        let (jobs, worker) = sync_channel(1);
        stage.snapshots.jobs = jobs;
        let health = PipelineHealth::default();
        stage.handle(small_frame(1, 1_000_000), &health);
        assert!(worker.try_recv().is_err(), "nobody asked");

        let requests = Arc::clone(&stage.snapshots.requests);
        let (mut first, mut second) = (requests.request(), requests.request());
        stage.handle(small_frame(2, 1_033_000), &health);
        stage.handle(small_frame(3, 1_066_000), &health);
        let job = worker.try_recv().expect("frame 2 went to the worker");
        assert!(worker.try_recv().is_err(), "one frame at a time");
        requests.answer(|| job.run(80));
        let (a, b) = (
            first.try_recv().unwrap().unwrap(),
            second.try_recv().unwrap().unwrap(),
        );
        assert_eq!((a.width, a.height), (64, 48));
        assert_eq!(a.jpeg, b.jpeg, "one encode answered both");
        assert_eq!(&a.jpeg[..2], &[0xff, 0xd8]);
        assert_eq!(
            counters.snapshot().frames_encoded,
            0,
            "the stream stayed idle"
        );
    }

    #[test]
    fn a_stale_or_unwatched_idle_frame_is_not_encoded() {
        let fanout = FanOut::new(Arc::new(crate::fanout::KeyframeRequests::default()));
        let counters = Arc::new(PipelineCounters::default());
        let (mut stage, _) = stage_for_test(SMALL, &fanout, &counters);
        let health = PipelineHealth::default();
        // A wake with nobody subscribed (the viewer left again) encodes nothing.
        stage.handle(small_frame(1, 1_000_000), &health);
        stage.serve_request_from_idle_frame(&health, 1_010_000);
        // A frame from before a camera stall is not shown as the viewer's first.
        let stale = 1_010_000 - IDLE_FRAME_MAX_AGE.as_micros() as u64 - 1;
        stage.handle(small_frame(2, stale), &health);
        let mut viewer = fanout.subscribe();
        stage.serve_request_from_idle_frame(&health, 1_010_000);
        assert!(viewer.frames.try_recv().is_err());
        assert_eq!(counters.snapshot().frames_encoded, 0);
        // The next capture serves the request.
        stage.handle(small_frame(3, 1_000_000), &health);
        let first = viewer.frames.try_recv().expect("the next capture");
        assert_eq!((first.sequence, first.keyframe), (3, true));
    }

    #[test]
    fn repeated_openh264_failures_rebuild_the_encoder_and_are_counted() {
        let settings = EncoderSettings {
            width: 64,
            height: 48,
            fps: 30,
            bitrate_kbps: 200,
            keyframe_interval_s: 600,
        };
        let fanout = FanOut::new(Arc::new(crate::fanout::KeyframeRequests::default()));
        let mut viewer = fanout.subscribe();
        let counters = Arc::new(PipelineCounters::default());
        let (mut stage, restarts) = stage_for_test(settings, &fanout, &counters);
        let health = PipelineHealth::default();
        let frame = |sequence: u64, bytes: usize| {
            Captured::Raw(crate::source::Frame {
                width: 64,
                height: 48,
                i420: vec![100; bytes].into(),
                capture_us: 0,
                monotonic_us: sequence * 33_333,
                sequence,
            })
        };
        // The right size with a short buffer: openh264's wrapper refuses every one.
        for sequence in 0..20 {
            stage.handle(frame(sequence, 100), &health);
        }
        let counted = counters.snapshot();
        assert_eq!(counted.encoder_restarts, 3, "after 5, 10 and 20 failures");
        assert_eq!(*restarts.borrow(), 3);
        assert_eq!((counted.frames_dropped, counted.frames_encoded), (20, 0));
        // A good frame goes through the rebuilt encoder, as an IDR the viewer can start at.
        stage.handle(frame(20, 64 * 48 * 3 / 2), &health);
        assert_eq!(counters.snapshot().frames_encoded, 1);
        let first = viewer.frames.try_recv().expect("a frame after the rebuild");
        assert!(first.keyframe);
        assert_eq!(stage.failures.consecutive, 0);
    }

    #[test]
    fn counters_accumulate_encoded_dropped_and_keyframes() {
        let counters = PipelineCounters::default();
        counters.record_captured();
        counters.record_captured();
        counters.record_captured();
        counters.record_encoded(1_000, true, 4_000);
        counters.record_encoded(250, false, 2_000);
        counters.record_dropped();
        counters.record_rejected();
        assert_eq!(
            counters.snapshot(),
            CountersSnapshot {
                frames_captured: 3,
                frames_encoded: 2,
                frames_dropped: 2,
                frames_rejected: 1,
                keyframes: 1,
                bytes_encoded: 1_250,
                encode_us_total: 6_000,
                encoder_restarts: 0,
                keyframes_forced: 0,
            }
        );
    }

    /// What the scripted camera does on its next call.
    #[derive(Clone, Copy, PartialEq, Debug)]
    enum Script {
        Frames,
        /// Unplugged: every open fails at once.
        Fails,
        /// Opened but silent: the source's own stall timeout turns that into an error.
        Stalls,
    }

    /// A camera whose behaviour the test switches while the pipeline runs.
    struct ScriptedCamera {
        script: Arc<std::sync::Mutex<Script>>,
        sequence: u64,
    }

    const SCRIPTED: StreamedMode = StreamedMode {
        width: 64,
        height: 48,
        fps: 50.0,
    };

    impl VideoSource for ScriptedCamera {
        fn next_frame(&mut self) -> Result<Captured, SourceError> {
            let script = *self.script.lock().unwrap();
            match script {
                Script::Frames => {
                    std::thread::sleep(Duration::from_millis(20));
                    self.sequence += 1;
                    let pixels = (SCRIPTED.width * SCRIPTED.height) as usize;
                    let luma = (self.sequence * 7 % 200) as u8;
                    let mut i420 = vec![luma; pixels];
                    i420.resize(pixels * 3 / 2, 128);
                    Ok(Captured::Raw(crate::source::Frame {
                        width: SCRIPTED.width,
                        height: SCRIPTED.height,
                        i420: i420.into(),
                        capture_us: crate::clock::unix_us(),
                        monotonic_us: crate::clock::monotonic_us(),
                        sequence: self.sequence,
                    }))
                }
                Script::Fails => Err(SourceError::Device("no such device".into())),
                Script::Stalls => {
                    std::thread::sleep(Duration::from_millis(150));
                    Err(SourceError::Device("no frame for 150 ms".into()))
                }
            }
        }

        fn describe(&self) -> String {
            "a scripted camera".to_owned()
        }

        fn streamed_mode(&self) -> Option<StreamedMode> {
            Some(SCRIPTED)
        }
    }

    /// Waits until the camera watch shows `available`.
    fn wait_for_camera(camera: &mut watch::Receiver<bool>, available: bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while *camera.borrow_and_update() != available {
            assert!(
                Instant::now() < deadline,
                "camera never became available={available}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The next frame that reaches a viewer.
    fn next_frame(
        frames: &mut tokio::sync::mpsc::Receiver<Arc<crate::fanout::PacketizedFrame>>,
    ) -> Arc<crate::fanout::PacketizedFrame> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(frame) = frames.try_recv() {
                return frame;
            }
            assert!(Instant::now() < deadline, "no frame reached the viewer");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn capture_survives_a_camera_that_fails_stalls_and_comes_back() {
        let script = Arc::new(std::sync::Mutex::new(Script::Frames));
        let camera = ScriptedCamera {
            script: Arc::clone(&script),
            sequence: 0,
        };
        let fanout = FanOut::new(Arc::new(crate::fanout::KeyframeRequests::default()));
        let counters = Arc::new(PipelineCounters::default());
        let (camera_tx, mut available) = watch::channel(true);
        let settings = EncoderSettings {
            width: SCRIPTED.width,
            height: SCRIPTED.height,
            fps: 50,
            bitrate_kbps: 200,
            // Far away: every keyframe the viewer sees below was asked for.
            keyframe_interval_s: 600,
        };
        let pipeline = Pipeline::start(
            Box::new(camera),
            settings,
            Arc::clone(&fanout),
            Arc::clone(&counters),
            camera_tx,
            SnapshotSettings {
                requests: Arc::new(SnapshotRequests::default()),
                quality: 80,
            },
        )
        .unwrap();
        let mut viewer = fanout.subscribe();
        assert!(
            next_frame(&mut viewer.frames).keyframe,
            "a joining viewer starts at an IDR"
        );
        let mut fault = |fault: Script| {
            *script.lock().unwrap() = fault;
            wait_for_camera(&mut available, false);
            // While the camera is gone nothing is captured (frames already queued may still
            // be encoded, so capture is what is counted) and the service lives on.
            let stalled_at = counters.snapshot().frames_captured;
            std::thread::sleep(Duration::from_millis(400));
            assert_eq!(counters.snapshot().frames_captured, stalled_at);
            assert_eq!(
                pipeline.health().liveness(Duration::from_secs(5)),
                Liveness::Alive
            );
            while viewer.frames.try_recv().is_ok() {}
            *script.lock().unwrap() = Script::Frames;
            wait_for_camera(&mut available, true);
            // The viewer, still subscribed, resumes from a fresh keyframe.
            let resumed = next_frame(&mut viewer.frames);
            assert!(
                resumed.keyframe,
                "after {fault:?}, the first frame back is a keyframe"
            );
        };
        fault(Script::Fails);
        fault(Script::Stalls);
        fault(Script::Fails);
        assert!(!next_frame(&mut viewer.frames).payloads.is_empty());
        pipeline.stop();
    }
}
