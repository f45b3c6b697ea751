//! Snapshots: a JPEG of the newest frame, encoded from its I420 planes (a camera's own
//! H.264 is decoded to planes only when a snapshot is asked for; see `pipeline`). Requests
//! from every transport (HTTP, data channels, MQTT) wait here together and one encode
//! answers them all. The JPEG encode itself is pure; this module never does I/O and must
//! never keep a frame alive after it answered.

use crate::source::Frame;
use bytes::Bytes;
use jpeg_encoder::{Encoder, ImageBuffer, JpegColorType, SamplingFactor};
use openh264::decoder::Decoder;
use openh264::formats::YUVSource;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use tokio::sync::oneshot;

/// The quality used when the configuration does not say (1-100, libjpeg's scale).
pub const DEFAULT_QUALITY: u8 = 80;

/// A JPEG and the frame it shows.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub jpeg: Bytes,
    pub width: u32,
    pub height: u32,
    /// The frame's capture time, Unix microseconds (testsrc paints it as the latency stamp).
    pub capture_us: u64,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SnapshotError {
    #[error("a {width}x{height} frame cannot be a JPEG (1 to 65535 pixels each way, even)")]
    Size { width: u32, height: u32 },
    #[error("the frame's planes are shorter than {width}x{height} needs")]
    ShortPlanes { width: u32, height: u32 },
    #[error("JPEG encoding failed: {0}")]
    Jpeg(String),
    #[error("no frame came from the camera in time")]
    NoFrame,
    #[error("the camera's H.264 could not be decoded for a snapshot: {0}")]
    Decode(String),
}

/// An I420 picture as planes with their strides (a decoder's output has padded rows).
#[derive(Debug, Clone, Copy)]
pub struct I420Planes<'a> {
    pub width: u32,
    pub height: u32,
    pub y: &'a [u8],
    pub u: &'a [u8],
    pub v: &'a [u8],
    pub y_stride: usize,
    pub chroma_stride: usize,
}

impl<'a> I420Planes<'a> {
    /// The planes of a packed I420 buffer (Y, then U and V at half size each way).
    pub fn packed(i420: &'a [u8], width: u32, height: u32) -> Self {
        let (w, h) = (width as usize, height as usize);
        let (luma, chroma) = (w * h, (w / 2) * (h / 2));
        let y = i420.get(..luma).unwrap_or(&[]);
        let u = i420.get(luma..luma + chroma).unwrap_or(&[]);
        let v = i420.get(luma + chroma..luma + 2 * chroma).unwrap_or(&[]);
        I420Planes {
            width,
            height,
            y,
            u,
            v,
            y_stride: w,
            chroma_stride: w / 2,
        }
    }

    fn check(&self) -> Result<(), SnapshotError> {
        let (width, height) = (self.width, self.height);
        if width == 0 || height == 0 || width > 65535 || height > 65535 || width % 2 == 1 {
            return Err(SnapshotError::Size { width, height });
        }
        let (w, h) = (width as usize, height as usize);
        let plane_fits = |plane: &[u8], stride: usize, row: usize, rows: usize| {
            stride >= row && plane.len() >= stride * (rows - 1) + row
        };
        let chroma_rows = h.div_ceil(2);
        if !plane_fits(self.y, self.y_stride, w, h)
            || !plane_fits(self.u, self.chroma_stride, w / 2, chroma_rows)
            || !plane_fits(self.v, self.chroma_stride, w / 2, chroma_rows)
        {
            return Err(SnapshotError::ShortPlanes { width, height });
        }
        Ok(())
    }
}

/// Feeds the encoder full-resolution Y, Cb and Cr rows straight from the planes: no RGB
/// round trip. Chroma is repeated to full width here and subsampled back (4:2:0) by the
/// encoder, so it passes through unchanged.
impl ImageBuffer for I420Planes<'_> {
    fn get_jpeg_color_type(&self) -> JpegColorType {
        JpegColorType::Ycbcr
    }

    fn width(&self) -> u16 {
        self.width as u16
    }

    fn height(&self) -> u16 {
        self.height as u16
    }

    fn fill_buffers(&self, y: u16, buffers: &mut [Vec<u8>; 4]) {
        let (row, w) = (usize::from(y), self.width as usize);
        let luma = &self.y[row * self.y_stride..][..w];
        let chroma_row = (row / 2) * self.chroma_stride;
        let (u, v) = (
            &self.u[chroma_row..][..w / 2],
            &self.v[chroma_row..][..w / 2],
        );
        buffers[0].extend_from_slice(luma);
        for (&cb, &cr) in u.iter().zip(v) {
            buffers[1].extend_from_slice(&[cb, cb]);
            buffers[2].extend_from_slice(&[cr, cr]);
        }
    }
}

/// Encodes `planes` as a baseline 4:2:0 JPEG at `quality` (1-100; clamped).
pub fn jpeg_from_i420(planes: I420Planes<'_>, quality: u8) -> Result<Vec<u8>, SnapshotError> {
    planes.check()?;
    let mut jpeg = Vec::with_capacity(planes.y.len() / 8);
    let mut encoder = Encoder::new(&mut jpeg, quality.clamp(1, 100));
    encoder.set_sampling_factor(SamplingFactor::F_2_2);
    encoder
        .encode_image(planes)
        .map_err(|e| SnapshotError::Jpeg(e.to_string()))?;
    Ok(jpeg)
}

/// What the encode thread hands the snapshot worker, so a JPEG never delays the stream.
pub enum SnapshotJob {
    /// A copy of a raw frame (the original goes on to the encoder).
    Raw(Frame),
    /// A camera's own H.264: an IDR access unit with its SPS and PPS in front, decoded
    /// only for this snapshot.
    H264 { access_unit: Bytes, capture_us: u64 },
}

impl SnapshotJob {
    /// The snapshot this job makes, at `quality`.
    pub fn run(&self, quality: u8) -> Result<Snapshot, SnapshotError> {
        match self {
            SnapshotJob::Raw(frame) => Ok(Snapshot {
                jpeg: Bytes::from(jpeg_from_i420(
                    I420Planes::packed(&frame.i420, frame.width, frame.height),
                    quality,
                )?),
                width: frame.width,
                height: frame.height,
                capture_us: frame.capture_us,
            }),
            SnapshotJob::H264 {
                access_unit,
                capture_us,
            } => {
                let decode_error = |e: openh264::Error| SnapshotError::Decode(e.to_string());
                let mut decoder = Decoder::new().map_err(decode_error)?;
                let picture = match decoder.decode(access_unit).map_err(decode_error)? {
                    Some(picture) => picture,
                    None => decoder
                        .flush_remaining()
                        .map_err(decode_error)?
                        .into_iter()
                        .next()
                        .ok_or_else(|| {
                            SnapshotError::Decode("no picture in the keyframe".into())
                        })?,
                };
                let (width, height) = picture.dimensions();
                let (y_stride, chroma_stride, _) = picture.strides();
                let planes = I420Planes {
                    width: width as u32,
                    height: height as u32,
                    y: picture.y(),
                    u: picture.u(),
                    v: picture.v(),
                    y_stride,
                    chroma_stride,
                };
                Ok(Snapshot {
                    jpeg: Bytes::from(jpeg_from_i420(planes, quality)?),
                    width: width as u32,
                    height: height as u32,
                    capture_us: *capture_us,
                })
            }
        }
    }
}

type Waiter = oneshot::Sender<Result<Snapshot, SnapshotError>>;

/// Snapshot requests waiting for the next frame. Any number of askers share one encode.
#[derive(Debug, Default)]
pub struct SnapshotRequests {
    pending: AtomicBool,
    /// A frame was handed to the snapshot worker and not yet answered: later frames are
    /// not, so a flood of requests costs at most one encode at a time.
    in_flight: AtomicBool,
    waiting: Mutex<Vec<Waiter>>,
}

impl SnapshotRequests {
    /// Asks for a JPEG of the next frame; the answer comes on the receiver. Dropping the
    /// receiver (the asker gave up) costs nothing.
    pub fn request(&self) -> oneshot::Receiver<Result<Snapshot, SnapshotError>> {
        let (tx, rx) = oneshot::channel();
        let mut waiting = lock(&self.waiting);
        waiting.retain(|waiter| !waiter.is_closed());
        waiting.push(tx);
        self.pending.store(true, Ordering::Release);
        rx
    }

    /// Whether anybody waits: the encode thread's cheap check on every frame.
    pub fn pending(&self) -> bool {
        self.pending.load(Ordering::Acquire)
    }

    /// The encode thread's question for each frame: should this one go to the snapshot
    /// worker? Yes when somebody waits and no frame is with the worker already; then the
    /// frame is the worker's until it calls [`answer`](Self::answer).
    pub fn claim_frame(&self) -> bool {
        self.pending()
            && self
                .in_flight
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    /// Answers everybody waiting with `result`; `result` is only made (the JPEG only
    /// encoded) when somebody still waits.
    pub fn answer(&self, result: impl FnOnce() -> Result<Snapshot, SnapshotError>) {
        let waiting = {
            let mut waiting = lock(&self.waiting);
            self.pending.store(false, Ordering::Release);
            self.in_flight.store(false, Ordering::Release);
            std::mem::take(&mut *waiting)
        };
        let waiting: Vec<Waiter> = waiting.into_iter().filter(|w| !w.is_closed()).collect();
        if waiting.is_empty() {
            return;
        }
        let result = result();
        for waiter in waiting {
            let _ = waiter.send(result.clone());
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A snapshot as data-channel messages: a JSON header (`type`, `bytes`, `chunks`,
/// `width`, `height`, `capture_us`), then the JPEG in binary chunks of at most
/// `max_chunk` bytes (kept under the SCTP message limit both ends accept).
pub fn data_channel_messages(snapshot: &Snapshot, max_chunk: usize) -> (String, Vec<Bytes>) {
    let max_chunk = max_chunk.max(1);
    let chunks: Vec<Bytes> = (0..snapshot.jpeg.len())
        .step_by(max_chunk)
        .map(|start| {
            snapshot
                .jpeg
                .slice(start..(start + max_chunk).min(snapshot.jpeg.len()))
        })
        .collect();
    let header = serde_json::json!({
        "type": "snapshot",
        "bytes": snapshot.jpeg.len(),
        "chunks": chunks.len(),
        "width": snapshot.width,
        "height": snapshot.height,
        "capture_us": snapshot.capture_us,
    });
    (header.to_string(), chunks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::stamp;
    use crate::source::testsrc::TestSource;

    /// The decoded JPEG's luma plane (where the stamp is read), width and height.
    fn decode(jpeg: &[u8]) -> (Vec<u8>, usize, usize) {
        let options = zune_jpeg::zune_core::options::DecoderOptions::default()
            .jpeg_set_out_colorspace(zune_jpeg::zune_core::colorspace::ColorSpace::YCbCr);
        let mut decoder =
            zune_jpeg::JpegDecoder::new_with_options(std::io::Cursor::new(jpeg), options);
        let ycbcr = decoder.decode().expect("a JPEG zune-jpeg decodes");
        let info = decoder.info().unwrap();
        let luma = ycbcr.chunks_exact(3).map(|pixel| pixel[0]).collect();
        (luma, usize::from(info.width), usize::from(info.height))
    }

    #[test]
    fn a_testsrc_frame_becomes_a_jpeg_of_its_size_with_its_stamp() {
        let mut source = TestSource::new(1280, 720, 30).unwrap();
        let frame = source.render(7, 1_780_000_000_123_000);
        let jpeg = jpeg_from_i420(
            I420Planes::packed(&frame.i420, frame.width, frame.height),
            DEFAULT_QUALITY,
        )
        .unwrap();
        assert_eq!(&jpeg[..2], &[0xff, 0xd8], "SOI");
        let (luma, width, height) = decode(&jpeg);
        assert_eq!((width, height), (1280, 720));
        let stamp = stamp::read_stamp(&luma, width, 1280, 720);
        assert_eq!(stamp, Some(1_780_000_000_123));
    }

    #[test]
    fn a_cameras_h264_keyframe_is_decoded_for_a_snapshot_with_its_stamp() {
        let settings = crate::encode::EncoderSettings {
            width: 1280,
            height: 720,
            fps: 30,
            bitrate_kbps: 4000,
            keyframe_interval_s: 2,
        };
        let mut encoder = crate::encode::H264Encoder::new(settings).unwrap();
        let mut source = TestSource::new(1280, 720, 30).unwrap();
        let frame = source.render(2, 1_780_000_000_456_000);
        let idr = encoder.encode(&frame, true).unwrap().unwrap();
        assert!(idr.keyframe);
        let job = SnapshotJob::H264 {
            access_unit: idr.access_unit,
            capture_us: frame.capture_us,
        };
        let snapshot = job.run(85).unwrap();
        assert_eq!(
            (snapshot.width, snapshot.height, snapshot.capture_us),
            (1280, 720, 1_780_000_000_456_000)
        );
        let (luma, width, height) = decode(&snapshot.jpeg);
        assert_eq!((width, height), (1280, 720));
        assert_eq!(
            stamp::read_stamp(&luma, width, 1280, 720),
            Some(1_780_000_000_456)
        );
        // Not H.264 at all: an error, not a panic.
        let garbage = SnapshotJob::H264 {
            access_unit: Bytes::from_static(&[0, 0, 0, 1, 0x65, 1, 2, 3]),
            capture_us: 0,
        };
        assert!(matches!(garbage.run(85), Err(SnapshotError::Decode(_))));
    }

    #[test]
    fn padded_planes_encode_like_packed_ones() {
        let mut source = TestSource::new(640, 480, 30).unwrap();
        let frame = source.render(1, 1_780_000_000_000_000);
        let packed = I420Planes::packed(&frame.i420, 640, 480);
        // The same picture with 64 bytes of padding after every row, as decoders give it.
        let pad = |plane: &[u8], row: usize| -> Vec<u8> {
            plane
                .chunks_exact(row)
                .flat_map(|r| r.iter().copied().chain(std::iter::repeat_n(0xee, 64)))
                .collect()
        };
        let (y, u, v) = (pad(packed.y, 640), pad(packed.u, 320), pad(packed.v, 320));
        let padded = I420Planes {
            y: &y,
            u: &u,
            v: &v,
            y_stride: 704,
            chroma_stride: 384,
            ..packed
        };
        assert_eq!(
            jpeg_from_i420(padded, 90).unwrap(),
            jpeg_from_i420(packed, 90).unwrap()
        );
    }

    #[test]
    fn bad_sizes_and_short_planes_are_errors_not_panics() {
        let buffer = vec![0u8; 100];
        for (width, height) in [(0, 10), (10, 0), (7, 8), (70_000, 2)] {
            assert_eq!(
                jpeg_from_i420(I420Planes::packed(&buffer, width, height), 80),
                Err(SnapshotError::Size { width, height })
            );
        }
        assert_eq!(
            jpeg_from_i420(I420Planes::packed(&buffer, 64, 48), 80),
            Err(SnapshotError::ShortPlanes {
                width: 64,
                height: 48
            })
        );
    }

    #[test]
    fn quality_changes_the_size() {
        let mut source = TestSource::new(640, 480, 30).unwrap();
        let frame = source.render(3, 1_780_000_000_000_000);
        let planes = I420Planes::packed(&frame.i420, 640, 480);
        let (low, high) = (
            jpeg_from_i420(planes, 20).unwrap(),
            jpeg_from_i420(planes, 95).unwrap(),
        );
        assert!(low.len() < high.len(), "{} vs {}", low.len(), high.len());
    }

    fn snapshot(bytes: usize) -> Snapshot {
        Snapshot {
            jpeg: Bytes::from((0..bytes).map(|i| i as u8).collect::<Vec<u8>>()),
            width: 64,
            height: 48,
            capture_us: 5,
        }
    }

    #[test]
    fn one_encode_answers_every_waiting_asker() {
        let requests = SnapshotRequests::default();
        assert!(!requests.pending());
        let (mut first, mut second) = (requests.request(), requests.request());
        let gave_up = requests.request();
        drop(gave_up);
        assert!(requests.pending());
        let mut encodes = 0;
        requests.answer(|| {
            encodes += 1;
            Ok(snapshot(10))
        });
        assert_eq!(encodes, 1);
        assert!(!requests.pending());
        assert_eq!(first.try_recv().unwrap().unwrap().jpeg.len(), 10);
        assert_eq!(second.try_recv().unwrap().unwrap().capture_us, 5);
        // Nobody waits any more: the next frame costs no encode.
        requests.answer(|| unreachable!("nobody asked"));
    }

    #[test]
    fn one_frame_at_a_time_goes_to_the_worker() {
        let requests = SnapshotRequests::default();
        assert!(!requests.claim_frame(), "nobody asked");
        let mut asker = requests.request();
        assert!(requests.claim_frame());
        assert!(!requests.claim_frame(), "the worker has a frame already");
        let _another = requests.request();
        assert!(!requests.claim_frame(), "still with the worker");
        requests.answer(|| Ok(snapshot(1)));
        assert!(asker.try_recv().unwrap().is_ok());
        assert!(!requests.claim_frame(), "both were answered");
    }

    #[test]
    fn an_asker_who_left_costs_no_encode() {
        let requests = SnapshotRequests::default();
        drop(requests.request());
        requests.answer(|| unreachable!("the only asker left"));
        assert!(!requests.pending());
    }

    #[test]
    fn data_channel_messages_are_a_header_then_bounded_chunks() {
        let (header, chunks) = data_channel_messages(&snapshot(2500), 1000);
        let header: serde_json::Value = serde_json::from_str(&header).unwrap();
        assert_eq!(header["type"], "snapshot");
        assert_eq!(header["bytes"], 2500);
        assert_eq!(header["chunks"], 3);
        assert_eq!(
            (header["width"].as_u64(), header["capture_us"].as_u64()),
            (Some(64), Some(5))
        );
        assert_eq!(
            chunks.iter().map(Bytes::len).collect::<Vec<_>>(),
            [1000, 1000, 500]
        );
        let joined: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        assert_eq!(joined, snapshot(2500).jpeg.to_vec());
        let (_, none) = data_channel_messages(&snapshot(0), 1000);
        assert!(none.is_empty());
    }
}
