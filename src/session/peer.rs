//! One viewer's WebRTC peer connection: an H.264-only media engine, the keyframe-request
//! interceptor, one local video track, and the handler that turns callbacks into events.
//! It must never encode or copy frames: it only wraps shared RTP payloads in headers.

use super::core::IceCredentials;
use super::keyframe_requests::{KeyframeRequestForwarder, SLOT};
use super::udp_mux::{ConnectionId, UdpMux};
use crate::clock;
use crate::encode::H264_FMTP;
use crate::fanout::PacketizedFrame;
use crate::ice::IceServers;
use rtc::ice::mdns::MulticastDnsMode;
use rtc::interceptor::Slot;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::media_engine::MIME_TYPE_H264;
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters,
    RTCRtpEncodingParameters, RtpCodecKind,
};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use webrtc::data_channel::DataChannel;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::peer_connection::{
    register_default_interceptors, MediaEngine, PeerConnection, PeerConnectionBuilder,
    PeerConnectionEventHandler, RTCConfigurationBuilder, RTCIceCandidateInit,
    RTCIceConnectionState, RTCIceGatheringState, RTCIceServer, RTCPeerConnectionIceEvent,
    RTCPeerConnectionState, Registry, SettingEngineBuilder,
};

/// Dynamic payload type we offer for H.264; the negotiated one is read back after the answer.
const H264_PAYLOAD_TYPE: u8 = 102;
/// ICE keeps a path this long without traffic before calling it disconnected, then
/// gives it this long more before declaring failure and ending the session.
const ICE_DISCONNECTED_TIMEOUT: Duration = Duration::from_secs(5);
const ICE_FAILED_TIMEOUT: Duration = Duration::from_secs(10);
const ICE_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);

/// What the peer connection reports to its session task.
pub enum PeerEvent {
    /// A local candidate to trickle; `None` once gathering is complete.
    LocalCandidate(Option<RTCIceCandidateInit>),
    State(RTCPeerConnectionState),
    /// ICE's own state: connected before DTLS runs over the path it found.
    IceState(RTCIceConnectionState),
    DataChannel(Arc<dyn DataChannel>),
}

struct EventForwarder {
    events: mpsc::UnboundedSender<PeerEvent>,
    /// Set once the first local candidate is known, or gathering ended without one.
    gathering_started: watch::Sender<bool>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for EventForwarder {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        match event.candidate.to_json() {
            Ok(init) => {
                let _ = self.events.send(PeerEvent::LocalCandidate(Some(init)));
                self.gathering_started.send_replace(true);
            }
            Err(err) => tracing::debug!("cannot serialise local candidate: {err}"),
        }
    }

    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self.events.send(PeerEvent::LocalCandidate(None));
            self.gathering_started.send_replace(true);
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let _ = self.events.send(PeerEvent::State(state));
    }

    async fn on_ice_connection_state_change(&self, state: RTCIceConnectionState) {
        let _ = self.events.send(PeerEvent::IceState(state));
    }

    async fn on_data_channel(&self, data_channel: Arc<dyn DataChannel>) {
        let _ = self.events.send(PeerEvent::DataChannel(data_channel));
    }
}

/// The H.264 flavour the encoder produces, and the feedback we honour (NACK, PLI, FIR).
pub fn h264_codec() -> RTCRtpCodec {
    let feedback = |typ: &str, parameter: &str| RTCPFeedback {
        typ: typ.to_owned(),
        parameter: parameter.to_owned(),
    };
    RTCRtpCodec {
        mime_type: MIME_TYPE_H264.to_owned(),
        clock_rate: 90_000,
        channels: 0,
        sdp_fmtp_line: H264_FMTP.to_owned(),
        rtcp_feedback: vec![
            feedback("nack", ""),
            feedback("nack", "pli"),
            feedback("ccm", "fir"),
        ],
    }
}

/// Settings shared by every viewer's connection.
#[derive(Clone)]
pub struct PeerSettings {
    /// Resolved for each connection, so minted TURN credentials are fresh.
    pub ice_servers: Arc<IceServers>,
    pub udp_addrs: Vec<String>,
    /// The shared sockets at `webrtc.udp_port`, when it is set.
    pub udp_mux: Option<Arc<UdpMux>>,
    /// Announced as server-reflexive candidates at each local socket's port.
    pub public_ips: Vec<IpAddr>,
}

/// A connection's place in the ICE UDP mux.
pub struct MuxRegistration {
    mux: Arc<UdpMux>,
    connection: ConnectionId,
}

impl MuxRegistration {
    /// Lets the viewer's checks reach this connection from the first one, before the
    /// connection has sent any check of its own (which would teach the mux the same).
    pub fn register_local_description(&self, sdp: &str) {
        if let Some(ice) = IceCredentials::of_sdp(sdp) {
            self.mux.register_ufrag(self.connection, &ice.ufrag);
        }
    }
}

/// A built connection with its video track, before negotiation.
pub struct ViewerPeer {
    pub connection: Arc<dyn PeerConnection>,
    pub track: Arc<TrackLocalStaticRTP>,
    pub ssrc: u32,
    pub mux: Option<MuxRegistration>,
    /// Becomes true with the first local candidate (host candidates come first, all in
    /// one pass), or when gathering ends without any.
    pub gathering_started: watch::Receiver<bool>,
}

/// Set once mDNS sockets proved impossible here (no multicast-capable interface).
static MDNS_UNAVAILABLE: AtomicBool = AtomicBool::new(false);

/// Builds a viewer's connection. Browsers on a LAN hide their host candidates behind
/// `.local` names, so mDNS queries are on; where the machine cannot open a multicast
/// socket at all, the connection is built without them (peer-reflexive candidates still work).
pub async fn build_peer(
    settings: &PeerSettings,
    events: mpsc::UnboundedSender<PeerEvent>,
) -> Result<ViewerPeer, webrtc::error::Error> {
    if !MDNS_UNAVAILABLE.load(Ordering::Relaxed) {
        match build_peer_with(settings, events.clone(), MulticastDnsMode::QueryOnly).await {
            Ok(peer) => return Ok(peer),
            Err(err) if err.to_string().contains("io error") => {
                MDNS_UNAVAILABLE.store(true, Ordering::Relaxed);
                tracing::warn!(
                    "mDNS unavailable ({err}); viewers' .local candidates will not resolve"
                );
            }
            Err(err) => return Err(err),
        }
    }
    build_peer_with(settings, events, MulticastDnsMode::Disabled).await
}

async fn build_peer_with(
    settings: &PeerSettings,
    events: mpsc::UnboundedSender<PeerEvent>,
    mdns: MulticastDnsMode,
) -> Result<ViewerPeer, webrtc::error::Error> {
    let mut media_engine = MediaEngine::default();
    media_engine.register_codec(
        RTCRtpCodecParameters {
            rtp_codec: h264_codec(),
            payload_type: H264_PAYLOAD_TYPE,
        },
        RtpCodecKind::Video,
    )?;
    let registry = register_default_interceptors(Registry::new(), &mut media_engine)?
        .with(Slot::from(SLOT), KeyframeRequestForwarder::default());
    let setting_engine = SettingEngineBuilder::new()
        .with_multicast_dns_mode(mdns)
        .with_ice_timeouts(
            Some(ICE_DISCONNECTED_TIMEOUT),
            Some(ICE_FAILED_TIMEOUT),
            Some(ICE_KEEPALIVE_INTERVAL),
        )
        .build();
    let ice_servers: Vec<RTCIceServer> = settings
        .ice_servers
        .for_camera(clock::unix_s())
        .into_iter()
        .map(|server| RTCIceServer {
            urls: server.urls,
            username: server.username.unwrap_or_default(),
            credential: server.credential.unwrap_or_default(),
        })
        .collect();
    let (udp_addrs, shared_sockets, mux) = match &settings.udp_mux {
        None => (settings.udp_addrs.clone(), Vec::new(), None),
        Some(udp_mux) => {
            let (connection, sockets) = udp_mux.connection_sockets();
            // A TURN allocation belongs to its 5-tuple, so relaying needs sockets of the
            // session's own; they are outbound only, so nothing more to forward.
            let relays = ice_servers
                .iter()
                .any(|server| server.urls.iter().any(|url| url.starts_with("turn:")));
            let own = if relays {
                settings.udp_addrs.clone()
            } else {
                Vec::new()
            };
            let registration = MuxRegistration {
                mux: Arc::clone(udp_mux),
                connection,
            };
            (own, sockets, Some(registration))
        }
    };
    let (gathering_started, gathering_started_rx) = watch::channel(false);
    let configuration = RTCConfigurationBuilder::new()
        .with_ice_servers(ice_servers)
        .build();
    let connection = PeerConnectionBuilder::new()
        .with_configuration(configuration)
        .with_media_engine(media_engine)
        .with_setting_engine(setting_engine)
        .with_interceptor_registry(registry)
        .with_handler(Arc::new(EventForwarder {
            events,
            gathering_started,
        }))
        .with_udp_addrs(udp_addrs)
        .with_shared_udp_sockets(shared_sockets)
        .with_public_ips(settings.public_ips.clone())
        .build()
        .await?;
    let connection: Arc<dyn PeerConnection> = Arc::new(connection);

    let ssrc = rand::random::<u32>();
    let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
        "peercam".to_owned(),
        format!("video-{ssrc:08x}"),
        "camera".to_owned(),
        RtpCodecKind::Video,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(ssrc),
                ..Default::default()
            },
            codec: h264_codec(),
            ..Default::default()
        }],
    )));
    connection
        .add_track(Arc::clone(&track) as Arc<dyn TrackLocal>)
        .await?;
    Ok(ViewerPeer {
        connection,
        track,
        ssrc,
        mux,
        gathering_started: gathering_started_rx,
    })
}

/// Writes RTP headers for one viewer around the shared payloads of each frame.
pub struct RtpWriter {
    pub ssrc: u32,
    pub payload_type: u8,
    sequence_number: u16,
    timestamp_offset: u32,
}

impl RtpWriter {
    pub fn new(ssrc: u32, payload_type: u8) -> Self {
        Self {
            ssrc,
            payload_type,
            sequence_number: rand::random(),
            timestamp_offset: rand::random(),
        }
    }

    /// The RTP packets of one frame; payloads are reference-counted, not copied.
    pub fn packets(&mut self, frame: &PacketizedFrame) -> Vec<rtp::Packet> {
        let last = frame.payloads.len().saturating_sub(1);
        frame
            .payloads
            .iter()
            .enumerate()
            .map(|(i, payload)| {
                let header = rtp::Header {
                    version: 2,
                    marker: i == last,
                    payload_type: self.payload_type,
                    sequence_number: self.sequence_number,
                    timestamp: frame.rtp_timestamp.wrapping_add(self.timestamp_offset),
                    ssrc: self.ssrc,
                    ..Default::default()
                };
                self.sequence_number = self.sequence_number.wrapping_add(1);
                rtp::Packet {
                    header,
                    payload: payload.clone(),
                }
            })
            .collect()
    }
}

/// The payload type negotiated for our track, read from its sender after the answer.
pub async fn negotiated_payload_type(connection: &Arc<dyn PeerConnection>) -> Option<u8> {
    for sender in connection.get_senders().await {
        if let Ok(parameters) = sender.get_parameters().await {
            if let Some(codec) = parameters
                .rtp_parameters
                .codecs
                .iter()
                .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(MIME_TYPE_H264))
            {
                return Some(codec.payload_type);
            }
        }
    }
    None
}
