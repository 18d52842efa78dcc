//! Live counters of a mount. Plain atomics: readers on many threads bump them without a lock.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::{Deserialize, Serialize};

#[derive(Default, Debug)]
pub struct Stats {
    reads: AtomicU64,
    bytes_served: AtomicU64,
    chunk_hits: AtomicU64,
    chunk_misses: AtomicU64,
    raw_reads: AtomicU64,
    decodes: AtomicU64,
    bytes_decoded: AtomicU64,
    decode_ns: AtomicU64,
    evictions: AtomicU64,
    dropped_behind: AtomicU64,
    prefetch_issued: AtomicU64,
    prefetch_hits: AtomicU64,
    errors: AtomicU64,
    gpu_chunks: AtomicU64,
    gpu_fallbacks: AtomicU64,
    refetches: AtomicU64,
}

/// A point-in-time copy, as served to `dcfs stats`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Snapshot {
    pub reads: u64,
    pub bytes_served: u64,
    pub chunk_hits: u64,
    pub chunk_misses: u64,
    /// Reads of raw chunks served straight from the container.
    pub raw_reads: u64,
    pub decodes: u64,
    pub bytes_decoded: u64,
    pub decode_seconds: f64,
    /// Bytes charged against the cache bound: data plus `cache_overhead_bytes`.
    pub cache_bytes: u64,
    /// The part of `cache_bytes` that is per-entry bookkeeping, not chunk data.
    #[serde(default)]
    pub cache_overhead_bytes: u64,
    pub cache_entries: u64,
    pub cache_capacity: u64,
    pub evictions: u64,
    /// Chunks dropped from the cache behind sequential readers (their bytes stay in the
    /// kernel's page cache), their memory recycled for later decodes.
    #[serde(default)]
    pub dropped_behind: u64,
    /// Bytes of free chunk buffers kept for reuse.
    #[serde(default)]
    pub pooled_bytes: u64,
    pub prefetch_issued: u64,
    pub prefetch_hits: u64,
    pub errors: u64,
    /// Chunks decoded by the GPU batch decoder (verified on the host).
    #[serde(default)]
    pub gpu_chunks: u64,
    /// Chunks given to the GPU that fell back to the CPU (flagged, bad checksum, failed
    /// batch): on an undamaged pack, a sign the GPU path is broken.
    #[serde(default)]
    pub gpu_fallbacks: u64,
    pub files: u64,
    pub packed_bytes: u64,
    pub original_bytes: u64,
    /// The pack is on object storage; the `net_*` counters are its requests.
    #[serde(default)]
    pub remote: bool,
    /// Ranged GETs sent (retries included).
    #[serde(default)]
    pub net_gets: u64,
    /// Body bytes received.
    #[serde(default)]
    pub net_bytes: u64,
    #[serde(default)]
    pub net_retries: u64,
    /// Requests that failed for good (after retries).
    #[serde(default)]
    pub net_errors: u64,
    /// Chunks whose fetched bytes failed their check and were fetched once more.
    #[serde(default)]
    pub refetches: u64,
    /// A disk cache is in use (`--cache-dir`); the `disk_*` counters are its.
    #[serde(default)]
    pub disk_cache: bool,
    #[serde(default)]
    pub disk_hits: u64,
    #[serde(default)]
    pub disk_hit_bytes: u64,
    #[serde(default)]
    pub disk_misses: u64,
    #[serde(default)]
    pub disk_writes: u64,
    /// Entries not written (no room, or the write failed).
    #[serde(default)]
    pub disk_skipped: u64,
    /// Entries found torn or damaged, deleted and fetched again.
    #[serde(default)]
    pub disk_torn: u64,
    #[serde(default)]
    pub disk_evictions: u64,
    /// Bytes of entries as this mount last counted them.
    #[serde(default)]
    pub disk_usage: u64,
}

impl Stats {
    pub fn read(&self, bytes: u64) {
        self.reads.fetch_add(1, Relaxed);
        self.bytes_served.fetch_add(bytes, Relaxed);
    }
    pub fn hit(&self) {
        self.chunk_hits.fetch_add(1, Relaxed);
    }
    pub fn miss(&self) {
        self.chunk_misses.fetch_add(1, Relaxed);
    }
    pub fn raw_read(&self) {
        self.raw_reads.fetch_add(1, Relaxed);
    }
    pub fn decoded(&self, bytes: u64, ns: u64) {
        self.decodes.fetch_add(1, Relaxed);
        self.bytes_decoded.fetch_add(bytes, Relaxed);
        self.decode_ns.fetch_add(ns, Relaxed);
    }
    pub fn evicted(&self, n: u64) {
        if n > 0 {
            self.evictions.fetch_add(n, Relaxed);
        }
    }
    pub fn dropped_behind(&self) {
        self.dropped_behind.fetch_add(1, Relaxed);
    }
    pub fn prefetch_issued(&self) {
        self.prefetch_issued.fetch_add(1, Relaxed);
    }
    pub fn prefetch_hit(&self) {
        self.prefetch_hits.fetch_add(1, Relaxed);
    }
    pub fn gpu_batch(&self, chunks: u64, fallbacks: u64) {
        self.gpu_chunks.fetch_add(chunks, Relaxed);
        self.gpu_fallbacks.fetch_add(fallbacks, Relaxed);
    }
    pub fn refetch(&self) {
        self.refetches.fetch_add(1, Relaxed);
    }
    pub fn error(&self) {
        self.errors.fetch_add(1, Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            reads: self.reads.load(Relaxed),
            bytes_served: self.bytes_served.load(Relaxed),
            chunk_hits: self.chunk_hits.load(Relaxed),
            chunk_misses: self.chunk_misses.load(Relaxed),
            raw_reads: self.raw_reads.load(Relaxed),
            decodes: self.decodes.load(Relaxed),
            bytes_decoded: self.bytes_decoded.load(Relaxed),
            decode_seconds: self.decode_ns.load(Relaxed) as f64 / 1e9,
            evictions: self.evictions.load(Relaxed),
            dropped_behind: self.dropped_behind.load(Relaxed),
            prefetch_issued: self.prefetch_issued.load(Relaxed),
            prefetch_hits: self.prefetch_hits.load(Relaxed),
            errors: self.errors.load(Relaxed),
            gpu_chunks: self.gpu_chunks.load(Relaxed),
            gpu_fallbacks: self.gpu_fallbacks.load(Relaxed),
            refetches: self.refetches.load(Relaxed),
            ..Default::default()
        }
    }
}
