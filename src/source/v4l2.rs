//! V4L2 cameras (the `v4l` crate): mode negotiation, controls, mmap streaming capture,
//! conversion to I420 (or H.264 passthrough), and the device listing `peercam devices` prints.
//! A camera is a device that fails: every error closes the device and is returned to the
//! capture loop, which retries; nothing here may panic or block longer than the stall limit.

use super::convert::{self, Layout, PixelFormat};
use super::frame_pool::FramePool;
use super::{Captured, Frame, SourceError, StreamedMode, VideoSource};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;
use v4l::buffer::Type as BufferType;
use v4l::control::{Control, Description as ControlDescription, Type as ControlType, Value};
use v4l::frameinterval::FrameIntervalEnum;
use v4l::framesize::FrameSizeEnum;
use v4l::io::mmap::Stream;
use v4l::io::traits::CaptureStream;
use v4l::video::capture::Parameters;
use v4l::video::Capture;
use v4l::{Device, FourCC, Fraction};

/// Buffers in the mmap ring: enough to ride out a late dequeue, few enough to keep latency.
const BUFFERS: u32 = 4;
/// V4L2_CID_MPEG_VIDEO_FORCE_KEY_FRAME (codec class base 0x00990900 + 229).
const CID_FORCE_KEY_FRAME: u32 = 0x0099_09e5;

/// What the configuration asks of the camera.
#[derive(Debug, Clone)]
pub struct V4l2Options {
    pub path: PathBuf,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    /// `None` = auto.
    pub format: Option<PixelFormat>,
    pub passthrough: bool,
    pub strict: bool,
    pub controls: BTreeMap<String, i64>,
}

/// One (format, size, rate) a camera offers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Offer {
    pub format: PixelFormat,
    pub width: u32,
    pub height: u32,
    /// Frame rate as the driver reports it (may be fractional, e.g. 12.5).
    pub fps: f64,
}

impl std::fmt::Display for Offer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}x{} @ {} fps",
            self.format, self.width, self.height, self.fps
        )
    }
}

/// The mode the camera actually runs in: what the driver settled on, and its row stride.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mode {
    pub offer: Offer,
    /// Bytes per row of the first plane.
    pub stride: u32,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.offer.fmt(f)
    }
}

struct OpenCamera {
    device: Device,
    stream: Stream<'static>,
    mode: Mode,
    /// Dequeue timeout: no frame for this long is a stalled stream.
    stall: Duration,
    force_key_frame: bool,
    /// A frame came: from now on the (shorter) stall timeout applies.
    delivered: bool,
    stall_armed: bool,
}

pub struct V4l2Source {
    options: V4l2Options,
    camera: Option<OpenCamera>,
    sequence: u64,
    keyframe_wanted: bool,
    /// Time the last frame's conversion to I420 took (for `peercam probe`).
    last_convert: Duration,
    buffers: FramePool,
}

impl V4l2Source {
    /// Does not touch the device: it opens on the first `next_frame`, so a service can
    /// start before its camera is plugged in.
    pub fn new(options: V4l2Options) -> Self {
        Self {
            options,
            camera: None,
            sequence: 0,
            keyframe_wanted: false,
            last_convert: Duration::ZERO,
            buffers: FramePool::default(),
        }
    }

    /// The mode in use, when the camera is open.
    pub fn mode(&self) -> Option<Mode> {
        self.camera.as_ref().map(|c| c.mode)
    }

    fn open(&mut self) -> Result<(), SourceError> {
        let options = &self.options;
        let path = options.path.display();
        let device = Device::with_path(&options.path)
            .map_err(|e| SourceError::Device(format!("{path}: cannot open: {e}")))?;
        let caps = device
            .query_caps()
            .map_err(|e| SourceError::Device(format!("{path}: not a V4L2 device: {e}")))?;
        if !caps
            .capabilities
            .contains(v4l::capability::Flags::VIDEO_CAPTURE)
        {
            return Err(SourceError::Config(format!(
                "{path} ({}) is not a single-planar video capture device",
                caps.card
            )));
        }
        apply_controls(&device, &options.controls)
            .map_err(|e| SourceError::Config(format!("{path}: {e}")))?;
        let offers =
            offers(&device).map_err(|e| device_error(&options.path, "listing modes", e))?;
        let wanted = choose_mode(&offers, options).map_err(SourceError::Config)?;
        if !wanted.exact {
            tracing::warn!(
                device = %path,
                requested = %format!("{}x{} @ {} fps", options.width, options.height, options.fps),
                using = %wanted.offer,
                offered = %offers.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
                "the camera cannot do the configured mode; using the nearest it offers"
            );
        }
        let fourcc = FourCC::new(&wanted.offer.format.fourcc());
        let mut format = device
            .format()
            .map_err(|e| device_error(&options.path, "reading the format", e))?;
        format.width = wanted.offer.width;
        format.height = wanted.offer.height;
        format.fourcc = fourcc;
        let format = device
            .set_format(&format)
            .map_err(|e| device_error(&options.path, "setting the format", e))?;
        let format_kind = PixelFormat::from_fourcc(format.fourcc.repr).ok_or_else(|| {
            SourceError::Config(format!("{path}: the driver switched to {}", format.fourcc))
        })?;
        let params = device
            .set_params(&Parameters::new(fps_fraction(wanted.offer.fps)))
            .map_err(|e| device_error(&options.path, "setting the frame rate", e))?;
        let fps = fraction_fps(params.interval).unwrap_or(wanted.offer.fps);
        let mode = Mode {
            offer: Offer {
                format: format_kind,
                width: format.width,
                height: format.height,
                fps,
            },
            stride: format.stride,
        };
        if mode.offer.format != PixelFormat::H264
            && (mode.offer.width % 2 != 0 || mode.offer.height % 2 != 0)
        {
            return Err(SourceError::Config(format!(
                "{path}: odd frame size {}x{} cannot be encoded",
                mode.offer.width, mode.offer.height
            )));
        }
        let force_key_frame = mode.offer.format == PixelFormat::H264
            && {
                let has = device.control(CID_FORCE_KEY_FRAME).is_ok();
                if !has {
                    tracing::info!(device = %path, "camera has no force-key-frame control; viewers wait for its next IDR");
                }
                has
            };
        let mut stream = Stream::with_buffers(&device, BufferType::VideoCapture, BUFFERS)
            .map_err(|e| device_error(&options.path, "allocating capture buffers", e))?;
        let period = Duration::from_secs_f64(1.0 / mode.offer.fps.max(0.1));
        let stall = (period * 10).max(Duration::from_secs(1));
        // Cameras take a while to deliver their first frame (exposure, USB bandwidth).
        stream.set_timeout(stall.max(Duration::from_secs(3)));
        tracing::info!(device = %path, card = %caps.card, driver = %caps.driver, mode = %mode, "camera opened");
        self.camera = Some(OpenCamera {
            device,
            stream,
            mode,
            stall,
            force_key_frame,
            delivered: false,
            stall_armed: false,
        });
        self.keyframe_wanted = true;
        Ok(())
    }

    /// Closes the device (all its file descriptors: vivid and hot-plugged USB cameras only
    /// come back once every fd is closed).
    fn close(&mut self) {
        if let Some(camera) = self.camera.take() {
            let OpenCamera { device, stream, .. } = camera;
            // v4l's Stream panics in Drop when STREAMOFF fails with anything but ENODEV
            // (e.g. EIO after a fatal streaming error). A failing camera must not take the
            // capture thread with it.
            let dropped =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(stream)));
            if dropped.is_err() {
                tracing::debug!("capture stream closed with an error");
            }
            drop(device);
        }
    }

    fn capture(&mut self) -> Result<Captured, SourceError> {
        if self.camera.is_none() {
            self.open()?;
        }
        let camera = self.camera.as_mut().expect("opened above");
        if camera.delivered && !camera.stall_armed {
            camera.stream.set_timeout(camera.stall);
            camera.stall_armed = true;
        }
        if self.keyframe_wanted && camera.force_key_frame {
            let control = Control {
                id: CID_FORCE_KEY_FRAME,
                value: Value::None,
            };
            if let Err(err) = camera.device.set_control(control) {
                tracing::debug!("force-key-frame control failed: {err}");
            }
        }
        self.keyframe_wanted = false;
        let path = &self.options.path;
        let mode = camera.mode;
        let (data, meta) = CaptureStream::next(&mut camera.stream).map_err(|e| {
            if e.kind() == io::ErrorKind::TimedOut {
                SourceError::Device(format!(
                    "{}: stalled: no frame for {} ms",
                    path.display(),
                    camera.stall.as_millis()
                ))
            } else {
                device_error(path, "capturing", e)
            }
        })?;
        camera.delivered = true;
        let used = (meta.bytesused as usize).min(data.len());
        let data = &data[..used];
        if meta.flags.contains(v4l::buffer::Flags::ERROR) {
            return Err(SourceError::Frame(
                "the driver flagged the buffer as corrupt".into(),
            ));
        }
        let (capture_us, monotonic_us) = capture_times(meta.timestamp);
        self.sequence += 1;
        if mode.offer.format == PixelFormat::H264 {
            return Ok(Captured::H264 {
                access_unit: data.to_vec(),
                width: mode.offer.width,
                height: mode.offer.height,
                capture_us,
                monotonic_us,
                sequence: self.sequence,
            });
        }
        let mut i420 = self.buffers.take();
        let layout = Layout {
            format: mode.offer.format,
            width: mode.offer.width,
            height: mode.offer.height,
            stride: mode.stride,
        };
        let converting = std::time::Instant::now();
        convert::to_i420(layout, data, &mut i420).map_err(|e| SourceError::Frame(e.to_string()))?;
        self.last_convert = converting.elapsed();
        Ok(Captured::Raw(Frame {
            width: mode.offer.width,
            height: mode.offer.height,
            i420,
            capture_us,
            monotonic_us,
            sequence: self.sequence,
        }))
    }
}

impl Drop for V4l2Source {
    fn drop(&mut self) {
        self.close();
    }
}

impl VideoSource for V4l2Source {
    fn next_frame(&mut self) -> Result<Captured, SourceError> {
        let result = self.capture();
        if matches!(result, Err(SourceError::Device(_) | SourceError::Config(_))) {
            self.close();
        }
        result
    }

    fn describe(&self) -> String {
        match self.mode() {
            Some(mode) => format!("{} ({mode})", self.options.path.display()),
            None => format!("{} (V4L2 camera)", self.options.path.display()),
        }
    }

    fn streamed_mode(&self) -> Option<StreamedMode> {
        self.mode().map(|mode| StreamedMode {
            width: mode.offer.width,
            height: mode.offer.height,
            fps: mode.offer.fps,
        })
    }

    fn request_keyframe(&mut self) {
        self.keyframe_wanted = true;
    }

    fn last_convert_time(&self) -> Duration {
        self.last_convert
    }
}

fn device_error(path: &Path, doing: &str, err: io::Error) -> SourceError {
    let hint = match err.raw_os_error() {
        Some(libc::ENODEV) => " (device gone: unplugged?)",
        Some(libc::EIO) => " (I/O error from the driver)",
        Some(libc::EBUSY) => " (another program is using the camera)",
        _ => "",
    };
    SourceError::Device(format!("{}: {doing}: {err}{hint}", path.display()))
}

/// A buffer's capture time on both clocks: (Unix µs, `clock::monotonic_us`).
// time_t and c_long are 32-bit on armhf: the conversions are not useless there.
#[allow(clippy::useless_conversion)]
fn capture_times(timestamp: v4l::timestamp::Timestamp) -> (u64, u64) {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    let now_kernel_us = (unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) } == 0)
        .then(|| i64::from(now.tv_sec) * 1_000_000 + i64::from(now.tv_nsec) / 1000);
    let buffer_us = i64::from(timestamp.sec) * 1_000_000 + i64::from(timestamp.usec);
    let age = buffer_age_us(buffer_us, now_kernel_us);
    (
        crate::clock::unix_us().saturating_sub(age),
        crate::clock::monotonic_us().saturating_sub(age),
    )
}

/// How long ago, in µs, the driver stamped a buffer at `buffer_us` on CLOCK_MONOTONIC,
/// when that clock reads `now_kernel_us` (`None`: unreadable). V4L2 buffer timestamps are
/// monotonic, so the age is the same on both of peercam's clocks; subtracting it from
/// each gives the buffer's Unix time (latency stamp) and its monotonic instant (RTP),
/// whatever the wall clock does meanwhile. A missing or implausible stamp counts as
/// taken now; an age is at most 10 s (beyond that the stamp, not the frame, is wrong).
fn buffer_age_us(buffer_us: i64, now_kernel_us: Option<i64>) -> u64 {
    match now_kernel_us {
        Some(now) if buffer_us > 0 => (now - buffer_us).clamp(0, 10_000_000) as u64,
        _ => 0,
    }
}

fn fraction_fps(interval: Fraction) -> Option<f64> {
    (interval.numerator > 0 && interval.denominator > 0)
        .then(|| f64::from(interval.denominator) / f64::from(interval.numerator))
}

fn fps_fraction(fps: f64) -> Fraction {
    // Frame intervals are fractions of a second: 12.5 fps = 2/25 s.
    let scaled = (fps * 1000.0).round().max(1.0) as u32;
    Fraction::new(1000, scaled)
}

/// Every (known format, size, rate) the camera offers, in driver order.
pub fn offers(device: &Device) -> io::Result<Vec<Offer>> {
    let mut offers = Vec::new();
    for description in device.enum_formats()? {
        let Some(format) = PixelFormat::from_fourcc(description.fourcc.repr) else {
            continue;
        };
        for size in device
            .enum_framesizes(description.fourcc)
            .unwrap_or_default()
        {
            let sizes = match size.size {
                FrameSizeEnum::Discrete(d) => vec![(d.width, d.height)],
                // Stepwise: the extremes are enough to pick "nearest"; exact sizes in
                // between are accepted by `choose_mode` through `stepwise_fits`.
                FrameSizeEnum::Stepwise(s) => {
                    vec![(s.min_width, s.min_height), (s.max_width, s.max_height)]
                }
            };
            for (width, height) in sizes {
                let intervals = device
                    .enum_frameintervals(description.fourcc, width, height)
                    .unwrap_or_default();
                for interval in intervals {
                    let rates = match interval.interval {
                        FrameIntervalEnum::Discrete(f) => vec![fraction_fps(f)],
                        FrameIntervalEnum::Stepwise(s) => {
                            vec![fraction_fps(s.max), fraction_fps(s.min)]
                        }
                    };
                    for fps in rates.into_iter().flatten() {
                        offers.push(Offer {
                            format,
                            width,
                            height,
                            fps,
                        });
                    }
                }
            }
        }
    }
    Ok(offers)
}

pub struct Choice {
    pub offer: Offer,
    pub exact: bool,
}

/// Picks the mode: the configured format (or the best `auto` one) at exactly the
/// configured size and rate when offered; otherwise the nearest offer (size first, then
/// rate, then format preference), or an error listing the offers when `strict`.
pub fn choose_mode(offers: &[Offer], options: &V4l2Options) -> Result<Choice, String> {
    let usable: Vec<&Offer> = offers
        .iter()
        .filter(|o| match options.format {
            Some(format) => o.format == format,
            None => o.format.auto_rank(options.passthrough).is_some(),
        })
        .collect();
    let listing = || {
        offers
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    if usable.is_empty() {
        return Err(match options.format {
            Some(format) => format!(
                "the camera does not offer {format}; it offers: {}",
                listing()
            ),
            None => format!(
                "the camera offers no format peercam can use; it offers: {}",
                listing()
            ),
        });
    }
    let rank = |o: &Offer| o.format.auto_rank(true).unwrap_or(u8::MAX);
    let fps_distance = |o: &Offer| (o.fps - f64::from(options.fps)).abs();
    let exact = usable
        .iter()
        .filter(|o| {
            o.width == options.width && o.height == options.height && fps_distance(o) < 0.01
        })
        .min_by_key(|o| rank(o));
    if let Some(offer) = exact {
        return Ok(Choice {
            offer: **offer,
            exact: true,
        });
    }
    if options.strict {
        return Err(format!(
            "the camera cannot do {}x{} at {} fps{} (video.strict = true); it offers: {}",
            options.width,
            options.height,
            options.fps,
            options
                .format
                .map(|f| format!(" in {f}"))
                .unwrap_or_default(),
            listing()
        ));
    }
    let size_distance = |o: &Offer| {
        (i64::from(o.width) - i64::from(options.width)).abs()
            + (i64::from(o.height) - i64::from(options.height)).abs()
    };
    let nearest = usable
        .iter()
        .min_by(|a, b| {
            size_distance(a)
                .cmp(&size_distance(b))
                .then(fps_distance(a).total_cmp(&fps_distance(b)))
                .then(rank(a).cmp(&rank(b)))
        })
        .expect("usable is not empty");
    Ok(Choice {
        offer: **nearest,
        exact: false,
    })
}

/// A control's name as the config spells it: "Exposure Time, Absolute" → "exposure_time_absolute".
pub fn control_key(name: &str) -> String {
    let mut key = String::new();
    for word in name
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        if !key.is_empty() {
            key.push('_');
        }
        key.push_str(&word.to_ascii_lowercase());
    }
    key
}

fn settable(description: &ControlDescription) -> bool {
    matches!(
        description.typ,
        ControlType::Integer
            | ControlType::Boolean
            | ControlType::Menu
            | ControlType::IntegerMenu
            | ControlType::Integer64
    )
}

/// Sets the configured controls; an unknown name or out-of-range value is an error that
/// lists what the camera has.
fn apply_controls(device: &Device, wanted: &BTreeMap<String, i64>) -> Result<(), String> {
    if wanted.is_empty() {
        return Ok(());
    }
    let available = device
        .query_controls()
        .map_err(|e| format!("listing controls: {e}"))?;
    for (name, value) in wanted {
        let Some(description) = available
            .iter()
            .find(|d| settable(d) && control_key(&d.name) == *name)
        else {
            let names: Vec<String> = available
                .iter()
                .filter(|d| settable(d))
                .map(|d| control_key(&d.name))
                .collect();
            return Err(format!(
                "video.controls.{name}: the camera has no such control (it has: {})",
                names.join(", ")
            ));
        };
        if *value < description.minimum || *value > description.maximum {
            return Err(format!(
                "video.controls.{name}: {value} is outside {}..={}",
                description.minimum, description.maximum
            ));
        }
        let value = if description.typ == ControlType::Boolean {
            Value::Boolean(*value != 0)
        } else {
            Value::Integer(*value)
        };
        device
            .set_control(Control {
                id: description.id,
                value,
            })
            .map_err(|e| format!("video.controls.{name}: the camera refused it: {e}"))?;
        tracing::info!(control = %name, "camera control set");
    }
    Ok(())
}

/// The capture devices under /dev, sorted by number.
pub fn capture_devices() -> Vec<PathBuf> {
    let mut devices: Vec<(u32, PathBuf)> = std::fs::read_dir("/dev")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let number = name.strip_prefix("video")?.parse().ok()?;
                    Some((number, e.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    devices.sort();
    devices.into_iter().map(|(_, path)| path).collect()
}

/// Human-readable report of one device for `peercam devices`; `None` for nodes that are
/// not video capture devices (metadata nodes, encoders, ...).
pub fn describe_device(path: &Path) -> Result<Option<String>, String> {
    let device = Device::with_path(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let caps = device
        .query_caps()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if !caps
        .capabilities
        .contains(v4l::capability::Flags::VIDEO_CAPTURE)
    {
        return Ok(None);
    }
    let mut out = String::new();
    let _ = writeln!(out, "{}: {}", path.display(), caps.card);
    let _ = writeln!(out, "  driver: {}  bus: {}", caps.driver, caps.bus);
    let _ = writeln!(out, "  formats:");
    for description in device.enum_formats().unwrap_or_default() {
        let usable = if PixelFormat::from_fourcc(description.fourcc.repr).is_some() {
            ""
        } else {
            "  (not supported by peercam)"
        };
        let _ = writeln!(
            out,
            "    {} {}{usable}",
            description.fourcc, description.description
        );
        for size in device
            .enum_framesizes(description.fourcc)
            .unwrap_or_default()
        {
            let (width, height, label) = match size.size {
                FrameSizeEnum::Discrete(d) => {
                    (d.width, d.height, format!("{}x{}", d.width, d.height))
                }
                FrameSizeEnum::Stepwise(s) => (
                    s.max_width,
                    s.max_height,
                    format!(
                        "{}x{} to {}x{} (step {}x{})",
                        s.min_width,
                        s.min_height,
                        s.max_width,
                        s.max_height,
                        s.step_width,
                        s.step_height
                    ),
                ),
            };
            let rates: Vec<String> = device
                .enum_frameintervals(description.fourcc, width, height)
                .unwrap_or_default()
                .into_iter()
                .map(|i| match i.interval {
                    FrameIntervalEnum::Discrete(f) => {
                        fraction_fps(f).map(|f| format!("{f}")).unwrap_or_default()
                    }
                    FrameIntervalEnum::Stepwise(s) => format!(
                        "{}-{}",
                        fraction_fps(s.max).unwrap_or(0.0),
                        fraction_fps(s.min).unwrap_or(0.0)
                    ),
                })
                .collect();
            let _ = writeln!(out, "      {label} @ {} fps", rates.join(", "));
        }
    }
    let _ = writeln!(out, "  controls (for [video.controls]):");
    for control in device.query_controls().unwrap_or_default() {
        if !settable(&control) {
            continue;
        }
        let current = match device.control(control.id).map(|c| c.value) {
            Ok(Value::Integer(v)) => v.to_string(),
            Ok(Value::Boolean(b)) => u8::from(b).to_string(),
            _ => "?".to_owned(),
        };
        let _ = writeln!(
            out,
            "    {} = {current}  ({}..={}, default {})",
            control_key(&control.name),
            control.minimum,
            control.maximum,
            control.default
        );
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(width: u32, height: u32, fps: u32) -> V4l2Options {
        V4l2Options {
            path: "/dev/video0".into(),
            width,
            height,
            fps,
            format: None,
            passthrough: false,
            strict: false,
            controls: BTreeMap::new(),
        }
    }

    fn offer(format: PixelFormat, width: u32, height: u32, fps: f64) -> Offer {
        Offer {
            format,
            width,
            height,
            fps,
        }
    }

    fn webcam() -> Vec<Offer> {
        vec![
            offer(PixelFormat::Mjpeg, 1280, 720, 30.0),
            offer(PixelFormat::Yuyv, 1280, 720, 10.0),
            offer(PixelFormat::Yuyv, 640, 480, 30.0),
            offer(PixelFormat::H264, 1280, 720, 30.0),
            offer(PixelFormat::Nv12, 640, 480, 30.0),
        ]
    }

    #[test]
    fn auto_prefers_raw_yuv_then_mjpeg_and_h264_only_with_passthrough() {
        let choice = choose_mode(&webcam(), &options(640, 480, 30)).unwrap();
        assert!(choice.exact);
        assert_eq!(choice.offer.format, PixelFormat::Nv12);
        let choice = choose_mode(&webcam(), &options(1280, 720, 30)).unwrap();
        assert_eq!(
            choice.offer.format,
            PixelFormat::Mjpeg,
            "YUYV 720p only does 10 fps"
        );
        let mut passthrough = options(1280, 720, 30);
        passthrough.passthrough = true;
        assert_eq!(
            choose_mode(&webcam(), &passthrough).unwrap().offer.format,
            PixelFormat::H264
        );
    }

    #[test]
    fn an_explicit_format_overrides_auto() {
        let mut o = options(640, 480, 30);
        o.format = Some(PixelFormat::Yuyv);
        assert_eq!(
            choose_mode(&webcam(), &o).unwrap().offer.format,
            PixelFormat::Yuyv
        );
        o.format = Some(PixelFormat::Yu12);
        let err = choose_mode(&webcam(), &o).err().unwrap();
        assert!(
            err.starts_with("the camera does not offer YU12; it offers: MJPG 1280x720 @ 30 fps"),
            "{err}"
        );
    }

    #[test]
    fn nearest_mode_unless_strict() {
        let vivid = [
            offer(PixelFormat::Yuyv, 640, 480, 25.0),
            offer(PixelFormat::Yuyv, 1280, 720, 12.5),
        ];
        let choice = choose_mode(&vivid, &options(1280, 720, 30)).unwrap();
        assert!(!choice.exact);
        assert_eq!(choice.offer, vivid[1]);
        let choice = choose_mode(&vivid, &options(640, 480, 30)).unwrap();
        assert_eq!(choice.offer, vivid[0]);
        let mut strict = options(640, 480, 30);
        strict.strict = true;
        let err = choose_mode(&vivid, &strict).err().unwrap();
        assert_eq!(
            err,
            "the camera cannot do 640x480 at 30 fps (video.strict = true); it offers: YUYV 640x480 @ 25 fps, YUYV 1280x720 @ 12.5 fps"
        );
    }

    #[test]
    fn control_names_become_config_keys() {
        assert_eq!(
            control_key("Exposure Time, Absolute"),
            "exposure_time_absolute"
        );
        assert_eq!(control_key("Brightness"), "brightness");
        assert_eq!(
            control_key("White Balance Temperature, Auto"),
            "white_balance_temperature_auto"
        );
    }

    #[test]
    fn frame_rates_and_intervals_convert_both_ways() {
        assert_eq!(fraction_fps(Fraction::new(2, 25)), Some(12.5));
        assert_eq!(fraction_fps(Fraction::new(0, 25)), None);
        let f = fps_fraction(12.5);
        assert_eq!(fraction_fps(f), Some(12.5));
        assert_eq!(fraction_fps(fps_fraction(30.0)), Some(30.0));
    }

    #[test]
    fn a_buffer_is_as_old_as_its_monotonic_stamp_says_within_reason() {
        let now = Some(5_000_000_000);
        assert_eq!(buffer_age_us(4_999_960_000, now), 40_000);
        // A stamp from the future, none at all, or an unreadable clock: taken now.
        assert_eq!(buffer_age_us(5_000_100_000, now), 0);
        assert_eq!(buffer_age_us(0, now), 0);
        assert_eq!(buffer_age_us(4_999_960_000, None), 0);
        // An age of hours is a broken stamp, not a slow frame.
        assert_eq!(buffer_age_us(1_000_000, now), 10_000_000);
    }

    #[test]
    fn a_missing_device_is_an_error_not_a_panic() {
        let mut source = V4l2Source::new(V4l2Options {
            path: "/dev/video-peercam-missing".into(),
            ..options(640, 480, 25)
        });
        let err = source.next_frame().err().unwrap();
        assert!(
            err.to_string()
                .contains("/dev/video-peercam-missing: cannot open"),
            "{err}"
        );
        assert!(source.mode().is_none());
    }
}
