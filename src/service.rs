//! The service: wires broker, pipeline, session manager, signaling transports (MQTT,
//! WHEP), status and telemetry from one configuration, and owns their shutdown through one
//! cancellation tree. It must never hold media or session logic itself; it only connects
//! the parts and stops them in order.

use crate::auth::{read_private_file, AccessPolicy, CameraSecret};
use crate::clock;
use crate::config::{BrokerTarget, Config};
use crate::encode::EncoderSettings;
use crate::fanout::{FanOut, KeyframeRequests};
use crate::health::{self, Parts};
use crate::homeassistant::{self, Discovery};
use crate::http::{self, HttpRoutes, PageConfig};
use crate::ice::IceServers;
use crate::listener::Incoming;
use crate::metrics::Metrics;
use crate::notify;
use crate::pipeline::{Pipeline, PipelineCounters, PipelineHealth, SnapshotSettings};
use crate::session::core::{Limits, OfferRate};
use crate::session::peer::{PeerSettings, PlayoutDelay};
use crate::session::udp_mux::UdpMux;
use crate::session::{ManagerInputs, SessionContext, SessionManager, Signal};
use crate::signaling::broker;
use crate::signaling::broker_users::{Credential, Gate};
use crate::signaling::mqtt::{self, HomeAssistantLink, MqttLiveness, MqttSettings};
use crate::signaling::mqtt_security::{self, FailureContext, Password};
use crate::signaling::protocol::{AuthMode, CameraState, Status, Topics, VideoInfo};
use crate::signaling::relay;
use crate::signaling::whep::{self, WhepSettings};
use crate::snapshot::SnapshotRequests;
use crate::source::testsrc::TestSource;
use crate::source::v4l2::{V4l2Options, V4l2Source};
use crate::source::{StreamedMode, VideoSource};
use crate::telemetry::TelemetrySampler;
use crate::tls::ServerTls;
use anyhow::Context;
use axum::Router;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// Signaling messages waiting for the session manager before new ones are dropped.
const SIGNAL_QUEUE: usize = 1024;
/// How long sessions and signaling get to say goodbye at shutdown.
const SHUTDOWN_LIMIT: Duration = Duration::from_millis(2500);

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

fn open_source(config: &Config) -> anyhow::Result<Box<dyn VideoSource>> {
    let video = &config.video;
    match video.source.as_str() {
        "testsrc" => Ok(Box::new(
            TestSource::new(video.width, video.height, video.fps)
                .map_err(anyhow::Error::msg)?
                .stalling_after(
                    video
                        .testsrc_stall_after_s
                        .map(|s| Duration::from_secs(s.into())),
                ),
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

/// Where and how the agent connects to its broker. Reads the password file and the TLS
/// files, so a file changed since validation is still reported by its key. `internal`: the
/// agent's own login to the embedded broker when it has users.
fn mqtt_settings(
    config: &Config,
    topics: Topics,
    internal: Option<&Credential>,
) -> anyhow::Result<MqttSettings> {
    let mqtt = &config.mqtt;
    let (host, port, tls, websocket_path) = match &mqtt.broker {
        BrokerTarget::Embedded => {
            let local = config.broker.local_addr();
            (local.ip().to_string(), local.port(), false, None)
        }
        BrokerTarget::External {
            host,
            port,
            tls,
            websocket_path,
        } => (host.clone(), *port, *tls, websocket_path.clone()),
    };
    let (username, password) = match internal {
        Some(login) => (
            Some(login.username.clone()),
            Some(Password::new(login.password.clone())),
        ),
        None => (
            mqtt.username.clone(),
            match (&mqtt.password_file, &mqtt.password) {
                (Some(path), _) => Some(mqtt_security::read_password_file(path)?),
                (None, Some(password)) => Some(Password::new(password.clone())),
                (None, None) => None,
            },
        ),
    };
    let tls = if tls {
        Some(mqtt_security::client_config(&mqtt.tls_files())?)
    } else {
        None
    };
    let failure_context = FailureContext {
        broker: format!("{host}:{port}"),
        ca_file: mqtt.ca_file.clone(),
        client_cert: mqtt.cert_file.is_some(),
        username: username.clone(),
        password_key: mqtt.password_key(),
    };
    Ok(MqttSettings {
        host,
        port,
        tls,
        websocket_path,
        client_id: mqtt.client_id(&config.device),
        username,
        password,
        keepalive: Duration::from_secs(u64::from(mqtt.keepalive_s)),
        topics,
        device: config.device.id.clone(),
        failure_context,
        max_outgoing_bytes: mqtt_packet_limit(config),
    })
}

/// The largest MQTT packet the camera sends (and, embedded, its broker takes): room for
/// a snapshot only when snapshots go to MQTT.
fn mqtt_packet_limit(config: &Config) -> usize {
    if config.homeassistant.publishes_snapshots(&config.auth) {
        homeassistant::MAX_SNAPSHOT_BYTES + homeassistant::PACKET_OVERHEAD_BYTES
    } else {
        crate::signaling::protocol::MAX_PACKET_BYTES
    }
}

/// The ICE servers with their shared secrets read (each from a private file); static TURN
/// passwords are announced as the camera's own, never published.
pub fn load_ice_servers(config: &Config) -> anyhow::Result<IceServers> {
    let ice = IceServers::load(
        &config.device.id,
        &config.webrtc.ice_servers,
        |i, server| {
            let Some(path) = &server.secret_file else {
                return Ok(Vec::new());
            };
            let mut secret = read_private_file(path).map_err(|reason| {
                format!(
                    "webrtc.ice_servers[{i}].secret_file: {}: {reason}",
                    path.display()
                )
            })?;
            // A secret written with `echo` ends in a newline coturn's config line does not have.
            while secret.last().is_some_and(u8::is_ascii_whitespace) {
                secret.pop();
            }
            Ok(secret)
        },
    )
    .map_err(anyhow::Error::msg)?;
    for urls in ice.unpublished() {
        tracing::warn!(
            ?urls,
            "a TURN server with a static username and credential is used by the camera only and not announced to viewers; give it secret_file for short-lived credentials viewers can use (docs/nat.md)"
        );
    }
    Ok(ice)
}

/// The retained status document for the current viewer count and camera state;
/// `streamed` is the mode being streamed, once known (else the configured one).
pub fn status_json(
    config: &Config,
    ice: &IceServers,
    viewers: usize,
    camera_available: bool,
    streamed: Option<StreamedMode>,
    encoder_restarts: u64,
) -> String {
    let (width, height, fps) = match streamed {
        // Protocol v1 carries whole frames per second: 12.5 is announced as 13.
        Some(mode) => (mode.width, mode.height, mode.fps.round() as u32),
        None => (config.video.width, config.video.height, config.video.fps),
    };
    let ice_servers = ice
        .for_viewers(clock::unix_s())
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
    status.auth = Some(config.auth.mode);
    status.encoder_restarts =
        (encoder_restarts > 0).then(|| u32::try_from(encoder_restarts).unwrap_or(u32::MAX));
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

/// Pings systemd's watchdog only while the encoder keeps finishing frames and every part
/// of the service is alive, so a stuck or dead part gets the service restarted.
async fn watchdog_loop(
    interval: Duration,
    pipeline: Arc<PipelineHealth>,
    stall_limit: Duration,
    parts: Arc<Parts>,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    let mut withheld = false;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.cancelled() => break,
        }
        match health::watchdog_withheld_because(pipeline.liveness(stall_limit), &parts.verdict()) {
            None => {
                withheld = false;
                notify::watchdog_ping();
            }
            Some(reason) if !withheld => {
                withheld = true;
                tracing::error!("{reason}; withholding watchdog pings");
            }
            Some(_) => {}
        }
    }
}

/// What stops and reloads a running service: OS signals for the binary, the caller in
/// tests that drive the whole service in-process.
pub struct Control {
    /// Cancelled to stop; every part of the service stops with it.
    pub stop: CancellationToken,
    /// One message per reload request (SIGHUP).
    pub reloads: mpsc::Receiver<()>,
}

/// Turns SIGTERM and SIGINT into a stop, and SIGHUP into a reload request.
pub fn os_signals() -> anyhow::Result<Control> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
    let mut hangup = signal(SignalKind::hangup()).context("installing a SIGHUP handler")?;
    let stop = CancellationToken::new();
    let (reload_tx, reloads) = mpsc::channel(4);
    let stopper = stop.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = interrupt.recv() => {
                    tracing::info!("interrupted; shutting down");
                    break;
                }
                _ = terminate.recv() => {
                    tracing::info!("SIGTERM; shutting down");
                    break;
                }
                _ = hangup.recv() => {
                    tracing::info!("SIGHUP; re-reading the configuration");
                    // A reload already queued covers this one too.
                    let _ = reload_tx.try_send(());
                }
            }
        }
        stopper.cancel();
    });
    Ok(Control { stop, reloads })
}

/// Applies a new log filter at runtime; returns an error text when it is invalid.
pub type LogLevelSetter = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// What the status follows of the pipeline.
struct PipelineWatches {
    streamed: watch::Receiver<Option<StreamedMode>>,
    encoder_restarts: watch::Receiver<u64>,
}

/// Keeps the retained status (and systemd's STATUS line) true to the viewer count, the
/// camera, the streamed size and the live configuration, and its minted TURN credentials
/// fresh (renewed at half their lifetime), until `stop`.
async fn publish_status(
    ice: Arc<IceServers>,
    mut live: watch::Receiver<Config>,
    mut viewers: watch::Receiver<usize>,
    mut camera: watch::Receiver<bool>,
    mut pipeline: PipelineWatches,
    status: watch::Sender<String>,
    stop: CancellationToken,
) {
    // Only minted credentials expire and need renewing.
    let renewal = ice.renewal_interval_s().map(Duration::from_secs);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(renewal.unwrap_or_default()), if renewal.is_some() => {}
            changed = viewers.changed() => if changed.is_err() { break },
            changed = live.changed() => if changed.is_err() { break },
            changed = camera.changed() => if changed.is_err() { break },
            changed = pipeline.streamed.changed() => if changed.is_err() { break },
            changed = pipeline.encoder_restarts.changed() => if changed.is_err() { break },
            _ = stop.cancelled() => break,
        }
        let count = *viewers.borrow_and_update();
        let available = *camera.borrow_and_update();
        let mode = *pipeline.streamed.borrow_and_update();
        let restarts = *pipeline.encoder_restarts.borrow_and_update();
        let json = status_json(
            &live.borrow_and_update(),
            &ice,
            count,
            available,
            mode,
            restarts,
        );
        // Republish (retained, to every subscriber) only what really changed.
        status.send_if_modified(|published| {
            let changed = *published != json;
            *published = json;
            changed
        });
        notify::status(&service_status(count, available));
    }
}

/// What telemetry samples: the pipeline's counters and stage latencies, the streamed
/// mode, the camera's availability and the connected viewers.
struct TelemetrySources {
    fanout: Arc<FanOut>,
    counters: Arc<PipelineCounters>,
    streamed: watch::Receiver<Option<StreamedMode>>,
    camera: watch::Receiver<bool>,
    viewers: watch::Receiver<usize>,
}

/// Home Assistant integration: the publisher of telemetry and snapshots when it is on,
/// and the transport's link (which, off, still clears discovery configs it finds).
fn start_home_assistant(
    config: &Config,
    topics: &Topics,
    snapshots: &Arc<SnapshotRequests>,
    telemetry: watch::Receiver<Option<Arc<str>>>,
    helpers: &mut tokio::task::JoinSet<()>,
    stop: &CancellationToken,
) -> HomeAssistantLink {
    let host_name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let url = homeassistant::configuration_url(config, host_name.trim());
    let discovery = Discovery::new(config, url);
    // Closed at once when off: the transport's branch for it then never fires.
    let (out, publications) = mpsc::channel(4);
    let (requests_tx, snapshot_requests) = mpsc::channel(1);
    let ha = &config.homeassistant;
    let camera = ha.publishes_snapshots(&config.auth);
    if ha.enabled {
        if ha.camera.is_none() && !camera {
            tracing::info!("Home Assistant: sensors only; the camera entity is off because access keys guard the video (homeassistant.camera = true publishes snapshots to the broker anyway)");
        }
        helpers.spawn(homeassistant::run(
            homeassistant::Publisher {
                topics: topics.clone(),
                snapshots: camera.then(|| Arc::clone(snapshots)),
                snapshot_interval: (ha.snapshot_interval_s > 0)
                    .then(|| Duration::from_secs(ha.snapshot_interval_s.into())),
                telemetry,
                telemetry_interval: Duration::from_secs(config.telemetry.mqtt_interval_s.into()),
                snapshot_requests,
                out,
            },
            stop.child_token(),
        ));
    }
    HomeAssistantLink {
        discovery,
        snapshot_requests: camera
            .then(|| (homeassistant::snapshot_request_topic(topics), requests_tx)),
        publications,
    }
}

/// Samples telemetry once per interval for all viewers, until `stop`.
async fn sample_telemetry(
    mut live: watch::Receiver<Config>,
    sources: TelemetrySources,
    telemetry: watch::Sender<Option<Arc<str>>>,
    stop: CancellationToken,
) {
    let TelemetrySources {
        fanout,
        counters,
        streamed,
        camera,
        viewers,
    } = sources;
    let (width, height) = {
        let config = live.borrow();
        (config.video.width, config.video.height)
    };
    let mut sampler = TelemetrySampler::new(width, height);
    loop {
        let interval = Duration::from_millis(live.borrow_and_update().telemetry.interval_ms);
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            changed = live.changed() => {
                if changed.is_err() { break; }
                continue;
            }
            _ = stop.cancelled() => break,
        }
        if let Some(mode) = *streamed.borrow() {
            sampler.set_video_size(mode.width, mode.height);
        }
        // Connected viewers: pending sessions subscribe to the fan-out too.
        let message = sampler.sample(
            &counters,
            fanout.latencies(),
            *viewers.borrow(),
            *camera.borrow(),
        );
        telemetry.send_replace(Some(Arc::from(message.to_json())));
    }
}

/// What a reload changes at once; everything else waits for a restart.
struct LiveSettings {
    config: watch::Sender<Config>,
    max_viewers: watch::Sender<usize>,
    revoked: watch::Sender<Vec<String>>,
    set_log_level: LogLevelSetter,
    /// The certificate, re-read from its files on every reload.
    tls: Option<ServerTls>,
}

impl LiveSettings {
    /// Re-reads `path` and applies its live keys; a bad file keeps the running config.
    fn reload(&self, path: &std::path::Path) {
        if let Some(tls) = &self.tls {
            match tls.reload() {
                Ok(()) => tracing::info!("TLS certificate re-read"),
                Err(err) => tracing::error!("SIGHUP: keeping the TLS certificate in use: {err}"),
            }
        }
        let new = match Config::load(path) {
            Ok(new) => new,
            Err(err) => {
                tracing::error!("SIGHUP: keeping the running configuration: {err}");
                return;
            }
        };
        let current = self.config.borrow().clone();
        let plan = current.reload_plan(&new);
        if current.log.level != new.log.level {
            if let Err(err) = (self.set_log_level)(&new.log.level) {
                tracing::warn!("log.level not changed: {err}");
            }
        }
        let applied = current.with_live_keys_from(&new);
        self.max_viewers.send_replace(applied.webrtc.max_viewers);
        self.revoked.send_if_modified(|revoked| {
            let changed = *revoked != applied.auth.revoked;
            revoked.clone_from(&applied.auth.revoked);
            changed
        });
        self.config.send_replace(applied);
        tracing::info!(applied = ?plan.applied, needs_restart = ?plan.needs_restart, "configuration reloaded");
        for section in &plan.needs_restart {
            tracing::warn!("{section} changed; restart peercam to apply it");
        }
    }
}

/// The access policy for `auth.mode = "keys"` (reading or creating the secret), or `None`
/// for open mode, which is said loudly when anything listens beyond loopback.
fn access_policy(config: &Config) -> anyhow::Result<Option<AccessPolicy>> {
    match config.auth.mode {
        AuthMode::Keys => {
            let secret = CameraSecret::load_or_create(&config.auth.secret_file)?;
            Ok(Some(AccessPolicy::new(
                secret,
                &config.device.id,
                &config.auth.revoked,
            )))
        }
        AuthMode::Open => {
            let embedded = config.mqtt.broker == BrokerTarget::Embedded;
            let exposed: Vec<String> = [
                embedded.then_some(config.broker.listen),
                if embedded {
                    config.broker.ws_listen
                } else {
                    None
                },
                config.http.listen,
            ]
            .into_iter()
            .flatten()
            .filter(|addr| !addr.ip().is_loopback())
            .map(|addr| addr.to_string())
            .collect();
            if !exposed.is_empty() {
                tracing::warn!(
                    listeners = %exposed.join(", "),
                    "auth.mode = \"open\": anyone who reaches these listeners or the broker can watch the camera"
                );
            }
            Ok(None)
        }
    }
}

/// The ICE UDP mux at `webrtc.udp_port` on the IPs of `webrtc.udp_addrs` (validated).
fn bind_udp_mux(udp_addrs: &[String], port: u16) -> anyhow::Result<UdpMux> {
    let ips = udp_addrs
        .iter()
        .filter_map(|text| text.parse::<std::net::SocketAddr>().ok())
        .map(|addr| addr.ip())
        .collect();
    let mux = UdpMux::bind(ips, port)
        .with_context(|| format!("webrtc.udp_port = {port}: cannot bind the shared UDP port"))?;
    tracing::info!(addrs = ?mux.local_addrs(), "every session shares one UDP port");
    Ok(mux)
}

/// Starts the embedded broker when the configuration uses it, with its WebSocket and TLS
/// doors (relays, stopped by `stop`); `gate` holds its users.
async fn start_broker(
    config: &Config,
    gate: Option<Arc<Gate>>,
    tls: Option<&ServerTls>,
    parts: &Arc<Parts>,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    if config.mqtt.broker != BrokerTarget::Embedded {
        return Ok(());
    }
    let limits = http::ConnectionLimits::from_config(&config.http);
    let listen = config.broker.listen;
    let running = parts.register("the embedded broker's thread", Duration::MAX);
    let max_packet_bytes = mqtt_packet_limit(config);
    tokio::task::spawn_blocking(move || {
        broker::start(listen, gate, Some(running), max_packet_bytes)
    })
    .await??;
    let target = config.broker.local_addr();
    if let Some(ws) = config.broker.ws_listen {
        let incoming =
            Incoming::bind(ws, "broker.ws_listen", tls.cloned(), limits.max_connections).await?;
        let scheme = if tls.is_some() { "wss" } else { "ws" };
        tracing::info!("MQTT over WebSocket at {scheme}://{ws}/");
        tokio::spawn(relay::serve_websocket(
            incoming,
            target,
            limits.header_timeout,
            parts.register("broker.ws_listen", health::LOOP_STALL_LIMIT),
            stop.child_token(),
        ));
    }
    if let (Some(addr), Some(tls)) = (config.broker.tls_listen, tls) {
        let incoming = Incoming::bind(
            addr,
            "broker.tls_listen",
            Some(tls.clone()),
            limits.max_connections,
        )
        .await?;
        tracing::info!("MQTT over TLS at mqtts://{addr}");
        tokio::spawn(relay::serve_tls(
            incoming,
            target,
            parts.register("broker.tls_listen", health::LOOP_STALL_LIMIT),
            stop.child_token(),
        ));
    }
    Ok(())
}

/// The HTTP server: the viewer page, and WHEP when it is served.
async fn start_http(
    config: &Config,
    ice: &Arc<IceServers>,
    tls: Option<ServerTls>,
    signals: mpsc::Sender<Signal>,
    routes: HttpRoutes,
    parts: &Arc<Parts>,
    stop: CancellationToken,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let Some(listen) = config.http.listen else {
        return Ok(None);
    };
    let embedded = config.mqtt.broker == BrokerTarget::Embedded;
    let page = PageConfig {
        ws_port: config
            .broker
            .ws_listen
            .filter(|_| embedded)
            .map(|a| a.port()),
        mqtt_path: embedded.then_some(relay::MQTT_PATH),
        device: config.device.id.clone(),
        topic_prefix: config.mqtt.topic_prefix.clone(),
    };
    let whep_routes = config.whep.is_served(&config.http).then(|| {
        let settings = WhepSettings {
            allow_origin: config.whep.allow_origin.clone(),
            ice_servers: Arc::clone(ice),
            require_token: config.auth.mode == AuthMode::Keys,
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        tracing::info!("WHEP endpoint at {scheme}://{listen}{}", whep::WHEP_PATH);
        whep::router(signals, &settings)
    });
    let mqtt_relay = embedded.then(|| relay::mqtt_route(config.broker.local_addr()));
    let extra = [whep_routes, mqtt_relay]
        .into_iter()
        .flatten()
        .fold(http::camera_routes(routes), Router::merge);
    let app = http::router(config.http.web_root.clone(), page, Some(extra));
    Ok(Some(
        http::serve(
            listen,
            http::ConnectionLimits::from_config(&config.http),
            tls,
            &config.http.web_root,
            app,
            parts.register("the HTTP server", health::LOOP_STALL_LIMIT),
            stop,
        )
        .await?,
    ))
}

/// Runs the agent until `control.stop` is cancelled. Each reload request re-reads
/// `config_path` (when given) and applies what can change live.
pub async fn run(
    config: Config,
    config_path: Option<PathBuf>,
    set_log_level: LogLevelSetter,
    control: Control,
) -> anyhow::Result<()> {
    let Control { stop, mut reloads } = control;
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    let access = access_policy(&config)?;
    let ice = Arc::new(load_ice_servers(&config)?);
    let tls = match config.tls.files() {
        Some((cert, key)) => Some(ServerTls::load(cert, key)?),
        None => None,
    };
    let gate = (config.mqtt.broker == BrokerTarget::Embedded && !config.broker.users.is_empty())
        .then(|| {
            Arc::new(Gate::new(
                config.broker.users.clone(),
                Credential::internal(),
            ))
        });
    let topics = Topics::new(&config.mqtt.topic_prefix, &config.device.id);
    let mqtt_settings = mqtt_settings(&config, topics, gate.as_ref().map(|gate| gate.internal()))?;
    let parts = Parts::new(stop.clone());
    start_broker(&config, gate.clone(), tls.as_ref(), &parts, &stop).await?;

    let counters = Arc::new(PipelineCounters::default());
    let fanout = FanOut::new(Arc::new(KeyframeRequests::default()));
    let snapshots = Arc::new(SnapshotRequests::default());
    let source = open_source(&config)?;
    let (camera_tx, camera_available) = watch::channel(true);
    let pipeline = Pipeline::start(
        source,
        encoder_settings(&config),
        Arc::clone(&fanout),
        Arc::clone(&counters),
        camera_tx,
        SnapshotSettings {
            requests: Arc::clone(&snapshots),
            quality: config.snapshot.quality,
        },
    )
    .context("starting the video pipeline")?;
    let metrics = Arc::new(Metrics::new(
        Arc::clone(&counters),
        camera_available.clone(),
    ));

    let (signals_tx, signals) = mpsc::channel(SIGNAL_QUEUE);
    let (to_viewers_tx, to_viewers) = mpsc::unbounded_channel();
    let (viewers_tx, viewers) = watch::channel(0usize);
    let (telemetry_tx, telemetry) = watch::channel::<Option<Arc<str>>>(None);
    let telemetry_for_mqtt = telemetry.clone();
    let (status_tx, status) = watch::channel(status_json(&config, &ice, 0, true, None, 0));
    let (live_tx, live) = watch::channel(config.clone());
    let (max_viewers_tx, max_viewers) = watch::channel(config.webrtc.max_viewers);

    let udp_mux = match config.webrtc.udp_port {
        0 => None,
        port => Some(Arc::new(bind_udp_mux(&config.webrtc.udp_addrs, port)?)),
    };
    let ctx = Arc::new(SessionContext {
        peer_settings: PeerSettings {
            ice_servers: Arc::clone(&ice),
            udp_addrs: config.webrtc.udp_addrs.clone(),
            udp_mux,
            public_ips: config.webrtc.public_ips.clone(),
            // Validated with the configuration.
            playout_delay: PlayoutDelay::from_config(&config.webrtc.playout_delay_ms)
                .unwrap_or_default(),
        },
        fanout: Arc::clone(&fanout),
        telemetry,
        snapshots: Arc::clone(&snapshots),
        metrics: Arc::clone(&metrics),
    });
    let limits = Limits {
        max_viewers: config.webrtc.max_viewers,
        max_pending: config.webrtc.max_pending,
        offer_rate: OfferRate {
            per_s: config.webrtc.offers_per_s,
            burst: config.webrtc.offer_burst,
        },
        connect_timeout: Duration::from_secs(config.webrtc.connect_timeout_s),
    };
    let (revoked_tx, revoked) = watch::channel(config.auth.revoked.clone());
    let http_routes = HttpRoutes {
        snapshots: Arc::clone(&snapshots),
        metrics: config
            .metrics
            .is_served(&config.http)
            .then(|| Arc::clone(&metrics)),
        access: access.clone().map(|policy| (policy, revoked.clone())),
    };
    let manager = tokio::spawn(
        SessionManager::new(ctx, limits, access, to_viewers_tx, viewers_tx).run(ManagerInputs {
            signals,
            max_viewers,
            camera_available: camera_available.clone(),
            revoked,
            stop: stop.child_token(),
            heartbeat: parts.register("the session core", health::LOOP_STALL_LIMIT),
        }),
    );
    // MQTT ends after the manager, once its last hangup is out (its inbox closes).
    let mqtt_liveness = MqttLiveness {
        transport: parts.register("MQTT signaling", health::LOOP_STALL_LIMIT),
        // Our own broker keeps our link up; down for three keepalives, it is wedged or gone.
        embedded_broker: (config.mqtt.broker == BrokerTarget::Embedded).then(|| {
            let keepalive = Duration::from_secs(config.mqtt.keepalive_s.into());
            parts.register(
                "the embedded broker",
                (keepalive * 3).max(Duration::from_secs(30)),
            )
        }),
    };
    let mut helpers = tokio::task::JoinSet::new();
    let home_assistant = start_home_assistant(
        &config,
        &mqtt_settings.topics,
        &snapshots,
        telemetry_for_mqtt,
        &mut helpers,
        &stop,
    );
    let signaling = tokio::spawn(mqtt::run(
        mqtt_settings,
        status,
        signals_tx.clone(),
        to_viewers,
        mqtt_liveness,
        metrics.mqtt_reconnects.clone(),
        home_assistant,
    ));
    helpers.spawn(publish_status(
        Arc::clone(&ice),
        live.clone(),
        viewers.clone(),
        camera_available.clone(),
        PipelineWatches {
            streamed: pipeline.streamed_mode(),
            encoder_restarts: pipeline.encoder_restarts(),
        },
        status_tx,
        stop.child_token(),
    ));
    helpers.spawn(sample_telemetry(
        live.clone(),
        TelemetrySources {
            fanout: Arc::clone(&fanout),
            counters: Arc::clone(&counters),
            streamed: pipeline.streamed_mode(),
            camera: camera_available.clone(),
            viewers: viewers.clone(),
        },
        telemetry_tx,
        stop.child_token(),
    ));
    if let Some(interval) = notify::watchdog_interval() {
        helpers.spawn(watchdog_loop(
            interval,
            Arc::clone(pipeline.health()),
            notify::stall_limit(config.video.fps),
            Arc::clone(&parts),
            stop.child_token(),
        ));
    }
    let http = start_http(
        &config,
        &ice,
        tls.clone(),
        signals_tx,
        http_routes,
        &parts,
        stop.child_token(),
    )
    .await;
    let http = match http {
        Ok(http) => http,
        Err(err) => {
            stop.cancel();
            tokio::task::spawn_blocking(move || pipeline.stop())
                .await
                .ok();
            return Err(err);
        }
    };
    notify::ready(&service_status(0, true));
    tracing::info!("peercam ready");

    let live_settings = LiveSettings {
        config: live_tx,
        max_viewers: max_viewers_tx,
        revoked: revoked_tx,
        set_log_level,
        tls,
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            Some(()) = reloads.recv() => {
                let Some(path) = &config_path else {
                    tracing::info!("reload: no --config file to re-read");
                    continue;
                };
                notify::reloading();
                live_settings.reload(path);
                notify::ready(&service_status(*viewers.borrow(), *camera_available.borrow()));
            }
        }
    }
    notify::stopping();
    let stopped = async {
        let _ = manager.await;
        let _ = signaling.await;
    };
    if tokio::time::timeout(SHUTDOWN_LIMIT, stopped).await.is_err() {
        tracing::warn!("signaling did not stop in time");
    }
    if let Some(http) = http {
        let _ = tokio::time::timeout(Duration::from_millis(500), http).await;
    }
    helpers.abort_all();
    tokio::task::spawn_blocking(move || pipeline.stop())
        .await
        .ok();
    let ended = parts.ended_early();
    if !ended.is_empty() {
        // A non-zero exit: systemd's Restart=on-failure starts a fresh service.
        anyhow::bail!("stopped because {} ended", ended.join(", "));
    }
    tracing::info!("peercam stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_reports_the_streamed_mode_once_known() {
        let config = Config::default();
        let configured: serde_json::Value = serde_json::from_str(&status_json(
            &config,
            &IceServers::default(),
            2,
            true,
            None,
            0,
        ))
        .unwrap();
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
        let negotiated: serde_json::Value = serde_json::from_str(&status_json(
            &config,
            &IceServers::default(),
            0,
            false,
            Some(nearest),
            0,
        ))
        .unwrap();
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
            let status: serde_json::Value = serde_json::from_str(&status_json(
                &config,
                &IceServers::default(),
                0,
                true,
                Some(mode),
                0,
            ))
            .unwrap();
            status["video"]["fps"].clone()
        };
        assert_eq!(fps(12.5), 13, "vivid's nearest 720p mode");
        assert_eq!(fps(29.97), 30);
        assert_eq!(fps(7.5), 8);
    }

    #[test]
    fn status_says_how_often_the_encoder_was_rebuilt_once_it_was() {
        let config = Config::default();
        let status = |restarts| -> serde_json::Value {
            let json = status_json(&config, &IceServers::default(), 0, true, None, restarts);
            serde_json::from_str(&json).unwrap()
        };
        assert!(status(0).get("encoder_restarts").is_none());
        assert_eq!(status(2)["encoder_restarts"], 2);
    }
}
