//! The camera's hold on its retained status topic: tells the broker's echoes of the
//! camera's own publications from another client's overwrite, and paces the corrections.
//! Pure: the MQTT transport feeds it what it published and received, and the time. It
//! must never do I/O, read a clock, or take a status the camera itself sent for a forgery.
//!
//! The camera subscribes to its own status topic, so the broker sends back each status it
//! publishes, in order (one publisher, QoS 1, one topic). Two things arrive that are not
//! forgeries although they differ from the status the camera holds now:
//! - the echo of an earlier status of its own, when the status changed (a viewer joined)
//!   before that echo came back;
//! - the broker's retained copy from before this connection (say the offline last will),
//!   sent when the camera subscribes, ahead of the camera's first publication.

use std::collections::VecDeque;
use std::time::Duration;
use tokio::time::Instant;

/// The fastest the camera puts back its retained status after someone overwrote it: two
/// cameras sharing a device id must not flood the broker fighting over it.
const CORRECTION_INTERVAL: Duration = Duration::from_secs(1);

/// More unechoed publications than this means the echoes are not coming back; the oldest
/// are forgotten so the record stays small.
const UNECHOED_MAX: usize = 16;

/// What a status message from the broker was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// One of the camera's own publications, or the very status it holds now.
    Own,
    /// The broker's retained copy from before this connection; the camera's first
    /// publication on this connection replaces it.
    Leftover,
    /// Another client overwrote the status; a correction is now due.
    Overwritten,
    /// Overwritten again before the due correction went out.
    OverwrittenAgain,
}

#[derive(Debug, Default)]
pub struct RetainedStatus {
    /// Published on this connection and not yet echoed, oldest first.
    unechoed: VecDeque<Vec<u8>>,
    /// Whether any own publication has come back on this connection.
    echoed: bool,
    correction_due: Option<Instant>,
    last_correction: Option<Instant>,
}

impl RetainedStatus {
    /// A new connection: what was in flight on the last one will not come back.
    pub fn connected(&mut self) {
        self.unechoed.clear();
        self.echoed = false;
        self.correction_due = None;
    }

    /// The camera queued `payload` for its status topic.
    pub fn published(&mut self, payload: &[u8]) {
        if self.unechoed.len() == UNECHOED_MAX {
            self.unechoed.pop_front();
        }
        self.unechoed.push_back(payload.to_vec());
    }

    /// A message on the status topic arrived; `current` is the status the camera holds.
    pub fn received(&mut self, payload: &[u8], current: &[u8], now: Instant) -> Received {
        if let Some(at) = self.unechoed.iter().position(|sent| sent == payload) {
            // Echoes come in order: anything older than this one was echoed or lost.
            self.unechoed.drain(..=at);
            self.echoed = true;
            return Received::Own;
        }
        if !self.echoed {
            return Received::Leftover;
        }
        if payload == current {
            return Received::Own;
        }
        if self.correction_due.is_some() {
            return Received::OverwrittenAgain;
        }
        let earliest = self.last_correction.map(|at| at + CORRECTION_INTERVAL);
        self.correction_due = Some(earliest.map_or(now, |earliest| earliest.max(now)));
        Received::Overwritten
    }

    /// When the camera should republish its status to undo an overwrite.
    pub fn correction_due(&self) -> Option<Instant> {
        self.correction_due
    }

    /// The due correction is going out now.
    pub fn correcting(&mut self, now: Instant) {
        self.correction_due = None;
        self.last_correction = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ZERO_VIEWERS: &[u8] = br#"{"state":"online","viewers":0}"#;
    const ONE_VIEWER: &[u8] = br#"{"state":"online","viewers":1}"#;
    const OFFLINE: &[u8] = br#"{"state":"offline"}"#;
    const FORGED: &[u8] = br#"{"state":"offline","forged":true}"#;

    /// Connected, with `sent` published and echoed.
    fn settled(sent: &[u8], now: Instant) -> RetainedStatus {
        let mut status = RetainedStatus::default();
        status.connected();
        status.published(sent);
        assert_eq!(status.received(sent, sent, now), Received::Own);
        status
    }

    #[test]
    fn the_echo_of_an_earlier_own_status_is_not_an_overwrite() {
        let now = Instant::now();
        let mut status = settled(ZERO_VIEWERS, now);
        // A viewer joins: 1 viewer is published, then the 0-viewer status comes back late.
        status.published(ZERO_VIEWERS);
        status.published(ONE_VIEWER);
        assert_eq!(
            status.received(ZERO_VIEWERS, ONE_VIEWER, now),
            Received::Own
        );
        assert_eq!(status.received(ONE_VIEWER, ONE_VIEWER, now), Received::Own);
        assert_eq!(status.correction_due(), None);
    }

    #[test]
    fn the_brokers_copy_from_before_the_connection_is_a_leftover_not_an_overwrite() {
        let now = Instant::now();
        let mut status = RetainedStatus::default();
        status.connected();
        status.published(ZERO_VIEWERS);
        // The last will's offline status comes first, on subscribing.
        assert_eq!(
            status.received(OFFLINE, ZERO_VIEWERS, now),
            Received::Leftover
        );
        assert_eq!(
            status.received(ZERO_VIEWERS, ZERO_VIEWERS, now),
            Received::Own
        );
        assert_eq!(status.correction_due(), None);
    }

    #[test]
    fn a_foreign_status_after_the_first_echo_is_an_overwrite_corrected_at_once() {
        let now = Instant::now();
        let mut status = settled(ZERO_VIEWERS, now);
        assert_eq!(
            status.received(FORGED, ZERO_VIEWERS, now),
            Received::Overwritten
        );
        assert_eq!(status.correction_due(), Some(now));
        assert_eq!(
            status.received(FORGED, ZERO_VIEWERS, now),
            Received::OverwrittenAgain
        );
    }

    #[test]
    fn a_replay_of_an_old_own_status_after_its_echo_is_an_overwrite() {
        let now = Instant::now();
        let mut status = settled(ZERO_VIEWERS, now);
        status.published(ONE_VIEWER);
        assert_eq!(status.received(ONE_VIEWER, ONE_VIEWER, now), Received::Own);
        assert_eq!(
            status.received(ZERO_VIEWERS, ONE_VIEWER, now),
            Received::Overwritten
        );
    }

    #[test]
    fn corrections_come_at_most_once_per_interval() {
        let start = Instant::now();
        let mut status = settled(ZERO_VIEWERS, start);
        status.received(FORGED, ZERO_VIEWERS, start);
        status.correcting(start);
        status.published(ZERO_VIEWERS);
        status.received(ZERO_VIEWERS, ZERO_VIEWERS, start);
        let soon = start + Duration::from_millis(100);
        assert_eq!(
            status.received(FORGED, ZERO_VIEWERS, soon),
            Received::Overwritten
        );
        assert_eq!(status.correction_due(), Some(start + CORRECTION_INTERVAL));
    }

    #[test]
    fn a_new_connection_forgets_what_the_last_one_had_in_flight() {
        let now = Instant::now();
        let mut status = settled(ZERO_VIEWERS, now);
        status.published(ONE_VIEWER);
        status.received(FORGED, ONE_VIEWER, now);
        status.connected();
        assert_eq!(status.correction_due(), None);
        // On the new connection the broker's copy (the forgery) is a leftover again, and
        // the 1-viewer status sent on the old connection is no longer expected back.
        assert_eq!(status.received(FORGED, ONE_VIEWER, now), Received::Leftover);
        status.published(ONE_VIEWER);
        assert_eq!(status.received(ONE_VIEWER, ONE_VIEWER, now), Received::Own);
    }

    #[test]
    fn the_record_of_unechoed_statuses_stays_bounded() {
        let mut status = RetainedStatus::default();
        status.connected();
        for viewers in 0..1000 {
            status.published(format!("{viewers}").as_bytes());
        }
        assert_eq!(status.unechoed.len(), UNECHOED_MAX);
    }
}
