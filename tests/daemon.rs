//! The mount as a production daemon: where it logs (syslog, a 0600 file, stderr), systemd
//! readiness through $NOTIFY_SOCKET, option checking, and versioned JSON.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use dcfs::pack::{self, NoProgress, PackOptions};

fn packed(t: &Path, seed: u64) -> PathBuf {
    let src = t.join("src");
    synth_tree(&src, seed);
    let p = t.join("packed");
    pack::pack_tree(&src, &p, &PackOptions::default(), &NoProgress).unwrap();
    p
}

/// Datagrams received on `sock` until one contains `want` (or the time is up).
fn recv_until(sock: &UnixDatagram, want: &str, secs: u64) -> Vec<String> {
    sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let end = Instant::now() + Duration::from_secs(secs);
    let mut got = Vec::new();
    let mut buf = vec![0u8; 8192];
    while Instant::now() < end {
        if let Ok(n) = sock.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            if got.last().unwrap().contains(want) {
                break;
            }
        }
    }
    got
}

fn wait_exit(child: &mut Child, secs: u64) -> Option<std::process::ExitStatus> {
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn wait_unmounted(mnt: &Path) {
    for _ in 0..250 {
        if !is_mounted(mnt) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{} still mounted", mnt.display());
}

#[test]
fn a_detached_mount_logs_mount_and_unmount_to_syslog() {
    if !can_mount() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let p = packed(t.path(), 21);
    let sock_path = t.path().join("log.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let mnt = t.path().join("mnt");
    fs::create_dir_all(&mnt).unwrap();
    let out = Command::new(dcfs_bin())
        .env("DCFS_SYSLOG_SOCKET", &sock_path)
        .env_remove("RUST_LOG")
        .arg("mount")
        .arg(&p)
        .arg(&mnt)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mnt = mnt.canonicalize().unwrap();
    let got = recv_until(&sock, "serving", 10);
    let line = got
        .iter()
        .find(|l| l.contains("serving"))
        .unwrap_or_else(|| panic!("{got:?}"));
    // <30> = facility daemon (3) * 8 + info (6); then the time, then the tag with the pid.
    assert!(line.starts_with("<30>"), "{line}");
    assert!(line.contains(" dcfs["), "{line}");
    assert!(line.contains(&mnt.display().to_string()), "{line}");
    assert!(!line.contains('\n') && !line.contains('\x1b'), "{line:?}");
    assert!(Command::new(dcfs_bin())
        .arg("umount")
        .arg(&mnt)
        .status()
        .unwrap()
        .success());
    wait_unmounted(&mnt);
    let got = recv_until(&sock, "unmounted", 10);
    assert!(got.iter().any(|l| l.contains("unmounted")), "{got:?}");
}

#[test]
fn log_file_is_created_0600_and_a_planted_link_is_refused() {
    if !can_mount() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let p = packed(t.path(), 22);
    let mnt = t.path().join("mnt");
    fs::create_dir_all(&mnt).unwrap();
    let log = t.path().join("dcfs.log");
    let opt = format!("log_file={}", log.display());
    let m = Mounted::new(&p, &mnt, &["-o", &opt]);
    let mode = fs::metadata(&log).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    drop(m);
    wait_unmounted(&mnt.canonicalize().unwrap());
    let end = Instant::now() + Duration::from_secs(10);
    let mut text = String::new();
    while Instant::now() < end && !text.contains("unmounted") {
        text = fs::read_to_string(&log).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(text.contains("serving") && text.contains("unmounted"), "{text}");
    assert!(!text.contains('\x1b'), "{text:?}");

    // A symlink at the log path is not followed: the mount is refused, the target untouched.
    let target = t.path().join("victim");
    fs::write(&target, b"keep").unwrap();
    let link = t.path().join("link.log");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let out = Command::new(dcfs_bin())
        .arg("mount")
        .arg(&p)
        .arg(&mnt)
        .arg("-o")
        .arg(format!("log_file={}", link.display()))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("log file"));
    assert_eq!(fs::read(&target).unwrap(), b"keep");
    assert!(!is_mounted(&mnt.canonicalize().unwrap()));
}

#[test]
fn a_foreground_mount_tells_systemd_ready_then_stopping() {
    if !can_mount() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let p = packed(t.path(), 23);
    let sock_path = t.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let mnt = t.path().join("mnt");
    fs::create_dir_all(&mnt).unwrap();
    let mnt = mnt.canonicalize().unwrap();
    let mut c = Command::new(dcfs_bin())
        .env("NOTIFY_SOCKET", &sock_path)
        .arg("mount")
        .arg("-f")
        .arg(&p)
        .arg(&mnt)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let got = recv_until(&sock, "READY=1", 15);
    let ready = got.iter().find(|m| m.contains("READY=1"));
    // Ready means mounted: systemd starts dependants at this point.
    let mounted = is_mounted(&mnt);
    // SAFETY: sending a signal to our own child.
    unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    let st = wait_exit(&mut c, 10).expect("dcfs did not exit on SIGTERM");
    let ready = ready.unwrap_or_else(|| panic!("no READY=1: {got:?}"));
    assert!(mounted, "READY=1 before the mount existed");
    assert!(ready.contains(&format!("MAINPID={}", c.id())), "{ready}");
    assert!(st.success(), "{st}");
    let got = recv_until(&sock, "STOPPING=1", 5);
    assert!(got.iter().any(|m| m.contains("STOPPING=1")), "{got:?}");
    // Foreground logs go to stderr.
    let mut err = String::new();
    std::io::Read::read_to_string(c.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(err.contains("serving"), "{err}");
}

#[test]
fn bad_daemon_options_are_refused_before_mounting() {
    let t = tempfile::tempdir().unwrap();
    let mnt = t.path().join("mnt");
    fs::create_dir_all(&mnt).unwrap();
    for (opt, why) in [
        ("gpu=sometimes", "gpu"),
        ("log=journal", "log"),
        ("log_file", "needs a value"),
        ("allow_other,allow_root", "exclude"),
        ("auto_unmount", "needs allow_root"),
    ] {
        let out = Command::new(dcfs_bin())
            .arg("mount")
            .arg(t.path())
            .arg(&mnt)
            .args(["-o", opt])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{opt}: {err}");
        assert!(err.contains(why), "{opt}: {err}");
    }
}

#[test]
fn unprivileged_options_mount_and_stats_json_has_a_schema_version() {
    if !can_mount() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let p = packed(t.path(), 24);
    let m = Mounted::new(
        &p,
        &t.path().join("mnt"),
        &["-o", "allow_root,gpu=off,x-systemd.automount"],
    );
    assert!(fs::read(m.mnt.join("config.json")).is_ok());
    let s = m.stats();
    assert_eq!(s["schema_version"], 1, "{s}");
    assert!(s["files"].as_u64().unwrap() > 0);
}

#[test]
fn an_autofs_trigger_at_the_mount_point_is_mounted_over() {
    if !can_mount() {
        return;
    }
    let has_autofs = fs::read_to_string("/proc/filesystems").is_ok_and(|f| f.contains("autofs"));
    if !has_autofs {
        eprintln!("SKIP autofs test: the kernel has no autofs filesystem");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let p = packed(t.path(), 25);
    let mnt = t.path().join("mnt");
    fs::create_dir_all(&mnt).unwrap();
    let mnt = mnt.canonicalize().unwrap();
    // A direct autofs mount as systemd's automount makes it, driven by a pipe. Both ends
    // are closed once mounted: anything that fires the trigger then fails at once (the
    // mount turns catatonic) instead of waiting for a daemon that is not there.
    let mut fds = [0i32; 2];
    // SAFETY: `fds` is a valid two-element array for pipe(2) to fill.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: getpgrp has no preconditions.
    let pgrp = unsafe { libc::getpgrp() };
    let opts = format!("fd={},pgrp={pgrp},minproto=5,maxproto=5,direct", fds[1]);
    let st = Command::new("mount")
        .args(["-t", "autofs", "-o", &opts, "dcfs-test-autofs"])
        .arg(&mnt)
        .status();
    // SAFETY: closing the two descriptors pipe(2) gave us, used nowhere else.
    unsafe {
        libc::close(fds[0]);
        libc::close(fds[1]);
    }
    if !st.as_ref().is_ok_and(|s| s.success()) {
        eprintln!("SKIP autofs test: mount -t autofs failed here ({st:?})");
        return;
    }
    let autofs_top = || dcfs::fs::top_mount_at(&mnt).is_some_and(|m| m.fstype == "autofs");
    assert!(autofs_top());
    // In the foreground, so in the trigger's process group (its "daemon"): fuser 0.18 opens
    // the mount point before mount(2), and from any other process group that open fires
    // the trigger (see the NOTE in docs/MOUNT.md).
    let mut c = Command::new(dcfs_bin())
        .arg("mount")
        .arg("-f")
        .arg(&p)
        .arg(&mnt)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    while autofs_top() && Instant::now() < end && c.try_wait().unwrap().is_none() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mounted = dcfs::fs::top_mount_at(&mnt).map(|m| m.fstype);
    let read = fs::read(mnt.join("config.json"));
    let want = fs::read(t.path().join("src/config.json")).unwrap();
    let _ = Command::new(dcfs_bin()).arg("umount").arg(&mnt).status();
    for _ in 0..250 {
        if autofs_top() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let autofs_left = autofs_top();
    let st = wait_exit(&mut c, 10);
    let _ = Command::new("umount").arg(&mnt).status();
    let mut err = String::new();
    if st.is_none() {
        let _ = c.kill();
    }
    std::io::Read::read_to_string(c.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(st.is_some_and(|s| s.success()), "{st:?}: {err}");
    assert!(mounted.as_deref().is_some_and(|f| f.starts_with("fuse")), "{mounted:?}");
    assert_eq!(read.unwrap(), want);
    // Unmounting dcfs leaves the trigger in place, as systemd expects.
    assert!(autofs_left);
}

/// Puts /dev/fuse's mode back when dropped (the test opens it to other users).
struct FuseMode(u32);

impl Drop for FuseMode {
    fn drop(&mut self) {
        let _ = fs::set_permissions("/dev/fuse", fs::Permissions::from_mode(self.0));
    }
}

/// Puts a file back as it was (or removes it) when dropped.
struct RestoreFile(PathBuf, Option<Vec<u8>>);

impl Drop for RestoreFile {
    fn drop(&mut self) {
        let _ = match &self.1 {
            Some(b) => fs::write(&self.0, b),
            None => fs::remove_file(&self.0),
        };
    }
}

/// The uid and gid of a throwaway user, created when missing.
fn test_user() -> Option<(u32, u32)> {
    const NAME: &str = "dcfs-test-user";
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id").arg(flag).arg(NAME).output().ok()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    if id("-u").is_none() {
        let st = Command::new("useradd")
            .args(["--system", "--no-create-home", "--shell", "/usr/sbin/nologin", NAME])
            .status();
        if !st.as_ref().is_ok_and(|s| s.success()) {
            eprintln!("SKIP unprivileged test: useradd failed ({st:?})");
            return None;
        }
    }
    Some((id("-u")?, id("-g")?))
}

/// `setpriv` running dcfs (or `prog`) as `uid:gid` with no supplementary groups.
fn as_user(uid: u32, gid: u32, prog: &Path) -> Command {
    let mut c = Command::new("setpriv");
    c.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .arg("--clear-groups")
        .arg("--")
        .arg(prog);
    c
}

fn find_fusermount() -> Option<PathBuf> {
    ["/usr/bin/fusermount3", "/bin/fusermount3"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

#[test]
fn a_normal_user_mounts_reads_and_unmounts_through_fusermount3() {
    if !can_mount() {
        return;
    }
    if find_fusermount().is_none() {
        eprintln!("SKIP unprivileged test: no fusermount3 (Debian: apt install fuse3)");
        return;
    }
    let Some((uid, gid)) = test_user() else {
        return;
    };
    let mode = fs::metadata("/dev/fuse").unwrap().permissions().mode() & 0o7777;
    let _restore = FuseMode(mode);
    fs::set_permissions("/dev/fuse", fs::Permissions::from_mode(0o666)).unwrap();
    // A tree the user owns, under a directory they can reach.
    let t = tempfile::tempdir().unwrap();
    let p = packed(t.path(), 26);
    let mnt = t.path().join("mnt");
    fs::create_dir_all(&mnt).unwrap();
    assert!(Command::new("chown")
        .arg("-R")
        .arg(format!("{uid}:{gid}"))
        .arg(t.path())
        .status()
        .unwrap()
        .success());
    let mnt = mnt.canonicalize().unwrap();
    // allow_root (which auto_unmount needs) is refused to users without user_allow_other.
    let conf = Path::new("/etc/fuse.conf");
    let old_conf = fs::read(conf).ok();
    let _restore_conf = RestoreFile(conf.to_path_buf(), old_conf.clone());
    let mut text = old_conf.unwrap_or_default();
    text.extend_from_slice(b"\nuser_allow_other\n");
    fs::write(conf, text).unwrap();
    for opts in ["ro", "auto_unmount,allow_root"] {
        let out = as_user(uid, gid, &dcfs_bin())
            .arg("mount")
            .arg(&p)
            .arg(&mnt)
            .args(["-o", opts])
            .output()
            .unwrap();
        assert!(out.status.success(), "{opts}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(is_mounted(&mnt), "{opts}");
        // The user reads every file of the mount; each must be byte-identical to its source.
        let out = as_user(uid, gid, Path::new("sh"))
            .arg("-c")
            .arg("cd \"$1\" && find . -type f -print0 | sort -z | xargs -0 sha256sum")
            .arg("sh")
            .arg(&mnt)
            .output()
            .unwrap();
        assert!(out.status.success(), "{opts}: {}", String::from_utf8_lossy(&out.stderr));
        let want = Command::new("sh")
            .arg("-c")
            .arg("cd \"$1\" && find . -type f -print0 | sort -z | xargs -0 sha256sum")
            .arg("sh")
            .arg(t.path().join("src"))
            .output()
            .unwrap();
        assert!(want.status.success());
        let got = String::from_utf8_lossy(&out.stdout);
        assert_eq!(got, String::from_utf8_lossy(&want.stdout), "{opts}");
        assert!(
            got.contains("./model.safetensors") && got.contains("./sub/model.gguf"),
            "{got}"
        );
        // stats works for the user who mounted.
        let out = as_user(uid, gid, &dcfs_bin())
            .args(["stats", "--json"])
            .arg(&mnt)
            .output()
            .unwrap();
        assert!(out.status.success(), "{opts}: {}", String::from_utf8_lossy(&out.stderr));
        let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(st["schema_version"], 1, "{st}");
        assert!(st["bytes_served"].as_u64().unwrap_or(0) > 0, "{st}");
        // umount2(2) answers EPERM to a user; dcfs umount then goes through fusermount3.
        let out = as_user(uid, gid, &dcfs_bin()).arg("umount").arg(&mnt).output().unwrap();
        let ok = out.status.success();
        if !ok {
            let _ = Command::new(dcfs_bin()).args(["umount", "-l"]).arg(&mnt).status();
        }
        assert!(ok, "{opts}: {}", String::from_utf8_lossy(&out.stderr));
        wait_unmounted(&mnt);
    }
}

#[test]
fn a_corrupt_chunk_is_logged_to_syslog_once_with_its_file_and_chunk() {
    if !can_mount() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    synth_tree(&src, 27);
    let p = t.path().join("packed");
    let mut o = PackOptions {
        chunk_size: 64 << 10,
        ..Default::default()
    };
    o.encode.min_gain = 0.0;
    pack::pack_tree(&src, &p, &o, &NoProgress).unwrap();
    let cpath = p.join("model.safetensors.dcz");
    let c = dcfs::format::Container::open(&cpath).unwrap();
    let k = c.chunks.len() / 2;
    let victim = c.chunks[k];
    drop(c);
    let mut bytes = fs::read(&cpath).unwrap();
    bytes[(victim.payload_offset + victim.payload_len as u64 / 2) as usize] ^= 0x40;
    fs::write(&cpath, &bytes).unwrap();
    let sock_path = t.path().join("log.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let mnt = t.path().join("mnt");
    fs::create_dir_all(&mnt).unwrap();
    let out = Command::new(dcfs_bin())
        .env("DCFS_SYSLOG_SOCKET", &sock_path)
        .env_remove("RUST_LOG")
        .arg("mount")
        .arg(&p)
        .arg(&mnt)
        .args(["--prefetch", "0"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let m = Mounted {
        mnt: mnt.canonicalize().unwrap(),
    };
    // Twice: the second pass finds the same bad chunk, which is not logged again.
    for _ in 0..2 {
        assert!(fs::read(m.mnt.join("model.safetensors")).is_err());
    }
    drop(m);
    let got = recv_until(&sock, "unmounted", 10);
    let corrupt: Vec<_> = got.iter().filter(|l| l.contains("corrupt")).collect();
    assert_eq!(corrupt.len(), 1, "{got:?}");
    // <27> = daemon (3) * 8 + error (3).
    let line = corrupt[0];
    assert!(line.starts_with("<27>"), "{line}");
    assert!(
        line.contains("model.safetensors") && line.contains(&format!("chunk {k}")),
        "{line}"
    );
}
