//! The HTTP server for viewers: serves the built web page (static files) and
//! `/peercam.json`, which tells the page which WebSocket port the embedded broker uses.
//! It must never carry signaling or media; browsers talk MQTT and WebRTC directly.

use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use tokio::sync::watch;
use tower_http::services::{ServeDir, ServeFile};

/// What the page needs to find the broker and the camera when served by the agent.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PageConfig {
    /// Port of the embedded broker's WebSocket listener, reached on the page's own host.
    pub ws_port: Option<u16>,
    /// This agent's device id (the page's default camera).
    pub device: String,
    pub topic_prefix: String,
}

pub fn router(web_root: PathBuf, page: PageConfig) -> Router {
    let index = web_root.join("index.html");
    Router::new()
        .route(
            "/peercam.json",
            get(move || async move { Json(page.clone()) }),
        )
        .fallback_service(ServeDir::new(web_root).fallback(ServeFile::new(index)))
}

/// Binds `listen` (a clear error if it cannot) and serves until `shutdown` turns true.
pub async fn serve(
    listen: SocketAddr,
    web_root: PathBuf,
    page: PageConfig,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("http.listen: cannot listen on {listen}: {e}"))?;
    if !web_root.join("index.html").exists() {
        tracing::warn!(web_root = %web_root.display(), "no index.html in http.web_root; build the page (web/) or fix the path");
    }
    tracing::info!(%listen, web_root = %web_root.display(), "viewer page at http://{listen}/");
    let app = router(web_root, page);
    Ok(tokio::spawn(async move {
        let stop = async move {
            while shutdown.changed().await.is_ok() {
                if *shutdown.borrow() {
                    break;
                }
            }
        };
        if let Err(err) = axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::error!("http server stopped: {err}");
        }
    }))
}
