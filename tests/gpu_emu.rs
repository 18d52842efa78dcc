//! The GPU pipeline (planner, kernel descriptors, kernels, flags, CPU fallback, host
//! checksums) run through the CPU emulation of the kernels, on synthetic trees and on the
//! real models: it must give exactly the CPU decoder's bytes. Also prints the per-lane
//! work figures quoted in docs/GPU.md.

mod common;

use std::fs;
use std::path::Path;

use common::*;
use dcfs::chunk::CodecChoice;
use dcfs::format::Container;
use dcfs::gpu::Decoder;
use dcfs::pack::{self, NoProgress, PackOptions};

fn pack_with(src: &Path, dst: &Path, codec: CodecChoice) {
    let mut o = PackOptions {
        threads: 2,
        ..Default::default()
    };
    o.encode.codec = codec;
    pack::pack_tree(src, dst, &o, &NoProgress).unwrap();
}

fn containers(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            v.extend(containers(&p));
        } else if p.extension().is_some_and(|x| x == "dcz") {
            v.push(p);
        }
    }
    v.sort();
    v
}

/// Decodes every chunk through the emulated GPU path and compares with the CPU decoder.
/// Returns (chunks on the GPU path, chunks on the CPU path, warp stats).
fn emulated_equals_cpu(packed: &Path) -> (usize, usize, dcfs::gpu::emu::WarpStats) {
    let dec = Decoder::emulated();
    let (mut g, mut c) = (0, 0);
    let mut w = dcfs::gpu::emu::WarpStats::default();
    for p in containers(packed) {
        let cont = Container::open(&p).unwrap();
        let idx: Vec<usize> = (0..cont.chunks.len()).collect();
        for group in idx.chunks(48) {
            let (got, st) = dec.decode_chunks_stats(&cont, group);
            for (&i, r) in group.iter().zip(got) {
                assert_eq!(r.unwrap(), cont.decode_chunk(i).unwrap(), "{} chunk {i}", p.display());
            }
            g += st.chunks_gpu;
            c += st.chunks_cpu;
            w.add(&st.warp);
        }
    }
    (g, c, w)
}

fn report(name: &str, (g, c, w): (usize, usize, dcfs::gpu::emu::WarpStats)) {
    let lanes = (w.sub_blocks * 32).max(1) as f64;
    println!(
        "EMU {name}: {g} chunks on the GPU path, {c} on the CPU; {} sub-blocks; per lane {:.0} symbols, \
         {:.0} words (max {}); {:.1}% of 32-symbol steps read words; {:.3} stored bytes/symbol",
        w.sub_blocks,
        w.symbols as f64 / lanes,
        w.words as f64 / lanes,
        w.max_lane_words,
        100.0 * w.groups_with_reads as f64 / w.groups.max(1) as f64,
        w.bytes_in as f64 / w.symbols.max(1) as f64,
    );
}

#[test]
fn synthetic_trees_decode_bit_exact_through_the_emulated_gpu() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    synth_tree(&src, 5);
    for (i, codec) in [CodecChoice::Rans, CodecChoice::Auto, CodecChoice::Zstd]
        .into_iter()
        .enumerate()
    {
        let packed = t.path().join(format!("p{i}"));
        pack_with(&src, &packed, codec);
        let r = emulated_equals_cpu(&packed);
        if codec == CodecChoice::Rans {
            assert!(r.0 > 0, "rANS packs must use the GPU path");
        }
        if codec == CodecChoice::Zstd {
            assert_eq!(r.0, 0, "zstd chunks go to the CPU");
        }
        report(&format!("synthetic {codec:?}"), r);
        // The verify path with the decoder plugged in.
        let v = pack::verify_tree_with(&packed, 1, Some(&Decoder::emulated()), &NoProgress).unwrap();
        assert_eq!(v.failures(), 0);
    }
}

#[test]
fn damage_found_through_the_emulated_gpu_is_named_by_the_cpu() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    synth_tree(&src, 9);
    let packed = t.path().join("p");
    pack_with(&src, &packed, CodecChoice::Rans);
    let victim = containers(&packed)
        .into_iter()
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .unwrap();
    let c = Container::open(&victim).unwrap();
    let (i, e) = c.chunks.iter().enumerate().max_by_key(|(_, e)| e.payload_len).unwrap();
    assert_ne!(e.codec, dcfs::chunk::ChunkCodec::Raw);
    let at = e.payload_offset + e.payload_len as u64 / 2;
    drop(c);
    let mut bytes = fs::read(&victim).unwrap();
    bytes[at as usize] ^= 0x10;
    fs::write(&victim, bytes).unwrap();
    let c = Container::open(&victim).unwrap();
    let got = Decoder::emulated().decode_chunks(&c, &[i]);
    let err = got.into_iter().next().unwrap().unwrap_err();
    assert!(err.is_corrupt(), "{err}");
    assert!(err.to_string().contains(&format!("chunk {i}")), "{err}");
    let v = pack::verify_tree_with(&packed, 1, Some(&Decoder::emulated()), &NoProgress).unwrap();
    assert_eq!(v.failures(), 1);
}

#[test]
fn real_models_decode_bit_exact_through_the_emulated_gpu() {
    let Some(models) = models() else {
        println!("SKIP real models for the GPU emulation: not fetched (synthetic tests above still ran)");
        return;
    };
    let t = tempfile::tempdir().unwrap();
    for name in ["minilm-bf16", "minilm-f32", "minilm-int8-channel", "smollm2-q4_1"] {
        let src = models.join(name);
        if !src.is_dir() {
            println!("SKIP {name}: not fetched");
            continue;
        }
        let packed = t.path().join(name);
        pack_with(&src, &packed, CodecChoice::Auto);
        let r = emulated_equals_cpu(&packed);
        assert!(r.0 > 0, "{name}: nothing took the GPU path");
        report(name, r);
    }
}
