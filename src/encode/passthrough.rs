//! H.264 passthrough: the camera's own access units, made safe to fan out.
//! It caches the latest SPS/PPS and puts them in front of every IDR (cameras often send
//! them once, at stream start), and holds back pictures until the first decodable IDR.
//! It never re-encodes and never forwards a picture a fresh decoder could not start from.

use crate::encode::EncodedFrame;
use crate::h264::{nal_type, nal_units, unit_type};
use bytes::Bytes;

const START_CODE: [u8; 4] = [0, 0, 0, 1];

#[derive(Default)]
pub struct Passthrough {
    sps: Option<Vec<u8>>,
    pps: Option<Vec<u8>>,
    /// An IDR with parameter sets went out since the last reset: P-frames may follow.
    started: bool,
}

impl Passthrough {
    /// Forgets the stream (the camera was reopened): wait for a new IDR.
    pub fn reset(&mut self) {
        *self = Self::default();
    }

    /// Turns one captured access unit into the frame to fan out, or `None` when it cannot
    /// be decoded yet (P-frames before the first IDR, an IDR with no known SPS/PPS).
    pub fn access_unit(
        &mut self,
        au: &[u8],
        capture_us: u64,
        monotonic_us: u64,
        sequence: u64,
    ) -> Option<EncodedFrame> {
        let mut idr = false;
        let mut has_sps = false;
        let mut has_pps = false;
        let mut slices = false;
        for unit in nal_units(au) {
            match unit_type(unit) {
                Some(nal_type::SPS) => {
                    self.sps = Some(unit.to_vec());
                    has_sps = true;
                }
                Some(nal_type::PPS) => {
                    self.pps = Some(unit.to_vec());
                    has_pps = true;
                }
                Some(nal_type::IDR_SLICE) => {
                    idr = true;
                    slices = true;
                }
                Some(nal_type::NON_IDR_SLICE) => slices = true,
                _ => {}
            }
        }
        if !slices {
            return None; // parameter sets or SEI alone: cached, nothing to show
        }
        let access_unit = if idr {
            let (Some(sps), Some(pps)) = (&self.sps, &self.pps) else {
                return None;
            };
            self.started = true;
            let mut out = Vec::with_capacity(au.len() + sps.len() + pps.len() + 8);
            if !has_sps {
                out.extend_from_slice(&START_CODE);
                out.extend_from_slice(sps);
            }
            if !has_pps {
                out.extend_from_slice(&START_CODE);
                out.extend_from_slice(pps);
            }
            out.extend_from_slice(au);
            Bytes::from(out)
        } else if self.started {
            Bytes::copy_from_slice(au)
        } else {
            return None;
        };
        Some(EncodedFrame {
            access_unit,
            keyframe: idr,
            capture_us,
            monotonic_us,
            sequence,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode::{EncoderSettings, H264Encoder};
    use crate::h264::unit_types;
    use crate::source::testsrc::TestSource;

    /// A real H.264 stream from openh264: access units as a camera would deliver them,
    /// except that only the first IDR carries SPS/PPS (as many UVC cameras do).
    fn camera_like_stream(frames: usize) -> Vec<Vec<u8>> {
        let settings = EncoderSettings {
            width: 320,
            height: 240,
            fps: 30,
            bitrate_kbps: 500,
            keyframe_interval_s: 1,
        };
        let mut encoder = H264Encoder::new(settings).unwrap();
        let mut source = TestSource::new(320, 240, 30).unwrap();
        let mut units = Vec::new();
        for i in 0..frames {
            let frame = source.next_frame();
            if let Some(encoded) = encoder.encode(&frame, i == 0).unwrap() {
                let au = encoded.access_unit.to_vec();
                if i == 0 {
                    units.push(au);
                } else {
                    units.push(strip_parameter_sets(&au));
                }
            }
        }
        units
    }

    fn strip_parameter_sets(au: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for unit in nal_units(au) {
            if !matches!(unit_type(unit), Some(nal_type::SPS | nal_type::PPS)) {
                out.extend_from_slice(&START_CODE);
                out.extend_from_slice(unit);
            }
        }
        out
    }

    #[test]
    fn every_idr_goes_out_with_sps_and_pps_in_front() {
        let stream = camera_like_stream(70);
        let mut passthrough = Passthrough::default();
        let mut keyframes = 0;
        for (i, au) in stream.iter().enumerate() {
            let frame = passthrough
                .access_unit(au, i as u64, i as u64, i as u64)
                .unwrap();
            if frame.keyframe {
                keyframes += 1;
                let types = unit_types(&frame.access_unit);
                let idr = types
                    .iter()
                    .position(|&t| t == nal_type::IDR_SLICE)
                    .unwrap();
                assert!(types[..idr].contains(&nal_type::SPS), "{types:?}");
                assert!(types[..idr].contains(&nal_type::PPS), "{types:?}");
                assert_eq!(types.iter().filter(|&&t| t == nal_type::SPS).count(), 1);
            } else {
                assert_eq!(&frame.access_unit[..], &au[..], "P-frames pass untouched");
            }
        }
        assert!(
            keyframes >= 2,
            "a periodic IDR without SPS/PPS was seen: {keyframes}"
        );
    }

    #[test]
    fn pictures_wait_for_a_decodable_idr() {
        let stream = camera_like_stream(40);
        let mut passthrough = Passthrough::default();
        // Joining mid-stream: P-frames and a parameter-set-less IDR are held back.
        for au in &stream[1..] {
            assert!(passthrough.access_unit(au, 0, 0, 0).is_none());
        }
        let first = passthrough.access_unit(&stream[0], 0, 0, 0).unwrap();
        assert!(first.keyframe);
        assert!(passthrough.access_unit(&stream[1], 0, 0, 1).is_some());
        passthrough.reset();
        assert!(passthrough.access_unit(&stream[1], 0, 0, 1).is_none());
    }

    #[test]
    fn garbage_is_dropped_without_panicking() {
        let mut passthrough = Passthrough::default();
        for junk in [
            &[][..],
            &[0, 0, 1][..],
            &[0xff; 64][..],
            &[0, 0, 0, 1, 0x65][..],
        ] {
            assert!(passthrough.access_unit(junk, 0, 0, 0).is_none());
        }
    }
}
