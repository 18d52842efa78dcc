//! Replays every input saved under `tests/regressions/<target>/` (crashes the fuzzers found,
//! each fixed since) and every seed under `fuzz/corpus/<target>/` through the same code the
//! fuzz target runs (`fuzz/harness.rs`), in a normal `cargo test`.
//!
//! `DCFS_WRITE_FUZZ_SEEDS=1 cargo test --test regressions write_fuzz_seeds` regenerates the
//! small valid seed inputs in `fuzz/corpus/`.

mod common;

#[path = "../fuzz/harness.rs"]
mod harness;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;
use dcfs::chunk::{self, ChunkCodec, CodecChoice, EncodeOptions};
use dcfs::codec::{self, rans, Codec};
use dcfs::model::{gguf, safetensors};
use dcfs::pack::{self, NoProgress, PackOptions};
use dcfs::transform::Transform;

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn replay(base: &str) -> usize {
    let mut n = 0;
    for t in harness::TARGETS {
        for p in inputs(&root().join(base).join(t)) {
            let data = fs::read(&p).unwrap();
            let r = std::panic::catch_unwind(|| harness::run(t, &data));
            assert!(r.is_ok(), "{t}: {} panicked", p.display());
            n += 1;
        }
    }
    n
}

/// Every saved crash input (none so far: the fuzzers found no crash) and every seed.
#[test]
fn saved_crash_inputs_and_fuzz_seeds_run_clean() {
    let crashes = replay("tests/regressions");
    let seeds = replay("fuzz/corpus");
    assert!(
        seeds >= harness::TARGETS.len(),
        "every target has seeds ({seeds} found)"
    );
    println!("replayed {crashes} saved crash inputs and {seeds} fuzz seeds");
}

fn with_len(n: usize, body: &[u8]) -> Vec<u8> {
    let mut v = (n as u32).to_le_bytes()[..3].to_vec();
    v.extend_from_slice(body);
    v
}

/// Small valid inputs for every target, written only when asked for.
#[test]
fn write_fuzz_seeds() {
    if std::env::var_os("DCFS_WRITE_FUZZ_SEEDS").is_none() {
        println!("SKIP writing seeds: set DCFS_WRITE_FUZZ_SEEDS=1 to regenerate fuzz/corpus");
        return;
    }
    let out = root().join("fuzz/corpus");
    let put = |t: &str, name: &str, data: &[u8]| {
        fs::create_dir_all(out.join(t)).unwrap();
        fs::write(out.join(t).join(name), data).unwrap();
    };
    let mut r = Rng::new(7);
    let w = weights(&mut r, 3000);
    let bf = bf16_bytes(&w);
    let f32b = f32_bytes(&w[..1200]);
    let i8b = i8_tensorwise(&w);
    let q8 = q8_0_bytes(&mut r, 40);

    // rANS and zstd planes.
    for (name, plane) in [("bf16", &bf), ("i8", &i8b), ("zeros", &vec![0u8; 700])] {
        let mut s = Vec::new();
        rans::encode(plane, &mut s);
        put("rans", name, &with_len(plane.len(), &s));
        put("gpu_emu", name, &with_len(plane.len(), &s));
        let mut z = Vec::new();
        codec::encode(Codec::Zstd, plane, 3, &mut z);
        put("zstd", name, &with_len(plane.len(), &z));
    }
    let mut empty = Vec::new();
    rans::encode(&[], &mut empty);
    put("rans", "empty", &with_len(0, &empty));
    put("gpu_emu", "empty", &with_len(0, &empty));

    // Chunk payloads under several transforms and policies.
    for (name, data, ts) in [
        ("bf16", &bf, &[Transform::Bf16Exp][..]),
        ("f32", &f32b, &[Transform::F32Exp][..]),
        ("q8_0", &q8, &[Transform::Q8_0][..]),
        ("i8", &i8b, &[Transform::None][..]),
    ] {
        for (pname, codec) in [("auto", CodecChoice::Auto), ("zstd", CodecChoice::Zstd)] {
            let opt = EncodeOptions {
                codec,
                ..Default::default()
            };
            let e = chunk::encode(data, ts, true, &opt);
            let mut v = vec![e.codec as u8, e.transform as u8];
            v.extend_from_slice(&with_len(data.len(), &e.payload));
            put("chunk", &format!("{name}-{pname}"), &v);
        }
    }
    // A raw chunk (served as its payload) and a raw plane inside a coded frame.
    let mut raw = vec![ChunkCodec::Raw as u8, Transform::None as u8];
    raw.extend_from_slice(&with_len(i8b.len(), &i8b));
    put("chunk", "i8-raw", &raw);
    let mut plane = vec![ChunkCodec::Mixed as u8, Transform::None as u8];
    let mut framed = vec![1u8, Codec::Raw as u8];
    framed.extend_from_slice(&(i8b.len() as u32).to_le_bytes());
    framed.extend_from_slice(&i8b);
    plane.extend_from_slice(&with_len(i8b.len(), &framed));
    put("chunk", "i8-raw-plane", &plane);

    // Model headers.
    let st = safetensors::build(&[
        ("a", "BF16", vec![4, 4], bf[..32].to_vec()),
        ("b", "F32", vec![3], f32b[..12].to_vec()),
        ("c", "I8", vec![0], vec![]),
    ]);
    put("safetensors", "small", &st);
    put("safetensors", "empty", &safetensors::build(&[]));
    let g = gguf::build(
        &[
            ("w", vec![32, 2], gguf::GGML_Q8_0, q8[..68].to_vec()),
            ("n", vec![3], gguf::GGML_F32, f32b[..12].to_vec()),
        ],
        32,
    );
    put("gguf", "small", &g);
    put("gguf", "empty", &gguf::build(&[], 32));

    // Containers: a small tree packed with 4 KiB chunks.
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir_all(&src).unwrap();
    let model = safetensors::build(&[
        ("w", "BF16", vec![3000], bf.clone()),
        ("n", "F32", vec![300], f32b[..1200].to_vec()),
    ]);
    fs::write(src.join("m.safetensors"), model).unwrap();
    fs::write(src.join("g.gguf"), &g).unwrap();
    fs::write(src.join("cfg.json"), b"{\"hidden_size\": 384}").unwrap();
    fs::write(src.join("empty"), b"").unwrap();
    for (pname, codec) in [("auto", CodecChoice::Auto), ("zstd", CodecChoice::Zstd)] {
        let dst = t.path().join(pname);
        let opts = PackOptions {
            chunk_size: 4096,
            encode: EncodeOptions {
                codec,
                ..Default::default()
            },
            threads: 1,
            ..Default::default()
        };
        pack::pack_tree(&src, &dst, &opts, &NoProgress).unwrap();
        for f in ["m.safetensors", "g.gguf", "cfg.json", "empty"] {
            if pname == "zstd" && f != "m.safetensors" {
                continue;
            }
            let c = fs::read(dst.join(format!("{f}.dcz"))).unwrap();
            put("container", &format!("{f}-{pname}"), &c);
        }
    }
    println!("seeds written under {}", out.display());
}

/// The batch differential of the `gpu_emu` target (`harness::gpu_batch`) on inputs the
/// planner takes: weight-like bytes (which rANS codes under every transform) of random
/// lengths, with the flipped chunk, bit and position drawn at random. Intact chunks must
/// come back unflagged and unchanged, damaged ones flagged or equal to the CPU's decode.
#[test]
fn the_gpu_batch_differential_holds_on_weight_like_inputs() {
    let mut rng = Rng::new(41);
    let mut compared = 0;
    for _ in 0..200 {
        let n = 64 + (rng.next() % 60_000) as usize;
        let mut data: Vec<u8> = (0..3).map(|_| rng.next() as u8).collect();
        data.extend_from_slice(&bf16_bytes(&weights(&mut rng, n / 2)));
        compared += harness::gpu_batch(&data);
    }
    // Four chunks per input, of which at most one damaged: most must have been compared.
    assert!(compared >= 500, "only {compared} chunks went through the batch");
}
