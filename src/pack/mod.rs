//! Trees: `pack` a model directory into a mirror of `.dcz` containers, and `unpack`,
//! `verify` and `inspect` such a mirror.
//!
//! Nothing is written in place: every container is written to a temporary name, synced
//! and renamed, so a killed pack never leaves a container that looks complete. A marker
//! file at the root records whether the whole pack finished.

pub mod adaptive;
mod dest;
mod digest;
mod inspect;
mod plan;
mod unpack;
mod verify;

pub use inspect::{inspect_path, inspect_remote, FileInspect, InspectReport, PlaneSummary, TensorInspect};
pub use plan::{plan_chunks, PlannedChunk};
pub use unpack::{unpack_remote, unpack_tree, unpack_tree_with, UnpackReport};
pub use verify::{stream_chunks, verify_remote, verify_tree, verify_tree_with, FileVerify, VerifyReport};

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::chunk::{self, ChunkCodec, EncodeOptions};
use crate::error::{Error, Result};
use crate::format::tree;
pub use crate::format::tree::{original_name, walk, Entry, MARKER, SUFFIX};
use crate::format::{chunk_hash, ChunkEntry, FileMeta, TensorEntry, Writer, FLAG_LENIENT_OPAQUE};
use crate::model::{self, FileKind, Layout, ModelError};
use dest::DestDir;

/// Default chunk size: see docs/FORMAT.md, "Chunk size" (reasoning, not a measured trade-off).
pub const DEFAULT_CHUNK_SIZE: u32 = 1 << 20;

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
    /// Pack the targets of symlinks that point outside the source as regular files
    /// (a Hugging Face `snapshots/<rev>` directory is all such links).
    pub dereference: bool,
    /// Write a pack even when the source holds no regular file.
    pub allow_empty: bool,
}

impl Default for PackOptions {
    fn default() -> Self {
        PackOptions {
            encode: EncodeOptions::default(),
            chunk_size: DEFAULT_CHUNK_SIZE,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            compress_fraction: 1.0,
            lenient: false,
            dereference: false,
            allow_empty: false,
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
    /// Symlinks whose target lies outside the source: kept as links (they dangle in the
    /// pack) unless `dereference`, when their targets were packed as files.
    pub outside_links: usize,
    /// Of those, the ones packed as the regular files they point at.
    pub dereferenced: usize,
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
            Error::NotAPack {
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
        return Err(Error::NotAPack {
            path: root.to_path_buf(),
            what: "this pack was interrupted before it finished; run `dcfs pack` again".into(),
        });
    }
    Ok(m)
}

/// Writes the marker under a temporary name and renames it into place, so a reader sees
/// the old marker or the new one, never half of one.
fn write_marker(root: &DestDir, m: &Marker, mode: u32) -> Result<()> {
    let text = serde_json::to_string_pretty(m).expect("marker serialises");
    let name = OsStr::new(MARKER);
    let (mut f, tmp) = root.create_temp(name, mode)?;
    let p = root.path().join(&tmp);
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io(&p, e))?;
    drop(f);
    root.rename(&tmp, name)?;
    root.sync()
}

/// Writes the manifest (the whole tree in one file, for readers that cannot list) by
/// tmp+rename, before the final marker. A tree with names that are not UTF-8 gets none,
/// with a warning: it still mounts and unpacks locally but cannot be pushed.
fn write_manifest(root: &DestDir, dst: &Path, mode: u32, progress: &dyn Progress) -> Result<()> {
    use crate::format::manifest::{Manifest, MANIFEST};
    let name = OsStr::new(MANIFEST);
    let m = match Manifest::build(dst) {
        Ok(m) => m,
        Err(Error::Invalid { path, what }) => {
            progress.warn(&format!("no manifest written: {}: {what}", path.display()));
            return match root.kind(name)? {
                Some(_) => root.remove(name),
                None => Ok(()),
            };
        }
        Err(e) => return Err(e),
    };
    let (mut f, tmp) = root.create_temp(name, mode)?;
    let p = root.path().join(&tmp);
    f.write_all(&m.to_json())
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io(&p, e))?;
    drop(f);
    root.rename(&tmp, name)
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

/// The worker pool of pack, unpack, verify and inspect: `threads` workers, at least one.
pub(crate) fn thread_pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .build()
        .expect("thread pool")
}

/// Packs the tree at `src` into `dst`.
pub fn pack_tree(src: &Path, dst: &Path, opts: &PackOptions, progress: &dyn Progress) -> Result<PackReport> {
    let t0 = Instant::now();
    let md = fs::metadata(src).map_err(|e| Error::io(src, e))?;
    if !md.is_dir() {
        return Err(Error::NotADirectory {
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
        return Err(Error::Overlap {
            path: dst.to_path_buf(),
            what: "destination and source must not contain each other".into(),
        });
    }
    let entries = walk(src)?;
    let outside = links_outside(src, &entries)?;
    if let Some((rel, target)) = outside.first() {
        let what = if opts.dereference {
            "their targets are packed as regular files (--dereference)"
        } else {
            "they are kept as links and dangle wherever the pack is used; --dereference packs their targets instead"
        };
        progress.warn(&format!(
            "{} symlink(s) point outside {} (e.g. {} -> {}): {what}",
            outside.len(),
            src.display(),
            rel.display(),
            target.display()
        ));
    }
    // Links followed under --dereference: only those to regular files become files.
    let deref: std::collections::HashMap<&Path, u64> = if opts.dereference {
        outside
            .iter()
            .filter_map(|(rel, _)| match fs::metadata(src.join(rel)) {
                Ok(md) if md.is_file() => Some((rel.as_path(), md.len())),
                _ => None,
            })
            .collect()
    } else {
        Default::default()
    };
    let n_files = entries.iter().filter(|e| matches!(e, Entry::File(..))).count() + deref.len();
    if n_files == 0 && !opts.allow_empty {
        return Err(Error::Invalid {
            path: src.to_path_buf(),
            what: format!(
                "holds no regular file to pack ({} symlink(s) outside it{}); nothing was written (--allow-empty writes an empty pack)",
                outside.len(),
                if outside.is_empty() || opts.dereference { "" } else { "; --dereference packs their targets" }
            ),
        });
    }
    fs::create_dir_all(dst).map_err(|e| Error::io(dst, e))?;
    let root = DestDir::root(dst)?;
    // A pack killed before its first marker was renamed into place leaves only that marker's
    // temporary (`.dcfs-pack.json.tmp-PID`): such a DST is ours and counts as empty.
    let mut occupied = false;
    for entry in fs::read_dir(dst).map_err(|e| Error::io(dst, e))? {
        let name = entry.map_err(|e| Error::io(dst, e))?.file_name();
        if !tree::is_temp_of(&name, OsStr::new(MARKER)) {
            occupied = true;
            break;
        }
    }
    if occupied && root.kind(OsStr::new(MARKER))? != Some(rustix::fs::FileType::RegularFile) {
        return Err(Error::Occupied {
            path: dst.to_path_buf(),
            what: "destination is a non-empty directory that is not a dcfs pack; refusing to write into it".into(),
        });
    }
    // The marker is as readable as the pack directory; a container as its source file.
    let dst_mode = fs::metadata(dst).map_err(|e| Error::io(dst, e))?.mode();
    let marker_mode = readable_as(dst_mode);
    let mut report = PackReport::default();
    let mut marker = Marker {
        format: "dcfs-pack".into(),
        complete: false,
        files: 0,
        original_bytes: 0,
        packed_bytes: 0,
        created_by: format!("dcfs {}", env!("CARGO_PKG_VERSION")),
    };
    write_marker(&root, &marker, marker_mode)?;
    progress.set_total(
        entries
            .iter()
            .map(|e| if let Entry::File(_, n) = e { *n } else { 0 })
            .sum::<u64>()
            + deref.values().sum::<u64>(),
    );
    report.outside_links = outside.len();
    report.dereferenced = deref.len();
    let pool = thread_pool(opts.threads);
    let mut dirs = vec![PathBuf::new()];
    root.remove_stale_temps()?;
    // The directory the last entry went into: entries come grouped by directory.
    let mut cur: Option<(PathBuf, DestDir)> = None;
    let mut parent_of = |rel: &Path| -> Result<DestDir> {
        let parent = rel.parent().unwrap_or(Path::new(""));
        match &cur {
            Some((p, d)) if p == parent => d.open_dir(Path::new("")),
            _ => {
                let d = root.open_dir(parent)?;
                cur = Some((parent.to_path_buf(), d.open_dir(Path::new(""))?));
                Ok(d)
            }
        }
    };
    for e in &entries {
        let name = e.rel().file_name().unwrap_or_default();
        match e {
            Entry::Dir(rel) => {
                let d = parent_of(rel)?.make_dir(name, true)?;
                d.remove_stale_temps()?;
                dirs.push(rel.clone());
                report.dirs += 1;
            }
            Entry::Symlink(rel) if !deref.contains_key(rel.as_path()) => {
                let s = src.join(rel);
                let target = fs::read_link(&s).map_err(|e| Error::io(&s, e))?;
                let parent = parent_of(rel)?;
                parent.symlink(&target, name)?;
                if dest::can_chown() {
                    let md = fs::symlink_metadata(&s).map_err(|e| Error::io(&s, e))?;
                    parent.chown_link(name, md.uid(), md.gid())?;
                }
                report.symlinks += 1;
            }
            Entry::Other(rel, what) => {
                progress.warn(&format!("skipping {}: {what}", rel.display()));
                report.skipped.push((rel.display().to_string(), (*what).into()));
            }
            Entry::File(rel, _) | Entry::Symlink(rel) => {
                // A regular file, or a link to one outside SRC under --dereference (opening
                // the link's path follows it, as asked).
                let s = src.join(rel);
                let parent = parent_of(rel)?;
                let cname = tree::container_name(name);
                progress.message(&rel.display().to_string());
                let mut fr = pack_file_into(&s, &parent, &cname, opts, &pool, progress)?;
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
        let md = fs::metadata(&s).map_err(|e| Error::io(&s, e))?;
        let d = root.open_dir(rel)?;
        d.sync()?;
        if !rel.as_os_str().is_empty() {
            if dest::can_chown() {
                d.chown_self(md.uid(), md.gid())?;
            }
            d.set_mode_mtime(md.mode() | 0o700, md.mtime(), md.mtime_nsec() as u32)?;
        }
    }
    write_manifest(&root, dst, marker_mode, progress)?;
    marker.complete = true;
    marker.files = report.files.len() as u64;
    marker.original_bytes = report.original_bytes;
    marker.packed_bytes = report.packed_bytes;
    write_marker(&root, &marker, marker_mode)?;
    report.seconds = t0.elapsed().as_secs_f64();
    Ok(report)
}

/// The symlinks among `entries` whose target lies outside `src` (absolute, or climbing
/// above the root with `..`), with their targets. Judged by the link's text alone: a
/// Hugging Face snapshot's `../../blobs/<hash>` stays inside when the whole repository is
/// packed, and leaves when only `snapshots/<rev>` is.
fn links_outside(src: &Path, entries: &[Entry]) -> Result<Vec<(PathBuf, PathBuf)>> {
    let mut out = Vec::new();
    for e in entries {
        let Entry::Symlink(rel) = e else { continue };
        let p = src.join(rel);
        let target = fs::read_link(&p).map_err(|e| Error::io(&p, e))?;
        if escapes(rel, &target) {
            out.push((rel.clone(), target));
        }
    }
    Ok(out)
}

/// Whether link `rel` (relative to the root) pointing at `target` leaves the root.
fn escapes(rel: &Path, target: &Path) -> bool {
    use std::path::Component;
    let mut depth = rel.parent().map_or(0, |p| p.components().count());
    for c in target.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir if depth > 0 => depth -= 1,
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return true,
        }
    }
    false
}

/// Permission bits for a file we write that holds `mode`'s data: read and write for its
/// owner, read for group and others only where `mode` grants it, so a container is never
/// more readable than its source.
fn readable_as(mode: u32) -> u32 {
    0o600 | (mode & 0o044)
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
                let by_content = !model::named_as_model(&name);
                if lenient || by_content {
                    let why = if by_content {
                        format!("looks like {} by its content, but", kind.name())
                    } else {
                        "--lenient:".into()
                    };
                    progress.warn(&format!("{}: {why} {e}; packed as opaque bytes", path.display()));
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

/// Packs the file at `src` into container `name` in `dir`: written under a temporary name,
/// synced, and renamed into place only when whole.
pub(crate) fn pack_file_into(
    src: &Path,
    dir: &DestDir,
    name: &OsStr,
    opts: &PackOptions,
    pool: &rayon::ThreadPool,
    progress: &dyn Progress,
) -> Result<FileReport> {
    let file = File::open(src).map_err(|e| Error::io(src, e))?;
    let md0 = file.metadata().map_err(|e| Error::io(src, e))?;
    let (out, tmp) = dir.create_temp(name, readable_as(md0.mode()))?;
    // As root, the container keeps the source's owner: the mount serves it, unpack restores it.
    if dest::can_chown() {
        if let Err(e) = std::os::unix::fs::fchown(&out, Some(md0.uid()), Some(md0.gid())) {
            let _ = dir.remove(&tmp);
            return Err(Error::io(dir.path().join(&tmp), e));
        }
    }
    let r = pack_file(&file, &md0, src, out, &dir.path().join(&tmp), opts, pool, progress);
    match r {
        Ok(fr) => {
            dir.rename(&tmp, name)?;
            Ok(fr)
        }
        Err(e) => {
            let _ = dir.remove(&tmp);
            Err(e)
        }
    }
}

/// Packs the open source `file` into `out`, a new empty file (named `dst` in errors).
#[allow(clippy::too_many_arguments)]
fn pack_file(
    file: &File,
    md0: &fs::Metadata,
    src: &Path,
    out: File,
    dst: &Path,
    opts: &PackOptions,
    pool: &rayon::ThreadPool,
    progress: &dyn Progress,
) -> Result<FileReport> {
    let size = md0.len();
    let (layout, flags) = read_layout(file, src, size, opts.lenient, progress)?;
    let plan = plan_chunks(size, &layout, opts.chunk_size, opts.compress_fraction);
    let mut writer = Writer::new(out, dst)?;
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
