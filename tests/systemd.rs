//! The agent as systemd runs it: the notify protocol over a real NOTIFY_SOCKET datagram
//! socket (READY, STATUS, WATCHDOG, RELOADING with MONOTONIC_USEC then READY, STOPPING),
//! SIGHUP re-reading the config, and telemetry with /proc mounted as a hardened unit mounts
//! it (`ProcSubset=pid`, `ProtectProc=invisible`).

mod common;

use common::viewer::{Observer, TestViewer};
use common::{require_loopback_only_network, Agent, AgentOptions};
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

/// Collects notify datagrams until `done` holds or the timeout passes: every line in `seen`,
/// and each datagram whole (its lines) in `datagrams`.
fn collect(
    socket: &UnixDatagram,
    seen: &mut Vec<String>,
    datagrams: &mut Vec<Vec<String>>,
    timeout: Duration,
    done: impl Fn(&[String]) -> bool,
) {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 4096];
    while !done(seen) && Instant::now() < deadline {
        if let Ok(n) = socket.recv(&mut buf) {
            let lines: Vec<String> = String::from_utf8_lossy(&buf[..n])
                .lines()
                .map(str::to_owned)
                .collect();
            seen.extend(lines.iter().cloned());
            datagrams.push(lines);
        }
    }
    assert!(done(seen), "notify messages so far: {seen:?}");
}

/// This machine's CLOCK_MONOTONIC in µs, the clock systemd reads MONOTONIC_USEC against.
fn monotonic_usec() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec it is given.
    let result = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    assert_eq!(result, 0, "clock_gettime(CLOCK_MONOTONIC)");
    now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn notify_protocol_watchdog_and_reload() {
    require_loopback_only_network();
    let dir = common::temp_dir("notify");
    let socket_path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let agent = Agent::start(AgentOptions {
        env: vec![
            ("NOTIFY_SOCKET".into(), socket_path.display().to_string()),
            // A 1 s watchdog: peercam pings every 0.5 s while frames flow.
            ("WATCHDOG_USEC".into(), "1000000".into()),
        ],
        ..Default::default()
    });
    let mut seen = Vec::new();
    let mut datagrams = Vec::new();
    collect(
        &socket,
        &mut seen,
        &mut datagrams,
        Duration::from_secs(10),
        |s| {
            s.iter().any(|l| l == "READY=1") && s.iter().filter(|l| *l == "WATCHDOG=1").count() >= 3
        },
    );
    assert!(
        seen.iter()
            .any(|l| l == "STATUS=0 viewer(s); camera online"),
        "{seen:?}"
    );

    // SIGHUP: max_viewers applies live (and shows in the retained status); video needs a restart.
    let status_topic = format!("peercam/{}/status", agent.device);
    let observer = Observer::start(agent.mqtt_port, std::slice::from_ref(&status_topic)).await;
    let config = std::fs::read_to_string(&agent.config_path).unwrap();
    let changed = config
        .replace("max_viewers = 8", "max_viewers = 3")
        .replace("fps = 30", "fps = 25");
    std::fs::write(&agent.config_path, changed).unwrap();
    let before_reload = datagrams.len();
    let signalled_at = monotonic_usec();
    agent.signal("HUP");
    collect(
        &socket,
        &mut seen,
        &mut datagrams,
        Duration::from_secs(5),
        |s| s.iter().any(|l| l == "RELOADING=1"),
    );
    let received_at = monotonic_usec();
    // RELOADING=1 carries the agent's CLOCK_MONOTONIC (systemd 253+ requires it), taken
    // between the signal and its arrival here; READY=1 follows in a later datagram.
    let reloading = datagrams[before_reload..]
        .iter()
        .position(|d| d.iter().any(|l| l == "RELOADING=1"))
        .map(|index| before_reload + index)
        .unwrap();
    let monotonic: u64 = datagrams[reloading]
        .iter()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .unwrap_or_else(|| {
            panic!(
                "RELOADING=1 without MONOTONIC_USEC: {:?}",
                datagrams[reloading]
            )
        })
        .parse()
        .expect("MONOTONIC_USEC is a whole number of µs");
    assert!(
        (signalled_at..=received_at).contains(&monotonic),
        "MONOTONIC_USEC={monotonic} is not between the SIGHUP ({signalled_at}) and its receipt ({received_at})"
    );
    assert!(
        !datagrams[reloading].iter().any(|l| l == "READY=1"),
        "READY=1 must come after the reload, not with RELOADING=1: {:?}",
        datagrams[reloading]
    );
    let reloading_line = seen.iter().rposition(|l| l == "RELOADING=1").unwrap();
    collect(
        &socket,
        &mut seen,
        &mut datagrams,
        Duration::from_secs(5),
        |s| s[reloading_line..].iter().any(|l| l == "READY=1"),
    );
    let status = observer
        .wait_for(&status_topic, Duration::from_secs(5), |v| {
            v["max_viewers"] == 3
        })
        .await;
    assert_eq!(
        status["video"]["fps"], 30,
        "video settings wait for a restart"
    );
    agent.wait_for_log(
        "video changed; restart peercam to apply it",
        Duration::from_secs(5),
    );

    // A broken file on SIGHUP keeps the running configuration.
    std::fs::write(&agent.config_path, "[video]\nfps = \"fast\"\n").unwrap();
    agent.signal("HUP");
    agent.wait_for_log("keeping the running configuration", Duration::from_secs(5));
    agent.wait_for_log("video.fps", Duration::from_secs(1));

    let pid = agent.pid();
    let (exit, _) = agent.terminate();
    assert!(exit.success());
    collect(
        &socket,
        &mut seen,
        &mut datagrams,
        Duration::from_secs(3),
        |s| s.iter().any(|l| l == "STOPPING=1"),
    );
    println!("figures: pid {pid} sent {} notify lines", seen.len());
}

/// `/proc`'s `name:  N kB` line, in bytes, as this test (with a full /proc) reads it.
fn host_meminfo_bytes(name: &str) -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let line = meminfo
        .lines()
        .find(|line| line.starts_with(&format!("{name}:")))
        .unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

fn host_load_1m() -> f64 {
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap();
    loadavg.split_whitespace().next().unwrap().parse().unwrap()
}

/// With /proc mounted `subset=pid,hidepid=invisible` in a pid and mount namespace of its own
/// (what `ProcSubset=pid` and `ProtectProc=invisible` give a unit), `/proc/stat` and
/// `/proc/meminfo` do not exist. The telemetry a viewer receives then says `null` for what
/// cannot be read (system CPU, used memory) and true figures for the rest: total memory and
/// load from sysinfo(2), process CPU from the process's CPU clock, RSS from /proc/self.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn telemetry_with_proc_subset_pid_is_true_or_null_never_zero() {
    require_loopback_only_network();
    let mount_proc_as_the_unit_does = "mount -t proc -o subset=pid,hidepid=invisible proc /proc \
        && test ! -e /proc/stat && test ! -e /proc/meminfo && exec \"$0\" \"$@\"";
    let agent = Agent::start(AgentOptions {
        command_prefix: [
            "unshare",
            "--mount",
            "--pid",
            "--fork",
            "--kill-child",
            "--",
            "sh",
            "-c",
            mount_proc_as_the_unit_does,
        ]
        .map(String::from)
        .to_vec(),
        ..Default::default()
    });
    agent.wait_for_log("/proc/stat is unreadable", Duration::from_secs(5));
    let viewer = TestViewer::start(agent.mqtt_port, &agent.device).await;
    let stats = viewer
        .wait_until("3 telemetry messages", Duration::from_secs(20), |s| {
            s.telemetry.len() >= 3
        })
        .await;
    let telemetry = stats.telemetry.last().unwrap();
    let (system, process) = (&telemetry["system"], &telemetry["process"]);
    println!("figures: telemetry with proc subset=pid: system {system} process {process}");

    assert!(system["cpu_percent"].is_null(), "{system}");
    assert!(system["mem_used_bytes"].is_null(), "{system}");
    // sysinfo(2)'s total RAM is the kernel's MemTotal, to the byte.
    assert_eq!(
        system["mem_total_bytes"].as_u64(),
        Some(host_meminfo_bytes("MemTotal")),
        "{system}"
    );
    // The kernel's load figure, read two ways a moment apart: loosely the same.
    let load = system["load_avg_1m"].as_f64().expect("load is read");
    let host_load = host_load_1m();
    assert!(
        (load - host_load).abs() <= 0.5 + host_load / 2.0,
        "load {load} vs /proc/loadavg {host_load}"
    );
    // The agent encodes 30 frames a second: its CPU share is above zero.
    assert!(process["cpu_percent"].as_f64().unwrap() > 0.0, "{process}");
    assert!(
        process["rss_bytes"].as_u64().unwrap() > 1 << 20,
        "{process}"
    );
}
