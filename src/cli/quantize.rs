//! `quantize` (DC's lossy INT8 stage) and `analyze` (how compressible INT8 codes are).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};

use super::util::{human, Bar};
use super::Outcome;
use dcfs::quantize::{self, Granularity, QuantOptions, DEFAULT_SKIP};

#[derive(Clone, Copy, ValueEnum)]
pub enum GranularityArg {
    /// One scale per tensor: codes keep the weights' bell shape, so they compress well.
    Tensor,
    /// One scale per output row: more accurate, but every row is stretched to ±127, which
    /// flattens the code histogram and compresses worse.
    Channel,
}

/// Quantize the linear weights of a safetensors model directory to INT8 in compressed-tensors'
/// `naive-quantized` layout (`X.weight` I8 + `X.weight_scale` F32, `quantization_config` in
/// config.json), which transformers loads as is when the compressed-tensors package is
/// installed. Other tensors are kept bit for bit (except the norms or linears that absorb
/// smoothing); other files are copied. The output appears only when complete (built in a
/// hidden temporary directory, then renamed).
#[derive(Args)]
pub struct QuantizeArgs {
    /// Source model directory (safetensors F32, BF16 or F16).
    src: PathBuf,
    /// Output directory (must not exist, or be empty).
    dst: PathBuf,
    /// Scale granularity: per tensor or per output channel (row).
    #[arg(long, value_enum, default_value = "channel")]
    granularity: GranularityArg,
    /// SmoothQuant migration strength α in [0, 1]: column j of W is multiplied by
    /// s_j = max|X_j|^α / max|W_j|^(1-α) and 1/s is folded into the op producing the layer's
    /// input (a norm's weight, or the rows of the linear before it), so stock loaders compute
    /// the right outputs. Layers whose input cannot absorb 1/s (after GELU, a residual
    /// stream) stay unsmoothed and are listed. Needs --act-stats.
    #[arg(long, value_name = "A")]
    smooth_alpha: Option<f32>,
    /// Calibration statistics from `scripts/calibrate.py MODEL OUT.safetensors` (needs torch
    /// and transformers; see docs/USAGE.md): a safetensors file of
    /// `<linear>.input_max` tensors (per-input-channel max |X|).
    #[arg(long, value_name = "FILE")]
    act_stats: Option<PathBuf>,
    /// Zero this fraction of each quantized tensor's weights, those with the smallest
    /// |W_ij|·max|X_j| (plain |W_ij| without --act-stats). In [0, 1).
    #[arg(long, value_name = "P", default_value_t = 0.0)]
    prune_ratio: f64,
    /// Keep tensors whose name matches PATTERN unquantized (repeatable). Case-insensitive;
    /// `*` matches any run of characters, a pattern without `*` matches any substring.
    /// Added to the defaults (embed, norm, lm_head, wte, wpe); 1-D and non-float tensors are
    /// never quantized.
    #[arg(long, value_name = "PATTERN")]
    skip: Vec<String>,
    /// Drop the default skip patterns (embeddings, norms, lm_head get quantized too).
    #[arg(long)]
    no_default_skip: bool,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub fn quantize(a: QuantizeArgs) -> Result<Outcome> {
    let act_stats = match &a.act_stats {
        Some(p) => Some(quantize::load_act_stats(p).with_context(|| format!("reading {}", p.display()))?),
        None => None,
    };
    let mut skip: Vec<String> = if a.no_default_skip {
        Vec::new()
    } else {
        DEFAULT_SKIP.iter().map(|s| s.to_string()).collect()
    };
    skip.extend(a.skip.iter().cloned());
    let opts = QuantOptions {
        granularity: match a.granularity {
            GranularityArg::Tensor => Granularity::Tensor,
            GranularityArg::Channel => Granularity::Channel,
        },
        smooth_alpha: a.smooth_alpha,
        act_stats,
        prune_ratio: a.prune_ratio,
        skip,
    };
    let bar = Bar::new(a.json);
    let r = quantize::quantize_dir(&a.src, &a.dst, &opts, &bar);
    bar.finish();
    let r = r.with_context(|| format!("quantizing {} into {}", a.src.display(), a.dst.display()))?;
    if a.json {
        println!("{}", super::util::json_text(&r, true)?);
        return Ok(Outcome::Ok);
    }
    let pruned: usize = r.tensors.iter().map(|t| t.pruned).sum();
    let kept: Vec<_> = r.tensors.iter().filter(|t| t.kept.is_some()).collect();
    let kept_2d = kept.iter().filter(|t| t.shape.len() == 2).count();
    println!(
        "quantized {} tensors to INT8 ({}-wise), kept {} ({} of them 2-D), pruned {} weights, \
         copied {} files: {} -> {} in {:.1}s",
        r.quantized(),
        opts.granularity.name(),
        kept.len(),
        kept_2d,
        pruned,
        r.copied,
        human(r.bytes_in),
        human(r.bytes_out),
        r.seconds
    );
    if opts.smooth_alpha.is_some() {
        println!(
            "smoothed {} layers (1/s folded into the op feeding each); {} left unsmoothed:",
            r.smoothed,
            r.unsmoothed.len()
        );
        for u in &r.unsmoothed {
            println!("  {}: {}", u.name.trim_end_matches(".weight"), u.reason);
        }
    }
    Ok(Outcome::Ok)
}

/// Per weight tensor: the lossless ratio of its INT8 codes, tensor-wise vs channel-wise,
/// under rANS, zstd and the order-0 entropy bound, grouped by layer type. Quantization
/// happens in memory; nothing is written.
#[derive(Args)]
pub struct AnalyzeArgs {
    /// Model directory or .safetensors file (F32, BF16 or F16 tensors are analyzed).
    model: PathBuf,
    /// zstd compression level (1-22).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..=22))]
    level: i32,
    /// Also list every tensor.
    #[arg(long)]
    tensors: bool,
    /// Print the report as JSON on stdout (always includes every tensor).
    #[arg(long)]
    json: bool,
}

pub fn analyze(a: AnalyzeArgs) -> Result<Outcome> {
    let bar = Bar::new(a.json);
    let r = quantize::analyze_dir(&a.model, a.level, &bar);
    bar.finish();
    let r = r.with_context(|| format!("analyzing {}", a.model.display()))?;
    if a.json {
        println!("{}", super::util::json_text(&r, true)?);
        return Ok(Outcome::Ok);
    }
    println!(
        "INT8 codes, lossless ratio (INT8 bytes / coded bytes); chunks of {}, zstd level {}",
        human(r.chunk_size as u64),
        r.zstd_level
    );
    println!(
        "{:<14} {:>4} {:>10} | {:>6} {:>6} {:>6} {:>5} | {:>6} {:>6} {:>6} {:>5}",
        "group", "n", "int8", "t.rans", "t.zstd", "t.bnd", "bits", "c.rans", "c.zstd", "c.bnd", "bits"
    );
    let row = |name: &str, n: usize, bytes: u64, t: &quantize::Ratios, c: &quantize::Ratios| {
        println!(
            "{:<14} {:>4} {:>10} | {:>6.3} {:>6.3} {:>6.3} {:>5.2} | {:>6.3} {:>6.3} {:>6.3} {:>5.2}",
            name,
            n,
            human(bytes),
            t.rans,
            t.zstd,
            t.bound,
            t.bits_per_weight,
            c.rans,
            c.zstd,
            c.bound,
            c.bits_per_weight
        )
    };
    if a.tensors {
        for t in &r.tensors {
            row(&t.name, 1, t.bytes, &t.tensor, &t.channel);
        }
        println!();
    }
    for g in &r.groups {
        row(&g.group, g.tensors, g.bytes, &g.tensor, &g.channel);
    }
    row("all", r.total.tensors, r.total.bytes, &r.total.tensor, &r.total.channel);
    println!("t.* = tensor-wise scale, c.* = channel-wise; bnd = order-0 bound; bits = entropy per weight");
    Ok(Outcome::Ok)
}
