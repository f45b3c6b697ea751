//! systemd's notify protocol: READY once the service is up, STATUS lines with the viewer
//! count, RELOADING (with the CLOCK_MONOTONIC time systemd 253+ requires) then READY around a
//! reload, and watchdog pings only while the pipeline still produces frames.
//! Without NOTIFY_SOCKET (not under systemd) every call is a no-op; it must never fail the service.

use sd_notify::NotifyState;
use std::time::Duration;

fn send(states: &[NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(err) = sd_notify::notify(states) {
        tracing::debug!("sd_notify: {err}");
    }
}

pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// `RELOADING=1` with `MONOTONIC_USEC`: sd_notify(3) of systemd 253 and later requires the
/// CLOCK_MONOTONIC time (µs) alongside RELOADING=1, so the manager can tell this reload from
/// an older one. Call [`ready`] when the reload is done.
pub fn reloading() {
    let status = NotifyState::Status("reloading configuration");
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now, status]),
        Err(err) => {
            // Cannot happen on Linux; older systemd still takes a bare RELOADING=1.
            tracing::debug!("CLOCK_MONOTONIC unreadable for RELOADING=1: {err}");
            send(&[NotifyState::Reloading, status]);
        }
    }
}

pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

pub fn watchdog_ping() {
    send(&[NotifyState::Watchdog]);
}

/// How often to ping when systemd set `WatchdogSec=` (half its timeout), or `None`.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|timeout| timeout / 2)
}

/// The pipeline counts as alive while its last sign of progress (a frame, or a retry of
/// a failing camera) is younger than this: ten frame periods, but never under five
/// seconds, since a camera may take seconds to deliver its first frame or to be reopened.
pub fn stall_limit(fps: u32) -> Duration {
    let periods = Duration::from_secs(10) / fps.max(1);
    periods.max(Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stall_limit_scales_with_frame_rate() {
        assert_eq!(stall_limit(30), Duration::from_secs(5));
        assert_eq!(stall_limit(1), Duration::from_secs(10));
        assert_eq!(stall_limit(0), Duration::from_secs(10));
    }
}
