//! What a source's picture buffers keep resident once freed: the anonymous memory of this
//! process (`RssAnon` in /proc/self/status) before and after surplus buffers are dropped.
//! This test binary holds this one test, so nothing else allocates meanwhile. It must
//! never depend on timing.

mod common;

use peercam::source::frame_pool::{FrameBuffer, FramePool, PictureOut};

/// One 720p I420 picture.
const PICTURE: usize = 1280 * 720 * 3 / 2;

/// Takes `count` buffers from `pool`, each a whole picture with every byte written.
fn written_pictures(pool: &FramePool, count: usize) -> Vec<FrameBuffer> {
    (0..count)
        .map(|n| {
            let mut buffer = pool.take();
            buffer.sized(PICTURE).fill(n as u8 + 1);
            buffer
        })
        .collect()
}

/// When an idle agent's viewer arrives, the frame it held back and the one being captured
/// are two pictures; from then on one cycles. The surplus must go back to the kernel, not
/// stay resident in the allocator's heap (as a freed 1.4 MB heap block does under glibc
/// once its dynamic mmap threshold has risen above a picture).
#[test]
fn surplus_picture_buffers_give_their_memory_back() {
    let pool = FramePool::default();
    // A first round raises glibc's mmap threshold as a running agent's first frames do.
    drop(written_pictures(&pool, 3));
    let pictures = written_pictures(&pool, 3);
    // Something allocated after the pictures, as the rest of the agent does: the freed
    // pictures are not at the top of the heap, where free() could trim them.
    let later = std::hint::black_box(vec![7u8; 64 * 1024]);
    let before = common::own_rss_anon_kib();
    drop(pictures);
    let freed_mib = before.saturating_sub(common::own_rss_anon_kib()) as f64 / 1024.0;
    println!("dropping 3 pictures (one kept as the spare) gave back {freed_mib:.2} MiB");
    let surplus_mib = 2.0 * PICTURE as f64 / (1024.0 * 1024.0);
    assert!(
        freed_mib >= 0.9 * surplus_mib,
        "two surplus 720p pictures ({surplus_mib:.2} MiB) stayed resident: only {freed_mib:.2} MiB went back"
    );
    drop(later);
}
