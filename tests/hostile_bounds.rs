//! Resource bounds against hostile containers: small inputs must not cost large resources.
//! Each test builds its hostile input itself (container bytes forged by hand with correct
//! checksums, or a valid container of pathological shape written by `format::Writer`) and
//! checks the safe outcome.

mod common;

#[path = "../fuzz/harness.rs"]
mod harness;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{dcfs_bin, run_peak_rss, Rng};
use dcfs::chunk::{self, ChunkCodec, CodecChoice, EncodeOptions};
use dcfs::error::Error;
use dcfs::format::{
    chunk_hash, ChunkEntry, Container, FileMeta, TensorEntry, Writer, END_MAGIC, HEADER_LEN, MAGIC, MAX_EXPANSION,
    NO_TENSOR, VERSION_MAJOR, VERSION_MINOR,
};
use dcfs::model::FileKind;
use dcfs::pack::{self, NoProgress};
use dcfs::transform::Transform;
use proptest::prelude::*;

/// Lets `index_parse_*` and the fuzz harness measure what one open allocates.
#[global_allocator]
static ALLOC: harness::CountingAlloc = harness::CountingAlloc;

/// One chunk entry as the index stores it (layout in src/format/mod.rs); original offsets
/// are filled in back to back.
#[derive(Clone, Copy)]
struct Ent {
    orig_len: u32,
    payload_len: u32,
    payload_offset: u64,
    xxh3: u64,
    codec: ChunkCodec,
    tensor: u32,
}

/// A raw chunk of `bytes` whose payload sits at `at`.
fn raw(bytes: &[u8], at: u64) -> Ent {
    Ent {
        orig_len: bytes.len() as u32,
        payload_len: bytes.len() as u32,
        payload_offset: at,
        xxh3: chunk_hash(bytes),
        codec: ChunkCodec::Raw,
        tensor: NO_TENSOR,
    }
}

/// Index bytes: the fixed part, `chunks`, then `table` as a tensor table of `n_tensors`.
fn index(size: u64, digest: [u8; 32], chunks: &[Ent], n_tensors: u32, table: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; 80];
    b[0..8].copy_from_slice(&size.to_le_bytes());
    b[8..12].copy_from_slice(&0o100644u32.to_le_bytes());
    b[24..56].copy_from_slice(&digest);
    b[64..68].copy_from_slice(&(1u32 << 20).to_le_bytes());
    b[68..72].copy_from_slice(&(chunks.len() as u32).to_le_bytes());
    b[72..76].copy_from_slice(&n_tensors.to_le_bytes());
    let mut orig = 0u64;
    for c in chunks {
        let mut e = [0u8; 48];
        e[0..8].copy_from_slice(&orig.to_le_bytes());
        e[8..12].copy_from_slice(&c.orig_len.to_le_bytes());
        e[12..16].copy_from_slice(&c.payload_len.to_le_bytes());
        e[16..24].copy_from_slice(&c.payload_offset.to_le_bytes());
        e[24..32].copy_from_slice(&c.xxh3.to_le_bytes());
        e[32] = c.codec as u8;
        e[36..40].copy_from_slice(&c.tensor.to_le_bytes());
        orig += c.orig_len as u64;
        b.extend_from_slice(&e);
    }
    b.extend_from_slice(table);
    b
}

/// A whole container: header, `area` (everything between header and index, as given), the
/// index, and a footer with both checksums right.
fn seal(area: &[u8], index: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(16 + area.len() + index.len() + 48);
    b.extend_from_slice(&MAGIC);
    b.extend_from_slice(&VERSION_MAJOR.to_le_bytes());
    b.extend_from_slice(&VERSION_MINOR.to_le_bytes());
    b.extend_from_slice(&[0; 4]);
    b.extend_from_slice(area);
    let index_offset = b.len() as u64;
    b.extend_from_slice(index);
    let mut f = [0u8; 48];
    f[0..8].copy_from_slice(&index_offset.to_le_bytes());
    f[8..16].copy_from_slice(&(index.len() as u64).to_le_bytes());
    f[16..24].copy_from_slice(&chunk_hash(index).to_le_bytes());
    f[24..26].copy_from_slice(&VERSION_MAJOR.to_le_bytes());
    f[26..28].copy_from_slice(&VERSION_MINOR.to_le_bytes());
    let h = chunk_hash(&f[..32]);
    f[32..40].copy_from_slice(&h.to_le_bytes());
    f[40..48].copy_from_slice(&END_MAGIC);
    b.extend_from_slice(&f);
    b
}

/// Recomputes the index checksum (where the footer's index lies inside the file) and the
/// footer's own checksum after a mutation, so the index parser sees the mutated bytes.
fn reseal(b: &mut [u8]) {
    let n = b.len();
    if n < 64 {
        return;
    }
    let ft = n - 48;
    let off = u64::from_le_bytes(b[ft..ft + 8].try_into().unwrap());
    let len = u64::from_le_bytes(b[ft + 8..ft + 16].try_into().unwrap());
    if let Some(end) = off.checked_add(len).filter(|&e| e <= ft as u64) {
        let h = chunk_hash(&b[off as usize..end as usize]);
        b[ft + 16..ft + 24].copy_from_slice(&h.to_le_bytes());
    }
    let h = chunk_hash(&b[ft..ft + 32]);
    b[ft + 32..ft + 40].copy_from_slice(&h.to_le_bytes());
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, bytes).unwrap();
    p
}

/// The chunk a `Corrupt` error names (`Some(None)`: corrupt, no chunk named), or `None`
/// when the error is something else.
fn corrupt_chunk(e: &Error) -> Option<Option<u32>> {
    match e {
        Error::Corrupt { chunk, .. } => Some(*chunk),
        _ => None,
    }
}

/// Three raw chunks "abc", "defg", "hi": their payload area back to back, and entries
/// whose payloads sit at `at` (container offsets).
fn three(at: [u64; 3]) -> (Vec<u8>, [u8; 32]) {
    let pieces: [&[u8]; 3] = [b"abc", b"defg", b"hi"];
    let ents: Vec<Ent> = pieces.iter().zip(at).map(|(p, a)| raw(p, a)).collect();
    let digest = *blake3::hash(b"abcdefghi").as_bytes();
    (index(9, digest, &ents, 0, &[]), digest)
}

#[test]
fn a_hand_built_container_opens_and_verifies() {
    // The forging helpers write exactly what the writer would: without this the refusals
    // below could be refusals of a badly forged file.
    let t = tempfile::tempdir().unwrap();
    let (ix, _) = three([16, 19, 23]);
    let p = write(t.path(), "good.dcz", &seal(b"abcdefghi", &ix));
    let c = Container::open(&p).unwrap();
    assert_eq!(c.read_at(0, &mut [0u8; 9]).unwrap(), 9);
    let v = pack::verify_tree(&p, 1, &NoProgress).unwrap();
    assert_eq!(v.failures(), 0, "{:?}", v.files);
    // An empty file: no chunks, the index right after the header.
    let ix = index(0, *blake3::hash(b"").as_bytes(), &[], 0, &[]);
    let p = write(t.path(), "empty.dcz", &seal(b"", &ix));
    assert_eq!(Container::open(&p).unwrap().meta.size, 0);
    assert_eq!(pack::verify_tree(&p, 1, &NoProgress).unwrap().failures(), 0);
}

#[test]
fn a_wrong_whole_file_digest_fails_verify_and_unpack_when_hashed_in_pieces() {
    // Chunks whose own checksums pass, cut off 1 KiB boundaries, so the digest is joined
    // from the decoding threads' subtrees and the bytes that straddle two chunks. Only the
    // right digest may pass; one flipped bit of it must fail, and unpack must write nothing.
    let mut rng = Rng::new(0xD16E57);
    let data: Vec<u8> = (0..9000).map(|_| rng.next() as u8).collect();
    let cuts = [0, 1500, 1501, 4500, 8192, 9000];
    let ents: Vec<Ent> = cuts
        .windows(2)
        .map(|w| raw(&data[w[0]..w[1]], HEADER_LEN + w[0] as u64))
        .collect();
    let t = tempfile::tempdir().unwrap();
    // A pack of one container each (an empty source gives the marker).
    let pack_of = |name: &str, digest: [u8; 32]| {
        let (src, dst) = (t.path().join(format!("{name}-src")), t.path().join(name));
        fs::create_dir(&src).unwrap();
        let st = Command::new(dcfs_bin())
            .arg("pack")
            .arg(&src)
            .arg(&dst)
            .arg("--allow-empty")
            .output()
            .unwrap();
        assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
        write(
            &dst,
            "weights.bin.dcz",
            &seal(&data, &index(9000, digest, &ents, 0, &[])),
        );
        dst
    };
    let good = *blake3::hash(&data).as_bytes();
    let p = pack_of("good", good);
    for threads in [1, 2, 3] {
        let v = pack::verify_tree(&p, threads, &NoProgress).unwrap();
        assert_eq!((v.files.len(), v.failures()), (1, 0), "-j{threads}: {:?}", v.files);
    }
    let out = t.path().join("good-out");
    pack::unpack_tree(&p, &out, 2, &NoProgress).unwrap();
    assert_eq!(fs::read(out.join("weights.bin")).unwrap(), data);

    let mut bad = good;
    bad[31] ^= 1;
    let p = pack_of("bad", bad);
    let v = pack::verify_tree(&p, 2, &NoProgress).unwrap();
    let err = v.files[0].error.as_deref().unwrap_or_default();
    assert!(err.contains("digest mismatch"), "{:?}", v.files);
    let out = t.path().join("bad-out");
    assert!(pack::unpack_tree(&p, &out, 2, &NoProgress).is_err());
    assert!(
        !out.join("weights.bin").exists(),
        "a file that failed its digest was left in place"
    );
}

#[test]
fn overlapping_payloads_cannot_amplify_output() {
    // One zstd payload of a 64 MiB zero chunk, named by 32 entries: a ~4 KB container
    // claiming 2 GiB that verify would pass and unpack would write. Each entry on its own is
    // within MAX_EXPANSION; only the reuse of the same payload amplifies.
    let zeros = vec![0u8; dcfs::format::MAX_CHUNK_LEN as usize];
    let opt = EncodeOptions {
        codec: CodecChoice::Zstd,
        zstd_level: 3,
        ..Default::default()
    };
    let enc = chunk::encode(&zeros, &[Transform::None], true, &opt);
    assert_eq!((enc.codec, enc.transform), (ChunkCodec::Zstd, Transform::None));
    let n = 32u64;
    let e = Ent {
        orig_len: zeros.len() as u32,
        payload_len: enc.payload.len() as u32,
        payload_offset: HEADER_LEN,
        xxh3: chunk_hash(&zeros),
        codec: enc.codec,
        tensor: NO_TENSOR,
    };
    let mut h = blake3::Hasher::new();
    for _ in 0..n {
        h.update(&zeros);
    }
    let claim = n * zeros.len() as u64;
    let ix = index(claim, *h.finalize().as_bytes(), &vec![e; n as usize], 0, &[]);
    let bytes = seal(&enc.payload, &ix);
    eprintln!(
        "{} container bytes claim {claim} original bytes ({}x; the bound is {MAX_EXPANSION}x)",
        bytes.len(),
        claim / bytes.len() as u64
    );
    assert!(claim > MAX_EXPANSION * bytes.len() as u64);
    let t = tempfile::tempdir().unwrap();
    let p = write(t.path(), "amp.dcz", &bytes);
    let err = Container::open(&p).expect_err("a payload named twice must be refused");
    assert_eq!(corrupt_chunk(&err), Some(Some(1)), "{err}");
    let v = pack::verify_tree(&p, 1, &NoProgress).unwrap();
    assert_eq!(v.failures(), 1);
    let dst = t.path().join("out");
    assert!(pack::unpack_tree(&p, &dst, 1, &NoProgress).is_err());
}

#[test]
fn payloads_must_be_back_to_back_in_chunk_order() {
    let t = tempfile::tempdir().unwrap();
    // (what, payload area, payload offsets, the chunk the error must name)
    type Case = (&'static str, &'static [u8], [u64; 3], Option<u32>);
    let cases: [Case; 4] = [
        ("a gap before the first payload", b"Xabcdefghi", [17, 20, 24], Some(0)),
        ("payloads out of chunk order", b"defgabchi", [20, 16, 23], Some(0)),
        ("a gap between payloads", b"abcXdefghi", [16, 20, 24], Some(1)),
        ("bytes after the last payload", b"abcdefghiX", [16, 19, 23], Some(2)),
    ];
    for (what, area, at, chunk) in cases {
        let (ix, _) = three(at);
        let p = write(t.path(), "x.dcz", &seal(area, &ix));
        let err = Container::open(&p).expect_err(what);
        assert_eq!(corrupt_chunk(&err), Some(chunk), "{what}: {err}");
    }
    // No chunks, yet bytes between the header and the index.
    let ix = index(0, *blake3::hash(b"").as_bytes(), &[], 0, &[]);
    let p = write(t.path(), "x.dcz", &seal(b"hidden", &ix));
    let err = Container::open(&p).expect_err("an empty file with a payload area");
    assert_eq!(corrupt_chunk(&err), Some(None), "{err}");
}

#[test]
fn a_symlink_in_place_of_a_container_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let (ix, _) = three([16, 19, 23]);
    let real = write(t.path(), "real.dcz", &seal(b"abcdefghi", &ix));
    let link = t.path().join("link.dcz");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    Container::open(&real).unwrap();
    let err = Container::open(&link).expect_err("a symlink must not be followed");
    assert!(err.to_string().contains("symbolic link"), "{err}");
    let v = pack::verify_tree(&link, 1, &NoProgress).unwrap();
    assert_eq!(v.failures(), 1, "{:?}", v.files);
}

#[test]
fn inspect_memory_is_bounded_by_its_report_not_by_chunk_count() {
    // A valid container of 200,000 four-byte chunks of one F32 tensor (~10 MB). Inspect
    // used to keep four 2 KiB histograms per chunk (1.6 GB).
    let n = 200_000u64;
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("tiny.dcz");
    let mut w = Writer::create(&p).unwrap();
    let mut r = Rng::new(7);
    let mut h = blake3::Hasher::new();
    for i in 0..n {
        let v = ((r.normal() * 0.04) as f32).to_le_bytes();
        h.update(&v);
        let e = ChunkEntry {
            orig_offset: i * 4,
            orig_len: 4,
            payload_len: 0,
            payload_offset: 0,
            xxh3: chunk_hash(&v),
            codec: ChunkCodec::Raw,
            transform: Transform::None,
            dtype: 0,
            tensor: 0,
        };
        w.push(e, &v).unwrap();
    }
    let meta = FileMeta {
        size: n * 4,
        mode: 0o100644,
        mtime_s: 0,
        mtime_ns: 0,
        blake3: *h.finalize().as_bytes(),
        kind: FileKind::Opaque,
        flags: 0,
        compress_fraction_ppm: 0,
        chunk_size: 4,
    };
    let tensor = TensorEntry {
        name: "w".into(),
        dtype: "F32".into(),
        shape: vec![n],
        start: 0,
        len: n * 4,
    };
    let len = w.finish(&meta, &[tensor]).unwrap();
    let mut cmd = Command::new(dcfs_bin());
    cmd.args(["inspect", "--json", "-j", "2"])
        .arg(&p)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let (ok, out, peak_kib) = run_peak_rss(&mut cmd);
    eprintln!("inspect of a {len}-byte container of {n} chunks: peak RSS {peak_kib} KiB");
    assert!(ok, "inspect failed");
    let report: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(report["files"][0]["chunks"], n);
    assert_eq!(report["files"][0]["tensors"][0]["bytes"], n * 4);
    assert_eq!(report["files"][0]["tensors"][0]["planes"].as_array().unwrap().len(), 4);
    assert!(peak_kib < 192 << 10, "inspect peaked at {peak_kib} KiB");
}

#[test]
fn verify_holds_a_bounded_window_of_large_chunks() {
    // A valid ~40 KB container of sixteen 64 MiB zero chunks (1 GiB). At -j8 the decode
    // window used to be 32 chunks, so all 16 (1 GiB) were held at once; the window is now
    // capped at WINDOW_BYTES (256 MiB) of decoded data.
    let zeros = vec![0u8; dcfs::format::MAX_CHUNK_LEN as usize];
    let opt = EncodeOptions {
        codec: CodecChoice::Zstd,
        zstd_level: 3,
        ..Default::default()
    };
    let enc = chunk::encode(&zeros, &[Transform::None], true, &opt);
    let n = 16u64;
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("big.dcz");
    let mut w = Writer::create(&p).unwrap();
    let mut h = blake3::Hasher::new();
    let xxh3 = chunk_hash(&zeros);
    for i in 0..n {
        h.update(&zeros);
        let e = ChunkEntry {
            orig_offset: i * zeros.len() as u64,
            orig_len: zeros.len() as u32,
            payload_len: 0,
            payload_offset: 0,
            xxh3,
            codec: enc.codec,
            transform: enc.transform,
            dtype: 0,
            tensor: NO_TENSOR,
        };
        w.push(e, &enc.payload).unwrap();
    }
    let meta = FileMeta {
        size: n * zeros.len() as u64,
        mode: 0o100644,
        mtime_s: 0,
        mtime_ns: 0,
        blake3: *h.finalize().as_bytes(),
        kind: FileKind::Opaque,
        flags: 0,
        compress_fraction_ppm: 0,
        chunk_size: dcfs::format::MAX_CHUNK_LEN,
    };
    let len = w.finish(&meta, &[]).unwrap();
    drop(zeros);
    let mut cmd = Command::new(dcfs_bin());
    cmd.args(["verify", "-j", "8", "--gpu", "off"])
        .arg(&p)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let (ok, _, peak_kib) = run_peak_rss(&mut cmd);
    eprintln!("verify -j8 of a {len}-byte container of {n} x 64 MiB chunks: peak RSS {peak_kib} KiB");
    assert!(ok, "verify failed");
    // 256 MiB of window plus the decoder's working memory; 16 chunks at once are 1 GiB.
    assert!(peak_kib < 512 << 10, "verify peaked at {peak_kib} KiB");
}

/// A chunk table of 20,000 entries followed by a tensor count of u32::MAX and no tensor
/// table at all.
fn huge_tensor_count() -> (Vec<u8>, u64) {
    let n = 20_000usize;
    let area = vec![7u8; n];
    let ents: Vec<Ent> = (0..n).map(|i| raw(&[7], HEADER_LEN + i as u64)).collect();
    let ix = index(n as u64, [0; 32], &ents, u32::MAX, &[]);
    let len = ix.len() as u64;
    (seal(&area, &ix), len)
}

/// What `Container::open` of `bytes` allocates on this thread, and whether it opened.
fn open_allocations(dir: &Path, bytes: &[u8]) -> (u64, bool) {
    let p = write(dir, "a.dcz", bytes);
    let before = harness::allocated();
    let ok = Container::open(&p).is_ok();
    (harness::allocated() - before, ok)
}

#[test]
fn index_parse_allocates_nothing_for_tensors_the_bytes_cannot_hold() {
    let t = tempfile::tempdir().unwrap();
    let (bytes, index_len) = huge_tensor_count();
    let (used, ok) = open_allocations(t.path(), &bytes);
    eprintln!("{index_len}-byte index claiming u32::MAX tensors: open allocated {used} bytes");
    assert!(!ok);
    assert!(used > 0, "the counting allocator is not registered");
    // The index buffer and the chunk table; nothing sized by the tensor count.
    assert!(used <= 2 * index_len + harness::OPEN_ALLOC_SLACK, "{used} bytes");
}

#[test]
fn index_parse_allocation_stays_within_a_fixed_multiple_of_the_index() {
    let t = tempfile::tempdir().unwrap();
    // Tensor tables of the shapes that cost most per index byte: minimal records (the
    // entry struct is larger than the record), names of invalid UTF-8 (each byte repaired
    // to a 3-byte U+FFFD), the most dimensions, and a last record cut short.
    let minimal: Vec<u8> = [0u8, 0, 0, 0].iter().copied().chain([0u8; 16]).collect();
    let mut bad_name = vec![0xE8, 0x03];
    bad_name.extend([0xFF; 1000]);
    bad_name.extend([0, 0]);
    bad_name.extend([0; 16]);
    let mut dims = vec![0, 0, 0, 255];
    dims.extend([1; 255 * 8 + 16]);
    let cut = [0u8, 0, 0, 255, 1, 2, 3];
    let cases: [(&str, Vec<u8>, u32); 4] = [
        ("50,000 minimal records", minimal.repeat(50_000), 50_000),
        ("invalid UTF-8 names", bad_name.repeat(500), 500),
        ("255 dimensions each", dims.repeat(500), 500),
        ("a record cut short", [minimal.repeat(10), cut.to_vec()].concat(), 11),
    ];
    for (what, table, n) in cases {
        let ix = index(0, [0; 32], &[], n, &table);
        let (used, ok) = open_allocations(t.path(), &seal(b"", &ix));
        let ratio = used as f64 / ix.len() as f64;
        eprintln!(
            "{what}: {}-byte index, open allocated {used} bytes ({ratio:.2}x)",
            ix.len()
        );
        assert_eq!(ok, !what.contains("cut"), "{what}");
        assert!(
            used <= harness::OPEN_ALLOC_FACTOR * ix.len() as u64 + harness::OPEN_ALLOC_SLACK,
            "{what}: {used} bytes"
        );
    }
}

/// A valid container for the mutation test: three zstd-coded constant chunks (the most
/// expansion a payload byte can carry) and two tensors.
fn mutation_base() -> Vec<u8> {
    let opt = EncodeOptions {
        codec: CodecChoice::Zstd,
        zstd_level: 3,
        ..Default::default()
    };
    let mut area = Vec::new();
    let mut ents = Vec::new();
    let mut h = blake3::Hasher::new();
    let mut size = 0;
    for (i, fill) in [0u8, 1, 2].into_iter().enumerate() {
        let data = vec![fill; 64 << 10];
        let enc = chunk::encode(&data, &[Transform::None], true, &opt);
        ents.push(Ent {
            orig_len: data.len() as u32,
            payload_len: enc.payload.len() as u32,
            payload_offset: HEADER_LEN + area.len() as u64,
            xxh3: chunk_hash(&data),
            codec: enc.codec,
            tensor: (i as u32).min(1),
        });
        area.extend_from_slice(&enc.payload);
        h.update(&data);
        size += data.len() as u64;
    }
    let mut table = Vec::new();
    for (name, start, len) in [("a", 0u64, 64u64 << 10), ("b", 64 << 10, 128 << 10)] {
        table.extend_from_slice(&(name.len() as u16).to_le_bytes());
        table.extend_from_slice(name.as_bytes());
        table.push(2);
        table.extend_from_slice(b"U8");
        table.push(1);
        table.extend_from_slice(&len.to_le_bytes());
        table.extend_from_slice(&start.to_le_bytes());
        table.extend_from_slice(&len.to_le_bytes());
    }
    seal(&area, &index(size, *h.finalize().as_bytes(), &ents, 2, &table))
}

#[test]
fn the_mutation_base_is_a_valid_container() {
    // Otherwise the mutation test would only ever exercise refusals.
    let t = tempfile::tempdir().unwrap();
    let p = write(t.path(), "base.dcz", &mutation_base());
    let c = Container::open(&p).unwrap();
    assert_eq!((c.chunks.len(), c.tensors.len()), (3, 2));
    assert_eq!(pack::verify_tree(&p, 1, &NoProgress).unwrap().failures(), 0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// The fuzz target's assertions (`harness::container`: opening allocates at most a fixed
    /// multiple of the index; an opened container claims at most MAX_EXPANSION original
    /// bytes per input byte) over mutated valid containers, resealed so the mutations reach
    /// the index parser rather than dying at a checksum.
    #[test]
    fn mutated_containers_stay_within_bounds(
        bytes in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        fields in prop::collection::vec((0usize..3, 0usize..5, any::<prop::sample::Index>()), 0..4),
        n_tensors in prop::option::of(any::<u32>()),
    ) {
        let mut b = mutation_base();
        let ft = b.len() - 48;
        let ix = u64::from_le_bytes(b[ft..ft + 8].try_into().unwrap()) as usize;
        let entries = ix + 80;
        // Chunk-entry fields set to values taken from other entries or the layout: these make
        // overlapping, repeated and reordered payloads, the cases byte flips rarely reach.
        let payload_fields = [(16usize, 8usize), (12, 4), (8, 4), (0, 8), (36, 4)];
        for (chunk, field, from) in fields {
            let (at, w) = payload_fields[field];
            let src = entries + from.index(3) * 48 + at;
            let dst = entries + chunk * 48 + at;
            let v = b[src..src + w].to_vec();
            b[dst..dst + w].copy_from_slice(&v);
        }
        if let Some(n) = n_tensors {
            b[ix + 72..ix + 76].copy_from_slice(&n.to_le_bytes());
        }
        for (at, v) in bytes {
            let i = at.index(b.len());
            b[i] = v;
        }
        reseal(&mut b);
        harness::container(&b);
    }
}
