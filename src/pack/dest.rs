//! Writing into a destination tree (a pack being written, or an unpack) that somebody
//! else may have prepared: nothing planted there may redirect a write.
//!
//! Invariants, for every operation below the destination root:
//! - each path is resolved one component at a time from the root's descriptor with
//!   `O_NOFOLLOW`, so a directory replaced by a symlink is refused, never entered;
//! - files are created with `O_CREAT|O_EXCL|O_NOFOLLOW` under a temporary name and renamed
//!   into place (a rename replaces a link, it does not follow it);
//! - modes, times and syncs are applied through descriptors we opened, never by path.
//!
//! The root itself is the user's choice: links in the path they gave are followed once.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Gid, Mode, OFlags, Uid, CWD};
use rustix::io::Errno;

use crate::error::{Error, Result};
use crate::format::tree;

/// A directory of the destination, opened without following links.
pub(crate) struct DestDir {
    fd: OwnedFd,
    path: PathBuf,
}

/// The flags every directory below the root is opened with.
fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

fn io(path: &Path, e: Errno) -> Error {
    Error::io(path, std::io::Error::from(e))
}

impl DestDir {
    /// Opens the destination root (which must exist).
    pub(crate) fn root(path: &Path) -> Result<DestDir> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(CWD, path, flags, Mode::empty()).map_err(|e| io(path, e))?;
        Ok(DestDir {
            fd,
            path: path.to_path_buf(),
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the directory `rel` below this one, every component a real directory.
    pub(crate) fn open_dir(&self, rel: &Path) -> Result<DestDir> {
        let mut cur = DestDir {
            fd: self.fd.try_clone().map_err(|e| Error::io(&self.path, e))?,
            path: self.path.clone(),
        };
        for c in rel.components() {
            let Component::Normal(name) = c else {
                return Err(Error::Invalid {
                    path: self.path.join(rel),
                    what: "not a plain relative path".into(),
                });
            };
            let path = cur.path.join(name);
            let fd = rustix::fs::openat(&cur.fd, name, dir_flags(), Mode::empty()).map_err(|e| match e {
                Errno::LOOP | Errno::NOTDIR => Error::NotADirectory {
                    path: path.clone(),
                    what: "is not a directory (a symlink is never followed here)".into(),
                },
                e => io(&path, e),
            })?;
            cur = DestDir { fd, path };
        }
        Ok(cur)
    }

    /// Makes `name` a real directory here and opens it. An existing directory is kept; a
    /// symlink or file in its place is removed first when `replace` (re-packing into our
    /// own pack), and refused otherwise.
    pub(crate) fn make_dir(&self, name: &OsStr, replace: bool) -> Result<DestDir> {
        let path = self.path.join(name);
        match rustix::fs::mkdirat(&self.fd, name, Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(io(&path, e)),
        }
        match self.kind(name)? {
            Some(FileType::Directory) => {}
            Some(_) if replace => {
                rustix::fs::unlinkat(&self.fd, name, AtFlags::empty()).map_err(|e| io(&path, e))?;
                rustix::fs::mkdirat(&self.fd, name, Mode::from_raw_mode(0o700)).map_err(|e| io(&path, e))?;
            }
            _ => {
                return Err(Error::NotADirectory {
                    path,
                    what: "exists and is not a directory (a symlink is never followed); refusing to write into it"
                        .into(),
                })
            }
        }
        self.open_dir(Path::new(name))
    }

    /// The type of entry `name` here, without following a link; `None` when absent.
    pub(crate) fn kind(&self, name: &OsStr) -> Result<Option<FileType>> {
        match rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(FileType::from_raw_mode(st.st_mode))),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(io(&self.path.join(name), e)),
        }
    }

    /// Creates a new file for `final_name` under its temporary name ([`tree::temp_name`])
    /// with permission bits `mode`. Whatever already holds that name (a file a killed run
    /// left, or a planted symlink) is removed, never written through.
    pub(crate) fn create_temp(&self, final_name: &OsStr, mode: u32) -> Result<(File, OsString)> {
        let tmp = tree::temp_name(final_name);
        let path = self.path.join(&tmp);
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mode = Mode::from_raw_mode(mode & 0o777);
        let fd = match rustix::fs::openat(&self.fd, &tmp, flags, mode) {
            Err(Errno::EXIST) => {
                self.remove(&tmp)?;
                rustix::fs::openat(&self.fd, &tmp, flags, mode)
            }
            r => r,
        }
        .map_err(|e| io(&path, e))?;
        Ok((File::from(fd), tmp))
    }

    /// Renames `from` over `to`, both in this directory.
    pub(crate) fn rename(&self, from: &OsStr, to: &OsStr) -> Result<()> {
        crash_point("before-rename");
        rustix::fs::renameat(&self.fd, from, &self.fd, to).map_err(|e| io(&self.path.join(to), e))?;
        crash_point("after-rename");
        Ok(())
    }

    /// Removes the non-directory `name` here, if present.
    pub(crate) fn remove(&self, name: &OsStr) -> Result<()> {
        match rustix::fs::unlinkat(&self.fd, name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(io(&self.path.join(name), e)),
        }
    }

    /// Replaces whatever non-directory holds `name` with a symlink to `target`.
    pub(crate) fn symlink(&self, target: &Path, name: &OsStr) -> Result<()> {
        let path = self.path.join(name);
        if self.kind(name)? == Some(FileType::Directory) {
            return Err(Error::IsADirectory {
                path,
                what: "a directory stands where a symlink goes; remove it first".into(),
            });
        }
        self.remove(name)?;
        rustix::fs::symlinkat(target, &self.fd, name).map_err(|e| io(&path, e))
    }

    /// Removes the temporaries ([`tree::is_temp_name`], regular files only) that a killed
    /// run left here.
    pub(crate) fn remove_stale_temps(&self) -> Result<()> {
        let dir = rustix::fs::Dir::read_from(&self.fd).map_err(|e| io(&self.path, e))?;
        for entry in dir {
            let entry = entry.map_err(|e| io(&self.path, e))?;
            let raw = <OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(entry.file_name().to_bytes());
            if tree::is_temp_name(raw) && self.kind(raw)? == Some(FileType::RegularFile) {
                self.remove(raw)?;
            }
        }
        Ok(())
    }

    /// Sets this directory's permission bits and mtime through its descriptor.
    pub(crate) fn set_mode_mtime(&self, mode: u32, mtime_s: i64, mtime_ns: u32) -> Result<()> {
        let f = File::from(self.fd.try_clone().map_err(|e| Error::io(&self.path, e))?);
        set_file_mode_mtime(&f, &self.path, mode, mtime_s, mtime_ns)
    }

    /// Gives this directory to `uid:gid` (see [`can_chown`]).
    pub(crate) fn chown_self(&self, uid: u32, gid: u32) -> Result<()> {
        std::os::unix::fs::fchown(&self.fd, Some(uid), Some(gid)).map_err(|e| Error::io(&self.path, e))
    }

    /// Gives the symlink `name` here (not its target) to `uid:gid`.
    pub(crate) fn chown_link(&self, name: &OsStr, uid: u32, gid: u32) -> Result<()> {
        let path = self.path.join(name);
        // u32::MAX is "no change" to chown(2), never an owner.
        let (Some(u), Some(g)) = (
            (uid != u32::MAX).then(|| Uid::from_raw(uid)),
            (gid != u32::MAX).then(|| Gid::from_raw(gid)),
        ) else {
            return Ok(());
        };
        rustix::fs::chownat(&self.fd, name, Some(u), Some(g), AtFlags::SYMLINK_NOFOLLOW).map_err(|e| io(&path, e))
    }

    /// Flushes this directory's entries (renames, creations) to disk.
    pub(crate) fn sync(&self) -> Result<()> {
        rustix::fs::fsync(&self.fd).map_err(|e| io(&self.path, e))?;
        crash_point("after-dir-sync");
        Ok(())
    }
}

/// The durability steps a test can crash at: a temporary file written and synced but not
/// yet renamed, renamed but its directory not yet synced, and a directory just synced.
#[cfg_attr(not(debug_assertions), allow(dead_code))]
const CRASH_STEPS: [&str; 3] = ["before-rename", "after-rename", "after-dir-sync"];

/// Test hook, debug builds only: with `DCFS_CRASH_AT=STEP:N` the process kills itself with
/// SIGKILL the N-th time (from 1) it reaches STEP (one of [`CRASH_STEPS`]), so
/// tests/crash_pack.rs crashes `pack` at every write/rename window, not only at random moments.
#[cfg(debug_assertions)]
fn crash_point(step: &str) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    debug_assert!(CRASH_STEPS.contains(&step), "{step}");
    static REACHED: AtomicUsize = AtomicUsize::new(0);
    let Ok(spec) = std::env::var("DCFS_CRASH_AT") else {
        return;
    };
    let Some((armed, n)) = spec.split_once(':') else { return };
    if armed != step {
        return;
    }
    if n.parse::<usize>().ok() == Some(REACHED.fetch_add(1, Ordering::SeqCst) + 1) {
        // SAFETY: kill(2) of our own process takes no pointers; SIGKILL ends it here, as
        // a power cut or `kill -9` would, with no destructor or buffer flush.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

#[cfg(not(debug_assertions))]
fn crash_point(_step: &str) {}

/// Whether this process may give files away (it runs as root): only then do pack and
/// unpack keep each entry's owner and group, as tar does.
pub(crate) fn can_chown() -> bool {
    rustix::process::geteuid().is_root()
}

/// Sets permission bits (`mode & 0o7777`) and mtime on an open file or directory.
pub(crate) fn set_file_mode_mtime(f: &File, path: &Path, mode: u32, mtime_s: i64, mtime_ns: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let t = if mtime_s >= 0 {
        std::time::UNIX_EPOCH + std::time::Duration::new(mtime_s as u64, mtime_ns.min(999_999_999))
    } else {
        std::time::UNIX_EPOCH - std::time::Duration::from_secs(mtime_s.unsigned_abs())
    };
    f.set_times(std::fs::FileTimes::new().set_modified(t))
        .map_err(|e| Error::io(path, e))?;
    f.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))
        .map_err(|e| Error::io(path, e))
}
