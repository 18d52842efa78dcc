//! The one path that turns stored chunks into verified original bytes, for the mount,
//! `verify` and `unpack` alike: a batch of chunks goes to the GPU when one is given and
//! the batch has two or more; otherwise each chunk decodes on the CPU, in parallel in
//! the caller's thread pool (a batch of one runs on the calling thread).

use std::ops::Deref;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::Instant;

use rayon::prelude::*;

use super::pool::with_thread_buf;
use crate::chunk::ChunkCodec;
use crate::error::{Error, Result};
use crate::format::{chunk_hash, ChunkEntry, Container};
use crate::gpu;

/// Stored chunks as the decoder sees them, wherever their bytes come from.
pub(crate) trait Chunks: Sync {
    /// The container, for messages.
    fn path(&self) -> &Path;
    fn entry(&self, i: usize) -> &ChunkEntry;
    /// Reads chunk `i`'s stored payload into `buf` (of its payload length).
    fn read_payload_into(&self, i: usize, buf: &mut [u8]) -> Result<()>;
    /// The container as the GPU decoder takes it; `None` where its bytes are not local.
    fn container(&self) -> Result<Option<ContainerRef<'_>>>;
    /// Chunk `i`'s stored bytes failed their check: drop any copy of them kept on the way
    /// (a disk cache) so the next read fetches them afresh. True when a second read may
    /// differ from the first (a network source); false for local files.
    fn refetch(&self, _i: usize) -> bool {
        false
    }
    /// A buffer of `len` bytes for a decoded chunk; its contents are unspecified (the
    /// decoder writes every byte). A fresh zeroed one unless the caller recycles memory.
    fn buffer(&self, len: usize) -> Vec<u8> {
        vec![0u8; len]
    }
}

/// A container borrowed, or rebuilt for one batch.
pub(crate) enum ContainerRef<'a> {
    Borrowed(&'a Container),
    Owned(Container),
}

impl Deref for ContainerRef<'_> {
    type Target = Container;
    fn deref(&self) -> &Container {
        match self {
            ContainerRef::Borrowed(c) => c,
            ContainerRef::Owned(c) => c,
        }
    }
}

impl Chunks for Container {
    fn path(&self) -> &Path {
        Container::path(self)
    }
    fn entry(&self, i: usize) -> &ChunkEntry {
        &self.chunks[i]
    }
    fn read_payload_into(&self, i: usize, buf: &mut [u8]) -> Result<()> {
        self.read_exact_at(buf, self.chunks[i].payload_offset)
    }
    fn container(&self) -> Result<Option<ContainerRef<'_>>> {
        Ok(Some(ContainerRef::Borrowed(self)))
    }
}

/// `inner`, with chunk `chunk`'s payload already fetched (by a background fetch): the
/// first read of it takes those bytes; a later one (after a failed check asked for a
/// refetch) goes to `inner` afresh. No container: it decodes on the CPU, from the bytes.
pub(crate) struct Fetched<'a> {
    pub inner: &'a dyn Chunks,
    pub chunk: usize,
    pub payload: parking_lot::Mutex<Option<Vec<u8>>>,
}

impl Chunks for Fetched<'_> {
    fn path(&self) -> &Path {
        self.inner.path()
    }
    fn entry(&self, i: usize) -> &ChunkEntry {
        self.inner.entry(i)
    }
    fn read_payload_into(&self, i: usize, buf: &mut [u8]) -> Result<()> {
        if i == self.chunk {
            if let Some(p) = self.payload.lock().take().filter(|p| p.len() == buf.len()) {
                buf.copy_from_slice(&p);
                return Ok(());
            }
        }
        self.inner.read_payload_into(i, buf)
    }
    fn container(&self) -> Result<Option<ContainerRef<'_>>> {
        Ok(None)
    }
    fn refetch(&self, i: usize) -> bool {
        self.inner.refetch(i)
    }
    fn buffer(&self, len: usize) -> Vec<u8> {
        self.inner.buffer(len)
    }
}

/// `inner`, with decoded chunks written into buffers recycled through `pool` (for callers
/// that consume each chunk and give its buffer back, like `verify` and `unpack`).
pub(crate) struct Pooled<'a> {
    pub inner: &'a dyn Chunks,
    pub pool: &'a super::pool::BufPool,
}

impl Chunks for Pooled<'_> {
    fn path(&self) -> &Path {
        self.inner.path()
    }
    fn entry(&self, i: usize) -> &ChunkEntry {
        self.inner.entry(i)
    }
    fn read_payload_into(&self, i: usize, buf: &mut [u8]) -> Result<()> {
        self.inner.read_payload_into(i, buf)
    }
    fn container(&self) -> Result<Option<ContainerRef<'_>>> {
        self.inner.container()
    }
    fn refetch(&self, i: usize) -> bool {
        self.inner.refetch(i)
    }
    fn buffer(&self, len: usize) -> Vec<u8> {
        self.pool.take(len)
    }
}

/// What a batch did, beyond its results.
#[derive(Debug)]
pub(crate) struct BatchReport {
    /// Chunks decoded on the GPU (verified on the host).
    pub gpu_chunks: u64,
    /// Chunks given to the GPU that fell back to the CPU.
    pub gpu_fallbacks: u64,
}

/// Called once per chunk of a batch: its position in `idx`, its verified bytes or the
/// error, and the nanoseconds its decode took (a batch's time shared out evenly).
pub(crate) type Sink<'a> = dyn Fn(usize, Result<Vec<u8>>, u64) + Sync + 'a;

/// Decodes chunks `idx` of `src`, handing each result to `sink` as soon as it is known.
/// Wrong bytes never reach `sink`: every chunk is checked against its checksum, and a
/// decoder panic becomes a corruption error for the chunks it took down. A GPU batch's
/// report goes to `on_gpu` before any of its chunks reach `sink`, so whoever waits on a
/// chunk sees the batch counted.
pub(crate) fn decode_chunks(
    src: &dyn Chunks,
    idx: &[usize],
    gpu: Option<&gpu::Decoder>,
    on_gpu: &dyn Fn(&BatchReport),
    sink: &Sink,
) {
    if let (Some(g), true) = (gpu, idx.len() > 1) {
        let t0 = Instant::now();
        let c = match src.container() {
            Ok(c) => c,
            Err(e) => {
                for k in 0..idx.len() {
                    sink(k, Err(e.clone()), 0);
                }
                return;
            }
        };
        if let Some(c) = c {
            let r = catch_unwind(AssertUnwindSafe(|| g.decode_chunks_stats(&c, idx)));
            let ns = t0.elapsed().as_nanos() as u64 / idx.len() as u64;
            match r {
                Ok((results, st)) => {
                    if st.fallbacks > 0 {
                        tracing::warn!(
                            "{}: {} chunks fell back from the GPU to the CPU: {:?}",
                            src.path().display(),
                            st.fallbacks,
                            st.cpu_reasons
                        );
                    }
                    on_gpu(&BatchReport {
                        gpu_chunks: st.chunks_gpu as u64,
                        gpu_fallbacks: st.fallbacks as u64,
                    });
                    for (k, r) in results.into_iter().enumerate() {
                        sink(k, r, ns);
                    }
                }
                Err(_) => {
                    for (k, &i) in idx.iter().enumerate() {
                        sink(
                            k,
                            Err(Error::corrupt(src.path(), Some(i as u32), "batch decoder panicked")),
                            0,
                        );
                    }
                }
            }
            return;
        }
    }
    let one = |k: usize| {
        let i = idx[k];
        let t0 = Instant::now();
        let r = catch_unwind(AssertUnwindSafe(|| decode_one(src, i)))
            .unwrap_or_else(|_| Err(Error::corrupt(src.path(), Some(i as u32), "decoder panicked")));
        sink(k, r, t0.elapsed().as_nanos() as u64);
    };
    if idx.len() == 1 {
        one(0);
    } else {
        (0..idx.len()).into_par_iter().for_each(one);
    }
}

/// Decodes a batch and returns its results in order, each with what `then` made of its
/// verified bytes (for callers that consume a whole window at once, like `verify`). `then`
/// runs on the thread that decoded the chunk, while its bytes are in that core's cache;
/// each GPU batch's report goes to `on_gpu`.
pub(crate) fn decode_chunks_then<T: Send>(
    src: &dyn Chunks,
    idx: &[usize],
    gpu: Option<&gpu::Decoder>,
    on_gpu: &dyn Fn(&BatchReport),
    then: &(dyn Fn(usize, &[u8]) -> T + Sync),
) -> Vec<Result<(Vec<u8>, T)>> {
    type Slot<T> = parking_lot::Mutex<Option<Result<(Vec<u8>, T)>>>;
    let slots: Vec<Slot<T>> = idx.iter().map(|_| parking_lot::Mutex::new(None)).collect();
    decode_chunks(src, idx, gpu, on_gpu, &|k, r, _| {
        let r = r.map(|d| {
            let t = then(idx[k], &d);
            (d, t)
        });
        *slots[k].lock() = Some(r);
    });
    slots
        .into_iter()
        .zip(idx)
        .map(|(s, &i)| {
            s.into_inner()
                .unwrap_or_else(|| Err(Error::corrupt(src.path(), Some(i as u32), "chunk not decoded")))
        })
        .collect()
}

/// Reads, decodes and verifies one chunk on this thread. The payload goes into a buffer
/// this thread reuses; only the decoded bytes (which the caller keeps) are new memory.
fn decode_one(src: &dyn Chunks, i: usize) -> Result<Vec<u8>> {
    let e = src.entry(i);
    let plen = e.payload_len as usize;
    with_thread_buf(&PAYLOAD, plen, |payload| {
        let mut r = decode_payload(src, i, e, &mut payload[..plen]);
        // Bytes that came over a network (or out of a cache of what it sent) get one more
        // fetch before they count as damage: a flipped bit in transit is not a damaged pack.
        if let Err(err) = &r {
            if err.is_corrupt() && src.refetch(i) {
                tracing::warn!("{err}; fetching chunk {i} once more");
                r = decode_payload(src, i, e, &mut payload[..plen]);
            }
        }
        r
    })
}

fn decode_payload(src: &dyn Chunks, i: usize, e: &ChunkEntry, payload: &mut [u8]) -> Result<Vec<u8>> {
    let mut out = src.buffer(e.orig_len as usize);
    if e.codec == ChunkCodec::Raw && payload.len() == out.len() {
        // Stored as is: read straight into the output, no copy through the payload buffer.
        src.read_payload_into(i, &mut out)?;
    } else {
        src.read_payload_into(i, payload)?;
        crate::chunk::decode(e.codec, e.transform, payload, &mut out)
            .map_err(|err| Error::codec(src.path(), i as u32, err))?;
    }
    if chunk_hash(&out) != e.xxh3 {
        return Err(Error::corrupt(src.path(), Some(i as u32), "checksum mismatch"));
    }
    Ok(out)
}

thread_local! {
    /// Per-thread payload buffer for [`decode_one`].
    static PAYLOAD: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}
