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
use bytes::Bytes;
use rtc::ice::mdns::MulticastDnsMode;
use rtc::interceptor::Slot;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::media_engine::MIME_TYPE_H264;
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters,
    RTCRtpEncodingParameters, RTCRtpHeaderExtensionCapability, RTCRtpParameters, RtpCodecKind,
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

/// The `playout-delay` RTP header extension (webrtc.org's): the delay range a viewer
/// should keep between receiving and showing a frame.
pub const PLAYOUT_DELAY_URI: &str = "http://www.webrtc.org/experiments/rtp-hdrext/playout-delay";

/// A playout delay range, in the extension's 10 ms units.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlayoutDelay {
    min_10ms: u16,
    max_10ms: u16,
}

impl PlayoutDelay {
    /// The extension's fields are 12 bits of 10 ms.
    const MAX_MS: u32 = 4095 * 10;

    /// From `webrtc.playout_delay_ms`: `[]` (none) or `[min, max]` in ms, multiples of 10.
    pub fn from_config(range_ms: &[u32]) -> Result<Option<PlayoutDelay>, String> {
        let (min, max) = match range_ms {
            [] => return Ok(None),
            [min, max] => (*min, *max),
            _ => return Err(format!("must be [] or [min, max] in ms (got {range_ms:?})")),
        };
        if min > max || max > Self::MAX_MS || min % 10 != 0 || max % 10 != 0 {
            return Err(format!(
                "must be [min, max] with min <= max <= {}, in multiples of 10 ms (got {range_ms:?})",
                Self::MAX_MS
            ));
        }
        Ok(Some(PlayoutDelay {
            min_10ms: (min / 10) as u16,
            max_10ms: (max / 10) as u16,
        }))
    }

    /// The extension's 3 bytes: 12 bits of minimum, then 12 bits of maximum.
    pub fn payload(self) -> [u8; 3] {
        let (min, max) = (self.min_10ms, self.max_10ms);
        [
            (min >> 4) as u8,
            ((min & 0xf) << 4) as u8 | (max >> 8) as u8,
            max as u8,
        ]
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
    /// Offered to viewers whose offer has the extension (`webrtc.playout_delay_ms`).
    pub playout_delay: Option<PlayoutDelay>,
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
    if settings.playout_delay.is_some() {
        media_engine.register_header_extension(
            RTCRtpHeaderExtensionCapability {
                uri: PLAYOUT_DELAY_URI.to_owned(),
            },
            RtpCodecKind::Video,
            None,
        )?;
    }
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
    /// The negotiated id of the playout-delay extension and its payload, put on every
    /// packet: a browser reads it from each frame.
    playout_delay: Option<(u8, Bytes)>,
}

impl RtpWriter {
    pub fn new(ssrc: u32, payload_type: u8) -> Self {
        Self {
            ssrc,
            payload_type,
            sequence_number: rand::random(),
            timestamp_offset: rand::random(),
            playout_delay: None,
        }
    }

    /// Writes `delay` on every packet under the extension id the viewer negotiated.
    pub fn with_playout_delay(mut self, id: u8, delay: PlayoutDelay) -> Self {
        self.playout_delay = Some((id, Bytes::copy_from_slice(&delay.payload())));
        self
    }

    /// The RTP packets of one frame; payloads are reference-counted, not copied.
    pub fn packets(&mut self, frame: &PacketizedFrame) -> Vec<rtp::Packet> {
        let last = frame.payloads.len().saturating_sub(1);
        frame
            .payloads
            .iter()
            .enumerate()
            .map(|(i, payload)| {
                let mut header = rtp::Header {
                    version: 2,
                    marker: i == last,
                    payload_type: self.payload_type,
                    sequence_number: self.sequence_number,
                    timestamp: frame.rtp_timestamp.wrapping_add(self.timestamp_offset),
                    ssrc: self.ssrc,
                    ..Default::default()
                };
                if let Some((id, payload)) = &self.playout_delay {
                    // Cannot fail: a negotiated id (1-14 in a browser's one-byte form, else
                    // two-byte) and 3 bytes fit either form.
                    let _ = header.set_extension(*id, payload.clone());
                }
                self.sequence_number = self.sequence_number.wrapping_add(1);
                rtp::Packet {
                    header,
                    payload: payload.clone(),
                }
            })
            .collect()
    }
}

/// The first of our senders' negotiated parameters `pick` finds something in.
async fn negotiated<T>(
    connection: &Arc<dyn PeerConnection>,
    pick: impl Fn(&RTCRtpParameters) -> Option<T>,
) -> Option<T> {
    for sender in connection.get_senders().await {
        if let Ok(parameters) = sender.get_parameters().await {
            if let Some(found) = pick(&parameters.rtp_parameters) {
                return Some(found);
            }
        }
    }
    None
}

/// The id the viewer gave the header extension `uri`, read from our sender after the
/// answer; `None` when its offer did not have it.
pub async fn negotiated_extension_id(
    connection: &Arc<dyn PeerConnection>,
    uri: &str,
) -> Option<u8> {
    negotiated(connection, |parameters| {
        let extension = parameters.header_extensions.iter().find(|e| e.uri == uri)?;
        u8::try_from(extension.id).ok()
    })
    .await
}

/// The payload type negotiated for our track, read from its sender after the answer.
pub async fn negotiated_payload_type(connection: &Arc<dyn PeerConnection>) -> Option<u8> {
    negotiated(connection, |parameters| {
        let codec = parameters
            .codecs
            .iter()
            .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(MIME_TYPE_H264))?;
        Some(codec.payload_type)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn playout_delay_packs_two_12_bit_fields_of_10_ms() {
        let delay = |range: &[u32]| PlayoutDelay::from_config(range).unwrap().unwrap();
        assert_eq!(delay(&[0, 100]).payload(), [0x00, 0x00, 0x0a]);
        assert_eq!(delay(&[100, 1000]).payload(), [0x00, 0xa0, 0x64]);
        assert_eq!(delay(&[40950, 40950]).payload(), [0xff, 0xff, 0xff]);
        assert_eq!(PlayoutDelay::from_config(&[]), Ok(None));
    }

    #[test]
    fn impossible_playout_delays_are_refused() {
        for range in [
            &[100, 0][..],
            &[0, 40960],
            &[5, 100],
            &[0, 105],
            &[0],
            &[0, 10, 20],
        ] {
            assert!(PlayoutDelay::from_config(range).is_err(), "{range:?}");
        }
    }

    #[test]
    fn every_packet_carries_the_playout_delay_under_the_negotiated_id() {
        let frame = PacketizedFrame {
            payloads: vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")],
            keyframe: true,
            rtp_timestamp: 0,
            capture_us: 0,
            monotonic_us: 0,
            published_us: 0,
            sequence: 0,
        };
        let delay = PlayoutDelay::from_config(&[0, 100]).unwrap().unwrap();
        let mut writer = RtpWriter::new(1, 102).with_playout_delay(7, delay);
        for packet in writer.packets(&frame) {
            assert_eq!(
                packet.header.get_extension(7).as_deref(),
                Some(&[0x00, 0x00, 0x0a][..])
            );
        }
        let mut plain = RtpWriter::new(1, 102);
        assert!(plain.packets(&frame).iter().all(|p| !p.header.extension));
    }
}
