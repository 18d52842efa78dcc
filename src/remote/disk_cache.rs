//! A local disk cache of byte ranges fetched from object storage (`--cache-dir`).
//!
//! It holds what the network delivered: compressed chunks and container indexes, so a disk
//! holds ratio× more model than a cache of the served files would, and a remount serves
//! from disk with no chunk fetches.
//!
//! Invariants:
//! - An entry is keyed by the object's URL, its ETag and the byte range; a replaced object
//!   has a new ETag, so its old entries are never read again (they age out).
//! - An entry is written to `tmp/` and renamed into place, so a reader sees a whole entry
//!   or none. Its header holds the key, the length and a hash of the body, checked on every
//!   read; an entry that fails (torn by a crash, damaged on disk) is deleted and counts as a
//!   miss. The bytes then pass the chunk's own checksum after decoding as well.
//! - The cache never fails a read: an entry it cannot write (full disk, I/O error) is
//!   skipped and counted.
//! - Bytes are bounded by `max_bytes` (when given) and by keeping `min_free` of the
//!   filesystem free; the least recently used entries (by mtime, bumped on each hit) go
//!   first. A writer reserves its entry's bytes before it writes, one admission at a time,
//!   so writers running together never overshoot the bound between them. Several mounts
//!   on one node share a directory: evictions are serialized by an `flock` on
//!   `evict.lock`, and each mount rescans the directory before it evicts.
//! - The cache root must be a directory owned by us and writable by nobody else: a root
//!   daemon must never rename into a path another user could have redirected.
//!
//! Layout under `DIR/dcfs-cache-v1/`: `evict.lock`, `tmp/PID-N`, `e/XX/KEY` (KEY: 32 hex
//! digits of the key, XX its first two).

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use xxhash_rust::xxh3::{xxh3_128, xxh3_64};

use crate::error::{Error, Result};

/// The directory dcfs owns inside the one the user names; bumped with the entry format.
pub const SUBDIR: &str = "dcfs-cache-v1";

// Entry header, little-endian: magic, format version, key, body length, body hash.
const MAGIC: &[u8; 8] = b"DCFSCHE1";
const OFF_MAGIC: usize = 0;
const OFF_VERSION: usize = 8;
const OFF_KEY: usize = 12;
const OFF_LEN: usize = 28;
const OFF_HASH: usize = 36;
const HEADER_LEN: usize = 44;
const VERSION: u32 = 1;

/// Share of the filesystem the cache keeps free by default.
pub const DEFAULT_MIN_FREE: f64 = 0.05;
/// An eviction frees down to this share of `max_bytes`, so evictions (each a rescan) are
/// rare.
const EVICT_TO: f64 = 0.9;
/// Temporaries of live processes older than this are removed too (a hung writer).
const STALE_TMP: Duration = Duration::from_secs(3600);
/// Largest entry the cache takes; larger ranges are served but not kept.
pub const MAX_ENTRY: u64 = 64 << 20;

/// How the cache is set up (`--cache-dir`, `-o disk_cache_size=`).
#[derive(Clone, Debug)]
pub struct DiskCacheConfig {
    /// The directory the user names; dcfs keeps its entries in [`SUBDIR`] inside it.
    pub dir: PathBuf,
    /// Bound on the bytes of entries; `None`: only `min_free` bounds it.
    pub max_bytes: Option<u64>,
    /// Share of the filesystem kept free (0.05 = 5%).
    pub min_free: f64,
}

impl DiskCacheConfig {
    pub fn new(dir: impl Into<PathBuf>) -> DiskCacheConfig {
        DiskCacheConfig {
            dir: dir.into(),
            max_bytes: None,
            min_free: DEFAULT_MIN_FREE,
        }
    }
}

/// Counters for `dcfs stats`.
#[derive(Debug, Default)]
struct Counters {
    hits: AtomicU64,
    hit_bytes: AtomicU64,
    misses: AtomicU64,
    writes: AtomicU64,
    write_bytes: AtomicU64,
    skipped: AtomicU64,
    torn: AtomicU64,
    evictions: AtomicU64,
}

/// A snapshot of the cache's counters.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct DiskCounts {
    pub hits: u64,
    pub hit_bytes: u64,
    pub misses: u64,
    pub writes: u64,
    pub write_bytes: u64,
    /// Entries not written: no room, or a write failed.
    pub skipped: u64,
    /// Entries found damaged or torn, deleted and fetched again.
    pub torn: u64,
    pub evictions: u64,
    /// Bytes of entries as this mount last counted them (other mounts add to it).
    pub usage: u64,
}

/// What the cache knows of its own size between scans.
#[derive(Debug)]
struct State {
    /// Bytes of entries; valid once `scanned`.
    usage: u64,
    /// Bytes reserved by writes under way (admitted, not yet renamed into place).
    pending: u64,
    /// Bytes of all the entries this mount has written (only grows): a scan's count is
    /// made whole with what was written while it ran.
    added: u64,
    /// Whether `usage` was counted: the first scan waits for the first write (or a
    /// `dcfs stats`), so a warm remount that only reads never walks the directory.
    scanned: bool,
    next_tmp: u64,
    warned: bool,
}

/// A byte-range cache on local disk, shared by the mounts of one node.
#[derive(Debug)]
pub struct DiskCache {
    root: PathBuf,
    max_bytes: Option<u64>,
    min_free: f64,
    state: Mutex<State>,
    /// Held from a writer's room check to its reservation, so two writers never both
    /// count on the same free bytes.
    admit: Mutex<()>,
    counts: Counters,
}

/// One cached range's identity: which object version and which bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Key(u128);

impl Key {
    pub fn new(object: &str, etag: &str, offset: u64, len: u64) -> Key {
        let mut b = Vec::with_capacity(object.len() + etag.len() + 32);
        for part in [object.as_bytes(), etag.as_bytes()] {
            b.extend_from_slice(&(part.len() as u64).to_le_bytes());
            b.extend_from_slice(part);
        }
        b.extend_from_slice(&offset.to_le_bytes());
        b.extend_from_slice(&len.to_le_bytes());
        Key(xxh3_128(&b))
    }

    fn hex(self) -> String {
        format!("{:032x}", self.0)
    }
}

fn io(path: &Path, e: std::io::Error) -> Error {
    Error::io(path, e)
}

/// Creates `p` as a directory of ours (mode 0700) unless it is one already; refuses a
/// link, a non-directory, or a directory others own or may write to.
fn own_dir(p: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match fs::DirBuilder::new().mode(0o700).create(p) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io(p, e)),
    }
    let md = fs::symlink_metadata(p).map_err(|e| io(p, e))?;
    let euid = rustix::process::geteuid().as_raw();
    let bad = if md.file_type().is_symlink() || !md.is_dir() {
        Some("not a directory (or a symbolic link)".to_string())
    } else if md.uid() != euid {
        Some(format!("owned by uid {}, not by us (uid {euid})", md.uid()))
    } else if md.mode() & 0o022 != 0 {
        Some(format!("writable by others (mode {:o})", md.mode() & 0o7777))
    } else {
        None
    };
    match bad {
        Some(what) => Err(Error::Invalid {
            path: p.to_path_buf(),
            what: format!("refusing it as a cache directory: {what}"),
        }),
        None => Ok(()),
    }
}

impl DiskCache {
    /// Opens (creating) the cache in `cfg.dir` and removes temporaries of writers that
    /// died. What is there is counted on first need (see [`State::scanned`]).
    pub fn open(cfg: &DiskCacheConfig) -> Result<DiskCache> {
        if !(0.0..1.0).contains(&cfg.min_free) {
            return Err(Error::Invalid {
                path: cfg.dir.clone(),
                what: format!("free-space share {} is not in [0, 1)", cfg.min_free),
            });
        }
        // The user's directory may be shared (e.g. /var/cache); only ours must be private.
        fs::create_dir_all(&cfg.dir).map_err(|e| io(&cfg.dir, e))?;
        let root = cfg.dir.join(SUBDIR);
        own_dir(&root)?;
        own_dir(&root.join("tmp"))?;
        own_dir(&root.join("e"))?;
        let c = DiskCache {
            root,
            max_bytes: cfg.max_bytes,
            min_free: cfg.min_free,
            admit: Mutex::new(()),
            state: Mutex::new(State {
                usage: 0,
                pending: 0,
                added: 0,
                scanned: false,
                next_tmp: 0,
                warned: false,
            }),
            counts: Counters::default(),
        };
        c.sweep_tmp();
        Ok(c)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn counts(&self) -> DiskCounts {
        let c = &self.counts;
        DiskCounts {
            hits: c.hits.load(Relaxed),
            hit_bytes: c.hit_bytes.load(Relaxed),
            misses: c.misses.load(Relaxed),
            writes: c.writes.load(Relaxed),
            write_bytes: c.write_bytes.load(Relaxed),
            skipped: c.skipped.load(Relaxed),
            torn: c.torn.load(Relaxed),
            evictions: c.evictions.load(Relaxed),
            usage: self.usage(),
        }
    }

    /// Bytes of entries, counting them first if that was not done yet.
    fn usage(&self) -> u64 {
        if !self.state.lock().scanned {
            let scanned: u64 = self.scan().map_or(0, |e| e.iter().map(|e| e.1).sum());
            let mut s = self.state.lock();
            if !s.scanned {
                s.scanned = true;
                s.usage = scanned;
            }
        }
        self.state.lock().usage
    }

    fn entry_path(&self, key: Key) -> PathBuf {
        let h = key.hex();
        self.root.join("e").join(&h[..2]).join(h)
    }

    /// Fills `buf` from the entry of `key`; false on a miss. A damaged entry is deleted
    /// and is a miss.
    pub fn get(&self, key: Key, buf: &mut [u8]) -> bool {
        let path = self.entry_path(key);
        let f = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(&path)
        {
            Ok(f) => f,
            Err(_) => {
                self.counts.misses.fetch_add(1, Relaxed);
                return false;
            }
        };
        match read_entry(&f, key, buf) {
            Ok(()) => {
                // Bump the mtime: eviction takes the least recently used first.
                let _ = f.set_modified(SystemTime::now());
                self.counts.hits.fetch_add(1, Relaxed);
                self.counts.hit_bytes.fetch_add(buf.len() as u64, Relaxed);
                true
            }
            Err(why) => {
                tracing::warn!("disk cache entry {}: {why}; fetching it again", path.display());
                self.remove_entry(&path);
                self.counts.torn.fetch_add(1, Relaxed);
                self.counts.misses.fetch_add(1, Relaxed);
                false
            }
        }
    }

    /// Drops the entry of `key`, if any (its bytes failed a later check).
    pub fn forget(&self, key: Key) {
        self.remove_entry(&self.entry_path(key));
    }

    fn remove_entry(&self, path: &Path) {
        if let Ok(md) = fs::symlink_metadata(path) {
            if fs::remove_file(path).is_ok() {
                let mut s = self.state.lock();
                s.usage = s.usage.saturating_sub(md.len());
            }
        }
    }

    /// Keeps `data` as the entry of `key`. Never fails: a write that cannot be made is
    /// skipped, counted, and logged once.
    pub fn put(&self, key: Key, data: &[u8]) {
        let need = (HEADER_LEN + data.len()) as u64;
        let admitted = data.len() as u64 <= MAX_ENTRY && {
            let _one = self.admit.lock();
            let room = self.make_room(need);
            if room {
                self.state.lock().pending += need;
            }
            room
        };
        if !admitted {
            self.counts.skipped.fetch_add(1, Relaxed);
            return;
        }
        let r = self.write_entry(key, data);
        let mut s = self.state.lock();
        s.pending -= need;
        match r {
            Ok(()) => {
                s.usage += need;
                s.added += need;
                self.counts.writes.fetch_add(1, Relaxed);
                self.counts.write_bytes.fetch_add(data.len() as u64, Relaxed);
            }
            Err(e) => {
                self.counts.skipped.fetch_add(1, Relaxed);
                if !s.warned {
                    s.warned = true;
                    tracing::warn!(
                        "disk cache {}: cannot write an entry ({e}); serving without it",
                        self.root.display()
                    );
                }
            }
        }
    }

    fn write_entry(&self, key: Key, data: &[u8]) -> Result<()> {
        let n = {
            let mut s = self.state.lock();
            s.next_tmp += 1;
            s.next_tmp
        };
        let tmp = self.root.join("tmp").join(format!("{}-{n}", std::process::id()));
        let mut header = [0u8; HEADER_LEN];
        header[OFF_MAGIC..OFF_VERSION].copy_from_slice(MAGIC);
        header[OFF_VERSION..OFF_KEY].copy_from_slice(&VERSION.to_le_bytes());
        header[OFF_KEY..OFF_LEN].copy_from_slice(&key.0.to_le_bytes());
        header[OFF_LEN..OFF_HASH].copy_from_slice(&(data.len() as u64).to_le_bytes());
        header[OFF_HASH..HEADER_LEN].copy_from_slice(&xxh3_64(data).to_le_bytes());
        let r = (|| -> std::io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&tmp)?;
            crash_point("disk-cache-before-write");
            f.write_all(&header)?;
            f.write_all(data)?;
            crash_point("disk-cache-before-rename");
            let dst = self.entry_path(key);
            let dir = dst.parent().expect("entry has a parent");
            match fs::DirBuilder::new().create(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
            if !fs::symlink_metadata(dir)?.is_dir() {
                return Err(std::io::Error::other("entry directory is not a directory"));
            }
            fs::rename(&tmp, &dst)
        })();
        if let Err(e) = r {
            let _ = fs::remove_file(&tmp);
            return Err(io(&tmp, e));
        }
        Ok(())
    }

    /// Frees room for `need` more bytes: within `max_bytes`, and leaving `min_free` of the
    /// filesystem free. False when even an empty cache would not leave that room. Called
    /// under `admit`; writes already admitted count as written (their `pending` bytes).
    fn make_room(&self, need: u64) -> bool {
        let pending = self.state.lock().pending;
        let need_all = need + pending;
        let over_bound = |usage: u64| self.max_bytes.is_some_and(|m| usage + need_all > m);
        let short = || self.free_shortfall(need_all);
        let usage = self.usage();
        if !over_bound(usage) && short() == 0 {
            return true;
        }
        if self.max_bytes.is_some_and(|m| need_all > m) {
            return false;
        }
        // When emptying the whole cache would not leave enough free, others fill the
        // disk: write nothing, and keep what is cached.
        let shortfall = short();
        if shortfall > usage {
            let mut s = self.state.lock();
            if !s.warned {
                s.warned = true;
                tracing::warn!(
                    "disk cache {}: its filesystem has less than {:.0}% free; not caching until it has",
                    self.root.display(),
                    self.min_free * 100.0
                );
            }
            return false;
        }
        let Ok(lock) = self.evict_lock() else {
            return false;
        };
        // Rescan under the lock: other mounts may have added or evicted entries. Writes
        // of ours that land during the scan may be missed by it; they are added back below.
        let added_before = self.state.lock().added;
        let Ok(mut entries) = self.scan() else {
            return false;
        };
        let mut usage: u64 = entries.iter().map(|e| e.1).sum();
        let target = self
            .max_bytes
            .map_or(u64::MAX, |m| ((m as f64 * EVICT_TO) as u64).saturating_sub(need_all));
        let mut free_needed = short();
        // Oldest first.
        entries.sort_by_key(|e| e.2);
        let mut evicted = 0u64;
        for (path, len, _) in entries {
            if usage <= target && free_needed == 0 {
                break;
            }
            if fs::remove_file(&path).is_ok() {
                usage = usage.saturating_sub(len);
                free_needed = free_needed.saturating_sub(len);
                evicted += 1;
            }
        }
        drop(lock);
        self.counts.evictions.fetch_add(evicted, Relaxed);
        let (usage, pending) = {
            let mut s = self.state.lock();
            // Counting a write the scan did see twice only errs towards evicting early.
            s.usage = usage + (s.added - added_before);
            (s.usage, s.pending)
        };
        self.max_bytes.is_none_or(|m| usage + pending + need <= m) && self.free_shortfall(pending + need) == 0
    }

    /// Bytes that must be freed so that writing `need` leaves `min_free` of the filesystem
    /// free; 0 when there is room. Unknown (statvfs failed) counts as no room.
    fn free_shortfall(&self, need: u64) -> u64 {
        match rustix::fs::statvfs(&self.root) {
            Ok(v) => {
                let total = v.f_blocks.saturating_mul(v.f_frsize);
                let avail = v.f_bavail.saturating_mul(v.f_frsize);
                let keep = (total as f64 * self.min_free) as u64 + need;
                keep.saturating_sub(avail)
            }
            Err(_) => u64::MAX,
        }
    }

    fn evict_lock(&self) -> std::io::Result<File> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(self.root.join("evict.lock"))?;
        rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)?;
        Ok(f)
    }

    /// Every entry: its path, length and mtime.
    fn scan(&self) -> Result<Vec<(PathBuf, u64, SystemTime)>> {
        let e = self.root.join("e");
        let mut out = Vec::new();
        for d in fs::read_dir(&e).map_err(|x| io(&e, x))? {
            let Ok(d) = d else { continue };
            if !d.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let Ok(files) = fs::read_dir(d.path()) else { continue };
            for f in files.flatten() {
                if let Ok(md) = f.metadata() {
                    if md.is_file() {
                        out.push((f.path(), md.len(), md.modified().unwrap_or(SystemTime::UNIX_EPOCH)));
                    }
                }
            }
        }
        Ok(out)
    }

    /// Removes temporaries left by writers that died (dcfs killed mid-write), or that hung.
    fn sweep_tmp(&self) {
        let dir = self.root.join("tmp");
        let Ok(rd) = fs::read_dir(&dir) else { return };
        for f in rd.flatten() {
            let name = f.file_name();
            let pid = name
                .to_str()
                .and_then(|n| n.split_once('-'))
                .and_then(|(p, _)| p.parse::<i32>().ok());
            let alive = pid.is_some_and(|p| p > 0 && process_alive(p));
            let old = f
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > STALE_TMP);
            if !alive || old {
                let _ = fs::remove_file(f.path());
            }
        }
    }
}

/// Whether process `pid` runs: it exists and is not a zombie (a daemon killed after its
/// parent exited may stay a zombie where nothing reaps orphans).
fn process_alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses and may hold any byte.
        Ok(st) => st
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

/// Reads and checks an entry: header, key, length, and the hash of the body.
fn read_entry(f: &File, key: Key, buf: &mut [u8]) -> std::result::Result<(), String> {
    let md = f.metadata().map_err(|e| e.to_string())?;
    if !md.is_file() {
        return Err("not a regular file".into());
    }
    let want = (HEADER_LEN + buf.len()) as u64;
    if md.len() != want {
        return Err(format!("{} bytes, expected {want}", md.len()));
    }
    let mut h = [0u8; HEADER_LEN];
    f.read_exact_at(&mut h, 0).map_err(|e| e.to_string())?;
    let u32_at = |o: usize| u32::from_le_bytes(h[o..o + 4].try_into().expect("4 bytes"));
    let u64_at = |o: usize| u64::from_le_bytes(h[o..o + 8].try_into().expect("8 bytes"));
    if &h[OFF_MAGIC..OFF_VERSION] != MAGIC || u32_at(OFF_VERSION) != VERSION {
        return Err("bad header".into());
    }
    if u128::from_le_bytes(h[OFF_KEY..OFF_LEN].try_into().expect("16 bytes")) != key.0 {
        return Err("holds another key".into());
    }
    if u64_at(OFF_LEN) != buf.len() as u64 {
        return Err("length mismatch".into());
    }
    f.read_exact_at(buf, HEADER_LEN as u64).map_err(|e| e.to_string())?;
    if xxh3_64(buf) != u64_at(OFF_HASH) {
        return Err("body hash mismatch".into());
    }
    Ok(())
}

/// A named crash point for tests (`DCFS_CRASH_AT=NAME`): the process dies here, as with
/// kill -9, so a test can show what a crash at exactly this step leaves behind.
fn crash_point(name: &str) {
    if let Some(v) = std::env::var_os("DCFS_CRASH_AT") {
        if v.to_str().is_some_and(|v| v == name) {
            // SAFETY: raising SIGKILL on ourselves; nothing runs after it.
            unsafe { libc::raise(libc::SIGKILL) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(dir: &Path, max: Option<u64>) -> DiskCache {
        DiskCache::open(&DiskCacheConfig {
            dir: dir.to_path_buf(),
            max_bytes: max,
            min_free: 0.0,
        })
        .unwrap()
    }

    #[test]
    fn entries_round_trip_and_survive_a_reopen() {
        let d = tempfile::tempdir().unwrap();
        let c = cache(d.path(), None);
        let k = Key::new("s3://b/p/x.dcz", "\"e1\"", 10, 5);
        let mut b = [0u8; 5];
        assert!(!c.get(k, &mut b));
        c.put(k, b"hello");
        assert!(c.get(k, &mut b));
        assert_eq!(&b, b"hello");
        let c2 = cache(d.path(), None);
        assert_eq!(c2.counts().usage, (HEADER_LEN + 5) as u64);
        let mut b2 = [0u8; 5];
        assert!(c2.get(k, &mut b2));
        assert_eq!(&b2, b"hello");
        // Another version, or another range, is another key.
        assert!(!c2.get(Key::new("s3://b/p/x.dcz", "\"e2\"", 10, 5), &mut b2));
        assert!(!c2.get(Key::new("s3://b/p/x.dcz", "\"e1\"", 11, 5), &mut b2));
    }

    #[test]
    fn damaged_entries_are_misses_and_deleted() {
        let d = tempfile::tempdir().unwrap();
        let c = cache(d.path(), None);
        let k = Key::new("o", "t", 0, 4);
        c.put(k, b"abcd");
        let p = c.entry_path(k);
        // A flipped body byte.
        let mut raw = fs::read(&p).unwrap();
        raw[HEADER_LEN + 1] ^= 1;
        fs::write(&p, &raw).unwrap();
        let mut b = [0u8; 4];
        assert!(!c.get(k, &mut b));
        assert!(!p.exists(), "a damaged entry is deleted");
        // A torn entry (cut short).
        c.put(k, b"abcd");
        let raw = fs::read(&p).unwrap();
        fs::write(&p, &raw[..HEADER_LEN + 2]).unwrap();
        assert!(!c.get(k, &mut b));
        assert_eq!(c.counts().torn, 2);
        // A good one again.
        c.put(k, b"abcd");
        assert!(c.get(k, &mut b));
        assert_eq!(&b, b"abcd");
    }

    #[test]
    fn the_byte_bound_evicts_least_recently_used() {
        let d = tempfile::tempdir().unwrap();
        let per = (HEADER_LEN + 1000) as u64;
        let c = cache(d.path(), Some(per * 4));
        let keys: Vec<Key> = (0..4).map(|i| Key::new("o", "t", i * 1000, 1000)).collect();
        let mut b = vec![0u8; 1000];
        for (i, &k) in keys.iter().enumerate() {
            c.put(k, &vec![i as u8; 1000]);
            // Distinct mtimes, oldest first.
            let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + i as u64);
            File::options()
                .write(true)
                .open(c.entry_path(k))
                .unwrap()
                .set_modified(t)
                .unwrap();
        }
        // Touch key 0: it becomes the most recent.
        assert!(c.get(keys[0], &mut b));
        c.put(Key::new("o", "t", 9000, 1000), &[9u8; 1000]);
        let u = c.counts();
        assert!(u.usage <= per * 4, "{u:?}");
        assert!(u.evictions >= 1);
        assert!(!c.get(keys[1], &mut b), "the least recently used went first");
        assert!(c.get(keys[0], &mut b), "the recently read one stayed");
        assert_eq!(b, vec![0u8; 1000]);
    }

    #[test]
    fn writers_running_together_stay_within_the_bound() {
        let d = tempfile::tempdir().unwrap();
        let per = (HEADER_LEN + 10_000) as u64;
        let bound = per * 10;
        let c = cache(d.path(), Some(bound));
        let on_disk = |c: &DiskCache| -> u64 { c.scan().unwrap().iter().map(|e| e.1).sum() };
        let peak = AtomicU64::new(0);
        std::thread::scope(|s| {
            for t in 0..8u64 {
                let (c, peak) = (&c, &peak);
                s.spawn(move || {
                    for i in 0..40u64 {
                        c.put(Key::new("o", "t", (t * 100 + i) * 10_000, 10_000), &[t as u8; 10_000]);
                        // Counted with admissions held: entries then only arrive (writes
                        // already admitted), never leave, so the count is a true lower
                        // bound of what lies there as it ends.
                        let _no_admissions = c.admit.lock();
                        peak.fetch_max(on_disk(c), Relaxed);
                    }
                });
            }
        });
        let u = c.counts();
        assert!(
            peak.load(Relaxed) <= bound,
            "{} on disk over {bound}: {u:?}",
            peak.load(Relaxed)
        );
        assert!(on_disk(&c) <= bound, "{u:?}");
        assert!(u.writes >= 10 && u.evictions > 0, "{u:?}");
        assert_eq!(c.state.lock().pending, 0);
    }

    #[test]
    fn an_entry_larger_than_the_bound_is_skipped() {
        let d = tempfile::tempdir().unwrap();
        let c = cache(d.path(), Some(100));
        c.put(Key::new("o", "t", 0, 200), &[1u8; 200]);
        assert_eq!(c.counts().skipped, 1);
        assert_eq!(c.counts().usage, 0);
    }

    #[test]
    fn stale_temporaries_are_swept_and_unsafe_dirs_refused() {
        let d = tempfile::tempdir().unwrap();
        let c = cache(d.path(), None);
        // A dead writer's temporary (pid 0 is never ours) and a live one's.
        let dead = c.root().join("tmp").join("999999999-1");
        let live = c.root().join("tmp").join(format!("{}-77", std::process::id()));
        fs::write(&dead, b"x").unwrap();
        fs::write(&live, b"x").unwrap();
        drop(c);
        let c = cache(d.path(), None);
        assert!(!dead.exists());
        assert!(live.exists());
        drop(c);
        use std::os::unix::fs::PermissionsExt;
        let root = d.path().join(SUBDIR);
        fs::set_permissions(&root, fs::Permissions::from_mode(0o777)).unwrap();
        let e = DiskCache::open(&DiskCacheConfig::new(d.path())).unwrap_err();
        assert!(e.to_string().contains("writable by others"), "{e}");
        fs::set_permissions(&root, fs::Permissions::from_mode(0o700)).unwrap();
        // A link in place of the cache root is refused, not followed.
        let d2 = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(&root, d2.path().join(SUBDIR)).unwrap();
        let e = DiskCache::open(&DiskCacheConfig::new(d2.path())).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
    }
}
