//! Test harness shared by the end-to-end tests: starts the real `peercam` binary, a real
//! mosquitto when asked, and test viewers that speak only the documented protocol.
//! Networked tests must run inside a loopback-only network namespace (see scripts/).
#![allow(dead_code)]

pub mod prometheus;
pub mod tls;
pub mod viewer;
pub mod whep;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A free loopback TCP port (bound, then released for the process under test).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// True when this process can only reach loopback; networked tests refuse to run otherwise,
/// because ICE would gather and probe every interface of the machine.
pub fn require_loopback_only_network() {
    // /proc/self/net/dev follows the network namespace (sysfs may still show the host's).
    let interfaces: Vec<String> = std::fs::read_to_string("/proc/self/net/dev")
        .unwrap_or_default()
        .lines()
        .skip(2)
        .filter_map(|line| line.split(':').next().map(|name| name.trim().to_owned()))
        .collect();
    let others: Vec<&String> = interfaces
        .iter()
        .filter(|name| name.as_str() != "lo")
        .collect();
    assert!(
        others.is_empty(),
        "networked tests must run in a loopback-only namespace (scripts/in-loopback-netns); found {others:?}"
    );
}

pub fn wait_for_port(port: u16, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("nothing listens on 127.0.0.1:{port} after {timeout:?}");
}

/// An `[auth]` section admitting only access-key holders, with a fresh secret file;
/// `revoked` viewers are refused.
pub fn keys_auth_section(revoked: &[&str]) -> String {
    let secret = temp_dir("secret").join("secret");
    format!(
        "[auth]\nmode = \"keys\"\nsecret_file = {:?}\nrevoked = {revoked:?}\n",
        secret.display().to_string()
    )
}

pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "peercam-test-{name}-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The lines a child prints on stdout and stderr, gathered as they come (and echoed with
/// `[name]` when PEERCAM_TEST_ECHO is set).
pub fn collect_output(child: &mut Child, name: &'static str) -> Arc<Mutex<Vec<String>>> {
    let log = Arc::new(Mutex::new(Vec::new()));
    let streams = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
    ];
    for stream in streams.into_iter().flatten() {
        let log = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if std::env::var_os("PEERCAM_TEST_ECHO").is_some() {
                    eprintln!("[{name}] {line}");
                }
                log.lock().unwrap().push(line);
            }
        });
    }
    log
}

/// A file only its owner may read (mode 0600), as the agent demands of its secrets.
pub fn private_file(name: &str, contents: &str) -> PathBuf {
    let path = temp_dir(name).join("secret");
    std::fs::write(&path, contents).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    path
}

/// Which broker the agent under test talks to.
pub enum BrokerMode {
    Embedded,
    /// The embedded broker on this fixed port (the NAT lab forwards 1883 to the camera).
    EmbeddedOn(u16),
    External(u16),
    /// `mqtt.broker` as given, e.g. "mqtts://localhost:PORT" (its port is `Agent::mqtt_port`).
    Url(String),
}

/// Knobs the tests turn; everything else keeps the product defaults.
pub struct AgentOptions {
    pub device: String,
    /// `video.source`: "testsrc" or a V4L2 device path.
    pub source: String,
    /// Extra lines for the `[video]` section (e.g. `format = "NV12"`).
    pub video_extra: String,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub bitrate_kbps: u32,
    pub keyframe_interval_s: u32,
    pub max_viewers: usize,
    pub connect_timeout_s: u64,
    pub telemetry_interval_ms: u64,
    /// Extra lines for the `[telemetry]` section (e.g. `mqtt_interval_s`).
    pub telemetry_extra: String,
    pub broker: BrokerMode,
    /// Extra lines for the `[mqtt]` section (e.g. credentials and TLS files).
    pub mqtt_extra: String,
    /// Serve HTTP (the page and WHEP) on a free loopback port.
    pub http: bool,
    /// Extra lines for the `[http]` section (e.g. its connection limits).
    pub http_extra: String,
    /// Extra lines for the `[webrtc]` section (e.g. ICE servers).
    pub webrtc_extra: String,
    /// The `[auth]` section: open by default, so tests that are not about access keys need
    /// none (tests/access.rs sets keys).
    pub auth_section: String,
    /// Extra lines for the `[broker]` section (e.g. `tls_listen`).
    pub broker_extra: String,
    /// Extra sections appended to the configuration (e.g. `[whep]`).
    pub extra_sections: String,
    /// Extra environment for the agent process.
    pub env: Vec<(String, String)>,
    /// The address the broker, WebSocket and HTTP listeners bind (the NAT lab's camera
    /// binds its LAN address).
    pub listen_host: String,
    /// `[webrtc] udp_addrs`.
    pub udp_addrs: Vec<String>,
    /// A command the agent runs under, e.g. `lab-exec cam` to start it in the NAT lab's
    /// camera namespace.
    pub command_prefix: Vec<String>,
}

impl Default for AgentOptions {
    fn default() -> Self {
        Self {
            device: "cam1".into(),
            source: "testsrc".into(),
            video_extra: String::new(),
            width: 640,
            height: 480,
            fps: 30,
            bitrate_kbps: 1500,
            keyframe_interval_s: 2,
            max_viewers: 8,
            connect_timeout_s: 15,
            telemetry_interval_ms: 500,
            telemetry_extra: String::new(),
            broker: BrokerMode::Embedded,
            mqtt_extra: String::new(),
            http: false,
            http_extra: String::new(),
            webrtc_extra: String::new(),
            auth_section: "[auth]\nmode = \"open\"".into(),
            broker_extra: String::new(),
            extra_sections: String::new(),
            env: Vec::new(),
            listen_host: "127.0.0.1".into(),
            udp_addrs: vec!["127.0.0.1:0".into()],
            command_prefix: Vec::new(),
        }
    }
}

/// The real `peercam` binary, running with a generated config; killed on drop.
pub struct Agent {
    child: Child,
    pub mqtt_port: u16,
    pub ws_port: u16,
    /// The HTTP listener's port, when `AgentOptions::http` asked for one.
    pub http_port: u16,
    pub device: String,
    pub config_path: PathBuf,
    command_prefix: Vec<String>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Agent {
    /// Starts the agent and waits until it is connected to its broker.
    pub fn start(options: AgentOptions) -> Agent {
        let agent = Self::start_unconnected(options);
        agent.wait_for_log("MQTT connected", Duration::from_secs(20));
        agent
    }

    /// Starts the agent without waiting for its broker connection.
    pub fn start_unconnected(options: AgentOptions) -> Agent {
        let dir = temp_dir("agent");
        let http_port = if options.http { free_port() } else { 0 };
        let (mqtt_port, ws_port, broker_line) = match options.broker {
            BrokerMode::Embedded => {
                let (p, w) = (free_port(), free_port());
                (p, w, "broker = \"embedded\"".to_owned())
            }
            BrokerMode::EmbeddedOn(port) => (port, 0, "broker = \"embedded\"".to_owned()),
            BrokerMode::External(port) => {
                (port, 0, format!("broker = \"mqtt://127.0.0.1:{port}\""))
            }
            BrokerMode::Url(url) => {
                let port = url
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(0);
                (port, 0, format!("broker = {url:?}"))
            }
        };
        let config = format!(
            r#"[device]
id = "{device}"
name = "Test camera"
[video]
source = "{source}"
{video_extra}
width = {width}
height = {height}
fps = {fps}
bitrate_kbps = {bitrate}
keyframe_interval_s = {kf}
[mqtt]
{broker_line}
{mqtt_extra}
[broker]
listen = "{host}:{mqtt_port}"
ws_listen = "{ws}"
{broker_extra}
[webrtc]
max_viewers = {max}
connect_timeout_s = {cto}
udp_addrs = {udp_addrs:?}
{webrtc_extra}
[http]
listen = "{http}"
{http_extra}
[telemetry]
interval_ms = {ti}
{telemetry_extra}
[log]
level = "info"
{auth_section}
{extra_sections}
"#,
            device = options.device,
            source = options.source,
            video_extra = options.video_extra,
            width = options.width,
            height = options.height,
            fps = options.fps,
            bitrate = options.bitrate_kbps,
            kf = options.keyframe_interval_s,
            max = options.max_viewers,
            cto = options.connect_timeout_s,
            ti = options.telemetry_interval_ms,
            telemetry_extra = options.telemetry_extra,
            webrtc_extra = options.webrtc_extra,
            http_extra = options.http_extra,
            auth_section = options.auth_section,
            mqtt_extra = options.mqtt_extra,
            broker_extra = options.broker_extra,
            extra_sections = options.extra_sections,
            host = options.listen_host,
            udp_addrs = options.udp_addrs,
            http = if http_port == 0 {
                "off".to_owned()
            } else {
                format!("{}:{http_port}", options.listen_host)
            },
            ws = if ws_port == 0 {
                "off".to_owned()
            } else {
                format!("{}:{ws_port}", options.listen_host)
            },
        );
        let config_path = dir.join("peercam.toml");
        std::fs::write(&config_path, config).unwrap();
        let mut agent = Self::spawn(
            config_path,
            mqtt_port,
            ws_port,
            options.device,
            options.env,
            options.command_prefix,
        );
        agent.http_port = http_port;
        agent
    }

    fn spawn(
        config_path: PathBuf,
        mqtt_port: u16,
        ws_port: u16,
        device: String,
        env: Vec<(String, String)>,
        command_prefix: Vec<String>,
    ) -> Agent {
        let binary = env!("CARGO_BIN_EXE_peercam");
        let mut command = match command_prefix.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(binary);
                command
            }
            None => Command::new(binary),
        };
        let mut child = command
            .arg("--config")
            .arg(&config_path)
            .env_remove("RUST_LOG")
            .envs(env)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start peercam");
        let log = collect_output(&mut child, "agent");
        Agent {
            child,
            mqtt_port,
            ws_port,
            http_port: 0,
            device,
            config_path,
            command_prefix,
            log,
        }
    }

    /// Stops this agent and starts it again with the same configuration file (as it is
    /// now), without waiting for its broker connection.
    pub fn restart(mut self) -> Agent {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let (config_path, device) = (self.config_path.clone(), self.device.clone());
        Self::spawn(
            config_path,
            self.mqtt_port,
            self.ws_port,
            device,
            Vec::new(),
            self.command_prefix.clone(),
        )
    }

    /// `peercam access --json` for `viewer`, run against this agent's configuration: the
    /// grant (`viewer`, `exp`, `key`, ...) an admin would hand out.
    pub fn access(&self, viewer: &str, expires_in: &str) -> serde_json::Value {
        let output = Command::new(env!("CARGO_BIN_EXE_peercam"))
            .args([
                "access",
                "--viewer",
                viewer,
                "--expires-in",
                expires_in,
                "--json",
            ])
            .arg("--config")
            .arg(&self.config_path)
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        serde_json::from_slice(&output.stdout).unwrap()
    }

    /// True while the agent process runs.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// How many log lines contain `needle`.
    pub fn count_log(&self, needle: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    pub fn wait_for_log(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log.lock().unwrap().iter().any(|l| l.contains(needle)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "agent did not log {needle:?} within {timeout:?}; log:\n{}",
            self.log_lines().join("\n")
        );
    }

    /// Sends a signal by name ("HUP", "TERM", ...).
    pub fn signal(&self, name: &str) {
        send_signal(self.child.id(), name);
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits for exit; returns the exit status and how long it took.
    pub fn terminate(mut self) -> (std::process::ExitStatus, Duration) {
        let started = Instant::now();
        send_signal(self.child.id(), "TERM");
        let status = self.child.wait().unwrap();
        (status, started.elapsed())
    }
}

fn send_signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status();
    assert!(
        status.is_ok_and(|s| s.success()),
        "kill -{name} {pid} failed"
    );
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real mosquitto broker on a loopback port; killed on drop.
pub struct Mosquitto {
    child: Child,
    pub port: u16,
}

impl Mosquitto {
    pub fn start() -> Mosquitto {
        Self::start_on(free_port())
    }

    /// Stops this broker and starts a fresh one (no persistence) on the same port.
    pub fn restart(self) -> Mosquitto {
        let port = self.port;
        drop(self);
        Self::start_on(port)
    }

    pub fn start_on(port: u16) -> Mosquitto {
        Self::start_with(
            port,
            &format!("listener {port} 127.0.0.1\nallow_anonymous true\n"),
        )
    }

    /// A broker with the given listener and security lines (persistence off, errors only).
    pub fn start_with(port: u16, config: &str) -> Mosquitto {
        let binary = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("mosquitto is not installed (scripts/install-test-deps installs it)");
        let dir = temp_dir("mosquitto");
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("{config}persistence false\nlog_dest stderr\nlog_type error\n"),
        )
        .unwrap();
        let child = Command::new(binary)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for_port(port, Duration::from_secs(10));
        Mosquitto { child, port }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The whole service running in this test's process (`service::run`), from a config
/// file written with `config_text`; the test holds its stop token and reload requests.
pub struct InProcessAgent {
    pub config_path: PathBuf,
    pub stop: tokio_util::sync::CancellationToken,
    pub reload: tokio::sync::mpsc::Sender<()>,
    service: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl InProcessAgent {
    /// Starts it and returns once its broker (on `mqtt_port`) takes connections.
    pub fn start(name: &str, config_text: &str, mqtt_port: u16) -> InProcessAgent {
        let config_path = temp_dir(name).join("peercam.toml");
        std::fs::write(&config_path, config_text).unwrap();
        let config = peercam::config::Config::load(&config_path).unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        let (reload, reloads) = tokio::sync::mpsc::channel(1);
        let control = peercam::service::Control {
            stop: stop.clone(),
            reloads,
        };
        let service = tokio::spawn(peercam::service::run(
            config,
            Some(config_path.clone()),
            Box::new(|_| Ok(())),
            control,
        ));
        wait_for_port(mqtt_port, Duration::from_secs(10));
        InProcessAgent {
            config_path,
            stop,
            reload,
            service,
        }
    }

    /// Cancels its stop token and asserts that `run` returns Ok within 5 s.
    pub async fn stop(self) {
        self.stop.cancel();
        let result = tokio::time::timeout(Duration::from_secs(5), self.service)
            .await
            .expect("run returns after its token is cancelled")
            .unwrap();
        assert!(result.is_ok(), "{result:?}");
    }
}

/// A snapshot's width, height and latency stamp (Unix ms; testsrc paints it).
pub fn decode_stamped_jpeg(jpeg: &[u8]) -> (usize, usize, Option<u64>) {
    let options = zune_jpeg::zune_core::options::DecoderOptions::default()
        .jpeg_set_out_colorspace(zune_jpeg::zune_core::colorspace::ColorSpace::YCbCr);
    let mut decoder = zune_jpeg::JpegDecoder::new_with_options(std::io::Cursor::new(jpeg), options);
    let ycbcr = decoder.decode().expect("the snapshot decodes as a JPEG");
    let info = decoder.info().unwrap();
    let (width, height) = (usize::from(info.width), usize::from(info.height));
    let luma: Vec<u8> = ycbcr.chunks_exact(3).map(|pixel| pixel[0]).collect();
    let stamp = peercam::source::stamp::read_stamp(&luma, width, width as u32, height as u32);
    (width, height, stamp)
}

/// A `/proc/PID/status` figure in KiB: `VmRSS`, or `RssAnon` (the private part: heap,
/// stacks; what the binary's mapped code and libraries add is `RssFile`).
pub fn parse_status_kib(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `field` of `/proc/{process}/status` in KiB; `process` is a pid or "self".
pub fn proc_status_kib(process: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{process}/status")).ok()?;
    parse_status_kib(&status, field)
}

/// This test process's anonymous resident memory (`RssAnon`), in KiB.
pub fn own_rss_anon_kib() -> u64 {
    proc_status_kib("self", "RssAnon").expect("RssAnon in /proc/self/status")
}
