//! Malformed signaling input: each gets an `error` reply on its session topic (where one
//! exists), never crashes the agent, and never disturbs a viewer that is streaming. A packet
//! over the MQTT packet cap (64 KiB payload + 4 KiB) closes only the connection it came on:
//! the sender's at the embedded broker; the camera's own, for a moment, when an external
//! broker delivers one.

mod common;

use common::viewer::{new_session_id, Observer, TestViewer};
use common::{require_loopback_only_network, Agent, AgentOptions, BrokerMode, Mosquitto};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use std::time::Duration;

/// The agent's MQTT packet cap (`protocol::MAX_PACKET_BYTES`: 64 KiB of payload + 4 KiB).
const PACKET_CAP: usize = 64 * 1024 + 4 * 1024;

const NO_VIDEO_OFFER: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n\
m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\n\
a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\na=fingerprint:sha-256 00:11\r\na=setup:actpass\r\n\
a=sctp-port:5000\r\n";

/// Valid SDP with a receiving video section, but VP8 only: nothing the camera can send.
const VP8_ONLY_OFFER: &str = "v=0\r\no=- 3 3 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=recvonly\r\na=rtpmap:96 VP8/90000\r\n\
a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n";

/// Well-formed enough to pass validation; used as a conflicting second offer.
const OTHER_VIDEO_OFFER: &str = "v=0\r\no=- 2 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 102\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=recvonly\r\na=rtpmap:102 H264/90000\r\n";

struct Probe<'a> {
    observer: &'a Observer,
    device: &'a str,
}

impl Probe<'_> {
    /// Publishes `payload` on a fresh session and returns the camera's error reply.
    async fn error_for(&self, payload: Vec<u8>) -> Value {
        let sid = new_session_id();
        let to_camera = format!("peercam/{}/session/{sid}/to-camera", self.device);
        let to_viewer = format!("peercam/{}/session/{sid}/to-viewer", self.device);
        self.observer.publish(&to_camera, payload).await;
        self.observer
            .wait_for(&to_viewer, Duration::from_secs(10), |m| {
                m["type"] == "error"
            })
            .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_input_is_refused_and_a_valid_viewer_still_works() {
    require_loopback_only_network();
    let agent = Agent::start(AgentOptions {
        connect_timeout_s: 3,
        ..Default::default()
    });
    let device = agent.device.clone();
    let observer = Observer::start(
        agent.mqtt_port,
        &[format!("peercam/{device}/session/+/to-viewer")],
    )
    .await;

    // A viewer streams throughout, to prove bad input never disturbs it.
    let bystander = TestViewer::start(agent.mqtt_port, &device).await;
    bystander.wait_for_frames(10, Duration::from_secs(15)).await;

    let probe = Probe {
        observer: &observer,
        device: &device,
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("not JSON", b"this is not json".to_vec(), "payload is not valid JSON"),
        (
            "not UTF-8",
            vec![0xff, 0xfe, 0x00, 0x7b],
            "payload is not valid UTF-8 (invalid byte at offset 0)",
        ),
        (
            "not an object",
            b"[1,2,3]".to_vec(),
            "payload is an array, expected a JSON object",
        ),
        (
            "no type",
            br#"{"sdp":"v=0"}"#.to_vec(),
            "message has no \"type\" field",
        ),
        (
            "unknown type",
            br#"{"type":"subscribe"}"#.to_vec(),
            "unknown message type \"subscribe\"",
        ),
        (
            // Over the protocol's 64 KiB, under the MQTT packet cap: it reaches the parser.
            "oversized",
            json!({"type":"offer","sdp": "a".repeat(66_000)})
                .to_string()
                .into_bytes(),
            "bytes, the limit is 65536",
        ),
        (
            "malformed SDP",
            json!({"type":"offer","sdp":"hello"})
                .to_string()
                .into_bytes(),
            "offer SDP is malformed",
        ),
        (
            "offer without video",
            json!({"type":"offer","sdp": NO_VIDEO_OFFER})
                .to_string()
                .into_bytes(),
            "offer SDP has no video section (m=video)",
        ),
        (
            "offer without H.264 Constrained Baseline",
            json!({"type":"offer","sdp": VP8_ONLY_OFFER})
                .to_string()
                .into_bytes(),
            "offer has no H.264 video the camera can send (needs Constrained Baseline",
        ),
        (
            "candidate longer than 1 KiB",
            json!({"type":"candidate","candidate":{"candidate": format!("candidate:1 1 udp 1 127.0.0.1 9 typ host{}", " x".repeat(600)),"sdpMid":"0"}})
                .to_string()
                .into_bytes(),
            "field \"candidate.candidate\" of candidate message must be at most 1024 bytes",
        ),
        (
            "malformed candidate",
            json!({"type":"candidate","candidate":{"candidate":"bogus","sdpMid":"0"}})
                .to_string()
                .into_bytes(),
            "field \"candidate.candidate\" of candidate message must be empty or start with \"candidate:\"",
        ),
        (
            "candidate not an object",
            json!({"type":"candidate","candidate":42})
                .to_string()
                .into_bytes(),
            "field \"candidate\" of candidate message must be an object or null, found a number",
        ),
    ];
    for (name, payload, needle) in cases {
        assert!(
            !needle.is_empty(),
            "{name}: an empty needle matches anything"
        );
        let error = probe.error_for(payload).await;
        assert_eq!(error["code"], "bad-request", "{name}: {error}");
        let message = error["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(needle),
            "{name}: error message {message:?} should mention {needle:?}"
        );
    }

    // Candidates for a session whose offer never comes: buffered, then refused.
    let orphan = probe
        .error_for(json!({"type":"candidate","candidate":{"candidate":"candidate:1 1 udp 1 127.0.0.1 9 typ host","sdpMid":"0"}}).to_string().into_bytes())
        .await;
    assert_eq!(orphan["code"], "bad-request", "{orphan}");
    assert!(
        orphan["message"]
            .as_str()
            .unwrap()
            .contains("no offer received for this session"),
        "{orphan}"
    );

    // A second, different offer on a live session.
    let second_offer = json!({"type":"offer","sdp": OTHER_VIDEO_OFFER});
    observer
        .publish(
            &format!("peercam/{device}/session/{}/to-camera", bystander.sid),
            second_offer.to_string(),
        )
        .await;
    let to_bystander = format!("peercam/{device}/session/{}/to-viewer", bystander.sid);
    let refusal = observer
        .wait_for(&to_bystander, Duration::from_secs(5), |m| {
            m["type"] == "error"
        })
        .await;
    assert_eq!(refusal["code"], "bad-request", "{refusal}");
    assert!(
        refusal["message"]
            .as_str()
            .unwrap()
            .contains("already has an offer"),
        "{refusal}"
    );

    // An invalid session id gets no reply (there is no valid topic to reply on) and no crash.
    invalid_session_ids_get_no_reply(&agent).await;

    // The bystander never noticed; a new viewer still works.
    still_serving(&agent, &bystander, agent.mqtt_port).await;
    // Only the bystander and the newcomer got a peer connection: every bad offer was
    // refused before one was built.
    assert_eq!(agent.count_log("new viewer session"), 2);
}

/// Publishes a payload that draws an error on a valid sid (`{}`: no type) on topics whose
/// sid is invalid, and checks the camera publishes nothing for them, anywhere under the
/// prefix. An observer on `peercam/#` first proves it sees the camera's replies, and a
/// valid-sid canary sent after the invalid ones proves the camera has handled them (it
/// handles a connection's messages in order) before the quiet window is judged.
async fn invalid_session_ids_get_no_reply(agent: &Agent) {
    let device = agent.device.as_str();
    let everything = Observer::start(agent.mqtt_port, &["peercam/#".to_owned()]).await;
    let draws_an_error = b"{}".to_vec();

    // The observer sees a reply to exactly this payload on a valid sid.
    let proof_sid = new_session_id();
    let proof_to_camera = format!("peercam/{device}/session/{proof_sid}/to-camera");
    let proof_to_viewer = format!("peercam/{device}/session/{proof_sid}/to-viewer");
    everything
        .publish(&proof_to_camera, draws_an_error.clone())
        .await;
    let proof = everything
        .wait_for(&proof_to_viewer, Duration::from_secs(5), |m| {
            m["type"] == "error"
        })
        .await;
    assert_eq!(proof["code"], "bad-request", "{proof}");

    let too_long = "a".repeat(65);
    let invalid_sids = ["bad!id", "short", "has space", too_long.as_str()];
    for sid in invalid_sids {
        everything
            .publish(
                &format!("peercam/{device}/session/{sid}/to-camera"),
                draws_an_error.clone(),
            )
            .await;
    }
    // The canary goes out after them on the same connection.
    let canary_sid = new_session_id();
    everything
        .publish(
            &format!("peercam/{device}/session/{canary_sid}/to-camera"),
            draws_an_error.clone(),
        )
        .await;
    everything
        .wait_for(
            &format!("peercam/{device}/session/{canary_sid}/to-viewer"),
            Duration::from_secs(5),
            |m| m["type"] == "error",
        )
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // The camera did receive them: it logs the first invalid sid (quoting at most 64
    // characters of it) with its topic, and holds back the lines for the others (counted
    // in its next line: one per 10 s from a source anyone can trigger, tests/limits.rs)...
    let first = format!(
        "topic=peercam/{device}/session/{}/to-camera",
        invalid_sids[0]
    );
    let invalid_lines: Vec<String> = agent
        .log_lines()
        .into_iter()
        .filter(|line| line.contains("is invalid"))
        .collect();
    assert_eq!(
        invalid_lines.len(),
        1,
        "one line for the invalid sids; log:\n{}",
        agent.log_lines().join("\n")
    );
    assert!(
        invalid_lines[0].ends_with(&first),
        "{:?} names the first invalid sid",
        invalid_lines[0]
    );
    // ...and published nothing for them: the only messages on their topics are ours.
    for sid in invalid_sids {
        let session = format!("peercam/{device}/session/{sid}/");
        let to_camera = format!("{session}to-camera");
        let replies: Vec<(String, Value)> = everything
            .all_messages()
            .into_iter()
            .filter(|(topic, _)| topic.starts_with(&session) && *topic != to_camera)
            .collect();
        assert!(
            replies.is_empty(),
            "sid {sid:?} is invalid, yet the camera published {replies:#?}"
        );
        assert!(
            !everything.messages_on(&to_camera).is_empty(),
            "the observer sees {to_camera}, so it would see a reply next to it"
        );
    }
}

/// A client of its own (which itself allows 1 MiB packets) and an offer of `payload_bytes`
/// for a fresh session of `device`: its topic and payload.
fn oversized_publisher(
    port: u16,
    device: &str,
    payload_bytes: usize,
) -> (AsyncClient, rumqttc::EventLoop, String, String) {
    let mut options = MqttOptions::new(
        format!("oversized-{:08x}", rand::random::<u32>()),
        "127.0.0.1",
        port,
    );
    options.set_max_packet_size(1 << 20, 1 << 20);
    let (client, eventloop) = AsyncClient::new(options, 16);
    let topic = format!("peercam/{device}/session/{}/to-camera", new_session_id());
    let payload = json!({"type": "offer", "sdp": "a".repeat(payload_bytes)}).to_string();
    (client, eventloop, topic, payload)
}

/// Publishes `payload_bytes` on a fresh session of `device` from a client of its own (which
/// itself allows 1 MiB packets) and returns how its connection ended: the error its event
/// loop reported after the publish went out, or a panic if it is still open after 10 s.
async fn publish_oversized(port: u16, device: &str, payload_bytes: usize) -> String {
    let (client, mut eventloop, topic, payload) = oversized_publisher(port, device, payload_bytes);
    assert!(payload.len() > PACKET_CAP, "{} bytes", payload.len());
    let ended = async {
        let mut sent = false;
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    client
                        .publish(&topic, QoS::AtLeastOnce, false, payload.clone())
                        .await
                        .unwrap();
                }
                Ok(Event::Outgoing(rumqttc::Outgoing::Publish(_))) => sent = true,
                Ok(_) => {}
                Err(error) if sent => return error.to_string(),
                Err(error) => panic!("the oversized publisher failed before publishing: {error}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), ended)
        .await
        .expect("the broker closes a connection that sends a packet over the cap")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_packet_over_the_cap_closes_only_its_senders_connection_to_the_embedded_broker() {
    require_loopback_only_network();
    let agent = Agent::start(AgentOptions::default());
    let device = agent.device.clone();
    let bystander = TestViewer::start(agent.mqtt_port, &device).await;
    bystander.wait_for_frames(10, Duration::from_secs(15)).await;

    let ended = publish_oversized(agent.mqtt_port, &device, 100_000).await;
    println!("figures: the embedded broker ended the oversized publisher's connection: {ended}");

    // The camera's own connection stayed up, its viewer kept decoding, and a new viewer
    // still gets through the same broker.
    still_serving(&agent, &bystander, agent.mqtt_port).await;
    assert_eq!(
        agent.count_log("MQTT connected"),
        1,
        "the camera never reconnected"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_packet_over_the_cap_from_an_external_broker_costs_the_camera_one_reconnect() {
    require_loopback_only_network();
    // mosquitto forwards any size (its default message_size_limit is 0): the camera's client
    // is what refuses the packet.
    let mosquitto = Mosquitto::start();
    let agent = Agent::start(AgentOptions {
        broker: BrokerMode::External(mosquitto.port),
        ..Default::default()
    });
    let device = agent.device.clone();
    let bystander = TestViewer::start(mosquitto.port, &device).await;
    bystander.wait_for_frames(10, Duration::from_secs(15)).await;

    // mosquitto takes the packet from its sender; the camera's client drops its connection
    // on it and reconnects with a clean session, so the packet is not delivered again.
    let status_topic = format!("peercam/{device}/status");
    let observer = Observer::start(mosquitto.port, std::slice::from_ref(&status_topic)).await;
    let sender = tokio::spawn(publish_oversized_and_stay(mosquitto.port, device.clone()));
    agent.wait_for_log("over the 69632-byte limit", Duration::from_secs(10));
    let reconnected = std::time::Instant::now();
    while agent.count_log("MQTT connected") < 2 {
        assert!(
            reconnected.elapsed() < Duration::from_secs(15),
            "the camera did not reconnect; log:\n{}",
            agent.log_lines().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "figures: the camera reconnected {:?} after logging the oversized packet",
        reconnected.elapsed()
    );
    // The retained status ends online again (mosquitto may have published the camera's
    // last will in between).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while observer.latest(&status_topic).map(|v| v["state"].clone()) != Some(json!("online")) {
        assert!(
            std::time::Instant::now() < deadline,
            "status after the reconnect: {:#?}",
            observer.messages_on(&status_topic)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Media never went through the broker: the viewer kept decoding. Signaling works again.
    still_serving(&agent, &bystander, mosquitto.port).await;
    assert_eq!(
        agent.count_log("MQTT connected"),
        2,
        "one reconnect, no loop of redeliveries"
    );
    sender.abort();
}

/// Publishes an oversized offer to mosquitto (which accepts it) and keeps the sender's
/// connection open, so only the camera's side can be what closes.
async fn publish_oversized_and_stay(port: u16, device: String) {
    let (client, mut eventloop, topic, payload) = oversized_publisher(port, &device, 100_000);
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                let _ = client
                    .publish(&topic, QoS::AtLeastOnce, false, payload.clone())
                    .await;
            }
            Ok(_) => {}
            Err(error) => panic!("mosquitto closed the oversized publisher: {error}"),
        }
    }
}

/// The watching viewer kept decoding, a new viewer gets through the broker at `port`, and
/// nothing in the agent panicked.
async fn still_serving(agent: &Agent, bystander: &TestViewer, port: u16) {
    let before = bystander.stats().frames_decoded;
    bystander
        .wait_until("bystander keeps decoding", Duration::from_secs(5), |s| {
            s.frames_decoded > before + 20
        })
        .await;
    let newcomer = TestViewer::start(port, &agent.device).await;
    newcomer.wait_for_frames(30, Duration::from_secs(15)).await;
    assert!(
        agent.log_lines().iter().all(|l| !l.contains("panicked")),
        "no panic in the agent log"
    );
}
