//! Configuration: the TOML schema, its defaults, and validation whose errors name the
//! dotted key and the reason. Pure apart from reading the file; it must never let an
//! unknown key or an out-of-range value through to the running service.

use crate::source::convert::PixelFormat;
use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub device: DeviceConfig,
    pub video: VideoConfig,
    pub mqtt: MqttConfig,
    pub broker: BrokerConfig,
    pub webrtc: WebrtcConfig,
    pub http: HttpConfig,
    pub whep: WhepConfig,
    pub auth: AuthConfig,
    pub tls: TlsConfig,
    pub telemetry: TelemetryConfig,
    pub snapshot: SnapshotConfig,
    pub metrics: MetricsConfig,
    pub homeassistant: HomeAssistantConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeviceConfig {
    /// MQTT topic level identifying this camera: `[A-Za-z0-9_-]{1,64}`.
    pub id: String,
    /// Human-readable name shown to viewers.
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VideoConfig {
    /// "testsrc" or a V4L2 device path such as "/dev/video0".
    pub source: String,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub bitrate_kbps: u32,
    pub keyframe_interval_s: u32,
    /// V4L2 pixel format: "auto" (H.264 when `passthrough`, else raw YUV, else MJPEG) or a
    /// fourcc peercam can use: H264, YUYV, UYVY, NV12, YU12, YV12, MJPG.
    pub format: String,
    /// Send the camera's own H.264 without re-encoding when it offers H.264.
    pub passthrough: bool,
    /// Fail instead of using the nearest mode when the camera cannot do width/height/fps.
    pub strict: bool,
    /// Test knob, off unless set: testsrc wedges (its next frame never comes) this many
    /// seconds after it starts, so a test can show the watchdog restarting the service.
    pub testsrc_stall_after_s: Option<u32>,
    /// V4L2 controls by name (as `peercam devices` lists them), e.g. `brightness = 128`.
    pub controls: std::collections::BTreeMap<String, i64>,
}

impl VideoConfig {
    /// The capture format `video.format` names; `None` for "auto". Infallible once
    /// [`Config::validate`] passed, which rejects a fourcc peercam cannot use.
    pub fn pixel_format(&self) -> Option<PixelFormat> {
        parse_pixel_format(&self.format).ok().flatten()
    }
}

/// `Ok(None)` for "auto", the format of a fourcc peercam can use, `Err` for anything else.
fn parse_pixel_format(text: &str) -> Result<Option<PixelFormat>, ()> {
    if text == "auto" {
        return Ok(None);
    }
    let fourcc: [u8; 4] = text.as_bytes().try_into().map_err(|_| ())?;
    PixelFormat::from_fourcc(fourcc).map(Some).ok_or(())
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    pub broker: BrokerTarget,
    pub topic_prefix: String,
    pub client_id: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// A file (mode 0600) holding the password, to keep it out of this file.
    pub password_file: Option<PathBuf>,
    /// PEM CA certificates trusted for an `mqtts://` broker besides the system's.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain) and its key, for brokers that require mutual TLS.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub keepalive_s: u16,
}

impl MqttConfig {
    /// The configured client id, or `peercam-{device.id}`.
    pub fn client_id(&self, device: &DeviceConfig) -> String {
        self.client_id
            .clone()
            .unwrap_or_else(|| format!("peercam-{}", device.id))
    }

    /// The PEM files of a TLS broker connection (none for a plain one).
    pub fn tls_files(&self) -> crate::signaling::mqtt_security::TlsFiles {
        crate::signaling::mqtt_security::TlsFiles {
            ca_file: self.ca_file.clone(),
            client: self.cert_file.clone().zip(self.key_file.clone()),
        }
    }

    /// The key the broker password comes from.
    pub fn password_key(&self) -> &'static str {
        if self.password_file.is_some() {
            "mqtt.password_file"
        } else {
            "mqtt.password"
        }
    }
}

/// Which MQTT broker signaling uses.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum BrokerTarget {
    /// The built-in rumqttd, listening on `[broker]`.
    #[default]
    Embedded,
    External {
        host: String,
        port: u16,
        /// `mqtts://` or `wss://`: TLS with certificate and host-name verification.
        tls: bool,
        /// `wss://`: MQTT over a secure WebSocket at this path.
        websocket_path: Option<String>,
    },
}

impl BrokerTarget {
    /// True for an `mqtts://` broker.
    pub fn is_tls(&self) -> bool {
        matches!(self, BrokerTarget::External { tls: true, .. })
    }
}

impl<'de> Deserialize<'de> for BrokerTarget {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_broker(&text).map_err(serde::de::Error::custom)
    }
}

fn parse_broker(text: &str) -> Result<BrokerTarget, String> {
    if text == "embedded" {
        return Ok(BrokerTarget::Embedded);
    }
    let (rest, tls, default_port, websocket) = if let Some(rest) = text.strip_prefix("mqtt://") {
        (rest, false, 1883, false)
    } else if let Some(rest) = text.strip_prefix("mqtts://") {
        (rest, true, 8883, false)
    } else if let Some(rest) = text.strip_prefix("wss://") {
        (rest, true, 443, true)
    } else {
        if text.starts_with("ws://") {
            return Err(format!("{text:?}: a plain WebSocket would carry the login in the clear; use wss://host[:port]/path (or mqtt:// on a network you trust)"));
        }
        return Err(format!(
            "{text:?} is neither \"embedded\" nor mqtt://host[:port], mqtts://host[:port] or wss://host[:port]/path"
        ));
    };
    // A WebSocket URL may name a path (default "/"); MQTT URLs name none.
    let (rest, websocket_path) = match (websocket, rest.find('/')) {
        (true, Some(at)) => (&rest[..at], Some(rest[at..].to_owned())),
        (true, None) => (rest, Some("/".to_owned())),
        (false, _) => (rest.trim_end_matches('/'), None),
    };
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || host.starts_with('[') => {
            let port: u16 = port
                .parse()
                .map_err(|_| format!("{text:?}: port {port:?} is not a number from 1 to 65535"))?;
            (host, port)
        }
        _ => (rest, default_port),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || port == 0 || host.contains('/') || host.contains('@') {
        return Err(format!(
            "{text:?} is not of the form mqtt[s]://host[:port] or wss://host[:port]/path with a port from 1 to 65535"
        ));
    }
    Ok(BrokerTarget::External {
        host: host.to_owned(),
        port,
        tls,
        websocket_path,
    })
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    pub listen: SocketAddr,
    /// WebSocket MQTT listener for browsers (MQTT 3.1.1); "off" disables it. WSS when
    /// `[tls]` is set.
    #[serde(deserialize_with = "optional_addr")]
    pub ws_listen: Option<SocketAddr>,
    /// MQTT over TLS (with `[tls]`'s certificate) for other cameras and clients; "off" by
    /// default.
    #[serde(deserialize_with = "optional_addr")]
    pub tls_listen: Option<SocketAddr>,
    /// User name → argon2 PHC hash (`peercam passwd`). With any user, every connection
    /// must authenticate.
    pub users: std::collections::BTreeMap<String, String>,
    /// Lets the broker listen beyond loopback without users (protected mode off).
    pub allow_anonymous: bool,
}

impl BrokerConfig {
    /// Where the agent (and the relays in front of the broker) reach its TCP listener: a
    /// wildcard listener through loopback on the same machine.
    pub fn local_addr(&self) -> SocketAddr {
        let mut addr = self.listen;
        if addr.ip().is_unspecified() {
            addr.set_ip(if addr.is_ipv4() {
                IpAddr::from([127, 0, 0, 1])
            } else {
                IpAddr::from(std::net::Ipv6Addr::LOCALHOST)
            });
        }
        addr
    }
}

/// The certificate every TLS listener presents: HTTPS on `http.listen`, WSS on
/// `broker.ws_listen` and MQTT over TLS on `broker.tls_listen`. Unset: plain listeners.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, the server's own certificate first. Re-read on SIGHUP.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of that certificate. Re-read on SIGHUP.
    pub key_file: Option<PathBuf>,
}

impl TlsConfig {
    /// Both files, when TLS is on.
    pub fn files(&self) -> Option<(&Path, &Path)> {
        Some((self.cert_file.as_deref()?, self.key_file.as_deref()?))
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebrtcConfig {
    /// Connected viewers at once.
    pub max_viewers: usize,
    /// Sessions between their offer and connected at once, apart from `max_viewers`.
    pub max_pending: usize,
    /// New sessions' offers taken per second (a token bucket's rate)...
    pub offers_per_s: u32,
    /// ...and how many may come at once (its size).
    pub offer_burst: u32,
    pub ice_servers: Vec<IceServer>,
    pub connect_timeout_s: u64,
    /// Local UDP addresses ICE binds; a wildcard means every non-loopback interface.
    pub udp_addrs: Vec<String>,
    /// One UDP port every session shares (the ICE UDP mux) on each address of `udp_addrs`;
    /// 0 gives each session its own ephemeral ports.
    pub udp_port: u16,
    /// Public addresses the camera's UDP ports are reachable at (a forwarded `udp_port`, a
    /// 1:1 NAT), announced to viewers as extra candidates.
    pub public_ips: Vec<IpAddr>,
    /// `[min, max]` playout delay asked of viewers (the `playout-delay` RTP header
    /// extension), in ms, multiples of 10; `[]` sends none. Min 0 lets a browser show a
    /// frame as soon as it is decoded.
    pub playout_delay_ms: Vec<u32>,
}

/// A STUN or TURN server, serialized in RTCIceServer shape (what viewers are told; see
/// [`crate::ice`] for which entries and credentials they get).
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    /// The TURN server's shared secret (coturn `static-auth-secret`): the camera mints
    /// short-lived credentials from it instead of a static username and credential.
    #[serde(default, skip_serializing)]
    pub secret_file: Option<PathBuf>,
    /// Lifetime of minted credentials (default one day).
    #[serde(default, skip_serializing)]
    pub credential_ttl_s: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Where the viewer page is served; "off" disables the HTTP server.
    #[serde(deserialize_with = "optional_addr")]
    pub listen: Option<SocketAddr>,
    /// Directory holding the built viewer page (index.html and its assets).
    pub web_root: PathBuf,
    /// Connections held open at once (each page's MQTT-over-WebSocket is one); one over
    /// the limit is closed at once.
    pub max_connections: usize,
    /// Seconds a client gets to send a request's headers, the first or the next on a
    /// kept-alive connection: a silent or idle connection is closed after it.
    pub header_timeout_s: u64,
}

/// Who may watch: access keys derived from the camera's secret, or anyone (open).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub mode: crate::signaling::protocol::AuthMode,
    /// The camera's 32-byte secret; created (mode 0600) on first start when missing.
    pub secret_file: PathBuf,
    /// Viewer names whose access keys no longer work (applied on reload).
    pub revoked: Vec<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            mode: crate::signaling::protocol::AuthMode::Keys,
            secret_file: PathBuf::from("/var/lib/peercam/secret"),
            revoked: Vec::new(),
        }
    }
}

/// The WHEP endpoint (`POST /whep`) on the HTTP server.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WhepConfig {
    /// Unset: on whenever `http.listen` is.
    pub enabled: Option<bool>,
    /// `Access-Control-Allow-Origin` for browser players on other origins: `*` or one origin.
    pub allow_origin: String,
}

/// Prometheus metrics (`GET /metrics`) on the HTTP server.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Unset: on whenever `http.listen` is.
    pub enabled: Option<bool>,
}

impl MetricsConfig {
    /// Whether `/metrics` is served, given the HTTP server's state.
    pub fn is_served(&self, http: &HttpConfig) -> bool {
        http.listen.is_some() && self.enabled.unwrap_or(true)
    }
}

impl WhepConfig {
    /// Whether `/whep` is served, given the HTTP server's state.
    pub fn is_served(&self, http: &HttpConfig) -> bool {
        http.listen.is_some() && self.enabled.unwrap_or(true)
    }
}

impl Default for WhepConfig {
    fn default() -> Self {
        WhepConfig {
            enabled: None,
            allow_origin: "*".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    pub interval_ms: u64,
    /// How often telemetry goes to `{prefix}/{device}/telemetry` when Home Assistant
    /// integration is on (seconds).
    pub mqtt_interval_s: u32,
}

/// Home Assistant MQTT discovery: a JPEG camera entity and sensors, off unless enabled.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HomeAssistantConfig {
    pub enabled: bool,
    /// Home Assistant's discovery prefix (its MQTT integration's setting).
    pub discovery_prefix: String,
    /// The camera entity: snapshots on `{prefix}/{device}/snapshot`, readable by anyone who
    /// can read the broker. Unset: on, unless access keys guard the video.
    pub camera: Option<bool>,
    /// Seconds between snapshots to the camera entity; 0: only when asked on
    /// `{prefix}/{device}/snapshot/request`.
    pub snapshot_interval_s: u32,
    /// The device's "Visit" link in Home Assistant. Unset: the page at `http.listen`.
    pub configuration_url: Option<String>,
}

impl HomeAssistantConfig {
    /// Whether snapshots go to MQTT: never with the integration off; by default not when
    /// access keys guard the video, since anyone reading the broker would see them.
    pub fn publishes_snapshots(&self, auth: &AuthConfig) -> bool {
        self.enabled
            && self
                .camera
                .unwrap_or(auth.mode == crate::signaling::protocol::AuthMode::Open)
    }
}

impl Default for HomeAssistantConfig {
    fn default() -> Self {
        HomeAssistantConfig {
            enabled: false,
            discovery_prefix: "homeassistant".into(),
            camera: None,
            snapshot_interval_s: 10,
            configuration_url: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SnapshotConfig {
    /// JPEG quality of snapshots, 1-100.
    pub quality: u8,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A tracing filter directive such as "info" or "peercam=debug"; RUST_LOG overrides it.
    pub level: String,
}

fn optional_addr<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<SocketAddr>, D::Error> {
    let text = String::deserialize(deserializer)?;
    if text.is_empty() || text == "off" {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| {
        serde::de::Error::custom(format!(
            "{text:?} is not an address like \"127.0.0.1:8080\" (or \"off\")"
        ))
    })
}

fn addr(text: &str) -> SocketAddr {
    text.parse()
        .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)))
}

impl Default for DeviceConfig {
    fn default() -> Self {
        DeviceConfig {
            id: "cam1".into(),
            name: "peercam camera".into(),
        }
    }
}

impl Default for VideoConfig {
    fn default() -> Self {
        VideoConfig {
            source: "testsrc".into(),
            width: 1280,
            height: 720,
            fps: 30,
            bitrate_kbps: 2000,
            keyframe_interval_s: 2,
            format: "auto".into(),
            passthrough: false,
            strict: false,
            testsrc_stall_after_s: None,
            controls: Default::default(),
        }
    }
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            broker: BrokerTarget::Embedded,
            topic_prefix: "peercam".into(),
            client_id: None,
            username: None,
            password: None,
            password_file: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
            keepalive_s: 15,
        }
    }
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            listen: addr("127.0.0.1:1883"),
            ws_listen: Some(addr("127.0.0.1:8083")),
            tls_listen: None,
            users: Default::default(),
            allow_anonymous: false,
        }
    }
}

impl Default for WebrtcConfig {
    fn default() -> Self {
        WebrtcConfig {
            max_viewers: 8,
            max_pending: 4,
            offers_per_s: 2,
            offer_burst: 8,
            ice_servers: Vec::new(),
            connect_timeout_s: 15,
            udp_addrs: vec!["0.0.0.0:0".into()],
            udp_port: 0,
            public_ips: Vec::new(),
            playout_delay_ms: vec![0, 100],
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: Some(addr("127.0.0.1:8080")),
            web_root: PathBuf::from("/usr/share/peercam/web"),
            max_connections: 128,
            header_timeout_s: 10,
        }
    }
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            interval_ms: 1000,
            mqtt_interval_s: 10,
        }
    }
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        SnapshotConfig {
            quality: crate::snapshot::DEFAULT_QUALITY,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
        }
    }
}

/// A configuration problem: where (file, line, column when known), which key, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    source_name: String,
    position: Option<(usize, usize)>,
    key: Option<String>,
    reason: String,
}

impl ConfigError {
    fn new(key: &str, reason: impl Into<String>) -> Self {
        ConfigError {
            source_name: "config".into(),
            position: None,
            key: Some(key.to_owned()),
            reason: reason.into(),
        }
    }

    /// The dotted key at fault, when the problem is with one key.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    pub fn reason(&self) -> &str {
        &self.reason
    }

    fn in_file(mut self, name: &str) -> Self {
        self.source_name = name.to_owned();
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.source_name)?;
        if let Some((line, column)) = self.position {
            write!(f, ":{line}:{column}")?;
        }
        match &self.key {
            Some(key) => write!(f, ": {key}: {}", self.reason),
            None => write!(f, ": {}", self.reason),
        }
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Parses and validates TOML text; missing keys take their defaults.
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        let document = toml::Deserializer::parse(text).map_err(|err| syntax_error(text, &err))?;
        let config: Config =
            serde_path_to_error::deserialize(document).map_err(|err| schema_error(text, &err))?;
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|err| ConfigError {
            source_name: name.clone(),
            position: None,
            key: None,
            reason: format!("cannot read the configuration file: {err}"),
        })?;
        Config::from_toml_str(&text).map_err(|e| e.in_file(&name))
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        fn in_range<T: PartialOrd + fmt::Display + Copy>(
            key: &str,
            value: T,
            range: std::ops::RangeInclusive<T>,
        ) -> Result<(), ConfigError> {
            if range.contains(&value) {
                Ok(())
            } else {
                let (low, high) = (range.start(), range.end());
                Err(ConfigError::new(
                    key,
                    format!("must be between {low} and {high} (got {value})"),
                ))
            }
        }
        let check = |ok: bool, key: &str, reason: String| {
            if ok {
                Ok(())
            } else {
                Err(ConfigError::new(key, reason))
            }
        };
        let id = &self.device.id;
        check(
            !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "device.id",
            format!("must be 1 to 64 letters, digits, '-' or '_' (it is an MQTT topic level), got {id:?}"),
        )?;
        let v = &self.video;
        check(
            v.source == "testsrc" || v.source.starts_with("/dev/"),
            "video.source",
            format!(
                "must be \"testsrc\" or a device path such as \"/dev/video0\", got {:?}",
                v.source
            ),
        )?;
        check(
            v.width % 2 == 0 && (16..=3840).contains(&v.width),
            "video.width",
            format!(
                "must be an even number between 16 and 3840 (got {})",
                v.width
            ),
        )?;
        check(
            v.height % 2 == 0 && (16..=2160).contains(&v.height),
            "video.height",
            format!(
                "must be an even number between 16 and 2160 (got {})",
                v.height
            ),
        )?;
        in_range("video.fps", v.fps, 1..=120)?;
        in_range("video.bitrate_kbps", v.bitrate_kbps, 50..=50_000)?;
        in_range("video.keyframe_interval_s", v.keyframe_interval_s, 1..=600)?;
        let usable: Vec<String> = PixelFormat::ALL.iter().map(ToString::to_string).collect();
        check(
            parse_pixel_format(&v.format).is_ok(),
            "video.format",
            format!(
                "must be \"auto\" or a fourcc peercam can use: {} (got {:?})",
                usable.join(", "),
                v.format
            ),
        )?;
        check(
            v.pixel_format() != Some(PixelFormat::H264) || v.passthrough,
            "video.format",
            "\"H264\" needs video.passthrough = true (peercam does not decode H.264 to re-encode it)".to_owned(),
        )?;
        if let Some(after) = v.testsrc_stall_after_s {
            check(
                v.source == "testsrc",
                "video.testsrc_stall_after_s",
                format!("is a testsrc test knob; video.source is {:?}", v.source),
            )?;
            in_range("video.testsrc_stall_after_s", after, 1..=86_400)?;
        }
        if v.source == "testsrc" {
            if let Some(name) = v.controls.keys().next() {
                return Err(ConfigError::new(
                    &format!("video.controls.{name}"),
                    "controls apply to V4L2 cameras; video.source is \"testsrc\"",
                ));
            }
        }
        let prefix = &self.mqtt.topic_prefix;
        check(
            !prefix.is_empty() && !prefix.contains(['+', '#']) && !prefix.starts_with('/') && !prefix.ends_with('/'),
            "mqtt.topic_prefix",
            format!("must be non-empty, without '+' or '#', and not start or end with '/' (got {prefix:?})"),
        )?;
        check(
            prefix.len() <= crate::signaling::protocol::MAX_TOPIC_PREFIX_BYTES,
            "mqtt.topic_prefix",
            format!(
                "must be at most {} bytes, so a full message and its topic fit in one MQTT packet (got {})",
                crate::signaling::protocol::MAX_TOPIC_PREFIX_BYTES,
                prefix.len()
            ),
        )?;
        if let Some(client_id) = &self.mqtt.client_id {
            check(
                !client_id.is_empty() && client_id.len() <= 128,
                "mqtt.client_id",
                "must be 1 to 128 characters".into(),
            )?;
        }
        check(
            self.mqtt.keepalive_s >= 5,
            "mqtt.keepalive_s",
            format!("must be at least 5 (got {})", self.mqtt.keepalive_s),
        )?;
        self.validate_mqtt_security()?;
        let w = &self.webrtc;
        in_range("webrtc.max_viewers", w.max_viewers, 1..=64)?;
        in_range("webrtc.max_pending", w.max_pending, 1..=64)?;
        in_range("http.max_connections", self.http.max_connections, 1..=4096)?;
        in_range("http.header_timeout_s", self.http.header_timeout_s, 1..=300)?;
        in_range("webrtc.offers_per_s", w.offers_per_s, 1..=100)?;
        in_range("webrtc.offer_burst", w.offer_burst, 1..=100)?;
        in_range("webrtc.connect_timeout_s", w.connect_timeout_s, 1..=300)?;
        if let Err(reason) = crate::session::peer::PlayoutDelay::from_config(&w.playout_delay_ms) {
            return Err(ConfigError::new("webrtc.playout_delay_ms", reason));
        }
        for (i, server) in w.ice_servers.iter().enumerate() {
            let key = format!("webrtc.ice_servers[{i}].urls");
            check(
                !server.urls.is_empty(),
                &key,
                "must list at least one stun: or turn: URL".into(),
            )?;
            for url in &server.urls {
                check(
                    ["stun:", "turn:", "turns:"]
                        .iter()
                        .any(|scheme| url.starts_with(scheme)),
                    &key,
                    format!("{url:?} must start with stun:, turn: or turns:"),
                )?;
                if url.starts_with("turn") {
                    check(
                        server.secret_file.is_some()
                            || (server.username.is_some() && server.credential.is_some()),
                        &format!("webrtc.ice_servers[{i}]"),
                        format!("TURN server {url:?} needs secret_file (short-lived credentials) or username and credential"),
                    )?;
                }
            }
            if server.secret_file.is_some() {
                check(
                    server.username.is_none() && server.credential.is_none(),
                    &format!("webrtc.ice_servers[{i}].secret_file"),
                    "cannot be combined with a static username or credential: the camera mints both from the secret".into(),
                )?;
            }
            if let Some(ttl) = server.credential_ttl_s {
                let key = format!("webrtc.ice_servers[{i}].credential_ttl_s");
                check(
                    server.secret_file.is_some(),
                    &key,
                    "applies only to an entry with secret_file".into(),
                )?;
                in_range(&key, ttl, 60..=30 * 86_400)?;
            }
        }
        check(
            !w.udp_addrs.is_empty(),
            "webrtc.udp_addrs",
            "must list at least one address such as \"0.0.0.0:0\"".into(),
        )?;
        for text in &w.udp_addrs {
            let parsed = text.parse::<SocketAddr>();
            check(
                parsed.is_ok(),
                "webrtc.udp_addrs",
                format!("{text:?} is not an address like \"0.0.0.0:0\" or \"192.168.1.10:50000\""),
            )?;
            check(
                w.udp_port == 0 || parsed.is_ok_and(|addr| addr.port() == 0),
                "webrtc.udp_addrs",
                format!("{text:?} names a port, but webrtc.udp_port sets the one port every session shares; give port 0 here"),
            )?;
        }
        for (i, ip) in w.public_ips.iter().enumerate() {
            check(
                !(ip.is_loopback() || ip.is_unspecified() || ip.is_multicast()),
                &format!("webrtc.public_ips[{i}]"),
                format!("{ip} is not an address a viewer could reach; give the router's public address (or the 1:1 NAT's)"),
            )?;
        }
        for (i, viewer) in self.auth.revoked.iter().enumerate() {
            check(
                crate::auth::is_valid_viewer_name(viewer),
                &format!("auth.revoked[{i}]"),
                format!("{viewer:?} is not a viewer name (1 to 64 of A-Z a-z 0-9 _ . -)"),
            )?;
        }
        let origin = &self.whep.allow_origin;
        check(
            origin == "*"
                || ((origin.starts_with("http://") || origin.starts_with("https://"))
                    && !origin.ends_with('/')
                    && origin.bytes().all(|b| b.is_ascii_graphic())),
            "whep.allow_origin",
            format!("must be \"*\" or one origin such as \"https://ha.example.net\" (scheme://host[:port], no path), got {origin:?}"),
        )?;
        check(
            self.whep.enabled != Some(true) || self.http.listen.is_some(),
            "whep.enabled",
            "WHEP is served by the HTTP server; set http.listen to turn it on".into(),
        )?;
        check(
            self.metrics.enabled != Some(true) || self.http.listen.is_some(),
            "metrics.enabled",
            "/metrics is served by the HTTP server; set http.listen to turn it on".into(),
        )?;
        self.validate_listeners()?;
        self.validate_security()?;
        check(
            (100..=60_000).contains(&self.telemetry.interval_ms),
            "telemetry.interval_ms",
            format!(
                "must be between 100 and 60000 (got {})",
                self.telemetry.interval_ms
            ),
        )?;
        check(
            (1..=100).contains(&self.snapshot.quality),
            "snapshot.quality",
            format!(
                "must be a JPEG quality from 1 to 100 (got {})",
                self.snapshot.quality
            ),
        )?;
        in_range(
            "telemetry.mqtt_interval_s",
            self.telemetry.mqtt_interval_s,
            1..=3600,
        )?;
        self.validate_homeassistant()?;
        tracing_subscriber::EnvFilter::try_new(&self.log.level).map_err(|err| {
            ConfigError::new(
                "log.level",
                format!(
                    "{:?} is not a log filter such as \"info\" or \"peercam=debug\": {err}",
                    self.log.level
                ),
            )
        })?;
        Ok(())
    }
}

impl Config {
    fn validate_homeassistant(&self) -> Result<(), ConfigError> {
        let ha = &self.homeassistant;
        let prefix = &ha.discovery_prefix;
        if prefix.is_empty()
            || prefix.len() > 128
            || prefix.contains(['+', '#'])
            || prefix.starts_with('/')
            || prefix.ends_with('/')
            || prefix.chars().any(char::is_control)
        {
            return Err(ConfigError::new(
                "homeassistant.discovery_prefix",
                format!("must be 1 to 128 characters, without '+', '#' or control characters, and not start or end with '/' (got {prefix:?})"),
            ));
        }
        if ha.snapshot_interval_s > 86_400 {
            return Err(ConfigError::new(
                "homeassistant.snapshot_interval_s",
                format!(
                    "must be between 0 (only on request) and 86400 (got {})",
                    ha.snapshot_interval_s
                ),
            ));
        }
        if let Some(url) = &ha.configuration_url {
            if !crate::homeassistant::is_configuration_url(url) {
                return Err(ConfigError::new(
                    "homeassistant.configuration_url",
                    format!("must be an http:// or https:// URL with a host, such as \"http://cam1.lan:8080/\" (got {url:?})"),
                ));
            }
        }
        Ok(())
    }

    /// The broker credentials and TLS files: which go together, and that each file is
    /// there, private where it holds a secret, and parses.
    fn validate_mqtt_security(&self) -> Result<(), ConfigError> {
        use crate::signaling::mqtt_security;
        let mqtt = &self.mqtt;
        if mqtt.password.is_some() && mqtt.password_file.is_some() {
            return Err(ConfigError::new(
                "mqtt.password_file",
                "set either mqtt.password or mqtt.password_file, not both",
            ));
        }
        if (mqtt.password.is_some() || mqtt.password_file.is_some()) && mqtt.username.is_none() {
            return Err(ConfigError::new(
                "mqtt.username",
                format!("{} needs a username to go with it", mqtt.password_key()),
            ));
        }
        if let Some(path) = &mqtt.password_file {
            mqtt_security::read_password_file(path)
                .map_err(|err| ConfigError::new(err.key, err.reason))?;
        }
        let files = [
            ("mqtt.ca_file", &mqtt.ca_file),
            ("mqtt.cert_file", &mqtt.cert_file),
            ("mqtt.key_file", &mqtt.key_file),
        ];
        if !mqtt.broker.is_tls() {
            if let Some((key, _)) = files.iter().find(|(_, path)| path.is_some()) {
                return Err(ConfigError::new(
                    key,
                    "applies to TLS brokers only: set mqtt.broker to \"mqtts://host[:port]\"",
                ));
            }
            return Ok(());
        }
        match (&mqtt.cert_file, &mqtt.key_file) {
            (Some(_), None) => Err(ConfigError::new(
                "mqtt.key_file",
                "mqtt.cert_file needs the key of its certificate",
            )),
            (None, Some(_)) => Err(ConfigError::new(
                "mqtt.cert_file",
                "mqtt.key_file needs the certificate it is the key of",
            )),
            _ => Ok(()),
        }?;
        mqtt_security::client_config(&mqtt.tls_files())
            .map(drop)
            .map_err(|err| ConfigError::new(err.key, err.reason))
    }

    /// The agent's TCP listeners: each on its own port, and the embedded broker's on a
    /// fixed one (the agent and the page are told the port; 0 would be a random one).
    fn validate_listeners(&self) -> Result<(), ConfigError> {
        let broker = &self.broker;
        if self.mqtt.broker != BrokerTarget::Embedded {
            // [broker] is not started; only the page listens.
            return Ok(());
        }
        let fixed = [
            (
                "broker.listen",
                Some(broker.listen),
                "the agent connects to it",
            ),
            (
                "broker.ws_listen",
                broker.ws_listen,
                "the viewer page is told it",
            ),
            (
                "broker.tls_listen",
                broker.tls_listen,
                "clients are told it",
            ),
        ];
        for (key, addr, why) in fixed {
            if addr.is_some_and(|addr| addr.port() == 0) {
                let off = if key == "broker.listen" {
                    ""
                } else {
                    "; \"off\" disables it"
                };
                return Err(ConfigError::new(
                    key,
                    format!("needs a fixed port: {why} (got port 0{off})"),
                ));
            }
        }
        if broker.tls_listen.is_some() && self.tls.files().is_none() {
            return Err(ConfigError::new(
                "broker.tls_listen",
                "needs the certificate of [tls] (tls.cert_file and tls.key_file)",
            ));
        }
        let listeners: Vec<(&str, SocketAddr)> = fixed
            .iter()
            .map(|(key, addr, _)| (*key, *addr))
            .chain([("http.listen", self.http.listen)])
            .filter_map(|(key, addr)| Some((key, addr?)))
            .collect();
        for (i, &(key, addr)) in listeners.iter().enumerate() {
            for &(other_key, other) in &listeners[..i] {
                if listeners_clash(addr, other) {
                    return Err(ConfigError::new(
                        key,
                        format!("{addr} takes the port of {other_key} ({other})"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// `[tls]` names both files or neither; `[broker.users]` holds plain names and argon2
    /// hashes; and the embedded broker is not open to the network without users unless
    /// `broker.allow_anonymous` says so (protected mode, as mosquitto 2 does).
    fn validate_security(&self) -> Result<(), ConfigError> {
        match (&self.tls.cert_file, &self.tls.key_file) {
            (Some(_), None) => {
                return Err(ConfigError::new(
                    "tls.key_file",
                    "is needed with tls.cert_file",
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    "tls.cert_file",
                    "is needed with tls.key_file",
                ))
            }
            _ => {}
        }
        for (name, hash) in &self.broker.users {
            let key = format!("broker.users.{name}");
            if !crate::signaling::broker_users::is_valid_user_name(name) {
                return Err(ConfigError::new(
                    &key,
                    format!(
                        "user names are 1 to 64 of A-Z a-z 0-9 _ . - (and not {:?})",
                        crate::signaling::broker_users::INTERNAL_USER
                    ),
                ));
            }
            crate::signaling::broker_users::check_hash(hash)
                .map_err(|reason| ConfigError::new(&key, reason))?;
        }
        let exposed = self.exposed_broker_listeners();
        if let Some((key, addr)) = exposed.first() {
            if self.broker.users.is_empty() && !self.broker.allow_anonymous {
                let via = if *key == "http.listen" {
                    " (it relays MQTT to the embedded broker at /mqtt)"
                } else {
                    ""
                };
                return Err(ConfigError::new(
                    key,
                    format!(
                        "{addr} is reachable beyond this machine{via} and broker.users is empty, so anyone on the network could use the embedded broker; add users to [broker.users] (peercam passwd), bind to 127.0.0.1, or set broker.allow_anonymous = true to accept it"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The listeners through which the embedded broker can be reached from other machines:
    /// its own, and the page's server, which relays MQTT at `/mqtt`.
    pub fn exposed_broker_listeners(&self) -> Vec<(&'static str, SocketAddr)> {
        if self.mqtt.broker != BrokerTarget::Embedded {
            return Vec::new();
        }
        [
            ("broker.listen", Some(self.broker.listen)),
            ("broker.ws_listen", self.broker.ws_listen),
            ("broker.tls_listen", self.broker.tls_listen),
            ("http.listen", self.http.listen),
        ]
        .into_iter()
        .filter_map(|(key, addr)| Some((key, addr?)))
        .filter(|(_, addr)| !addr.ip().is_loopback())
        .collect()
    }

    /// What a valid configuration still risks, one sentence each, for `check-config` and
    /// the log at start.
    pub fn warnings(&self) -> Vec<String> {
        let exposed = self.exposed_broker_listeners();
        let list = |listeners: &[(&str, SocketAddr)]| {
            listeners
                .iter()
                .map(|(key, addr)| format!("{key} {addr}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut warnings = Vec::new();
        if !exposed.is_empty() && self.broker.users.is_empty() {
            warnings.push(format!(
                "broker.allow_anonymous = true: anyone who reaches {} can use the embedded broker without a password",
                list(&exposed)
            ));
        }
        if !self.broker.users.is_empty() {
            let tls = self.tls.files().is_some();
            let clear: Vec<(&str, SocketAddr)> = exposed
                .into_iter()
                .filter(|(key, _)| *key == "broker.listen" || !tls)
                .collect();
            if !clear.is_empty() {
                warnings.push(format!(
                    "broker.users: passwords cross the network unencrypted on {}; set [tls] and bind plain listeners to 127.0.0.1",
                    list(&clear)
                ));
            }
        }
        warnings
    }
}

/// Whether two TCP listeners would fight over one port: the same port on the same address,
/// or on a wildcard that covers the other address (`0.0.0.0` covers IPv4; `[::]` covers
/// both families, as Linux binds it dual-stack by default). Port 0 never clashes.
fn listeners_clash(a: SocketAddr, b: SocketAddr) -> bool {
    let covers =
        |wild: IpAddr, other: IpAddr| wild.is_unspecified() && (wild.is_ipv6() || other.is_ipv4());
    a.port() == b.port()
        && a.port() != 0
        && (a.ip() == b.ip() || covers(a.ip(), b.ip()) || covers(b.ip(), a.ip()))
}

/// What a reload (SIGHUP) can apply to a running agent, and what needs a restart.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReloadPlan {
    /// Keys that changed and take effect at once.
    pub applied: Vec<&'static str>,
    /// Sections that changed but only take effect after a restart.
    pub needs_restart: Vec<&'static str>,
}

/// A key a reload applies to the running agent: its dotted name, whether two
/// configurations differ in it, and how to copy it from the re-read one.
struct LiveKey {
    key: &'static str,
    differs: fn(&Config, &Config) -> bool,
    copy: fn(&mut Config, &Config),
}

/// `live_key!(section.field)`: one entry of [`LIVE_KEYS`].
macro_rules! live_key {
    ($section:ident . $field:ident) => {
        LiveKey {
            key: concat!(stringify!($section), ".", stringify!($field)),
            differs: |running, new| running.$section.$field != new.$section.$field,
            copy: |running, new| running.$section.$field.clone_from(&new.$section.$field),
        }
    };
}

/// The keys SIGHUP applies without a restart; everything else waits for one. The one
/// list both `reload_plan` reports and `with_live_keys_from` copies, so making a key live
/// is one line here (plus whatever the service must do for it: see `service::run`).
const LIVE_KEYS: &[LiveKey] = &[
    live_key!(log.level),
    live_key!(telemetry.interval_ms),
    live_key!(webrtc.max_viewers),
    live_key!(device.name),
    live_key!(auth.revoked),
];

impl Config {
    /// Compares a re-read configuration with the running one.
    pub fn reload_plan(&self, new: &Config) -> ReloadPlan {
        let applied = LIVE_KEYS
            .iter()
            .filter(|live| (live.differs)(self, new))
            .map(|live| live.key)
            .collect();
        // Whatever still differs once the live keys are applied needs a restart. Naming
        // every section makes a new one a compile error here, not a silently ignored reload.
        let Config {
            device,
            video,
            mqtt,
            broker,
            webrtc,
            http,
            whep,
            auth,
            tls,
            telemetry,
            snapshot,
            metrics,
            homeassistant,
            log,
        } = &self.with_live_keys_from(new);
        let sections = [
            // The id is the only key of [device] that is not live.
            (*device != new.device, "device.id"),
            (*video != new.video, "video"),
            (*mqtt != new.mqtt, "mqtt"),
            (*broker != new.broker, "broker"),
            (*webrtc != new.webrtc, "webrtc"),
            (*http != new.http, "http"),
            (*whep != new.whep, "whep"),
            (*auth != new.auth, "auth"),
            // The files' contents are re-read on every reload; their paths need a restart.
            (*tls != new.tls, "tls"),
            (*telemetry != new.telemetry, "telemetry"),
            (*snapshot != new.snapshot, "snapshot"),
            (*metrics != new.metrics, "metrics"),
            (*homeassistant != new.homeassistant, "homeassistant"),
            (*log != new.log, "log"),
        ];
        ReloadPlan {
            applied,
            needs_restart: sections
                .into_iter()
                .filter_map(|(changed, section)| changed.then_some(section))
                .collect(),
        }
    }

    /// This (running) configuration with the live keys of `new`: what a reload puts into
    /// effect. The rest keeps its running value until a restart.
    pub fn with_live_keys_from(&self, new: &Config) -> Config {
        let mut applied = self.clone();
        for live in LIVE_KEYS {
            (live.copy)(&mut applied, new);
        }
        applied
    }
}

/// TOML that does not parse: where and why. No key: the text is not key/value pairs yet.
fn syntax_error(text: &str, err: &toml::de::Error) -> ConfigError {
    let span = err.span();
    let mut reason = err.message().trim().to_owned();
    if reason == "duplicate key" {
        // The span covers the repeated key itself.
        if let Some(key) = span.clone().and_then(|span| text.get(span)) {
            reason = format!("duplicate key `{key}`");
        }
    }
    ConfigError {
        source_name: "config".into(),
        position: span.map(|span| line_column(text, span.start)),
        key: None,
        reason,
    }
}

/// Parsed TOML that does not fit the schema: the dotted key serde was reading (array
/// elements as `[i]`), its line:column from toml's span, and the reason in plain words.
fn schema_error(text: &str, err: &serde_path_to_error::Error<toml::de::Error>) -> ConfigError {
    let inner = err.inner();
    let message = inner.message().trim();
    let reason = if let Some(rest) = message.strip_prefix("unknown field `") {
        // "unknown field `x`, expected one of `a`, `b`": the path already ends in `x`.
        let expected = rest.split_once('`').map_or("", |(_, expected)| expected);
        let valid: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
        if valid.is_empty() {
            "unknown key".to_owned()
        } else {
            format!("unknown key (expected one of: {})", valid.join(", "))
        }
    } else if let Some(rest) = message.strip_prefix("invalid type: ") {
        match rest.split_once(", expected ") {
            Some((found, expected)) => {
                format!("expected {}, found {}", describe(expected), found.trim())
            }
            None => message.to_owned(),
        }
    } else if let Some(rest) = message.strip_prefix("invalid value: ") {
        rest.to_owned()
    } else {
        message.to_owned()
    };
    let path = err.path();
    ConfigError {
        source_name: "config".into(),
        position: inner.span().map(|span| line_column(text, span.start)),
        key: (path.iter().next().is_some()).then(|| path.to_string()),
        reason,
    }
}

fn describe(expected: &str) -> String {
    match expected {
        "u8" | "u16" | "u32" | "u64" | "usize" => "a non-negative integer".into(),
        "a string" | "a sequence" | "a boolean" => expected.into(),
        other => other.trim_end_matches('.').into(),
    }
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(text: &str) -> ConfigError {
        Config::from_toml_str(text).unwrap_err()
    }

    #[test]
    fn an_empty_file_is_the_defaults_and_the_reference_file_matches_them() {
        assert_eq!(Config::from_toml_str("").unwrap(), Config::default());
        let reference = Config::from_toml_str(include_str!("../config/peercam.toml")).unwrap();
        assert_eq!(reference, Config::default());
        let dev = Config::from_toml_str(include_str!("../config/dev.toml")).unwrap();
        assert_eq!(dev.http.web_root, std::path::Path::new("web/dist"));
    }

    #[test]
    fn unknown_keys_name_the_dotted_key_and_the_valid_ones() {
        let e = error("[video]\nwidht = 640\n");
        assert_eq!(e.key(), Some("video.widht"));
        assert_eq!(e.to_string(), "config:2:1: video.widht: unknown key (expected one of: source, width, height, fps, bitrate_kbps, keyframe_interval_s, format, passthrough, strict, testsrc_stall_after_s, controls)");
        assert_eq!(error("colour = 1\n").key(), Some("colour"));
        let e = error("[[webrtc.ice_servers]]\nurls = [\"stun:stun.example.lan\"]\n[[webrtc.ice_servers]]\nurl = \"turn:x\"\n");
        assert_eq!(e.key(), Some("webrtc.ice_servers[1].url"), "{e}");
    }

    #[test]
    fn wrong_types_say_what_was_expected() {
        let e = error("[video]\nfps = \"thirty\"\n");
        assert_eq!(e.key(), Some("video.fps"));
        assert!(
            e.reason()
                .contains("expected a non-negative integer, found string \"thirty\""),
            "{e}"
        );
    }

    #[test]
    fn keys_inside_inline_tables_and_multi_line_arrays_are_named_exactly() {
        let cases = [
            (
                "[webrtc]\nudp_addrs = [\n  \"0.0.0.0:0\",\n  5,\n]\n",
                "config:4:3: webrtc.udp_addrs[1]: expected a string, found integer `5`",
            ),
            (
                "[video]\ncontrols = { brightness = \"x\" }\n",
                "config:2:27: video.controls.brightness: expected i64, found string \"x\"",
            ),
            (
                "[webrtc]\nice_servers = [{ urls = [\"stun:x\"] }, { urls = [\"stun:y\"], user = \"u\" }]\n",
                "config:2:60: webrtc.ice_servers[1].user: unknown key (expected one of: urls, username, credential, secret_file, credential_ttl_s)",
            ),
            (
                "[device]\n[device.extra]\nx = 1\n",
                "config:2:9: device.extra: unknown key (expected one of: id, name)",
            ),
        ];
        for (text, message) in cases {
            assert_eq!(error(text).to_string(), message, "{text}");
        }
    }

    #[test]
    fn syntax_errors_give_the_position_and_the_repeated_key() {
        assert_eq!(
            error("[video]\nwidth = 640\nwidth = 700\n").to_string(),
            "config:3:1: duplicate key `width`"
        );
        let e = error("[video\nwidth = 1");
        assert_eq!((e.key(), e.position), (None, Some((1, 7))), "{e}");
    }

    #[test]
    fn a_topic_prefix_too_long_for_one_packet_is_refused() {
        let longest = "p".repeat(crate::signaling::protocol::MAX_TOPIC_PREFIX_BYTES);
        assert!(Config::from_toml_str(&format!("[mqtt]\ntopic_prefix = \"{longest}\"")).is_ok());
        let error = Config::from_toml_str(&format!("[mqtt]\ntopic_prefix = \"{longest}p\""))
            .unwrap_err()
            .to_string();
        assert!(error.contains("mqtt.topic_prefix"), "{error}");
        assert!(error.contains("at most 1024 bytes"), "{error}");
    }

    #[test]
    fn each_range_rule_names_its_key() {
        let cases = [
            ("[device]\nid = \"cam one\"", "device.id"),
            ("[video]\nsource = \"camera\"", "video.source"),
            ("[video]\nwidth = 1281", "video.width"),
            ("[video]\nheight = 8", "video.height"),
            ("[video]\nfps = 0", "video.fps"),
            ("[video]\nbitrate_kbps = 10", "video.bitrate_kbps"),
            ("[video]\nformat = \"ABCD\"", "video.format"),
            ("[video]\nformat = \"YUV\"", "video.format"),
            ("[video]\nformat = \"H264\"", "video.format"),
            (
                "[video]\ntestsrc_stall_after_s = 0",
                "video.testsrc_stall_after_s",
            ),
            (
                "[video]\nsource = \"/dev/video0\"\ntestsrc_stall_after_s = 5",
                "video.testsrc_stall_after_s",
            ),
            (
                "[video]\nkeyframe_interval_s = 0",
                "video.keyframe_interval_s",
            ),
            ("[mqtt]\ntopic_prefix = \"a/#\"", "mqtt.topic_prefix"),
            ("[mqtt]\nkeepalive_s = 1", "mqtt.keepalive_s"),
            ("[webrtc]\nmax_viewers = 0", "webrtc.max_viewers"),
            ("[webrtc]\nmax_pending = 0", "webrtc.max_pending"),
            ("[webrtc]\nmax_pending = 65", "webrtc.max_pending"),
            ("[webrtc]\nplayout_delay_ms = [100, 0]", "webrtc.playout_delay_ms"),
            ("[webrtc]\nplayout_delay_ms = [0, 105]", "webrtc.playout_delay_ms"),
            ("[http]\nmax_connections = 0", "http.max_connections"),
            ("[http]\nheader_timeout_s = 0", "http.header_timeout_s"),
            ("[webrtc]\noffers_per_s = 0", "webrtc.offers_per_s"),
            ("[webrtc]\noffers_per_s = 101", "webrtc.offers_per_s"),
            ("[webrtc]\noffer_burst = 0", "webrtc.offer_burst"),
            ("[webrtc]\noffer_burst = 101", "webrtc.offer_burst"),
            (
                "[webrtc]\nconnect_timeout_s = 0",
                "webrtc.connect_timeout_s",
            ),
            ("[webrtc]\nudp_addrs = []", "webrtc.udp_addrs"),
            ("[webrtc]\nudp_addrs = [\"nowhere\"]", "webrtc.udp_addrs"),
            (
                "[webrtc]\nudp_port = 8189\nudp_addrs = [\"0.0.0.0:50000\"]",
                "webrtc.udp_addrs",
            ),
            (
                "[webrtc]\npublic_ips = [\"203.0.113.7\", \"127.0.0.1\"]",
                "webrtc.public_ips[1]",
            ),
            ("[webrtc]\npublic_ips = [\"0.0.0.0\"]", "webrtc.public_ips[0]"),
            (
                "[[webrtc.ice_servers]]\nurls = [\"http://x\"]",
                "webrtc.ice_servers[0].urls",
            ),
            (
                "[[webrtc.ice_servers]]\nurls = [\"turn:turn.example.lan:3478\"]",
                "webrtc.ice_servers[0]",
            ),
            (
                "[[webrtc.ice_servers]]\nurls = [\"turn:t.lan\"]\nsecret_file = \"/s\"\nusername = \"u\"",
                "webrtc.ice_servers[0].secret_file",
            ),
            (
                "[[webrtc.ice_servers]]\nurls = [\"turn:t.lan\"]\nusername = \"u\"\ncredential = \"p\"\ncredential_ttl_s = 600",
                "webrtc.ice_servers[0].credential_ttl_s",
            ),
            (
                "[[webrtc.ice_servers]]\nurls = [\"turn:t.lan\"]\nsecret_file = \"/s\"\ncredential_ttl_s = 5",
                "webrtc.ice_servers[0].credential_ttl_s",
            ),
            ("[telemetry]\ninterval_ms = 5", "telemetry.interval_ms"),
            ("[snapshot]\nquality = 0", "snapshot.quality"),
            (
                "[http]\nlisten = \"off\"\n[metrics]\nenabled = true",
                "metrics.enabled",
            ),
            ("[snapshot]\nquality = 101", "snapshot.quality"),
            ("[telemetry]\nmqtt_interval_s = 0", "telemetry.mqtt_interval_s"),
            (
                "[homeassistant]\ndiscovery_prefix = \"ha/#\"",
                "homeassistant.discovery_prefix",
            ),
            (
                "[homeassistant]\ndiscovery_prefix = \"\"",
                "homeassistant.discovery_prefix",
            ),
            (
                "[homeassistant]\nsnapshot_interval_s = 86401",
                "homeassistant.snapshot_interval_s",
            ),
            (
                "[homeassistant]\nconfiguration_url = \"cam.lan:8080\"",
                "homeassistant.configuration_url",
            ),
            (
                "[homeassistant]\nconfiguration_url = \"ftp://cam.lan/\"",
                "homeassistant.configuration_url",
            ),
            ("[log]\nlevel = \"=[\"", "log.level"),
        ];
        for (text, key) in cases {
            assert_eq!(error(text).key(), Some(key), "{text}");
        }
        assert_eq!(
            error("[video]\nwidth = 1281").to_string(),
            "config: video.width: must be an even number between 16 and 3840 (got 1281)"
        );
    }

    #[test]
    fn a_format_peercam_cannot_capture_is_refused_with_the_usable_ones() {
        assert_eq!(
            error("[video]\nformat = \"ABCD\"").to_string(),
            "config: video.format: must be \"auto\" or a fourcc peercam can use: H264, YUYV, UYVY, NV12, YU12, YV12, MJPG (got \"ABCD\")"
        );
        let format = |text: &str| {
            Config::from_toml_str(&format!("[video]\nformat = \"{text}\""))
                .unwrap()
                .video
                .pixel_format()
        };
        assert_eq!(format("auto"), None);
        assert_eq!(format("NV12"), Some(PixelFormat::Nv12));
        assert_eq!(format("JPEG"), Some(PixelFormat::Mjpeg));
        let passthrough =
            Config::from_toml_str("[video]\nformat = \"H264\"\npassthrough = true").unwrap();
        assert_eq!(passthrough.video.pixel_format(), Some(PixelFormat::H264));
    }

    #[test]
    fn broker_urls() {
        let broker = |text: &str| {
            Config::from_toml_str(&format!("[mqtt]\nbroker = \"{text}\"")).map(|c| c.mqtt.broker)
        };
        assert_eq!(broker("embedded").unwrap(), BrokerTarget::Embedded);
        assert_eq!(
            broker("mqtt://broker.lan").unwrap(),
            BrokerTarget::External {
                host: "broker.lan".into(),
                port: 1883,
                tls: false,
                websocket_path: None,
            }
        );
        assert_eq!(
            broker("mqtt://10.0.0.2:1884").unwrap(),
            BrokerTarget::External {
                host: "10.0.0.2".into(),
                port: 1884,
                tls: false,
                websocket_path: None,
            }
        );
        assert_eq!(
            broker("mqtts://broker.example.net").unwrap(),
            BrokerTarget::External {
                host: "broker.example.net".into(),
                port: 8883,
                tls: true,
                websocket_path: None,
            }
        );
        assert_eq!(
            broker("mqtts://[::1]:8884").unwrap(),
            BrokerTarget::External {
                host: "::1".into(),
                port: 8884,
                tls: true,
                websocket_path: None,
            }
        );
        assert_eq!(
            broker("wss://broker.lan/mqtt").unwrap(),
            BrokerTarget::External {
                host: "broker.lan".into(),
                port: 443,
                tls: true,
                websocket_path: Some("/mqtt".into()),
            }
        );
        assert_eq!(
            broker("wss://broker.lan:8443").unwrap(),
            BrokerTarget::External {
                host: "broker.lan".into(),
                port: 8443,
                tls: true,
                websocket_path: Some("/".into()),
            }
        );
        let e = broker("ws://broker.lan/mqtt").unwrap_err();
        assert_eq!(e.key(), Some("mqtt.broker"));
        assert!(e.reason().contains("in the clear"), "{e}");
        assert!(broker("mqtt://host:99999").is_err());
        assert!(broker("tcp://host").is_err());
    }

    #[test]
    fn listeners_can_be_turned_off() {
        let config =
            Config::from_toml_str("[broker]\nws_listen = \"off\"\n[http]\nlisten = \"\"").unwrap();
        assert_eq!((config.broker.ws_listen, config.http.listen), (None, None));
        assert_eq!(
            error("[http]\nlisten = \"everywhere\"").key(),
            Some("http.listen")
        );
    }

    #[test]
    fn whep_follows_the_http_server_unless_told_otherwise() {
        let config = Config::default();
        assert!(config.whep.is_served(&config.http));
        let no_http = Config::from_toml_str("[http]\nlisten = \"off\"").unwrap();
        assert!(!no_http.whep.is_served(&no_http.http));
        let off = Config::from_toml_str("[whep]\nenabled = false").unwrap();
        assert!(!off.whep.is_served(&off.http));
        assert_eq!(
            error("[http]\nlisten = \"off\"\n[whep]\nenabled = true").key(),
            Some("whep.enabled")
        );
        for bad in ["https://ha.example.net/", "ha.example.net", ""] {
            let text = format!("[whep]\nallow_origin = {bad:?}");
            assert_eq!(error(&text).key(), Some("whep.allow_origin"), "{bad}");
        }
        let one = Config::from_toml_str("[whep]\nallow_origin = \"http://10.0.0.5:8123\"").unwrap();
        assert_eq!(one.whep.allow_origin, "http://10.0.0.5:8123");
    }

    #[test]
    fn listeners_on_one_port_are_refused_before_run_fails_to_bind() {
        let cases = [
            (
                "[broker]\nlisten = \"127.0.0.1:1883\"\nws_listen = \"127.0.0.1:1883\"",
                "broker.ws_listen",
            ),
            ("[http]\nlisten = \"127.0.0.1:1883\"", "http.listen"),
            ("[http]\nlisten = \"0.0.0.0:8083\"", "http.listen"),
            ("[broker]\nlisten = \"127.0.0.1:0\"", "broker.listen"),
            ("[broker]\nws_listen = \"127.0.0.1:0\"", "broker.ws_listen"),
        ];
        for (text, key) in cases {
            assert_eq!(error(text).key(), Some(key), "{text}");
        }
        assert_eq!(
            error("[http]\nlisten = \"127.0.0.1:8083\"").to_string(),
            "config: http.listen: 127.0.0.1:8083 takes the port of broker.ws_listen (127.0.0.1:8083)"
        );
        // An external broker leaves [broker] unused; a disabled listener takes no port.
        Config::from_toml_str(
            "[mqtt]\nbroker = \"mqtt://broker.lan\"\n[http]\nlisten = \"127.0.0.1:1883\"",
        )
        .unwrap();
        Config::from_toml_str("[broker]\nws_listen = \"off\"\n[http]\nlisten = \"127.0.0.1:8083\"")
            .unwrap();
    }

    #[test]
    fn protected_mode_refuses_an_open_broker_beyond_loopback_naming_the_keys() {
        let e = error("[broker]\nlisten = \"0.0.0.0:1883\"");
        assert_eq!(e.key(), Some("broker.listen"));
        assert!(e.reason().contains("broker.users"), "{e}");
        assert!(e.reason().contains("broker.allow_anonymous = true"), "{e}");
        assert_eq!(
            error("[broker]\nws_listen = \"192.168.1.20:8083\"").key(),
            Some("broker.ws_listen")
        );
        // The page's server relays MQTT at /mqtt: a door to the broker too.
        let e = error("[http]\nlisten = \"0.0.0.0:8080\"");
        assert_eq!(e.key(), Some("http.listen"));
        assert!(e.reason().contains("/mqtt"), "{e}");

        let anonymous =
            Config::from_toml_str("[broker]\nlisten = \"0.0.0.0:1883\"\nallow_anonymous = true")
                .unwrap();
        let warnings = anonymous.warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("broker.allow_anonymous = true"),
            "{warnings:?}"
        );
        assert!(
            warnings[0].contains("broker.listen 0.0.0.0:1883"),
            "{warnings:?}"
        );

        let hash = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$9sTbSlTio3Biev89thdrlKKiCaYsjjYVJxGAL3swxpQ";
        let users = Config::from_toml_str(&format!(
            "[broker]\nlisten = \"0.0.0.0:1883\"\n[broker.users]\nalice = \"{hash}\""
        ))
        .unwrap();
        assert!(
            users.warnings()[0].contains("unencrypted on broker.listen"),
            "{:?}",
            users.warnings()
        );
        // Loopback needs nothing (the Quick start); an external broker opens no door.
        assert!(Config::default().warnings().is_empty());
        Config::from_toml_str(
            "[mqtt]\nbroker = \"mqtt://broker.lan\"\n[http]\nlisten = \"0.0.0.0:8080\"",
        )
        .unwrap();
    }

    #[test]
    fn broker_users_and_tls_name_their_keys() {
        let hash = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$9sTbSlTio3Biev89thdrlKKiCaYsjjYVJxGAL3swxpQ";
        let cases = [
            ("[broker.users]\nalice = \"hunter2\"".to_owned(), "broker.users.alice"),
            (format!("[broker.users]\n\"a b\" = \"{hash}\""), "broker.users.a b"),
            (format!("[broker.users]\npeercam-internal = \"{hash}\""), "broker.users.peercam-internal"),
            ("[tls]\ncert_file = \"/etc/peercam/cert.pem\"".to_owned(), "tls.key_file"),
            ("[tls]\nkey_file = \"/etc/peercam/key.pem\"".to_owned(), "tls.cert_file"),
            ("[broker]\ntls_listen = \"127.0.0.1:8883\"".to_owned(), "broker.tls_listen"),
            (
                "[broker]\ntls_listen = \"127.0.0.1:8080\"\n[tls]\ncert_file = \"c\"\nkey_file = \"k\"".to_owned(),
                "http.listen",
            ),
            (
                "[broker]\ntls_listen = \"127.0.0.1:0\"\n[tls]\ncert_file = \"c\"\nkey_file = \"k\"".to_owned(),
                "broker.tls_listen",
            ),
        ];
        for (text, key) in cases {
            assert_eq!(error(&text).key(), Some(key), "{text}");
        }
        let tls = Config::from_toml_str(
            "[broker]\ntls_listen = \"127.0.0.1:8883\"\n[tls]\ncert_file = \"c\"\nkey_file = \"k\"",
        )
        .unwrap();
        assert_eq!(tls.tls.files(), Some((Path::new("c"), Path::new("k"))));
        assert_eq!(tls.broker.local_addr(), addr("127.0.0.1:1883"));
        let wildcard = Config::from_toml_str(&format!(
            "[broker]\nlisten = \"[::]:1884\"\n[broker.users]\nalice = \"{hash}\""
        ))
        .unwrap();
        assert_eq!(wildcard.broker.local_addr(), addr("[::1]:1884"));
    }

    #[test]
    fn listeners_clash_on_one_port_of_one_address_or_a_wildcard_covering_it() {
        let clash = |a: &str, b: &str| listeners_clash(a.parse().unwrap(), b.parse().unwrap());
        assert!(clash("127.0.0.1:80", "127.0.0.1:80"));
        assert!(clash("0.0.0.0:80", "192.168.1.2:80"));
        assert!(clash("[::]:80", "127.0.0.1:80"));
        assert!(clash("[::]:80", "0.0.0.0:80"));
        assert!(!clash("127.0.0.1:80", "127.0.0.1:81"));
        assert!(!clash("127.0.0.1:80", "192.168.1.2:80"));
        assert!(!clash("0.0.0.0:80", "[::1]:80"));
        assert!(!clash("127.0.0.1:0", "127.0.0.1:0"));
    }

    #[test]
    fn ice_servers_serialize_in_rtc_shape() {
        let config = Config::from_toml_str(
            "[[webrtc.ice_servers]]\nurls = [\"stun:stun.example.lan:3478\"]\n[[webrtc.ice_servers]]\nurls = [\"turn:turn.example.lan:3478\"]\nusername = \"u\"\ncredential = \"p\"\n",
        )
        .unwrap();
        let json = serde_json::to_value(&config.webrtc.ice_servers).unwrap();
        assert_eq!(
            json,
            serde_json::json!([{"urls":["stun:stun.example.lan:3478"]},{"urls":["turn:turn.example.lan:3478"],"username":"u","credential":"p"}])
        );
    }

    #[test]
    fn reload_applies_live_keys_and_names_the_rest() {
        let old = Config::default();
        let new = Config::from_toml_str(
            "[log]\nlevel = \"debug\"\n[webrtc]\nmax_viewers = 2\nconnect_timeout_s = 20\n[video]\nfps = 25\n",
        )
        .unwrap();
        let plan = old.reload_plan(&new);
        assert_eq!(plan.applied, vec!["log.level", "webrtc.max_viewers"]);
        assert_eq!(plan.needs_restart, vec!["video", "webrtc"]);
        assert_eq!(old.reload_plan(&old), ReloadPlan::default());

        let applied = old.with_live_keys_from(&new);
        assert_eq!(applied.log.level, "debug");
        assert_eq!(applied.webrtc.max_viewers, 2);
        assert_eq!(applied.webrtc.connect_timeout_s, 15, "needs a restart");
        assert_eq!(applied.video.fps, 30, "needs a restart");
        assert_eq!(applied.reload_plan(&new).applied, Vec::<&str>::new());
    }

    #[test]
    fn every_live_key_is_reported_and_applied_and_nothing_else() {
        let old = Config::default();
        let new = Config::from_toml_str(
            "[log]\nlevel = \"debug\"\n[telemetry]\ninterval_ms = 500\n[webrtc]\nmax_viewers = 2\n[device]\nname = \"Porch\"\n[auth]\nrevoked = [\"mallory\"]\n",
        )
        .unwrap();
        let plan = old.reload_plan(&new);
        let live: Vec<&str> = LIVE_KEYS.iter().map(|live| live.key).collect();
        assert_eq!(plan.applied, live, "this test changes every live key");
        assert_eq!(plan.needs_restart, Vec::<&str>::new());
        assert_eq!(old.with_live_keys_from(&new), new);

        let renamed = Config::from_toml_str("[device]\nid = \"cam2\"").unwrap();
        assert_eq!(old.reload_plan(&renamed).needs_restart, vec!["device.id"]);
        assert_eq!(old.with_live_keys_from(&renamed), old);
    }

    #[test]
    fn auth_modes_and_bad_revoked_entries_name_their_keys() {
        let keys = Config::from_toml_str("[auth]\nmode = \"keys\"").unwrap();
        assert_eq!(keys.auth.mode, crate::signaling::protocol::AuthMode::Keys);
        let open = Config::from_toml_str("[auth]\nmode = \"open\"").unwrap();
        assert_eq!(open.auth.mode, crate::signaling::protocol::AuthMode::Open);
        assert_eq!(error("[auth]\nmode = \"none\"").key(), Some("auth.mode"));
        assert_eq!(
            error("[auth]\nrevoked = [\"alice\", \"bob smith\"]").key(),
            Some("auth.revoked[1]")
        );
    }

    #[test]
    fn broker_credentials_and_tls_files_are_checked_and_name_their_keys() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("peercam-config-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, contents: &str, mode: u32| {
            let path = dir.join(name);
            std::fs::write(&path, contents).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            path.display().to_string()
        };
        let issued = rcgen::generate_simple_self_signed(vec!["broker.lan".to_owned()]).unwrap();
        let other = rcgen::generate_simple_self_signed(vec!["other.lan".to_owned()]).unwrap();
        let ca = write("ca.pem", &issued.cert.pem(), 0o644);
        let cert = write("cert.pem", &issued.cert.pem(), 0o644);
        let key = write("key.pem", &issued.signing_key.serialize_pem(), 0o600);
        let other_key = write("other-key.pem", &other.signing_key.serialize_pem(), 0o600);
        let password = write("password", "s3cret\n", 0o600);
        let readable = write("readable", "s3cret\n", 0o640);
        let garbage = write("garbage.pem", "not PEM\n", 0o644);
        let tls = "[mqtt]\nbroker = \"mqtts://broker.lan\"\nusername = \"camera\"\n";

        let good = format!("{tls}password_file = {password:?}\nca_file = {ca:?}\ncert_file = {cert:?}\nkey_file = {key:?}\n");
        let config = Config::from_toml_str(&good).unwrap();
        assert!(config.mqtt.broker.is_tls());
        assert_eq!(config.mqtt.password_key(), "mqtt.password_file");
        let cases = [
            (
                format!("{tls}password_file = {readable:?}"),
                "mqtt.password_file",
                "mode 640",
            ),
            (
                format!("{tls}password_file = \"/nonexistent/password\""),
                "mqtt.password_file",
                "cannot read it",
            ),
            (
                format!("{tls}password = \"x\"\npassword_file = {password:?}"),
                "mqtt.password_file",
                "not both",
            ),
            (
                format!("[mqtt]\nbroker = \"mqtts://broker.lan\"\npassword_file = {password:?}"),
                "mqtt.username",
                "needs a username",
            ),
            (
                format!("{tls}ca_file = {garbage:?}"),
                "mqtt.ca_file",
                "holds no PEM certificate",
            ),
            (
                format!("{tls}ca_file = \"/nonexistent/ca.pem\""),
                "mqtt.ca_file",
                "cannot read it",
            ),
            (
                format!("{tls}cert_file = {cert:?}"),
                "mqtt.key_file",
                "needs the key",
            ),
            (
                format!("{tls}key_file = {key:?}"),
                "mqtt.cert_file",
                "needs the certificate",
            ),
            (
                format!("{tls}cert_file = {garbage:?}\nkey_file = {key:?}"),
                "mqtt.cert_file",
                "holds no PEM certificate",
            ),
            (
                format!("{tls}cert_file = {cert:?}\nkey_file = {garbage:?}"),
                "mqtt.key_file",
                "holds no PEM private key",
            ),
            (
                format!("{tls}cert_file = {cert:?}\nkey_file = {other_key:?}"),
                "mqtt.key_file",
                "cannot be used with mqtt.cert_file",
            ),
            (
                format!("[mqtt]\nbroker = \"mqtt://broker.lan\"\nca_file = {ca:?}"),
                "mqtt.ca_file",
                "TLS brokers only",
            ),
            (
                format!("[mqtt]\ncert_file = {cert:?}\nkey_file = {key:?}"),
                "mqtt.cert_file",
                "TLS brokers only",
            ),
        ];
        for (text, key, reason) in cases {
            let e = error(&text);
            assert_eq!(e.key(), Some(key), "{text}: {e}");
            assert!(e.reason().contains(reason), "{text}: {e}");
            assert!(!e.to_string().contains("s3cret"), "{e}");
        }
    }

    #[test]
    fn load_names_the_missing_file() {
        let e = Config::load(Path::new("/nonexistent/peercam.toml")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("/nonexistent/peercam.toml: cannot read"),
            "{e}"
        );
    }
}
