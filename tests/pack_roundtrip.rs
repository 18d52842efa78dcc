//! Pack → verify → unpack must give back every byte, mode and mtime, for synthetic and
//! real models, under every codec policy; damaged containers must be detected.

mod common;

use std::fs;
use std::process::Command;

use common::*;
use dcfs::chunk::CodecChoice;
use dcfs::format::Container;
use dcfs::pack::{self, NoProgress, PackOptions};

fn opts(codec: CodecChoice, fraction: f64, chunk: u32) -> PackOptions {
    let mut o = PackOptions {
        chunk_size: chunk,
        compress_fraction: fraction,
        ..Default::default()
    };
    o.encode.codec = codec;
    o
}

#[test]
fn synthetic_tree_roundtrips_under_every_policy() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    synth_tree(&src, 1);
    let want = tree_state(&src);
    for (i, (codec, frac, chunk)) in [
        (CodecChoice::Auto, 1.0, 1 << 20),
        (CodecChoice::Rans, 1.0, 64 << 10),
        (CodecChoice::Zstd, 1.0, 256 << 10),
        (CodecChoice::Raw, 1.0, 1 << 20),
        (CodecChoice::Auto, 0.5, 100_000),
    ]
    .into_iter()
    .enumerate()
    {
        let packed = t.path().join(format!("packed{i}"));
        let out = t.path().join(format!("out{i}"));
        let r = pack::pack_tree(&src, &packed, &opts(codec, frac, chunk), &NoProgress).unwrap();
        assert_eq!(r.files.len(), 5, "{codec:?}");
        assert_eq!(r.symlinks, 1);
        let v = pack::verify_tree(&packed, 2, &NoProgress).unwrap();
        assert_eq!(v.failures(), 0, "{:?}", v.files);
        pack::unpack_tree(&packed, &out, 2, &NoProgress).unwrap();
        assert_eq!(tree_state(&out), want, "{codec:?} fraction {frac}");
        if codec == CodecChoice::Raw {
            assert!(r.packed_bytes > r.original_bytes);
        } else {
            assert!(r.ratio() > 1.05, "{codec:?}: ratio {}", r.ratio());
        }
    }
    assert_eq!(tree_state(&src), want, "the source was modified");
}

#[test]
fn compress_fraction_is_recorded_and_leaves_chunks_raw() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    synth_tree(&src, 2);
    let half = t.path().join("half");
    let full = t.path().join("full");
    let rh = pack::pack_tree(&src, &half, &opts(CodecChoice::Auto, 0.5, 64 << 10), &NoProgress).unwrap();
    let rf = pack::pack_tree(&src, &full, &opts(CodecChoice::Auto, 1.0, 64 << 10), &NoProgress).unwrap();
    assert!(rh.packed_bytes > rf.packed_bytes);
    let c = Container::open(&half.join("model.safetensors.dcz")).unwrap();
    assert_eq!(c.meta.compress_fraction_ppm, 500_000);
    let tensor_chunks: Vec<_> = c
        .chunks
        .iter()
        .filter(|e| e.tensor != dcfs::format::NO_TENSOR)
        .collect();
    let raw = tensor_chunks
        .iter()
        .filter(|e| e.codec == dcfs::chunk::ChunkCodec::Raw)
        .count();
    assert!(
        raw * 3 >= tensor_chunks.len() && raw * 3 <= tensor_chunks.len() * 2,
        "{raw} of {}",
        tensor_chunks.len()
    );
}

#[test]
fn real_models_roundtrip_and_meet_ratio_targets() {
    let Some(models) = models() else { return };
    let t = tempfile::tempdir().unwrap();
    let packed = t.path().join("packed");
    let out = t.path().join("out");
    let r = pack::pack_tree(&models, &packed, &PackOptions::default(), &NoProgress).unwrap();
    let v = pack::verify_tree(&packed, 2, &NoProgress).unwrap();
    assert_eq!(v.failures(), 0);
    pack::unpack_tree(&packed, &out, 2, &NoProgress).unwrap();
    let (a, b) = (tree_state(&models), tree_state(&out));
    assert_eq!(a.len(), b.len());
    for (k, v) in &a {
        let digest = |s: &str| s.split(' ').next().unwrap().to_string();
        assert_eq!(digest(v), digest(&b[k]), "{k} differs after unpack");
    }
    // Ratio floors per model directory (deterministic: the same bytes always pack the same).
    let dir_ratio = |d: &str| {
        let fs: Vec<_> = r
            .files
            .iter()
            .filter(|f| f.path.starts_with(&format!("{d}/")))
            .collect();
        let o: u64 = fs.iter().map(|f| f.size).sum();
        let p: u64 = fs.iter().map(|f| f.packed).sum();
        o as f64 / p as f64
    };
    for (d, floor) in [
        ("minilm-bf16", 1.48),
        ("minilm-int8-tensor", 1.60),
        ("minilm-f32", 1.18),
    ] {
        let got = dir_ratio(d);
        eprintln!("{d}: whole-directory ratio {got:.4}");
        assert!(got >= floor, "{d}: ratio {got:.4} below {floor}");
    }
    // Every coded plane of every tensor of 1 MiB or more sits within 1% of its order-0
    // entropy bound (stored bytes include tables, lane states and framing).
    let insp = pack::inspect_path(&packed, &PackOptions::default(), &NoProgress).unwrap();
    let mut planes = 0;
    for f in &insp.files {
        for t in f.tensors.iter().filter(|t| t.bytes >= 1 << 20) {
            for (i, p) in t.planes.iter().enumerate().filter(|(_, p)| p.stored < p.bytes) {
                planes += 1;
                let over = p.stored as f64 / p.bound - 1.0;
                assert!(
                    over < 0.01,
                    "{} {} plane {i}: {:.2}% above the bound",
                    f.path,
                    t.name,
                    over * 100.0
                );
            }
        }
    }
    assert!(planes > 20, "only {planes} coded planes checked");
}

#[test]
fn every_flipped_byte_of_a_container_is_detected() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    synth_tree(&src, 3);
    let packed = t.path().join("packed");
    pack::pack_tree(&src, &packed, &opts(CodecChoice::Auto, 1.0, 64 << 10), &NoProgress).unwrap();
    for name in ["model.safetensors.dcz", "sub/model.gguf.dcz"] {
        let p = packed.join(name);
        let good = fs::read(&p).unwrap();
        let mut rng = Rng::new(99);
        let mut positions: Vec<usize> = (0..16).chain(good.len() - 300..good.len()).collect();
        positions.extend((0..400).map(|_| (rng.next() % good.len() as u64) as usize));
        for pos in positions {
            let mut bad = good.clone();
            bad[pos] ^= 1 << (rng.next() % 8);
            fs::write(&p, &bad).unwrap();
            let r = pack::verify_tree(&p, 1, &NoProgress).unwrap();
            assert_eq!(
                r.failures(),
                1,
                "{name}: flip at {pos} of {} went unnoticed",
                good.len()
            );
        }
        for cut in [0, 10, 16, 100, good.len() / 2, good.len() - 49, good.len() - 1] {
            fs::write(&p, &good[..cut]).unwrap();
            let r = pack::verify_tree(&p, 1, &NoProgress).unwrap();
            assert_eq!(r.failures(), 1, "{name}: truncation at {cut} went unnoticed");
        }
        fs::write(&p, &good).unwrap();
    }
    // A damaged pack never unpacks into a wrong file: the file is simply not written.
    let p = packed.join("model.safetensors.dcz");
    let mut bad = fs::read(&p).unwrap();
    bad[5000] ^= 0x10;
    fs::write(&p, &bad).unwrap();
    let out = t.path().join("out");
    let e = pack::unpack_tree(&packed, &out, 1, &NoProgress).unwrap_err();
    assert!(e.is_corrupt(), "{e}");
    assert!(e.to_string().contains("chunk"), "names the chunk: {e}");
    assert!(!out.join("model.safetensors").exists());
}

#[test]
fn cli_rejects_malformed_headers_unless_lenient() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir_all(&src).unwrap();
    let mut f = (40u64).to_le_bytes().to_vec();
    f.extend_from_slice(br#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}"#);
    f.resize(200, 7);
    fs::write(src.join("bad.safetensors"), &f).unwrap();
    let out = Command::new(dcfs_bin())
        .arg("pack")
        .arg(&src)
        .arg(t.path().join("p"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.safetensors") && err.lines().count() == 1, "{err}");
    let out = Command::new(dcfs_bin())
        .args(["pack", "--lenient"])
        .arg(&src)
        .arg(t.path().join("p"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("opaque"));
    let out = Command::new(dcfs_bin())
        .arg("unpack")
        .arg(t.path().join("p"))
        .arg(t.path().join("u"))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(fs::read(t.path().join("u/bad.safetensors")).unwrap(), f);
}

#[test]
fn plain_directories_and_interrupted_packs_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    synth_tree(&src, 4);
    let e = pack::verify_tree(&src, 1, &NoProgress).unwrap_err();
    assert!(e.to_string().contains("not a dcfs pack"), "{e}");
    // Packing into a non-empty foreign directory is refused, and nothing there is touched.
    let foreign = t.path().join("foreign");
    fs::create_dir_all(&foreign).unwrap();
    fs::write(foreign.join("keep.txt"), b"precious").unwrap();
    assert!(pack::pack_tree(&src, &foreign, &PackOptions::default(), &NoProgress).is_err());
    assert_eq!(fs::read(foreign.join("keep.txt")).unwrap(), b"precious");
    // Packing a tree into itself is refused before anything is created in the source.
    let before = tree_state(&src);
    assert!(pack::pack_tree(&src, &src.join("inner/deeper"), &PackOptions::default(), &NoProgress).is_err());
    assert!(pack::pack_tree(
        &src,
        &t.path().join("src/../src/x"),
        &PackOptions::default(),
        &NoProgress
    )
    .is_err());
    assert_eq!(tree_state(&src), before, "the source was modified");
}

#[test]
fn a_newer_format_major_is_refused_with_both_versions() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    synth_tree(&src, 5);
    let packed = t.path().join("packed");
    pack::pack_tree(&src, &packed, &PackOptions::default(), &NoProgress).unwrap();
    let p = packed.join("config.json.dcz");
    let mut b = fs::read(&p).unwrap();
    let n = b.len();
    // Major version lives at header offset 8 and footer offset 24; the footer checksums
    // its first 32 bytes at offset 32.
    b[8..10].copy_from_slice(&7u16.to_le_bytes());
    let ft = n - 48;
    b[ft + 24..ft + 26].copy_from_slice(&7u16.to_le_bytes());
    let h = xxhash_rust::xxh3::xxh3_64(&b[ft..ft + 32]);
    b[ft + 32..ft + 40].copy_from_slice(&h.to_le_bytes());
    fs::write(&p, &b).unwrap();
    let e = Container::open(&p).unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(
            e,
            dcfs::Error::VersionTooNew {
                expected: 1,
                actual: 7,
                ..
            }
        ),
        "{msg}"
    );
    assert!(
        msg.contains('7') && msg.contains('1') && msg.contains("upgrade"),
        "{msg}"
    );
}
