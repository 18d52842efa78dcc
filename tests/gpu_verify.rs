//! `verify` with a GPU decoder must not hide the GPU's own failures behind the CPU
//! fallback's right bytes: through the CPU emulation of the kernels (`--gpu emulate`, the
//! same batch path as `--gpu on`), a planted kernel bug (DCFS_GPU_EMU_BUG) makes verify
//! exit 3 (GPU defect) on a sound pack, and a clean emulation passes with 0 fallbacks.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use dcfs::gpu::{Decoder, PlantedBug};
use dcfs::pack::{self, NoProgress};

/// A synthetic tree packed with rANS, so the planner gives the GPU most chunks.
fn rans_pack(t: &Path) -> std::path::PathBuf {
    let src = t.join("src");
    synth_tree(&src, 23);
    let packed = t.join("packed");
    pack_cli(&src, &packed, &["--codec", "rans", "-j", "2"]);
    packed
}

/// `dcfs verify PACKED --gpu MODE --json` with the planted bug `bug`: (exit code, report,
/// stderr).
fn verify(packed: &Path, mode: &str, bug: Option<&str>) -> (i32, serde_json::Value, String) {
    let mut c = Command::new(dcfs_bin());
    c.arg("verify").arg(packed).args(["--gpu", mode, "--json", "-j", "2"]);
    c.env_remove("DCFS_GPU_EMU_BUG");
    if let Some(b) = bug {
        c.env("DCFS_GPU_EMU_BUG", b);
    }
    let out = c.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "verify --json: {e}: {}; stderr {stderr}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    eprintln!(
        "verify --gpu {mode} bug {bug:?}: exit {:?}; {stderr}",
        out.status.code()
    );
    (out.status.code().unwrap(), v, stderr)
}

fn n(v: &serde_json::Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_else(|| panic!("{k} missing in {v}"))
}

fn all_files_ok(v: &serde_json::Value) -> bool {
    let files = v["files"].as_array().unwrap();
    !files.is_empty() && files.iter().all(|f| f["error"].is_null())
}

#[test]
fn a_clean_emulated_gpu_verifies_with_no_fallbacks() {
    let t = tempfile::tempdir().unwrap();
    let packed = rans_pack(t.path());
    let (code, v, _) = verify(&packed, "emulate", None);
    assert_eq!(code, 0, "{v}");
    assert!(all_files_ok(&v), "{v}");
    assert!(n(&v, "gpu_chunks") > 0, "the GPU path was not taken: {v}");
    assert_eq!(n(&v, "gpu_fallbacks"), 0, "{v}");
    assert_eq!(n(&v, "gpu_defects"), 0, "{v}");
    // The CPU alone: no GPU counts at all.
    let (code, v, _) = verify(&packed, "off", None);
    assert_eq!(code, 0, "{v}");
    assert_eq!((n(&v, "gpu_chunks"), n(&v, "gpu_fallbacks")), (0, 0), "{v}");
}

/// A kernel that writes garbage (caught only by the host checksum) or flags every chunk:
/// the bytes stay right through the CPU fallback, so every file verifies, and verify
/// reports the GPU defect and exits 3.
#[test]
fn a_planted_kernel_bug_makes_verify_gpu_fail_on_a_sound_pack() {
    let t = tempfile::tempdir().unwrap();
    let packed = rans_pack(t.path());
    for bug in ["garbage", "flags"] {
        let (code, v, stderr) = verify(&packed, "emulate", Some(bug));
        assert!(all_files_ok(&v), "{bug}: the pack itself is sound: {v}");
        assert_eq!(code, 3, "{bug}: {v}");
        assert!(stderr.contains("GPU defect"), "{bug}: {stderr}");
        assert!(n(&v, "gpu_fallbacks") > 0, "{bug}: {v}");
        assert_eq!(n(&v, "gpu_defects"), n(&v, "gpu_fallbacks"), "{bug}: {v}");
        if bug == "flags" {
            assert_eq!(n(&v, "gpu_chunks"), 0, "{bug}: {v}");
        }
    }
    // An unknown bug name is refused rather than ignored.
    let (code, _, stderr) = {
        let out = Command::new(dcfs_bin())
            .arg("verify")
            .arg(&packed)
            .args(["--gpu", "emulate"])
            .env("DCFS_GPU_EMU_BUG", "nonsense")
            .output()
            .unwrap();
        (out.status.code(), (), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    assert_eq!(code, Some(2), "{stderr}");
}

/// Real damage outranks a GPU defect: exit 1, and fallbacks in the damaged file are not
/// counted as defects.
#[test]
fn damage_with_a_planted_bug_is_still_damage() {
    let t = tempfile::tempdir().unwrap();
    let packed = rans_pack(t.path());
    let victim = walk_files(&packed)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "dcz"))
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let c = dcfs::format::Container::open(&victim).unwrap();
    let e = &c.chunks[c.chunks.len() / 2];
    let at = e.payload_offset + e.payload_len as u64 / 2;
    drop(c);
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[at as usize] ^= 0x40;
    std::fs::write(&victim, bytes).unwrap();
    let (code, v, _) = verify(&packed, "emulate", Some("garbage"));
    assert_eq!(code, 1, "{v}");
    assert!(!all_files_ok(&v), "{v}");
}

/// The library's report, without the CLI: fallbacks in files that verified are defects.
#[test]
fn the_verify_report_counts_gpu_defects() {
    let t = tempfile::tempdir().unwrap();
    let packed = rans_pack(t.path());
    let clean = pack::verify_tree_with(&packed, 2, Some(&Decoder::emulated()), &NoProgress).unwrap();
    assert_eq!(clean.failures(), 0);
    assert!(clean.gpu_chunks > 0 && clean.gpu_fallbacks == 0, "{clean:?}");
    let bad = Decoder::emulated_with_bug(PlantedBug::Garbage);
    let r = pack::verify_tree_with(&packed, 2, Some(&bad), &NoProgress).unwrap();
    assert_eq!(r.failures(), 0, "the CPU fallback keeps the bytes right");
    assert!(r.gpu_defects > 0 && r.gpu_defects == r.gpu_fallbacks, "{r:?}");
    // One wrong chunk per batch, the rest still decoded on the GPU.
    assert!(
        r.gpu_chunks > 0 && r.gpu_chunks + r.gpu_fallbacks == clean.gpu_chunks,
        "{r:?} vs {clean:?}"
    );
}
