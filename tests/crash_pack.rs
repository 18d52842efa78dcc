//! Crash safety of `pack`: SIGKILL at random points never leaves a container under its
//! final name unless it is complete and valid, never touches the source, and keeps the
//! marker at "incomplete" until the end; a re-run completes. A full disk gives a clear
//! "No space left on device", exit 1, and no temporary files.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use common::*;
use dcfs::model::safetensors;
use dcfs::pack::{self, NoProgress};

fn env_n(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A source of several multi-chunk files, so kills land between and inside containers.
fn source(dir: &Path) {
    let mut r = Rng::new(21);
    fs::create_dir_all(dir.join("sub")).unwrap();
    for i in 0..6 {
        let w = weights(&mut r, 1_500_000);
        let st = safetensors::build(&[("w", "BF16", vec![1_500_000], bf16_bytes(&w))]);
        let d = if i % 2 == 0 { dir.to_path_buf() } else { dir.join("sub") };
        fs::write(d.join(format!("m{i}.safetensors")), st).unwrap();
    }
    fs::write(dir.join("config.json"), b"{\"hidden_size\": 384}").unwrap();
}

fn tmp_files(dir: &Path) -> Vec<PathBuf> {
    walk_files(dir)
        .into_iter()
        .filter(|p| p.file_name().unwrap().to_string_lossy().contains(".tmp-"))
        .collect()
}

/// Every container visible under its final name is complete and verifies.
fn visible_containers_verify(dst: &Path) -> usize {
    let mut n = 0;
    for p in walk_files(dst) {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".dcz") && !name.starts_with('.') {
            let r = pack::verify_tree(&p, 1, &NoProgress).unwrap();
            assert_eq!(r.failures(), 0, "{} is visible but broken: {:?}", p.display(), r.files);
            n += 1;
        }
    }
    n
}

#[test]
fn kill_9_at_random_points_never_leaves_a_broken_container() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    source(&src);
    let before = tree_state(&src);
    // How long one uninterrupted pack takes here, to spread the kills over it.
    let t0 = Instant::now();
    let st = Command::new(dcfs_bin())
        .args(["pack", "-j", "2"])
        .arg(&src)
        .arg(t.path().join("timing"))
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    let full = t0.elapsed();
    eprintln!("one full pack: {:.2}s", full.as_secs_f64());
    let dst = t.path().join("dst");
    let kills = env_n("DCFS_CRASH_KILLS", 20);
    let mut r = Rng::new(99);
    let (mut incomplete, mut complete, mut visible) = (0, 0, 0);
    for k in 0..kills {
        let mut child = Command::new(dcfs_bin())
            .args(["pack", "-j", "2"])
            .arg(&src)
            .arg(&dst)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let delay = full.mul_f64(r.unit() * 1.1);
        std::thread::sleep(delay);
        let _ = child.kill(); // SIGKILL
        let status = child.wait().unwrap();
        assert_eq!(tree_state(&src), before, "kill {k}: the source changed");
        visible += visible_containers_verify(&dst);
        match pack::read_marker(&dst) {
            Ok(m) => {
                // The marker says "complete" only after the last container is renamed and
                // synced, so the whole tree must be there and verify, whether the kill came
                // after exit or between the marker's rename and the process's exit.
                assert_eq!(m.files, 7, "kill {k} (exit {status:?})");
                let r = pack::verify_tree(&dst, 2, &NoProgress).unwrap();
                assert_eq!(r.failures(), 0, "kill {k}: complete marker, broken tree");
                complete += 1;
            }
            Err(e) => {
                incomplete += 1;
                if dst.join(pack::MARKER).exists() {
                    assert!(e.to_string().contains("interrupted"), "kill {k}: {e}");
                }
            }
        }
    }
    eprintln!(
        "{kills} kills: {incomplete} left an incomplete pack, {complete} came after completion; \
         {visible} visible containers checked, all valid"
    );
    assert!(incomplete > 0, "no kill landed inside a pack");
    // A re-run completes, cleans the temporary files, and round-trips.
    let st = Command::new(dcfs_bin())
        .args(["pack", "-j", "2"])
        .arg(&src)
        .arg(&dst)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    assert!(tmp_files(&dst).is_empty(), "{:?}", tmp_files(&dst));
    assert_eq!(pack::read_marker(&dst).unwrap().files, 7);
    assert_eq!(pack::verify_tree(&dst, 2, &NoProgress).unwrap().failures(), 0);
    pack::unpack_tree(&dst, &t.path().join("u"), 2, &NoProgress).unwrap();
    assert_eq!(tree_state(&t.path().join("u")), before);
}

/// The same checks at each named durability step (the `DCFS_CRASH_AT=STEP:N` hook of debug
/// builds, src/pack/dest.rs): the N-th rename (before and after it) and the N-th directory
/// sync, for every N the pack reaches, the marker's renames included. A random kill rarely
/// lands in these windows.
#[test]
fn kill_9_at_every_rename_and_sync_never_leaves_a_broken_container() {
    if !cfg!(debug_assertions) {
        skip("the DCFS_CRASH_AT hook exists only in debug builds");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    source(&src);
    let before = tree_state(&src);
    for step in ["before-rename", "after-rename", "after-dir-sync"] {
        let mut crashes = 0;
        for n in 1.. {
            let dst = t.path().join(format!("{step}-{n}"));
            let out = Command::new(dcfs_bin())
                .args(["pack", "-j", "1"])
                .arg(&src)
                .arg(&dst)
                .env("DCFS_CRASH_AT", format!("{step}:{n}"))
                .output()
                .unwrap();
            assert_eq!(tree_state(&src), before, "{step}:{n}: the source changed");
            if out.status.success() {
                break; // the pack never reached the N-th step: every one was crashed at
            }
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(
                out.status.signal(),
                Some(9),
                "{step}:{n}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            crashes += 1;
            visible_containers_verify(&dst);
            match pack::read_marker(&dst) {
                Ok(m) => {
                    assert_eq!(m.files, 7, "{step}:{n}");
                    let r = pack::verify_tree(&dst, 2, &NoProgress).unwrap();
                    assert_eq!(r.failures(), 0, "{step}:{n}: complete marker, broken tree");
                }
                Err(e) => {
                    if dst.join(pack::MARKER).exists() {
                        assert!(e.to_string().contains("interrupted"), "{step}:{n}: {e}");
                    }
                }
            }
            // A re-run completes and cleans up.
            let rerun = || {
                Command::new(dcfs_bin())
                    .args(["pack", "-j", "1"])
                    .arg(&src)
                    .arg(&dst)
                    .stdout(Stdio::null())
                    .output()
                    .unwrap()
            };
            let again = rerun();
            assert!(
                again.status.success(),
                "{step}:{n}: re-run: {}",
                String::from_utf8_lossy(&again.stderr)
            );
            assert!(tmp_files(&dst).is_empty(), "{step}:{n}: {:?}", tmp_files(&dst));
            assert_eq!(
                pack::verify_tree(&dst, 2, &NoProgress).unwrap().failures(),
                0,
                "{step}:{n}"
            );
            fs::remove_dir_all(&dst).unwrap();
        }
        eprintln!("{step}: crashed at {crashes} points");
        // Seven containers and the marker twice (incomplete, then complete) are renamed.
        let least = if step == "after-dir-sync" { 2 } else { 9 };
        assert!(crashes >= least, "{step}: only {crashes} crash points reached");
    }
}

/// Unmounts the tmpfs even when the test fails.
struct Tmpfs(PathBuf);
impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_fails_clearly_and_leaves_no_partial_files() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP full-disk test: mounting a small tmpfs needs root");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir_all(&src).unwrap();
    // Incompressible data: 3 x 12 MiB cannot fit in 20 MiB whatever the codec.
    let mut r = Rng::new(5);
    for i in 0..3 {
        let data: Vec<u8> = (0..12 << 17).flat_map(|_| r.next().to_le_bytes()).collect();
        fs::write(src.join(format!("noise{i}.bin")), data).unwrap();
    }
    let small = t.path().join("small");
    fs::create_dir_all(&small).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=20m", "tmpfs"])
        .arg(&small)
        .status()
        .unwrap();
    if !st.success() {
        eprintln!("SKIP full-disk test: cannot mount a tmpfs here");
        return;
    }
    let _guard = Tmpfs(small.clone());
    let dst = small.join("p");
    let out = Command::new(dcfs_bin())
        .arg("pack")
        .arg(&src)
        .arg(&dst)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("pack into a 20 MiB tmpfs: {}", stderr.trim());
    assert_eq!(out.status.code(), Some(2), "could not run: {stderr}");
    assert!(stderr.contains("No space left on device"), "{stderr}");
    assert!(
        tmp_files(&dst).is_empty(),
        "temporary files left: {:?}",
        tmp_files(&dst)
    );
    visible_containers_verify(&dst);
    assert!(pack::read_marker(&dst).is_err(), "the marker must say incomplete");
}
