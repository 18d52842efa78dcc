//! Every read of container bytes the store makes goes through [`ContainerSource`]: the
//! one seam between serving (prefetch, decode, cache) and where the containers live.
//! [`LocalSource`] reads local files; [`RemoteSource`] objects of a remote pack (ranged GETs).

use std::fs::{self, File};
use std::num::NonZeroUsize;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::remote::{Delivery, RemoteObject, Source};

/// Containers kept open at once. A pack may hold far more files than the open-file limit
/// (1024 by default), so the mount keeps chunk tables, not files, and reopens containers
/// on demand through an LRU of at most this many (and at most a quarter of the soft
/// RLIMIT_NOFILE).
pub const DEFAULT_OPEN_FILES: usize = 256;

/// Container bytes by file number (the index of the container in the store's table).
/// Implementations must never return bytes of anything but the container validated at
/// mount: a replaced or resized container is an error, not a source of other bytes.
pub(crate) trait ContainerSource: Send + Sync {
    /// Where container `file` lives, for messages.
    fn path(&self, file: u32) -> &Path;
    /// The container's length as validated at mount.
    fn len(&self, file: u32) -> u64;
    /// Fills `buf` with the container's bytes at `offset`; a short read is corruption.
    fn read_exact_at(&self, file: u32, buf: &mut [u8], offset: u64) -> Result<()>;
    /// A local descriptor of the container, for decoders that need one (GPU batches);
    /// `None` when the bytes are not local, and the caller decodes on the CPU instead.
    fn local_file(&self, file: u32) -> Result<Option<File>>;
    /// `len` bytes at `offset` of container `file` failed a check after they were read:
    /// forget any copy kept of them. True when reading them again may give other bytes
    /// (a network source), so one more try is worth it; false for local files.
    fn forget(&self, _file: u32, _offset: u64, _len: usize) -> bool {
        false
    }
    /// Starts fetching `ranges` of container `file` in the background, handing each to
    /// `done` when it is here (see [`RemoteObject::fetch_many`]). False where the source
    /// has no background fetch (local files, read where they are decoded); `done` is then
    /// never called.
    fn fetch_many(&self, _file: u32, _ranges: Vec<std::ops::Range<u64>>, _done: Delivery) -> bool {
        false
    }
    /// Whether bytes come from local files: raw chunks are then served by plain reads of
    /// the container; otherwise they go through the chunk cache like coded ones.
    fn is_local(&self) -> bool {
        true
    }
    /// Containers held open now (for tests of the open-file bound).
    #[cfg(test)]
    fn open_count(&self) -> usize {
        0
    }
}

/// A container's identity at mount.
pub(crate) struct Identity {
    pub path: PathBuf,
    pub dev: u64,
    pub ino: u64,
    pub len: u64,
}

impl Identity {
    /// Opens the container again without following a link, and refuses anything that is
    /// not the regular file validated at mount (same device, inode and length).
    fn reopen(&self) -> Result<File> {
        let f = fs::OpenOptions::new()
            .read(true)
            // O_NONBLOCK: a FIFO swapped in must not hang a reader; no effect on files.
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(&self.path)
            .map_err(|e| Error::io(&self.path, e))?;
        let md = f.metadata().map_err(|e| Error::io(&self.path, e))?;
        if !md.is_file() || md.dev() != self.dev || md.ino() != self.ino || md.len() != self.len {
            return Err(Error::corrupt(
                &self.path,
                None,
                "container replaced or resized since the mount",
            ));
        }
        Ok(f)
    }
}

/// Local containers, reopened on demand through a bounded LRU of open files.
pub(crate) struct LocalSource {
    ids: Vec<Identity>,
    open: Mutex<lru::LruCache<u32, Arc<File>>>,
}

impl LocalSource {
    pub fn new(ids: Vec<Identity>) -> LocalSource {
        LocalSource {
            ids,
            open: Mutex::new(lru::LruCache::new(open_files_bound())),
        }
    }

    /// The open container `file`, reopening (and re-checking) it when the LRU of open
    /// files has let it go.
    fn file(&self, file: u32) -> Result<Arc<File>> {
        if let Some(f) = self.open.lock().get(&file) {
            return Ok(f.clone());
        }
        // Open outside the lock: a slow filesystem must not stall readers of other files.
        let f = Arc::new(self.ids[file as usize].reopen()?);
        self.open.lock().put(file, f.clone());
        Ok(f)
    }
}

impl ContainerSource for LocalSource {
    fn path(&self, file: u32) -> &Path {
        &self.ids[file as usize].path
    }

    fn len(&self, file: u32) -> u64 {
        self.ids[file as usize].len
    }

    fn read_exact_at(&self, file: u32, buf: &mut [u8], offset: u64) -> Result<()> {
        let f = self.file(file)?;
        f.read_exact_at(buf, offset).map_err(|e| {
            let path = self.path(file);
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                Error::corrupt(path, None, "container truncated under us")
            } else {
                Error::io(path, e)
            }
        })
    }

    fn local_file(&self, file: u32) -> Result<Option<File>> {
        let f = self.file(file)?;
        f.try_clone().map(Some).map_err(|e| Error::io(self.path(file), e))
    }

    #[cfg(test)]
    fn open_count(&self) -> usize {
        self.open.lock().len()
    }
}

/// Containers that are objects of a remote pack, each pinned to the version (ETag) seen
/// at mount: a replaced object fails the read (EIO), never serves other bytes. There is no
/// local descriptor, so every decode runs on the CPU.
pub(crate) struct RemoteSource {
    objs: Vec<Arc<RemoteObject>>,
}

impl RemoteSource {
    pub fn new(objs: Vec<Arc<RemoteObject>>) -> RemoteSource {
        RemoteSource { objs }
    }
}

impl ContainerSource for RemoteSource {
    fn path(&self, file: u32) -> &Path {
        self.objs[file as usize].name()
    }

    fn len(&self, file: u32) -> u64 {
        self.objs[file as usize].len()
    }

    fn read_exact_at(&self, file: u32, buf: &mut [u8], offset: u64) -> Result<()> {
        self.objs[file as usize].read_exact_at(buf, offset)
    }

    fn local_file(&self, _file: u32) -> Result<Option<File>> {
        Ok(None)
    }

    fn forget(&self, file: u32, offset: u64, len: usize) -> bool {
        self.objs[file as usize].forget(offset, len)
    }

    fn fetch_many(&self, file: u32, ranges: Vec<std::ops::Range<u64>>, done: Delivery) -> bool {
        self.objs[file as usize].fetch_many(ranges, done);
        true
    }

    fn is_local(&self) -> bool {
        false
    }
}

/// How many containers may be open at once: [`DEFAULT_OPEN_FILES`], or a quarter of the
/// soft open-file limit when that is lower (FUSE, decode threads and the caller need
/// descriptors too).
fn open_files_bound() -> NonZeroUsize {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the rlimit struct we pass.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } == 0 {
        rl.rlim_cur
    } else {
        1024
    };
    let n = (soft / 4).min(DEFAULT_OPEN_FILES as u64).max(1) as usize;
    NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN)
}
