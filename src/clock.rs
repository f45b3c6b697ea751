//! The two clocks peercam reads. Wall-clock time as the wire wants it (microseconds or
//! milliseconds since the Unix epoch) for capture stamps, telemetry and expiries; and
//! monotonic time since the process's origin for RTP timestamps and anything that
//! measures a duration. The wall clock jumps (NTP, a board without RTC setting its clock
//! after boot), so it must never time a duration or an RTP stream; the monotonic clock
//! never jumps but means nothing outside this process, so it must never go on the wire
//! as a date.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Microseconds added to the system's wall clock: always 0 outside tests (see
/// [`step_wall_clock_for_tests`]).
static WALL_CLOCK_STEP_US: AtomicI64 = AtomicI64::new(0);

/// Microseconds since the Unix epoch; 0 if the clock is set before 1970.
pub fn unix_us() -> u64 {
    let system = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_micros()).unwrap_or(u64::MAX)
        });
    system.saturating_add_signed(WALL_CLOCK_STEP_US.load(Ordering::Relaxed))
}

/// Milliseconds since the Unix epoch; 0 if the clock is set before 1970.
pub fn unix_ms() -> u64 {
    unix_us() / 1000
}

/// Seconds since the Unix epoch (expiries of keys and TURN credentials).
pub fn unix_s() -> u64 {
    unix_us() / 1_000_000
}

/// Test hook, never called by the service: steps this process's wall clock (what
/// [`unix_us`] and its siblings return) by `by_us` microseconds, as NTP steps a board's
/// clock, so a test can prove that the stream does not follow the step. Process-wide: a
/// test that calls it must be alone in its test binary.
#[doc(hidden)]
pub fn step_wall_clock_for_tests(by_us: i64) {
    WALL_CLOCK_STEP_US.fetch_add(by_us, Ordering::Relaxed);
}

/// The instant [`monotonic_us`] counts from: the first time anything asked for it.
pub fn monotonic_origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

/// Microseconds since [`monotonic_origin`] on the monotonic clock (CLOCK_MONOTONIC on
/// Linux): capture instants for RTP timestamps. It never steps with the wall clock.
pub fn monotonic_us() -> u64 {
    u64::try_from(monotonic_origin().elapsed().as_micros()).unwrap_or(u64::MAX)
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

    #[test]
    fn the_monotonic_clock_counts_from_its_origin_and_never_goes_back() {
        let first = monotonic_us();
        let second = monotonic_us();
        assert!(second >= first);
        assert!(monotonic_origin() <= Instant::now());
    }
}
