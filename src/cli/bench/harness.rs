//! Measurement helpers behind `dcfs bench`: sequential and random reads (read() or mmap),
//! cache dropping, and the per-codec table on real model files. Depends on `codec`,
//! `chunk`, `model` and `pack::plan_chunks`; nothing depends on it. Timings only: nothing
//! here decides pass or fail.

use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

use dcfs::chunk::{self, ChunkCodec, CodecChoice, EncodeOptions};
use dcfs::codec::rans;
use dcfs::error::{Error, Result};
use dcfs::model::{self, FileKind};
use dcfs::pack::plan_chunks;

/// Median, min and max of a sample.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

pub fn summarize(v: &[f64]) -> Summary {
    if v.is_empty() {
        return Summary::default();
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    let median = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    };
    Summary {
        median,
        min: s[0],
        max: s[n - 1],
    }
}

/// The `q` quantile (0..=1) of a sample, nearest rank.
pub fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let k = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1;
    s[k]
}

/// `sync; echo 3 > /proc/sys/vm/drop_caches` (needs root).
pub fn drop_caches() -> Result<()> {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    let p = Path::new("/proc/sys/vm/drop_caches");
    fs::write(p, b"3\n").map_err(|e| Error::io(p, e))
}

/// Every regular file under the given paths (files as given, directories walked, sorted).
pub fn collect_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        let md = fs::metadata(p).map_err(|e| Error::io(p, e))?;
        if md.is_dir() {
            let mut names: Vec<PathBuf> = fs::read_dir(p)
                .map_err(|e| Error::io(p, e))?
                .map(|e| e.map(|e| e.path()))
                .collect::<std::io::Result<_>>()
                .map_err(|e| Error::io(p, e))?;
            names.sort();
            out.extend(collect_files(&names)?);
        } else if md.is_file() {
            out.push(p.clone());
        }
    }
    Ok(out)
}

const PAGE: usize = 4096;

/// Reads every byte of `files` with read() in `block`-sized calls, or maps each file and
/// touches one byte of every page. Returns the bytes covered.
pub fn read_all(files: &[PathBuf], block: usize, mmap: bool) -> Result<u64> {
    let mut total = 0u64;
    let mut acc = 0u8;
    let mut buf = vec![0u8; block.max(1)];
    for f in files {
        let mut file = File::open(f).map_err(|e| Error::io(f, e))?;
        if mmap {
            let len = file.metadata().map_err(|e| Error::io(f, e))?.len();
            if len == 0 {
                continue;
            }
            // SAFETY: the map is read-only and only read through volatile byte loads; the
            // benchmarked files are not truncated while we read them (a truncation would
            // raise SIGBUS, not undefined behaviour in this process's memory).
            let m = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(f, e))?;
            let p = m.as_ptr();
            let mut off = 0usize;
            while off < m.len() {
                // SAFETY: off < m.len(), so the byte lies inside the live mapping.
                acc = acc.wrapping_add(unsafe { std::ptr::read_volatile(p.add(off)) });
                off += PAGE;
            }
            total += len;
        } else {
            loop {
                let n = file.read(&mut buf).map_err(|e| Error::io(f, e))?;
                if n == 0 {
                    break;
                }
                acc = acc.wrapping_add(buf[n - 1]);
                total += n as u64;
            }
        }
    }
    std::hint::black_box(acc);
    Ok(total)
}

/// One sequential-read run.
#[derive(Clone, Debug, Serialize)]
pub struct ReadRun {
    pub bytes: u64,
    pub seconds: f64,
    pub mb_per_s: f64,
}

pub fn read_runs(files: &[PathBuf], block: usize, mmap: bool, drop: bool, runs: usize) -> Result<Vec<ReadRun>> {
    let mut out = Vec::new();
    for _ in 0..runs.max(1) {
        if drop {
            drop_caches()?;
        }
        let t = Instant::now();
        let bytes = read_all(files, block, mmap)?;
        let seconds = t.elapsed().as_secs_f64();
        out.push(ReadRun {
            bytes,
            seconds,
            mb_per_s: bytes as f64 / 1e6 / seconds.max(1e-9),
        });
    }
    Ok(out)
}

/// Latencies (microseconds) of `count` reads of `size` bytes at random `size`-aligned
/// offsets of `file` (pread, or a touch of each page of the range through an mmap).
pub fn random_reads(file: &Path, count: usize, size: usize, mmap: bool, seed: u64) -> Result<Vec<f64>> {
    let f = File::open(file).map_err(|e| Error::io(file, e))?;
    let len = f.metadata().map_err(|e| Error::io(file, e))?.len() as usize;
    let size = size.max(1);
    if len < size {
        return Err(Error::Invalid {
            path: file.to_path_buf(),
            what: "smaller than one read".into(),
        });
    }
    let slots = (len / size) as u64;
    let mut s = seed | 1;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let mut lat = Vec::with_capacity(count);
    let mut acc = 0u8;
    let map = if mmap {
        // SAFETY: read-only map, read with volatile byte loads only (see `read_all`).
        Some(unsafe { memmap2::Mmap::map(&f) }.map_err(|e| Error::io(file, e))?)
    } else {
        None
    };
    let mut buf = vec![0u8; size];
    for _ in 0..count {
        let off = (next() % slots) as usize * size;
        let t = Instant::now();
        match &map {
            Some(m) => {
                let mut o = off;
                while o < off + size {
                    // SAFETY: o < off + size <= len == m.len().
                    acc = acc.wrapping_add(unsafe { std::ptr::read_volatile(m.as_ptr().add(o)) });
                    o += PAGE;
                }
            }
            None => {
                f.read_exact_at(&mut buf, off as u64).map_err(|e| Error::io(file, e))?;
                acc = acc.wrapping_add(buf[0]);
            }
        }
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    std::hint::black_box(acc);
    Ok(lat)
}

/// Tensor class from its name (safetensors/BERT and GGUF/llama naming).
pub fn tensor_class(name: &str) -> &'static str {
    let n = name.to_ascii_lowercase();
    let has = |s: &str| n.contains(s);
    if has("norm") {
        "norm"
    } else if has("scale") {
        "scales"
    } else if n.ends_with("bias") {
        "bias"
    } else if has("embd") || has("embeddings") {
        "embeddings"
    } else if has("attn_q") || has("query") || has("q_proj") {
        "attn_q"
    } else if has("attn_k") || has(".key") || has("k_proj") {
        "attn_k"
    } else if has("attn_v") || has("value") || has("v_proj") {
        "attn_v"
    } else if has("attn_output") || has("attention.output") || has("o_proj") {
        "attn_o"
    } else if has("ffn_up") || has("ffn_gate") || has("intermediate") || has("up_proj") || has("gate_proj") {
        "mlp_up"
    } else if has("ffn_down") || has("output.dense") || has("down_proj") {
        "mlp_down"
    } else {
        "other"
    }
}

/// One row of the codec table: a codec on one class of bytes of one file.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CodecRow {
    pub file: String,
    /// Tensor class, `tensors` (all tensor bytes) or `file` (the whole file).
    pub class: String,
    pub codec: String,
    pub bytes: u64,
    pub stored: u64,
    pub ratio: f64,
    /// Single thread, MB/s of original bytes; 0 where not applicable (the bound).
    pub encode_mb_s: f64,
    pub decode_mb_s: f64,
}

/// Order-0 bound of one plane index over all tensor chunks of a file.
#[derive(Clone, Debug, Serialize)]
pub struct PlaneBound {
    pub file: String,
    pub transform: String,
    pub plane: usize,
    pub bytes: u64,
    pub bits_per_byte: f64,
}

/// Multi-threaded decode of all of a file's chunks (dcfs auto).
#[derive(Clone, Debug, Serialize)]
pub struct ThreadRow {
    pub file: String,
    pub threads: usize,
    pub decode_mb_s: Summary,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct CodecReport {
    pub rows: Vec<CodecRow>,
    pub planes: Vec<PlaneBound>,
    pub threads: Vec<ThreadRow>,
}

#[derive(Default, Clone, Copy)]
struct Acc {
    bytes: u64,
    stored: u64,
    enc: f64,
    dec: f64,
}

impl Acc {
    fn add(&mut self, bytes: usize, stored: usize, enc: f64, dec: f64) {
        self.bytes += bytes as u64;
        self.stored += stored as u64;
        self.enc += enc;
        self.dec += dec;
    }
    fn row(&self, file: &str, class: &str, codec: &str) -> CodecRow {
        let mbs = |s: f64| if s > 0.0 { self.bytes as f64 / 1e6 / s } else { 0.0 };
        CodecRow {
            file: file.into(),
            class: class.into(),
            codec: codec.into(),
            bytes: self.bytes,
            stored: self.stored,
            ratio: self.bytes as f64 / self.stored.max(1) as f64,
            encode_mb_s: mbs(self.enc),
            decode_mb_s: mbs(self.dec),
        }
    }
}

fn secs<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let t = Instant::now();
    let r = f();
    (r, t.elapsed().as_secs_f64())
}

/// Best (smallest) of `reps` timings of `f`, to keep a noisy shared machine's stalls out.
fn best_of(reps: usize, mut f: impl FnMut()) -> f64 {
    (0..reps.max(1)).map(|_| secs(&mut f).1).fold(f64::INFINITY, f64::min)
}

const CODECS: [&str; 5] = ["dcfs-rans", "dcfs-zstd", "dcfs-auto", "zstd-3", "lz4"];

/// Options of [`codec_table`].
#[derive(Clone, Debug)]
pub struct CodecBenchOptions {
    pub chunk_size: u32,
    /// Decode passes per measurement (the fastest counts).
    pub reps: usize,
    /// Also zstd -19 on the whole file (slow: a few MB/s).
    pub zstd19: bool,
    pub threads: Vec<usize>,
}

/// The codec table of one model file (safetensors or GGUF).
pub fn codec_table(path: &Path, label: &str, o: &CodecBenchOptions) -> Result<CodecReport> {
    let data = fs::read(path).map_err(|e| Error::io(path, e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let kind = model::sniff(&name, &data[..data.len().min(8)]);
    if kind == FileKind::Opaque {
        return Err(Error::Invalid {
            path: path.to_path_buf(),
            what: "not a safetensors or GGUF file".into(),
        });
    }
    let layout = model::parse(kind, &data, data.len() as u64).map_err(|e| Error::Invalid {
        path: path.to_path_buf(),
        what: e.to_string(),
    })?;
    let plan = plan_chunks(data.len() as u64, &layout, o.chunk_size, 1.0);
    let mut rep = CodecReport::default();
    let mut classes: Vec<(&'static str, [Acc; CODECS.len()], Acc)> = Vec::new();
    let mut plane_acc: Vec<(String, usize, u64, f64)> = Vec::new();
    let mut auto_chunks = Vec::new();
    for p in &plan {
        let bytes = &data[p.offset as usize..p.offset as usize + p.len as usize];
        let is_tensor = p.dtype.is_some();
        let class = if is_tensor {
            tensor_class(&layout.tensors[p.tensor as usize].name)
        } else {
            "header"
        };
        let ci = match classes.iter().position(|c| c.0 == class) {
            Some(i) => i,
            None => {
                classes.push((class, [Acc::default(); CODECS.len()], Acc::default()));
                classes.len() - 1
            }
        };
        let mut out = vec![0u8; bytes.len()];
        for (k, choice) in [CodecChoice::Rans, CodecChoice::Zstd, CodecChoice::Auto]
            .into_iter()
            .enumerate()
        {
            let opt = EncodeOptions {
                codec: choice,
                ..Default::default()
            };
            let (e, te) = secs(|| chunk::encode(bytes, p.transforms(), true, &opt));
            let td = if e.codec == ChunkCodec::Raw {
                best_of(o.reps, || out.copy_from_slice(&e.payload))
            } else {
                best_of(o.reps, || {
                    chunk::decode(e.codec, e.transform, &e.payload, &mut out).unwrap()
                })
            };
            debug_assert_eq!(out, bytes);
            classes[ci].1[k].add(bytes.len(), e.payload.len(), te, td);
            if choice == CodecChoice::Auto {
                auto_chunks.push(e);
            }
        }
        let (z, te) = secs(|| zstd::bulk::compress(bytes, 3).unwrap());
        let td = best_of(o.reps, || {
            zstd::bulk::decompress_to_buffer(&z, &mut out).unwrap();
        });
        classes[ci].1[3].add(bytes.len(), z.len(), te, td);
        let (l, te) = secs(|| lz4_flex::block::compress(bytes));
        let td = best_of(o.reps, || {
            lz4_flex::block::decompress_into(&l, &mut out).unwrap();
        });
        classes[ci].1[4].add(bytes.len(), l.len(), te, td);
        // Order-0 bound of the planes of the transform auto would pick.
        let t = chunk::pick_transform(bytes, p.transforms());
        let mut bits = 0.0;
        for (pi, plane) in t.split(bytes).iter().enumerate() {
            let h = rans::entropy_bits(&rans::histogram(plane));
            bits += h;
            if is_tensor {
                match plane_acc.iter_mut().find(|a| a.0 == t.name() && a.1 == pi) {
                    Some(a) => {
                        a.2 += plane.len() as u64;
                        a.3 += h;
                    }
                    None => plane_acc.push((t.name().to_string(), pi, plane.len() as u64, h)),
                }
            }
        }
        classes[ci].2.add(bytes.len(), (bits / 8.0).ceil() as usize, 0.0, 0.0);
    }
    // Per class, then all tensor bytes.
    let mut all = [Acc::default(); CODECS.len()];
    let mut all_bound = Acc::default();
    for (class, accs, bound) in &classes {
        for (k, a) in accs.iter().enumerate() {
            rep.rows.push(a.row(label, class, CODECS[k]));
            if *class != "header" {
                all[k].add(a.bytes as usize, a.stored as usize, a.enc, a.dec);
            }
        }
        rep.rows.push(bound.row(label, class, "order0-bound"));
        if *class != "header" {
            all_bound.add(bound.bytes as usize, bound.stored as usize, 0.0, 0.0);
        }
    }
    for (k, a) in all.iter().enumerate() {
        rep.rows.push(a.row(label, "tensors", CODECS[k]));
    }
    rep.rows.push(all_bound.row(label, "tensors", "order0-bound"));
    // The whole file, as one stream, for the general-purpose codecs; dcfs as packed.
    let mut whole = |codec: &str, stored: usize, enc: f64, dec: f64| {
        let mut a = Acc::default();
        a.add(data.len(), stored, enc, dec);
        rep.rows.push(a.row(label, "file", codec));
    };
    let mut out = vec![0u8; data.len()];
    let mut levels = vec![3];
    if o.zstd19 {
        levels.push(19);
    }
    for level in levels {
        let (z, te) = secs(|| zstd::bulk::compress(&data, level).unwrap());
        let td = best_of(o.reps, || {
            zstd::bulk::decompress_to_buffer(&z, &mut out).unwrap();
        });
        assert_eq!(out, data, "zstd round trip");
        whole(&format!("zstd-{level}"), z.len(), te, td);
    }
    let (l, te) = secs(|| lz4_flex::block::compress(&data));
    let td = best_of(o.reps, || {
        lz4_flex::block::decompress_into(&l, &mut out).unwrap();
    });
    assert_eq!(out, data, "lz4 round trip");
    whole("lz4", l.len(), te, td);
    let auto_total = classes.iter().map(|c| c.1[2]).fold(Acc::default(), |mut s, a| {
        s.add(a.bytes as usize, a.stored as usize, a.enc, a.dec);
        s
    });
    whole("dcfs-auto", auto_total.stored as usize, auto_total.enc, auto_total.dec);
    for (t, pi, bytes, bits) in plane_acc {
        rep.planes.push(PlaneBound {
            file: label.into(),
            transform: t,
            plane: pi,
            bytes,
            bits_per_byte: bits / bytes.max(1) as f64,
        });
    }
    // Multi-threaded decode of the whole file's auto chunks.
    let lens: Vec<usize> = plan.iter().map(|p| p.len as usize).collect();
    for &n in &o.threads {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(n.max(1))
            .build()
            .map_err(|e| Error::Invalid {
                path: path.to_path_buf(),
                what: format!("thread pool: {e}"),
            })?;
        let mut bufs: Vec<Vec<u8>> = lens.iter().map(|&l| vec![0u8; l]).collect();
        let mut v = Vec::new();
        for _ in 0..o.reps.max(3) {
            let (_, s) = secs(|| {
                pool.install(|| {
                    auto_chunks.par_iter().zip(bufs.par_iter_mut()).for_each(|(e, b)| {
                        if e.codec == ChunkCodec::Raw {
                            b.copy_from_slice(&e.payload);
                        } else {
                            chunk::decode(e.codec, e.transform, &e.payload, b).unwrap();
                        }
                    })
                })
            });
            v.push(data.len() as f64 / 1e6 / s);
        }
        rep.threads.push(ThreadRow {
            file: label.into(),
            threads: n,
            decode_mb_s: summarize(&v),
        });
    }
    Ok(rep)
}
