//! Real FUSE mounts of packed trees: every byte served must equal the source, by read()
//! in several block sizes, by mmap, and by many threads at once; damage gives EIO, never
//! wrong bytes; the mount is read-only; signals and stale mounts behave.

mod common;

use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use dcfs::pack::{self, NoProgress, PackOptions};

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in fs::read_dir(dir.join(&rel)).unwrap() {
            let e = e.unwrap();
            let r = rel.join(e.file_name());
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(r);
            } else if ft.is_file() {
                out.push(r);
            }
        }
    }
    out.sort();
    out
}

fn read_all_with(path: &Path, block: usize) -> Vec<u8> {
    let mut f = File::open(path).unwrap();
    let mut out = Vec::new();
    let mut buf = vec![0u8; block];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    out
}

/// Packs `src` into a temp dir and returns (tempdir, packed path, total original bytes).
fn packed(src: &Path) -> (tempfile::TempDir, PathBuf, u64) {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("packed");
    let r = pack::pack_tree(src, &p, &PackOptions::default(), &NoProgress).unwrap();
    (t, p, r.original_bytes)
}

#[test]
fn synthetic_tree_reads_back_identically_every_way() {
    if !can_mount() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    synth_tree(&src, 11);
    let (_pt, p, _) = packed(&src);
    let m = Mounted::new(&p, &t.path().join("mnt"), &["-o", "cache_size=4M"]);
    // Names, sizes, modes and mtimes as in the source; the marker is hidden.
    let want = tree_state(&src);
    assert_eq!(tree_state(&m.mnt), want);
    assert!(!m.mnt.join(pack::MARKER).exists());
    for rel in files_under(&src) {
        let orig = fs::read(src.join(&rel)).unwrap();
        for block in [1usize, 4096, 65536, 1 << 20, 3 << 20] {
            if block == 1 && orig.len() > 200_000 {
                continue;
            }
            assert!(
                read_all_with(&m.mnt.join(&rel), block) == orig,
                "{} differs with {block}-byte reads",
                rel.display()
            );
        }
    }
    assert_eq!(
        fs::read_link(m.mnt.join("link.safetensors")).unwrap(),
        Path::new("model.safetensors")
    );
}

#[test]
fn real_models_through_the_mount_equal_the_source() {
    if !can_mount() {
        return;
    }
    let Some(models) = models() else { return };
    let (pt, p, total) = packed(&models);
    // A cache of 1/8 of the models forces eviction.
    let cache = (total / 8).max(8 << 20);
    let m = Mounted::new(&p, &pt.path().join("mnt"), &["--cache-size", &cache.to_string()]);
    let files = files_under(&models);
    for rel in &files {
        let a = blake3::hash(&fs::read(models.join(rel)).unwrap());
        let b = blake3::hash(&read_all_with(&m.mnt.join(rel), 128 << 10));
        assert_eq!(a, b, "{} differs through the mount", rel.display());
    }
    // mmap: whole-file touch and random 4 KiB pages, against the source.
    let mut rng = Rng::new(5);
    for rel in files
        .iter()
        .filter(|r| r.to_string_lossy().ends_with("safetensors") || r.to_string_lossy().ends_with(".gguf"))
    {
        let src = fs::read(models.join(rel)).unwrap();
        let f = File::open(m.mnt.join(rel)).unwrap();
        // SAFETY: the mapped file is on a read-only mount and is not truncated while mapped.
        let map = unsafe { memmap2::Mmap::map(&f).unwrap() };
        for _ in 0..300 {
            let page = (rng.next() % (src.len() as u64 / 4096)) as usize * 4096;
            assert!(
                map[page..page + 4096] == src[page..page + 4096],
                "{} page {page}",
                rel.display()
            );
        }
        assert!(map[..] == src[..], "{} whole-file mmap differs", rel.display());
    }
    let s = m.stats();
    let cap = s["cache_capacity"].as_u64().unwrap();
    assert_eq!(cap, cache);
    assert!(s["cache_bytes"].as_u64().unwrap() <= cap);
    // Chunks leave a cache of 1/8 of the models: dropped behind the sequential readers, or
    // evicted (the random mmap reads) when that is not enough.
    let left = s["evictions"].as_u64().unwrap() + s["dropped_behind"].as_u64().unwrap();
    assert!(left > 0, "a cache of 1/8 must let chunks go: {s}");
    assert_eq!(s["errors"].as_u64().unwrap(), 0);
    eprintln!("stats after reading every model: {s}");
}

#[test]
fn sixteen_threads_reading_random_ranges_see_the_source() {
    if !can_mount() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let src = match models() {
        Some(m) => m.join("minilm-bf16"),
        None => {
            let s = t.path().join("src");
            synth_tree(&s, 12);
            s
        }
    };
    let (pt, p, total) = packed(&src);
    let cache = (total / 10).max(4 << 20);
    let m = Mounted::new(
        &p,
        &pt.path().join("mnt"),
        &["--cache-size", &cache.to_string(), "--prefetch", "4"],
    );
    let files: Arc<Vec<(Vec<u8>, PathBuf)>> = Arc::new(
        files_under(&src)
            .into_iter()
            .map(|r| (fs::read(src.join(&r)).unwrap(), m.mnt.join(&r)))
            .filter(|(d, _)| !d.is_empty())
            .collect(),
    );
    let checked = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(8);
    let threads: Vec<_> = (0..16)
        .map(|i| {
            let files = files.clone();
            let checked = checked.clone();
            std::thread::spawn(move || {
                let mut r = Rng::new(100 + i);
                while Instant::now() < deadline {
                    let (data, path) = &files[(r.next() % files.len() as u64) as usize];
                    let f = File::open(path).unwrap();
                    for _ in 0..20 {
                        let off = (r.next() % data.len() as u64) as usize;
                        let len = 1 + (r.next() % (3 << 20)) as usize;
                        let len = len.min(data.len() - off);
                        let mut buf = vec![0u8; len];
                        f.read_exact_at(&mut buf, off as u64).unwrap();
                        assert!(
                            buf == data[off..off + len],
                            "{} [{off}, +{len}) differs",
                            path.display()
                        );
                        checked.fetch_add(len as u64, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for th in threads {
        th.join().expect("a reader thread failed");
    }
    let s = m.stats();
    assert!(s["cache_bytes"].as_u64().unwrap() <= cache);
    eprintln!(
        "16 threads checked {} MiB; stats {s}",
        checked.load(Ordering::Relaxed) >> 20
    );
}

#[test]
fn gguf_tensors_read_through_mmap_like_llama_cpp() {
    if !can_mount() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (src_dir, name) = match models() {
        Some(m) => (m.join("smollm2-q4_1"), "SmolLM2-135M-Instruct.Q4_1.gguf".to_string()),
        None => {
            let s = t.path().join("src");
            synth_tree(&s, 13);
            (s.join("sub"), "model.gguf".to_string())
        }
    };
    let (pt, p, _) = packed(&src_dir);
    let m = Mounted::new(&p, &pt.path().join("mnt"), &[]);
    let src = fs::read(src_dir.join(&name)).unwrap();
    let f = File::open(m.mnt.join(&name)).unwrap();
    // SAFETY: read-only mapping of a file on a read-only mount.
    let map = unsafe { memmap2::Mmap::map(&f).unwrap() };
    let layout = dcfs::model::gguf::parse(&map, map.len() as u64).unwrap();
    assert!(!layout.tensors.is_empty());
    // Visit tensors in reverse order (not sequential), as a loader touching layers would.
    for tensor in layout.tensors.iter().rev() {
        let (a, b) = (tensor.start as usize, (tensor.start + tensor.len) as usize);
        assert!(map[a..b] == src[a..b], "tensor {} differs", tensor.name);
    }
}

#[test]
fn the_mount_is_read_only() {
    if !can_mount() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    synth_tree(&src, 14);
    let (_pt, p, _) = packed(&src);
    let m = Mounted::new(&p, &t.path().join("mnt"), &[]);
    let erofs = |r: std::io::Result<()>| {
        let e = r.expect_err("a write succeeded on a read-only mount");
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    };
    erofs(
        fs::OpenOptions::new()
            .write(true)
            .open(m.mnt.join("config.json"))
            .map(|_| ()),
    );
    erofs(fs::write(m.mnt.join("new.txt"), b"x"));
    erofs(fs::create_dir(m.mnt.join("d")));
    erofs(fs::remove_file(m.mnt.join("config.json")));
    erofs(fs::rename(m.mnt.join("config.json"), m.mnt.join("c2.json")));
    erofs(std::os::unix::fs::symlink("x", m.mnt.join("l")));
    erofs(fs::set_permissions(
        m.mnt.join("config.json"),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    ));
    assert_eq!(
        fs::read(m.mnt.join("config.json")).unwrap(),
        fs::read(src.join("config.json")).unwrap()
    );
    // A second mount on a busy mount point fails clearly.
    let out = Command::new(dcfs_bin())
        .arg("mount")
        .arg(&p)
        .arg(&m.mnt)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already a mount point"));
    // Mounting a plain directory is refused.
    fs::create_dir_all(t.path().join("mnt2")).unwrap();
    let out = Command::new(dcfs_bin())
        .arg("mount")
        .arg(&src)
        .arg(t.path().join("mnt2"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("not a dcfs pack"), "{err}");
}

#[test]
fn a_flipped_byte_gives_eio_for_its_chunk_and_correct_bytes_elsewhere() {
    if !can_mount() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    synth_tree(&src, 15);
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
    let m = Mounted::new(&p, &t.path().join("mnt"), &["--prefetch", "0"]);
    let orig = fs::read(src.join("model.safetensors")).unwrap();
    let f = File::open(m.mnt.join("model.safetensors")).unwrap();
    let mut eio = 0;
    let mut good = 0;
    for off in (0..orig.len()).step_by(4096) {
        let len = 4096.min(orig.len() - off);
        let mut buf = vec![0u8; len];
        match f.read_exact_at(&mut buf, off as u64) {
            Ok(()) => {
                assert!(buf == orig[off..off + len], "wrong bytes served at {off}");
                good += 1;
            }
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
                let (a, b) = (victim.orig_offset as usize, victim.orig_end() as usize);
                // Kernel readahead may pull the bad chunk into a neighbouring page's request.
                assert!(
                    off + len + (256 << 10) > a && off < b + (256 << 10),
                    "EIO far from the bad chunk at {off}"
                );
                eio += 1;
            }
        }
    }
    assert!(eio > 0 && good > eio, "eio {eio}, good {good}");
    assert!(m.stats()["errors"].as_u64().unwrap() > 0);
    // Other files are unaffected.
    assert_eq!(
        fs::read(m.mnt.join("sub/model.gguf")).unwrap(),
        fs::read(src.join("sub/model.gguf")).unwrap()
    );
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

#[test]
fn sigterm_unmounts_and_a_killed_daemon_is_reported_as_stale() {
    if !can_mount() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    synth_tree(&src, 16);
    let (_pt, p, _) = packed(&src);
    let mnt = t.path().join("mnt");
    fs::create_dir_all(&mnt).unwrap();
    let mnt = mnt.canonicalize().unwrap();
    let spawn = || {
        let c = Command::new(dcfs_bin())
            .arg("mount")
            .arg("-f")
            .arg(&p)
            .arg(&mnt)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let end = Instant::now() + Duration::from_secs(10);
        while !is_mounted(&mnt) && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(is_mounted(&mnt), "foreground mount did not appear");
        c
    };
    let mut c = spawn();
    assert_eq!(
        fs::read(mnt.join("config.json")).unwrap(),
        fs::read(src.join("config.json")).unwrap()
    );
    // SAFETY: sending a signal to our own child.
    unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    let st = wait_exit(&mut c, 10).expect("dcfs did not exit on SIGTERM");
    assert!(st.success(), "{st}");
    assert!(!is_mounted(&mnt));
    // kill -9 leaves a stale mount: the next mount names it and gives the fix.
    let mut c = spawn();
    c.kill().unwrap();
    c.wait().unwrap();
    let out = Command::new(dcfs_bin())
        .arg("mount")
        .arg(&p)
        .arg(&mnt)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("stale") && err.contains("umount -l"), "{err}");
    assert!(Command::new(dcfs_bin())
        .args(["umount", "-l"])
        .arg(&mnt)
        .status()
        .unwrap()
        .success());
    assert!(!is_mounted(&mnt));
}

#[test]
fn mount_helper_protocol_of_mount8_works() {
    if !can_mount() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    synth_tree(&src, 17);
    let (_pt, p, _) = packed(&src);
    // mount(8) runs /sbin/mount.dcfs SPEC DIR -o OPTS; argv[0] selects the helper mode.
    let helper = t.path().join("mount.dcfs");
    std::os::unix::fs::symlink(dcfs_bin(), &helper).unwrap();
    let mnt = t.path().join("mnt");
    fs::create_dir_all(&mnt).unwrap();
    let out = Command::new(&helper)
        .arg(&p)
        .arg(&mnt)
        .args(["-o", "ro,nofail,cache_size=16M,prefetch=2,x-systemd.automount"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let m = Mounted {
        mnt: mnt.canonicalize().unwrap(),
    };
    assert_eq!(m.stats()["cache_capacity"].as_u64(), Some(16 << 20));
    assert_eq!(
        fs::read(m.mnt.join("config.json")).unwrap(),
        fs::read(src.join("config.json")).unwrap()
    );
    drop(m);
    // Unknown options are refused with their name.
    let out = Command::new(&helper)
        .arg(&p)
        .arg(&mnt)
        .args(["-o", "bogus=1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bogus"));
}

#[test]
fn a_container_truncated_under_a_running_mount_gives_eio_not_a_crash() {
    if !can_mount() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    synth_tree(&src, 18);
    let (_pt, p, _) = packed(&src);
    let m = Mounted::new(&p, &t.path().join("mnt"), &["--prefetch", "0", "--readahead", "0"]);
    let cpath = p.join("model.safetensors.dcz");
    let len = fs::metadata(&cpath).unwrap().len();
    // Cut the payload area in half while the mount holds the container open.
    File::options()
        .write(true)
        .open(&cpath)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let orig = fs::read(src.join("model.safetensors")).unwrap();
    let f = File::open(m.mnt.join("model.safetensors")).unwrap();
    let mut buf = vec![0u8; 4096];
    let tail = (orig.len() - 4096) as u64;
    let e = f.read_exact_at(&mut buf, tail).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    // The daemon is alive and still serves the other files.
    assert_eq!(
        fs::read(m.mnt.join("config.json")).unwrap(),
        fs::read(src.join("config.json")).unwrap()
    );
    assert!(m.stats()["errors"].as_u64().unwrap() > 0);
}

#[test]
fn prefetch_batches_through_the_gpu_path_serve_the_same_bytes() {
    if !can_mount() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    synth_tree(&src, 19);
    let p = t.path().join("packed");
    let o = PackOptions {
        chunk_size: 64 << 10,
        ..Default::default()
    };
    pack::pack_tree(&src, &p, &o, &NoProgress).unwrap();
    // `--gpu emulate` runs the CPU model of the CUDA kernels through the same batching,
    // descriptors and host-side checksum checks the GPU path uses.
    let m = Mounted::new(&p, &t.path().join("mnt"), &["--gpu", "emulate", "--prefetch", "8"]);
    for rel in files_under(&src) {
        assert!(
            read_all_with(&m.mnt.join(&rel), 64 << 10) == fs::read(src.join(&rel)).unwrap(),
            "{}",
            rel.display()
        );
    }
    let s = m.stats();
    assert!(s["prefetch_issued"].as_u64().unwrap() > 0, "{s}");
    assert_eq!(s["errors"].as_u64().unwrap(), 0);
    drop(m);
    // Without a GPU, `--gpu on` is a clear error and nothing is mounted.
    if !Path::new("/dev/nvidia0").exists() {
        let mnt2 = t.path().join("mnt2");
        fs::create_dir_all(&mnt2).unwrap();
        let out = Command::new(dcfs_bin())
            .args(["mount", "--gpu", "on"])
            .arg(&p)
            .arg(&mnt2)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(err.contains("NVIDIA") || err.contains("CUDA"), "{err}");
        assert!(!is_mounted(&mnt2.canonicalize().unwrap()));
    }
}
