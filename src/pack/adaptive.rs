//! `--compress-fraction auto`: DC's speed-adaptive partial compression. Samples the tree's
//! tensor chunks to measure the ratio and single-thread decode speed on this machine, then
//! picks the fraction of chunks to code that minimises a modelled load time at a given
//! storage bandwidth.
//!
//! Model, with T tensor bytes, O other bytes, ratio r, decode speed d per thread, P decode
//! threads and storage bandwidth B, coding a fraction f of the tensor chunks:
//! stored S(f) = O + T(1 - f) + T f / r, decoded D(f) = T f.
//! `Overlap`: load = max(S/B, C) (the mount reads ahead while it decodes);
//! `Serial`: load = S/B + C, where C is the CPU side: D/(P d) from the sampled codec speed
//! alone, or, given the mount's measured end-to-end rates (bytes/s of original data served
//! from a fresh mount over page-cached containers: R for raw chunks, K for coded chunks),
//! C = (O + T(1 - f))/R + T f/K, which also counts FUSE's own cost and a busy machine.
//! docs/BENCHMARKS.md compares these with measured loads.

use std::fs::File;
use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use super::{read_layout, walk, Entry, NoProgress, PackOptions};
use crate::chunk;
use crate::error::{Error, Result};

/// The model `--compress-fraction auto` uses (see docs/BENCHMARKS.md for why).
pub const DEFAULT_MODEL: LoadModel = LoadModel::Overlap;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum LoadModel {
    Overlap,
    Serial,
}

/// What sampling the tree measured.
#[derive(Clone, Debug, Serialize)]
pub struct TreeSample {
    pub tensor_bytes: u64,
    pub other_bytes: u64,
    pub sampled_bytes: u64,
    /// Tensor bytes / coded bytes over the sample.
    pub ratio: f64,
    /// Single-thread decode speed of the sample, bytes/s of original data.
    pub decode_bps: f64,
}

/// End-to-end rates of a mount on this machine, bytes/s of original data, with no storage
/// cost (containers in the page cache, the mount's chunk cache empty).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct MountRates {
    pub raw_bps: f64,
    pub coded_bps: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct FractionChoice {
    pub fraction: f64,
    pub predicted_s: f64,
    pub storage_bps: f64,
    pub threads: usize,
    pub model: LoadModel,
    pub rates: Option<MountRates>,
    pub sample: TreeSample,
    /// (fraction, modelled seconds) on a 0.05 grid.
    pub curve: Vec<(f64, f64)>,
}

/// Encodes about `budget` bytes of evenly spread tensor chunks of the tree at `src` with
/// `opts.encode` and times their decoding on one thread.
pub fn sample_tree(src: &Path, opts: &PackOptions, budget: u64) -> Result<TreeSample> {
    let mut files = Vec::new();
    let mut tensor_bytes = 0u64;
    let mut total = 0u64;
    for e in walk(src)? {
        if let Entry::File(rel, size) = e {
            let p = src.join(&rel);
            let f = File::open(&p).map_err(|e| Error::io(&p, e))?;
            let (layout, _) = read_layout(&f, &p, size, true, &NoProgress)?;
            let plan = super::plan_chunks(size, &layout, opts.chunk_size, 1.0);
            tensor_bytes += plan
                .iter()
                .filter(|c| c.dtype.is_some())
                .map(|c| c.len as u64)
                .sum::<u64>();
            total += size;
            files.push((p, f, plan));
        }
    }
    let step = (tensor_bytes / budget.max(1)).max(1);
    let (mut orig, mut coded, mut dec_s) = (0u64, 0u64, 0f64);
    let mut seen = 0u64;
    for (p, f, plan) in &files {
        for c in plan.iter().filter(|c| c.dtype.is_some()) {
            // Take a chunk each time the running byte count crosses a multiple of `step`.
            let take = (seen + c.len as u64) / step > seen / step || step == 1;
            seen += c.len as u64;
            if !take {
                continue;
            }
            let mut buf = vec![0u8; c.len as usize];
            std::os::unix::fs::FileExt::read_exact_at(f, &mut buf, c.offset).map_err(|e| Error::io(p, e))?;
            let e = chunk::encode(&buf, c.transforms(), true, &opts.encode);
            orig += buf.len() as u64;
            coded += e.payload.len() as u64;
            if e.codec != chunk::ChunkCodec::Raw {
                let mut best = f64::INFINITY;
                for _ in 0..2 {
                    let t = Instant::now();
                    chunk::decode(e.codec, e.transform, &e.payload, &mut buf).map_err(|er| Error::codec(p, 0, er))?;
                    best = best.min(t.elapsed().as_secs_f64());
                }
                dec_s += best;
            }
        }
    }
    Ok(TreeSample {
        tensor_bytes,
        other_bytes: total - tensor_bytes,
        sampled_bytes: orig,
        ratio: orig as f64 / coded.max(1) as f64,
        decode_bps: if dec_s > 0.0 {
            orig as f64 / dec_s
        } else {
            f64::INFINITY
        },
    })
}

/// Modelled load time of coding fraction `f` of the tensor chunks.
pub fn model_time(
    s: &TreeSample,
    f: f64,
    storage_bps: f64,
    threads: usize,
    model: LoadModel,
    rates: Option<MountRates>,
) -> f64 {
    let t = s.tensor_bytes as f64;
    let stored = s.other_bytes as f64 + t * (1.0 - f) + t * f / s.ratio.max(1.0);
    let io = stored / storage_bps.max(1.0);
    let cpu = match rates {
        Some(r) => (s.other_bytes as f64 + t * (1.0 - f)) / r.raw_bps.max(1.0) + t * f / r.coded_bps.max(1.0),
        None => t * f / (s.decode_bps * threads.max(1) as f64),
    };
    match model {
        LoadModel::Overlap => io.max(cpu),
        LoadModel::Serial => io + cpu,
    }
}

/// Coding must beat storing everything raw (f = 0) by this much in the model to be
/// picked. Coded chunks add decode latency and CPU use the model does not count: at
/// 1000 MB/s, f = 0.05 was modelled 1% faster than f = 0 and measured 25-34% slower
/// (docs/BENCHMARKS.md, section 4).
pub const MIN_GAIN: f64 = 0.03;

/// The fraction (on a 0.05 grid) with the smallest modelled load time; ties go to the
/// smaller fraction (less decoding, less CPU), and f = 0 unless coding gains [`MIN_GAIN`].
pub fn choose_fraction(
    s: &TreeSample,
    storage_bps: f64,
    threads: usize,
    model: LoadModel,
    rates: Option<MountRates>,
) -> FractionChoice {
    let curve: Vec<(f64, f64)> = (0..=20)
        .map(|i| {
            let f = i as f64 / 20.0;
            (f, model_time(s, f, storage_bps, threads, model, rates))
        })
        .collect();
    let mut best = curve.iter().copied().fold(
        (1.0, f64::INFINITY),
        |b, c| if c.1 < b.1 * (1.0 - 1e-9) { c } else { b },
    );
    if curve[0].1 <= best.1 * (1.0 + MIN_GAIN) {
        best = curve[0];
    }
    FractionChoice {
        fraction: best.0,
        predicted_s: best.1,
        storage_bps,
        threads,
        model,
        rates,
        sample: s.clone(),
        curve,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> TreeSample {
        TreeSample {
            tensor_bytes: 100_000_000,
            other_bytes: 0,
            sampled_bytes: 1,
            ratio: 1.5,
            decode_bps: 500e6,
        }
    }

    #[test]
    fn slow_storage_codes_everything_fast_storage_less() {
        let s = sample();
        assert_eq!(choose_fraction(&s, 50e6, 2, LoadModel::Overlap, None).fraction, 1.0);
        let fast = choose_fraction(&s, 5e9, 2, LoadModel::Overlap, None).fraction;
        assert!(fast < 0.5, "{fast}");
        assert_eq!(choose_fraction(&s, 50e6, 2, LoadModel::Serial, None).fraction, 1.0);
        assert_eq!(choose_fraction(&s, 5e9, 2, LoadModel::Serial, None).fraction, 0.0);
    }

    #[test]
    fn a_slow_mount_decoder_moves_the_pick_down() {
        let s = sample();
        let slow = Some(MountRates {
            raw_bps: 700e6,
            coded_bps: 500e6,
        });
        assert_eq!(choose_fraction(&s, 50e6, 2, LoadModel::Overlap, slow).fraction, 1.0);
        assert_eq!(choose_fraction(&s, 1e9, 2, LoadModel::Overlap, slow).fraction, 0.0);
    }

    #[test]
    fn a_marginal_modelled_gain_keeps_everything_raw() {
        let s = sample();
        // Storage a little slower than the raw mount: coding 5% of the chunks is modelled
        // about 1% faster than f = 0, which is inside the model's error.
        let rates = Some(MountRates {
            raw_bps: 1.14e9,
            coded_bps: 0.41e9,
        });
        let c = choose_fraction(&s, 1.0e9, 2, LoadModel::Overlap, rates);
        let best = c.curve.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
        assert!(best < c.curve[0].1, "the model does see a small gain");
        assert!(c.curve[0].1 <= best * (1.0 + MIN_GAIN));
        assert_eq!(c.fraction, 0.0);
        // A clear gain is still taken.
        assert_eq!(choose_fraction(&s, 200e6, 2, LoadModel::Overlap, rates).fraction, 1.0);
    }
}
