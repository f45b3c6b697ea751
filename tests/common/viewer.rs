//! A test viewer: webrtc-rs offerer + openh264 decoder that speaks only the documented
//! signaling protocol (raw JSON over MQTT), decodes every frame, and reads the latency stamp.
//! It gathers on loopback with no ICE servers unless a test gives it a [`PeerNetwork`] (the
//! NAT lab: the servers the camera announces), and reports its selected candidate pair from
//! its own stats ([`selected_pair_in`]). A counting viewer ([`TestViewer::start_counting`])
//! only depacketizes and counts access units and keyframes, for benchmarks with many viewers.

use bytes::Bytes;
use openh264::decoder::Decoder;
use openh264::formats::YUVSource;
use rtc::ice::mdns::MulticastDnsMode;
use rtc::peer_connection::configuration::{RTCConfigurationBuilder, RTCOfferOptions};
use rtc::peer_connection::transport::RTCIceServerTransportProtocol;
use rtc::rtp::codec::h264::H264Packet;
use rtc::rtp::packetizer::Depacketizer;
use rtc::rtp_transceiver::rtp_sender::{RTCRtpHeaderExtensionCapability, RtpCodecKind};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use rtc::statistics::report::{RTCStatsReport, RTCStatsReportEntry};
use rtc::statistics::stats::ice_candidate::RTCIceCandidateStats;
use rtc::statistics::StatsSelector;
use rumqttc::{
    AsyncClient, Event, LastWill, MqttOptions, NetworkOptions, Outgoing, Packet, QoS,
    TlsConfiguration, Transport,
};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    register_default_interceptors, MediaEngine, PeerConnection, PeerConnectionBuilder,
    PeerConnectionEventHandler, RTCIceCandidateInit, RTCIceConnectionState, RTCIceGatheringState,
    RTCIceServer, RTCPeerConnectionIceEvent, RTCPeerConnectionState, RTCSessionDescription,
    Registry, SettingEngineBuilder,
};

/// How a test client reaches its broker: plain MQTT on a loopback port, or TLS with a
/// client certificate and a username and password.
#[derive(Clone)]
pub struct MqttEndpoint {
    pub host: String,
    pub port: u16,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub credentials: Option<(String, String)>,
    /// Connect with the session id as the client id (what the mosquitto ACL recipe's
    /// `%c` patterns need), instead of `viewer-{sid}`.
    pub sid_is_client_id: bool,
    /// MQTT keep-alive. The broker gives up on a silent client after 1.5 times this and
    /// publishes its last will: for a viewer, its hangup.
    pub keep_alive: Duration,
    /// MQTT over a plain WebSocket at this path (as the page connects), instead of TCP.
    pub websocket_path: Option<String>,
    /// A viewer leaves its hangup as its last will (as the page does). Without one, a
    /// viewer that dies tells the camera nothing: only ICE can find out (tests/soak.rs).
    pub hangup_as_last_will: bool,
}

/// TCP_NODELAY, as browsers set on every socket: without it a test client's small
/// messages wait for the broker's delayed ACK (40 ms).
fn no_delay() -> NetworkOptions {
    let mut network = NetworkOptions::new();
    network.set_tcp_nodelay(true);
    network
}

impl MqttEndpoint {
    pub fn plain(port: u16) -> MqttEndpoint {
        MqttEndpoint {
            host: "127.0.0.1".into(),
            port,
            tls: None,
            credentials: None,
            sid_is_client_id: false,
            keep_alive: Duration::from_secs(5),
            websocket_path: None,
            hangup_as_last_will: true,
        }
    }

    fn options(&self, client_id: String) -> MqttOptions {
        let mut options = match &self.websocket_path {
            Some(path) => {
                let url = format!("ws://{}:{}{path}", self.host, self.port);
                let mut options = MqttOptions::new(client_id, url, self.port);
                options.set_transport(Transport::Ws);
                options
            }
            None => MqttOptions::new(client_id, &self.host, self.port),
        };
        options.set_keep_alive(self.keep_alive);
        options.set_max_packet_size(1 << 20, 1 << 20);
        if let Some(tls) = &self.tls {
            options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                Arc::clone(tls),
            )));
        }
        if let Some((username, password)) = &self.credentials {
            options.set_credentials(username, password);
        }
        options
    }
}

/// What the viewer has seen so far.
#[derive(Default, Debug, Clone)]
pub struct ViewerStats {
    /// Access units received whole (up to the RTP marker), decoded or not.
    pub frames_received: u64,
    /// Received access units that hold an IDR picture.
    pub keyframes_received: u64,
    pub frames_decoded: u64,
    pub decode_errors: u64,
    pub width: usize,
    pub height: usize,
    pub first_frame_after_offer: Option<Duration>,
    /// capture-to-decode latency from the stamp, per decoded frame whose stamp was
    /// readable, in ms.
    pub latencies_ms: Vec<i64>,
    /// Decoded frames whose stamp could not be read: too small to carry one, or the bits
    /// decode to a time more than [`STAMP_PLAUSIBLE_MS`] away from now (a misread bit).
    pub unreadable_stamps: u64,
    /// Distinct luma fingerprints (outside the stamp): proves the picture changes.
    pub distinct_pictures: usize,
    pub telemetry: Vec<Value>,
    pub camera_messages: Vec<Value>,
    pub connection_states: Vec<String>,
    /// Answers dropped because their mac did not prove they came from the camera.
    pub rejected_answers: u64,
    /// What happened when, after the offer went out, each the first time: "answer",
    /// "camera candidate", "ice connected", "connected" (DTLS too), "first rtp",
    /// "first decoded". Where a slow first frame spent its time, seen from the viewer.
    pub phases: Vec<(&'static str, Duration)>,
    /// The playout-delay header extension's payload on the first video packet that had it.
    pub playout_delay: Option<Vec<u8>>,
}

impl ViewerStats {
    /// When `phase` first happened after the offer.
    pub fn phase(&self, phase: &str) -> Option<Duration> {
        self.phases
            .iter()
            .find(|(p, _)| *p == phase)
            .map(|(_, at)| *at)
    }
}

/// Reads the documented latency stamp: 48 cells, MSB first, luma sampled at cell centres.
pub fn read_stamp(luma: &[u8], stride: usize, width: usize, height: usize) -> Option<u64> {
    let cell = if height >= 720 { 16 } else { 8 };
    if width < 48 * cell || height < cell {
        return None;
    }
    let mut value = 0u64;
    for bit in 0..48 {
        let (x, y) = (bit * cell + cell / 2, cell / 2);
        let sample = *luma.get(y * stride + x)?;
        value = (value << 1) | u64::from(sample >= 128);
    }
    Some(value)
}

/// How far a read stamp may be from the viewer's clock and still count as read: the
/// camera runs on the same machine, so a larger gap means misread bits (any of the
/// upper 28 of 48 bits is worth more than this).
pub const STAMP_PLAUSIBLE_MS: i64 = 10 * 60 * 1000;

/// Frames the camera encoded per second between two telemetry messages: with one encoder
/// for all viewers it is the frame rate, whatever the number of viewers.
pub fn encoded_per_second(first: &Value, last: &Value) -> f64 {
    let count = |m: &Value| m["video"]["frames_encoded"].as_u64().unwrap();
    let at_ms = |m: &Value| m["ts_ms"].as_u64().unwrap();
    let seconds = (at_ms(last) - at_ms(first)) as f64 / 1000.0;
    (count(last) - count(first)) as f64 / seconds
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// What a viewer's decoder and signaling record, shared between their tasks.
pub struct Shared {
    pub stats: Mutex<ViewerStats>,
    fingerprints: Mutex<HashSet<u64>>,
    pub offer_sent: Mutex<Option<Instant>>,
    /// Each received access unit's RTP timestamp and when its last packet came.
    pub rtp_frames: Mutex<Vec<(Instant, u32)>>,
    /// The id this viewer's offer gave the playout-delay extension.
    pub playout_delay_id: Mutex<Option<u8>>,
}

impl Shared {
    /// Waits until `check` holds on the stats, or panics naming `viewer` after `timeout`.
    pub async fn wait_until(
        &self,
        viewer: &str,
        what: &str,
        timeout: Duration,
        check: impl Fn(&ViewerStats) -> bool,
    ) -> ViewerStats {
        let deadline = Instant::now() + timeout;
        loop {
            let stats = self.stats.lock().unwrap().clone();
            if check(&stats) {
                return stats;
            }
            if Instant::now() > deadline {
                panic!("viewer {viewer}: {what} not reached within {timeout:?}: {stats:#?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Records `phase` the first time it happens (relative to the offer).
    pub fn mark(&self, phase: &'static str) {
        let Some(offer_sent) = *self.offer_sent.lock().unwrap() else {
            return;
        };
        let mut stats = self.stats.lock().unwrap();
        if stats.phase(phase).is_none() {
            stats.phases.push((phase, offer_sent.elapsed()));
        }
    }

    pub fn new() -> Arc<Shared> {
        Arc::new(Shared {
            stats: Mutex::new(ViewerStats::default()),
            fingerprints: Mutex::new(HashSet::new()),
            offer_sent: Mutex::new(None),
            rtp_frames: Mutex::new(Vec::new()),
            playout_delay_id: Mutex::new(None),
        })
    }
}

struct Handler {
    shared: Arc<Shared>,
    client: AsyncClient,
    to_camera: String,
    /// Decode the video ([`decode_track`]) or only count it ([`count_track`]).
    decode: bool,
}

impl Handler {
    async fn send(&self, message: Value) {
        let _ = self
            .client
            .publish(
                &self.to_camera,
                QoS::AtLeastOnce,
                false,
                message.to_string(),
            )
            .await;
    }
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        if let Ok(init) = event.candidate.to_json() {
            self.send(json!({"type": "candidate", "candidate": {
                "candidate": init.candidate, "sdpMid": init.sdp_mid, "sdpMLineIndex": init.sdp_mline_index}}))
                .await;
        }
    }

    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.send(json!({"type": "candidate", "candidate": null}))
                .await;
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        if state == RTCPeerConnectionState::Connected {
            self.shared.mark("connected");
        }
        self.shared
            .stats
            .lock()
            .unwrap()
            .connection_states
            .push(state.to_string());
    }

    async fn on_ice_connection_state_change(&self, state: RTCIceConnectionState) {
        if state == RTCIceConnectionState::Connected {
            self.shared.mark("ice connected");
        }
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        if self.decode {
            decode_track(Arc::clone(&self.shared), track);
        } else {
            count_track(Arc::clone(&self.shared), track);
        }
    }
}

/// Depacketizes `track` into access units and decodes them on a thread of their own.
pub fn decode_track(shared: Arc<Shared>, track: Arc<dyn TrackRemote>) {
    receive_track(shared, track, true);
}

/// Depacketizes `track` into access units and only counts them and their keyframes: what
/// a benchmark's many viewers do, so that the test process does not decode N streams.
pub fn count_track(shared: Arc<Shared>, track: Arc<dyn TrackRemote>) {
    receive_track(shared, track, false);
}

/// Depacketizes `track`, records each access unit (and the playout delay the camera asks
/// for), and hands the units to a decoder thread when `decode`.
fn receive_track(shared: Arc<Shared>, track: Arc<dyn TrackRemote>, decode: bool) {
    let units_tx = decode.then(|| {
        let (units_tx, units_rx) = std::sync::mpsc::channel::<Bytes>();
        let decoded = Arc::clone(&shared);
        std::thread::spawn(move || decode_loop(decoded, units_rx));
        units_tx
    });
    tokio::spawn(async move {
        let mut depacketizer = H264Packet::default();
        let mut access_unit = Vec::new();
        while let Some(event) = track.poll().await {
            let TrackRemoteEvent::OnRtpPacket(packet) = event else {
                continue;
            };
            if let Ok(nals) = depacketizer.depacketize(&packet.payload) {
                access_unit.extend_from_slice(&nals);
            }
            shared.mark("first rtp");
            let playout_delay_id = *shared.playout_delay_id.lock().unwrap();
            if let Some(delay) = playout_delay_id.and_then(|id| packet.header.get_extension(id)) {
                shared
                    .stats
                    .lock()
                    .unwrap()
                    .playout_delay
                    .get_or_insert_with(|| delay.to_vec());
            }
            if !packet.header.marker {
                continue;
            }
            shared
                .rtp_frames
                .lock()
                .unwrap()
                .push((Instant::now(), packet.header.timestamp));
            if access_unit.is_empty() {
                continue;
            }
            record_access_unit(&shared, &access_unit);
            let unit = Bytes::from(std::mem::take(&mut access_unit));
            if let Some(units_tx) = &units_tx {
                if units_tx.send(unit).is_err() {
                    break;
                }
            }
        }
    });
}

/// Counts one whole access unit (Annex-B) and whether it holds an IDR.
fn record_access_unit(shared: &Shared, access_unit: &[u8]) {
    let keyframe = holds_idr(access_unit);
    let mut stats = shared.stats.lock().unwrap();
    stats.frames_received += 1;
    if keyframe {
        stats.keyframes_received += 1;
    }
}

/// True when an Annex-B access unit has a NAL unit of type 5 (IDR slice). Written here, not
/// taken from the agent, so that the viewer checks the stream on its own.
pub fn holds_idr(annex_b: &[u8]) -> bool {
    annex_b
        .windows(4)
        .any(|w| w[..3] == [0, 0, 1] && w[3] & 0x1f == 5)
}

fn decode_loop(shared: Arc<Shared>, units: std::sync::mpsc::Receiver<Bytes>) {
    let mut decoder = Decoder::new().expect("openh264 decoder");
    for unit in units {
        match decoder.decode(&unit) {
            Ok(Some(picture)) => {
                let (width, height) = picture.dimensions();
                let (stride, _, _) = picture.strides();
                let luma = picture.y();
                let stamp = read_stamp(luma, stride, width, height);
                // Fingerprint rows below the stamp so the stamp's change does not count.
                let mut fingerprint = 0u64;
                for y in (height / 8..height).step_by(7) {
                    for x in (0..width).step_by(5) {
                        fingerprint = fingerprint
                            .wrapping_mul(31)
                            .wrapping_add(u64::from(luma[y * stride + x] / 16));
                    }
                }
                let offer_sent = *shared.offer_sent.lock().unwrap();
                let new_picture = shared.fingerprints.lock().unwrap().insert(fingerprint);
                let mut stats = shared.stats.lock().unwrap();
                stats.frames_decoded += 1;
                stats.width = width;
                stats.height = height;
                if new_picture {
                    stats.distinct_pictures += 1;
                }
                if stats.first_frame_after_offer.is_none() {
                    stats.first_frame_after_offer = offer_sent.map(|t| t.elapsed());
                    if let Some(at) = stats.first_frame_after_offer {
                        stats.phases.push(("first decoded", at));
                    }
                }
                match stamp.map(|stamp| unix_ms() - stamp as i64) {
                    Some(latency) if latency.abs() <= STAMP_PLAUSIBLE_MS => {
                        stats.latencies_ms.push(latency)
                    }
                    _ => stats.unreadable_stamps += 1,
                }
            }
            Ok(None) => {}
            Err(_) => shared.stats.lock().unwrap().decode_errors += 1,
        }
    }
}

/// Where a test viewer's peer gathers candidates: the ICE servers it uses and the local
/// addresses it binds.
#[derive(Clone, Debug)]
pub struct PeerNetwork {
    pub ice_servers: Vec<RTCIceServer>,
    pub udp_addrs: Vec<String>,
}

impl PeerNetwork {
    /// Loopback only, no ICE servers: every test but the NAT lab's.
    pub fn loopback() -> PeerNetwork {
        PeerNetwork {
            ice_servers: Vec::new(),
            udp_addrs: vec!["127.0.0.1:0".to_owned()],
        }
    }
}

/// The `ice_servers` of a camera's status as webrtc-rs takes them (`urls` is a string or
/// a list; `username` and `credential` may be absent), as a page passes them to
/// `RTCPeerConnection`.
pub fn ice_servers_from_status(status: &Value) -> Vec<RTCIceServer> {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    status["ice_servers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|server| RTCIceServer {
            urls: match &server["urls"] {
                Value::Array(urls) => urls.iter().map(text).collect(),
                url => vec![text(url)],
            },
            username: text(&server["username"]),
            credential: text(&server["credential"]),
        })
        .collect()
}

/// The candidate pair ICE selected, as the viewer's own stats describe it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelectedPair {
    /// The viewer's candidate: `host`, `srflx`, `prflx` or `relay`.
    pub local: String,
    /// The camera's candidate. A peer-reflexive one (learned from the camera's checks,
    /// never signaled) has no stats entry of its own and is reported as `prflx`.
    pub remote: String,
    /// The camera's candidate's address and port, when it has a stats entry.
    pub remote_address: Option<String>,
    /// The transport of the viewer's candidate (`udp`).
    pub protocol: String,
    /// How the viewer reaches its TURN server, when its candidate is a relay. rtc 0.21.1
    /// leaves the stats' `relayProtocol` unset, so it is read from the candidate's TURN URL
    /// (`turn:` without `?transport=` is UDP, the only one webrtc-rs 0.21 allocates over).
    pub relay_protocol: Option<String>,
}

/// The selected pair in `report`: the transport's selected pair id, that pair, and its two
/// candidates. None until ICE has selected a pair. rtc 0.21.1 names candidates in a pair by
/// their bare id but keys their own entries `RTCLocalIceCandidate_<id>` /
/// `RTCRemoteIceCandidate_<id>`; both spellings are accepted.
pub fn selected_pair_in(report: &RTCStatsReport) -> Option<SelectedPair> {
    let pair_id = &report.transport()?.selected_candidate_pair_id;
    let pair = report.candidate_pairs().find(|p| &p.stats.id == pair_id)?;
    let names = |entry: &RTCIceCandidateStats, prefix: &str, id: &str| {
        entry.stats.id == id || entry.stats.id.strip_prefix(prefix) == Some(id)
    };
    let local = report.iter().find_map(|entry| match entry {
        RTCStatsReportEntry::LocalCandidate(c)
            if names(c, "RTCLocalIceCandidate_", &pair.local_candidate_id) =>
        {
            Some(c)
        }
        _ => None,
    })?;
    let remote = report.iter().find_map(|entry| match entry {
        RTCStatsReportEntry::RemoteCandidate(c)
            if names(c, "RTCRemoteIceCandidate_", &pair.remote_candidate_id) =>
        {
            Some(c)
        }
        _ => None,
    });
    let local_type = local.candidate_type.to_string();
    let relay_protocol = (local_type == "relay").then(|| {
        match local.relay_protocol {
            RTCIceServerTransportProtocol::Udp => "udp",
            RTCIceServerTransportProtocol::Tcp => "tcp",
            RTCIceServerTransportProtocol::Tls => "tls",
            _ if local.url.starts_with("turns:") => "tls",
            _ if local.url.contains("transport=tcp") => "tcp",
            _ => "udp",
        }
        .to_owned()
    });
    Some(SelectedPair {
        local: local_type,
        remote: remote.map_or("prflx".to_owned(), |c| c.candidate_type.to_string()),
        remote_address: remote.and_then(|c| Some(format!("{}:{}", c.address.as_deref()?, c.port))),
        protocol: local.protocol.clone(),
        relay_protocol,
    })
}

/// A receive-only H.264 peer with a `telemetry` data channel whose messages land in the
/// stats; `handler` gets the peer's events (its on_track should call [`decode_track`]).
pub async fn receive_only_peer(
    handler: Arc<dyn PeerConnectionEventHandler>,
    shared: Arc<Shared>,
) -> (Arc<dyn PeerConnection>, Arc<dyn DataChannel>) {
    receive_only_peer_in(handler, shared, &PeerNetwork::loopback()).await
}

/// [`receive_only_peer`], gathering with `network`'s ICE servers on its addresses.
pub async fn receive_only_peer_in(
    handler: Arc<dyn PeerConnectionEventHandler>,
    shared: Arc<Shared>,
    network: &PeerNetwork,
) -> (Arc<dyn PeerConnection>, Arc<dyn DataChannel>) {
    let mut media_engine = MediaEngine::default();
    media_engine.register_default_codecs().unwrap();
    // As browsers offer it: the camera may then ask for a playout delay.
    media_engine
        .register_header_extension(
            RTCRtpHeaderExtensionCapability {
                uri: PLAYOUT_DELAY_URI.to_owned(),
            },
            RtpCodecKind::Video,
            None,
        )
        .unwrap();
    let registry = register_default_interceptors(Registry::new(), &mut media_engine).unwrap();
    let pc: Arc<dyn PeerConnection> = Arc::new(
        PeerConnectionBuilder::new()
            .with_configuration(
                RTCConfigurationBuilder::new()
                    .with_ice_servers(network.ice_servers.clone())
                    .build(),
            )
            // The loopback-only namespace (and the NAT lab) has no multicast: no mDNS.
            .with_setting_engine(
                SettingEngineBuilder::new()
                    .with_multicast_dns_mode(MulticastDnsMode::Disabled)
                    .build(),
            )
            .with_media_engine(media_engine)
            .with_interceptor_registry(registry)
            .with_handler(handler)
            .with_udp_addrs(network.udp_addrs.clone())
            .build()
            .await
            .unwrap(),
    );
    pc.add_transceiver_from_kind(
        RtpCodecKind::Video,
        Some(RTCRtpTransceiverInit {
            direction: RTCRtpTransceiverDirection::Recvonly,
            ..Default::default()
        }),
    )
    .await
    .unwrap();
    let data_channel = pc.create_data_channel("telemetry", None).await.unwrap();
    let telemetry_shared = Arc::clone(&shared);
    let telemetry_channel = Arc::clone(&data_channel);
    tokio::spawn(async move {
        while let Some(event) = telemetry_channel.poll().await {
            if let DataChannelEvent::OnMessage(message) = event {
                if let Ok(value) = serde_json::from_slice::<Value>(&message.data) {
                    telemetry_shared.stats.lock().unwrap().telemetry.push(value);
                }
            }
        }
    });

    (pc, data_channel)
}

/// A viewer's access key as `peercam access --json` prints it, and the macs the protocol
/// asks for, computed here with hmac/sha2 independently of the agent's code.
#[derive(Clone, Debug)]
pub struct AccessKey {
    pub viewer: String,
    pub exp: u64,
    pub key: Vec<u8>,
}

impl AccessKey {
    /// From the JSON printed by `peercam access --json`.
    pub fn from_json(grant: &Value) -> AccessKey {
        use base64::Engine;
        AccessKey {
            viewer: grant["viewer"].as_str().unwrap().to_owned(),
            exp: grant["exp"].as_u64().unwrap(),
            key: base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(grant["key"].as_str().unwrap())
                .unwrap(),
        }
    }

    pub fn mac(&self, message: &str) -> String {
        use base64::Engine;
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.key).unwrap();
        mac.update(message.as_bytes());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    }

    pub fn offer_auth(&self, sid: &str, sdp: &str) -> Value {
        json!({"viewer": self.viewer, "exp": self.exp, "mac": self.mac(&format!("offer\n{sid}\n{sdp}"))})
    }

    pub fn hangup(&self, sid: &str) -> Value {
        json!({"type": "hangup", "mac": self.mac(&format!("hangup\n{sid}"))})
    }
}

pub struct TestViewer {
    pub sid: String,
    access: Option<AccessKey>,
    shared: Arc<Shared>,
    client: AsyncClient,
    pc: Arc<dyn PeerConnection>,
    to_camera: String,
    _data_channel: Arc<dyn DataChannel>,
    /// Runs the MQTT client until [`TestViewer::leave`] disconnects it.
    signaling: tokio::task::JoinHandle<()>,
}

/// webrtc.org's playout-delay RTP header extension.
pub const PLAYOUT_DELAY_URI: &str = "http://www.webrtc.org/experiments/rtp-hdrext/playout-delay";

/// The id `sdp` gives the header extension `uri` (`a=extmap:ID URI`).
pub fn extension_id(sdp: &str, uri: &str) -> Option<u8> {
    sdp.lines()
        .filter_map(|line| line.strip_prefix("a=extmap:"))
        .find(|rest| rest.split_whitespace().nth(1) == Some(uri))
        .and_then(|rest| rest.split(['/', ' ']).next()?.parse().ok())
}

pub fn new_session_id() -> String {
    format!("test{:016x}", rand::random::<u64>())
}

impl TestViewer {
    /// Connects to the broker, sends an offer (recvonly H.264 + `telemetry` channel).
    pub async fn start(mqtt_port: u16, device: &str) -> TestViewer {
        Self::start_with_sid(mqtt_port, device, &new_session_id()).await
    }

    pub async fn start_with_sid(mqtt_port: u16, device: &str, sid: &str) -> TestViewer {
        Self::start_keyed(mqtt_port, device, sid, None).await
    }

    /// A viewer that signs its offer and hangups with `access` and accepts only an answer
    /// signed with it (when given).
    pub async fn start_keyed(
        mqtt_port: u16,
        device: &str,
        sid: &str,
        access: Option<AccessKey>,
    ) -> TestViewer {
        Self::start_on(&MqttEndpoint::plain(mqtt_port), device, sid, access).await
    }

    /// A viewer that logs in to the broker as `login` (user, password).
    pub async fn start_logged_in(mqtt_port: u16, device: &str, login: (&str, &str)) -> TestViewer {
        let endpoint = MqttEndpoint {
            credentials: Some((login.0.to_owned(), login.1.to_owned())),
            ..MqttEndpoint::plain(mqtt_port)
        };
        Self::start_on(&endpoint, device, &new_session_id(), None).await
    }

    /// A viewer that reaches its broker through `endpoint`.
    pub async fn start_on(
        endpoint: &MqttEndpoint,
        device: &str,
        sid: &str,
        access: Option<AccessKey>,
    ) -> TestViewer {
        Self::start_in(endpoint, device, sid, access, &PeerNetwork::loopback()).await
    }

    /// A viewer that only depacketizes and counts what it receives (frames and keyframes
    /// in its stats), without decoding: a benchmark's many cheap viewers.
    pub async fn start_counting(mqtt_port: u16, device: &str) -> TestViewer {
        let endpoint = MqttEndpoint::plain(mqtt_port);
        let (sid, network) = (new_session_id(), PeerNetwork::loopback());
        Self::start_with(&endpoint, device, &sid, None, &network, false).await
    }

    /// A viewer that reaches its broker through `endpoint` and gathers in `network`.
    pub async fn start_in(
        endpoint: &MqttEndpoint,
        device: &str,
        sid: &str,
        access: Option<AccessKey>,
        network: &PeerNetwork,
    ) -> TestViewer {
        Self::start_with(endpoint, device, sid, access, network, true).await
    }

    /// [`TestViewer::start_in`], decoding its video or (`decode` false) only counting it.
    async fn start_with(
        endpoint: &MqttEndpoint,
        device: &str,
        sid: &str,
        access: Option<AccessKey>,
        network: &PeerNetwork,
        decode: bool,
    ) -> TestViewer {
        let to_camera = format!("peercam/{device}/session/{sid}/to-camera");
        let to_viewer = format!("peercam/{device}/session/{sid}/to-viewer");
        let mut options = endpoint.options(if endpoint.sid_is_client_id {
            sid.to_owned()
        } else {
            format!("viewer-{sid}")
        });
        let goodbye = match &access {
            Some(access) => access.hangup(sid),
            None => json!({"type":"hangup"}),
        };
        if endpoint.hangup_as_last_will {
            options.set_last_will(LastWill::new(
                &to_camera,
                goodbye.to_string(),
                QoS::AtLeastOnce,
                false,
            ));
        }
        let (client, mut eventloop) = AsyncClient::new(options, 256);
        eventloop.set_network_options(no_delay());
        let shared = Shared::new();

        let handler = Arc::new(Handler {
            shared: Arc::clone(&shared),
            client: client.clone(),
            to_camera: to_camera.clone(),
            decode,
        });
        let (pc, data_channel) = receive_only_peer_in(handler, Arc::clone(&shared), network).await;

        // Signaling: apply the camera's answer and candidates in arrival order.
        let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
        let mut subscribed_tx = Some(subscribed_tx);
        let signaling_pc = Arc::clone(&pc);
        let signaling_shared = Arc::clone(&shared);
        let subscribe_client = client.clone();
        let topic = to_viewer.clone();
        let answer_access = access.clone();
        let answer_sid = sid.to_owned();
        let signaling = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = subscribe_client.subscribe(&topic, QoS::AtLeastOnce).await;
                    }
                    // `leave`: everything queued before it has gone out.
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = subscribed_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        let Ok(message) = serde_json::from_slice::<Value>(&publish.payload) else {
                            continue;
                        };
                        signaling_shared
                            .stats
                            .lock()
                            .unwrap()
                            .camera_messages
                            .push(message.clone());
                        match message["type"].as_str() {
                            Some("answer") => {
                                signaling_shared.mark("answer");
                                let sdp = message["sdp"].as_str().unwrap_or_default().to_owned();
                                if let Some(access) = &answer_access {
                                    let expected =
                                        access.mac(&format!("answer\n{answer_sid}\n{sdp}"));
                                    if message["mac"].as_str() != Some(expected.as_str()) {
                                        signaling_shared.stats.lock().unwrap().rejected_answers +=
                                            1;
                                        continue;
                                    }
                                }
                                if let Ok(answer) = RTCSessionDescription::answer(sdp) {
                                    let _ = signaling_pc.set_remote_description(answer).await;
                                }
                            }
                            Some("candidate") if message["candidate"].is_object() => {
                                signaling_shared.mark("camera candidate");
                                let c = &message["candidate"];
                                let init = RTCIceCandidateInit {
                                    candidate: c["candidate"]
                                        .as_str()
                                        .unwrap_or_default()
                                        .to_owned(),
                                    sdp_mid: c["sdpMid"].as_str().map(str::to_owned),
                                    sdp_mline_index: c["sdpMLineIndex"].as_u64().map(|v| v as u16),
                                    ..Default::default()
                                };
                                let _ = signaling_pc.add_ice_candidate(init).await;
                            }
                            _ => {}
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), subscribed_rx)
            .await
            .expect("subscribe to to-viewer")
            .unwrap();

        let offer = pc.create_offer(None).await.unwrap();
        pc.set_local_description(offer.clone()).await.unwrap();
        *shared.playout_delay_id.lock().unwrap() = extension_id(&offer.sdp, PLAYOUT_DELAY_URI);
        *shared.offer_sent.lock().unwrap() = Some(Instant::now());
        let viewer = TestViewer {
            sid: sid.to_owned(),
            access,
            shared,
            client,
            pc,
            to_camera,
            _data_channel: data_channel,
            signaling,
        };
        viewer.publish_offer(&offer.sdp).await;
        viewer
    }

    /// Publishes `sdp` as this session's offer, signed when the viewer holds a key.
    async fn publish_offer(&self, sdp: &str) {
        let offer = match &self.access {
            Some(access) => {
                json!({"type": "offer", "sdp": sdp, "auth": access.offer_auth(&self.sid, sdp)})
            }
            None => json!({"type": "offer", "sdp": sdp}),
        };
        self.publish_raw(offer.to_string().into_bytes()).await;
    }

    /// Restarts ICE on this session as a browser's `restartIce()` does: webrtc-rs makes an
    /// offer with fresh ICE credentials (`ice_restart`), applies it, and it goes out on the
    /// same sid (signed like the first). The camera's answer is applied by the signaling
    /// task as it arrives. Returns the restart offer's SDP.
    pub async fn restart_ice(&self) -> String {
        let options = RTCOfferOptions { ice_restart: true };
        let offer = self.pc.create_offer(Some(options)).await.unwrap();
        self.pc.set_local_description(offer.clone()).await.unwrap();
        self.publish_offer(&offer.sdp).await;
        offer.sdp
    }

    /// The SDP of the viewer's local description in effect (its latest offer).
    pub async fn local_sdp(&self) -> String {
        self.pc.local_description().await.unwrap().sdp
    }

    pub fn stats(&self) -> ViewerStats {
        self.shared.stats.lock().unwrap().clone()
    }

    /// Each access unit received so far: when its last packet came, and its RTP timestamp.
    pub fn rtp_frames(&self) -> Vec<(Instant, u32)> {
        self.shared.rtp_frames.lock().unwrap().clone()
    }

    /// The peer connection's own stats (webrtc-rs `get_stats`).
    pub async fn stats_report(&self) -> RTCStatsReport {
        self.pc.get_stats(Instant::now(), StatsSelector::None).await
    }

    /// When the offer went out.
    pub fn offer_sent(&self) -> Instant {
        self.shared.offer_sent.lock().unwrap().expect("offer sent")
    }

    /// Waits until `check` holds on the stats, or panics with them after `timeout`.
    pub async fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        check: impl Fn(&ViewerStats) -> bool,
    ) -> ViewerStats {
        self.shared
            .wait_until(&self.sid, what, timeout, check)
            .await
    }

    /// Waits until at least `count` frames have been decoded.
    pub async fn wait_for_frames(&self, count: u64, timeout: Duration) -> ViewerStats {
        self.wait_until(&format!("{count} decoded frames"), timeout, |s| {
            s.frames_decoded >= count
        })
        .await
    }

    /// Waits for the camera's first `error` reply on this session and returns it.
    pub async fn wait_for_error(&self, timeout: Duration) -> serde_json::Value {
        let is_error = |m: &&serde_json::Value| m["type"] == "error";
        let stats = self
            .wait_until("an error reply", timeout, |s| {
                s.camera_messages.iter().any(|m| is_error(&m))
            })
            .await;
        stats.camera_messages.iter().find(is_error).unwrap().clone()
    }

    /// Publishes raw bytes on this session's to-camera topic (for bad-input tests).
    pub async fn publish_raw(&self, payload: Vec<u8>) {
        self.client
            .publish(&self.to_camera, QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }

    pub async fn hangup(&self) {
        let goodbye = match &self.access {
            Some(access) => access.hangup(&self.sid),
            None => json!({"type": "hangup"}),
        };
        self.publish_raw(goodbye.to_string().into_bytes()).await;
        let _ = self.pc.close().await;
    }

    /// Hangs up and lets nothing of this viewer linger: its peer connection is closed and
    /// its MQTT client disconnects cleanly once the hangup has gone out (a viewer only
    /// dropped keeps both running).
    pub async fn leave(self) {
        self.hangup().await;
        let _ = self.client.disconnect().await;
        let mut signaling = self.signaling;
        if tokio::time::timeout(Duration::from_secs(10), &mut signaling)
            .await
            .is_err()
        {
            signaling.abort();
            panic!("viewer {}: its MQTT client did not disconnect", self.sid);
        }
    }
}

/// A bare MQTT client that watches topics and publishes raw payloads: for status checks
/// and for feeding malformed input to the camera.
pub struct Observer {
    client: AsyncClient,
    messages: Arc<Mutex<Vec<(String, Value)>>>,
}

impl Observer {
    pub async fn start(mqtt_port: u16, filters: &[String]) -> Observer {
        Self::start_on(&MqttEndpoint::plain(mqtt_port), filters).await
    }

    /// An observer that reaches its broker through `endpoint`.
    pub async fn start_on(endpoint: &MqttEndpoint, filters: &[String]) -> Observer {
        let options = endpoint.options(format!("observer-{:08x}", rand::random::<u32>()));
        let (client, mut eventloop) = AsyncClient::new(options, 256);
        eventloop.set_network_options(no_delay());
        let messages = Arc::new(Mutex::new(Vec::new()));
        let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
        let mut subscribed_tx = Some(subscribed_tx);
        let sub_client = client.clone();
        let filters = filters.to_vec();
        let expected_subacks = filters.len();
        let sink = Arc::clone(&messages);
        tokio::spawn(async move {
            let mut subacks = 0;
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        for filter in &filters {
                            let _ = sub_client.subscribe(filter, QoS::AtLeastOnce).await;
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        subacks += 1;
                        if subacks >= expected_subacks {
                            if let Some(tx) = subscribed_tx.take() {
                                let _ = tx.send(());
                            }
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        let value = serde_json::from_slice::<Value>(&publish.payload)
                            .unwrap_or(Value::Null);
                        sink.lock().unwrap().push((publish.topic.clone(), value));
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), subscribed_rx)
            .await
            .expect("observer subscribed")
            .unwrap();
        Observer { client, messages }
    }

    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.into())
            .await
            .unwrap();
    }

    /// Publishes a retained message, as a client that owns the topic would.
    pub async fn publish_retained(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, true, payload.into())
            .await
            .unwrap();
    }

    pub fn messages_on(&self, topic: &str) -> Vec<Value> {
        self.messages
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| t == topic)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Waits for a message on `topic` matching `check`; returns it.
    pub async fn wait_for(
        &self,
        topic: &str,
        timeout: Duration,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = self.messages_on(topic).into_iter().rev().find(|v| check(v)) {
                return found;
            }
            if Instant::now() > deadline {
                panic!(
                    "no matching message on {topic} within {timeout:?}; saw {:#?}",
                    self.messages_on(topic)
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Every message seen so far, with its topic, in arrival order.
    pub fn all_messages(&self) -> Vec<(String, Value)> {
        self.messages.lock().unwrap().clone()
    }

    /// The newest message on `topic`, if any.
    pub fn latest(&self, topic: &str) -> Option<Value> {
        self.messages_on(topic).pop()
    }
}
