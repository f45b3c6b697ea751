//! The HTTP(S) server: serves the built web page (static files), `/peercam.json` (which
//! tells the page where the embedded broker takes WebSocket clients) and, when given, other
//! routes beside them (WHEP, the broker relay at `/mqtt`); over TLS when `[tls]` is set.
//! It must never carry media, nor hold session logic of its own. Every response it sends
//! carries the security headers below, and every connection it serves is bounded: in
//! number (the listener's limit), in how long its headers may take or it may sit idle, in
//! how large a request body may be and how long a request may run.

use crate::auth::AccessPolicy;
use crate::clock;
use crate::health::{self, Heartbeat};
use crate::listener::Incoming;
use crate::metrics::Metrics;
use crate::signaling::whep;
use crate::snapshot::SnapshotRequests;
use crate::tls::ServerTls;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde::Serialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::services::{ServeDir, ServeFile};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::TimeoutLayer;

/// The largest request body taken: a WHEP offer or trickle fragment is a few KiB; the
/// protocol's own message limit is 64 KiB.
pub const MAX_REQUEST_BODY: usize = 64 * 1024;
/// How long one request may take to be answered (a WHEP answer waits for gathering).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long connections get to finish when the server stops.
const DRAIN_LIMIT: Duration = Duration::from_millis(500);

/// Anyone who can publish to the broker can put text in front of the page, so the page's
/// origin runs only its own script and frames, and browsers neither sniff nor leak URLs.
pub const SECURITY_HEADERS: [(HeaderName, &str); 3] = [
    (
        header::CONTENT_SECURITY_POLICY,
        "default-src 'self'; script-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data: blob:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    ),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::REFERRER_POLICY, "no-referrer"),
];

/// What the page needs to find the broker and the camera when served by the agent.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PageConfig {
    /// Port of the embedded broker's WebSocket listener, reached on the page's own host.
    pub ws_port: Option<u16>,
    /// Path on this very server (same origin, port and certificate) where MQTT over
    /// WebSocket reaches the embedded broker; the page prefers it to `ws_port`.
    pub mqtt_path: Option<&'static str>,
    /// This agent's device id (the page's default camera).
    pub device: String,
    pub topic_prefix: String,
}

/// The page, its `/peercam.json`, and `extra` routes (WHEP, `/mqtt`) beside them; every
/// response, the fallback's included, with [`SECURITY_HEADERS`].
pub fn router(web_root: PathBuf, page: PageConfig, extra: Option<Router>) -> Router {
    let index = web_root.join("index.html");
    let router = Router::new().route(
        "/peercam.json",
        get(move || async move { Json(page.clone()) }),
    );
    let router = match extra {
        Some(extra) => router.merge(extra),
        None => router,
    };
    with_limits_and_security_headers(
        router.fallback_service(ServeDir::new(web_root).fallback(ServeFile::new(index))),
    )
}

/// Where `GET` fetches a JPEG of the newest frame.
pub const SNAPSHOT_PATH: &str = "/snapshot.jpg";
/// How long a snapshot request waits for a frame before answering 503.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(3);

/// Where `GET` fetches the Prometheus metrics.
pub const METRICS_PATH: &str = "/metrics";

/// The camera's own HTTP routes besides the page and WHEP: `/snapshot.jpg`, and `/metrics`
/// when served. With access keys on (`access`: the policy and the live revoked list), both
/// need the same bearer token as WHEP.
#[derive(Clone)]
pub struct HttpRoutes {
    pub snapshots: Arc<SnapshotRequests>,
    pub metrics: Option<Arc<Metrics>>,
    pub access: Option<(AccessPolicy, watch::Receiver<Vec<String>>)>,
}

/// The routes of [`HttpRoutes`], to be merged into the server's router.
pub fn camera_routes(routes: HttpRoutes) -> Router {
    // `/metrics` is routed even when off: a scraper then gets a plain 404 saying so, not
    // the page (the fallback), which it would fail to parse as metrics.
    Router::new()
        .route(SNAPSHOT_PATH, get(snapshot))
        .route(METRICS_PATH, get(metrics))
        .with_state(routes)
}

impl HttpRoutes {
    /// A 401 refusal, unless the request may have what it asks for: anyone in open mode,
    /// else the holder of a valid, unrevoked WHEP bearer token.
    fn refusal(&self, headers: &HeaderMap, what: &str) -> Option<Response> {
        let Some((policy, revoked)) = &self.access else {
            return None;
        };
        let mut policy = policy.clone();
        policy.set_revoked(&revoked.borrow());
        let admitted = whep::bearer_token(headers)
            .is_some_and(|token| policy.check_whep_token(&token, clock::unix_s()).is_ok());
        if admitted {
            return None;
        }
        let mut response = whep::plain(
            StatusCode::UNAUTHORIZED,
            &format!("{what} need a valid access key: send Authorization: Bearer VIEWER.EXP.MAC (peercam access --whep)"),
        );
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        Some(response)
    }
}

async fn metrics(State(routes): State<HttpRoutes>, headers: HeaderMap) -> Response {
    let Some(metrics) = &routes.metrics else {
        return whep::plain(
            StatusCode::NOT_FOUND,
            "metrics are off on this camera ([metrics] enabled = false)",
        );
    };
    if let Some(refused) = routes.refusal(&headers, "metrics") {
        return refused;
    }
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics.render(),
    )
        .into_response()
}

async fn snapshot(State(routes): State<HttpRoutes>, headers: HeaderMap) -> Response {
    if let Some(refused) = routes.refusal(&headers, "snapshots") {
        return refused;
    }
    match tokio::time::timeout(SNAPSHOT_WAIT, routes.snapshots.request()).await {
        Ok(Ok(Ok(snapshot))) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "image/jpeg".to_owned()),
                (header::CACHE_CONTROL, "no-store".to_owned()),
                (CAPTURE_TIME_HEADER, snapshot.capture_us.to_string()),
            ],
            snapshot.jpeg,
        )
            .into_response(),
        Ok(Ok(Err(err))) => whep::plain(StatusCode::SERVICE_UNAVAILABLE, &err.to_string()),
        Ok(Err(_)) | Err(_) => whep::plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "no frame came from the camera in time; try again",
        ),
    }
}

/// The snapshot's capture time, Unix microseconds.
const CAPTURE_TIME_HEADER: HeaderName = HeaderName::from_static("x-peercam-capture-us");

/// `router` with [`SECURITY_HEADERS`] on every response, and the body and time limits
/// on every request.
pub fn with_limits_and_security_headers(router: Router) -> Router {
    let router = router
        .layer(RequestBodyLimitLayer::new(MAX_REQUEST_BODY))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ));
    SECURITY_HEADERS
        .into_iter()
        .fold(router, |router, (name, value)| {
            router.layer(SetResponseHeaderLayer::overriding(
                name,
                HeaderValue::from_static(value),
            ))
        })
}

/// Serves `app` on every connection `incoming` hands over until `stop`: HTTP/1.1 with
/// upgrades (WebSocket), each connection in its own task, closed when its client takes
/// longer than `header_timeout` to send a request's headers (the first, or the next one
/// on a kept-alive connection). axum's own `serve` sets no such timeout.
pub async fn serve_connections(
    mut incoming: Incoming,
    app: Router,
    header_timeout: Duration,
    heartbeat: Heartbeat,
    stop: CancellationToken,
) {
    let connections = TaskTracker::new();
    let mut beats = tokio::time::interval(health::BEAT_INTERVAL);
    loop {
        let (conn, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            _ = beats.tick() => {
                heartbeat.beat();
                continue;
            }
            next = incoming.next() => match next {
                Some(accepted) => accepted,
                None => break,
            },
        };
        let service = TowerToHyperService::new(app.clone());
        let stop = stop.clone();
        connections.spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout);
            let conn = builder
                .serve_connection(TokioIo::new(conn), service)
                .with_upgrades();
            tokio::pin!(conn);
            let result = tokio::select! {
                result = conn.as_mut() => result,
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(err) = result {
                tracing::debug!(%peer, "HTTP connection ended: {err}");
            }
        });
    }
    connections.close();
    let _ = tokio::time::timeout(DRAIN_LIMIT, connections.wait()).await;
}

/// What every HTTP listener (the page's, the broker's WebSocket door) bounds, and the
/// broker's TLS door too for its number of connections (`[http]`'s keys).
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    /// See [`serve_connections`].
    pub header_timeout: Duration,
}

impl ConnectionLimits {
    pub fn from_config(http: &crate::config::HttpConfig) -> ConnectionLimits {
        ConnectionLimits {
            max_connections: http.max_connections,
            header_timeout: Duration::from_secs(http.header_timeout_s),
        }
    }
}

/// Binds `listen` (a clear error if it cannot) and serves `app`, over TLS when `tls` is
/// given, until `stop` is cancelled.
pub async fn serve(
    listen: SocketAddr,
    limits: ConnectionLimits,
    tls: Option<ServerTls>,
    web_root: &std::path::Path,
    app: Router,
    heartbeat: Heartbeat,
    stop: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let incoming = Incoming::bind(listen, "http.listen", tls, limits.max_connections).await?;
    if !web_root.join("index.html").exists() {
        tracing::warn!(web_root = %web_root.display(), "no index.html in http.web_root; build the page (web/) or fix the path");
    }
    tracing::info!(%listen, web_root = %web_root.display(), "viewer page at {scheme}://{listen}/");
    Ok(tokio::spawn(serve_connections(
        incoming,
        app,
        limits.header_timeout,
        heartbeat,
        stop,
    )))
}
