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
    let dcz = |p: &std::path::PathBuf| p.extension().is_some_and(|x| x == "dcz");
    walk_files(dir).into_iter().filter(dcz).collect()
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
            // An undamaged pack: every chunk the planner gives the GPU must come back from
            // it; a silent CPU fallback would hide a broken kernel behind right bytes.
            assert_eq!(
                st.fallbacks,
                0,
                "{}: chunks fell back to the CPU: {:?}",
                p.display(),
                st.cpu_reasons
            );
            assert_eq!(
                st.chunks_gpu,
                dcfs::gpu::plan::planned_for_gpu(&cont, group),
                "{}: chunks decoded on the GPU",
                p.display()
            );
            assert_eq!(st.chunks_gpu + st.chunks_cpu, group.len());
            g += st.chunks_gpu;
            c += st.chunks_cpu;
            w.add(&st.warp);
        }
    }
    (g, c, w)
}

/// Chunks stored with the rANS codec (every plane rANS or raw) in the pack.
fn count_rans_chunks(packed: &Path) -> usize {
    containers(packed)
        .iter()
        .map(|p| {
            let c = Container::open(p).unwrap();
            c.chunks
                .iter()
                .filter(|e| e.codec == dcfs::chunk::ChunkCodec::Rans)
                .count()
        })
        .sum()
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
        let rans_chunks = count_rans_chunks(&packed);
        if codec == CodecChoice::Rans {
            assert!(r.0 > 0, "rANS packs must use the GPU path");
            // Every rANS chunk of this tree is plain rANS planes: all go to the GPU.
            assert_eq!(r.0, rans_chunks, "rANS chunks decoded on the GPU");
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
            skip(&format!("{name}: not fetched"));
            continue;
        }
        let packed = t.path().join(name);
        pack_with(&src, &packed, CodecChoice::Auto);
        let r = emulated_equals_cpu(&packed);
        assert!(r.0 > 0, "{name}: nothing took the GPU path");
        report(name, r);
    }
}

/// `--gpu auto`'s calibration runs the same batch path it would keep: on a synthetic pack
/// it samples only rANS chunks, spread over the file, decodes them all through the decoder
/// (here the emulation) and the CPU pool, and reports both rates. Which side wins is a
/// timing and is not asserted; the rule itself is unit-tested in `gpu::calibrate`.
#[test]
fn auto_calibration_samples_rans_chunks_and_measures_both_sides() {
    use dcfs::chunk::ChunkCodec;
    use dcfs::gpu::calibrate;
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    synth_tree(&src, 11);
    pack_with(&src, &dst, CodecChoice::Auto);
    let c = calibrate::pick_container(&containers(&dst)).expect("a container with rANS chunks");
    let rans = calibrate::rans_bytes(&c);
    assert!(rans > 0);
    for f in containers(&dst) {
        let r = calibrate::rans_bytes(&Container::open(&f).unwrap());
        assert!(r <= rans, "{} has more rANS bytes than the pick", f.display());
    }
    // A budget below the total takes an even spread, never more than the budget + a chunk.
    let budget = rans / 3;
    let idx = calibrate::sample(&c, budget);
    let took: u64 = idx.iter().map(|&i| c.chunks[i].orig_len as u64).sum();
    let biggest = c.chunks.iter().map(|e| e.orig_len as u64).max().unwrap();
    assert!(!idx.is_empty() && took <= budget + biggest, "{took} of {budget}");
    assert!(idx.iter().all(|&i| c.chunks[i].codec == ChunkCodec::Rans));
    assert!(idx.windows(2).all(|w| w[0] < w[1]));
    let all = calibrate::sample(&c, u64::MAX);
    assert_eq!(
        all.len(),
        c.chunks.iter().filter(|e| e.codec == ChunkCodec::Rans).count()
    );

    let cal = calibrate::calibrate(&Decoder::emulated(), &c, &idx).unwrap();
    assert_eq!(cal.chunks, idx.len());
    assert_eq!(cal.sample_bytes, took);
    assert_eq!(
        cal.gpu_chunks,
        idx.len(),
        "every sampled rANS chunk goes through the GPU path"
    );
    assert!(cal.gpu_bytes_per_s > 0.0 && cal.cpu_bytes_per_s > 0.0);
    println!(
        "calibration (emulated GPU vs CPU pool): {:.3} vs {:.3} GB/s -> GPU kept: {}",
        cal.gpu_bytes_per_s / 1e9,
        cal.cpu_bytes_per_s / 1e9,
        cal.gpu_wins()
    );
    // keep_if_faster on a tree with no containers drops the decoder.
    let empty = t.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    assert!(calibrate::keep_if_faster(Decoder::emulated(), &containers(&empty)).is_none());
}
