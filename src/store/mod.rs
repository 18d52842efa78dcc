//! A packed tree opened for serving: the node table the mount presents, and reads of any
//! byte range through a byte-bounded chunk cache, a decode worker pool with in-flight
//! deduplication, and sequential prefetch. Knows nothing of FUSE.

mod cache;
mod stats;

pub use cache::ChunkCache;
pub use stats::{Snapshot, Stats};

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::num::NonZeroUsize;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

use crate::chunk::ChunkCodec;
use crate::error::{Error, Result};
use crate::format::tree::{classify, walk, Entry, Packed};
use crate::format::{chunk_hash, ChunkEntry, Container, FileMeta};
use crate::pack::read_marker;
use cache::{Lookup, Outcome, Ticket};

pub const ROOT_INO: u64 = 1;

/// Chunks one read request decodes at once: enough to keep every decode thread busy on
/// small chunks, few enough to bound what a request over tiny chunks holds in flight.
const READ_WINDOW: usize = 256;

/// Containers kept open at once. A pack may hold far more files than the open-file limit
/// (1024 by default), so the mount keeps chunk tables, not files, and reopens containers
/// on demand through an LRU of at most this many (and at most a quarter of the soft
/// RLIMIT_NOFILE).
pub const DEFAULT_OPEN_FILES: usize = 256;

#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Bound on decoded bytes held in the cache.
    pub cache_bytes: u64,
    /// Decode worker threads.
    pub threads: usize,
    /// Chunks decoded ahead of a sequential reader.
    pub prefetch: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            cache_bytes: default_cache_bytes(),
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            prefetch: 8,
        }
    }
}

/// An eighth of RAM, between 64 MiB and 512 MiB.
pub fn default_cache_bytes() -> u64 {
    let ram = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|k| k.parse::<u64>().ok()))
        })
        .map_or(4 << 30, |kib| kib * 1024);
    (ram / 8).clamp(64 << 20, 512 << 20)
}

#[derive(Debug)]
pub enum NodeKind {
    Dir {
        /// Sorted by name.
        children: Vec<(OsString, u64)>,
        index: HashMap<OsString, u64>,
    },
    File {
        file: u32,
    },
    Symlink {
        target: OsString,
    },
}

#[derive(Debug)]
pub struct Node {
    pub ino: u64,
    pub parent: u64,
    pub name: OsString,
    pub kind: NodeKind,
    pub size: u64,
    /// Permission bits (file type comes from `kind`).
    pub perm: u16,
    pub mtime_s: i64,
    pub mtime_ns: u32,
    pub uid: u32,
    pub gid: u32,
    /// Bytes this node occupies in the pack.
    pub packed: u64,
    pub blksize: u32,
}

/// A served container: what serving needs of its index, and its identity at mount, so a
/// reopen can prove it is still the same file. The file itself is opened on demand.
struct PackedFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
    len: u64,
    meta: FileMeta,
    chunks: Vec<ChunkEntry>,
    /// Raw chunks are checked once, then served by plain pread.
    raw_verified: Vec<AtomicBool>,
}

impl PackedFile {
    /// The chunk holding original byte `offset`, if inside the file.
    fn chunk_at(&self, offset: u64) -> Option<usize> {
        if offset >= self.meta.size {
            return None;
        }
        let i = self.chunks.partition_point(|c| c.orig_end() <= offset);
        (i < self.chunks.len()).then_some(i)
    }

    /// Opens the container again without following a link, and refuses anything that is
    /// not the regular file validated at mount (same device, inode and length).
    fn reopen(&self) -> Result<File> {
        let f = fs::OpenOptions::new()
            .read(true)
            // O_NONBLOCK: a FIFO swapped in must not hang a reader; no effect on files.
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(&self.path)
            .map_err(|e| Error::io(&self.path, e))?;
        let md = f.metadata().map_err(|e| Error::io(&self.path, e))?;
        if !md.is_file() || md.dev() != self.dev || md.ino() != self.ino || md.len() != self.len {
            return Err(Error::corrupt(
                &self.path,
                None,
                "container replaced or resized since the mount",
            ));
        }
        Ok(f)
    }

    fn read_exact_at(&self, file: &File, buf: &mut [u8], offset: u64) -> Result<()> {
        file.read_exact_at(buf, offset).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                Error::corrupt(&self.path, None, "container truncated under us")
            } else {
                Error::io(&self.path, e)
            }
        })
    }

    fn read_payload(&self, file: &File, i: usize) -> Result<Vec<u8>> {
        let c = &self.chunks[i];
        let mut buf = vec![0u8; c.payload_len as usize];
        self.read_exact_at(file, &mut buf, c.payload_offset)?;
        Ok(buf)
    }

    /// Reads, decodes and verifies chunk `i`: wrong bytes never leave here.
    fn decode_chunk(&self, file: &File, i: usize) -> Result<Vec<u8>> {
        let c = &self.chunks[i];
        let payload = self.read_payload(file, i)?;
        let mut out = vec![0u8; c.orig_len as usize];
        crate::chunk::decode(c.codec, c.transform, &payload, &mut out)
            .map_err(|e| Error::codec(&self.path, i as u32, e))?;
        if chunk_hash(&out) != c.xxh3 {
            return Err(Error::corrupt(&self.path, Some(i as u32), "checksum mismatch"));
        }
        Ok(out)
    }
}

/// Per open file handle: where the last read ended, for sequential detection.
#[derive(Default)]
struct Handle {
    last_start: u64,
    last_end: u64,
    run: u32,
    prefetched_upto: Option<u32>,
}

pub struct Store {
    root: PathBuf,
    nodes: Vec<Node>,
    files: Vec<PackedFile>,
    /// Containers open now, by file number; bounded (see [`DEFAULT_OPEN_FILES`]).
    open: Mutex<lru::LruCache<u32, Arc<File>>>,
    cache: ChunkCache,
    pool: rayon::ThreadPool,
    stats: Stats,
    handles: Mutex<HashMap<u64, Handle>>,
    next_fh: AtomicU64,
    logged: Mutex<HashSet<(u32, u32)>>,
    opts: StoreOptions,
    /// Batch decoder for prefetch windows (GPU, or its CPU emulation in tests).
    gpu: Option<crate::gpu::Decoder>,
    packed_bytes: u64,
    original_bytes: u64,
}

impl Store {
    /// Reads and validates the footer and index of every container of the packed tree at
    /// `root`, builds the node table, and closes each container again (they are reopened on
    /// demand). Refuses plain directories and unfinished packs.
    pub fn open(root: &Path, opts: StoreOptions) -> Result<Arc<Store>> {
        Self::open_with_gpu(root, opts, None)
    }

    /// Like [`open`](Self::open); prefetch windows of two or more chunks are decoded as one
    /// batch by `gpu` (checksums are still verified on the host, with CPU fallback).
    pub fn open_with_gpu(root: &Path, opts: StoreOptions, gpu: Option<crate::gpu::Decoder>) -> Result<Arc<Store>> {
        read_marker(root)?;
        let md = fs::metadata(root).map_err(|e| Error::io(root, e))?;
        let mut nodes = vec![Node {
            ino: ROOT_INO,
            parent: ROOT_INO,
            name: OsString::new(),
            kind: NodeKind::Dir {
                children: Vec::new(),
                index: HashMap::new(),
            },
            size: 4096,
            perm: (md.mode() & 0o7777) as u16,
            mtime_s: md.mtime(),
            mtime_ns: md.mtime_nsec() as u32,
            uid: md.uid(),
            gid: md.gid(),
            packed: 0,
            blksize: 4096,
        }];
        let mut files = Vec::new();
        let mut by_path: HashMap<PathBuf, u64> = HashMap::new();
        by_path.insert(PathBuf::new(), ROOT_INO);
        let (mut packed_bytes, mut original_bytes) = (0, 0);
        for e in walk(root)? {
            let (rel, node) = match e {
                Entry::Dir(rel) => {
                    let p = root.join(&rel);
                    let md = fs::symlink_metadata(&p).map_err(|e| Error::io(&p, e))?;
                    let name = rel.file_name().unwrap_or_default().to_os_string();
                    let kind = NodeKind::Dir {
                        children: Vec::new(),
                        index: HashMap::new(),
                    };
                    (rel, Self::new_node(name, kind, &md, 4096, 0, 4096))
                }
                Entry::Symlink(rel) => {
                    let p = root.join(&rel);
                    let md = fs::symlink_metadata(&p).map_err(|e| Error::io(&p, e))?;
                    let target = fs::read_link(&p).map_err(|e| Error::io(&p, e))?.into_os_string();
                    let name = rel.file_name().unwrap_or_default().to_os_string();
                    let size = target.len() as u64;
                    (
                        rel,
                        Self::new_node(name, NodeKind::Symlink { target }, &md, size, 0, 4096),
                    )
                }
                Entry::File(ref rel, len) => {
                    let orig = match classify(&e) {
                        Packed::Container { original, .. } => original.file_name().unwrap_or_default().to_os_string(),
                        Packed::Foreign(_, why) => {
                            tracing::warn!("{}: {why}; not served", rel.display());
                            continue;
                        }
                        _ => continue,
                    };
                    let rel = rel.clone();
                    let p = root.join(&rel);
                    // The tensor table is dropped here: serving never needs it.
                    let (file, clen, meta, chunks) = Container::open(&p)?.into_parts();
                    // Identity from the descriptor just validated, not from the path again.
                    let md = file.metadata().map_err(|e| Error::io(&p, e))?;
                    drop(file);
                    let mut node = Self::new_node(
                        orig.clone(),
                        NodeKind::File {
                            file: files.len() as u32,
                        },
                        &md,
                        meta.size,
                        len,
                        served_blksize(meta.chunk_size),
                    );
                    node.perm = (meta.mode & 0o7777) as u16;
                    node.mtime_s = meta.mtime_s;
                    node.mtime_ns = meta.mtime_ns;
                    packed_bytes += len;
                    original_bytes += meta.size;
                    let raw_verified = (0..chunks.len()).map(|_| AtomicBool::new(false)).collect();
                    files.push(PackedFile {
                        path: p,
                        dev: md.dev(),
                        ino: md.ino(),
                        len: clen,
                        meta,
                        chunks,
                        raw_verified,
                    });
                    (rel.with_file_name(orig), node)
                }
                Entry::Other(rel, what) => {
                    tracing::warn!("{}: {what}; not served", rel.display());
                    continue;
                }
            };
            let parent_rel = rel.parent().map(Path::to_path_buf).unwrap_or_default();
            let Some(&parent) = by_path.get(&parent_rel) else {
                continue;
            };
            let ino = nodes.len() as u64 + 1;
            let mut node = node;
            node.ino = ino;
            node.parent = parent;
            if let NodeKind::Dir { children, index } = &mut nodes[parent as usize - 1].kind {
                if index.contains_key(&node.name) {
                    tracing::warn!("{}: name served twice; keeping the first", rel.display());
                    continue;
                }
                children.push((node.name.clone(), ino));
                index.insert(node.name.clone(), ino);
            }
            if matches!(node.kind, NodeKind::Dir { .. }) {
                by_path.insert(rel, ino);
            }
            nodes.push(node);
        }
        for n in &mut nodes {
            if let NodeKind::Dir { children, .. } = &mut n.kind {
                children.sort();
            }
        }
        let largest = files.iter().flat_map(|f| &f.chunks).map(|e| e.orig_len).max();
        if let Some(l) = largest.filter(|&l| l as u64 + cache::ENTRY_OVERHEAD > opts.cache_bytes) {
            tracing::warn!(
                "the largest chunk ({l} bytes) exceeds the cache ({} bytes): each such chunk is \
                 held alone while read, and readers of two of them at once decode them repeatedly",
                opts.cache_bytes
            );
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(opts.threads.max(1))
            .thread_name(|i| format!("dcfs-decode-{i}"))
            .build()
            .map_err(|e| Error::Invalid {
                path: root.to_path_buf(),
                what: format!("cannot start decode threads: {e}"),
            })?;
        Ok(Arc::new(Store {
            root: root.to_path_buf(),
            nodes,
            files,
            open: Mutex::new(lru::LruCache::new(open_files_bound())),
            cache: ChunkCache::new(opts.cache_bytes),
            pool,
            stats: Stats::default(),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            logged: Mutex::new(HashSet::new()),
            opts,
            gpu,
            packed_bytes,
            original_bytes,
        }))
    }

    fn new_node(name: OsString, kind: NodeKind, md: &fs::Metadata, size: u64, packed: u64, blksize: u32) -> Node {
        Node {
            ino: 0,
            parent: 0,
            name,
            kind,
            size,
            perm: (md.mode() & 0o7777) as u16,
            mtime_s: md.mtime(),
            mtime_ns: md.mtime_nsec() as u32,
            uid: md.uid(),
            gid: md.gid(),
            packed,
            blksize,
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn node(&self, ino: u64) -> Option<&Node> {
        ino.checked_sub(1).and_then(|i| self.nodes.get(i as usize))
    }

    pub fn lookup(&self, parent: u64, name: &OsStr) -> Option<&Node> {
        match &self.node(parent)?.kind {
            NodeKind::Dir { index, .. } => index.get(name).and_then(|&i| self.node(i)),
            _ => None,
        }
    }

    pub fn node_count(&self) -> u64 {
        self.nodes.len() as u64
    }

    /// Bytes the pack occupies and the originals it serves.
    pub fn sizes(&self) -> (u64, u64) {
        (self.packed_bytes, self.original_bytes)
    }

    pub fn stats(&self) -> Snapshot {
        let mut s = self.stats.snapshot();
        let (b, n) = self.cache.usage();
        s.cache_bytes = b;
        s.cache_overhead_bytes = n * cache::ENTRY_OVERHEAD;
        s.cache_entries = n;
        s.cache_capacity = self.cache.capacity();
        s.files = self.files.len() as u64;
        s.packed_bytes = self.packed_bytes;
        s.original_bytes = self.original_bytes;
        s
    }

    /// Registers an open file handle (sequential-read tracking lives there).
    pub fn open_handle(&self) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().insert(fh, Handle::default());
        fh
    }

    pub fn release(&self, fh: u64) {
        self.handles.lock().remove(&fh);
    }

    /// The open container of file `fidx`, reopening (and re-checking) it when the LRU of
    /// open files has let it go.
    fn file(&self, fidx: u32) -> Result<Arc<File>> {
        if let Some(f) = self.open.lock().get(&fidx) {
            return Ok(f.clone());
        }
        // Open outside the lock: a slow filesystem must not stall readers of other files.
        let f = Arc::new(self.files[fidx as usize].reopen()?);
        self.open.lock().put(fidx, f.clone());
        Ok(f)
    }

    fn file_of(&self, ino: u64) -> Option<(u32, &PackedFile)> {
        match self.node(ino)?.kind {
            NodeKind::File { file } => Some((file, &self.files[file as usize])),
            _ => None,
        }
    }

    /// Reads up to `size` bytes at `offset` of file `ino`; short only at end of file.
    /// Corrupt chunks give `Err` (EIO at the mount), never wrong bytes.
    pub fn read(self: &Arc<Self>, ino: u64, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        let Some((fidx, f)) = self.file_of(ino) else {
            let path = self.root.clone();
            return Err(match self.node(ino).map(|n| &n.kind) {
                None => Error::NotFound {
                    path,
                    what: format!("no inode {ino}"),
                },
                Some(NodeKind::Dir { .. }) => Error::IsADirectory {
                    path,
                    what: format!("inode {ino} is a directory"),
                },
                Some(_) => Error::Invalid {
                    path,
                    what: format!("inode {ino} is not a file"),
                },
            });
        };
        let c = f;
        let end = offset.saturating_add(size as u64).min(c.meta.size);
        if offset >= end {
            return Ok(Vec::new());
        }
        let first = c.chunk_at(offset).expect("offset inside the file");
        let last = c.chunk_at(end - 1).expect("end inside the file");
        let mut out = Vec::with_capacity((end - offset) as usize);
        // Start the decodes of a window of chunks before waiting on any, so they run in
        // parallel; a window, not the whole request, so a request over a million one-byte
        // chunks does not hold a million decodes (and their bookkeeping) at once.
        let mut lo = first;
        while lo <= last {
            let hi = last.min(lo + READ_WINDOW - 1);
            let pending: Vec<Option<Pending>> = (lo..=hi).map(|i| self.request(fidx, i as u32, false)).collect();
            if lo == first {
                if let Some(upto) = self.sequential(fh, offset, end) {
                    let current = c.chunks[first..=last]
                        .iter()
                        .map(|e| e.orig_len as u64 + cache::ENTRY_OVERHEAD)
                        .sum();
                    self.prefetch(fidx, last as u32 + 1, upto, current);
                }
            }
            for (i, p) in (lo..=hi).zip(pending) {
                let e = &c.chunks[i];
                let from = offset.max(e.orig_offset) - e.orig_offset;
                let to = end.min(e.orig_end()) - e.orig_offset;
                let r = match p {
                    None => self.read_raw(fidx, i, from, to, &mut out),
                    Some(p) => p
                        .get()
                        .map(|data| out.extend_from_slice(&data[from as usize..to as usize])),
                };
                if let Err(e) = r {
                    self.stats.error();
                    if self.logged.lock().insert((fidx, i as u32)) {
                        tracing::error!("{e}");
                    }
                    return Err(e);
                }
            }
            lo = hi + 1;
        }
        self.stats.read(out.len() as u64);
        Ok(out)
    }

    /// Updates the handle's sequential state; returns how far to prefetch (exclusive chunk
    /// bound) when the reader looks sequential.
    fn sequential(&self, fh: u64, start: u64, end: u64) -> Option<u32> {
        if self.opts.prefetch == 0 {
            return None;
        }
        let mut hs = self.handles.lock();
        let h = hs.entry(fh).or_default();
        // Kernel readahead issues requests slightly out of order: accept a small window.
        let seq = start >= h.last_start && start <= h.last_end.saturating_add(4 << 20);
        h.run = if seq { h.run.saturating_add(1) } else { 0 };
        h.last_start = start;
        h.last_end = h.last_end.max(end);
        if !seq {
            h.last_end = end;
            h.prefetched_upto = None;
        }
        (h.run >= 1).then_some(self.opts.prefetch as u32)
    }

    /// Decodes up to `n` chunks from `from` ahead of a reader whose current chunks cost
    /// `current` bytes of cache.
    fn prefetch(self: &Arc<Self>, fidx: u32, from: u32, n: u32, current: u64) {
        let c = &self.files[fidx as usize];
        // Never prefetch more than half the cache could hold, counting the chunks being
        // read: a prefetched chunk must not evict the one its reader is still on.
        let budget = self.cache.capacity() / 2;
        let mut bytes = current;
        let mut batch = Vec::new();
        for i in from..from.saturating_add(n).min(c.chunks.len() as u32) {
            let e = &c.chunks[i as usize];
            bytes += e.orig_len as u64 + cache::ENTRY_OVERHEAD;
            if bytes > budget {
                break;
            }
            if e.codec == ChunkCodec::Raw || self.cache.contains((fidx, i)) {
                continue;
            }
            if self.gpu.is_some() {
                if let Lookup::Claimed(t) = self.cache.lookup_or_claim((fidx, i), &self.stats) {
                    batch.push(t);
                }
            } else if self.request(fidx, i, true).is_some() {
                self.stats.prefetch_issued();
            }
        }
        if !batch.is_empty() {
            for _ in &batch {
                self.stats.prefetch_issued();
            }
            let me = self.clone();
            self.pool.spawn(move || me.decode_batch(fidx, batch));
        }
    }

    /// Runs on a pool thread: one batch through the GPU decoder, then publish each chunk.
    fn decode_batch(&self, fidx: u32, tickets: Vec<Ticket>) {
        let f = &self.files[fidx as usize];
        let Some(gpu) = &self.gpu else { return };
        let idx: Vec<usize> = tickets.iter().map(|t| t.key().1 as usize).collect();
        let t0 = Instant::now();
        // The batch decoder takes a container: lend it a duplicate descriptor and a copy of
        // the chunk table for this batch.
        let c = self.file(fidx).and_then(|file| {
            let file = file.try_clone().map_err(|e| Error::io(&f.path, e))?;
            Ok(Container::from_parts(
                &f.path,
                file,
                f.len,
                f.meta.clone(),
                f.chunks.clone(),
            ))
        });
        let c = match c {
            Ok(c) => c,
            Err(e) => {
                let e = Arc::new(e);
                for t in &tickets {
                    self.cache.complete(t, Err(e.clone()), true, &self.stats);
                }
                return;
            }
        };
        let results = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| gpu.decode_chunks_stats(&c, &idx)));
        let ns = t0.elapsed().as_nanos() as u64 / tickets.len().max(1) as u64;
        match results {
            Ok((results, st)) => {
                if st.fallbacks > 0 {
                    tracing::warn!(
                        "{}: {} chunks fell back from the GPU to the CPU: {:?}",
                        f.path.display(),
                        st.fallbacks,
                        st.cpu_reasons
                    );
                }
                self.stats.gpu_batch(st.chunks_gpu as u64, st.fallbacks as u64);
                for (t, r) in tickets.iter().zip(results) {
                    let out: Outcome = match r {
                        Ok(d) => {
                            self.stats.decoded(d.len() as u64, ns);
                            Ok(Arc::new(d))
                        }
                        Err(e) => Err(Arc::new(e)),
                    };
                    self.cache.complete(t, out, true, &self.stats);
                }
            }
            Err(_) => {
                for t in &tickets {
                    let e = Error::corrupt(&f.path, Some(t.key().1), "batch decoder panicked");
                    self.cache.complete(t, Err(Arc::new(e)), true, &self.stats);
                }
            }
        }
    }

    /// Looks a coded chunk up, or starts its decode on the pool. `None` for raw chunks.
    fn request(self: &Arc<Self>, fidx: u32, i: u32, prefetch: bool) -> Option<Pending> {
        let e = &self.files[fidx as usize].chunks[i as usize];
        if e.codec == ChunkCodec::Raw {
            return None;
        }
        Some(match self.cache.lookup_or_claim((fidx, i), &self.stats) {
            Lookup::Hit(d) => {
                if !prefetch {
                    self.stats.hit();
                }
                Pending::Ready(d)
            }
            Lookup::Wait(t) => Pending::Waiting(t),
            Lookup::Claimed(t) => {
                if !prefetch {
                    self.stats.miss();
                }
                let me = self.clone();
                let ticket = t.clone();
                self.pool.spawn(move || me.decode(ticket, prefetch));
                Pending::Waiting(t)
            }
        })
    }

    /// Runs on a pool thread: decode, verify, publish.
    fn decode(&self, t: Ticket, prefetch: bool) {
        let (fidx, i) = t.key();
        let c = &self.files[fidx as usize];
        let t0 = Instant::now();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.file(fidx).and_then(|file| c.decode_chunk(&file, i as usize))
        }));
        let out: Outcome = match r {
            Ok(Ok(d)) => {
                self.stats.decoded(d.len() as u64, t0.elapsed().as_nanos() as u64);
                Ok(Arc::new(d))
            }
            Ok(Err(e)) => Err(Arc::new(e)),
            Err(_) => Err(Arc::new(Error::corrupt(&c.path, Some(i), "decoder panicked"))),
        };
        self.cache.complete(&t, out, prefetch, &self.stats);
    }

    /// Serves a raw chunk's bytes `[from, to)` straight from the container. The first
    /// touch reads and checks the whole chunk.
    fn read_raw(&self, fidx: u32, i: usize, from: u64, to: u64, out: &mut Vec<u8>) -> Result<()> {
        let f = &self.files[fidx as usize];
        let e = &f.chunks[i];
        self.stats.raw_read();
        let file = self.file(fidx)?;
        if !f.raw_verified[i].load(Ordering::Acquire) {
            let data = f.read_payload(&file, i)?;
            if chunk_hash(&data) != e.xxh3 {
                return Err(Error::corrupt(&f.path, Some(i as u32), "checksum mismatch"));
            }
            f.raw_verified[i].store(true, Ordering::Release);
            out.extend_from_slice(&data[from as usize..to as usize]);
            return Ok(());
        }
        let at = out.len();
        out.resize(at + (to - from) as usize, 0);
        f.read_exact_at(&file, &mut out[at..], e.payload_offset + from)
    }
}

/// How many containers may be open at once: [`DEFAULT_OPEN_FILES`], or a quarter of the
/// soft open-file limit when that is lower (FUSE, decode threads and the caller need
/// descriptors too).
fn open_files_bound() -> NonZeroUsize {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the rlimit struct we pass.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } == 0 {
        rl.rlim_cur
    } else {
        1024
    };
    let n = (soft / 4).min(DEFAULT_OPEN_FILES as u64).max(1) as usize;
    NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN)
}

/// The st_blksize served for a file: its chunk size, as a power of two within
/// [4 KiB, 1 MiB]. The field is untrusted, and tools such as cp allocate a buffer of
/// st_blksize bytes (2 GiB read unchecked made cp allocate the whole file).
fn served_blksize(chunk_size: u32) -> u32 {
    let c = chunk_size.clamp(4096, 1 << 20);
    1 << (31 - c.leading_zeros())
}

enum Pending {
    Ready(cache::Bytes),
    Waiting(Ticket),
}

impl Pending {
    fn get(self) -> Result<cache::Bytes> {
        match self {
            Pending::Ready(d) => Ok(d),
            Pending::Waiting(t) => t.wait().map_err(|e| (*e).clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pack::{pack_tree, NoProgress, PackOptions};

    #[test]
    fn served_blksize_is_a_clamped_power_of_two() {
        for (chunk, want) in [
            (0, 4096),
            (1, 4096),
            (4096, 4096),
            (5000, 4096),
            (1 << 20, 1 << 20),
            ((1 << 20) - 1, 1 << 19),
            (64 << 20, 1 << 20),
            (1 << 31, 1 << 20),
            (u32::MAX, 1 << 20),
        ] {
            assert_eq!(served_blksize(chunk), want, "chunk size {chunk}");
        }
    }

    /// Containers are closed after mount and reopened on demand: a container swapped for
    /// another file (even a valid container of the same pack) or a symlink since the mount
    /// is refused (EIO at the mount), never served.
    #[test]
    fn a_container_replaced_after_open_is_refused_on_reopen() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        fs::create_dir(&src).unwrap();
        fs::write(src.join("a.bin"), text(5000)).unwrap();
        // Same length as a.bin, other bytes.
        fs::write(src.join("b.bin"), text(5000).into_iter().rev().collect::<Vec<u8>>()).unwrap();
        fs::write(src.join("c.bin"), text(7000)).unwrap();
        let packed = t.path().join("packed");
        pack_tree(&src, &packed, &PackOptions::default(), &NoProgress).unwrap();
        let store = Store::open(&packed, StoreOptions::default()).unwrap();
        assert!(store.open.lock().is_empty(), "containers stay open after mount");
        fs::rename(packed.join("b.bin.dcz"), packed.join("a.bin.dcz")).unwrap();
        std::os::unix::fs::symlink("a.bin.dcz", packed.join("c.bin.dcz.tmp")).unwrap();
        fs::rename(packed.join("c.bin.dcz.tmp"), packed.join("c.bin.dcz")).unwrap();
        for name in ["a.bin", "c.bin"] {
            let ino = store.lookup(ROOT_INO, OsStr::new(name)).unwrap().ino;
            let fh = store.open_handle();
            let r = store.read(ino, fh, 0, 4096);
            assert!(r.is_err(), "{name}: served a replaced container");
        }
    }

    /// Compressible bytes that no codec stores raw.
    fn text(n: usize) -> Vec<u8> {
        let mut x = 7u64;
        (0..n)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                b"abcdefgh"[(x >> 61) as usize]
            })
            .collect()
    }

    /// Chunks larger than the whole cache were decoded again for every read request
    /// (1 GiB served cost 17.7 GiB of decoding); now each is decoded once per pass.
    #[test]
    fn chunks_larger_than_the_cache_are_decoded_once_per_pass() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        fs::create_dir(&src).unwrap();
        let data = text(4 * (8 << 20) + 12345);
        fs::write(src.join("big.bin"), &data).unwrap();
        let opts = PackOptions {
            chunk_size: 8 << 20,
            ..Default::default()
        };
        let packed = t.path().join("packed");
        pack_tree(&src, &packed, &opts, &NoProgress).unwrap();
        let store = Store::open(
            &packed,
            StoreOptions {
                cache_bytes: 1 << 20,
                threads: 2,
                prefetch: 8,
            },
        )
        .unwrap();
        let ino = store.lookup(ROOT_INO, OsStr::new("big.bin")).unwrap().ino;
        let chunks = store.files[0].chunks.len() as u64;
        let fh = store.open_handle();
        let mut out = Vec::with_capacity(data.len());
        let step = 128 << 10;
        loop {
            let d = store.read(ino, fh, out.len() as u64, step).unwrap();
            if d.is_empty() {
                break;
            }
            out.extend_from_slice(&d);
        }
        assert!(out == data, "bytes differ");
        let s = store.stats();
        eprintln!("{} decodes for {chunks} chunks, {} reads", s.decodes, s.reads);
        assert!(s.decodes <= chunks + 2, "{} decodes for {chunks} chunks", s.decodes);
    }

    /// The mount's stats count what the GPU batch decoder did: chunks decoded there, and
    /// chunks that fell back (none on an undamaged pack, with the emulated kernels).
    #[test]
    fn gpu_batches_are_counted_in_the_stats() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        fs::create_dir(&src).unwrap();
        let data = text(16 * 65536 + 77);
        fs::write(src.join("big.bin"), &data).unwrap();
        let mut opts = PackOptions {
            chunk_size: 65536,
            ..Default::default()
        };
        opts.encode.codec = crate::chunk::CodecChoice::Rans;
        let packed = t.path().join("packed");
        pack_tree(&src, &packed, &opts, &NoProgress).unwrap();
        let sopts = StoreOptions {
            cache_bytes: 64 << 20,
            threads: 2,
            prefetch: 32,
        };
        let store = Store::open_with_gpu(&packed, sopts, Some(crate::gpu::Decoder::emulated())).unwrap();
        let ino = store.lookup(ROOT_INO, OsStr::new("big.bin")).unwrap().ino;
        let fh = store.open_handle();
        let mut out = Vec::new();
        loop {
            let d = store.read(ino, fh, out.len() as u64, 65536).unwrap();
            if d.is_empty() {
                break;
            }
            out.extend_from_slice(&d);
        }
        assert!(out == data, "bytes differ");
        let s = store.stats();
        assert!(s.gpu_chunks > 0, "prefetch batches went through the GPU decoder: {s:?}");
        assert_eq!(s.gpu_fallbacks, 0, "{s:?}");
        // Reads of what is not a file answer with the errno the mount passes on.
        assert_eq!(store.read(ROOT_INO, fh, 0, 1).unwrap_err().errno(), libc::EISDIR);
        assert_eq!(store.read(1 << 40, fh, 0, 1).unwrap_err().errno(), libc::ENOENT);
    }
}
