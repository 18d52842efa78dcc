//! `verify`: decode every chunk, check every checksum and every whole-file digest.

use std::path::Path;
use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

use std::os::unix::ffi::OsStrExt;

use super::{read_marker, walk, Progress, SUFFIX};
use crate::error::{Error, Result};
use crate::format::tree::{classify, Packed};
use crate::format::Container;
use crate::gpu;

#[derive(Clone, Debug, Serialize)]
pub struct FileVerify {
    pub path: String,
    pub size: u64,
    pub packed: u64,
    pub chunks: usize,
    /// `None` when the file verified; the damage otherwise, naming the chunk.
    pub error: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct VerifyReport {
    pub files: Vec<FileVerify>,
    pub bytes: u64,
    pub seconds: f64,
}

impl VerifyReport {
    pub fn failures(&self) -> usize {
        self.files.iter().filter(|f| f.error.is_some()).count()
    }
}

/// Chunks per GPU batch: enough sub-blocks to fill a large GPU (64 x 1 MiB chunks of
/// BF16 are ~2000 warps) while keeping the host's window memory modest.
const GPU_WINDOW: usize = 64;

/// Decodes every chunk of `c` in order (in parallel windows, on the GPU when `gpu` is
/// given), hands each to `sink`, and proves the whole-file digest. Never hands a chunk
/// that failed its checksum to `sink`.
pub fn stream_chunks(
    c: &Container,
    pool: &rayon::ThreadPool,
    gpu: Option<&gpu::Decoder>,
    mut sink: impl FnMut(usize, &[u8]) -> Result<()>,
) -> Result<()> {
    let mut hasher = blake3::Hasher::new();
    let window = if gpu.is_some() {
        GPU_WINDOW
    } else {
        pool.current_num_threads() * 4
    };
    let idx: Vec<usize> = (0..c.chunks.len()).collect();
    for group in idx.chunks(window.max(1)) {
        let decoded: Vec<Result<Vec<u8>>> = pool.install(|| match gpu {
            Some(g) => g.decode_chunks(c, group),
            None => group.par_iter().map(|&i| c.decode_chunk(i)).collect(),
        });
        for (&i, d) in group.iter().zip(decoded) {
            let d = d?;
            hasher.update(&d);
            sink(i, &d)?;
        }
    }
    if *hasher.finalize().as_bytes() != c.meta.blake3 {
        return Err(Error::corrupt(c.path(), None, "whole-file BLAKE3 digest mismatch"));
    }
    Ok(())
}

/// Verifies one container.
pub fn verify_container(
    path: &Path,
    pool: &rayon::ThreadPool,
    gpu: Option<&gpu::Decoder>,
    progress: &dyn Progress,
) -> Result<Container> {
    let c = Container::open(path)?;
    stream_chunks(&c, pool, gpu, |i, _| {
        progress.advance(c.chunks[i].orig_len as u64);
        Ok(())
    })?;
    Ok(c)
}

/// Verifies a packed tree (or one `.dcz` file). Damage is reported per file, not thrown:
/// the caller decides the exit code from [`VerifyReport::failures`].
pub fn verify_tree(packed: &Path, threads: usize, progress: &dyn Progress) -> Result<VerifyReport> {
    verify_tree_with(packed, threads, None, progress)
}

/// [`verify_tree`], decoding on `gpu` when given.
pub fn verify_tree_with(
    packed: &Path,
    threads: usize,
    gpu: Option<&gpu::Decoder>,
    progress: &dyn Progress,
) -> Result<VerifyReport> {
    let t0 = Instant::now();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .build()
        .expect("thread pool");
    let mut containers = Vec::new();
    let mut report = VerifyReport::default();
    if packed.is_file() {
        containers.push((packed.to_path_buf(), packed.display().to_string()));
    } else {
        read_marker(packed)?;
        for e in walk(packed)? {
            match classify(&e) {
                Packed::Container { rel, .. } => {
                    containers.push((packed.join(rel), rel.to_string_lossy().into_owned()));
                }
                // Named like a container but not one: the pack is damaged, not just odd.
                Packed::Foreign(rel, why) if rel.as_os_str().as_bytes().ends_with(SUFFIX.as_bytes()) => {
                    report.files.push(FileVerify {
                        path: rel.to_string_lossy().into_owned(),
                        size: 0,
                        packed: 0,
                        chunks: 0,
                        error: Some(format!("{why}; refused")),
                    });
                }
                Packed::Foreign(rel, why) => progress.warn(&format!("{}: {why}; ignored", rel.display())),
                Packed::Dir(_) | Packed::Symlink(_) | Packed::Marker | Packed::Temporary(_) => {}
            }
        }
    }
    let mut total = 0;
    for (p, _) in &containers {
        total += Container::open(p).map(|c| c.meta.size).unwrap_or(0);
    }
    progress.set_total(total);
    for (p, name) in containers {
        progress.message(&name);
        let (size, packed_len, chunks, error) = match verify_container(&p, &pool, gpu, progress) {
            Ok(c) => (c.meta.size, c.packed_len(), c.chunks.len(), None),
            Err(e) => {
                let (s, pl, n) =
                    Container::open(&p).map_or((0, 0, 0), |c| (c.meta.size, c.packed_len(), c.chunks.len()));
                (s, pl, n, Some(e.to_string()))
            }
        };
        report.bytes += size;
        report.files.push(FileVerify {
            path: name,
            size,
            packed: packed_len,
            chunks,
            error,
        });
    }
    report.seconds = t0.elapsed().as_secs_f64();
    Ok(report)
}
