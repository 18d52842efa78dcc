//! The `.dcz` container: one original file, chunked, coded, indexed and checksummed.
//!
//!
//! The byte layout (header, chunk payloads, index, footer) is written down once, in
//! docs/FORMAT.md; the `FT_*`, `IX_*` and `CE_*` constants below are its code form, and
//! `tests::format_md_matches_the_constants` fails when the two disagree.
//! A reader needs only the footer and the index to serve any byte range.

pub mod manifest;
mod reader;
pub mod tree;
mod writer;

pub use reader::Container;
pub use writer::Writer;

use crate::chunk::ChunkCodec;
use crate::model::FileKind;
use crate::transform::Transform;

pub const MAGIC: [u8; 8] = *b"DCFSPAK\0";
pub const END_MAGIC: [u8; 8] = *b"DCFSEND\0";
pub const VERSION_MAJOR: u16 = 1;
pub const VERSION_MINOR: u16 = 0;

pub const HEADER_LEN: u64 = 16;
const HDR_MAJOR: usize = 8;
const HDR_MINOR: usize = 10;

pub const FOOTER_LEN: u64 = 48;
const FT_INDEX_OFFSET: usize = 0;
const FT_INDEX_LEN: usize = 8;
const FT_INDEX_HASH: usize = 16;
const FT_MAJOR: usize = 24;
const FT_MINOR: usize = 26;
const FT_SELF_HASH: usize = 32;
const FT_MAGIC: usize = 40;

const IX_SIZE: usize = 0;
const IX_MODE: usize = 8;
const IX_MTIME_S: usize = 12;
const IX_MTIME_NS: usize = 20;
const IX_DIGEST: usize = 24;
const IX_KIND: usize = 56;
const IX_FLAGS: usize = 57;
const IX_FRACTION: usize = 60;
const IX_CHUNK_SIZE: usize = 64;
const IX_N_CHUNKS: usize = 68;
const IX_N_TENSORS: usize = 72;
pub const IX_FIXED_LEN: usize = 80;

pub const CHUNK_ENTRY_LEN: usize = 48;
const CE_ORIG_OFFSET: usize = 0;
const CE_ORIG_LEN: usize = 8;
const CE_PAYLOAD_LEN: usize = 12;
const CE_PAYLOAD_OFFSET: usize = 16;
const CE_HASH: usize = 24;
const CE_CODEC: usize = 32;
const CE_TRANSFORM: usize = 33;
const CE_DTYPE: usize = 34;
const CE_TENSOR: usize = 36;

/// Largest chunk a reader accepts: bounds every allocation a hostile index can ask for.
pub const MAX_CHUNK_LEN: u32 = 64 << 20;
/// Largest index a reader accepts (about 22 million chunk entries).
pub const MAX_INDEX_LEN: u64 = 1 << 30;
/// Most original bytes a coded chunk may claim per payload byte. The best any codec here
/// does is a zstd RLE block (4 bytes for 128 KiB: 32768x; a zero chunk measures 32388x);
/// this is twice that. A chunk claiming more is corrupt, so a reader never allocates more
/// than this many times the payload it read.
pub const MAX_EXPANSION: u64 = 64 * 1024;

pub const FLAG_LENIENT_OPAQUE: u8 = 1;
pub const NO_TENSOR: u32 = u32::MAX;

/// Metadata of the original file.
#[derive(Clone, Debug, PartialEq)]
pub struct FileMeta {
    pub size: u64,
    pub mode: u32,
    pub mtime_s: i64,
    pub mtime_ns: u32,
    pub blake3: [u8; 32],
    pub kind: FileKind,
    pub flags: u8,
    pub compress_fraction_ppm: u32,
    pub chunk_size: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkEntry {
    pub orig_offset: u64,
    pub orig_len: u32,
    pub payload_len: u32,
    pub payload_offset: u64,
    pub xxh3: u64,
    pub codec: ChunkCodec,
    pub transform: Transform,
    pub dtype: u8,
    pub tensor: u32,
}

impl ChunkEntry {
    pub fn orig_end(&self) -> u64 {
        self.orig_offset + self.orig_len as u64
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct TensorEntry {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<u64>,
    pub start: u64,
    pub len: u64,
}

/// The xxh3-64 every chunk checksum uses.
pub fn chunk_hash(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
}
fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Serialises the index (fixed part, chunk entries, tensor table).
pub(crate) fn encode_index(meta: &FileMeta, chunks: &[ChunkEntry], tensors: &[TensorEntry]) -> Vec<u8> {
    let mut b = vec![0u8; IX_FIXED_LEN + chunks.len() * CHUNK_ENTRY_LEN];
    b[IX_SIZE..IX_SIZE + 8].copy_from_slice(&meta.size.to_le_bytes());
    b[IX_MODE..IX_MODE + 4].copy_from_slice(&meta.mode.to_le_bytes());
    b[IX_MTIME_S..IX_MTIME_S + 8].copy_from_slice(&meta.mtime_s.to_le_bytes());
    b[IX_MTIME_NS..IX_MTIME_NS + 4].copy_from_slice(&meta.mtime_ns.to_le_bytes());
    b[IX_DIGEST..IX_DIGEST + 32].copy_from_slice(&meta.blake3);
    b[IX_KIND] = meta.kind as u8;
    b[IX_FLAGS] = meta.flags;
    b[IX_FRACTION..IX_FRACTION + 4].copy_from_slice(&meta.compress_fraction_ppm.to_le_bytes());
    b[IX_CHUNK_SIZE..IX_CHUNK_SIZE + 4].copy_from_slice(&meta.chunk_size.to_le_bytes());
    b[IX_N_CHUNKS..IX_N_CHUNKS + 4].copy_from_slice(&(chunks.len() as u32).to_le_bytes());
    b[IX_N_TENSORS..IX_N_TENSORS + 4].copy_from_slice(&(tensors.len() as u32).to_le_bytes());
    for (i, c) in chunks.iter().enumerate() {
        let e = &mut b[IX_FIXED_LEN + i * CHUNK_ENTRY_LEN..IX_FIXED_LEN + (i + 1) * CHUNK_ENTRY_LEN];
        e[CE_ORIG_OFFSET..CE_ORIG_OFFSET + 8].copy_from_slice(&c.orig_offset.to_le_bytes());
        e[CE_ORIG_LEN..CE_ORIG_LEN + 4].copy_from_slice(&c.orig_len.to_le_bytes());
        e[CE_PAYLOAD_LEN..CE_PAYLOAD_LEN + 4].copy_from_slice(&c.payload_len.to_le_bytes());
        e[CE_PAYLOAD_OFFSET..CE_PAYLOAD_OFFSET + 8].copy_from_slice(&c.payload_offset.to_le_bytes());
        e[CE_HASH..CE_HASH + 8].copy_from_slice(&c.xxh3.to_le_bytes());
        e[CE_CODEC] = c.codec as u8;
        e[CE_TRANSFORM] = c.transform as u8;
        e[CE_DTYPE] = c.dtype;
        e[CE_TENSOR..CE_TENSOR + 4].copy_from_slice(&c.tensor.to_le_bytes());
    }
    for t in tensors {
        let name = &t.name.as_bytes()[..t.name.len().min(u16::MAX as usize)];
        b.extend_from_slice(&(name.len() as u16).to_le_bytes());
        b.extend_from_slice(name);
        let dt = &t.dtype.as_bytes()[..t.dtype.len().min(255)];
        b.push(dt.len() as u8);
        b.extend_from_slice(dt);
        b.push(t.shape.len().min(255) as u8);
        for d in t.shape.iter().take(255) {
            b.extend_from_slice(&d.to_le_bytes());
        }
        b.extend_from_slice(&t.start.to_le_bytes());
        b.extend_from_slice(&t.len.to_le_bytes());
    }
    b
}

pub(crate) fn encode_footer(index_offset: u64, index: &[u8]) -> [u8; FOOTER_LEN as usize] {
    let mut f = [0u8; FOOTER_LEN as usize];
    f[FT_INDEX_OFFSET..FT_INDEX_OFFSET + 8].copy_from_slice(&index_offset.to_le_bytes());
    f[FT_INDEX_LEN..FT_INDEX_LEN + 8].copy_from_slice(&(index.len() as u64).to_le_bytes());
    f[FT_INDEX_HASH..FT_INDEX_HASH + 8].copy_from_slice(&chunk_hash(index).to_le_bytes());
    f[FT_MAJOR..FT_MAJOR + 2].copy_from_slice(&VERSION_MAJOR.to_le_bytes());
    f[FT_MINOR..FT_MINOR + 2].copy_from_slice(&VERSION_MINOR.to_le_bytes());
    let h = chunk_hash(&f[..FT_SELF_HASH]);
    f[FT_SELF_HASH..FT_SELF_HASH + 8].copy_from_slice(&h.to_le_bytes());
    f[FT_MAGIC..FT_MAGIC + 8].copy_from_slice(&END_MAGIC);
    f
}

pub(crate) fn encode_header() -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[..8].copy_from_slice(&MAGIC);
    h[HDR_MAJOR..HDR_MAJOR + 2].copy_from_slice(&VERSION_MAJOR.to_le_bytes());
    h[HDR_MINOR..HDR_MINOR + 2].copy_from_slice(&VERSION_MINOR.to_le_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Codec;

    const FORMAT_MD: &str = include_str!("../../docs/FORMAT.md");

    /// `(offset, size)` rows of the markdown table that follows `heading` in FORMAT.md.
    fn table_after(heading: &str) -> Vec<(usize, usize, String)> {
        let at = FORMAT_MD
            .find(heading)
            .unwrap_or_else(|| panic!("FORMAT.md lost {heading:?}"));
        FORMAT_MD[at..]
            .lines()
            .skip_while(|l| !l.starts_with("| 0 |"))
            .take_while(|l| l.starts_with('|'))
            .map(|l| {
                let f: Vec<&str> = l.split('|').map(str::trim).collect();
                (f[1].parse().unwrap(), f[2].parse().unwrap(), f[3].to_string())
            })
            .collect()
    }

    #[test]
    fn format_md_matches_the_constants() {
        let ix = table_after("Index (80 fixed bytes");
        let want_ix = [
            (IX_SIZE, 8),
            (IX_MODE, 4),
            (IX_MTIME_S, 8),
            (IX_MTIME_NS, 4),
            (IX_DIGEST, 32),
            (IX_KIND, 1),
            (IX_FLAGS, 1),
            (58, 2),
            (IX_FRACTION, 4),
            (IX_CHUNK_SIZE, 4),
            (IX_N_CHUNKS, 4),
            (IX_N_TENSORS, 4),
            (76, 4),
        ];
        assert_eq!(ix.iter().map(|r| (r.0, r.1)).collect::<Vec<_>>(), want_ix);
        assert_eq!(ix.last().map(|r| r.0 + r.1), Some(IX_FIXED_LEN));
        let ce = table_after("Chunk entry:");
        let want_ce = [
            (CE_ORIG_OFFSET, 8),
            (CE_ORIG_LEN, 4),
            (CE_PAYLOAD_LEN, 4),
            (CE_PAYLOAD_OFFSET, 8),
            (CE_HASH, 8),
            (CE_CODEC, 1),
            (CE_TRANSFORM, 1),
            (CE_DTYPE, 1),
            (35, 1),
            (CE_TENSOR, 4),
            (40, 8),
        ];
        assert_eq!(ce.iter().map(|r| (r.0, r.1)).collect::<Vec<_>>(), want_ce);
        assert_eq!(ce.last().map(|r| r.0 + r.1), Some(CHUNK_ENTRY_LEN));
        let codecs: Vec<String> = ChunkCodec::ALL.iter().map(|&c| format!("{} {c}", c as u8)).collect();
        assert_eq!(ce[5].2, format!("codec: {}", codecs.join(", ")));
        let kinds: Vec<String> = FileKind::ALL.iter().map(|&k| format!("{} {k}", k as u8)).collect();
        assert_eq!(ix[5].2, format!("file kind: {}", kinds.join(", ")));
        let plane: Vec<String> = Codec::ALL.iter().map(|&c| format!("{} {c}", c as u8)).collect();
        assert!(
            FORMAT_MD.contains(&format!("(u8 codec: {} |", plane.join(", "))),
            "plane codec ids"
        );
        // Every transform has its row: `| id | name | planes |`.
        for &t in Transform::ALL {
            assert!(
                FORMAT_MD.contains(&format!("| {} | {t} |", t as u8)),
                "FORMAT.md lacks transform {t}"
            );
        }
        let footer = [
            FT_INDEX_OFFSET,
            FT_INDEX_LEN,
            FT_INDEX_HASH,
            FT_MAJOR,
            FT_MINOR,
            FT_SELF_HASH,
            FT_MAGIC,
        ];
        for at in footer {
            let named = [format!(" at {at},"), format!(" at {at}.")];
            assert!(
                named.iter().any(|n| FORMAT_MD.contains(n.as_str())),
                "FORMAT.md's footer lacks offset {at}"
            );
        }
        assert_eq!(FT_MAGIC + 8, FOOTER_LEN as usize);
        assert!(FORMAT_MD.contains(&format!(
            "\"{}\\0\" at {FT_MAGIC}",
            std::str::from_utf8(&END_MAGIC[..7]).unwrap()
        )));
    }
}
