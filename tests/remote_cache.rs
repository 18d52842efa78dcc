//! The disk cache of a remote mount (`--cache-dir`) and the mount's behaviour when the
//! network misbehaves, against a real S3 server (s3s-fs on loopback, started here): a warm
//! remount serves with no chunk fetches (and with the server gone); a crash while filling
//! the cache and torn entries are repaired on remount; a full cache filesystem never fails
//! a read; bits flipped in transit are fetched again, never served; a server killed
//! mid-read gives EIO, then reads resume when it is back.

mod common;
#[path = "common/fault.rs"]
mod fault;
#[path = "common/s3.rs"]
mod s3;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use dcfs::remote::disk_cache::SUBDIR;
use dcfs::remote::{Location, RemoteOptions};
use s3::S3Server;

const URL: &str = "s3://models/m";
/// Marks a mount that keeps the default free-space rule.
const KEEP_FREE: &str = "-odisk_cache_free=5";

/// A pushed pack of a synthetic tree plus (when fetched) the real MiniLM BF16 model, with
/// small chunks so a read makes many GETs and the cache many entries.
struct Setup {
    t: tempfile::TempDir,
    s: S3Server,
    src: PathBuf,
}

fn setup(anonymous: bool) -> Option<Setup> {
    if !can_mount() {
        return None;
    }
    let t = tempfile::tempdir().unwrap();
    let s = S3Server::start(&t.path().join("s3"), &["models"], anonymous)?;
    let src = t.path().join("src");
    synth_tree_with_minilm(&src, 21);
    let packed = t.path().join("packed");
    pack_cli(&src, &packed, &["-j", "2", "--chunk-size", "256K"]);
    let Location::Remote(u) = Location::parse(URL).unwrap() else {
        unreachable!()
    };
    let o = RemoteOptions {
        endpoint: Some(s.endpoint()),
        allow_http: true,
        keys: s.keys.clone(),
        no_sign_request: anonymous,
        ..Default::default()
    };
    dcfs::remote::pack::push(&packed, &u, &o, &dcfs::pack::NoProgress).unwrap();
    Some(Setup { t, s, src })
}

impl Setup {
    /// `dcfs mount URL MNT --endpoint … ARGS` (daemonised), or its failed output.
    fn mount(&self, name: &str, args: &[&str], env: &[(&str, &str)]) -> Result<Mounted, String> {
        let mnt = self.t.path().join(name);
        std::fs::create_dir_all(&mnt).unwrap();
        let mut c = self.s.dcfs();
        c.args(["mount", URL])
            .arg(&mnt)
            .args(["--endpoint", &self.s.endpoint()])
            .args(args);
        if args.iter().any(|a| a.contains("cache")) && !args.contains(&KEEP_FREE) {
            // This machine's disk may have under 5% free; the tmpfs test checks that rule.
            c.args(["-o", "disk_cache_free=0"]);
        }
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(Mounted {
            mnt: mnt.canonicalize().unwrap(),
        })
    }

    fn cache(&self) -> PathBuf {
        self.t.path().join("cache")
    }
}

fn num(st: &serde_json::Value, k: &str) -> u64 {
    st[k].as_u64().unwrap_or_else(|| panic!("no {k} in {st}"))
}

/// Files (path, length) of the cache's entries.
fn entries(cache: &Path) -> Vec<(PathBuf, u64)> {
    walk(&cache.join(SUBDIR).join("e"))
        .into_iter()
        .filter(|(_, md)| md.is_file())
        .map(|(r, md)| (cache.join(SUBDIR).join("e").join(r), md.len()))
        .collect()
}

#[test]
fn a_warm_remount_serves_from_the_disk_cache_even_with_the_server_gone() {
    let Some(mut x) = setup(false) else { return };
    let want = tree_state(&x.src);
    let cache = x.cache();
    let cache_arg = cache.to_str().unwrap().to_string();
    let cold_bytes;
    {
        let m = x.mount("cold", &["--cache-dir", &cache_arg], &[]).unwrap();
        assert_eq!(tree_state(&m.mnt), want);
        let st = m.stats();
        eprintln!("cold: {st}");
        assert_eq!(st["disk_cache"], true, "{st}");
        assert!(num(&st, "disk_writes") > 0, "{st}");
        assert_eq!(num(&st, "disk_hits"), 0, "{st}");
        cold_bytes = num(&st, "net_bytes");
        assert!(num(&st, "disk_usage") > 0, "{st}");
    }
    // Warm: the manifest, footers, indexes and chunks all come from the disk; the network
    // carries only the marker and one HEAD per object (manifest included).
    let manifest = std::fs::metadata(x.t.path().join("packed/.dcfs-manifest.json"))
        .unwrap()
        .len();
    assert!(manifest > 4096, "the manifest must outweigh the marker for this check");
    {
        let m = x
            .mount("warm", &["-o", &format!("cache_dir={cache_arg}")], &[])
            .unwrap();
        assert_eq!(tree_state(&m.mnt), want);
        let st = m.stats();
        eprintln!("warm: {st}");
        assert_eq!(num(&st, "disk_misses"), 0, "{st}");
        assert!(num(&st, "disk_hits") > 0, "{st}");
        assert!(
            num(&st, "net_bytes") <= 4096,
            "warm remount fetched {} bytes (cold {cold_bytes}, manifest {manifest}): {st}",
            num(&st, "net_bytes")
        );
    }
    // And with the server stopped once the mount is up, every byte still comes back.
    let m = x.mount("offline", &["--cache-dir", &cache_arg], &[]).unwrap();
    x.s.stop();
    assert_eq!(tree_state(&m.mnt), want);
    assert_eq!(num(&m.stats(), "errors"), 0);
}

/// A node's first mount with an empty cache costs the requests of a mount without one
/// (the opening GETs, no HEAD before each: that would be a round trip more per object),
/// and a remount no more (one HEAD per object in their place), with almost no bytes.
#[test]
fn a_first_mount_with_a_cache_makes_no_more_requests_than_one_without() {
    let Some(x) = setup(false) else { return };
    let cache_arg = x.cache().to_str().unwrap().to_string();
    let at_mount = |name: &str, args: &[&str]| {
        let m = x.mount(name, args, &[]).unwrap();
        let st = m.stats();
        eprintln!("{name}: {st}");
        (num(&st, "net_gets"), num(&st, "net_bytes"))
    };
    let (plain_gets, plain_bytes) = at_mount("plain", &[]);
    let (first_gets, first_bytes) = at_mount("first", &["--cache-dir", &cache_arg]);
    let (again_gets, again_bytes) = at_mount("again", &["--cache-dir", &cache_arg]);
    assert!(plain_gets > 2, "the pack has several containers: {plain_gets} requests");
    assert_eq!(first_gets, plain_gets, "first mount with a cache vs none");
    assert_eq!(first_bytes, plain_bytes, "first mount with a cache vs none");
    assert!(
        again_gets <= plain_gets,
        "remount: {again_gets} requests, without a cache {plain_gets}"
    );
    assert!(
        again_bytes <= 4096,
        "remount fetched {again_bytes} bytes (first {first_bytes})"
    );
}

#[test]
fn a_crash_while_filling_the_cache_and_torn_entries_are_repaired_on_remount() {
    let Some(x) = setup(false) else { return };
    let want = tree_state(&x.src);
    let cache = x.cache();
    let cache_arg = cache.to_str().unwrap().to_string();
    // The daemon dies (SIGKILL) between writing its first entry and renaming it into
    // place: the mount never comes up, and temporaries are left behind.
    let e = x
        .mount(
            "crash",
            &["--cache-dir", &cache_arg],
            &[("DCFS_CRASH_AT", "disk-cache-before-rename")],
        )
        .err()
        .expect("the daemon was killed before the mount was ready");
    eprintln!("crashed mount: {e}");
    let tmp = cache.join(SUBDIR).join("tmp");
    // (Containers open in parallel: other openers may have written one before it died.)
    let left = std::fs::read_dir(&tmp).unwrap().count();
    assert!(left >= 1, "a temporary is left behind");
    assert!(entries(&cache).is_empty(), "no entry was renamed into place");
    // Fill the cache with a clean mount.
    {
        let m = x.mount("fill", &["--cache-dir", &cache_arg], &[]).unwrap();
        assert_eq!(tree_state(&m.mnt), want);
    }
    assert_eq!(
        std::fs::read_dir(&tmp).unwrap().count(),
        0,
        "the dead writer's temporary is swept"
    );
    // Damage entries as a crash or a bad disk would: one cut short, one with a flipped
    // body byte, one emptied.
    let mut es = entries(&cache);
    es.sort_by_key(|e| std::cmp::Reverse(e.1));
    assert!(es.len() >= 3, "{} entries", es.len());
    let (a, b, c) = (&es[0].0, &es[1].0, &es[2].0);
    let raw = std::fs::read(a).unwrap();
    std::fs::write(a, &raw[..raw.len() / 2]).unwrap();
    let mut raw = std::fs::read(b).unwrap();
    let at = raw.len() - 7;
    raw[at] ^= 0x10;
    std::fs::write(b, &raw).unwrap();
    std::fs::write(c, b"").unwrap();
    let m = x.mount("repaired", &["--cache-dir", &cache_arg], &[]).unwrap();
    assert_eq!(tree_state(&m.mnt), want);
    let st = m.stats();
    eprintln!("after damage: {st}");
    assert_eq!(num(&st, "disk_torn"), 3, "{st}");
    assert_eq!(num(&st, "errors"), 0, "{st}");
}

#[test]
fn a_kill_9_mid_read_then_a_remount_serves_right_bytes() {
    let Some(x) = setup(false) else { return };
    let want = tree_state(&x.src);
    let cache_arg = x.cache().to_str().unwrap().to_string();
    let m = x.mount("k1", &["--cache-dir", &cache_arg], &[]).unwrap();
    let pid = daemon_of(&m.mnt).expect("the mount daemon's pid");
    // Read in another thread and kill the daemon while it is filling the cache.
    let mnt = m.mnt.clone();
    let reader = std::thread::spawn(move || {
        let mut ok = BTreeMap::new();
        for p in walk_files(&mnt) {
            match std::fs::read(&p) {
                Ok(b) => {
                    ok.insert(p, blake3::hash(&b).to_hex().to_string());
                }
                Err(_) => break,
            }
        }
        ok
    });
    let t0 = std::time::Instant::now();
    while entries(&x.cache()).len() < 4 && t0.elapsed() < std::time::Duration::from_secs(20) {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    // SAFETY: kill(2) on the daemon's pid, read from /proc just now.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let _ = reader.join();
    let _ = Command::new(dcfs_bin()).args(["umount", "-l"]).arg(&m.mnt).status();
    std::mem::forget(m);
    let m = x.mount("k2", &["--cache-dir", &cache_arg], &[]).unwrap();
    assert_eq!(tree_state(&m.mnt), want);
    assert_eq!(num(&m.stats(), "errors"), 0);
}

/// The pid of the daemon serving `mnt` (its command line names the mount point).
fn daemon_of(mnt: &Path) -> Option<i32> {
    let want = mnt.as_os_str().as_encoded_bytes();
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmd.split(|&b| b == 0).collect();
        if args.iter().any(|a| *a == b"mount") && args.contains(&want) {
            return Some(pid);
        }
    }
    None
}

#[test]
fn a_full_cache_filesystem_or_a_small_bound_never_fails_a_read() {
    let Some(x) = setup(false) else { return };
    let want = tree_state(&x.src);
    // A 2 MiB tmpfs: far smaller than the pack.
    let small = x.t.path().join("smallfs");
    std::fs::create_dir_all(&small).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs"])
        .arg(&small)
        .status()
        .unwrap();
    assert!(st.success(), "mount tmpfs");
    struct Umount(PathBuf);
    impl Drop for Umount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _u = Umount(small.clone());
    {
        let m = x
            .mount("full", &["--cache-dir", small.to_str().unwrap(), KEEP_FREE], &[])
            .unwrap();
        assert_eq!(tree_state(&m.mnt), want);
        let st = m.stats();
        eprintln!("tmpfs cache: {st}");
        assert!(num(&st, "disk_writes") > 0, "{st}");
        assert!(num(&st, "disk_skipped") + num(&st, "disk_evictions") > 0, "{st}");
        assert_eq!(num(&st, "errors"), 0, "{st}");
    }
    // Fill the filesystem to the last byte from outside: writes fail with ENOSPC and are
    // skipped; reads go on.
    let _ = std::fs::remove_dir_all(small.join(SUBDIR).join("e"));
    let mut f = std::fs::File::create(small.join("filler")).unwrap();
    let block = vec![7u8; 64 << 10];
    use std::io::Write;
    while f.write_all(&block).is_ok() {}
    let _ = f.write_all(&block[..1]);
    drop(f);
    let m = x.mount("enospc", &["--cache-dir", small.to_str().unwrap(), KEEP_FREE], &[]);
    // The cache directory cannot even be re-created on a full filesystem: a clear error
    // at mount, or a mount that serves without its cache.
    match m {
        Ok(m) => {
            assert_eq!(tree_state(&m.mnt), want);
            let st = m.stats();
            eprintln!("full fs: {st}");
            assert_eq!(num(&st, "disk_writes"), 0, "{st}");
            assert_eq!(num(&st, "errors"), 0, "{st}");
        }
        Err(e) => assert!(e.contains("cache") || e.contains("space"), "{e}"),
    }
    // A cache directory inside the mount point is refused (the daemon would serve its
    // own writes).
    let inside = x.t.path().join("inner").join("cache");
    let e = x
        .mount("inner", &["--cache-dir", inside.to_str().unwrap()], &[])
        .err()
        .expect("a cache inside the mount point is refused");
    assert!(e.contains("inside the mount point"), "{e}");
    // A byte bound far below the pack: the cache stays within it and evicts.
    let bounded = x.t.path().join("bounded-cache");
    let m = x
        .mount(
            "bounded",
            &["--cache-dir", bounded.to_str().unwrap(), "--disk-cache-size", "1M"],
            &[],
        )
        .unwrap();
    assert_eq!(tree_state(&m.mnt), want);
    let st = m.stats();
    eprintln!("1M bound: {st}");
    let used: u64 = entries(&bounded).iter().map(|e| e.1).sum();
    assert!(used <= 1 << 20, "{used} bytes on disk over a 1M bound");
    assert!(num(&st, "disk_evictions") > 0, "{st}");
}

#[test]
fn bits_flipped_in_transit_are_fetched_again_never_served_or_cached() {
    let Some(x) = setup(true) else { return };
    let want = tree_state(&x.src);
    let cache_arg = x.cache().to_str().unwrap().to_string();
    let mut refetched = 0;
    for every in [3, 5] {
        let p = fault::FaultProxy::start(x.s.port, every, true);
        let http = format!("http://127.0.0.1:{}/models/m", p.port);
        let mnt = x.t.path().join(format!("flip{every}"));
        let mut c = x.s.dcfs();
        c.args(["mount", &http])
            .arg(&mnt)
            .args(["--cache-dir", &cache_arg, "-o", "disk_cache_free=0"]);
        let m = mount_with(c, &mnt);
        // Every file reads back right, or (a chunk damaged twice in a row) fails: never
        // wrong bytes.
        for (rel, v) in &want {
            let q = m.mnt.join(rel);
            if v.starts_with("->") {
                continue;
            }
            if let Ok(b) = std::fs::read(&q) {
                assert_eq!(&blake3::hash(&b).to_hex().to_string(), &v[..64], "{rel}: wrong bytes");
            }
        }
        let st = m.stats();
        eprintln!(
            "every {every}: {} faults; {st}",
            p.faults.load(std::sync::atomic::Ordering::Relaxed)
        );
        refetched += num(&st, "refetches");
    }
    assert!(refetched > 0, "no flipped chunk was fetched again");
    // What the cache kept is right: a remount straight from the server, with the cache,
    // serves every byte.
    let mnt = x.t.path().join("clean");
    let mut c = x.s.dcfs();
    c.args(["mount", &format!("http://127.0.0.1:{}/models/m", x.s.port)])
        .arg(&mnt)
        .args(["--cache-dir", &cache_arg, "-o", "disk_cache_free=0"]);
    let m = mount_with(c, &mnt);
    assert_eq!(tree_state(&m.mnt), want);
}

#[test]
fn a_server_killed_mid_read_gives_eio_then_reads_resume_when_it_is_back() {
    let Some(mut x) = setup(false) else { return };
    let want = tree_state(&x.src);
    let m = x.mount("gone", &["-o", "retry_timeout=2,prefetch=0"], &[]).unwrap();
    let files: Vec<&String> = want.keys().filter(|k| !want[*k].starts_with("->")).collect();
    let (first, rest) = files.split_first().unwrap();
    let b = std::fs::read(m.mnt.join(first)).unwrap();
    assert_eq!(&blake3::hash(&b).to_hex().to_string(), &want[*first][..64]);
    x.s.stop();
    let t0 = std::time::Instant::now();
    let mut failed = 0;
    for rel in rest {
        match std::fs::read(m.mnt.join(rel)) {
            Ok(b) => assert_eq!(&blake3::hash(&b).to_hex().to_string(), &want[*rel][..64], "{rel}"),
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EIO), "{rel}: {e}");
                failed += 1;
            }
        }
    }
    eprintln!(
        "{failed} of {} files failed with the server gone, in {:?}",
        rest.len(),
        t0.elapsed()
    );
    assert!(failed > 0, "every read succeeded with the server gone");
    x.s.restart();
    assert_eq!(tree_state(&m.mnt), want, "reads resume once the server is back");
}
