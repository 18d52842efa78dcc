//! Hostile inputs to the CLI and the library: odd trees to pack (symlink loops, FIFOs,
//! files changing under the packer, unreadable files, names with newlines and non-UTF-8
//! bytes, empty files, 0-tensor and lying safetensors), and malicious packs that try to
//! make `unpack` or the mount write or expose anything outside their target.

mod common;

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use dcfs::model::safetensors;
use dcfs::pack::{self, NoProgress, PackOptions};
use dcfs::Error;

/// Every entry under `dir` by its raw path bytes: digest + mode for files, target for links.
fn state(dir: &Path) -> BTreeMap<OsString, String> {
    let mut out = BTreeMap::new();
    for (r, md) in walk(dir) {
        let v = if md.file_type().is_symlink() {
            format!("-> {:?}", fs::read_link(dir.join(&r)).unwrap())
        } else if md.is_dir() {
            "dir".into()
        } else if md.is_file() {
            let h = blake3::hash(&fs::read(dir.join(&r)).unwrap());
            format!("{} {:o}", h.to_hex(), md.mode() & 0o7777)
        } else {
            continue;
        };
        out.insert(r.into_os_string(), v);
    }
    out
}

fn pack_lib(src: &Path, dst: &Path) -> dcfs::Result<pack::PackReport> {
    pack::pack_tree(src, dst, &PackOptions::default(), &NoProgress)
}

/// Runs the CLI with a deadline; a hang fails the test instead of stalling it.
fn dcfs_within(args: &[&OsStr], secs: u64) -> std::process::Output {
    let mut child = Command::new(dcfs_bin())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(secs);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > end {
            let _ = child.kill();
            panic!("dcfs {args:?} still running after {secs}s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn leftovers(dir: &Path) -> Vec<OsString> {
    state(dir)
        .into_keys()
        .filter(|k| k.as_bytes().windows(5).any(|w| w == b".tmp-"))
        .collect()
}

#[test]
fn symlink_loops_are_kept_as_links_and_never_followed() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir_all(src.join("d")).unwrap();
    fs::write(src.join("d/w.bin"), vec![7u8; 10_000]).unwrap();
    std::os::unix::fs::symlink("b", src.join("a")).unwrap();
    std::os::unix::fs::symlink("a", src.join("b")).unwrap();
    std::os::unix::fs::symlink(".", src.join("d/self")).unwrap();
    std::os::unix::fs::symlink("..", src.join("d/up")).unwrap();
    let r = pack_lib(&src, &t.path().join("p")).unwrap();
    assert_eq!((r.symlinks, r.files.len()), (4, 1));
    pack::unpack_tree(&t.path().join("p"), &t.path().join("u"), 2, &NoProgress).unwrap();
    assert_eq!(state(&src), state(&t.path().join("u")));
}

#[test]
fn a_fifo_is_skipped_with_a_warning_and_never_opened() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("x.bin"), b"data").unwrap();
    let st = Command::new("mkfifo").arg(src.join("pipe")).status().unwrap();
    assert!(st.success());
    let dst = t.path().join("p");
    // Opening a FIFO for reading would block forever: the deadline catches that.
    let out = dcfs_within(&[OsStr::new("pack"), src.as_os_str(), dst.as_os_str()], 60);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("pipe") && stderr.contains("FIFO"),
        "no warning: {stderr}"
    );
    assert!(!dst.join("pipe.dcz").exists() && dst.join("x.bin.dcz").exists());
}

#[test]
fn a_file_appended_to_while_packed_is_detected_and_not_written() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir_all(&src).unwrap();
    let mut r = Rng::new(3);
    let big: Vec<u8> = bf16_bytes(&weights(&mut r, 8 << 20));
    fs::write(src.join("grow.bin"), &big).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let path = src.join("grow.bin");
    let writer = std::thread::spawn(move || {
        let mut f = fs::OpenOptions::new().append(true).open(path).unwrap();
        while !s2.load(Ordering::Relaxed) {
            f.write_all(&[1u8; 16]).unwrap();
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    let dst = t.path().join("p");
    let res = pack_lib(&src, &dst);
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    match res {
        Err(Error::Changed { file, what }) => {
            assert!(file.ends_with("grow.bin"));
            eprintln!("detected: {what}");
        }
        other => panic!("a growing file must be refused, got {other:?}"),
    }
    assert!(
        !dst.join("grow.bin.dcz").exists(),
        "a container of a changing file was kept"
    );
    assert!(leftovers(&dst).is_empty(), "{:?}", leftovers(&dst));
    // The marker says the pack is unfinished: nothing will serve it.
    assert!(pack::read_marker(&dst).is_err());
}

#[test]
fn a_file_rewritten_in_place_while_packed_is_detected() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir_all(&src).unwrap();
    let mut r = Rng::new(4);
    fs::write(src.join("w.bin"), bf16_bytes(&weights(&mut r, 8 << 20))).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let path = src.join("w.bin");
    // Same size, new bytes: only the mtime tells.
    let writer = std::thread::spawn(move || {
        let f = fs::OpenOptions::new().write(true).open(path).unwrap();
        let mut i = 0u64;
        while !s2.load(Ordering::Relaxed) {
            use std::os::unix::fs::FileExt;
            f.write_all_at(&[i as u8; 64], (i * 4096) % (8 << 20)).unwrap();
            i += 1;
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    let res = pack_lib(&src, &t.path().join("p"));
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    assert!(matches!(res, Err(Error::Changed { .. })), "got {res:?}");
}

/// Root ignores permission bits, so the packer runs as `nobody` (setpriv) for this test.
#[test]
fn an_unreadable_file_fails_the_pack_naming_it() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("SKIP unreadable-file test: needs root (to drop to nobody) and setpriv");
        return;
    }
    let bin = dcfs_bin();
    // nobody must be able to reach the binary.
    let reachable = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&bin)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !reachable {
        eprintln!(
            "SKIP unreadable-file test: {} is not executable by nobody",
            bin.display()
        );
        return;
    }
    let t = tempfile::tempdir().unwrap();
    fs::set_permissions(t.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let src = t.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("ok.bin"), b"fine").unwrap();
    fs::write(src.join("secret.bin"), b"nope").unwrap();
    fs::set_permissions(&src, fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(src.join("secret.bin"), fs::Permissions::from_mode(0o000)).unwrap();
    let dst = t.path().join("p");
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&bin)
        .arg("pack")
        .arg(&src)
        .arg(&dst)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("secret.bin") && stderr.contains("Permission denied"),
        "{stderr}"
    );
    assert!(!dst.join("secret.bin.dcz").exists());
    assert!(leftovers(&dst).is_empty());
}

#[test]
fn names_with_newlines_and_non_utf8_bytes_round_trip_through_pack_unpack_and_mount() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let odd_dir = OsStr::from_bytes(b"dir\nwith newline");
    let odd_file = OsStr::from_bytes(b"\xff\xfe latin1 \xe9.safetensors");
    let odd_link = OsStr::from_bytes(b"link\n\x80");
    fs::create_dir_all(src.join(odd_dir)).unwrap();
    let st = safetensors::build(&[("w\n\u{1F600}", "I8", vec![300], vec![5u8; 300])]);
    fs::write(src.join(odd_dir).join(odd_file), &st).unwrap();
    fs::write(src.join("a\nb.txt"), b"newline in the name").unwrap();
    fs::write(src.join(OsStr::from_bytes(b"\x01\x02ctl")), b"").unwrap();
    std::os::unix::fs::symlink(Path::new(odd_dir).join(odd_file), src.join(odd_link)).unwrap();
    let p = t.path().join("p");
    pack_lib(&src, &p).unwrap();
    assert_eq!(pack::verify_tree(&p, 2, &NoProgress).unwrap().failures(), 0);
    let u = t.path().join("u");
    pack::unpack_tree(&p, &u, 2, &NoProgress).unwrap();
    assert_eq!(state(&src), state(&u));
    if !can_mount() {
        return;
    }
    let m = Mounted::new(&p, &t.path().join("mnt"), &[]);
    assert_eq!(state(&src), state(&m.mnt));
}

#[test]
fn empty_files_and_zero_tensor_safetensors_pack_and_serve() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("empty.bin"), b"").unwrap();
    fs::write(src.join("empty.safetensors"), b"").unwrap();
    fs::write(src.join("none.safetensors"), safetensors::build(&[])).unwrap();
    let mut bare = 2u64.to_le_bytes().to_vec();
    bare.extend_from_slice(b"{}");
    fs::write(src.join("bare.safetensors"), &bare).unwrap();
    let p = t.path().join("p");
    // A 0-byte .safetensors is not a valid safetensors file: refused, or opaque when lenient.
    let e = pack_lib(&src, &p).unwrap_err();
    assert!(e.to_string().contains("empty.safetensors"), "{e}");
    fs::remove_dir_all(&p).unwrap();
    fs::remove_file(src.join("empty.safetensors")).unwrap();
    let r = pack_lib(&src, &p).unwrap();
    assert_eq!(r.files.len(), 3);
    let u = t.path().join("u");
    pack::unpack_tree(&p, &u, 2, &NoProgress).unwrap();
    assert_eq!(state(&src), state(&u));
    if can_mount() {
        let m = Mounted::new(&p, &t.path().join("mnt"), &[]);
        assert_eq!(state(&src), state(&m.mnt));
        assert_eq!(fs::metadata(m.mnt.join("empty.bin")).unwrap().len(), 0);
    }
}

#[test]
fn a_safetensors_header_claiming_2_pow_60_bytes_is_refused_before_allocating() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir_all(&src).unwrap();
    let mut f = (1u64 << 60).to_le_bytes().to_vec();
    f.extend_from_slice(b"{\"a\":{}}");
    f.resize(4096, b' ');
    fs::write(src.join("liar.safetensors"), &f).unwrap();
    let p = t.path().join("p");
    let out = dcfs_within(&[OsStr::new("pack"), src.as_os_str(), p.as_os_str()], 60);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("liar.safetensors") && stderr.contains("header length"),
        "{stderr}"
    );
    assert!(!p.join("liar.safetensors.dcz").exists());
    // --lenient packs it as opaque bytes, byte-identical.
    let out = dcfs_within(
        &[
            OsStr::new("pack"),
            OsStr::new("--lenient"),
            src.as_os_str(),
            p.as_os_str(),
        ],
        60,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let u = t.path().join("u");
    pack::unpack_tree(&p, &u, 2, &NoProgress).unwrap();
    assert_eq!(fs::read(u.join("liar.safetensors")).unwrap(), f);
}

/// A malicious pack: absolute and `..` symlinks, a symlink planted under the temporary
/// name unpack writes to, and a symlinked directory. Nothing outside the target changes.
#[test]
fn a_malicious_pack_cannot_make_unpack_or_the_mount_write_or_serve_outside() {
    let t = tempfile::tempdir().unwrap();
    let outside = t.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("victim"), b"must stay").unwrap();
    let src = t.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("m.bin"), vec![3u8; 50_000]).unwrap();
    let p = t.path().join("p");
    pack_lib(&src, &p).unwrap();
    // Tamper with the pack the way a hostile archive could.
    let victim = outside.join("victim");
    std::os::unix::fs::symlink(&victim, p.join("abs")).unwrap();
    std::os::unix::fs::symlink("../../outside/victim", p.join("dotdot")).unwrap();
    // unpack (this process) writes `.m.bin.tmp-<pid>` before renaming it to `m.bin`.
    let planted = format!(".m.bin.tmp-{}", std::process::id());
    std::os::unix::fs::symlink(&victim, p.join(&planted)).unwrap();
    std::os::unix::fs::symlink(&outside, p.join("escape")).unwrap();
    let before = state(&outside);
    let u = t.path().join("u");
    let r = pack::unpack_tree(&p, &u, 2, &NoProgress);
    assert_eq!(state(&outside), before, "unpack wrote outside its target ({r:?})");
    r.unwrap();
    assert_eq!(fs::read(u.join("m.bin")).unwrap(), vec![3u8; 50_000]);
    // The links are restored as links, never as copies of what they point to.
    assert!(fs::symlink_metadata(u.join("abs")).unwrap().file_type().is_symlink());
    assert!(fs::symlink_metadata(u.join("escape")).unwrap().file_type().is_symlink());
    // A second pack with a real directory named like the planted link must not write
    // through the link that the first unpack left in the destination.
    let src2 = t.path().join("src2");
    fs::create_dir_all(src2.join("escape")).unwrap();
    fs::write(src2.join("escape/new.bin"), b"inside only").unwrap();
    let p2 = t.path().join("p2");
    pack_lib(&src2, &p2).unwrap();
    let r2 = pack::unpack_tree(&p2, &u, 2, &NoProgress);
    assert!(r2.is_err(), "unpacking through a symlinked directory must be refused");
    eprintln!("refused: {}", r2.unwrap_err());
    assert_eq!(state(&outside), before, "unpack wrote through a symlinked directory");
    if !can_mount() {
        return;
    }
    // The mount serves links as links (resolved by the reader, with the reader's own
    // rights) and is read-only.
    let m = Mounted::new(&p, &t.path().join("mnt"), &[]);
    assert_eq!(fs::read_link(m.mnt.join("abs")).unwrap(), victim);
    assert_eq!(
        fs::read_link(m.mnt.join("dotdot")).unwrap(),
        Path::new("../../outside/victim")
    );
    // (Writing through `abs` would follow the link to the victim, outside the mount, with
    // this process's own rights: that is the kernel's doing, not the mount's, so not tried.)
    assert!(fs::write(m.mnt.join("m.bin"), b"x").is_err());
    assert!(fs::write(m.mnt.join("new"), b"x").is_err());
    assert_eq!(state(&outside), before);
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = mounts
        .lines()
        .find(|l| l.contains(m.mnt.to_str().unwrap()))
        .expect("mounted");
    assert!(!line.contains("allow_other"), "allow_other without being asked: {line}");
    assert!(line.split(' ').nth(5).unwrap().split(',').any(|o| o == "ro"), "{line}");
}

/// Re-packing into an existing pack directory where somebody planted links: a symlink
/// under the marker's and a container's temporary name, and a subdirectory replaced by a
/// symlink to a directory outside. Nothing outside changes (no write, no chmod, no
/// utimes), and the pack ends up whole with a real subdirectory.
#[test]
fn repacking_never_follows_links_planted_in_the_destination() {
    let t = tempfile::tempdir().unwrap();
    let outside = t.path().join("outside");
    fs::create_dir_all(outside.join("dir")).unwrap();
    fs::write(outside.join("victim"), b"must stay").unwrap();
    fs::set_permissions(outside.join("dir"), fs::Permissions::from_mode(0o711)).unwrap();
    let src = t.path().join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::write(src.join("m.bin"), vec![3u8; 50_000]).unwrap();
    fs::write(src.join("sub/w.bin"), vec![4u8; 20_000]).unwrap();
    fs::set_permissions(src.join("sub"), fs::Permissions::from_mode(0o777)).unwrap();
    let p = t.path().join("p");
    pack_lib(&src, &p).unwrap();
    // Plant: the marker's and a container's temporary names (this process's pid, as the
    // library pack below uses) point at the victim; `sub` becomes a link to a directory.
    let pid = std::process::id();
    let victim = outside.join("victim");
    std::os::unix::fs::symlink(&victim, p.join(format!("..dcfs-pack.json.tmp-{pid}"))).unwrap();
    std::os::unix::fs::symlink(&victim, p.join(format!(".m.bin.dcz.tmp-{pid}"))).unwrap();
    fs::remove_dir_all(p.join("sub")).unwrap();
    std::os::unix::fs::symlink(outside.join("dir"), p.join("sub")).unwrap();
    let before = state(&outside);
    let mode_before = fs::metadata(outside.join("dir")).unwrap().mode();
    let mtime_before = fs::metadata(outside.join("dir")).unwrap().mtime();
    let r = pack_lib(&src, &p);
    assert_eq!(state(&outside), before, "re-pack wrote outside its destination ({r:?})");
    assert_eq!(
        fs::metadata(outside.join("dir")).unwrap().mode(),
        mode_before,
        "chmod followed a link"
    );
    assert_eq!(fs::metadata(outside.join("dir")).unwrap().mtime(), mtime_before);
    r.unwrap();
    assert!(
        fs::symlink_metadata(p.join("sub")).unwrap().is_dir(),
        "sub is a real directory again"
    );
    assert!(leftovers(&p).is_empty(), "{:?}", leftovers(&p));
    assert_eq!(pack::verify_tree(&p, 2, &NoProgress).unwrap().failures(), 0);
    let u = t.path().join("u");
    pack::unpack_tree(&p, &u, 2, &NoProgress).unwrap();
    assert_eq!(state(&src), state(&u));
}

/// Containers whose names map to `.` or `..` (`..dcz`, `...dcz`, also in a subdirectory)
/// are refused everywhere: unpack writes nothing outside and unpacks the rest, verify
/// reports them as damage, inspect skips them, the mount serves no extra entries.
#[test]
fn containers_named_for_dot_or_dotdot_are_refused_everywhere() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::write(src.join("m.bin"), vec![3u8; 50_000]).unwrap();
    fs::write(src.join("sub/w.bin"), vec![4u8; 20_000]).unwrap();
    let p = t.path().join("p");
    pack_lib(&src, &p).unwrap();
    let good = p.join("m.bin.dcz");
    for bad in ["..dcz", "...dcz", ".dcz", "sub/..dcz", "sub/...dcz"] {
        fs::copy(&good, p.join(bad)).unwrap();
    }
    // What unpack would have clobbered: the destination's parent holds a file named like
    // the temporary of "..".
    let work = t.path().join("work");
    fs::create_dir_all(&work).unwrap();
    fs::write(work.join("keep"), b"keep").unwrap();
    let before = state(&work);
    let u = work.join("u");
    pack::unpack_tree(&p, &u, 2, &NoProgress).unwrap();
    let mut after = state(&work);
    after.retain(|k, _| !Path::new(k).starts_with("u"));
    assert_eq!(after, before, "unpack touched the destination's parent");
    assert_eq!(state(&src), state(&u), "exactly the real files are unpacked");
    let v = pack::verify_tree(&p, 2, &NoProgress).unwrap();
    assert_eq!(v.failures(), 5, "{:?}", v.files);
    let out = dcfs_within(&[OsStr::new("verify"), p.as_os_str()], 60);
    assert_eq!(out.status.code(), Some(1), "verify exits 1 on a refused name");
    let i = pack::inspect_path(&p, &PackOptions::default(), &NoProgress).unwrap();
    assert_eq!(
        i.files.len(),
        2,
        "{:?}",
        i.files.iter().map(|f| &f.path).collect::<Vec<_>>()
    );
    if !can_mount() {
        return;
    }
    let m = Mounted::new(&p, &t.path().join("mnt"), &[]);
    for dir in [m.mnt.clone(), m.mnt.join("sub")] {
        // `ls -f -a` prints the raw readdir stream, `.` and `..` included.
        let ls = Command::new("ls").args(["-f", "-a"]).arg(&dir).output().unwrap();
        let mut names: Vec<String> = String::from_utf8_lossy(&ls.stdout).lines().map(String::from).collect();
        names.sort();
        let expect: &[&str] = if dir == m.mnt {
            &[".", "..", "m.bin", "sub"]
        } else {
            &[".", "..", "w.bin"]
        };
        assert_eq!(names, expect, "readdir of {}", dir.display());
    }
}

/// A real file whose name looks like a temporary (`.x.tmp-1`) is packed, verified,
/// unpacked and served like any other; only the writer's own temporaries are hidden.
#[test]
fn a_hidden_file_named_like_a_temporary_is_served() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join(".x.tmp-1"), b"a real hidden file").unwrap();
    fs::write(src.join(".y.dcz.tmp-22"), b"another").unwrap();
    let p = t.path().join("p");
    pack_lib(&src, &p).unwrap();
    assert_eq!(pack::verify_tree(&p, 2, &NoProgress).unwrap().files.len(), 2);
    let u = t.path().join("u");
    pack::unpack_tree(&p, &u, 2, &NoProgress).unwrap();
    assert_eq!(state(&src), state(&u));
    if !can_mount() {
        return;
    }
    let m = Mounted::new(&p, &t.path().join("mnt"), &[]);
    assert_eq!(state(&src), state(&m.mnt));
}

/// A container is never more readable than its source: a 0600 secret packs to a 0600
/// container; the marker is as readable as the pack directory.
#[test]
fn containers_are_no_more_readable_than_their_sources() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir_all(&src).unwrap();
    for (name, mode) in [
        ("secret.bin", 0o600),
        ("shared.bin", 0o644),
        ("group.bin", 0o640),
        ("ro.bin", 0o400),
    ] {
        fs::write(src.join(name), name.as_bytes()).unwrap();
        fs::set_permissions(src.join(name), fs::Permissions::from_mode(mode)).unwrap();
    }
    let p = t.path().join("p");
    fs::create_dir_all(&p).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o700)).unwrap();
    pack_lib(&src, &p).unwrap();
    let mode = |n: &str| fs::metadata(p.join(n)).unwrap().mode() & 0o777;
    assert_eq!(mode("secret.bin.dcz"), 0o600);
    assert_eq!(
        mode("ro.bin.dcz"),
        0o600,
        "owner may rewrite it; nobody else may read it"
    );
    assert_eq!(mode("group.bin.dcz") & 0o077, 0o040);
    assert_eq!(mode("shared.bin.dcz") & 0o077, 0o044);
    assert_eq!(
        mode(pack::MARKER) & 0o077,
        0,
        "marker as readable as its 0700 directory"
    );
    // Restored exactly on unpack.
    let u = t.path().join("u");
    pack::unpack_tree(&p, &u, 2, &NoProgress).unwrap();
    assert_eq!(state(&src), state(&u));
}

/// As root, owner and group go through pack (kept on the containers, directories and
/// links), the mount (served) and unpack (restored), as tar keeps them.
#[test]
fn owners_go_through_pack_mount_and_unpack_as_root() {
    if !nix_is_root() {
        eprintln!("SKIP owners: changing owners needs root");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::write(src.join("sub/a.bin"), b"owned by 1234").unwrap();
    fs::write(src.join("b.bin"), b"owned by root").unwrap();
    std::os::unix::fs::symlink("sub/a.bin", src.join("link")).unwrap();
    std::os::unix::fs::chown(src.join("sub/a.bin"), Some(1234), Some(5678)).unwrap();
    std::os::unix::fs::chown(src.join("sub"), Some(2345), Some(6789)).unwrap();
    std::os::unix::fs::lchown(src.join("link"), Some(3456), Some(7890)).unwrap();
    let owners = |d: &Path| -> Vec<(u32, u32)> {
        ["sub/a.bin", "b.bin", "sub", "link"]
            .iter()
            .map(|n| {
                let md = fs::symlink_metadata(d.join(n)).unwrap();
                (md.uid(), md.gid())
            })
            .collect()
    };
    let want = owners(&src);
    assert_eq!(want[0], (1234, 5678));
    let p = t.path().join("p");
    pack_lib(&src, &p).unwrap();
    let md = fs::metadata(p.join("sub/a.bin.dcz")).unwrap();
    assert_eq!((md.uid(), md.gid()), (1234, 5678), "container keeps the owner");
    let u = t.path().join("u");
    pack::unpack_tree(&p, &u, 2, &NoProgress).unwrap();
    assert_eq!(owners(&u), want, "unpack restores owners");
    if !can_mount() {
        return;
    }
    let m = Mounted::new(&p, &t.path().join("mnt"), &[]);
    assert_eq!(owners(&m.mnt), want, "the mount serves owners");
}

fn nix_is_root() -> bool {
    fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}
