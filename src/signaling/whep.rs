//! The WHEP transport (draft-ietf-wish-whep): viewers' players POST an SDP offer over HTTP
//! and get the camera's answer with every candidate in it; PATCH adds their late
//! candidates, DELETE ends the session. It translates HTTP to and from the session
//! manager's requests and decides nothing about sessions; it must never carry media.

use crate::clock;
use crate::config::IceServer;
use crate::ice::IceServers;
use crate::session::core::Refusal;
use crate::session::{Signal, WhepAnswer, WhepRequest};
use crate::signaling::protocol::{
    check_candidate, check_offer_sdp, ErrorCode, IceCandidate, SessionId,
};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::set_header::SetResponseHeaderLayer;

/// The endpoint's path; sessions live below it.
pub const WHEP_PATH: &str = "/whep";
/// Largest accepted request body (an offer or an sdpfrag).
const MAX_BODY_BYTES: usize = 64 * 1024;
/// Candidates one PATCH may carry.
const MAX_PATCH_CANDIDATES: usize = 64;
/// A player told "busy" may try again after this many seconds.
const BUSY_RETRY_AFTER_S: u32 = 5;
/// How long a request waits for the session manager (an answer includes gathering).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);

const SDP: &str = "application/sdp";
const SDPFRAG: &str = "application/trickle-ice-sdpfrag";
const ACCEPT_POST: HeaderName = HeaderName::from_static("accept-post");
const ACCEPT_PATCH: HeaderName = HeaderName::from_static("accept-patch");

/// What the WHEP endpoint needs besides the session manager.
#[derive(Debug, Clone)]
pub struct WhepSettings {
    /// `Access-Control-Allow-Origin`: `*` or one origin.
    pub allow_origin: String,
    /// Announced to players in `Link: rel="ice-server"` headers (what viewers may see,
    /// credentials minted per answer).
    pub ice_servers: Arc<IceServers>,
    /// Access keys are on: an offer without `Authorization: Bearer` gets 401.
    pub require_token: bool,
}

#[derive(Clone)]
struct Endpoint {
    signals: mpsc::Sender<Signal>,
    ice_servers: Arc<IceServers>,
    require_token: bool,
}

/// The WHEP routes, to be merged into the HTTP server's router.
pub fn router(signals: mpsc::Sender<Signal>, settings: &WhepSettings) -> Router {
    let origin = if settings.allow_origin == "*" {
        AllowOrigin::any()
    } else {
        match HeaderValue::from_str(&settings.allow_origin) {
            Ok(origin) => AllowOrigin::exact(origin),
            // Validated in the configuration; an unusable value allows no cross-origin use.
            Err(_) => AllowOrigin::list([]),
        }
    };
    let cors = CorsLayer::new()
        .allow_origin(origin)
        .allow_methods([Method::POST, Method::PATCH, Method::DELETE, Method::OPTIONS])
        .allow_headers([
            header::CONTENT_TYPE,
            header::IF_MATCH,
            header::AUTHORIZATION,
        ])
        .expose_headers([
            header::LOCATION,
            header::ETAG,
            header::LINK,
            header::RETRY_AFTER,
            ACCEPT_POST,
        ]);
    let endpoint = Endpoint {
        signals,
        ice_servers: Arc::clone(&settings.ice_servers),
        require_token: settings.require_token,
    };
    // tower-http answers every OPTIONS as a CORS preflight, so Accept-Post is added to
    // the endpoint's responses by a layer of its own.
    let offers = Router::new()
        .route(WHEP_PATH, post(offer).options(endpoint_options))
        .layer(cors.clone())
        .layer(SetResponseHeaderLayer::if_not_present(
            ACCEPT_POST,
            HeaderValue::from_static(SDP),
        ));
    let sessions = Router::new()
        .route(
            &format!("{WHEP_PATH}/{{id}}"),
            axum::routing::patch(patch)
                .delete(delete)
                .options(session_options),
        )
        .layer(cors);
    offers
        .merge(sessions)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(endpoint)
}

impl Endpoint {
    /// Sends a request to the session manager and waits (bounded) for its reply.
    async fn ask<T>(
        &self,
        request: impl FnOnce(oneshot::Sender<T>) -> WhepRequest,
    ) -> Result<T, Response> {
        let (reply, answer) = oneshot::channel();
        let unavailable = || {
            plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "the camera is shutting down or overloaded; try again later",
            )
        };
        self.signals
            .try_send(Signal::Whep(request(reply)))
            .map_err(|_| unavailable())?;
        match tokio::time::timeout(ANSWER_TIMEOUT, answer).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(_)) => Err(plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the camera's session ended before it answered",
            )),
            Err(_) => Err(plain(
                StatusCode::GATEWAY_TIMEOUT,
                "the camera did not answer in time",
            )),
        }
    }
}

/// A plain-text response: the reason, for people and logs.
pub(crate) fn plain(status: StatusCode, reason: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{reason}\n"),
    )
        .into_response()
}

/// True when the request's media type (parameters aside) is `expected`.
fn has_content_type(headers: &HeaderMap, expected: &str) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|media_type| media_type.trim().eq_ignore_ascii_case(expected))
}

fn refusal_response(refusal: &Refusal) -> Response {
    let status = match refusal.code {
        ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
        ErrorCode::Busy | ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        // A token was given (none gets 401 before this) but is bad, expired or revoked.
        ErrorCode::Unauthorized => StatusCode::FORBIDDEN,
    };
    let mut response = plain(status, &refusal.message);
    if refusal.code == ErrorCode::Busy {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(BUSY_RETRY_AFTER_S));
    }
    response
}

/// The token of an `Authorization: Bearer TOKEN` header.
pub(crate) fn bearer_token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty())
        .then(|| token.trim().to_owned())
}

/// The entity tag of a session's ICE state: stable for the session, unique across them.
fn session_etag(sid: &SessionId) -> String {
    let mut hasher = DefaultHasher::new();
    sid.hash(&mut hasher);
    format!("\"{:016x}\"", hasher.finish())
}

async fn offer(State(endpoint): State<Endpoint>, headers: HeaderMap, body: Bytes) -> Response {
    let token = bearer_token(&headers);
    if endpoint.require_token && token.is_none() {
        let mut response = plain(
            StatusCode::UNAUTHORIZED,
            "this camera admits only viewers with an access key: send Authorization: Bearer VIEWER.EXP.MAC (peercam access --whep)",
        );
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return response;
    }
    if !has_content_type(&headers, SDP) {
        return plain(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "a WHEP offer must be sent as Content-Type: application/sdp",
        );
    }
    let Ok(sdp) = String::from_utf8(body.to_vec()) else {
        return plain(StatusCode::BAD_REQUEST, "the offer is not UTF-8 text");
    };
    if let Err(err) = check_offer_sdp(&sdp) {
        return plain(StatusCode::BAD_REQUEST, &err.to_string());
    }
    let answer: Result<WhepAnswer, Refusal> = match endpoint
        .ask(|reply| WhepRequest::Offer { sdp, token, reply })
        .await
    {
        Ok(answer) => answer,
        Err(response) => return response,
    };
    match answer {
        Ok(WhepAnswer { sid, sdp }) => {
            let mut response = (
                StatusCode::CREATED,
                [
                    (header::CONTENT_TYPE, SDP.to_owned()),
                    (header::LOCATION, format!("{WHEP_PATH}/{sid}")),
                    (header::ETAG, session_etag(&sid)),
                ],
                sdp,
            )
                .into_response();
            let servers = endpoint.ice_servers.for_viewers(clock::unix_s());
            for link in ice_server_links(&servers) {
                if let Ok(link) = HeaderValue::from_str(&link) {
                    response.headers_mut().append(header::LINK, link);
                }
            }
            response
        }
        Err(refusal) => refusal_response(&refusal),
    }
}

fn no_such_session() -> Response {
    plain(StatusCode::NOT_FOUND, "no such WHEP session")
}

async fn patch(
    State(endpoint): State<Endpoint>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // An id that cannot be a session id is simply not found.
    let Some(sid) = SessionId::parse(&id) else {
        return no_such_session();
    };
    if !has_content_type(&headers, SDPFRAG) {
        return plain(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "candidates must be sent as Content-Type: application/trickle-ice-sdpfrag",
        );
    }
    if let Some(if_match) = headers.get(header::IF_MATCH) {
        let etag = session_etag(&sid);
        if if_match.as_bytes() != b"*" && if_match.as_bytes() != etag.as_bytes() {
            return plain(
                StatusCode::PRECONDITION_FAILED,
                "If-Match does not name this session's ICE state",
            );
        }
    }
    let candidates = match std::str::from_utf8(&body)
        .map_err(|_| "the sdpfrag is not UTF-8 text".to_owned())
        .and_then(candidates_from_sdpfrag)
    {
        Ok(candidates) => candidates,
        Err(reason) => return plain(StatusCode::BAD_REQUEST, &reason),
    };
    match endpoint
        .ask(|reply| WhepRequest::Candidates {
            sid,
            candidates,
            reply,
        })
        .await
    {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => no_such_session(),
        Err(response) => response,
    }
}

async fn delete(State(endpoint): State<Endpoint>, Path(id): Path<String>) -> Response {
    // An id that cannot be a session id is simply not found.
    let Some(sid) = SessionId::parse(&id) else {
        return no_such_session();
    };
    match endpoint.ask(|reply| WhepRequest::End { sid, reply }).await {
        Ok(true) => StatusCode::OK.into_response(),
        Ok(false) => no_such_session(),
        Err(response) => response,
    }
}

async fn endpoint_options() -> Response {
    (
        StatusCode::NO_CONTENT,
        [(ACCEPT_POST, SDP), (header::ALLOW, "POST, OPTIONS")],
    )
        .into_response()
}

async fn session_options() -> Response {
    (
        StatusCode::NO_CONTENT,
        [
            (ACCEPT_PATCH, SDPFRAG),
            (header::ALLOW, "PATCH, DELETE, OPTIONS"),
        ],
    )
        .into_response()
}

/// Reads the candidates of a trickle-ice-sdpfrag (RFC 8840): `a=candidate` lines, with the
/// `a=mid` and `a=ice-ufrag` they belong to; `a=end-of-candidates` becomes `None`. Each
/// candidate must pass the checks an MQTT candidate message does.
pub fn candidates_from_sdpfrag(frag: &str) -> Result<Vec<Option<IceCandidate>>, String> {
    let mut candidates: Vec<Option<IceCandidate>> = Vec::new();
    let mut ufrag: Option<String> = None;
    let mut mid: Option<String> = None;
    // Candidates of the current media section wait for its a=mid, which may follow them.
    let mut section_start = 0;
    let close_section =
        |candidates: &mut Vec<Option<IceCandidate>>, start: usize, mid: &Option<String>| {
            for candidate in candidates[start..].iter_mut().flatten() {
                candidate.sdp_mid = mid.clone();
                candidate.sdp_mline_index = mid.is_none().then_some(0);
            }
        };
    for line in frag.lines() {
        let line = line.trim_end_matches('\r');
        if line.len() > 1024 {
            return Err("an sdpfrag line is longer than 1024 bytes".into());
        }
        if line.starts_with("m=") {
            close_section(&mut candidates, section_start, &mid);
            section_start = candidates.len();
            mid = None;
        } else if let Some(value) = line.strip_prefix("a=ice-ufrag:") {
            ufrag = Some(value.trim().to_owned());
        } else if let Some(value) = line.strip_prefix("a=mid:") {
            mid = Some(value.trim().to_owned());
        } else if let Some(value) = line.strip_prefix("a=candidate:") {
            candidates.push(Some(IceCandidate {
                candidate: format!("candidate:{}", value.trim()),
                sdp_mid: None,
                sdp_mline_index: None,
                username_fragment: ufrag.clone(),
            }));
        } else if line == "a=end-of-candidates" {
            candidates.push(None);
        }
        if candidates.len() > MAX_PATCH_CANDIDATES {
            return Err(format!(
                "an sdpfrag may carry at most {MAX_PATCH_CANDIDATES} candidates"
            ));
        }
    }
    close_section(&mut candidates, section_start, &mid);
    // A line may hold control characters other than a line feed, and a mid or ufrag may
    // be longer than a candidate message allows: the session core gets the same candidates
    // from either transport.
    for candidate in candidates.iter().flatten() {
        check_candidate(candidate)
            .map_err(|err| format!("an sdpfrag candidate is invalid: {err}"))?;
    }
    Ok(candidates)
}

/// One `Link: <url>; rel="ice-server"` value per configured STUN/TURN URL, with the TURN
/// credentials as attributes (draft-ietf-wish-whep, section 4.4).
pub fn ice_server_links(servers: &[IceServer]) -> Vec<String> {
    let mut links = Vec::new();
    for server in servers {
        for url in &server.urls {
            let mut link = format!("<{url}>; rel=\"ice-server\"");
            if let (Some(username), Some(credential)) = (&server.username, &server.credential) {
                link.push_str(&format!(
                    "; username={}; credential={}; credential-type=\"password\"",
                    quoted_string(username),
                    quoted_string(credential)
                ));
            }
            links.push(link);
        }
    }
    links
}

/// An HTTP quoted-string (RFC 9110): backslash before `"` and `\`.
fn quoted_string(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for c in text.chars() {
        if c == '"' || c == '\\' {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('"');
    quoted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sdpfrag_candidates_carry_their_mid_and_ufrag() {
        let frag = "a=ice-ufrag:EsAw\r\na=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\r\nm=video 9 RTP/AVP 0\r\na=mid:0\r\na=candidate:1387637174 1 udp 2122260223 127.0.0.1 61764 typ host generation 0\r\na=end-of-candidates\r\n";
        let candidates = candidates_from_sdpfrag(frag).unwrap();
        assert_eq!(candidates.len(), 2);
        let first = candidates[0].as_ref().unwrap();
        assert_eq!(
            first.candidate,
            "candidate:1387637174 1 udp 2122260223 127.0.0.1 61764 typ host generation 0"
        );
        assert_eq!(first.sdp_mid.as_deref(), Some("0"));
        assert_eq!(first.sdp_mline_index, None);
        assert_eq!(first.username_fragment.as_deref(), Some("EsAw"));
        assert_eq!(candidates[1], None);
    }

    #[test]
    fn sdpfrag_mid_may_follow_the_candidates_and_may_be_missing() {
        let late_mid =
            "m=video 9 RTP/AVP 0\na=candidate:1 1 udp 1 127.0.0.1 5000 typ host\na=mid:v\n";
        let candidates = candidates_from_sdpfrag(late_mid).unwrap();
        assert_eq!(
            candidates[0].as_ref().unwrap().sdp_mid.as_deref(),
            Some("v")
        );
        let no_mid = "a=candidate:1 1 udp 1 127.0.0.1 5000 typ host\n";
        let candidates = candidates_from_sdpfrag(no_mid).unwrap();
        assert_eq!(candidates[0].as_ref().unwrap().sdp_mline_index, Some(0));
    }

    #[test]
    fn sdpfrag_limits_are_errors_not_panics() {
        let many = "a=candidate:1 1 udp 1 127.0.0.1 5000 typ host\n".repeat(65);
        assert!(candidates_from_sdpfrag(&many)
            .unwrap_err()
            .contains("at most 64"));
        let long = format!("a=candidate:{}\n", "x".repeat(2000));
        assert!(candidates_from_sdpfrag(&long).unwrap_err().contains("1024"));
        assert_eq!(candidates_from_sdpfrag("").unwrap(), vec![]);
        assert_eq!(candidates_from_sdpfrag("garbage\n\u{0}\n").unwrap(), vec![]);
    }

    #[test]
    fn sdpfrag_candidates_pass_the_candidate_message_checks() {
        // Found by tests/properties.rs: these reached the session core through WHEP although
        // a candidate message carrying them is refused.
        for (frag, field) in [
            ("a=candidate:\na=mid:\u{0}\n", "candidate.sdpMid"),
            (
                "a=mid:0\na=candidate:1 1 udp 1 127.0.0.1 9\rtyp host\n",
                "candidate.candidate",
            ),
            (
                "a=mid:0\na=candidate:1 1 udp 1 127.0.0.1 9 typ\u{1b} host\n",
                "candidate.candidate",
            ),
        ] {
            let err = candidates_from_sdpfrag(frag).unwrap_err();
            assert!(err.contains(&format!("\"{field}\"")), "{frag:?}: {err}");
        }
        let long_mid = format!(
            "a=mid:{}\na=candidate:1 1 udp 1 127.0.0.1 9 typ host\n",
            "m".repeat(300)
        );
        let err = candidates_from_sdpfrag(&long_mid).unwrap_err();
        assert!(
            err.contains("\"candidate.sdpMid\" of candidate message must be at most 256 bytes"),
            "{err}"
        );
        let long_ufrag = format!(
            "a=ice-ufrag:{}\na=candidate:1 1 udp 1 127.0.0.1 9 typ host\n",
            "u".repeat(300)
        );
        let err = candidates_from_sdpfrag(&long_ufrag).unwrap_err();
        assert!(err.contains("\"candidate.usernameFragment\""), "{err}");
    }

    #[test]
    fn ice_server_links_quote_turn_credentials() {
        let servers = vec![
            IceServer {
                urls: vec!["stun:stun.example.test:3478".into()],
                ..IceServer::default()
            },
            IceServer {
                urls: vec!["turn:turn.example.test:3478?transport=udp".into()],
                username: Some("cam\"1".into()),
                credential: Some("s3cret".into()),
                ..IceServer::default()
            },
        ];
        assert_eq!(
            ice_server_links(&servers),
            vec![
                "<stun:stun.example.test:3478>; rel=\"ice-server\"".to_owned(),
                "<turn:turn.example.test:3478?transport=udp>; rel=\"ice-server\"; username=\"cam\\\"1\"; credential=\"s3cret\"; credential-type=\"password\"".to_owned(),
            ]
        );
    }

    #[test]
    fn refusals_map_to_http_statuses() {
        let busy = refusal_response(&Refusal::new(ErrorCode::Busy, "full"));
        assert_eq!(busy.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(busy.headers()[header::RETRY_AFTER], "5");
        let unavailable = refusal_response(&Refusal::new(ErrorCode::Unavailable, "gone"));
        assert_eq!(unavailable.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(unavailable.headers().get(header::RETRY_AFTER).is_none());
        let bad = refusal_response(&Refusal::new(ErrorCode::BadRequest, "no H.264"));
        assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn content_types_ignore_parameters_and_case() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            "Application/SDP; charset=utf-8".parse().unwrap(),
        );
        assert!(has_content_type(&headers, SDP));
        assert!(!has_content_type(&headers, SDPFRAG));
        assert!(!has_content_type(&HeaderMap::new(), SDP));
    }
}
