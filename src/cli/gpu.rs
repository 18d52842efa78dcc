//! `gpu-info`, and the hidden `gpu-defines` (for scripts/nvrtc-check.sh) and `gpu-bench`
//! (for scripts/gpu-selftest.sh).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use serde::Serialize;

use super::util::human;
use super::Outcome;
use dcfs::format::Container;
use dcfs::gpu::{self, Decoder, GpuError, GpuMode};

/// `--gpu` values.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum GpuArg {
    /// GPU when a driver, a device and NVRTC are present and a calibration on the pack's
    /// own chunks shows it decoding faster than the CPU; CPU otherwise.
    Auto,
    /// Require the GPU (error without one).
    On,
    /// CPU only.
    Off,
    /// The CPU model of the GPU kernels through the whole batch path (tests, no GPU).
    #[value(hide = true)]
    Emulate,
}

impl GpuArg {
    /// The decoder for work on `packed` (a packed directory or one `.dcz`).
    pub fn decoder(self, packed: &Path) -> Result<Option<Decoder>> {
        let mode = match self {
            GpuArg::Auto => GpuMode::Auto,
            GpuArg::On => GpuMode::On,
            GpuArg::Off => GpuMode::Off,
            // DCFS_GPU_EMU_BUG=garbage|flags plants a kernel bug in the emulation, so tests
            // can show a broken GPU path is reported; only this hidden test mode reads it.
            GpuArg::Emulate => {
                return Ok(Some(match std::env::var("DCFS_GPU_EMU_BUG") {
                    Err(_) => Decoder::emulated(),
                    Ok(b) => Decoder::emulated_with_bug(
                        gpu::PlantedBug::parse(&b)
                            .with_context(|| format!("DCFS_GPU_EMU_BUG={b:?}: expected garbage or flags"))?,
                    ),
                }))
            }
        };
        let dec = Decoder::new(mode).context("--gpu on")?;
        Ok(match (mode, dec) {
            (GpuMode::Auto, Some(d)) => {
                // An unreadable tree calibrates on nothing (the GPU is dropped); the command
                // itself reports what it cannot read.
                let files = if packed.is_dir() {
                    walk(packed).unwrap_or_default()
                } else {
                    vec![packed.to_path_buf()]
                };
                gpu::calibrate::keep_if_faster(d, &files)
            }
            (_, d) => d,
        })
    }
}

/// Show the NVIDIA GPUs, driver and compute capabilities (via NVML).
#[derive(Args)]
pub struct GpuInfoArgs {
    /// Print JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub fn gpu_info(a: GpuInfoArgs) -> Result<Outcome> {
    let info = match gpu::info::query() {
        Ok(i) => i,
        Err(e @ GpuError::NoDriver(_)) => {
            if a.json {
                let v = serde_json::json!({ "error": e.to_string(), "devices": [] });
                println!("{}", super::util::json_text(&v, false)?);
            }
            eprintln!("dcfs: {e}");
            return Ok(Outcome::Failed);
        }
        Err(e) => return Err(e.into()),
    };
    if a.json {
        println!("{}", super::util::json_text(&info, true)?);
    } else {
        println!(
            "NVIDIA driver {} (CUDA {}), {} GPU(s)",
            info.driver_version,
            info.cuda_driver_version,
            info.devices.len()
        );
        for d in &info.devices {
            println!(
                "  [{}] {}  {} total, {} free  compute capability {}",
                d.index,
                d.name,
                human(d.memory_total),
                human(d.memory_free),
                d.compute_capability
            );
        }
    }
    Ok(if info.devices.is_empty() {
        Outcome::Failed
    } else {
        Outcome::Ok
    })
}

/// Print the -D options the CUDA kernel is compiled with (one per line).
#[derive(Args)]
pub struct GpuDefinesArgs {}

pub fn gpu_defines(_: GpuDefinesArgs) -> Result<Outcome> {
    for d in gpu::kernel_defines() {
        println!("{d}");
    }
    Ok(Outcome::Ok)
}

/// Decode every chunk of a pack on the GPU, compare with the CPU, print GB/s.
#[derive(Args)]
pub struct GpuBenchArgs {
    /// Packed directory or .dcz file.
    packed: PathBuf,
    /// Run the CPU emulation of the kernels instead of the GPU (slow; reports per-lane work).
    #[arg(long)]
    emulate: bool,
    /// Chunks per batch.
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Print JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Default, Serialize)]
struct BenchReport {
    device: String,
    files: usize,
    chunks: usize,
    chunks_gpu: usize,
    chunks_cpu: usize,
    /// Chunks planned for the GPU that fell back to the CPU (flagged, bad checksum,
    /// failed batch): on an undamaged pack each one is a GPU bug.
    fallbacks: usize,
    /// Chunks the planner gives to the GPU (rANS planes); all must come back from it.
    chunks_planned: usize,
    mismatches: usize,
    bytes: u64,
    bytes_gpu: u64,
    bytes_uploaded: u64,
    kernel_s: f64,
    device_s: f64,
    wall_s: f64,
    cpu_s: f64,
    sub_blocks: u64,
    symbols: u64,
    words: u64,
    groups: u64,
    groups_with_reads: u64,
    max_lane_words: u64,
    cpu_reasons: std::collections::BTreeMap<String, usize>,
}

pub fn gpu_bench(a: GpuBenchArgs) -> Result<Outcome> {
    let dec = if a.emulate {
        Decoder::emulated()
    } else {
        Decoder::new(GpuMode::On)?.context("no GPU decoder")?
    };
    let mut files = Vec::new();
    if a.packed.is_file() {
        files.push(a.packed.clone());
    } else {
        for e in walk(&a.packed)? {
            files.push(e);
        }
    }
    files.sort();
    let mut r = BenchReport {
        device: dec.describe(),
        ..Default::default()
    };
    for f in &files {
        let c = Container::open(f)?;
        r.files += 1;
        let idx: Vec<usize> = (0..c.chunks.len()).collect();
        for group in idx.chunks(a.batch.max(1)) {
            let t0 = Instant::now();
            let (got, st) = dec.decode_chunks_stats(&c, group);
            r.wall_s += t0.elapsed().as_secs_f64();
            let t1 = Instant::now();
            let want: Vec<_> = group.iter().map(|&i| c.decode_chunk(i)).collect();
            r.cpu_s += t1.elapsed().as_secs_f64();
            for (g, w) in got.iter().zip(&want) {
                match (g, w) {
                    (Ok(g), Ok(w)) if g == w => {}
                    _ => r.mismatches += 1,
                }
                r.bytes += w.as_ref().map_or(0, |w| w.len() as u64);
            }
            r.chunks += group.len();
            r.chunks_gpu += st.chunks_gpu;
            r.chunks_cpu += st.chunks_cpu;
            r.fallbacks += st.fallbacks;
            r.chunks_planned += dcfs::gpu::plan::planned_for_gpu(&c, group);
            r.bytes_gpu += st.bytes_gpu;
            r.bytes_uploaded += st.bytes_uploaded;
            r.kernel_s += st.kernel_s;
            r.device_s += st.device_s;
            r.sub_blocks += st.warp.sub_blocks;
            r.symbols += st.warp.symbols;
            r.words += st.warp.words;
            r.groups += st.warp.groups;
            r.groups_with_reads += st.warp.groups_with_reads;
            r.max_lane_words = r.max_lane_words.max(st.warp.max_lane_words);
            for (why, n) in st.cpu_reasons {
                *r.cpu_reasons.entry(why.to_string()).or_default() += n;
            }
        }
    }
    if a.json {
        println!("{}", super::util::json_text(&r, true)?);
    } else {
        let gbs = |b: u64, s: f64| if s > 0.0 { b as f64 / 1e9 / s } else { 0.0 };
        println!("device: {}", r.device);
        println!(
            "{} files, {} chunks ({} on the GPU path, {} on the CPU), {} original, {} mismatches vs CPU",
            r.files,
            r.chunks,
            r.chunks_gpu,
            r.chunks_cpu,
            human(r.bytes),
            r.mismatches
        );
        println!(
            "{} chunks planned for the GPU, {} fell back to the CPU",
            r.chunks_planned, r.fallbacks
        );
        for (why, n) in &r.cpu_reasons {
            println!("  {n} chunks on the CPU: {why}");
        }
        if !a.emulate {
            println!(
                "GPU kernels: {:.3} s, {:.1} GB/s of output; with copies in/out: {:.1} GB/s; end to end (host planning, checks, fallbacks): {:.2} GB/s; CPU decode on this host: {:.2} GB/s",
                r.kernel_s,
                gbs(r.bytes_gpu, r.kernel_s),
                gbs(r.bytes_gpu, r.device_s),
                gbs(r.bytes, r.wall_s),
                gbs(r.bytes, r.cpu_s)
            );
        }
        if r.sub_blocks > 0 {
            let lanes = (r.sub_blocks * 32) as f64;
            println!(
                "per lane (emulated): {:.0} symbols, {:.0} words read (max {}), {:.1}% of 32-symbol steps have a read; {:.3} stored bytes per symbol",
                r.symbols as f64 / lanes,
                r.words as f64 / lanes,
                r.max_lane_words,
                100.0 * r.groups_with_reads as f64 / r.groups.max(1) as f64,
                (r.words * 2 + r.sub_blocks * 128) as f64 / r.symbols.max(1) as f64
            );
        }
    }
    if r.mismatches > 0 {
        bail!("{} chunks differ between the GPU path and the CPU", r.mismatches);
    }
    // The pack verified as undamaged (no mismatch, every CPU decode succeeded above), so
    // every chunk planned for the GPU must have been decoded there.
    if r.fallbacks > 0 || r.chunks_gpu != r.chunks_planned {
        bail!(
            "the GPU path failed: {} of {} chunks planned for it fell back to the CPU ({} decoded on the GPU)",
            r.fallbacks,
            r.chunks_planned,
            r.chunks_gpu
        );
    }
    Ok(Outcome::Ok)
}

/// Every container of the pack at `dir`, through the one classifier every command uses
/// (links are never followed out of the pack).
fn walk(dir: &std::path::Path) -> Result<Vec<PathBuf>> {
    Ok(dcfs::format::tree::containers(dir, |_, _| {})?
        .into_iter()
        .map(|(p, _)| p)
        .collect())
}
