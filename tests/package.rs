//! The .deb package (scripts/build-deb.sh): built here, unpacked into a clean tree with
//! `dpkg -x`, and its binary run from there: version, pack + verify of a fetched model, and
//! `mount -t dcfs` / an fstab line through the packaged mount.dcfs helper. The host's /usr and
//! /etc stay untouched: the mount test runs in a private mount namespace where the package's
//! usr/ is laid over /usr with overlayfs and a test fstab is bound over /etc/fstab.
//! Also: the glibc floor the package declares holds for the binary it ships.
//! The package needs the release binary: the first run makes a release build (in CI the
//! aarch64 check would make it anyway).

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::*;

fn have(prog: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {prog}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The amd64 package, built once per test binary into a directory that outlives the tests;
/// `None` (with the reason printed) when dpkg-deb is missing or this is not x86_64.
fn deb() -> Option<&'static Path> {
    static DEB: OnceLock<Option<PathBuf>> = OnceLock::new();
    DEB.get_or_init(|| {
        if !cfg!(target_arch = "x86_64") {
            skip("package tests: the amd64 package is built and installed on x86_64 only");
            return None;
        }
        for p in ["dpkg-deb", "dpkg", "objdump"] {
            if !have(p) {
                skip(&format!("package tests: no {p} (Debian: dpkg, binutils)"));
                return None;
            }
        }
        let out_dir = root().join("target/deb-test");
        let _ = fs::remove_dir_all(&out_dir);
        let out = Command::new(root().join("scripts/build-deb.sh"))
            .arg("amd64")
            .env("DCFS_DEB_OUT", &out_dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "build-deb.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(path.ends_with("_amd64.deb"), "{path}");
        Some(PathBuf::from(path))
    })
    .as_deref()
}

fn dpkg_deb(args: &[&str], deb: &Path) -> String {
    let out = Command::new("dpkg-deb").args(args).arg(deb).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// `dpkg -x` into a fresh directory.
fn installed(deb: &Path) -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    let st = Command::new("dpkg").arg("-x").arg(deb).arg(t.path()).status().unwrap();
    assert!(st.success());
    t
}

/// The floor scripts/build-deb.sh declares (`GLIBC_FLOOR=x.y`), its single source.
fn glibc_floor() -> (u32, u32) {
    let s = fs::read_to_string(root().join("scripts/build-deb.sh")).unwrap();
    let v = s
        .lines()
        .find_map(|l| l.strip_prefix("GLIBC_FLOOR="))
        .expect("GLIBC_FLOOR= in build-deb.sh");
    parse_ver(v).unwrap()
}

fn parse_ver(v: &str) -> Option<(u32, u32)> {
    let mut it = v.trim().split('.');
    Some((it.next()?.parse().ok()?, it.next().unwrap_or("0").parse().ok()?))
}

/// Every GLIBC_x.y symbol version an ELF binary asks for.
fn glibc_versions(bin: &Path) -> Vec<(u32, u32)> {
    let out = Command::new("objdump").arg("-T").arg(bin).output().unwrap();
    assert!(out.status.success(), "objdump -T {}", bin.display());
    let text = String::from_utf8_lossy(&out.stdout);
    let mut v: Vec<(u32, u32)> = text
        .split(|c: char| c.is_whitespace() || c == '(' || c == ')')
        .filter_map(|w| w.strip_prefix("GLIBC_"))
        .filter_map(parse_ver)
        .collect();
    v.sort();
    v.dedup();
    v
}

#[test]
fn the_package_has_the_right_fields_and_files() {
    let Some(deb) = deb() else { return };
    let arch = dpkg_deb(&["--field"], deb);
    assert!(arch.contains("Architecture: amd64"), "{arch}");
    assert!(arch.contains("Package: dcfs"), "{arch}");
    let (maj, min) = glibc_floor();
    assert!(arch.contains(&format!("libc6 (>= {maj}.{min})")), "{arch}");
    let list = dpkg_deb(&["--contents"], deb);
    for want in [
        "./usr/bin/dcfs",
        "./usr/sbin/mount.dcfs -> ../bin/dcfs",
        "./usr/share/man/man1/dcfs.1.gz",
        "./usr/share/man/man1/dcfs-mount.1.gz",
        "./usr/share/man/man1/dcfs-verify.1.gz",
        "./usr/share/bash-completion/completions/dcfs",
        "./usr/share/zsh/vendor-completions/_dcfs",
        "./usr/share/fish/vendor_completions.d/dcfs.fish",
        "./usr/lib/systemd/system/dcfs@.service",
        "./usr/share/doc/dcfs/copyright",
        "./usr/share/doc/dcfs/INSTALL.md",
        "./usr/share/doc/dcfs/MOUNT.md",
    ] {
        assert!(list.contains(want), "{want} missing from:\n{list}");
    }
    assert!(list.lines().all(|l| l.contains("root/root")), "{list}");
    let t = installed(deb);
    let unit = fs::read_to_string(t.path().join("usr/lib/systemd/system/dcfs@.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/bin/dcfs mount -f") && !unit.contains("/usr/local"),
        "{unit}"
    );
    // The man page says the exit codes, once gunzipped.
    let page = Command::new("gzip")
        .arg("-dc")
        .arg(t.path().join("usr/share/man/man1/dcfs-verify.1.gz"))
        .output()
        .unwrap();
    let page = String::from_utf8_lossy(&page.stdout);
    assert!(page.contains("EXIT STATUS") && page.contains("Data damage"), "{page}");
}

#[test]
fn the_shipped_binary_needs_no_glibc_above_the_floor() {
    let Some(deb) = deb() else { return };
    let t = installed(deb);
    let floor = glibc_floor();
    for bin in [t.path().join("usr/bin/dcfs"), dcfs_bin()] {
        let v = glibc_versions(&bin);
        assert!(!v.is_empty(), "{}: no GLIBC_ versions found", bin.display());
        let newest = *v.last().unwrap();
        assert!(
            newest <= floor,
            "{} needs GLIBC_{}.{}, above the floor {}.{} (scripts/build-deb.sh, docs/INSTALL.md)",
            bin.display(),
            newest.0,
            newest.1,
            floor.0,
            floor.1
        );
    }
}

#[test]
fn the_installed_binary_packs_and_verifies_a_real_model() {
    let Some(deb) = deb() else { return };
    let t = installed(deb);
    let bin = t.path().join("usr/bin/dcfs");
    let v = Command::new(&bin).arg("--version").output().unwrap();
    let v = String::from_utf8_lossy(&v.stdout);
    assert!(v.starts_with(&format!("dcfs {}", env!("CARGO_PKG_VERSION"))), "{v}");
    assert!(v.contains("rANS decode"), "{v}");
    let Some(m) = models() else { return };
    let w = tempfile::tempdir().unwrap();
    let p = w.path().join("packed");
    let src = m.join("minilm-bf16");
    let st = Command::new(&bin).arg("pack").arg(&src).arg(&p).output().unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let st = Command::new(&bin).arg("verify").arg(&p).output().unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    // And damage is exit 1 from the installed binary too.
    let dcz = fs::read_dir(&p)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|f| f.to_string_lossy().ends_with("model.safetensors.dcz"))
        .expect("model.safetensors.dcz in the pack");
    let mut b = fs::read(&dcz).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0x40;
    fs::write(&dcz, b).unwrap();
    let st = Command::new(&bin).arg("verify").arg(&p).output().unwrap();
    assert_eq!(st.status.code(), Some(1), "{}", String::from_utf8_lossy(&st.stderr));
}

#[test]
fn mount_t_dcfs_and_fstab_work_through_the_packaged_helper() {
    if !can_mount() {
        return;
    }
    let Some(deb) = deb() else { return };
    if !have("unshare") || !fs::read_to_string("/proc/filesystems").is_ok_and(|f| f.contains("overlay")) {
        skip("packaged mount helper: needs unshare(1) and overlayfs for a private /usr");
        return;
    }
    let inst = installed(deb);
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    synth_tree(&src, 61);
    let p = t.path().join("packed");
    dcfs::pack::pack_tree(&src, &p, &Default::default(), &dcfs::pack::NoProgress).unwrap();
    let mnt = t.path().join("mnt");
    let mnt2 = t.path().join("mnt2");
    fs::create_dir_all(&mnt).unwrap();
    fs::create_dir_all(&mnt2).unwrap();
    let work = t.path().join("ovl-work");
    let upper = t.path().join("ovl-upper");
    fs::create_dir_all(&work).unwrap();
    fs::create_dir_all(&upper).unwrap();
    let fstab = t.path().join("fstab");
    fs::write(
        &fstab,
        format!(
            "{}  {}  dcfs  ro,nofail,cache_size=64M  0 0\n",
            p.display(),
            mnt2.display()
        ),
    )
    .unwrap();
    // In a private mount namespace: the package's usr/ over the host's /usr (so mount(8)
    // finds /usr/sbin/mount.dcfs -> /usr/bin/dcfs exactly as installed), a test fstab over
    // /etc/fstab. Everything mounted here vanishes with the namespace.
    let script = r#"
set -eu
pkg=$1 p=$2 mnt=$3 mnt2=$4 fstab=$5 upper=$6 work=$7 src=$8
mount --make-rprivate /
mount -t overlay overlay -o "lowerdir=$pkg/usr:/usr,upperdir=$upper,workdir=$work" /usr
test -x /usr/sbin/mount.dcfs
mount -t dcfs -o ro "$p" "$mnt"
grep -q " $mnt fuse" /proc/self/mounts
cmp "$src/model.safetensors" "$mnt/model.safetensors"
cmp "$src/sub/model.gguf" "$mnt/sub/model.gguf"
umount "$mnt"
mount --bind "$fstab" /etc/fstab
mount "$mnt2"
cmp "$src/config.json" "$mnt2/config.json"
umount "$mnt2"
echo OK
"#;
    let out = Command::new("unshare")
        .args(["-m", "--", "sh", "-c", script, "sh"])
        .arg(inst.path())
        .arg(&p)
        .arg(&mnt)
        .arg(&mnt2)
        .arg(&fstab)
        .arg(&upper)
        .arg(&work)
        .arg(&src)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("overlay") && !out.status.success() && !out.stdout.starts_with(b"OK") {
        // Some container kernels refuse overlayfs on their root filesystem.
        if err.contains("wrong fs type") || err.contains("not supported") || err.contains("Operation not permitted") {
            skip(&format!(
                "packaged mount helper: overlayfs over /usr refused here: {err}"
            ));
            return;
        }
    }
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "OK",
        "{}\n{err}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// The glibc of a root filesystem, from running its libc.so.6 (which prints its version).
fn root_glibc(root: &Path) -> Option<(u32, u32)> {
    let out = Command::new("chroot")
        .arg(root)
        .arg("/lib/x86_64-linux-gnu/libc.so.6")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v = text.split("release version ").nth(1)?;
    parse_ver(
        v.trim_end_matches(|c: char| !c.is_ascii_digit())
            .split_whitespace()
            .next()?,
    )
}

/// Opt-in (it needs a Debian root made by debootstrap, ~220 MB): `DCFS_OLD_ROOT=DIR` runs the
/// packaged binary chrooted into DIR. At or above the floor it must run and pack+verify; below
/// it the loader must refuse it by naming a GLIBC_ version (not crash later).
///   debootstrap --variant=minbase bullseye DIR http://deb.debian.org/debian   (glibc 2.31)
#[test]
fn the_packaged_binary_in_an_older_root() {
    let Some(old) = std::env::var_os("DCFS_OLD_ROOT").map(PathBuf::from) else {
        eprintln!("SKIP older-root run: opt-in, set DCFS_OLD_ROOT to a debootstrapped root");
        return;
    };
    let Some(deb) = deb() else { return };
    let glibc = root_glibc(&old).expect("glibc version of DCFS_OLD_ROOT");
    let inst = old.join("opt/dcfs-test");
    let _ = fs::remove_dir_all(&inst);
    fs::create_dir_all(&inst).unwrap();
    assert!(Command::new("dpkg")
        .arg("-x")
        .arg(deb)
        .arg(&inst)
        .status()
        .unwrap()
        .success());
    let work = old.join("tmp/dcfs-test");
    let _ = fs::remove_dir_all(&work);
    synth_tree(&work.join("src"), 71);
    let run = |args: &[&str]| {
        Command::new("chroot")
            .arg(&old)
            .arg("/opt/dcfs-test/usr/bin/dcfs")
            .args(args)
            .output()
            .unwrap()
    };
    let v = run(&["--version"]);
    let err = String::from_utf8_lossy(&v.stderr).into_owned();
    eprintln!(
        "root glibc {}.{}: {}{err}",
        glibc.0,
        glibc.1,
        String::from_utf8_lossy(&v.stdout)
    );
    if glibc < glibc_floor() {
        assert!(!v.status.success() && err.contains("GLIBC_"), "{err}");
    } else {
        assert!(v.status.success(), "{err}");
        let p = run(&["pack", "/tmp/dcfs-test/src", "/tmp/dcfs-test/packed"]);
        assert!(p.status.success(), "{}", String::from_utf8_lossy(&p.stderr));
        let p = run(&["verify", "/tmp/dcfs-test/packed"]);
        assert!(p.status.success(), "{}", String::from_utf8_lossy(&p.stderr));
    }
    let _ = fs::remove_dir_all(&inst);
    let _ = fs::remove_dir_all(&work);
}
