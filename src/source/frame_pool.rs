//! Recycles raw picture buffers: a frame's buffer goes back to its source's pool when the
//! last thread holding the frame (usually the encoder) drops it, so a 720p stream does not
//! allocate, fault in and free 1.4 MB thirty times a second. The pool keeps a few spare
//! buffers at most; it must never block a thread on another, nor grow without bound.

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex};

/// Spare buffers a pool keeps. The encoder hands a picture back (about 10 ms at 720p) well
/// before the next one is captured (33 ms at 30 fps), so one buffer cycles; more exist only
/// while the encoder lags or a snapshot holds a copy, and those are freed, not kept.
const SPARES_MAX: usize = 1;

type Spares = Arc<Mutex<Vec<Vec<u8>>>>;

/// A source's pool of picture buffers.
#[derive(Default)]
pub struct FramePool {
    spares: Spares,
}

impl FramePool {
    /// An empty buffer, with the capacity of a recycled one when there is a spare.
    pub fn take(&self) -> FrameBuffer {
        let recycled = self.spares.lock().ok().and_then(|mut spares| spares.pop());
        let mut bytes = recycled.unwrap_or_default();
        bytes.clear();
        FrameBuffer {
            bytes,
            home: Some(Arc::clone(&self.spares)),
        }
    }

    /// Spare buffers held now.
    #[cfg(test)]
    fn spares(&self) -> usize {
        self.spares.lock().map_or(0, |spares| spares.len())
    }
}

/// The bytes of one picture; returns to its pool when dropped (a clone too).
#[derive(Clone)]
pub struct FrameBuffer {
    bytes: Vec<u8>,
    /// The pool the buffer returns to; `None` for a buffer made outside any pool.
    home: Option<Spares>,
}

impl FrameBuffer {
    /// The buffer as a `Vec`, for code that fills it (its capacity is reused).
    pub fn as_vec_mut(&mut self) -> &mut Vec<u8> {
        &mut self.bytes
    }
}

impl From<Vec<u8>> for FrameBuffer {
    fn from(bytes: Vec<u8>) -> Self {
        FrameBuffer { bytes, home: None }
    }
}

impl Deref for FrameBuffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

impl DerefMut for FrameBuffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.bytes
    }
}

impl Drop for FrameBuffer {
    fn drop(&mut self) {
        let Some(home) = self.home.take() else {
            return;
        };
        // A poisoned pool (a thread panicked while holding it) only loses the buffer.
        if let Ok(mut spares) = home.lock() {
            if spares.len() < SPARES_MAX {
                spares.push(std::mem::take(&mut self.bytes));
            }
        };
    }
}

impl std::fmt::Debug for FrameBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FrameBuffer({} bytes)", self.bytes.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_buffer_is_reused_with_its_allocation() {
        let pool = FramePool::default();
        let mut first = pool.take();
        first.as_vec_mut().resize(1000, 7);
        let address = first.as_ptr();
        drop(first);
        assert_eq!(pool.spares(), 1);
        let second = pool.take();
        assert!(second.is_empty(), "a recycled buffer starts empty");
        assert_eq!(second.as_ptr(), address, "the same allocation");
        assert!(second.bytes.capacity() >= 1000);
        assert_eq!(pool.spares(), 0);
    }

    #[test]
    fn the_pool_keeps_a_bounded_number_of_spares() {
        let pool = FramePool::default();
        let held: Vec<FrameBuffer> = (0..5)
            .map(|_| {
                let mut buffer = pool.take();
                buffer.as_vec_mut().resize(64, 1);
                buffer
            })
            .collect();
        drop(held);
        assert_eq!(pool.spares(), SPARES_MAX);
    }

    #[test]
    fn clones_and_buffers_from_elsewhere_behave() {
        let pool = FramePool::default();
        let mut buffer = pool.take();
        buffer.as_vec_mut().extend_from_slice(&[1, 2, 3]);
        let copy = buffer.clone();
        assert_eq!(&copy[..], &[1, 2, 3]);
        drop(buffer);
        let _taken = pool.take();
        assert_eq!(pool.spares(), 0);
        drop(copy);
        assert_eq!(pool.spares(), 1, "a clone returns to the pool too");
        let _taken_again = pool.take();
        let outside = FrameBuffer::from(vec![9; 4]);
        assert_eq!(&outside[..], &[9, 9, 9, 9]);
        drop(outside);
        assert_eq!(pool.spares(), 0, "a buffer from outside joins no pool");
    }
}
