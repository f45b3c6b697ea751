//! Liveness of the service's long-running parts (session core, signaling transports, HTTP
//! listeners, the embedded broker): each part holds a [`Heartbeat`] it beats from its own
//! loop, and [`Parts::verdict_at`] (pure, given a monotonic `now`) says whether all of them
//! are alive. The watchdog feeds systemd only while they are; a part whose task ends while
//! the service is not stopping (returned or panicked) stops the service, which then exits
//! non-zero. It must never read the wall clock, nor decide anything about a session.

use crate::pipeline::Liveness;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How long a task's loop may go without running before it counts as wedged: far beyond
/// any scheduling delay, well inside a restart's worth of systemd's watchdog.
pub const LOOP_STALL_LIMIT: Duration = Duration::from_secs(10);
/// How often such a loop beats when it has nothing else to do.
pub const BEAT_INTERVAL: Duration = Duration::from_secs(1);

/// `last_beat` of a part whose task has ended.
const ENDED: u64 = u64::MAX;

#[derive(Debug)]
struct Part {
    name: &'static str,
    /// How long the part may go without a beat and still count as alive.
    stall_limit: Duration,
    /// Milliseconds since the registry's origin, or [`ENDED`].
    last_beat: AtomicU64,
}

/// Every registered part, with the clock origin their beats are measured from.
#[derive(Debug)]
pub struct Parts {
    origin: Instant,
    parts: Mutex<Vec<Arc<Part>>>,
    /// Cancelled when a part ends while the service runs.
    stop: CancellationToken,
    /// The parts that ended while the service ran, in order.
    ended_early: Mutex<Vec<&'static str>>,
}

/// Why the watchdog withholds its ping, or `None` when the pipeline and every part are
/// alive (a camera being retried counts as alive: the service is healthy, the camera not).
pub fn watchdog_withheld_because(pipeline: Liveness, parts: &Verdict) -> Option<String> {
    match (pipeline, parts) {
        (_, Verdict::Ended { part }) => Some(format!("{part} has ended")),
        (Liveness::Stalled(age), _) => Some(format!("no frame through the pipeline for {age:?}")),
        (_, Verdict::Stalled { part, age }) => Some(format!("{part} has not run for {age:?}")),
        (Liveness::Alive, Verdict::Alive) => None,
    }
}

/// What the watchdog learns from [`Parts::verdict_at`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Alive,
    /// A part has not beaten for `age`, longer than its limit.
    Stalled {
        part: &'static str,
        age: Duration,
    },
    /// A part's task is gone.
    Ended {
        part: &'static str,
    },
}

impl Parts {
    /// A registry whose parts, should one end while `stop` is not cancelled, cancel it.
    pub fn new(stop: CancellationToken) -> Arc<Parts> {
        Arc::new(Parts {
            origin: Instant::now(),
            parts: Mutex::new(Vec::new()),
            stop,
            ended_early: Mutex::new(Vec::new()),
        })
    }

    /// Registers a part, alive as of now. Its task keeps the [`Heartbeat`] for as long as
    /// it runs: dropping it (the task returned or unwound) marks the part ended.
    /// A part that only has to keep running (its task never beats) has `Duration::MAX`.
    pub fn register(self: &Arc<Self>, name: &'static str, stall_limit: Duration) -> Heartbeat {
        let part = Arc::new(Part {
            name,
            stall_limit,
            last_beat: AtomicU64::new(self.elapsed_ms()),
        });
        lock(&self.parts).push(Arc::clone(&part));
        Heartbeat {
            part,
            parts: Arc::clone(self),
        }
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(ENDED - 1)
    }

    /// The verdict now.
    pub fn verdict(&self) -> Verdict {
        self.verdict_at(self.origin.elapsed())
    }

    /// The verdict at `now` (time since this registry's origin): the first part ended,
    /// else the first stalled, else alive.
    pub fn verdict_at(&self, now: Duration) -> Verdict {
        let now_ms = u64::try_from(now.as_millis()).unwrap_or(ENDED - 1);
        let parts = lock(&self.parts);
        let mut stalled = None;
        for part in parts.iter() {
            let last = part.last_beat.load(Ordering::Relaxed);
            if last == ENDED {
                return Verdict::Ended { part: part.name };
            }
            let age = Duration::from_millis(now_ms.saturating_sub(last));
            if age > part.stall_limit && stalled.is_none() {
                stalled = Some(Verdict::Stalled {
                    part: part.name,
                    age,
                });
            }
        }
        stalled.unwrap_or(Verdict::Alive)
    }

    /// The parts that ended while the service ran (empty after a clean stop).
    pub fn ended_early(&self) -> Vec<&'static str> {
        lock(&self.ended_early).clone()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// A part's proof of life, held by its task.
#[derive(Debug)]
pub struct Heartbeat {
    part: Arc<Part>,
    parts: Arc<Parts>,
}

impl Heartbeat {
    pub fn beat(&self) {
        self.part
            .last_beat
            .store(self.parts.elapsed_ms(), Ordering::Relaxed);
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.part.last_beat.store(ENDED, Ordering::Relaxed);
        if !self.parts.stop.is_cancelled() {
            let panicking = if std::thread::panicking() {
                " (it panicked)"
            } else {
                ""
            };
            tracing::error!(
                "{} ended while the service was running{panicking}; stopping",
                self.part.name
            );
            lock(&self.parts.ended_early).push(self.part.name);
            self.parts.stop.cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_secs(5);

    #[test]
    fn parts_that_beat_within_their_limit_are_alive() {
        let parts = Parts::new(CancellationToken::new());
        let core = parts.register("session core", LIMIT);
        let _mqtt = parts.register("MQTT signaling", LIMIT * 2);
        assert_eq!(parts.verdict_at(Duration::from_secs(4)), Verdict::Alive);
        core.beat();
        assert_eq!(parts.verdict_at(LIMIT), Verdict::Alive);
    }

    #[test]
    fn a_part_that_stops_beating_stalls_the_verdict_with_its_age() {
        let parts = Parts::new(CancellationToken::new());
        let _core = parts.register("session core", LIMIT);
        let _http = parts.register("HTTP server", Duration::from_secs(60));
        assert_eq!(
            parts.verdict_at(Duration::from_secs(7)),
            Verdict::Stalled {
                part: "session core",
                age: Duration::from_secs(7)
            }
        );
    }

    #[test]
    fn a_part_that_ends_while_running_stops_the_service_and_is_named() {
        let stop = CancellationToken::new();
        let parts = Parts::new(stop.clone());
        let _core = parts.register("session core", LIMIT);
        let http = parts.register("HTTP server", LIMIT);
        drop(http);
        assert!(stop.is_cancelled());
        assert_eq!(
            parts.verdict_at(Duration::ZERO),
            Verdict::Ended {
                part: "HTTP server"
            }
        );
        assert_eq!(parts.ended_early(), ["HTTP server"]);
    }

    #[test]
    fn a_panicking_part_counts_as_ended() {
        let stop = CancellationToken::new();
        let parts = Parts::new(stop.clone());
        let beat = parts.register("MQTT signaling", LIMIT);
        let task = std::thread::spawn(move || {
            let _beat = beat;
            panic!("test panic inside a part");
        });
        assert!(task.join().is_err());
        assert!(stop.is_cancelled());
        assert_eq!(parts.ended_early(), ["MQTT signaling"]);
    }

    #[test]
    fn the_watchdog_pings_only_while_the_pipeline_and_every_part_live() {
        let alive = Verdict::Alive;
        assert_eq!(watchdog_withheld_because(Liveness::Alive, &alive), None);
        let stalled_pipeline = Liveness::Stalled(Duration::from_secs(6));
        assert_eq!(
            watchdog_withheld_because(stalled_pipeline, &alive).as_deref(),
            Some("no frame through the pipeline for 6s")
        );
        let wedged = Verdict::Stalled {
            part: "session core",
            age: Duration::from_secs(9),
        };
        assert_eq!(
            watchdog_withheld_because(Liveness::Alive, &wedged).as_deref(),
            Some("session core has not run for 9s")
        );
        let ended = Verdict::Ended {
            part: "HTTP server",
        };
        assert_eq!(
            watchdog_withheld_because(stalled_pipeline, &ended).as_deref(),
            Some("HTTP server has ended")
        );
    }

    #[test]
    fn parts_ending_after_a_stop_are_not_failures() {
        let stop = CancellationToken::new();
        let parts = Parts::new(stop.clone());
        let core = parts.register("session core", LIMIT);
        stop.cancel();
        drop(core);
        assert!(parts.ended_early().is_empty());
    }
}
