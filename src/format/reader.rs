//! Opens a container, proves its footer and index sane, and decodes chunks by number.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::*;
use crate::chunk;
use crate::error::{Error, Result};
use crate::remote::Source;

/// An open `.dcz` container. Reads take `&self` (pread), so one `Container` serves many
/// threads at once.
#[derive(Debug)]
pub struct Container {
    path: PathBuf,
    file: Backing,
    len: u64,
    pub meta: FileMeta,
    pub chunks: Vec<ChunkEntry>,
    pub tensors: Vec<TensorEntry>,
}

impl Container {
    /// Opens `path` without following a symlink in its last component: a link planted in
    /// place of a container is refused, never read through to whatever it names.
    pub fn open(path: &Path) -> Result<Container> {
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ELOOP) => Error::Refused {
                    path: path.to_path_buf(),
                    what: "is a symbolic link; containers are never opened through a link".into(),
                },
                _ => Error::io(path, e),
            })?;
        Self::from_file(path, file)
    }

    pub fn from_file(path: &Path, file: File) -> Result<Container> {
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let (meta, chunks, tensors) = parse(path, len, |buf, at| {
            file.read_exact_at(buf, at).map_err(|e| Error::io(path, e))
        })?;
        Ok(Container {
            path: path.to_path_buf(),
            file: Backing::File(file),
            len,
            meta,
            chunks,
            tensors,
        })
    }

    /// Opens a container read through `source` (an object in a remote store): the same
    /// checks as a local file, on bytes fetched by range (read once more when they fail,
    /// as damage in transit). `source.name()` names it in errors.
    pub fn from_source(source: Arc<dyn Source>) -> Result<Container> {
        let path = source.name().to_path_buf();
        let len = source.len();
        let read = |buf: &mut [u8], at: u64| source.read_exact_at(buf, at);
        // Damage in transit is read again once before it is called damage.
        let (meta, chunks, tensors) = match parse(&path, len, read) {
            Err(e) if e.is_corrupt() => {
                tracing::warn!("{e}; fetching the header, footer and index again");
                parse(&path, len, read)?
            }
            r => r?,
        };
        Ok(Container {
            path,
            file: Backing::Source(source),
            len,
            meta,
            chunks,
            tensors,
        })
    }

    /// Whether the bytes come from a remote source (reads are network requests, best
    /// made few and large).
    pub fn is_remote(&self) -> bool {
        matches!(self.file, Backing::Source(_))
    }

    /// Reads the payloads of chunks `range` (back to back in the container) in one read,
    /// which a remote source splits into parallel ranged requests. Returns the bytes and
    /// each chunk's offset in them.
    pub fn read_payload_span(&self, range: std::ops::Range<usize>) -> Result<(Vec<u8>, Vec<usize>)> {
        let Some(first) = self.chunks.get(range.start) else {
            return Ok((Vec::new(), Vec::new()));
        };
        let start = first.payload_offset;
        let end = self.chunks[range.clone()]
            .last()
            .map_or(start, |c| c.payload_offset + c.payload_len as u64);
        let mut buf = vec![0u8; (end - start) as usize];
        self.read_exact_at(&mut buf, start)?;
        let at = self.chunks[range]
            .iter()
            .map(|c| (c.payload_offset - start) as usize)
            .collect();
        Ok((buf, at))
    }
}

/// Where a container's bytes come from.
#[derive(Debug)]
enum Backing {
    File(File),
    Source(Arc<dyn Source>),
}

/// Proves the header, footer and index sane, reading through `read` (exact reads at an
/// offset of a container `len` bytes long).
fn parse(path: &Path, len: u64, read: impl Fn(&mut [u8], u64) -> Result<()>) -> Result<Index> {
    let bad = |what: &str| Error::corrupt(path, None, what.to_string());
    if len < HEADER_LEN + FOOTER_LEN {
        return Err(bad("shorter than a header and a footer (truncated?)"));
    }
    let mut head = [0u8; HEADER_LEN as usize];
    read(&mut head, 0)?;
    if head[..8] != MAGIC {
        return Err(bad("not a dcfs container (bad magic)"));
    }
    check_version(path, le_u16(&head, HDR_MAJOR))?;
    let mut ft = [0u8; FOOTER_LEN as usize];
    read(&mut ft, len - FOOTER_LEN)?;
    if ft[FT_MAGIC..FT_MAGIC + 8] != END_MAGIC {
        return Err(bad("footer magic missing (truncated or not finished)"));
    }
    if le_u64(&ft, FT_SELF_HASH) != chunk_hash(&ft[..FT_SELF_HASH]) {
        return Err(bad("footer checksum mismatch"));
    }
    check_version(path, le_u16(&ft, FT_MAJOR))?;
    // The header is not checksummed on its own: it must repeat the footer's versions
    // and keep its reserved bytes zero, so any damage to it is still detected.
    if head[HDR_MAJOR..HDR_MAJOR + 4] != ft[FT_MAJOR..FT_MAJOR + 4] || head[12..16] != [0; 4] {
        return Err(bad("header disagrees with the footer"));
    }
    let index_offset = le_u64(&ft, FT_INDEX_OFFSET);
    let index_len = le_u64(&ft, FT_INDEX_LEN);
    if index_len > MAX_INDEX_LEN
        || index_offset < HEADER_LEN
        || index_offset.checked_add(index_len) != Some(len - FOOTER_LEN)
    {
        return Err(bad("footer points outside the file"));
    }
    let mut index = vec![0u8; index_len as usize];
    read(&mut index, index_offset)?;
    if le_u64(&ft, FT_INDEX_HASH) != chunk_hash(&index) {
        return Err(bad("index checksum mismatch"));
    }
    decode_index(path, &index, index_offset)
}

impl Container {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Length of the container on disk.
    pub fn packed_len(&self) -> u64 {
        self.len
    }

    /// The chunk holding original byte `offset`, if inside the file.
    pub fn chunk_at(&self, offset: u64) -> Option<usize> {
        if offset >= self.meta.size {
            return None;
        }
        let i = self.chunks.partition_point(|c| c.orig_end() <= offset);
        (i < self.chunks.len()).then_some(i)
    }

    /// Reads chunk `i`'s payload as stored.
    pub fn read_payload(&self, i: usize) -> Result<Vec<u8>> {
        let c = &self.chunks[i];
        let mut buf = vec![0u8; c.payload_len as usize];
        self.read_exact_at(&mut buf, c.payload_offset)?;
        Ok(buf)
    }

    /// Reads stored bytes at a container offset, mapping a short file to `Corrupt`.
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let file = match &self.file {
            Backing::File(f) => f,
            Backing::Source(s) => return s.read_exact_at(buf, offset),
        };
        file.read_exact_at(buf, offset).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                Error::corrupt(&self.path, None, "container truncated under us")
            } else {
                Error::io(&self.path, e)
            }
        })
    }

    /// Decodes a payload of chunk `i` into `out` (its original length) and checks the
    /// checksum, so a caller never sees wrong bytes.
    pub fn decode_payload(&self, i: usize, payload: &[u8], out: &mut [u8]) -> Result<()> {
        let c = &self.chunks[i];
        chunk::decode(c.codec, c.transform, payload, out).map_err(|e| Error::codec(&self.path, i as u32, e))?;
        if chunk_hash(out) != c.xxh3 {
            return Err(Error::corrupt(&self.path, Some(i as u32), "checksum mismatch"));
        }
        Ok(())
    }

    /// Reads, decodes and verifies chunk `i`.
    pub fn decode_chunk(&self, i: usize) -> Result<Vec<u8>> {
        let payload = self.read_payload(i)?;
        let mut out = vec![0u8; self.chunks[i].orig_len as usize];
        self.decode_payload(i, &payload, &mut out)?;
        Ok(out)
    }

    /// Reads original bytes at `offset` into `buf` (decoding every chunk it touches);
    /// returns the bytes read, short only at end of file.
    pub fn read_at(&self, mut offset: u64, buf: &mut [u8]) -> Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            let Some(i) = self.chunk_at(offset) else { break };
            let data = self.decode_chunk(i)?;
            let c = &self.chunks[i];
            let from = (offset - c.orig_offset) as usize;
            let n = (data.len() - from).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&data[from..from + n]);
            done += n;
            offset += n as u64;
        }
        Ok(done)
    }

    /// Splits an opened (validated) container into its file, its length, and what serving
    /// needs; the tensor table is dropped. Lets the mount close the file and keep only
    /// the chunk table. An error for a container read through a remote source.
    pub fn into_parts(self) -> Result<(File, u64, FileMeta, Vec<ChunkEntry>)> {
        match self.file {
            Backing::File(f) => Ok((f, self.len, self.meta, self.chunks)),
            Backing::Source(_) => Err(Error::Invalid {
                path: self.path,
                what: "a remote container has no local file".into(),
            }),
        }
    }

    /// Rebuilds a container from [`into_parts`](Self::into_parts) output and a file the
    /// caller has reopened and checked to be the same one; the tensor table is empty.
    pub fn from_parts(path: &Path, file: File, len: u64, meta: FileMeta, chunks: Vec<ChunkEntry>) -> Container {
        Container {
            path: path.to_path_buf(),
            file: Backing::File(file),
            len,
            meta,
            chunks,
            tensors: Vec::new(),
        }
    }
}

fn check_version(path: &Path, major: u16) -> Result<()> {
    if major > VERSION_MAJOR {
        return Err(Error::VersionTooNew {
            file: path.to_path_buf(),
            expected: VERSION_MAJOR,
            actual: major,
        });
    }
    if major == 0 {
        return Err(Error::corrupt(path, None, "format version 0"));
    }
    Ok(())
}

type Index = (FileMeta, Vec<ChunkEntry>, Vec<TensorEntry>);

/// Parses and validates an index: chunks must tile `[0, size)` in order, every id must be
/// known, and payloads must be exactly what the writer lays down: back to back in chunk
/// order from the end of the header to the start of the index. So no payload byte is named
/// twice, and with each chunk's `MAX_EXPANSION` cap the whole file claims at most
/// `MAX_EXPANSION` times the container's size.
///
/// Allocates at most a fixed multiple of `b.len()`: a count from the index sizes an
/// allocation only as far as the bytes present can back it (a chunk entry is 40 bytes per
/// 48 of index, a tensor entry 88 per record of at least 20; names at most triple through
/// UTF-8 repair).
fn decode_index(path: &Path, b: &[u8], index_offset: u64) -> Result<Index> {
    let bad = |what: String| Error::corrupt(path, None, what);
    if b.len() < IX_FIXED_LEN {
        return Err(bad("index shorter than its fixed part".into()));
    }
    let kind = FileKind::from_id(b[IX_KIND]).ok_or_else(|| bad(format!("unknown file kind {}", b[IX_KIND])))?;
    let meta = FileMeta {
        size: le_u64(b, IX_SIZE),
        mode: le_u32(b, IX_MODE),
        mtime_s: le_u64(b, IX_MTIME_S) as i64,
        mtime_ns: le_u32(b, IX_MTIME_NS),
        blake3: b[IX_DIGEST..IX_DIGEST + 32].try_into().unwrap(),
        kind,
        flags: b[IX_FLAGS],
        compress_fraction_ppm: le_u32(b, IX_FRACTION),
        chunk_size: le_u32(b, IX_CHUNK_SIZE),
    };
    let n_chunks = le_u32(b, IX_N_CHUNKS) as usize;
    let n_tensors = le_u32(b, IX_N_TENSORS) as usize;
    let table_end = n_chunks
        .checked_mul(CHUNK_ENTRY_LEN)
        .and_then(|x| x.checked_add(IX_FIXED_LEN))
        .filter(|&e| e <= b.len())
        .ok_or_else(|| bad(format!("index too short for {n_chunks} chunks")))?;
    let mut chunks = Vec::with_capacity(n_chunks);
    let mut expect_offset = 0u64;
    let mut expect_payload = HEADER_LEN;
    for i in 0..n_chunks {
        let e = &b[IX_FIXED_LEN + i * CHUNK_ENTRY_LEN..IX_FIXED_LEN + (i + 1) * CHUNK_ENTRY_LEN];
        let cbad = |what: String| Error::corrupt(path, Some(i as u32), what);
        let codec = ChunkCodec::from_id(e[CE_CODEC]).ok_or_else(|| cbad(format!("unknown codec {}", e[CE_CODEC])))?;
        let transform = Transform::from_id(e[CE_TRANSFORM])
            .ok_or_else(|| cbad(format!("unknown transform {}", e[CE_TRANSFORM])))?;
        let c = ChunkEntry {
            orig_offset: le_u64(e, CE_ORIG_OFFSET),
            orig_len: le_u32(e, CE_ORIG_LEN),
            payload_len: le_u32(e, CE_PAYLOAD_LEN),
            payload_offset: le_u64(e, CE_PAYLOAD_OFFSET),
            xxh3: le_u64(e, CE_HASH),
            codec,
            transform,
            dtype: e[CE_DTYPE],
            tensor: le_u32(e, CE_TENSOR),
        };
        if c.orig_offset != expect_offset {
            return Err(cbad(format!("starts at {} instead of {expect_offset}", c.orig_offset)));
        }
        if c.orig_len == 0 || c.orig_len > MAX_CHUNK_LEN {
            return Err(cbad(format!("length {} outside 1..={MAX_CHUNK_LEN}", c.orig_len)));
        }
        if c.payload_offset != expect_payload {
            return Err(cbad(format!(
                "payload at {} instead of {expect_payload} (payloads are back to back in chunk order)",
                c.payload_offset
            )));
        }
        // No overflow: `expect_payload` never exceeds `index_offset`.
        let pend = c.payload_offset + c.payload_len as u64;
        if pend > index_offset {
            return Err(cbad("payload runs into the index".into()));
        }
        if codec == ChunkCodec::Raw && c.payload_len != c.orig_len {
            return Err(cbad("raw payload length differs from the chunk length".into()));
        }
        if c.orig_len as u64 > c.payload_len as u64 * MAX_EXPANSION {
            return Err(cbad(format!(
                "{}-byte payload cannot hold {} bytes",
                c.payload_len, c.orig_len
            )));
        }
        if c.tensor != NO_TENSOR && c.tensor as usize >= n_tensors {
            return Err(cbad(format!("names tensor {} of {n_tensors}", c.tensor)));
        }
        expect_offset = c.orig_end();
        expect_payload = pend;
        chunks.push(c);
    }
    if expect_payload != index_offset {
        let what = format!("payloads end at {expect_payload} but the index starts at {index_offset}");
        return Err(Error::corrupt(path, n_chunks.checked_sub(1).map(|i| i as u32), what));
    }
    if expect_offset != meta.size {
        return Err(bad(format!("chunks cover {expect_offset} bytes of {}", meta.size)));
    }
    // Implied by the checks above (disjoint payloads, each expanding at most MAX_EXPANSION
    // times); stated so a change to them cannot silently lose it.
    debug_assert!(meta.size <= (index_offset - HEADER_LEN).saturating_mul(MAX_EXPANSION));
    // A tensor record is at least 20 bytes (name length, dtype length, rank, start, len):
    // never reserve more entries than the bytes left could hold.
    const MIN_TENSOR_RECORD: usize = 2 + 1 + 1 + 8 + 8;
    let mut tensors = Vec::with_capacity(n_tensors.min((b.len() - table_end) / MIN_TENSOR_RECORD));
    let mut p = table_end;
    let take = |p: &mut usize, n: usize| -> Result<&[u8]> {
        let s = b
            .get(*p..p.saturating_add(n))
            .ok_or_else(|| Error::corrupt(path, None, "tensor table truncated"))?;
        *p += n;
        Ok(s)
    };
    for _ in 0..n_tensors {
        let nl = u16::from_le_bytes(take(&mut p, 2)?.try_into().unwrap()) as usize;
        let name = String::from_utf8_lossy(take(&mut p, nl)?).into_owned();
        let dl = take(&mut p, 1)?[0] as usize;
        let dtype = String::from_utf8_lossy(take(&mut p, dl)?).into_owned();
        let nd = take(&mut p, 1)?[0] as usize;
        // Take the dimensions' bytes first, so the vector is sized by bytes present.
        let shape = take(&mut p, nd * 8)?
            .chunks_exact(8)
            .map(|d| u64::from_le_bytes(d.try_into().unwrap()))
            .collect();
        let start = u64::from_le_bytes(take(&mut p, 8)?.try_into().unwrap());
        let len = u64::from_le_bytes(take(&mut p, 8)?.try_into().unwrap());
        tensors.push(TensorEntry {
            name,
            dtype,
            shape,
            start,
            len,
        });
    }
    Ok((meta, chunks, tensors))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::{self, CodecChoice, EncodeOptions};

    /// The most compressible chunk there is, under every codec and level the packer can
    /// use, stays within half of `MAX_EXPANSION`, so the reader's bound never rejects a
    /// real pack.
    #[test]
    fn constant_chunks_stay_within_the_expansion_bound() {
        let data = vec![0u8; MAX_CHUNK_LEN as usize];
        for (codec, level) in [
            (CodecChoice::Zstd, 1),
            (CodecChoice::Zstd, 3),
            (CodecChoice::Zstd, 19),
            (CodecChoice::Rans, 3),
            (CodecChoice::Auto, 3),
        ] {
            let opt = EncodeOptions {
                codec,
                zstd_level: level,
                ..Default::default()
            };
            for t in [Transform::None, Transform::Split4] {
                let e = chunk::encode(&data, &[t], true, &opt);
                let ratio = data.len() as f64 / e.payload.len() as f64;
                eprintln!(
                    "{codec:?} level {level} {t:?}: {} bytes, ratio {ratio:.0}",
                    e.payload.len()
                );
                assert!(
                    e.payload.len() as u64 * MAX_EXPANSION / 2 >= data.len() as u64,
                    "{codec:?} level {level} {t:?}: ratio {ratio:.0}"
                );
            }
        }
    }
}
