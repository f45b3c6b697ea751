//! The service: wires broker, pipeline, signaling, sessions and telemetry from one
//! configuration, and owns their shutdown. It must never hold media or protocol logic
//! itself; it only connects the parts and stops them in order.

use crate::config::{BrokerTarget, Config};
use crate::encode::EncoderSettings;
use crate::fanout::{FanOut, KeyframeRequests};
use crate::http::{self, PageConfig};
use crate::notify;
use crate::pipeline::{Liveness, Pipeline, PipelineCounters, PipelineHealth};
use crate::session::peer::PeerSettings;
use crate::session::{SessionContext, SessionManager};
use crate::signaling::broker;
use crate::signaling::mqtt::{self, MqttSettings};
use crate::signaling::protocol::{CameraState, Status, Topics, VideoInfo};
use crate::source::testsrc::TestSource;
use crate::source::v4l2::{V4l2Options, V4l2Source};
use crate::source::{StreamedMode, VideoSource};
use crate::telemetry::TelemetrySampler;
use anyhow::Context;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use webrtc::peer_connection::RTCIceServer;

/// Signaling messages waiting for the session manager before new ones are dropped.
const INCOMING_QUEUE: usize = 1024;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

fn open_source(config: &Config) -> anyhow::Result<Box<dyn VideoSource>> {
    let video = &config.video;
    match video.source.as_str() {
        "testsrc" => Ok(Box::new(
            TestSource::new(video.width, video.height, video.fps).map_err(anyhow::Error::msg)?,
        )),
        path => Ok(Box::new(V4l2Source::new(v4l2_options(config, path)))),
    }
}

/// The encoder settings a configuration asks for.
pub fn encoder_settings(config: &Config) -> EncoderSettings {
    EncoderSettings {
        width: config.video.width,
        height: config.video.height,
        fps: config.video.fps,
        bitrate_kbps: config.video.bitrate_kbps,
        keyframe_interval_s: config.video.keyframe_interval_s,
    }
}

/// The V4L2 capture options a validated configuration asks for (`path` overrides
/// `video.source`).
pub fn v4l2_options(config: &Config, path: &str) -> V4l2Options {
    let video = &config.video;
    V4l2Options {
        path: path.into(),
        width: video.width,
        height: video.height,
        fps: video.fps,
        format: video.pixel_format(),
        passthrough: video.passthrough,
        strict: video.strict,
        controls: video.controls.clone(),
    }
}

fn mqtt_settings(config: &Config, topics: Topics) -> MqttSettings {
    let (host, port) = match &config.mqtt.broker {
        BrokerTarget::Embedded => {
            let listen = config.broker.listen;
            // A wildcard listener is reached through loopback from the same machine.
            let host = if listen.ip().is_unspecified() {
                "127.0.0.1".to_owned()
            } else {
                listen.ip().to_string()
            };
            (host, listen.port())
        }
        BrokerTarget::External { host, port } => (host.clone(), *port),
    };
    MqttSettings {
        host,
        port,
        client_id: config.mqtt.client_id(&config.device),
        username: config.mqtt.username.clone(),
        password: config.mqtt.password.clone(),
        keepalive: Duration::from_secs(u64::from(config.mqtt.keepalive_s)),
        topics,
        device: config.device.id.clone(),
    }
}

fn ice_servers(config: &Config) -> Vec<RTCIceServer> {
    config
        .webrtc
        .ice_servers
        .iter()
        .map(|server| RTCIceServer {
            urls: server.urls.clone(),
            username: server.username.clone().unwrap_or_default(),
            credential: server.credential.clone().unwrap_or_default(),
        })
        .collect()
}

/// The retained status document for the current viewer count and camera state;
/// `streamed` is the mode being streamed, once known (else the configured one).
pub fn status_json(
    config: &Config,
    viewers: usize,
    camera_available: bool,
    streamed: Option<StreamedMode>,
) -> String {
    let (width, height, fps) = match streamed {
        // Protocol v1 carries whole frames per second: 12.5 is announced as 13.
        Some(mode) => (mode.width, mode.height, mode.fps.round() as u32),
        None => (config.video.width, config.video.height, config.video.fps),
    };
    let ice_servers = config
        .webrtc
        .ice_servers
        .iter()
        .filter_map(|server| serde_json::to_value(server).ok())
        .collect();
    let mut status = Status::online(
        &config.device.id,
        &config.device.name,
        VERSION,
        VideoInfo {
            codec: "H264".to_owned(),
            width,
            height,
            fps,
        },
        viewers as u32,
        config.webrtc.max_viewers as u32,
        ice_servers,
    );
    if !camera_available {
        status.state = CameraState::Unavailable;
    }
    status.to_json()
}

fn service_status(viewers: usize, camera_available: bool) -> String {
    let camera = if camera_available {
        "camera online"
    } else {
        "camera unavailable"
    };
    format!("{viewers} viewer(s); {camera}")
}

/// Pings systemd's watchdog only while the encoder keeps finishing frames, so a stuck
/// capture or encoder gets the service restarted.
async fn watchdog_loop(interval: Duration, health: Arc<PipelineHealth>, stall_limit: Duration) {
    let mut ticker = tokio::time::interval(interval);
    let mut stalled = false;
    loop {
        ticker.tick().await;
        match health.liveness(stall_limit) {
            Liveness::Alive => {
                stalled = false;
                notify::watchdog_ping();
            }
            Liveness::Stalled(age) if !stalled => {
                stalled = true;
                tracing::error!(
                    "no frame through the pipeline for {age:?}; withholding watchdog pings"
                );
            }
            Liveness::Stalled(_) => {}
        }
    }
}

enum Signal {
    Stop,
    Reload,
}

async fn wait_for_signal() -> Signal {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut terminate), Ok(mut hangup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::warn!("cannot install signal handlers; only Ctrl-C stops the agent");
        let _ = tokio::signal::ctrl_c().await;
        return Signal::Stop;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {
            tracing::info!("interrupted; shutting down");
            Signal::Stop
        }
        _ = terminate.recv() => {
            tracing::info!("SIGTERM; shutting down");
            Signal::Stop
        }
        _ = hangup.recv() => {
            tracing::info!("SIGHUP; re-reading the configuration");
            Signal::Reload
        }
    }
}

/// Applies a new log filter at runtime; returns an error text when it is invalid.
pub type LogLevelSetter = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// Runs the agent until SIGTERM/SIGINT. SIGHUP re-reads `config_path` (when given) and
/// applies what can change live.
pub async fn run(
    config: Config,
    config_path: Option<PathBuf>,
    set_log_level: LogLevelSetter,
) -> anyhow::Result<()> {
    if config.mqtt.broker == BrokerTarget::Embedded {
        let (listen, ws) = (config.broker.listen, config.broker.ws_listen);
        tokio::task::spawn_blocking(move || broker::start(listen, ws)).await??;
    }

    let counters = Arc::new(PipelineCounters::default());
    let fanout = FanOut::new(Arc::new(KeyframeRequests::default()));
    let source = open_source(&config)?;
    let (camera_tx, camera_available) = watch::channel(true);
    let pipeline = Pipeline::start(
        source,
        encoder_settings(&config),
        Arc::clone(&fanout),
        Arc::clone(&counters),
        camera_tx,
    )
    .context("starting the video pipeline")?;

    let topics = Topics::new(&config.mqtt.topic_prefix, &config.device.id);
    let (shutdown_tx, shutdown) = watch::channel(false);
    // Signaling stops after the sessions, so their hangups still reach the viewers.
    let (signaling_shutdown_tx, signaling_shutdown) = watch::channel(false);
    let (outbox_tx, outbox) = mpsc::unbounded_channel();
    let (incoming_tx, incoming) = mpsc::channel(INCOMING_QUEUE);
    let (viewers_tx, mut viewers) = watch::channel(0usize);
    let live_viewers = viewers.clone();
    let (telemetry_tx, telemetry) = watch::channel::<Option<Arc<str>>>(None);
    let (status_tx, status) = watch::channel(status_json(&config, 0, true, None));

    let ctx = Arc::new(SessionContext {
        peer_settings: PeerSettings {
            ice_servers: ice_servers(&config),
            udp_addrs: config.webrtc.udp_addrs.clone(),
        },
        fanout: Arc::clone(&fanout),
        topics: topics.clone(),
        outbox: outbox_tx,
        telemetry,
        camera_available: camera_available.clone(),
        connect_timeout: Duration::from_secs(config.webrtc.connect_timeout_s),
        max_viewers: AtomicUsize::new(config.webrtc.max_viewers),
    });
    let manager = tokio::spawn(
        SessionManager::new(Arc::clone(&ctx), viewers_tx).run(incoming, shutdown.clone()),
    );
    let signaling = tokio::spawn(mqtt::run(
        mqtt_settings(&config, topics),
        status,
        incoming_tx,
        outbox,
        signaling_shutdown,
    ));

    // Status follows the viewer count and live config; telemetry is sampled once for all viewers.
    let (live_tx, live) = watch::channel(config.clone());
    let mut status_live = live.clone();
    let mut status_shutdown = shutdown.clone();
    let mut status_camera = camera_available.clone();
    let mut status_streamed = pipeline.streamed_mode();
    let status_task = tokio::spawn(async move {
        loop {
            tokio::select! {
                changed = viewers.changed() => if changed.is_err() { break },
                changed = status_live.changed() => if changed.is_err() { break },
                changed = status_camera.changed() => if changed.is_err() { break },
                changed = status_streamed.changed() => if changed.is_err() { break },
                _ = status_shutdown.changed() => break,
            }
            let count = *viewers.borrow_and_update();
            let camera = *status_camera.borrow_and_update();
            let streamed = *status_streamed.borrow_and_update();
            let current = status_live.borrow_and_update().clone();
            let json = status_json(&current, count, camera, streamed);
            // Republish (retained, to every subscriber) only what really changed.
            status_tx.send_if_modified(|published| {
                let changed = *published != json;
                *published = json;
                changed
            });
            notify::status(&service_status(count, camera));
        }
    });
    let telemetry_viewers = fanout.clone();
    let (width, height) = (config.video.width, config.video.height);
    let telemetry_counters = Arc::clone(&counters);
    let mut telemetry_live = live.clone();
    let telemetry_streamed = pipeline.streamed_mode();
    let telemetry_camera = camera_available.clone();
    let telemetry_task = tokio::spawn(async move {
        let mut sampler = TelemetrySampler::new(width, height);
        loop {
            let interval =
                Duration::from_millis(telemetry_live.borrow_and_update().telemetry.interval_ms);
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                changed = telemetry_live.changed() => {
                    if changed.is_err() { break; }
                    continue;
                }
            }
            let viewers = telemetry_viewers.subscriber_count();
            if let Some(mode) = *telemetry_streamed.borrow() {
                sampler.set_video_size(mode.width, mode.height);
            }
            let camera = *telemetry_camera.borrow();
            let message = sampler.sample(&telemetry_counters, viewers, camera);
            telemetry_tx.send_replace(Some(Arc::from(message.to_json())));
        }
    });

    let http = match config.http.listen {
        Some(listen) => {
            let page = PageConfig {
                ws_port: match config.mqtt.broker {
                    BrokerTarget::Embedded => config.broker.ws_listen.map(|a| a.port()),
                    BrokerTarget::External { .. } => None,
                },
                device: config.device.id.clone(),
                topic_prefix: config.mqtt.topic_prefix.clone(),
            };
            Some(http::serve(listen, config.http.web_root.clone(), page, shutdown.clone()).await?)
        }
        None => None,
    };
    let watchdog = notify::watchdog_interval().map(|interval| {
        tokio::spawn(watchdog_loop(
            interval,
            Arc::clone(pipeline.health()),
            notify::stall_limit(config.video.fps),
        ))
    });
    notify::ready(&service_status(0, true));
    tracing::info!("peercam ready");

    while let Signal::Reload = wait_for_signal().await {
        let Some(path) = &config_path else {
            tracing::info!("SIGHUP: no --config file to re-read");
            continue;
        };
        notify::reloading();
        match Config::load(path) {
            Err(err) => tracing::error!("SIGHUP: keeping the running configuration: {err}"),
            Ok(new) => {
                let current = live.borrow().clone();
                let plan = current.reload_plan(&new);
                if current.log.level != new.log.level {
                    if let Err(err) = set_log_level(&new.log.level) {
                        tracing::warn!("log.level not changed: {err}");
                    }
                }
                ctx.max_viewers
                    .store(new.webrtc.max_viewers, Ordering::Relaxed);
                live_tx.send_replace(current.with_live_keys_from(&new));
                tracing::info!(applied = ?plan.applied, needs_restart = ?plan.needs_restart, "configuration reloaded");
                for section in &plan.needs_restart {
                    tracing::warn!("{section} changed; restart peercam to apply it");
                }
            }
        }
        notify::ready(&service_status(
            *live_viewers.borrow(),
            *camera_available.borrow(),
        ));
    }
    notify::stopping();
    shutdown_tx.send_replace(true);
    let stopped = async {
        let _ = manager.await;
        signaling_shutdown_tx.send_replace(true);
        let _ = signaling.await;
    };
    if tokio::time::timeout(Duration::from_millis(2500), stopped)
        .await
        .is_err()
    {
        tracing::warn!("signaling did not stop in time");
    }
    status_task.abort();
    if let Some(http) = http {
        http.abort();
    }
    if let Some(watchdog) = watchdog {
        watchdog.abort();
    }
    telemetry_task.abort();
    tokio::task::spawn_blocking(move || pipeline.stop())
        .await
        .ok();
    tracing::info!("peercam stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_reports_the_streamed_mode_once_known() {
        let config = Config::default();
        let configured: serde_json::Value =
            serde_json::from_str(&status_json(&config, 2, true, None)).unwrap();
        assert_eq!(configured["video"]["width"], config.video.width);
        assert_eq!(configured["video"]["height"], config.video.height);
        assert_eq!(configured["video"]["fps"], config.video.fps);
        assert_eq!(configured["viewers"], 2);
        assert_eq!(configured["state"], "online");
        // The camera settled on its nearest mode: viewers are told the truth.
        let nearest = StreamedMode {
            width: 640,
            height: 480,
            fps: 25.0,
        };
        let negotiated: serde_json::Value =
            serde_json::from_str(&status_json(&config, 0, false, Some(nearest))).unwrap();
        assert_eq!(negotiated["video"]["width"], 640);
        assert_eq!(negotiated["video"]["height"], 480);
        assert_eq!(negotiated["video"]["fps"], 25);
        assert_eq!(negotiated["state"], "unavailable");
    }

    #[test]
    fn status_carries_the_negotiated_rate_in_whole_frames_per_second() {
        let config = Config::default();
        let fps = |fps: f64| {
            let mode = StreamedMode {
                width: 1280,
                height: 720,
                fps,
            };
            let status: serde_json::Value =
                serde_json::from_str(&status_json(&config, 0, true, Some(mode))).unwrap();
            status["video"]["fps"].clone()
        };
        assert_eq!(fps(12.5), 13, "vivid's nearest 720p mode");
        assert_eq!(fps(29.97), 30);
        assert_eq!(fps(7.5), 8);
    }
}
