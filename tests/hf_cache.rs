//! Hugging Face hub caches, as users have them: `models--ORG--NAME/blobs/<hash>` (the
//! files, no suffix), `refs/main`, and `snapshots/<rev>/<path>` symlinks into the blobs,
//! two revisions sharing blobs. Built here from the fetched models.

mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use dcfs::pack::{self, NoProgress, PackOptions};

const REV1: &str = "1111111111111111111111111111111111111111";
const REV2: &str = "2222222222222222222222222222222222222222";

/// Builds `hub/models--dcfs--NAME` from model dir `model`: every file a blob named by its
/// hash; REV1 links every file, REV2 the same but with a changed config.json (a blob of its
/// own), so the weights' blob is shared. Returns the repo dir.
fn hub_repo(hub: &Path, name: &str, model: &Path) -> PathBuf {
    let repo = hub.join(format!("models--dcfs--{name}"));
    fs::create_dir_all(repo.join("blobs")).unwrap();
    fs::create_dir_all(repo.join("refs")).unwrap();
    fs::write(repo.join("refs/main"), REV2).unwrap();
    let files: Vec<PathBuf> = walk(model)
        .into_iter()
        .filter(|(_, md)| !md.is_dir())
        .map(|(r, _)| r)
        .collect();
    for rev in [REV1, REV2] {
        for rel in &files {
            let mut data = fs::read(model.join(rel)).unwrap();
            if rev == REV2 && rel == Path::new("config.json") {
                data.extend_from_slice(b"\n");
            }
            let hash = blake3::hash(&data).to_hex().to_string();
            let blob = repo.join("blobs").join(&hash);
            if !blob.exists() {
                fs::write(&blob, &data).unwrap();
            }
            let link = repo.join("snapshots").join(rev).join(rel);
            fs::create_dir_all(link.parent().unwrap()).unwrap();
            let up = "../".repeat(rel.components().count() + 1);
            std::os::unix::fs::symlink(format!("{up}blobs/{hash}"), &link).unwrap();
        }
    }
    repo
}

/// Every file reached through `dir` (links followed), by path: its BLAKE3.
fn contents(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in fs::read_dir(dir.join(&rel)).unwrap() {
            let r = rel.join(e.unwrap().file_name());
            let p = dir.join(&r);
            if p.is_dir() {
                stack.push(r);
            } else {
                out.insert(r, blake3::hash(&fs::read(&p).unwrap()).to_hex().to_string());
            }
        }
    }
    out
}

fn pack_with(src: &Path, dst: &Path, deref: bool) -> dcfs::Result<pack::PackReport> {
    let o = PackOptions {
        dereference: deref,
        ..Default::default()
    };
    pack::pack_tree(src, dst, &o, &NoProgress)
}

/// The weights blob (no suffix) is recognised as safetensors by its content and packs
/// like the named file; the snapshot links stay relative links inside the pack; the mount
/// and unpack give the same bytes through every snapshot path.
#[test]
fn a_hub_repo_packs_at_the_model_ratio_and_serves_its_snapshots() {
    let Some(models) = models() else { return };
    let t = tempfile::tempdir().unwrap();
    let hub = t.path().join("hub");
    let repo = hub_repo(&hub, "minilm-bf16", &models.join("minilm-bf16"));
    let p = t.path().join("p");
    let r = pack_with(&repo, &p, false).unwrap();
    assert_eq!(r.outside_links, 0);
    assert!(r.symlinks >= 2 * 10, "{} links", r.symlinks);
    let st = fs::read(models.join("minilm-bf16/model.safetensors")).unwrap();
    let blob = format!("blobs/{}", blake3::hash(&st).to_hex());
    let f = r.files.iter().find(|f| f.path == blob).expect("weights blob packed");
    assert_eq!(f.kind, "safetensors", "recognised by content");
    // The same bytes packed under their real name, side by side.
    let named = t.path().join("named");
    fs::create_dir_all(&named).unwrap();
    fs::write(named.join("model.safetensors"), &st).unwrap();
    let rn = pack_with(&named, &t.path().join("pn"), false).unwrap();
    eprintln!(
        "BF16 blob ratio {:.4}, named file {:.4}",
        pack::ratio(f.size, f.packed),
        rn.ratio()
    );
    assert_eq!(f.packed, rn.files[0].packed, "a blob packs exactly like the named file");
    assert_eq!(
        fs::read_link(p.join("snapshots").join(REV1).join("1_Pooling/config.json"))
            .unwrap()
            .to_str()
            .unwrap()
            .matches("../")
            .count(),
        3
    );
    assert_eq!(pack::verify_tree(&p, 2, &NoProgress).unwrap().failures(), 0);
    let u = t.path().join("u");
    pack::unpack_tree(&p, &u, 2, &NoProgress).unwrap();
    assert_eq!(contents(&repo), contents(&u));
    if !can_mount() {
        return;
    }
    let m = Mounted::new(&p, &t.path().join("mnt"), &[]);
    assert_eq!(
        contents(&repo),
        contents(&m.mnt),
        "every snapshot path through the mount"
    );
    assert_eq!(fs::read_to_string(m.mnt.join("refs/main")).unwrap(), REV2);
}

/// Packing only `snapshots/<rev>`: every file there is a link out of SRC. Without
/// --dereference the CLI says so and refuses (exit 2, nothing written); with it, the
/// targets are packed as regular files at the ratio of the model.
#[test]
fn a_snapshot_dir_needs_dereference_and_then_packs_its_targets() {
    let Some(models) = models() else { return };
    let t = tempfile::tempdir().unwrap();
    let repo = hub_repo(&t.path().join("hub"), "minilm-bf16", &models.join("minilm-bf16"));
    let snap = repo.join("snapshots").join(REV2);
    let p = t.path().join("p");
    let out = Command::new(dcfs_bin())
        .arg("pack")
        .arg(&snap)
        .arg(&p)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    eprintln!("{err}");
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("point outside") && err.contains("--dereference"), "{err}");
    assert!(err.contains("no regular file"), "{err}");
    assert!(!p.exists(), "nothing written");
    // An empty pack on request.
    let out = Command::new(dcfs_bin())
        .arg("pack")
        .arg(&snap)
        .arg(&p)
        .arg("--allow-empty")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    fs::remove_dir_all(&p).unwrap();
    let out = Command::new(dcfs_bin())
        .args([
            OsStr::new("pack"),
            snap.as_os_str(),
            p.as_os_str(),
            OsStr::new("--dereference"),
            OsStr::new("--json"),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let st = r["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "model.safetensors")
        .unwrap();
    assert_eq!(st["kind"], "safetensors");
    assert_eq!(r["symlinks"], 0);
    assert_eq!(r["dereferenced"], r["outside_links"]);
    assert_eq!(pack::verify_tree(&p, 2, &NoProgress).unwrap().failures(), 0);
    let u = t.path().join("u");
    pack::unpack_tree(&p, &u, 2, &NoProgress).unwrap();
    assert!(!fs::symlink_metadata(u.join("model.safetensors"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(contents(&snap), contents(&u));
}

/// A file that looks like safetensors by its content but whose header does not parse is
/// packed as opaque bytes with a warning naming it (not an error: it was never named as a
/// model); the same bytes named `.safetensors` still fail without --lenient.
#[test]
fn a_blob_that_only_looks_like_safetensors_packs_as_opaque_with_a_warning() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir_all(&src).unwrap();
    let mut bad = 20u64.to_le_bytes().to_vec();
    bad.extend_from_slice(b"{\"x\": not json here}");
    bad.extend_from_slice(&[7u8; 1000]);
    fs::write(src.join("0123abcd"), &bad).unwrap();
    let p = t.path().join("p");
    let out = Command::new(dcfs_bin()).arg("pack").arg(&src).arg(&p).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("0123abcd") && err.contains("opaque"), "{err}");
    let u = t.path().join("u");
    pack::unpack_tree(&p, &u, 2, &NoProgress).unwrap();
    assert_eq!(fs::read(u.join("0123abcd")).unwrap(), bad);
    fs::rename(src.join("0123abcd"), src.join("m.safetensors")).unwrap();
    let r = pack_with(&src, &t.path().join("p2"), false);
    assert!(r.is_err(), "a named model file with a bad header still fails");
}
