//! `unpack`: write the originals back, byte-identical, with mode and mtime. A file is
//! only renamed into place after its every chunk and its whole-file digest verified.

use std::fs;
use std::io::{BufWriter, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use super::dest::{can_chown, set_file_mode_mtime, DestDir};
use super::verify::{stream_chunks, window_bufs};
use super::{read_marker, same_or_inside, walk, Progress};
use crate::error::{Error, Result};
use crate::format::tree::{classify, Packed};
use crate::format::Container;
use crate::gpu;
use crate::store::pool::BufPool;

#[derive(Clone, Debug, Default, Serialize)]
pub struct UnpackReport {
    pub files: usize,
    pub dirs: usize,
    pub symlinks: usize,
    pub bytes: u64,
    pub seconds: f64,
}

pub fn unpack_tree(packed: &Path, dst: &Path, threads: usize, progress: &dyn Progress) -> Result<UnpackReport> {
    unpack_tree_with(packed, dst, threads, None, progress)
}

/// [`unpack_tree`], decoding on `gpu` when given.
pub fn unpack_tree_with(
    packed: &Path,
    dst: &Path,
    threads: usize,
    gpu: Option<&gpu::Decoder>,
    progress: &dyn Progress,
) -> Result<UnpackReport> {
    let t0 = Instant::now();
    read_marker(packed)?;
    if same_or_inside(packed, dst) {
        return Err(Error::Overlap {
            path: dst.to_path_buf(),
            what: "destination and pack must not contain each other".into(),
        });
    }
    fs::create_dir_all(dst).map_err(|e| Error::io(dst, e))?;
    let root = DestDir::root(dst)?;
    let pool = super::thread_pool(threads);
    let bufs = window_bufs();
    let decoding = Decoding {
        pool: &pool,
        gpu,
        bufs: &bufs,
    };
    let entries = walk(packed)?;
    let mut containers = Vec::new();
    let mut report = UnpackReport::default();
    let mut dirs: Vec<PathBuf> = Vec::new();
    for e in &entries {
        let parent = e.rel().parent().unwrap_or(Path::new(""));
        let name = e.rel().file_name().unwrap_or_default();
        match classify(e) {
            Packed::Dir(rel) => {
                root.open_dir(parent)?.make_dir(name, false)?;
                dirs.push(rel.to_path_buf());
                report.dirs += 1;
            }
            Packed::Symlink(rel) => {
                let s = packed.join(rel);
                let target = fs::read_link(&s).map_err(|e| Error::io(&s, e))?;
                let d = root.open_dir(parent)?;
                d.symlink(&target, name)?;
                if can_chown() {
                    let md = fs::symlink_metadata(&s).map_err(|e| Error::io(&s, e))?;
                    d.chown_link(name, md.uid(), md.gid())?;
                }
                report.symlinks += 1;
            }
            Packed::Container { rel, original, .. } => containers.push((packed.join(rel), original)),
            Packed::Marker | Packed::Temporary(_) => {}
            Packed::Foreign(rel, why) => progress.warn(&format!("{}: {why}; not unpacked", rel.display())),
        }
    }
    // Containers are opened one at a time (a pack may hold more files than this process
    // may open at once); this first pass only sums their sizes for the progress total.
    let mut total = 0;
    for (p, _) in &containers {
        total += Container::open(p)?.meta.size;
    }
    progress.set_total(total);
    for (p, orig) in &containers {
        let c = Container::open(p)?;
        // As root, the original's owner is the container's (pack keeps it there).
        let owner = if can_chown() {
            let md = fs::symlink_metadata(p).map_err(|e| Error::io(p, e))?;
            Some((md.uid(), md.gid()))
        } else {
            None
        };
        write_original(&root, &c, orig, owner, &decoding, progress)?;
        report.files += 1;
        report.bytes += c.meta.size;
    }
    for rel in dirs.iter().rev() {
        let s = packed.join(rel);
        let md = fs::symlink_metadata(&s).map_err(|e| Error::io(&s, e))?;
        let d = root.open_dir(rel)?;
        d.sync()?;
        if can_chown() {
            d.chown_self(md.uid(), md.gid())?;
        }
        d.set_mode_mtime(md.mode(), md.mtime(), md.mtime_nsec() as u32)?;
    }
    root.sync()?;
    report.seconds = t0.elapsed().as_secs_f64();
    Ok(report)
}

/// What every file of one unpack decodes with.
struct Decoding<'a> {
    pool: &'a rayon::ThreadPool,
    gpu: Option<&'a gpu::Decoder>,
    /// Decoded buffers, recycled from one file to the next.
    bufs: &'a BufPool,
}

/// Writes the original held by `c` to `orig` under `root`: a temporary, filled with
/// verified chunks, synced, given its owner, mode and mtime, then renamed into place. A
/// failure removes the temporary.
fn write_original(
    root: &DestDir,
    c: &Container,
    orig: &Path,
    owner: Option<(u32, u32)>,
    d: &Decoding,
    progress: &dyn Progress,
) -> Result<()> {
    progress.message(&orig.display().to_string());
    let dir = root.open_dir(orig.parent().unwrap_or(Path::new("")))?;
    let name = orig.file_name().unwrap_or_default();
    let (f, tmp) = dir.create_temp(name, 0o600)?;
    let tmp_path = dir.path().join(&tmp);
    let r = (|| {
        let mut w = BufWriter::with_capacity(1 << 20, f);
        stream_chunks(c, d.pool, d.gpu, d.bufs, |_, data| {
            progress.advance(data.len() as u64);
            w.write_all(data).map_err(|e| Error::io(&tmp_path, e))
        })?;
        let f = w.into_inner().map_err(|e| Error::io(&tmp_path, e.into_error()))?;
        f.sync_all().map_err(|e| Error::io(&tmp_path, e))?;
        // Before the mode, since a change of owner clears set-id bits.
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&f, Some(uid), Some(gid)).map_err(|e| Error::io(&tmp_path, e))?;
        }
        set_file_mode_mtime(&f, &tmp_path, c.meta.mode, c.meta.mtime_s, c.meta.mtime_ns)?;
        drop(f);
        dir.rename(&tmp, name)
    })();
    if let Err(e) = r {
        let _ = dir.remove(&tmp);
        return Err(e);
    }
    Ok(())
}

/// Unpacks a remote pack into `dst`: the tree from its manifest (directories, symlinks
/// as written, never followed), every file from its container, verified like a local
/// unpack. Owners are not carried by a remote pack: files belong to the caller.
pub fn unpack_remote(
    pack: &crate::remote::pack::RemotePack,
    dst: &Path,
    threads: usize,
    progress: &dyn Progress,
) -> Result<UnpackReport> {
    use crate::format::manifest::Kind;
    let t0 = Instant::now();
    fs::create_dir_all(dst).map_err(|e| Error::io(dst, e))?;
    let root = DestDir::root(dst)?;
    let pool = super::thread_pool(threads);
    let bufs = window_bufs();
    let decoding = Decoding {
        pool: &pool,
        gpu: None,
        bufs: &bufs,
    };
    let mut report = UnpackReport::default();
    progress.set_total(pack.files().map(|e| e.size).sum());
    // Paths are validated plain relative paths whose parents are listed directories.
    for e in &pack.manifest.entries {
        let rel = Path::new(&e.path);
        let parent = rel.parent().unwrap_or(Path::new(""));
        let name = rel.file_name().unwrap_or_default();
        match e.kind {
            Kind::Dir => {
                root.open_dir(parent)?.make_dir(name, false)?;
                report.dirs += 1;
            }
            Kind::Symlink => {
                let target = e.target.as_deref().unwrap_or_default();
                root.open_dir(parent)?.symlink(Path::new(target), name)?;
                report.symlinks += 1;
            }
            Kind::File => {
                let c = pack.open_container(e)?;
                write_original(&root, &c, rel, None, &decoding, progress)?;
                report.files += 1;
                report.bytes += c.meta.size;
            }
        }
    }
    // Directory modes last (children first), so writing into them still works.
    for e in pack.manifest.entries.iter().rev().filter(|e| e.kind == Kind::Dir) {
        let d = root.open_dir(Path::new(&e.path))?;
        d.sync()?;
        // The manifest carries no directory times: a directory gets the time of unpacking.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        d.set_mode_mtime(e.mode & 0o7777 | 0o700, now.as_secs() as i64, now.subsec_nanos())?;
    }
    root.sync()?;
    report.seconds = t0.elapsed().as_secs_f64();
    Ok(report)
}
