//! `verify`: decode every chunk, check every checksum and every whole-file digest.

use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use serde::Serialize;

use std::os::unix::ffi::OsStrExt;

use super::digest::{self, Pieces, TreeHasher};
use super::{read_marker, walk, Progress, SUFFIX};
use crate::error::{Error, Result};
use crate::format::tree::{classify, Packed};
use crate::format::Container;
use crate::gpu;
use crate::store::decode::Pooled;
use crate::store::pool::BufPool;

#[derive(Clone, Debug, Serialize)]
pub struct FileVerify {
    pub path: String,
    pub size: u64,
    pub packed: u64,
    pub chunks: usize,
    /// `None` when the file verified; the damage otherwise, naming the chunk.
    pub error: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct VerifyReport {
    pub files: Vec<FileVerify>,
    pub bytes: u64,
    pub seconds: f64,
    /// Chunks decoded on the GPU (and checked on the host); 0 without one.
    pub gpu_chunks: u64,
    /// Chunks given to the GPU that came back unusable and were decoded on the CPU.
    pub gpu_fallbacks: u64,
    /// Those of `gpu_fallbacks` in files that verified: the CPU found the chunks sound, so
    /// the GPU decoder got them wrong. Any is a GPU defect.
    pub gpu_defects: u64,
}

impl VerifyReport {
    pub fn failures(&self) -> usize {
        self.files.iter().filter(|f| f.error.is_some()).count()
    }
}

/// GPU batches of one container, counted while it streams.
#[derive(Debug, Default)]
struct GpuTally {
    chunks: AtomicU64,
    fallbacks: AtomicU64,
}

/// Chunks per GPU batch: enough sub-blocks to fill a large GPU (64 x 1 MiB chunks of
/// BF16 are ~2000 warps) while keeping the host's window memory modest.
const GPU_WINDOW: usize = 64;

/// Most decoded bytes one window holds at once, whatever the thread count: 4 chunks per
/// thread of 64 MiB chunks would be 2 GiB at -j8. Normal 1 MiB chunks fill a window by
/// count long before this, so their parallelism is unchanged.
pub const WINDOW_BYTES: u64 = 256 << 20;

/// Splits chunks of decoded lengths `lens` into consecutive windows of at most
/// `max_chunks` chunks and `max_bytes` decoded bytes. Every window has at least one chunk
/// (a chunk larger than `max_bytes` gets one of its own), so every chunk is covered.
pub(crate) fn plan_windows(
    lens: impl IntoIterator<Item = u64>,
    max_chunks: usize,
    max_bytes: u64,
) -> Vec<Range<usize>> {
    let max_chunks = max_chunks.max(1);
    let mut out = Vec::new();
    let (mut start, mut end, mut bytes) = (0, 0, 0u64);
    for len in lens {
        let full = end - start == max_chunks || bytes.saturating_add(len) > max_bytes;
        if end > start && full {
            out.push(start..end);
            (start, bytes) = (end, 0);
        }
        bytes = bytes.saturating_add(len);
        end += 1;
    }
    if end > start {
        out.push(start..end);
    }
    out
}

/// Free decoded buffers for [`stream_chunks`], shared by every file of one run so each
/// file does not start on fresh pages: two windows' worth, the most in use at once.
pub fn window_bufs() -> BufPool {
    BufPool::new((2 * WINDOW_BYTES.min(64 << 20)) as usize)
}

/// Decodes every chunk of `c` (on the pool's CPUs chunk by chunk, or in windows on the GPU
/// when `gpu` is given and from a remote source), hands each to `sink` in order, and
/// proves the whole-file digest. Never hands a chunk
/// that failed its checksum to `sink`. Decoded buffers are recycled through `bufs`.
pub fn stream_chunks(
    c: &Container,
    pool: &rayon::ThreadPool,
    gpu: Option<&gpu::Decoder>,
    bufs: &BufPool,
    sink: impl FnMut(usize, &[u8]) -> Result<()>,
) -> Result<()> {
    stream_chunks_tallied(c, pool, gpu, bufs, &GpuTally::default(), sink)
}

/// The whole-file digest as it is being computed.
enum Digest {
    /// Hashed in pieces: the decoding threads hash the subtrees inside each chunk.
    Tree(TreeHasher),
    /// Small files, and files of one chunk: hashed here, in order.
    Whole(Box<blake3::Hasher>),
}

/// [`stream_chunks`], counting the GPU's chunks and fallbacks into `tally`.
fn stream_chunks_tallied(
    c: &Container,
    pool: &rayon::ThreadPool,
    gpu: Option<&gpu::Decoder>,
    bufs: &BufPool,
    tally: &GpuTally,
    mut sink: impl FnMut(usize, &[u8]) -> Result<()>,
) -> Result<()> {
    let total = c.meta.size;
    let split = digest::splittable(total, c.chunks.iter().map(|e| e.orig_len as u64));
    let mut hasher = if split {
        Digest::Tree(TreeHasher::new(total))
    } else {
        Digest::Whole(Box::default())
    };
    // Runs on the decoding thread, right after the chunk passed its checksum.
    let hash_inside = |i: usize, d: &[u8]| split.then(|| digest::pieces(d, c.chunks[i].orig_offset, total));
    let window = if gpu.is_some() {
        GPU_WINDOW
    } else if c.is_remote() {
        // Enough payload per window for several parallel ranged GETs.
        REMOTE_WINDOW.max(pool.current_num_threads() * 4)
    } else {
        pool.current_num_threads() * 4
    };
    // Decoded buffers go back to `bufs` once consumed: the next chunks decode into pages
    // already faulted in.
    let src = Pooled { inner: c, pool: bufs };
    if gpu.is_none() && !c.is_remote() {
        stream_each(c, pool, &src, window, &hash_inside, |i, d| {
            consume_one(c, i, d, &mut hasher, &mut sink, bufs)
        })?;
        return check_digest(c, hasher);
    }
    let idx: Vec<usize> = (0..c.chunks.len()).collect();
    let lens = c.chunks.iter().map(|e| e.orig_len as u64);
    let decode = |w: Range<usize>| -> Result<Decoded> {
        let group = &idx[w.clone()];
        // The one decode path of the mount too: a GPU batch, or the chunks in parallel on
        // the pool's CPUs; a remote container's window is fetched as one span first.
        if gpu.is_none() && c.is_remote() {
            decode_remote_window(c, pool, w, &hash_inside)
        } else {
            let on_gpu = |r: &crate::store::decode::BatchReport| {
                tally.chunks.fetch_add(r.gpu_chunks, Relaxed);
                tally.fallbacks.fetch_add(r.gpu_fallbacks, Relaxed);
            };
            Ok(pool.install(|| crate::store::decode::decode_chunks_then(&src, group, gpu, &on_gpu, &hash_inside)))
        }
    };
    // Window k+1 decodes on the pool while this thread hashes and hands on window k, so
    // the whole-file digest and the sink (a file write, for unpack) do not leave the
    // decode threads idle between windows. At most two windows are held at once.
    let mut windows = plan_windows(lens, window, WINDOW_BYTES).into_iter();
    let mut ready: Option<(Range<usize>, Decoded)> = None;
    loop {
        let next = windows.next();
        let (done, consumed) = match (next, ready.take()) {
            (None, None) => break,
            (Some(w), None) => (Some((w.clone(), decode(w)?)), Ok(())),
            (next, Some((w, decoded))) => {
                let mut decoded_next = None;
                let consumed = pool.in_place_scope(|s| {
                    if let Some(n) = next {
                        let slot = &mut decoded_next;
                        let decode = &decode;
                        s.spawn(move |_| *slot = Some((n.clone(), decode(n))));
                    }
                    consume(c, w, decoded, &mut hasher, &mut sink, bufs)
                });
                let done = match decoded_next {
                    Some((n, r)) => Some((n, r?)),
                    None => None,
                };
                (done, consumed)
            }
        };
        consumed?;
        ready = done;
    }
    check_digest(c, hasher)
}

/// Decodes the chunks of a local container on the pool's CPUs, each chunk a task of its
/// own, and hands them to `on_chunk` in order on this thread. Up to `ahead` chunks (and
/// [`WINDOW_BYTES`]) are decoded ahead of the one handed on. Windows decoded as a whole
/// made every thread wait for the slowest chunk of each before the next could start,
/// which left a fifth of two cores idle.
fn stream_each(
    c: &Container,
    pool: &rayon::ThreadPool,
    src: &dyn crate::store::decode::Chunks,
    ahead: usize,
    hash_inside: &(dyn Fn(usize, &[u8]) -> Option<Pieces> + Sync),
    mut on_chunk: impl FnMut(usize, Result<(Vec<u8>, Option<Pieces>)>) -> Result<()>,
) -> Result<()> {
    use std::collections::BTreeMap;
    use std::panic::{catch_unwind, AssertUnwindSafe};
    let n = c.chunks.len();
    let len = |i: usize| c.chunks[i].orig_len as u64;
    let (tx, rx) = std::sync::mpsc::channel();
    pool.in_place_scope(|s| {
        let (mut next, mut bytes_ahead) = (0, 0u64);
        // Chunks that finished before the ones ahead of them; at most `ahead` of them.
        let mut early = BTreeMap::new();
        for i in 0..n {
            while next < n && (next == i || (next - i < ahead && bytes_ahead + len(next) <= WINDOW_BYTES)) {
                let (tx, k) = (tx.clone(), next);
                s.spawn(move |_| {
                    // Every task answers, even one whose hashing panicked: this thread waits
                    // for each chunk in turn.
                    let r = catch_unwind(AssertUnwindSafe(|| {
                        crate::store::decode::decode_chunks_then(src, &[k], None, &|_| {}, hash_inside).pop()
                    }))
                    .ok()
                    .flatten()
                    .unwrap_or_else(|| Err(Error::corrupt(c.path(), Some(k as u32), "decoder panicked")));
                    let _ = tx.send((k, r));
                });
                bytes_ahead += len(next);
                next += 1;
            }
            let d = loop {
                if let Some(d) = early.remove(&i) {
                    break d;
                }
                // Cannot fail: `tx` lives until the scope ends.
                match rx.recv() {
                    Ok((k, d)) => {
                        early.insert(k, d);
                    }
                    Err(_) => return Err(Error::corrupt(c.path(), Some(i as u32), "chunk not decoded")),
                }
            };
            bytes_ahead -= len(i);
            on_chunk(i, d)?;
        }
        Ok(())
    })
}

/// Checks the whole-file digest once every chunk went through `hasher`.
fn check_digest(c: &Container, hasher: Digest) -> Result<()> {
    let digest = match hasher {
        Digest::Tree(t) => t.finalize(),
        Digest::Whole(h) => Some(*h.finalize().as_bytes()),
    };
    if digest != Some(c.meta.blake3) {
        return Err(Error::corrupt(c.path(), None, "whole-file BLAKE3 digest mismatch"));
    }
    Ok(())
}

/// One window's chunks, decoded and checked, with the digest of the subtrees inside each
/// (or the error of each).
type Decoded = Vec<Result<(Vec<u8>, Option<Pieces>)>>;

/// Hashes and hands on one decoded window in order, then recycles its buffers; stops at
/// the first chunk that failed.
fn consume(
    c: &Container,
    w: Range<usize>,
    decoded: Decoded,
    hasher: &mut Digest,
    sink: &mut impl FnMut(usize, &[u8]) -> Result<()>,
    bufs: &BufPool,
) -> Result<()> {
    for (i, d) in w.zip(decoded) {
        consume_one(c, i, d, hasher, sink, bufs)?;
    }
    Ok(())
}

/// Hashes and hands on chunk `i`, then recycles its buffer.
fn consume_one(
    c: &Container,
    i: usize,
    d: Result<(Vec<u8>, Option<Pieces>)>,
    hasher: &mut Digest,
    sink: &mut impl FnMut(usize, &[u8]) -> Result<()>,
    bufs: &BufPool,
) -> Result<()> {
    let (d, pieces) = d?;
    match (hasher, &pieces) {
        (Digest::Tree(t), Some(p)) => t.add(c.chunks[i].orig_offset, &d, p),
        // Every chunk of a split file comes with its pieces; were one not to, the digest
        // must fail rather than skip it.
        (Digest::Tree(t), None) => t.poison(),
        (Digest::Whole(h), _) => {
            h.update(&d);
        }
    }
    sink(i, &d)?;
    bufs.give(d);
    Ok(())
}

/// Chunks per window of a remote container: 64 chunks of 1 MiB are several 8 MiB GETs.
const REMOTE_WINDOW: usize = 64;

/// Fetches a window's payloads in one span (split by the source into parallel ranged
/// GETs) and decodes them in parallel. A chunk that fails its checks is fetched once more
/// on its own (damage in transit), and only then reported.
fn decode_remote_window(
    c: &Container,
    pool: &rayon::ThreadPool,
    w: Range<usize>,
    hash_inside: &(dyn Fn(usize, &[u8]) -> Option<Pieces> + Sync),
) -> Result<Decoded> {
    use rayon::prelude::*;
    let (span, at) = c.read_payload_span(w.clone())?;
    Ok(pool.install(|| {
        w.into_par_iter()
            .zip(at.into_par_iter())
            .map(|(i, a)| {
                let e = &c.chunks[i];
                let mut out = vec![0u8; e.orig_len as usize];
                let out = match c.decode_payload(i, &span[a..a + e.payload_len as usize], &mut out) {
                    Ok(()) => Ok(out),
                    Err(first) => {
                        tracing::warn!("{first}; fetching the chunk again");
                        c.decode_chunk(i)
                    }
                };
                out.map(|d| {
                    let p = hash_inside(i, &d);
                    (d, p)
                })
            })
            .collect()
    }))
}

/// Verifies a remote pack: every container the manifest lists, checked against the
/// manifest and then decoded in full like a local one.
pub fn verify_remote(
    pack: &crate::remote::pack::RemotePack,
    threads: usize,
    progress: &dyn Progress,
) -> Result<VerifyReport> {
    let t0 = Instant::now();
    let pool = super::thread_pool(threads);
    let bufs = window_bufs();
    let mut report = VerifyReport::default();
    progress.set_total(pack.files().map(|e| e.size).sum());
    for e in pack.files() {
        progress.message(&e.path);
        let r = pack.open_container(e).and_then(|c| {
            stream_chunks(&c, &pool, None, &bufs, |i, _| {
                progress.advance(c.chunks[i].orig_len as u64);
                Ok(())
            })
            .map(|()| c)
        });
        let (chunks, error) = match r {
            Ok(c) => (c.chunks.len(), None),
            Err(err) => (0, Some(err.to_string())),
        };
        report.bytes += e.size;
        report.files.push(FileVerify {
            path: e.container(),
            size: e.size,
            packed: e.packed,
            chunks,
            error,
        });
    }
    report.seconds = t0.elapsed().as_secs_f64();
    Ok(report)
}

/// Verifies one container, counting its GPU batches into `tally`.
fn verify_container(
    path: &Path,
    pool: &rayon::ThreadPool,
    gpu: Option<&gpu::Decoder>,
    bufs: &BufPool,
    tally: &GpuTally,
    progress: &dyn Progress,
) -> Result<Container> {
    let c = Container::open(path)?;
    stream_chunks_tallied(&c, pool, gpu, bufs, tally, |i, _| {
        progress.advance(c.chunks[i].orig_len as u64);
        Ok(())
    })?;
    Ok(c)
}

/// Verifies a packed tree (or one `.dcz` file). Damage is reported per file, not thrown:
/// the caller decides the exit code from [`VerifyReport::failures`].
pub fn verify_tree(packed: &Path, threads: usize, progress: &dyn Progress) -> Result<VerifyReport> {
    verify_tree_with(packed, threads, None, progress)
}

/// [`verify_tree`], decoding on `gpu` when given.
pub fn verify_tree_with(
    packed: &Path,
    threads: usize,
    gpu: Option<&gpu::Decoder>,
    progress: &dyn Progress,
) -> Result<VerifyReport> {
    let t0 = Instant::now();
    let pool = super::thread_pool(threads);
    let mut containers = Vec::new();
    let mut report = VerifyReport::default();
    if packed.is_file() {
        containers.push((packed.to_path_buf(), packed.display().to_string()));
    } else {
        read_marker(packed)?;
        for e in walk(packed)? {
            match classify(&e) {
                Packed::Container { rel, .. } => {
                    containers.push((packed.join(rel), rel.to_string_lossy().into_owned()));
                }
                // Named like a container but not one: the pack is damaged, not just odd.
                Packed::Foreign(rel, why) if rel.as_os_str().as_bytes().ends_with(SUFFIX.as_bytes()) => {
                    report.files.push(FileVerify {
                        path: rel.to_string_lossy().into_owned(),
                        size: 0,
                        packed: 0,
                        chunks: 0,
                        error: Some(format!("{why}; refused")),
                    });
                }
                Packed::Foreign(rel, why) => progress.warn(&format!("{}: {why}; ignored", rel.display())),
                Packed::Dir(_) | Packed::Symlink(_) | Packed::Marker | Packed::Temporary(_) => {}
            }
        }
    }
    let mut total = 0;
    for (p, _) in &containers {
        total += Container::open(p).map(|c| c.meta.size).unwrap_or(0);
    }
    progress.set_total(total);
    let bufs = window_bufs();
    for (p, name) in containers {
        progress.message(&name);
        let tally = GpuTally::default();
        let r = verify_container(&p, &pool, gpu, &bufs, &tally, progress);
        let fallbacks = tally.fallbacks.load(Relaxed);
        report.gpu_chunks += tally.chunks.load(Relaxed);
        report.gpu_fallbacks += fallbacks;
        if r.is_ok() {
            report.gpu_defects += fallbacks;
        }
        let (size, packed_len, chunks, error) = match r {
            Ok(c) => (c.meta.size, c.packed_len(), c.chunks.len(), None),
            Err(e) => {
                let (s, pl, n) =
                    Container::open(&p).map_or((0, 0, 0), |c| (c.meta.size, c.packed_len(), c.chunks.len()));
                (s, pl, n, Some(e.to_string()))
            }
        };
        report.bytes += size;
        report.files.push(FileVerify {
            path: name,
            size,
            packed: packed_len,
            chunks,
            error,
        });
    }
    report.seconds = t0.elapsed().as_secs_f64();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn sizes(w: &[Range<usize>]) -> Vec<usize> {
        w.iter().map(|r| r.len()).collect()
    }

    #[test]
    fn normal_chunks_fill_windows_by_count() {
        // 1 MiB chunks at -j8: 32 chunks (32 MiB) per window, as before the byte cap.
        let w = plan_windows(vec![MIB; 100], 32, WINDOW_BYTES);
        assert_eq!(sizes(&w), [32, 32, 32, 4]);
    }

    #[test]
    fn large_chunks_are_capped_in_bytes() {
        // 64 MiB chunks at -j8: 4 chunks (256 MiB) per window, not 32 (2 GiB).
        let w = plan_windows(vec![64 * MIB; 10], 32, WINDOW_BYTES);
        assert_eq!(sizes(&w), [4, 4, 2]);
    }

    #[test]
    fn a_chunk_over_the_cap_gets_a_window_of_its_own() {
        let w = plan_windows([10, 300, 10, 10], 8, 100);
        assert_eq!(w, [0..1, 1..2, 2..4]);
        assert_eq!(plan_windows([5, 5], 0, 100), [0..1, 1..2]);
        assert!(plan_windows([], 8, 100).is_empty());
    }

    #[test]
    fn windows_cover_every_chunk_in_order_within_both_limits() {
        let mut x = 0x9E3779B97F4A7C15u64;
        for round in 0..200 {
            let n = round % 50;
            let lens: Vec<u64> = (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x % 300
                })
                .collect();
            let (max_chunks, max_bytes) = (1 + round % 7, 50 + (round as u64 * 37) % 400);
            let w = plan_windows(lens.iter().copied(), max_chunks, max_bytes);
            let mut next = 0;
            for r in &w {
                assert_eq!(r.start, next, "windows are consecutive");
                assert!(!r.is_empty() && r.len() <= max_chunks);
                let bytes: u64 = lens[r.clone()].iter().sum();
                assert!(bytes <= max_bytes || r.len() == 1, "{r:?}: {bytes} bytes");
                next = r.end;
            }
            assert_eq!(next, n);
        }
    }
}
