//! Format compatibility: `tests/fixtures/v1/pack` was written by format 1.0 from
//! `tests/fixtures/v1/src`. Every later dcfs must still verify and unpack it to the same
//! bytes. Regenerate only when adding a new fixture version:
//! `cargo test --test format_compat -- --ignored make_v1_fixture`.

mod common;

use std::fs;
use std::path::Path;

use common::*;
use dcfs::chunk::CodecChoice;
use dcfs::model::{gguf, safetensors};
use dcfs::pack::{self, NoProgress, PackOptions};

fn fixture() -> std::path::PathBuf {
    root().join("tests/fixtures/v1")
}

fn contents(dir: &Path) -> Vec<(String, String)> {
    let mut v: Vec<_> = tree_state(dir)
        .keys()
        .filter(|k| dir.join(k).is_file() && !dir.join(k).is_symlink())
        .map(|k| {
            (
                k.clone(),
                blake3::hash(&fs::read(dir.join(k)).unwrap()).to_hex().to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn format_v1_pack_still_reads() {
    let f = fixture();
    let v = pack::verify_tree(&f.join("pack"), 1, &NoProgress).unwrap();
    assert_eq!(v.failures(), 0, "{:?}", v.files);
    assert!(v.files.len() >= 4);
    let t = tempfile::tempdir().unwrap();
    pack::unpack_tree(&f.join("pack"), t.path(), 1, &NoProgress).unwrap();
    assert_eq!(contents(t.path()), contents(&f.join("src")));
    // Every codec and several transforms are exercised by the fixture.
    let c = dcfs::format::Container::open(&f.join("pack/model.safetensors.dcz")).unwrap();
    let codecs: std::collections::BTreeSet<_> = c.chunks.iter().map(|e| e.codec).collect();
    let transforms: std::collections::BTreeSet<_> = c.chunks.iter().map(|e| e.transform).collect();
    assert!(codecs.len() >= 2 && transforms.len() >= 3, "{codecs:?} {transforms:?}");
}

#[test]
#[ignore]
fn make_v1_fixture() {
    let f = fixture();
    let _ = fs::remove_dir_all(&f);
    let src = f.join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    let mut r = Rng::new(2026);
    let w = weights(&mut r, 24_000);
    let st = safetensors::build(&[
        (
            "ids",
            "I64",
            vec![64],
            (0..64u64).flat_map(|i| i.to_le_bytes()).collect(),
        ),
        ("attn.q.weight", "BF16", vec![100, 120], bf16_bytes(&w[..12_000])),
        ("mlp.up.weight", "F32", vec![6000], f32_bytes(&w[12_000..18_000])),
        ("mlp.down.weight", "I8", vec![24_000], i8_tensorwise(&w)),
        ("noise", "U8", vec![3000], (0..3000).map(|_| r.next() as u8).collect()),
    ]);
    fs::write(src.join("model.safetensors"), st).unwrap();
    let g = gguf::build(
        &[("blk.0.w", vec![32 * 8, 16], gguf::GGML_Q8_0, q8_0_bytes(&mut r, 128))],
        32,
    );
    fs::write(src.join("sub/model.gguf"), g).unwrap();
    fs::write(
        src.join("config.json"),
        br#"{"hidden_size": 384, "layers": 6}"#.repeat(30),
    )
    .unwrap();
    fs::write(src.join("empty.txt"), b"").unwrap();
    let mut o = PackOptions {
        chunk_size: 8192,
        ..Default::default()
    };
    o.encode.codec = CodecChoice::Auto;
    pack::pack_tree(&src, &f.join("pack"), &o, &NoProgress).unwrap();
}
