//! The FUSE adaptor: every fuser call of the crate lives here. It maps the `store`'s node
//! table and reads onto FUSE requests, answers every write with EROFS, and turns a store
//! error into its `Error::errno` (EIO for damage and I/O; the store has logged it once).

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::mem::ManuallyDrop;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, BsdFileFlags, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, MountOption, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr,
    Request, Session, SessionACL, TimeOrNow, WriteFlags,
};

use crate::store::{Node, NodeKind, Store, ROOT_INO};

/// The read-only tree never changes under the kernel, so attributes may be cached long.
const TTL: Duration = Duration::from_secs(3600);
/// Extended attribute on the mount root that serves live statistics as JSON.
pub const STATS_XATTR: &str = "user.dcfs.stats";
/// Largest read the kernel may send in one request.
const MAX_REQUEST: u32 = 1 << 20;

/// How to mount.
#[derive(Clone, Debug)]
pub struct MountConfig {
    /// Let other users read the mount (`allow_other`); refused unless asked for.
    pub allow_other: bool,
    /// Value for the mount's bdi `read_ahead_kb`; `None` leaves the kernel default (128 KiB).
    pub readahead_kb: Option<u32>,
    /// FUSE request threads (each may wait on a decode).
    pub fuse_threads: usize,
}

/// Mount options for unprivileged (fusermount3) mounts, apart from [`MountConfig`] so
/// existing callers keep their struct literals.
#[derive(Clone, Debug, Default)]
pub struct MountExtras {
    /// Let root read the mount too (`allow_root`); excludes `allow_other`.
    pub allow_root: bool,
    /// Ask fusermount3 to unmount when the daemon dies (`auto_unmount`).
    pub auto_unmount: bool,
}

struct DcFs {
    store: Arc<Store>,
}

fn time(s: i64, ns: u32) -> SystemTime {
    if s >= 0 {
        UNIX_EPOCH + Duration::new(s as u64, ns.min(999_999_999))
    } else {
        UNIX_EPOCH - Duration::from_secs(s.unsigned_abs())
    }
}

fn attr(n: &Node) -> FileAttr {
    let (kind, nlink, blocks) = match n.kind {
        NodeKind::Dir { .. } => (FileType::Directory, 2, 8),
        NodeKind::File { .. } => (FileType::RegularFile, 1, n.packed.div_ceil(512)),
        NodeKind::Symlink { .. } => (FileType::Symlink, 1, 0),
    };
    let t = time(n.mtime_s, n.mtime_ns);
    FileAttr {
        ino: INodeNo(n.ino),
        size: n.size,
        blocks,
        atime: t,
        mtime: t,
        ctime: t,
        crtime: t,
        kind,
        perm: n.perm,
        nlink,
        uid: n.uid,
        gid: n.gid,
        rdev: 0,
        blksize: n.blksize,
        flags: 0,
    }
}

fn kind_of(n: &Node) -> FileType {
    match n.kind {
        NodeKind::Dir { .. } => FileType::Directory,
        NodeKind::File { .. } => FileType::RegularFile,
        NodeKind::Symlink { .. } => FileType::Symlink,
    }
}

fn errno(e: i32) -> Errno {
    Errno::from_i32(e)
}

impl Filesystem for DcFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        // Large requests: the kernel caps max_pages from max(max_write, max_readahead).
        let _ = config.set_max_readahead(MAX_REQUEST);
        let _ = config.set_max_write(MAX_REQUEST);
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        let _ = config.add_capabilities(InitFlags::FUSE_CACHE_SYMLINKS);
        let _ = config.add_capabilities(InitFlags::FUSE_PARALLEL_DIROPS);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.store.lookup(parent.0, name) {
            Some(n) => reply.entry(&TTL, &attr(n), Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.store.node(ino.0) {
            Some(n) => reply.attr(&TTL, &attr(n)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.store.node(ino.0).map(|n| &n.kind) {
            Some(NodeKind::Symlink { target }) => {
                use std::os::unix::ffi::OsStrExt;
                reply.data(target.as_bytes())
            }
            Some(_) => reply.error(Errno::EINVAL),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY || flags.0 & libc::O_TRUNC != 0 {
            return reply.error(errno(libc::EROFS));
        }
        match self.store.node(ino.0).map(|n| &n.kind) {
            Some(NodeKind::File { .. }) => {
                let fh = self.store.open_handle();
                // Keep the page cache across opens (the bytes never change): mmap and
                // repeated loads are served by the kernel. Never direct_io.
                reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE)
            }
            Some(NodeKind::Dir { .. }) => reply.error(Errno::EISDIR),
            Some(_) => reply.error(Errno::EINVAL),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        // The reply is written from the cached chunk itself when the request lies in one.
        let mut reply = Some(reply);
        let r = self.store.read_with(ino.0, fh.0, offset, size, |data| {
            if let Some(reply) = reply.take() {
                reply.data(data);
            }
        });
        if let (Err(e), Some(reply)) = (r, reply) {
            reply.error(errno(e.errno()));
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.store.release(fh.0);
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.store.node(ino.0).map(|n| &n.kind) {
            Some(NodeKind::Dir { .. }) => reply.opened(FileHandle(0), FopenFlags::FOPEN_CACHE_DIR),
            Some(_) => reply.error(Errno::ENOTDIR),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let Some(n) = self.store.node(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        let NodeKind::Dir { children, .. } = &n.kind else {
            return reply.error(Errno::ENOTDIR);
        };
        let dots = [
            (n.ino, FileType::Directory, OsStr::new(".")),
            (n.parent, FileType::Directory, OsStr::new("..")),
        ];
        let entries = dots.into_iter().chain(
            children
                .iter()
                .filter_map(|(name, child)| self.store.node(*child).map(|c| (c.ino, kind_of(c), name.as_os_str()))),
        );
        for (i, (ino, kind, name)) in entries.enumerate().skip(offset as usize) {
            if reply.add(INodeNo(ino), i as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let (packed, _) = self.store.sizes();
        reply.statfs(packed.div_ceil(4096), 0, 0, self.store.node_count(), 0, 4096, 255, 4096);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        if ino.0 != ROOT_INO || name != STATS_XATTR {
            return reply.error(errno(libc::ENODATA));
        }
        let json = serde_json::to_vec(&self.store.stats()).expect("stats serialise");
        if size == 0 {
            reply.size(json.len() as u32)
        } else if json.len() <= size as usize {
            reply.data(&json)
        } else {
            reply.error(errno(libc::ERANGE))
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let names: Vec<u8> = if ino.0 == ROOT_INO {
            format!("{STATS_XATTR}\0").into_bytes()
        } else {
            Vec::new()
        };
        if size == 0 {
            reply.size(names.len() as u32)
        } else if names.len() <= size as usize {
            reply.data(&names)
        } else {
            reply.error(errno(libc::ERANGE))
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        if self.store.node(ino.0).is_none() {
            reply.error(Errno::ENOENT)
        } else if mask.contains(AccessFlags::W_OK) {
            reply.error(errno(libc::EROFS))
        } else {
            reply.ok()
        }
    }

    // Everything below would change the tree: a read-only filesystem says EROFS.

    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(errno(libc::EROFS));
    }

    fn mknod(&self, _: &Request, _: INodeNo, _: &OsStr, _: u32, _: u32, _: u32, reply: ReplyEntry) {
        reply.error(errno(libc::EROFS));
    }

    fn mkdir(&self, _: &Request, _: INodeNo, _: &OsStr, _: u32, _: u32, reply: ReplyEntry) {
        reply.error(errno(libc::EROFS));
    }

    fn unlink(&self, _: &Request, _: INodeNo, _: &OsStr, reply: ReplyEmpty) {
        reply.error(errno(libc::EROFS));
    }

    fn rmdir(&self, _: &Request, _: INodeNo, _: &OsStr, reply: ReplyEmpty) {
        reply.error(errno(libc::EROFS));
    }

    fn symlink(&self, _: &Request, _: INodeNo, _: &OsStr, _: &Path, reply: ReplyEntry) {
        reply.error(errno(libc::EROFS));
    }

    fn rename(&self, _: &Request, _: INodeNo, _: &OsStr, _: INodeNo, _: &OsStr, _: RenameFlags, reply: ReplyEmpty) {
        reply.error(errno(libc::EROFS));
    }

    fn link(&self, _: &Request, _: INodeNo, _: INodeNo, _: &OsStr, reply: ReplyEntry) {
        reply.error(errno(libc::EROFS));
    }

    fn write(
        &self,
        _: &Request,
        _: INodeNo,
        _: FileHandle,
        _: u64,
        _: &[u8],
        _: WriteFlags,
        _: OpenFlags,
        _: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        reply.error(errno(libc::EROFS));
    }

    fn create(&self, _: &Request, _: INodeNo, _: &OsStr, _: u32, _: u32, _: i32, reply: ReplyCreate) {
        reply.error(errno(libc::EROFS));
    }

    fn setxattr(&self, _: &Request, _: INodeNo, _: &OsStr, _: &[u8], _: i32, _: u32, reply: ReplyEmpty) {
        reply.error(errno(libc::EROFS));
    }

    fn removexattr(&self, _: &Request, _: INodeNo, _: &OsStr, reply: ReplyEmpty) {
        reply.error(errno(libc::EROFS));
    }

    fn fallocate(&self, _: &Request, _: INodeNo, _: FileHandle, _: u64, _: u64, _: i32, reply: ReplyEmpty) {
        reply.error(errno(libc::EROFS));
    }
}

/// A mounted (not yet serving) filesystem.
pub struct Mount {
    session: Session<DcFs>,
    mountpoint: PathBuf,
    /// Device of the mount this session made, to tell it from others on the same path.
    dev: Option<String>,
}

/// Unmounts a running mount from another thread (signal handler thread, tests). It only
/// ever unmounts the mount its session made: when that is gone already, it leaves
/// whatever is mounted at the path now alone.
#[derive(Clone)]
pub struct Unmounter {
    mountpoint: PathBuf,
    dev: Option<String>,
}

impl Unmounter {
    /// Unmounts if the topmost mount at the mount point is still ours; `lazy` detaches it
    /// even while files are open.
    pub fn unmount(&self, lazy: bool) -> io::Result<()> {
        // Without a device (mountinfo did not show our mount), fall back to the path alone.
        if let Some(dev) = &self.dev {
            if top_mount_at(&self.mountpoint).as_ref().map(|m| &m.dev) != Some(dev) {
                return Ok(());
            }
        }
        let p = CString::new(self.mountpoint.as_os_str().as_bytes())?;
        let flags = if lazy { libc::MNT_DETACH } else { 0 };
        // SAFETY: `p` is a valid NUL-terminated path.
        if unsafe { libc::umount2(p.as_ptr(), flags | libc::UMOUNT_NOFOLLOW) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// A mount served by a background thread; unmounts when dropped.
pub struct Background {
    guard: Option<std::thread::JoinHandle<io::Result<()>>>,
    unmounter: Unmounter,
}

impl Background {
    /// Unmounts and waits for the serving thread.
    pub fn unmount(mut self) -> io::Result<()> {
        self.unmounter.unmount(false)?;
        match self.guard.take() {
            Some(g) => join(g),
            None => Ok(()),
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(g) = self.guard.take() {
            if self.unmounter.unmount(false).is_err() {
                let _ = self.unmounter.unmount(true);
            }
            let _ = join(g);
        }
    }
}

fn join(g: std::thread::JoinHandle<io::Result<()>>) -> io::Result<()> {
    g.join()
        .unwrap_or_else(|_| Err(io::Error::other("the FUSE session thread panicked")))
}

/// Starts fuser's session thread and keeps only its join handle. fuser's own handle on the
/// mount unmounts the mount point *by path* when dropped, whether or not its mount is
/// still there, so after `umount` of the upper of two stacked mounts it removed the lower
/// one too. That handle (a descriptor and a path) is deliberately leaked; [`Unmounter`]
/// does the unmounting, and only of our own mount.
fn spawn_session(session: Session<DcFs>) -> io::Result<std::thread::JoinHandle<io::Result<()>>> {
    let bg = ManuallyDrop::new(session.spawn()?);
    // SAFETY: `bg` is never dropped or used again, so reading `guard` out of it moves it
    // (no double drop); the other fields stay leaked on purpose (see above).
    Ok(unsafe { std::ptr::read(&bg.guard) })
}

impl Mount {
    /// Mounts `store` at `mountpoint` (the kernel mount exists when this returns).
    pub fn new(store: Arc<Store>, mountpoint: &Path, cfg: &MountConfig) -> io::Result<Mount> {
        Mount::new_with(store, mountpoint, cfg, &MountExtras::default())
    }

    /// [`Mount::new`] with the options of [`MountExtras`].
    pub fn new_with(
        store: Arc<Store>,
        mountpoint: &Path,
        cfg: &MountConfig,
        extras: &MountExtras,
    ) -> io::Result<Mount> {
        let fsname = store.root().display().to_string().replace(',', "_");
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName(fsname),
            MountOption::Subtype("dcfs".into()),
            MountOption::RO,
            MountOption::NoDev,
            MountOption::NoSuid,
            MountOption::DefaultPermissions,
        ];
        if extras.auto_unmount {
            config.mount_options.push(MountOption::AutoUnmount);
        }
        config.acl = if cfg.allow_other {
            SessionACL::All
        } else if extras.allow_root {
            SessionACL::RootAndOwner
        } else {
            SessionACL::Owner
        };
        config.n_threads = Some(cfg.fuse_threads.max(1));
        config.clone_fd = true;
        let session = Session::new(DcFs { store }, mountpoint, &config)?;
        let mountpoint = mountpoint.canonicalize()?;
        // Our mount is the topmost at the mount point right now.
        let dev = top_mount_at(&mountpoint).map(|m| m.dev);
        let m = Mount {
            session,
            mountpoint,
            dev,
        };
        if let Some(kb) = cfg.readahead_kb {
            if let Err(e) = set_readahead(&m.mountpoint, kb) {
                tracing::warn!("could not raise read_ahead_kb of {}: {e}", m.mountpoint.display());
            }
        }
        Ok(m)
    }

    pub fn unmounter(&mut self) -> Unmounter {
        Unmounter {
            mountpoint: self.mountpoint.clone(),
            dev: self.dev.clone(),
        }
    }

    /// Serves requests until the filesystem is unmounted. If serving stops for another
    /// reason, our mount (and only ours) is detached.
    pub fn run(mut self) -> io::Result<()> {
        let unmounter = self.unmounter();
        let r = join(spawn_session(self.session)?);
        // Only when we can tell our mount from another one on the same path.
        if unmounter.dev.is_some() {
            let _ = unmounter.unmount(true);
        }
        r
    }

    /// Serves requests on a background thread.
    pub fn spawn(mut self) -> io::Result<Background> {
        let unmounter = self.unmounter();
        Ok(Background {
            guard: Some(spawn_session(self.session)?),
            unmounter,
        })
    }
}

/// Sets the mount's bdi `read_ahead_kb` so buffered readers get large requests. The
/// device number comes from /proc/self/mountinfo: a stat() of the mount point would wait
/// for the FUSE handshake, which may not be served yet.
pub fn set_readahead(mountpoint: &Path, kb: u32) -> io::Result<()> {
    let dev = mount_device(mountpoint)
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "mount point not in /proc/self/mountinfo"))?;
    std::fs::write(format!("/sys/class/bdi/{dev}/read_ahead_kb"), kb.to_string())
}

/// `major:minor` of the filesystem mounted at `path` (absolute and canonical; the topmost
/// mount there, if stacked).
pub fn mount_device(path: &Path) -> Option<String> {
    top_mount_at(path).map(|m| m.dev)
}

/// One line of /proc/self/mountinfo, with the escapes of its paths undone.
#[derive(Clone, Debug, PartialEq)]
pub struct MountEntry {
    pub id: u64,
    pub parent: u64,
    /// `major:minor`.
    pub dev: String,
    pub mount_point: PathBuf,
    pub fstype: String,
    pub source: OsString,
}

/// Parses mountinfo text. The kernel writes space, tab, newline and backslash in paths
/// as `\040`, `\011`, `\012` and `\134`; every `\ooo` is decoded, so a mount point with
/// any of them compares equal to its real path. Malformed lines are skipped.
pub fn parse_mountinfo(text: &[u8]) -> Vec<MountEntry> {
    text.split(|&b| b == b'\n')
        .filter_map(|line| {
            let f: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
            let sep = f.iter().position(|x| *x == b"-")?;
            if sep < 6 {
                return None;
            }
            let num = |b: &[u8]| std::str::from_utf8(b).ok()?.parse::<u64>().ok();
            Some(MountEntry {
                id: num(f[0])?,
                parent: num(f[1])?,
                dev: String::from_utf8_lossy(f[2]).into_owned(),
                mount_point: PathBuf::from(OsString::from_vec(unescape(f[4]))),
                fstype: String::from_utf8_lossy(&unescape(f.get(sep + 1)?)).into_owned(),
                source: OsString::from_vec(unescape(f.get(sep + 2).copied().unwrap_or_default())),
            })
        })
        .collect()
}

/// Undoes mountinfo's `\ooo` octal escapes; anything else is kept as it is.
fn unescape(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b
            .get(i + 1..i + 4)
            .filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match oct.map(|d| d.iter().fold(0u32, |a, c| a * 8 + (c - b'0') as u32)) {
            Some(v) if v <= 0xff => {
                out.push(v as u8);
                i += 4;
            }
            _ => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    out
}

/// The mounts of this process's namespace.
pub fn mounts() -> io::Result<Vec<MountEntry>> {
    Ok(parse_mountinfo(&std::fs::read("/proc/self/mountinfo")?))
}

/// The topmost mount at `path` (absolute and canonical), if any: of the mounts there, the
/// one no other mount there sits on.
pub fn top_mount_at(path: &Path) -> Option<MountEntry> {
    top_of(mounts().ok()?, path)
}

fn top_of(all: Vec<MountEntry>, path: &Path) -> Option<MountEntry> {
    let here: Vec<MountEntry> = all.into_iter().filter(|m| m.mount_point == path).collect();
    let parents: Vec<u64> = here.iter().map(|m| m.parent).collect();
    here.into_iter().rev().find(|m| !parents.contains(&m.id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        let text = b"22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
36 22 0:40 / /mnt/a\\040b\\011c\\012d\\134e rw,nosuid - fuse.dcfs /srv/my\\040pack ro\n\
37 36 0:41 / /mnt/a\\040b\\011c\\012d\\134e rw - tmpfs tmpfs rw\n\
38 22 0:42 / /odd\\9\\ rw - tmpfs x rw\n\
garbage line\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 4);
        assert_eq!(m[1].mount_point, Path::new("/mnt/a b\tc\nd\\e"));
        assert_eq!(m[1].fstype, "fuse.dcfs");
        assert_eq!(m[1].source, OsStr::new("/srv/my pack"));
        assert_eq!((m[1].id, m[1].parent, m[1].dev.as_str()), (36, 22, "0:40"));
        // Not an escape: kept byte for byte.
        assert_eq!(m[3].mount_point, Path::new("/odd\\9\\"));
        // Stacked: the tmpfs on top of the dcfs mount is the topmost, in either order.
        let top = top_of(m.clone(), Path::new("/mnt/a b\tc\nd\\e")).unwrap();
        assert_eq!(top.fstype, "tmpfs");
        let mut rev = m.clone();
        rev.reverse();
        assert_eq!(top_of(rev, Path::new("/mnt/a b\tc\nd\\e")).unwrap().id, 37);
        assert_eq!(top_of(m, Path::new("/mnt/a b")), None);
    }
}
