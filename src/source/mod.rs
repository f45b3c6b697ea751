//! Video sources: produce raw I420 frames stamped with their capture time.
//! A source runs on its own thread and must never block the async runtime.

pub mod stamp;
pub mod testsrc;

/// One raw picture in planar I420 (Y plane, then U, then V; no row padding).
#[derive(Clone)]
pub struct Frame {
    pub width: u32,
    pub height: u32,
    /// Y (width*height) then U and V ((width/2)*(height/2) each).
    pub i420: Vec<u8>,
    /// Capture time, microseconds since the Unix epoch.
    pub capture_us: u64,
    /// Frame counter since the source started.
    pub sequence: u64,
}

/// A camera or generator the capture thread pulls frames from.
pub trait VideoSource: Send {
    /// Blocks until the next frame is available.
    fn next_frame(&mut self) -> Result<Frame, SourceError>;
    /// One line for logs: what this source is and its mode.
    fn describe(&self) -> String;
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{0}")]
    Device(String),
}

impl VideoSource for testsrc::TestSource {
    fn next_frame(&mut self) -> Result<Frame, SourceError> {
        Ok(testsrc::TestSource::next_frame(self))
    }

    fn describe(&self) -> String {
        "testsrc (synthetic pattern with latency stamp)".to_owned()
    }
}
