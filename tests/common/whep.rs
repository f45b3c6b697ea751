//! A WHEP test player: the same receive-only webrtc-rs peer and decoder as the MQTT test
//! viewer, signaling over plain HTTP (draft-ietf-wish-whep) with ureq. It speaks only the
//! documented endpoint: POST the offer with every candidate, apply the answer, DELETE.

use super::viewer::{decode_track, receive_only_peer, Shared, ViewerStats};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use webrtc::data_channel::DataChannel;
use webrtc::media_stream::track_remote::TrackRemote;
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionEventHandler, RTCIceGatheringState, RTCSessionDescription,
};

/// An HTTP response, reduced to what the tests check.
#[derive(Debug, Clone)]
pub struct HttpReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// The body as text (lossy), and as it came.
    pub body: String,
    pub bytes: Vec<u8>,
}

impl HttpReply {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.all(name).into_iter().next()
    }

    /// Every value of header `name`, in order.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
            .collect()
    }
}

/// `GET path` with `Authorization: Bearer token`.
pub async fn get_with_bearer(port: u16, path: &str, token: &str) -> HttpReply {
    let bearer = format!("Bearer {token}");
    http(port, "GET", path, &[("Authorization", &bearer)], "").await
}

/// One HTTP request to 127.0.0.1:`port`; never fails on an error status.
pub async fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> HttpReply {
    let mut request = ureq::http::Request::builder()
        .method(method)
        .uri(format!("http://127.0.0.1:{port}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(body.to_owned()).unwrap();
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .allow_non_standard_methods(true)
            .timeout_global(Some(Duration::from_secs(20)))
            .build()
            .into();
        let mut response = agent.run(request).expect("HTTP request");
        let headers = response
            .headers()
            .iter()
            .map(|(key, value)| {
                (
                    key.as_str().to_owned(),
                    value.to_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        let bytes = response.body_mut().read_to_vec().unwrap_or_default();
        HttpReply {
            status: response.status().as_u16(),
            headers,
            body: String::from_utf8_lossy(&bytes).into_owned(),
            bytes,
        }
    })
    .await
    .unwrap()
}

struct Handler {
    shared: Arc<Shared>,
    gathered: Arc<Notify>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.gathered.notify_one();
        }
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        decode_track(Arc::clone(&self.shared), track);
    }
}

/// A playing WHEP session.
pub struct WhepViewer {
    pub port: u16,
    /// The session's resource path, from `Location`.
    pub location: String,
    /// The camera's `201 Created` reply.
    pub created: HttpReply,
    shared: Arc<Shared>,
    pc: Arc<dyn PeerConnection>,
    _data_channel: Arc<dyn DataChannel>,
}

impl WhepViewer {
    /// Gathers every candidate into an offer and POSTs it to `/whep`; a reply other than
    /// `201 Created` comes back as the error.
    pub async fn start(port: u16) -> Result<WhepViewer, HttpReply> {
        Self::start_authorized(port, None).await
    }

    /// The same with `Authorization: Bearer token`.
    pub async fn start_with_token(port: u16, token: &str) -> Result<WhepViewer, HttpReply> {
        Self::start_authorized(port, Some(token)).await
    }

    async fn start_authorized(port: u16, token: Option<&str>) -> Result<WhepViewer, HttpReply> {
        let shared = Shared::new();
        let gathered = Arc::new(Notify::new());
        let handler = Arc::new(Handler {
            shared: Arc::clone(&shared),
            gathered: Arc::clone(&gathered),
        });
        let (pc, data_channel) = receive_only_peer(handler, Arc::clone(&shared)).await;
        let offer = pc.create_offer(None).await.unwrap();
        pc.set_local_description(offer).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), gathered.notified())
            .await
            .expect("ICE gathering completes");
        let sdp = pc.local_description().await.unwrap().sdp;
        *shared.offer_sent.lock().unwrap() = Some(Instant::now());
        let bearer = token.map(|token| format!("Bearer {token}"));
        let mut headers = vec![("Content-Type", "application/sdp")];
        if let Some(bearer) = &bearer {
            headers.push(("Authorization", bearer.as_str()));
        }
        let created = http(port, "POST", "/whep", &headers, &sdp).await;
        if created.status != 201 {
            let _ = pc.close().await;
            return Err(created);
        }
        let answer = RTCSessionDescription::answer(created.body.clone()).unwrap();
        pc.set_remote_description(answer).await.unwrap();
        let location = created.header("location").expect("Location").to_owned();
        Ok(WhepViewer {
            port,
            location,
            created,
            shared,
            pc,
            _data_channel: data_channel,
        })
    }

    pub fn stats(&self) -> ViewerStats {
        self.shared.stats.lock().unwrap().clone()
    }

    /// Waits until at least `count` frames have been decoded.
    pub async fn wait_for_frames(&self, count: u64, timeout: Duration) -> ViewerStats {
        self.shared
            .wait_until(
                &self.location,
                &format!("{count} decoded frames"),
                timeout,
                |s| s.frames_decoded >= count,
            )
            .await
    }

    /// Ends the session with DELETE and closes the peer; returns the status.
    pub async fn delete(&self) -> u16 {
        let reply = http(self.port, "DELETE", &self.location, &[], "").await;
        let _ = self.pc.close().await;
        reply.status
    }
}
