//! `inspect`: per file and per tensor, what the pack did (or would do) and how close it
//! comes to the order-0 entropy bound of each byte plane.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use rayon::prelude::*;
use serde::Serialize;

use super::{plan_chunks, read_layout, walk, Entry, PackOptions, Progress, MARKER, SUFFIX};
use crate::chunk::{self, ChunkCodec};
use crate::codec::rans;
use crate::error::{Error, Result};
use crate::format::tree::{classify, Packed};
use crate::format::{Container, NO_TENSOR};
use crate::model::Dtype;
use crate::transform::Transform;

#[derive(Clone, Debug, Default, Serialize)]
pub struct PlaneSummary {
    pub bytes: u64,
    pub stored: u64,
    /// Order-0 entropy bound of the whole plane (all chunks of the tensor), in bytes.
    pub bound: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct TensorInspect {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<u64>,
    pub bytes: u64,
    pub packed: u64,
    pub ratio: f64,
    /// `bytes / sum of plane bounds`: the best ratio an order-0 coder could reach.
    pub bound_ratio: f64,
    pub transform: String,
    pub planes: Vec<PlaneSummary>,
    /// Original bytes per chunk codec.
    pub codecs: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct FileInspect {
    pub path: String,
    pub kind: String,
    pub size: u64,
    /// Container size (packed) or payload sum (dry run, excluding index and footer).
    pub packed: u64,
    pub ratio: f64,
    pub chunks: usize,
    pub codecs: BTreeMap<String, u64>,
    /// Totals over tensor bytes only (header and opaque bytes excluded).
    pub tensor_bytes: u64,
    pub tensor_packed: u64,
    pub tensor_bound: f64,
    pub tensors: Vec<TensorInspect>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct InspectReport {
    /// True when the input was a pack; false for a dry run over an unpacked model.
    pub packed_input: bool,
    pub files: Vec<FileInspect>,
    pub size: u64,
    pub packed: u64,
}

/// What one chunk contributes.
struct ChunkStat {
    tensor: u32,
    len: u64,
    payload: u64,
    codec: ChunkCodec,
    transform: Transform,
    planes: Vec<(u64, u64, [u64; 256])>,
}

fn analyse(
    data: &[u8],
    codec: ChunkCodec,
    transform: Transform,
    payload: &[u8],
    candidates: &[Transform],
) -> Vec<(u64, u64, [u64; 256])> {
    let t = if codec == ChunkCodec::Raw {
        chunk::pick_transform(data, candidates)
    } else {
        transform
    };
    let planes = t.split(data);
    let stored: Vec<u64> = match (codec, chunk::parse(t, payload, data.len())) {
        (ChunkCodec::Raw, _) | (_, Err(_)) => planes.iter().map(|p| p.len() as u64).collect(),
        (_, Ok(f)) => f.planes.iter().map(|(_, body, _)| body.len() as u64).collect(),
    };
    planes
        .iter()
        .zip(stored)
        .map(|(p, s)| (p.len() as u64, s, rans::histogram(p)))
        .collect()
}

fn candidates_of(dtype: Option<Dtype>) -> &'static [Transform] {
    dtype.map_or(&[Transform::None], |d| d.transforms())
}

/// Inspects a packed tree, a `.dcz` file, an unpacked model directory or a model file.
pub fn inspect_path(path: &Path, opts: &PackOptions, progress: &dyn Progress) -> Result<InspectReport> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.threads.max(1))
        .build()
        .expect("thread pool");
    let mut files: Vec<(std::path::PathBuf, String)> = Vec::new();
    let packed_input;
    if path.is_dir() {
        packed_input = path.join(MARKER).exists();
        for e in walk(path)? {
            if !packed_input {
                if let Entry::File(rel, _) = &e {
                    files.push((path.join(rel), rel.to_string_lossy().into_owned()));
                }
                continue;
            }
            match classify(&e) {
                Packed::Container { rel, .. } => files.push((path.join(rel), rel.to_string_lossy().into_owned())),
                Packed::Foreign(rel, why) => progress.warn(&format!("{}: {why}; ignored", rel.display())),
                Packed::Dir(_) | Packed::Symlink(_) | Packed::Marker | Packed::Temporary(_) => {}
            }
        }
    } else {
        packed_input = path.to_string_lossy().ends_with(SUFFIX);
        files.push((path.to_path_buf(), path.display().to_string()));
    }
    let mut report = InspectReport {
        packed_input,
        ..Default::default()
    };
    for (p, name) in files {
        progress.message(&name);
        let fi = if packed_input {
            inspect_container(&p, name, &pool)?
        } else {
            inspect_plain(&p, name, opts, &pool, progress)?
        };
        report.size += fi.size;
        report.packed += fi.packed;
        report.files.push(fi);
    }
    Ok(report)
}

fn inspect_container(p: &Path, name: String, pool: &rayon::ThreadPool) -> Result<FileInspect> {
    let c = Container::open(p)?;
    let dtypes: Vec<Option<Dtype>> = c.tensors.iter().map(|t| Dtype::from_name(&t.dtype)).collect();
    let stats: Vec<ChunkStat> = pool.install(|| {
        (0..c.chunks.len())
            .into_par_iter()
            .map(|i| {
                let e = &c.chunks[i];
                let payload = c.read_payload(i)?;
                let mut data = vec![0u8; e.orig_len as usize];
                c.decode_payload(i, &payload, &mut data)?;
                let dt = dtypes.get(e.tensor as usize).copied().flatten();
                Ok(ChunkStat {
                    tensor: e.tensor,
                    len: e.orig_len as u64,
                    payload: e.payload_len as u64,
                    codec: e.codec,
                    transform: e.transform,
                    planes: analyse(&data, e.codec, e.transform, &payload, candidates_of(dt)),
                })
            })
            .collect::<Result<Vec<_>>>()
    })?;
    let tensors = c
        .tensors
        .iter()
        .map(|t| (t.name.clone(), t.dtype.clone(), t.shape.clone()))
        .collect();
    Ok(summarise(
        name,
        c.meta.kind.name(),
        c.meta.size,
        c.packed_len(),
        stats,
        tensors,
    ))
}

fn inspect_plain(
    p: &Path,
    name: String,
    opts: &PackOptions,
    pool: &rayon::ThreadPool,
    progress: &dyn Progress,
) -> Result<FileInspect> {
    let f = File::open(p).map_err(|e| Error::io(p, e))?;
    let size = f.metadata().map_err(|e| Error::io(p, e))?.len();
    let (layout, _) = read_layout(&f, p, size, opts.lenient, progress)?;
    let plan = plan_chunks(size, &layout, opts.chunk_size, opts.compress_fraction);
    let stats: Vec<ChunkStat> = pool.install(|| {
        plan.par_iter()
            .map(|pc| {
                let mut data = vec![0u8; pc.len as usize];
                f.read_exact_at(&mut data, pc.offset).map_err(|e| Error::io(p, e))?;
                let enc = chunk::encode(&data, pc.transforms(), pc.compress, &opts.encode);
                Ok(ChunkStat {
                    tensor: pc.tensor,
                    len: pc.len as u64,
                    payload: enc.payload.len() as u64,
                    codec: enc.codec,
                    transform: enc.transform,
                    planes: analyse(&data, enc.codec, enc.transform, &enc.payload, pc.transforms()),
                })
            })
            .collect::<Result<Vec<_>>>()
    })?;
    let packed = stats.iter().map(|s| s.payload).sum();
    let tensors = layout
        .tensors
        .iter()
        .map(|t| (t.name.clone(), t.dtype.name(), t.shape.clone()))
        .collect();
    Ok(summarise(name, layout.kind.name(), size, packed, stats, tensors))
}

fn summarise(
    path: String,
    kind: &str,
    size: u64,
    packed: u64,
    stats: Vec<ChunkStat>,
    tensors: Vec<(String, String, Vec<u64>)>,
) -> FileInspect {
    struct Acc {
        bytes: u64,
        packed: u64,
        transform: Option<Transform>,
        planes: Vec<(u64, u64, [u64; 256])>,
        codecs: BTreeMap<String, u64>,
    }
    let mut accs: Vec<Acc> = tensors
        .iter()
        .map(|_| Acc {
            bytes: 0,
            packed: 0,
            transform: None,
            planes: Vec::new(),
            codecs: BTreeMap::new(),
        })
        .collect();
    let mut codecs = BTreeMap::new();
    for s in &stats {
        *codecs.entry(s.codec.name().to_string()).or_insert(0) += s.len;
        if s.tensor == NO_TENSOR {
            continue;
        }
        let Some(a) = accs.get_mut(s.tensor as usize) else {
            continue;
        };
        a.bytes += s.len;
        a.packed += s.payload;
        *a.codecs.entry(s.codec.name().to_string()).or_insert(0) += s.len;
        if s.codec != ChunkCodec::Raw || a.transform.is_none() {
            a.transform = Some(s.transform);
        }
        if a.planes.len() < s.planes.len() {
            a.planes.resize(s.planes.len(), (0, 0, [0; 256]));
        }
        for (acc, (l, st, h)) in a.planes.iter_mut().zip(&s.planes) {
            acc.0 += l;
            acc.1 += st;
            for (x, y) in acc.2.iter_mut().zip(h) {
                *x += y;
            }
        }
    }
    let mut out = FileInspect {
        path,
        kind: kind.to_string(),
        size,
        packed,
        ratio: super::ratio(size, packed),
        chunks: stats.len(),
        codecs,
        tensor_bytes: 0,
        tensor_packed: 0,
        tensor_bound: 0.0,
        tensors: Vec::new(),
    };
    for ((name, dtype, shape), a) in tensors.into_iter().zip(accs) {
        let planes: Vec<PlaneSummary> = a
            .planes
            .iter()
            .map(|(l, st, h)| PlaneSummary {
                bytes: *l,
                stored: *st,
                bound: rans::entropy_bits(h) / 8.0,
            })
            .collect();
        let bound: f64 = planes.iter().map(|p| p.bound).sum();
        out.tensor_bytes += a.bytes;
        out.tensor_packed += a.packed;
        out.tensor_bound += bound;
        out.tensors.push(TensorInspect {
            name,
            dtype,
            shape,
            bytes: a.bytes,
            packed: a.packed,
            ratio: super::ratio(a.bytes, a.packed),
            bound_ratio: if bound > 0.0 { a.bytes as f64 / bound } else { 0.0 },
            transform: a.transform.map_or("none", |t| t.name()).to_string(),
            planes,
            codecs: a.codecs,
        });
    }
    out
}
