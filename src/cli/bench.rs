//! `dcfs bench`: reproducible measurements (timings only; never pass/fail). Used by
//! scripts/bench.sh, which writes docs/BENCHMARKS.md's figures.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::json;

use super::util::{human, parse_size};
use super::Outcome;
use harness::{self as bench, CodecBenchOptions};

mod harness;

/// Measure read throughput, random-read latency, codecs and storage bandwidth.
#[derive(Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    cmd: BenchCmd,
}

#[derive(Subcommand)]
enum BenchCmd {
    Read(ReadArgs),
    Random(RandomArgs),
    Codecs(CodecsArgs),
    Storage(StorageArgs),
}

/// Sequential read() of every byte, or an mmap touch of every page, of the given files
/// (directories are walked). Reports MB/s per run and median/min/max.
#[derive(Args)]
struct ReadArgs {
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// read() size.
    #[arg(long, default_value = "1M", value_parser = parse_size)]
    block: u64,
    /// Map each file and touch one byte per 4 KiB page instead of read().
    #[arg(long)]
    mmap: bool,
    /// `sync; echo 3 > /proc/sys/vm/drop_caches` before each run (root). A FUSE mount's
    /// own chunk cache is not dropped by this: remount for a cold dcfs run.
    #[arg(long)]
    drop_caches: bool,
    #[arg(long, default_value_t = 3)]
    runs: usize,
    #[arg(long)]
    json: bool,
}

/// Latency of random reads of one file: p50/p99/mean in microseconds.
#[derive(Args)]
struct RandomArgs {
    path: PathBuf,
    #[arg(long, default_value_t = 2000)]
    count: usize,
    /// Size of each read (and offset alignment).
    #[arg(long, default_value = "4K", value_parser = parse_size)]
    size: u64,
    /// Touch the pages through an mmap instead of pread().
    #[arg(long)]
    mmap: bool,
    /// Drop the page cache once before the run (a cold run).
    #[arg(long)]
    drop_caches: bool,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long)]
    json: bool,
}

/// Per model file and tensor class: ratio and single-thread encode/decode MB/s of dcfs
/// rANS/zstd/auto, zstd -3 per chunk, lz4 (lz4_flex) per chunk, zstd -3/-19 and lz4 on the
/// whole file, the order-0 bound; plus multi-threaded dcfs decode.
#[derive(Args)]
struct CodecsArgs {
    /// Model directories or model files (.safetensors, .gguf).
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    #[arg(long, default_value = "1M", value_parser = parse_size)]
    chunk_size: u64,
    /// Decode passes per measurement; the fastest counts.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Skip zstd -19 on the whole file (a few MB/s to encode).
    #[arg(long)]
    no_zstd19: bool,
    /// Thread counts for the multi-threaded decode.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    threads: Vec<usize>,
    /// Print only the per-file and all-tensor rows (human output).
    #[arg(long)]
    brief: bool,
    #[arg(long)]
    json: bool,
}

/// Storage read bandwidth with caches dropped: reads PATH (a file or directory on that
/// storage) with 1 MiB read()s. Feed the result to `dcfs pack --storage-bw`.
#[derive(Args)]
struct StorageArgs {
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    #[arg(long, default_value_t = 3)]
    runs: usize,
    #[arg(long)]
    json: bool,
}

pub fn bench(a: BenchArgs) -> Result<Outcome> {
    match a.cmd {
        BenchCmd::Read(a) => read(a),
        BenchCmd::Random(a) => random(a),
        BenchCmd::Codecs(a) => codecs(a),
        BenchCmd::Storage(a) => storage(a),
    }
}

fn read(a: ReadArgs) -> Result<Outcome> {
    let files = bench::collect_files(&a.paths)?;
    if files.is_empty() {
        bail!("no files under the given paths");
    }
    let runs = bench::read_runs(&files, a.block as usize, a.mmap, a.drop_caches, a.runs)?;
    let mbs: Vec<f64> = runs.iter().map(|r| r.mb_per_s).collect();
    let secs: Vec<f64> = runs.iter().map(|r| r.seconds).collect();
    let (m, s) = (bench::summarize(&mbs), bench::summarize(&secs));
    if a.json {
        println!(
            "{}",
            super::util::json_text(
                &json!({"mode": if a.mmap {"mmap"} else {"read"}, "files": files.len(), "bytes": runs[0].bytes,
                        "cold": a.drop_caches, "runs": runs, "mb_per_s": m, "seconds": s}),
                false
            )?
        );
    } else {
        println!(
            "{} of {} ({} files), {} runs{}: {:.0} MB/s median (min {:.0}, max {:.0}), {:.3}s median",
            if a.mmap { "mmap touch" } else { "read()" },
            human(runs[0].bytes),
            files.len(),
            runs.len(),
            if a.drop_caches { ", caches dropped" } else { "" },
            m.median,
            m.min,
            m.max,
            s.median
        );
    }
    Ok(Outcome::Ok)
}

fn random(a: RandomArgs) -> Result<Outcome> {
    if a.drop_caches {
        bench::drop_caches()?;
    }
    let lat = bench::random_reads(&a.path, a.count, a.size as usize, a.mmap, a.seed)?;
    let (p50, p99) = (bench::quantile(&lat, 0.5), bench::quantile(&lat, 0.99));
    let mean = lat.iter().sum::<f64>() / lat.len().max(1) as f64;
    if a.json {
        println!(
            "{}",
            super::util::json_text(
                &json!({"mode": if a.mmap {"mmap"} else {"pread"}, "size": a.size, "count": a.count,
                        "cold": a.drop_caches, "p50_us": p50, "p99_us": p99, "mean_us": mean}),
                false
            )?
        );
    } else {
        println!(
            "{} random {} reads{}: p50 {p50:.1} us, p99 {p99:.1} us, mean {mean:.1} us",
            a.count,
            human(a.size),
            if a.mmap { " (mmap)" } else { "" },
        );
    }
    Ok(Outcome::Ok)
}

fn codecs(a: CodecsArgs) -> Result<Outcome> {
    let o = CodecBenchOptions {
        chunk_size: a.chunk_size as u32,
        reps: a.reps,
        zstd19: !a.no_zstd19,
        threads: a.threads.clone(),
    };
    let mut files = Vec::new();
    for p in &a.paths {
        for f in bench::collect_files(std::slice::from_ref(p))? {
            let n = f.to_string_lossy();
            if n.ends_with(".safetensors") || n.ends_with(".gguf") {
                // Label: the model directory and file name.
                let label = match (f.parent().and_then(|d| d.file_name()), f.file_name()) {
                    (Some(d), Some(n)) => format!("{}/{}", d.to_string_lossy(), n.to_string_lossy()),
                    _ => n.into_owned(),
                };
                files.push((f, label));
            }
        }
    }
    if files.is_empty() {
        bail!("no .safetensors or .gguf files under the given paths");
    }
    let mut all = bench::CodecReport::default();
    for (f, label) in &files {
        let r = bench::codec_table(f, label, &o).with_context(|| format!("benchmarking {}", f.display()))?;
        if !a.json {
            print_codecs(&r, a.brief);
        }
        all.rows.extend(r.rows);
        all.planes.extend(r.planes);
        all.threads.extend(r.threads);
    }
    if a.json {
        println!("{}", super::util::json_text(&all, true)?);
    }
    Ok(Outcome::Ok)
}

fn print_codecs(r: &bench::CodecReport, brief: bool) {
    let Some(first) = r.rows.first() else { return };
    println!("{}", first.file);
    println!(
        "  {:<11} {:<13} {:>10} {:>10} {:>7} {:>9} {:>9}",
        "class", "codec", "bytes", "stored", "ratio", "enc MB/s", "dec MB/s"
    );
    for row in &r.rows {
        if brief && !matches!(row.class.as_str(), "tensors" | "file") {
            continue;
        }
        let speed = |v: f64| if v > 0.0 { format!("{v:.0}") } else { "-".into() };
        println!(
            "  {:<11} {:<13} {:>10} {:>10} {:>7.3} {:>9} {:>9}",
            row.class,
            row.codec,
            human(row.bytes),
            human(row.stored),
            row.ratio,
            speed(row.encode_mb_s),
            speed(row.decode_mb_s)
        );
    }
    let planes: Vec<String> = r
        .planes
        .iter()
        .map(|p| format!("{} p{} {:.2}", p.transform, p.plane, p.bits_per_byte))
        .collect();
    println!("  order-0 bits/byte per plane: {}", planes.join(", "));
    for t in &r.threads {
        println!(
            "  dcfs auto decode, {} thread(s): {:.0} MB/s median (min {:.0}, max {:.0})",
            t.threads, t.decode_mb_s.median, t.decode_mb_s.min, t.decode_mb_s.max
        );
    }
}

fn storage(a: StorageArgs) -> Result<Outcome> {
    let files = bench::collect_files(&a.paths)?;
    if files.is_empty() {
        bail!("no files under the given paths");
    }
    let runs = bench::read_runs(&files, 1 << 20, false, true, a.runs)
        .context("reading with caches dropped (needs root for /proc/sys/vm/drop_caches)")?;
    let bps: Vec<f64> = runs.iter().map(|r| r.bytes as f64 / r.seconds.max(1e-9)).collect();
    let s = bench::summarize(&bps);
    if a.json {
        println!(
            "{}",
            super::util::json_text(&json!({"bytes": runs[0].bytes, "bytes_per_s": s}), false)?
        );
    } else {
        println!(
            "storage read {}/s median (min {}/s, max {}/s) over {} cold runs of {}; use --storage-bw {}",
            human(s.median as u64),
            human(s.min as u64),
            human(s.max as u64),
            runs.len(),
            human(runs[0].bytes),
            s.median.round() as u64
        );
    }
    Ok(Outcome::Ok)
}
