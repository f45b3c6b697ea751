//! Telemetry: host/process sampling, rates from the pipeline's counters, and the JSON
//! message sent over each viewer's `telemetry` data channel.
//!
//! One [`TelemetrySampler`] samples once per interval for all viewers; the resulting
//! [`TelemetryMessage`] is serialized once and fanned out. It only reads the pipeline's
//! [`PipelineCounters`]; the pipeline owns and bumps them.
//!
//! This module must never panic, never block the async runtime for long (a sample is a handful
//! of small procfs/sysfs reads, no directory scans after construction, no full process-list
//! refresh), and never emit NaN/infinity (serde_json would turn them into `null`, which a viewer
//! could not parse back as a number).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::pipeline::{CountersSnapshot, PipelineCounters};

use serde::{Deserialize, Serialize};
use sysinfo::{
    Components, CpuRefreshKind, MemoryRefreshKind, Pid, ProcessRefreshKind, ProcessesToUpdate,
    System,
};

/// Where Linux exposes thermal zones; scanned once when the sampler is built.
const THERMAL_CLASS_DIR: &str = "/sys/class/thermal";

/// Readings outside this range are treated as a broken or disabled sensor (some zones report
/// e.g. -273 °C or huge values when unpowered) rather than shown to the viewer.
const PLAUSIBLE_CELSIUS: std::ops::RangeInclusive<f64> = -50.0..=200.0;

/// Rates over one interval between two counter snapshots.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct VideoRates {
    /// Encoded frames per second.
    pub fps: f64,
    /// Encoded output in kilobits (1000 bits) per second.
    pub bitrate_kbps: f64,
    /// Mean encode time per frame encoded in the interval, in milliseconds.
    pub encode_ms_avg: f64,
}

/// Computes the interval rates from `previous` to `current` over `elapsed` wall time.
///
/// Always finite: zero elapsed time or no frames yields 0, and counters that went backwards
/// (a fresh [`PipelineCounters`]) count as no progress instead of underflowing.
pub fn compute_rates(
    previous: &CountersSnapshot,
    current: &CountersSnapshot,
    elapsed: Duration,
) -> VideoRates {
    let frames = current
        .frames_encoded
        .saturating_sub(previous.frames_encoded);
    let bytes = current.bytes_encoded.saturating_sub(previous.bytes_encoded);
    let encode_us = current
        .encode_us_total
        .saturating_sub(previous.encode_us_total);
    let seconds = elapsed.as_secs_f64();

    let per_second = |amount: f64| {
        if seconds > 0.0 {
            finite_or_zero(amount / seconds)
        } else {
            0.0
        }
    };
    let encode_ms_avg = if frames > 0 {
        finite_or_zero(encode_us as f64 / 1000.0 / frames as f64)
    } else {
        0.0
    };
    VideoRates {
        fps: per_second(frames as f64),
        bitrate_kbps: per_second(bytes as f64 * 8.0 / 1000.0),
        encode_ms_avg,
    }
}

/// Whether the camera (or test source) is currently delivering frames.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CameraStatus {
    Online,
    Unavailable,
}

/// The message's `"type"` discriminator; a single variant so parsing rejects other types.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum TelemetryKind {
    #[default]
    Telemetry,
}

/// Host-wide figures.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct SystemTelemetry {
    /// Average across all cores, 0..=100.
    pub cpu_percent: f64,
    pub mem_used_bytes: u64,
    pub mem_total_bytes: u64,
    /// 0 when the platform does not report a load average.
    pub load_avg_1m: f64,
    /// `null` when no temperature sensor is readable (common in VMs and containers).
    pub temperature_c: Option<f64>,
}

/// Figures for this peercam process.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ProcessTelemetry {
    /// As sysinfo reports it: 100 per fully busy core, so up to `cores × 100` on multi-core.
    /// sysinfo needs two nonzero CPU-time readings, so it can read 0 on the first sample of a
    /// process that had used no measurable CPU when the sampler was built.
    pub cpu_percent: f64,
    pub rss_bytes: u64,
}

/// The encoded video stream. Rates cover the last interval; counts are cumulative.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct VideoTelemetry {
    pub width: u32,
    pub height: u32,
    pub fps: f64,
    pub bitrate_kbps: f64,
    pub frames_encoded: u64,
    pub frames_dropped: u64,
    pub keyframes: u64,
    pub encode_ms_avg: f64,
}

/// The JSON object sent over each viewer's `telemetry` data channel.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct TelemetryMessage {
    #[serde(rename = "type")]
    pub kind: TelemetryKind,
    /// Wall-clock time of the sample, milliseconds since the Unix epoch.
    pub ts_ms: u64,
    /// Whole seconds since the sampler was created (i.e. since the service started).
    pub uptime_s: u64,
    pub system: SystemTelemetry,
    pub process: ProcessTelemetry,
    pub video: VideoTelemetry,
    /// Number of connected viewers.
    pub viewers: u64,
    pub camera: CameraStatus,
}

impl TelemetryMessage {
    /// Serializes to compact JSON. Never panics; serialization of this plain struct cannot
    /// fail in practice, but if it ever did a bare `{"type":"telemetry"}` is sent instead.
    pub fn to_json(&self) -> String {
        match serde_json::to_string(self) {
            Ok(json) => json,
            Err(error) => {
                tracing::error!(%error, "failed to serialize telemetry message");
                String::from(r#"{"type":"telemetry"}"#)
            }
        }
    }
}

/// Samples host, process and pipeline figures; build one per service and call
/// [`TelemetrySampler::sample`] once per interval, then send the same message to every viewer.
///
/// `sample` does blocking file I/O, but only a few small procfs/sysfs reads (well under a
/// millisecond on a Pi), so calling it from an async interval task is fine.
pub struct TelemetrySampler {
    /// `None` if sysinfo cannot initialise on this platform; host figures are then 0.
    system: Option<System>,
    own_pid: Option<Pid>,
    temperature: TemperatureSource,
    width: u32,
    height: u32,
    created_at: Instant,
    previous_counters: CountersSnapshot,
    previous_sample_at: Instant,
}

impl TelemetrySampler {
    /// Builds the sampler and does the first CPU refresh, so the first [`sample`] (taken at
    /// least `sysinfo::MINIMUM_CPU_UPDATE_INTERVAL` later) has a baseline. Also picks the
    /// temperature sensor once, so later samples read a single file.
    ///
    /// [`sample`]: TelemetrySampler::sample
    pub fn new(width: u32, height: u32) -> Self {
        let mut system = match System::new() {
            Ok(system) => Some(system),
            Err(error) => {
                tracing::warn!(%error, "system statistics unavailable; telemetry will report 0");
                None
            }
        };
        let own_pid = match sysinfo::get_current_pid() {
            Ok(pid) => Some(pid),
            Err(error) => {
                tracing::warn!(%error, "own process id unavailable; process telemetry will report 0");
                None
            }
        };
        if let Some(system) = system.as_mut() {
            refresh_host(system, own_pid, false);
        }
        let temperature = TemperatureSource::discover();
        let now = Instant::now();
        Self {
            system,
            own_pid,
            temperature,
            width,
            height,
            created_at: now,
            previous_counters: CountersSnapshot::default(),
            previous_sample_at: now,
        }
    }

    /// Takes one sample: refreshes CPU (global + this process), memory, load and temperature,
    /// and computes fps, bitrate and mean encode time over the interval since the previous
    /// sample (for the first sample: since construction, against all-zero counters).
    pub fn sample(
        &mut self,
        counters: &PipelineCounters,
        viewers: usize,
        camera_online: bool,
    ) -> TelemetryMessage {
        let now = Instant::now();
        let current_counters = counters.snapshot();
        let rates = compute_rates(
            &self.previous_counters,
            &current_counters,
            now.saturating_duration_since(self.previous_sample_at),
        );
        self.previous_counters = current_counters;
        self.previous_sample_at = now;

        let (system, process) = self.sample_host();
        TelemetryMessage {
            kind: TelemetryKind::Telemetry,
            ts_ms: crate::clock::unix_ms(),
            uptime_s: now.saturating_duration_since(self.created_at).as_secs(),
            system,
            process,
            video: VideoTelemetry {
                width: self.width,
                height: self.height,
                fps: round_to(rates.fps, 2),
                bitrate_kbps: round_to(rates.bitrate_kbps, 1),
                frames_encoded: current_counters.frames_encoded,
                frames_dropped: current_counters.frames_dropped,
                keyframes: current_counters.keyframes,
                encode_ms_avg: round_to(rates.encode_ms_avg, 2),
            },
            viewers: u64::try_from(viewers).unwrap_or(u64::MAX),
            camera: if camera_online {
                CameraStatus::Online
            } else {
                CameraStatus::Unavailable
            },
        }
    }

    /// Updates the reported frame size (e.g. after the camera negotiated a different mode).
    pub fn set_video_size(&mut self, width: u32, height: u32) {
        self.width = width;
        self.height = height;
    }

    fn sample_host(&mut self) -> (SystemTelemetry, ProcessTelemetry) {
        let temperature_c = self.temperature.read_celsius();
        let load_avg_1m = match System::load_average() {
            Ok(load) => round_to(load.one, 2),
            Err(_) => 0.0,
        };
        let Some(system) = self.system.as_mut() else {
            return (
                SystemTelemetry {
                    cpu_percent: 0.0,
                    mem_used_bytes: 0,
                    mem_total_bytes: 0,
                    load_avg_1m,
                    temperature_c,
                },
                ProcessTelemetry {
                    cpu_percent: 0.0,
                    rss_bytes: 0,
                },
            );
        };
        refresh_host(system, self.own_pid, true);

        let own_process = self.own_pid.and_then(|pid| system.process(pid));
        let system_telemetry = SystemTelemetry {
            cpu_percent: round_to(f64::from(system.global_cpu_usage()), 1).clamp(0.0, 100.0),
            mem_used_bytes: system.used_memory(),
            mem_total_bytes: system.total_memory(),
            load_avg_1m,
            temperature_c,
        };
        let process_telemetry = ProcessTelemetry {
            cpu_percent: own_process
                .map(|process| round_to(f64::from(process.cpu_usage()), 1).max(0.0))
                .unwrap_or(0.0),
            rss_bytes: own_process.map(|process| process.memory()).unwrap_or(0),
        };
        (system_telemetry, process_telemetry)
    }
}

/// Refreshes only what telemetry reports: global CPU usage, RAM (not swap) when `with_memory`,
/// and CPU + RSS of our own process — never the whole process list, never threads.
fn refresh_host(system: &mut System, own_pid: Option<Pid>, with_memory: bool) {
    // Global CPU first: the process refresh divides by the same global CPU time delta.
    system.refresh_cpu_specifics(CpuRefreshKind::nothing().with_usage());
    if with_memory {
        system.refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
    }
    if let Some(pid) = own_pid {
        system.refresh_processes_specifics(
            ProcessesToUpdate::Some(&[pid]),
            true,
            // `nothing()` still includes tasks (threads) on Linux; those are costly and unused.
            ProcessRefreshKind::nothing()
                .with_cpu()
                .with_memory()
                .without_tasks(),
        );
    }
}

// Compile-time check: callers may move the sampler into `spawn_blocking` or another task.
const _: fn() = || {
    fn assert_send<T: Send>() {}
    assert_send::<TelemetrySampler>();
};

/// The temperature sensor chosen at construction.
enum TemperatureSource {
    /// A `/sys/class/thermal/thermal_zone*/temp` file (millidegrees Celsius).
    ThermalZone(PathBuf),
    /// A sysinfo component (hwmon), by index into its list.
    Component {
        components: Components,
        index: usize,
    },
    Unavailable,
}

impl TemperatureSource {
    fn discover() -> Self {
        if let Some(temp_file) = discover_thermal_zone(Path::new(THERMAL_CLASS_DIR)) {
            tracing::info!(path = %temp_file.display(), "temperature from thermal zone");
            return Self::ThermalZone(temp_file);
        }
        if let Ok(components) = Components::new_with_refreshed_list() {
            let readable = components.iter().position(|component| {
                component
                    .temperature()
                    .and_then(|celsius| plausible_celsius(f64::from(celsius)))
                    .is_some()
            });
            if let Some(index) = readable {
                if let Some(component) = components.get(index) {
                    tracing::info!(sensor = component.label(), "temperature from hwmon");
                }
                return Self::Component { components, index };
            }
        }
        tracing::info!("no readable temperature sensor; telemetry reports temperature as null");
        Self::Unavailable
    }

    fn read_celsius(&mut self) -> Option<f64> {
        match self {
            Self::ThermalZone(temp_file) => fs::read_to_string(temp_file)
                .ok()
                .and_then(|text| parse_millidegrees(&text)),
            Self::Component { components, index } => {
                let component = components.get_mut(*index)?;
                component.refresh();
                component
                    .temperature()
                    .and_then(|celsius| plausible_celsius(f64::from(celsius)))
            }
            Self::Unavailable => None,
        }
    }
}

/// Picks the `temp` file of the CPU/SoC thermal zone under `thermal_dir`, else of the first
/// zone (by number) whose reading parses; `None` when no zone is readable.
fn discover_thermal_zone(thermal_dir: &Path) -> Option<PathBuf> {
    let mut zones: Vec<(u64, PathBuf)> = fs::read_dir(thermal_dir)
        .ok()?
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name();
            let number = name.to_str()?.strip_prefix("thermal_zone")?.parse().ok()?;
            Some((number, entry.path()))
        })
        .collect();
    // Numeric order, so thermal_zone10 comes after thermal_zone2.
    zones.sort();

    let mut first_readable = None;
    for (_, zone) in zones {
        let temp_file = zone.join("temp");
        let readable = fs::read_to_string(&temp_file)
            .ok()
            .and_then(|text| parse_millidegrees(&text))
            .is_some();
        if !readable {
            continue;
        }
        let zone_type = fs::read_to_string(zone.join("type")).unwrap_or_default();
        if is_cpu_zone_type(&zone_type) {
            return Some(temp_file);
        }
        first_readable.get_or_insert(temp_file);
    }
    first_readable
}

/// Zone types that measure the CPU/SoC die: Raspberry Pi `cpu-thermal`, Rockchip/Allwinner
/// `soc-thermal`/`cpu_thermal`, Intel `x86_pkg_temp` (rather than e.g. `acpitz` or `wifi`).
fn is_cpu_zone_type(zone_type: &str) -> bool {
    let zone_type = zone_type.trim().to_ascii_lowercase();
    zone_type.starts_with("cpu") || zone_type.starts_with("soc") || zone_type == "x86_pkg_temp"
}

/// Parses a sysfs millidegree reading (`"45123\n"`) into °C rounded to one decimal (45.1);
/// `None` for anything unparsable or physically implausible.
fn parse_millidegrees(text: &str) -> Option<f64> {
    let millidegrees: i64 = text.trim().parse().ok()?;
    // Round in hundredths-of-a-degree first: 45150 / 100 = 451.5 is exact in f64, whereas
    // 45.15 * 10 is not, and would round the wrong way.
    plausible_celsius((millidegrees as f64 / 100.0).round() / 10.0)
}

fn plausible_celsius(celsius: f64) -> Option<f64> {
    let rounded = round_to(celsius, 1);
    (celsius.is_finite() && PLAUSIBLE_CELSIUS.contains(&rounded)).then_some(rounded)
}

/// Rounds to `decimals` places, mapping non-finite input to 0 so JSON stays numeric.
fn round_to(value: f64, decimals: i32) -> f64 {
    let factor = 10f64.powi(decimals);
    finite_or_zero((value * factor).round() / factor)
}

fn finite_or_zero(value: f64) -> f64 {
    if value.is_finite() {
        value
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn snapshot(frames_encoded: u64, bytes_encoded: u64, encode_us_total: u64) -> CountersSnapshot {
        CountersSnapshot {
            frames_encoded,
            bytes_encoded,
            encode_us_total,
            ..CountersSnapshot::default()
        }
    }

    /// A scratch directory unique to this test process and test name, removed on drop.
    struct ScratchDir(PathBuf);

    impl ScratchDir {
        fn new(test_name: &str) -> Self {
            let path = std::env::temp_dir().join(format!(
                "peercam-telemetry-{}-{test_name}",
                std::process::id()
            ));
            let _ = fs::remove_dir_all(&path);
            fs::create_dir_all(&path).unwrap();
            Self(path)
        }

        fn zone(&self, name: &str, zone_type: &str, temp: &str) -> PathBuf {
            let zone = self.0.join(name);
            fs::create_dir_all(&zone).unwrap();
            fs::write(zone.join("type"), format!("{zone_type}\n")).unwrap();
            fs::write(zone.join("temp"), temp).unwrap();
            zone.join("temp")
        }
    }

    impl Drop for ScratchDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn sample_message() -> TelemetryMessage {
        TelemetryMessage {
            kind: TelemetryKind::Telemetry,
            ts_ms: 1_700_000_000_123,
            uptime_s: 42,
            system: SystemTelemetry {
                cpu_percent: 12.5,
                mem_used_bytes: 1_000,
                mem_total_bytes: 4_000,
                load_avg_1m: 0.75,
                temperature_c: None,
            },
            process: ProcessTelemetry {
                cpu_percent: 150.0,
                rss_bytes: 2_048,
            },
            video: VideoTelemetry {
                width: 1280,
                height: 720,
                fps: 30.0,
                bitrate_kbps: 1000.0,
                frames_encoded: 300,
                frames_dropped: 2,
                keyframes: 5,
                encode_ms_avg: 2.5,
            },
            viewers: 3,
            camera: CameraStatus::Unavailable,
        }
    }

    fn sorted_keys(value: &Value) -> Vec<String> {
        let mut keys: Vec<String> = value.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        keys
    }

    #[test]
    fn rates_over_known_interval_are_exact() {
        // 60 frames, 250 000 bytes (2 000 000 bits) and 150 ms of encoding over 2 s.
        let previous = snapshot(100, 50_000, 10_000);
        let current = snapshot(160, 300_000, 160_000);
        let rates = compute_rates(&previous, &current, Duration::from_secs(2));
        assert_eq!(
            rates,
            VideoRates {
                fps: 30.0,
                bitrate_kbps: 1000.0,
                encode_ms_avg: 2.5,
            }
        );
    }

    #[test]
    fn rates_with_sub_second_interval_scale_up() {
        let rates = compute_rates(
            &CountersSnapshot::default(),
            &snapshot(15, 12_500, 30_000),
            Duration::from_millis(500),
        );
        assert_eq!(rates.fps, 30.0);
        assert_eq!(rates.bitrate_kbps, 200.0);
        assert_eq!(rates.encode_ms_avg, 2.0);
    }

    #[test]
    fn rates_with_zero_elapsed_are_zero_not_nan() {
        let rates = compute_rates(
            &CountersSnapshot::default(),
            &snapshot(10, 5_000, 20_000),
            Duration::ZERO,
        );
        assert_eq!(rates.fps, 0.0);
        assert_eq!(rates.bitrate_kbps, 0.0);
        // The per-frame average does not depend on elapsed time.
        assert_eq!(rates.encode_ms_avg, 2.0);
    }

    #[test]
    fn rates_without_new_frames_are_zero() {
        let same = snapshot(10, 5_000, 20_000);
        let rates = compute_rates(&same, &same, Duration::from_secs(1));
        assert_eq!(rates, VideoRates::default());
    }

    #[test]
    fn rates_with_counters_going_backwards_are_zero() {
        let rates = compute_rates(
            &snapshot(100, 50_000, 10_000),
            &snapshot(5, 1_000, 500),
            Duration::from_secs(1),
        );
        assert_eq!(rates, VideoRates::default());
    }

    #[test]
    fn json_has_exactly_the_documented_field_names() {
        let json: Value = serde_json::from_str(&sample_message().to_json()).unwrap();
        assert_eq!(
            sorted_keys(&json),
            ["camera", "process", "system", "ts_ms", "type", "uptime_s", "video", "viewers"]
        );
        assert_eq!(json["type"], "telemetry");
        assert_eq!(
            sorted_keys(&json["system"]),
            [
                "cpu_percent",
                "load_avg_1m",
                "mem_total_bytes",
                "mem_used_bytes",
                "temperature_c"
            ]
        );
        assert_eq!(sorted_keys(&json["process"]), ["cpu_percent", "rss_bytes"]);
        assert_eq!(
            sorted_keys(&json["video"]),
            [
                "bitrate_kbps",
                "encode_ms_avg",
                "fps",
                "frames_dropped",
                "frames_encoded",
                "height",
                "keyframes",
                "width"
            ]
        );
    }

    #[test]
    fn json_values_and_null_temperature() {
        let json: Value = serde_json::from_str(&sample_message().to_json()).unwrap();
        assert_eq!(json["system"]["temperature_c"], Value::Null);
        assert_eq!(json["camera"], "unavailable");
        assert_eq!(json["viewers"], 3);
        assert_eq!(json["video"]["bitrate_kbps"], 1000.0);
        assert_eq!(json["process"]["cpu_percent"], 150.0);
    }

    #[test]
    fn json_with_temperature_and_online_camera() {
        let mut message = sample_message();
        message.system.temperature_c = Some(45.1);
        message.camera = CameraStatus::Online;
        let json: Value = serde_json::from_str(&message.to_json()).unwrap();
        assert_eq!(json["system"]["temperature_c"], 45.1);
        assert_eq!(json["camera"], "online");
    }

    #[test]
    fn json_round_trips_for_a_viewer() {
        let message = sample_message();
        let parsed: TelemetryMessage = serde_json::from_str(&message.to_json()).unwrap();
        assert_eq!(parsed, message);
    }

    #[test]
    fn parsing_rejects_other_message_types() {
        let json = sample_message()
            .to_json()
            .replace(r#""type":"telemetry""#, r#""type":"offer""#);
        assert!(serde_json::from_str::<TelemetryMessage>(&json).is_err());
    }

    #[test]
    fn millidegrees_parse_and_round_to_one_decimal() {
        assert_eq!(parse_millidegrees("45123\n"), Some(45.1));
        assert_eq!(parse_millidegrees("45150"), Some(45.2));
        assert_eq!(parse_millidegrees("-5000\n"), Some(-5.0));
        assert_eq!(parse_millidegrees("0\n"), Some(0.0));
    }

    #[test]
    fn millidegrees_garbage_or_implausible_is_none() {
        assert_eq!(parse_millidegrees("garbage"), None);
        assert_eq!(parse_millidegrees(""), None);
        assert_eq!(parse_millidegrees("45.1"), None);
        assert_eq!(parse_millidegrees("-273000\n"), None);
        assert_eq!(parse_millidegrees("250000\n"), None);
    }

    #[test]
    fn thermal_discovery_prefers_cpu_zone_over_earlier_zone() {
        let dir = ScratchDir::new("prefers-cpu");
        dir.zone("thermal_zone0", "acpitz", "30000\n");
        let cpu = dir.zone("thermal_zone1", "x86_pkg_temp", "52000\n");
        assert_eq!(discover_thermal_zone(&dir.0), Some(cpu));
    }

    #[test]
    fn thermal_discovery_falls_back_to_first_readable_zone_by_number() {
        let dir = ScratchDir::new("first-readable");
        dir.zone("thermal_zone10", "wifi", "40000\n");
        let second = dir.zone("thermal_zone2", "acpitz", "30000\n");
        dir.zone("thermal_zone1", "cpu-thermal", "not a number\n");
        fs::create_dir_all(dir.0.join("cooling_device0")).unwrap();
        assert_eq!(discover_thermal_zone(&dir.0), Some(second));
    }

    #[test]
    fn thermal_discovery_without_readable_zone_is_none() {
        let dir = ScratchDir::new("none-readable");
        dir.zone("thermal_zone0", "soc-thermal", "");
        assert_eq!(discover_thermal_zone(&dir.0), None);
        assert_eq!(discover_thermal_zone(&dir.0.join("missing")), None);
    }

    #[test]
    fn cpu_zone_types() {
        assert!(is_cpu_zone_type("cpu-thermal\n"));
        assert!(is_cpu_zone_type("soc_thermal"));
        assert!(is_cpu_zone_type("x86_pkg_temp"));
        assert!(!is_cpu_zone_type("acpitz"));
        assert!(!is_cpu_zone_type("gpu-thermal"));
    }

    #[test]
    fn real_sample_reports_memory_and_pipeline_figures() {
        let counters = PipelineCounters::default();
        counters.record_encoded(10_000, true, 3_000);
        counters.record_dropped();
        let mut sampler = TelemetrySampler::new(640, 480);
        sampler.set_video_size(1280, 720);

        let message = sampler.sample(&counters, 2, true);
        assert!(message.system.mem_total_bytes > 0);
        assert!(message.process.rss_bytes > 0);
        assert!(message.system.mem_used_bytes <= message.system.mem_total_bytes);
        assert_eq!(message.video.width, 1280);
        assert_eq!(message.video.height, 720);
        assert_eq!(message.video.frames_encoded, 1);
        assert_eq!(message.video.frames_dropped, 1);
        assert_eq!(message.video.keyframes, 1);
        assert_eq!(message.video.encode_ms_avg, 3.0);
        assert_eq!(message.viewers, 2);
        assert_eq!(message.camera, CameraStatus::Online);
        assert!(message.ts_ms > 0);
        // Whatever this machine has, the JSON must parse back (no NaN turned into null).
        let parsed: TelemetryMessage = serde_json::from_str(&message.to_json()).unwrap();
        assert_eq!(parsed, message);

        // Second sample: no new frames, so the interval figures drop to zero.
        let second = sampler.sample(&counters, 0, false);
        assert_eq!(second.video.fps, 0.0);
        assert_eq!(second.video.encode_ms_avg, 0.0);
        assert_eq!(second.video.frames_encoded, 1);
        assert_eq!(second.camera, CameraStatus::Unavailable);
    }
}
