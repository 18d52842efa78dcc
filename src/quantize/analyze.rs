//! `analyze`: how compressible are a model's weights once quantized to INT8, tensor-wise vs
//! channel-wise? Each 2-D float tensor is quantized in memory and its codes are coded by
//! the lossless stage (`chunk::encode`) under rANS and zstd, next to the order-0 bound.

use std::fs::File;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::Serialize;

use super::dir::{read_layout, read_span};
use super::{quantize, to_f32, Granularity, QuantError, Result};
use crate::chunk::{self, CodecChoice, EncodeOptions};
use crate::codec::rans;
use crate::model::Dtype;
use crate::pack::{Progress, DEFAULT_CHUNK_SIZE};
use crate::transform::Transform;

/// Compressed sizes of one tensor's INT8 codes (bytes).
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Sizes {
    pub rans: u64,
    pub zstd: u64,
    /// Order-0 entropy of the whole tensor's codes, in bytes.
    pub bound: f64,
}

impl Sizes {
    fn add(&mut self, o: &Sizes) {
        self.rans += o.rans;
        self.zstd += o.zstd;
        self.bound += o.bound;
    }
}

/// Ratios (original INT8 bytes / coded bytes).
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Ratios {
    pub rans: f64,
    pub zstd: f64,
    pub bound: f64,
    /// Order-0 entropy per code, in bits.
    pub bits_per_weight: f64,
}

fn ratios(bytes: u64, s: &Sizes) -> Ratios {
    let r = |c: f64| if c > 0.0 { bytes as f64 / c } else { 1.0 };
    Ratios {
        rans: r(s.rans as f64),
        zstd: r(s.zstd as f64),
        bound: r(s.bound),
        bits_per_weight: if bytes > 0 { 8.0 * s.bound / bytes as f64 } else { 0.0 },
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct TensorStat {
    pub file: String,
    pub name: String,
    pub group: String,
    pub shape: Vec<u64>,
    /// INT8 bytes (one per weight).
    pub bytes: u64,
    pub tensor: Ratios,
    pub channel: Ratios,
    #[serde(skip)]
    sizes: (Sizes, Sizes),
    #[serde(skip)]
    span_bytes: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct GroupStat {
    pub group: String,
    pub tensors: usize,
    pub bytes: u64,
    pub tensor: Ratios,
    pub channel: Ratios,
}

#[derive(Clone, Debug, Serialize)]
pub struct AnalyzeReport {
    pub model: String,
    pub chunk_size: u32,
    pub zstd_level: i32,
    pub groups: Vec<GroupStat>,
    pub total: GroupStat,
    pub tensors: Vec<TensorStat>,
}

/// Layer type from a tensor name, across BERT, GPT-2 and Llama-style naming.
pub fn group_of(name: &str) -> &'static str {
    let n = name.to_ascii_lowercase();
    let has = |s: &[&str]| s.iter().any(|p| n.contains(p));
    if has(&["embed", "wte", "wpe"]) {
        "embeddings"
    } else if has(&["query", "key", "value", "q_proj", "k_proj", "v_proj", "c_attn", "qkv"]) {
        "attn q/k/v"
    } else if has(&[
        "attention.output",
        "o_proj",
        "attn.c_proj",
        "out_proj",
        "self_attn.dense",
    ]) {
        "attn out"
    } else if has(&["intermediate", "up_proj", "gate_proj", "c_fc", "fc1", "w1", "w3"]) {
        "mlp up"
    } else if has(&["output.dense", "down_proj", "mlp.c_proj", "fc2", "w2"]) {
        "mlp down"
    } else if has(&["lm_head"]) {
        "lm_head"
    } else {
        "other"
    }
}

/// Coded sizes of `codes` in `chunk_size` pieces, as `pack` would chunk a tensor.
fn sizes(codes: &[u8], chunk_size: usize, zstd_level: i32) -> Sizes {
    let coded = |codec| -> u64 {
        let opt = EncodeOptions {
            codec,
            zstd_level,
            min_gain: 0.0,
        };
        codes
            .chunks(chunk_size)
            .map(|c| chunk::encode(c, &[Transform::None], true, &opt).payload.len() as u64)
            .sum()
    };
    Sizes {
        rans: coded(CodecChoice::Rans),
        zstd: coded(CodecChoice::Zstd),
        bound: rans::entropy_bits(&rans::histogram(codes)) / 8.0,
    }
}

fn analyze_tensor(w: &[f32], rows: usize, cols: usize, zstd_level: i32) -> Result<(Sizes, Sizes)> {
    let chunk = DEFAULT_CHUNK_SIZE as usize;
    let code = |g| -> Result<Sizes> {
        let q = quantize(w, rows, cols, g)?;
        let bytes: Vec<u8> = q.q.iter().map(|&v| v as u8).collect();
        Ok(sizes(&bytes, chunk, zstd_level))
    };
    Ok((code(Granularity::Tensor)?, code(Granularity::Channel)?))
}

/// Analyzes one safetensors file; `label` names it in the report.
pub fn analyze_file(path: &Path, label: &str, zstd_level: i32, progress: &dyn Progress) -> Result<Vec<TensorStat>> {
    let f = File::open(path).map_err(|e| QuantError::io(path, e))?;
    let (layout, _) = read_layout(&f, path)?;
    let todo: Vec<_> = layout
        .tensors
        .iter()
        .filter(|t| matches!(t.dtype, Dtype::F32 | Dtype::BF16 | Dtype::F16))
        .filter(|t| t.shape.len() == 2 && t.shape[0] > 0 && t.shape[1] > 0)
        .collect();
    todo.par_iter()
        .map(|t| {
            let (rows, cols) = (t.shape[0] as usize, t.shape[1] as usize);
            let w = to_f32(t.dtype, &read_span(&f, path, t)?)?;
            let (ts, cs) = analyze_tensor(&w, rows, cols, zstd_level)
                .map_err(|e| QuantError::invalid(format!("{label}: {}: {e}", t.name)))?;
            progress.advance(t.len);
            let bytes = (rows * cols) as u64;
            Ok(TensorStat {
                file: label.to_string(),
                name: t.name.clone(),
                group: group_of(&t.name).to_string(),
                shape: t.shape.clone(),
                bytes,
                tensor: ratios(bytes, &ts),
                channel: ratios(bytes, &cs),
                sizes: (ts, cs),
                span_bytes: t.len,
            })
        })
        .collect()
}

fn file_len(p: &Path) -> Result<u64> {
    Ok(std::fs::metadata(p).map_err(|e| QuantError::io(p, e))?.len())
}

/// Analyzes a safetensors file or every `*.safetensors` in a directory (recursively).
pub fn analyze_dir(model: &Path, zstd_level: i32, progress: &dyn Progress) -> Result<AnalyzeReport> {
    let mut files: Vec<PathBuf> = Vec::new();
    if model.is_dir() {
        let mut all = Vec::new();
        super::dir::walk(model, &mut all)?;
        files.extend(
            all.into_iter()
                .filter(|p| p.extension().is_some_and(|e| e == "safetensors")),
        );
    } else {
        files.push(model.to_path_buf());
    }
    if files.is_empty() {
        return Err(QuantError::invalid(format!(
            "{}: no .safetensors files",
            model.display()
        )));
    }
    let mut total_len = 0;
    for p in &files {
        total_len += file_len(p)?;
    }
    progress.set_total(total_len);
    let mut tensors = Vec::new();
    for p in &files {
        let label = p.strip_prefix(model).unwrap_or(p).display().to_string();
        let label = if label.is_empty() {
            p.display().to_string()
        } else {
            label
        };
        progress.message(&label);
        let stats = analyze_file(p, &label, zstd_level, progress)?;
        let done: u64 = stats.iter().map(|t| t.span_bytes).sum();
        progress.advance(file_len(p)?.saturating_sub(done));
        tensors.extend(stats);
    }
    let order = [
        "attn q/k/v",
        "attn out",
        "mlp up",
        "mlp down",
        "embeddings",
        "lm_head",
        "other",
    ];
    let agg = |name: &str, ts: &[&TensorStat]| {
        let (mut a, mut b) = (Sizes::default(), Sizes::default());
        let mut bytes = 0;
        for t in ts {
            a.add(&t.sizes.0);
            b.add(&t.sizes.1);
            bytes += t.bytes;
        }
        GroupStat {
            group: name.to_string(),
            tensors: ts.len(),
            bytes,
            tensor: ratios(bytes, &a),
            channel: ratios(bytes, &b),
        }
    };
    let groups = order
        .iter()
        .map(|g| (g, tensors.iter().filter(|t| t.group == *g).collect::<Vec<_>>()))
        .filter(|(_, ts)| !ts.is_empty())
        .map(|(g, ts)| agg(g, &ts))
        .collect();
    let all: Vec<&TensorStat> = tensors.iter().collect();
    let total = agg("all", &all);
    Ok(AnalyzeReport {
        model: model.display().to_string(),
        chunk_size: DEFAULT_CHUNK_SIZE,
        zstd_level,
        groups,
        total,
        tensors,
    })
}
