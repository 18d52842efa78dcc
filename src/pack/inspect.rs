//! `inspect`: per file and per tensor, what the pack did (or would do) and how close it
//! comes to the order-0 entropy bound of each byte plane.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use rayon::prelude::*;
use serde::Serialize;

use super::verify::{plan_windows, WINDOW_BYTES};
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
    let pool = super::thread_pool(opts.threads);
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

/// Inspects a remote pack: every container its manifest lists (each chunk is fetched
/// by a ranged GET).
pub fn inspect_remote(
    pack: &crate::remote::pack::RemotePack,
    threads: usize,
    progress: &dyn Progress,
) -> Result<InspectReport> {
    let pool = super::thread_pool(threads);
    let mut report = InspectReport {
        packed_input: true,
        ..Default::default()
    };
    for e in pack.files() {
        progress.message(&e.path);
        let fi = inspect_opened(pack.open_container(e)?, e.container(), &pool)?;
        report.size += fi.size;
        report.packed += fi.packed;
        report.files.push(fi);
    }
    Ok(report)
}

fn inspect_container(p: &Path, name: String, pool: &rayon::ThreadPool) -> Result<FileInspect> {
    inspect_opened(Container::open(p)?, name, pool)
}

fn inspect_opened(c: Container, name: String, pool: &rayon::ThreadPool) -> Result<FileInspect> {
    let dtypes: Vec<Option<Dtype>> = c.tensors.iter().map(|t| Dtype::from_name(&t.dtype)).collect();
    let mut sum = Summary::new(c.tensors.len());
    let lens = c.chunks.iter().map(|e| e.orig_len as u64);
    for_each_window(pool, lens, &mut sum, |i| {
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
    })?;
    let tensors = c
        .tensors
        .iter()
        .map(|t| (t.name.clone(), t.dtype.clone(), t.shape.clone()))
        .collect();
    Ok(sum.finish(name, c.meta.kind.name(), c.meta.size, c.packed_len(), tensors))
}

/// Computes the stats of every chunk, in parallel windows bounded in count and in decoded
/// bytes, and folds each window into `sum` in chunk order before the next is read: memory
/// holds one window of chunks, never all of them.
fn for_each_window(
    pool: &rayon::ThreadPool,
    lens: impl IntoIterator<Item = u64>,
    sum: &mut Summary,
    stat: impl Fn(usize) -> Result<ChunkStat> + Sync,
) -> Result<()> {
    for w in plan_windows(lens, pool.current_num_threads() * 4, WINDOW_BYTES) {
        let stats = pool.install(|| w.into_par_iter().map(&stat).collect::<Result<Vec<_>>>())?;
        for s in stats {
            sum.add(s);
        }
    }
    Ok(())
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
    let mut sum = Summary::new(layout.tensors.len());
    for_each_window(pool, plan.iter().map(|pc| pc.len as u64), &mut sum, |i| {
        let pc = &plan[i];
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
    })?;
    let packed = sum.payload;
    let tensors = layout
        .tensors
        .iter()
        .map(|t| (t.name.clone(), t.dtype.name(), t.shape.clone()))
        .collect();
    Ok(sum.finish(name, layout.kind.name(), size, packed, tensors))
}

/// Per tensor, what the report shows.
#[derive(Default)]
struct TensorAcc {
    bytes: u64,
    packed: u64,
    transform: Option<Transform>,
    planes: Vec<PlaneSummary>,
    codecs: BTreeMap<String, u64>,
}

/// Folds chunk stats, in chunk order, into the report. Symbol histograms (2 KiB per plane)
/// are kept only for the tensor being read: a tensor's chunks are consecutive (its bytes
/// are one range of the file and chunks tile the file in order), so when another tensor's
/// chunk arrives its histograms become entropy bounds and are dropped. Memory so follows
/// the report (tensors x planes), never the chunk count. Should a hostile index interleave
/// a tensor's chunks, each run's bound is added separately.
struct Summary {
    tensors: Vec<TensorAcc>,
    codecs: BTreeMap<String, u64>,
    chunks: usize,
    payload: u64,
    /// The tensor being read and its running plane histograms.
    open: Option<(usize, Vec<[u64; 256]>)>,
}

impl Summary {
    fn new(n_tensors: usize) -> Summary {
        Summary {
            tensors: (0..n_tensors).map(|_| TensorAcc::default()).collect(),
            codecs: BTreeMap::new(),
            chunks: 0,
            payload: 0,
            open: None,
        }
    }

    fn add(&mut self, s: ChunkStat) {
        self.chunks += 1;
        self.payload += s.payload;
        *self.codecs.entry(s.codec.name().to_string()).or_insert(0) += s.len;
        let t = s.tensor as usize;
        if s.tensor == NO_TENSOR || t >= self.tensors.len() {
            return;
        }
        if self.open.as_ref().is_some_and(|(o, _)| *o != t) {
            self.close();
        }
        let a = &mut self.tensors[t];
        a.bytes += s.len;
        a.packed += s.payload;
        *a.codecs.entry(s.codec.name().to_string()).or_insert(0) += s.len;
        if s.codec != ChunkCodec::Raw || a.transform.is_none() {
            a.transform = Some(s.transform);
        }
        if a.planes.len() < s.planes.len() {
            a.planes.resize(s.planes.len(), PlaneSummary::default());
        }
        let (_, hists) = self.open.get_or_insert_with(|| (t, Vec::new()));
        if hists.len() < s.planes.len() {
            hists.resize(s.planes.len(), [0; 256]);
        }
        for ((plane, hist), (l, st, h)) in a.planes.iter_mut().zip(hists.iter_mut()).zip(&s.planes) {
            plane.bytes += l;
            plane.stored += st;
            for (x, y) in hist.iter_mut().zip(h) {
                *x += y;
            }
        }
    }

    /// Turns the open tensor's histograms into entropy bounds.
    fn close(&mut self) {
        if let Some((t, hists)) = self.open.take() {
            for (plane, h) in self.tensors[t].planes.iter_mut().zip(&hists) {
                plane.bound += rans::entropy_bits(h) / 8.0;
            }
        }
    }

    fn finish(
        mut self,
        path: String,
        kind: &str,
        size: u64,
        packed: u64,
        tensors: Vec<(String, String, Vec<u64>)>,
    ) -> FileInspect {
        self.close();
        let mut out = FileInspect {
            path,
            kind: kind.to_string(),
            size,
            packed,
            ratio: super::ratio(size, packed),
            chunks: self.chunks,
            codecs: self.codecs,
            tensor_bytes: 0,
            tensor_packed: 0,
            tensor_bound: 0.0,
            tensors: Vec::new(),
        };
        for ((name, dtype, shape), a) in tensors.into_iter().zip(self.tensors) {
            let bound: f64 = a.planes.iter().map(|p| p.bound).sum();
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
                planes: a.planes,
                codecs: a.codecs,
            });
        }
        out
    }
}
