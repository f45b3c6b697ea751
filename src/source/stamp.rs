//! The latency stamp: a frame's capture time (Unix ms, 48 bits, MSB first) painted as a
//! row of square cells at the top-left so any viewer can measure capture-to-display latency.
//! See docs/latency-stamp.md. Pure functions; they must never panic on short buffers.

/// Number of bits (cells) in the stamp.
pub const STAMP_BITS: u32 = 48;
pub const LUMA_ONE: u8 = 235;
pub const LUMA_ZERO: u8 = 16;
const NEUTRAL_CHROMA: u8 = 128;

/// Cell size in pixels for a frame, or `None` when the stamp does not fit.
pub fn cell_size(width: u32, height: u32) -> Option<u32> {
    let cell = if height >= 720 { 16 } else { 8 };
    (width >= STAMP_BITS * cell && height >= cell).then_some(cell)
}

/// Paints `unix_ms` into an I420 frame (no-op when it does not fit or the buffer is short).
pub fn write_stamp(i420: &mut [u8], width: u32, height: u32, unix_ms: u64) {
    let Some(cell) = cell_size(width, height) else {
        return;
    };
    let (w, h, c) = (width as usize, height as usize, cell as usize);
    let chroma_w = w / 2;
    let luma_len = w * h;
    if i420.len() < luma_len + 2 * chroma_w * (h / 2) {
        return;
    }
    // One row of luma for the whole stamp, copied into each of the cell's rows.
    let mut row = vec![0u8; STAMP_BITS as usize * c];
    for bit in 0..STAMP_BITS as usize {
        let one = (unix_ms >> (STAMP_BITS as usize - 1 - bit)) & 1 == 1;
        row[bit * c..(bit + 1) * c].fill(if one { LUMA_ONE } else { LUMA_ZERO });
    }
    for y in 0..c {
        i420[y * w..y * w + row.len()].copy_from_slice(&row);
    }
    let (u_start, v_start) = (luma_len, luma_len + chroma_w * (h / 2));
    let chroma_run = row.len() / 2;
    for y in 0..c / 2 {
        i420[u_start + y * chroma_w..][..chroma_run].fill(NEUTRAL_CHROMA);
        i420[v_start + y * chroma_w..][..chroma_run].fill(NEUTRAL_CHROMA);
    }
}

/// Reads the stamp from a luma plane with the given stride; `None` when it cannot fit or
/// the buffer is short. The value is returned as read; judging plausibility is the caller's.
pub fn read_stamp(luma: &[u8], stride: usize, width: u32, height: u32) -> Option<u64> {
    let cell = cell_size(width, height)? as usize;
    let mut value = 0u64;
    for bit in 0..STAMP_BITS as usize {
        let sample = *luma.get((cell / 2) * stride + bit * cell + cell / 2)?;
        value = (value << 1) | u64::from(sample >= 128);
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(width: u32, height: u32) -> Vec<u8> {
        vec![90u8; (width * height * 3 / 2) as usize]
    }

    #[test]
    fn round_trips_at_both_cell_sizes() {
        for (w, h, cell) in [(640, 480, 8), (1280, 720, 16), (384, 240, 8)] {
            assert_eq!(cell_size(w, h), Some(cell));
            let mut f = frame(w, h);
            let ms = 1_763_942_400_123u64;
            write_stamp(&mut f, w, h, ms);
            assert_eq!(read_stamp(&f, w as usize, w, h), Some(ms), "{w}x{h}");
        }
    }

    #[test]
    fn narrow_frames_carry_no_stamp() {
        assert_eq!(cell_size(383, 240), None);
        assert_eq!(cell_size(767, 720), None);
        let mut f = frame(320, 240);
        let before = f.clone();
        write_stamp(&mut f, 320, 240, 12345);
        assert_eq!(f, before);
        assert_eq!(read_stamp(&f, 320, 320, 240), None);
    }

    #[test]
    fn short_buffers_are_refused_without_panic() {
        let mut short = vec![0u8; 100];
        write_stamp(&mut short, 640, 480, 1);
        assert_eq!(read_stamp(&short, 640, 640, 480), None);
    }

    #[test]
    fn bits_survive_noise_and_msb_comes_first() {
        let (w, h) = (640u32, 480u32);
        let mut f = frame(w, h);
        write_stamp(&mut f, w, h, 1 << 47);
        assert_eq!(
            f[4 * 640 + 4],
            LUMA_ONE,
            "first cell holds the most significant bit"
        );
        assert_eq!(f[4 * 640 + 12], LUMA_ZERO);
        for (i, px) in f[..(w * h) as usize].iter_mut().enumerate() {
            *px = if i % 2 == 0 {
                px.saturating_add(40)
            } else {
                px.saturating_sub(40)
            };
        }
        assert_eq!(read_stamp(&f, w as usize, w, h), Some(1 << 47));
    }

    #[test]
    fn chroma_under_the_cells_is_neutral() {
        let (w, h) = (1280u32, 720u32);
        let mut f = frame(w, h);
        write_stamp(&mut f, w, h, 0xabcdef);
        let u = (w * h) as usize;
        let v = u + (w as usize / 2) * (h as usize / 2);
        assert!(f[u..u + 384].iter().all(|&c| c == 128));
        assert!(f[v + 7 * 640..v + 7 * 640 + 384].iter().all(|&c| c == 128));
        assert_eq!(f[u + 384], 90, "chroma beyond the stamp is untouched");
    }
}
