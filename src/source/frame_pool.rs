//! Recycles raw picture buffers: a frame's buffer goes back to its source's pool when the
//! last thread holding the frame (usually the encoder) drops it, so a 720p stream does not
//! allocate, fault in and free 1.4 MB thirty times a second. A pooled picture lives in its
//! own anonymous mapping, so a surplus one freed gives its memory back to the kernel at
//! once. The pool keeps a few spare buffers at most; it must never block a thread on
//! another, nor grow without bound.

use memmap2::MmapMut;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex};

/// Spare buffers a pool keeps. The encoder hands a picture back (about 10 ms at 720p) well
/// before the next one is captured (33 ms at 30 fps), so one buffer cycles; more exist only
/// while the encoder lags, holds a frame back for a viewer's first keyframe, or a snapshot
/// holds a copy, and those are freed, not kept.
const SPARES_MAX: usize = 1;

type Spares = Arc<Mutex<Vec<MmapMut>>>;

/// Where a picture is written: sized first, then every byte overwritten.
pub trait PictureOut {
    /// This buffer, `len` bytes long. What its bytes hold is unspecified (earlier pictures,
    /// zeros): the writer overwrites every one.
    fn sized(&mut self, len: usize) -> &mut [u8];
}

impl PictureOut for Vec<u8> {
    fn sized(&mut self, len: usize) -> &mut [u8] {
        self.resize(len, 0);
        self
    }
}

/// A source's pool of picture buffers.
#[derive(Default)]
pub struct FramePool {
    spares: Spares,
}

impl FramePool {
    /// An empty buffer, with a recycled mapping when there is a spare.
    pub fn take(&self) -> FrameBuffer {
        let recycled = self.spares.lock().ok().and_then(|mut spares| spares.pop());
        FrameBuffer {
            storage: recycled.map_or(Storage::Heap(Vec::new()), Storage::Mapped),
            len: 0,
            home: Some(Arc::clone(&self.spares)),
        }
    }

    /// Spare buffers held now.
    #[cfg(test)]
    fn spares(&self) -> usize {
        self.spares.lock().map_or(0, |spares| spares.len())
    }
}

/// Where a buffer's bytes are.
enum Storage {
    /// A pooled picture's own anonymous mapping: unmapped when freed. glibc would keep a
    /// freed 1.4 MB heap block resident (its mmap threshold rises above a picture after
    /// the first is freed, and a block below the heap's top is never trimmed).
    Mapped(MmapMut),
    /// A buffer from outside any pool (a `Vec` handed in), a pooled one not sized yet, or
    /// one the kernel would not map (memory is short either way).
    Heap(Vec<u8>),
}

/// The bytes of one picture; returns to its pool when dropped (a clone too).
pub struct FrameBuffer {
    storage: Storage,
    /// The picture's bytes: the first `len` of the storage.
    len: usize,
    /// The pool the buffer returns to; `None` for a buffer made outside any pool.
    home: Option<Spares>,
}

impl PictureOut for FrameBuffer {
    fn sized(&mut self, len: usize) -> &mut [u8] {
        let pooled = self.home.is_some();
        match &mut self.storage {
            Storage::Mapped(map) if map.len() >= len => {}
            Storage::Heap(bytes) if !pooled || len == 0 => bytes.resize(len, 0),
            storage => {
                *storage = match MmapMut::map_anon(len) {
                    Ok(map) => Storage::Mapped(map),
                    Err(_) => Storage::Heap(vec![0; len]),
                }
            }
        }
        self.len = len;
        self
    }
}

impl Clone for FrameBuffer {
    /// A copy of the picture that returns to the same pool.
    fn clone(&self) -> Self {
        let mut copy = FrameBuffer {
            storage: Storage::Heap(Vec::new()),
            len: 0,
            home: self.home.clone(),
        };
        copy.sized(self.len).copy_from_slice(self);
        copy
    }
}

impl From<Vec<u8>> for FrameBuffer {
    fn from(bytes: Vec<u8>) -> Self {
        FrameBuffer {
            len: bytes.len(),
            storage: Storage::Heap(bytes),
            home: None,
        }
    }
}

impl Deref for FrameBuffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.storage {
            Storage::Mapped(map) => &map[..self.len],
            Storage::Heap(bytes) => &bytes[..self.len],
        }
    }
}

impl DerefMut for FrameBuffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        match &mut self.storage {
            Storage::Mapped(map) => &mut map[..self.len],
            Storage::Heap(bytes) => &mut bytes[..self.len],
        }
    }
}

impl Drop for FrameBuffer {
    fn drop(&mut self) {
        let Some(home) = self.home.take() else {
            return;
        };
        let Storage::Mapped(map) = std::mem::replace(&mut self.storage, Storage::Heap(Vec::new()))
        else {
            return;
        };
        // A poisoned pool (a thread panicked while holding it) only loses the buffer.
        if let Ok(mut spares) = home.lock() {
            if spares.len() < SPARES_MAX {
                spares.push(map);
            }
        };
    }
}

impl std::fmt::Debug for FrameBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FrameBuffer({} bytes)", self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_buffer_is_reused_with_its_mapping() {
        let pool = FramePool::default();
        let mut first = pool.take();
        first.sized(1000).fill(7);
        let address = first.as_ptr();
        drop(first);
        assert_eq!(pool.spares(), 1);
        let mut second = pool.take();
        assert!(second.is_empty(), "a recycled buffer starts empty");
        assert_eq!(second.sized(1000).as_ptr(), address, "the same mapping");
        assert_eq!(pool.spares(), 0);
        assert_eq!(second.sized(10).len(), 10, "a smaller picture fits");
        assert_eq!(second.as_ptr(), address);
        let larger = second.sized(1 << 20);
        assert_eq!(
            larger.len(),
            1 << 20,
            "a larger picture gets a larger mapping"
        );
        larger.fill(1);
    }

    #[test]
    fn the_pool_keeps_a_bounded_number_of_spares() {
        let pool = FramePool::default();
        let held: Vec<FrameBuffer> = (0..5)
            .map(|_| {
                let mut buffer = pool.take();
                buffer.sized(64).fill(1);
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
        buffer.sized(3).copy_from_slice(&[1, 2, 3]);
        let copy = buffer.clone();
        assert_eq!(&copy[..], &[1, 2, 3]);
        assert_ne!(copy.as_ptr(), buffer.as_ptr(), "a copy, not a share");
        drop(buffer);
        let _taken = pool.take();
        assert_eq!(pool.spares(), 0);
        drop(copy);
        assert_eq!(pool.spares(), 1, "a clone returns to the pool too");
        let _taken_again = pool.take();
        let mut outside = FrameBuffer::from(vec![9; 4]);
        assert_eq!(&outside[..], &[9, 9, 9, 9]);
        assert_eq!(&outside.clone()[..], &[9, 9, 9, 9]);
        assert_eq!(outside.sized(6).len(), 6);
        drop(outside);
        assert_eq!(pool.spares(), 0, "a buffer from outside joins no pool");
    }

    #[test]
    fn a_vec_is_sized_for_a_writer_too() {
        let mut bytes = vec![5u8; 8];
        assert_eq!(bytes.sized(3), &[5, 5, 5]);
        assert_eq!(bytes.sized(5).len(), 5);
    }
}
