//! The HTTP(S) server: serves the built web page (static files), `/peercam.json` (which
//! tells the page where the embedded broker takes WebSocket clients) and, when given, other
//! routes beside them (WHEP, the broker relay at `/mqtt`); over TLS when `[tls]` is set.
//! It must never carry media, nor hold session logic of its own. Every response it sends
//! carries the security headers below.

use crate::listener::Incoming;
use crate::tls::ServerTls;
use axum::http::{header, HeaderName, HeaderValue};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;
use tower_http::services::{ServeDir, ServeFile};
use tower_http::set_header::SetResponseHeaderLayer;

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
    with_security_headers(
        router.fallback_service(ServeDir::new(web_root).fallback(ServeFile::new(index))),
    )
}

/// `router` with [`SECURITY_HEADERS`] on every response.
pub fn with_security_headers(router: Router) -> Router {
    SECURITY_HEADERS
        .into_iter()
        .fold(router, |router, (name, value)| {
            router.layer(SetResponseHeaderLayer::overriding(
                name,
                HeaderValue::from_static(value),
            ))
        })
}

/// Binds `listen` (a clear error if it cannot) and serves `app`, over TLS when `tls` is
/// given, until `stop` is cancelled.
pub async fn serve(
    listen: SocketAddr,
    tls: Option<ServerTls>,
    web_root: &std::path::Path,
    app: Router,
    stop: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let listener = Incoming::bind(listen, "http.listen", tls).await?;
    if !web_root.join("index.html").exists() {
        tracing::warn!(web_root = %web_root.display(), "no index.html in http.web_root; build the page (web/) or fix the path");
    }
    tracing::info!(%listen, web_root = %web_root.display(), "viewer page at {scheme}://{listen}/");
    Ok(tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
        {
            tracing::error!("http server stopped: {err}");
        }
    }))
}
