//! Encoding: turns raw I420 frames into H.264 access units, once for all viewers.
//! Runs on the pipeline's encoder thread; it must never touch the network or block on viewers.

pub mod passthrough;

use crate::h264;
use crate::source::Frame;
use bytes::Bytes;
use openh264::encoder::{
    BitRate, Encoder, EncoderConfig, FrameRate, FrameType, IntraFramePeriod, Profile,
    RateControlMode, SpsPpsStrategy, UsageType,
};
use openh264::formats::YUVSlices;
use openh264::OpenH264API;

/// The `fmtp` the encoder's output satisfies; the only H.264 flavour peercam offers.
pub const H264_FMTP: &str =
    "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f";

/// One encoded picture, shared by reference count between every viewer.
#[derive(Debug, Clone)]
pub struct EncodedFrame {
    /// The access unit in Annex-B form; keyframes start with SPS and PPS.
    pub access_unit: Bytes,
    pub keyframe: bool,
    /// Capture time of the source frame, microseconds since the Unix epoch.
    pub capture_us: u64,
    /// Capture instant of the source frame on the monotonic clock (`clock::monotonic_us`).
    pub monotonic_us: u64,
    pub sequence: u64,
}

/// What the encoder needs to know about the stream it produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncoderSettings {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub bitrate_kbps: u32,
    pub keyframe_interval_s: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error(
        "frame is {got_w}x{got_h} with {got_len} bytes, encoder expects {want_w}x{want_h} I420"
    )]
    FrameMismatch {
        got_w: u32,
        got_h: u32,
        got_len: usize,
        want_w: u32,
        want_h: u32,
    },
    #[error("openh264: {0}")]
    Codec(String),
}

/// Encoder threads (and slices per picture) at most: a board's other cores capture,
/// convert and send.
const ENCODER_THREADS_MAX: u16 = 2;

/// Threads openh264 encodes on, one slice each: this board's cores, at most
/// [`ENCODER_THREADS_MAX`].
fn encoder_threads() -> u16 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    u16::try_from(cores).map_or(ENCODER_THREADS_MAX, |cores| cores.min(ENCODER_THREADS_MAX))
}

/// Constrained-baseline H.264 encoder (no B-frames, SPS/PPS before every IDR).
pub struct H264Encoder {
    encoder: Encoder,
    settings: EncoderSettings,
    /// The warm-up picture was encoded: the first real frame must be an IDR of its own.
    owes_keyframe: bool,
}

impl H264Encoder {
    pub fn new(settings: EncoderSettings) -> Result<Self, EncodeError> {
        let config = EncoderConfig::new()
            .usage_type(UsageType::CameraVideoRealTime)
            .profile(Profile::Baseline)
            .rate_control_mode(RateControlMode::Bitrate)
            .bitrate(BitRate::from_bps(
                settings.bitrate_kbps.saturating_mul(1000),
            ))
            .max_frame_rate(FrameRate::from_hz(settings.fps as f32))
            // openh264 only holds the target bitrate when it may skip frames; a skipped
            // frame costs one frame period, an unbounded bitrate costs the whole link.
            .skip_frames(true)
            .sps_pps_strategy(SpsPpsStrategy::ConstantId)
            // One slice per thread, encoded in parallel (libwebrtc's openh264 setting for
            // packetization mode 1): a 720p IDR, which a joining viewer waits for, takes
            // about 19 ms instead of 33 on two cores, for ~10 % more bits on the IDR. The
            // threads' buffers stay off the RSS thanks to the vendored openh264-sys2.
            .num_threads(encoder_threads())
            .slice_count(encoder_threads())
            .intra_frame_period(IntraFramePeriod::from_num_frames(
                settings
                    .fps
                    .saturating_mul(settings.keyframe_interval_s)
                    .max(1),
            ));
        let mut encoder = Encoder::with_api_config(OpenH264API::from_source(), config)
            .map_err(|e| EncodeError::Codec(e.to_string()))?;
        // openh264 sets itself up (buffers of several MB at 720p) on its first picture.
        // Doing that here, with a grey picture whose output is discarded, spares the first
        // viewer after a start or rebuild that wait (~60 ms at 720p) and reports settings
        // openh264 refuses at once.
        let (w, h) = (settings.width as usize, settings.height as usize);
        let grey = vec![128u8; w * h + 2 * (w / 2) * (h / 2)];
        let (y, rest) = grey.split_at(w * h);
        let (u, v) = rest.split_at((w / 2) * (h / 2));
        encoder
            .encode(&YUVSlices::new((y, u, v), (w, h), (w, w / 2, w / 2)))
            .map_err(|e| EncodeError::Codec(e.to_string()))?;
        Ok(Self {
            encoder,
            settings,
            owes_keyframe: true,
        })
    }

    pub fn settings(&self) -> EncoderSettings {
        self.settings
    }

    /// Encodes one frame. `force_keyframe` makes this frame an IDR. Returns `None` when
    /// the encoder produced no picture for this frame.
    pub fn encode(
        &mut self,
        frame: &Frame,
        force_keyframe: bool,
    ) -> Result<Option<EncodedFrame>, EncodeError> {
        let (w, h) = (self.settings.width as usize, self.settings.height as usize);
        let luma = w * h;
        let chroma = (w / 2) * (h / 2);
        if frame.width != self.settings.width
            || frame.height != self.settings.height
            || frame.i420.len() != luma + 2 * chroma
        {
            return Err(EncodeError::FrameMismatch {
                got_w: frame.width,
                got_h: frame.height,
                got_len: frame.i420.len(),
                want_w: self.settings.width,
                want_h: self.settings.height,
            });
        }
        let (y, rest) = frame.i420.split_at(luma);
        let (u, v) = rest.split_at(chroma);
        let yuv = YUVSlices::new((y, u, v), (w, h), (w, w / 2, w / 2));
        if force_keyframe || std::mem::take(&mut self.owes_keyframe) {
            self.encoder.force_intra_frame();
        }
        let bitstream = self
            .encoder
            .encode(&yuv)
            .map_err(|e| EncodeError::Codec(e.to_string()))?;
        if matches!(bitstream.frame_type(), FrameType::Skip | FrameType::Invalid) {
            return Ok(None);
        }
        let access_unit = bitstream.to_vec();
        if access_unit.is_empty() {
            return Ok(None);
        }
        let keyframe = h264::contains_idr(&access_unit);
        Ok(Some(EncodedFrame {
            access_unit: Bytes::from(access_unit),
            keyframe,
            capture_us: frame.capture_us,
            monotonic_us: frame.monotonic_us,
            sequence: frame.sequence,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::h264::nal_type;

    fn grey_frame(width: u32, height: u32, sequence: u64) -> Frame {
        let luma = (width * height) as usize;
        let mut i420 = vec![128u8; luma + luma / 2];
        // A moving bright column so consecutive frames differ.
        let x = (sequence as usize * 8) % width as usize;
        for row in 0..height as usize {
            i420[row * width as usize + x] = 235;
        }
        Frame {
            width,
            height,
            i420: i420.into(),
            capture_us: 1_000_000 + sequence * 33_333,
            monotonic_us: sequence * 33_333,
            sequence,
        }
    }

    fn settings() -> EncoderSettings {
        EncoderSettings {
            width: 320,
            height: 240,
            fps: 30,
            bitrate_kbps: 500,
            keyframe_interval_s: 1,
        }
    }

    #[test]
    fn first_frame_is_an_idr_with_sps_and_pps_in_front() {
        let mut encoder = H264Encoder::new(settings()).unwrap();
        let first = encoder
            .encode(&grey_frame(320, 240, 0), false)
            .unwrap()
            .unwrap();
        assert!(first.keyframe);
        let types = h264::unit_types(&first.access_unit);
        let idr = types
            .iter()
            .position(|&t| t == nal_type::IDR_SLICE)
            .unwrap();
        let sps = types.iter().position(|&t| t == nal_type::SPS).unwrap();
        let pps = types.iter().position(|&t| t == nal_type::PPS).unwrap();
        assert!(
            sps < idr && pps < idr,
            "SPS/PPS must precede the IDR: {types:?}"
        );
        let sps_unit = h264::nal_units(&first.access_unit).nth(sps).unwrap();
        let profile = h264::sps_profile_level_id(sps_unit).unwrap();
        assert_eq!(&profile[..2], "42", "baseline profile_idc: {profile}");
        assert_eq!(first.capture_us, 1_000_000);
    }

    #[test]
    fn every_picture_is_cut_into_one_slice_per_encoder_thread() {
        let threads = usize::from(encoder_threads());
        let mut encoder = H264Encoder::new(settings()).unwrap();
        for (seq, slice_type) in [(0, nal_type::IDR_SLICE), (1, nal_type::NON_IDR_SLICE)] {
            let out = encoder
                .encode(&grey_frame(320, 240, seq), false)
                .unwrap()
                .unwrap();
            let types = h264::unit_types(&out.access_unit);
            let slices = types.iter().filter(|&&t| t == slice_type).count();
            assert_eq!(slices, threads, "frame {seq}: {types:?}");
        }
    }

    #[test]
    fn periodic_and_forced_keyframes() {
        let mut encoder = H264Encoder::new(settings()).unwrap();
        let mut keyframes = Vec::new();
        for seq in 0..65 {
            let force = seq == 10;
            let out = encoder
                .encode(&grey_frame(320, 240, seq), force)
                .unwrap()
                .unwrap();
            if out.keyframe {
                keyframes.push(seq);
                let types = h264::unit_types(&out.access_unit);
                assert!(types.contains(&nal_type::SPS) && types.contains(&nal_type::PPS));
            } else {
                assert!(!h264::unit_types(&out.access_unit).contains(&nal_type::IDR_SLICE));
            }
        }
        // Frame 0, the forced one at 10, and the periodic ones every 30 frames.
        assert!(
            keyframes.starts_with(&[0, 10]),
            "keyframes at {keyframes:?}"
        );
        assert!(
            keyframes.len() >= 3 && keyframes.len() <= 5,
            "keyframes at {keyframes:?}"
        );
    }

    #[test]
    fn a_size_openh264_refuses_fails_when_the_encoder_is_made() {
        // openh264 sets up on its first picture; the warm-up makes that happen in new().
        let too_big = EncoderSettings {
            width: 4096,
            height: 2304,
            ..settings()
        };
        let err = H264Encoder::new(too_big).err().expect("refused at once");
        assert!(err.to_string().contains("3840x2160"), "{err}");
    }

    #[test]
    fn rejects_a_frame_of_the_wrong_size() {
        let mut encoder = H264Encoder::new(settings()).unwrap();
        let err = encoder.encode(&grey_frame(640, 480, 0), false).unwrap_err();
        assert!(err.to_string().contains("encoder expects 320x240"), "{err}");
    }
}
