//! The session core: every rule about viewer sessions, decided without I/O. Signaling
//! transports (MQTT, WHEP) turn their wire formats into [`Input`]s; the session manager
//! carries out the [`Action`]s (peer connections, replies, the viewer count).
//! It must never see a topic, JSON, HTTP, a socket, a task or the real clock: the time
//! comes with every call, so tests drive every rule faster than real time.

use super::offer_check;
use crate::auth::{AccessPolicy, ViewerKey};
use crate::signaling::protocol::{CameraMessage, ErrorCode, IceCandidate, OfferAuth, SessionId};
use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

/// Candidates kept for one session whose offer has not arrived yet.
pub const MAX_EARLY_CANDIDATES: usize = 64;
/// Session ids holding early candidates at once; more are refused.
pub const MAX_EARLY_SESSIONS: usize = 64;
/// How long an ended session id is remembered, so late duplicates are ignored.
pub const ENDED_SESSION_MEMORY: Duration = Duration::from_secs(120);
/// ICE restarts one session may start within [`RESTART_WINDOW`]; more are refused, so a
/// client cannot keep the camera renegotiating.
pub const MAX_RESTARTS_PER_WINDOW: usize = 3;
/// The sliding window [`MAX_RESTARTS_PER_WINDOW`] counts in.
pub const RESTART_WINDOW: Duration = Duration::from_secs(10);
/// Offers of one session remembered (the first and its latest restarts), so a late
/// duplicate of an earlier one is ignored rather than taken for a new restart.
const REMEMBERED_OFFERS: usize = 8;

/// Why a session ended; sent to the viewer as the hangup `reason` where it applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    ViewerHangup,
    ConnectTimeout,
    IceFailed,
    Closed,
    BadOffer,
    Failed,
    Shutdown,
    /// The viewer's access was revoked while it watched.
    Revoked,
    /// The camera's WebRTC stack rejected an ICE restart offer of a live session.
    RestartFailed,
    /// The session connected after `max_viewers` others had: the slots were taken while it
    /// was pending, and a connected viewer is never displaced.
    Busy,
}

impl EndReason {
    pub const ALL: [EndReason; 10] = [
        EndReason::ViewerHangup,
        EndReason::ConnectTimeout,
        EndReason::IceFailed,
        EndReason::Closed,
        EndReason::BadOffer,
        EndReason::Failed,
        EndReason::Shutdown,
        EndReason::Revoked,
        EndReason::RestartFailed,
        EndReason::Busy,
    ];

    /// The wire token, e.g. `"ice-failed"`.
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::ViewerHangup => "viewer-hangup",
            EndReason::ConnectTimeout => "connect-timeout",
            EndReason::IceFailed => "ice-failed",
            EndReason::Closed => "closed",
            EndReason::BadOffer => "bad-offer",
            EndReason::Failed => "internal-error",
            EndReason::Shutdown => "shutdown",
            EndReason::Revoked => "revoked",
            EndReason::RestartFailed => "restart-failed",
            EndReason::Busy => "busy",
        }
    }

    /// The viewer already knows when it hung up itself or its offer was refused.
    pub fn tell_viewer(self) -> bool {
        !matches!(self, EndReason::ViewerHangup | EndReason::BadOffer)
    }
}

/// A refusal sent to the viewer as an `error` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
}

impl Refusal {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Refusal {
        Refusal {
            code,
            message: message.into(),
        }
    }
}

/// What an offer presents as its access key, in its transport's form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// MQTT: the offer's `auth` (viewer, expiry, the offer's mac).
    Signed(OfferAuth),
    /// WHEP: the `Authorization: Bearer VIEWER.EXP.MAC` token.
    Bearer(String),
}

/// A message from a viewer, already parsed by its transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ViewerInput {
    Offer {
        sdp: String,
        credential: Option<Credential>,
    },
    /// `None`: the viewer has gathered all its candidates.
    Candidate(Option<IceCandidate>),
    /// A hangup; with access keys it counts only with the session's mac.
    Hangup { mac: Option<String> },
    /// The session's owner leaves through a transport that already proved ownership (a
    /// WHEP DELETE on the session's unguessable URL).
    Leave,
    /// The transport could not parse what the viewer sent for this session.
    Invalid(Refusal),
}

/// What a session's peer connection reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerReport {
    /// The camera's SDP answer, for the viewer (signed here when the session is keyed): to
    /// the session's offer, or to its latest ICE restart.
    Answer(String),
    /// The peer could not apply an ICE restart offer; the session cannot go on.
    RestartFailed(Refusal),
    Connected,
    IceFailed,
    /// The connection was closed from the other side.
    Closed,
    /// The peer is gone and everything it held is freed. `refusal` is set when the
    /// offer itself could not be answered (told to the viewer as an `error`).
    Ended {
        reason: EndReason,
        refusal: Option<Refusal>,
    },
}

/// Everything the core reacts to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Viewer {
        sid: SessionId,
        message: ViewerInput,
    },
    Peer {
        sid: SessionId,
        report: PeerReport,
    },
    /// The camera device went away (false) or came back (true).
    Camera {
        available: bool,
    },
    /// Time passes: timeouts and expiries are decided here.
    Tick,
    /// Hang up every viewer and accept no one new.
    Shutdown,
}

/// What the core wants done.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send `message` to the viewer of `sid` through its transport.
    Send {
        sid: SessionId,
        message: CameraMessage,
    },
    /// Build a peer connection for `sid`, answer `offer_sdp`, then apply `candidates`.
    StartPeer {
        sid: SessionId,
        offer_sdp: String,
        candidates: Vec<Option<IceCandidate>>,
    },
    /// Hand the peer of `sid` an ICE restart offer: it answers on the same connection,
    /// keeping its track, data channel and slot.
    RestartPeer { sid: SessionId, offer_sdp: String },
    /// Hand a trickled candidate to the peer of `sid`.
    AddCandidate {
        sid: SessionId,
        candidate: Option<IceCandidate>,
    },
    /// Close the peer of `sid`; it answers with [`PeerReport::Ended`] once freed.
    ClosePeer { sid: SessionId, reason: EndReason },
    /// The number of connected viewers changed (the status and its subscribers follow it).
    ViewerCount(usize),
}

/// Limits the core enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connected viewers at once (`webrtc.max_viewers`).
    pub max_viewers: usize,
    /// Sessions between their offer and connected at once (`webrtc.max_pending`), counted
    /// apart from `max_viewers`: sessions that never connect cannot lock viewers out.
    pub max_pending: usize,
    /// New sessions' offers the camera takes (`webrtc.offers_per_s`, `webrtc.offer_burst`).
    pub offer_rate: OfferRate,
    /// From offer to connected; also how long candidates may wait for their offer.
    pub connect_timeout: Duration,
}

/// A token bucket's rate: `per_s` tokens a second, at most `burst` saved up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OfferRate {
    pub per_s: u32,
    pub burst: u32,
}

/// Admits offers at [`OfferRate`]: full at first, one token per admitted offer, refilled
/// with the time each call brings (never the real clock).
#[derive(Debug)]
struct TokenBucket {
    rate: OfferRate,
    tokens: f64,
    updated: Option<Instant>,
}

impl TokenBucket {
    fn new(rate: OfferRate) -> TokenBucket {
        TokenBucket {
            rate,
            tokens: f64::from(rate.burst),
            updated: None,
        }
    }

    /// Takes a token if there is one at `now`.
    fn try_take(&mut self, now: Instant) -> bool {
        if let Some(updated) = self.updated {
            let refill =
                now.saturating_duration_since(updated).as_secs_f64() * f64::from(self.rate.per_s);
            self.tokens = (self.tokens + refill).min(f64::from(self.rate.burst));
        }
        self.updated = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Connecting {
        since: Instant,
    },
    Connected,
    /// Told to close; holds its slot until its peer reports `Ended`.
    Closing,
}

struct Session {
    phase: Phase,
    /// Has connected (and so holds a viewer slot rather than a pending one, until freed).
    connected: bool,
    /// Hashes of the offers this session has taken, oldest first (bounded): any of them
    /// again is a duplicate.
    offers: VecDeque<u64>,
    /// The ICE credentials of the offer in effect; a restart brings new ones.
    ice: Option<IceCredentials>,
    /// An offer (the first or a restart) is with the peer and not answered yet.
    negotiating: bool,
    /// When the restarts still inside [`RESTART_WINDOW`] were accepted.
    restarts: VecDeque<Instant>,
    /// The access key that opened the session, and the viewer it names (keys mode).
    key: Option<(String, ViewerKey)>,
}

impl Session {
    fn remember_offer(&mut self, sdp: &str) {
        if self.offers.len() == REMEMBERED_OFFERS {
            self.offers.pop_front();
        }
        self.offers.push_back(sdp_hash(sdp));
    }
}

/// An SDP's ICE username fragment and password (RFC 8839): session level first, else the
/// first media section carrying them (with BUNDLE every section has the same).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IceCredentials {
    pub ufrag: String,
    pub pwd: String,
}

impl IceCredentials {
    /// The credentials of `sdp`, or `None` when it has no complete pair.
    pub fn of_sdp(sdp: &str) -> Option<IceCredentials> {
        // Session-level lines come before the first media section: the first of each wins.
        let first = |prefix: &str| {
            sdp.lines()
                .find_map(|line| line.trim_end_matches('\r').strip_prefix(prefix))
                .map(str::to_owned)
        };
        Some(IceCredentials {
            ufrag: first("a=ice-ufrag:")?,
            pwd: first("a=ice-pwd:")?,
        })
    }
}

/// The time of an input: monotonic for timeouts, Unix seconds for key expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    pub instant: Instant,
    pub unix_s: u64,
}

impl Now {
    /// The real time, for the I/O shell.
    pub fn real() -> Now {
        Now {
            instant: Instant::now(),
            unix_s: crate::clock::unix_s(),
        }
    }
}

struct EarlyCandidates {
    candidates: Vec<Option<IceCandidate>>,
    since: Instant,
}

struct Ended {
    at: Instant,
    /// The session's own offers: their late duplicates are ignored, any other is refused.
    offers: VecDeque<u64>,
}

fn sdp_hash(sdp: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    sdp.hash(&mut hasher);
    hasher.finish()
}

/// The rules of every viewer session, from offer to end.
pub struct SessionCore {
    limits: Limits,
    /// `None`: open mode, anyone may watch.
    access: Option<AccessPolicy>,
    camera_available: bool,
    shutting_down: bool,
    sessions: HashMap<SessionId, Session>,
    early: HashMap<SessionId, EarlyCandidates>,
    ended: HashMap<SessionId, Ended>,
    offers: TokenBucket,
    viewers_reported: usize,
}

impl SessionCore {
    pub fn new(limits: Limits, access: Option<AccessPolicy>) -> SessionCore {
        SessionCore {
            limits,
            access,
            camera_available: true,
            shutting_down: false,
            sessions: HashMap::new(),
            early: HashMap::new(),
            ended: HashMap::new(),
            offers: TokenBucket::new(limits.offer_rate),
            viewers_reported: 0,
        }
    }

    /// Changes `max_viewers` (configuration reload); sessions above it keep playing.
    pub fn set_max_viewers(&mut self, max_viewers: usize) {
        self.limits.max_viewers = max_viewers;
    }

    /// Replaces the revoked viewers (configuration reload); their live sessions end.
    pub fn set_revoked(&mut self, revoked: &[String]) -> Vec<Action> {
        let mut actions = Vec::new();
        let Some(access) = &mut self.access else {
            return actions;
        };
        access.set_revoked(revoked);
        let ended: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| {
                s.key
                    .as_ref()
                    .is_some_and(|(viewer, _)| revoked.contains(viewer))
            })
            .map(|(sid, _)| sid.clone())
            .collect();
        for sid in ended {
            self.close(&sid, EndReason::Revoked, &mut actions);
        }
        actions
    }

    /// Viewers holding a slot of `max_viewers`: sessions that have connected (a closing one
    /// until its peer is freed). The status and telemetry `viewers`.
    pub fn viewer_count(&self) -> usize {
        self.sessions.values().filter(|s| s.connected).count()
    }

    /// Sessions holding a slot of `max_pending`: offered, not connected (a closing one until
    /// its peer is freed).
    pub fn pending_count(&self) -> usize {
        self.sessions.len() - self.viewer_count()
    }

    /// True while `sid` holds a slot.
    pub fn has_session(&self, sid: &SessionId) -> bool {
        self.sessions.contains_key(sid)
    }

    /// Decides what `input`, arriving at `now`, makes happen.
    pub fn handle(&mut self, time: Now, input: Input) -> Vec<Action> {
        let mut actions = Vec::new();
        let now = time.instant;
        match input {
            Input::Viewer { sid, message } => self.viewer(time, sid, message, &mut actions),
            Input::Peer { sid, report } => self.peer(now, sid, report, &mut actions),
            Input::Camera { available } => self.camera_available = available,
            Input::Tick => self.tick(now, &mut actions),
            Input::Shutdown => {
                self.shutting_down = true;
                self.early.clear();
                let sids: Vec<SessionId> = self.sessions.keys().cloned().collect();
                for sid in sids {
                    self.close(&sid, EndReason::Shutdown, &mut actions);
                }
            }
        }
        let viewers = self.viewer_count();
        if viewers != self.viewers_reported {
            self.viewers_reported = viewers;
            actions.push(Action::ViewerCount(viewers));
        }
        actions
    }

    fn viewer(&mut self, time: Now, sid: SessionId, message: ViewerInput, out: &mut Vec<Action>) {
        let now = time.instant;
        if let Some(ended) = self.ended.get(&sid) {
            // Late duplicates, last wills and stray candidates of a finished session.
            let reused = matches!(&message, ViewerInput::Offer { sdp, .. } if !ended.offers.contains(&sdp_hash(sdp)));
            if reused {
                refuse(
                    &sid,
                    Refusal::new(
                        ErrorCode::BadRequest,
                        "this session has ended; use a new session id",
                    ),
                    out,
                );
            }
            return;
        }
        match message {
            ViewerInput::Offer { sdp, credential } => {
                self.offer(time, sid, sdp, credential.as_ref(), out)
            }
            ViewerInput::Candidate(candidate) => self.candidate(now, sid, candidate, out),
            ViewerInput::Hangup { mac } => {
                // With access keys every session has its key: only its mac ends it.
                if let Some((_, key)) = self.sessions.get(&sid).and_then(|s| s.key.as_ref()) {
                    if !mac.is_some_and(|mac| key.verify_hangup(sid.as_str(), mac.as_str())) {
                        tracing::debug!(%sid, "ignoring a hangup without the session's mac");
                        return;
                    }
                }
                // Hangups for unknown sessions are normal (QoS 1 duplicates, last wills).
                // Unsigned ones may not drop another viewer's early candidates.
                if self.access.is_none() {
                    self.early.remove(&sid);
                }
                self.close(&sid, EndReason::ViewerHangup, out);
            }
            ViewerInput::Leave => self.close(&sid, EndReason::ViewerHangup, out),
            ViewerInput::Invalid(refusal) => refuse(&sid, refusal, out),
        }
    }

    fn offer(
        &mut self,
        time: Now,
        sid: SessionId,
        sdp: String,
        credential: Option<&Credential>,
        out: &mut Vec<Action>,
    ) {
        if self.sessions.contains_key(&sid) {
            self.offer_on_live_session(time, sid, sdp, credential, out);
            return;
        }
        let key = match &self.access {
            None => None,
            Some(access) => {
                let checked = match credential {
                    None => access.check_offer(sid.as_str(), &sdp, None, time.unix_s),
                    Some(Credential::Signed(auth)) => {
                        access.check_offer(sid.as_str(), &sdp, Some(auth), time.unix_s)
                    }
                    Some(Credential::Bearer(token)) => access.check_whep_token(token, time.unix_s),
                };
                match checked {
                    Ok(key) => Some(key),
                    Err(denial) => {
                        // Nothing of an unauthorized offer stays: no peer, no state.
                        let refusal = Refusal::new(ErrorCode::Unauthorized, denial.to_string());
                        self.refuse_unstarted(&sid, refusal, out);
                        return;
                    }
                }
            }
        };
        let now = time.instant;
        // What the camera cannot answer gets no peer connection.
        if let Err(problem) = offer_check::check_offer(&sdp) {
            let refusal = Refusal::new(ErrorCode::BadRequest, problem.to_string());
            self.refuse_unstarted(&sid, refusal, out);
            return;
        }
        let refusal = if self.shutting_down {
            Some(Refusal::new(
                ErrorCode::Unavailable,
                "the camera is shutting down; try again later",
            ))
        } else if !self.camera_available {
            Some(Refusal::new(
                ErrorCode::Unavailable,
                "the camera is unavailable right now; try again later",
            ))
        } else if self.viewer_count() >= self.limits.max_viewers {
            let max = self.limits.max_viewers;
            Some(Refusal::new(
                ErrorCode::Busy,
                format!("the camera already has its maximum of {max} viewers"),
            ))
        } else if self.pending_count() >= self.limits.max_pending {
            let max = self.limits.max_pending;
            Some(Refusal::new(
                ErrorCode::Busy,
                format!("too many sessions are connecting (at most {max} at once); try again in a few seconds"),
            ))
        } else if !self.offers.try_take(now) {
            let OfferRate { per_s, burst } = self.limits.offer_rate;
            Some(Refusal::new(
                ErrorCode::Busy,
                format!("too many offers (at most {per_s} a second, {burst} at once); try again in a few seconds"),
            ))
        } else {
            None
        };
        if let Some(refusal) = refusal {
            self.refuse_unstarted(&sid, refusal, out);
            return;
        }
        let candidates = self
            .early
            .remove(&sid)
            .map(|early| early.candidates)
            .unwrap_or_default();
        let mut session = Session {
            phase: Phase::Connecting { since: now },
            connected: false,
            offers: VecDeque::new(),
            ice: IceCredentials::of_sdp(&sdp),
            negotiating: true,
            restarts: VecDeque::new(),
            key,
        };
        session.remember_offer(&sdp);
        self.sessions.insert(sid.clone(), session);
        out.push(Action::StartPeer {
            sid,
            offer_sdp: sdp,
            candidates,
        });
    }

    /// A second offer on a live session: a QoS 1 duplicate (ignored), an ICE restart from
    /// the session's owner (handed to its peer, within the rate limit), or a refusal.
    fn offer_on_live_session(
        &mut self,
        time: Now,
        sid: SessionId,
        sdp: String,
        credential: Option<&Credential>,
        out: &mut Vec<Action>,
    ) {
        let Some(session) = self.sessions.get_mut(&sid) else {
            return;
        };
        // An offer the session already took is a QoS 1 duplicate: already answered or
        // being answered.
        if session.offers.contains(&sdp_hash(&sdp)) {
            return;
        }
        // A different offer must come from the key that opened the session.
        let signed_by_owner = match (&session.key, credential) {
            (None, _) => true,
            (Some((viewer, key)), Some(Credential::Signed(auth))) => {
                auth.viewer == *viewer && key.verify_offer(sid.as_str(), &sdp, &auth.mac)
            }
            (Some(_), _) => false,
        };
        if !signed_by_owner {
            let refusal = Refusal::new(
                ErrorCode::Unauthorized,
                "bad mac: only the key that opened this session may change its offer",
            );
            refuse(&sid, refusal, out);
            return;
        }
        // The owner's key must still admit it: an expired or revoked key restarts nothing.
        if let (Some(access), Some(Credential::Signed(auth))) = (&self.access, credential) {
            if let Err(denial) = access.check_offer(sid.as_str(), &sdp, Some(auth), time.unix_s) {
                let refusal = Refusal::new(ErrorCode::Unauthorized, denial.to_string());
                refuse(&sid, refusal, out);
                return;
            }
        }
        match restart_decision(session, &sdp, time.instant) {
            Err(refusal) => refuse(&sid, refusal, out),
            Ok(ice) => {
                session.ice = Some(ice);
                session.negotiating = true;
                session.restarts.push_back(time.instant);
                session.remember_offer(&sdp);
                out.push(Action::RestartPeer {
                    sid,
                    offer_sdp: sdp,
                });
            }
        }
    }

    fn candidate(
        &mut self,
        now: Instant,
        sid: SessionId,
        candidate: Option<IceCandidate>,
        out: &mut Vec<Action>,
    ) {
        if let Some(session) = self.sessions.get(&sid) {
            if session.phase != Phase::Closing {
                out.push(Action::AddCandidate { sid, candidate });
            }
            return;
        }
        if self.shutting_down {
            return;
        }
        // Candidates may overtake their offer: keep them, bounded, until it arrives.
        if !self.early.contains_key(&sid) && self.early.len() >= MAX_EARLY_SESSIONS {
            refuse(
                &sid,
                Refusal::new(
                    ErrorCode::Busy,
                    "too many sessions are waiting for their offer; try again later",
                ),
                out,
            );
            return;
        }
        let early = self.early.entry(sid.clone()).or_insert(EarlyCandidates {
            candidates: Vec::new(),
            since: now,
        });
        if early.candidates.len() >= MAX_EARLY_CANDIDATES {
            let refusal = Refusal::new(
                ErrorCode::BadRequest,
                "too many candidates before the offer",
            );
            self.refuse_unstarted(&sid, refusal, out);
            return;
        }
        early.candidates.push(candidate);
    }

    fn peer(&mut self, now: Instant, sid: SessionId, report: PeerReport, out: &mut Vec<Action>) {
        let viewers = self.viewer_count();
        let Some(session) = self.sessions.get_mut(&sid) else {
            return;
        };
        match report {
            PeerReport::Answer(sdp) => {
                session.negotiating = false;
                let mac = session
                    .key
                    .as_ref()
                    .map(|(_, key)| key.answer_mac(sid.as_str(), &sdp));
                out.push(Action::Send {
                    sid,
                    message: CameraMessage::Answer { sdp, mac },
                });
            }
            PeerReport::Connected => {
                if matches!(session.phase, Phase::Connecting { .. }) {
                    if viewers >= self.limits.max_viewers {
                        // Other pending sessions connected first and took the last slots.
                        self.close(&sid, EndReason::Busy, out);
                    } else {
                        session.phase = Phase::Connected;
                        session.connected = true;
                    }
                }
            }
            PeerReport::RestartFailed(refusal) => {
                refuse(&sid, refusal, out);
                self.close(&sid, EndReason::RestartFailed, out);
            }
            PeerReport::IceFailed => self.close(&sid, EndReason::IceFailed, out),
            PeerReport::Closed => self.close(&sid, EndReason::Closed, out),
            PeerReport::Ended { reason, refusal } => {
                let told = session.phase == Phase::Closing;
                let goodbye = hangup(&sid, reason, session.key.as_ref());
                let offers = std::mem::take(&mut session.offers);
                self.sessions.remove(&sid);
                if !told {
                    // The peer ended on its own: say why, once.
                    if let Some(refusal) = refusal {
                        refuse(&sid, refusal, out);
                    } else if reason.tell_viewer() {
                        out.push(goodbye);
                    }
                }
                self.ended.insert(sid, Ended { at: now, offers });
            }
        }
    }

    /// Ends a live session: tells the viewer why (where it does not know) and closes its
    /// peer. The slot stays taken until the peer reports `Ended`.
    /// Refuses a session that never started: nothing of it stays, not even the candidates
    /// that came before its offer.
    fn refuse_unstarted(&mut self, sid: &SessionId, refusal: Refusal, out: &mut Vec<Action>) {
        self.early.remove(sid);
        refuse(sid, refusal, out);
    }

    fn close(&mut self, sid: &SessionId, reason: EndReason, out: &mut Vec<Action>) {
        let Some(session) = self.sessions.get_mut(sid) else {
            return;
        };
        if session.phase == Phase::Closing {
            return;
        }
        session.phase = Phase::Closing;
        if reason.tell_viewer() {
            out.push(hangup(sid, reason, session.key.as_ref()));
        }
        out.push(Action::ClosePeer {
            sid: sid.clone(),
            reason,
        });
    }

    fn tick(&mut self, now: Instant, out: &mut Vec<Action>) {
        let timeout = self.limits.connect_timeout;
        let timed_out: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| matches!(s.phase, Phase::Connecting { since } if now.duration_since(since) >= timeout))
            .map(|(sid, _)| sid.clone())
            .collect();
        for sid in timed_out {
            self.close(&sid, EndReason::ConnectTimeout, out);
        }
        let orphaned: Vec<SessionId> = self
            .early
            .iter()
            .filter(|(_, e)| now.duration_since(e.since) >= timeout)
            .map(|(sid, _)| sid.clone())
            .collect();
        for sid in orphaned {
            let refusal = Refusal::new(ErrorCode::BadRequest, "no offer received for this session");
            self.refuse_unstarted(&sid, refusal, out);
        }
        self.ended
            .retain(|_, ended| now.duration_since(ended.at) < ENDED_SESSION_MEMORY);
    }
}

/// Whether the owner's new offer on a live session may restart ICE now: it must carry new
/// ICE credentials (both the ufrag and the password), the session must be up and not
/// negotiating already, and within the rate limit. Returns the new credentials.
fn restart_decision(
    session: &mut Session,
    sdp: &str,
    now: Instant,
) -> Result<IceCredentials, Refusal> {
    let bad = |message: &str| Err(Refusal::new(ErrorCode::BadRequest, message));
    let (Some(current), Some(offered)) = (&session.ice, IceCredentials::of_sdp(sdp)) else {
        return bad("session already has an offer; use a new session id");
    };
    if offered.ufrag == current.ufrag {
        // Same credentials, different SDP: renegotiation, which v1 does not have.
        return bad("session already has an offer; use a new session id");
    }
    if offered.pwd == current.pwd {
        return bad("an ICE restart must change both ice-ufrag and ice-pwd");
    }
    if session.phase == Phase::Closing {
        return bad("this session is ending; use a new session id");
    }
    if session.negotiating {
        return bad("the session's last offer is not answered yet; wait for its answer");
    }
    while session
        .restarts
        .front()
        .is_some_and(|at| now.duration_since(*at) >= RESTART_WINDOW)
    {
        session.restarts.pop_front();
    }
    if session.restarts.len() >= MAX_RESTARTS_PER_WINDOW {
        return bad(&format!(
            "too many ICE restarts: at most {MAX_RESTARTS_PER_WINDOW} per {} s; try again later",
            RESTART_WINDOW.as_secs()
        ));
    }
    Ok(offered)
}

fn refuse(sid: &SessionId, refusal: Refusal, out: &mut Vec<Action>) {
    out.push(Action::Send {
        sid: sid.clone(),
        message: CameraMessage::Error {
            code: refusal.code,
            message: refusal.message,
        },
    });
}

/// The camera's hangup, signed when the session is keyed.
fn hangup(sid: &SessionId, reason: EndReason, key: Option<&(String, ViewerKey)>) -> Action {
    Action::Send {
        sid: sid.clone(),
        message: CameraMessage::Hangup {
            reason: reason.as_str().to_owned(),
            mac: key.map(|(_, key)| key.hangup_mac(sid.as_str())),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(15);
    const UNIX_NOW: u64 = 1_800_000_000;

    /// The core with a fake clock that only moves when the test says so.
    struct Harness {
        core: SessionCore,
        now: Now,
    }

    impl Harness {
        fn new(max_viewers: usize) -> Harness {
            Harness::with_access(max_viewers, None)
        }

        fn with_access(max_viewers: usize, access: Option<AccessPolicy>) -> Harness {
            // Pending sessions and the offer rate are loose unless a test is about them.
            let limits = Limits {
                max_viewers,
                max_pending: 64,
                offer_rate: OfferRate {
                    per_s: 1000,
                    burst: 1000,
                },
                connect_timeout: TIMEOUT,
            };
            Harness::with_limits(limits, access)
        }

        fn with_limits(limits: Limits, access: Option<AccessPolicy>) -> Harness {
            Harness {
                core: SessionCore::new(limits, access),
                now: Now {
                    instant: Instant::now(),
                    unix_s: UNIX_NOW,
                },
            }
        }

        fn input(&mut self, input: Input) -> Vec<Action> {
            self.core.handle(self.now, input)
        }

        fn viewer(&mut self, sid: &SessionId, message: ViewerInput) -> Vec<Action> {
            self.input(Input::Viewer {
                sid: sid.clone(),
                message,
            })
        }

        fn offer(&mut self, sid: &SessionId) -> Vec<Action> {
            self.offer_sdp(sid, &sdp(&format!("offer of {sid}")))
        }

        fn offer_sdp(&mut self, sid: &SessionId, sdp: &str) -> Vec<Action> {
            self.viewer(
                sid,
                ViewerInput::Offer {
                    sdp: sdp.into(),
                    credential: None,
                },
            )
        }

        fn peer(&mut self, sid: &SessionId, report: PeerReport) -> Vec<Action> {
            self.input(Input::Peer {
                sid: sid.clone(),
                report,
            })
        }

        fn ended(&mut self, sid: &SessionId, reason: EndReason) -> Vec<Action> {
            self.peer(
                sid,
                PeerReport::Ended {
                    reason,
                    refusal: None,
                },
            )
        }

        /// An offer for `sid` whose peer connects at once.
        fn connected(&mut self, sid: &SessionId) -> Vec<Action> {
            let mut actions = self.offer(sid);
            assert!(started(&actions, sid).is_some(), "{actions:?}");
            actions.extend(self.peer(sid, PeerReport::Connected));
            actions
        }

        fn advance(&mut self, by: Duration) -> Vec<Action> {
            self.now.instant += by;
            self.now.unix_s += by.as_secs();
            self.input(Input::Tick)
        }
    }

    /// A valid offer (a receiving video section with H.264 Constrained Baseline in
    /// packetization-mode 1) without ICE credentials, told apart by its session name.
    fn sdp(name: &str) -> String {
        format!(
            "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns={name}\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 102\r\n\
             a=recvonly\r\na=rtpmap:102 H264/90000\r\n\
             a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n"
        )
    }

    fn sid(n: u32) -> SessionId {
        SessionId::parse(&format!("session-{n:04}")).unwrap()
    }

    fn candidate(n: u32) -> Option<IceCandidate> {
        Some(IceCandidate {
            candidate: format!(
                "candidate:{n} 1 udp 2130706431 127.0.0.1 {} typ host",
                50000 + n
            ),
            sdp_mid: Some("0".into()),
            sdp_mline_index: Some(0),
            username_fragment: None,
        })
    }

    fn error_code(actions: &[Action], of: &SessionId) -> Option<ErrorCode> {
        actions.iter().find_map(|action| match action {
            Action::Send {
                sid,
                message: CameraMessage::Error { code, .. },
            } if sid == of => Some(*code),
            _ => None,
        })
    }

    fn hangup_reason(actions: &[Action], of: &SessionId) -> Option<String> {
        actions.iter().find_map(|action| match action {
            Action::Send {
                sid,
                message: CameraMessage::Hangup { reason, .. },
            } if sid == of => Some(reason.clone()),
            _ => None,
        })
    }

    fn started(actions: &[Action], of: &SessionId) -> Option<Vec<Option<IceCandidate>>> {
        actions.iter().find_map(|action| match action {
            Action::StartPeer {
                sid, candidates, ..
            } if sid == of => Some(candidates.clone()),
            _ => None,
        })
    }

    fn closes(actions: &[Action], of: &SessionId) -> bool {
        actions
            .iter()
            .any(|action| matches!(action, Action::ClosePeer { sid, .. } if sid == of))
    }

    fn count(actions: &[Action]) -> Option<usize> {
        actions.iter().rev().find_map(|action| match action {
            Action::ViewerCount(n) => Some(*n),
            _ => None,
        })
    }

    #[test]
    fn an_offer_starts_a_peer_and_a_connected_one_counts_a_viewer() {
        let mut h = Harness::new(8);
        let actions = h.offer(&sid(1));
        assert_eq!(started(&actions, &sid(1)), Some(vec![]));
        assert_eq!(count(&actions), None, "a pending session is no viewer yet");
        assert_eq!((h.core.viewer_count(), h.core.pending_count()), (0, 1));
        let connected = h.peer(&sid(1), PeerReport::Connected);
        assert_eq!(count(&connected), Some(1));
        assert_eq!((h.core.viewer_count(), h.core.pending_count()), (1, 0));
    }

    #[test]
    fn busy_at_max_viewers_and_a_freed_slot_is_usable_again() {
        let mut h = Harness::new(2);
        h.connected(&sid(1));
        h.connected(&sid(2));
        let refused = h.offer(&sid(3));
        assert_eq!(error_code(&refused, &sid(3)), Some(ErrorCode::Busy));
        assert_eq!(started(&refused, &sid(3)), None);
        assert_eq!(count(&refused), None, "the count did not change");
        h.viewer(&sid(1), ViewerInput::Hangup { mac: None });
        // The slot is held until the peer has freed everything.
        assert_eq!(
            error_code(&h.offer(&sid(4)), &sid(4)),
            Some(ErrorCode::Busy)
        );
        let freed = h.ended(&sid(1), EndReason::ViewerHangup);
        assert_eq!(count(&freed), Some(1));
        assert!(started(&h.offer(&sid(5)), &sid(5)).is_some());
    }

    fn limited(max_viewers: usize, max_pending: usize, per_s: u32, burst: u32) -> Harness {
        let limits = Limits {
            max_viewers,
            max_pending,
            offer_rate: OfferRate { per_s, burst },
            connect_timeout: TIMEOUT,
        };
        Harness::with_limits(limits, None)
    }

    fn error_message(actions: &[Action], of: &SessionId) -> String {
        actions
            .iter()
            .find_map(|action| match action {
                Action::Send {
                    sid,
                    message: CameraMessage::Error { message, .. },
                } if sid == of => Some(message.clone()),
                _ => None,
            })
            .unwrap_or_default()
    }

    #[test]
    fn pending_sessions_are_bounded_apart_and_never_displace_a_viewer() {
        let mut h = limited(2, 2, 1000, 1000);
        h.connected(&sid(1));
        // Two offers that never connect fill the pending slots, not the viewer slots.
        assert!(started(&h.offer(&sid(2)), &sid(2)).is_some());
        assert!(started(&h.offer(&sid(3)), &sid(3)).is_some());
        let over = h.offer(&sid(4));
        assert_eq!(error_code(&over, &sid(4)), Some(ErrorCode::Busy));
        assert!(
            error_message(&over, &sid(4)).starts_with("too many sessions are connecting"),
            "{over:?}"
        );
        assert_eq!(started(&over, &sid(4)), None);
        assert!(
            !h.core.has_session(&sid(4)),
            "a refused offer keeps nothing"
        );
        // They time out; the connected viewer is untouched.
        let expired = h.advance(TIMEOUT);
        assert!(closes(&expired, &sid(2)) && closes(&expired, &sid(3)));
        assert!(!closes(&expired, &sid(1)));
        h.ended(&sid(2), EndReason::ConnectTimeout);
        h.ended(&sid(3), EndReason::ConnectTimeout);
        // A valid viewer is served again and takes the second viewer slot.
        let served = h.connected(&sid(5));
        assert_eq!(count(&served), Some(2));
        assert_eq!((h.core.viewer_count(), h.core.pending_count()), (2, 0));
    }

    #[test]
    fn a_pending_session_connecting_after_the_slots_are_gone_is_hung_up_as_busy() {
        let mut h = limited(1, 4, 1000, 1000);
        h.offer(&sid(1));
        h.offer(&sid(2));
        assert_eq!(count(&h.peer(&sid(2), PeerReport::Connected)), Some(1));
        let late = h.peer(&sid(1), PeerReport::Connected);
        assert_eq!(hangup_reason(&late, &sid(1)).as_deref(), Some("busy"));
        assert!(closes(&late, &sid(1)));
        assert!(!closes(&late, &sid(2)), "the connected viewer stays");
        assert_eq!(count(&late), None);
        assert_eq!(h.ended(&sid(1), EndReason::Busy), vec![]);
        assert_eq!(h.core.viewer_count(), 1);
    }

    #[test]
    fn offers_are_rate_limited_by_a_token_bucket() {
        let mut h = limited(64, 64, 2, 4);
        for n in 0..4 {
            assert!(started(&h.offer(&sid(n)), &sid(n)).is_some(), "burst {n}");
        }
        let over = h.offer(&sid(10));
        assert_eq!(error_code(&over, &sid(10)), Some(ErrorCode::Busy));
        assert!(
            error_message(&over, &sid(10)).starts_with("too many offers"),
            "{over:?}"
        );
        assert_eq!(started(&over, &sid(10)), None);
        // Half a token after 250 ms is not enough; a whole one after 500 ms is.
        h.advance(Duration::from_millis(250));
        assert_eq!(
            error_code(&h.offer(&sid(11)), &sid(11)),
            Some(ErrorCode::Busy)
        );
        h.advance(Duration::from_millis(250));
        // An offer refused for itself takes no token.
        let vp8 = "v=0\r\ns=-\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\n";
        let bad = h.offer_sdp(&sid(12), vp8);
        assert_eq!(error_code(&bad, &sid(12)), Some(ErrorCode::BadRequest));
        assert!(started(&h.connected(&sid(13)), &sid(13)).is_some());
        assert_eq!(
            error_code(&h.offer(&sid(14)), &sid(14)),
            Some(ErrorCode::Busy)
        );
        // However long the camera was idle, at most a burst comes at once.
        h.advance(Duration::from_secs(60));
        for n in 20..24 {
            assert!(started(&h.offer(&sid(n)), &sid(n)).is_some(), "burst {n}");
        }
        assert_eq!(
            error_code(&h.offer(&sid(24)), &sid(24)),
            Some(ErrorCode::Busy)
        );
    }

    #[test]
    fn offers_the_camera_cannot_answer_get_no_peer_and_leave_nothing() {
        let mut h = limited(8, 1, 1000, 1);
        h.viewer(&sid(1), ViewerInput::Candidate(candidate(1)));
        let high_only = sdp("x").replace("profile-level-id=42e01f", "profile-level-id=64001f");
        let refused = h.offer_sdp(&sid(1), &high_only);
        assert_eq!(error_code(&refused, &sid(1)), Some(ErrorCode::BadRequest));
        assert!(
            error_message(&refused, &sid(1)).contains("Constrained Baseline"),
            "{refused:?}"
        );
        assert_eq!(started(&refused, &sid(1)), None);
        assert!(!h.core.has_session(&sid(1)));
        let sendonly = sdp("y").replace("a=recvonly", "a=sendonly");
        let refused = h.offer_sdp(&sid(2), &sendonly);
        assert_eq!(error_code(&refused, &sid(2)), Some(ErrorCode::BadRequest));
        assert_eq!(started(&refused, &sid(2)), None);
        // Neither took the one pending slot nor the one token: a valid viewer is served,
        // and the refused sid's early candidate is gone with it.
        assert_eq!(started(&h.offer(&sid(1)), &sid(1)), Some(vec![]));
    }

    #[test]
    fn max_viewers_changes_live() {
        let mut h = Harness::new(1);
        h.connected(&sid(1));
        h.core.set_max_viewers(2);
        h.connected(&sid(2));
        h.core.set_max_viewers(1);
        assert_eq!(
            error_code(&h.offer(&sid(3)), &sid(3)),
            Some(ErrorCode::Busy)
        );
        assert_eq!(
            h.core.viewer_count(),
            2,
            "lowering the limit hangs up no one"
        );
    }

    #[test]
    fn the_same_offer_twice_is_ignored_and_a_different_one_is_a_bad_request() {
        let mut h = Harness::new(8);
        h.offer_sdp(&sid(1), &sdp("first"));
        assert_eq!(h.offer_sdp(&sid(1), &sdp("first")), vec![]);
        let different = h.offer_sdp(&sid(1), &sdp("second"));
        assert_eq!(error_code(&different, &sid(1)), Some(ErrorCode::BadRequest));
        assert_eq!(started(&different, &sid(1)), None);
        assert_eq!(h.core.pending_count(), 1);
    }

    // --- ICE restarts ---

    /// An offer whose only interesting part is its ICE credentials (media level, CRLF).
    fn ice_offer(ufrag: &str, pwd: &str) -> String {
        format!(
            "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 102\r\n\
             a=ice-ufrag:{ufrag}\r\na=ice-pwd:{pwd}\r\na=recvonly\r\na=rtpmap:102 H264/90000\r\n\
             a=fmtp:102 packetization-mode=1;profile-level-id=42e01f\r\n"
        )
    }

    fn restarted(actions: &[Action], of: &SessionId) -> Option<String> {
        actions.iter().find_map(|action| match action {
            Action::RestartPeer { sid, offer_sdp } if sid == of => Some(offer_sdp.clone()),
            _ => None,
        })
    }

    /// A connected, answered session on `sid` whose offer has the ICE credentials `a`.
    fn live_session(h: &mut Harness, sid: &SessionId) {
        assert!(started(
            &h.offer_sdp(sid, &ice_offer("a", "pwd-a-0123456789abcdef")),
            sid
        )
        .is_some());
        h.peer(sid, PeerReport::Answer("v=0 answer".into()));
        h.peer(sid, PeerReport::Connected);
    }

    #[test]
    fn ice_credentials_are_read_from_the_session_or_the_first_media_section() {
        let media = IceCredentials::of_sdp(&ice_offer("uf1", "pw1")).unwrap();
        assert_eq!((media.ufrag.as_str(), media.pwd.as_str()), ("uf1", "pw1"));
        let session_level =
            "v=0\na=ice-ufrag:top\na=ice-pwd:toppwd\nm=video 9 X 1\na=ice-ufrag:low\na=ice-pwd:lowpwd\n";
        let found = IceCredentials::of_sdp(session_level).unwrap();
        assert_eq!(
            (found.ufrag.as_str(), found.pwd.as_str()),
            ("top", "toppwd")
        );
        assert_eq!(
            IceCredentials::of_sdp("v=0\r\na=ice-ufrag:x\r\nm=video 9 X 1\r\n"),
            None
        );
        assert_eq!(IceCredentials::of_sdp("v=0 first"), None);
    }

    #[test]
    fn new_ice_credentials_from_the_owner_restart_the_same_session() {
        let mut h = Harness::new(8);
        live_session(&mut h, &sid(1));
        let restart = ice_offer("b", "pwd-b-0123456789abcdef");
        let actions = h.offer_sdp(&sid(1), &restart);
        assert_eq!(restarted(&actions, &sid(1)), Some(restart.clone()));
        assert_eq!(started(&actions, &sid(1)), None, "no second peer");
        assert_eq!(count(&actions), None, "the slot is the same");
        assert_eq!(error_code(&actions, &sid(1)), None);
        // The restart's answer goes to the viewer like the first one.
        let answered = h.peer(&sid(1), PeerReport::Answer("v=0 answer 2".into()));
        assert!(
            matches!(&answered[..], [Action::Send { message: CameraMessage::Answer { sdp, .. }, .. }] if sdp == "v=0 answer 2")
        );
        assert_eq!(h.core.viewer_count(), 1);
        // The connected session still never times out.
        assert_eq!(h.advance(TIMEOUT * 2), vec![]);
    }

    #[test]
    fn duplicates_of_any_offer_of_the_session_are_ignored() {
        let mut h = Harness::new(8);
        live_session(&mut h, &sid(1));
        let first = ice_offer("a", "pwd-a-0123456789abcdef");
        let restart = ice_offer("b", "pwd-b-0123456789abcdef");
        assert!(restarted(&h.offer_sdp(&sid(1), &restart), &sid(1)).is_some());
        assert_eq!(h.offer_sdp(&sid(1), &restart), vec![], "the restart again");
        h.peer(&sid(1), PeerReport::Answer("v=0 answer 2".into()));
        assert_eq!(
            h.offer_sdp(&sid(1), &restart),
            vec![],
            "after its answer too"
        );
        assert_eq!(
            h.offer_sdp(&sid(1), &first),
            vec![],
            "a late copy of the first offer"
        );
        // ... and after the session has ended.
        h.viewer(&sid(1), ViewerInput::Hangup { mac: None });
        h.ended(&sid(1), EndReason::ViewerHangup);
        assert_eq!(h.offer_sdp(&sid(1), &restart), vec![]);
        assert_eq!(h.offer_sdp(&sid(1), &first), vec![]);
    }

    #[test]
    fn a_different_offer_without_new_ice_credentials_is_still_a_bad_request() {
        let mut h = Harness::new(8);
        live_session(&mut h, &sid(1));
        let same_ufrag = format!("{}a=extra\r\n", ice_offer("a", "pwd-a-0123456789abcdef"));
        let refused = h.offer_sdp(&sid(1), &same_ufrag);
        assert_eq!(error_code(&refused, &sid(1)), Some(ErrorCode::BadRequest));
        assert_eq!(restarted(&refused, &sid(1)), None);
        let same_pwd = h.offer_sdp(&sid(1), &ice_offer("b", "pwd-a-0123456789abcdef"));
        assert_eq!(error_code(&same_pwd, &sid(1)), Some(ErrorCode::BadRequest));
        let no_credentials = h.offer_sdp(&sid(1), &sdp("other"));
        assert_eq!(
            error_code(&no_credentials, &sid(1)),
            Some(ErrorCode::BadRequest)
        );
        assert_eq!(h.core.viewer_count(), 1, "the session goes on");
    }

    #[test]
    fn a_restart_waits_for_the_previous_answer_and_not_for_a_closing_session() {
        let mut h = Harness::new(8);
        h.offer_sdp(&sid(1), &ice_offer("a", "pwd-a-0123456789abcdef"));
        let early = h.offer_sdp(&sid(1), &ice_offer("b", "pwd-b-0123456789abcdef"));
        assert_eq!(
            error_code(&early, &sid(1)),
            Some(ErrorCode::BadRequest),
            "first offer not answered"
        );
        h.peer(&sid(1), PeerReport::Answer("v=0 answer".into()));
        assert!(restarted(
            &h.offer_sdp(&sid(1), &ice_offer("c", "pwd-c-0123456789abcdef")),
            &sid(1)
        )
        .is_some());
        let in_flight = h.offer_sdp(&sid(1), &ice_offer("d", "pwd-d-0123456789abcdef"));
        assert_eq!(
            error_code(&in_flight, &sid(1)),
            Some(ErrorCode::BadRequest),
            "one restart in flight"
        );
        assert_eq!(restarted(&in_flight, &sid(1)), None);
        h.peer(&sid(1), PeerReport::Answer("v=0 answer c".into()));
        h.peer(&sid(1), PeerReport::IceFailed);
        let closing = h.offer_sdp(&sid(1), &ice_offer("e", "pwd-e-0123456789abcdef"));
        assert_eq!(error_code(&closing, &sid(1)), Some(ErrorCode::BadRequest));
        assert_eq!(restarted(&closing, &sid(1)), None);
    }

    #[test]
    fn restarts_are_rate_limited_per_session() {
        let mut h = Harness::new(8);
        live_session(&mut h, &sid(1));
        live_session(&mut h, &sid(2));
        let restart = |h: &mut Harness, sid: &SessionId, n: u32| {
            let actions = h.offer_sdp(
                sid,
                &ice_offer(&format!("r{n}"), &format!("pwd-r{n}-0123456789abcdef")),
            );
            let accepted = restarted(&actions, sid).is_some();
            if accepted {
                h.peer(sid, PeerReport::Answer(format!("v=0 answer {n}")));
            }
            (accepted, error_code(&actions, sid))
        };
        for n in 0..MAX_RESTARTS_PER_WINDOW as u32 {
            assert_eq!(restart(&mut h, &sid(1), n), (true, None), "restart {n}");
            h.advance(Duration::from_secs(1));
        }
        let over = restart(&mut h, &sid(1), 100);
        assert_eq!(
            over,
            (false, Some(ErrorCode::BadRequest)),
            "one too many in {RESTART_WINDOW:?}"
        );
        // Another session has its own budget, and the refused one still plays.
        assert_eq!(restart(&mut h, &sid(2), 200), (true, None));
        assert_eq!(h.core.viewer_count(), 2);
        // Once the first restart has left the window, one more is allowed.
        h.advance(RESTART_WINDOW - Duration::from_secs(MAX_RESTARTS_PER_WINDOW as u64));
        assert_eq!(restart(&mut h, &sid(1), 101), (true, None));
        assert_eq!(
            restart(&mut h, &sid(1), 102),
            (false, Some(ErrorCode::BadRequest))
        );
    }

    #[test]
    fn a_restart_the_peer_rejects_ends_the_session_with_an_error_and_a_hangup() {
        let mut h = Harness::new(8);
        live_session(&mut h, &sid(1));
        h.offer_sdp(&sid(1), &ice_offer("b", "pwd-b-0123456789abcdef"));
        let failed = h.peer(
            &sid(1),
            PeerReport::RestartFailed(Refusal::new(
                ErrorCode::BadRequest,
                "ICE restart rejected: x",
            )),
        );
        assert_eq!(error_code(&failed, &sid(1)), Some(ErrorCode::BadRequest));
        assert_eq!(
            hangup_reason(&failed, &sid(1)).as_deref(),
            Some("restart-failed")
        );
        assert!(closes(&failed, &sid(1)));
        assert_eq!(
            h.ended(&sid(1), EndReason::Closed),
            vec![Action::ViewerCount(0)]
        );
    }

    #[test]
    fn early_candidates_are_kept_and_applied_with_the_offer() {
        let mut h = Harness::new(8);
        assert_eq!(
            h.viewer(&sid(1), ViewerInput::Candidate(candidate(1))),
            vec![]
        );
        assert_eq!(h.viewer(&sid(1), ViewerInput::Candidate(None)), vec![]);
        assert_eq!(h.core.viewer_count(), 0, "candidates alone take no slot");
        let actions = h.offer(&sid(1));
        assert_eq!(started(&actions, &sid(1)), Some(vec![candidate(1), None]));
        // Later candidates go straight to the peer.
        let later = h.viewer(&sid(1), ViewerInput::Candidate(candidate(2)));
        assert_eq!(
            later,
            vec![Action::AddCandidate {
                sid: sid(1),
                candidate: candidate(2)
            }]
        );
    }

    #[test]
    fn early_candidates_are_bounded_per_session() {
        let mut h = Harness::new(8);
        for n in 0..MAX_EARLY_CANDIDATES as u32 {
            assert_eq!(
                h.viewer(&sid(1), ViewerInput::Candidate(candidate(n))),
                vec![]
            );
        }
        let over = h.viewer(&sid(1), ViewerInput::Candidate(candidate(999)));
        assert_eq!(error_code(&over, &sid(1)), Some(ErrorCode::BadRequest));
        // The buffer was dropped: the offer starts with nothing buffered.
        assert_eq!(started(&h.offer(&sid(1)), &sid(1)), Some(vec![]));
    }

    #[test]
    fn early_candidates_are_bounded_in_sessions() {
        let mut h = Harness::new(8);
        for n in 0..MAX_EARLY_SESSIONS as u32 {
            assert_eq!(
                h.viewer(&sid(n), ViewerInput::Candidate(candidate(n))),
                vec![]
            );
        }
        let over = h.viewer(&sid(9999), ViewerInput::Candidate(candidate(1)));
        assert_eq!(error_code(&over, &sid(9999)), Some(ErrorCode::Busy));
        // Sessions already waiting keep their candidates.
        assert_eq!(
            started(&h.offer(&sid(0)), &sid(0)),
            Some(vec![candidate(0)])
        );
    }

    #[test]
    fn early_candidates_without_an_offer_expire() {
        let mut h = Harness::new(8);
        h.viewer(&sid(1), ViewerInput::Candidate(candidate(1)));
        assert_eq!(h.advance(TIMEOUT - Duration::from_millis(1)), vec![]);
        let expired = h.advance(Duration::from_millis(1));
        assert_eq!(error_code(&expired, &sid(1)), Some(ErrorCode::BadRequest));
        assert_eq!(started(&h.offer(&sid(1)), &sid(1)), Some(vec![]));
    }

    #[test]
    fn messages_after_the_end_are_ignored() {
        let mut h = Harness::new(8);
        h.offer_sdp(&sid(1), &sdp("first"));
        h.viewer(&sid(1), ViewerInput::Hangup { mac: None });
        h.ended(&sid(1), EndReason::ViewerHangup);
        assert_eq!(
            h.offer_sdp(&sid(1), &sdp("first")),
            vec![],
            "a late duplicate offer"
        );
        assert_eq!(
            h.viewer(&sid(1), ViewerInput::Candidate(candidate(1))),
            vec![]
        );
        assert_eq!(h.viewer(&sid(1), ViewerInput::Hangup { mac: None }), vec![]);
        assert_eq!(
            h.viewer(
                &sid(1),
                ViewerInput::Invalid(Refusal::new(ErrorCode::BadRequest, "junk"))
            ),
            vec![]
        );
        assert_eq!(h.peer(&sid(1), PeerReport::Connected), vec![]);
        // Reusing the id for a new offer is a mistake the viewer is told about.
        let reused = h.offer_sdp(&sid(1), &sdp("second"));
        assert_eq!(error_code(&reused, &sid(1)), Some(ErrorCode::BadRequest));
        assert_eq!(started(&reused, &sid(1)), None);
        // After the memory expires the id is simply unknown again.
        h.advance(ENDED_SESSION_MEMORY);
        assert!(started(&h.offer(&sid(1)), &sid(1)).is_some());
    }

    #[test]
    fn hangup_closes_the_peer_without_echoing_and_frees_the_slot() {
        let mut h = Harness::new(8);
        h.offer(&sid(1));
        h.peer(&sid(1), PeerReport::Connected);
        let actions = h.viewer(&sid(1), ViewerInput::Hangup { mac: None });
        assert!(closes(&actions, &sid(1)));
        assert_eq!(hangup_reason(&actions, &sid(1)), None);
        assert_eq!(
            h.viewer(&sid(1), ViewerInput::Hangup { mac: None }),
            vec![],
            "closing once is enough"
        );
        let freed = h.ended(&sid(1), EndReason::ViewerHangup);
        assert_eq!(freed, vec![Action::ViewerCount(0)]);
    }

    #[test]
    fn connect_timeout_frees_the_slot() {
        let mut h = Harness::new(8);
        h.offer(&sid(1));
        assert_eq!(h.advance(TIMEOUT - Duration::from_millis(1)), vec![]);
        let actions = h.advance(Duration::from_millis(1));
        assert_eq!(
            hangup_reason(&actions, &sid(1)).as_deref(),
            Some("connect-timeout")
        );
        assert!(closes(&actions, &sid(1)));
        assert_eq!(h.core.pending_count(), 1, "held until the peer is freed");
        assert_eq!(h.ended(&sid(1), EndReason::ConnectTimeout), vec![]);
        assert_eq!(h.core.pending_count(), 0);
    }

    #[test]
    fn a_connected_session_never_times_out() {
        let mut h = Harness::new(8);
        h.offer(&sid(1));
        h.peer(&sid(1), PeerReport::Connected);
        assert_eq!(h.advance(TIMEOUT * 10), vec![]);
        assert_eq!(h.core.viewer_count(), 1);
    }

    #[test]
    fn ice_failure_and_remote_close_free_the_slot() {
        for (report, reason) in [
            (PeerReport::IceFailed, "ice-failed"),
            (PeerReport::Closed, "closed"),
        ] {
            let mut h = Harness::new(8);
            h.offer(&sid(1));
            h.peer(&sid(1), PeerReport::Connected);
            let actions = h.peer(&sid(1), report);
            assert_eq!(hangup_reason(&actions, &sid(1)).as_deref(), Some(reason));
            assert!(closes(&actions, &sid(1)));
            // The viewer is told once, not again when the peer is freed.
            let freed = h.ended(&sid(1), EndReason::IceFailed);
            assert_eq!(freed, vec![Action::ViewerCount(0)]);
        }
    }

    #[test]
    fn a_peer_that_ends_on_its_own_tells_the_viewer_why() {
        let mut h = Harness::new(8);
        h.offer(&sid(1));
        let refused = h.peer(
            &sid(1),
            PeerReport::Ended {
                reason: EndReason::BadOffer,
                refusal: Some(Refusal::new(ErrorCode::BadRequest, "no H.264")),
            },
        );
        assert_eq!(error_code(&refused, &sid(1)), Some(ErrorCode::BadRequest));
        assert_eq!(h.core.pending_count(), 0);
        h.connected(&sid(2));
        let failed = h.ended(&sid(2), EndReason::Failed);
        assert_eq!(
            hangup_reason(&failed, &sid(2)).as_deref(),
            Some("internal-error")
        );
        assert_eq!(count(&failed), Some(0));
    }

    #[test]
    fn shutdown_hangs_up_everyone_and_accepts_no_one() {
        let mut h = Harness::new(8);
        h.offer(&sid(1));
        h.peer(&sid(1), PeerReport::Connected);
        h.offer(&sid(2));
        let actions = h.input(Input::Shutdown);
        for n in [1, 2] {
            assert_eq!(
                hangup_reason(&actions, &sid(n)).as_deref(),
                Some("shutdown")
            );
            assert!(closes(&actions, &sid(n)));
        }
        let late = h.offer(&sid(3));
        assert_eq!(error_code(&late, &sid(3)), Some(ErrorCode::Unavailable));
        assert_eq!(
            h.ended(&sid(1), EndReason::Shutdown),
            vec![Action::ViewerCount(0)]
        );
        assert_eq!(h.ended(&sid(2), EndReason::Shutdown), vec![]);
        assert_eq!(h.core.pending_count(), 0);
    }

    #[test]
    fn offers_while_the_camera_is_unavailable_are_refused() {
        let mut h = Harness::new(8);
        h.connected(&sid(1));
        h.input(Input::Camera { available: false });
        let refused = h.offer(&sid(2));
        assert_eq!(error_code(&refused, &sid(2)), Some(ErrorCode::Unavailable));
        assert_eq!(
            h.core.viewer_count(),
            1,
            "a connected viewer waits for the camera"
        );
        h.input(Input::Camera { available: true });
        assert!(started(&h.offer(&sid(3)), &sid(3)).is_some());
    }

    #[test]
    fn invalid_messages_are_refused_without_touching_the_session() {
        let mut h = Harness::new(8);
        h.offer(&sid(1));
        let actions = h.viewer(
            &sid(1),
            ViewerInput::Invalid(Refusal::new(ErrorCode::BadRequest, "not JSON")),
        );
        assert_eq!(error_code(&actions, &sid(1)), Some(ErrorCode::BadRequest));
        assert!(!closes(&actions, &sid(1)));
        assert!(h.core.has_session(&sid(1)));
    }

    #[test]
    fn reports_for_unknown_sessions_change_nothing() {
        let mut h = Harness::new(8);
        assert_eq!(h.peer(&sid(7), PeerReport::IceFailed), vec![]);
        assert_eq!(h.ended(&sid(7), EndReason::Failed), vec![]);
        assert_eq!(h.core.viewer_count(), 0);
    }

    #[test]
    fn the_viewer_count_follows_every_rule() {
        let mut h = Harness::new(2);
        let mut counts = Vec::new();
        let mut record = |actions: Vec<Action>| counts.extend(count(&actions));
        record(h.offer(&sid(1))); // pending: no viewer yet
        record(h.offer(&sid(2)));
        record(h.offer(&sid(3)));
        record(h.peer(&sid(1), PeerReport::Connected));
        record(h.peer(&sid(2), PeerReport::Connected));
        record(h.peer(&sid(3), PeerReport::Connected)); // one too many: busy, no change
        record(h.ended(&sid(3), EndReason::Busy));
        record(h.offer(&sid(4))); // busy: no change
        record(h.viewer(&sid(1), ViewerInput::Hangup { mac: None }));
        record(h.ended(&sid(1), EndReason::ViewerHangup));
        record(h.offer(&sid(5)));
        record(h.advance(TIMEOUT)); // sid 5 times out
        record(h.ended(&sid(5), EndReason::ConnectTimeout));
        record(h.peer(&sid(2), PeerReport::IceFailed));
        record(h.ended(&sid(2), EndReason::IceFailed));
        assert_eq!(counts, vec![1, 2, 1, 0]);
    }

    // --- access keys ---

    fn keyed(max_viewers: usize) -> Harness {
        let secret = crate::auth::CameraSecret::from_bytes([7; 32]);
        let access = AccessPolicy::new(secret, "cam1", &["mallory".to_owned()]);
        Harness::with_access(max_viewers, Some(access))
    }

    fn key_of(viewer: &str, exp: u64) -> ViewerKey {
        crate::auth::CameraSecret::from_bytes([7; 32]).viewer_key("cam1", viewer, exp)
    }

    fn signed_offer(h: &mut Harness, sid: &SessionId, viewer: &str, sdp: &str) -> Vec<Action> {
        let exp = UNIX_NOW + 3600;
        let auth = OfferAuth {
            viewer: viewer.into(),
            exp,
            mac: key_of(viewer, exp).offer_mac(sid.as_str(), sdp),
        };
        h.viewer(
            sid,
            ViewerInput::Offer {
                sdp: sdp.into(),
                credential: Some(Credential::Signed(auth)),
            },
        )
    }

    #[test]
    fn keyed_offers_without_a_valid_key_leave_nothing_behind() {
        let mut h = keyed(8);
        h.viewer(&sid(1), ViewerInput::Candidate(candidate(1)));
        let refused = h.offer(&sid(1));
        assert_eq!(error_code(&refused, &sid(1)), Some(ErrorCode::Unauthorized));
        assert_eq!(started(&refused, &sid(1)), None);
        assert_eq!(count(&refused), None);
        let revoked = signed_offer(&mut h, &sid(2), "mallory", &sdp("m"));
        assert_eq!(error_code(&revoked, &sid(2)), Some(ErrorCode::Unauthorized));
        // The refused sid kept no state: its early candidates are gone too.
        let admitted = signed_offer(&mut h, &sid(1), "alice", &sdp("a"));
        assert_eq!(started(&admitted, &sid(1)), Some(vec![]));
    }

    #[test]
    fn a_keyed_session_signs_its_answer_and_hangups_and_needs_signed_hangups() {
        let mut h = keyed(8);
        let exp = UNIX_NOW + 3600;
        let key = key_of("alice", exp);
        signed_offer(&mut h, &sid(1), "alice", &sdp("a"));
        let answered = h.peer(&sid(1), PeerReport::Answer("v=0 answer".into()));
        assert_eq!(
            answered,
            vec![Action::Send {
                sid: sid(1),
                message: CameraMessage::Answer {
                    sdp: "v=0 answer".into(),
                    mac: Some(key.answer_mac(sid(1).as_str(), "v=0 answer")),
                },
            }]
        );
        // An attacker's unsigned or wrongly signed hangup changes nothing.
        assert_eq!(h.viewer(&sid(1), ViewerInput::Hangup { mac: None }), vec![]);
        let wrong = key_of("alice", exp + 1).hangup_mac(sid(1).as_str());
        assert_eq!(
            h.viewer(&sid(1), ViewerInput::Hangup { mac: Some(wrong) }),
            vec![]
        );
        // ... and so does a different offer not signed by the session's key.
        let hijack = signed_offer(&mut h, &sid(1), "bob", &sdp("b"));
        assert_eq!(error_code(&hijack, &sid(1)), Some(ErrorCode::Unauthorized));
        assert_eq!(started(&hijack, &sid(1)), None);
        // The owner's signed hangup ends it.
        let mac = key.hangup_mac(sid(1).as_str());
        assert!(closes(
            &h.viewer(&sid(1), ViewerInput::Hangup { mac: Some(mac) }),
            &sid(1)
        ));
        // The camera's own hangups are signed.
        signed_offer(&mut h, &sid(2), "alice", &sdp("c"));
        let timed_out = h.advance(TIMEOUT);
        let signed = timed_out.iter().any(|action| {
            matches!(action, Action::Send { sid: s, message: CameraMessage::Hangup { mac: Some(mac), .. } }
                if *s == sid(2) && *mac == key_of("alice", exp).hangup_mac(sid(2).as_str()))
        });
        assert!(signed, "{timed_out:?}");
    }

    #[test]
    fn only_the_sessions_own_valid_key_restarts_it() {
        let mut h = keyed(8);
        let exp = UNIX_NOW + 3600;
        let first = ice_offer("a", "pwd-a-0123456789abcdef");
        assert!(started(&signed_offer(&mut h, &sid(1), "alice", &first), &sid(1)).is_some());
        h.peer(&sid(1), PeerReport::Answer("v=0 answer".into()));
        h.peer(&sid(1), PeerReport::Connected);
        // Another viewer's valid key, an unsigned offer: refused, nothing restarts.
        let restart = ice_offer("b", "pwd-b-0123456789abcdef");
        let hijack = signed_offer(&mut h, &sid(1), "bob", &restart);
        assert_eq!(error_code(&hijack, &sid(1)), Some(ErrorCode::Unauthorized));
        assert_eq!(restarted(&hijack, &sid(1)), None);
        let unsigned = h.offer_sdp(&sid(1), &restart);
        assert_eq!(
            error_code(&unsigned, &sid(1)),
            Some(ErrorCode::Unauthorized)
        );
        assert_eq!(restarted(&unsigned, &sid(1)), None);
        // The owner restarts, and the restart's answer is signed like the first.
        let own = signed_offer(&mut h, &sid(1), "alice", &restart);
        assert_eq!(restarted(&own, &sid(1)), Some(restart));
        let answered = h.peer(&sid(1), PeerReport::Answer("v=0 answer 2".into()));
        let mac = key_of("alice", exp).answer_mac(sid(1).as_str(), "v=0 answer 2");
        assert!(
            matches!(&answered[..], [Action::Send { message: CameraMessage::Answer { mac: Some(m), .. }, .. }] if *m == mac)
        );
        // Once the owner's key has expired it restarts nothing (the session plays on).
        h.now.unix_s = exp;
        let late = signed_offer(
            &mut h,
            &sid(1),
            "alice",
            &ice_offer("c", "pwd-c-0123456789abcdef"),
        );
        assert_eq!(error_code(&late, &sid(1)), Some(ErrorCode::Unauthorized));
        assert_eq!(restarted(&late, &sid(1)), None);
        assert_eq!(h.core.viewer_count(), 1);
    }

    #[test]
    fn whep_bearer_tokens_and_leaving_by_the_session_url() {
        let mut h = keyed(8);
        let secret = crate::auth::CameraSecret::from_bytes([7; 32]);
        let grant =
            crate::auth::AccessGrant::new(&secret, "cam1", "tv", UNIX_NOW + 60, "http://c/");
        let offer = |token: &str| ViewerInput::Offer {
            sdp: sdp("w"),
            credential: Some(Credential::Bearer(token.into())),
        };
        let refused = h.viewer(&sid(1), offer("tv.1.bad"));
        assert_eq!(error_code(&refused, &sid(1)), Some(ErrorCode::Unauthorized));
        assert!(started(&h.viewer(&sid(2), offer(&grant.whep_token)), &sid(2)).is_some());
        assert!(closes(&h.viewer(&sid(2), ViewerInput::Leave), &sid(2)));
    }

    #[test]
    fn revoking_a_viewer_ends_its_sessions_only() {
        let mut h = keyed(8);
        signed_offer(&mut h, &sid(1), "alice", &sdp("a"));
        signed_offer(&mut h, &sid(2), "bob", &sdp("b"));
        let actions = h.core.set_revoked(&["bob".to_owned()]);
        assert_eq!(hangup_reason(&actions, &sid(2)).as_deref(), Some("revoked"));
        assert!(closes(&actions, &sid(2)));
        assert!(!closes(&actions, &sid(1)));
        let again = signed_offer(&mut h, &sid(3), "bob", &sdp("b2"));
        assert_eq!(error_code(&again, &sid(3)), Some(ErrorCode::Unauthorized));
    }

    #[test]
    fn keys_expire_on_the_unix_clock() {
        let mut h = keyed(8);
        h.now.unix_s = UNIX_NOW + 3600;
        let late = signed_offer(&mut h, &sid(1), "alice", &sdp("a"));
        assert_eq!(error_code(&late, &sid(1)), Some(ErrorCode::Unauthorized));
    }
}
