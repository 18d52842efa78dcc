//! The packed tree: how a pack directory is laid out, and what each of its entries is.
//!
//! A pack mirrors its source: directories and symlinks as they were, each regular file
//! `X` as a container `X.dcz`, and a marker at the root that says whether the pack
//! finished. Pack, unpack, verify, inspect, the mount and the GPU calibration all decide
//! what an entry is through [`classify`], so no two of them can disagree about it.
//!
//! ```text
//! name                         what it is
//! .dcfs-pack.json              the marker (root only)
//! .dcfs-manifest.json          the manifest: the whole tree in one file (root only)
//! X.dcz                        the container of original X (X is never "", "." or "..")
//! .NAME.tmp-PID                a temporary being written (or left by a killed run)
//! anything else                foreign: never served, unpacked or trusted
//! ```

use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Suffix of a container file; `X` is served as `X.dcz` minus the suffix.
pub const SUFFIX: &str = ".dcz";
/// Marker at the root of a packed tree; hidden by the mount.
pub const MARKER: &str = ".dcfs-pack.json";
/// Between a temporary's final name and the writer's process id.
const TMP_INFIX: &str = ".tmp-";

/// One entry of a walked tree, relative to its root.
#[derive(Debug)]
pub enum Entry {
    Dir(PathBuf),
    /// A regular file and its length.
    File(PathBuf, u64),
    Symlink(PathBuf),
    /// A FIFO, socket or device node, with what it is.
    Other(PathBuf, &'static str),
}

impl Entry {
    pub fn rel(&self) -> &Path {
        match self {
            Entry::Dir(r) | Entry::File(r, _) | Entry::Symlink(r) | Entry::Other(r, _) => r,
        }
    }
}

/// What an entry of a packed tree is.
#[derive(Debug, PartialEq, Eq)]
pub enum Packed<'a> {
    Dir(&'a Path),
    /// A container, the path of the original it holds (relative, like `rel`), and the
    /// container's length.
    Container {
        rel: &'a Path,
        original: PathBuf,
        len: u64,
    },
    Symlink(&'a Path),
    /// The marker or the manifest at the root: the pack's own metadata, never served.
    Marker,
    /// A temporary file of a pack or unpack (running, or killed): never a result.
    Temporary(&'a Path),
    /// Anything else, with why it is not part of the pack. Never served or unpacked.
    Foreign(&'a Path, &'static str),
}

/// Decides what one walked entry of a packed tree is.
pub fn classify(e: &Entry) -> Packed<'_> {
    match e {
        Entry::Dir(rel) => Packed::Dir(rel),
        Entry::Symlink(rel) => Packed::Symlink(rel),
        Entry::Other(rel, what) => Packed::Foreign(rel, what),
        Entry::File(rel, len) => {
            let name = rel.file_name().unwrap_or_default();
            if rel.as_os_str() == MARKER || rel.as_os_str() == super::manifest::MANIFEST {
                Packed::Marker
            } else if let Some(orig) = original_name(name) {
                Packed::Container {
                    rel,
                    original: rel.with_file_name(orig),
                    len: *len,
                }
            } else if name.as_bytes().ends_with(SUFFIX.as_bytes()) {
                Packed::Foreign(
                    rel,
                    "a container name that maps to no valid file name (\"\", \".\" or \"..\")",
                )
            } else if is_temp_name(name) {
                Packed::Temporary(rel)
            } else {
                Packed::Foreign(rel, "not a container")
            }
        }
    }
}

/// The original's name for a container's file name (`X.dcz` gives `X`), byte for byte:
/// names need not be UTF-8. `None` for anything that is not a container name, and for
/// `.dcz`, `..dcz` and `...dcz`, whose originals would be "", "." or "..": a pack that
/// holds them was not made by `dcfs pack`, and serving or unpacking them would name the
/// directory itself or its parent.
pub fn original_name(container: &OsStr) -> Option<OsString> {
    let orig = container.as_bytes().strip_suffix(SUFFIX.as_bytes())?;
    let valid = !matches!(orig, b"" | b"." | b"..") && !orig.contains(&b'/');
    valid.then(|| OsStr::from_bytes(orig).to_os_string())
}

/// The container's file name for original `name`.
pub fn container_name(name: &OsStr) -> OsString {
    let mut n = name.to_os_string();
    n.push(SUFFIX);
    n
}

/// The temporary name under which `final_name` is written before it is renamed into
/// place: hidden, and ending in this process's id so that concurrent writers differ.
pub fn temp_name(final_name: &OsStr) -> OsString {
    let mut n = OsString::from(".");
    n.push(final_name);
    n.push(format!("{TMP_INFIX}{}", std::process::id()));
    n
}

/// Whether `name` has the shape [`temp_name`] gives (`.NAME.tmp-DIGITS`). Containers
/// (`….dcz`) are never temporaries, so a real file called `.x.tmp-1` packs, serves and
/// unpacks like any other.
pub fn is_temp_name(name: &OsStr) -> bool {
    let b = name.as_bytes();
    if !b.starts_with(b".") || b.ends_with(SUFFIX.as_bytes()) {
        return false;
    }
    let Some(at) = b.windows(TMP_INFIX.len()).rposition(|w| w == TMP_INFIX.as_bytes()) else {
        return false;
    };
    let pid = &b[at + TMP_INFIX.len()..];
    at > 0 && !pid.is_empty() && pid.iter().all(u8::is_ascii_digit)
}

/// Whether `name` is a temporary that [`temp_name`] made for `final_name` (any process).
pub fn is_temp_of(name: &OsStr, final_name: &OsStr) -> bool {
    let (b, f) = (name.as_bytes(), final_name.as_bytes());
    is_temp_name(name)
        && b.len() > 1 + f.len()
        && &b[1..1 + f.len()] == f
        && b[1 + f.len()..].starts_with(TMP_INFIX.as_bytes())
}

/// Walks `root` without following symlinks, parents before children, sorted by name.
pub fn walk(root: &Path) -> Result<Vec<Entry>> {
    use std::os::unix::fs::FileTypeExt;
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

/// The containers of the packed tree at `root` (or `root` itself when it is one file), as
/// (container path, original path relative to the pack), in walk order. Entries that are
/// not containers are handed to `foreign` (relative path, why); temporaries and the marker
/// are skipped silently.
pub fn containers(root: &Path, mut foreign: impl FnMut(&Path, &str)) -> Result<Vec<(PathBuf, PathBuf)>> {
    let md = fs::symlink_metadata(root).map_err(|e| Error::io(root, e))?;
    if md.is_file() {
        let name = root.file_name().unwrap_or_default();
        let orig = original_name(name).ok_or_else(|| Error::Invalid {
            path: root.to_path_buf(),
            what: format!("not a container name (expected NAME{SUFFIX})"),
        })?;
        return Ok(vec![(root.to_path_buf(), PathBuf::from(orig))]);
    }
    let mut out = Vec::new();
    for e in walk(root)? {
        match classify(&e) {
            Packed::Container { rel, original, .. } => out.push((root.join(rel), original)),
            Packed::Foreign(rel, why) => foreign(rel, why),
            Packed::Dir(_) | Packed::Symlink(_) | Packed::Marker | Packed::Temporary(_) => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(p: &str) -> Entry {
        Entry::File(PathBuf::from(p), 7)
    }

    #[test]
    fn names_that_map_to_dot_or_dotdot_are_not_containers() {
        for n in [".dcz", "..dcz", "...dcz"] {
            assert_eq!(original_name(OsStr::new(n)), None, "{n}");
            let e = file(n);
            assert!(matches!(classify(&e), Packed::Foreign(..)), "{n}");
            let e = file(&format!("sub/{n}"));
            assert!(matches!(classify(&e), Packed::Foreign(..)), "sub/{n}");
        }
        assert_eq!(original_name(OsStr::new("....dcz")), Some(OsString::from("...")));
        assert_eq!(original_name(OsStr::new(".x.dcz")), Some(OsString::from(".x")));
    }

    #[test]
    fn hidden_files_that_look_like_temporaries_are_still_containers() {
        // An original called `.a.tmp-1` packs as `.a.tmp-1.dcz`: a container, served.
        let e = file("d/.a.tmp-1.dcz");
        assert_eq!(
            classify(&e),
            Packed::Container {
                rel: Path::new("d/.a.tmp-1.dcz"),
                original: PathBuf::from("d/.a.tmp-1"),
                len: 7
            }
        );
        let t = temp_name(OsStr::new("m.safetensors.dcz"));
        assert!(is_temp_name(&t), "{t:?}");
        assert!(matches!(classify(&file(t.to_str().unwrap())), Packed::Temporary(_)));
        assert!(is_temp_name(&temp_name(OsStr::new(MARKER))));
        let marker = OsStr::new(MARKER);
        assert!(is_temp_of(&temp_name(marker), marker));
        assert!(is_temp_of(OsStr::new("..dcfs-pack.json.tmp-77"), marker));
        for n in [
            "..dcfs-pack.jsonx.tmp-7",
            ".x.dcfs-pack.json.tmp-7",
            "..dcfs-pack.json.tmp-",
            ".dcfs-pack.json.tmp-7",
        ] {
            assert!(!is_temp_of(OsStr::new(n), marker), "{n}");
        }
        // Shapes that are not temporaries.
        for n in [".a.tmp-", ".a.tmp-1x", "a.tmp-1", ".tmp-1", ".a.tmp-1.dcz", "x"] {
            assert!(!is_temp_name(OsStr::new(n)), "{n}");
        }
        assert_eq!(classify(&file(MARKER)), Packed::Marker);
        assert_eq!(classify(&file(".dcfs-manifest.json")), Packed::Marker);
        assert!(matches!(
            classify(&file("sub/.dcfs-manifest.json")),
            Packed::Foreign(..)
        ));
        // The marker's name anywhere but the root is foreign.
        assert!(matches!(classify(&file("sub/.dcfs-pack.json")), Packed::Foreign(..)));
        assert_eq!(container_name(OsStr::new("x")), OsString::from("x.dcz"));
    }
}
