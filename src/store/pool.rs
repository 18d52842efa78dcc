//! Recycled memory for decoded chunks. A chunk leaving the cache hands its buffer to the
//! next decode, which then writes into pages that are already faulted in: a fresh buffer
//! costs a page fault, a page clear and a memory-cgroup charge per 4 KiB, which was about
//! a fifth of the daemon's CPU on a cold sequential pass.
//!
//! A recycled buffer still holds the bytes of the chunk it served; the decoder overwrites
//! every byte, and the checksum checks the result, so stale bytes are never served.

use std::cell::Cell;
use std::thread::LocalKey;

use parking_lot::Mutex;

/// Buffers smaller than this are not kept: small chunks are cheap to allocate, and a
/// short list keeps [`BufPool::take`] quick.
pub const MIN_POOLED: usize = 256 << 10;

/// Free buffers, bounded by bytes.
pub struct BufPool {
    inner: Mutex<Free>,
    max_bytes: usize,
}

#[derive(Default)]
struct Free {
    bufs: Vec<Vec<u8>>,
    bytes: usize,
}

impl BufPool {
    /// A pool that keeps at most `max_bytes` of free buffers.
    pub fn new(max_bytes: usize) -> BufPool {
        BufPool {
            inner: Mutex::new(Free::default()),
            max_bytes,
        }
    }

    /// A buffer of `len` bytes: a kept one when one fits (the smallest whose capacity is
    /// at least `len` and at most twice it, so a big buffer is not spent on a small chunk),
    /// else a fresh zeroed one. Its contents are unspecified.
    pub fn take(&self, len: usize) -> Vec<u8> {
        if len >= MIN_POOLED / 2 {
            let mut g = self.inner.lock();
            let pick = g
                .bufs
                .iter()
                .enumerate()
                .filter(|(_, b)| b.capacity() >= len && b.capacity() / 2 <= len)
                .min_by_key(|(_, b)| b.capacity())
                .map(|(i, _)| i);
            if let Some(i) = pick {
                let mut b = g.bufs.swap_remove(i);
                g.bytes -= b.capacity();
                drop(g);
                if b.len() >= len {
                    b.truncate(len);
                } else {
                    b.resize(len, 0);
                }
                return b;
            }
        }
        vec![0u8; len]
    }

    /// Keeps `b` for a later [`take`](Self::take), unless it is small or the pool is full.
    pub fn give(&self, b: Vec<u8>) {
        let cap = b.capacity();
        if cap < MIN_POOLED {
            return;
        }
        let mut g = self.inner.lock();
        if g.bytes + cap <= self.max_bytes {
            g.bytes += cap;
            g.bufs.push(b);
        }
    }

    /// Bytes of free buffers kept now.
    pub fn bytes(&self) -> usize {
        self.inner.lock().bytes
    }
}

/// Largest per-thread buffer kept between uses: requests and normal chunks are at most
/// 1 MiB, so a rare huge chunk does not pin its memory in every thread for good.
pub const MAX_KEPT_THREAD_BUF: usize = 4 << 20;

/// Lends `f` this thread's buffer `key`, at least `len` bytes long (grown with zeros; the
/// bytes of its last use stay in place), and keeps it for the next use unless it grew past
/// [`MAX_KEPT_THREAD_BUF`]. A fresh buffer per use cost a page fault per 4 KiB.
pub fn with_thread_buf<R>(key: &'static LocalKey<Cell<Vec<u8>>>, len: usize, f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
    // Taken out of the cell while in use, so a nested call could never find it borrowed.
    let mut b = key.with(|c| c.take());
    if b.len() < len {
        b.resize(len, 0);
    }
    let r = f(&mut b);
    if b.capacity() <= MAX_KEPT_THREAD_BUF {
        key.with(|c| c.replace(b));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_by_size_and_bounded() {
        let p = BufPool::new(3 << 20);
        let a = p.take(1 << 20);
        assert_eq!(a.len(), 1 << 20);
        let ptr = a.as_ptr();
        p.give(a);
        assert_eq!(p.bytes(), 1 << 20);
        // A chunk of 600 KiB takes the 1 MiB buffer (within twice its size)...
        let b = p.take(600 << 10);
        assert_eq!((b.as_ptr(), b.len()), (ptr, 600 << 10));
        assert_eq!(p.bytes(), 0);
        p.give(b);
        // ...a 2 MiB one does not fit it, and a 300 KiB one would waste it.
        let (big, small) = (p.take(2 << 20), p.take(300 << 10));
        assert_ne!(big.as_ptr(), ptr);
        assert_ne!(small.as_ptr(), ptr);
        assert_eq!(p.bytes(), 1 << 20, "still kept");
        // Growing a kept buffer within its capacity gives the asked length.
        let c = p.take(1 << 20);
        assert_eq!((c.as_ptr(), c.len()), (ptr, 1 << 20));
        // Small buffers are not kept; the byte bound holds.
        p.give(vec![0; 1000]);
        assert_eq!(p.bytes(), 0);
        for _ in 0..5 {
            p.give(vec![0; 1 << 20]);
        }
        assert_eq!(p.bytes(), 3 << 20);
    }
}
