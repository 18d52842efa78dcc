//! The node table the mount presents: directories, files and symlinks of a packed tree,
//! numbered by inode, built once at mount from a walk that never follows a link.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::format::manifest::{Kind, ManifestEntry};
use crate::format::tree::{classify, walk, Entry, Packed};
use crate::format::{ChunkEntry, Container, FileMeta};
use crate::remote::pack::RemotePack;
use crate::remote::RemoteObject;

pub const ROOT_INO: u64 = 1;

#[derive(Debug)]
pub enum NodeKind {
    Dir {
        /// Sorted by name.
        children: Vec<(OsString, u64)>,
        index: HashMap<OsString, u64>,
    },
    File {
        file: u32,
    },
    Symlink {
        target: OsString,
    },
}

#[derive(Debug)]
pub struct Node {
    pub ino: u64,
    pub parent: u64,
    pub name: OsString,
    pub kind: NodeKind,
    pub size: u64,
    /// Permission bits (file type comes from `kind`).
    pub perm: u16,
    pub mtime_s: i64,
    pub mtime_ns: u32,
    pub uid: u32,
    pub gid: u32,
    /// Bytes this node occupies in the pack.
    pub packed: u64,
    pub blksize: u32,
}

/// A container found by the walk: its identity at mount (so a reopen can prove it is
/// the same file) and what serving needs of its index.
pub(crate) struct FoundContainer {
    pub path: PathBuf,
    pub dev: u64,
    pub ino: u64,
    pub len: u64,
    pub meta: FileMeta,
    pub chunks: Vec<ChunkEntry>,
}

/// The node table and the containers its file nodes point at (by `NodeKind::File::file`).
pub(crate) struct Tree {
    pub nodes: Vec<Node>,
    pub containers: Vec<FoundContainer>,
    pub packed_bytes: u64,
    pub original_bytes: u64,
}

impl Tree {
    /// Walks the packed tree at `root` (whose marker the caller has checked), validating
    /// every container's footer and index; each container is closed again.
    pub fn build(root: &Path) -> Result<Tree> {
        let md = fs::metadata(root).map_err(|e| Error::io(root, e))?;
        let mut nodes = vec![Node {
            ino: ROOT_INO,
            parent: ROOT_INO,
            name: OsString::new(),
            kind: NodeKind::Dir {
                children: Vec::new(),
                index: HashMap::new(),
            },
            size: 4096,
            perm: (md.mode() & 0o7777) as u16,
            mtime_s: md.mtime(),
            mtime_ns: md.mtime_nsec() as u32,
            uid: md.uid(),
            gid: md.gid(),
            packed: 0,
            blksize: 4096,
        }];
        let mut containers = Vec::new();
        let mut by_path: HashMap<PathBuf, u64> = HashMap::new();
        by_path.insert(PathBuf::new(), ROOT_INO);
        let (mut packed_bytes, mut original_bytes) = (0, 0);
        for e in walk(root)? {
            let (rel, node) = match e {
                Entry::Dir(rel) => {
                    let p = root.join(&rel);
                    let md = fs::symlink_metadata(&p).map_err(|e| Error::io(&p, e))?;
                    let name = rel.file_name().unwrap_or_default().to_os_string();
                    let kind = NodeKind::Dir {
                        children: Vec::new(),
                        index: HashMap::new(),
                    };
                    (rel, new_node(name, kind, &md, 4096, 0, 4096))
                }
                Entry::Symlink(rel) => {
                    let p = root.join(&rel);
                    let md = fs::symlink_metadata(&p).map_err(|e| Error::io(&p, e))?;
                    let target = fs::read_link(&p).map_err(|e| Error::io(&p, e))?.into_os_string();
                    let name = rel.file_name().unwrap_or_default().to_os_string();
                    let size = target.len() as u64;
                    (rel, new_node(name, NodeKind::Symlink { target }, &md, size, 0, 4096))
                }
                Entry::File(ref rel, len) => {
                    let orig = match classify(&e) {
                        Packed::Container { original, .. } => original.file_name().unwrap_or_default().to_os_string(),
                        Packed::Foreign(_, why) => {
                            tracing::warn!("{}: {why}; not served", rel.display());
                            continue;
                        }
                        _ => continue,
                    };
                    let rel = rel.clone();
                    let p = root.join(&rel);
                    // The tensor table is dropped here: serving never needs it.
                    let (file, clen, meta, chunks) = Container::open(&p)?.into_parts()?;
                    // Identity from the descriptor just validated, not from the path again.
                    let md = file.metadata().map_err(|e| Error::io(&p, e))?;
                    drop(file);
                    let mut node = new_node(
                        orig.clone(),
                        NodeKind::File {
                            file: containers.len() as u32,
                        },
                        &md,
                        meta.size,
                        len,
                        served_blksize(meta.chunk_size),
                    );
                    node.perm = (meta.mode & 0o7777) as u16;
                    node.mtime_s = meta.mtime_s;
                    node.mtime_ns = meta.mtime_ns;
                    packed_bytes += len;
                    original_bytes += meta.size;
                    containers.push(FoundContainer {
                        path: p,
                        dev: md.dev(),
                        ino: md.ino(),
                        len: clen,
                        meta,
                        chunks,
                    });
                    (rel.with_file_name(orig), node)
                }
                Entry::Other(rel, what) => {
                    tracing::warn!("{}: {what}; not served", rel.display());
                    continue;
                }
            };
            let parent_rel = rel.parent().map(Path::to_path_buf).unwrap_or_default();
            let Some(&parent) = by_path.get(&parent_rel) else {
                continue;
            };
            let ino = nodes.len() as u64 + 1;
            let mut node = node;
            node.ino = ino;
            node.parent = parent;
            if let NodeKind::Dir { children, index } = &mut nodes[parent as usize - 1].kind {
                if index.contains_key(&node.name) {
                    tracing::warn!("{}: name served twice; keeping the first", rel.display());
                    continue;
                }
                children.push((node.name.clone(), ino));
                index.insert(node.name.clone(), ino);
            }
            if matches!(node.kind, NodeKind::Dir { .. }) {
                by_path.insert(rel, ino);
            }
            nodes.push(node);
        }
        for n in &mut nodes {
            if let NodeKind::Dir { children, .. } = &mut n.kind {
                children.sort();
            }
        }
        Ok(Tree {
            nodes,
            containers,
            packed_bytes,
            original_bytes,
        })
    }
}

/// Containers opened at once while a remote pack mounts: each open is one GET of the
/// object's tail (a HEAD, then footer and index reads, with a disk cache), so latency,
/// not bandwidth, sets the pace.
const REMOTE_OPENERS: usize = 16;

/// A container of a remote pack: its pinned object and what serving needs of its index.
pub(crate) struct RemoteContainer {
    pub obj: Arc<RemoteObject>,
    pub meta: FileMeta,
    pub chunks: Vec<ChunkEntry>,
}

/// The node table of a remote pack and the containers its file nodes point at.
pub(crate) struct RemoteTree {
    pub nodes: Vec<Node>,
    pub containers: Vec<RemoteContainer>,
    pub packed_bytes: u64,
    pub original_bytes: u64,
}

impl RemoteTree {
    /// Builds the node table from the pack's validated manifest (object stores hold no
    /// directories or symlinks, and a web server cannot list), opening every container
    /// (several at once) and checking it against its entry. Files take mode and mtime from
    /// their container's index; directories and symlinks the manifest's mode and the newest
    /// file mtime, so every node that mounts the pack sees the same tree. Owner: the
    /// mounting user.
    pub fn build(pack: &RemotePack) -> Result<RemoteTree> {
        let files: Vec<&ManifestEntry> = pack.files().collect();
        let opened = open_all(pack, &files)?;
        let newest = opened
            .iter()
            .map(|(_, c)| (c.meta.mtime_s, c.meta.mtime_ns))
            .max()
            .unwrap_or((0, 0));
        // SAFETY: geteuid and getegid cannot fail and touch no memory of ours.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let plain = |name: &str, kind: NodeKind, perm: u32, size: u64| Node {
            ino: 0,
            parent: 0,
            name: OsString::from(name),
            kind,
            size,
            perm: (perm & 0o7777) as u16,
            mtime_s: newest.0,
            mtime_ns: newest.1,
            uid,
            gid,
            packed: 0,
            blksize: 4096,
        };
        let dir = || NodeKind::Dir {
            children: Vec::new(),
            index: HashMap::new(),
        };
        let mut nodes = vec![plain("", dir(), 0o755, 4096)];
        nodes[0].ino = ROOT_INO;
        nodes[0].parent = ROOT_INO;
        let mut by_path: HashMap<&str, u64> = HashMap::new();
        by_path.insert("", ROOT_INO);
        let mut opened = opened.into_iter().map(|(obj, c)| (obj, c.meta, c.chunks));
        let mut containers = Vec::with_capacity(files.len());
        let (mut packed_bytes, mut original_bytes) = (0, 0);
        for e in &pack.manifest.entries {
            let (parent_rel, name) = e.path.rsplit_once('/').unwrap_or(("", e.path.as_str()));
            let mut node = match e.kind {
                Kind::Dir => plain(name, dir(), e.mode, 4096),
                Kind::Symlink => {
                    let target = e.target.clone().unwrap_or_default();
                    let size = target.len() as u64;
                    plain(name, NodeKind::Symlink { target: target.into() }, 0o777, size)
                }
                Kind::File => {
                    // `opened` follows `pack.files()`, which is manifest order.
                    let Some((obj, meta, chunks)) = opened.next() else {
                        return Err(Error::corrupt(
                            pack.remote.name_of(&e.path),
                            None,
                            "container not opened",
                        ));
                    };
                    let file = containers.len() as u32;
                    let mut n = plain(name, NodeKind::File { file }, meta.mode, meta.size);
                    n.mtime_s = meta.mtime_s;
                    n.mtime_ns = meta.mtime_ns;
                    n.packed = e.packed;
                    n.blksize = served_blksize(meta.chunk_size);
                    packed_bytes += e.packed;
                    original_bytes += meta.size;
                    containers.push(RemoteContainer { obj, meta, chunks });
                    n
                }
            };
            // The manifest lists parents first (validated); a miss is skipped, not served.
            let Some(&parent) = by_path.get(parent_rel) else {
                continue;
            };
            let ino = nodes.len() as u64 + 1;
            node.ino = ino;
            node.parent = parent;
            if let NodeKind::Dir { children, index } = &mut nodes[parent as usize - 1].kind {
                if index.contains_key(&node.name) {
                    tracing::warn!("{}: name served twice; keeping the first", e.path);
                    continue;
                }
                children.push((node.name.clone(), ino));
                index.insert(node.name.clone(), ino);
            }
            if matches!(node.kind, NodeKind::Dir { .. }) {
                by_path.insert(&e.path, ino);
            }
            nodes.push(node);
        }
        for n in &mut nodes {
            if let NodeKind::Dir { children, .. } = &mut n.kind {
                children.sort();
            }
        }
        Ok(RemoteTree {
            nodes,
            containers,
            packed_bytes,
            original_bytes,
        })
    }
}

/// Opens the containers of `files` on up to [`REMOTE_OPENERS`] threads, in `files` order;
/// the first failure (in that order) fails the mount, as a bad local container does.
fn open_all(pack: &RemotePack, files: &[&ManifestEntry]) -> Result<Vec<(Arc<RemoteObject>, Container)>> {
    type Slot = Option<Result<(Arc<RemoteObject>, Container)>>;
    let slots: Vec<Mutex<Slot>> = files.iter().map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    std::thread::scope(|s| {
        for _ in 0..REMOTE_OPENERS.min(files.len()) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= files.len() || failed.load(Ordering::Relaxed) {
                    return;
                }
                let r = pack.open_object(files[i]);
                if r.is_err() {
                    failed.store(true, Ordering::Relaxed);
                }
                *slots[i].lock() = Some(r);
            });
        }
    });
    let mut slots: Vec<Slot> = slots.into_iter().map(Mutex::into_inner).collect();
    // A slot left empty means an open failed elsewhere: report that failure.
    if let Some(i) = slots.iter().position(|r| matches!(r, Some(Err(_)))) {
        if let Some(Err(e)) = slots.swap_remove(i) {
            return Err(e);
        }
    }
    slots
        .into_iter()
        .zip(files)
        .map(|(r, e)| r.unwrap_or_else(|| Err(Error::corrupt(pack.remote.name_of(&e.container()), None, "not opened"))))
        .collect()
}

/// The node numbered `ino`, if any.
pub(crate) fn node(nodes: &[Node], ino: u64) -> Option<&Node> {
    ino.checked_sub(1).and_then(|i| nodes.get(i as usize))
}

/// The child `name` of directory `parent`, if both exist.
pub(crate) fn lookup<'a>(nodes: &'a [Node], parent: u64, name: &OsStr) -> Option<&'a Node> {
    match &node(nodes, parent)?.kind {
        NodeKind::Dir { index, .. } => index.get(name).and_then(|&i| node(nodes, i)),
        _ => None,
    }
}

fn new_node(name: OsString, kind: NodeKind, md: &fs::Metadata, size: u64, packed: u64, blksize: u32) -> Node {
    Node {
        ino: 0,
        parent: 0,
        name,
        kind,
        size,
        perm: (md.mode() & 0o7777) as u16,
        mtime_s: md.mtime(),
        mtime_ns: md.mtime_nsec() as u32,
        uid: md.uid(),
        gid: md.gid(),
        packed,
        blksize,
    }
}

/// The st_blksize served for a file: its chunk size, as a power of two within
/// [4 KiB, 1 MiB]. The field is untrusted, and tools such as cp allocate a buffer of
/// st_blksize bytes (2 GiB read unchecked made cp allocate the whole file).
pub(crate) fn served_blksize(chunk_size: u32) -> u32 {
    let c = chunk_size.clamp(4096, 1 << 20);
    1 << (31 - c.leading_zeros())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_blksize_is_a_clamped_power_of_two() {
        for (chunk, want) in [
            (0, 4096),
            (1, 4096),
            (4096, 4096),
            (5000, 4096),
            (1 << 20, 1 << 20),
            ((1 << 20) - 1, 1 << 19),
            (64 << 20, 1 << 20),
            (1 << 31, 1 << 20),
            (u32::MAX, 1 << 20),
        ] {
            assert_eq!(served_blksize(chunk), want, "chunk size {chunk}");
        }
    }
}
