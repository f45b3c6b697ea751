//! Video sources: produce frames (raw I420, or a camera's own H.264) stamped with their
//! capture time on both clocks (see `crate::clock`). A source runs on the capture thread and must never block the async runtime.

pub mod convert;
pub mod frame_pool;
pub mod stamp;
pub mod testsrc;
pub mod v4l2;

/// One raw picture in planar I420 (Y plane, then U, then V; no row padding).
#[derive(Clone)]
pub struct Frame {
    pub width: u32,
    pub height: u32,
    /// Y (width*height) then U and V ((width/2)*(height/2) each).
    pub i420: frame_pool::FrameBuffer,
    /// Capture time, microseconds since the Unix epoch: the latency stamp, never timing.
    pub capture_us: u64,
    /// Capture instant on the monotonic clock (`clock::monotonic_us`): RTP timestamps.
    pub monotonic_us: u64,
    /// Frame counter since the source started.
    pub sequence: u64,
}

/// The mode a source streams in: what the camera negotiated, which can differ from the
/// configuration (a camera without the configured size or rate streams its nearest mode).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StreamedMode {
    pub width: u32,
    pub height: u32,
    /// Frames per second as the driver reports them (fractional, e.g. vivid's 12.5).
    pub fps: f64,
}

/// What one capture produced.
pub enum Captured {
    /// A picture for the encoder.
    Raw(Frame),
    /// An access unit the camera encoded itself (H.264 passthrough).
    H264 {
        access_unit: Vec<u8>,
        width: u32,
        height: u32,
        capture_us: u64,
        monotonic_us: u64,
        sequence: u64,
    },
}

/// A camera or generator the capture thread pulls frames from.
pub trait VideoSource: Send {
    /// Blocks until the next frame is available (at most the source's stall limit).
    fn next_frame(&mut self) -> Result<Captured, SourceError>;
    /// One line for logs: what this source is and its mode.
    fn describe(&self) -> String;
    /// The mode frames come in; `None` while a camera is closed.
    fn streamed_mode(&self) -> Option<StreamedMode>;
    /// Asks for a keyframe soon; only sources that encode themselves act on it.
    fn request_keyframe(&mut self) {}
    /// Time spent converting the last frame to I420 (zero for sources that produce I420).
    fn last_convert_time(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The device is gone, failing or stalled; it has been closed and the next call retries.
    #[error("{0}")]
    Device(String),
    /// The device works but cannot be used as configured (format, mode, controls).
    #[error("{0}")]
    Config(String),
    /// One bad frame (corrupt buffer or JPEG); the stream goes on.
    #[error("{0}")]
    Frame(String),
}

impl VideoSource for testsrc::TestSource {
    fn next_frame(&mut self) -> Result<Captured, SourceError> {
        Ok(Captured::Raw(testsrc::TestSource::next_frame(self)))
    }

    fn describe(&self) -> String {
        "testsrc (synthetic pattern with latency stamp)".to_owned()
    }

    fn streamed_mode(&self) -> Option<StreamedMode> {
        Some(testsrc::TestSource::streamed_mode(self))
    }
}
