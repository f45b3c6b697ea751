//! Peer sessions: one task per viewer, from offer to hangup, and the manager that routes
//! signaling messages to them, enforces `max_viewers` and counts viewers.
//! A session must never outlive its viewer or disturb another session.

pub mod keyframe_requests;
pub mod peer;
mod viewer;

use crate::fanout::FanOut;
use crate::signaling::protocol::{
    parse_viewer_message, CameraMessage, ErrorCode, IceCandidate, SessionId, TopicError, Topics,
    ViewerMessage,
};
use bytes::Bytes;
use peer::PeerSettings;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
pub use viewer::TELEMETRY_LABEL;

/// Candidates kept for a session whose offer has not arrived yet.
const MAX_EARLY_CANDIDATES: usize = 64;
/// How long an ended session id is remembered, so late duplicates are ignored.
const ENDED_SESSION_MEMORY: Duration = Duration::from_secs(120);
/// Messages a session may have waiting before further ones are dropped.
const SESSION_INBOX: usize = 64;

/// An MQTT message for the signaling transport to publish (QoS 1, not retained).
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub topic: String,
    pub payload: String,
}

/// An MQTT message received on one of our session topics.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub topic: String,
    pub payload: Bytes,
}

/// Why a session ended (sent to the viewer as the hangup reason where it applies).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    ViewerHangup,
    ConnectTimeout,
    IceFailed,
    Closed,
    BadOffer,
    Failed,
    Shutdown,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::ViewerHangup => "viewer-hangup",
            EndReason::ConnectTimeout => "connect-timeout",
            EndReason::IceFailed => "ice-failed",
            EndReason::Closed => "closed",
            EndReason::BadOffer => "bad-offer",
            EndReason::Failed => "internal-error",
            EndReason::Shutdown => "shutdown",
        }
    }

    /// The viewer already knows when it hung up itself or its offer was refused.
    fn tell_viewer(self) -> bool {
        !matches!(self, EndReason::ViewerHangup | EndReason::BadOffer)
    }
}

/// Inputs the manager forwards to a live session.
#[derive(Debug)]
enum SessionInput {
    Candidate(Option<IceCandidate>),
    Hangup,
    Shutdown,
}

/// Everything a session needs that is shared by all sessions.
pub struct SessionContext {
    pub peer_settings: PeerSettings,
    pub fanout: Arc<FanOut>,
    pub topics: Topics,
    pub outbox: mpsc::UnboundedSender<Outgoing>,
    /// The latest telemetry message as JSON text, shared by all viewers.
    pub telemetry: watch::Receiver<Option<Arc<str>>>,
    /// False while the camera device is gone.
    pub camera_available: watch::Receiver<bool>,
    pub connect_timeout: Duration,
    /// Changeable at runtime (SIGHUP reload).
    pub max_viewers: AtomicUsize,
}

impl SessionContext {
    fn send_to_viewer(&self, sid: &SessionId, message: &CameraMessage) {
        let outgoing = Outgoing {
            topic: self.topics.to_viewer(sid.as_ref()),
            payload: message.to_json(),
        };
        // The transport outlives every session; a send error only means we are shutting down.
        let _ = self.outbox.send(outgoing);
    }
}

struct LiveSession {
    inbox: mpsc::Sender<SessionInput>,
    offer_sdp: String,
}

struct EarlyCandidates {
    candidates: Vec<Option<IceCandidate>>,
    since: Instant,
}

/// Routes signaling to sessions and owns their lifecycles.
pub struct SessionManager {
    ctx: Arc<SessionContext>,
    live: HashMap<SessionId, LiveSession>,
    early: HashMap<SessionId, EarlyCandidates>,
    ended: HashMap<SessionId, Instant>,
    tasks: JoinSet<(SessionId, EndReason)>,
    viewers: watch::Sender<usize>,
}

impl SessionManager {
    pub fn new(ctx: Arc<SessionContext>, viewers: watch::Sender<usize>) -> Self {
        Self {
            ctx,
            live: HashMap::new(),
            early: HashMap::new(),
            ended: HashMap::new(),
            tasks: JoinSet::new(),
            viewers,
        }
    }

    /// Runs until `shutdown` turns true, then hangs up every viewer and waits (bounded)
    /// for their sessions to release their resources.
    pub async fn run(
        mut self,
        mut incoming: mpsc::Receiver<Incoming>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut housekeeping = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                message = incoming.recv() => match message {
                    Some(message) => self.handle(message),
                    None => break,
                },
                Some(done) = self.tasks.join_next(), if !self.tasks.is_empty() => {
                    match done {
                        Ok((sid, reason)) => self.session_ended(sid, reason),
                        Err(err) => tracing::error!("a session task failed: {err}"),
                    }
                },
                _ = housekeeping.tick() => self.expire(),
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        break;
                    }
                }
            }
        }
        self.shutdown().await;
    }

    async fn shutdown(&mut self) {
        for session in self.live.values() {
            let _ = session.inbox.try_send(SessionInput::Shutdown);
        }
        let drain = async {
            while let Some(done) = self.tasks.join_next().await {
                if let Ok((sid, reason)) = done {
                    tracing::info!(sid = %sid, reason = reason.as_str(), "session ended");
                }
            }
        };
        if tokio::time::timeout(Duration::from_secs(2), drain)
            .await
            .is_err()
        {
            tracing::warn!("sessions did not end within 2 s; aborting them");
            self.tasks.abort_all();
        }
        self.live.clear();
        self.viewers.send_replace(0);
    }

    fn reply_error(&self, sid: &SessionId, code: ErrorCode, message: impl Into<String>) {
        self.ctx.send_to_viewer(
            sid,
            &CameraMessage::Error {
                code,
                message: message.into(),
            },
        );
    }

    fn handle(&mut self, message: Incoming) {
        let sid = match self.ctx.topics.parse_to_camera(&message.topic) {
            Ok(sid) => sid,
            Err(TopicError::NotASessionTopic { .. }) => return,
            Err(err) => {
                tracing::warn!(topic = %message.topic, "ignoring message: {err}");
                return;
            }
        };
        let parsed = match parse_viewer_message(&message.payload) {
            Ok(parsed) => parsed,
            Err(err) => {
                tracing::warn!(sid = %sid, "bad message from viewer: {err}");
                self.reply_error(&sid, err.code(), err.to_string());
                return;
            }
        };
        match parsed {
            ViewerMessage::Offer { sdp } => self.offer(sid, sdp),
            ViewerMessage::Candidate(candidate) => self.candidate(sid, candidate),
            ViewerMessage::Hangup => {
                if let Some(session) = self.live.get(&sid) {
                    let _ = session.inbox.try_send(SessionInput::Hangup);
                }
                // Hangups for unknown or ended sessions are normal (QoS 1 duplicates, last wills).
                self.early.remove(&sid);
            }
        }
    }

    fn offer(&mut self, sid: SessionId, sdp: String) {
        if let Some(session) = self.live.get(&sid) {
            if session.offer_sdp != sdp {
                self.reply_error(
                    &sid,
                    ErrorCode::BadRequest,
                    "session already has an offer; use a new session id",
                );
            }
            // An identical offer is a QoS 1 duplicate: already being answered.
            return;
        }
        if self.ended.contains_key(&sid) {
            self.reply_error(
                &sid,
                ErrorCode::BadRequest,
                "this session has ended; use a new session id",
            );
            return;
        }
        if !*self.ctx.camera_available.borrow() {
            self.reply_error(
                &sid,
                ErrorCode::Unavailable,
                "the camera is unavailable right now; try again later",
            );
            return;
        }
        let max_viewers = self.ctx.max_viewers.load(Ordering::Relaxed);
        if self.live.len() >= max_viewers {
            tracing::info!(sid = %sid, max = max_viewers, "refusing viewer: busy");
            self.reply_error(
                &sid,
                ErrorCode::Busy,
                format!("the camera already has its maximum of {max_viewers} viewers"),
            );
            return;
        }
        let early_candidates = self
            .early
            .remove(&sid)
            .map(|e| e.candidates)
            .unwrap_or_default();
        let (inbox_tx, inbox) = mpsc::channel(SESSION_INBOX);
        self.live.insert(
            sid.clone(),
            LiveSession {
                inbox: inbox_tx,
                offer_sdp: sdp.clone(),
            },
        );
        let session = viewer::ViewerSession {
            ctx: Arc::clone(&self.ctx),
            sid: sid.clone(),
            offer_sdp: sdp,
            early_candidates,
            inbox,
        };
        tracing::info!(sid = %sid, viewers = self.live.len(), "new viewer session");
        self.tasks.spawn(async move { (sid, session.run().await) });
        self.viewers.send_replace(self.live.len());
    }

    fn candidate(&mut self, sid: SessionId, candidate: Option<IceCandidate>) {
        if let Some(session) = self.live.get(&sid) {
            if session
                .inbox
                .try_send(SessionInput::Candidate(candidate))
                .is_err()
            {
                tracing::warn!(sid = %sid, "session inbox full; dropping candidate");
            }
            return;
        }
        if self.ended.contains_key(&sid) {
            return;
        }
        // Candidates may overtake their offer: keep them until it arrives.
        let early = self
            .early
            .entry(sid.clone())
            .or_insert_with(|| EarlyCandidates {
                candidates: Vec::new(),
                since: Instant::now(),
            });
        if early.candidates.len() >= MAX_EARLY_CANDIDATES {
            self.early.remove(&sid);
            self.reply_error(
                &sid,
                ErrorCode::BadRequest,
                "too many candidates before the offer",
            );
            return;
        }
        early.candidates.push(candidate);
    }

    fn session_ended(&mut self, sid: SessionId, reason: EndReason) {
        self.live.remove(&sid);
        self.ended.insert(sid.clone(), Instant::now());
        tracing::info!(sid = %sid, reason = reason.as_str(), viewers = self.live.len(), "session ended");
        self.viewers.send_replace(self.live.len());
    }

    fn expire(&mut self) {
        let now = Instant::now();
        let timeout = self.ctx.connect_timeout;
        let expired: Vec<SessionId> = self
            .early
            .iter()
            .filter(|(_, e)| now.duration_since(e.since) > timeout)
            .map(|(sid, _)| sid.clone())
            .collect();
        for sid in expired {
            self.early.remove(&sid);
            tracing::warn!(sid = %sid, "candidates without an offer expired");
            self.reply_error(
                &sid,
                ErrorCode::BadRequest,
                "no offer received for this session",
            );
        }
        self.ended
            .retain(|_, at| now.duration_since(*at) < ENDED_SESSION_MEMORY);
    }
}
