//! The code each fuzz target runs on one input. Shared, through `#[path]`, by the fuzz
//! targets (`fuzz/fuzz_targets/*.rs`) and by `tests/regressions.rs`, which replays every
//! saved crash input through exactly the same path in a normal `cargo test`.
//!
//! Every function must return (never panic, hang or allocate without bound) on any input.
//! Lengths taken from the input are capped before anything is allocated.
#![allow(dead_code)]

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::fd::FromRawFd;
use std::path::Path;

use dcfs::chunk::{self, ChunkCodec};
use dcfs::codec::{self, rans, Codec};
use dcfs::format::{Container, MAX_EXPANSION};
use dcfs::model::{gguf, safetensors, ModelError};
use dcfs::transform::Transform;

/// Largest decoded length a target asks for: big enough for several rANS sub-blocks.
pub const MAX_OUT: usize = 1 << 18;
/// Chunks of one container decoded per input.
const MAX_CHUNKS: usize = 32;

/// Names the harness for `target`, so the regression test can dispatch on directory names.
pub fn run(target: &str, data: &[u8]) {
    match target {
        "container" => container(data),
        "rans" => rans(data),
        "rans_roundtrip" => rans_roundtrip(data),
        "zstd" => zstd(data),
        "chunk" => chunk(data),
        "safetensors" => safetensors(data),
        "gguf" => gguf(data),
        t => panic!("unknown fuzz target {t}"),
    }
}

pub const TARGETS: [&str; 7] = [
    "container",
    "rans",
    "rans_roundtrip",
    "zstd",
    "chunk",
    "safetensors",
    "gguf",
];

/// A length from the first 3 bytes, capped: (len, rest).
fn split_len(data: &[u8]) -> Option<(usize, &[u8])> {
    let (h, rest) = data.split_first_chunk::<3>()?;
    let n = u32::from_le_bytes([h[0], h[1], h[2], 0]) as usize;
    Some((n % (MAX_OUT + 1), rest))
}

/// An anonymous in-memory file (memfd), reused across inputs of one process.
fn memfd() -> File {
    thread_local! {
        static FD: File = {
            // SAFETY: the name is a valid NUL-terminated C string; memfd_create has no other
            // preconditions and returns a new descriptor or -1.
            let fd = unsafe { libc::memfd_create(c"dcfs-fuzz".as_ptr(), libc::MFD_CLOEXEC) };
            assert!(fd >= 0, "memfd_create failed");
            // SAFETY: `fd` is a fresh descriptor that nothing else owns.
            unsafe { File::from_raw_fd(fd) }
        };
    }
    FD.with(|f| f.try_clone().expect("dup memfd"))
}

/// Container reader: footer, index, every chunk (up to a cap) and a ranged read.
pub fn container(data: &[u8]) {
    let mut f = memfd();
    f.set_len(0).unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.write_all(data).unwrap();
    let Ok(c) = Container::from_file(Path::new("fuzz.dcz"), f) else {
        return;
    };
    for e in &c.chunks {
        // What any decode below may allocate is bounded by what was read.
        assert!(e.orig_len as u64 <= (e.payload_len as u64).max(1) * MAX_EXPANSION);
    }
    for i in 0..c.chunks.len().min(MAX_CHUNKS) {
        if let Ok(d) = c.decode_chunk(i) {
            assert_eq!(d.len(), c.chunks[i].orig_len as usize);
        }
    }
    let mut buf = vec![0u8; 4096];
    let _ = c.read_at(c.meta.size / 2, &mut buf);
    let _ = c.chunk_at(u64::MAX);
}

/// rANS: a capped expected length, then the stream.
pub fn rans(data: &[u8]) {
    let Some((n, stream)) = split_len(data) else { return };
    let mut out = vec![0u8; n];
    let _ = rans::decode(stream, &mut out);
}

/// The encoder (the AVX2 group loop where the CPU has it) against the decoder: any bytes,
/// capped, must come back exactly. A mismatch panics, which is the finding.
pub fn rans_roundtrip(data: &[u8]) {
    let data = &data[..data.len().min(MAX_OUT)];
    let mut enc = Vec::new();
    rans::encode(data, &mut enc);
    let mut out = vec![0u8; data.len()];
    rans::decode(&enc, &mut out).expect("a fresh stream decodes");
    assert!(out == data, "rANS round trip changed the bytes");
}

/// The zstd plane path with a capped output buffer.
pub fn zstd(data: &[u8]) {
    let Some((n, stream)) = split_len(data) else { return };
    let mut out = vec![0u8; n];
    let _ = codec::decode(Codec::Zstd, stream, &mut out);
}

/// One chunk payload: codec id, transform id, capped length, then the payload.
pub fn chunk(data: &[u8]) {
    let Some((&[c, t], rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let (Some(c), Some(t)) = (ChunkCodec::from_id(c % 4), Transform::from_id(t % 8)) else {
        return;
    };
    let Some((n, payload)) = split_len(rest) else { return };
    let mut out = vec![0u8; n];
    let _ = chunk::decode(c, t, payload, &mut out);
}

/// Drives a header parser the way `pack` does: a prefix of the file, growing while the
/// parser asks for more (up to the whole input). The input is the whole file.
fn drive(data: &[u8], parse: fn(&[u8], u64) -> Result<dcfs::model::Layout, ModelError>) {
    let len = data.len() as u64;
    let mut want = len.min(64);
    for _ in 0..64 {
        match parse(&data[..want as usize], len) {
            Err(ModelError::NeedMore { needed }) if needed > want && needed <= len => want = needed,
            Err(ModelError::NeedMore { needed }) => {
                assert!(needed > want, "asked for {needed} bytes after being given {want}");
                return;
            }
            Ok(l) => {
                for t in &l.tensors {
                    assert!(
                        t.start >= l.header_len && t.start + t.len <= len,
                        "tensor outside the file"
                    );
                }
                return;
            }
            Err(_) => return,
        }
    }
    panic!("parser asked for more bytes 64 times");
}

pub fn safetensors(data: &[u8]) {
    drive(data, safetensors::parse);
}

pub fn gguf(data: &[u8]) {
    drive(data, gguf::parse);
}
