//! The HTTP server: serves the built web page (static files), `/peercam.json` (which
//! tells the page which WebSocket port the embedded broker uses) and, when given, the WHEP
//! transport's routes. It must never carry media, nor hold session logic of its own.
//! Every response it sends carries the security headers below.

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
    /// This agent's device id (the page's default camera).
    pub device: String,
    pub topic_prefix: String,
}

/// The page, its `/peercam.json`, and `extra` routes (WHEP) beside them; every response,
/// the fallback's included, with [`SECURITY_HEADERS`].
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
    let router = router.fallback_service(ServeDir::new(web_root).fallback(ServeFile::new(index)));
    SECURITY_HEADERS
        .into_iter()
        .fold(router, |router, (name, value)| {
            router.layer(SetResponseHeaderLayer::overriding(
                name,
                HeaderValue::from_static(value),
            ))
        })
}

/// Binds `listen` (a clear error if it cannot) and serves `app` until `stop` is cancelled.
pub async fn serve(
    listen: SocketAddr,
    web_root: &std::path::Path,
    app: Router,
    stop: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("http.listen: cannot listen on {listen}: {e}"))?;
    if !web_root.join("index.html").exists() {
        tracing::warn!(web_root = %web_root.display(), "no index.html in http.web_root; build the page (web/) or fix the path");
    }
    tracing::info!(%listen, web_root = %web_root.display(), "viewer page at http://{listen}/");
    Ok(tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
        {
            tracing::error!("http server stopped: {err}");
        }
    }))
}
