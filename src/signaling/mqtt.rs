//! The MQTT transport for signaling (rumqttc): keeps the broker connection alive with
//! backoff, (re)subscribes, publishes the retained status with an offline last will, and
//! translates session messages between the wire (topics, JSON) and the session manager;
//! with Home Assistant on, it also carries discovery configs, telemetry and still
//! snapshots. It must never carry the video stream, decide anything about a session, or
//! stall sessions while the broker is away.

use crate::health::{self, Heartbeat};
use crate::homeassistant::{Discovery, Publication};
use crate::session::core::{Credential, Refusal, ViewerInput};
use crate::session::{Signal, ToViewer};
use crate::signaling::mqtt_security::{describe_failure, FailureContext, Password};
use crate::signaling::protocol::{
    parse_viewer_message, Status, TopicError, Topics, ViewerMessage, MAX_PACKET_BYTES,
};
use crate::signaling::retained_status::{Received, RetainedStatus};
use rumqttc::{
    AsyncClient, Event, EventLoop, LastWill, MqttOptions, NetworkOptions, Packet, QoS,
    TlsConfiguration, Transport,
};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

const REQUEST_QUEUE: usize = 512;
/// Broker events read ahead of `run`.
const EVENT_QUEUE: usize = 16;
const MIN_BACKOFF: Duration = Duration::from_millis(250);
/// Under 5 s, so the camera is back within 5 s of its broker's return however long the
/// broker was gone (tests/streaming.rs kills mosquitto for longer than the backoff takes to
/// reach this).
const MAX_BACKOFF: Duration = Duration::from_secs(4);

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct MqttSettings {
    pub host: String,
    pub port: u16,
    /// TLS (`mqtts://`, `wss://`): verifies the broker's certificate and host name.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// `wss://`: MQTT over a secure WebSocket at this path (with `tls`).
    pub websocket_path: Option<String>,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<Password>,
    pub keepalive: Duration,
    pub topics: Topics,
    pub device: String,
    /// What a failed connection's log line names.
    pub failure_context: FailureContext,
    /// The largest packet the camera sends: signaling's limit, or room for a snapshot
    /// when snapshots go to MQTT.
    pub max_outgoing_bytes: usize,
}

/// The transport's part in Home Assistant integration: discovery configs published (and
/// stale ones cleared) on every connection, snapshot requests passed on, and what the
/// publisher hands over sent while connected.
pub struct HomeAssistantLink {
    pub discovery: Discovery,
    /// `{prefix}/{device}/snapshot/request` and where its messages go; `None` without the
    /// camera entity.
    pub snapshot_requests: Option<(String, mpsc::Sender<()>)>,
    pub publications: mpsc::Receiver<Publication>,
}

fn options(settings: &MqttSettings) -> MqttOptions {
    // Over a WebSocket rumqttc takes the broker as a URL (and the port from it).
    let broker = match &settings.websocket_path {
        Some(path) if settings.host.contains(':') => {
            format!("wss://[{}]:{}{path}", settings.host, settings.port)
        }
        Some(path) => format!("wss://{}:{}{path}", settings.host, settings.port),
        None => settings.host.clone(),
    };
    let mut options = MqttOptions::new(&settings.client_id, broker, settings.port);
    if let Some(tls) = &settings.tls {
        let tls = TlsConfiguration::Rustls(Arc::clone(tls));
        options.set_transport(if settings.websocket_path.is_some() {
            Transport::wss_with_config(tls)
        } else {
            Transport::tls_with_config(tls)
        });
    }
    options
        .set_keep_alive(settings.keepalive)
        .set_clean_session(true)
        // A payload a little over the protocol's 64 KiB still arrives and gets a bad-request
        // reply; a larger packet makes rumqttc drop the connection before reading it, and the
        // loop below reconnects with a clean session, so the broker does not send it again.
        .set_max_packet_size(MAX_PACKET_BYTES, settings.max_outgoing_bytes)
        .set_last_will(LastWill::new(
            settings.topics.status(),
            Status::offline(&settings.device).to_json(),
            QoS::AtLeastOnce,
            true,
        ));
    if let Some(username) = &settings.username {
        let password = settings.password.as_ref().map_or("", Password::expose);
        options.set_credentials(username, password);
    }
    options
}

/// Signaling is a few small messages, each waited for: Nagle's algorithm would hold an
/// answer behind the unacknowledged PUBACK before it until the broker's delayed ACK (40 ms
/// on Linux), every session.
fn network_options() -> NetworkOptions {
    let mut network = NetworkOptions::new();
    network.set_tcp_nodelay(true);
    network
}

/// Turns a message on a session topic into what the session manager takes; `None` for
/// topics that are not this camera's sessions (or carry an invalid id: no reply possible).
pub fn signal_from_wire(topics: &Topics, topic: &str, payload: &[u8]) -> Option<Signal> {
    let sid = match topics.parse_to_camera(topic) {
        Ok(sid) => sid,
        Err(TopicError::NotASessionTopic { .. }) => return None,
        Err(err) => {
            crate::warn_throttled!(topic = %topic, "ignoring message: {err}");
            return None;
        }
    };
    let message = match parse_viewer_message(payload) {
        Ok(ViewerMessage::Offer { sdp, auth }) => ViewerInput::Offer {
            sdp,
            credential: auth.map(Credential::Signed),
        },
        Ok(ViewerMessage::Candidate(candidate)) => ViewerInput::Candidate(candidate),
        Ok(ViewerMessage::Hangup { mac }) => ViewerInput::Hangup { mac },
        Err(err) => ViewerInput::Invalid(Refusal::new(err.code(), err.to_string())),
    };
    Some(Signal::Viewer { sid, message })
}

/// The transport's proofs of life: its own loop's, and, with the embedded broker, the
/// broker's: the link to it is up (a broker that stops answering fails the keepalive, and
/// then the reconnections).
pub struct MqttLiveness {
    pub transport: Heartbeat,
    pub embedded_broker: Option<Heartbeat>,
}

impl MqttLiveness {
    fn beat(&self, connected: bool) {
        self.transport.beat();
        if let (true, Some(broker)) = (connected, &self.embedded_broker) {
            broker.beat();
        }
    }
}

/// Runs the signaling connection until the session manager closes `to_viewers` (after
/// its last hangup); then publishes the offline status and disconnects cleanly. `status`
/// holds the retained status JSON. `reconnects` counts connections after the first.
pub async fn run(
    settings: MqttSettings,
    mut status: watch::Receiver<String>,
    signals: mpsc::Sender<Signal>,
    mut to_viewers: mpsc::UnboundedReceiver<ToViewer>,
    liveness: MqttLiveness,
    reconnects: prometheus_client::metrics::counter::Counter,
    mut home_assistant: HomeAssistantLink,
) {
    let mut beats = tokio::time::interval(health::BEAT_INTERVAL);
    let (client, mut eventloop) = AsyncClient::new(options(&settings), REQUEST_QUEUE);
    eventloop.set_network_options(network_options());
    let (events_tx, mut events) = mpsc::channel(EVENT_QUEUE);
    let (retry_tx, retry_rx) = mpsc::channel(1);
    let poller = tokio::spawn(poll_broker(eventloop, events_tx, retry_rx));
    let status_topic = settings.topics.status();
    let session_filter = settings.topics.to_camera_filter();
    let discovery_filter = home_assistant.discovery.node_filter();
    let snapshot_request_topic = home_assistant
        .snapshot_requests
        .as_ref()
        .map(|(topic, _)| topic.clone());
    let mut backoff = MIN_BACKOFF;
    let mut connected = false;
    let mut ever_connected = false;
    // The line last logged for a failed attempt: each distinct failure is logged once.
    let mut last_failure: Option<String> = None;
    let mut retained_status = RetainedStatus::default();
    loop {
        tokio::select! {
            _ = beats.tick() => liveness.beat(connected),
            _ = tokio::time::sleep_until(retained_status.correction_due().unwrap_or_else(tokio::time::Instant::now)), if retained_status.correction_due().is_some() => {
                retained_status.correcting(tokio::time::Instant::now());
                if connected {
                    publish_status(&client, &status_topic, status.borrow().clone(), &mut retained_status);
                }
            }
            Some(event) = events.recv() => match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    tracing::info!(broker = %format!("{}:{}", settings.host, settings.port),
                        client_id = %settings.client_id, "MQTT connected");
                    connected = true;
                    retained_status.connected();
                    if std::mem::replace(&mut ever_connected, true) {
                        reconnects.inc();
                    }
                    last_failure = None;
                    backoff = MIN_BACKOFF;
                    // A clean session forgets subscriptions: subscribe on every connect. The
                    // camera also watches its own status, to put back the truth when anyone
                    // else overwrites it.
                    // Discovery configs go out before their node is subscribed: the retained
                    // ones that come back are then ours, or stale.
                    for config in home_assistant.discovery.configs() {
                        publish(&client, &config.topic, config.payload.to_vec(), true);
                    }
                    let filters = [Some(&session_filter), Some(&status_topic), Some(&discovery_filter), snapshot_request_topic.as_ref()];
                    for filter in filters.into_iter().flatten() {
                        if let Err(err) = client.try_subscribe(filter.as_str(), QoS::AtLeastOnce) {
                            tracing::error!("cannot subscribe to {filter}: {err}");
                        }
                    }
                    let current = status.borrow_and_update().clone();
                    publish_status(&client, &status_topic, current, &mut retained_status);
                }
                Ok(Event::Incoming(Packet::Publish(publish))) if home_assistant.discovery.is_node_topic(&publish.topic) => {
                    if let Some(clear) = home_assistant.discovery.clear_if_stale(&publish.topic, &publish.payload, publish.retain) {
                        tracing::info!(topic = %clear.topic, "removing a Home Assistant discovery config this camera no longer publishes");
                        publish_message(&client, clear, QoS::AtLeastOnce);
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish))) if snapshot_request_topic.as_deref() == Some(publish.topic.as_str()) => {
                    if let Some((_, requests)) = &home_assistant.snapshot_requests {
                        // Full: a request is already waiting, and it will serve this one too.
                        let _ = requests.try_send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish))) if publish.topic == status_topic => {
                    let current = status.borrow().clone();
                    match retained_status.received(&publish.payload, current.as_bytes(), tokio::time::Instant::now()) {
                        Received::Overwritten => tracing::warn!("the retained status was overwritten by another client; republishing the camera's own"),
                        Received::Leftover => tracing::debug!("the broker's retained status from before this connection; the camera's own replaces it"),
                        Received::Own | Received::OverwrittenAgain => {}
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    let Some(signal) = signal_from_wire(&settings.topics, &publish.topic, &publish.payload) else {
                        continue;
                    };
                    if signals.try_send(signal).is_err() {
                        crate::warn_throttled!(topic = %publish.topic, "signaling backlog full; dropping message");
                    }
                }
                Ok(_) => {}
                Err(err) => {
                    if let Some(length) = oversized_packet(&err) {
                        tracing::warn!(
                            "the broker sent a {length}-byte packet, over the {MAX_PACKET_BYTES}-byte limit; \
                             reconnecting without it (cap packets at the broker: docs/security.md)"
                        );
                    } else if connected {
                        tracing::warn!("MQTT connection to {}:{} lost or refused: {err}; retrying", settings.host, settings.port);
                    } else {
                        let line = describe_failure(&err, &settings.failure_context);
                        if last_failure.as_deref() == Some(line.as_str()) {
                            tracing::debug!("{line}; retrying");
                        } else {
                            tracing::warn!("{line}; retrying with backoff");
                            last_failure = Some(line);
                        }
                    }
                    connected = false;
                    // The poller waits for this; its queue of one is empty while it does.
                    let _ = retry_tx.try_send(tokio::time::Instant::now() + backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            },
            Some(publication) = home_assistant.publications.recv() => {
                // Telemetry and snapshots are worth nothing late: none are queued while away.
                if connected {
                    publish_message(&client, publication, QoS::AtMostOnce);
                }
            }
            message = to_viewers.recv() => match message {
                Some(ToViewer { sid, message }) => publish(&client, &settings.topics.to_viewer(sid.as_str()), message.to_json(), false),
                None => break,
            },
            changed = status.changed() => {
                if changed.is_ok() && connected {
                    let current = status.borrow_and_update().clone();
                    publish_status(&client, &status_topic, current, &mut retained_status);
                }
            }
        }
    }
    // What sessions said last (hangups) is already queued; then the offline status.
    if connected {
        publish(
            &client,
            &status_topic,
            Status::offline(&settings.device).to_json(),
            true,
        );
        let _ = client.try_disconnect();
        let flush = async {
            while let Some(Ok(event)) = events.recv().await {
                if matches!(event, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), flush).await;
    }
    poller.abort();
    tracing::info!("MQTT signaling stopped");
}

/// Polls the broker connection on a task of its own and hands each event to `run`. rumqttc's
/// `poll` is not cancel-safe while it connects: polled in `run`'s select, every heartbeat or
/// status change dropped a half-made connection (the broker logged a reset), and a connect
/// slower than the 1 s heartbeat (TLS to a distant broker) would never have finished. After
/// an error it polls again (which reconnects) only at the time `run` sends.
async fn poll_broker(
    mut eventloop: EventLoop,
    events: mpsc::Sender<Result<Event, rumqttc::ConnectionError>>,
    mut retry_at: mpsc::Receiver<tokio::time::Instant>,
) {
    loop {
        let event = eventloop.poll().await;
        let failed = event.is_err();
        if events.send(event).await.is_err() {
            return;
        }
        if failed {
            match retry_at.recv().await {
                Some(at) => tokio::time::sleep_until(at).await,
                None => return,
            }
        }
    }
}

/// The length of the packet that ended the connection for being over [`MAX_PACKET_BYTES`].
fn oversized_packet(error: &rumqttc::ConnectionError) -> Option<usize> {
    match error {
        rumqttc::ConnectionError::MqttState(rumqttc::StateError::Deserialization(
            rumqttc::mqttbytes::Error::PayloadSizeLimitExceeded(length),
        )) => Some(*length),
        _ => None,
    }
}

/// The retained status; the camera's own copy is the only true one, and `retained_status`
/// learns it was sent so its echo is not taken for a forgery.
fn publish_status(
    client: &AsyncClient,
    topic: &str,
    status: String,
    retained_status: &mut RetainedStatus,
) {
    if send(client, topic, QoS::AtLeastOnce, true, status.as_bytes()) {
        retained_status.published(status.as_bytes());
    }
}

fn publish(client: &AsyncClient, topic: &str, payload: impl Into<Vec<u8>>, retain: bool) {
    send(client, topic, QoS::AtLeastOnce, retain, payload);
}

fn publish_message(client: &AsyncClient, message: Publication, qos: QoS) {
    send(client, &message.topic, qos, message.retain, message.payload);
}

/// Queues one publish; a full request queue drops it (logged at debug level). Returns
/// whether it was queued.
fn send(
    client: &AsyncClient,
    topic: &str,
    qos: QoS,
    retain: bool,
    payload: impl Into<Vec<u8>>,
) -> bool {
    match client.try_publish(topic, qos, retain, payload) {
        Ok(()) => true,
        Err(err) => {
            tracing::debug!(topic, "publish dropped: {err}");
            false
        }
    }
}
