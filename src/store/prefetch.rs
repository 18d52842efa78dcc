//! Open file handles, sequential-run detection and the prefetch plan: which chunks to
//! decode ahead of a reader, within a share of the cache.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use super::cache::ENTRY_OVERHEAD;
use crate::format::ChunkEntry;

/// Chunks decoded ahead of a sequential reader unless told otherwise, on up to four
/// decode threads: the floor of [`default_prefetch`].
pub const DEFAULT_PREFETCH: usize = 8;

/// The prefetch window of the store and the mount (`-o prefetch=N` overrides it): at
/// least two chunks in flight per decode thread, so one sequential reader keeps every
/// core busy, and never below [`DEFAULT_PREFETCH`]. The cache share still caps it.
pub fn default_prefetch(threads: usize) -> usize {
    DEFAULT_PREFETCH.max(threads.saturating_mul(2))
}

/// How the store reads ahead of sequential readers.
#[derive(Clone, Debug)]
pub struct PrefetchConfig {
    /// Chunks decoded ahead of a sequential reader; 0 disables prefetch.
    pub window: usize,
    /// Sequential requests in a row on one handle before prefetch starts: 1 starts on the
    /// second request, so a single small read of a header decodes nothing extra.
    pub run_threshold: u32,
    /// How far past the end of the last request a request may start and still count as
    /// sequential: kernel readahead issues requests slightly out of order.
    pub slack_bytes: u64,
    /// Prefetch may fill at most `1/cache_share` of the cache, counting the chunks being
    /// read, so a prefetched chunk never evicts the one its reader is still on.
    pub cache_share: u64,
    /// Chunks sent to the GPU as one batch (the CPU takes batches of one).
    pub gpu_batch: usize,
    /// The window of a reader's first sequential request; it doubles with each further
    /// one, up to `window`, and falls back here on a seek. Equal to `window` for local
    /// packs (no ramp); small for remote ones, so a reader's first fetch is not queued
    /// behind a burst of read-ahead GETs (mountpoint-s3 ramps its window the same way).
    pub initial_window: usize,
    /// Start no prefetch until at least half the reader's window needs it, then claim all
    /// of it at once: a remote reader's window then moves in runs of neighbouring chunks
    /// that one GET fetches, not one GET per chunk as the reader advances. False for local
    /// packs, where every chunk is its own read anyway.
    pub refill_half: bool,
    /// Drop chunks from the cache once a sequential reader is `slack_bytes` past their end,
    /// recycling their memory for the chunks ahead. Served bytes stay in the kernel's page
    /// cache (files are opened with FOPEN_KEEP_CACHE), so a second copy here only costs
    /// memory, and fresh memory costs a page fault per 4 KiB. True for local packs; false
    /// for remote ones, where a chunk read again would cost a fetch.
    pub drop_behind: bool,
}

impl PrefetchConfig {
    /// The defaults, with a window of `window` chunks.
    pub fn with_window(window: usize) -> PrefetchConfig {
        PrefetchConfig {
            window,
            run_threshold: 1,
            slack_bytes: 4 << 20,
            cache_share: 2,
            gpu_batch: 64,
            initial_window: window,
            refill_half: false,
            drop_behind: true,
        }
    }

    /// Like [`with_window`](Self::with_window), with a window that starts at `initial`
    /// chunks and grows, refilled by halves (for remote packs).
    pub fn ramped(window: usize, initial: usize) -> PrefetchConfig {
        PrefetchConfig {
            initial_window: initial.clamp(1, window.max(1)),
            refill_half: true,
            drop_behind: false,
            ..PrefetchConfig::with_window(window)
        }
    }
}

impl Default for PrefetchConfig {
    fn default() -> Self {
        PrefetchConfig::with_window(DEFAULT_PREFETCH)
    }
}

/// Per open file handle: where the last read ended, for sequential detection.
#[derive(Default)]
struct Handle {
    last_start: u64,
    last_end: u64,
    run: u32,
    /// The reader's current prefetch window (0 until its first sequential request).
    window: usize,
    /// Chunks before this one were already dropped behind the reader.
    behind: usize,
}

/// The open handles of a mount.
#[derive(Default)]
pub(crate) struct Handles {
    map: Mutex<HashMap<u64, Handle>>,
    next: AtomicU64,
}

impl Handles {
    /// Registers a new handle and returns its number (never 0).
    pub fn open(&self) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        self.map.lock().insert(fh, Handle::default());
        fh
    }

    pub fn release(&self, fh: u64) {
        self.map.lock().remove(&fh);
    }

    /// Records a read of `[start, end)` on `fh`. When the reader has now been sequential
    /// for `cfg.run_threshold` requests in a row, the window to prefetch now: it starts at
    /// `cfg.initial_window` and doubles per sequential request up to `cfg.window`.
    pub fn observe(&self, cfg: &PrefetchConfig, fh: u64, start: u64, end: u64) -> Option<usize> {
        if cfg.window == 0 {
            return None;
        }
        let mut hs = self.map.lock();
        let h = hs.entry(fh).or_default();
        let seq = start >= h.last_start && start <= h.last_end.saturating_add(cfg.slack_bytes);
        h.run = if seq { h.run.saturating_add(1) } else { 0 };
        h.last_start = start;
        h.last_end = if seq { h.last_end.max(end) } else { end };
        if h.run < cfg.run_threshold.max(1) {
            h.window = 0;
            return None;
        }
        h.window = match h.window {
            0 => cfg.initial_window.clamp(1, cfg.window),
            w => w.saturating_mul(2).min(cfg.window),
        };
        Some(h.window)
    }
}

/// Most chunks one [`Handles::behind`] call hands out.
pub const MAX_BEHIND: usize = 256;

impl Handles {
    /// The chunks a sequential reader on `fh` has left behind since the last call: from
    /// where that call stopped up to (not including) `upto`, at most [`MAX_BEHIND`] of
    /// them (a reader that jumped ahead never read what it skipped). A reader that went
    /// back starts over from `upto`.
    pub fn behind(&self, fh: u64, upto: usize) -> std::ops::Range<usize> {
        let mut hs = self.map.lock();
        let Some(h) = hs.get_mut(&fh) else {
            return 0..0;
        };
        let from = h.behind.min(upto).max(upto.saturating_sub(MAX_BEHIND));
        h.behind = upto;
        from..upto
    }
}

/// The chunks to decode ahead, from chunk `from` on, for a reader whose current chunks
/// cost `current` bytes of cache: at most `window` of them, within the cache share,
/// skipping chunks that `skip` says need no decode (raw, cached or in flight).
pub(crate) fn plan(
    cfg: &PrefetchConfig,
    window: usize,
    chunks: &[ChunkEntry],
    from: usize,
    current: u64,
    capacity: u64,
    skip: impl Fn(usize) -> bool,
) -> Vec<usize> {
    let budget = capacity / cfg.cache_share.max(1);
    let window = window.min(cfg.window);
    let mut bytes = current;
    let mut out = Vec::new();
    let end = from.saturating_add(window);
    let mut cut = end >= chunks.len();
    for i in from..end.min(chunks.len()) {
        bytes += chunks[i].orig_len as u64 + ENTRY_OVERHEAD;
        if bytes > budget {
            cut = true;
            break;
        }
        if !skip(i) {
            out.push(i);
        }
    }
    // A window cut short (end of file, cache share) is as full as it gets: take what it has.
    if cfg.refill_half && !cut && out.len() < window.div_ceil(2) {
        out.clear();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_start_after_the_threshold_and_reset_on_a_seek() {
        let cfg = PrefetchConfig::with_window(4);
        let h = Handles::default();
        let fh = h.open();
        assert!(fh != 0);
        // A reader starting at the front counts as sequential at once.
        assert_eq!(h.observe(&cfg, fh, 0, 4096), Some(4));
        assert_eq!(h.observe(&cfg, fh, 4096, 8192), Some(4));
        assert_eq!(h.observe(&cfg, fh, 8192, 16384), Some(4));
        assert_eq!(
            h.observe(&cfg, fh, 100 << 20, (100 << 20) + 4096),
            None,
            "a far seek resets the run"
        );
        assert_eq!(h.observe(&cfg, fh, 0, 4096), None, "a backward seek resets the run");
        let off = PrefetchConfig::with_window(0);
        assert_eq!(h.observe(&off, fh, 4096, 8192), None, "window 0 never prefetches");
    }

    #[test]
    fn a_ramped_window_starts_small_doubles_and_resets_on_a_seek() {
        let cfg = PrefetchConfig::ramped(16, 2);
        let h = Handles::default();
        let fh = h.open();
        let mut at = 0u64;
        let mut seen = Vec::new();
        for _ in 0..6 {
            seen.push(h.observe(&cfg, fh, at, at + 4096));
            at += 4096;
        }
        assert_eq!(seen, [Some(2), Some(4), Some(8), Some(16), Some(16), Some(16)]);
        assert_eq!(h.observe(&cfg, fh, 1 << 40, (1 << 40) + 1), None);
        assert_eq!(
            h.observe(&cfg, fh, (1 << 40) + 1, (1 << 40) + 2),
            Some(2),
            "back to the start"
        );
        // An initial window above the window is clamped.
        assert_eq!(PrefetchConfig::ramped(4, 100).initial_window, 4);
    }

    #[test]
    fn chunks_behind_a_reader_are_handed_out_once() {
        let h = Handles::default();
        let fh = h.open();
        assert_eq!(h.behind(fh, 0), 0..0);
        assert_eq!(h.behind(fh, 3), 0..3);
        assert_eq!(h.behind(fh, 3), 3..3, "nothing new");
        assert_eq!(h.behind(fh, 5), 3..5);
        assert_eq!(h.behind(fh, 2), 2..2, "a reader that went back starts over");
        assert_eq!(h.behind(fh, 4), 2..4);
        assert_eq!(h.behind(fh + 1, 9), 0..0, "unknown handle");
        assert_eq!(h.behind(fh, 10_000), 10_000 - MAX_BEHIND..10_000, "a jump ahead");
    }

    #[test]
    fn the_default_window_grows_with_the_threads() {
        assert_eq!(default_prefetch(1), DEFAULT_PREFETCH);
        assert_eq!(default_prefetch(4), DEFAULT_PREFETCH);
        assert_eq!(default_prefetch(16), 32);
        assert_eq!(default_prefetch(64), 128);
        assert_eq!(default_prefetch(usize::MAX), usize::MAX);
    }

    #[test]
    fn plan_stays_within_window_and_cache_share() {
        let e = |len: u32| ChunkEntry {
            orig_offset: 0,
            orig_len: len,
            payload_len: 0,
            payload_offset: 0,
            xxh3: 0,
            codec: crate::chunk::ChunkCodec::Raw,
            transform: crate::transform::Transform::None,
            dtype: 0,
            tensor: 0,
        };
        let chunks: Vec<ChunkEntry> = (0..20).map(|_| e(1000)).collect();
        let cfg = PrefetchConfig::with_window(8);
        assert_eq!(
            plan(&cfg, 8, &chunks, 2, 0, 1 << 30, |_| false),
            (2..10).collect::<Vec<_>>()
        );
        // Half of a cache of 4 entries' cost: two chunks fit.
        let cap = 4 * (1000 + ENTRY_OVERHEAD);
        assert_eq!(plan(&cfg, 8, &chunks, 0, 0, cap, |_| false), [0, 1]);
        // What the reader holds now counts against the share.
        assert_eq!(plan(&cfg, 8, &chunks, 0, 1000 + ENTRY_OVERHEAD, cap, |_| false), [0]);
        // Skipped chunks still count (they may be cached), but are not planned.
        assert_eq!(plan(&cfg, 8, &chunks, 0, 0, 1 << 30, |i| i % 2 == 0), [1, 3, 5, 7]);
        assert!(plan(&cfg, 8, &chunks, 19, 0, 1 << 30, |_| false) == [19]);
        assert!(plan(&cfg, 8, &chunks, 25, 0, 1 << 30, |_| false).is_empty());

        // Refilled by halves: nothing until half the window is free, then all of it.
        let half = PrefetchConfig::ramped(8, 2);
        assert!(plan(&half, 8, &chunks, 0, 0, 1 << 30, |i| i < 5).is_empty());
        assert_eq!(plan(&half, 8, &chunks, 0, 0, 1 << 30, |i| i < 4), [4, 5, 6, 7]);
        // A window cut by the end of the file or the cache share takes what it has.
        assert_eq!(plan(&half, 8, &chunks, 12, 0, 1 << 30, |i| i < 19), [19]);
        assert_eq!(plan(&half, 8, &chunks, 0, 0, cap, |i| i < 1), [1]);
    }
}
