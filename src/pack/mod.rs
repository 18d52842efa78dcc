//! Trees: `pack` a model directory into a mirror of `.dcz` containers, and `unpack`,
//! `verify` and `inspect` such a mirror.
//!
//! Nothing is written in place: every container is written to a temporary name, synced
//! and renamed, so a killed pack never leaves a container that looks complete. A marker
//! file at the root records whether the whole pack finished.

pub mod adaptive;
mod inspect;
mod plan;
mod unpack;
mod verify;

pub use inspect::{inspect_path, FileInspect, InspectReport, PlaneSummary, TensorInspect};
pub use plan::{plan_chunks, PlannedChunk};
pub use unpack::{unpack_tree, unpack_tree_with, UnpackReport};
pub use verify::{stream_chunks, verify_tree, verify_tree_with, FileVerify, VerifyReport};

use std::ffi::OsString;
use std::fs::{self, File};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::chunk::{self, ChunkCodec, EncodeOptions};
use crate::error::{Error, Result};
use crate::format::{chunk_hash, ChunkEntry, FileMeta, TensorEntry, Writer, FLAG_LENIENT_OPAQUE};
use crate::model::{self, FileKind, Layout, ModelError};

/// Suffix of a container file; `X` is served as `X.dcz` minus the suffix.
pub const SUFFIX: &str = ".dcz";
/// Marker at the root of a packed tree; hidden by the mount.
pub const MARKER: &str = ".dcfs-pack.json";
/// Default chunk size: see docs/FORMAT.md for the measured trade-off.
pub const DEFAULT_CHUNK_SIZE: u32 = 1 << 20;

/// The original's name for a container's file name (`X.dcz` gives `X`), byte for byte:
/// names need not be UTF-8. `None` for anything that is not a container name.
pub fn original_name(container: &std::ffi::OsStr) -> Option<OsString> {
    use std::os::unix::ffi::OsStrExt;
    let orig = container.as_bytes().strip_suffix(SUFFIX.as_bytes())?;
    (!orig.is_empty()).then(|| std::ffi::OsStr::from_bytes(orig).to_os_string())
}

/// Receives progress in bytes of original data. Implemented by the CLI's progress bar.
pub trait Progress: Send + Sync {
    fn set_total(&self, _bytes: u64) {}
    fn advance(&self, _bytes: u64) {}
    fn message(&self, _msg: &str) {}
    /// Something was skipped or tolerated; the CLI prints it above the bar.
    fn warn(&self, msg: &str) {
        tracing::warn!("{msg}");
    }
}

/// Progress that goes nowhere (library callers and tests).
pub struct NoProgress;
impl Progress for NoProgress {}

#[derive(Clone, Debug)]
pub struct PackOptions {
    pub encode: EncodeOptions,
    pub chunk_size: u32,
    pub threads: usize,
    /// Fraction of each tensor's chunks to code (DC's speed-adaptive partial compression).
    pub compress_fraction: f64,
    /// Pack a file with a malformed model header as opaque bytes instead of failing.
    pub lenient: bool,
}

impl Default for PackOptions {
    fn default() -> Self {
        PackOptions {
            encode: EncodeOptions::default(),
            chunk_size: DEFAULT_CHUNK_SIZE,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            compress_fraction: 1.0,
            lenient: false,
        }
    }
}

/// What packing one file produced.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FileReport {
    pub path: String,
    pub kind: String,
    pub size: u64,
    pub packed: u64,
    pub chunks: usize,
    /// Original bytes per chunk codec.
    pub bytes_raw: u64,
    pub bytes_rans: u64,
    pub bytes_zstd: u64,
    pub bytes_mixed: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct PackReport {
    pub files: Vec<FileReport>,
    pub dirs: usize,
    pub symlinks: usize,
    /// Entries not packed, with the reason.
    pub skipped: Vec<(String, String)>,
    pub original_bytes: u64,
    pub packed_bytes: u64,
    pub seconds: f64,
}

impl PackReport {
    pub fn ratio(&self) -> f64 {
        ratio(self.original_bytes, self.packed_bytes)
    }
}

pub fn ratio(orig: u64, packed: u64) -> f64 {
    if packed == 0 {
        1.0
    } else {
        orig as f64 / packed as f64
    }
}

/// The marker file's content.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Marker {
    pub format: String,
    pub complete: bool,
    pub files: u64,
    pub original_bytes: u64,
    pub packed_bytes: u64,
    pub created_by: String,
}

/// Reads and checks the marker of a packed tree: refuses plain directories and
/// interrupted packs with a clear message.
pub fn read_marker(root: &Path) -> Result<Marker> {
    let p = root.join(MARKER);
    let text = fs::read_to_string(&p).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::Invalid {
                path: root.to_path_buf(),
                what: format!("not a dcfs pack (no {MARKER}); create one with `dcfs pack SRC DST`"),
            }
        } else {
            Error::io(&p, e)
        }
    })?;
    let m: Marker = serde_json::from_str(&text).map_err(|e| Error::corrupt(&p, None, format!("marker: {e}")))?;
    if m.format != "dcfs-pack" {
        return Err(Error::corrupt(&p, None, "marker names another format"));
    }
    if !m.complete {
        return Err(Error::Invalid {
            path: root.to_path_buf(),
            what: "this pack was interrupted before it finished; run `dcfs pack` again".into(),
        });
    }
    Ok(m)
}

fn write_marker(root: &Path, m: &Marker) -> Result<()> {
    let p = root.join(MARKER);
    let tmp = root.join(format!("{MARKER}.tmp-{}", std::process::id()));
    let text = serde_json::to_string_pretty(m).expect("marker serialises");
    fs::write(&tmp, text).map_err(|e| Error::io(&tmp, e))?;
    File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(&tmp, e))?;
    fs::rename(&tmp, &p).map_err(|e| Error::io(&p, e))?;
    sync_dir(root)
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

/// One entry of a walked tree, relative to its root.
#[derive(Debug)]
pub enum Entry {
    Dir(PathBuf),
    File(PathBuf, u64),
    Symlink(PathBuf),
    Other(PathBuf, &'static str),
}

/// Walks `root` without following symlinks, parents before children, sorted by name.
pub fn walk(root: &Path) -> Result<Vec<Entry>> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let mut names: Vec<OsString> = fs::read_dir(&dir)
            .map_err(|e| Error::io(&dir, e))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<std::io::Result<_>>()
            .map_err(|e| Error::io(&dir, e))?;
        names.sort();
        let mut subdirs = Vec::new();
        for name in names {
            let r = rel.join(&name);
            let p = root.join(&r);
            let md = fs::symlink_metadata(&p).map_err(|e| Error::io(&p, e))?;
            let ft = md.file_type();
            if ft.is_dir() {
                out.push(Entry::Dir(r.clone()));
                subdirs.push(r);
            } else if ft.is_file() {
                out.push(Entry::File(r, md.len()));
            } else if ft.is_symlink() {
                out.push(Entry::Symlink(r));
            } else {
                use std::os::unix::fs::FileTypeExt;
                let what = if ft.is_fifo() {
                    "a FIFO"
                } else if ft.is_socket() {
                    "a socket"
                } else {
                    "a device node"
                };
                out.push(Entry::Other(r, what));
            }
        }
        stack.extend(subdirs.into_iter().rev());
    }
    Ok(out)
}

/// Copies mode and mtime of `md` onto `path` (a file or directory we created).
pub(crate) fn set_mode_mtime(path: &Path, mode: u32, mtime_s: i64, mtime_ns: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let t = if mtime_s >= 0 {
        std::time::UNIX_EPOCH + std::time::Duration::new(mtime_s as u64, mtime_ns.min(999_999_999))
    } else {
        std::time::UNIX_EPOCH - std::time::Duration::from_secs(mtime_s.unsigned_abs())
    };
    let f = File::open(path).map_err(|e| Error::io(path, e))?;
    f.set_times(fs::FileTimes::new().set_modified(t))
        .map_err(|e| Error::io(path, e))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o7777)).map_err(|e| Error::io(path, e))
}

/// Resolves `p` as the OS would once it exists: the longest existing ancestor is
/// canonicalised (symlinks, `..`), the rest appended.
fn resolve(p: &Path) -> PathBuf {
    let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let mut existing = abs.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(c) = existing.canonicalize() {
            return rest.iter().rev().fold(c, |acc, part| acc.join(part));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => return abs,
        }
    }
}

/// Whether either path contains the other; `b` need not exist yet, so this can be asked
/// before anything is created.
fn same_or_inside(a: &Path, b: &Path) -> bool {
    let (a, b) = (resolve(a), resolve(b));
    a.starts_with(&b) || b.starts_with(&a)
}

/// Packs the tree at `src` into `dst`.
pub fn pack_tree(src: &Path, dst: &Path, opts: &PackOptions, progress: &dyn Progress) -> Result<PackReport> {
    let t0 = Instant::now();
    let md = fs::metadata(src).map_err(|e| Error::io(src, e))?;
    if !md.is_dir() {
        return Err(Error::Invalid {
            path: src.to_path_buf(),
            what: "source must be a directory".into(),
        });
    }
    if !(0.0..=1.0).contains(&opts.compress_fraction) {
        return Err(Error::Invalid {
            path: src.to_path_buf(),
            what: format!("compress fraction {} is outside 0..=1", opts.compress_fraction),
        });
    }
    // Checked before anything is created: SRC is only ever read.
    if same_or_inside(src, dst) {
        return Err(Error::Invalid {
            path: dst.to_path_buf(),
            what: "destination and source must not contain each other".into(),
        });
    }
    fs::create_dir_all(dst).map_err(|e| Error::io(dst, e))?;
    let occupied = fs::read_dir(dst).map_err(|e| Error::io(dst, e))?.next().is_some();
    if occupied && !dst.join(MARKER).exists() {
        return Err(Error::Invalid {
            path: dst.to_path_buf(),
            what: "destination is a non-empty directory that is not a dcfs pack; refusing to write into it".into(),
        });
    }
    let mut marker = Marker {
        format: "dcfs-pack".into(),
        complete: false,
        files: 0,
        original_bytes: 0,
        packed_bytes: 0,
        created_by: format!("dcfs {}", env!("CARGO_PKG_VERSION")),
    };
    write_marker(dst, &marker)?;
    let entries = walk(src)?;
    progress.set_total(
        entries
            .iter()
            .map(|e| if let Entry::File(_, n) = e { *n } else { 0 })
            .sum(),
    );
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.threads.max(1))
        .build()
        .expect("thread pool");
    let mut report = PackReport::default();
    let mut dirs = vec![PathBuf::new()];
    clean_tmp(dst);
    for e in &entries {
        match e {
            Entry::Dir(rel) => {
                let d = dst.join(rel);
                fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
                clean_tmp(&d);
                dirs.push(rel.clone());
                report.dirs += 1;
            }
            Entry::Symlink(rel) => {
                let s = src.join(rel);
                let target = fs::read_link(&s).map_err(|e| Error::io(&s, e))?;
                let d = dst.join(rel);
                let _ = fs::remove_file(&d);
                std::os::unix::fs::symlink(&target, &d).map_err(|e| Error::io(&d, e))?;
                report.symlinks += 1;
            }
            Entry::Other(rel, what) => {
                progress.warn(&format!("skipping {}: {what}", rel.display()));
                report.skipped.push((rel.display().to_string(), (*what).into()));
            }
            Entry::File(rel, _) => {
                let s = src.join(rel);
                let mut name = rel.file_name().unwrap_or_default().to_os_string();
                name.push(SUFFIX);
                let d = dst.join(rel).with_file_name(&name);
                let mut tmp_name = OsString::from(".");
                tmp_name.push(&name);
                tmp_name.push(format!(".tmp-{}", std::process::id()));
                let tmp = d.with_file_name(tmp_name);
                progress.message(&rel.display().to_string());
                let r = pack_file(&s, &tmp, opts, &pool, progress);
                let mut fr = match r {
                    Ok(fr) => fr,
                    Err(e) => {
                        let _ = fs::remove_file(&tmp);
                        return Err(e);
                    }
                };
                fs::rename(&tmp, &d).map_err(|e| Error::io(&d, e))?;
                fr.path = rel.display().to_string();
                report.original_bytes += fr.size;
                report.packed_bytes += fr.packed;
                report.files.push(fr);
            }
        }
    }
    // Directory modes and times last (children first), so writing into them still works.
    for rel in dirs.iter().rev() {
        let s = src.join(rel);
        let d = dst.join(rel);
        let md = fs::metadata(&s).map_err(|e| Error::io(&s, e))?;
        sync_dir(&d)?;
        if !rel.as_os_str().is_empty() {
            set_mode_mtime(&d, md.mode() | 0o700, md.mtime(), md.mtime_nsec() as u32)?;
        }
    }
    marker.complete = true;
    marker.files = report.files.len() as u64;
    marker.original_bytes = report.original_bytes;
    marker.packed_bytes = report.packed_bytes;
    write_marker(dst, &marker)?;
    report.seconds = t0.elapsed().as_secs_f64();
    Ok(report)
}

/// Removes temporary containers a killed pack left behind in `dir`.
fn clean_tmp(dir: &Path) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let n = e.file_name();
        let n = n.to_string_lossy();
        if n.starts_with('.') && n.contains(".dcz.tmp-") || n.starts_with(MARKER) && n.contains(".tmp-") {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// Reads enough of the file's head to parse its model header.
pub(crate) fn read_layout(
    file: &File,
    path: &Path,
    size: u64,
    lenient: bool,
    progress: &dyn Progress,
) -> Result<(Layout, u8)> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut want = size.min(64 << 10);
    let mut prefix = vec![0u8; want as usize];
    file.read_exact_at(&mut prefix, 0).map_err(|e| Error::io(path, e))?;
    let kind = model::sniff(&name, &prefix);
    loop {
        match model::parse(kind, &prefix, size) {
            Ok(l) => return Ok((l, 0)),
            Err(ModelError::NeedMore { needed }) if needed > want && needed <= model::MAX_HEADER.min(size) => {
                want = needed;
                prefix = vec![0u8; want as usize];
                file.read_exact_at(&mut prefix, 0).map_err(|e| Error::io(path, e))?;
            }
            Err(e) => {
                let e = match e {
                    ModelError::NeedMore { needed } => ModelError::Malformed {
                        what: format!("{} header needs {needed} bytes, more than allowed", kind.name()),
                    },
                    e => e,
                };
                if lenient {
                    progress.warn(&format!("{}: {e}; packed as opaque bytes (--lenient)", path.display()));
                    let l = model::parse(FileKind::Opaque, &[], size).expect("opaque always parses");
                    return Ok((l, FLAG_LENIENT_OPAQUE));
                }
                return Err(Error::Model {
                    file: path.to_path_buf(),
                    source: e,
                });
            }
        }
    }
}

/// Packs one file into the container at `dst` (a temporary name chosen by the caller).
pub fn pack_file(
    src: &Path,
    dst: &Path,
    opts: &PackOptions,
    pool: &rayon::ThreadPool,
    progress: &dyn Progress,
) -> Result<FileReport> {
    let file = File::open(src).map_err(|e| Error::io(src, e))?;
    let md0 = file.metadata().map_err(|e| Error::io(src, e))?;
    let size = md0.len();
    let (layout, flags) = read_layout(&file, src, size, opts.lenient, progress)?;
    let plan = plan_chunks(size, &layout, opts.chunk_size, opts.compress_fraction);
    let mut writer = Writer::create(dst)?;
    let mut hasher = blake3::Hasher::new();
    let mut report = FileReport {
        kind: layout.kind.name().into(),
        size,
        chunks: plan.len(),
        ..Default::default()
    };
    let window = (opts.threads.max(1) * 4).max(4);
    for group in plan.chunks(window) {
        let mut bufs = Vec::with_capacity(group.len());
        for p in group {
            let mut b = vec![0u8; p.len as usize];
            file.read_exact_at(&mut b, p.offset).map_err(|e| {
                if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    Error::Changed {
                        file: src.to_path_buf(),
                        what: "it became shorter".into(),
                    }
                } else {
                    Error::io(src, e)
                }
            })?;
            hasher.update(&b);
            bufs.push(b);
        }
        let encoded: Vec<_> = pool.install(|| {
            group
                .par_iter()
                .zip(bufs.par_iter())
                .map(|(p, b)| {
                    (
                        chunk::encode(b, p.transforms(), p.compress, &opts.encode),
                        chunk_hash(b),
                    )
                })
                .collect()
        });
        for ((p, (enc, h)), b) in group.iter().zip(encoded).zip(&bufs) {
            let entry = ChunkEntry {
                orig_offset: p.offset,
                orig_len: p.len,
                payload_len: 0,
                payload_offset: 0,
                xxh3: h,
                codec: enc.codec,
                transform: enc.transform,
                dtype: p.dtype.map_or(0, |d| d.code()),
                tensor: p.tensor,
            };
            match enc.codec {
                ChunkCodec::Raw => report.bytes_raw += p.len as u64,
                ChunkCodec::Rans => report.bytes_rans += p.len as u64,
                ChunkCodec::Zstd => report.bytes_zstd += p.len as u64,
                ChunkCodec::Mixed => report.bytes_mixed += p.len as u64,
            }
            writer.push(entry, &enc.payload)?;
            progress.advance(b.len() as u64);
        }
    }
    let md1 = fs::metadata(src).map_err(|e| Error::io(src, e))?;
    if md1.len() != size || md1.mtime() != md0.mtime() || md1.mtime_nsec() != md0.mtime_nsec() {
        return Err(Error::Changed {
            file: src.to_path_buf(),
            what: "size or mtime changed".into(),
        });
    }
    let meta = FileMeta {
        size,
        mode: md0.mode(),
        mtime_s: md0.mtime(),
        mtime_ns: md0.mtime_nsec() as u32,
        blake3: *hasher.finalize().as_bytes(),
        kind: layout.kind,
        flags,
        compress_fraction_ppm: (opts.compress_fraction * 1e6).round() as u32,
        chunk_size: opts.chunk_size,
    };
    let tensors: Vec<TensorEntry> = layout
        .tensors
        .iter()
        .map(|t| TensorEntry {
            name: t.name.clone(),
            dtype: t.dtype.name(),
            shape: t.shape.clone(),
            start: t.start,
            len: t.len,
        })
        .collect();
    report.packed = writer.finish(&meta, &tensors)?;
    Ok(report)
}
