//! `unpack`: write the originals back, byte-identical, with mode and mtime. A file is
//! only renamed into place after its every chunk and its whole-file digest verified.

use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use super::verify::stream_chunks;
use super::{original_name, read_marker, same_or_inside, set_mode_mtime, sync_dir, walk, Entry, Progress, MARKER};
use crate::error::{Error, Result};
use crate::format::Container;
use crate::gpu;

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
        return Err(Error::Invalid {
            path: dst.to_path_buf(),
            what: "destination and pack must not contain each other".into(),
        });
    }
    fs::create_dir_all(dst).map_err(|e| Error::io(dst, e))?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .build()
        .expect("thread pool");
    let entries = walk(packed)?;
    let mut containers = Vec::new();
    let mut report = UnpackReport::default();
    let mut dirs: Vec<PathBuf> = Vec::new();
    for e in &entries {
        match e {
            Entry::Dir(rel) => {
                let d = dst.join(rel);
                real_dir(&d)?;
                dirs.push(rel.clone());
                report.dirs += 1;
            }
            Entry::Symlink(rel) => {
                let s = packed.join(rel);
                let target = fs::read_link(&s).map_err(|e| Error::io(&s, e))?;
                let d = dst.join(rel);
                let _ = fs::remove_file(&d);
                std::os::unix::fs::symlink(&target, &d).map_err(|e| Error::io(&d, e))?;
                report.symlinks += 1;
            }
            Entry::File(rel, _) => {
                let name = rel.file_name().unwrap_or_default();
                if let Some(orig) = original_name(name) {
                    let orig = rel.with_file_name(orig);
                    containers.push((packed.join(rel), orig));
                } else if rel.as_os_str() != MARKER && !name.to_string_lossy().starts_with('.') {
                    progress.warn(&format!("{}: not a container; not unpacked", rel.display()));
                }
            }
            Entry::Other(rel, what) => progress.warn(&format!("{}: {what}; not unpacked", rel.display())),
        }
    }
    let opened: Vec<(Container, PathBuf)> = containers
        .into_iter()
        .map(|(p, orig)| Container::open(&p).map(|c| (c, orig)))
        .collect::<Result<_>>()?;
    progress.set_total(opened.iter().map(|(c, _)| c.meta.size).sum());
    for (c, orig) in &opened {
        progress.message(&orig.display().to_string());
        let out = dst.join(orig);
        let mut tmp_name = OsString::from(".");
        tmp_name.push(out.file_name().unwrap_or_default());
        tmp_name.push(format!(".tmp-{}", std::process::id()));
        let tmp = out.with_file_name(tmp_name);
        let r = (|| {
            // A pack may hold a symlink under the temporary name (restored above): remove
            // whatever is there and create exclusively, so nothing is written through a link.
            remove_if_present(&tmp)?;
            let f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)
                .map_err(|e| Error::io(&tmp, e))?;
            let mut w = BufWriter::with_capacity(1 << 20, f);
            stream_chunks(c, &pool, gpu, |_, data| {
                progress.advance(data.len() as u64);
                w.write_all(data).map_err(|e| Error::io(&tmp, e))
            })?;
            let f = w.into_inner().map_err(|e| Error::io(&tmp, e.into_error()))?;
            f.sync_all().map_err(|e| Error::io(&tmp, e))?;
            drop(f);
            set_mode_mtime(&tmp, c.meta.mode, c.meta.mtime_s, c.meta.mtime_ns)?;
            fs::rename(&tmp, &out).map_err(|e| Error::io(&out, e))
        })();
        if let Err(e) = r {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        report.files += 1;
        report.bytes += c.meta.size;
    }
    for rel in dirs.iter().rev() {
        let s = packed.join(rel);
        let d = dst.join(rel);
        let md = fs::metadata(&s).map_err(|e| Error::io(&s, e))?;
        sync_dir(&d)?;
        set_mode_mtime(&d, md.mode(), md.mtime(), md.mtime_nsec() as u32)?;
    }
    sync_dir(dst)?;
    report.seconds = t0.elapsed().as_secs_f64();
    Ok(report)
}

fn remove_if_present(p: &Path) -> Result<()> {
    match fs::remove_file(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(p, e)),
        _ => Ok(()),
    }
}

/// Creates directory `d` (its parent exists), or accepts one that is already there, but
/// never a symlink to one: a link left in the destination must not carry writes elsewhere.
fn real_dir(d: &Path) -> Result<()> {
    match fs::create_dir(d) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => match fs::symlink_metadata(d) {
            Ok(md) if md.is_dir() => Ok(()),
            _ => Err(Error::Invalid {
                path: d.to_path_buf(),
                what: "exists and is not a directory (a symlink is not followed); refusing to unpack into it".into(),
            }),
        },
        Err(e) => Err(Error::io(d, e)),
    }
}
