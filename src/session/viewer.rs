//! One viewer's session task: negotiate the offer, trickle candidates, stream the shared
//! frames and telemetry, and free everything when it ends. It owns its peer connection;
//! it must never block the manager or other sessions, whatever its viewer does.

use super::peer::{build_peer, negotiated_payload_type, PeerEvent, RtpWriter};
use super::{EndReason, SessionContext, SessionInput};
use crate::signaling::protocol::{CameraMessage, ErrorCode, IceCandidate, SessionId};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use webrtc::data_channel::DataChannel;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::peer_connection::{
    PeerConnection, RTCIceCandidateInit, RTCPeerConnectionState, RTCSessionDescription,
};

/// The label of the data channel the viewer opens for telemetry.
pub const TELEMETRY_LABEL: &str = "telemetry";

pub(super) struct ViewerSession {
    pub ctx: Arc<SessionContext>,
    pub sid: SessionId,
    pub offer_sdp: String,
    pub early_candidates: Vec<Option<IceCandidate>>,
    pub inbox: mpsc::Receiver<SessionInput>,
}

fn candidate_init(candidate: &IceCandidate) -> RTCIceCandidateInit {
    RTCIceCandidateInit {
        candidate: candidate.candidate.clone(),
        sdp_mid: candidate.sdp_mid.clone(),
        sdp_mline_index: candidate.sdp_mline_index,
        username_fragment: candidate.username_fragment.clone(),
        ..Default::default()
    }
}

fn protocol_candidate(init: RTCIceCandidateInit) -> IceCandidate {
    IceCandidate {
        candidate: init.candidate,
        sdp_mid: init.sdp_mid,
        sdp_mline_index: init.sdp_mline_index,
        username_fragment: init.username_fragment,
    }
}

impl ViewerSession {
    fn send(&self, message: CameraMessage) {
        self.ctx.send_to_viewer(&self.sid, &message);
    }

    fn send_error(&self, code: ErrorCode, message: impl Into<String>) {
        self.send(CameraMessage::Error {
            code,
            message: message.into(),
        });
    }

    /// Runs the session to its end and returns why it ended. Resources are released
    /// before this returns.
    pub async fn run(mut self) -> EndReason {
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let peer = match build_peer(&self.ctx.peer_settings, events_tx).await {
            Ok(peer) => peer,
            Err(err) => {
                tracing::error!(sid = %self.sid, "cannot create peer connection: {err}");
                self.send_error(
                    ErrorCode::Internal,
                    "camera could not create a peer connection",
                );
                return EndReason::Failed;
            }
        };
        let connection = Arc::clone(&peer.connection);
        let reason = self
            .negotiate_and_stream(&connection, &peer.track, peer.ssrc, &mut events)
            .await;
        if let Err(err) = connection.close().await {
            tracing::debug!(sid = %self.sid, "closing peer connection: {err}");
        }
        if reason.tell_viewer() {
            self.send(CameraMessage::Hangup {
                reason: reason.as_str().to_owned(),
            });
        }
        reason
    }

    async fn negotiate_and_stream(
        &mut self,
        connection: &Arc<dyn PeerConnection>,
        track: &Arc<TrackLocalStaticRTP>,
        ssrc: u32,
        events: &mut mpsc::UnboundedReceiver<PeerEvent>,
    ) -> EndReason {
        let offer = match RTCSessionDescription::offer(self.offer_sdp.clone()) {
            Ok(offer) => offer,
            Err(err) => {
                self.send_error(ErrorCode::BadRequest, format!("invalid offer: {err}"));
                return EndReason::BadOffer;
            }
        };
        if let Err(err) = connection.set_remote_description(offer).await {
            tracing::warn!(sid = %self.sid, "rejecting offer: {err}");
            self.send_error(ErrorCode::BadRequest, format!("offer rejected: {err}"));
            return EndReason::BadOffer;
        }
        let answer = match connection.create_answer(None).await {
            Ok(answer) => answer,
            Err(err) => {
                tracing::warn!(sid = %self.sid, "cannot answer offer: {err}");
                self.send_error(
                    ErrorCode::BadRequest,
                    format!("cannot answer this offer: {err}"),
                );
                return EndReason::BadOffer;
            }
        };
        let answer_sdp = answer.sdp.clone();
        if let Err(err) = connection.set_local_description(answer).await {
            tracing::error!(sid = %self.sid, "set_local_description: {err}");
            self.send_error(ErrorCode::Internal, "camera could not apply its answer");
            return EndReason::Failed;
        }
        let Some(payload_type) = negotiated_payload_type(connection).await else {
            self.send_error(
                ErrorCode::BadRequest,
                "offer has no H.264 video the camera can send (needs profile 42e01f, packetization-mode=1)",
            );
            return EndReason::BadOffer;
        };
        // The answer goes out before any local candidate, so the viewer can apply them.
        self.send(CameraMessage::Answer { sdp: answer_sdp });
        for candidate in std::mem::take(&mut self.early_candidates) {
            self.add_remote_candidate(connection, candidate).await;
        }
        tracing::info!(sid = %self.sid, payload_type, "answered offer");

        let deadline = Instant::now() + self.ctx.connect_timeout;
        let mut connected = false;
        let mut media: Option<JoinHandle<()>> = None;
        let mut telemetry_channel: Option<Arc<dyn DataChannel>> = None;
        let mut telemetry = self.ctx.telemetry.clone();
        let mut camera = self.ctx.camera_available.clone();
        let reason = loop {
            tokio::select! {
                input = self.inbox.recv() => match input {
                    Some(SessionInput::Candidate(candidate)) => {
                        self.add_remote_candidate(connection, candidate).await;
                    }
                    Some(SessionInput::Hangup) => break EndReason::ViewerHangup,
                    Some(SessionInput::Shutdown) => break EndReason::Shutdown,
                    None => break EndReason::Shutdown,
                },
                event = events.recv() => match event {
                    Some(PeerEvent::LocalCandidate(candidate)) => {
                        self.send(CameraMessage::Candidate(candidate.map(protocol_candidate)));
                    }
                    Some(PeerEvent::State(state)) => {
                        tracing::debug!(sid = %self.sid, "connection state {state}");
                        match state {
                            RTCPeerConnectionState::Connected if !connected => {
                                connected = true;
                                tracing::info!(sid = %self.sid, "viewer connected");
                                media = Some(self.start_media(track, ssrc, payload_type));
                            }
                            RTCPeerConnectionState::Failed => break EndReason::IceFailed,
                            RTCPeerConnectionState::Closed => break EndReason::Closed,
                            _ => {}
                        }
                    }
                    Some(PeerEvent::DataChannel(channel)) => {
                        if channel.label().await.is_ok_and(|label| label == TELEMETRY_LABEL) {
                            telemetry_channel = Some(channel);
                        }
                    }
                    None => break EndReason::Closed,
                },
                changed = telemetry.changed() => {
                    if changed.is_err() {
                        continue;
                    }
                    let message = telemetry.borrow_and_update().clone();
                    if let (Some(channel), Some(text)) = (&telemetry_channel, message) {
                        // try_send: a viewer that stopped reading loses telemetry, never stalls us.
                        if let Err(err) = channel.try_send_text(&text).await {
                            tracing::trace!(sid = %self.sid, "telemetry not sent: {err}");
                        }
                    }
                },
                changed = camera.changed() => {
                    if changed.is_ok() && !*camera.borrow_and_update() {
                        tracing::debug!(sid = %self.sid, "camera unavailable; session waits for it");
                    }
                },
                _ = tokio::time::sleep_until(deadline), if !connected => break EndReason::ConnectTimeout,
                _ = async { media.as_mut().expect("guarded").await }, if media.is_some() => {
                    media = None;
                    break EndReason::Failed;
                }
            }
        };
        if let Some(task) = media {
            task.abort();
        }
        reason
    }

    async fn add_remote_candidate(
        &self,
        connection: &Arc<dyn PeerConnection>,
        candidate: Option<IceCandidate>,
    ) {
        // End-of-candidates needs no action: ICE keeps checking what it has.
        let Some(candidate) = candidate else { return };
        if let Err(err) = connection
            .add_ice_candidate(candidate_init(&candidate))
            .await
        {
            tracing::debug!(sid = %self.sid, "ignoring remote candidate {:?}: {err}", candidate.candidate);
        }
    }

    /// Feeds the viewer's track from the fan-out and turns its PLI/FIR into keyframe
    /// requests. Returns the task; it ends only if the track can no longer be written.
    fn start_media(
        &self,
        track: &Arc<TrackLocalStaticRTP>,
        ssrc: u32,
        payload_type: u8,
    ) -> JoinHandle<()> {
        let mut subscription = self.ctx.fanout.subscribe();
        let keyframes = Arc::clone(self.ctx.fanout.keyframes());
        let track = Arc::clone(track);
        let sid = self.sid.clone();
        tokio::spawn(async move {
            let feedback_track = Arc::clone(&track);
            let feedback = tokio::spawn(async move {
                while let Some(event) = feedback_track.poll().await {
                    let TrackLocalEvent::OnRtcpPacket(_) = event else {
                        continue;
                    };
                    // The interceptor forwards only PLI and FIR.
                    keyframes.request();
                }
            });
            let mut writer = RtpWriter::new(ssrc, payload_type);
            let mut failures = 0u32;
            while let Some(frame) = subscription.frames.recv().await {
                for packet in writer.packets(&frame) {
                    if let Err(err) = track.write_rtp(packet).await {
                        failures += 1;
                        tracing::debug!(%sid, "write_rtp: {err}");
                    }
                }
                if failures > 1000 {
                    tracing::warn!(%sid, "video track keeps failing; ending session");
                    break;
                }
            }
            feedback.abort();
        })
    }
}
