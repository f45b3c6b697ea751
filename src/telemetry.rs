//! Telemetry: host/process sampling, rates from the pipeline's counters, and the JSON
//! message sent over each viewer's `telemetry` data channel.
//!
//! One [`TelemetrySampler`] samples once per interval for all viewers; the resulting
//! [`TelemetryMessage`] is serialized once and fanned out. It only reads the pipeline's
//! [`PipelineCounters`]; the pipeline owns and bumps them.
//!
//! Each host or process figure comes from the one source that measures it, and is `null` in
//! the message when that source cannot be read, never 0: the shipped unit once hid `/proc/stat`
//! and `/proc/meminfo` (`ProcSubset=pid`), and a 0 there looked like an idle, empty machine.
//! - system CPU: two readings of `/proc/stat`'s `cpu` line;
//! - memory: `/proc/meminfo` (used = `MemTotal` − `MemAvailable`); without it the total still
//!   comes from sysinfo(2) and the used figure is `null`;
//! - load: sysinfo(2), the kernel's own 1-minute figure (the one `/proc/loadavg` shows), which
//!   needs no `/proc`;
//! - process CPU: this process's CPU clock (`CLOCK_PROCESS_CPUTIME_ID`) over monotonic time;
//! - process RSS: `/proc/self/statm`, which `ProcSubset=pid` keeps.
//!
//! This module must never panic, never block the async runtime for long (a sample is a handful
//! of small procfs/sysfs reads and syscalls, no directory scans after construction), and never
//! emit NaN/infinity (serde_json would turn them into `null`, which means "cannot be read").

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::pipeline::{CountersSnapshot, PipelineCounters};

use serde::{Deserialize, Serialize};
use sysinfo::Components;

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

/// Host-wide figures; each is `null` when its source cannot be read (see the module docs).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct SystemTelemetry {
    /// Average across all cores over the last interval, 0..=100.
    pub cpu_percent: Option<f64>,
    /// `MemTotal` − `MemAvailable`: memory not available to new work without swapping.
    pub mem_used_bytes: Option<u64>,
    pub mem_total_bytes: Option<u64>,
    pub load_avg_1m: Option<f64>,
    /// `null` when no temperature sensor is readable (common in VMs and containers).
    pub temperature_c: Option<f64>,
}

/// Figures for this peercam process; each is `null` when its source cannot be read.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ProcessTelemetry {
    /// CPU time used over the last interval: 100 per fully busy core, so up to `cores × 100`.
    pub cpu_percent: Option<f64>,
    pub rss_bytes: Option<u64>,
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
    /// Of `frames_dropped`: frames the camera delivered malformed.
    pub frames_rejected: u64,
    pub keyframes: u64,
    /// Times the encoder was rebuilt after failing repeatedly.
    pub encoder_restarts: u64,
    pub encode_ms_avg: f64,
}

/// Where a frame's time goes inside the camera, median over the last interval, in ms;
/// `null` when no frame passed that stage (nobody watching).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Default)]
pub struct StageLatencyTelemetry {
    /// From capture to encoded and packetized (the queue before the encoder included).
    pub capture_to_encoded: Option<f64>,
    /// From encoded to every packet handed to a viewer's connection (its queue and the
    /// session task; encryption and the socket write follow on the connection's driver).
    pub encoded_to_sent: Option<f64>,
}

/// Per-frame stage latencies, recorded on the frame path and drained by each sample.
/// Bounded: past [`StageLatencies::MAX_SAMPLES`] an interval's further samples are ignored.
#[derive(Debug, Default)]
pub struct StageLatencies {
    capture_to_encoded_us: Mutex<Vec<u32>>,
    encoded_to_sent_us: Mutex<Vec<u32>>,
}

impl StageLatencies {
    /// Per stage and interval: 30 fps × 50 viewers × a few seconds.
    pub const MAX_SAMPLES: usize = 8192;

    pub fn record_encoded(&self, capture_to_encoded_us: u64) {
        Self::record(&self.capture_to_encoded_us, capture_to_encoded_us);
    }

    pub fn record_sent(&self, encoded_to_sent_us: u64) {
        Self::record(&self.encoded_to_sent_us, encoded_to_sent_us);
    }

    fn record(samples: &Mutex<Vec<u32>>, value_us: u64) {
        let mut samples = samples
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if samples.len() < Self::MAX_SAMPLES {
            samples.push(u32::try_from(value_us).unwrap_or(u32::MAX));
        }
    }

    /// The medians since the last call, which starts the next interval.
    pub fn take_medians(&self) -> StageLatencyTelemetry {
        let median_ms = |samples: &Mutex<Vec<u32>>| {
            let mut taken = std::mem::take(
                &mut *samples
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()),
            );
            median_us(&mut taken).map(|us| round_to(f64::from(us) / 1000.0, 2))
        };
        StageLatencyTelemetry {
            capture_to_encoded: median_ms(&self.capture_to_encoded_us),
            encoded_to_sent: median_ms(&self.encoded_to_sent_us),
        }
    }
}

/// The median (the lower one of an even count); `None` for no samples.
fn median_us(samples: &mut [u32]) -> Option<u32> {
    if samples.is_empty() {
        return None;
    }
    let middle = (samples.len() - 1) / 2;
    Some(*samples.select_nth_unstable(middle).1)
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
    /// Where a frame's time goes inside the camera.
    pub latency_ms: StageLatencyTelemetry,
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
    /// The last `/proc/stat` reading; `None` when it could not be read.
    previous_cpu_times: Option<CpuTimes>,
    /// This process's CPU time at the last sample; `None` when the clock could not be read.
    previous_process_cpu: Option<Duration>,
    temperature: TemperatureSource,
    width: u32,
    height: u32,
    created_at: Instant,
    previous_counters: CountersSnapshot,
    previous_sample_at: Instant,
}

impl TelemetrySampler {
    /// Builds the sampler and reads the CPU counters once, so the first [`sample`] has a
    /// baseline. Also picks the temperature sensor once, so later samples read a single file.
    ///
    /// [`sample`]: TelemetrySampler::sample
    pub fn new(width: u32, height: u32) -> Self {
        let previous_cpu_times = read_cpu_times();
        if previous_cpu_times.is_none() {
            tracing::warn!("{PROC_STAT} is unreadable (e.g. ProcSubset=pid); telemetry reports system CPU as null");
        }
        if read_meminfo().is_none() {
            tracing::warn!("{PROC_MEMINFO} is unreadable (e.g. ProcSubset=pid); telemetry reports used memory as null");
        }
        let temperature = TemperatureSource::discover();
        let now = Instant::now();
        Self {
            previous_cpu_times,
            previous_process_cpu: process_cpu_time(),
            temperature,
            width,
            height,
            created_at: now,
            previous_counters: CountersSnapshot::default(),
            previous_sample_at: now,
        }
    }

    /// Takes one sample: CPU (global + this process), memory, load and temperature,
    /// and computes fps, bitrate and mean encode time over the interval since the previous
    /// sample (for the first sample: since construction, against all-zero counters).
    pub fn sample(
        &mut self,
        counters: &PipelineCounters,
        latencies: &StageLatencies,
        viewers: usize,
        camera_online: bool,
    ) -> TelemetryMessage {
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.previous_sample_at);
        let current_counters = counters.snapshot();
        let rates = compute_rates(&self.previous_counters, &current_counters, elapsed);
        self.previous_counters = current_counters;
        self.previous_sample_at = now;

        let (system, process) = self.sample_host(elapsed);
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
                frames_rejected: current_counters.frames_rejected,
                encoder_restarts: current_counters.encoder_restarts,
                keyframes: current_counters.keyframes,
                encode_ms_avg: round_to(rates.encode_ms_avg, 2),
            },
            viewers: u64::try_from(viewers).unwrap_or(u64::MAX),
            camera: if camera_online {
                CameraStatus::Online
            } else {
                CameraStatus::Unavailable
            },
            latency_ms: latencies.take_medians(),
        }
    }

    /// Updates the reported frame size (e.g. after the camera negotiated a different mode).
    pub fn set_video_size(&mut self, width: u32, height: u32) {
        self.width = width;
        self.height = height;
    }

    /// Host and process figures over the `elapsed` time since the previous sample.
    fn sample_host(&mut self, elapsed: Duration) -> (SystemTelemetry, ProcessTelemetry) {
        let cpu_times = read_cpu_times();
        let cpu_percent = match (self.previous_cpu_times, cpu_times) {
            (Some(previous), Some(current)) => cpu_percent_between(previous, current),
            _ => None,
        };
        self.previous_cpu_times = cpu_times;

        let process_cpu = process_cpu_time();
        let process_cpu_percent = match (self.previous_process_cpu, process_cpu) {
            (Some(previous), Some(current)) => {
                process_cpu_percent(current.saturating_sub(previous), elapsed)
            }
            _ => None,
        };
        self.previous_process_cpu = process_cpu;

        let kernel = kernel_sysinfo();
        let memory = read_meminfo();
        let mem_total_bytes = memory
            .map(|memory| memory.total_bytes)
            .or(kernel.map(|kernel| kernel.total_ram_bytes));
        let system = SystemTelemetry {
            cpu_percent: cpu_percent.map(|percent| round_to(percent, 1)),
            mem_used_bytes: memory.and_then(|memory| memory.used_bytes()),
            mem_total_bytes,
            load_avg_1m: kernel.map(|kernel| round_to(kernel.load_1m, 2)),
            temperature_c: self.temperature.read_celsius(),
        };
        let process = ProcessTelemetry {
            cpu_percent: process_cpu_percent.map(|percent| round_to(percent, 1)),
            rss_bytes: read_own_rss(),
        };
        (system, process)
    }
}

const PROC_STAT: &str = "/proc/stat";
const PROC_MEMINFO: &str = "/proc/meminfo";
const PROC_SELF_STATM: &str = "/proc/self/statm";

/// Jiffies since boot from `/proc/stat`'s aggregate `cpu` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CpuTimes {
    busy: u64,
    total: u64,
}

/// Parses the aggregate `cpu` line of `/proc/stat`: user nice system idle iowait irq softirq
/// steal (guest and guest_nice are already counted in user and nice). Idle time is idle +
/// iowait. `None` without a well-formed line (at least user..idle).
fn parse_cpu_times(proc_stat: &str) -> Option<CpuTimes> {
    let line = proc_stat
        .lines()
        .find(|line| line.split_whitespace().next() == Some("cpu"))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    if fields.len() < 4 {
        return None;
    }
    let total = fields
        .iter()
        .fold(0u64, |sum, &field| sum.saturating_add(field));
    let idle = fields[3].saturating_add(fields.get(4).copied().unwrap_or(0));
    Some(CpuTimes {
        busy: total.saturating_sub(idle),
        total,
    })
}

/// Busy share of the CPU time between two readings, 0..=100; `None` when no time passed
/// (or the counters went backwards), since nothing was measured.
fn cpu_percent_between(previous: CpuTimes, current: CpuTimes) -> Option<f64> {
    let total = current.total.checked_sub(previous.total)?;
    let busy = current.busy.checked_sub(previous.busy)?;
    if total == 0 {
        return None;
    }
    Some((busy as f64 * 100.0 / total as f64).clamp(0.0, 100.0))
}

/// CPU time over wall time, 100 per busy core; `None` for a zero interval.
fn process_cpu_percent(cpu_time: Duration, elapsed: Duration) -> Option<f64> {
    if elapsed.is_zero() {
        return None;
    }
    let percent = cpu_time.as_secs_f64() * 100.0 / elapsed.as_secs_f64();
    percent.is_finite().then_some(percent.max(0.0))
}

/// `/proc/meminfo`'s totals, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Meminfo {
    total_bytes: u64,
    /// `MemAvailable` (Linux 3.14 and later).
    available_bytes: Option<u64>,
}

impl Meminfo {
    fn used_bytes(&self) -> Option<u64> {
        self.available_bytes
            .map(|available| self.total_bytes.saturating_sub(available))
    }
}

/// Parses `MemTotal` and `MemAvailable` (`"MemTotal:  3884100 kB"`); `None` without a total.
fn parse_meminfo(meminfo: &str) -> Option<Meminfo> {
    let field = |name: &str| {
        meminfo.lines().find_map(|line| {
            let rest = line.strip_prefix(name)?.strip_prefix(':')?;
            let kib: u64 = rest.trim().strip_suffix("kB")?.trim().parse().ok()?;
            Some(kib.saturating_mul(1024))
        })
    };
    let total_bytes = field("MemTotal").filter(|&total| total > 0)?;
    Some(Meminfo {
        total_bytes,
        available_bytes: field("MemAvailable"),
    })
}

/// Resident pages, the second field of `/proc/self/statm`, in bytes.
fn parse_statm_rss(statm: &str, page_size: u64) -> Option<u64> {
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages.saturating_mul(page_size)).filter(|&bytes| bytes > 0)
}

fn read_cpu_times() -> Option<CpuTimes> {
    parse_cpu_times(&fs::read_to_string(PROC_STAT).ok()?)
}

fn read_meminfo() -> Option<Meminfo> {
    parse_meminfo(&fs::read_to_string(PROC_MEMINFO).ok()?)
}

fn read_own_rss() -> Option<u64> {
    // SAFETY: sysconf only reads a system constant.
    let page_size = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).ok()?;
    parse_statm_rss(&fs::read_to_string(PROC_SELF_STATM).ok()?, page_size)
}

/// This process's CPU time (all threads), from the kernel's scheduler accounting.
fn process_cpu_time() -> Option<Duration> {
    let mut time = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec it is given.
    let result = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut time) };
    if result != 0 {
        return None;
    }
    Some(Duration::new(
        u64::try_from(time.tv_sec).ok()?,
        u32::try_from(time.tv_nsec).ok()?,
    ))
}

/// What sysinfo(2) tells without `/proc`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct KernelSysinfo {
    total_ram_bytes: u64,
    load_1m: f64,
}

fn kernel_sysinfo() -> Option<KernelSysinfo> {
    // SAFETY: an all-zero `struct sysinfo` is valid; sysinfo(2) only fills it in.
    let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a valid, writable `struct sysinfo`.
    if unsafe { libc::sysinfo(&mut info) } != 0 {
        return None;
    }
    // `totalram` is a C `unsigned long`: u64 here, u32 on 32-bit ARM boards.
    #[allow(clippy::useless_conversion)]
    let total_ram = u64::from(info.totalram);
    Some(KernelSysinfo {
        total_ram_bytes: total_ram.saturating_mul(u64::from(info.mem_unit)),
        // Fixed point with SI_LOAD_SHIFT = 16 fractional bits.
        load_1m: info.loads[0] as f64 / 65536.0,
    })
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
                cpu_percent: Some(12.5),
                mem_used_bytes: Some(1_000),
                mem_total_bytes: Some(4_000),
                load_avg_1m: Some(0.75),
                temperature_c: None,
            },
            process: ProcessTelemetry {
                cpu_percent: Some(150.0),
                rss_bytes: Some(2_048),
            },
            video: VideoTelemetry {
                width: 1280,
                height: 720,
                fps: 30.0,
                bitrate_kbps: 1000.0,
                frames_encoded: 300,
                frames_dropped: 2,
                frames_rejected: 1,
                keyframes: 5,
                encoder_restarts: 0,
                encode_ms_avg: 2.5,
            },
            viewers: 3,
            camera: CameraStatus::Unavailable,
            latency_ms: StageLatencyTelemetry {
                capture_to_encoded: Some(12.5),
                encoded_to_sent: None,
            },
        }
    }

    fn sorted_keys(value: &Value) -> Vec<String> {
        let mut keys: Vec<String> = value.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        keys
    }

    #[test]
    fn stage_latencies_are_each_intervals_median_in_ms() {
        let latencies = StageLatencies::default();
        for us in [9_000, 30_000, 10_000] {
            latencies.record_encoded(us);
        }
        for us in [400, 600] {
            latencies.record_sent(us);
        }
        assert_eq!(
            latencies.take_medians(),
            StageLatencyTelemetry {
                capture_to_encoded: Some(10.0),
                encoded_to_sent: Some(0.4),
            }
        );
        // The next interval starts empty: nothing passed, nothing claimed.
        assert_eq!(latencies.take_medians(), StageLatencyTelemetry::default());
    }

    #[test]
    fn stage_latencies_keep_a_bounded_number_of_samples() {
        let latencies = StageLatencies::default();
        for _ in 0..StageLatencies::MAX_SAMPLES + 100 {
            latencies.record_sent(1_000);
        }
        assert_eq!(
            latencies.encoded_to_sent_us.lock().unwrap().len(),
            StageLatencies::MAX_SAMPLES
        );
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
            [
                "camera",
                "latency_ms",
                "process",
                "system",
                "ts_ms",
                "type",
                "uptime_s",
                "video",
                "viewers"
            ]
        );
        assert_eq!(
            sorted_keys(&json["latency_ms"]),
            ["capture_to_encoded", "encoded_to_sent"]
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
                "encoder_restarts",
                "fps",
                "frames_dropped",
                "frames_encoded",
                "frames_rejected",
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
        assert_eq!(json["system"]["load_avg_1m"], 0.75);
    }

    #[test]
    fn unreadable_figures_are_null_in_json_and_parse_back() {
        let mut message = sample_message();
        message.system.cpu_percent = None;
        message.system.mem_used_bytes = None;
        message.process.cpu_percent = None;
        let json: Value = serde_json::from_str(&message.to_json()).unwrap();
        assert_eq!(json["system"]["cpu_percent"], Value::Null);
        assert_eq!(json["system"]["mem_used_bytes"], Value::Null);
        assert_eq!(json["system"]["mem_total_bytes"], 4_000);
        assert_eq!(json["process"]["cpu_percent"], Value::Null);
        let parsed: TelemetryMessage = serde_json::from_str(&message.to_json()).unwrap();
        assert_eq!(parsed, message);
    }

    const PROC_STAT_SAMPLE: &str = "cpu  100 20 30 800 50 5 5 10 40 0\n\
        cpu0 50 10 15 400 25 2 3 5 20 0\n\
        intr 12345 0 0\nctxt 999\n";

    #[test]
    fn proc_stat_cpu_line_counts_iowait_as_idle_and_guest_once() {
        // Total: user..steal = 1020 (guest is inside user); idle: 800 + 50.
        assert_eq!(
            parse_cpu_times(PROC_STAT_SAMPLE),
            Some(CpuTimes {
                busy: 170,
                total: 1020
            })
        );
        // Old kernels have only user nice system idle.
        assert_eq!(
            parse_cpu_times("cpu 1 2 3 4\n"),
            Some(CpuTimes { busy: 6, total: 10 })
        );
    }

    #[test]
    fn proc_stat_without_cpu_line_is_none() {
        assert_eq!(parse_cpu_times(""), None);
        assert_eq!(parse_cpu_times("cpu0 1 2 3 4\n"), None);
        assert_eq!(parse_cpu_times("cpu 1 2 x 4\n"), None);
        assert_eq!(parse_cpu_times("cpu 1 2 3\n"), None);
    }

    #[test]
    fn cpu_percent_is_the_busy_share_between_readings() {
        let previous = CpuTimes {
            busy: 100,
            total: 1_000,
        };
        let quarter_busy = CpuTimes {
            busy: 150,
            total: 1_200,
        };
        assert_eq!(cpu_percent_between(previous, quarter_busy), Some(25.0));
        let idle = CpuTimes {
            busy: 100,
            total: 1_200,
        };
        assert_eq!(cpu_percent_between(previous, idle), Some(0.0));
        // Nothing measured: no time passed, or the counters went backwards.
        assert_eq!(cpu_percent_between(previous, previous), None);
        assert_eq!(cpu_percent_between(quarter_busy, previous), None);
    }

    #[test]
    fn process_cpu_percent_is_cpu_time_over_wall_time() {
        let percent = |cpu_ms, wall_ms| {
            process_cpu_percent(
                Duration::from_millis(cpu_ms),
                Duration::from_millis(wall_ms),
            )
        };
        assert_eq!(percent(500, 1_000), Some(50.0));
        assert_eq!(percent(3_000, 2_000), Some(150.0));
        assert_eq!(percent(0, 1_000), Some(0.0));
        assert_eq!(percent(10, 0), None);
    }

    #[test]
    fn meminfo_used_is_total_minus_available() {
        let meminfo = "MemTotal:        3884100 kB\nMemFree:          200000 kB\n\
            MemAvailable:    2884100 kB\nBuffers:           1000 kB\n";
        let parsed = parse_meminfo(meminfo).unwrap();
        assert_eq!(parsed.total_bytes, 3_884_100 * 1024);
        assert_eq!(parsed.used_bytes(), Some(1_000_000 * 1024));
    }

    #[test]
    fn meminfo_without_available_has_no_used_figure_and_without_total_is_none() {
        let old_kernel = parse_meminfo("MemTotal: 1024 kB\nMemFree: 512 kB\n").unwrap();
        assert_eq!(old_kernel.total_bytes, 1024 * 1024);
        assert_eq!(old_kernel.used_bytes(), None);
        assert_eq!(parse_meminfo("MemFree: 512 kB\n"), None);
        assert_eq!(parse_meminfo("MemTotal: 0 kB\n"), None);
        assert_eq!(parse_meminfo("MemTotal: lots\n"), None);
        // A field whose name only starts with MemTotal is not MemTotal.
        assert_eq!(parse_meminfo("MemTotalish: 5 kB\n"), None);
    }

    #[test]
    fn statm_rss_is_resident_pages_times_page_size() {
        assert_eq!(
            parse_statm_rss("765 404 375 5 0 123 0\n", 4096),
            Some(404 * 4096)
        );
        assert_eq!(parse_statm_rss("765\n", 4096), None);
        assert_eq!(parse_statm_rss("765 x\n", 4096), None);
        assert_eq!(parse_statm_rss("765 0 0\n", 4096), None);
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

        // Spend some CPU time, so this process's share cannot round to zero.
        let deadline = Instant::now() + Duration::from_millis(50);
        let mut spins = 0u64;
        while Instant::now() < deadline {
            spins = std::hint::black_box(spins + 1);
        }
        let message = sampler.sample(&counters, &StageLatencies::default(), 2, true);
        // This test runs with a full /proc: every host and process figure is readable.
        let total = message.system.mem_total_bytes.unwrap();
        assert!(total > 0);
        assert!(message.system.mem_used_bytes.unwrap() <= total);
        assert!(message.system.cpu_percent.is_some());
        assert!(message.system.load_avg_1m.is_some());
        assert!(message.process.rss_bytes.unwrap() > 0);
        assert!(message.process.cpu_percent.unwrap() > 0.0);
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
        let second = sampler.sample(&counters, &StageLatencies::default(), 0, false);
        assert_eq!(second.video.fps, 0.0);
        assert_eq!(second.video.encode_ms_avg, 0.0);
        assert_eq!(second.video.frames_encoded, 1);
        assert_eq!(second.camera, CameraStatus::Unavailable);
    }
}
