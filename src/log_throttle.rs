//! Keeps a warning that anyone can trigger over and over (a junk MQTT message, a bad offer,
//! a client over a connection limit) from flooding the journal: the first one of an interval
//! is logged, the rest are only counted, and the next line logged says how many were held
//! back. Pure but for [`LogThrottle::admit`]'s reading of the monotonic clock. It must never
//! hold back the first warning of a quiet period, nor drop the count of those it held back.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often one source may log a line while it keeps repeating.
pub const INTERVAL: Duration = Duration::from_secs(10);

/// One source's throttle; `const`, so a warning site can own one as a `static`.
#[derive(Debug)]
pub struct LogThrottle {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    last_logged: Option<Instant>,
    held_back: u64,
}

impl LogThrottle {
    pub const fn new() -> LogThrottle {
        LogThrottle {
            state: Mutex::new(State {
                last_logged: None,
                held_back: 0,
            }),
        }
    }

    /// `Some(n)` when this occurrence is to be logged, `n` being how many were held back
    /// since the last line; `None` when it is only counted.
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    pub fn admit_at(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let due = state
            .last_logged
            .is_none_or(|last| now.saturating_duration_since(last) >= INTERVAL);
        if due {
            state.last_logged = Some(now);
            Some(std::mem::take(&mut state.held_back))
        } else {
            state.held_back += 1;
            None
        }
    }
}

impl Default for LogThrottle {
    fn default() -> Self {
        LogThrottle::new()
    }
}

/// `tracing::warn!` through a `static` [`LogThrottle`] of its own: a line per
/// [`INTERVAL`] at most, carrying `held_back` = how many were not logged before it.
#[macro_export]
macro_rules! warn_throttled {
    ($($arg:tt)+) => {{
        static THROTTLE: $crate::log_throttle::LogThrottle = $crate::log_throttle::LogThrottle::new();
        if let Some(held_back) = THROTTLE.admit() {
            tracing::warn!(held_back, $($arg)+);
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_warning_goes_out_and_repeats_are_counted_into_the_next_line() {
        let throttle = LogThrottle::new();
        let t0 = Instant::now();
        assert_eq!(throttle.admit_at(t0), Some(0));
        for ms in [1, 500, 9_999] {
            assert_eq!(throttle.admit_at(t0 + Duration::from_millis(ms)), None);
        }
        assert_eq!(throttle.admit_at(t0 + INTERVAL), Some(3));
        // The count starts again after each line.
        assert_eq!(throttle.admit_at(t0 + INTERVAL * 2), Some(0));
    }

    #[test]
    fn a_quiet_source_is_never_held_back() {
        let throttle = LogThrottle::new();
        let t0 = Instant::now();
        for n in 0..5 {
            assert_eq!(throttle.admit_at(t0 + INTERVAL * 3 * n), Some(0));
        }
    }

    #[test]
    fn a_flood_logs_one_line_per_interval() {
        let throttle = LogThrottle::new();
        let t0 = Instant::now();
        // 100 a second for a minute.
        let logged: Vec<u64> = (0..6_000)
            .filter_map(|i| throttle.admit_at(t0 + Duration::from_millis(i * 10)))
            .collect();
        assert_eq!(logged, [0, 999, 999, 999, 999, 999]);
    }
}
