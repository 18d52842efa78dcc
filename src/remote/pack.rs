//! A pack in a remote store: its layout there, `push`, and opening it for reading.
//!
//! Under the pack's prefix: every container at its tree path (`a/b.safetensors.dcz`),
//! then `.dcfs-manifest.json`, then `.dcfs-pack.json`, written in that order. Directories
//! and symlinks exist only in the manifest. A reader needs the marker first, so a pack
//! whose push did not finish (no marker) is refused, and never needs to LIST.

use std::path::Path;
use std::sync::Arc;

use super::{Remote, RemoteObject, RemoteOptions, RemoteUrl, Source};
use crate::error::{Error, Result};
use crate::format::manifest::{Kind, Manifest, ManifestEntry, MANIFEST, MAX_MANIFEST_LEN};
use crate::format::tree::MARKER;
use crate::format::Container;
use crate::pack::{read_marker, Marker, Progress};

/// Largest marker a reader accepts.
const MAX_MARKER_LEN: u64 = 1 << 20;
/// Containers up to this size go up in one PUT; larger ones in parts of this size.
pub const UPLOAD_PART: usize = 16 << 20;

/// An opened remote pack: its marker and validated manifest.
#[derive(Debug)]
pub struct RemotePack {
    pub remote: Arc<Remote>,
    pub marker: Marker,
    pub manifest: Manifest,
}

impl RemotePack {
    /// Reads and checks the marker and the manifest. Refuses a prefix with no marker
    /// (nothing there, or a push that did not finish).
    ///
    /// Both are fetched at once: one round trip of a mount's latency instead of two. That
    /// opens no new race with a push. Read in turn, the marker could equally belong to the
    /// pack before a push and the manifest to the one after it; either way every container
    /// is then checked against the manifest (length, size, digest) and pinned by ETag, so a
    /// mixed read is an error, never wrong bytes.
    pub fn open(url: &RemoteUrl, opts: &RemoteOptions) -> Result<RemotePack> {
        let remote = Remote::new(url, opts)?;
        let (marker, manifest) = std::thread::scope(|s| {
            let manifest = s.spawn(|| remote.get_small_cached(MANIFEST, MAX_MANIFEST_LEN));
            let marker = remote.get_small(MARKER, MAX_MARKER_LEN);
            let manifest = manifest.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
            (marker, manifest)
        });
        let mname = remote.name_of(MARKER);
        let Some(m) = marker? else {
            return Err(Error::Invalid {
                path: url.to_string().into(),
                what: format!(
                    "not a dcfs pack, or its push did not finish (no {MARKER}); push it with `dcfs push PACKED {url}`"
                ),
            });
        };
        let marker: Marker =
            serde_json::from_slice(&m).map_err(|e| Error::corrupt(&mname, None, format!("marker: {e}")))?;
        if marker.format != "dcfs-pack" {
            return Err(Error::corrupt(&mname, None, "marker names another format"));
        }
        if !marker.complete {
            return Err(Error::Invalid {
                path: url.to_string().into(),
                what: "this pack was interrupted before it finished".into(),
            });
        }
        let name = remote.name_of(MANIFEST);
        let bytes =
            manifest?.ok_or_else(|| Error::corrupt(&name, None, "the marker is there but the manifest is missing"))?;
        let manifest = Manifest::parse(&name, &bytes)?;
        Ok(RemotePack {
            remote,
            marker,
            manifest,
        })
    }

    /// Opens the container of file entry `e`, and checks it is the one the manifest names
    /// (length, original size and digest) before anything is decoded.
    pub fn open_container(&self, e: &ManifestEntry) -> Result<Container> {
        self.open_object(e).map(|(_, c)| c)
    }

    /// Like [`open_container`](Self::open_container), and also hands back the object, so
    /// a mount keeps reading the same pinned version after the container is dropped.
    pub fn open_object(&self, e: &ManifestEntry) -> Result<(Arc<RemoteObject>, Container)> {
        let obj = Arc::new(self.remote.open_expecting(&e.container(), Some(e.packed))?);
        let name = obj.name().to_path_buf();
        if obj.len() != e.packed {
            return Err(Error::corrupt(
                &name,
                None,
                format!("object is {} bytes, the manifest says {}", obj.len(), e.packed),
            ));
        }
        let c = match Container::from_source(obj.clone()) {
            // A footer or index that fails its checks may have been damaged in transit (or
            // on the disk cache): read it once more from the network before calling the
            // pack damaged.
            Err(e) if e.is_corrupt() => {
                tracing::warn!("{e}; fetching its footer and index once more");
                obj.set_fresh(true);
                obj.forget_open_spans();
                let c = Container::from_source(obj.clone());
                obj.set_fresh(false);
                c?
            }
            r => r?,
        };
        obj.trim_tail();
        if c.meta.size != e.size || Some(c.meta.blake3) != Manifest::digest(e) {
            return Err(Error::corrupt(
                &name,
                None,
                "container disagrees with the manifest (size or digest)",
            ));
        }
        Ok((obj, c))
    }

    /// The file entries, in manifest order.
    pub fn files(&self) -> impl Iterator<Item = &ManifestEntry> {
        self.manifest.entries.iter().filter(|e| e.kind == Kind::File)
    }
}

/// What `push` did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct PushReport {
    pub files: usize,
    pub dirs: usize,
    pub symlinks: usize,
    pub bytes: u64,
    pub seconds: f64,
}

/// Uploads the complete local pack at `local` to `url`: the old marker is removed first
/// (so readers refuse the prefix while it changes), then every container, the manifest,
/// and the marker last.
pub fn push(local: &Path, url: &RemoteUrl, opts: &RemoteOptions, progress: &dyn Progress) -> Result<PushReport> {
    let t0 = std::time::Instant::now();
    read_marker(local)?;
    let marker = std::fs::read(local.join(MARKER)).map_err(|e| Error::io(local.join(MARKER), e))?;
    let manifest = Manifest::build(local)?;
    let remote = Remote::new(url, opts)?;
    let mut report = PushReport::default();
    progress.set_total(manifest.entries.iter().map(|e| e.packed).sum());
    remote.delete(MARKER)?;
    for e in &manifest.entries {
        match e.kind {
            Kind::Dir => report.dirs += 1,
            Kind::Symlink => report.symlinks += 1,
            Kind::File => {
                let rel = e.container();
                progress.message(&e.path);
                let p = local.join(&rel);
                // The container must still be what the manifest describes.
                let len = std::fs::symlink_metadata(&p).map_err(|err| Error::io(&p, err))?.len();
                if len != e.packed {
                    return Err(Error::Changed {
                        file: p,
                        what: "container changed while pushing".into(),
                    });
                }
                remote.put_file(&rel, &p, UPLOAD_PART)?;
                let obj = remote.open(&rel)?;
                if obj.len() != e.packed {
                    return Err(Error::io(
                        obj.name(),
                        std::io::Error::other(format!("uploaded {} bytes but the store holds {}", e.packed, obj.len())),
                    ));
                }
                progress.advance(e.packed);
                report.files += 1;
                report.bytes += e.packed;
            }
        }
    }
    remote.put(MANIFEST, manifest.to_json())?;
    remote.put(MARKER, marker)?;
    report.seconds = t0.elapsed().as_secs_f64();
    Ok(report)
}
