//! Signaling protocol v1 over MQTT: topic names, message types, and their parsing,
//! validation and serialization (see docs/signaling.md for the reference).
//!
//! This module is pure: it never does I/O, never logs, never holds session state, and
//! must never panic on any input. It turns untrusted payloads into typed messages or
//! into a [`ProtocolError`] whose text can be sent back to the viewer as-is.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Version of this protocol, announced in the `protocol` field of the status message.
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest accepted payload, in bytes, for every message in both directions.
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;

/// Largest accepted SDP, in bytes.
pub const MAX_SDP_BYTES: usize = 64 * 1024;
/// Largest `candidate` string of a candidate (an `a=candidate` line is far shorter): the
/// camera holds candidates that arrive before their offer, so each must be small.
pub const MAX_CANDIDATE_BYTES: usize = 1024;
/// Largest `sdpMid` and `usernameFragment` of a candidate (an ICE ufrag has at most 256
/// characters, RFC 8839).
pub const MAX_CANDIDATE_FIELD_BYTES: usize = 256;

/// Longest topic prefix (`mqtt.topic_prefix`) in bytes, so that every topic of the protocol
/// fits in [`MAX_PACKET_BYTES`] beside a [`MAX_PAYLOAD_BYTES`] payload.
pub const MAX_TOPIC_PREFIX_BYTES: usize = 1024;

/// Largest MQTT packet, counted as its remaining length (topic, packet id and payload), that
/// the embedded broker and the camera's client accept: a [`MAX_PAYLOAD_BYTES`] payload plus
/// 4 KiB for the topic and headers. A payload between the two limits still reaches the
/// parser and gets a `bad-request` reply naming the limit; a packet over this one is refused
/// by closing the connection it came on (MQTT 3.1.1 has no other refusal), before its body
/// is read.
pub const MAX_PACKET_BYTES: usize = MAX_PAYLOAD_BYTES + 4 * 1024;

const SESSION_ID_MIN_LEN: usize = 8;
const SESSION_ID_MAX_LEN: usize = 64;

/// How many characters of an untrusted string an error message quotes; the rest is
/// elided so a hostile 60 KiB "type" cannot bloat logs or error replies.
const QUOTE_MAX_CHARS: usize = 64;

/// True if `sid` matches `[A-Za-z0-9_-]{8,64}`.
pub fn is_valid_session_id(sid: &str) -> bool {
    (SESSION_ID_MIN_LEN..=SESSION_ID_MAX_LEN).contains(&sid.len())
        && sid
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-')
}

/// A viewer-chosen session id that has passed [`is_valid_session_id`], so it is safe to
/// use as an MQTT topic level and in logs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(String);

impl SessionId {
    /// Returns the id if `sid` is valid, `None` otherwise.
    pub fn parse(sid: &str) -> Option<SessionId> {
        is_valid_session_id(sid).then(|| SessionId(sid.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for SessionId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Why a topic was not accepted by [`Topics::parse_to_camera`].
///
/// Neither case gets a reply: a topic that is not ours is none of our business, and a
/// session topic with an invalid sid has no valid to-viewer topic to answer on (replying
/// would mean publishing to a topic built from unvalidated input). Log the second case.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// Not `{prefix}/{device}/session/{sid}/to-camera` for this camera; ignore silently.
    #[error("topic {} is not a to-camera session topic of this camera", quoted(.topic))]
    NotASessionTopic { topic: String },
    /// A to-camera session topic of this camera whose sid is invalid; log, do not reply.
    #[error(
        "session id {} is invalid: it must be 8 to 64 characters from A-Z, a-z, 0-9, \"_\" and \"-\"",
        quoted(.sid)
    )]
    InvalidSessionId { sid: String },
}

/// The MQTT topic names of one camera.
///
/// `prefix` and `device` are used verbatim, so the caller (configuration) must ensure
/// they contain no MQTT wildcards (`+`, `#`) and `device` contains no `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    prefix: String,
    device: String,
}

impl Topics {
    pub fn new(prefix: impl Into<String>, device: impl Into<String>) -> Topics {
        Topics {
            prefix: prefix.into(),
            device: device.into(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn device(&self) -> &str {
        &self.device
    }

    /// `{prefix}/{device}/status`: retained, QoS 1, published by the camera.
    pub fn status(&self) -> String {
        format!("{}/{}/status", self.prefix, self.device)
    }

    /// `{prefix}/{device}/session/+/to-camera`: what the camera subscribes to.
    pub fn to_camera_filter(&self) -> String {
        format!("{}/{}/session/+/to-camera", self.prefix, self.device)
    }

    /// `{prefix}/{device}/session/{sid}/to-viewer`: where the camera answers.
    pub fn to_viewer(&self, sid: &str) -> String {
        format!("{}/{}/session/{sid}/to-viewer", self.prefix, self.device)
    }

    /// `{prefix}/{device}/session/{sid}/to-camera`: where the viewer publishes.
    pub fn to_camera(&self, sid: &str) -> String {
        format!("{}/{}/session/{sid}/to-camera", self.prefix, self.device)
    }

    /// Extracts the session id from a topic matched by [`Topics::to_camera_filter`].
    pub fn parse_to_camera(&self, topic: &str) -> Result<SessionId, TopicError> {
        let not_ours = || TopicError::NotASessionTopic {
            topic: topic.to_owned(),
        };
        let sid = topic
            .strip_prefix(self.prefix.as_str())
            .and_then(|rest| rest.strip_prefix('/'))
            .and_then(|rest| rest.strip_prefix(self.device.as_str()))
            .and_then(|rest| rest.strip_prefix("/session/"))
            .and_then(|rest| rest.strip_suffix("/to-camera"))
            .ok_or_else(not_ours)?;
        // `+` matches exactly one level, so a sid spanning levels never matched our filter.
        if sid.contains('/') {
            return Err(not_ours());
        }
        SessionId::parse(sid).ok_or_else(|| TopicError::InvalidSessionId {
            sid: sid.to_owned(),
        })
    }
}

/// One trickled ICE candidate, shaped like the browser's `RTCIceCandidateInit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceCandidate {
    /// The `candidate:...` attribute value; empty means end of candidates for a section.
    pub candidate: String,
    #[serde(rename = "sdpMid")]
    pub sdp_mid: Option<String>,
    #[serde(rename = "sdpMLineIndex")]
    pub sdp_mline_index: Option<u16>,
    /// Browsers add it; kept and passed through so the ICE agent can match the ufrag.
    #[serde(
        rename = "usernameFragment",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub username_fragment: Option<String>,
}

/// The `auth` of an offer when the camera requires access keys: the viewer named in the
/// access link, its expiry (Unix seconds) and the offer's mac (see docs/signaling.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfferAuth {
    pub viewer: String,
    pub exp: u64,
    pub mac: String,
}

/// Whether a camera requires access keys, as its status announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    Keys,
    Open,
}

/// A message a viewer publishes on its to-camera topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ViewerMessage {
    /// The SDP offer; validated, and guaranteed to contain an `m=video` section.
    Offer {
        sdp: String,
        auth: Option<OfferAuth>,
    },
    /// A trickled candidate; `None` means the viewer has gathered all its candidates.
    Candidate(Option<IceCandidate>),
    Hangup {
        mac: Option<String>,
    },
}

/// A message the camera publishes on a viewer's to-viewer topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CameraMessage {
    Answer {
        sdp: String,
        /// Set when the session is keyed: proves the answer comes from the camera.
        mac: Option<String>,
    },
    /// A trickled candidate; `None` means the camera has gathered all its candidates.
    Candidate(Option<IceCandidate>),
    Hangup {
        reason: String,
        mac: Option<String>,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
}

/// The `code` of an `error` message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorCode {
    /// The viewer sent something malformed or out of sequence.
    BadRequest,
    /// The camera already serves `max_viewers` viewers.
    Busy,
    /// The camera device is gone; the agent itself is still online.
    Unavailable,
    /// The camera failed on its side.
    Internal,
    /// The offer carries no valid access key for this camera.
    Unauthorized,
}

impl ErrorCode {
    const ALL: [ErrorCode; 5] = [
        ErrorCode::BadRequest,
        ErrorCode::Busy,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
        ErrorCode::Unauthorized,
    ];

    /// The wire spelling, e.g. `"bad-request"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad-request",
            ErrorCode::Busy => "busy",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::Unauthorized => "unauthorized",
        }
    }

    fn from_wire(code: &str) -> Option<ErrorCode> {
        ErrorCode::ALL
            .into_iter()
            .find(|known| known.as_str() == code)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a payload was rejected. Its `Display` is a sentence naming the offending field,
/// suitable for logs and for the `message` of an `error` reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}")]
pub struct ProtocolError {
    kind: ProtocolErrorKind,
}

impl ProtocolError {
    /// The error code to reply with; every parse error is the viewer's fault.
    pub fn code(&self) -> ErrorCode {
        ErrorCode::BadRequest
    }

    pub fn kind(&self) -> &ProtocolErrorKind {
        &self.kind
    }
}

impl From<ProtocolErrorKind> for ProtocolError {
    fn from(kind: ProtocolErrorKind) -> ProtocolError {
        ProtocolError { kind }
    }
}

/// The specific reason behind a [`ProtocolError`], for callers that react differently
/// (e.g. to [`ProtocolErrorKind::OfferHasNoVideo`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolErrorKind {
    #[error("payload is {len} bytes, the limit is {MAX_PAYLOAD_BYTES}")]
    PayloadTooLarge { len: usize },
    #[error("payload is not valid UTF-8 (invalid byte at offset {valid_up_to})")]
    NotUtf8 { valid_up_to: usize },
    #[error("payload is not valid JSON: {detail}")]
    NotJson { detail: String },
    #[error("payload is {found}, expected a JSON object")]
    NotAnObject { found: &'static str },
    #[error("message has no \"type\" field")]
    MissingType,
    #[error("field \"type\" must be a string, found {found}")]
    TypeNotAString { found: &'static str },
    #[error("unknown message type {} (expected {expected})", quoted(.found))]
    UnknownType {
        found: String,
        expected: &'static str,
    },
    #[error("{message} message has no \"{field}\" field")]
    MissingField {
        message: &'static str,
        field: &'static str,
    },
    #[error("field \"{field}\" of {message} message {reason}")]
    InvalidField {
        message: &'static str,
        field: &'static str,
        reason: String,
    },
    #[error("{message} SDP is malformed: {reason}")]
    InvalidSdp {
        message: &'static str,
        reason: String,
    },
    #[error("offer SDP has no video section (m=video)")]
    OfferHasNoVideo,
}

/// Shorthand for the error type of every parse function.
type Parsed<T> = Result<T, ProtocolError>;

/// Checks an offer's SDP, whichever transport brought it: well-formed, within the size
/// limit, and with a video section.
pub fn check_offer_sdp(sdp: &str) -> Parsed<()> {
    validate_sdp("offer", sdp)?;
    if !sdp_has_video(sdp) {
        return Err(ProtocolErrorKind::OfferHasNoVideo.into());
    }
    Ok(())
}

/// Parses and validates a payload from a viewer's to-camera topic.
pub fn parse_viewer_message(payload: &[u8]) -> Parsed<ViewerMessage> {
    let (kind, object) = parse_envelope(payload)?;
    match kind.as_str() {
        "offer" => {
            let fields = Fields::new("offer", &object);
            let sdp = fields.required_str("sdp")?;
            check_offer_sdp(sdp)?;
            Ok(ViewerMessage::Offer {
                sdp: sdp.to_owned(),
                auth: parse_offer_auth(&fields)?,
            })
        }
        "candidate" => Ok(ViewerMessage::Candidate(parse_candidate_field(&object)?)),
        // A viewer may add a reason for its own logs; the camera does not need it.
        "hangup" => Ok(ViewerMessage::Hangup {
            mac: Fields::new("hangup", &object)
                .optional_str("mac")?
                .map(str::to_owned),
        }),
        _ => Err(unknown_type(kind, "offer, candidate or hangup")),
    }
}

/// The optional `auth` object of an offer: `viewer` and `mac` strings, `exp` an integer.
fn parse_offer_auth(fields: &Fields) -> Parsed<Option<OfferAuth>> {
    let Some(auth) = fields.optional("auth") else {
        return Ok(None);
    };
    let Some(object) = auth.as_object() else {
        return Err(fields.invalid("auth", "must be an object with viewer, exp and mac".into()));
    };
    let auth_fields = Fields::new("offer auth", object);
    let exp = auth_fields
        .optional("exp")
        .and_then(Value::as_u64)
        .ok_or_else(|| {
            auth_fields.invalid(
                "exp",
                "must be the expiry in Unix seconds, an integer".into(),
            )
        })?;
    Ok(Some(OfferAuth {
        viewer: auth_fields.required_str("viewer")?.to_owned(),
        exp,
        mac: auth_fields.required_str("mac")?.to_owned(),
    }))
}

/// Parses and validates a payload from a to-viewer topic (for test viewers).
pub fn parse_camera_message(payload: &[u8]) -> Parsed<CameraMessage> {
    let (kind, object) = parse_envelope(payload)?;
    match kind.as_str() {
        "answer" => {
            let sdp = Fields::new("answer", &object).required_str("sdp")?;
            validate_sdp("answer", sdp)?;
            Ok(CameraMessage::Answer {
                sdp: sdp.to_owned(),
                mac: Fields::new("answer", &object)
                    .optional_str("mac")?
                    .map(str::to_owned),
            })
        }
        "candidate" => Ok(CameraMessage::Candidate(parse_candidate_field(&object)?)),
        "hangup" => {
            let fields = Fields::new("hangup", &object);
            Ok(CameraMessage::Hangup {
                reason: fields.required_str("reason")?.to_owned(),
                mac: fields.optional_str("mac")?.map(str::to_owned),
            })
        }
        "error" => {
            let fields = Fields::new("error", &object);
            let code_text = fields.required_str("code")?;
            let code = ErrorCode::from_wire(code_text).ok_or_else(|| {
                fields.invalid(
                    "code",
                    format!(
                        "must be \"bad-request\", \"busy\", \"unavailable\", \"internal\" or \"unauthorized\", found {}",
                        quoted(code_text)
                    ),
                )
            })?;
            let message = fields.required_str("message")?;
            Ok(CameraMessage::Error {
                code,
                message: message.to_owned(),
            })
        }
        _ => Err(unknown_type(kind, "answer, candidate, hangup or error")),
    }
}

impl ViewerMessage {
    pub fn to_json(&self) -> String {
        let wire = match self {
            ViewerMessage::Offer { sdp, auth } => Wire::Offer {
                sdp,
                auth: auth.as_ref(),
            },
            ViewerMessage::Candidate(candidate) => Wire::Candidate {
                candidate: candidate.as_ref(),
            },
            ViewerMessage::Hangup { mac } => Wire::ViewerHangup {
                mac: mac.as_deref(),
            },
        };
        to_json_string(&wire)
    }
}

impl CameraMessage {
    pub fn to_json(&self) -> String {
        let wire = match self {
            CameraMessage::Answer { sdp, mac } => Wire::Answer {
                sdp,
                mac: mac.as_deref(),
            },
            CameraMessage::Candidate(candidate) => Wire::Candidate {
                candidate: candidate.as_ref(),
            },
            CameraMessage::Hangup { reason, mac } => Wire::CameraHangup {
                reason,
                mac: mac.as_deref(),
            },
            CameraMessage::Error { code, message } => Wire::Error {
                code: *code,
                message,
            },
        };
        to_json_string(&wire)
    }
}

/// Serialization shapes of the session messages, so `type` comes first on the wire.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Wire<'a> {
    Offer {
        sdp: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        auth: Option<&'a OfferAuth>,
    },
    Answer {
        sdp: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        mac: Option<&'a str>,
    },
    Candidate {
        candidate: Option<&'a IceCandidate>,
    },
    #[serde(rename = "hangup")]
    ViewerHangup {
        #[serde(skip_serializing_if = "Option::is_none")]
        mac: Option<&'a str>,
    },
    #[serde(rename = "hangup")]
    CameraHangup {
        reason: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        mac: Option<&'a str>,
    },
    Error {
        code: ErrorCode,
        message: &'a str,
    },
}

/// Serializes one of this module's types.
fn to_json_string<T: Serialize>(value: &T) -> String {
    // serde_json fails only on non-string map keys or a failing custom `Serialize`; our
    // types hold only strings, integers, options and `serde_json::Value`, so this is
    // unreachable and never depends on input.
    serde_json::to_string(value).expect("serializing protocol messages cannot fail")
}

/// The camera's state as announced in the status message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CameraState {
    /// Agent and camera device are up; viewers may connect.
    Online,
    /// Agent is gone (last will or clean shutdown).
    Offline,
    /// Agent is up but the camera device is gone.
    Unavailable,
}

impl CameraState {
    const ALL: [CameraState; 3] = [
        CameraState::Online,
        CameraState::Offline,
        CameraState::Unavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CameraState::Online => "online",
            CameraState::Offline => "offline",
            CameraState::Unavailable => "unavailable",
        }
    }
}

impl fmt::Display for CameraState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The video the camera sends, as announced in the status message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VideoInfo {
    /// Always `"H264"` in protocol v1.
    pub codec: String,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
}

/// The `type` tag of the status message; a one-value enum so derived (de)serialization
/// writes and insists on `"type":"status"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
enum StatusTag {
    #[default]
    #[serde(rename = "status")]
    Status,
}

/// The retained message on `{prefix}/{device}/status`.
///
/// Everything after `device` is omitted when `None`, so [`Status::offline`] serializes
/// to exactly `{"type":"status","state":"offline","device":"cam1"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    #[serde(rename = "type")]
    kind: StatusTag,
    pub state: CameraState,
    pub device: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub video: Option<VideoInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub viewers: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_viewers: Option<u32>,
    /// `RTCIceServer`-shaped objects (`urls`, optional `username`/`credential`) the
    /// viewer should use, so it gathers candidates the camera can reach.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ice_servers: Option<Vec<Value>>,
    /// `keys`: offers must carry a valid access key; `open`: anyone may watch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthMode>,
    /// Times the H.264 encoder was rebuilt after failing repeatedly; present once it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoder_restarts: Option<u32>,
}

impl Status {
    /// The status of a running camera; `protocol` is set to [`PROTOCOL_VERSION`].
    /// For state `unavailable`, build this and set `state`.
    pub fn online(
        device: &str,
        name: &str,
        version: &str,
        video: VideoInfo,
        viewers: u32,
        max_viewers: u32,
        ice_servers: Vec<Value>,
    ) -> Status {
        Status {
            kind: StatusTag::Status,
            state: CameraState::Online,
            device: device.to_owned(),
            name: Some(name.to_owned()),
            version: Some(version.to_owned()),
            protocol: Some(PROTOCOL_VERSION),
            video: Some(video),
            viewers: Some(viewers),
            max_viewers: Some(max_viewers),
            ice_servers: Some(ice_servers),
            auth: None,
            encoder_restarts: None,
        }
    }

    /// The last-will / clean-shutdown status: only `type`, `state` and `device`.
    pub fn offline(device: &str) -> Status {
        Status {
            kind: StatusTag::Status,
            state: CameraState::Offline,
            device: device.to_owned(),
            name: None,
            version: None,
            protocol: None,
            video: None,
            viewers: None,
            max_viewers: None,
            ice_servers: None,
            auth: None,
            encoder_restarts: None,
        }
    }

    pub fn to_json(&self) -> String {
        to_json_string(self)
    }

    /// Parses and validates a status payload (for test viewers); unknown fields are
    /// ignored.
    pub fn parse(payload: &[u8]) -> Parsed<Status> {
        let (kind, object) = parse_envelope(payload)?;
        if kind != "status" {
            return Err(unknown_type(kind, "status"));
        }
        let fields = Fields::new("status", &object);
        let state_text = fields.required_str("state")?;
        let state = CameraState::ALL
            .into_iter()
            .find(|known| known.as_str() == state_text)
            .ok_or_else(|| {
                fields.invalid(
                    "state",
                    format!(
                        "must be \"online\", \"offline\" or \"unavailable\", found {}",
                        quoted(state_text)
                    ),
                )
            })?;
        let video = match fields.optional("video") {
            None => None,
            Some(Value::Object(video)) => Some(parse_video_info(video)?),
            Some(other) => {
                return Err(fields.invalid(
                    "video",
                    format!("must be an object, found {}", describe(other)),
                ))
            }
        };
        let ice_servers = match fields.optional("ice_servers") {
            None => None,
            Some(Value::Array(servers)) => {
                if let Some(bad) = servers.iter().find(|server| !server.is_object()) {
                    return Err(fields.invalid(
                        "ice_servers",
                        format!("must contain only objects, found {}", describe(bad)),
                    ));
                }
                Some(servers.clone())
            }
            Some(other) => {
                return Err(fields.invalid(
                    "ice_servers",
                    format!("must be an array, found {}", describe(other)),
                ))
            }
        };
        Ok(Status {
            kind: StatusTag::Status,
            state,
            device: fields.required_str("device")?.to_owned(),
            name: fields.optional_str("name")?.map(str::to_owned),
            version: fields.optional_str("version")?.map(str::to_owned),
            protocol: fields.optional_u32("protocol")?,
            video,
            viewers: fields.optional_u32("viewers")?,
            max_viewers: fields.optional_u32("max_viewers")?,
            encoder_restarts: fields.optional_u32("encoder_restarts")?,
            ice_servers,
            auth: match fields.optional_str("auth")? {
                None => None,
                Some("keys") => Some(AuthMode::Keys),
                Some("open") => Some(AuthMode::Open),
                Some(other) => {
                    return Err(fields.invalid(
                        "auth",
                        format!("must be \"keys\" or \"open\", found {}", quoted(other)),
                    ))
                }
            },
        })
    }
}

fn parse_video_info(video: &Map<String, Value>) -> Parsed<VideoInfo> {
    // Named with its path so errors read `field "video.width" of status message ...`.
    let field = |key: &'static str, path: &'static str| -> Parsed<u32> {
        Fields::new("status", video)
            .optional_u32(key)
            .map_err(|err| rename_field(err, path))?
            .ok_or_else(|| missing("status", path))
    };
    let codec = match video.get("codec") {
        Some(Value::String(codec)) => codec.clone(),
        Some(other) => {
            return Err(invalid_field(
                "status",
                "video.codec",
                format!("must be a string, found {}", describe(other)),
            ))
        }
        None => return Err(missing("status", "video.codec")),
    };
    Ok(VideoInfo {
        codec,
        width: field("width", "video.width")?,
        height: field("height", "video.height")?,
        fps: field("fps", "video.fps")?,
    })
}

/// Re-labels an `InvalidField` error with the field's full path.
fn rename_field(err: ProtocolError, path: &'static str) -> ProtocolError {
    match err.kind {
        ProtocolErrorKind::InvalidField {
            message, reason, ..
        } => invalid_field(message, path, reason),
        other => other.into(),
    }
}

/// True if the SDP has a video media section (`m=video ...`).
pub fn sdp_has_video(sdp: &str) -> bool {
    sdp_lines(sdp).any(|line| line.starts_with("m=video "))
}

/// True if the SDP has an SCTP data-channel section (`m=application ... webrtc-datachannel`).
pub fn sdp_has_data_channel(sdp: &str) -> bool {
    sdp_lines(sdp).any(|line| {
        line.starts_with("m=application ")
            && line
                .split_ascii_whitespace()
                .any(|token| token == "webrtc-datachannel")
    })
}

fn sdp_lines(sdp: &str) -> impl Iterator<Item = &str> {
    sdp.split('\n')
        .map(|line| line.strip_suffix('\r').unwrap_or(line))
}

/// Checks the SDP's shape, not its semantics: the WebRTC stack parses it for real, but
/// a clear early error beats an opaque one from deep inside the stack.
fn validate_sdp(message: &'static str, sdp: &str) -> Parsed<()> {
    let malformed = |reason: String| -> ProtocolError {
        ProtocolErrorKind::InvalidSdp { message, reason }.into()
    };
    if sdp.len() > MAX_SDP_BYTES {
        return Err(malformed(format!(
            "it is {} bytes, the limit is {MAX_SDP_BYTES}",
            sdp.len()
        )));
    }
    let body = sdp.strip_suffix('\n').unwrap_or(sdp);
    let mut has_media = false;
    for (index, raw_line) in body.split('\n').enumerate() {
        let line_number = index + 1;
        let line = raw_line.strip_suffix('\r').unwrap_or(raw_line);
        if line.contains('\r') {
            return Err(malformed(format!(
                "line {line_number} contains a bare carriage return (lines must end in CRLF or LF)"
            )));
        }
        if index == 0 {
            if line != "v=0" {
                return Err(malformed("it must start with \"v=0\"".to_owned()));
            }
            continue;
        }
        let well_formed =
            matches!(line.as_bytes(), [letter, b'=', ..] if letter.is_ascii_lowercase());
        if !well_formed {
            return Err(malformed(format!(
                "line {line_number} is not of the form <letter>=<value>"
            )));
        }
        has_media |= line.starts_with("m=");
    }
    if !has_media {
        return Err(malformed("it has no media section (m= line)".to_owned()));
    }
    Ok(())
}

/// Checks size, encoding, JSON and the `type` field shared by every message.
fn parse_envelope(payload: &[u8]) -> Parsed<(String, Map<String, Value>)> {
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(ProtocolErrorKind::PayloadTooLarge { len: payload.len() }.into());
    }
    let text = std::str::from_utf8(payload).map_err(|err| ProtocolErrorKind::NotUtf8 {
        valid_up_to: err.valid_up_to(),
    })?;
    // serde_json's recursion limit (128) turns deeply nested input into an error.
    let value: Value = serde_json::from_str(text).map_err(|err| ProtocolErrorKind::NotJson {
        detail: err.to_string(),
    })?;
    let mut object = match value {
        Value::Object(object) => object,
        other => {
            return Err(ProtocolErrorKind::NotAnObject {
                found: describe(&other),
            }
            .into())
        }
    };
    match object.remove("type") {
        Some(Value::String(kind)) => Ok((kind, object)),
        Some(other) => Err(ProtocolErrorKind::TypeNotAString {
            found: describe(&other),
        }
        .into()),
        None => Err(ProtocolErrorKind::MissingType.into()),
    }
}

/// Reads the `candidate` field of a candidate message; `null` means end of candidates.
fn parse_candidate_field(object: &Map<String, Value>) -> Parsed<Option<IceCandidate>> {
    const MESSAGE: &str = "candidate";
    let init = match object.get("candidate") {
        None => return Err(missing(MESSAGE, "candidate")),
        Some(Value::Null) => return Ok(None),
        Some(Value::Object(init)) => init,
        Some(other) => {
            return Err(invalid_field(
                MESSAGE,
                "candidate",
                format!("must be an object or null, found {}", describe(other)),
            ))
        }
    };
    let candidate = match init.get("candidate") {
        Some(Value::String(candidate)) => candidate.clone(),
        Some(other) => {
            return Err(invalid_field(
                MESSAGE,
                "candidate.candidate",
                format!("must be a string, found {}", describe(other)),
            ))
        }
        None => return Err(missing(MESSAGE, "candidate.candidate")),
    };
    let optional_string = |field: &'static str, path: &'static str| match init.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(other) => Err(invalid_field(
            MESSAGE,
            path,
            format!("must be a string or null, found {}", describe(other)),
        )),
    };
    let sdp_mid = optional_string("sdpMid", "candidate.sdpMid")?;
    let sdp_mline_index = match init.get("sdpMLineIndex") {
        None | Some(Value::Null) => None,
        Some(value) => Some(
            value
                .as_u64()
                .and_then(|index| u16::try_from(index).ok())
                .ok_or_else(|| {
                    invalid_field(
                        MESSAGE,
                        "candidate.sdpMLineIndex",
                        format!(
                            "must be an integer from 0 to 65535 or null, found {}",
                            describe_number(value)
                        ),
                    )
                })?,
        ),
    };
    let username_fragment = optional_string("usernameFragment", "candidate.usernameFragment")?;
    let candidate = IceCandidate {
        candidate,
        sdp_mid,
        sdp_mline_index,
        username_fragment,
    };
    check_candidate(&candidate)?;
    Ok(Some(candidate))
}

/// Checks what a candidate says, whichever transport brought it (a candidate message, a
/// WHEP sdpfrag): each field within its limit, no control characters where the text ends
/// up in SDP, and a media section named. Errors name the field as a candidate message has it.
pub fn check_candidate(candidate: &IceCandidate) -> Parsed<()> {
    const MESSAGE: &str = "candidate";
    let text = &candidate.candidate;
    if text.len() > MAX_CANDIDATE_BYTES {
        return Err(invalid_field(
            MESSAGE,
            "candidate.candidate",
            format!(
                "must be at most {MAX_CANDIDATE_BYTES} bytes, found {}",
                text.len()
            ),
        ));
    }
    if !text.is_empty() && !text.starts_with("candidate:") {
        return Err(invalid_field(
            MESSAGE,
            "candidate.candidate",
            "must be empty or start with \"candidate:\"".to_owned(),
        ));
    }
    // The string becomes an SDP attribute line; a line break would inject SDP lines.
    if text.chars().any(char::is_control) {
        return Err(invalid_field(
            MESSAGE,
            "candidate.candidate",
            "must not contain control characters".to_owned(),
        ));
    }
    if let Some(mid) = &candidate.sdp_mid {
        if mid.chars().any(char::is_control) {
            return Err(invalid_field(
                MESSAGE,
                "candidate.sdpMid",
                "must not contain control characters".to_owned(),
            ));
        }
        if mid.len() > MAX_CANDIDATE_FIELD_BYTES {
            return Err(invalid_field(
                MESSAGE,
                "candidate.sdpMid",
                format!(
                    "must be at most {MAX_CANDIDATE_FIELD_BYTES} bytes, found {}",
                    mid.len()
                ),
            ));
        }
    }
    if let Some(ufrag) = &candidate.username_fragment {
        if ufrag.len() > MAX_CANDIDATE_FIELD_BYTES {
            return Err(invalid_field(
                MESSAGE,
                "candidate.usernameFragment",
                format!(
                    "must be at most {MAX_CANDIDATE_FIELD_BYTES} bytes, found {}",
                    ufrag.len()
                ),
            ));
        }
    }
    if !text.is_empty() && candidate.sdp_mid.is_none() && candidate.sdp_mline_index.is_none() {
        return Err(invalid_field(
            MESSAGE,
            "candidate",
            "needs \"sdpMid\" or \"sdpMLineIndex\" to say which media section it belongs to"
                .to_owned(),
        ));
    }
    Ok(())
}

/// Typed access to the fields of one message, with errors naming message and field.
struct Fields<'a> {
    message: &'static str,
    object: &'a Map<String, Value>,
}

impl<'a> Fields<'a> {
    fn new(message: &'static str, object: &'a Map<String, Value>) -> Fields<'a> {
        Fields { message, object }
    }

    fn invalid(&self, field: &'static str, reason: String) -> ProtocolError {
        invalid_field(self.message, field, reason)
    }

    /// The field's value; an explicit `null` counts as absent.
    fn optional(&self, field: &'static str) -> Option<&'a Value> {
        self.object.get(field).filter(|value| !value.is_null())
    }

    fn required_str(&self, field: &'static str) -> Parsed<&'a str> {
        self.optional_str(field)?
            .ok_or_else(|| missing(self.message, field))
    }

    fn optional_str(&self, field: &'static str) -> Parsed<Option<&'a str>> {
        match self.optional(field) {
            None => Ok(None),
            Some(Value::String(text)) => Ok(Some(text)),
            Some(other) => Err(self.invalid(
                field,
                format!("must be a string, found {}", describe(other)),
            )),
        }
    }

    fn optional_u32(&self, field: &'static str) -> Parsed<Option<u32>> {
        match self.optional(field) {
            None => Ok(None),
            Some(value) => value
                .as_u64()
                .and_then(|number| u32::try_from(number).ok())
                .map(Some)
                .ok_or_else(|| {
                    self.invalid(
                        field,
                        format!(
                            "must be an integer from 0 to 4294967295, found {}",
                            describe_number(value)
                        ),
                    )
                }),
        }
    }
}

fn missing(message: &'static str, field: &'static str) -> ProtocolError {
    ProtocolErrorKind::MissingField { message, field }.into()
}

fn invalid_field(message: &'static str, field: &'static str, reason: String) -> ProtocolError {
    ProtocolErrorKind::InvalidField {
        message,
        field,
        reason,
    }
    .into()
}

fn unknown_type(found: String, expected: &'static str) -> ProtocolError {
    ProtocolErrorKind::UnknownType { found, expected }.into()
}

/// The JSON kind of a value, with its article, for error messages.
fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Like [`describe`], but shows a number's value (numbers are short and the value is
/// what is wrong with them).
fn describe_number(value: &Value) -> String {
    match value {
        Value::Number(number) => number.to_string(),
        other => describe(other).to_owned(),
    }
}

/// Quotes untrusted text for an error message: escaped, and cut after
/// [`QUOTE_MAX_CHARS`] characters.
fn quoted(text: &str) -> String {
    let mut chars = text.chars();
    let head: String = chars.by_ref().take(QUOTE_MAX_CHARS).collect();
    if chars.next().is_some() {
        format!("{:?}…", head)
    } else {
        format!("{:?}", head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER_SDP: &str = "v=0\r\n\
        o=- 4611731400430051336 2 IN IP4 127.0.0.1\r\n\
        s=-\r\n\
        t=0 0\r\n\
        a=group:BUNDLE 0 1\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 102\r\n\
        c=IN IP4 0.0.0.0\r\n\
        a=mid:0\r\n\
        a=recvonly\r\n\
        a=rtpmap:102 H264/90000\r\n\
        a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n\
        m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n\
        c=IN IP4 0.0.0.0\r\n\
        a=mid:1\r\n\
        a=sctp-port:5000\r\n";

    const AUDIO_ONLY_SDP: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n";

    fn viewer_error(payload: &[u8]) -> String {
        match parse_viewer_message(payload) {
            Ok(message) => panic!("expected an error, parsed {message:?}"),
            Err(err) => err.to_string(),
        }
    }

    fn camera_error(payload: &[u8]) -> String {
        match parse_camera_message(payload) {
            Ok(message) => panic!("expected an error, parsed {message:?}"),
            Err(err) => err.to_string(),
        }
    }

    fn status_error(payload: &[u8]) -> String {
        match Status::parse(payload) {
            Ok(status) => panic!("expected an error, parsed {status:?}"),
            Err(err) => err.to_string(),
        }
    }

    fn offer_json(sdp: &str) -> String {
        serde_json::json!({"type": "offer", "sdp": sdp}).to_string()
    }

    fn candidate_json(candidate: Value) -> Vec<u8> {
        serde_json::json!({"type": "candidate", "candidate": candidate})
            .to_string()
            .into_bytes()
    }

    fn host_candidate() -> IceCandidate {
        IceCandidate {
            candidate: "candidate:1 1 udp 2122260223 192.168.1.20 54321 typ host".to_owned(),
            sdp_mid: Some("0".to_owned()),
            sdp_mline_index: Some(0),
            username_fragment: Some("abcd".to_owned()),
        }
    }

    fn sample_online_status() -> Status {
        Status::online(
            "cam1",
            "Front door",
            "0.1.0",
            VideoInfo {
                codec: "H264".to_owned(),
                width: 1280,
                height: 720,
                fps: 30,
            },
            1,
            4,
            vec![serde_json::json!({"urls": "stun:192.0.2.1:3478"})],
        )
    }

    // --- session ids and topics ---

    #[test]
    fn session_id_accepts_allowed_alphabet_and_lengths() {
        assert!(is_valid_session_id("abcdEFGH"));
        assert!(is_valid_session_id("a1_b2-c3"));
        assert!(is_valid_session_id(&"x".repeat(64)));
        assert!(is_valid_session_id("0f8d2c1e-1b2a-4c3d-9e8f-0a1b2c3d4e5f"));
    }

    #[test]
    fn session_id_rejects_wrong_length_or_characters() {
        assert!(!is_valid_session_id(""));
        assert!(!is_valid_session_id("abcdefg"));
        assert!(!is_valid_session_id(&"x".repeat(65)));
        assert!(!is_valid_session_id("abcd efgh"));
        assert!(!is_valid_session_id("abcd/efgh"));
        assert!(!is_valid_session_id("abcd+efgh"));
        assert!(!is_valid_session_id("abcd#efgh"));
        assert!(!is_valid_session_id("abcdéfgh"));
        assert!(!is_valid_session_id("abcd.efgh"));
    }

    #[test]
    fn session_id_newtype_wraps_only_valid_ids() {
        let sid = SessionId::parse("viewer_01").map(|sid| sid.to_string());
        assert_eq!(sid.as_deref(), Some("viewer_01"));
        assert_eq!(SessionId::parse("short"), None);
        let sid = SessionId::parse("abcdefgh");
        assert_eq!(sid.as_ref().map(AsRef::as_ref), Some("abcdefgh"));
        assert_eq!(sid.as_ref().map(SessionId::as_str), Some("abcdefgh"));
    }

    #[test]
    fn topics_are_built_from_prefix_and_device() {
        let topics = Topics::new("peercam", "cam1");
        assert_eq!(topics.status(), "peercam/cam1/status");
        assert_eq!(
            topics.to_camera_filter(),
            "peercam/cam1/session/+/to-camera"
        );
        assert_eq!(
            topics.to_camera("abcdefgh"),
            "peercam/cam1/session/abcdefgh/to-camera"
        );
        assert_eq!(
            topics.to_viewer("abcdefgh"),
            "peercam/cam1/session/abcdefgh/to-viewer"
        );
        assert_eq!(topics.prefix(), "peercam");
        assert_eq!(topics.device(), "cam1");
    }

    #[test]
    fn parse_to_camera_extracts_valid_session_id() {
        let topics = Topics::new("peercam", "cam1");
        let sid = topics.parse_to_camera("peercam/cam1/session/abcd-1234/to-camera");
        assert_eq!(sid, Ok(SessionId("abcd-1234".to_owned())));
    }

    #[test]
    fn parse_to_camera_works_with_multi_level_prefix() {
        let topics = Topics::new("home/cams", "porch");
        assert_eq!(
            topics.parse_to_camera("home/cams/porch/session/abcdefgh/to-camera"),
            Ok(SessionId("abcdefgh".to_owned()))
        );
        assert_eq!(
            topics.to_camera_filter(),
            "home/cams/porch/session/+/to-camera"
        );
    }

    #[test]
    fn parse_to_camera_rejects_foreign_topics_as_not_ours() {
        let topics = Topics::new("peercam", "cam1");
        for topic in [
            "peercam/cam1/status",
            "peercam/cam2/session/abcdefgh/to-camera",
            "peercam/cam10/session/abcdefgh/to-camera",
            "peercam/cam1/session/abcdefgh/to-viewer",
            "other/cam1/session/abcdefgh/to-camera",
            "peercamx/cam1/session/abcdefgh/to-camera",
            "peercam/cam1/session/abcd/efgh/to-camera",
            "peercam/cam1/session/abcdefgh/to-camera/extra",
            "peercam/cam1/sessions/abcdefgh/to-camera",
            "",
        ] {
            assert_eq!(
                topics.parse_to_camera(topic),
                Err(TopicError::NotASessionTopic {
                    topic: topic.to_owned()
                }),
                "topic {topic:?}"
            );
        }
    }

    #[test]
    fn parse_to_camera_reports_invalid_session_id() {
        let topics = Topics::new("peercam", "cam1");
        for sid in ["", "short", "has space", "has.dot!", &"x".repeat(65)] {
            let topic = format!("peercam/cam1/session/{sid}/to-camera");
            assert_eq!(
                topics.parse_to_camera(&topic),
                Err(TopicError::InvalidSessionId {
                    sid: sid.to_owned()
                }),
                "sid {sid:?}"
            );
        }
    }

    #[test]
    fn topic_errors_read_as_sentences() {
        let topics = Topics::new("peercam", "cam1");
        let err = topics.parse_to_camera("peercam/cam1/session/bad!/to-camera");
        assert_eq!(
            err.map_err(|err| err.to_string()),
            Err("session id \"bad!\" is invalid: it must be 8 to 64 characters from A-Z, a-z, 0-9, \"_\" and \"-\"".to_owned())
        );
        let err = topics.parse_to_camera("x/y");
        assert_eq!(
            err.map_err(|err| err.to_string()),
            Err("topic \"x/y\" is not a to-camera session topic of this camera".to_owned())
        );
    }

    #[test]
    fn topic_error_quotes_long_sids_truncated_and_escaped() {
        let sid = format!("\n{}", "y".repeat(100));
        let err = TopicError::InvalidSessionId { sid };
        let expected = format!(
            "session id \"\\n{}\"… is invalid: it must be 8 to 64 characters from A-Z, a-z, 0-9, \"_\" and \"-\"",
            "y".repeat(63)
        );
        assert_eq!(err.to_string(), expected);
    }

    // --- viewer messages ---

    #[test]
    fn parses_offer() {
        let message = parse_viewer_message(offer_json(OFFER_SDP).as_bytes());
        assert_eq!(
            message,
            Ok(ViewerMessage::Offer {
                sdp: OFFER_SDP.to_owned(),
                auth: None,
            })
        );
    }

    #[test]
    fn parses_offer_with_lf_line_endings_and_extra_fields() {
        let sdp = OFFER_SDP.replace("\r\n", "\n");
        let payload = serde_json::json!({"type": "offer", "sdp": sdp, "extra": [1, 2]});
        assert_eq!(
            parse_viewer_message(payload.to_string().as_bytes()),
            Ok(ViewerMessage::Offer { sdp, auth: None })
        );
    }

    #[test]
    fn offer_without_video_has_its_own_error() {
        let err = parse_viewer_message(offer_json(AUDIO_ONLY_SDP).as_bytes());
        let err = match err {
            Err(err) => err,
            Ok(message) => panic!("audio-only offer accepted: {message:?}"),
        };
        assert_eq!(err.kind(), &ProtocolErrorKind::OfferHasNoVideo);
        assert_eq!(err.to_string(), "offer SDP has no video section (m=video)");
        assert_eq!(err.code(), ErrorCode::BadRequest);
    }

    #[test]
    fn offer_sdp_must_be_a_string() {
        assert_eq!(
            viewer_error(br#"{"type":"offer"}"#),
            "offer message has no \"sdp\" field"
        );
        assert_eq!(
            viewer_error(br#"{"type":"offer","sdp":null}"#),
            "offer message has no \"sdp\" field"
        );
        assert_eq!(
            viewer_error(br#"{"type":"offer","sdp":42}"#),
            "field \"sdp\" of offer message must be a string, found a number"
        );
    }

    #[test]
    fn malformed_offer_sdp_is_rejected_with_reason() {
        let cases: [(&str, &str); 7] = [
            ("", "offer SDP is malformed: it must start with \"v=0\""),
            (
                "v=1\r\nm=video 9 RTP/AVP 96\r\n",
                "offer SDP is malformed: it must start with \"v=0\"",
            ),
            (
                " v=0\r\nm=video 9 RTP/AVP 96\r\n",
                "offer SDP is malformed: it must start with \"v=0\"",
            ),
            (
                "v=0\r\ns=-\r\n",
                "offer SDP is malformed: it has no media section (m= line)",
            ),
            (
                "v=0\rm=video 9 RTP/AVP 96\r\n",
                "offer SDP is malformed: line 1 contains a bare carriage return (lines must end in CRLF or LF)",
            ),
            (
                "v=0\r\ns=-\r\n\r\nm=video 9 RTP/AVP 96\r\n",
                "offer SDP is malformed: line 3 is not of the form <letter>=<value>",
            ),
            (
                "v=0\nm=video 9 RTP/AVP 96\nhello\n",
                "offer SDP is malformed: line 3 is not of the form <letter>=<value>",
            ),
        ];
        for (sdp, expected) in cases {
            assert_eq!(
                viewer_error(offer_json(sdp).as_bytes()),
                expected,
                "{sdp:?}"
            );
        }
    }

    #[test]
    fn validate_sdp_enforces_its_own_size_limit() {
        let sdp = format!(
            "v=0\r\nm=video 9 RTP/AVP 96\r\na=x:{}\r\n",
            "y".repeat(MAX_SDP_BYTES)
        );
        let err = validate_sdp("offer", &sdp).map_err(|err| err.to_string());
        assert_eq!(
            err,
            Err(format!(
                "offer SDP is malformed: it is {} bytes, the limit is 65536",
                sdp.len()
            ))
        );
    }

    #[test]
    fn validate_sdp_accepts_sdp_without_trailing_newline() {
        assert_eq!(validate_sdp("offer", "v=0\nm=video 9 RTP/AVP 96"), Ok(()));
    }

    #[test]
    fn parses_candidate_with_all_fields() {
        let payload = candidate_json(serde_json::json!({
            "candidate": "candidate:1 1 udp 2122260223 192.168.1.20 54321 typ host",
            "sdpMid": "0",
            "sdpMLineIndex": 0,
            "usernameFragment": "abcd",
        }));
        assert_eq!(
            parse_viewer_message(&payload),
            Ok(ViewerMessage::Candidate(Some(host_candidate())))
        );
    }

    #[test]
    fn parses_candidate_with_only_mline_index_or_only_mid() {
        let payload = candidate_json(serde_json::json!({
            "candidate": "candidate:2 1 udp 1 10.0.0.1 9 typ host", "sdpMLineIndex": 65535,
        }));
        assert_eq!(
            parse_viewer_message(&payload),
            Ok(ViewerMessage::Candidate(Some(IceCandidate {
                candidate: "candidate:2 1 udp 1 10.0.0.1 9 typ host".to_owned(),
                sdp_mid: None,
                sdp_mline_index: Some(65535),
                username_fragment: None,
            })))
        );
        let payload = candidate_json(serde_json::json!({
            "candidate": "candidate:2 1 udp 1 10.0.0.1 9 typ host",
            "sdpMid": "video", "sdpMLineIndex": null, "usernameFragment": null,
        }));
        assert_eq!(
            parse_viewer_message(&payload),
            Ok(ViewerMessage::Candidate(Some(IceCandidate {
                candidate: "candidate:2 1 udp 1 10.0.0.1 9 typ host".to_owned(),
                sdp_mid: Some("video".to_owned()),
                sdp_mline_index: None,
                username_fragment: None,
            })))
        );
    }

    #[test]
    fn null_candidate_is_end_of_candidates() {
        assert_eq!(
            parse_viewer_message(br#"{"type":"candidate","candidate":null}"#),
            Ok(ViewerMessage::Candidate(None))
        );
    }

    #[test]
    fn empty_candidate_string_needs_no_mid_or_index() {
        let payload = candidate_json(serde_json::json!({"candidate": ""}));
        assert_eq!(
            parse_viewer_message(&payload),
            Ok(ViewerMessage::Candidate(Some(IceCandidate {
                candidate: String::new(),
                sdp_mid: None,
                sdp_mline_index: None,
                username_fragment: None,
            })))
        );
    }

    #[test]
    fn malformed_candidates_are_rejected_naming_the_field() {
        let cases: Vec<(Value, &str)> = vec![
            (
                serde_json::json!({"type": "candidate"}),
                "candidate message has no \"candidate\" field",
            ),
            (
                serde_json::json!({"type": "candidate", "candidate": "candidate:1"}),
                "field \"candidate\" of candidate message must be an object or null, found a string",
            ),
            (
                serde_json::json!({"type": "candidate", "candidate": {"sdpMid": "0"}}),
                "candidate message has no \"candidate.candidate\" field",
            ),
            (
                serde_json::json!({"type": "candidate", "candidate": {"candidate": 7, "sdpMid": "0"}}),
                "field \"candidate.candidate\" of candidate message must be a string, found a number",
            ),
            (
                serde_json::json!({"type": "candidate", "candidate": {"candidate": "a=candidate:1", "sdpMid": "0"}}),
                "field \"candidate.candidate\" of candidate message must be empty or start with \"candidate:\"",
            ),
            (
                serde_json::json!({"type": "candidate", "candidate": {"candidate": "candidate:1\r\na=evil", "sdpMid": "0"}}),
                "field \"candidate.candidate\" of candidate message must not contain control characters",
            ),
            (
                serde_json::json!({"type": "candidate", "candidate": {"candidate": "candidate:1", "sdpMid": 0}}),
                "field \"candidate.sdpMid\" of candidate message must be a string or null, found a number",
            ),
            (
                serde_json::json!({"type": "candidate", "candidate": {"candidate": "candidate:1", "sdpMid": "0\n"}}),
                "field \"candidate.sdpMid\" of candidate message must not contain control characters",
            ),
            (
                serde_json::json!({"type": "candidate", "candidate": {"candidate": "candidate:1", "sdpMLineIndex": 65536}}),
                "field \"candidate.sdpMLineIndex\" of candidate message must be an integer from 0 to 65535 or null, found 65536",
            ),
            (
                serde_json::json!({"type": "candidate", "candidate": {"candidate": "candidate:1", "sdpMLineIndex": -1}}),
                "field \"candidate.sdpMLineIndex\" of candidate message must be an integer from 0 to 65535 or null, found -1",
            ),
            (
                serde_json::json!({"type": "candidate", "candidate": {"candidate": "candidate:1", "sdpMLineIndex": 1.5}}),
                "field \"candidate.sdpMLineIndex\" of candidate message must be an integer from 0 to 65535 or null, found 1.5",
            ),
            (
                serde_json::json!({"type": "candidate", "candidate": {"candidate": "candidate:1", "sdpMLineIndex": "0"}}),
                "field \"candidate.sdpMLineIndex\" of candidate message must be an integer from 0 to 65535 or null, found a string",
            ),
            (
                serde_json::json!({"type": "candidate", "candidate": {"candidate": format!("candidate:1 1 udp 1 127.0.0.1 9 typ host{}", " x".repeat(500)), "sdpMid": "0"}}),
                "field \"candidate.candidate\" of candidate message must be at most 1024 bytes, found 1040",
            ),
            (
                serde_json::json!({"type": "candidate", "candidate": {"candidate": "candidate:1", "sdpMid": "m".repeat(257)}}),
                "field \"candidate.sdpMid\" of candidate message must be at most 256 bytes, found 257",
            ),
            (
                serde_json::json!({"type": "candidate", "candidate": {"candidate": "candidate:1", "sdpMid": "0", "usernameFragment": "u".repeat(300)}}),
                "field \"candidate.usernameFragment\" of candidate message must be at most 256 bytes, found 300",
            ),
            (
                serde_json::json!({"type": "candidate", "candidate": {"candidate": "candidate:1", "sdpMid": "0", "usernameFragment": 3}}),
                "field \"candidate.usernameFragment\" of candidate message must be a string or null, found a number",
            ),
            (
                serde_json::json!({"type": "candidate", "candidate": {"candidate": "candidate:1"}}),
                "field \"candidate\" of candidate message needs \"sdpMid\" or \"sdpMLineIndex\" to say which media section it belongs to",
            ),
            (
                serde_json::json!({"type": "candidate", "candidate": {"candidate": "candidate:1", "sdpMid": null, "sdpMLineIndex": null}}),
                "field \"candidate\" of candidate message needs \"sdpMid\" or \"sdpMLineIndex\" to say which media section it belongs to",
            ),
        ];
        for (payload, expected) in cases {
            assert_eq!(
                viewer_error(payload.to_string().as_bytes()),
                expected,
                "{payload}"
            );
        }
    }

    #[test]
    fn parses_hangup_with_or_without_extra_fields() {
        assert_eq!(
            parse_viewer_message(br#"{"type":"hangup"}"#),
            Ok(ViewerMessage::Hangup { mac: None })
        );
        assert_eq!(
            parse_viewer_message(br#"{"type":"hangup","reason":"tab closed"}"#),
            Ok(ViewerMessage::Hangup { mac: None })
        );
    }

    #[test]
    fn envelope_errors_name_the_problem() {
        let cases: [(&[u8], &str); 12] = [
            (
                b"",
                "payload is not valid JSON: EOF while parsing a value at line 1 column 0",
            ),
            (
                b"hello",
                "payload is not valid JSON: expected value at line 1 column 1",
            ),
            (
                b"{\"type\":\"hangup\"",
                "payload is not valid JSON: EOF while parsing an object at line 1 column 16",
            ),
            (
                b"{\"type\":\"hangup\"} x",
                "payload is not valid JSON: trailing characters at line 1 column 19",
            ),
            (
                b"{\"type\":\"hangup\xff\"}",
                "payload is not valid UTF-8 (invalid byte at offset 15)",
            ),
            (b"[1,2]", "payload is an array, expected a JSON object"),
            (b"\"offer\"", "payload is a string, expected a JSON object"),
            (b"null", "payload is null, expected a JSON object"),
            (b"{}", "message has no \"type\" field"),
            (
                b"{\"type\":1}",
                "field \"type\" must be a string, found a number",
            ),
            (
                b"{\"type\":\"foo\"}",
                "unknown message type \"foo\" (expected offer, candidate or hangup)",
            ),
            (
                b"{\"type\":\"answer\",\"sdp\":\"v=0\"}",
                "unknown message type \"answer\" (expected offer, candidate or hangup)",
            ),
        ];
        for (payload, expected) in cases {
            assert_eq!(viewer_error(payload), expected, "{payload:?}");
        }
    }

    #[test]
    fn type_is_case_sensitive() {
        assert_eq!(
            viewer_error(br#"{"type":"Offer","sdp":"v=0"}"#),
            "unknown message type \"Offer\" (expected offer, candidate or hangup)"
        );
    }

    #[test]
    fn unknown_type_quote_is_truncated() {
        let payload = serde_json::json!({"type": "z".repeat(1000)}).to_string();
        assert_eq!(
            viewer_error(payload.as_bytes()),
            format!(
                "unknown message type \"{}\"… (expected offer, candidate or hangup)",
                "z".repeat(64)
            )
        );
    }

    #[test]
    fn payload_size_limit_is_inclusive() {
        let padding_for = |total: usize| {
            let skeleton = r#"{"type":"hangup","pad":""}"#.len();
            "p".repeat(total - skeleton)
        };
        let at_limit = format!(
            r#"{{"type":"hangup","pad":"{}"}}"#,
            padding_for(MAX_PAYLOAD_BYTES)
        );
        assert_eq!(at_limit.len(), MAX_PAYLOAD_BYTES);
        assert_eq!(
            parse_viewer_message(at_limit.as_bytes()),
            Ok(ViewerMessage::Hangup { mac: None })
        );
        let over = format!(
            r#"{{"type":"hangup","pad":"{}"}}"#,
            padding_for(MAX_PAYLOAD_BYTES + 1)
        );
        assert_eq!(
            viewer_error(over.as_bytes()),
            "payload is 65537 bytes, the limit is 65536"
        );
        assert_eq!(
            viewer_error(&vec![b' '; 70_000]),
            "payload is 70000 bytes, the limit is 65536"
        );
    }

    #[test]
    fn every_parse_error_maps_to_bad_request() {
        for payload in [&b"x"[..], b"{}", b"[]", br#"{"type":"offer"}"#] {
            let code = parse_viewer_message(payload).map_err(|err| err.code());
            assert_eq!(code, Err(ErrorCode::BadRequest), "{payload:?}");
        }
    }

    #[test]
    fn viewer_messages_serialize_to_the_documented_shape() {
        assert_eq!(
            ViewerMessage::Offer {
                sdp: "v=0\r\n".to_owned(),
                auth: None,
            }
            .to_json(),
            r#"{"type":"offer","sdp":"v=0\r\n"}"#
        );
        assert_eq!(
            ViewerMessage::Hangup { mac: None }.to_json(),
            r#"{"type":"hangup"}"#
        );
        let signed = ViewerMessage::Offer {
            sdp: "v=0\r\n".to_owned(),
            auth: Some(OfferAuth {
                viewer: "alice".into(),
                exp: 1_800_000_000,
                mac: "bWFj".into(),
            }),
        };
        assert_eq!(
            signed.to_json(),
            r#"{"type":"offer","sdp":"v=0\r\n","auth":{"viewer":"alice","exp":1800000000,"mac":"bWFj"}}"#
        );
        assert_eq!(
            ViewerMessage::Hangup {
                mac: Some("bWFj".into())
            }
            .to_json(),
            r#"{"type":"hangup","mac":"bWFj"}"#
        );
        assert_eq!(
            ViewerMessage::Candidate(None).to_json(),
            r#"{"type":"candidate","candidate":null}"#
        );
        assert_eq!(
            ViewerMessage::Candidate(Some(host_candidate())).to_json(),
            r#"{"type":"candidate","candidate":{"candidate":"candidate:1 1 udp 2122260223 192.168.1.20 54321 typ host","sdpMid":"0","sdpMLineIndex":0,"usernameFragment":"abcd"}}"#
        );
    }

    #[test]
    fn candidate_without_ufrag_omits_it_but_keeps_null_mid() {
        let candidate = IceCandidate {
            candidate: "candidate:1 1 udp 1 10.0.0.1 9 typ host".to_owned(),
            sdp_mid: None,
            sdp_mline_index: Some(0),
            username_fragment: None,
        };
        assert_eq!(
            CameraMessage::Candidate(Some(candidate)).to_json(),
            r#"{"type":"candidate","candidate":{"candidate":"candidate:1 1 udp 1 10.0.0.1 9 typ host","sdpMid":null,"sdpMLineIndex":0}}"#
        );
    }

    #[test]
    fn viewer_messages_round_trip() {
        for message in [
            ViewerMessage::Offer {
                sdp: OFFER_SDP.to_owned(),
                auth: None,
            },
            ViewerMessage::Offer {
                sdp: OFFER_SDP.to_owned(),
                auth: Some(OfferAuth {
                    viewer: "kitchen.tablet".into(),
                    exp: 1_800_000_000,
                    mac: "c2lnbmVk".into(),
                }),
            },
            ViewerMessage::Candidate(Some(host_candidate())),
            ViewerMessage::Candidate(None),
            ViewerMessage::Hangup { mac: None },
            ViewerMessage::Hangup {
                mac: Some("c2lnbmVk".into()),
            },
        ] {
            assert_eq!(
                parse_viewer_message(message.to_json().as_bytes()),
                Ok(message.clone())
            );
        }
    }

    // --- camera messages ---

    #[test]
    fn camera_messages_serialize_to_the_documented_shape() {
        assert_eq!(
            CameraMessage::Answer {
                sdp: "v=0\r\n".to_owned(),
                mac: None,
            }
            .to_json(),
            r#"{"type":"answer","sdp":"v=0\r\n"}"#
        );
        assert_eq!(
            CameraMessage::Hangup {
                reason: "camera shutting down".to_owned(),
                mac: None,
            }
            .to_json(),
            r#"{"type":"hangup","reason":"camera shutting down"}"#
        );
        assert_eq!(
            CameraMessage::Error {
                code: ErrorCode::BadRequest,
                message: "offer SDP has no video section (m=video)".to_owned()
            }
            .to_json(),
            r#"{"type":"error","code":"bad-request","message":"offer SDP has no video section (m=video)"}"#
        );
        assert_eq!(
            CameraMessage::Candidate(None).to_json(),
            r#"{"type":"candidate","candidate":null}"#
        );
    }

    #[test]
    fn error_codes_use_kebab_case() {
        let wire: Vec<String> = ErrorCode::ALL
            .iter()
            .map(|code| {
                CameraMessage::Error {
                    code: *code,
                    message: String::new(),
                }
                .to_json()
            })
            .collect();
        assert_eq!(
            wire,
            [
                r#"{"type":"error","code":"bad-request","message":""}"#,
                r#"{"type":"error","code":"busy","message":""}"#,
                r#"{"type":"error","code":"unavailable","message":""}"#,
                r#"{"type":"error","code":"internal","message":""}"#,
                r#"{"type":"error","code":"unauthorized","message":""}"#,
            ]
        );
        for code in ErrorCode::ALL {
            assert_eq!(code.to_string(), code.as_str());
            assert_eq!(ErrorCode::from_wire(code.as_str()), Some(code));
        }
    }

    #[test]
    fn camera_messages_round_trip() {
        let mut messages = vec![
            CameraMessage::Answer {
                sdp: OFFER_SDP.to_owned(),
                mac: None,
            },
            CameraMessage::Candidate(Some(host_candidate())),
            CameraMessage::Candidate(None),
            CameraMessage::Hangup {
                reason: "ICE failed".to_owned(),
                mac: None,
            },
        ];
        messages.extend(ErrorCode::ALL.map(|code| CameraMessage::Error {
            code,
            message: "too many viewers".to_owned(),
        }));
        for message in messages {
            assert_eq!(
                parse_camera_message(message.to_json().as_bytes()),
                Ok(message.clone())
            );
        }
    }

    #[test]
    fn answer_needs_no_video_but_must_be_sdp() {
        let payload = serde_json::json!({"type": "answer", "sdp": AUDIO_ONLY_SDP}).to_string();
        assert_eq!(
            parse_camera_message(payload.as_bytes()),
            Ok(CameraMessage::Answer {
                sdp: AUDIO_ONLY_SDP.to_owned(),
                mac: None,
            })
        );
        assert_eq!(
            camera_error(br#"{"type":"answer","sdp":"hello"}"#),
            "answer SDP is malformed: it must start with \"v=0\""
        );
    }

    #[test]
    fn malformed_camera_messages_are_rejected_naming_the_field() {
        let cases: [(&[u8], &str); 8] = [
            (br#"{"type":"offer","sdp":"v=0"}"#, "unknown message type \"offer\" (expected answer, candidate, hangup or error)"),
            (br#"{"type":"answer"}"#, "answer message has no \"sdp\" field"),
            (br#"{"type":"hangup"}"#, "hangup message has no \"reason\" field"),
            (br#"{"type":"hangup","reason":false}"#, "field \"reason\" of hangup message must be a string, found a boolean"),
            (br#"{"type":"error","message":"x"}"#, "error message has no \"code\" field"),
            (br#"{"type":"error","code":"bad_request","message":"x"}"#, "field \"code\" of error message must be \"bad-request\", \"busy\", \"unavailable\", \"internal\" or \"unauthorized\", found \"bad_request\""),
            (br#"{"type":"error","code":"busy"}"#, "error message has no \"message\" field"),
            (br#"{"type":"candidate","candidate":{"candidate":"x","sdpMid":"0"}}"#, "field \"candidate.candidate\" of candidate message must be empty or start with \"candidate:\""),
        ];
        for (payload, expected) in cases {
            assert_eq!(camera_error(payload), expected, "{payload:?}");
        }
    }

    // --- status ---

    #[test]
    fn offline_status_is_exactly_the_minimal_object() {
        assert_eq!(
            Status::offline("cam1").to_json(),
            r#"{"type":"status","state":"offline","device":"cam1"}"#
        );
    }

    #[test]
    fn online_status_serializes_every_field_in_order() {
        assert_eq!(
            sample_online_status().to_json(),
            r#"{"type":"status","state":"online","device":"cam1","name":"Front door","version":"0.1.0","protocol":1,"video":{"codec":"H264","width":1280,"height":720,"fps":30},"viewers":1,"max_viewers":4,"ice_servers":[{"urls":"stun:192.0.2.1:3478"}]}"#
        );
    }

    #[test]
    fn online_status_with_no_ice_servers_keeps_the_empty_list() {
        let mut status = sample_online_status();
        status.ice_servers = Some(Vec::new());
        assert!(status
            .to_json()
            .ends_with(r#""max_viewers":4,"ice_servers":[]}"#));
    }

    #[test]
    fn unavailable_state_serializes_lowercase() {
        let mut status = sample_online_status();
        status.state = CameraState::Unavailable;
        assert!(status
            .to_json()
            .starts_with(r#"{"type":"status","state":"unavailable","device":"cam1","#));
        assert_eq!(Status::parse(status.to_json().as_bytes()), Ok(status));
    }

    #[test]
    fn status_round_trips_through_parse_and_serde() {
        for status in [sample_online_status(), Status::offline("cam1")] {
            let json = status.to_json();
            assert_eq!(Status::parse(json.as_bytes()), Ok(status.clone()));
            let derived: Result<Status, String> =
                serde_json::from_str(&json).map_err(|err| err.to_string());
            assert_eq!(derived, Ok(status));
        }
    }

    #[test]
    fn derived_deserialize_insists_on_status_type() {
        let derived: Result<Status, _> =
            serde_json::from_str(r#"{"type":"offer","state":"offline","device":"cam1"}"#);
        assert!(derived.is_err(), "{derived:?}");
    }

    #[test]
    fn status_parse_tolerates_unknown_fields_and_nulls() {
        let parsed = Status::parse(
            br#"{"type":"status","state":"offline","device":"cam1","future":{"x":1},"name":null}"#,
        );
        assert_eq!(parsed, Ok(Status::offline("cam1")));
    }

    #[test]
    fn malformed_status_is_rejected_naming_the_field() {
        let cases: [(&[u8], &str); 12] = [
            (br#"{"type":"hangup"}"#, "unknown message type \"hangup\" (expected status)"),
            (br#"{"type":"status","device":"cam1"}"#, "status message has no \"state\" field"),
            (br#"{"type":"status","state":"asleep","device":"cam1"}"#, "field \"state\" of status message must be \"online\", \"offline\" or \"unavailable\", found \"asleep\""),
            (br#"{"type":"status","state":"offline"}"#, "status message has no \"device\" field"),
            (br#"{"type":"status","state":"online","device":"cam1","viewers":-1}"#, "field \"viewers\" of status message must be an integer from 0 to 4294967295, found -1"),
            (br#"{"type":"status","state":"online","device":"cam1","protocol":"1"}"#, "field \"protocol\" of status message must be an integer from 0 to 4294967295, found a string"),
            (br#"{"type":"status","state":"online","device":"cam1","name":5}"#, "field \"name\" of status message must be a string, found a number"),
            (br#"{"type":"status","state":"online","device":"cam1","video":"H264"}"#, "field \"video\" of status message must be an object, found a string"),
            (br#"{"type":"status","state":"online","device":"cam1","video":{"codec":"H264","width":640,"height":480}}"#, "status message has no \"video.fps\" field"),
            (br#"{"type":"status","state":"online","device":"cam1","video":{"codec":"H264","width":640.5,"height":480,"fps":30}}"#, "field \"video.width\" of status message must be an integer from 0 to 4294967295, found 640.5"),
            (br#"{"type":"status","state":"online","device":"cam1","ice_servers":{}}"#, "field \"ice_servers\" of status message must be an array, found an object"),
            (br#"{"type":"status","state":"online","device":"cam1","ice_servers":["stun:x"]}"#, "field \"ice_servers\" of status message must contain only objects, found a string"),
        ];
        for (payload, expected) in cases {
            assert_eq!(status_error(payload), expected, "{payload:?}");
        }
        assert_eq!(
            status_error(br#"{"type":"status","state":"online","device":"cam1","video":{"width":1,"height":1,"fps":1}}"#),
            "status message has no \"video.codec\" field"
        );
    }

    // --- SDP helpers ---

    #[test]
    fn sdp_helpers_find_video_and_data_channel_sections() {
        assert!(sdp_has_video(OFFER_SDP));
        assert!(sdp_has_data_channel(OFFER_SDP));
        assert!(!sdp_has_video(AUDIO_ONLY_SDP));
        assert!(!sdp_has_data_channel(AUDIO_ONLY_SDP));
        assert!(sdp_has_video("v=0\nm=video 9 UDP/TLS/RTP/SAVPF 96"));
        // Only `m=` lines count, not mentions elsewhere.
        assert!(!sdp_has_video(
            "v=0\r\na=note:m=video 9\r\nm=audio 9 RTP/AVP 0\r\n"
        ));
        assert!(!sdp_has_video("v=0\r\nm=videox 9 RTP/AVP 0\r\n"));
        // The legacy SCTP format without the webrtc-datachannel token is not ours.
        assert!(!sdp_has_data_channel(
            "v=0\r\nm=application 9 DTLS/SCTP 5000\r\n"
        ));
        assert!(!sdp_has_data_channel(
            "v=0\r\nm=video 9 UDP/DTLS/SCTP webrtc-datachannel\r\n"
        ));
    }

    // --- robustness ---

    /// Deterministic pseudo-random bytes (Knuth's MMIX LCG), so failures reproduce.
    struct Lcg(u64);

    impl Lcg {
        fn next_byte(&mut self) -> u8 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 56) as u8
        }
    }

    /// Feeds input to every parser; the assertion is that none of them panics.
    fn parse_everything(payload: &[u8]) -> usize {
        let results = [
            parse_viewer_message(payload).is_ok(),
            parse_camera_message(payload).is_ok(),
            Status::parse(payload).is_ok(),
        ];
        results.iter().filter(|ok| **ok).count()
    }

    #[test]
    fn random_bytes_never_panic_and_are_rejected() {
        let mut rng = Lcg(0x5eed);
        let mut accepted = 0;
        for round in 0..2000 {
            let len = usize::from(rng.next_byte()) * (round % 5 + 1);
            let payload: Vec<u8> = (0..len).map(|_| rng.next_byte()).collect();
            accepted += parse_everything(&payload);
        }
        assert_eq!(accepted, 0);
    }

    #[test]
    fn random_json_alphabet_never_panics() {
        // Bytes drawn from JSON syntax reach deeper into the parser than raw noise.
        const ALPHABET: &[u8] = b"{}[]\":,0123456789.-etruefalsnul typecandidteofrhgsdpmMLIx\\";
        let mut rng = Lcg(42);
        for _ in 0..5000 {
            let len = usize::from(rng.next_byte() % 64);
            let payload: Vec<u8> = (0..len)
                .map(|_| ALPHABET[usize::from(rng.next_byte()) % ALPHABET.len()])
                .collect();
            parse_everything(&payload);
        }
    }

    #[test]
    fn truncated_and_mutated_valid_messages_never_panic() {
        let valid = [
            offer_json(OFFER_SDP),
            ViewerMessage::Candidate(Some(host_candidate())).to_json(),
            CameraMessage::Error {
                code: ErrorCode::Busy,
                message: "full".to_owned(),
            }
            .to_json(),
            sample_online_status().to_json(),
        ];
        let mut rng = Lcg(7);
        for message in &valid {
            let bytes = message.as_bytes();
            for cut in 0..bytes.len() {
                let truncated = bytes.get(..cut).unwrap_or_default();
                // A strict prefix of a JSON object is never a complete object.
                assert_eq!(parse_everything(truncated), 0, "cut at {cut}");
            }
            for _ in 0..500 {
                let mut mutated = bytes.to_vec();
                for _ in 0..3 {
                    let position = usize::from(rng.next_byte()) * mutated.len() / 256;
                    if let Some(byte) = mutated.get_mut(position) {
                        *byte = rng.next_byte();
                    }
                }
                parse_everything(&mutated);
            }
        }
    }

    #[test]
    fn deeply_nested_json_is_an_error_not_a_crash() {
        for (open, close) in [("[", "]"), ("{\"a\":", "}")] {
            let depth = 5_000;
            let payload = format!("{}1{}", open.repeat(depth), close.repeat(depth));
            let err = viewer_error(payload.as_bytes());
            assert!(
                err.starts_with("payload is not valid JSON: recursion limit exceeded"),
                "{err}"
            );
        }
        let nested = format!(
            r#"{{"type":"hangup","x":{}1{}}}"#,
            "[".repeat(5000),
            "]".repeat(5000)
        );
        assert!(viewer_error(nested.as_bytes())
            .starts_with("payload is not valid JSON: recursion limit exceeded"));
    }

    #[test]
    fn huge_inputs_are_rejected_before_parsing() {
        let huge = vec![b'['; 10 * 1024 * 1024];
        assert_eq!(
            viewer_error(&huge),
            "payload is 10485760 bytes, the limit is 65536"
        );
        assert_eq!(
            status_error(&huge),
            "payload is 10485760 bytes, the limit is 65536"
        );
        assert_eq!(
            camera_error(&huge),
            "payload is 10485760 bytes, the limit is 65536"
        );
    }

    #[test]
    fn a_full_payload_on_the_longest_topic_fits_the_packet_limit() {
        let topics = Topics::new("p".repeat(MAX_TOPIC_PREFIX_BYTES), "d".repeat(64));
        let longest_topic = topics.to_camera(&"s".repeat(SESSION_ID_MAX_LEN));
        // Topic length field (2), topic, packet id (2), payload.
        let remaining_length = 2 + longest_topic.len() + 2 + MAX_PAYLOAD_BYTES;
        assert!(remaining_length <= MAX_PACKET_BYTES, "{remaining_length}");
    }
}
