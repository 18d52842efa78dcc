//! The code each fuzz target runs on one input. Shared, through `#[path]`, by the fuzz
//! targets (`fuzz/fuzz_targets/*.rs`) and by `tests/regressions.rs`, which replays every
//! saved crash input through exactly the same path in a normal `cargo test`.
//!
//! Every function must return (never panic, hang or allocate without bound) on any input.
//! Lengths taken from the input are capped before anything is allocated.
#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::fd::FromRawFd;
use std::path::Path;

use dcfs::chunk::{self, ChunkCodec};
use dcfs::codec::{self, rans, Codec};
use dcfs::format::{Container, FOOTER_LEN, MAX_EXPANSION};
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
        "gpu_emu" => gpu_emu(data),
        t => panic!("unknown fuzz target {t}"),
    }
}

pub const TARGETS: [&str; 8] = [
    "container",
    "rans",
    "rans_roundtrip",
    "zstd",
    "chunk",
    "safetensors",
    "gguf",
    "gpu_emu",
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

thread_local! {
    /// Bytes this thread has asked the allocator for (growth only: frees are not subtracted).
    static ALLOCATED: Cell<u64> = const { Cell::new(0) };
}

/// A global allocator that counts what each thread allocates, so a target can assert how
/// much one call allocated. Counting happens only in a binary that registers it
/// (`#[global_allocator]`): the `container` fuzz target and `tests/hostile_bounds.rs` do;
/// elsewhere [`allocated`] stays 0 and the allocation bound below is not checked.
pub struct CountingAlloc;

fn note(bytes: usize) {
    // `try_with`: during thread teardown the slot may be gone; that allocation is not ours.
    let _ = ALLOCATED.try_with(|a| a.set(a.get() + bytes as u64));
}

// SAFETY: every method forwards to `System` with the caller's own arguments, so `System`'s
// guarantees hold unchanged; the counting touches only a const-initialised thread-local
// `Cell`, which never allocates.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        note(l.size());
        // SAFETY: forwarded unchanged; the caller upholds `alloc`'s contract.
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        note(l.size());
        // SAFETY: forwarded unchanged; the caller upholds `alloc_zeroed`'s contract.
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: forwarded unchanged; `p` came from `System` through this allocator.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        note(new.saturating_sub(l.size()));
        // SAFETY: forwarded unchanged; the caller upholds `realloc`'s contract.
        unsafe { System.realloc(p, l, new) }
    }
}

/// Bytes allocated so far by this thread (0 unless [`CountingAlloc`] is registered).
pub fn allocated() -> u64 {
    ALLOCATED.with(Cell::get)
}

/// Opening a container allocates at most this many times the index length (plus
/// [`OPEN_ALLOC_SLACK`]): the index itself, the chunk table (40 bytes per 48-byte entry),
/// the tensor table (an 88-byte entry per record of at least 20 bytes; names grown by
/// lossy UTF-8 repair) and error messages.
pub const OPEN_ALLOC_FACTOR: u64 = 8;
/// Fixed allocations of an open (path, messages), whatever the index.
pub const OPEN_ALLOC_SLACK: u64 = 16 << 10;

/// Container reader: footer, index, every chunk (up to a cap) and a ranged read.
///
/// Asserts the resource bounds a hostile container must not break: opening allocates at
/// most a fixed multiple of the index (or, when refused early, of the input), and an opened
/// container claims at most `MAX_EXPANSION` original bytes per input byte.
pub fn container(data: &[u8]) {
    let mut f = memfd();
    f.set_len(0).unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.write_all(data).unwrap();
    let before = allocated();
    let opened = Container::from_file(Path::new("fuzz.dcz"), f);
    let used = allocated() - before;
    // The footer's index length (footer bytes 8..16), trusted only once the container opened.
    let index_len = match (&opened, data.len().checked_sub(FOOTER_LEN as usize - 8)) {
        (Ok(_), Some(at)) => u64::from_le_bytes(data[at..at + 8].try_into().unwrap()),
        _ => data.len() as u64,
    };
    assert!(
        used <= OPEN_ALLOC_FACTOR * index_len + OPEN_ALLOC_SLACK,
        "opening allocated {used} bytes for a {index_len}-byte index"
    );
    let Ok(c) = opened else {
        return;
    };
    let total: u64 = c.chunks.iter().map(|e| e.orig_len as u64).sum();
    assert_eq!(total, c.meta.size);
    assert!(
        total <= MAX_EXPANSION * data.len() as u64,
        "{} input bytes claim {total} original bytes",
        data.len()
    );
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

/// A decoder that accepted `input` once must accept it again and write every output byte:
/// decoded into a buffer of other old contents, the output is the same.
fn decodes_the_same_twice(first: &[u8], decode: impl Fn(&mut [u8]) -> bool, what: &str) {
    let mut again = vec![0xA5u8; first.len()];
    assert!(decode(&mut again), "{what}: accepted once, refused the second time");
    assert!(
        again == first,
        "{what}: the output depends on the buffer's old contents"
    );
}

/// rANS: a capped expected length, then the stream. A stream that decodes decodes the
/// same again, every output byte written.
pub fn rans(data: &[u8]) {
    let Some((n, stream)) = split_len(data) else { return };
    let mut out = vec![0u8; n];
    if rans::decode(stream, &mut out).is_ok() {
        decodes_the_same_twice(&out, |o| rans::decode(stream, o).is_ok(), "rans");
    }
}

/// Differential: the GPU kernels' warp model (`gpu::emu`) against the CPU decoder on the
/// same stream (input as for `rans`). Both accept or both refuse, and what they accept
/// decodes to the same bytes; a kernel that trusted a stream the CPU refuses would serve
/// wrong bytes whenever its checksum check was skipped.
pub fn gpu_emu(data: &[u8]) {
    let Some((n, stream)) = split_len(data) else { return };
    let mut cpu = vec![0u8; n];
    let mut gpu = vec![0xA5u8; n];
    let c = rans::decode(stream, &mut cpu);
    let g = dcfs::gpu::emu::decode_stream(stream, &mut gpu, &mut Default::default());
    assert_eq!(c.is_ok(), g.is_ok(), "CPU {c:?}, emulated GPU flags {g:?}");
    if c.is_ok() {
        assert!(cpu == gpu, "the emulated GPU decoded other bytes than the CPU");
    }
    gpu_batch(data);
}

/// Differential at the batch level: the input's bytes become up to four chunks, each
/// encoded with rANS under its own transform (one with a bit flipped where the input
/// says), planned into one batch as the device path plans it (`gpu::plan::Planner`) and
/// run through the kernels' model in an arena reused between inputs, as the device
/// reuses its own. Intact chunks are never flagged and come back as they were; every
/// chunk the kernels leave unflagged holds exactly what `chunk::decode` makes of its
/// payload when the CPU accepts it.
/// Returns how many chunks came back unflagged and were compared.
pub fn gpu_batch(data: &[u8]) -> usize {
    use dcfs::chunk::{CodecChoice, EncodeOptions};
    use dcfs::format::ChunkEntry;
    use dcfs::gpu::{emu, plan::Planner};
    let Some((&[sel, at_lo, at_hi], rest)) = data.split_first_chunk::<3>() else {
        return 0;
    };
    let rest = &rest[..rest.len().min(MAX_OUT)];
    if rest.is_empty() {
        return 0;
    }
    let opt = EncodeOptions {
        codec: CodecChoice::Rans,
        ..Default::default()
    };
    let flipped = (sel as usize >> 4) % 4;
    let parts: Vec<&[u8]> = rest.chunks(rest.len().div_ceil(4)).collect();
    let mut chunks: Vec<(ChunkEntry, Vec<u8>)> = Vec::new();
    for (k, part) in parts.iter().enumerate() {
        let t = Transform::ALL[(sel as usize + k) % Transform::ALL.len()];
        let enc = chunk::encode(part, &[t], true, &opt);
        let mut payload = enc.payload;
        if k == flipped && !payload.is_empty() {
            let at = u16::from_le_bytes([at_lo, at_hi]) as usize % payload.len();
            payload[at] ^= 1 << (sel & 7);
        }
        let e = ChunkEntry {
            orig_offset: 0,
            orig_len: part.len() as u32,
            payload_len: payload.len() as u32,
            payload_offset: 0,
            xxh3: 0,
            codec: enc.codec,
            transform: enc.transform,
            dtype: 0,
            tensor: 0,
        };
        chunks.push((e, payload));
    }
    let mut planner = Planner::new();
    for (i, (e, payload)) in chunks.iter().enumerate() {
        planner.add(i, e, payload, false);
    }
    let plan = planner.finish();
    ARENA.with(|a| {
        let mut arena = a.borrow_mut();
        let mut compared = 0;
        let flags = emu::run_in(&mut arena, &plan, &mut Default::default());
        assert_eq!(flags.len(), plan.subs.len(), "one flag per sub-block");
        for s in &plan.slots {
            let (e, payload) = &chunks[s.chunk];
            assert_eq!(s.out.end - s.out.start, e.orig_len as u64, "slot length");
            if flags[s.subs.clone()].iter().any(|&f| f != 0) {
                // Only damage may be flagged: an intact chunk flagged is a needless fallback.
                assert!(
                    s.chunk == flipped,
                    "chunk {}: intact, but the kernels flagged it",
                    s.chunk
                );
                continue;
            }
            let got = &arena[s.out.start as usize..s.out.end as usize];
            let mut cpu = vec![0u8; e.orig_len as usize];
            if chunk::decode(e.codec, e.transform, payload, &mut cpu).is_ok() {
                assert!(
                    got == cpu.as_slice(),
                    "chunk {}: the batch decoded other bytes than the CPU",
                    s.chunk
                );
            }
            if s.chunk != flipped {
                assert!(
                    got == parts[s.chunk],
                    "chunk {}: an intact chunk came back changed",
                    s.chunk
                );
            }
            compared += 1;
        }
        compared
    })
}

thread_local! {
    /// The emulated device arena, kept between inputs (grown, never cleared).
    static ARENA: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
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
    if codec::decode(Codec::Zstd, stream, &mut out).is_ok() {
        decodes_the_same_twice(&out, |o| codec::decode(Codec::Zstd, stream, o).is_ok(), "zstd");
    }
}

/// One chunk payload: codec id, transform id, capped length, then the payload.
pub fn chunk(data: &[u8]) {
    let Some((&[c, t], rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let c = ChunkCodec::ALL[c as usize % ChunkCodec::ALL.len()];
    let t = Transform::ALL[t as usize % Transform::ALL.len()];
    let Some((n, payload)) = split_len(rest) else { return };
    let mut out = vec![0u8; n];
    if chunk::decode(c, t, payload, &mut out).is_ok() {
        // A raw chunk is its payload; any chunk decodes the same again, every byte written.
        assert!(c != ChunkCodec::Raw || out == payload, "a raw chunk is not its payload");
        decodes_the_same_twice(&out, |o| chunk::decode(c, t, payload, o).is_ok(), "chunk");
    }
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
