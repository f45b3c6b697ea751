//! Fan-out: one encoded stream to many viewers. Each frame is packetized into RTP payloads
//! once and shared by reference count; every viewer has its own bounded queue.
//! It must never block the encoder or let one viewer's backlog delay another.

use crate::clock;
use crate::encode::EncodedFrame;
use crate::telemetry::StageLatencies;
use bytes::Bytes;
use rtc::rtp::codec::h264::H264Payloader;
use rtc::rtp::packetizer::Payloader;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// RTP payload budget per packet: fits a 1280-byte path MTU with SRTP and headers to spare.
pub const RTP_PAYLOAD_MTU: usize = 1200;
/// Frames a viewer may have queued before it starts dropping (about 0.25 s at 30 fps).
pub const VIEWER_QUEUE_FRAMES: usize = 8;
/// At most one forced IDR per this interval, however many viewers ask.
pub const MIN_FORCED_KEYFRAME_INTERVAL: Duration = Duration::from_millis(250);
/// A joining viewer starts from the stream's newest keyframe and the frames after it,
/// instead of forcing a new one, while that run is at most this long: at 30 fps it spans
/// the forced-keyframe interval, so a viewer joining soon after another never waits for
/// that interval to end. Its queue is longer by the run it starts with.
pub const JOINING_RUN_FRAMES: usize = VIEWER_QUEUE_FRAMES;
const RTP_CLOCK_HZ: u128 = 90_000;

/// A frame ready for the wire: RTP payloads shared by every viewer.
#[derive(Debug)]
pub struct PacketizedFrame {
    pub payloads: Vec<Bytes>,
    pub keyframe: bool,
    /// 90 kHz RTP timestamp derived from the monotonic capture instant: it follows the
    /// frames' real spacing and never steps with the wall clock.
    pub rtp_timestamp: u32,
    /// Unix capture time (the latency stamp's), for logs; never for RTP.
    pub capture_us: u64,
    /// The capture instant on the monotonic clock (`clock::monotonic_us`): a frame's age.
    pub monotonic_us: u64,
    /// When it was encoded and packetized, on the same clock.
    pub published_us: u64,
    pub sequence: u64,
}

/// Converts a monotonic capture instant (`clock::monotonic_us`) to a 90 kHz RTP
/// timestamp (wrapping). Never fed Unix time: NTP stepping the wall clock by hours would
/// step the stream by hours, and a step back would run its timestamps backwards.
pub fn rtp_timestamp_from_monotonic(monotonic_us: u64) -> u32 {
    (monotonic_us as u128 * RTP_CLOCK_HZ / 1_000_000) as u32
}

/// What a viewer that just connected is sent first, from the frames queued for it while
/// it connected (it subscribed at its offer): the run from the newest keyframe on. Once
/// decoded, the viewer shows the run's last frame, so the run is worth sending when that
/// frame is at most `max_age` old at `now_us` (monotonic); an older one means frames were
/// dropped after it (the queue was full). `None`: the viewer needs a fresh keyframe.
pub fn joining_run(
    queued: Vec<Arc<PacketizedFrame>>,
    now_us: u64,
    max_age: Duration,
) -> Option<Vec<Arc<PacketizedFrame>>> {
    let start = queued.iter().rposition(|frame| frame.keyframe)?;
    let newest = queued.last()?;
    let age_us = now_us.saturating_sub(newest.monotonic_us);
    if u128::from(age_us) > max_age.as_micros() {
        return None;
    }
    Some(queued.into_iter().skip(start).collect())
}

/// Called on every keyframe request: lets an idle encoder serve it from the frame in hand
/// instead of waiting for the next capture. It must not block.
type KeyframeWaker = Box<dyn Fn() + Send + Sync>;

/// Coalesced keyframe requests from viewers (joins, PLI, FIR), read by the encoder.
#[derive(Default)]
pub struct KeyframeRequests {
    pending: AtomicBool,
    last_forced: Mutex<Option<Instant>>,
    requested_total: AtomicU64,
    waker: std::sync::OnceLock<KeyframeWaker>,
}

impl std::fmt::Debug for KeyframeRequests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyframeRequests")
            .field("pending", &self.pending)
            .field("requested_total", &self.requested_total)
            .finish_non_exhaustive()
    }
}

impl KeyframeRequests {
    pub fn request(&self) {
        self.requested_total.fetch_add(1, Ordering::Relaxed);
        self.pending.store(true, Ordering::Release);
        if let Some(wake) = self.waker.get() {
            wake();
        }
    }

    /// Sets what every request calls after it is recorded (once; later calls are ignored).
    pub fn set_waker(&self, wake: impl Fn() + Send + Sync + 'static) {
        let _ = self.waker.set(Box::new(wake));
    }

    /// True when the encoder should force an IDR now: a request is pending and the last
    /// forced IDR is at least [`MIN_FORCED_KEYFRAME_INTERVAL`] old. Requests arriving
    /// inside the interval stay pending and are served when it ends.
    pub fn take_due(&self, now: Instant) -> bool {
        if !self.pending.load(Ordering::Acquire) {
            return false;
        }
        let mut last = lock(&self.last_forced);
        if last.is_some_and(|t| now.saturating_duration_since(t) < MIN_FORCED_KEYFRAME_INTERVAL) {
            return false;
        }
        self.pending.store(false, Ordering::Release);
        *last = Some(now);
        true
    }

    /// A keyframe is being sent anyway: it answers every request made before it.
    pub fn satisfied_by_keyframe(&self) {
        self.pending.store(false, Ordering::Release);
    }

    pub fn requested_total(&self) -> u64 {
        self.requested_total.load(Ordering::Relaxed)
    }
}

struct Subscriber {
    id: u64,
    tx: mpsc::Sender<Arc<PacketizedFrame>>,
    /// Set on join and after an overflow: only a keyframe can resume this viewer.
    awaiting_keyframe: bool,
    /// Whether this subscriber already asked for the keyframe it is waiting for.
    keyframe_requested: bool,
    dropped: u64,
}

struct FanOutState {
    subscribers: Vec<Subscriber>,
    next_id: u64,
    payloader: H264Payloader,
    /// The newest keyframe and the frames since, while they are at most
    /// [`JOINING_RUN_FRAMES`]; empty otherwise.
    current_run: Vec<Arc<PacketizedFrame>>,
}

/// Distributes encoded frames to viewers.
pub struct FanOut {
    state: Mutex<FanOutState>,
    keyframes: Arc<KeyframeRequests>,
    /// Per-frame stage latencies for telemetry: the fan-out records capture-to-encoded,
    /// sessions encoded-to-sent.
    latencies: StageLatencies,
}

/// A viewer's feed. Dropping it unsubscribes.
pub struct Subscription {
    pub frames: mpsc::Receiver<Arc<PacketizedFrame>>,
    id: u64,
    fanout: Weak<FanOut>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(fanout) = self.fanout.upgrade() {
            fanout.unsubscribe(self.id);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not take the stream down with it: the state stays usable.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl FanOut {
    pub fn new(keyframes: Arc<KeyframeRequests>) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(FanOutState {
                subscribers: Vec::new(),
                next_id: 0,
                payloader: H264Payloader::default(),
                current_run: Vec::new(),
            }),
            keyframes,
            latencies: StageLatencies::default(),
        })
    }

    pub fn keyframes(&self) -> &Arc<KeyframeRequests> {
        &self.keyframes
    }

    pub fn latencies(&self) -> &StageLatencies {
        &self.latencies
    }

    /// Adds a viewer. Its first frame is a keyframe: the stream's newest, with the frames
    /// since, when that run is short ([`JOINING_RUN_FRAMES`]); otherwise one requested at
    /// once. Two viewers joining within the forced-keyframe interval both start at once.
    pub fn subscribe(self: &Arc<Self>) -> Subscription {
        let (id, joined_a_run, frames) = {
            let mut state = lock(&self.state);
            let (tx, frames) = mpsc::channel(VIEWER_QUEUE_FRAMES + state.current_run.len());
            let id = state.next_id;
            state.next_id += 1;
            let joined_a_run = !state.current_run.is_empty();
            for frame in &state.current_run {
                // Cannot fail: the queue is new and longer than the run.
                let _ = tx.try_send(Arc::clone(frame));
            }
            state.subscribers.push(Subscriber {
                id,
                tx,
                awaiting_keyframe: !joined_a_run,
                keyframe_requested: !joined_a_run,
                dropped: 0,
            });
            (id, joined_a_run, frames)
        };
        if !joined_a_run {
            self.keyframes.request();
        }
        Subscription {
            frames,
            id,
            fanout: Arc::downgrade(self),
        }
    }

    fn unsubscribe(&self, id: u64) {
        let mut state = lock(&self.state);
        state.subscribers.retain(|s| s.id != id);
        if state.subscribers.is_empty() {
            // The encoder idles from here on, so the run only gets older: the next viewer
            // would be shown a picture from when the last one left. A fresh keyframe from
            // the idle encoder's frame in hand is as quick and current.
            state.current_run.clear();
        }
    }

    pub fn subscriber_count(&self) -> usize {
        lock(&self.state).subscribers.len()
    }

    /// Packetizes `frame` once and offers it to every viewer without waiting on any.
    pub fn publish(&self, frame: EncodedFrame) {
        let mut state = lock(&self.state);
        if frame.keyframe {
            self.keyframes.satisfied_by_keyframe();
        }
        if state.subscribers.is_empty() {
            // Frames nobody receives leave gaps: no run to join until the next keyframe.
            state.current_run.clear();
            return;
        }
        let payloads = match state.payloader.payload(RTP_PAYLOAD_MTU, &frame.access_unit) {
            Ok(payloads) if !payloads.is_empty() => payloads,
            Ok(_) => return,
            Err(err) => {
                tracing::warn!(sequence = frame.sequence, "cannot packetize frame: {err}");
                return;
            }
        };
        let published_us = clock::monotonic_us();
        let shared = Arc::new(PacketizedFrame {
            payloads,
            keyframe: frame.keyframe,
            rtp_timestamp: rtp_timestamp_from_monotonic(frame.monotonic_us),
            capture_us: frame.capture_us,
            monotonic_us: frame.monotonic_us,
            published_us,
            sequence: frame.sequence,
        });
        self.latencies
            .record_encoded(published_us.saturating_sub(frame.monotonic_us));
        if shared.keyframe {
            state.current_run = vec![Arc::clone(&shared)];
        } else if !state.current_run.is_empty() && state.current_run.len() < JOINING_RUN_FRAMES {
            state.current_run.push(Arc::clone(&shared));
        } else {
            state.current_run.clear();
        }
        let mut wants_keyframe = false;
        state.subscribers.retain_mut(|sub| {
            if sub.awaiting_keyframe && !shared.keyframe {
                // Ask once the viewer's queue has room again, so a stuck viewer cannot
                // make the encoder emit IDRs for everyone.
                if !sub.keyframe_requested && sub.tx.capacity() > 0 {
                    sub.keyframe_requested = true;
                    wants_keyframe = true;
                }
                return !sub.tx.is_closed();
            }
            match sub.tx.try_send(Arc::clone(&shared)) {
                Ok(()) => {
                    sub.awaiting_keyframe = false;
                    true
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    sub.dropped += 1;
                    if !sub.awaiting_keyframe {
                        tracing::debug!(
                            viewer = sub.id,
                            "viewer queue full, dropping until next keyframe"
                        );
                    }
                    sub.awaiting_keyframe = true;
                    sub.keyframe_requested = false;
                    true
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
        if wants_keyframe {
            self.keyframes.request();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fan-out whose keyframe waker counts its wakes, as the idle encoder would be woken.
    fn fanout_counting_wakes() -> (Arc<FanOut>, Arc<KeyframeRequests>, Arc<AtomicU64>) {
        let requests = Arc::new(KeyframeRequests::default());
        let wakes = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&wakes);
        requests.set_waker(move || {
            counted.fetch_add(1, Ordering::Relaxed);
        });
        let fanout = FanOut::new(Arc::clone(&requests));
        (fanout, requests, wakes)
    }

    #[test]
    fn a_viewer_joining_with_no_run_to_start_from_wakes_the_encoder() {
        let (fanout, requests, wakes) = fanout_counting_wakes();
        let _viewer = fanout.subscribe();
        assert_eq!(wakes.load(Ordering::Relaxed), 1);
        assert!(
            requests.take_due(Instant::now()),
            "the request is recorded first"
        );
    }

    #[test]
    fn a_viewer_joining_after_everyone_left_gets_a_fresh_keyframe_not_the_old_run() {
        let (fanout, _requests, wakes) = fanout_counting_wakes();
        let first = fanout.subscribe();
        fanout.publish(frame(1, true));
        fanout.publish(frame(2, false));
        // While the stream flows, a second viewer joins the run instead of forcing an IDR.
        let mut second = fanout.subscribe();
        assert_eq!(wakes.load(Ordering::Relaxed), 1);
        assert_eq!(second.frames.try_recv().unwrap().sequence, 1);
        drop(first);
        drop(second);
        let mut later = fanout.subscribe();
        assert_eq!(
            wakes.load(Ordering::Relaxed),
            2,
            "the idle encoder is woken"
        );
        assert!(
            later.frames.try_recv().is_err(),
            "nothing from before the idle spell"
        );
    }

    fn frame(sequence: u64, keyframe: bool) -> EncodedFrame {
        // A tiny IDR or non-IDR slice; the payloader only needs valid NAL framing.
        let nal = if keyframe { 0x65 } else { 0x41 };
        EncodedFrame {
            access_unit: Bytes::from(vec![0, 0, 0, 1, nal, 0x88, 0x84, 0x21]),
            keyframe,
            capture_us: 1_000_000 + sequence * 33_333,
            monotonic_us: sequence * 33_333,
            sequence,
        }
    }

    fn packetized(sequence: u64, keyframe: bool, monotonic_us: u64) -> Arc<PacketizedFrame> {
        Arc::new(PacketizedFrame {
            payloads: vec![Bytes::from_static(b"x")],
            keyframe,
            rtp_timestamp: 0,
            capture_us: 0,
            monotonic_us,
            published_us: monotonic_us,
            sequence,
        })
    }

    fn sequences(run: &[Arc<PacketizedFrame>]) -> Vec<u64> {
        run.iter().map(|frame| frame.sequence).collect()
    }

    #[test]
    fn a_joining_viewer_gets_the_run_from_the_newest_fresh_keyframe() {
        let max_age = Duration::from_millis(100);
        let queued = vec![
            packetized(1, true, 1_000_000),
            packetized(2, false, 1_033_000),
            packetized(3, true, 1_066_000),
            packetized(4, false, 1_100_000),
        ];
        let run = joining_run(queued, 1_110_000, max_age).unwrap();
        assert_eq!(sequences(&run), [3, 4]);
    }

    #[test]
    fn a_stale_or_missing_keyframe_gives_the_joining_viewer_nothing() {
        let max_age = Duration::from_millis(100);
        let stale = vec![
            packetized(1, true, 1_000_000),
            packetized(2, false, 1_033_000),
        ];
        assert!(joining_run(stale, 1_133_001, max_age).is_none());
        // An old keyframe with a fresh frame after it: the viewer shows the fresh one.
        let old_keyframe = vec![
            packetized(1, true, 1_000_000),
            packetized(2, false, 1_150_000),
        ];
        assert_eq!(
            sequences(&joining_run(old_keyframe, 1_160_000, max_age).unwrap()),
            [1, 2]
        );
        let no_keyframe = vec![packetized(2, false, 1_033_000)];
        assert!(joining_run(no_keyframe, 1_040_000, max_age).is_none());
        assert!(joining_run(Vec::new(), 1_040_000, max_age).is_none());
        // Exactly at the limit still counts.
        let at_limit = vec![packetized(1, true, 1_000_000)];
        assert_eq!(
            sequences(&joining_run(at_limit, 1_100_000, max_age).unwrap()),
            [1]
        );
    }

    #[test]
    fn rtp_timestamp_is_90khz_of_the_monotonic_capture_instant() {
        assert_eq!(rtp_timestamp_from_monotonic(1_000_000), 90_000);
        assert_eq!(
            rtp_timestamp_from_monotonic(1_000_000 + 33_333),
            90_000 + 2_999
        );
        // Wraps at 2^32 ticks instead of overflowing.
        let wrap_us = (1u128 << 32) * 1_000_000 / 90_000;
        assert!(rtp_timestamp_from_monotonic(wrap_us as u64 + 1_000) < 1_000);
    }

    #[tokio::test]
    async fn rtp_timestamps_ignore_wall_clock_steps() {
        let fanout = FanOut::new(Arc::new(KeyframeRequests::default()));
        let mut viewer = fanout.subscribe();
        const HOUR_US: u64 = 3_600_000_000;
        // NTP steps the wall clock back an hour after frame 2 and forward three after 4.
        let steps = [0, 0, 0, -1, -1, 2, 2];
        for (sequence, hours) in steps.into_iter().enumerate() {
            let mut frame = frame(sequence as u64, sequence == 0);
            let wall = frame.capture_us + 10 * HOUR_US;
            frame.capture_us = wall.checked_add_signed(hours * HOUR_US as i64).unwrap();
            fanout.publish(frame);
        }
        let mut previous: Option<u32> = None;
        let mut received = 0;
        while let Ok(frame) = viewer.frames.try_recv() {
            if let Some(previous) = previous {
                // One frame period (33.333 ms) at 90 kHz, whatever the wall clock did.
                let ticks = frame.rtp_timestamp.wrapping_sub(previous);
                assert!((2_999..=3_000).contains(&ticks), "{ticks}");
            }
            previous = Some(frame.rtp_timestamp);
            received += 1;
        }
        assert_eq!(received, steps.len());
    }

    #[test]
    fn keyframe_requests_are_coalesced_to_one_per_interval() {
        let requests = KeyframeRequests::default();
        let t0 = Instant::now();
        assert!(!requests.take_due(t0), "nothing requested yet");
        requests.request();
        requests.request();
        assert!(requests.take_due(t0));
        assert!(!requests.take_due(t0), "two requests, one IDR");
        requests.request();
        assert!(
            !requests.take_due(t0 + Duration::from_millis(100)),
            "inside 250 ms"
        );
        assert!(
            requests.take_due(t0 + Duration::from_millis(250)),
            "served when the interval ends"
        );
        requests.request();
        requests.satisfied_by_keyframe();
        assert!(!requests.take_due(t0 + Duration::from_secs(5)));
    }

    #[tokio::test]
    async fn a_joining_viewer_starts_at_a_keyframe_and_requests_one() {
        let fanout = FanOut::new(Arc::new(KeyframeRequests::default()));
        let mut sub = fanout.subscribe();
        assert!(
            fanout.keyframes().take_due(Instant::now()),
            "join requests an IDR"
        );
        fanout.publish(frame(1, false));
        fanout.publish(frame(2, true));
        fanout.publish(frame(3, false));
        let first = sub.frames.recv().await.unwrap();
        assert_eq!((first.sequence, first.keyframe), (2, true));
        assert_eq!(sub.frames.recv().await.unwrap().sequence, 3);
        assert_eq!(
            first.rtp_timestamp,
            rtp_timestamp_from_monotonic(2 * 33_333)
        );
    }

    #[tokio::test]
    async fn a_viewer_joining_a_short_run_starts_at_its_keyframe_without_forcing_one() {
        let fanout = FanOut::new(Arc::new(KeyframeRequests::default()));
        let _first = fanout.subscribe();
        assert!(fanout.keyframes().take_due(Instant::now()));
        fanout.publish(frame(1, true));
        fanout.publish(frame(2, false));
        let mut second = fanout.subscribe();
        assert!(
            !fanout
                .keyframes()
                .take_due(Instant::now() + Duration::from_secs(1)),
            "no keyframe forced for a viewer that can start from the run"
        );
        fanout.publish(frame(3, false));
        let received: Vec<_> = std::iter::from_fn(|| second.frames.try_recv().ok())
            .map(|f| (f.sequence, f.keyframe))
            .collect();
        assert_eq!(received, [(1, true), (2, false), (3, false)]);
    }

    #[tokio::test]
    async fn a_viewer_joining_a_long_run_asks_for_a_keyframe() {
        let fanout = FanOut::new(Arc::new(KeyframeRequests::default()));
        let _first = fanout.subscribe();
        assert!(fanout.keyframes().take_due(Instant::now()));
        fanout.publish(frame(0, true));
        for sequence in 1..=JOINING_RUN_FRAMES as u64 {
            fanout.publish(frame(sequence, false));
        }
        let mut late = fanout.subscribe();
        assert!(fanout
            .keyframes()
            .take_due(Instant::now() + Duration::from_secs(1)));
        assert!(
            late.frames.try_recv().is_err(),
            "nothing before its keyframe"
        );
        fanout.publish(frame(50, false));
        fanout.publish(frame(51, true));
        assert_eq!(late.frames.try_recv().unwrap().sequence, 51);
    }

    #[tokio::test]
    async fn frames_are_shared_not_copied_between_viewers() {
        let fanout = FanOut::new(Arc::new(KeyframeRequests::default()));
        let mut a = fanout.subscribe();
        let mut b = fanout.subscribe();
        fanout.publish(frame(1, true));
        let fa = a.frames.recv().await.unwrap();
        let fb = b.frames.recv().await.unwrap();
        assert!(Arc::ptr_eq(&fa, &fb));
    }

    #[tokio::test]
    async fn a_stuck_viewer_drops_without_delaying_others_and_resumes_at_a_keyframe() {
        let fanout = FanOut::new(Arc::new(KeyframeRequests::default()));
        let mut stuck = fanout.subscribe();
        let mut healthy = fanout.subscribe();
        let now = Instant::now();
        fanout.keyframes().take_due(now);
        fanout.publish(frame(0, true));
        let mut received = Vec::new();
        for seq in 1..=20 {
            fanout.publish(frame(seq, false));
            while let Ok(f) = healthy.frames.try_recv() {
                received.push(f.sequence);
            }
        }
        assert_eq!(
            received,
            (0..=20).collect::<Vec<_>>(),
            "the healthy viewer lost nothing"
        );
        // The stuck viewer holds exactly its queue's worth; the rest was dropped and no
        // IDR was asked for while its queue stayed full.
        assert!(!fanout.keyframes().take_due(now + Duration::from_secs(1)));
        let mut held = Vec::new();
        while let Ok(f) = stuck.frames.try_recv() {
            held.push(f.sequence);
        }
        assert_eq!(held, (0..VIEWER_QUEUE_FRAMES as u64).collect::<Vec<_>>());
        // Now drained: the next delta frame is skipped, an IDR is requested, and the
        // viewer resumes exactly at the next keyframe.
        fanout.publish(frame(21, false));
        assert!(stuck.frames.try_recv().is_err());
        assert!(fanout.keyframes().take_due(now + Duration::from_secs(2)));
        fanout.publish(frame(22, true));
        assert_eq!(stuck.frames.try_recv().unwrap().sequence, 22);
        drop(stuck);
        assert_eq!(fanout.subscriber_count(), 1);
    }
}
