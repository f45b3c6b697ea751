//! WHEP end to end: the real agent's `/whep` endpoint with the Rust test player (webrtc-rs
//! and openh264 over plain HTTP), WHEP and MQTT viewers sharing one encoder, and every
//! error status. Runs only inside a loopback-only network namespace (scripts/in-loopback-netns).

mod common;

use common::viewer::{encoded_per_second, Observer, TestViewer};
use common::whep::{http, WhepViewer};
use common::{require_loopback_only_network, Agent, AgentOptions};
use std::time::{Duration, Instant};

fn whep_agent(options: AgentOptions) -> Agent {
    let agent = Agent::start(AgentOptions {
        http: true,
        ..options
    });
    agent.wait_for_log("WHEP endpoint at", Duration::from_secs(10));
    agent
}

async fn status_observer(agent: &Agent) -> (Observer, String) {
    let status = format!("peercam/{}/status", agent.device);
    (
        Observer::start(agent.mqtt_port, std::slice::from_ref(&status)).await,
        status,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_whep_player_decodes_frames_and_deleting_frees_its_slot() {
    require_loopback_only_network();
    let agent = whep_agent(AgentOptions::default());
    let (observer, status) = status_observer(&agent).await;
    let posted = Instant::now();
    let viewer = WhepViewer::start(agent.http_port)
        .await
        .expect("201 Created");
    let answered = posted.elapsed();
    let created = &viewer.created;
    assert_eq!(created.header("content-type"), Some("application/sdp"));
    assert!(viewer.location.starts_with("/whep/"), "{}", viewer.location);
    assert!(
        viewer.location.len() >= "/whep/".len() + 24,
        "an unguessable id"
    );
    let etag = created.header("etag").expect("ETag").to_owned();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
    assert_eq!(
        created.all("link"),
        Vec::<&str>::new(),
        "no ICE servers configured"
    );
    assert!(
        created.body.contains("a=candidate:"),
        "a WHEP answer carries the camera's candidates:\n{}",
        created.body
    );

    let stats = viewer.wait_for_frames(60, Duration::from_secs(30)).await;
    assert_eq!((stats.width, stats.height), (640, 480));
    assert!(stats.distinct_pictures > 10, "{stats:?}");
    assert_eq!(stats.decode_errors, 0);
    let telemetry = viewer
        .stats()
        .telemetry
        .last()
        .cloned()
        .expect("telemetry on the WHEP player's data channel");
    assert_eq!(telemetry["viewers"], 1);
    observer
        .wait_for(&status, Duration::from_secs(5), |v| v["viewers"] == 1)
        .await;
    println!(
        "figures: whep answer after POST {answered:?}, first frame after POST {:?}, frames decoded {}",
        stats.first_frame_after_offer, stats.frames_decoded
    );

    // Late candidates go through PATCH (the If-Match must name this session).
    let frag =
        "a=ice-ufrag:test\r\na=mid:0\r\na=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host\r\n";
    let sdpfrag = [("Content-Type", "application/trickle-ice-sdpfrag")];
    let patched = http(agent.http_port, "PATCH", &viewer.location, &sdpfrag, frag).await;
    assert_eq!(patched.status, 204, "{patched:?}");
    let matching = [
        ("Content-Type", "application/trickle-ice-sdpfrag"),
        ("If-Match", etag.as_str()),
    ];
    let patched = http(agent.http_port, "PATCH", &viewer.location, &matching, frag).await;
    assert_eq!(patched.status, 204, "{patched:?}");
    let stale = [
        ("Content-Type", "application/trickle-ice-sdpfrag"),
        ("If-Match", "\"not-this-one\""),
    ];
    let refused = http(agent.http_port, "PATCH", &viewer.location, &stale, frag).await;
    assert_eq!(refused.status, 412, "{refused:?}");
    let wrong_type = [("Content-Type", "application/sdp")];
    let refused = http(
        agent.http_port,
        "PATCH",
        &viewer.location,
        &wrong_type,
        frag,
    )
    .await;
    assert_eq!(refused.status, 415, "{refused:?}");
    // The session still plays after all of that.
    let before = viewer.stats().frames_decoded;
    viewer
        .wait_for_frames(before + 15, Duration::from_secs(10))
        .await;

    assert_eq!(viewer.delete().await, 200);
    observer
        .wait_for(&status, Duration::from_secs(5), |v| v["viewers"] == 0)
        .await;
    agent.wait_for_log("reason=\"viewer-hangup\"", Duration::from_secs(5));
    let again = http(agent.http_port, "DELETE", &viewer.location, &[], "").await;
    assert_eq!(again.status, 404, "an ended session is gone: {again:?}");
    let late = http(agent.http_port, "PATCH", &viewer.location, &sdpfrag, frag).await;
    assert_eq!(late.status, 404, "{late:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn link_headers_announce_the_ice_servers_and_dead_ones_do_not_hang_the_answer() {
    require_loopback_only_network();
    // Servers nobody answers on closed loopback ports: gathering is capped, not endless.
    // The static TURN password is the camera's own; the shared-secret entry is announced
    // with minted short-lived credentials.
    let secret = common::private_file("turn-secret", "lab-turn-secret\n");
    let agent = whep_agent(AgentOptions {
        webrtc_extra: format!(
            "{}{}{}",
            "[[webrtc.ice_servers]]\nurls = [\"stun:127.0.0.1:9\"]\n",
            "[[webrtc.ice_servers]]\nurls = [\"turn:127.0.0.1:7?transport=udp\"]\nusername = \"cam\"\ncredential = \"long-term-pw\"\n",
            format_args!(
                "[[webrtc.ice_servers]]\nurls = [\"turn:127.0.0.1:8?transport=udp\"]\nsecret_file = \"{}\"\ncredential_ttl_s = 600\n",
                secret.display()
            ),
        ),
        ..Default::default()
    });
    let posted = Instant::now();
    let viewer = WhepViewer::start(agent.http_port).await.expect("201");
    let answered = posted.elapsed();
    let links = viewer.created.all("link");
    assert_eq!(links.len(), 2, "{links:?}");
    assert_eq!(links[0], "<stun:127.0.0.1:9>; rel=\"ice-server\"");
    let minted = &links[1];
    let username = minted
        .split("username=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a username");
    let expiry: u64 = username.strip_suffix(":cam1").unwrap().parse().unwrap();
    let now = peercam::clock::unix_s();
    assert!(
        (now + 590..=now + 610).contains(&expiry),
        "expires in credential_ttl_s: {expiry} vs now {now}"
    );
    let (_, credential) = peercam::ice::minted_credential(b"lab-turn-secret", "cam1", expiry);
    assert_eq!(
        minted,
        &format!("<turn:127.0.0.1:8?transport=udp>; rel=\"ice-server\"; username=\"{username}\"; credential=\"{credential}\"; credential-type=\"password\"")
    );
    assert!(
        !links
            .iter()
            .any(|l| l.contains("long-term-pw") || l.contains(":7?")),
        "a static TURN password is never announced: {links:?}"
    );
    viewer.wait_for_frames(15, Duration::from_secs(20)).await;
    println!("figures: whep answer after POST with two dead ICE servers {answered:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn whep_errors_have_their_statuses_and_reasons() {
    require_loopback_only_network();
    let agent = whep_agent(AgentOptions {
        max_viewers: 1,
        ..Default::default()
    });
    let port = agent.http_port;
    let sdp = [("Content-Type", "application/sdp")];

    let wrong_type = http(
        port,
        "POST",
        "/whep",
        &[("Content-Type", "text/plain")],
        "v=0",
    )
    .await;
    assert_eq!(wrong_type.status, 415, "{wrong_type:?}");
    assert!(
        wrong_type.body.contains("application/sdp"),
        "{wrong_type:?}"
    );

    let malformed = http(port, "POST", "/whep", &sdp, "hello, camera").await;
    assert_eq!(malformed.status, 400, "{malformed:?}");
    assert!(malformed.body.contains("SDP"), "{malformed:?}");
    let no_video =
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n";
    let audio_only = http(port, "POST", "/whep", &sdp, no_video).await;
    assert_eq!(audio_only.status, 400, "{audio_only:?}");
    assert!(audio_only.body.contains("no video"), "{audio_only:?}");

    for path in ["/whep/NoSuchSession0000000000", "/whep/..%2Fetc"] {
        let unknown = http(port, "DELETE", path, &[], "").await;
        assert_eq!(unknown.status, 404, "{path}: {unknown:?}");
        assert!(unknown.body.contains("no such WHEP session"), "{unknown:?}");
    }

    let options = http(port, "OPTIONS", "/whep", &[], "").await;
    assert!(matches!(options.status, 200 | 204), "{options:?}");
    assert_eq!(options.header("accept-post"), Some("application/sdp"));
    let preflight = http(
        port,
        "OPTIONS",
        "/whep",
        &[
            ("Origin", "http://player.test"),
            ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", "content-type"),
        ],
        "",
    )
    .await;
    assert_eq!(preflight.header("access-control-allow-origin"), Some("*"));
    assert!(
        preflight
            .header("access-control-allow-methods")
            .is_some_and(|m| m.contains("POST") && m.contains("PATCH") && m.contains("DELETE")),
        "{preflight:?}"
    );

    // The one slot is taken: a second player is told to come back later.
    let playing = WhepViewer::start(port).await.expect("201 Created");
    playing.wait_for_frames(5, Duration::from_secs(20)).await;
    let busy = WhepViewer::start(port).await.err().expect("503 when full");
    assert_eq!(busy.status, 503, "{busy:?}");
    assert!(busy.header("retry-after").is_some(), "{busy:?}");
    assert!(busy.body.contains("maximum of 1 viewers"), "{busy:?}");
    // A refused POST took no slot and left the player undisturbed.
    let before = playing.stats().frames_decoded;
    playing
        .wait_for_frames(before + 15, Duration::from_secs(10))
        .await;
    assert_eq!(playing.delete().await, 200);
    let next = WhepViewer::start(port)
        .await
        .expect("the freed slot is usable");
    next.wait_for_frames(5, Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn whep_offers_get_503_while_the_camera_is_unavailable() {
    require_loopback_only_network();
    // No such device: the agent runs and retries; offers are refused meanwhile.
    let agent = whep_agent(AgentOptions {
        source: "/dev/video-peercam-absent".into(),
        ..Default::default()
    });
    let (observer, status) = status_observer(&agent).await;
    observer
        .wait_for(&status, Duration::from_secs(10), |v| {
            v["state"] == "unavailable"
        })
        .await;
    let refused = WhepViewer::start(agent.http_port).await.err().expect("503");
    assert_eq!(refused.status, 503, "{refused:?}");
    assert!(refused.body.contains("unavailable"), "{refused:?}");
    assert!(refused.header("retry-after").is_none(), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mqtt_and_whep_viewers_share_one_encoder() {
    require_loopback_only_network();
    let fps = 15;
    let agent = whep_agent(AgentOptions {
        fps,
        ..Default::default()
    });
    let mqtt = [
        TestViewer::start(agent.mqtt_port, &agent.device).await,
        TestViewer::start(agent.mqtt_port, &agent.device).await,
    ];
    let whep = [
        WhepViewer::start(agent.http_port).await.expect("201"),
        WhepViewer::start(agent.http_port).await.expect("201"),
    ];
    for viewer in &mqtt {
        viewer.wait_for_frames(30, Duration::from_secs(30)).await;
    }
    for viewer in &whep {
        viewer.wait_for_frames(30, Duration::from_secs(30)).await;
    }
    let first = whep[0].stats().telemetry.last().cloned().unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let last = whep[0].stats().telemetry.last().cloned().unwrap();
    let rate = encoded_per_second(&first, &last);
    println!("figures: 2 MQTT + 2 WHEP viewers, frames_encoded rate {rate:.1}/s at {fps} fps");
    assert!(
        rate > fps as f64 * 0.5 && rate < fps as f64 * 1.5,
        "encoded {rate:.1} frames/s for {fps} fps: one encoder for all"
    );
    assert_eq!(last["viewers"], 4);
}
