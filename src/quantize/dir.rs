//! `quantize_dir`: a model directory in, a quantized model directory out.
//!
//! The whole output is built in a hidden sibling directory and renamed into place only
//! when every file is written and synced, so an interrupted run never leaves a directory
//! that looks like a finished model.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use serde_json::{json, Value};

use super::fold::{self, Producer};
use super::{
    column_max, dequantize, divide_channels, f32_to_bf16, prune, quantize, skip_reason, smooth, smooth_factors, to_f32,
    Granularity, QuantError, QuantOptions, Result,
};
use crate::model::{self, safetensors, Dtype, TensorSpan};
use crate::pack::Progress;

/// What happened to one tensor.
#[derive(Clone, Debug, Serialize)]
pub struct TensorAction {
    pub file: String,
    pub name: String,
    pub dtype: String,
    pub shape: Vec<u64>,
    /// `None`: quantized; otherwise why it was kept as it was.
    pub kept: Option<String>,
    /// Weights zeroed by pruning.
    pub pruned: usize,
    /// Largest |w - dequantized| over the tensor, in the (smoothed) quantized domain.
    pub max_abs_err: f32,
    /// Smoothing: for a smoothed layer, the op that absorbed `1/s`; for that op, which
    /// layers' `1/s` it absorbed (its values were divided).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub smoothing: Option<String>,
}

/// A quantized layer that `--smooth-alpha` left unsmoothed, and why.
#[derive(Clone, Debug, Serialize)]
pub struct Unsmoothed {
    pub name: String,
    pub reason: String,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct QuantReport {
    pub tensors: Vec<TensorAction>,
    /// Non-safetensors files copied (config.json rewritten, not counted).
    pub copied: usize,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub seconds: f64,
    /// With smoothing: quantized layers whose `1/s` was folded into their input's producer.
    pub smoothed: usize,
    /// With smoothing: quantized layers left unsmoothed (their input cannot absorb `1/s`).
    pub unsmoothed: Vec<Unsmoothed>,
}

impl QuantReport {
    pub fn quantized(&self) -> usize {
        self.tensors.iter().filter(|t| t.kept.is_none()).count()
    }
}

/// Reads per-input-channel activation maxima written by `scripts/calibrate.py`: tensors
/// named `<linear>.input_max` (1-D, float), keyed here by `<linear>.weight`.
pub fn load_act_stats(path: &Path) -> Result<HashMap<String, Vec<f32>>> {
    let f = File::open(path).map_err(|e| QuantError::io(path, e))?;
    let (layout, _) = read_layout(&f, path)?;
    let mut out = HashMap::new();
    for t in &layout.tensors {
        let Some(base) = t.name.strip_suffix(".input_max") else {
            continue;
        };
        if t.shape.len() != 1 {
            return Err(QuantError::invalid(format!(
                "{}: {} must be 1-D, has shape {:?}",
                path.display(),
                t.name,
                t.shape
            )));
        }
        let bytes = read_span(&f, path, t)?;
        let v = to_f32(t.dtype, &bytes)?;
        if v.iter().any(|x| !x.is_finite() || *x < 0.0) {
            return Err(QuantError::invalid(format!(
                "{}: {} holds negative or non-finite maxima",
                path.display(),
                t.name
            )));
        }
        out.insert(format!("{base}.weight"), v);
    }
    if out.is_empty() {
        return Err(QuantError::invalid(format!(
            "{}: no `<name>.input_max` tensors (write it with scripts/calibrate.py)",
            path.display()
        )));
    }
    Ok(out)
}

pub(crate) fn read_layout(f: &File, path: &Path) -> Result<(model::Layout, serde_json::Map<String, Value>)> {
    let len = f.metadata().map_err(|e| QuantError::io(path, e))?.len();
    let mut head = [0u8; 8];
    if len < 8 {
        return Err(QuantError::Model {
            path: path.into(),
            source: model::ModelError::Malformed {
                what: "shorter than a safetensors header".into(),
            },
        });
    }
    f.read_exact_at(&mut head, 0).map_err(|e| QuantError::io(path, e))?;
    let n = u64::from_le_bytes(head).min(safetensors::MAX_JSON).min(len - 8);
    let mut prefix = vec![0u8; 8 + n as usize];
    f.read_exact_at(&mut prefix, 0).map_err(|e| QuantError::io(path, e))?;
    let layout = safetensors::parse(&prefix, len).map_err(|source| QuantError::Model {
        path: path.into(),
        source,
    })?;
    // The parser has proven the header is a JSON object; keep its metadata.
    let header: Value = serde_json::from_slice(prefix[8..].trim_ascii_end()).unwrap_or(Value::Null);
    let meta = header
        .get("__metadata__")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    Ok((layout, meta))
}

pub(crate) fn read_span(f: &File, path: &Path, t: &TensorSpan) -> Result<Vec<u8>> {
    let mut b = vec![0u8; t.len as usize];
    f.read_exact_at(&mut b, t.start).map_err(|e| QuantError::io(path, e))?;
    Ok(b)
}

/// Quantizes every safetensors file under `src` into `dst` (which must not exist, or be an
/// empty directory) and copies everything else; adds `quantization_config` to
/// `config.json` and the new tensor names to `*.safetensors.index.json`.
pub fn quantize_dir(src: &Path, dst: &Path, opts: &QuantOptions, progress: &dyn Progress) -> Result<QuantReport> {
    opts.validate()?;
    let t0 = Instant::now();
    if !src.is_dir() {
        return Err(QuantError::invalid(format!("{}: not a directory", src.display())));
    }
    if dst.exists() {
        let empty = fs::read_dir(dst).map_err(|e| QuantError::io(dst, e))?.next().is_none();
        if !empty {
            return Err(QuantError::invalid(format!(
                "{}: exists and is not empty; refusing to overwrite",
                dst.display()
            )));
        }
    }
    let name = dst
        .file_name()
        .ok_or_else(|| QuantError::invalid(format!("{}: needs a final path component", dst.display())))?;
    let tmp = dst.with_file_name(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(|e| QuantError::io(&tmp, e))?;
    }
    let r = build(src, &tmp, opts, progress);
    match r {
        Ok(mut report) => {
            if dst.exists() {
                fs::remove_dir(dst).map_err(|e| QuantError::io(dst, e))?;
            }
            fs::rename(&tmp, dst).map_err(|e| QuantError::io(dst, e))?;
            report.seconds = t0.elapsed().as_secs_f64();
            Ok(report)
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

pub(crate) fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .map_err(|e| QuantError::io(dir, e))?
        .collect::<std::io::Result<_>>()
        .map_err(|e| QuantError::io(dir, e))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let p = e.path();
        let ft = e.file_type().map_err(|e| QuantError::io(&p, e))?;
        if ft.is_dir() {
            walk(&p, out)?;
        } else {
            out.push(p);
        }
    }
    Ok(())
}

fn build(src: &Path, tmp: &Path, opts: &QuantOptions, progress: &dyn Progress) -> Result<QuantReport> {
    fs::create_dir_all(tmp).map_err(|e| QuantError::io(tmp, e))?;
    let mut files = Vec::new();
    walk(src, &mut files)?;
    let rel = |p: &Path| p.strip_prefix(src).unwrap_or(p).to_path_buf();
    let is_weights = |p: &Path| p.extension().is_some_and(|e| e == "safetensors") && !p.is_symlink();
    let total: u64 = files
        .iter()
        .filter(|p| is_weights(p))
        .filter_map(|p| p.metadata().ok())
        .map(|m| m.len())
        .sum();
    progress.set_total(total);
    let mut report = QuantReport::default();
    let folds = match opts.smooth_alpha {
        Some(alpha) => plan_folds(src, &files, opts, alpha)?,
        None => Folds::default(),
    };
    report.smoothed = folds.scale.len();
    report.unsmoothed = folds.unsmoothed.clone();
    // Quantized weight names, for the index files.
    let mut added: HashSet<String> = HashSet::new();
    for p in files.iter().filter(|p| is_weights(p)) {
        let out = tmp.join(rel(p));
        if let Some(d) = out.parent() {
            fs::create_dir_all(d).map_err(|e| QuantError::io(d, e))?;
        }
        progress.message(&rel(p).display().to_string());
        quantize_file(
            p,
            &out,
            &rel(p).display().to_string(),
            (opts, &folds),
            &mut report,
            &mut added,
            progress,
        )?;
    }
    let mut ignored: Vec<String> = report
        .tensors
        .iter()
        .filter(|t| t.kept.is_some() && t.shape.len() == 2 && t.name.ends_with(".weight"))
        .map(|t| t.name.trim_end_matches(".weight").to_string())
        .collect();
    ignored.sort();
    for p in files.iter().filter(|p| !is_weights(p)) {
        let r = rel(p);
        let out = tmp.join(&r);
        if let Some(d) = out.parent() {
            fs::create_dir_all(d).map_err(|e| QuantError::io(d, e))?;
        }
        let md = fs::symlink_metadata(p).map_err(|e| QuantError::io(p, e))?;
        if md.file_type().is_symlink() {
            let target = fs::read_link(p).map_err(|e| QuantError::io(p, e))?;
            std::os::unix::fs::symlink(&target, &out).map_err(|e| QuantError::io(&out, e))?;
            continue;
        }
        let fname = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if r == Path::new("config.json") {
            let cfg = rewrite_config(p, opts, &ignored, &report)?;
            write_synced(&out, cfg.as_bytes())?;
        } else if fname.ends_with(".safetensors.index.json") {
            let idx = rewrite_index(p, &added)?;
            write_synced(&out, idx.as_bytes())?;
        } else {
            fs::copy(p, &out).map_err(|e| QuantError::io(&out, e))?;
            File::open(&out)
                .and_then(|f| f.sync_all())
                .map_err(|e| QuantError::io(&out, e))?;
            report.copied += 1;
        }
    }
    if report.quantized() == 0 {
        progress.warn("no tensor was quantized (every weight matched a skip rule or is not 2-D float)");
    }
    Ok(report)
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path).map_err(|e| QuantError::io(path, e))?;
    f.write_all(bytes).map_err(|e| QuantError::io(path, e))?;
    f.sync_all().map_err(|e| QuantError::io(path, e))
}

/// Smoothing folded into the model: computed for all files before any is written, since a
/// layer and the op feeding it may sit in different shards.
#[derive(Default)]
struct Folds {
    /// Consumer `X.weight` -> `s` (its columns are multiplied).
    scale: HashMap<String, Vec<f32>>,
    /// Producer tensor -> `s` (its output channels are divided).
    divide: HashMap<String, Vec<f32>>,
    /// Tensor -> what the report says about it.
    note: HashMap<String, String>,
    unsmoothed: Vec<Unsmoothed>,
}

fn source_model_type(src: &Path) -> Option<String> {
    let text = fs::read_to_string(src.join("config.json")).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    v.get("model_type")?.as_str().map(str::to_string)
}

/// Decides, for every layer to be quantized, whether and where its smoothing folds, and
/// computes the shared factor of each group from its (pruned) weights.
fn plan_folds(src: &Path, files: &[PathBuf], opts: &QuantOptions, alpha: f32) -> Result<Folds> {
    let stats = opts
        .act_stats
        .as_ref()
        .ok_or_else(|| QuantError::invalid("smoothing needs activation statistics"))?;
    // name -> (file, span)
    let mut where_: HashMap<String, (PathBuf, TensorSpan)> = HashMap::new();
    for p in files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors") && !p.is_symlink())
    {
        let f = File::open(p).map_err(|e| QuantError::io(p, e))?;
        let (layout, _) = read_layout(&f, p)?;
        for t in layout.tensors {
            if let Some((other, _)) = where_.get(&t.name) {
                return Err(QuantError::invalid(format!(
                    "tensor {} is in both {} and {}",
                    t.name,
                    other.display(),
                    p.display()
                )));
            }
            where_.insert(t.name.clone(), (p.clone(), t));
        }
    }
    let shapes: HashMap<String, Vec<u64>> = where_.iter().map(|(n, (_, t))| (n.clone(), t.shape.clone())).collect();
    let quantized = |n: &str| {
        let t = &where_[n].1;
        skip_reason(n, t.dtype, &t.shape, &opts.skip).is_none()
    };
    let model_type = source_model_type(src);
    let (groups, reasons) = fold::plan(model_type.as_deref(), &shapes);
    let mut out = Folds::default();
    let refuse = |out: &mut Folds, consumers: &[String], why: String| {
        for c in consumers.iter().filter(|c| quantized(c)) {
            out.unsmoothed.push(Unsmoothed {
                name: c.clone(),
                reason: why.clone(),
            });
        }
    };
    for g in &groups {
        if let Some(kept) = g.consumers.iter().find(|c| !quantized(c)) {
            refuse(
                &mut out,
                &g.consumers,
                format!("shares its input with {kept}, which is kept unquantized"),
            );
            continue;
        }
        // Float producers are rewritten in their own dtype; a producer that is itself
        // quantized goes to I8 anyway.
        let bad = g.producer.tensors().find(|n| {
            let t = &where_[*n].1;
            !(matches!(t.dtype, Dtype::F32 | Dtype::BF16)
                || (matches!(g.producer, Producer::Rows { .. }) && quantized(n) && n.ends_with(".weight")))
        });
        if let Some(b) = bad {
            refuse(
                &mut out,
                &g.consumers,
                format!("{b} is {}, which dcfs does not rewrite", where_[b].1.dtype.name()),
            );
            continue;
        }
        let cols = where_[&g.consumers[0]].1.shape[1] as usize;
        let mut act = vec![0f32; cols];
        let mut wmax = vec![0f32; cols];
        for c in &g.consumers {
            let a = stats.get(c).ok_or_else(|| {
                QuantError::invalid(format!(
                    "no activation statistics for {c} (calibration has no `{}.input_max`); recalibrate or --skip it",
                    c.trim_end_matches(".weight")
                ))
            })?;
            if a.len() != cols {
                return Err(QuantError::invalid(format!(
                    "activation statistics for {c} have {} channels, the weight has {cols} inputs",
                    a.len()
                )));
            }
            act.iter_mut().zip(a).for_each(|(m, x)| *m = m.max(*x));
            let (p, t) = &where_[c];
            let f = File::open(p).map_err(|e| QuantError::io(p, e))?;
            let mut w = to_f32(t.dtype, &read_span(&f, p, t)?)?;
            if opts.prune_ratio > 0.0 {
                prune(&mut w, cols, Some(a), opts.prune_ratio);
            }
            column_max(&w, cols, &mut wmax);
        }
        let s = smooth_factors(&wmax, &act, alpha);
        let producer_w = g.producer.tensors().next().unwrap_or_default().to_string();
        for c in &g.consumers {
            out.scale.insert(c.clone(), s.clone());
            out.note
                .insert(c.clone(), format!("smoothed; 1/s folded into {producer_w}"));
        }
        for p in g.producer.tensors() {
            out.divide.insert(p.to_string(), s.clone());
            let prev = out.note.remove(p);
            let absorbs = format!("absorbs 1/s of {}", g.consumers.join(", "));
            out.note.insert(
                p.to_string(),
                match prev {
                    Some(x) => format!("{x}; {absorbs}"),
                    None => absorbs,
                },
            );
        }
    }
    let mut rest: Vec<_> = reasons.into_iter().filter(|(n, _)| quantized(n)).collect();
    rest.sort();
    out.unsmoothed
        .extend(rest.into_iter().map(|(name, reason)| Unsmoothed { name, reason }));
    out.unsmoothed.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// One output tensor: where its bytes come from.
enum Piece {
    Copy(usize),
    /// A kept float tensor whose channels absorb a smoothing factor.
    Divided(usize),
    Weight(usize),
    Scale(usize),
}

struct Planned {
    name: String,
    dtype: &'static str,
    shape: Vec<u64>,
    len: u64,
    piece: Piece,
}

/// The output of quantizing one tensor.
struct Done {
    q: Vec<u8>,
    scales: Vec<u8>,
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn quantize_file(
    src: &Path,
    dst: &Path,
    rel: &str,
    (opts, folds): (&QuantOptions, &Folds),
    report: &mut QuantReport,
    added: &mut HashSet<String>,
    progress: &dyn Progress,
) -> Result<()> {
    let f = File::open(src).map_err(|e| QuantError::io(src, e))?;
    let (layout, mut meta) = read_layout(&f, src)?;
    let smoothing = opts.smooth_alpha.is_some();
    let mut plan = Vec::new();
    let mut quant = vec![false; layout.tensors.len()];
    for (i, t) in layout.tensors.iter().enumerate() {
        let reason = skip_reason(&t.name, t.dtype, &t.shape, &opts.skip);
        if reason.is_some() {
            let divided = folds.divide.contains_key(&t.name);
            plan.push(Planned {
                name: t.name.clone(),
                dtype: t.dtype.safetensors_name().unwrap_or("U8"), // never GGML from a safetensors parse
                shape: t.shape.clone(),
                len: t.len,
                piece: if divided { Piece::Divided(i) } else { Piece::Copy(i) },
            });
            report.tensors.push(TensorAction {
                file: rel.into(),
                name: t.name.clone(),
                dtype: t.dtype.name(),
                shape: t.shape.clone(),
                kept: reason,
                pruned: 0,
                max_abs_err: 0.0,
                smoothing: folds.note.get(&t.name).cloned(),
            });
            continue;
        }
        let (rows, cols) = (t.shape[0], t.shape[1]);
        if let Some(stats) = &opts.act_stats {
            let needed = smoothing || opts.prune_ratio > 0.0;
            match stats.get(&t.name) {
                None if needed => {
                    return Err(QuantError::invalid(format!(
                        "{rel}: no activation statistics for {} (calibration has no `{}.input_max`); \
                         recalibrate or --skip it",
                        t.name,
                        t.name.trim_end_matches(".weight")
                    )))
                }
                Some(v) if v.len() as u64 != cols => {
                    return Err(QuantError::invalid(format!(
                        "{rel}: activation statistics for {} have {} channels, the weight has {cols} inputs",
                        t.name,
                        v.len()
                    )))
                }
                _ => {}
            }
        }
        quant[i] = true;
        added.insert(t.name.clone());
        plan.push(Planned {
            name: t.name.clone(),
            dtype: "I8",
            shape: vec![rows, cols],
            len: rows * cols,
            piece: Piece::Weight(i),
        });
        let scale_shape = match opts.granularity {
            Granularity::Tensor => vec![1],
            Granularity::Channel => vec![rows, 1],
        };
        let n = scale_shape[0];
        plan.push(Planned {
            name: format!("{}_scale", t.name),
            dtype: "F32",
            shape: scale_shape,
            len: 4 * n,
            piece: Piece::Scale(i),
        });
    }
    // Header.
    let mut header = serde_json::Map::new();
    meta.insert(
        "quantized_by".into(),
        json!(format!("dcfs {}", env!("CARGO_PKG_VERSION"))),
    );
    header.insert("__metadata__".into(), Value::Object(meta));
    let mut off = 0u64;
    for p in &plan {
        header.insert(
            p.name.clone(),
            json!({"dtype": p.dtype, "shape": p.shape, "data_offsets": [off, off + p.len]}),
        );
        off += p.len;
    }
    let mut hjson = serde_json::to_vec(&Value::Object(header)).expect("JSON of plain values");
    while hjson.len() % 8 != 0 {
        hjson.push(b' ');
    }
    let out = File::create(dst).map_err(|e| QuantError::io(dst, e))?;
    let mut w = BufWriter::with_capacity(1 << 20, out);
    let werr = |e| QuantError::io(dst, e);
    w.write_all(&(hjson.len() as u64).to_le_bytes()).map_err(werr)?;
    w.write_all(&hjson).map_err(werr)?;
    let mut done: Option<(usize, Done)> = None;
    for p in &plan {
        match p.piece {
            Piece::Copy(i) => {
                let t = &layout.tensors[i];
                w.write_all(&read_span(&f, src, t)?).map_err(werr)?;
                progress.advance(t.len);
            }
            Piece::Divided(i) => {
                let t = &layout.tensors[i];
                let s = &folds.divide[&t.name];
                let mut v = to_f32(t.dtype, &read_span(&f, src, t)?)?;
                if v.len() != s.len() * (v.len() / s.len().max(1)) || v.is_empty() {
                    return Err(QuantError::invalid(format!(
                        "{rel}: {}: shape does not match its fold",
                        t.name
                    )));
                }
                divide_channels(&mut v, s);
                let bytes: Vec<u8> = match t.dtype {
                    Dtype::BF16 => v.iter().flat_map(|&x| f32_to_bf16(x).to_le_bytes()).collect(),
                    _ => f32_bytes(&v),
                };
                debug_assert_eq!(bytes.len() as u64, t.len);
                w.write_all(&bytes).map_err(werr)?;
                progress.advance(t.len);
            }
            Piece::Weight(i) => {
                let t = &layout.tensors[i];
                let (d, action) = quantize_tensor(&f, src, rel, t, opts, folds)?;
                w.write_all(&d.q).map_err(werr)?;
                report.tensors.push(action);
                done = Some((i, d));
                progress.advance(t.len);
            }
            Piece::Scale(i) => {
                let Some((j, d)) = &done else {
                    unreachable!("scales follow their weight")
                };
                debug_assert_eq!(*j, i);
                w.write_all(&d.scales).map_err(werr)?;
            }
        }
    }
    let out = w.into_inner().map_err(|e| QuantError::io(dst, e.into_error()))?;
    out.sync_all().map_err(werr)?;
    report.bytes_in += f.metadata().map_err(|e| QuantError::io(src, e))?.len();
    report.bytes_out += 8 + hjson.len() as u64 + off;
    Ok(())
}

fn quantize_tensor(
    f: &File,
    src: &Path,
    rel: &str,
    t: &TensorSpan,
    opts: &QuantOptions,
    folds: &Folds,
) -> Result<(Done, TensorAction)> {
    let (rows, cols) = (t.shape[0] as usize, t.shape[1] as usize);
    let mut w = to_f32(t.dtype, &read_span(f, src, t)?)?;
    let act = opts
        .act_stats
        .as_ref()
        .and_then(|s| s.get(&t.name))
        .map(|v| v.as_slice());
    let pruned = if opts.prune_ratio > 0.0 {
        prune(&mut w, cols, act, opts.prune_ratio)
    } else {
        0
    };
    if let Some(s) = folds.scale.get(&t.name) {
        smooth(&mut w, cols, s);
    }
    if let Some(s) = folds.divide.get(&t.name) {
        if s.len() != rows {
            return Err(QuantError::invalid(format!(
                "{rel}: {}: rows do not match its fold",
                t.name
            )));
        }
        divide_channels(&mut w, s);
    }
    let qz = quantize(&w, rows, cols, opts.granularity)
        .map_err(|e| QuantError::invalid(format!("{rel}: {}: {e}", t.name)))?;
    let deq = dequantize(&qz, cols);
    let max_abs_err = w.iter().zip(&deq).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    let action = TensorAction {
        file: rel.into(),
        name: t.name.clone(),
        dtype: t.dtype.name(),
        shape: t.shape.clone(),
        kept: None,
        pruned,
        max_abs_err,
        smoothing: folds.note.get(&t.name).cloned(),
    };
    let done = Done {
        q: qz.q.iter().map(|&v| v as u8).collect(),
        scales: f32_bytes(&qz.scales),
    };
    Ok((done, action))
}

/// config.json plus a compressed-tensors `quantization_config` that the stock package
/// loads: format `naive-quantized` (weight I8 + weight_scale, nothing packed) set both at
/// the top and on the group. compressed-tensors (0.15.0 to 0.20.1 checked) picks a layer's
/// compressor from the group's `format` and otherwise infers `pack-quantized` (I32 words
/// under `weight_packed`) for weight-only INT8, which would not match these tensors.
/// `dequantize: true` is transformers' switch to dequantize while loading: without it the
/// modules stay INT8 until a hook on the model's first `__call__`, and sentence-transformers
/// (6.x) calls `model.forward` directly, which skips that hook and fails on I8 weights.
/// Loaders that do not know the key ignore it. The `dcfs` entry (ignored by loaders too)
/// records pruning and smoothing for people.
fn rewrite_config(path: &Path, opts: &QuantOptions, ignored: &[String], report: &QuantReport) -> Result<String> {
    let text = fs::read_to_string(path).map_err(|e| QuantError::io(path, e))?;
    let mut v: Value =
        serde_json::from_str(&text).map_err(|e| QuantError::invalid(format!("{}: not JSON: {e}", path.display())))?;
    let obj = v
        .as_object_mut()
        .ok_or_else(|| QuantError::invalid(format!("{}: not a JSON object", path.display())))?;
    let mut dcfs = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "prune_ratio": opts.prune_ratio,
        "prune_criterion": if opts.act_stats.is_some() { "|W|*max|X|" } else { "|W|" },
    });
    if let Some(a) = opts.smooth_alpha {
        dcfs["smooth_alpha"] = json!(a);
        dcfs["smoothed_layers"] = json!(report.smoothed);
        dcfs["unsmoothed_layers"] = json!(report
            .unsmoothed
            .iter()
            .map(|u| format!("{}: {}", u.name.trim_end_matches(".weight"), u.reason))
            .collect::<Vec<_>>());
    }
    obj.insert(
        "quantization_config".into(),
        json!({
            "quant_method": "compressed-tensors",
            "format": "naive-quantized",
            "quantization_status": "compressed",
            "dequantize": true,
            "config_groups": {
                "group_0": {
                    "targets": ["Linear"],
                    "weights": {
                        "num_bits": 8,
                        "type": "int",
                        "symmetric": true,
                        "strategy": opts.granularity.name(),
                        "dynamic": false,
                        "observer": "minmax"
                    },
                    "input_activations": null,
                    "output_activations": null,
                    "format": "naive-quantized"
                }
            },
            "ignore": ignored,
            "dcfs": dcfs,
        }),
    );
    let mut s = serde_json::to_string_pretty(&v).expect("JSON of plain values");
    s.push('\n');
    Ok(s)
}

/// Adds `X.weight_scale` next to each quantized `X.weight`.
fn rewrite_index(path: &Path, added: &HashSet<String>) -> Result<String> {
    let text = fs::read_to_string(path).map_err(|e| QuantError::io(path, e))?;
    let mut v: Value =
        serde_json::from_str(&text).map_err(|e| QuantError::invalid(format!("{}: not JSON: {e}", path.display())))?;
    let Some(map) = v.get_mut("weight_map").and_then(Value::as_object_mut) else {
        return Err(QuantError::invalid(format!("{}: no weight_map object", path.display())));
    };
    let mut extra = BTreeMap::new();
    for (name, file) in map.iter() {
        if added.contains(name) {
            extra.insert(format!("{name}_scale"), file.clone());
        }
    }
    map.extend(extra);
    let mut s = serde_json::to_string_pretty(&v).expect("JSON of plain values");
    s.push('\n');
    Ok(s)
}
