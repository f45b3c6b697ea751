//! H.264 Annex-B bitstream helpers: split access units into NAL units and classify them.
//! Pure functions over byte slices; they must never panic on malformed input.

/// NAL unit types this project cares about (ITU-T H.264 Table 7-1).
pub mod nal_type {
    pub const NON_IDR_SLICE: u8 = 1;
    pub const IDR_SLICE: u8 = 5;
    pub const SEI: u8 = 6;
    pub const SPS: u8 = 7;
    pub const PPS: u8 = 8;
    pub const AUD: u8 = 9;
}

/// Iterates over the NAL units of an Annex-B byte stream (start codes 00 00 01 or
/// 00 00 00 01), yielding each unit without its start code.
pub fn nal_units(stream: &[u8]) -> impl Iterator<Item = &[u8]> {
    let starts = start_code_positions(stream);
    let mut units = Vec::with_capacity(starts.len());
    for (i, &(_, payload_start)) in starts.iter().enumerate() {
        let end = match starts.get(i + 1) {
            Some(&(next_code_start, _)) => next_code_start,
            None => stream.len(),
        };
        if payload_start < end {
            units.push(&stream[payload_start..end]);
        }
    }
    units.into_iter()
}

/// (start of the start code, start of the NAL payload) for every start code found.
fn start_code_positions(stream: &[u8]) -> Vec<(usize, usize)> {
    let mut positions = Vec::new();
    let mut i = 0;
    while i + 3 <= stream.len() {
        if stream[i] == 0 && stream[i + 1] == 0 && stream[i + 2] == 1 {
            // A four-byte start code is a zero byte followed by a three-byte one.
            let code_start = if i > 0 && stream[i - 1] == 0 {
                i - 1
            } else {
                i
            };
            positions.push((code_start, i + 3));
            i += 3;
        } else {
            i += 1;
        }
    }
    positions
}

/// The `nal_unit_type` of a NAL unit (without start code); `None` for an empty unit.
pub fn unit_type(unit: &[u8]) -> Option<u8> {
    unit.first().map(|header| header & 0x1f)
}

/// True when the access unit contains an IDR slice, i.e. a decoder can start here.
pub fn contains_idr(stream: &[u8]) -> bool {
    nal_units(stream).any(|unit| unit_type(unit) == Some(nal_type::IDR_SLICE))
}

/// The NAL unit types of an access unit, in order (for logs and tests).
pub fn unit_types(stream: &[u8]) -> Vec<u8> {
    nal_units(stream).filter_map(unit_type).collect()
}

/// `profile-level-id` (as six hex digits) read from an SPS NAL unit, e.g. "42e01f".
pub fn sps_profile_level_id(sps: &[u8]) -> Option<String> {
    if unit_type(sps) != Some(nal_type::SPS) {
        return None;
    }
    let bytes = sps.get(1..4)?;
    Some(format!("{:02x}{:02x}{:02x}", bytes[0], bytes[1], bytes[2]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_three_and_four_byte_start_codes() {
        let stream = [
            0, 0, 0, 1, 0x67, 0x42, 0, 0, 1, 0x68, 0xce, 0, 0, 0, 1, 0x65, 0x88, 0x84,
        ];
        let units: Vec<&[u8]> = nal_units(&stream).collect();
        assert_eq!(
            units,
            vec![
                &[0x67, 0x42][..],
                &[0x68, 0xce][..],
                &[0x65, 0x88, 0x84][..]
            ]
        );
        assert_eq!(unit_types(&stream), vec![7, 8, 5]);
        assert!(contains_idr(&stream));
    }

    #[test]
    fn malformed_streams_do_not_panic() {
        for stream in [
            &[][..],
            &[0][..],
            &[0, 0][..],
            &[0, 0, 1][..],
            &[1, 2, 3, 0, 0][..],
        ] {
            assert!(!contains_idr(stream));
        }
        assert_eq!(unit_types(&[0, 0, 1, 0x41, 0, 0, 1]), vec![1]);
    }

    #[test]
    fn reads_profile_level_id() {
        assert_eq!(
            sps_profile_level_id(&[0x67, 0x42, 0xe0, 0x1f, 0xaa]).as_deref(),
            Some("42e01f")
        );
        assert_eq!(sps_profile_level_id(&[0x68, 0x42, 0xe0, 0x1f]), None);
        assert_eq!(sps_profile_level_id(&[0x67, 0x42]), None);
    }
}
