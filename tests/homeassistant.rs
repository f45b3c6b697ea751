//! Home Assistant integration end to end: the real agent on mosquitto and on its embedded
//! broker, watched by an MQTT client standing in for Home Assistant. Discovery payloads are
//! checked against Home Assistant's schema (transcribed in
//! tests/homeassistant/discovery-schema.json, each rule linked to HA's source), their
//! templates rendered against what the camera publishes, snapshots decoded, and the last
//! will followed to `offline`. Runs only inside a loopback-only network namespace.

mod common;

use bytes::Bytes;
use common::viewer::TestViewer;
use common::{require_loopback_only_network, Agent, AgentOptions, BrokerMode, Mosquitto};
use peercam::config::Config;
use peercam::homeassistant::Discovery;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// One message the stand-in for Home Assistant received.
#[derive(Debug, Clone)]
struct Received {
    topic: String,
    payload: Bytes,
    retain: bool,
    at_unix_ms: u64,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// An MQTT client subscribed to `filters`, recording everything it receives.
struct Watcher {
    client: AsyncClient,
    received: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Watcher {
    async fn start(port: u16, filters: &[&str]) -> Watcher {
        let mut options = MqttOptions::new(format!("ha-{}", unix_ms()), "127.0.0.1", port);
        options.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut eventloop) = AsyncClient::new(options, 16);
        for filter in filters {
            client.subscribe(*filter, QoS::AtLeastOnce).await.unwrap();
        }
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&received);
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        sink.lock().unwrap().push(Received {
                            topic: publish.topic.clone(),
                            payload: publish.payload.clone(),
                            retain: publish.retain,
                            at_unix_ms: unix_ms(),
                        });
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        Watcher {
            client,
            received,
            task,
        }
    }

    /// Waits until `count` messages match, and returns them (the first `count`).
    async fn wait_for(
        &self,
        what: &str,
        count: usize,
        matches: impl Fn(&Received) -> bool,
    ) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let found: Vec<Received> = self
                .received
                .lock()
                .unwrap()
                .iter()
                .filter(|m| matches(m))
                .cloned()
                .collect();
            if found.len() >= count {
                return found.into_iter().take(count).collect();
            }
            assert!(
                Instant::now() < deadline,
                "waited 20 s for {count} {what}; got {}",
                found.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn clear(&self) {
        self.received.lock().unwrap().clear();
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Home Assistant's schema with peercam's profile (`#/$defs/peercam_camera` or
/// `#/$defs/peercam_sensor`) as the root.
fn validator(profile: &str) -> jsonschema::Validator {
    let mut schema: Value =
        serde_json::from_str(include_str!("homeassistant/discovery-schema.json")).unwrap();
    schema["oneOf"] = json!([{"$ref": format!("#/$defs/{profile}")}]);
    jsonschema::draft202012::new(&schema).expect("the schema compiles")
}

/// The schema's objections to one discovery payload on `topic` (none: it passes).
fn schema_errors(topic: &str, payload: &Value) -> Vec<String> {
    let component = topic.split('/').nth(1).unwrap();
    let validator = validator(&format!("peercam_{component}"));
    validator
        .iter_errors(payload)
        .map(|error| format!("{error} at {}", error.instance_path()))
        .collect()
}

/// Renders a Home Assistant template against a message's JSON as `value_json`. Jinja's
/// `None` renders as `None`, as in HA, which shows it as unknown.
fn render(template: &str, message: &[u8]) -> String {
    let value_json: Value = serde_json::from_slice(message).expect("the message is JSON");
    let env = minijinja::Environment::new();
    env.render_str(template, minijinja::context! { value_json => value_json })
        .unwrap_or_else(|err| panic!("{template:?} does not render: {err}"))
}

/// A snapshot from MQTT: the configured size, and a stamp within a second of its arrival.
fn assert_fresh_snapshot(message: &Received, width: usize, height: usize) {
    let (w, h, stamp) = common::decode_stamped_jpeg(&message.payload);
    assert_eq!((w, h), (width, height), "snapshot size");
    let stamp = stamp.expect("testsrc's stamp reads back from the JPEG");
    let age_ms = message.at_unix_ms.abs_diff(stamp);
    assert!(age_ms < 1000, "the snapshot was {age_ms} ms old on arrival");
}

fn ha_section(extra: &str) -> String {
    format!("[homeassistant]\nenabled = true\nsnapshot_interval_s = 3\n{extra}\n")
}

#[test]
fn every_discovery_payload_passes_home_assistants_schema() {
    let configs = [
        "[homeassistant]\nenabled = true\n[http]\nlisten = \"127.0.0.1:8080\"\n[auth]\nmode = \"open\"",
        "[homeassistant]\nenabled = true\nconfiguration_url = \"https://cam.example.net/\"\n[device]\nid = \"Back_door-2\"\nname = \"Back door ☂\"\n[auth]\nmode = \"open\"",
        "[homeassistant]\nenabled = true\ncamera = true\n[auth]\nmode = \"keys\"",
    ];
    for text in configs {
        let config = Config::from_toml_str(text).unwrap();
        let url = peercam::homeassistant::configuration_url(&config, "cam-host");
        let discovery = Discovery::new(&config, url);
        assert_eq!(discovery.configs().len(), 7, "{text}");
        for message in discovery.configs() {
            let payload: Value = serde_json::from_slice(&message.payload).unwrap();
            let errors = schema_errors(&message.topic, &payload);
            assert!(errors.is_empty(), "{}: {errors:#?}", message.topic);
        }
    }
}

#[test]
fn the_schema_rejects_what_home_assistant_rejects() {
    // The check can fail: HA's own rules, broken one at a time, are caught.
    let config = Config::from_toml_str("[homeassistant]\nenabled = true").unwrap();
    let discovery = Discovery::new(&config, Some("http://cam.lan/".into()));
    let temperature = discovery
        .configs()
        .iter()
        .find(|c| c.topic.ends_with("/temperature/config"))
        .unwrap();
    let topic = temperature.topic.as_str();
    let good: Value = serde_json::from_slice(&temperature.payload).unwrap();
    type Breakage = (&'static str, fn(&mut Value));
    let breakages: [Breakage; 5] = [
        ("a unit outside the device class", |p| {
            p["unit_of_measurement"] = "C".into()
        }),
        ("an unknown key in device", |p| {
            p["device"]["bogus"] = 1.into()
        }),
        ("no state topic", |p| {
            p.as_object_mut().unwrap().remove("state_topic");
        }),
        ("the config category on a sensor", |p| {
            p["entity_category"] = "config".into()
        }),
        ("a wildcard state topic", |p| {
            p["state_topic"] = "peercam/#/x".into()
        }),
    ];
    for (what, breaks) in breakages {
        let mut broken = good.clone();
        breaks(&mut broken);
        assert!(
            !schema_errors(topic, &broken).is_empty(),
            "{what} passed the schema"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn home_assistant_sees_the_camera_its_sensors_and_the_last_will_on_mosquitto() {
    require_loopback_only_network();
    let mosquitto = Mosquitto::start();
    let options = || AgentOptions {
        broker: BrokerMode::External(mosquitto.port),
        http: true,
        telemetry_interval_ms: 250,
        telemetry_extra: "mqtt_interval_s = 1".into(),
        extra_sections: ha_section(""),
        ..Default::default()
    };
    let agent = Agent::start(options());
    let ha = Watcher::start(
        mosquitto.port,
        &[
            "homeassistant/#",
            "peercam/cam1/status",
            "peercam/cam1/telemetry",
            "peercam/cam1/snapshot",
        ],
    )
    .await;

    // Discovery: a camera and six sensors, retained, each passing HA's schema.
    let configs = ha
        .wait_for("discovery configs", 7, |m| m.topic.ends_with("/config"))
        .await;
    let mut topics: Vec<&str> = configs.iter().map(|m| m.topic.as_str()).collect();
    topics.sort_unstable();
    assert_eq!(
        topics,
        [
            "homeassistant/camera/peercam_cam1/camera/config",
            "homeassistant/sensor/peercam_cam1/bitrate/config",
            "homeassistant/sensor/peercam_cam1/cpu/config",
            "homeassistant/sensor/peercam_cam1/fps/config",
            "homeassistant/sensor/peercam_cam1/temperature/config",
            "homeassistant/sensor/peercam_cam1/uptime/config",
            "homeassistant/sensor/peercam_cam1/viewers/config",
        ]
    );
    let payloads: Vec<(String, Value)> = configs
        .iter()
        .map(|m| (m.topic.clone(), serde_json::from_slice(&m.payload).unwrap()))
        .collect();
    for (message, (topic, payload)) in configs.iter().zip(&payloads) {
        assert!(message.retain, "{topic} is retained");
        let errors = schema_errors(topic, payload);
        assert!(errors.is_empty(), "{topic}: {errors:#?}");
        assert_eq!(
            payload["device"]["configuration_url"],
            format!("http://127.0.0.1:{}/", agent.http_port)
        );
    }

    // The camera entity: a fresh JPEG of the configured size, periodically and on request.
    let first = ha
        .wait_for("snapshots", 1, |m| m.topic == "peercam/cam1/snapshot")
        .await;
    assert_fresh_snapshot(&first[0], 640, 480);
    assert!(!first[0].retain, "snapshots are not kept on the broker");
    ha.clear();
    let asked_at = Instant::now();
    ha.client
        .publish("peercam/cam1/snapshot/request", QoS::AtLeastOnce, false, "")
        .await
        .unwrap();
    let answer = ha
        .wait_for("requested snapshots", 1, |m| {
            m.topic == "peercam/cam1/snapshot"
        })
        .await;
    assert_fresh_snapshot(&answer[0], 640, 480);
    println!(
        "requested snapshot: {} bytes after {:?}",
        answer[0].payload.len(),
        asked_at.elapsed()
    );

    // Sensors update: each template reads a number from the telemetry topic; the uptime
    // moves on, and a viewer shows in the viewers, fps and bitrate sensors.
    let sensors: Vec<(String, String)> = payloads
        .iter()
        .filter(|(topic, _)| topic.contains("/sensor/"))
        .map(|(topic, config)| {
            let key = topic.split('/').nth(3).unwrap().to_owned();
            (key, config["value_template"].as_str().unwrap().to_owned())
        })
        .collect();
    let readings = |message: &Received| -> std::collections::BTreeMap<String, f64> {
        let mut numbers = std::collections::BTreeMap::new();
        for (key, template) in &sensors {
            let value = render(template, &message.payload);
            // No temperature sensor in a VM: `None`, which HA shows as unknown.
            if key == "temperature" && value == "None" {
                continue;
            }
            let number: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("the {key} sensor renders {value:?}, not a number"));
            assert!(number >= 0.0, "{key}: {number}");
            numbers.insert(key.clone(), number);
        }
        numbers
    };
    let is_telemetry = |m: &Received| m.topic == "peercam/cam1/telemetry";
    let idle = ha.wait_for("telemetry messages", 2, is_telemetry).await;
    let (first, second) = (readings(&idle[0]), readings(&idle[1]));
    assert!(
        second["uptime"] > first["uptime"],
        "uptime moves: {first:?} then {second:?}"
    );
    assert_eq!(second["viewers"], 0.0);
    let viewer = TestViewer::start(mosquitto.port, "cam1").await;
    viewer.wait_for_frames(30, Duration::from_secs(20)).await;
    ha.clear();
    let watched = ha.wait_for("telemetry messages", 2, is_telemetry).await;
    let watching = readings(&watched[1]);
    println!("sensors while watched: {watching:?}");
    assert_eq!(watching["viewers"], 1.0, "{watching:?}");
    assert!(
        watching["fps"] > 0.0 && watching["bitrate"] > 0.0,
        "{watching:?}"
    );
    assert!(watching["cpu"] > 0.0, "{watching:?}");
    viewer.leave().await;

    // Availability: online while the agent runs; its last will makes every entity offline.
    let status_of = |received: &[Received]| received.last().unwrap().payload.clone();
    let statuses = ha
        .wait_for("statuses", 1, |m| m.topic == "peercam/cam1/status")
        .await;
    for (topic, config) in &payloads {
        let availability = &config["availability"][0];
        assert_eq!(availability["topic"], "peercam/cam1/status");
        let rendered = render(
            availability["value_template"].as_str().unwrap(),
            &status_of(&statuses),
        );
        assert_eq!(rendered, "online", "{topic}");
    }
    ha.clear();
    agent.signal("KILL");
    let will = ha
        .wait_for("last wills", 1, |m| m.topic == "peercam/cam1/status")
        .await;
    for (topic, config) in &payloads {
        let availability = &config["availability"][0];
        let rendered = render(
            availability["value_template"].as_str().unwrap(),
            &will[0].payload,
        );
        assert_eq!(
            rendered, availability["payload_not_available"],
            "{topic} after the last will"
        );
    }
    drop(agent);

    // Turned off, the camera removes its configs: empty retained payloads.
    ha.clear();
    let off = Agent::start(AgentOptions {
        extra_sections: "[homeassistant]\nenabled = false\n".into(),
        ..options()
    });
    let removals = ha
        .wait_for("removals", 7, |m| {
            m.topic.ends_with("/config") && m.payload.is_empty()
        })
        .await;
    assert!(removals
        .iter()
        .all(|m| m.topic.starts_with("homeassistant/")));
    let late = Watcher::start(mosquitto.port, &["homeassistant/#"]).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let left = late.received.lock().unwrap().len();
    assert_eq!(left, 0, "no discovery config is left on the broker");
    drop(off);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_snapshot_over_signalings_packet_limit_goes_through_the_embedded_broker() {
    require_loopback_only_network();
    let agent = Agent::start(AgentOptions {
        // testsrc's flat picture makes small JPEGs: at 1440p and quality 100 about 100 KB,
        // well over 68 KiB and under 256 KiB (1080p is 68-72 KB, too close to call).
        width: 2560,
        height: 1440,
        fps: 5,
        extra_sections: format!("{}[snapshot]\nquality = 100\n", ha_section("")),
        ..Default::default()
    });
    let ha = Watcher::start(agent.mqtt_port, &["peercam/cam1/snapshot"]).await;
    ha.client
        .publish("peercam/cam1/snapshot/request", QoS::AtLeastOnce, false, "")
        .await
        .unwrap();
    let snapshot = ha
        .wait_for("snapshots", 1, |m| m.topic == "peercam/cam1/snapshot")
        .await;
    let bytes = snapshot[0].payload.len();
    assert!(
        bytes > peercam::signaling::protocol::MAX_PACKET_BYTES,
        "the test needs a snapshot larger than signaling's limit; got {bytes} bytes"
    );
    assert_fresh_snapshot(&snapshot[0], 2560, 1440);
    let path =
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("snapshot-mqtt-2560x1440.jpg");
    std::fs::write(&path, &snapshot[0].payload).unwrap();
    println!("MQTT snapshot: {bytes} bytes, saved to {}", path.display());
}
