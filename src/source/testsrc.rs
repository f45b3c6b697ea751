//! The synthetic source `testsrc`: colour bars with a moving box and bar, paced by the real
//! clock, carrying the latency stamp. Lets everything downstream run without a camera.
//! It must never burst frames to catch up, nor do per-pixel work it can do once.

use super::frame_pool::{FramePool, PictureOut};
use super::stamp;
use super::{Frame, StreamedMode};
use std::time::{Duration, Instant};

/// 75% colour bars (white, yellow, cyan, green, magenta, red, blue) in BT.601 limited range.
const BARS_YUV: [(u8, u8, u8); 7] = [
    (180, 128, 128),
    (162, 44, 142),
    (131, 156, 44),
    (112, 72, 58),
    (84, 184, 198),
    (65, 100, 212),
    (35, 212, 114),
];
const BOX_LUMA: u8 = 235;
const BAR_LUMA: u8 = 16;
/// The box crosses the frame once every this many seconds.
const SWEEP_SECONDS: u64 = 4;

pub struct TestSource {
    width: u32,
    height: u32,
    fps: u32,
    /// One row of each plane of the background; a frame copies them rather than a whole
    /// background picture, which would keep another 1.4 MB resident at 720p.
    bars: BarRows,
    buffers: FramePool,
    sequence: u64,
    anchor: Option<(Instant, u64)>,
    stall: Option<Stall>,
}

/// The test knob `video.testsrc_stall_after_s`: the source wedges for good this long after
/// its first frame, as a hung camera driver would.
struct Stall {
    after: Duration,
    started: Option<Instant>,
}

impl TestSource {
    pub fn new(width: u32, height: u32, fps: u32) -> Result<TestSource, String> {
        if width < 16 || height < 16 || width % 2 != 0 || height % 2 != 0 {
            return Err(format!(
                "testsrc needs an even size of at least 16x16, got {width}x{height}"
            ));
        }
        if fps == 0 {
            return Err("testsrc needs a frame rate of at least 1".to_owned());
        }
        Ok(TestSource {
            width,
            height,
            fps,
            bars: BarRows::new(width as usize),
            buffers: FramePool::default(),
            sequence: 0,
            anchor: None,
            stall: None,
        })
    }

    /// With `Some(after)`, `next_frame` blocks forever once `after` has passed since the
    /// first frame: the capture thread wedges and the pipeline stops (a test-only fault).
    pub fn stalling_after(mut self, after: Option<Duration>) -> TestSource {
        self.stall = after.map(|after| Stall {
            after,
            started: None,
        });
        self
    }

    /// Never returns once the stall knob's time has come.
    fn wedge_if_due(&mut self) {
        let Some(stall) = &mut self.stall else { return };
        let started = *stall.started.get_or_insert_with(Instant::now);
        if started.elapsed() >= stall.after {
            tracing::warn!(
                "testsrc: wedging for good (video.testsrc_stall_after_s = {}), a test-only fault",
                stall.after.as_secs()
            );
            loop {
                std::thread::park();
            }
        }
    }

    /// The size and rate it was made with: a synthetic source has nothing to negotiate.
    pub fn streamed_mode(&self) -> StreamedMode {
        StreamedMode {
            width: self.width,
            height: self.height,
            fps: f64::from(self.fps),
        }
    }

    fn period(&self) -> Duration {
        Duration::from_secs(1) / self.fps
    }

    /// Waits for the next frame's deadline, then renders it with the current time.
    pub fn next_frame(&mut self) -> Frame {
        self.wedge_if_due();
        let now = Instant::now();
        let (start, first) = *self.anchor.get_or_insert((now, self.sequence));
        let deadline = start + self.period() * (self.sequence - first) as u32;
        if now < deadline {
            std::thread::sleep(deadline - now);
        } else if now - deadline > self.period() {
            // Too late (stalled consumer, suspended VM): restart the clock, never burst.
            self.anchor = Some((now, self.sequence));
        }
        let mut frame = self.render(self.sequence, crate::clock::unix_us());
        frame.monotonic_us = crate::clock::monotonic_us();
        self.sequence += 1;
        frame
    }

    /// Renders frame `sequence` stamped with `capture_us`, without waiting (its
    /// `monotonic_us` is 0: `next_frame` sets it).
    pub fn render(&mut self, sequence: u64, capture_us: u64) -> Frame {
        let (w, h) = (self.width as usize, self.height as usize);
        let mut i420 = self.buffers.take();
        self.bars.fill(i420.sized(w * h * 3 / 2), h);
        let frames_per_sweep = (SWEEP_SECONDS * u64::from(self.fps)).max(1);
        let phase = (sequence % frames_per_sweep) as usize;
        let sweep = frames_per_sweep as usize;
        // A box moving left to right through the middle band.
        let box_size = (h / 4).max(2) & !1;
        let box_x = (phase * (w - box_size) / sweep) & !1;
        let box_y = (h / 2 - box_size / 2) & !1;
        for y in box_y..box_y + box_size {
            i420[y * w + box_x..y * w + box_x + box_size].fill(BOX_LUMA);
        }
        // A dark bar moving top to bottom, full width.
        let bar_height = (h / 24).max(2);
        let bar_y = phase * (h - bar_height) / sweep;
        i420[bar_y * w..(bar_y + bar_height) * w].fill(BAR_LUMA);
        stamp::write_stamp(&mut i420, self.width, self.height, capture_us / 1000);
        Frame {
            width: self.width,
            height: self.height,
            i420,
            capture_us,
            monotonic_us: 0,
            sequence,
        }
    }
}

/// The static background, vertical colour bars: one row of each plane, computed once.
struct BarRows {
    luma: Vec<u8>,
    u: Vec<u8>,
    v: Vec<u8>,
}

impl BarRows {
    fn new(w: usize) -> Self {
        let cw = w / 2;
        let bar_of =
            |x: usize, width: usize| BARS_YUV[(x * BARS_YUV.len() / width).min(BARS_YUV.len() - 1)];
        BarRows {
            luma: (0..w).map(|x| bar_of(x, w).0).collect(),
            u: (0..cw).map(|x| bar_of(x, cw).1).collect(),
            v: (0..cw).map(|x| bar_of(x, cw).2).collect(),
        }
    }

    /// Writes the background picture, `h` rows high, over all of `frame`.
    fn fill(&self, frame: &mut [u8], h: usize) {
        let (luma, chroma) = frame.split_at_mut(self.luma.len() * h);
        let (u, v) = chroma.split_at_mut(self.u.len() * (h / 2));
        for (plane, row) in [(luma, &self.luma), (u, &self.u), (v, &self.v)] {
            for out in plane.chunks_exact_mut(row.len()) {
                out.copy_from_slice(row);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stall_knob_wedges_next_frame_for_good_and_is_off_by_default() {
        let mut plain = TestSource::new(64, 32, 50).unwrap();
        let mut far = TestSource::new(64, 32, 50)
            .unwrap()
            .stalling_after(Some(Duration::from_secs(3600)));
        assert_eq!(plain.next_frame().sequence, 0);
        assert_eq!(far.next_frame().sequence, 0);
        let (frames, received) = std::sync::mpsc::channel();
        // The thread stays parked for the rest of the test process, as the knob intends.
        std::thread::spawn(move || {
            let mut wedged = TestSource::new(64, 32, 50)
                .unwrap()
                .stalling_after(Some(Duration::ZERO));
            let _ = frames.send(wedged.next_frame().sequence);
        });
        assert!(received.recv_timeout(Duration::from_millis(500)).is_err());
    }

    #[test]
    fn rejects_bad_sizes_with_a_clear_message() {
        let error = |w, h, fps| TestSource::new(w, h, fps).err().unwrap_or_default();
        assert!(error(641, 480, 30).contains("641x480"));
        assert!(error(0, 0, 30).contains("0x0"));
        assert!(error(640, 480, 0).contains("frame rate"));
    }

    #[test]
    fn frames_have_i420_planes_and_a_readable_stamp() {
        let mut source = TestSource::new(640, 480, 30).unwrap();
        let frame = source.render(7, 1_763_942_400_123_456);
        assert_eq!(frame.i420.len(), 640 * 480 * 3 / 2);
        assert_eq!((frame.width, frame.height, frame.sequence), (640, 480, 7));
        assert_eq!(
            stamp::read_stamp(&frame.i420, 640, 640, 480),
            Some(1_763_942_400_123)
        );
    }

    #[test]
    fn the_background_is_seven_colour_bars_in_every_plane() {
        let (w, h) = (1400, 720);
        let frame = TestSource::new(w, h, 30).unwrap().render(0, 0);
        let (w, h) = (w as usize, h as usize);
        let (luma, chroma) = frame.i420.split_at(w * h);
        let (u, v) = chroma.split_at(w / 2 * h / 2);
        // The last row of each plane: below the stamp, the box and the bar at frame 0.
        let last_row = |plane: &[u8], width: usize| plane[plane.len() - width..].to_vec();
        let bars = |width: usize, pick: fn(&(u8, u8, u8)) -> u8| -> Vec<u8> {
            BARS_YUV
                .iter()
                .flat_map(|bar| std::iter::repeat_n(pick(bar), width / 7))
                .collect()
        };
        assert_eq!(last_row(luma, w), bars(w, |bar| bar.0));
        assert_eq!(last_row(u, w / 2), bars(w / 2, |bar| bar.1));
        assert_eq!(last_row(v, w / 2), bars(w / 2, |bar| bar.2));
    }

    #[test]
    fn a_dropped_frame_lends_its_buffer_to_the_next() {
        let mut source = TestSource::new(64, 32, 50).unwrap();
        let first = source.render(0, 0);
        let address = first.i420.as_ptr();
        drop(first);
        // Without the pool, the kernel would hand the freed mapping's range to this decoy.
        let decoy = memmap2::MmapMut::map_anon(64 * 32 * 3 / 2).unwrap();
        let second = source.render(1, 0);
        assert_eq!(second.i420.as_ptr(), address, "no allocation per frame");
        assert_ne!(decoy.as_ptr(), address);
        assert_eq!(second.i420.len(), 64 * 32 * 3 / 2);
    }

    #[test]
    fn the_picture_moves_outside_the_stamp() {
        let mut source = TestSource::new(1280, 720, 30).unwrap();
        let a = source.render(0, 0);
        let b = source.render(15, 0);
        let below_stamp = 16 * 1280..1280 * 720;
        assert_ne!(a.i420[below_stamp.clone()], b.i420[below_stamp]);
    }

    #[test]
    fn pacing_keeps_order_and_increments() {
        let mut source = TestSource::new(64, 32, 50).unwrap();
        let frames: Vec<Frame> = (0..5).map(|_| source.next_frame()).collect();
        for pair in frames.windows(2) {
            assert_eq!(pair[1].sequence, pair[0].sequence + 1);
            assert!(pair[1].capture_us > pair[0].capture_us);
            assert!(pair[1].monotonic_us > pair[0].monotonic_us);
        }
    }

    #[test]
    #[ignore = "benchmark: prints ns per 1280x720 frame"]
    fn render_cost_at_720p() {
        let mut source = TestSource::new(1280, 720, 30).unwrap();
        let started = Instant::now();
        for n in 0..300 {
            std::hint::black_box(source.render(n, n * 33_333));
        }
        println!(
            "testsrc: {} ns per 1280x720 frame",
            started.elapsed().as_nanos() / 300
        );
    }
}
