//! The manifest: a pack's whole tree in one file at its root (`.dcfs-manifest.json`).
//!
//! Object stores hold no directories or symlinks, and a plain web server cannot list, so
//! a pack read over the network learns its tree from this file alone: every directory,
//! symlink (with its target) and container, with sizes, modes and digests. `dcfs pack`
//! writes it before the final marker; `dcfs push` uploads it after every container and
//! before the marker. A local pack without one (made by an older dcfs) still mounts and
//! unpacks locally; `push` builds one from the tree.
//!
//! The manifest is read as hostile input: its size, entry count, path lengths and depth
//! are capped before anything is allocated for them, every path must be a plain relative
//! path (no `..`, `.`, empty or absolute part), paths are unique, and every entry's parent
//! is a directory listed before it.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path};

use serde::{Deserialize, Serialize};

use super::tree::{classify, walk, Packed, SUFFIX};
use super::Container;
use crate::error::{Error, Result};

/// File name of the manifest at a pack's root.
pub const MANIFEST: &str = ".dcfs-manifest.json";
/// The `format` field every manifest carries.
pub const FORMAT: &str = "dcfs-manifest";
/// Manifest version this dcfs writes and reads.
pub const VERSION: u32 = 1;
/// Largest manifest a reader accepts (about 200 000 entries at typical path lengths).
pub const MAX_MANIFEST_LEN: u64 = 64 << 20;
/// Most entries a manifest may hold.
pub const MAX_ENTRIES: usize = 1 << 20;
/// Longest path and symlink target accepted (Linux's PATH_MAX).
pub const MAX_PATH_LEN: usize = 4096;
/// Deepest path accepted.
pub const MAX_DEPTH: usize = 256;

/// What one entry of the tree is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Dir,
    File,
    Symlink,
}

/// One entry: a directory, a symlink, or an original file held in `path` + `.dcz`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestEntry {
    /// Path of the original, relative to the pack root, `/`-separated.
    pub path: String,
    pub kind: Kind,
    /// Permission and type bits of the original (0 for symlinks).
    #[serde(default)]
    pub mode: u32,
    /// Original size (files only).
    #[serde(default)]
    pub size: u64,
    /// Length of the container `path.dcz` (files only): a reader refuses an object of
    /// another length before reading any of it.
    #[serde(default)]
    pub packed: u64,
    /// BLAKE3 of the original, hex (files only); the container's index holds the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
    /// Target of a symlink, as written; never followed by dcfs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

impl ManifestEntry {
    /// The container's path relative to the pack root (files only).
    pub fn container(&self) -> String {
        format!("{}{SUFFIX}", self.path)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    /// Parents before children, in walk order.
    pub entries: Vec<ManifestEntry>,
}

impl Manifest {
    /// Builds the manifest of the packed tree at `root` from what is on disk: containers
    /// are opened (footer and index only) for their sizes, modes and digests. Names that
    /// are not UTF-8 cannot be object keys, so they are refused.
    pub fn build(root: &Path) -> Result<Manifest> {
        let mut entries = Vec::new();
        for e in walk(root)? {
            let utf8 = |rel: &Path| -> Result<String> {
                rel.to_str().map(str::to_owned).ok_or_else(|| Error::Invalid {
                    path: root.join(rel),
                    what: "name is not UTF-8; a pack with such names cannot have a manifest".into(),
                })
            };
            match classify(&e) {
                Packed::Dir(rel) => {
                    let p = root.join(rel);
                    let md = fs::symlink_metadata(&p).map_err(|e| Error::io(&p, e))?;
                    entries.push(ManifestEntry {
                        path: utf8(rel)?,
                        kind: Kind::Dir,
                        mode: md.mode(),
                        size: 0,
                        packed: 0,
                        blake3: None,
                        target: None,
                    });
                }
                Packed::Symlink(rel) => {
                    let p = root.join(rel);
                    let t = fs::read_link(&p).map_err(|e| Error::io(&p, e))?;
                    entries.push(ManifestEntry {
                        path: utf8(rel)?,
                        kind: Kind::Symlink,
                        mode: 0,
                        size: 0,
                        packed: 0,
                        blake3: None,
                        target: Some(utf8(&t)?),
                    });
                }
                Packed::Container { rel, original, .. } => {
                    let c = Container::open(&root.join(rel))?;
                    entries.push(ManifestEntry {
                        path: utf8(&original)?,
                        kind: Kind::File,
                        mode: c.meta.mode,
                        size: c.meta.size,
                        packed: c.packed_len(),
                        blake3: Some(hex(&c.meta.blake3)),
                        target: None,
                    });
                }
                Packed::Marker | Packed::Temporary(_) | Packed::Foreign(..) => {}
            }
        }
        let m = Manifest {
            format: FORMAT.into(),
            version: VERSION,
            entries,
        };
        m.validate(root)?;
        Ok(m)
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("manifest serialises")
    }

    /// Parses and validates manifest bytes read from `origin` (named in errors).
    pub fn parse(origin: &Path, bytes: &[u8]) -> Result<Manifest> {
        let bad = |what: String| Error::corrupt(origin, None, format!("manifest: {what}"));
        if bytes.len() as u64 > MAX_MANIFEST_LEN {
            return Err(bad(format!(
                "{} bytes, more than the {MAX_MANIFEST_LEN} allowed",
                bytes.len()
            )));
        }
        // Each entry is at least `{"path":"x","kind":"dir"}`; refuse before serde
        // allocates a vector for an absurd count of tiny entries.
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        m.validate(origin)?;
        Ok(m)
    }

    /// Every rule a reader relies on; see the module docs.
    pub fn validate(&self, origin: &Path) -> Result<()> {
        let bad = |what: String| Error::corrupt(origin, None, format!("manifest: {what}"));
        if self.format != FORMAT {
            return Err(bad(format!("format {:?}, expected {FORMAT:?}", self.format)));
        }
        if self.version != VERSION {
            return Err(bad(format!("version {} (this dcfs reads {VERSION})", self.version)));
        }
        if self.entries.len() > MAX_ENTRIES {
            return Err(bad(format!("{} entries, more than {MAX_ENTRIES}", self.entries.len())));
        }
        let mut dirs: HashSet<&str> = HashSet::new();
        let mut seen: HashSet<&str> = HashSet::new();
        for e in &self.entries {
            let ebad = |what: &str| bad(format!("{:?}: {what}", truncate(&e.path)));
            check_rel(&e.path).map_err(&ebad)?;
            if !seen.insert(&e.path) {
                return Err(ebad("listed twice"));
            }
            if let Some((parent, _)) = e.path.rsplit_once('/') {
                if !dirs.contains(parent) {
                    return Err(ebad("its parent is not a directory listed before it"));
                }
            }
            match e.kind {
                Kind::Dir => {
                    dirs.insert(&e.path);
                }
                Kind::Symlink => {
                    let t = e.target.as_deref().ok_or_else(|| ebad("symlink without a target"))?;
                    if t.is_empty() || t.len() > MAX_PATH_LEN || t.contains('\0') {
                        return Err(ebad("symlink target empty, too long or with a NUL"));
                    }
                }
                Kind::File => {
                    let h = e.blake3.as_deref().ok_or_else(|| ebad("file without a digest"))?;
                    if unhex(h).is_none() {
                        return Err(ebad("digest is not 64 hex digits"));
                    }
                    // A container is at least a header and a footer.
                    if e.packed < super::HEADER_LEN + super::FOOTER_LEN {
                        return Err(ebad("container length shorter than a header and a footer"));
                    }
                    // The container's own name must be a valid path too.
                    if e.container().len() > MAX_PATH_LEN {
                        return Err(ebad("container path too long"));
                    }
                }
            }
            if e.kind != Kind::Symlink && e.target.is_some() {
                return Err(ebad("target on something that is not a symlink"));
            }
        }
        // A container name must not collide with another entry (`x` and `x.dcz`'s own).
        for e in self.entries.iter().filter(|e| e.kind == Kind::File) {
            if seen.contains(e.container().as_str()) {
                return Err(bad(format!(
                    "{:?}: its container name is also an entry",
                    truncate(&e.path)
                )));
            }
        }
        Ok(())
    }

    /// The original file's digest of entry `e`, when it is a file.
    pub fn digest(e: &ManifestEntry) -> Option<[u8; 32]> {
        e.blake3.as_deref().and_then(unhex)
    }
}

/// Whether `p` is a plain relative path: `/`-separated normal parts, each non-empty and
/// neither `.` nor `..`, no NUL, within the length and depth caps, and not the pack's own
/// metadata files.
fn check_rel(p: &str) -> std::result::Result<(), &'static str> {
    if p.is_empty() || p.len() > MAX_PATH_LEN {
        return Err("path empty or too long");
    }
    if p.contains('\0') || p.starts_with('/') {
        return Err("path absolute or with a NUL");
    }
    let mut depth = 0;
    for part in p.split('/') {
        depth += 1;
        if matches!(part, "" | "." | "..") {
            return Err("path has an empty, `.` or `..` part");
        }
    }
    if depth > MAX_DEPTH {
        return Err("path too deep");
    }
    // Path::components agrees (a belt to the braces above: nothing but normal parts).
    if !Path::new(p).components().all(|c| matches!(c, Component::Normal(_))) {
        return Err("path is not plain");
    }
    if p == MANIFEST || p == super::tree::MARKER || p.starts_with(&format!("{MANIFEST}{SUFFIX}")) {
        return Err("path names the pack's own metadata");
    }
    Ok(())
}

fn truncate(s: &str) -> &str {
    let mut end = s.len().min(120);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, kind: Kind) -> ManifestEntry {
        ManifestEntry {
            path: path.into(),
            kind,
            mode: 0o644,
            size: 1,
            packed: 100,
            blake3: (kind == Kind::File).then(|| "ab".repeat(32)),
            target: (kind == Kind::Symlink).then(|| "x".into()),
        }
    }

    fn manifest(entries: Vec<ManifestEntry>) -> Manifest {
        Manifest {
            format: FORMAT.into(),
            version: VERSION,
            entries,
        }
    }

    #[test]
    fn a_good_manifest_round_trips() {
        let m = manifest(vec![
            entry("d", Kind::Dir),
            entry("d/f", Kind::File),
            entry("l", Kind::Symlink),
        ]);
        let back = Manifest::parse(Path::new("m"), &m.to_json()).unwrap();
        assert_eq!(back, m);
        assert_eq!(Manifest::digest(&back.entries[1]), Some([0xab; 32]));
    }

    #[test]
    fn hostile_paths_and_shapes_are_refused() {
        let cases: Vec<(Vec<ManifestEntry>, &str)> = vec![
            (vec![entry("../x", Kind::File)], "`..`"),
            (vec![entry("/etc/passwd", Kind::File)], "absolute"),
            (vec![entry("a//b", Kind::File)], "empty"),
            (vec![entry("./a", Kind::File)], "`.`"),
            (vec![entry("", Kind::Dir)], "empty"),
            (vec![entry("a\0b", Kind::File)], "NUL"),
            (vec![entry("d/f", Kind::File)], "parent"),
            (vec![entry("f", Kind::File), entry("f/g", Kind::File)], "parent"),
            (vec![entry("f", Kind::File), entry("f", Kind::File)], "twice"),
            (vec![entry(MANIFEST, Kind::File)], "metadata"),
            (vec![entry(".dcfs-pack.json", Kind::Dir)], "metadata"),
            (
                vec![entry("f", Kind::File), entry("f.dcz", Kind::Dir)],
                "container name",
            ),
            (vec![entry(&"a/".repeat(300), Kind::Dir)], "empty"),
            (vec![entry(&"a".repeat(5000), Kind::Dir)], "too long"),
        ];
        for (entries, want) in cases {
            let m = manifest(entries);
            let e = Manifest::parse(Path::new("m"), &m.to_json()).unwrap_err();
            assert!(e.is_corrupt(), "{e}");
            assert!(e.to_string().contains(want), "{e} lacks {want}");
        }
        let mut e = entry("f", Kind::File);
        e.blake3 = Some("zz".repeat(32));
        assert!(Manifest::parse(Path::new("m"), &manifest(vec![e]).to_json()).is_err());
        let mut e = entry("f", Kind::File);
        e.packed = 3;
        assert!(Manifest::parse(Path::new("m"), &manifest(vec![e]).to_json()).is_err());
        let mut e = entry("l", Kind::Symlink);
        e.target = None;
        assert!(Manifest::parse(Path::new("m"), &manifest(vec![e]).to_json()).is_err());
        let mut m = manifest(vec![]);
        m.version = 2;
        assert!(Manifest::parse(Path::new("m"), &m.to_json()).is_err());
        for junk in [
            &b""[..],
            b"{",
            b"[]",
            b"{\"format\":\"dcfs-manifest\",\"version\":1,\"entries\":[],\"x\":1}",
        ] {
            assert!(Manifest::parse(Path::new("m"), junk).unwrap_err().is_corrupt());
        }
        let big = vec![b' '; MAX_MANIFEST_LEN as usize + 1];
        assert!(Manifest::parse(Path::new("m"), &big)
            .unwrap_err()
            .to_string()
            .contains("allowed"));
    }
}
