//! Camera pixel formats and their conversion to the encoder's I420.
//! Conversions use the `yuv` (SIMD) and `zune-jpeg` crates; this module never touches a
//! device and never panics on a short or corrupt buffer (it returns an error instead).

use super::frame_pool::PictureOut;
use std::fmt;
use yuv::{
    BufferStoreMut, YuvConversionMode, YuvPackedImage, YuvPlanarImageMut, YuvRange,
    YuvStandardMatrix,
};
use zune_jpeg::errors::DecodeErrors;
use zune_jpeg::zune_core::bytestream::ZCursor;
use zune_jpeg::zune_core::colorspace::ColorSpace;
use zune_jpeg::zune_core::options::DecoderOptions;
use zune_jpeg::JpegDecoder;

/// The capture formats peercam understands, in `auto` preference order within each family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PixelFormat {
    /// Compressed by the camera; passed through without re-encoding.
    H264,
    Yuyv,
    Uyvy,
    Nv12,
    /// Planar I420: the encoder's own format.
    Yu12,
    /// Planar with V before U.
    Yv12,
    Mjpeg,
}

impl PixelFormat {
    pub const ALL: [PixelFormat; 7] = [
        PixelFormat::H264,
        PixelFormat::Yuyv,
        PixelFormat::Uyvy,
        PixelFormat::Nv12,
        PixelFormat::Yu12,
        PixelFormat::Yv12,
        PixelFormat::Mjpeg,
    ];

    pub fn fourcc(self) -> [u8; 4] {
        match self {
            PixelFormat::H264 => *b"H264",
            PixelFormat::Yuyv => *b"YUYV",
            PixelFormat::Uyvy => *b"UYVY",
            PixelFormat::Nv12 => *b"NV12",
            PixelFormat::Yu12 => *b"YU12",
            PixelFormat::Yv12 => *b"YV12",
            PixelFormat::Mjpeg => *b"MJPG",
        }
    }

    pub fn from_fourcc(fourcc: [u8; 4]) -> Option<Self> {
        if &fourcc == b"JPEG" {
            return Some(PixelFormat::Mjpeg);
        }
        Self::ALL.into_iter().find(|f| f.fourcc() == fourcc)
    }

    /// `auto` preference: H.264 (only when passthrough is on), then raw YUV (no decoding
    /// cost, best quality), then MJPEG (a JPEG decode per frame). Lower is better.
    pub fn auto_rank(self, passthrough: bool) -> Option<u8> {
        match self {
            PixelFormat::H264 => passthrough.then_some(0),
            PixelFormat::Yu12 => Some(1),
            PixelFormat::Nv12 => Some(2),
            PixelFormat::Yuyv => Some(3),
            PixelFormat::Uyvy => Some(4),
            PixelFormat::Yv12 => Some(5),
            PixelFormat::Mjpeg => Some(6),
        }
    }
}

impl fmt::Display for PixelFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(std::str::from_utf8(&self.fourcc()).unwrap_or("????"))
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConvertError {
    #[error("{format} frame too short: {got} bytes, need {need} for {width}x{height}")]
    Short {
        format: PixelFormat,
        got: usize,
        need: usize,
        width: u32,
        height: u32,
    },
    #[error("{format} frame of {width}x{height} has no pixels")]
    Empty {
        format: PixelFormat,
        width: u32,
        height: u32,
    },
    #[error("{format} {width}x{height} rows of {stride} bytes: they need at least {need}")]
    Stride {
        format: PixelFormat,
        width: u32,
        height: u32,
        stride: usize,
        need: usize,
    },
    #[error("corrupt JPEG: {0}")]
    Jpeg(String),
    #[error("JPEG is larger than the negotiated {width}x{height}: {detail}")]
    JpegTooLarge {
        width: u32,
        height: u32,
        detail: String,
    },
    #[error("JPEG is {got_width}x{got_height}, the negotiated mode is {width}x{height}")]
    JpegSize {
        got_width: u32,
        got_height: u32,
        width: u32,
        height: u32,
    },
    #[error("{0} cannot be converted to I420")]
    Unsupported(PixelFormat),
    #[error("conversion failed: {0}")]
    Library(String),
}

/// Where the planes of a raw frame are, as the driver reported it.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    pub format: PixelFormat,
    pub width: u32,
    pub height: u32,
    /// Bytes per row of the first plane (V4L2 `bytesperline`; 0 = tightly packed).
    pub stride: u32,
}

impl Layout {
    fn stride_or(&self, packed: u32) -> usize {
        if self.stride == 0 {
            packed as usize
        } else {
            self.stride as usize
        }
    }
}

/// Converts one captured frame into tightly packed I420 in `out`, overwriting every byte.
/// A frame the driver describes impossibly (no pixels, rows narrower than the picture,
/// fewer bytes than its rows need) is an error before anything is read or allocated.
pub fn to_i420(layout: Layout, data: &[u8], out: &mut impl PictureOut) -> Result<(), ConvertError> {
    if layout.width == 0 || layout.height == 0 {
        return Err(ConvertError::Empty {
            format: layout.format,
            width: layout.width,
            height: layout.height,
        });
    }
    let (w, h) = (layout.width as usize, layout.height as usize);
    let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
    let short = |need: Option<usize>| ConvertError::Short {
        format: layout.format,
        got: data.len(),
        need: need.unwrap_or(usize::MAX),
        width: layout.width,
        height: layout.height,
    };
    let narrow = |stride: usize, need: usize| ConvertError::Stride {
        format: layout.format,
        width: layout.width,
        height: layout.height,
        stride,
        need,
    };
    let picture_len = w * h + 2 * cw * ch;
    match layout.format {
        PixelFormat::Yuyv | PixelFormat::Uyvy => {
            // Two pixels per 4-byte macropixel.
            let row = cw * 4;
            let stride = layout.stride_or(layout.width.saturating_mul(2));
            if stride < row {
                return Err(narrow(stride, row));
            }
            let need = stride.checked_mul(h - 1).and_then(|n| n.checked_add(row));
            let need = match need {
                Some(need) if data.len() >= need => need,
                _ => return Err(short(need)),
            };
            let packed = YuvPackedImage {
                yuy: &data[..need],
                yuy_stride: stride as u32,
                width: layout.width,
                height: layout.height,
            };
            let yuyv = layout.format == PixelFormat::Yuyv;
            let mut planar = planar_out(out.sized(picture_len), layout.width, layout.height);
            let result = if yuyv {
                yuv::yuyv422_to_yuv420(&mut planar, &packed)
            } else {
                yuv::uyvy422_to_yuv420(&mut planar, &packed)
            };
            result.map_err(|e| ConvertError::Library(e.to_string()))?;
            if h % 2 == 1 {
                // The yuv crate converts rows in pairs and leaves an odd last row unwritten.
                last_packed_422_row(&data[stride * (h - 1)..need], yuyv, &mut planar);
            }
            Ok(())
        }
        PixelFormat::Yu12 | PixelFormat::Yv12 | PixelFormat::Nv12 => {
            // Planar and semi-planar formats put the chroma rows after `height` luma rows
            // of `stride` bytes, with half the stride per chroma row.
            let stride = layout.stride_or(layout.width);
            let nv12 = layout.format == PixelFormat::Nv12;
            let chroma_stride = if nv12 { stride } else { stride / 2 };
            // A luma row, an NV12 UV row (2 bytes per 2 pixels) and, at half the stride, a
            // U or V row (1 byte per 2 pixels) must all fit in their rows.
            let min_stride = 2 * cw;
            if stride < min_stride {
                return Err(narrow(stride, min_stride));
            }
            let planes = if nv12 { 1 } else { 2 };
            let luma = stride.checked_mul(h);
            let need = luma.and_then(|luma| {
                chroma_stride
                    .checked_mul(ch)?
                    .checked_mul(planes)?
                    .checked_add(luma)
            });
            let (luma, need) = match (luma, need) {
                (Some(luma), Some(need)) if data.len() >= need => (luma, need),
                _ => return Err(short(need)),
            };
            let (y_out, chroma_out) = out.sized(picture_len).split_at_mut(w * h);
            copy_rows(&data[..luma], stride, y_out, w);
            let (u_out, v_out) = chroma_out.split_at_mut(cw * ch);
            let chroma = &data[luma..need];
            match layout.format {
                PixelFormat::Nv12 => deinterleave_uv(chroma, chroma_stride, cw, u_out, v_out),
                PixelFormat::Yu12 => {
                    let (u, v) = chroma.split_at(chroma_stride * ch);
                    copy_rows(u, chroma_stride, u_out, cw);
                    copy_rows(v, chroma_stride, v_out, cw);
                }
                _ => {
                    let (v, u) = chroma.split_at(chroma_stride * ch);
                    copy_rows(u, chroma_stride, u_out, cw);
                    copy_rows(v, chroma_stride, v_out, cw);
                }
            }
            Ok(())
        }
        PixelFormat::Mjpeg => {
            let rgb = decode_jpeg(data, layout.width, layout.height)?;
            let mut planar = planar_out(out.sized(picture_len), layout.width, layout.height);
            yuv::rgb_to_yuv420(
                &mut planar,
                &rgb,
                layout.width * 3,
                YuvRange::Limited,
                YuvStandardMatrix::Bt601,
                YuvConversionMode::Balanced,
            )
            .map_err(|e| ConvertError::Library(e.to_string()))
        }
        PixelFormat::H264 => Err(ConvertError::Unsupported(PixelFormat::H264)),
    }
}

/// Decodes one MJPEG frame to packed RGB and checks it has the negotiated size. The
/// decoder's limits are the negotiated size, so a larger (or lying) header is refused
/// before the decoder allocates for it, and a different size before any pixel is decoded.
pub fn decode_jpeg(data: &[u8], width: u32, height: u32) -> Result<Vec<u8>, ConvertError> {
    let options = DecoderOptions::default()
        .jpeg_set_out_colorspace(ColorSpace::RGB)
        .set_max_width(width as usize)
        .set_max_height(height as usize);
    let mut decoder = JpegDecoder::new_with_options(ZCursor::new(data), options);
    decoder.decode_headers().map_err(|e| match e {
        // zune-jpeg reports its dimension limits only in this message.
        DecodeErrors::Format(detail) if detail.contains("limit") => ConvertError::JpegTooLarge {
            width,
            height,
            detail,
        },
        other => ConvertError::Jpeg(format!("{other:?}")),
    })?;
    let info = decoder
        .info()
        .ok_or_else(|| ConvertError::Jpeg("no image header".into()))?;
    let (got_width, got_height) = (u32::from(info.width), u32::from(info.height));
    if (got_width, got_height) != (width, height) {
        return Err(ConvertError::JpegSize {
            got_width,
            got_height,
            width,
            height,
        });
    }
    decoder
        .decode()
        .map_err(|e| ConvertError::Jpeg(format!("{e:?}")))
}

fn planar_out(out: &mut [u8], width: u32, height: u32) -> YuvPlanarImageMut<'_, u8> {
    let (w, h) = (width as usize, height as usize);
    let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
    let (y, chroma) = out.split_at_mut(w * h);
    let (u, v) = chroma.split_at_mut(cw * ch);
    YuvPlanarImageMut {
        y_plane: BufferStoreMut::Borrowed(y),
        y_stride: width,
        u_plane: BufferStoreMut::Borrowed(u),
        u_stride: cw as u32,
        v_plane: BufferStoreMut::Borrowed(v),
        v_stride: cw as u32,
        width,
        height,
    }
}

/// Writes the last row of an odd-height I420 picture from the last row of a packed 4:2:2
/// frame (YUYV when `yuyv`, else UYVY): its luma, and the last chroma row.
fn last_packed_422_row(row: &[u8], yuyv: bool, planar: &mut YuvPlanarImageMut<'_, u8>) {
    let (w, cw) = (planar.y_stride as usize, planar.u_stride as usize);
    let (luma_at, u_at, v_at) = if yuyv { (0, 1, 3) } else { (1, 0, 2) };
    let y = planar.y_plane.borrow_mut();
    let last_luma = y.len() - w;
    for (x, out) in y[last_luma..].iter_mut().enumerate() {
        *out = row[2 * x + luma_at];
    }
    for (plane, at) in [(&mut planar.u_plane, u_at), (&mut planar.v_plane, v_at)] {
        let plane = plane.borrow_mut();
        let last_row = plane.len() - cw;
        for (out, macropixel) in plane[last_row..].iter_mut().zip(row.chunks_exact(4)) {
            *out = macropixel[at];
        }
    }
}

/// Copies `out.len() / width` rows of `width` bytes from rows `stride` bytes apart.
fn copy_rows(src: &[u8], stride: usize, out: &mut [u8], width: usize) {
    for (row_out, row_in) in out.chunks_exact_mut(width).zip(src.chunks(stride)) {
        row_out.copy_from_slice(&row_in[..width]);
    }
}

/// Splits NV12's interleaved UV rows into the U and V planes. The `yuv` crate has no
/// NV12 → I420 path (only NV12 → RGB); this plain loop is auto-vectorized by the compiler.
fn deinterleave_uv(src: &[u8], stride: usize, width: usize, u: &mut [u8], v: &mut [u8]) {
    let rows = u.chunks_exact_mut(width).zip(v.chunks_exact_mut(width));
    for ((u_row, v_row), uv_row) in rows.zip(src.chunks(stride)) {
        for ((u, v), uv) in u_row
            .iter_mut()
            .zip(v_row.iter_mut())
            .zip(uv_row.chunks_exact(2))
        {
            *u = uv[0];
            *v = uv[1];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An I420 picture with distinct, position-dependent planes.
    fn pattern(width: usize, height: usize) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let y = (0..width * height).map(|i| (16 + i % 200) as u8).collect();
        let chroma = width / 2 * height / 2;
        let u = (0..chroma).map(|i| (40 + i % 150) as u8).collect();
        let v = (0..chroma).map(|i| (200 - i % 150) as u8).collect();
        (y, u, v)
    }

    fn layout(format: PixelFormat, width: u32, height: u32, stride: u32) -> Layout {
        Layout {
            format,
            width,
            height,
            stride,
        }
    }

    #[test]
    fn fourccs_round_trip_and_jpeg_is_mjpeg() {
        for format in PixelFormat::ALL {
            assert_eq!(PixelFormat::from_fourcc(format.fourcc()), Some(format));
        }
        assert_eq!(PixelFormat::from_fourcc(*b"JPEG"), Some(PixelFormat::Mjpeg));
        assert_eq!(PixelFormat::from_fourcc(*b"RGB3"), None);
        assert_eq!(PixelFormat::Nv12.to_string(), "NV12");
    }

    #[test]
    fn auto_prefers_h264_only_with_passthrough_then_raw_then_mjpeg() {
        let best = |passthrough| {
            PixelFormat::ALL
                .into_iter()
                .filter_map(|f| f.auto_rank(passthrough).map(|r| (r, f)))
                .min()
                .unwrap()
                .1
        };
        assert_eq!(best(true), PixelFormat::H264);
        assert_eq!(best(false), PixelFormat::Yu12);
        assert!(PixelFormat::Mjpeg.auto_rank(false) > PixelFormat::Yuyv.auto_rank(false));
    }

    #[test]
    fn nv12_with_padded_rows_becomes_the_same_i420() {
        let (w, h, stride) = (8usize, 4usize, 12usize);
        let (y, u, v) = pattern(w, h);
        let mut nv12 = vec![0xEE; stride * h + stride * h / 2];
        for row in 0..h {
            nv12[row * stride..row * stride + w].copy_from_slice(&y[row * w..(row + 1) * w]);
        }
        for row in 0..h / 2 {
            for col in 0..w / 2 {
                nv12[stride * h + row * stride + 2 * col] = u[row * w / 2 + col];
                nv12[stride * h + row * stride + 2 * col + 1] = v[row * w / 2 + col];
            }
        }
        let mut out = Vec::new();
        to_i420(layout(PixelFormat::Nv12, 8, 4, 12), &nv12, &mut out).unwrap();
        assert_eq!(out, [y, u, v].concat());
    }

    #[test]
    fn yu12_and_yv12_keep_their_planes_in_order() {
        let (y, u, v) = pattern(8, 4);
        let mut out = Vec::new();
        let i420 = [y.clone(), u.clone(), v.clone()].concat();
        to_i420(layout(PixelFormat::Yu12, 8, 4, 0), &i420, &mut out).unwrap();
        assert_eq!(out, i420);
        let yv12 = [y, v, u].concat();
        to_i420(layout(PixelFormat::Yv12, 8, 4, 8), &yv12, &mut out).unwrap();
        assert_eq!(out, i420);
    }

    #[test]
    fn yuyv_luma_is_exact_and_chroma_averages_the_row_pair() {
        let (w, h) = (4usize, 2usize);
        // Row 0: U=100 V=150; row 1: U=110 V=160.
        let mut yuyv = Vec::new();
        for row in 0..h {
            for pair in 0..w / 2 {
                let y0 = (20 + row * 10 + pair * 2) as u8;
                let (u, v) = (100 + row as u8 * 10, 150 + row as u8 * 10);
                yuyv.extend_from_slice(&[y0, u, y0 + 1, v]);
            }
        }
        let mut out = Vec::new();
        to_i420(layout(PixelFormat::Yuyv, 4, 2, 0), &yuyv, &mut out).unwrap();
        assert_eq!(&out[..8], &[20, 21, 22, 23, 30, 31, 32, 33]);
        for (plane, expected) in [(&out[8..10], 105i32), (&out[10..12], 155)] {
            for value in plane {
                assert!((i32::from(*value) - expected).abs() <= 5, "{plane:?}");
            }
        }
    }

    #[test]
    fn an_odd_last_row_of_packed_422_is_converted_too() {
        // 4x3: rows 0 and 1 pair up; row 2 (Y 40..43, U 120, V 170) stands alone.
        let row = |y: u8, u: u8, v: u8, uyvy: bool| -> Vec<u8> {
            let macropixel = |y0: u8| {
                if uyvy {
                    [u, y0, v, y0 + 1]
                } else {
                    [y0, u, y0 + 1, v]
                }
            };
            [macropixel(y), macropixel(y + 2)].concat()
        };
        for (format, uyvy) in [(PixelFormat::Yuyv, false), (PixelFormat::Uyvy, true)] {
            let frame = [
                row(20, 100, 150, uyvy),
                row(30, 110, 160, uyvy),
                row(40, 120, 170, uyvy),
            ]
            .concat();
            // A recycled buffer holding another picture's bytes.
            let mut out = vec![0xEE; 4 * 3 + 2 * 2 * 2];
            to_i420(layout(format, 4, 3, 0), &frame, &mut out).unwrap();
            assert_eq!(&out[8..12], &[40, 41, 42, 43], "{format:?}: last luma row");
            assert_eq!((out[14], out[15]), (120, 120), "{format:?}: last U row");
            assert_eq!((out[18], out[19]), (170, 170), "{format:?}: last V row");
        }
    }

    #[test]
    fn short_buffers_are_errors_not_panics() {
        let mut out = Vec::new();
        for format in [
            PixelFormat::Yuyv,
            PixelFormat::Uyvy,
            PixelFormat::Nv12,
            PixelFormat::Yu12,
        ] {
            let err = to_i420(layout(format, 640, 480, 0), &[0; 1000], &mut out).unwrap_err();
            assert!(
                matches!(err, ConvertError::Short { got: 1000, .. }),
                "{err}"
            );
        }
        assert!(matches!(
            to_i420(
                layout(PixelFormat::Mjpeg, 64, 48, 0),
                b"not a jpeg",
                &mut out
            ),
            Err(ConvertError::Jpeg(_))
        ));
        assert_eq!(
            to_i420(layout(PixelFormat::H264, 64, 48, 0), &[0; 10], &mut out),
            Err(ConvertError::Unsupported(PixelFormat::H264))
        );
    }

    const RAW: [PixelFormat; 5] = [
        PixelFormat::Yuyv,
        PixelFormat::Uyvy,
        PixelFormat::Nv12,
        PixelFormat::Yu12,
        PixelFormat::Yv12,
    ];

    /// Bytes a tightly packed 64x48 frame of `format` takes.
    fn packed_len(format: PixelFormat) -> usize {
        match format {
            PixelFormat::Yuyv | PixelFormat::Uyvy => 64 * 48 * 2,
            _ => 64 * 48 * 3 / 2,
        }
    }

    #[test]
    fn rows_narrower_than_the_picture_are_errors_not_panics() {
        let mut out = Vec::new();
        for format in RAW {
            // Rows one pixel pair short, with bytes enough for any reading of them.
            let row = if packed_len(format) == 64 * 48 * 2 {
                128
            } else {
                64
            };
            let data = vec![0x80; packed_len(format)];
            let err = to_i420(layout(format, 64, 48, row - 2), &data, &mut out).unwrap_err();
            assert!(
                matches!(err, ConvertError::Stride { stride, need, .. } if stride == row as usize - 2 && need == row as usize),
                "{format}: {err}"
            );
        }
        // An odd width: its chroma rows need the rounded-up half of the stride.
        let err = to_i420(layout(PixelFormat::Yu12, 63, 48, 63), &[0; 8192], &mut out);
        assert!(
            matches!(err, Err(ConvertError::Stride { need: 64, .. })),
            "{err:?}"
        );
    }

    #[test]
    fn frames_without_pixels_are_errors_not_panics() {
        let mut out = Vec::new();
        for format in RAW.into_iter().chain([PixelFormat::Mjpeg]) {
            for (width, height) in [(64, 0), (0, 48), (0, 0)] {
                let err = to_i420(layout(format, width, height, 0), &[0; 8192], &mut out);
                assert!(
                    matches!(err, Err(ConvertError::Empty { .. })),
                    "{format}: {err:?}"
                );
            }
        }
    }

    #[test]
    fn buffers_one_byte_short_or_absurdly_large_modes_are_errors_not_panics() {
        let mut out = Vec::new();
        for format in RAW {
            let need = packed_len(format);
            let err = to_i420(layout(format, 64, 48, 0), &vec![0; need - 1], &mut out);
            assert!(
                matches!(err, Err(ConvertError::Short { got, need: n, .. }) if got == need - 1 && n == need),
                "{format}: {err:?}"
            );
            assert!(to_i420(layout(format, 64, 48, 0), &[], &mut out).is_err());
            // A mode of terabytes: refused before anything is allocated.
            let huge = layout(format, 65_534, u32::MAX - 1, 0);
            assert!(matches!(
                to_i420(huge, &[0; 64], &mut out),
                Err(ConvertError::Short { .. })
            ));
            to_i420(layout(format, 64, 48, 0), &vec![0; need], &mut out).unwrap();
        }
    }

    #[test]
    fn mjpeg_larger_than_the_mode_is_refused_by_the_decoder_limits() {
        let jpeg = jpeg_fixture(128, 96, &[128; 128 * 96 * 3]);
        let mut out = Vec::new();
        let err = to_i420(layout(PixelFormat::Mjpeg, 64, 48, 0), &jpeg, &mut out);
        assert!(
            matches!(
                err,
                Err(ConvertError::JpegTooLarge {
                    width: 64,
                    height: 48,
                    ..
                })
            ),
            "{err:?}"
        );
        // Taller only, or wider only, is too large as well.
        let tall = jpeg_fixture(64, 96, &[128; 64 * 96 * 3]);
        let err = to_i420(layout(PixelFormat::Mjpeg, 64, 48, 0), &tall, &mut out);
        assert!(
            matches!(err, Err(ConvertError::JpegTooLarge { .. })),
            "{err:?}"
        );
        // A JPEG cut inside its headers is corrupt; one cut in its scan may decode in
        // part (zune-jpeg is lenient) but never panics.
        let full = jpeg_fixture(64, 48, &[128; 64 * 48 * 3]);
        for cut in [0, 2, 20] {
            let err = to_i420(
                layout(PixelFormat::Mjpeg, 64, 48, 0),
                &full[..cut],
                &mut out,
            );
            assert!(err.is_err(), "cut at {cut}");
        }
        let _ = to_i420(
            layout(PixelFormat::Mjpeg, 64, 48, 0),
            &full[..full.len() / 2],
            &mut out,
        );
    }

    /// Encodes an RGB picture as JPEG with an independent encoder (jpeg-encoder crate).
    fn jpeg_fixture(width: u16, height: u16, rgb: &[u8]) -> Vec<u8> {
        let mut jpeg = Vec::new();
        jpeg_encoder::Encoder::new(&mut jpeg, 95)
            .encode(rgb, width, height, jpeg_encoder::ColorType::Rgb)
            .unwrap();
        jpeg
    }

    #[test]
    fn mjpeg_decodes_to_the_right_colours() {
        // Left half white, right half black, 64x48: luma ~235 and ~16 in limited range.
        let (w, h) = (64usize, 48usize);
        let rgb: Vec<u8> = (0..w * h)
            .flat_map(|i| if i % w < w / 2 { [255; 3] } else { [0; 3] })
            .collect();
        let jpeg = jpeg_fixture(w as u16, h as u16, &rgb);
        let mut out = Vec::new();
        to_i420(layout(PixelFormat::Mjpeg, 64, 48, 0), &jpeg, &mut out).unwrap();
        assert_eq!(out.len(), w * h * 3 / 2);
        let luma = |x: usize, y: usize| i32::from(out[y * w + x]);
        assert!((luma(8, 20) - 235).abs() <= 4, "white is {}", luma(8, 20));
        assert!((luma(56, 20) - 16).abs() <= 4, "black is {}", luma(56, 20));
        for chroma in &out[w * h..] {
            assert!(
                (i32::from(*chroma) - 128).abs() <= 4,
                "grey chroma {chroma}"
            );
        }
    }

    #[test]
    fn mjpeg_of_another_size_is_rejected() {
        let jpeg = jpeg_fixture(32, 16, &[128; 32 * 16 * 3]);
        let mut out = Vec::new();
        assert!(matches!(
            to_i420(layout(PixelFormat::Mjpeg, 64, 48, 0), &jpeg, &mut out),
            Err(ConvertError::JpegSize {
                got_width: 32,
                got_height: 16,
                ..
            })
        ));
    }
}
