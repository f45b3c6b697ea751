//! One viewer's peer task: answer the offer, trickle candidates, stream the shared frames
//! and telemetry, and free everything when it ends. It owns its peer connection and
//! carries out what the session core decided; it decides nothing about other sessions,
//! and must never block the manager or other sessions, whatever its viewer does.

use super::core::{EndReason, PeerReport, Refusal};
use super::peer::{
    build_peer, negotiated_extension_id, negotiated_payload_type, MuxRegistration, PeerEvent,
    RtpWriter, ViewerPeer, PLAYOUT_DELAY_URI,
};
use super::timeline::{Phase, Timeline};
use super::SessionContext;
use crate::clock;
use crate::fanout::{
    joining_run, FanOut, PacketizedFrame, Subscription, MIN_FORCED_KEYFRAME_INTERVAL,
};
use crate::signaling::protocol::{ErrorCode, IceCandidate, SessionId};
use crate::snapshot::{data_channel_messages, SnapshotError, SnapshotRequests};
use bytes::BytesMut;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::peer_connection::{
    PeerConnection, RTCIceCandidateInit, RTCIceConnectionState, RTCPeerConnectionState,
    RTCSessionDescription,
};

/// The label of the data channel the viewer opens for telemetry.
pub const TELEMETRY_LABEL: &str = "telemetry";
/// A snapshot's binary messages on the data channel: 16 KiB stays under every browser's
/// SCTP message limit.
const SNAPSHOT_CHUNK_BYTES: usize = 16 * 1024;
/// How long a viewer's snapshot waits for a frame before it is told there is none.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(3);
/// A viewer's data-channel message longer than this is ignored unread.
const MAX_VIEWER_MESSAGE_BYTES: usize = 1024;

/// What a viewer may ask on its data channel.
#[derive(Debug, PartialEq, Eq)]
enum ChannelRequest {
    /// `{"type":"snapshot"}`: a JPEG of the next frame, as a JSON header then binary chunks.
    Snapshot,
}

/// A viewer's data-channel message as a request; anything else (too long, not JSON, an
/// unknown type) is `None` and ignored.
fn parse_channel_request(data: &[u8]) -> Option<ChannelRequest> {
    if data.len() > MAX_VIEWER_MESSAGE_BYTES {
        return None;
    }
    let message: serde_json::Value = serde_json::from_slice(data).ok()?;
    match message.get("type")?.as_str()? {
        "snapshot" => Some(ChannelRequest::Snapshot),
        _ => None,
    }
}

/// Answers the viewer's requests on its data channel, one at a time, until it closes.
async fn serve_channel_requests(channel: Arc<dyn DataChannel>, snapshots: Arc<SnapshotRequests>) {
    while let Some(event) = channel.poll().await {
        let DataChannelEvent::OnMessage(message) = event else {
            continue;
        };
        match parse_channel_request(&message.data) {
            Some(ChannelRequest::Snapshot) => send_snapshot(channel.as_ref(), &snapshots).await,
            None => tracing::debug!(bytes = message.data.len(), "ignored a data-channel message"),
        }
    }
}

/// Sends a snapshot (header, then chunks) or `{"type":"snapshot_error","message":…}`.
async fn send_snapshot(channel: &dyn DataChannel, snapshots: &SnapshotRequests) {
    let result = match tokio::time::timeout(SNAPSHOT_WAIT, snapshots.request()).await {
        Ok(Ok(result)) => result,
        _ => Err(SnapshotError::NoFrame),
    };
    let snapshot = match result {
        Ok(snapshot) => snapshot,
        Err(err) => {
            let error = serde_json::json!({"type": "snapshot_error", "message": err.to_string()});
            let _ = channel.send_text(&error.to_string()).await;
            return;
        }
    };
    let (header, chunks) = data_channel_messages(&snapshot, SNAPSHOT_CHUNK_BYTES);
    if channel.send_text(&header).await.is_err() {
        return;
    }
    for chunk in chunks {
        if channel.send(BytesMut::from(&chunk[..])).await.is_err() {
            return;
        }
    }
}
/// A transport that cannot trickle waits this long at most for the camera's candidates.
const GATHER_TIMEOUT: Duration = Duration::from_secs(5);
/// A trickling answer waits this long at most for the host candidates to put them in the
/// answer (they take about a millisecond).
const HOST_CANDIDATES_WAIT: Duration = Duration::from_millis(50);

/// What a peer task tells the manager, in the order it happened.
#[derive(Debug)]
pub(super) enum PeerOutput {
    /// The SDP answer, for the viewer.
    Answer(String),
    /// A local candidate to trickle; `None` once gathering is complete.
    LocalCandidate(Option<IceCandidate>),
    /// A state change for the session core.
    Report(PeerReport),
}

/// What the manager hands a running peer task.
#[derive(Debug)]
pub(super) enum PeerInput {
    /// A candidate the viewer trickled; `None` when it has gathered them all.
    Candidate(Option<IceCandidate>),
    /// An ICE restart offer the core accepted.
    Restart(String),
}

/// One peer task's inputs and outputs.
pub(super) struct PeerTask {
    pub ctx: Arc<SessionContext>,
    pub sid: SessionId,
    pub offer_sdp: String,
    /// When the manager took the offer: the start of the session's [`Timeline`].
    pub offer_received: Instant,
    pub early_candidates: Vec<Option<IceCandidate>>,
    /// The transport cannot trickle (WHEP): gather every candidate into the answer.
    pub gather_first: bool,
    /// The viewer's candidates and ICE restart offers, in the order it sent them (a
    /// restart's candidates must follow its offer).
    pub inbox: mpsc::Receiver<PeerInput>,
    /// Cancelled when the core closes this session.
    pub close: CancellationToken,
    pub output: mpsc::UnboundedSender<(SessionId, PeerOutput)>,
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

/// How a peer task ended: the reason, and a refusal when the offer could not be answered.
pub(super) type PeerEnd = (EndReason, Option<Refusal>);

fn refused(reason: EndReason, code: ErrorCode, message: impl Into<String>) -> PeerEnd {
    (reason, Some(Refusal::new(code, message)))
}

impl PeerTask {
    fn emit(&self, output: PeerOutput) {
        // The manager outlives every peer task; a send error only means it is gone.
        let _ = self.output.send((self.sid.clone(), output));
    }

    /// Runs the session's peer to its end and says why it ended. Resources are released
    /// before this returns.
    pub async fn run(mut self) -> PeerEnd {
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let peer = match build_peer(&self.ctx.peer_settings, events_tx).await {
            Ok(peer) => peer,
            Err(err) => {
                tracing::error!("cannot create peer connection: {err}");
                return refused(
                    EndReason::Failed,
                    ErrorCode::Internal,
                    "camera could not create a peer connection",
                );
            }
        };
        let connection = Arc::clone(&peer.connection);
        let end = self
            .negotiate_and_stream(&connection, &peer, &mut events)
            .await;
        if let Err(err) = connection.close().await {
            tracing::debug!("closing peer connection: {err}");
        }
        end
    }

    /// Answers the offer; returns the negotiated payload type and the answer as sent, or
    /// how the session ends.
    async fn answer(
        &mut self,
        connection: &Arc<dyn PeerConnection>,
        mux: Option<&MuxRegistration>,
        gathering_started: &watch::Receiver<bool>,
        events: &mut mpsc::UnboundedReceiver<PeerEvent>,
        timeline: &mut Timeline,
    ) -> Result<(u8, String), PeerEnd> {
        let offer = RTCSessionDescription::offer(self.offer_sdp.clone()).map_err(|err| {
            refused(
                EndReason::BadOffer,
                ErrorCode::BadRequest,
                format!("invalid offer: {err}"),
            )
        })?;
        if let Err(err) = connection.set_remote_description(offer).await {
            crate::warn_throttled!("rejecting offer: {err}");
            return Err(refused(
                EndReason::BadOffer,
                ErrorCode::BadRequest,
                format!("offer rejected: {err}"),
            ));
        }
        let answer = connection.create_answer(None).await.map_err(|err| {
            crate::warn_throttled!("cannot answer offer: {err}");
            refused(
                EndReason::BadOffer,
                ErrorCode::BadRequest,
                format!("cannot answer this offer: {err}"),
            )
        })?;
        let mut answer_sdp = answer.sdp.clone();
        if let Some(mux) = mux {
            mux.register_local_description(&answer_sdp);
        }
        if let Err(err) = connection.set_local_description(answer).await {
            tracing::error!("set_local_description: {err}");
            return Err(refused(
                EndReason::Failed,
                ErrorCode::Internal,
                "camera could not apply its answer",
            ));
        }
        let Some(payload_type) = negotiated_payload_type(connection).await else {
            return Err(refused(
                EndReason::BadOffer,
                ErrorCode::BadRequest,
                "offer has no H.264 video the camera can send (needs profile 42e01f, packetization-mode=1)",
            ));
        };
        if self.gather_first {
            self.wait_for_gathering(events).await;
        } else {
            // The host candidates go in the answer: a viewer that learned the camera's
            // address from its first check instead (faster than a trickled candidate over
            // the broker) files it as peer-reflexive, which webrtc-rs viewers will not
            // nominate for a second. The others still trickle.
            let mut started = gathering_started.clone();
            let _ = tokio::time::timeout(HOST_CANDIDATES_WAIT, started.wait_for(|s| *s)).await;
        }
        if let Some(description) = connection.local_description().await {
            answer_sdp = description.sdp;
        }
        // The answer goes out before any local candidate, so the viewer can apply them.
        self.emit(PeerOutput::Answer(answer_sdp.clone()));
        timeline.log(Phase::AnswerPublished);
        for candidate in std::mem::take(&mut self.early_candidates) {
            add_remote_candidate(connection, candidate).await;
        }
        tracing::info!(payload_type, "answered offer");
        Ok((payload_type, answer_sdp))
    }

    /// Waits (bounded) until every local candidate is known; they end up in the answer.
    async fn wait_for_gathering(&self, events: &mut mpsc::UnboundedReceiver<PeerEvent>) {
        let gathered = async {
            while let Some(event) = events.recv().await {
                if let PeerEvent::LocalCandidate(None) = event {
                    return;
                }
            }
        };
        if tokio::time::timeout(GATHER_TIMEOUT, gathered)
            .await
            .is_err()
        {
            tracing::warn!(
                "candidate gathering took over {GATHER_TIMEOUT:?}; answering with what was found"
            );
        }
    }

    async fn negotiate_and_stream(
        &mut self,
        connection: &Arc<dyn PeerConnection>,
        peer: &ViewerPeer,
        events: &mut mpsc::UnboundedReceiver<PeerEvent>,
    ) -> PeerEnd {
        let (track, ssrc) = (&peer.track, peer.ssrc);
        let mut timeline = Timeline::new(self.offer_received);
        timeline.log(Phase::OfferReceived);
        // Subscribing asks the encoder for a keyframe now, so that it is ready when the
        // viewer has connected rather than a frame interval and an encode after.
        let mut subscription = Some(self.ctx.fanout.subscribe());
        // The candidates in the answer are not trickled again.
        let (payload_type, answer_sdp) = match self
            .answer(
                connection,
                peer.mux.as_ref(),
                &peer.gathering_started,
                events,
                &mut timeline,
            )
            .await
        {
            Ok(answered) => answered,
            Err(end) => return end,
        };
        // Only for a viewer whose offer has the extension (browsers' do).
        let playout_delay = match self.ctx.peer_settings.playout_delay {
            Some(delay) => negotiated_extension_id(connection, PLAYOUT_DELAY_URI)
                .await
                .map(|id| (id, delay)),
            None => None,
        };
        let mut connected = false;
        let mut media: Option<JoinHandle<()>> = None;
        let mut telemetry_channel: Option<Arc<dyn DataChannel>> = None;
        let mut channel_requests: Option<JoinHandle<()>> = None;
        let mut telemetry = self.ctx.telemetry.clone();
        let close = self.close.clone();
        let end = loop {
            tokio::select! {
                _ = close.cancelled() => break (EndReason::Closed, None),
                input = self.inbox.recv() => match input {
                    Some(PeerInput::Candidate(candidate)) => add_remote_candidate(connection, candidate).await,
                    Some(PeerInput::Restart(offer_sdp)) => {
                        let report = match restart_ice(connection, peer.mux.as_ref(), offer_sdp).await {
                            Ok(answer_sdp) => PeerOutput::Answer(answer_sdp),
                            Err(refusal) => PeerOutput::Report(PeerReport::RestartFailed(refusal)),
                        };
                        self.emit(report);
                    }
                    None => break (EndReason::Shutdown, None),
                },
                event = events.recv() => match event {
                    Some(PeerEvent::LocalCandidate(candidate)) => {
                        // A non-trickling transport already has them all in the answer, and
                        // the host candidates are in every answer.
                        let in_answer = candidate.as_ref().is_some_and(|c| {
                            answer_sdp.contains(&format!("a={}\r\n", c.candidate))
                        });
                        if !self.gather_first && !in_answer {
                            self.emit(PeerOutput::LocalCandidate(candidate.map(protocol_candidate)));
                        }
                    }
                    Some(PeerEvent::IceState(state)) => {
                        tracing::debug!("ICE state {state}");
                        if state == RTCIceConnectionState::Connected {
                            timeline.log(Phase::IceConnected);
                        }
                    }
                    Some(PeerEvent::State(state)) => {
                        tracing::debug!("connection state {state}");
                        match state {
                            RTCPeerConnectionState::Connected if !connected => {
                                connected = true;
                                // Connected means ICE and DTLS are both up.
                                timeline.log(Phase::DtlsConnected);
                                tracing::info!("viewer connected");
                                self.emit(PeerOutput::Report(PeerReport::Connected));
                                if let Some(subscription) = subscription.take() {
                                    let writer = RtpWriter::new(ssrc, payload_type);
                                    let writer = match playout_delay {
                                        Some((id, delay)) => writer.with_playout_delay(id, delay),
                                        None => writer,
                                    };
                                    media = Some(self.start_media(subscription, track, writer, timeline.clone()));
                                }
                            }
                            RTCPeerConnectionState::Connected => {
                                // Back after an ICE restart or a blip: frames were lost on
                                // the way, so the viewer's decoder needs a keyframe.
                                tracing::info!("viewer connected again");
                                self.ctx.fanout.keyframes().request();
                            }
                            RTCPeerConnectionState::Failed => {
                                self.emit(PeerOutput::Report(PeerReport::IceFailed));
                            }
                            RTCPeerConnectionState::Closed => {
                                self.emit(PeerOutput::Report(PeerReport::Closed));
                            }
                            _ => {}
                        }
                    }
                    Some(PeerEvent::DataChannel(channel)) => {
                        if channel.label().await.is_ok_and(|label| label == TELEMETRY_LABEL) {
                            if let Some(old) = channel_requests.replace(tokio::spawn(tracing::Instrument::instrument(
                                serve_channel_requests(Arc::clone(&channel), Arc::clone(&self.ctx.snapshots)),
                                tracing::Span::current(),
                            ))) {
                                old.abort();
                            }
                            telemetry_channel = Some(channel);
                        }
                    }
                    None => break (EndReason::Closed, None),
                },
                changed = telemetry.changed() => {
                    if changed.is_err() {
                        continue;
                    }
                    let message = telemetry.borrow_and_update().clone();
                    if let (Some(channel), Some(text)) = (&telemetry_channel, message) {
                        // try_send: a viewer that stopped reading loses telemetry, never stalls us.
                        if let Err(err) = channel.try_send_text(&text).await {
                            tracing::trace!("telemetry not sent: {err}");
                        }
                    }
                },
                _ = async { media.as_mut().expect("guarded").await }, if media.is_some() => {
                    media = None;
                    break (EndReason::Failed, None);
                }
            }
        };
        for task in [media, channel_requests].into_iter().flatten() {
            task.abort();
        }
        end
    }

    /// Feeds the viewer's track from the fan-out and turns its PLI/FIR into keyframe
    /// requests. `subscription` was taken at the offer, so the keyframe it asked for was
    /// encoded while the viewer connected: the run from it is sent first when it is still
    /// fresh. Returns the task; it ends only if the track can no longer be written.
    fn start_media(
        &self,
        mut subscription: Subscription,
        track: &Arc<TrackLocalStaticRTP>,
        writer: RtpWriter,
        timeline: Timeline,
    ) -> JoinHandle<()> {
        let keyframes = Arc::clone(self.ctx.fanout.keyframes());
        let mut sender = MediaSender {
            fanout: Arc::clone(&self.ctx.fanout),
            metrics: Arc::clone(&self.ctx.metrics),
            track: Arc::clone(track),
            writer,
            failures: 0,
            timeline,
        };
        let span = tracing::Span::current();
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                let feedback_track = Arc::clone(&sender.track);
                let feedback_keyframes = Arc::clone(&keyframes);
                let feedback = tokio::spawn(async move {
                    while let Some(event) = feedback_track.poll().await {
                        let TrackLocalEvent::OnRtcpPacket(_) = event else {
                            continue;
                        };
                        // The interceptor forwards only PLI and FIR.
                        feedback_keyframes.request();
                    }
                });
                let mut queued = Vec::new();
                while let Ok(frame) = subscription.frames.try_recv() {
                    queued.push(frame);
                }
                let had_queued = !queued.is_empty();
                let mut awaiting_keyframe = false;
                match joining_run(queued, clock::monotonic_us(), JOINING_RUN_MAX_AGE) {
                    Some(run) => {
                        for frame in run {
                            sender.send(&frame).await;
                        }
                    }
                    None => {
                        // Nothing queued: the keyframe asked for at the offer is still
                        // coming. Stale: ask for a fresh one.
                        if had_queued {
                            keyframes.request();
                        }
                        awaiting_keyframe = true;
                    }
                }
                while let Some(frame) = subscription.frames.recv().await {
                    if awaiting_keyframe && !frame.keyframe {
                        continue;
                    }
                    awaiting_keyframe = false;
                    if !sender.send(&frame).await {
                        tracing::warn!("video track keeps failing; ending session");
                        break;
                    }
                }
                feedback.abort();
            },
            span,
        ))
    }
}

/// How old the newest frame queued for a viewer while it connected may be for the run
/// before it to be sent: a fresh keyframe could not be forced sooner than this anyway.
const JOINING_RUN_MAX_AGE: Duration = MIN_FORCED_KEYFRAME_INTERVAL;

/// Writes one viewer's frames to its track.
struct MediaSender {
    fanout: Arc<FanOut>,
    metrics: Arc<crate::metrics::Metrics>,
    track: Arc<TrackLocalStaticRTP>,
    writer: RtpWriter,
    failures: u32,
    timeline: Timeline,
}

impl MediaSender {
    /// Writes `frame`'s packets; false once the track has failed too often to go on.
    async fn send(&mut self, frame: &PacketizedFrame) -> bool {
        for packet in self.writer.packets(frame) {
            if let Err(err) = self.track.write_rtp(packet).await {
                self.failures += 1;
                tracing::debug!("write_rtp: {err}");
            }
        }
        self.fanout
            .latencies()
            .record_sent(clock::monotonic_us().saturating_sub(frame.published_us));
        let bytes: usize = frame.payloads.iter().map(bytes::Bytes::len).sum();
        self.metrics.bytes_sent.inc_by(bytes as u64);
        self.timeline.log(Phase::FirstRtpSent);
        if frame.keyframe {
            self.timeline.log(Phase::FirstKeyframeSent);
        }
        self.failures <= 1000
    }
}

/// Applies an ICE restart offer to the live connection and answers it. The answerer
/// restarts implicitly when the offer's ICE credentials change (rtc's
/// `set_remote_description`): new local credentials, the same sockets and local candidates
/// (they are in the answer), the same DTLS, track and data channel.
async fn restart_ice(
    connection: &Arc<dyn PeerConnection>,
    mux: Option<&MuxRegistration>,
    offer_sdp: String,
) -> Result<String, Refusal> {
    let rejected = |what: &str, err: webrtc::error::Error| {
        tracing::warn!("ICE restart: {what}: {err}");
        Refusal::new(
            ErrorCode::BadRequest,
            format!("ICE restart rejected: {what}: {err}"),
        )
    };
    let offer =
        RTCSessionDescription::offer(offer_sdp).map_err(|err| rejected("invalid offer", err))?;
    connection
        .set_remote_description(offer)
        .await
        .map_err(|err| rejected("offer not applied", err))?;
    let answer = connection
        .create_answer(None)
        .await
        .map_err(|err| rejected("no answer", err))?;
    let answer_sdp = answer.sdp.clone();
    if let Some(mux) = mux {
        mux.register_local_description(&answer_sdp);
    }
    connection
        .set_local_description(answer)
        .await
        .map_err(|err| rejected("answer not applied", err))?;
    tracing::info!("answered an ICE restart");
    Ok(answer_sdp)
}

/// Gives the peer one of the viewer's candidates.
async fn add_remote_candidate(
    connection: &Arc<dyn PeerConnection>,
    candidate: Option<IceCandidate>,
) {
    // End-of-candidates needs no action: ICE keeps checking what it has.
    let Some(candidate) = candidate else { return };
    if let Err(err) = connection
        .add_ice_candidate(candidate_init(&candidate))
        .await
    {
        tracing::debug!("ignoring remote candidate {:?}: {err}", candidate.candidate);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_well_formed_snapshot_request_is_a_request() {
        assert_eq!(
            parse_channel_request(br#"{"type":"snapshot"}"#),
            Some(ChannelRequest::Snapshot)
        );
        assert_eq!(
            parse_channel_request(br#"{"type":"snapshot","extra":[1,2]}"#),
            Some(ChannelRequest::Snapshot)
        );
        for ignored in [
            &br#"{"type":"reboot"}"#[..],
            br#"{"type":1}"#,
            br#"["snapshot"]"#,
            b"snapshot",
            b"\xff\xfe",
            b"",
        ] {
            assert_eq!(parse_channel_request(ignored), None, "{ignored:?}");
        }
        let padded = format!(r#"{{"type":"snapshot","pad":"{}"}}"#, "x".repeat(2000));
        assert_eq!(parse_channel_request(padded.as_bytes()), None, "too long");
    }
}
