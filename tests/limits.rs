//! The mount's real-world limits: packs with more files than the open-file limit, memory
//! bounds, untrusted sizes handed to the kernel, and mount-point safety. Real FUSE mounts.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::*;
use dcfs::pack::{self, NoProgress, PackOptions};

/// `n` small files in a few directories: even ones compressible (decoded), odd ones random
/// (served raw).
fn many_files(dir: &Path, n: usize) -> Vec<PathBuf> {
    let mut r = Rng::new(99);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let rel = PathBuf::from(format!("d{}/f{i:05}.bin", i % 7));
        let len = 1 + (r.next() % 6000) as usize;
        let data: Vec<u8> = if i % 2 == 0 {
            (0..len).map(|_| b"weights "[(r.next() % 8) as usize]).collect()
        } else {
            (0..len).map(|_| r.next() as u8).collect()
        };
        fs::create_dir_all(dir.join(&rel).parent().unwrap()).unwrap();
        fs::write(dir.join(&rel), data).unwrap();
        out.push(rel);
    }
    out
}

/// A pack of 2,000 files mounted by a process limited to 1,024 open files (soft and hard,
/// so raising the soft limit cannot help): every file reads back identically. The mount
/// used to hold one descriptor per container and failed with "Too many open files".
#[test]
fn mount_serves_more_files_than_the_open_file_limit() {
    if !can_mount() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let files = many_files(&src, 2000);
    let p = t.path().join("packed");
    pack::pack_tree(&src, &p, &PackOptions::default(), &NoProgress).unwrap();
    let mnt = t.path().join("mnt");
    let m = mount_with(
        dcfs_under_shell(
            r#"ulimit -n 1024 && exec "$0" mount "$1" "$2" -o cache_size=4M"#,
            &[&p, &mnt],
        ),
        &mnt,
    );
    // Twice over: the second pass reopens containers the LRU of open files let go.
    for pass in 0..2 {
        for rel in &files {
            let a = blake3::hash(&fs::read(src.join(rel)).unwrap());
            let b = blake3::hash(
                &fs::read(m.mnt.join(rel)).unwrap_or_else(|e| panic!("pass {pass}: {}: {e}", rel.display())),
            );
            assert_eq!(a, b, "pass {pass}: {} differs through the mount", rel.display());
        }
    }
    assert_eq!(m.stats()["errors"], 0);
}

/// `dcfs unpack` of a pack with more files than the open-file limit: containers are opened
/// one at a time.
#[test]
fn unpack_handles_more_files_than_the_open_file_limit() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    many_files(&src, 2000);
    let p = t.path().join("packed");
    pack::pack_tree(&src, &p, &PackOptions::default(), &NoProgress).unwrap();
    let out = t.path().join("out");
    let r = dcfs_under_shell(r#"ulimit -n 1024 && exec "$0" unpack "$1" "$2""#, &[&p, &out])
        .output()
        .unwrap();
    assert!(
        r.status.success(),
        "unpack failed: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert_eq!(tree_state(&out), tree_state(&src));
}

/// Every dcfs command raises its soft open-file limit to the hard one (logged at debug).
#[test]
fn commands_raise_the_soft_open_file_limit() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    many_files(&src, 3);
    let p = t.path().join("packed");
    pack::pack_tree(&src, &p, &PackOptions::default(), &NoProgress).unwrap();
    let r = dcfs_under_shell(
        r#"[ "$(ulimit -Hn)" = unlimited ] || [ "$(ulimit -Hn)" -gt 100 ] || exit 3
           ulimit -Sn 100 && RUST_LOG=dcfs=debug exec "$0" verify "$1""#,
        &[&p],
    )
    .output()
    .unwrap();
    if r.status.code() == Some(3) {
        eprintln!("SKIP: the hard open-file limit is 100 or less");
        return;
    }
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "verify failed: {err}");
    assert!(
        err.contains("open-file limit raised from 100 to"),
        "no raise logged: {err}"
    );
}

/// An untrusted chunk_size of 2 GiB was served as st_blksize, and cp allocated a buffer
/// that large: the mount serves a power of two within [4 KiB, 1 MiB].
#[test]
fn huge_chunk_size_is_not_served_as_blksize() {
    use dcfs::chunk::ChunkCodec;
    use dcfs::format::{chunk_hash, ChunkEntry, FileMeta, Writer, NO_TENSOR};
    use dcfs::model::FileKind;
    use dcfs::transform::Transform;
    if !can_mount() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("plain.txt"), b"plain").unwrap();
    let p = t.path().join("packed");
    pack::pack_tree(&src, &p, &PackOptions::default(), &NoProgress).unwrap();
    let data = b"ten bytes!";
    for (name, chunk_size) in [("huge.bin", 1u32 << 31), ("max.bin", u32::MAX), ("zero.bin", 0)] {
        let mut w = Writer::create(&p.join(format!("{name}.dcz"))).unwrap();
        let entry = ChunkEntry {
            orig_offset: 0,
            orig_len: data.len() as u32,
            payload_len: 0,
            payload_offset: 0,
            xxh3: chunk_hash(data),
            codec: ChunkCodec::Raw,
            transform: Transform::None,
            dtype: 0,
            tensor: NO_TENSOR,
        };
        w.push(entry, data).unwrap();
        let meta = FileMeta {
            size: data.len() as u64,
            mode: 0o644,
            mtime_s: 0,
            mtime_ns: 0,
            blake3: *blake3::hash(data).as_bytes(),
            kind: FileKind::Opaque,
            flags: 0,
            compress_fraction_ppm: 0,
            chunk_size,
        };
        w.finish(&meta, &[]).unwrap();
    }
    let m = Mounted::new(&p, &t.path().join("mnt"), &[]);
    for name in ["huge.bin", "max.bin", "zero.bin", "plain.txt"] {
        let md = fs::metadata(m.mnt.join(name)).unwrap();
        let b = md.blksize();
        assert!(
            b.is_power_of_two() && (4096..=1 << 20).contains(&b),
            "{name}: st_blksize {b}"
        );
    }
    assert_eq!(fs::read(m.mnt.join("huge.bin")).unwrap(), data);
}

/// Two dcfs mounts stacked on one directory: one `dcfs umount` removes the upper one only.
/// The upper one's session used to unmount its mount point again by path when it ended,
/// removing the lower mount as well.
#[test]
fn one_umount_removes_one_of_two_stacked_mounts() {
    use dcfs::fs::{Mount, MountConfig};
    use dcfs::store::{Store, StoreOptions};
    if !can_mount() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    many_files(&src, 4);
    let rel = PathBuf::from("d0/f00000.bin");
    let p = t.path().join("packed");
    pack::pack_tree(&src, &p, &PackOptions::default(), &NoProgress).unwrap();
    let lower = Mounted::new(&p, &t.path().join("mnt"), &[]);
    let dev_lower = fs::metadata(&lower.mnt).unwrap().dev();
    // The upper mount is served in this process, as the daemon serves its own.
    let store = Store::open(&p, StoreOptions::default()).unwrap();
    let cfg = MountConfig {
        allow_other: false,
        readahead_kb: None,
        fuse_threads: 2,
    };
    let m = Mount::new(store, &lower.mnt, &cfg).unwrap();
    let upper = std::thread::spawn(move || m.run());
    let mut stacked = false;
    for _ in 0..200 {
        if fs::metadata(&lower.mnt).is_ok_and(|md| md.dev() != dev_lower) {
            stacked = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(stacked, "the upper mount never showed");
    let st = std::process::Command::new(dcfs_bin())
        .arg("umount")
        .arg(&lower.mnt)
        .status()
        .unwrap();
    assert!(st.success());
    upper.join().unwrap().unwrap();
    // The lower mount is still there and serving.
    assert_eq!(
        fs::metadata(&lower.mnt).unwrap().dev(),
        dev_lower,
        "the lower mount is gone"
    );
    assert_eq!(
        fs::read(lower.mnt.join(&rel)).unwrap(),
        fs::read(src.join(&rel)).unwrap()
    );
}

/// A mount point with entries is refused (mounting would hide them) unless `-o nonempty`.
#[test]
fn non_empty_mount_point_needs_nonempty() {
    if !can_mount() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    many_files(&src, 2);
    let p = t.path().join("packed");
    pack::pack_tree(&src, &p, &PackOptions::default(), &NoProgress).unwrap();
    let mnt = t.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    fs::write(mnt.join("keep.txt"), b"mine").unwrap();
    let out = std::process::Command::new(dcfs_bin())
        .arg("mount")
        .arg(&p)
        .arg(&mnt)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "mounted over a non-empty directory");
    assert!(err.contains("not empty") && err.contains("nonempty"), "{err}");
    assert!(!is_mounted(&mnt.canonicalize().unwrap()));
    let m = Mounted::new(&p, &mnt, &["-o", "nonempty"]);
    assert!(m.mnt.join("d0/f00000.bin").exists());
    drop(m);
    assert_eq!(fs::read(mnt.join("keep.txt")).unwrap(), b"mine");
}

/// "Already mounted" is found for a mount point whose name has every character
/// mountinfo escapes (space, tab, newline, backslash); only spaces used to be handled, so a
/// second mount was stacked on the first.
#[test]
fn already_mounted_check_handles_escaped_names() {
    if !can_mount() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    many_files(&src, 2);
    let p = t.path().join("packed");
    pack::pack_tree(&src, &p, &PackOptions::default(), &NoProgress).unwrap();
    let mnt = t.path().join("a b\tc\nd\\e");
    let m = Mounted::new(&p, &mnt, &[]);
    assert!(is_mounted(&m.mnt));
    assert!(dcfs::fs::top_mount_at(&m.mnt).unwrap().fstype.starts_with("fuse"));
    let out = std::process::Command::new(dcfs_bin())
        .arg("mount")
        .arg(&p)
        .arg(&m.mnt)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a second mount was stacked on the first");
    assert!(err.contains("already a mount point"), "{err}");
    let n = dcfs::fs::mounts()
        .unwrap()
        .iter()
        .filter(|e| e.mount_point == m.mnt)
        .count();
    assert_eq!(n, 1);
}
