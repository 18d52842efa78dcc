//! Corruption matrix: damage a packed real model one byte (or one truncation) at a time,
//! in the header, the index, the footer and the payloads, and check after each damage:
//! `verify` fails naming the file, `unpack` fails without leaving a wrong file under the
//! original's name, and reads (through `store::Store`, the code behind the mount, and
//! through real mounts for a subset) return the source's bytes or an error, never wrong
//! bytes.
//!
//! Sizes: DCFS_CORRUPTION_FLIPS (default 500), DCFS_CORRUPTION_TRUNCS (50),
//! DCFS_CORRUPTION_MOUNTS (20 payload flips also read through a fresh real mount, plus 10
//! damages elsewhere that must make the mount refuse to start; the store must refuse every
//! damage outside the payloads).

mod common;

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::*;
use dcfs::pack::{self, NoProgress, PackOptions};
use dcfs::store::{Store, StoreOptions, ROOT_INO};

fn env_n(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[derive(Clone, Copy, Debug)]
enum Damage {
    Flip { pos: u64, xor: u8 },
    Truncate { len: u64 },
}

/// One packed file: its container, its original, and the container's layout.
struct Target {
    rel: PathBuf,
    container: PathBuf,
    original: Vec<u8>,
    packed: Vec<u8>,
    index_offset: u64,
}

impl Target {
    fn region(&self, pos: u64) -> &'static str {
        let len = self.packed.len() as u64;
        if pos < 16 {
            "header"
        } else if pos >= len - 48 {
            "footer"
        } else if pos >= self.index_offset {
            "index"
        } else {
            "payload"
        }
    }
}

#[derive(Default, Debug)]
struct Counts {
    tried: usize,
    detected: usize,
    undetected_harmless: usize,
    store_refused: usize,
    store_eio: usize,
    store_ok: usize,
    wrong_bytes: usize,
    unpack_tried: usize,
    unpack_failed_clean: usize,
    mounts: usize,
    mounts_structural: usize,
    mount_refused: usize,
    mount_eio: usize,
    mount_ok: usize,
}

/// What reading the whole file gave: every range correct, some range an error, or wrong
/// bytes (with the first bad offset).
#[derive(Debug, PartialEq)]
enum ReadOutcome {
    Correct,
    Error,
    Wrong(u64),
}

fn read_via_store(root: &Path, t: &Target) -> Option<ReadOutcome> {
    let opts = StoreOptions {
        cache_bytes: 8 << 20,
        threads: 2,
        prefetch: 2,
    };
    let store = Store::open(root, opts).ok()?;
    let mut ino = ROOT_INO;
    for comp in t.rel.iter() {
        ino = store.lookup(ino, comp).expect("file is served").ino;
    }
    let fh = store.open_handle();
    let mut out = ReadOutcome::Correct;
    let step = 1 << 20;
    let mut off = 0u64;
    while off < t.original.len() as u64 + 1 {
        match store.read(ino, fh, off, step as u32) {
            Ok(d) => {
                let end = (off as usize + step).min(t.original.len());
                if d[..] != t.original[(off as usize).min(end)..end] {
                    return Some(ReadOutcome::Wrong(off));
                }
            }
            Err(_) => out = ReadOutcome::Error,
        }
        off += step as u64;
    }
    store.release(fh);
    Some(out)
}

/// `Err(stderr)` when the mount refused to start.
fn read_via_mount(packed: &Path, mnt: &Path, t: &Target) -> Result<ReadOutcome, String> {
    fs::create_dir_all(mnt).unwrap();
    let st = Command::new(dcfs_bin())
        .arg("mount")
        .arg(packed)
        .arg(mnt)
        .args(["--cache-size", "8388608"])
        .output()
        .unwrap();
    if !st.status.success() {
        return Err(String::from_utf8_lossy(&st.stderr).into_owned());
    }
    let guard = Mounted {
        mnt: mnt.canonicalize().unwrap(),
    };
    let f = File::open(guard.mnt.join(&t.rel)).unwrap();
    let mut out = ReadOutcome::Correct;
    let step = 1 << 20;
    let mut off = 0usize;
    while off < t.original.len() {
        let end = (off + step).min(t.original.len());
        let mut buf = vec![0u8; end - off];
        match f.read_exact_at(&mut buf, off as u64) {
            Ok(()) => {
                if buf[..] != t.original[off..end] {
                    return Ok(ReadOutcome::Wrong(off as u64));
                }
            }
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EIO), "damage must read as EIO: {e}");
                out = ReadOutcome::Error;
            }
        }
        off = end;
    }
    Ok(out)
}

/// After a failed unpack: the damaged file is absent under its name (or, when verify said
/// the damage is harmless, equal to the source) and no temporary file is left anywhere.
fn check_unpack(packed: &Path, dst: &Path, t: &Target) -> bool {
    let r = pack::unpack_tree(packed, dst, 2, &NoProgress);
    let out = dst.join(&t.rel);
    let leftover: Vec<_> = walk_files(dst)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftover.is_empty(), "unpack left temporary files: {leftover:?}");
    let failed = r.is_err();
    if failed {
        if let Ok(d) = fs::read(&out) {
            assert!(d == t.original, "failed unpack left a wrong {}", out.display());
        }
    } else {
        assert!(
            fs::read(&out).unwrap() == t.original,
            "unpack wrote a wrong {}",
            out.display()
        );
    }
    let _ = fs::remove_dir_all(dst);
    failed
}

fn apply(path: &Path, d: Damage, packed: &[u8]) {
    let f = OpenOptions::new().write(true).open(path).unwrap();
    match d {
        Damage::Flip { pos, xor } => f.write_all_at(&[packed[pos as usize] ^ xor], pos).unwrap(),
        Damage::Truncate { len } => f.set_len(len).unwrap(),
    }
}

fn restore(path: &Path, d: Damage, packed: &[u8]) {
    match d {
        Damage::Flip { pos, .. } => {
            let f = OpenOptions::new().write(true).open(path).unwrap();
            f.write_all_at(&packed[pos as usize..pos as usize + 1], pos).unwrap();
        }
        Damage::Truncate { .. } => fs::write(path, packed).unwrap(),
    }
}

#[test]
fn every_single_byte_flip_and_truncation_is_caught_and_never_served() {
    let t = tempfile::tempdir().unwrap();
    let src = match models() {
        Some(m) if m.join("minilm-int8-tensor").is_dir() => m.join("minilm-int8-tensor"),
        _ => {
            eprintln!("corruption matrix on a synthetic tree (models/minilm-int8-tensor absent)");
            let s = t.path().join("src");
            synth_tree(&s, 5);
            s
        }
    };
    let packed = t.path().join("packed");
    pack::pack_tree(&src, &packed, &PackOptions::default(), &NoProgress).unwrap();
    let mut targets: Vec<Target> = Vec::new();
    for rel in walk_files(&packed) {
        let name = rel.strip_prefix(&packed).unwrap().to_path_buf();
        let Some(orig) = name.to_str().and_then(|n| n.strip_suffix(".dcz")) else {
            continue;
        };
        let original = fs::read(src.join(orig)).unwrap();
        let bytes = fs::read(&rel).unwrap();
        let ft = &bytes[bytes.len() - 48..];
        let index_offset = u64::from_le_bytes(ft[..8].try_into().unwrap());
        targets.push(Target {
            rel: PathBuf::from(orig),
            container: rel,
            original,
            packed: bytes,
            index_offset,
        });
    }
    targets.sort_by_key(|t| std::cmp::Reverse(t.original.len()));
    assert!(!targets.is_empty());
    let mount_ok = can_mount();
    let (n_flips, n_truncs, n_mounts) = (
        env_n("DCFS_CORRUPTION_FLIPS", 500),
        env_n("DCFS_CORRUPTION_TRUNCS", 50),
        env_n("DCFS_CORRUPTION_MOUNTS", 20),
    );
    let mut rng = Rng::new(0xC0AA_0917);
    let mut cases = Vec::new();
    for i in 0..n_flips + n_truncs {
        // Most damage lands in the largest file, the rest spreads over the others.
        let ti = if rng.next() % 10 < 7 || targets.len() == 1 {
            0
        } else {
            1 + (rng.next() % (targets.len() as u64 - 1)) as usize
        };
        let tg = &targets[ti];
        let len = tg.packed.len() as u64;
        let pos = match rng.next() % 20 {
            0 => rng.next() % 16,
            1 | 2 => len - 48 + rng.next() % 48,
            3..=5 => tg.index_offset + rng.next() % (len - 48 - tg.index_offset),
            _ => 16 + rng.next() % (len - 16),
        };
        let d = if i < n_flips {
            Damage::Flip {
                pos,
                xor: 1 << (rng.next() % 8),
            }
        } else {
            Damage::Truncate { len: pos.min(len - 1) }
        };
        cases.push((ti, d));
    }
    let mut c = Counts::default();
    let mut by_region: std::collections::BTreeMap<&str, (usize, usize)> = Default::default();
    let mut harmless = Vec::new();
    let t0 = Instant::now();
    for (k, &(ti, d)) in cases.iter().enumerate() {
        let tg = &targets[ti];
        apply(&tg.container, d, &tg.packed);
        c.tried += 1;
        let region = match d {
            Damage::Flip { pos, .. } => tg.region(pos),
            Damage::Truncate { .. } => "truncate",
        };
        // verify, on the damaged container alone.
        let v = pack::verify_tree(&tg.container, 2, &NoProgress);
        let detected = match &v {
            Ok(r) => r.files.iter().find_map(|f| f.error.clone()),
            Err(e) => Some(e.to_string()),
        };
        let e = by_region.entry(region).or_default();
        e.0 += 1;
        if let Some(msg) = &detected {
            let name = tg.container.file_name().unwrap().to_string_lossy();
            assert!(
                msg.contains(&*name),
                "{d:?}: verify's error does not name the file: {msg}"
            );
            c.detected += 1;
            e.1 += 1;
        }
        // Reads through the store behind the mount.
        let read = read_via_store(&packed, tg);
        match &read {
            None => c.store_refused += 1,
            Some(ReadOutcome::Correct) => c.store_ok += 1,
            Some(ReadOutcome::Error) => c.store_eio += 1,
            Some(ReadOutcome::Wrong(off)) => {
                c.wrong_bytes += 1;
                eprintln!("WRONG BYTES: {} {d:?} ({region}) at offset {off}", tg.rel.display());
            }
        }
        // docs/RELIABILITY.md: damage to a header, index or footer (or a truncation)
        // makes the store, and so the mount, refuse the pack rather than serve from it.
        let structural = region != "payload";
        assert!(
            !structural || read.is_none(),
            "{d:?} ({region}): the store opened a structurally damaged pack"
        );
        if detected.is_none() {
            // Verify passed: then the damage must change nothing a reader can see.
            assert_eq!(
                read,
                Some(ReadOutcome::Correct),
                "{d:?} ({region}) undetected and not harmless"
            );
            harmless.push(format!("{} {d:?} ({region})", tg.rel.display()));
            c.undetected_harmless += 1;
        }
        // unpack: every truncation, every fourth flip, every undetected case.
        if matches!(d, Damage::Truncate { .. }) || k % 4 == 0 || detected.is_none() {
            c.unpack_tried += 1;
            if check_unpack(&packed, &t.path().join("out"), tg) {
                c.unpack_failed_clean += 1;
            } else {
                assert!(detected.is_none(), "{d:?}: verify failed but unpack succeeded");
            }
        }
        // A fresh real mount for the first payload flips, and for the first damages
        // elsewhere (which must make it refuse to start, naming the file).
        let want = if structural {
            c.mounts_structural < 10
        } else {
            c.mounts - c.mounts_structural < n_mounts
        };
        if mount_ok && want {
            c.mounts += 1;
            c.mounts_structural += structural as usize;
            match read_via_mount(&packed, &t.path().join("mnt"), tg) {
                Err(stderr) => {
                    let name = tg.container.file_name().unwrap().to_string_lossy();
                    assert!(
                        stderr.contains(&*name),
                        "{d:?}: mount refused without naming the file: {stderr}"
                    );
                    c.mount_refused += 1;
                }
                Ok(r) if structural => panic!("{d:?} ({region}): mount started on structural damage and read {r:?}"),
                Ok(ReadOutcome::Correct) => c.mount_ok += 1,
                Ok(ReadOutcome::Error) => c.mount_eio += 1,
                Ok(ReadOutcome::Wrong(off)) => {
                    c.wrong_bytes += 1;
                    eprintln!("WRONG BYTES via mount: {} {d:?} at offset {off}", tg.rel.display());
                }
            }
        }
        restore(&tg.container, d, &tg.packed);
    }
    // The CLI names the damage and exits 1.
    let tg = &targets[0];
    let d = Damage::Flip {
        pos: 16 + (tg.index_offset - 16) / 2,
        xor: 0x10,
    };
    apply(&tg.container, d, &tg.packed);
    let out = Command::new(dcfs_bin()).arg("verify").arg(&packed).output().unwrap();
    restore(&tg.container, d, &tg.packed);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let name = tg.container.strip_prefix(&packed).unwrap().display().to_string();
    assert!(stdout.contains(&format!("FAILED  {name}")), "{stdout}");
    // And once restored, everything verifies again.
    assert_eq!(pack::verify_tree(&packed, 2, &NoProgress).unwrap().failures(), 0);

    eprintln!(
        "corruption matrix over {} files in {:.1}s",
        targets.len(),
        t0.elapsed().as_secs_f64()
    );
    eprintln!("  by region (tried, detected by verify): {by_region:?}");
    eprintln!("  {c:?}");
    if !mount_ok {
        eprintln!("  SKIP real mounts: need root and /dev/fuse");
    }
    for h in &harmless {
        eprintln!("  undetected, all bytes still correct: {h}");
    }
    assert_eq!(c.wrong_bytes, 0, "wrong bytes served");
    assert_eq!(c.detected + c.undetected_harmless, c.tried);
}
