//! Home Assistant MQTT discovery: the retained configs that describe this camera to Home
//! Assistant (a JPEG `camera` entity and its sensors), which retained configs under this
//! camera's node are stale and must be cleared, and when a snapshot is due. Decisions are
//! pure; [`run`] is the thin adapter that hands snapshots and telemetry to the MQTT
//! transport. It must never publish a secret, nor anything at all with the integration
//! off except the empty payloads that remove configs it finds.

use crate::config::Config;
use crate::signaling::protocol::Topics;
use crate::snapshot::SnapshotRequests;
use bytes::Bytes;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// The largest snapshot sent over MQTT. The MQTT connection's outgoing limit (and the
/// embedded broker's) is raised to fit it when snapshots go to MQTT; a larger JPEG is
/// skipped with a warning rather than sent, since an oversized packet ends the connection.
pub const MAX_SNAPSHOT_BYTES: usize = 256 * 1024;
/// Room for the topic and headers of a publish around its payload.
pub const PACKET_OVERHEAD_BYTES: usize = 4 * 1024;
/// The shortest gap between snapshots asked for on the request topic: a flood of requests
/// costs at most one JPEG a second on the broker.
pub const MIN_REQUEST_GAP: Duration = Duration::from_secs(1);
/// How long a snapshot waits for a frame before this round is skipped.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(3);

/// Availability of the sensors: the agent is alive (its status says `online` or
/// `unavailable`, i.e. streaming or waiting for its camera).
const ALIVE_TEMPLATE: &str = "{{ 'offline' if value_json.state == 'offline' else 'online' }}";
/// Availability of the camera entity: only while the camera streams (`online`).
const STREAMING_TEMPLATE: &str = "{{ 'online' if value_json.state == 'online' else 'offline' }}";

/// One message for the MQTT transport to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    pub topic: String,
    pub payload: Bytes,
    pub retain: bool,
}

/// A sensor fed from the telemetry topic, as Home Assistant's `sensor` platform takes it.
struct Sensor {
    key: &'static str,
    name: &'static str,
    value_template: &'static str,
    device_class: Option<&'static str>,
    unit: Option<&'static str>,
    state_class: Option<&'static str>,
    diagnostic: bool,
    precision: Option<u32>,
    icon: Option<&'static str>,
}

/// The sensors, read from the same JSON the data channel carries. A `null` figure renders
/// as `None`, which Home Assistant shows as unknown.
const SENSORS: &[Sensor] = &[
    Sensor {
        key: "cpu",
        name: "CPU",
        value_template: "{{ value_json.system.cpu_percent }}",
        device_class: None,
        unit: Some("%"),
        state_class: Some("measurement"),
        diagnostic: true,
        precision: Some(1),
        icon: Some("mdi:cpu-64-bit"),
    },
    Sensor {
        key: "temperature",
        name: "Temperature",
        value_template: "{{ value_json.system.temperature_c }}",
        device_class: Some("temperature"),
        unit: Some("°C"),
        state_class: Some("measurement"),
        diagnostic: true,
        precision: Some(1),
        icon: None,
    },
    Sensor {
        key: "viewers",
        name: "Viewers",
        value_template: "{{ value_json.viewers }}",
        device_class: None,
        unit: None,
        state_class: Some("measurement"),
        diagnostic: false,
        precision: Some(0),
        icon: Some("mdi:eye"),
    },
    Sensor {
        key: "fps",
        name: "Frame rate",
        value_template: "{{ value_json.video.fps }}",
        device_class: None,
        unit: Some("fps"),
        state_class: Some("measurement"),
        diagnostic: false,
        precision: Some(1),
        icon: Some("mdi:filmstrip"),
    },
    Sensor {
        key: "bitrate",
        name: "Bitrate",
        value_template: "{{ value_json.video.bitrate_kbps }}",
        device_class: Some("data_rate"),
        unit: Some("kbit/s"),
        state_class: Some("measurement"),
        diagnostic: false,
        precision: Some(0),
        icon: None,
    },
    Sensor {
        key: "uptime",
        name: "Uptime",
        value_template: "{{ value_json.uptime_s }}",
        device_class: Some("duration"),
        unit: Some("s"),
        state_class: None,
        diagnostic: true,
        precision: Some(0),
        icon: None,
    },
];

/// The camera's topics besides signaling: `{prefix}/{device}/snapshot`, its `/request`
/// and `{prefix}/{device}/telemetry`.
pub fn snapshot_topic(topics: &Topics) -> String {
    format!("{}/{}/snapshot", topics.prefix(), topics.device())
}

pub fn snapshot_request_topic(topics: &Topics) -> String {
    format!("{}/{}/snapshot/request", topics.prefix(), topics.device())
}

pub fn telemetry_topic(topics: &Topics) -> String {
    format!("{}/{}/telemetry", topics.prefix(), topics.device())
}

/// Whether `url` can be a device's configuration URL: http(s), with a host.
pub fn is_configuration_url(url: &str) -> bool {
    let Some(rest) = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
    else {
        return false;
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    !host.is_empty()
        && !host.starts_with(':')
        && !host.contains('@')
        && !url.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// The page's URL for Home Assistant's "Visit" link: the configured one, else the HTTP
/// listener's address (the host name stands in for an all-interfaces address); `None`
/// without an HTTP server.
pub fn configuration_url(config: &Config, host_name: &str) -> Option<String> {
    if let Some(url) = &config.homeassistant.configuration_url {
        return Some(url.clone());
    }
    let listen = config.http.listen?;
    let scheme = if config.tls.files().is_some() {
        "https"
    } else {
        "http"
    };
    if listen.ip().is_unspecified() {
        let url = format!("{scheme}://{host_name}:{}/", listen.port());
        is_configuration_url(&url).then_some(url)
    } else {
        Some(format!("{scheme}://{listen}/"))
    }
}

/// This camera's discovery configs and the node they live under.
#[derive(Debug, Clone)]
pub struct Discovery {
    prefix: String,
    node_id: String,
    /// Empty with the integration off: then every retained config found is stale.
    configs: Vec<Publication>,
}

impl Discovery {
    /// The configs `config` asks for (none when the integration is off).
    pub fn new(config: &Config, configuration_url: Option<String>) -> Discovery {
        let ha = &config.homeassistant;
        let topics = Topics::new(&config.mqtt.topic_prefix, &config.device.id);
        let node_id = format!("peercam_{}", config.device.id);
        let mut discovery = Discovery {
            prefix: ha.discovery_prefix.clone(),
            node_id,
            configs: Vec::new(),
        };
        if !ha.enabled {
            return discovery;
        }
        let version = env!("CARGO_PKG_VERSION");
        let mut device = json!({
            "identifiers": [discovery.node_id],
            "name": config.device.name,
            "manufacturer": "peercam",
            "model": "peercam",
            "sw_version": version,
        });
        if let Some(url) = configuration_url {
            device["configuration_url"] = Value::String(url);
        }
        let origin = json!({"name": "peercam", "sw_version": version});
        let availability = |template: &str| {
            json!([{
                "topic": topics.status(),
                "value_template": template,
                "payload_available": "online",
                "payload_not_available": "offline",
            }])
        };
        let entity = |component: &str, key: &str, template: &str| {
            let unique_id = format!("{}_{key}", discovery.node_id);
            json!({
                "unique_id": unique_id,
                "default_entity_id": format!("{component}.{unique_id}"),
                "device": device,
                "origin": origin,
                "availability": availability(template),
            })
        };
        let mut configs = Vec::new();
        if ha.publishes_snapshots(&config.auth) {
            let mut camera = entity("camera", "camera", STREAMING_TEMPLATE);
            camera["name"] = Value::Null; // the device's own name
            camera["topic"] = Value::String(snapshot_topic(&topics));
            configs.push(("camera", "camera", camera));
        }
        for sensor in SENSORS {
            let mut payload = entity("sensor", sensor.key, ALIVE_TEMPLATE);
            payload["name"] = sensor.name.into();
            payload["state_topic"] = telemetry_topic(&topics).into();
            payload["value_template"] = sensor.value_template.into();
            let optional = [
                ("device_class", sensor.device_class),
                ("unit_of_measurement", sensor.unit),
                ("state_class", sensor.state_class),
                ("icon", sensor.icon),
                ("entity_category", sensor.diagnostic.then_some("diagnostic")),
            ];
            for (key, value) in optional {
                if let Some(value) = value {
                    payload[key] = value.into();
                }
            }
            if let Some(precision) = sensor.precision {
                payload["suggested_display_precision"] = precision.into();
            }
            configs.push(("sensor", sensor.key, payload));
        }
        discovery.configs = configs
            .into_iter()
            .map(|(component, key, payload)| Publication {
                topic: discovery.config_topic(component, key),
                payload: Bytes::from(payload.to_string()),
                retain: true,
            })
            .collect();
        discovery
    }

    fn config_topic(&self, component: &str, key: &str) -> String {
        format!("{}/{component}/{}/{key}/config", self.prefix, self.node_id)
    }

    /// The retained configs to publish on every connection (none with the integration
    /// off).
    pub fn configs(&self) -> &[Publication] {
        &self.configs
    }

    /// Every config topic under this camera's node, whoever published it.
    pub fn node_filter(&self) -> String {
        format!("{}/+/{}/+/config", self.prefix, self.node_id)
    }

    /// Whether `topic` is a config topic under this camera's node.
    pub fn is_node_topic(&self, topic: &str) -> bool {
        let Some(rest) = topic
            .strip_prefix(self.prefix.as_str())
            .and_then(|rest| rest.strip_prefix('/'))
        else {
            return false;
        };
        // `{component}/{node}/{object}/config`, read without allocating: every incoming
        // message is asked.
        let mut levels = rest.split('/');
        let shape = (
            levels.next(),
            levels.next(),
            levels.next(),
            levels.next(),
            levels.next(),
        );
        matches!(shape, (Some(_), Some(node), Some(_), Some("config"), None) if node == self.node_id)
    }

    /// The empty retained payload that removes a config found on the broker (delivered
    /// as retained when subscribing) that this camera no longer publishes: everything
    /// with the integration off, and entities a former version or setting had. Live
    /// messages are left alone, so two cameras sharing an id never fight over a topic.
    pub fn clear_if_stale(
        &self,
        topic: &str,
        payload: &[u8],
        retained: bool,
    ) -> Option<Publication> {
        let stale = retained
            && !payload.is_empty()
            && self.is_node_topic(topic)
            && !self.configs.iter().any(|config| config.topic == topic);
        stale.then(|| Publication {
            topic: topic.to_owned(),
            payload: Bytes::new(),
            retain: true,
        })
    }
}

/// When snapshots are due: every `interval` (none: only on request), and on request but
/// at most one per [`MIN_REQUEST_GAP`]. Requests that come within the gap share one
/// snapshot at its end.
#[derive(Debug, Clone)]
pub struct SnapshotSchedule {
    interval: Option<Duration>,
    next_periodic: Option<Instant>,
    last: Option<Instant>,
    requested: bool,
}

impl SnapshotSchedule {
    /// The first periodic snapshot is due at once, so Home Assistant has a picture soon
    /// after the camera starts.
    pub fn new(interval: Option<Duration>, now: Instant) -> SnapshotSchedule {
        SnapshotSchedule {
            interval,
            next_periodic: interval.map(|_| now),
            last: None,
            requested: false,
        }
    }

    pub fn request(&mut self) {
        self.requested = true;
    }

    /// When the next snapshot is due, if any is (`now` for a request that can be served
    /// at once).
    pub fn next_due(&self, now: Instant) -> Option<Instant> {
        let requested = self
            .requested
            .then(|| self.last.map_or(now, |last| last + MIN_REQUEST_GAP));
        match (self.next_periodic, requested) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether a snapshot is due at `now`; if so, it counts as taken.
    pub fn take_due(&mut self, now: Instant) -> bool {
        let due = self.next_periodic.is_some_and(|at| now >= at)
            || (self.requested
                && self
                    .last
                    .is_none_or(|last| now.duration_since(last) >= MIN_REQUEST_GAP));
        if due {
            self.last = Some(now);
            self.requested = false;
            self.next_periodic = self.interval.map(|interval| now + interval);
        }
        due
    }
}

/// Whether a snapshot can go to MQTT; the warning to log otherwise.
pub fn check_snapshot_size(bytes: usize) -> Result<(), String> {
    if bytes <= MAX_SNAPSHOT_BYTES {
        Ok(())
    } else {
        Err(format!(
            "a {bytes}-byte snapshot is over the {MAX_SNAPSHOT_BYTES}-byte MQTT limit; not sent (lower snapshot.quality)"
        ))
    }
}

/// What the Home Assistant publisher reads and where it sends.
pub struct Publisher {
    pub topics: Topics,
    /// Snapshots for the camera entity; `None` when it is off.
    pub snapshots: Option<Arc<SnapshotRequests>>,
    pub snapshot_interval: Option<Duration>,
    pub telemetry: watch::Receiver<Option<Arc<str>>>,
    pub telemetry_interval: Duration,
    /// Messages on the snapshot request topic, from the MQTT transport.
    pub snapshot_requests: mpsc::Receiver<()>,
    pub out: mpsc::Sender<Publication>,
}

/// Publishes telemetry every interval and snapshots when due, until `stop`. Nothing is
/// queued while the transport is busy or away: stale pictures are worth nothing.
pub async fn run(publisher: Publisher, stop: CancellationToken) {
    let Publisher {
        topics,
        snapshots,
        snapshot_interval,
        mut telemetry,
        telemetry_interval,
        mut snapshot_requests,
        out,
    } = publisher;
    let telemetry_topic = telemetry_topic(&topics);
    let snapshot_topic = snapshot_topic(&topics);
    let mut telemetry_ticks = tokio::time::interval(telemetry_interval);
    telemetry_ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut schedule = SnapshotSchedule::new(snapshot_interval, Instant::now());
    loop {
        let snapshot_due = snapshots.as_ref().and(schedule.next_due(Instant::now()));
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = telemetry_ticks.tick() => {
                let latest = telemetry.borrow_and_update().clone();
                if let Some(json) = latest {
                    let _ = out.try_send(Publication {
                        topic: telemetry_topic.clone(),
                        payload: Bytes::copy_from_slice(json.as_bytes()),
                        retain: false,
                    });
                }
            }
            request = snapshot_requests.recv(), if snapshots.is_some() => match request {
                Some(()) => schedule.request(),
                None => return,
            },
            _ = sleep_until(snapshot_due), if snapshot_due.is_some() => {
                if !schedule.take_due(Instant::now()) {
                    continue;
                }
                let Some(requests) = &snapshots else { continue };
                let snapshot = match tokio::time::timeout(SNAPSHOT_WAIT, requests.request()).await {
                    Ok(Ok(Ok(snapshot))) => snapshot,
                    Ok(Ok(Err(err))) => {
                        crate::warn_throttled!("no snapshot for Home Assistant: {err}");
                        continue;
                    }
                    _ => {
                        crate::warn_throttled!("no snapshot for Home Assistant: no frame within {SNAPSHOT_WAIT:?}");
                        continue;
                    }
                };
                if let Err(reason) = check_snapshot_size(snapshot.jpeg.len()) {
                    crate::warn_throttled!("{reason}");
                    continue;
                }
                let _ = out.try_send(Publication {
                    topic: snapshot_topic.clone(),
                    payload: snapshot.jpeg,
                    retain: false,
                });
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    /// Integration on, with `extra` lines for `[homeassistant]` and sections after it; an
    /// open camera unless `extra` has its own `[auth]`.
    fn enabled(extra: &str) -> Config {
        let auth = if extra.contains("[auth]") {
            ""
        } else {
            "[auth]\nmode = \"open\"\n"
        };
        Config::from_toml_str(&format!(
            "[device]\nid = \"porch\"\nname = \"Porch\"\n{auth}[homeassistant]\nenabled = true\n{extra}"
        ))
        .unwrap()
    }

    fn payload(publication: &Publication) -> Value {
        serde_json::from_slice(&publication.payload).unwrap()
    }

    #[test]
    fn enabled_publishes_a_camera_and_six_sensors_under_the_node() {
        let discovery = Discovery::new(&enabled(""), Some("http://porch.lan:8080/".into()));
        let topics: Vec<&str> = discovery
            .configs()
            .iter()
            .map(|c| c.topic.as_str())
            .collect();
        assert_eq!(
            topics,
            [
                "homeassistant/camera/peercam_porch/camera/config",
                "homeassistant/sensor/peercam_porch/cpu/config",
                "homeassistant/sensor/peercam_porch/temperature/config",
                "homeassistant/sensor/peercam_porch/viewers/config",
                "homeassistant/sensor/peercam_porch/fps/config",
                "homeassistant/sensor/peercam_porch/bitrate/config",
                "homeassistant/sensor/peercam_porch/uptime/config",
            ]
        );
        assert!(discovery.configs().iter().all(|c| c.retain));
        let camera = payload(&discovery.configs()[0]);
        assert_eq!(camera["topic"], "peercam/porch/snapshot");
        assert_eq!(camera["unique_id"], "peercam_porch_camera");
        assert_eq!(camera["device"]["name"], "Porch");
        assert_eq!(camera["device"]["model"], "peercam");
        assert_eq!(camera["device"]["sw_version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(
            camera["device"]["configuration_url"],
            "http://porch.lan:8080/"
        );
        assert_eq!(camera["availability"][0]["topic"], "peercam/porch/status");
        let temperature = payload(&discovery.configs()[2]);
        assert_eq!(temperature["state_topic"], "peercam/porch/telemetry");
        assert_eq!(temperature["unit_of_measurement"], "°C");
        assert_eq!(temperature["device_class"], "temperature");
    }

    #[test]
    fn the_camera_entity_is_off_by_default_when_access_keys_guard_the_video() {
        let keys = "[auth]\nmode = \"keys\"\n";
        let sensors_only = Discovery::new(&enabled(keys), None);
        assert_eq!(sensors_only.configs().len(), SENSORS.len());
        assert!(sensors_only
            .configs()
            .iter()
            .all(|c| c.topic.contains("/sensor/")));
        let told = Discovery::new(&enabled(&format!("camera = true\n{keys}")), None);
        assert_eq!(told.configs().len(), SENSORS.len() + 1);
        let off = Discovery::new(&enabled("camera = false"), None);
        assert_eq!(off.configs().len(), SENSORS.len());
    }

    #[test]
    fn disabled_publishes_nothing_and_clears_every_retained_config_of_its_node() {
        let discovery = Discovery::new(&Config::default(), None);
        assert!(discovery.configs().is_empty());
        assert_eq!(
            discovery.node_filter(),
            "homeassistant/+/peercam_cam1/+/config"
        );
        let clear = discovery
            .clear_if_stale("homeassistant/sensor/peercam_cam1/cpu/config", b"{}", true)
            .unwrap();
        assert_eq!(clear.payload, Bytes::new());
        assert!(clear.retain);
        // Already empty, live (not retained), or someone else's node: left alone.
        let left_alone = [
            (
                "homeassistant/sensor/peercam_cam1/cpu/config",
                &b""[..],
                true,
            ),
            ("homeassistant/sensor/peercam_cam1/cpu/config", b"{}", false),
            ("homeassistant/sensor/peercam_cam2/cpu/config", b"{}", true),
            ("homeassistant/sensor/peercam_cam1/cpu/state", b"{}", true),
            ("other/sensor/peercam_cam1/cpu/config", b"{}", true),
        ];
        for (topic, payload, retained) in left_alone {
            assert_eq!(
                discovery.clear_if_stale(topic, payload, retained),
                None,
                "{topic}"
            );
        }
    }

    #[test]
    fn enabled_clears_only_configs_it_no_longer_publishes() {
        let discovery = Discovery::new(&enabled("camera = false"), None);
        let ours = "homeassistant/sensor/peercam_porch/cpu/config";
        assert_eq!(discovery.clear_if_stale(ours, b"{\"old\":1}", true), None);
        let dropped = "homeassistant/camera/peercam_porch/camera/config";
        assert!(discovery.clear_if_stale(dropped, b"{}", true).is_some());
    }

    #[test]
    fn the_configuration_url_follows_the_http_listener() {
        let url = |extra: &str| configuration_url(&enabled(extra), "porch-pi");
        assert_eq!(url(""), Some("http://127.0.0.1:8080/".into()));
        let mut everywhere = enabled("");
        everywhere.http.listen = Some("0.0.0.0:8443".parse().unwrap());
        assert_eq!(
            configuration_url(&everywhere, "porch-pi"),
            Some("http://porch-pi:8443/".into())
        );
        assert_eq!(url("[http]\nlisten = \"off\""), None);
        assert_eq!(
            url("configuration_url = \"https://cam.example.net/\""),
            Some("https://cam.example.net/".into())
        );
    }

    #[test]
    fn configuration_urls_need_http_and_a_host() {
        for good in ["http://a/", "https://cam.lan:8080/x", "http://[::1]:80/"] {
            assert!(is_configuration_url(good), "{good}");
        }
        for bad in [
            "ftp://a/",
            "http:///x",
            "cam.lan:8080",
            "http://:80/",
            "http://a b/",
            "http://u@h/",
        ] {
            assert!(!is_configuration_url(bad), "{bad}");
        }
    }

    #[test]
    fn periodic_snapshots_start_at_once_and_follow_the_interval() {
        let start = Instant::now();
        let mut schedule = SnapshotSchedule::new(Some(Duration::from_secs(10)), start);
        assert_eq!(schedule.next_due(start), Some(start));
        assert!(schedule.take_due(start));
        assert!(!schedule.take_due(start + Duration::from_secs(9)));
        assert_eq!(
            schedule.next_due(start),
            Some(start + Duration::from_secs(10))
        );
        assert!(schedule.take_due(start + Duration::from_secs(10)));
    }

    #[test]
    fn requests_are_served_at_most_once_a_second_and_coalesce() {
        let start = Instant::now();
        let mut schedule = SnapshotSchedule::new(None, start);
        assert_eq!(schedule.next_due(start), None);
        schedule.request();
        assert_eq!(schedule.next_due(start), Some(start));
        assert!(schedule.take_due(start));
        // Three requests within the gap: one snapshot, at its end.
        for _ in 0..3 {
            schedule.request();
        }
        let gap_end = start + MIN_REQUEST_GAP;
        assert_eq!(schedule.next_due(start), Some(gap_end));
        assert!(!schedule.take_due(start + Duration::from_millis(500)));
        assert!(schedule.take_due(gap_end));
        assert!(
            !schedule.take_due(gap_end + Duration::from_secs(5)),
            "nothing left to serve"
        );
        assert_eq!(schedule.next_due(gap_end), None);
    }

    #[test]
    fn oversized_snapshots_are_refused_with_the_reason() {
        assert!(check_snapshot_size(MAX_SNAPSHOT_BYTES).is_ok());
        let reason = check_snapshot_size(MAX_SNAPSHOT_BYTES + 1).unwrap_err();
        assert!(reason.contains("snapshot.quality"), "{reason}");
    }
}
