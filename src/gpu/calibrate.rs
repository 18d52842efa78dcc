//! `--gpu auto`'s calibration: a GPU is used only when it decodes this pack's own chunks
//! faster than the CPU pool does. A small or old GPU behind a slow PCIe link can lose to
//! a few AVX2 cores once uploads, downloads and host-side checksums are counted, and
//! `auto` must never make a mount slower than `--gpu off`.

use std::path::PathBuf;
use std::time::Instant;

use rayon::prelude::*;

use super::Decoder;
use crate::chunk::ChunkCodec;
use crate::format::Container;

/// Original bytes decoded per side and repetition: enough to fill a GPU batch and to
/// amortise a kernel launch, small enough to finish in well under a second.
pub const SAMPLE_BYTES: u64 = 64 << 20;
/// The GPU must beat the CPU by this factor: it pays a batching delay the CPU does not.
pub const MARGIN: f64 = 1.10;
/// Timed passes per side; the fastest counts (the first GPU pass also sizes the arena).
const REPS: usize = 2;

/// What the calibration measured. Rates are original bytes per second, end to end:
/// payload reads, decode, transfers, and the xxh3 check of every chunk.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Calibration {
    pub container: PathBuf,
    pub chunks: usize,
    pub sample_bytes: u64,
    /// Chunks of the sample the GPU path decoded itself (the rest fell back to the CPU).
    pub gpu_chunks: usize,
    pub gpu_bytes_per_s: f64,
    pub cpu_bytes_per_s: f64,
}

impl Calibration {
    /// Whether `auto` keeps the GPU.
    pub fn gpu_wins(&self) -> bool {
        decide(self.gpu_chunks, self.gpu_bytes_per_s, self.cpu_bytes_per_s)
    }
}

/// The rule on its own, so it is tested without timing anything.
fn decide(gpu_chunks: usize, gpu_bps: f64, cpu_bps: f64) -> bool {
    gpu_chunks > 0 && gpu_bps.is_finite() && gpu_bps > cpu_bps * MARGIN
}

/// Up to `max_bytes` of rANS chunks of `c`, spread evenly over the file (the GPU path
/// takes rANS chunks only; zstd and raw chunks would time the CPU twice).
pub fn sample(c: &Container, max_bytes: u64) -> Vec<usize> {
    let rans: Vec<usize> = (0..c.chunks.len())
        .filter(|&i| c.chunks[i].codec == ChunkCodec::Rans)
        .collect();
    let total: u64 = rans.iter().map(|&i| c.chunks[i].orig_len as u64).sum();
    if total <= max_bytes {
        return rans;
    }
    let step = total as f64 / max_bytes as f64;
    let mut out = Vec::new();
    let mut taken = 0u64;
    for (k, &i) in rans.iter().enumerate() {
        if (k as f64) >= out.len() as f64 * step && taken < max_bytes {
            taken += c.chunks[i].orig_len as u64;
            out.push(i);
        }
    }
    out
}

/// Times decoding chunks `idx` of `c` through `dec` and through the CPU pool (the
/// caller's rayon pool, as the mount and `verify` use it).
pub fn calibrate(dec: &Decoder, c: &Container, idx: &[usize]) -> crate::Result<Calibration> {
    let sample_bytes: u64 = idx.iter().map(|&i| c.chunks[i].orig_len as u64).sum();
    let mut gpu_best = f64::INFINITY;
    let mut gpu_chunks = 0;
    for _ in 0..REPS {
        let t = Instant::now();
        let (res, stats) = dec.decode_chunks_stats(c, idx);
        let s = t.elapsed().as_secs_f64();
        for r in res {
            r?;
        }
        gpu_chunks = stats.chunks_gpu;
        gpu_best = gpu_best.min(s);
    }
    let mut cpu_best = f64::INFINITY;
    for _ in 0..REPS {
        let t = Instant::now();
        idx.par_iter().try_for_each(|&i| -> crate::Result<()> {
            let p = c.read_payload(i)?;
            let mut out = vec![0u8; c.chunks[i].orig_len as usize];
            c.decode_payload(i, &p, &mut out)
        })?;
        cpu_best = cpu_best.min(t.elapsed().as_secs_f64());
    }
    let rate = |s: f64| {
        if s > 0.0 {
            sample_bytes as f64 / s
        } else {
            f64::INFINITY
        }
    };
    Ok(Calibration {
        container: c.path().to_path_buf(),
        chunks: idx.len(),
        sample_bytes,
        gpu_chunks,
        gpu_bytes_per_s: rate(gpu_best),
        cpu_bytes_per_s: rate(cpu_best),
    })
}

/// Original bytes in the rANS chunks of `c`: the work the GPU path can take.
pub fn rans_bytes(c: &Container) -> u64 {
    c.chunks
        .iter()
        .filter(|e| e.codec == ChunkCodec::Rans)
        .map(|e| e.orig_len as u64)
        .sum()
}

/// Of `files` (`.dcz` paths), the container with the most rANS bytes: the most GPU work,
/// so the fairest sample. Only the four largest files are opened; opening every container
/// of a big tree would cost more than the calibration.
pub fn pick_container(files: &[PathBuf]) -> Option<Container> {
    let mut files: Vec<&PathBuf> = files.iter().collect();
    files.sort_by_key(|p| std::cmp::Reverse(std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)));
    files
        .into_iter()
        .take(4)
        .filter_map(|p| Container::open(p).ok())
        .max_by_key(rans_bytes)
}

/// `--gpu auto`: keeps `dec` only if it beats the CPU on a sample of the chunks of `files`
/// (the `.dcz` files of the pack). Logs the measurement at info either way.
pub fn keep_if_faster(dec: Decoder, files: &[PathBuf]) -> Option<Decoder> {
    let Some(c) = pick_container(files) else {
        tracing::info!("GPU decode off: no packed file to calibrate on");
        return None;
    };
    let idx = sample(&c, SAMPLE_BYTES);
    if idx.is_empty() {
        tracing::info!("GPU decode off: {} has no rANS chunks for the GPU", c.path().display());
        return None;
    }
    match calibrate(&dec, &c, &idx) {
        Ok(cal) => {
            let verdict = if cal.gpu_wins() {
                "GPU decode on"
            } else {
                "GPU decode off"
            };
            tracing::info!(
                "{verdict}: calibration on {} chunks ({:.1} MB) of {}: {} {:.2} GB/s, CPU {:.2} GB/s (needs {MARGIN}x)",
                cal.chunks,
                cal.sample_bytes as f64 / 1e6,
                c.path().display(),
                dec.describe(),
                cal.gpu_bytes_per_s / 1e9,
                cal.cpu_bytes_per_s / 1e9,
            );
            cal.gpu_wins().then_some(dec)
        }
        Err(e) => {
            tracing::info!("GPU decode off: calibration failed: {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gpu_must_win_by_the_margin_and_decode_something() {
        assert!(decide(10, 2.0e9, 1.0e9));
        assert!(!decide(10, 1.05e9, 1.0e9), "within the margin the CPU keeps the work");
        assert!(!decide(10, 0.5e9, 1.0e9));
        assert!(!decide(0, 9.0e9, 1.0e9), "a GPU that decoded nothing itself never wins");
        assert!(!decide(10, f64::NAN, 1.0e9));
    }
}
