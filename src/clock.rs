//! Wall-clock time as the wire wants it: microseconds or milliseconds since the Unix
//! epoch, for capture stamps, RTP timestamps and telemetry. Never use it to measure a
//! duration (the wall clock jumps with NTP); `std::time::Instant` is for that.

use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch; 0 if the clock is set before 1970.
pub fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_micros()).unwrap_or(u64::MAX)
        })
}

/// Milliseconds since the Unix epoch; 0 if the clock is set before 1970.
pub fn unix_ms() -> u64 {
    unix_us() / 1000
}

/// Seconds since the Unix epoch (expiries of keys and TURN credentials).
pub fn unix_s() -> u64 {
    unix_us() / 1_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milliseconds_and_microseconds_agree_and_are_after_2020() {
        let (us, ms) = (unix_us(), unix_ms());
        assert!(ms > 1_577_836_800_000, "{ms}");
        assert!(ms.abs_diff(us / 1000) < 1000, "{ms} vs {us}");
    }
}
