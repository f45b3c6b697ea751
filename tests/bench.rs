//! The benchmark (ignored by the suite; `scripts/bench` runs it in the release profile):
//! the real agent at 1280x720@30 and 2 Mb/s with 1 to 50 receive-only viewers (one
//! decodes and reads the latency stamp, the others only count frames), time to first frame
//! over sequential joins, and an in-process encoder-only baseline. It prints a table and
//! writes bench/results.json, docs/PERFORMANCE.md and docs/performance.svg.
//! It must never assert anything about speed (the machine decides those figures) nor send
//! traffic beyond loopback. Its pure helpers (percentile, slope, parsers, rendering) have
//! ordinary unit tests at the bottom, which the suite runs.

mod common;

use common::viewer::{TestViewer, ViewerStats};
use common::{require_loopback_only_network, Agent, AgentOptions};
use peercam::encode::{EncoderSettings, H264Encoder};
use peercam::source::testsrc::TestSource;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const WIDTH: u32 = 1280;
const HEIGHT: u32 = 720;
const FPS: u32 = 30;
const BITRATE_KBPS: u32 = 2000;
/// The agent's default (`video.keyframe_interval_s`).
const KEYFRAME_INTERVAL_S: u32 = 2;
const DEFAULT_VIEWERS: &[usize] = &[1, 5, 10, 25, 50];
const DEFAULT_SECONDS: u64 = 10;
const DEFAULT_JOINS: usize = 20;
/// Fewer joins make a p95 meaningless.
const MIN_JOINS: usize = 10;
/// `webrtc.max_viewers` cannot go higher.
const MAX_VIEWERS: usize = 64;
/// The machine counts as saturated when its cores were this busy over a window.
const SATURATED_BUSY_PCT: f64 = 90.0;
/// The phases a joining viewer records (tests/common/viewer.rs), in order.
const PHASES: &[&str] = &[
    "answer",
    "ice connected",
    "connected",
    "first rtp",
    "first decoded",
];

// ---------------------------------------------------------------------------------------
// Knobs

#[derive(Debug, Clone, PartialEq, Serialize)]
struct Knobs {
    viewers: Vec<usize>,
    seconds: u64,
    joins: usize,
}

/// The knobs from `PEERCAM_BENCH_VIEWERS`, `PEERCAM_BENCH_SECONDS` and
/// `PEERCAM_BENCH_JOINS` (absent: the defaults). Viewer counts come out sorted, once each.
fn parse_knobs(
    viewers: Option<&str>,
    seconds: Option<&str>,
    joins: Option<&str>,
) -> Result<Knobs, String> {
    let mut counts = match viewers {
        None => DEFAULT_VIEWERS.to_vec(),
        Some(list) => list
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|s| !s.is_empty())
            .map(|s| match s.parse::<usize>() {
                Ok(n) if (1..=MAX_VIEWERS).contains(&n) => Ok(n),
                _ => Err(format!(
                    "PEERCAM_BENCH_VIEWERS: {s:?} is not a viewer count from 1 to {MAX_VIEWERS}"
                )),
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    counts.sort_unstable();
    counts.dedup();
    if counts.is_empty() {
        return Err("PEERCAM_BENCH_VIEWERS: no viewer count given".to_owned());
    }
    let seconds = match seconds {
        None => DEFAULT_SECONDS,
        Some(s) => s
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|&s| s >= 1)
            .ok_or(format!(
                "PEERCAM_BENCH_SECONDS: {s:?} is not a number of seconds >= 1"
            ))?,
    };
    let joins = match joins {
        None => DEFAULT_JOINS,
        Some(s) => s
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|&j| j >= MIN_JOINS)
            .ok_or(format!(
                "PEERCAM_BENCH_JOINS: {s:?} is not a number of joins >= {MIN_JOINS}"
            ))?,
    };
    Ok(Knobs {
        viewers: counts,
        seconds,
        joins,
    })
}

fn knobs_from_env() -> Result<Knobs, String> {
    let var = |name| std::env::var(name).ok();
    parse_knobs(
        var("PEERCAM_BENCH_VIEWERS").as_deref(),
        var("PEERCAM_BENCH_SECONDS").as_deref(),
        var("PEERCAM_BENCH_JOINS").as_deref(),
    )
}

// ---------------------------------------------------------------------------------------
// Pure statistics

/// The nearest-rank `p`th percentile (0 < p <= 100) of `values`; None when empty.
fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// The least-squares slope of y against x; None without two distinct x.
fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
struct Percentiles {
    p50: f64,
    p95: f64,
    p99: f64,
}

fn percentiles(values: &[f64]) -> Option<Percentiles> {
    Some(Percentiles {
        p50: percentile(values, 50.0)?,
        p95: percentile(values, 95.0)?,
        p99: percentile(values, 99.0)?,
    })
}

// ---------------------------------------------------------------------------------------
// /proc readers: pure parsers, thin adapters

/// The command name and utime + stime (clock ticks) of a `/proc/.../stat` line. The name
/// sits in parentheses and may hold spaces and parentheses itself.
fn parse_stat(stat: &str) -> Option<(String, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_owned();
    let fields: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    // After the name: state is field 3 of the line; utime and stime are fields 14 and 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

/// Busy and total ticks of all cores from `/proc/stat`'s `cpu` line (idle and iowait are
/// not busy; guest time is already in user time).
fn parse_machine_ticks(proc_stat: &str) -> Option<(u64, u64)> {
    let line = proc_stat.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|t| t.parse().ok())
        .collect::<Option<_>>()?;
    let total: u64 = ticks.iter().sum();
    let idle = ticks.get(3)? + ticks.get(4)?;
    Some((total - idle, total))
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// CPU time of this whole process, in seconds: openh264 encodes slices on threads of its
/// own, and nothing else in the process is busy while the baseline runs.
fn process_cpu_seconds() -> f64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec for clock_gettime to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut now) };
    now.tv_sec as f64 + now.tv_nsec as f64 / 1e9
}

fn read_proc(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// CPU counters at one instant: the agent, each of its threads (by tid: name, ticks),
/// this test process and the whole machine.
struct CpuSnapshot {
    at: Instant,
    agent_ticks: u64,
    agent_threads: BTreeMap<String, (String, u64)>,
    own_ticks: u64,
    machine: (u64, u64),
}

fn snapshot(pid: u32) -> CpuSnapshot {
    let mut agent_threads = BTreeMap::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            let stat = read_proc(&format!("{}/stat", task.path().display()));
            if let Some(thread) = parse_stat(&stat) {
                agent_threads.insert(task.file_name().to_string_lossy().into_owned(), thread);
            }
        }
    }
    let ticks = |path: &str| parse_stat(&read_proc(path)).map_or(0, |(_, t)| t);
    CpuSnapshot {
        at: Instant::now(),
        agent_ticks: ticks(&format!("/proc/{pid}/stat")),
        agent_threads,
        own_ticks: ticks("/proc/self/stat"),
        machine: parse_machine_ticks(&read_proc("/proc/stat")).unwrap_or((0, 0)),
    }
}

/// The agent's resident memory: all of it and its anonymous part, MiB.
fn rss_mib(pid: u32) -> (f64, f64) {
    let status = read_proc(&format!("/proc/{pid}/status"));
    let mib = |field| common::parse_status_kib(&status, field).unwrap_or(0) as f64 / 1024.0;
    (mib("VmRSS"), mib("RssAnon"))
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A thread name's share of one core over a window (threads of one name summed).
#[derive(Debug, Clone, PartialEq, Serialize)]
struct ThreadCpu {
    name: String,
    threads: usize,
    cpu_pct: f64,
}

/// CPU use between two snapshots, in % of one core.
struct CpuWindow {
    seconds: f64,
    agent_pct: f64,
    own_pct: f64,
    /// Busy share of all cores of the machine, in %.
    machine_busy_pct: f64,
    /// What every other process on the machine used (builds, other tests), in % of one core.
    others_pct: f64,
    agent_threads: Vec<ThreadCpu>,
}

fn cpu_window(before: &CpuSnapshot, after: &CpuSnapshot) -> CpuWindow {
    let seconds = (after.at - before.at).as_secs_f64();
    let pct = |ticks: u64| ticks as f64 / clock_ticks_per_second() / seconds * 100.0;
    let mut by_name: BTreeMap<String, (usize, u64)> = BTreeMap::new();
    for (tid, (name, ticks)) in &after.agent_threads {
        let earlier = before.agent_threads.get(tid).map_or(0, |(_, t)| *t);
        let entry = by_name.entry(name.clone()).or_default();
        entry.0 += 1;
        entry.1 += ticks.saturating_sub(earlier);
    }
    let mut agent_threads: Vec<ThreadCpu> = by_name
        .into_iter()
        .map(|(name, (threads, ticks))| ThreadCpu {
            name,
            threads,
            cpu_pct: pct(ticks),
        })
        .collect();
    agent_threads.sort_by(|a, b| b.cpu_pct.total_cmp(&a.cpu_pct));
    let (busy, total) = (
        after.machine.0.saturating_sub(before.machine.0),
        after.machine.1.saturating_sub(before.machine.1),
    );
    let agent_pct = pct(after.agent_ticks.saturating_sub(before.agent_ticks));
    let own_pct = pct(after.own_ticks.saturating_sub(before.own_ticks));
    CpuWindow {
        seconds,
        agent_pct,
        own_pct,
        others_pct: (pct(busy) - agent_pct - own_pct).max(0.0),
        machine_busy_pct: if total == 0 {
            0.0
        } else {
            busy as f64 / total as f64 * 100.0
        },
        agent_threads,
    }
}

// ---------------------------------------------------------------------------------------
// Results

#[derive(Debug, Clone, Serialize)]
struct Machine {
    cpu_model: String,
    cores: usize,
    kernel: String,
    date: String,
    commit: String,
    profile: String,
}

#[derive(Debug, Clone, Serialize)]
struct Row {
    viewers: usize,
    agent_cpu_pct: f64,
    rss_mib: f64,
    /// The anonymous part of `rss_mib`; the rest is mapped code (the binary, libraries).
    rss_anon_mib: f64,
    /// Frames each viewer received per second over the window: the slowest and the median.
    fps_min: f64,
    fps_median: f64,
    /// Keyframes a viewer received over the window: fewest and most.
    keyframes_min: u64,
    keyframes_max: u64,
    /// Capture-to-decode latency of the decoding viewer over the window, ms.
    latency_ms: Option<Percentiles>,
    latency_samples: usize,
    test_process_cpu_pct: f64,
    machine_busy_pct: f64,
    /// Every other process on the machine, % of one core.
    other_processes_cpu_pct: f64,
    saturated: bool,
    agent_threads: Vec<ThreadCpu>,
}

#[derive(Debug, Clone, Serialize)]
struct Idle {
    agent_cpu_pct: f64,
    rss_mib: f64,
    rss_anon_mib: f64,
}

#[derive(Debug, Clone, Serialize)]
struct PhaseMedian {
    phase: String,
    median_ms: Option<f64>,
    joins_seen: usize,
}

#[derive(Debug, Clone, Serialize)]
struct FirstFrame {
    joins: usize,
    p50_ms: Option<f64>,
    p95_ms: Option<f64>,
    phases: Vec<PhaseMedian>,
}

#[derive(Debug, Clone, Serialize)]
struct Baseline {
    seconds: f64,
    frames_encoded: u64,
    bitrate_kbps: f64,
    cpu_pct: f64,
    /// Agent CPU with one viewer divided by this baseline's CPU.
    agent_1_viewer_ratio: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
struct Slopes {
    cpu_pct_per_viewer: Option<f64>,
    rss_mib_per_viewer: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
struct Report {
    machine: Machine,
    command: String,
    width: u32,
    height: u32,
    fps: u32,
    bitrate_kbps: u32,
    keyframe_interval_s: u32,
    knobs: Knobs,
    idle: Idle,
    rows: Vec<Row>,
    first_frame: FirstFrame,
    encoder_baseline: Baseline,
    slopes: Slopes,
}

fn slopes(rows: &[Row]) -> Slopes {
    let line = |y: fn(&Row) -> f64| {
        slope(
            &rows
                .iter()
                .map(|r| (r.viewers as f64, y(r)))
                .collect::<Vec<_>>(),
        )
    };
    Slopes {
        cpu_pct_per_viewer: line(|r| r.agent_cpu_pct),
        rss_mib_per_viewer: line(|r| r.rss_mib),
    }
}

fn first_frame_figures(joins: &[ViewerStats]) -> FirstFrame {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let firsts: Vec<f64> = joins
        .iter()
        .filter_map(|s| s.first_frame_after_offer.map(ms))
        .collect();
    let phases = PHASES
        .iter()
        .map(|&phase| {
            let seen: Vec<f64> = joins
                .iter()
                .filter_map(|s| s.phase(phase).map(ms))
                .collect();
            PhaseMedian {
                phase: phase.to_owned(),
                median_ms: percentile(&seen, 50.0),
                joins_seen: seen.len(),
            }
        })
        .collect();
    FirstFrame {
        joins: joins.len(),
        p50_ms: percentile(&firsts, 50.0),
        p95_ms: percentile(&firsts, 95.0),
        phases,
    }
}

/// What every viewer received over a window (stats before and after, in the same order;
/// the first viewer decodes) and the agent's CPU over it.
fn row(
    viewers_before: &[ViewerStats],
    viewers_after: &[ViewerStats],
    cpu: &CpuWindow,
    (rss_mib, rss_anon_mib): (f64, f64),
) -> Row {
    let pairs = || viewers_before.iter().zip(viewers_after);
    let fps: Vec<f64> = pairs()
        .map(|(b, a)| (a.frames_received - b.frames_received) as f64 / cpu.seconds)
        .collect();
    let keyframes: Vec<u64> = pairs()
        .map(|(b, a)| a.keyframes_received - b.keyframes_received)
        .collect();
    let latencies: Vec<f64> = match (viewers_before.first(), viewers_after.first()) {
        (Some(b), Some(a)) => a.latencies_ms[b.latencies_ms.len()..]
            .iter()
            .map(|&ms| ms as f64)
            .collect(),
        _ => Vec::new(),
    };
    Row {
        viewers: viewers_after.len(),
        agent_cpu_pct: cpu.agent_pct,
        rss_mib,
        rss_anon_mib,
        fps_min: fps.iter().copied().fold(f64::INFINITY, f64::min),
        fps_median: percentile(&fps, 50.0).unwrap_or(0.0),
        keyframes_min: keyframes.iter().copied().min().unwrap_or(0),
        keyframes_max: keyframes.iter().copied().max().unwrap_or(0),
        latency_ms: percentiles(&latencies),
        latency_samples: latencies.len(),
        test_process_cpu_pct: cpu.own_pct,
        machine_busy_pct: cpu.machine_busy_pct,
        other_processes_cpu_pct: cpu.others_pct,
        saturated: cpu.machine_busy_pct >= SATURATED_BUSY_PCT,
        agent_threads: cpu.agent_threads.clone(),
    }
}

// ---------------------------------------------------------------------------------------
// Rendering (pure)

fn fixed(value: Option<f64>, decimals: usize) -> String {
    value.map_or("–".to_owned(), |v| format!("{v:.decimals$}"))
}

/// The agent's threads that used at least 0.5% of a core, busiest first, one line.
fn thread_summary(threads: &[ThreadCpu]) -> String {
    let shown: Vec<String> = threads
        .iter()
        .filter(|t| t.cpu_pct >= 0.5)
        .map(|t| match t.threads {
            1 => format!("{} {:.1}", t.name, t.cpu_pct),
            n => format!("{} ×{n} {:.1}", t.name, t.cpu_pct),
        })
        .collect();
    if shown.is_empty() {
        "–".to_owned()
    } else {
        shown.join(", ")
    }
}

fn command_line(knobs: &Knobs) -> String {
    let viewers: Vec<String> = knobs.viewers.iter().map(usize::to_string).collect();
    format!(
        "PEERCAM_BENCH_VIEWERS=\"{}\" PEERCAM_BENCH_SECONDS={} PEERCAM_BENCH_JOINS={} scripts/bench",
        viewers.join(" "),
        knobs.seconds,
        knobs.joins
    )
}

fn results_table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| viewers | agent CPU % | RSS MiB (anonymous) | fps min / median | latency p50 / p95 / p99 ms | keyframes | machine busy % |\n\
         |---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let latency = r.latency_ms.map_or("–".to_owned(), |l| {
            format!("{:.0} / {:.0} / {:.0}", l.p50, l.p95, l.p99)
        });
        let _ = writeln!(
            out,
            "| {} | {:.1} | {:.1} ({:.1}) | {:.1} / {:.1} | {latency} | {}–{} | {:.0}{} |",
            r.viewers,
            r.agent_cpu_pct,
            r.rss_mib,
            r.rss_anon_mib,
            r.fps_min,
            r.fps_median,
            r.keyframes_min,
            r.keyframes_max,
            r.machine_busy_pct,
            if r.saturated { " (saturated)" } else { "" }
        );
    }
    out
}

fn threads_table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| viewers | agent threads, % of one core | test process (viewers) % | other processes % |\n|---:|---|---:|---:|\n",
    );
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {:.0} |",
            r.viewers,
            thread_summary(&r.agent_threads),
            r.test_process_cpu_pct,
            r.other_processes_cpu_pct
        );
    }
    out
}

/// docs/PERFORMANCE.md.
fn render_markdown(report: &Report) -> String {
    let m = &report.machine;
    let b = &report.encoder_baseline;
    let f = &report.first_frame;
    let mut out = String::new();
    let _ = writeln!(out, "# Performance\n");
    let _ = writeln!(
        out,
        "Generated by `scripts/bench` (tests/bench.rs) from bench/results.json; do not edit by hand.\n"
    );
    let _ = writeln!(
        out,
        "Machine: {} ({} cores), Linux {}, {} build of {}, {}.\n",
        m.cpu_model, m.cores, m.kernel, m.profile, m.commit, m.date
    );
    let _ = writeln!(out, "Command:\n\n    {}\n", report.command);
    let _ = writeln!(
        out,
        "The agent (release binary) streams testsrc at {}x{}@{}, {} kb/s, a keyframe every {} s, \
         to N receive-only viewers on loopback in this test's process: one decodes and reads the \
         latency stamp, the others only depacketize and count. Each row is a {} s window. \
         CPU is % of one core from /proc (utime + stime); fps is frames received per second per \
         viewer; latency is capture to decode, from the stamp; keyframes are per viewer over the \
         window; machine busy counts all cores and every process (the viewers too).\n",
        report.width,
        report.height,
        report.fps,
        report.bitrate_kbps,
        report.keyframe_interval_s,
        report.knobs.seconds
    );
    out.push_str(&results_table(&report.rows));
    let _ = writeln!(
        out,
        "\nIdle (no viewer; capture runs, the encoder idles): agent CPU {:.1}%, RSS {:.1} MiB ({:.1} anonymous).\n\
         The anonymous part is the heap and stacks; the rest is the binary's code and the libraries \
         mapped from disk, which the kernel can drop and reread. The kernel maps code in 64 KiB \
         windows around each page that faults (fault-around); release builds put the code the \
         agent runs in one block at the front of the binary (build.rs, link/hot-code.ld), so \
         little code beyond it counts as resident.\n",
        report.idle.agent_cpu_pct, report.idle.rss_mib, report.idle.rss_anon_mib
    );
    if report.rows.iter().any(|r| r.saturated) {
        let _ = writeln!(
            out,
            "Rows marked saturated had all cores at least {SATURATED_BUSY_PCT:.0}% busy over the window: \
             the agent's threads waited for a core, which shows in the latency more than in its CPU. \
             The table below splits the machine's CPU between the agent, the test process (the \
             viewers) and other processes.\n"
        );
    }
    let _ = writeln!(
        out,
        "![agent CPU and latency p50 against viewers](performance.svg)\n"
    );
    let _ = writeln!(out, "## Where the agent's CPU goes\n");
    let _ = writeln!(
        out,
        "Threads by name. openh264 encodes each picture's slices on threads of its own, which \
         carry the process's name (`peercam`, like the main thread): `encode` and those \
         together are the encoder.\n"
    );
    out.push_str(&threads_table(&report.rows));
    let _ = writeln!(out, "\n## Marginal cost per viewer\n");
    let _ = writeln!(
        out,
        "Least-squares slope over the rows: {} % of one core and {} MiB RSS per extra viewer.\n",
        fixed(report.slopes.cpu_pct_per_viewer, 2),
        fixed(report.slopes.rss_mib_per_viewer, 2)
    );
    let _ = writeln!(out, "## First frame after the offer\n");
    let _ = writeln!(
        out,
        "{} sequential joins of one decoding viewer on an otherwise idle agent: p50 {} ms, p95 {} ms. \
         Median time after the offer of each phase the viewer saw:\n",
        f.joins,
        fixed(f.p50_ms, 0),
        fixed(f.p95_ms, 0)
    );
    out.push_str("| phase | median ms | joins |\n|---|---:|---:|\n");
    for p in &f.phases {
        let _ = writeln!(
            out,
            "| {} | {} | {} |",
            p.phase,
            fixed(p.median_ms, 0),
            p.joins_seen
        );
    }
    let _ = writeln!(out, "\n## Encoder-only baseline\n");
    let _ = writeln!(
        out,
        "The same testsrc frames through the same openh264 settings in-process, paced at {} fps, \
         no network: {:.1}% of one core ({} frames in {:.1} s, {:.0} kb/s). Agent with one viewer / \
         encoder only: {}.",
        report.fps,
        b.cpu_pct,
        b.frames_encoded,
        b.seconds,
        b.bitrate_kbps,
        fixed(b.agent_1_viewer_ratio, 2)
    );
    out
}

/// docs/performance.svg: agent CPU and latency p50 against viewers, one panel each.
fn draw_plot(rows: &[Row], path: &Path) -> Result<(), String> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (800, 640)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let (upper, lower) = root.split_vertically(320);
    let max_viewers = rows.iter().map(|r| r.viewers).max().unwrap_or(1) as f64;
    let cpu: Vec<(f64, f64)> = rows
        .iter()
        .map(|r| (r.viewers as f64, r.agent_cpu_pct))
        .collect();
    let latency: Vec<(f64, f64)> = rows
        .iter()
        .filter_map(|r| Some((r.viewers as f64, r.latency_ms?.p50)))
        .collect();
    let panels = [
        (&upper, "Agent CPU, % of one core", cpu, RED),
        (&lower, "Latency p50, ms (capture to decode)", latency, BLUE),
    ];
    for (area, title, points, colour) in panels {
        let top = points.iter().map(|p| p.1).fold(1.0, f64::max) * 1.15;
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(48)
            .build_cartesian_2d(0f64..max_viewers * 1.05, 0f64..top)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .max_light_lines(0)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .x_desc("viewers")
            .draw()
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 4, colour.filled())))
            .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())
}

// ---------------------------------------------------------------------------------------
// Measurement (I/O)

fn machine(profile: &str) -> Machine {
    let cpu_model = read_proc("/proc/cpuinfo")
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU".to_owned(), |(_, m)| m.trim().to_owned());
    let run = |program: &str, args: &[&str]| {
        std::process::Command::new(program)
            .args(args)
            .current_dir(repo_root())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let commit = std::env::var("PEERCAM_BENCH_COMMIT")
        .ok()
        .or_else(|| run("git", &["rev-parse", "--short", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_owned());
    Machine {
        cpu_model,
        cores: cores(),
        kernel: read_proc("/proc/sys/kernel/osrelease").trim().to_owned(),
        date: run("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_default(),
        commit,
        profile: profile.to_owned(),
    }
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Testsrc frames through openh264 with the agent's settings (and its threads), paced
/// at the frame rate (the source sleeps to each frame's deadline), for `seconds`.
fn encoder_baseline(seconds: u64) -> Baseline {
    let mut source = TestSource::new(WIDTH, HEIGHT, FPS).expect("testsrc");
    let mut encoder = H264Encoder::new(EncoderSettings {
        width: WIDTH,
        height: HEIGHT,
        fps: FPS,
        bitrate_kbps: BITRATE_KBPS,
        keyframe_interval_s: KEYFRAME_INTERVAL_S,
    })
    .expect("openh264 encoder");
    let window = Duration::from_secs(seconds);
    let (started, cpu_before) = (Instant::now(), process_cpu_seconds());
    let (mut frames, mut bytes) = (0u64, 0usize);
    while started.elapsed() < window {
        let frame = source.next_frame();
        if let Ok(Some(encoded)) = encoder.encode(&frame, false) {
            frames += 1;
            bytes += encoded.access_unit.len();
        }
    }
    let (wall, cpu) = (
        started.elapsed().as_secs_f64(),
        process_cpu_seconds() - cpu_before,
    );
    Baseline {
        seconds: wall,
        frames_encoded: frames,
        bitrate_kbps: bytes as f64 * 8.0 / wall / 1000.0,
        cpu_pct: cpu / wall * 100.0,
        agent_1_viewer_ratio: None,
    }
}

fn bench_agent() -> Agent {
    Agent::start(AgentOptions {
        width: WIDTH,
        height: HEIGHT,
        fps: FPS,
        bitrate_kbps: BITRATE_KBPS,
        keyframe_interval_s: KEYFRAME_INTERVAL_S,
        max_viewers: MAX_VIEWERS,
        connect_timeout_s: 60,
        // Up to 50 viewers offer at once: room for all of them.
        webrtc_extra: "max_pending = 64\noffers_per_s = 100\noffer_burst = 100".into(),
        ..Default::default()
    })
}

/// One decoding viewer joins, gets its first frame and leaves, `joins` times in a row.
async fn sequential_joins(agent: &Agent, joins: usize) -> Vec<ViewerStats> {
    let mut seen = Vec::new();
    for _ in 0..joins {
        let viewer = TestViewer::start(agent.mqtt_port, &agent.device).await;
        seen.push(viewer.wait_for_frames(1, Duration::from_secs(30)).await);
        viewer.leave().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    seen
}

/// Adds viewers until there are `target`: the first decodes, the others only count. All
/// offer at once, then each must have received 30 frames.
async fn grow_viewers(agent: &Agent, viewers: &mut Vec<TestViewer>, target: usize) {
    if viewers.is_empty() {
        viewers.push(TestViewer::start(agent.mqtt_port, &agent.device).await);
    }
    let joining: Vec<_> = (viewers.len()..target)
        .map(|_| {
            let (port, device) = (agent.mqtt_port, agent.device.clone());
            tokio::spawn(async move { TestViewer::start_counting(port, &device).await })
        })
        .collect();
    for viewer in joining {
        viewers.push(viewer.await.expect("viewer starts"));
    }
    for viewer in viewers.iter() {
        viewer
            .wait_until("30 frames received", Duration::from_secs(120), |s| {
                s.frames_received >= 30
            })
            .await;
    }
}

async fn measure(pid: u32, viewers: &[TestViewer], seconds: u64) -> Row {
    let stats_before: Vec<ViewerStats> = viewers.iter().map(TestViewer::stats).collect();
    let before = snapshot(pid);
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let after = snapshot(pid);
    let stats_after: Vec<ViewerStats> = viewers.iter().map(TestViewer::stats).collect();
    row(
        &stats_before,
        &stats_after,
        &cpu_window(&before, &after),
        rss_mib(pid),
    )
}

fn print_row(r: &Row) {
    println!(
        "bench: {} viewer(s): agent {:.1}% CPU, RSS {:.1} MiB ({:.1} anonymous), fps min {:.1} median {:.1}, latency {:?} ms ({} samples), keyframes {}-{}, test process {:.0}%, other processes {:.0}%, machine busy {:.0}% of {} cores{}",
        r.viewers, r.agent_cpu_pct, r.rss_mib, r.rss_anon_mib, r.fps_min, r.fps_median, r.latency_ms, r.latency_samples,
        r.keyframes_min, r.keyframes_max, r.test_process_cpu_pct, r.other_processes_cpu_pct, r.machine_busy_pct, cores(),
        if r.saturated { " (SATURATED: the agent waits for a core; see the CPU split)" } else { "" }
    );
    println!(
        "bench: {} viewer(s): agent threads: {}",
        r.viewers,
        thread_summary(&r.agent_threads)
    );
}

fn write_outputs(report: &Report) {
    let root = repo_root();
    std::fs::create_dir_all(root.join("bench")).unwrap();
    let json = serde_json::to_string_pretty(report).unwrap();
    std::fs::write(root.join("bench/results.json"), json + "\n").unwrap();
    std::fs::write(root.join("docs/PERFORMANCE.md"), render_markdown(report)).unwrap();
    draw_plot(&report.rows, &root.join("docs/performance.svg")).expect("draw the plot");
    println!("bench: wrote bench/results.json, docs/PERFORMANCE.md and docs/performance.svg");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "benchmark: scripts/bench runs it"]
async fn agent_at_720p30_with_many_viewers() {
    require_loopback_only_network();
    let knobs = knobs_from_env().unwrap_or_else(|e| panic!("{e}"));
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    println!("bench: {knobs:?}, {profile} build");

    let seconds = knobs.seconds;
    let mut baseline = tokio::task::spawn_blocking(move || encoder_baseline(seconds))
        .await
        .unwrap();
    println!("bench: encoder only: {baseline:?}");

    let agent = bench_agent();
    let pid = agent.pid();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = measure(pid, &[], knobs.seconds).await;
    let idle = Idle {
        agent_cpu_pct: idle.agent_cpu_pct,
        rss_mib: idle.rss_mib,
        rss_anon_mib: idle.rss_anon_mib,
    };
    println!("bench: idle: {idle:?}");

    let first_frame = first_frame_figures(&sequential_joins(&agent, knobs.joins).await);
    println!("bench: first frame: {first_frame:?}");

    let mut viewers = Vec::new();
    let mut rows = Vec::new();
    for &count in &knobs.viewers {
        grow_viewers(&agent, &mut viewers, count).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let row = measure(pid, &viewers, knobs.seconds).await;
        print_row(&row);
        rows.push(row);
    }
    for viewer in viewers {
        viewer.leave().await;
    }

    baseline.agent_1_viewer_ratio = rows
        .iter()
        .find(|r| r.viewers == 1)
        .map(|r| r.agent_cpu_pct / baseline.cpu_pct);
    let report = Report {
        machine: machine(profile),
        command: command_line(&knobs),
        width: WIDTH,
        height: HEIGHT,
        fps: FPS,
        bitrate_kbps: BITRATE_KBPS,
        keyframe_interval_s: KEYFRAME_INTERVAL_S,
        slopes: slopes(&rows),
        knobs,
        idle,
        rows,
        first_frame,
        encoder_baseline: baseline,
    };
    println!("\n{}", render_markdown(&report));
    write_outputs(&report);
}

// ---------------------------------------------------------------------------------------
// The pure helpers' tests (ordinary tests: the suite runs them)

#[test]
fn percentile_is_nearest_rank() {
    let values: Vec<f64> = (1..=100).map(f64::from).collect();
    assert_eq!(percentile(&values, 50.0), Some(50.0));
    assert_eq!(percentile(&values, 95.0), Some(95.0));
    assert_eq!(percentile(&values, 99.0), Some(99.0));
    assert_eq!(percentile(&values, 100.0), Some(100.0));
    assert_eq!(percentile(&[3.0, 1.0, 2.0], 50.0), Some(2.0));
    assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
    assert_eq!(percentile(&[], 50.0), None);
}

#[test]
fn slope_is_least_squares() {
    let line: Vec<(f64, f64)> = [1.0, 5.0, 10.0, 25.0, 50.0]
        .iter()
        .map(|&x| (x, 3.0 + 0.5 * x))
        .collect();
    assert!((slope(&line).unwrap() - 0.5).abs() < 1e-9);
    let noisy = [(0.0, 1.0), (1.0, 2.0), (2.0, 2.0), (3.0, 4.0)];
    assert!((slope(&noisy).unwrap() - 0.9).abs() < 1e-9);
    assert_eq!(slope(&[(5.0, 1.0), (5.0, 2.0)]), None);
    assert_eq!(slope(&[]), None);
}

#[test]
fn proc_parsers_read_their_fields() {
    let stat = "1234 (tokio-runtime (w)) S 1 1234 1234 0 -1 4194304 500 0 0 0 250 75 0 0 20 0 6 0 100 1000 200";
    assert_eq!(
        parse_stat(stat),
        Some(("tokio-runtime (w)".to_owned(), 325))
    );
    assert_eq!(parse_stat("garbage"), None);
    let status = "Name:\tpeercam\nVmPeak:\t  9000 kB\nVmRSS:\t   24576 kB\nRssAnon:\t   10240 kB\nThreads:\t9\n";
    assert_eq!(common::parse_status_kib(status, "VmRSS"), Some(24576));
    assert_eq!(common::parse_status_kib(status, "RssAnon"), Some(10240));
    assert_eq!(common::parse_status_kib("Name:\tx\n", "VmRSS"), None);
    let proc_stat = "cpu  100 5 50 800 20 3 2 0 0 0\ncpu0 50 2 25 400 10 1 1 0 0 0\n";
    assert_eq!(parse_machine_ticks(proc_stat), Some((160, 980)));
}

#[test]
fn knobs_default_and_refuse_bad_values() {
    assert_eq!(
        parse_knobs(None, None, None),
        Ok(Knobs {
            viewers: vec![1, 5, 10, 25, 50],
            seconds: 10,
            joins: 20
        })
    );
    let knobs = parse_knobs(Some("5 1,5  2"), Some("3"), Some("10")).unwrap();
    assert_eq!(knobs.viewers, vec![1, 2, 5]);
    assert!(parse_knobs(Some("0"), None, None).is_err());
    assert!(parse_knobs(Some("65"), None, None).is_err());
    assert!(parse_knobs(Some("two"), None, None).is_err());
    assert!(parse_knobs(Some(" "), None, None).is_err());
    assert!(parse_knobs(None, Some("0"), None).is_err());
    assert!(parse_knobs(None, None, Some("9")).is_err());
}

fn sample_row(viewers: usize, cpu: f64, saturated: bool) -> Row {
    Row {
        viewers,
        agent_cpu_pct: cpu,
        rss_mib: 20.0 + viewers as f64,
        rss_anon_mib: 10.0 + viewers as f64,
        fps_min: 29.5,
        fps_median: 30.0,
        keyframes_min: 4,
        keyframes_max: 5,
        latency_ms: Some(Percentiles {
            p50: 12.0,
            p95: 20.0,
            p99: 31.0,
        }),
        latency_samples: 300,
        test_process_cpu_pct: 40.0,
        machine_busy_pct: if saturated { 97.0 } else { 50.0 },
        other_processes_cpu_pct: 60.0,
        saturated,
        agent_threads: vec![
            ThreadCpu {
                name: "encode".into(),
                threads: 1,
                cpu_pct: 30.0,
            },
            ThreadCpu {
                name: "tokio-runtime-w".into(),
                threads: 2,
                cpu_pct: 9.5,
            },
            ThreadCpu {
                name: "broker".into(),
                threads: 1,
                cpu_pct: 0.1,
            },
        ],
    }
}

fn sample_report() -> Report {
    let rows = vec![sample_row(1, 40.0, false), sample_row(50, 90.0, true)];
    Report {
        machine: Machine {
            cpu_model: "Test CPU".into(),
            cores: 2,
            kernel: "6.1.0".into(),
            date: "2026-11-26 13:00 UTC".into(),
            commit: "abc1234".into(),
            profile: "release".into(),
        },
        command: command_line(&parse_knobs(None, None, None).unwrap()),
        width: WIDTH,
        height: HEIGHT,
        fps: FPS,
        bitrate_kbps: BITRATE_KBPS,
        keyframe_interval_s: KEYFRAME_INTERVAL_S,
        knobs: parse_knobs(None, None, None).unwrap(),
        idle: Idle {
            agent_cpu_pct: 5.0,
            rss_mib: 18.0,
            rss_anon_mib: 8.0,
        },
        slopes: slopes(&rows),
        rows,
        first_frame: FirstFrame {
            joins: 20,
            p50_ms: Some(45.0),
            p95_ms: Some(80.0),
            phases: vec![PhaseMedian {
                phase: "answer".into(),
                median_ms: Some(3.0),
                joins_seen: 20,
            }],
        },
        encoder_baseline: Baseline {
            seconds: 10.0,
            frames_encoded: 300,
            bitrate_kbps: 1990.0,
            cpu_pct: 25.0,
            agent_1_viewer_ratio: Some(1.6),
        },
    }
}

#[test]
fn markdown_has_the_table_the_sections_and_the_plot() {
    let md = render_markdown(&sample_report());
    assert!(md.contains("do not edit by hand"), "{md}");
    assert!(md.contains(
        "PEERCAM_BENCH_VIEWERS=\"1 5 10 25 50\" PEERCAM_BENCH_SECONDS=10 PEERCAM_BENCH_JOINS=20 scripts/bench"
    ));
    assert!(
        md.contains("| 1 | 40.0 | 21.0 (11.0) | 29.5 / 30.0 | 12 / 20 / 31 | 4–5 | 50 |"),
        "{md}"
    );
    assert!(
        md.contains(
            "| 50 | 90.0 | 70.0 (60.0) | 29.5 / 30.0 | 12 / 20 / 31 | 4–5 | 97 (saturated) |"
        ),
        "{md}"
    );
    assert!(
        md.contains("| 50 | encode 30.0, tokio-runtime-w ×2 9.5 | 40 | 60 |"),
        "{md}"
    );
    assert!(
        md.contains("1.02 % of one core and 1.00 MiB RSS per extra viewer"),
        "{md}"
    );
    assert!(md.contains("p50 45 ms, p95 80 ms"), "{md}");
    assert!(md.contains("| answer | 3 | 20 |"), "{md}");
    assert!(md.contains("25.0% of one core"), "{md}");
    assert!(md.contains("encoder only: 1.60"), "{md}");
    assert!(md.contains("](performance.svg)"), "{md}");
}

#[test]
fn plot_is_an_svg_with_both_panels() {
    let path = common::temp_dir("bench-plot").join("plot.svg");
    draw_plot(&sample_report().rows, &path).unwrap();
    let svg = std::fs::read_to_string(&path).unwrap();
    assert!(svg.starts_with("<svg"), "{svg}");
    assert!(svg.contains("Agent CPU"), "{svg}");
    assert!(svg.contains("Latency p50"), "{svg}");
}
