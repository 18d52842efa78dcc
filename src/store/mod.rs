//! A packed tree opened for serving: the node table the mount presents ([`tree`]), and
//! reads of any byte range through a byte-bounded chunk cache ([`cache`]), a decode
//! worker pool with in-flight deduplication ([`decode`]), and sequential prefetch
//! ([`prefetch`]). Every read of container bytes goes through [`source`]. Knows nothing
//! of FUSE.

mod cache;
pub(crate) mod decode;
pub(crate) mod pool;
mod prefetch;
mod source;
mod stats;
mod tree;

pub use cache::ChunkCache;
pub use prefetch::{default_prefetch, PrefetchConfig, DEFAULT_PREFETCH};
pub use source::DEFAULT_OPEN_FILES;
pub use stats::{Snapshot, Stats};
pub use tree::{Node, NodeKind, ROOT_INO};

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::chunk::ChunkCodec;
use crate::error::{Error, Result};
use crate::format::{chunk_hash, ChunkEntry, Container, FileMeta};
use crate::pack::read_marker;
use crate::remote::pack::RemotePack;
use crate::remote::{Delivery, Remote, RemoteOptions, RemoteUrl};
use cache::{Lookup, Outcome, Ticket};
use decode::{Chunks, ContainerRef};
use pool::with_thread_buf;
use prefetch::Handles;
use source::{ContainerSource, Identity, LocalSource, RemoteSource};

/// Chunks one read request decodes at once: enough to keep every decode thread busy on
/// small chunks, few enough to bound what a request over tiny chunks holds in flight.
const READ_WINDOW: usize = 256;

/// Chunks a remote pack's reader prefetches on its first sequential request: one GET
/// beside the reader's own, then the window doubles per request (see
/// [`PrefetchConfig::initial_window`]).
const REMOTE_INITIAL_WINDOW: usize = 2;

/// What the mount (and any other server of a pack) may tune. The defaults live here and
/// in [`PrefetchConfig`], nowhere else.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Bound on decoded bytes held in the cache.
    pub cache_bytes: u64,
    /// Decode worker threads.
    pub threads: usize,
    /// Chunks decoded ahead of a sequential reader (the window of [`PrefetchConfig`]).
    pub prefetch: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        StoreOptions {
            cache_bytes: default_cache_bytes(),
            threads,
            prefetch: default_prefetch(threads),
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

/// A served container: what serving needs of its index.
struct PackedFile {
    meta: FileMeta,
    chunks: Vec<ChunkEntry>,
    /// Raw chunks are checked once ([`RAW_UNCHECKED`] and on), then served by plain pread.
    raw_verified: Vec<AtomicU8>,
}

/// A raw chunk nobody has checked yet.
const RAW_UNCHECKED: u8 = 0;
/// A raw chunk being checked on the pool, ahead of its reader (who checks it too if it
/// gets there first).
const RAW_CHECKING: u8 = 1;
/// A raw chunk whose bytes matched their hash.
const RAW_CHECKED: u8 = 2;

impl PackedFile {
    /// A served file whose raw chunks are not checked yet.
    fn new(meta: FileMeta, chunks: Vec<ChunkEntry>) -> PackedFile {
        let raw_verified = (0..chunks.len()).map(|_| AtomicU8::new(RAW_UNCHECKED)).collect();
        PackedFile {
            meta,
            chunks,
            raw_verified,
        }
    }

    /// The chunk holding original byte `offset`, if inside the file.
    fn chunk_at(&self, offset: u64) -> Option<usize> {
        if offset >= self.meta.size {
            return None;
        }
        let i = self.chunks.partition_point(|c| c.orig_end() <= offset);
        (i < self.chunks.len()).then_some(i)
    }
}

pub struct Store {
    root: PathBuf,
    nodes: Vec<Node>,
    files: Vec<PackedFile>,
    /// Where container bytes come from (local files, reopened on demand).
    source: Box<dyn ContainerSource>,
    cache: ChunkCache,
    pool: rayon::ThreadPool,
    stats: Stats,
    handles: Handles,
    logged: Mutex<HashSet<(u32, u32)>>,
    prefetch: PrefetchConfig,
    /// Batch decoder for prefetch windows (GPU, or its CPU emulation in tests).
    gpu: Option<crate::gpu::Decoder>,
    packed_bytes: u64,
    original_bytes: u64,
    /// The connection of a remote pack, for its network counters.
    remote: Option<Arc<Remote>>,
}

/// What a local or remote open hands to [`Store::assemble`].
struct Parts {
    nodes: Vec<Node>,
    files: Vec<PackedFile>,
    source: Box<dyn ContainerSource>,
    packed_bytes: u64,
    original_bytes: u64,
    remote: Option<Arc<Remote>>,
}

/// Container `fidx` of a store, as the shared decode path sees it.
struct FileChunks<'a> {
    store: &'a Store,
    fidx: u32,
}

impl Chunks for FileChunks<'_> {
    fn path(&self) -> &Path {
        self.store.source.path(self.fidx)
    }
    fn entry(&self, i: usize) -> &ChunkEntry {
        &self.store.files[self.fidx as usize].chunks[i]
    }
    fn read_payload_into(&self, i: usize, buf: &mut [u8]) -> Result<()> {
        let e = &self.store.files[self.fidx as usize].chunks[i];
        self.store.source.read_exact_at(self.fidx, buf, e.payload_offset)
    }
    fn refetch(&self, i: usize) -> bool {
        let e = &self.store.files[self.fidx as usize].chunks[i];
        let again = self
            .store
            .source
            .forget(self.fidx, e.payload_offset, e.payload_len as usize);
        if again {
            self.store.stats.refetch();
        }
        again
    }
    fn buffer(&self, len: usize) -> Vec<u8> {
        self.store.cache.buffer(len)
    }
    fn container(&self) -> Result<Option<ContainerRef<'_>>> {
        let src = &self.store.source;
        let Some(file) = src.local_file(self.fidx)? else {
            return Ok(None);
        };
        // The batch decoder takes a container: lend it a duplicate descriptor and a copy
        // of the chunk table for this batch.
        let f = &self.store.files[self.fidx as usize];
        Ok(Some(ContainerRef::Owned(Container::from_parts(
            src.path(self.fidx),
            file,
            src.len(self.fidx),
            f.meta.clone(),
            f.chunks.clone(),
        ))))
    }
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
        let t = tree::Tree::build(root)?;
        let mut ids = Vec::with_capacity(t.containers.len());
        let mut files = Vec::with_capacity(t.containers.len());
        for c in t.containers {
            ids.push(Identity {
                path: c.path,
                dev: c.dev,
                ino: c.ino,
                len: c.len,
            });
            files.push(PackedFile::new(c.meta, c.chunks));
        }
        let parts = Parts {
            nodes: t.nodes,
            files,
            source: Box::new(LocalSource::new(ids)),
            packed_bytes: t.packed_bytes,
            original_bytes: t.original_bytes,
            remote: None,
        };
        Self::assemble(root.to_path_buf(), parts, opts, gpu)
    }

    /// Opens a pack on object storage (`s3://…`, `http(s)://…`) for serving: reads the
    /// marker (a pack whose push did not finish is refused) and the manifest, opens every
    /// container (one GET of its tail each, 16 at once, ETags pinned) and builds
    /// the node table from the manifest. Decoding runs on the CPU.
    pub fn open_remote(url: &RemoteUrl, ropts: &RemoteOptions, opts: StoreOptions) -> Result<Arc<Store>> {
        let pack = RemotePack::open(url, ropts)?;
        let t = tree::RemoteTree::build(&pack)?;
        let mut objs = Vec::with_capacity(t.containers.len());
        let mut files = Vec::with_capacity(t.containers.len());
        for c in t.containers {
            objs.push(c.obj);
            files.push(PackedFile::new(c.meta, c.chunks));
        }
        let parts = Parts {
            nodes: t.nodes,
            files,
            source: Box::new(RemoteSource::new(objs)),
            packed_bytes: t.packed_bytes,
            original_bytes: t.original_bytes,
            remote: Some(pack.remote.clone()),
        };
        Self::assemble(PathBuf::from(url.to_string()), parts, opts, None)
    }

    fn assemble(root: PathBuf, p: Parts, opts: StoreOptions, gpu: Option<crate::gpu::Decoder>) -> Result<Arc<Store>> {
        let files = p.files;
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
            .map_err(|e| Error::Resources {
                path: root.clone(),
                what: format!("cannot start decode threads: {e}"),
            })?;
        Ok(Arc::new(Store {
            root,
            nodes: p.nodes,
            files,
            source: p.source,
            cache: ChunkCache::new(opts.cache_bytes),
            pool,
            stats: Stats::default(),
            handles: Handles::default(),
            logged: Mutex::new(HashSet::new()),
            prefetch: if p.remote.is_some() {
                PrefetchConfig::ramped(opts.prefetch, REMOTE_INITIAL_WINDOW)
            } else {
                PrefetchConfig::with_window(opts.prefetch)
            },
            gpu,
            packed_bytes: p.packed_bytes,
            original_bytes: p.original_bytes,
            remote: p.remote,
        }))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn node(&self, ino: u64) -> Option<&Node> {
        tree::node(&self.nodes, ino)
    }

    pub fn lookup(&self, parent: u64, name: &OsStr) -> Option<&Node> {
        tree::lookup(&self.nodes, parent, name)
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
        s.pooled_bytes = self.cache.pooled();
        s.files = self.files.len() as u64;
        s.packed_bytes = self.packed_bytes;
        s.original_bytes = self.original_bytes;
        if let Some(r) = &self.remote {
            let n = r.counts();
            s.remote = true;
            s.net_gets = n.gets;
            s.net_bytes = n.bytes;
            s.net_retries = n.retries;
            s.net_errors = n.errors;
            if let Some(d) = r.disk_counts() {
                s.disk_cache = true;
                s.disk_hits = d.hits;
                s.disk_hit_bytes = d.hit_bytes;
                s.disk_misses = d.misses;
                s.disk_writes = d.writes;
                s.disk_skipped = d.skipped;
                s.disk_torn = d.torn;
                s.disk_evictions = d.evictions;
                s.disk_usage = d.usage;
            }
        }
        s
    }

    /// Registers an open file handle (sequential-read tracking lives there).
    pub fn open_handle(&self) -> u64 {
        self.handles.open()
    }

    pub fn release(&self, fh: u64) {
        self.handles.release(fh);
    }

    fn file_of(&self, ino: u64) -> Option<(u32, &PackedFile)> {
        match self.node(ino)?.kind {
            NodeKind::File { file } => Some((file, &self.files[file as usize])),
            _ => None,
        }
    }

    /// Reads raw chunk `i` of file `fidx` whole into this thread's scratch buffer and
    /// checks it against its hash; on success it is served by plain reads from then on.
    fn check_raw(&self, fidx: u32, i: usize) -> Result<()> {
        let f = &self.files[fidx as usize];
        let e = &f.chunks[i];
        let plen = e.payload_len as usize;
        with_thread_buf(&SCRATCH, plen, |buf| {
            self.source.read_exact_at(fidx, &mut buf[..plen], e.payload_offset)?;
            if chunk_hash(&buf[..plen]) != e.xxh3 {
                return Err(Error::corrupt(
                    self.source.path(fidx),
                    Some(i as u32),
                    "checksum mismatch",
                ));
            }
            f.raw_verified[i].store(RAW_CHECKED, Ordering::Release);
            Ok(())
        })
    }

    /// The served file of inode `ino`, or the errno-carrying error a read of it gets.
    fn resolve(&self, ino: u64) -> Result<(u32, &PackedFile)> {
        if let Some(x) = self.file_of(ino) {
            return Ok(x);
        }
        let path = self.root.clone();
        Err(match self.node(ino).map(|n| &n.kind) {
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
        })
    }

    /// Like [`read`](Self::read), but hands the bytes to `f` instead of returning them: a
    /// request inside one coded chunk (the common case, requests of up to 1 MiB over
    /// 1 MiB chunks) is handed straight out of the cached chunk, with no copy.
    pub fn read_with<R>(
        self: &Arc<Self>,
        ino: u64,
        fh: u64,
        offset: u64,
        size: u32,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<R> {
        let (fidx, c) = self.resolve(ino)?;
        let end = offset.saturating_add(size as u64).min(c.meta.size);
        let one = (offset < end)
            .then(|| (c.chunk_at(offset), c.chunk_at(end - 1)))
            .and_then(|(a, b)| a.filter(|&a| Some(a) == b));
        // Raw chunks (`request` gives `None`) and requests over several chunks: copied.
        let mut starts = Vec::new();
        let Some((i, p)) = one.and_then(|i| self.request(fidx, i as u32, &mut starts).map(|p| (i, p))) else {
            // Gathered into this thread's reply buffer.
            return with_thread_buf(&REPLY, 0, |buf| {
                self.read_into(ino, fh, offset, size, buf).map(|n| f(&buf[..n]))
            });
        };
        self.start(fidx, starts, false);
        if let Some(w) = self.handles.observe(&self.prefetch, fh, offset, end) {
            self.prefetch(fidx, i + 1, c.chunks[i].orig_len as u64 + cache::ENTRY_OVERHEAD, w);
            self.drop_behind(fidx, fh, offset);
        }
        let e = &c.chunks[i];
        match p.get() {
            Ok(data) => {
                let (from, to) = ((offset - e.orig_offset) as usize, (end - e.orig_offset) as usize);
                self.stats.read((to - from) as u64);
                Ok(f(&data[from..to]))
            }
            Err(err) => {
                self.stats.error();
                if self.logged.lock().insert((fidx, i as u32)) {
                    tracing::error!("{err}");
                }
                Err(err)
            }
        }
    }

    /// Reads up to `size` bytes at `offset` of file `ino`; short only at end of file.
    /// Corrupt chunks give `Err` (EIO at the mount), never wrong bytes.
    pub fn read(self: &Arc<Self>, ino: u64, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        let n = self.read_into(ino, fh, offset, size, &mut out)?;
        out.truncate(n);
        Ok(out)
    }

    /// [`read`](Self::read) into the front of `buf`, grown when too short (a reused buffer
    /// is not cleared first: every byte of the answer is written); returns its length.
    fn read_into(self: &Arc<Self>, ino: u64, fh: u64, offset: u64, size: u32, buf: &mut Vec<u8>) -> Result<usize> {
        let (fidx, f) = self.resolve(ino)?;
        let c = f;
        let end = offset.saturating_add(size as u64).min(c.meta.size);
        if offset >= end {
            return Ok(0);
        }
        let first = c.chunk_at(offset).expect("offset inside the file");
        let last = c.chunk_at(end - 1).expect("end inside the file");
        let n = (end - offset) as usize;
        if buf.len() < n {
            buf.resize(n, 0);
        }
        let mut at = 0usize;
        // Start the decodes of a window of chunks before waiting on any, so they run in
        // parallel; a window, not the whole request, so a request over a million one-byte
        // chunks does not hold a million decodes (and their bookkeeping) at once.
        let mut lo = first;
        while lo <= last {
            let hi = last.min(lo + READ_WINDOW - 1);
            let mut starts = Vec::new();
            let pending: Vec<Option<Pending>> = (lo..=hi).map(|i| self.request(fidx, i as u32, &mut starts)).collect();
            self.start(fidx, starts, false);
            if let Some(w) = (lo == first)
                .then(|| self.handles.observe(&self.prefetch, fh, offset, end))
                .flatten()
            {
                let current = c.chunks[first..=last]
                    .iter()
                    .map(|e| e.orig_len as u64 + cache::ENTRY_OVERHEAD)
                    .sum();
                self.prefetch(fidx, last + 1, current, w);
                self.drop_behind(fidx, fh, offset);
            }
            for (i, p) in (lo..=hi).zip(pending) {
                let e = &c.chunks[i];
                let from = offset.max(e.orig_offset) - e.orig_offset;
                let to = end.min(e.orig_end()) - e.orig_offset;
                let dst = &mut buf[at..at + (to - from) as usize];
                at += dst.len();
                let r = match p {
                    None => self.read_raw(fidx, i, from, dst),
                    Some(p) => p
                        .get()
                        .map(|data| dst.copy_from_slice(&data[from as usize..to as usize])),
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
        debug_assert_eq!(at, n);
        self.stats.read(n as u64);
        Ok(n)
    }

    /// Drops from the cache the chunks of file `fidx` that the sequential reader on `fh`,
    /// now at `offset`, has passed by more than the slack (see
    /// [`PrefetchConfig::drop_behind`]).
    fn drop_behind(&self, fidx: u32, fh: u64, offset: u64) {
        if !self.prefetch.drop_behind {
            return;
        }
        let chunks = &self.files[fidx as usize].chunks;
        let limit = offset.saturating_sub(self.prefetch.slack_bytes);
        let upto = chunks.partition_point(|e| e.orig_end() <= limit);
        for i in self.handles.behind(fh, upto) {
            if self.cache.remove((fidx, i as u32)) {
                self.stats.dropped_behind();
            }
        }
    }

    /// Starts decodes ahead of a sequential reader of file `fidx`, from chunk `from` on,
    /// whose current chunks cost `current` bytes of cache, `window` chunks ahead: batches
    /// of one on the CPU, of up to [`PrefetchConfig::gpu_batch`] on the GPU.
    fn prefetch(self: &Arc<Self>, fidx: u32, from: usize, current: u64, window: usize) {
        let c = &self.files[fidx as usize];
        let want = prefetch::plan(
            &self.prefetch,
            window,
            &c.chunks,
            from,
            current,
            self.cache.capacity(),
            |i| self.raw_direct(&c.chunks[i]) || self.cache.contains((fidx, i as u32)),
        );
        // Raw chunks are not decoded, but their one check runs ahead on the pool too, so the
        // reader only copies them.
        let end = from.saturating_add(window).min(c.chunks.len());
        for i in from..end {
            if self.raw_direct(&c.chunks[i])
                && c.raw_verified[i]
                    .compare_exchange(RAW_UNCHECKED, RAW_CHECKING, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                let me = self.clone();
                self.pool.spawn(move || {
                    if me.check_raw(fidx, i).is_err() {
                        // The reader checks it again and reports the error.
                        let _ = me.files[fidx as usize].raw_verified[i].compare_exchange(
                            RAW_CHECKING,
                            RAW_UNCHECKED,
                            Ordering::AcqRel,
                            Ordering::Acquire,
                        );
                    }
                });
            }
        }
        let mut claimed = Vec::with_capacity(want.len());
        for i in want {
            if let Lookup::Claimed(t) = self.cache.lookup_or_claim((fidx, i as u32)) {
                self.stats.prefetch_issued();
                claimed.push(t);
            }
        }
        self.start(fidx, claimed, true);
    }

    /// Starts the decodes of claimed chunks of file `fidx`. Remote containers: one
    /// background fetch for all of them (neighbours share GETs), each chunk decoded on the
    /// pool as its bytes arrive. Local ones: on the pool, read where they are decoded; a
    /// reader's chunks one by one (in parallel), prefetched ones in batches of
    /// [`PrefetchConfig::gpu_batch`] when there is a GPU.
    fn start(self: &Arc<Self>, fidx: u32, mut tickets: Vec<Ticket>, prefetched: bool) {
        if tickets.is_empty() {
            return;
        }
        if !self.source.is_local() {
            tickets = match self.fetch_then_decode(fidx, tickets, prefetched) {
                None => return,
                Some(back) => back,
            };
        }
        let batch = if prefetched && self.gpu.is_some() {
            self.prefetch.gpu_batch.max(1)
        } else {
            1
        };
        while !tickets.is_empty() {
            let rest = tickets.split_off(batch.min(tickets.len()));
            let batch = std::mem::replace(&mut tickets, rest);
            let me = self.clone();
            self.pool.spawn(move || me.decode(fidx, batch, prefetched));
        }
    }

    /// Hands the payloads of `tickets` to the source's background fetch; each is decoded
    /// on the pool when it arrives. Gives the tickets back when the source has no
    /// background fetch.
    fn fetch_then_decode(self: &Arc<Self>, fidx: u32, tickets: Vec<Ticket>, prefetched: bool) -> Option<Vec<Ticket>> {
        let f = &self.files[fidx as usize];
        let ranges = tickets
            .iter()
            .map(|t| {
                let e = &f.chunks[t.key().1 as usize];
                e.payload_offset..e.payload_offset + e.payload_len as u64
            })
            .collect();
        let slots: Arc<Vec<Mutex<Option<Ticket>>>> =
            Arc::new(tickets.into_iter().map(|t| Mutex::new(Some(t))).collect());
        // Weak: a fetch in flight must not keep the store (and the network runtime it
        // runs on) alive.
        let weak = Arc::downgrade(self);
        let held = slots.clone();
        let done: Delivery = Arc::new(move |k, r| {
            let (Some(t), Some(me)) = (held[k].lock().take(), weak.upgrade()) else {
                return;
            };
            let me2 = me.clone();
            me.pool.spawn(move || me2.decode_fetched(fidx, t, r, prefetched));
        });
        if self.source.fetch_many(fidx, ranges, done) {
            return None;
        }
        Some(slots.iter().filter_map(|s| s.lock().take()).collect())
    }

    /// Runs on a pool thread: decode a chunk whose payload a background fetch brought (or
    /// complete it with the fetch's error).
    fn decode_fetched(&self, fidx: u32, t: Ticket, r: Result<Vec<u8>>, prefetched: bool) {
        match r {
            Err(e) => self
                .stats
                .evicted(self.cache.complete(&t, Err(Arc::new(e)), prefetched)),
            Ok(payload) => {
                let inner = FileChunks { store: self, fidx };
                let src = decode::Fetched {
                    inner: &inner,
                    chunk: t.key().1 as usize,
                    payload: Mutex::new(Some(payload)),
                };
                self.decode_from(&src, vec![t], prefetched);
            }
        }
    }

    /// Whether chunk `e` is served by plain reads of its container, not through the
    /// cache: raw chunks of local containers. Remote ones go through the cache, so each is
    /// fetched once (and kept on disk), not once per read.
    fn raw_direct(&self, e: &ChunkEntry) -> bool {
        e.codec == ChunkCodec::Raw && self.source.is_local()
    }

    /// Looks a coded chunk up for a reader, or starts its decode on the pool (a batch of
    /// one). `None` for raw chunks.
    /// A claimed chunk's ticket goes into `starts`, for [`start`](Self::start) (so the
    /// chunks of one request are fetched together).
    fn request(&self, fidx: u32, i: u32, starts: &mut Vec<Ticket>) -> Option<Pending> {
        let e = &self.files[fidx as usize].chunks[i as usize];
        if self.raw_direct(e) {
            return None;
        }
        Some(match self.cache.lookup_or_claim((fidx, i)) {
            Lookup::Hit { data, prefetch_hit } => {
                self.stats.hit();
                if prefetch_hit {
                    self.stats.prefetch_hit();
                }
                Pending::Ready(data)
            }
            Lookup::Wait(t) => Pending::Waiting(t),
            Lookup::Claimed(t) => {
                self.stats.miss();
                starts.push(t.clone());
                Pending::Waiting(t)
            }
        })
    }

    /// Runs on a pool thread: decode a batch through the shared path, publish each chunk
    /// as it is done. Every ticket is completed, whatever happens.
    fn decode(&self, fidx: u32, tickets: Vec<Ticket>, prefetched: bool) {
        self.decode_from(&FileChunks { store: self, fidx }, tickets, prefetched);
    }

    /// [`decode`](Self::decode) with the chunks' bytes read through `src`.
    fn decode_from(&self, src: &dyn Chunks, tickets: Vec<Ticket>, prefetched: bool) {
        let idx: Vec<usize> = tickets.iter().map(|t| t.key().1 as usize).collect();
        let done: Vec<AtomicBool> = tickets.iter().map(|_| AtomicBool::new(false)).collect();
        let on_gpu = |r: &decode::BatchReport| self.stats.gpu_batch(r.gpu_chunks, r.gpu_fallbacks);
        decode::decode_chunks(src, &idx, self.gpu.as_ref(), &on_gpu, &|k, r, ns| {
            if done[k].swap(true, Ordering::AcqRel) {
                return;
            }
            let out: Outcome = match r {
                Ok(d) => {
                    self.stats.decoded(d.len() as u64, ns);
                    Ok(Arc::new(d))
                }
                Err(e) => Err(Arc::new(e)),
            };
            self.stats.evicted(self.cache.complete(&tickets[k], out, prefetched));
        });
        for (k, t) in tickets.iter().enumerate() {
            if !done[k].load(Ordering::Acquire) {
                let e = Error::corrupt(src.path(), Some(t.key().1), "chunk not decoded");
                self.stats.evicted(self.cache.complete(t, Err(Arc::new(e)), prefetched));
            }
        }
    }

    /// Serves a raw chunk's bytes `[from, to)` straight from the container. The first
    /// touch reads and checks the whole chunk.
    fn read_raw(&self, fidx: u32, i: usize, from: u64, dst: &mut [u8]) -> Result<()> {
        let f = &self.files[fidx as usize];
        let e = &f.chunks[i];
        self.stats.raw_read();
        if f.raw_verified[i].load(Ordering::Acquire) != RAW_CHECKED {
            self.check_raw(fidx, i)?;
        }
        self.source.read_exact_at(fidx, dst, e.payload_offset + from)
    }
}

thread_local! {
    /// Per-thread buffer for replies gathered from several chunks.
    static REPLY: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
    /// Per-thread buffer for raw chunks read whole for their check.
    static SCRATCH: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
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
        assert_eq!(store.source.open_count(), 0, "containers stay open after mount");
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

    /// `read_with` (no copy inside one chunk) serves exactly what `read` serves, for
    /// requests inside one chunk, across chunks, at the end and past it.
    #[test]
    fn read_with_matches_the_source() {
        let data = text(10 * 65536 + 999);
        let (_t, packed) = pack_one("f.bin", &data, 65536, |_| ());
        let store = Store::open(&packed, StoreOptions::default()).unwrap();
        let ino = store.lookup(ROOT_INO, OsStr::new("f.bin")).unwrap().ino;
        let fh = store.open_handle();
        let n = data.len() as u64;
        let mut x = 99u64;
        let mut cases = vec![(0, 1), (0, 65536), (65535, 2), (n - 10, 100), (n, 5), (n + 7, 5)];
        for _ in 0..200 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            cases.push(((x >> 20) % n, ((x >> 8) % 200_000) as u32));
        }
        for (off, size) in cases {
            let got = store.read_with(ino, fh, off, size, |d| d.to_vec()).unwrap();
            let lo = off.min(n) as usize;
            let hi = off.saturating_add(size as u64).min(n) as usize;
            assert!(got == data[lo..hi], "[{off}, +{size})");
        }
        assert_eq!(
            store.read_with(ROOT_INO, fh, 0, 1, |_| ()).unwrap_err().errno(),
            libc::EISDIR
        );
    }

    /// A sequential reader leaves chunks behind: they are dropped from the cache, their
    /// buffers serve later decodes, and reading them again (backwards, or a second pass)
    /// decodes them afresh into the same bytes.
    #[test]
    fn chunks_behind_a_sequential_reader_are_dropped_and_read_again_right() {
        let data = text(40 * 262144 + 333);
        let (_t, packed) = pack_one("f.bin", &data, 262144, |_| ());
        let store = Store::open(&packed, StoreOptions::default()).unwrap();
        let ino = store.lookup(ROOT_INO, OsStr::new("f.bin")).unwrap().ino;
        let fh = store.open_handle();
        let step = 128 << 10;
        let mut out = Vec::new();
        loop {
            let n = store.read_with(ino, fh, out.len() as u64, step, |d| {
                out.extend_from_slice(d);
                d.len()
            });
            if n.unwrap() == 0 {
                break;
            }
        }
        assert!(out == data, "first pass differs");
        let s = store.stats();
        // Every chunk but those within the 4 MiB slack of the end left the cache.
        assert!(s.dropped_behind >= 40 - 17, "{s:?}");
        assert!(s.pooled_bytes > 0, "dropped buffers are kept for reuse: {s:?}");
        assert!(s.cache_entries <= 18, "{s:?}");
        // Backwards, in steps that straddle chunks: every byte still right.
        let fh2 = store.open_handle();
        let n = data.len() as u64;
        let mut at = n;
        while at > 0 {
            let from = at.saturating_sub(300_000);
            let got = store.read(ino, fh2, from, (at - from) as u32).unwrap();
            assert!(got == data[from as usize..at as usize], "[{from}, {at})");
            at = from;
        }
        assert_eq!(store.stats().errors, 0);
    }

    /// Packs a tree of one file `name` holding `data`, in chunks of `chunk_size`, with
    /// `tune` applied to the options; returns the temporary directory and the pack's path.
    fn pack_one(
        name: &str,
        data: &[u8],
        chunk_size: u32,
        tune: impl FnOnce(&mut PackOptions),
    ) -> (tempfile::TempDir, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        fs::create_dir(&src).unwrap();
        fs::write(src.join(name), data).unwrap();
        let mut opts = PackOptions {
            chunk_size,
            ..Default::default()
        };
        tune(&mut opts);
        let packed = t.path().join("packed");
        pack_tree(&src, &packed, &opts, &NoProgress).unwrap();
        (t, packed)
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
        let data = text(4 * (8 << 20) + 12345);
        let (_t, packed) = pack_one("big.bin", &data, 8 << 20, |_| ());
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
        let data = text(16 * 65536 + 77);
        let (_t, packed) = pack_one("big.bin", &data, 65536, |o| {
            o.encode.codec = crate::chunk::CodecChoice::Rans
        });
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
