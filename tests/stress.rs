//! Stress through a real mount whose cache is 1/10 of the data: 16 threads of random
//! `pread`s and mmap page reads, compared against the source; the daemon's RSS sampled
//! throughout and bounded by the cache plus a stated overhead; a watchdog fails the test
//! when no read completes for 30 s. Then a lazy unmount under active readers: they get
//! errors, nothing hangs, and the daemon exits. And, without FUSE, many sequential
//! readers of the store under the smallest cache while prefetch runs ahead of them.
//!
//! DCFS_STRESS_SECS sets the duration (default 60; use 120+ locally).

mod common;

use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use dcfs::pack::{self, NoProgress, PackOptions};

/// Daemon overhead allowed above the cache: decode buffers in flight (16 readers x a few
/// 1 MiB chunks, coded and decoded), per-thread decode scratch, FUSE request buffers,
/// thread stacks, the node table. Measured: about 32 MiB.
const OVERHEAD: u64 = 64 << 20;

/// How much the daemon's peak RSS may rise from the first half of the run to the second:
/// past warm-up, a steady workload must not keep growing it.
const GROWTH: u64 = 16 << 20;

fn vm_rss(pid: u32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let l = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    Some(l.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

/// `dcfs mount -f` as our child, so its pid is known; killed and unmounted on drop.
struct Daemon {
    child: Child,
    mnt: PathBuf,
}

impl Daemon {
    fn start(packed: &Path, mnt: &Path, cache: u64) -> Daemon {
        fs::create_dir_all(mnt).unwrap();
        let child = Command::new(dcfs_bin())
            .arg("mount")
            .arg("-f")
            .arg(packed)
            .arg(mnt)
            .args(["--cache-size", &cache.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mnt = mnt.canonicalize().unwrap();
        let end = Instant::now() + Duration::from_secs(30);
        while !is_mounted(&mnt) {
            assert!(Instant::now() < end, "mount did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        Daemon { child, mnt }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.mnt)
            .stderr(Stdio::null())
            .status();
    }
}

fn files_of(src: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in fs::read_dir(src.join(&rel)).unwrap().flatten() {
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

fn source(t: &Path) -> PathBuf {
    match models() {
        Some(m) if m.join("minilm-bf16").is_dir() => m.join("minilm-bf16"),
        _ => {
            let s = t.join("src");
            synth_tree(&s, 31);
            s
        }
    }
}

#[test]
fn sixteen_threads_of_reads_and_mmaps_under_a_tenth_cache() {
    if !can_mount() {
        return;
    }
    let secs: u64 = std::env::var("DCFS_STRESS_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let t = tempfile::tempdir().unwrap();
    let src = source(t.path());
    let packed = t.path().join("p");
    let r = pack::pack_tree(&src, &packed, &PackOptions::default(), &NoProgress).unwrap();
    let cache = (r.original_bytes / 10).max(4 << 20);
    let d = Daemon::start(&packed, &t.path().join("mnt"), cache);
    let pid = d.child.id();
    let base_rss = vm_rss(pid).unwrap();
    let files: Arc<Vec<(Vec<u8>, PathBuf)>> = Arc::new(
        files_of(&src)
            .into_iter()
            .map(|r| (fs::read(src.join(&r)).unwrap(), d.mnt.join(&r)))
            .filter(|(data, _)| !data.is_empty())
            .collect(),
    );
    let progress = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let mismatches = Arc::new(Mutex::new(Vec::<String>::new()));
    let done = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let readers: Vec<_> = (0..16u64)
        .map(|i| {
            let (files, progress, bytes, mismatches) =
                (files.clone(), progress.clone(), bytes.clone(), mismatches.clone());
            std::thread::spawn(move || {
                let mut r = Rng::new(1000 + i);
                while Instant::now() < deadline {
                    let (data, path) = &files[(r.next() % files.len() as u64) as usize];
                    let f = File::open(path).unwrap();
                    // Drop the kernel's cached pages of this file (those not mapped right
                    // now), so reads reach the daemon and its small cache instead of being
                    // served from the page cache (the mount keeps it across opens).
                    // SAFETY: fadvise on a descriptor we own; it only drops clean pages.
                    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
                    if i % 2 == 0 {
                        for _ in 0..16 {
                            let off = (r.next() % data.len() as u64) as usize;
                            let len = (1 + (r.next() % (2 << 20)) as usize).min(data.len() - off);
                            let mut buf = vec![0u8; len];
                            f.read_exact_at(&mut buf, off as u64).unwrap();
                            if buf[..] != data[off..off + len] {
                                mismatches
                                    .lock()
                                    .unwrap()
                                    .push(format!("{} pread [{off}, +{len})", path.display()));
                            }
                            progress.fetch_add(1, Ordering::Relaxed);
                            bytes.fetch_add(len as u64, Ordering::Relaxed);
                        }
                    } else {
                        // SAFETY: read-only mapping of a file on a read-only mount.
                        let map = unsafe { memmap2::Mmap::map(&f).unwrap() };
                        for _ in 0..64 {
                            let off = (r.next() % data.len() as u64) as usize;
                            let len = (1 + (r.next() % (64 << 10)) as usize).min(data.len() - off);
                            if map[off..off + len] != data[off..off + len] {
                                mismatches
                                    .lock()
                                    .unwrap()
                                    .push(format!("{} mmap [{off}, +{len})", path.display()));
                            }
                            progress.fetch_add(1, Ordering::Relaxed);
                            bytes.fetch_add(len as u64, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    // RSS sampler and watchdog in one: no completed read for 30 s kills the daemon, which
    // turns every blocked read into an error, and fails the test.
    let watchdog = {
        let (progress, done) = (progress.clone(), done.clone());
        std::thread::spawn(move || {
            let (mut max_rss, mut last, mut last_change) = (0u64, 0u64, Instant::now());
            // Peak RSS of the first and of the second half of the run.
            let mut halves = [0u64; 2];
            let half = deadline - Duration::from_secs(secs / 2);
            let mut stalled = false;
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(250));
                let rss = vm_rss(pid).unwrap_or(0);
                max_rss = max_rss.max(rss);
                let h = &mut halves[(Instant::now() >= half) as usize];
                *h = (*h).max(rss);
                let p = progress.load(Ordering::Relaxed);
                if p != last {
                    (last, last_change) = (p, Instant::now());
                } else if last_change.elapsed() > Duration::from_secs(30) {
                    stalled = true;
                    // SAFETY: plain kill(2) of our own child process.
                    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                    break;
                }
            }
            (max_rss, halves, stalled)
        })
    };
    let mut panicked = 0;
    for th in readers {
        panicked += th.join().is_err() as usize;
    }
    done.store(true, Ordering::Relaxed);
    let (max_rss, halves, stalled) = watchdog.join().unwrap();
    let m = mismatches.lock().unwrap();
    let s = Command::new(dcfs_bin())
        .arg("stats")
        .arg(&d.mnt)
        .arg("--json")
        .output()
        .unwrap();
    eprintln!(
        "stress {secs}s: {} reads, {} MiB checked, {} mismatches; cache {} MiB; daemon RSS {} MiB at start, \
         {} MiB max (bound: cache + {} MiB), peaks {} / {} MiB in the two halves; stats {}",
        progress.load(Ordering::Relaxed),
        bytes.load(Ordering::Relaxed) >> 20,
        m.len(),
        cache >> 20,
        base_rss >> 20,
        max_rss >> 20,
        OVERHEAD >> 20,
        halves[0] >> 20,
        halves[1] >> 20,
        String::from_utf8_lossy(&s.stdout)
            .split_whitespace()
            .collect::<String>()
    );
    assert!(!stalled, "watchdog: no read completed for 30 s (deadlock?)");
    assert_eq!(panicked, 0, "reader threads failed");
    assert!(m.is_empty(), "mismatches: {:?}", &m[..m.len().min(10)]);
    assert!(
        max_rss <= cache + OVERHEAD,
        "daemon RSS {} MiB above cache {} MiB + {} MiB",
        max_rss >> 20,
        cache >> 20,
        OVERHEAD >> 20
    );
    assert!(
        halves[1] <= halves[0] + GROWTH,
        "daemon RSS kept growing: peak {} MiB in the first half, {} MiB in the second",
        halves[0] >> 20,
        halves[1] >> 20
    );
}

/// Twelve sequential readers (three per file, with request sizes from 1 byte to 1 MiB)
/// through the store under the smallest cache a mount accepts, with a prefetch window
/// larger than the cache can hold: prefetched chunks are evicted before they are read,
/// decodes of one chunk race between readers and prefetch, and every stream must still
/// be byte-identical to its source (checked by digest).
#[test]
fn many_sequential_readers_under_a_small_cache_during_prefetch() {
    use dcfs::store::{Store, StoreOptions, ROOT_INO};
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    let mut rng = Rng::new(77);
    let mut want = Vec::new();
    for k in 0..4 {
        let data = bf16_bytes(&weights(&mut rng, (3 << 20) + 4099 * k));
        let name = format!("w{k}.bin");
        fs::write(src.join(&name), &data).unwrap();
        want.push((name, data.len() as u64, blake3::hash(&data)));
    }
    let opts = PackOptions {
        chunk_size: 64 << 10,
        ..Default::default()
    };
    let packed = t.path().join("p");
    pack::pack_tree(&src, &packed, &opts, &NoProgress).unwrap();
    let store = Store::open(
        &packed,
        StoreOptions {
            cache_bytes: 4 << 20,
            threads: 4,
            prefetch: 64,
        },
    )
    .unwrap();
    let want = Arc::new(want);
    let readers: Vec<_> = (0..12u64)
        .map(|i| {
            let (store, want) = (store.clone(), want.clone());
            std::thread::spawn(move || {
                let (name, len, digest) = &want[(i % 4) as usize];
                let ino = store.lookup(ROOT_INO, name.as_ref()).expect("served").ino;
                let mut r = Rng::new(500 + i);
                for pass in 0..2 {
                    let fh = store.open_handle();
                    let mut h = blake3::Hasher::new();
                    let mut off = 0u64;
                    while off < *len {
                        let size = 1 + (r.next() % (1 << 20)) as u32;
                        let d = store.read(ino, fh, off, size).unwrap();
                        assert!(!d.is_empty(), "{name}: short read at {off}");
                        h.update(&d);
                        off += d.len() as u64;
                    }
                    store.release(fh);
                    assert_eq!(
                        h.finalize(),
                        *digest,
                        "{name}: reader {i} pass {pass} served other bytes"
                    );
                }
            })
        })
        .collect();
    for th in readers {
        th.join().unwrap();
    }
    let s = store.stats();
    eprintln!("{s:?}");
    assert!(s.prefetch_issued > 0, "prefetch never ran: {s:?}");
    assert!(s.evictions > 0, "the cache never filled: {s:?}");
    assert!(s.cache_bytes <= s.cache_capacity.max(64 << 10), "{s:?}");
    assert_eq!(s.errors, 0, "{s:?}");
}

#[test]
fn a_lazy_unmount_under_active_readers_gives_errors_and_never_hangs() {
    if !can_mount() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    synth_tree(&src, 41);
    let packed = t.path().join("p");
    pack::pack_tree(&src, &packed, &PackOptions::default(), &NoProgress).unwrap();
    let mut d = Daemon::start(&packed, &t.path().join("mnt"), 4 << 20);
    let rel = PathBuf::from("model.safetensors");
    let data = Arc::new(fs::read(src.join(&rel)).unwrap());
    let path = d.mnt.join(&rel);
    let errors = Arc::new(AtomicU64::new(0));
    let reads = Arc::new(AtomicU64::new(0));
    let wrong = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + Duration::from_secs(60);
    let readers: Vec<_> = (0..8u64)
        .map(|i| {
            let (data, path, errors, reads, wrong) =
                (data.clone(), path.clone(), errors.clone(), reads.clone(), wrong.clone());
            std::thread::spawn(move || {
                let mut r = Rng::new(7 + i);
                // Each reader reopens the file often; after the unmount the path no longer
                // leads to the mount, so it sees errors and stops.
                while Instant::now() < stop {
                    let f = match File::open(&path) {
                        Ok(f) => f,
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                    };
                    for _ in 0..8 {
                        let off = (r.next() % data.len() as u64) as usize;
                        let len = (1 + (r.next() % (256 << 10)) as usize).min(data.len() - off);
                        let mut buf = vec![0u8; len];
                        match f.read_exact_at(&mut buf, off as u64) {
                            Ok(()) if buf[..] == data[off..off + len] => reads.fetch_add(1, Ordering::Relaxed),
                            Ok(()) => wrong.fetch_add(1, Ordering::Relaxed),
                            Err(_) => {
                                errors.fetch_add(1, Ordering::Relaxed);
                                return;
                            }
                        };
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let before = reads.load(Ordering::Relaxed);
    let st = Command::new(dcfs_bin())
        .args(["umount", "-l"])
        .arg(&d.mnt)
        .status()
        .unwrap();
    assert!(st.success());
    let t0 = Instant::now();
    for th in readers {
        th.join().unwrap();
    }
    let readers_done = t0.elapsed();
    // With every file closed, the kernel ends the session and the daemon exits.
    let end = Instant::now() + Duration::from_secs(20);
    let exited = loop {
        if let Some(s) = d.child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > end {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!(
        "lazy unmount: {before} reads before, {} in all, {} readers ended with an error, {} wrong; \
         readers done {:.2}s after the unmount; daemon exit {exited:?} after {:.2}s",
        reads.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed),
        wrong.load(Ordering::Relaxed),
        readers_done.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    assert!(before > 0, "no reads before the unmount");
    assert_eq!(wrong.load(Ordering::Relaxed), 0);
    assert_eq!(errors.load(Ordering::Relaxed), 8, "every reader ends with an error");
    assert!(readers_done < Duration::from_secs(30), "readers hung after the unmount");
    assert!(exited.is_some(), "the daemon did not exit after a lazy unmount");
}
