//! DC's lossy first stage: compression-aware INT8 quantization of the linear weights of a
//! safetensors model, written in compressed-tensors' `naive-quantized` layout (`X.weight`
//! I8 plus `X.weight_scale` F32), which the stock compressed-tensors package loads through
//! transformers, and `analyze`, which measures how well INT8 codes compress. The codes stay
//! plain I8 tensors (not packed into I32 words) because that is what the lossless stage
//! compresses.
//!
//! Two optional steps make the codes more compressible before the lossless stage runs:
//! pruning (zero the weights with the smallest |W_ij|·max|X_j|, DC's criterion) and
//! SmoothQuant-style per-input-channel scaling (`W' = W·diag(s)`). Smoothing is applied
//! only where `1/s` can be folded into the op that produces the layer's input (see
//! [`fold`]), so the output holds no tensor a stock loader does not know.
//!
//! Nothing else in the crate depends on this module.

mod analyze;
mod dir;
pub mod fold;

pub use analyze::{analyze_dir, analyze_file, group_of, AnalyzeReport, GroupStat, Ratios, TensorStat};
pub use dir::{load_act_stats, quantize_dir, QuantReport, TensorAction, Unsmoothed};

use std::collections::HashMap;
use std::path::PathBuf;

use crate::model::{Dtype, ModelError};

/// Why quantization or analysis failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QuantError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Model {
        path: PathBuf,
        #[source]
        source: ModelError,
    },
    /// The input or the options cannot be honoured (missing stats, bad shapes, bad values).
    #[error("{what}")]
    Invalid { what: String },
}

impl QuantError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> QuantError {
        QuantError::Io {
            path: path.into(),
            source,
        }
    }
    pub(crate) fn invalid(what: impl Into<String>) -> QuantError {
        QuantError::Invalid { what: what.into() }
    }
}

pub type Result<T, E = QuantError> = std::result::Result<T, E>;

/// One scale for the whole tensor, or one per output channel (row).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Granularity {
    Tensor,
    Channel,
}

impl Granularity {
    pub fn name(self) -> &'static str {
        match self {
            Granularity::Tensor => "tensor",
            Granularity::Channel => "channel",
        }
    }
}

/// Patterns skipped unless `--no-default-skip`: embeddings, norms and the output head are
/// small or sensitive, and loaders expect them in floating point.
pub const DEFAULT_SKIP: &[&str] = &["embed", "norm", "lm_head", "wte", "wpe"];

#[derive(Clone, Debug)]
pub struct QuantOptions {
    pub granularity: Granularity,
    /// SmoothQuant migration strength α in [0, 1]; needs `act_stats`.
    pub smooth_alpha: Option<f32>,
    /// Per-input-channel max |X| keyed by weight name (`X.weight`).
    pub act_stats: Option<HashMap<String, Vec<f32>>>,
    /// Fraction of each quantized tensor's weights to zero, in [0, 1).
    pub prune_ratio: f64,
    /// Name patterns to keep unquantized (see [`matches_pattern`]).
    pub skip: Vec<String>,
}

impl Default for QuantOptions {
    fn default() -> Self {
        QuantOptions {
            granularity: Granularity::Channel,
            smooth_alpha: None,
            act_stats: None,
            prune_ratio: 0.0,
            skip: DEFAULT_SKIP.iter().map(|s| s.to_string()).collect(),
        }
    }
}

impl QuantOptions {
    pub fn validate(&self) -> Result<()> {
        if !(0.0..1.0).contains(&self.prune_ratio) {
            return Err(QuantError::invalid("prune ratio must be in [0, 1)"));
        }
        if let Some(a) = self.smooth_alpha {
            if !(0.0..=1.0).contains(&a) {
                return Err(QuantError::invalid("smoothing alpha must be in [0, 1]"));
            }
            if self.act_stats.is_none() {
                return Err(QuantError::invalid(
                    "smoothing needs activation statistics (--act-stats, from scripts/calibrate.py)",
                ));
            }
        }
        Ok(())
    }
}

/// Case-insensitive match of a tensor name against a pattern: `*` matches any run of
/// characters; a pattern without `*` matches anywhere in the name (substring).
pub fn matches_pattern(name: &str, pattern: &str) -> bool {
    let name = name.to_ascii_lowercase();
    let pat = pattern.to_ascii_lowercase();
    if !pat.contains('*') {
        return name.contains(&pat);
    }
    let parts: Vec<&str> = pat.split('*').collect();
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || name.len() < first.len() + last.len() || !name.ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

/// Why a tensor is left as it is, or `None` when it is quantized. Only 2-D floating-point
/// `.weight` tensors are candidates; everything else is left alone.
pub fn skip_reason(name: &str, dtype: Dtype, shape: &[u64], skip: &[String]) -> Option<String> {
    if !matches!(dtype, Dtype::F32 | Dtype::BF16 | Dtype::F16) {
        return Some(format!("dtype {}", dtype.name()));
    }
    if shape.len() != 2 {
        return Some(format!("{}-D", shape.len()));
    }
    if !name.ends_with(".weight") && name != "weight" {
        return Some("not a .weight".into());
    }
    if shape[0] == 0 || shape[1] == 0 {
        return Some("empty".into());
    }
    skip.iter()
        .find(|p| matches_pattern(name, p))
        .map(|p| format!("--skip {p}"))
}

/// Decodes F32/BF16/F16 little-endian bytes to f32 (exactly: every value is representable).
pub fn to_f32(dtype: Dtype, bytes: &[u8]) -> Result<Vec<f32>> {
    Ok(match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|b| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]])))
            .collect(),
        d => return Err(QuantError::invalid(format!("cannot read {} as floats", d.name()))),
    })
}

/// IEEE binary16 to binary32.
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let man = (h & 0x3ff) as u32;
    let bits = match (exp, man) {
        (0, 0) => sign,
        (0, m) => {
            // Subnormal: value = m * 2^-24; renormalise.
            let shift = m.leading_zeros() - 21; // bring the top bit to position 10
            let m = (m << shift) & 0x3ff;
            let e = 127 - 15 + 1 - shift;
            sign | (e << 23) | (m << 13)
        }
        (0x1f, 0) => sign | 0x7f80_0000,
        (0x1f, m) => sign | 0x7fc0_0000 | (m << 13),
        (e, m) => sign | ((e + 127 - 15) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

/// Quantized weights of a `rows x cols` matrix: `w ≈ q * scale[row or 0]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Quantized {
    pub q: Vec<i8>,
    /// One scale (tensor-wise) or `rows` scales (channel-wise).
    pub scales: Vec<f32>,
}

fn scale_for(amax: f32) -> f32 {
    // An all-zero row gets scale 1 so that nothing divides by zero; its codes are 0.
    if amax > 0.0 && amax.is_finite() {
        amax / 127.0
    } else {
        1.0
    }
}

/// Symmetric round-to-nearest INT8 with codes in [-127, 127], so |w - q·scale| ≤ scale/2.
pub fn quantize(w: &[f32], rows: usize, cols: usize, g: Granularity) -> Result<Quantized> {
    if w.len() != rows * cols {
        return Err(QuantError::invalid(format!(
            "{} values for a {rows}x{cols} matrix",
            w.len()
        )));
    }
    if let Some(i) = w.iter().position(|x| !x.is_finite()) {
        return Err(QuantError::invalid(format!("non-finite weight at element {i}")));
    }
    let amax = |s: &[f32]| s.iter().fold(0f32, |m, x| m.max(x.abs()));
    let scales: Vec<f32> = match g {
        Granularity::Tensor => vec![scale_for(amax(w))],
        Granularity::Channel => w.chunks_exact(cols.max(1)).map(|r| scale_for(amax(r))).collect(),
    };
    let mut q = Vec::with_capacity(w.len());
    for (r, row) in w.chunks_exact(cols.max(1)).enumerate() {
        let s = scales[if g == Granularity::Tensor { 0 } else { r }];
        q.extend(row.iter().map(|&x| (x / s).round().clamp(-127.0, 127.0) as i8));
    }
    Ok(Quantized { q, scales })
}

/// `q · scale`, the inverse of [`quantize`] up to rounding.
pub fn dequantize(qz: &Quantized, cols: usize) -> Vec<f32> {
    let per_row = qz.scales.len() > 1;
    qz.q.chunks_exact(cols.max(1))
        .enumerate()
        .flat_map(|(r, row)| {
            let s = qz.scales[if per_row { r } else { 0 }];
            row.iter().map(move |&v| v as f32 * s)
        })
        .collect()
}

/// Zeroes exactly `floor(ratio · len)` weights, those with the smallest importance
/// `|W_ij| · act[j]` (or `|W_ij|` without statistics). Returns how many were zeroed.
pub fn prune(w: &mut [f32], cols: usize, act: Option<&[f32]>, ratio: f64) -> usize {
    let k = (ratio * w.len() as f64).floor() as usize;
    if k == 0 {
        return 0;
    }
    let importance = |i: usize| -> f32 {
        let a = act.map_or(1.0, |a| a[i % cols]);
        w[i].abs() * a
    };
    let mut idx: Vec<u32> = (0..w.len() as u32).collect();
    if k < idx.len() {
        idx.select_nth_unstable_by(k, |&a, &b| importance(a as usize).total_cmp(&importance(b as usize)));
    }
    for &i in &idx[..k.min(idx.len())] {
        w[i as usize] = 0.0;
    }
    k.min(w.len())
}

/// SmoothQuant's per-input-channel factors `s_j = max|X_j|^α / max|W_j|^(1-α)`, with
/// `s_j = 1` where either maximum is zero (nothing to migrate).
pub fn smooth_scales(w: &[f32], cols: usize, act: &[f32], alpha: f32) -> Vec<f32> {
    let mut wmax = vec![0f32; cols];
    column_max(w, cols, &mut wmax);
    smooth_factors(&wmax, act, alpha)
}

/// `wmax[j] = max(wmax[j], max_i |w_ij|)`: folds one matrix into running column maxima, so
/// that layers sharing an input can share one smoothing factor.
pub fn column_max(w: &[f32], cols: usize, wmax: &mut [f32]) {
    for row in w.chunks_exact(cols) {
        for (m, x) in wmax.iter_mut().zip(row) {
            *m = m.max(x.abs());
        }
    }
}

/// [`smooth_scales`] from column maxima already gathered.
pub fn smooth_factors(wmax: &[f32], act: &[f32], alpha: f32) -> Vec<f32> {
    wmax.iter()
        .zip(act)
        .map(|(&wm, &am)| {
            if wm > 0.0 && am > 0.0 && am.is_finite() {
                let s = am.powf(alpha) / wm.powf(1.0 - alpha);
                // Keep factors in a range where W·s and X/s stay well inside f32.
                s.clamp(1e-5, 1e5)
            } else {
                1.0
            }
        })
        .collect()
}

/// `W ← W·diag(s)`: column j is multiplied by `s[j]`. `X·Wᵀ` is unchanged when the input
/// is divided by `s` (see [`unsmooth`]).
pub fn smooth(w: &mut [f32], cols: usize, s: &[f32]) {
    for row in w.chunks_exact_mut(cols) {
        for (x, f) in row.iter_mut().zip(s) {
            *x *= f;
        }
    }
}

/// Divides output channel j of a producer by `s[j]`: row j of a 2-D weight, element j of
/// a 1-D weight or bias. This is where `1/s` goes when smoothing is folded.
pub fn divide_channels(w: &mut [f32], s: &[f32]) {
    let per = w.len() / s.len().max(1);
    for (chunk, f) in w.chunks_exact_mut(per.max(1)).zip(s) {
        chunk.iter_mut().for_each(|x| *x /= f);
    }
}

/// f32 to bfloat16 bits, round to nearest even (inputs are finite).
pub fn f32_to_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// The inverse of [`smooth`], for dequantizing into an equivalent float model.
pub fn unsmooth(w: &mut [f32], cols: usize, s: &[f32]) {
    for row in w.chunks_exact_mut(cols) {
        for (x, f) in row.iter_mut().zip(s) {
            *x /= f;
        }
    }
}

#[cfg(test)]
mod tests;
