//! The phases of one session's start, each timed from its offer: where the time to a
//! viewer's first frame goes. Pure (the caller passes `now`); the peer task logs each
//! phase once at debug level. It must never change what a session does.

use std::time::{Duration, Instant};

/// A step on the way from an offer to the viewer's first picture, in the order they
/// usually happen (ICE and DTLS overlap nothing else; RTP can only follow DTLS).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    OfferReceived,
    AnswerPublished,
    IceConnected,
    DtlsConnected,
    FirstRtpSent,
    FirstKeyframeSent,
}

impl Phase {
    #[cfg(test)]
    const ALL: [Phase; 6] = [
        Phase::OfferReceived,
        Phase::AnswerPublished,
        Phase::IceConnected,
        Phase::DtlsConnected,
        Phase::FirstRtpSent,
        Phase::FirstKeyframeSent,
    ];

    /// The name in the log line's `phase` field.
    pub fn name(self) -> &'static str {
        match self {
            Phase::OfferReceived => "offer received",
            Phase::AnswerPublished => "answer published",
            Phase::IceConnected => "ice connected",
            Phase::DtlsConnected => "dtls connected",
            Phase::FirstRtpSent => "first rtp sent",
            Phase::FirstKeyframeSent => "first keyframe sent",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// When each phase first happened, relative to the offer.
#[derive(Clone, Debug)]
pub struct Timeline {
    offer_at: Instant,
    reached: [Option<Duration>; 6],
}

impl Timeline {
    /// A session whose offer arrived at `offer_at`.
    pub fn new(offer_at: Instant) -> Timeline {
        Timeline {
            offer_at,
            reached: [None; 6],
        }
    }

    /// Records `phase` at `now`. Returns its time since the offer the first time only: a
    /// phase reached again (ICE connected after a restart) is not a start-up phase.
    pub fn reach(&mut self, phase: Phase, now: Instant) -> Option<Duration> {
        let slot = &mut self.reached[phase.index()];
        if slot.is_some() {
            return None;
        }
        let since_offer = now.saturating_duration_since(self.offer_at);
        *slot = Some(since_offer);
        Some(since_offer)
    }

    /// When `phase` was first reached, relative to the offer.
    pub fn since_offer(&self, phase: Phase) -> Option<Duration> {
        self.reached[phase.index()]
    }

    /// Records `phase` and logs it at debug level the first time.
    pub fn log(&mut self, phase: Phase) {
        if let Some(since_offer) = self.reach(phase, Instant::now()) {
            tracing::debug!(
                phase = phase.name(),
                since_offer_ms = format!("{:.1}", since_offer.as_secs_f64() * 1000.0),
                "session phase"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_phase_is_timed_from_the_offer_once() {
        let offer = Instant::now();
        let mut timeline = Timeline::new(offer);
        assert_eq!(timeline.since_offer(Phase::OfferReceived), None);
        assert_eq!(
            timeline.reach(Phase::OfferReceived, offer),
            Some(Duration::ZERO)
        );
        let ms = Duration::from_millis;
        assert_eq!(
            timeline.reach(Phase::AnswerPublished, offer + ms(4)),
            Some(ms(4))
        );
        assert_eq!(
            timeline.reach(Phase::IceConnected, offer + ms(30)),
            Some(ms(30))
        );
        // Connected again after an ICE restart: not a start-up phase, the first time stays.
        assert_eq!(timeline.reach(Phase::IceConnected, offer + ms(900)), None);
        assert_eq!(timeline.since_offer(Phase::IceConnected), Some(ms(30)));
        assert_eq!(timeline.since_offer(Phase::FirstKeyframeSent), None);
    }

    #[test]
    fn a_clock_read_before_the_offer_counts_as_zero() {
        let offer = Instant::now() + Duration::from_millis(5);
        let mut timeline = Timeline::new(offer);
        assert_eq!(
            timeline.reach(Phase::DtlsConnected, offer - Duration::from_millis(1)),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn every_phase_has_its_own_name() {
        let names: std::collections::HashSet<_> = Phase::ALL.iter().map(|p| p.name()).collect();
        assert_eq!(names.len(), Phase::ALL.len());
    }
}
