//! Viewer sessions: the session core (every rule, no I/O), the peer task of each viewer,
//! and the manager that connects them to the signaling transports. The manager carries out
//! what the core decides — spawning and closing peers, routing replies to the transport a
//! viewer came through — and decides nothing itself.
//! A session must never outlive its viewer or disturb another session.

pub mod core;
pub mod keyframe_requests;
pub mod offer_check;
pub mod peer;
pub mod timeline;
pub mod udp_mux;
mod viewer;

use self::core::{
    Action, Credential, EndReason, Input, Limits, Now, PeerReport, Refusal, SessionCore,
    ViewerInput,
};
use crate::auth::AccessPolicy;
use crate::fanout::FanOut;
use crate::health::Heartbeat;
use crate::signaling::protocol::{CameraMessage, ErrorCode, IceCandidate, SessionId};
use peer::PeerSettings;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
pub use viewer::TELEMETRY_LABEL;
use viewer::{PeerInput, PeerOutput, PeerTask};

/// Candidates (and restart offers) a live session may have waiting before further ones
/// are dropped.
const SESSION_INBOX: usize = 64;
/// How often the core is told that time has passed (connect timeouts, expiries).
const TICK: Duration = Duration::from_millis(250);
/// How long shutdown waits for peers to hang up and free their resources.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// What a signaling transport hands the session manager.
#[derive(Debug)]
pub enum Signal {
    /// A message from a viewer that trickles over a message transport (MQTT), parsed.
    Viewer {
        sid: SessionId,
        message: ViewerInput,
    },
    /// A request from the WHEP HTTP endpoint.
    Whep(WhepRequest),
}

/// A WHEP request; the manager replies on its channel.
#[derive(Debug)]
pub enum WhepRequest {
    /// A new session from an SDP offer: answered with all the camera's candidates.
    Offer {
        sdp: String,
        /// The `Authorization: Bearer` token, when the player sent one.
        token: Option<String>,
        reply: oneshot::Sender<Result<WhepAnswer, Refusal>>,
    },
    /// Late candidates of the player (a trickle-ice-sdpfrag); false for an unknown session.
    Candidates {
        sid: SessionId,
        candidates: Vec<Option<IceCandidate>>,
        reply: oneshot::Sender<bool>,
    },
    /// The player ends its session; false for an unknown session.
    End {
        sid: SessionId,
        reply: oneshot::Sender<bool>,
    },
}

/// A WHEP session's id and the camera's SDP answer.
#[derive(Debug, Clone)]
pub struct WhepAnswer {
    pub sid: SessionId,
    pub sdp: String,
}

/// A message for a viewer on a message transport (MQTT).
#[derive(Debug, Clone, PartialEq)]
pub struct ToViewer {
    pub sid: SessionId,
    pub message: CameraMessage,
}

/// Everything a peer task needs that is shared by all sessions.
pub struct SessionContext {
    pub peer_settings: PeerSettings,
    pub fanout: Arc<FanOut>,
    /// The latest telemetry message as JSON text, shared by all viewers.
    pub telemetry: watch::Receiver<Option<Arc<str>>>,
    /// Where a viewer's `{"type":"snapshot"}` on its data channel asks for a JPEG.
    pub snapshots: Arc<crate::snapshot::SnapshotRequests>,
    /// What `/metrics` reports: sessions, refusals, bytes sent.
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// What the manager follows while it runs.
pub struct ManagerInputs {
    pub signals: mpsc::Receiver<Signal>,
    /// `webrtc.max_viewers`; changes apply at once (configuration reload).
    pub max_viewers: watch::Receiver<usize>,
    /// False while the camera device is gone.
    pub camera_available: watch::Receiver<bool>,
    /// `auth.revoked`; a change ends the revoked viewers' sessions (configuration reload).
    pub revoked: watch::Receiver<Vec<String>>,
    /// Hangs up everyone and ends the manager.
    pub stop: CancellationToken,
    /// The session core's proof of life for the watchdog, beaten on every tick.
    pub heartbeat: Heartbeat,
}

/// A running peer task, as the manager holds it.
struct PeerHandle {
    /// Candidates and ICE restart offers, in the order the viewer sent them.
    inbox: mpsc::Sender<PeerInput>,
    close: CancellationToken,
    /// Why the core closed it, for the log.
    close_reason: Option<EndReason>,
}

/// A WHEP session's pending HTTP response: it takes the answer (or refusal) once.
type WhepReply = Option<oneshot::Sender<Result<WhepAnswer, Refusal>>>;

/// Connects the session core to the transports and the peer tasks.
pub struct SessionManager {
    core: SessionCore,
    ctx: Arc<SessionContext>,
    peers: HashMap<SessionId, PeerHandle>,
    /// WHEP sessions; every other session id belongs to the message transport.
    whep: HashMap<SessionId, WhepReply>,
    tasks: JoinSet<viewer::PeerEnd>,
    task_sessions: HashMap<tokio::task::Id, SessionId>,
    peer_output_tx: mpsc::UnboundedSender<(SessionId, PeerOutput)>,
    peer_output: mpsc::UnboundedReceiver<(SessionId, PeerOutput)>,
    to_viewers: mpsc::UnboundedSender<ToViewer>,
    viewers: watch::Sender<usize>,
    /// Session tasks that panicked (or were aborted) rather than ending.
    failed_tasks: u64,
    /// Since when no session task runs, until the freed memory went back to the system.
    idle_since: Option<std::time::Instant>,
}

impl SessionManager {
    /// `to_viewers` carries replies to the message transport; `viewers` the viewer count.
    /// `access` is `None` in open mode.
    pub fn new(
        ctx: Arc<SessionContext>,
        limits: Limits,
        access: Option<AccessPolicy>,
        to_viewers: mpsc::UnboundedSender<ToViewer>,
        viewers: watch::Sender<usize>,
    ) -> Self {
        let (peer_output_tx, peer_output) = mpsc::unbounded_channel();
        Self {
            core: SessionCore::new(limits, access),
            ctx,
            peers: HashMap::new(),
            whep: HashMap::new(),
            tasks: JoinSet::new(),
            task_sessions: HashMap::new(),
            peer_output_tx,
            peer_output,
            to_viewers,
            viewers,
            failed_tasks: 0,
            idle_since: None,
        }
    }

    /// Runs until `stop` is cancelled or every transport is gone, then hangs up every
    /// viewer and waits (bounded) for their peers to free their resources.
    pub async fn run(mut self, inputs: ManagerInputs) {
        let ManagerInputs {
            mut signals,
            mut max_viewers,
            mut camera_available,
            mut revoked,
            stop,
            heartbeat,
        } = inputs;
        self.core.set_max_viewers(*max_viewers.borrow_and_update());
        self.apply(Input::Camera {
            available: *camera_available.borrow_and_update(),
        });
        let mut ticks = tokio::time::interval(TICK);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                // Peer output first: an answer must reach its route before its task's end.
                biased;
                Some((sid, output)) = self.peer_output.recv() => self.peer_output(sid, output),
                Some(done) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => self.task_done(done),
                signal = signals.recv() => match signal {
                    Some(signal) => self.signal(signal),
                    None => break,
                },
                _ = ticks.tick() => {
                    heartbeat.beat();
                    self.apply(Input::Tick);
                    self.trim_memory_once_idle();
                }
                Ok(()) = camera_available.changed() => {
                    let available = *camera_available.borrow_and_update();
                    // The pipeline logs the camera's fault once; sessions just wait for it.
                    self.apply(Input::Camera { available });
                },
                Ok(()) = max_viewers.changed() => {
                    self.core.set_max_viewers(*max_viewers.borrow_and_update());
                },
                Ok(()) = revoked.changed() => {
                    let revoked = revoked.borrow_and_update().clone();
                    for action in self.core.set_revoked(&revoked) {
                        self.carry_out(action);
                    }
                },
                _ = stop.cancelled() => break,
            }
        }
        self.shutdown().await;
    }

    async fn shutdown(&mut self) {
        self.apply(Input::Shutdown);
        let drain = async {
            while !self.tasks.is_empty() {
                tokio::select! {
                    biased;
                    Some((sid, output)) = self.peer_output.recv() => self.peer_output(sid, output),
                    Some(done) = self.tasks.join_next_with_id() => self.task_done(done),
                }
            }
        };
        if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
            tracing::warn!("sessions did not end within {SHUTDOWN_GRACE:?}; aborting them");
            self.tasks.abort_all();
        }
        self.viewers.send_replace(0);
    }

    /// Feeds the core and carries out what it decides.
    fn apply(&mut self, input: Input) {
        let actions = self.core.handle(Now::real(), input);
        for action in actions {
            self.carry_out(action);
        }
        self.ctx
            .metrics
            .pending_sessions
            .set(self.core.pending_count() as i64);
    }

    fn carry_out(&mut self, action: Action) {
        match action {
            Action::Send { sid, message } => {
                if let CameraMessage::Error { code, .. } = &message {
                    self.ctx.metrics.offer_rejected(code.as_str());
                }
                self.send(sid, message)
            }
            Action::StartPeer {
                sid,
                offer_sdp,
                candidates,
            } => self.start_peer(sid, offer_sdp, candidates),
            Action::RestartPeer { sid, offer_sdp } => {
                if let Some(peer) = self.peers.get(&sid) {
                    tracing::info!(%sid, "ICE restart requested by the viewer");
                    if peer.inbox.try_send(PeerInput::Restart(offer_sdp)).is_err() {
                        // The core waits for an answer that will not come; the page falls
                        // back to a new session.
                        crate::warn_throttled!(%sid, "session inbox full; dropping an ICE restart");
                    }
                }
            }
            Action::AddCandidate { sid, candidate } => {
                if let Some(peer) = self.peers.get(&sid) {
                    if peer
                        .inbox
                        .try_send(PeerInput::Candidate(candidate))
                        .is_err()
                    {
                        crate::warn_throttled!(%sid, "session inbox full; dropping candidate");
                    }
                }
            }
            Action::ClosePeer { sid, reason } => {
                if let Some(peer) = self.peers.get_mut(&sid) {
                    // The first reason stands: a viewer that answers the camera's hangup
                    // with its own, while the peer is still closing, did not end it.
                    peer.close_reason.get_or_insert(reason);
                    peer.close.cancel();
                }
            }
            Action::ViewerCount(count) => {
                self.viewers.send_replace(count);
                self.ctx.metrics.viewers.set(count as i64);
            }
        }
    }

    /// A few seconds after the last session ended (its peer's internal tasks free their
    /// buffers after it), hands the memory freed back to the system once: glibc keeps
    /// freed heap in its arenas, so a board's RSS would otherwise stay at its busiest.
    fn trim_memory_once_idle(&mut self) {
        const SETTLE: Duration = Duration::from_secs(5);
        if !self.tasks.is_empty() {
            self.idle_since = Some(std::time::Instant::now());
            return;
        }
        if let Some(since) = self.idle_since {
            if since.elapsed() >= SETTLE {
                self.idle_since = None;
                tokio::task::spawn_blocking(return_freed_memory);
            }
        }
    }

    /// Routes a message to the transport its viewer came through.
    fn send(&mut self, sid: SessionId, message: CameraMessage) {
        match self.whep.get_mut(&sid) {
            None => {
                // The transport outlives every session; a send error only means shutdown.
                let _ = self.to_viewers.send(ToViewer { sid, message });
            }
            Some(reply) => {
                let result = match message {
                    CameraMessage::Answer { sdp, .. } => Ok(WhepAnswer {
                        sid: sid.clone(),
                        sdp,
                    }),
                    CameraMessage::Error { code, message } => Err(Refusal { code, message }),
                    // A WHEP player learns of the end from ICE; candidates are in the answer.
                    _ => return,
                };
                if let Some(reply) = reply.take() {
                    let _ = reply.send(result);
                }
            }
        }
    }

    fn start_peer(
        &mut self,
        sid: SessionId,
        offer_sdp: String,
        early_candidates: Vec<Option<IceCandidate>>,
    ) {
        let (inbox_tx, inbox) = mpsc::channel(SESSION_INBOX);
        let close = CancellationToken::new();
        let gather_first = self.whep.contains_key(&sid);
        let task = PeerTask {
            ctx: Arc::clone(&self.ctx),
            sid: sid.clone(),
            offer_sdp,
            offer_received: std::time::Instant::now(),
            early_candidates,
            gather_first,
            inbox,
            close: close.clone(),
            output: self.peer_output_tx.clone(),
        };
        let transport = if gather_first { "whep" } else { "mqtt" };
        let span = tracing::info_span!("session", %sid);
        let handle = self.tasks.spawn(task.run().instrument(span));
        let task = handle.id();
        tracing::info!(
            %sid,
            transport,
            viewers = self.core.viewer_count(),
            pending = self.core.pending_count(),
            "new viewer session"
        );
        self.task_sessions.insert(task, sid.clone());
        self.peers.insert(
            sid,
            PeerHandle {
                inbox: inbox_tx,
                close,
                close_reason: None,
            },
        );
    }

    fn peer_output(&mut self, sid: SessionId, output: PeerOutput) {
        match output {
            PeerOutput::Answer(sdp) => self.apply(Input::Peer {
                sid,
                report: PeerReport::Answer(sdp),
            }),
            PeerOutput::LocalCandidate(candidate) => {
                self.send(sid, CameraMessage::Candidate(candidate));
            }
            PeerOutput::Report(report) => self.apply(Input::Peer { sid, report }),
        }
    }

    /// A peer task finished (or panicked): its slot is freed either way.
    fn task_done(
        &mut self,
        done: Result<(tokio::task::Id, viewer::PeerEnd), tokio::task::JoinError>,
    ) {
        let (task, (reason, refusal)) = match done {
            Ok(finished) => finished,
            Err(err) => {
                self.failed_tasks += 1;
                let failed = self.failed_tasks;
                tracing::error!(failed, "a session task failed: {err}; freeing its slot");
                let refusal = Refusal::new(ErrorCode::Internal, "the camera's session failed");
                (err.id(), (EndReason::Failed, Some(refusal)))
            }
        };
        let Some(sid) = self.task_sessions.remove(&task) else {
            return;
        };
        let handle = self.peers.remove(&sid);
        let logged = handle.and_then(|h| h.close_reason).unwrap_or(reason);
        self.apply(Input::Peer {
            sid: sid.clone(),
            report: PeerReport::Ended { reason, refusal },
        });
        self.forget_whep_route_if_ended(&sid);
        self.ctx.metrics.session_ended(logged.as_str());
        tracing::info!(%sid, reason = logged.as_str(), viewers = self.core.viewer_count(), "session ended");
        debug_assert!(!self.peers.contains_key(&sid));
    }

    /// Drops a WHEP session's route once the core no longer holds the session.
    fn forget_whep_route_if_ended(&mut self, sid: &SessionId) {
        if !self.core.has_session(sid) {
            self.whep.remove(sid);
        }
    }

    fn signal(&mut self, signal: Signal) {
        match signal {
            Signal::Viewer { sid, message } => {
                if self.whep.contains_key(&sid) {
                    return; // a WHEP session's id, guessed on another transport
                }
                if let ViewerInput::Invalid(refusal) = &message {
                    crate::warn_throttled!(%sid, "bad message from viewer: {}", refusal.message);
                }
                self.apply(Input::Viewer { sid, message });
            }
            Signal::Whep(request) => self.whep_request(request),
        }
    }

    fn whep_request(&mut self, request: WhepRequest) {
        match request {
            WhepRequest::Offer { sdp, token, reply } => {
                let sid = new_whep_session_id();
                self.whep.insert(sid.clone(), Some(reply));
                self.apply(Input::Viewer {
                    sid: sid.clone(),
                    message: ViewerInput::Offer {
                        sdp,
                        credential: token.map(Credential::Bearer),
                    },
                });
                // A refused offer left no session: its route goes with it.
                self.forget_whep_route_if_ended(&sid);
            }
            WhepRequest::Candidates {
                sid,
                candidates,
                reply,
            } => {
                let known = self.whep.contains_key(&sid) && self.core.has_session(&sid);
                if known {
                    for candidate in candidates {
                        self.apply(Input::Viewer {
                            sid: sid.clone(),
                            message: ViewerInput::Candidate(candidate),
                        });
                    }
                }
                let _ = reply.send(known);
            }
            WhepRequest::End { sid, reply } => {
                let known = self.whep.contains_key(&sid) && self.core.has_session(&sid);
                if known {
                    // The unguessable session URL is the proof of ownership.
                    self.apply(Input::Viewer {
                        sid,
                        message: ViewerInput::Leave,
                    });
                }
                let _ = reply.send(known);
            }
        }
    }
}

/// An unguessable session id for a WHEP resource URL: 24 random alphanumeric characters
/// (about 143 bits), a valid protocol session id.
fn new_whep_session_id() -> SessionId {
    use rand::distr::{Alphanumeric, SampleString};
    let id = Alphanumeric.sample_string(&mut rand::rng(), 24);
    SessionId::parse(&id).expect("alphanumeric ids of 24 characters are valid session ids")
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn return_freed_memory() {
    // SAFETY: malloc_trim only walks glibc's own arenas under their locks; it takes no
    // pointer and may be called from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn return_freed_memory() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whep_session_ids_are_valid_and_distinct() {
        let a = new_whep_session_id();
        let b = new_whep_session_id();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 24);
    }
}
