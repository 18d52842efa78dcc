//! Helpers shared by the integration tests: the fetched real models (when present) and
//! synthetic models whose values follow trained-weight distributions.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use dcfs::model::{gguf, safetensors};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The fetched real models, or `None` with the reason printed (the test then uses
/// synthetic data only).
pub fn models() -> Option<PathBuf> {
    let m = root().join("models");
    if m.join("MANIFEST.sha256").exists() && m.join("minilm-bf16").is_dir() {
        Some(m)
    } else {
        skip(&format!(
            "real models: {} not fetched; run scripts/fetch-models.sh",
            m.display()
        ));
        None
    }
}

/// Says why a test (or part of one) is skipped. `cargo test` hides the output of passing
/// tests, so under CI (`CI` set to `true` or `1`) a missing prerequisite fails the test
/// instead of passing silently; set `DCFS_ALLOW_SKIP=1` to accept skips there.
pub fn skip(reason: &str) {
    eprintln!("SKIP {reason}");
    let ci = std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
    let allowed = std::env::var("DCFS_ALLOW_SKIP").is_ok_and(|v| v == "1");
    if ci && !allowed {
        panic!("SKIP under CI (set DCFS_ALLOW_SKIP=1 to allow): {reason}");
    }
}

/// Deterministic xorshift64* so tests need no RNG crate.
pub struct Rng(u64);
impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// A normal sample (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let (u, v) = (self.unit().max(1e-300), self.unit());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

/// Gaussian weights with std 0.04, like a trained linear layer.
pub fn weights(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| (rng.normal() * 0.04) as f32).collect()
}

pub fn bf16_bytes(w: &[f32]) -> Vec<u8> {
    w.iter()
        .flat_map(|x| {
            let u = x.to_bits() as u64;
            (((u + 0x7FFF + ((u >> 16) & 1)) >> 16) as u16).to_le_bytes()
        })
        .collect()
}

pub fn f32_bytes(w: &[f32]) -> Vec<u8> {
    w.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub fn i8_tensorwise(w: &[f32]) -> Vec<u8> {
    let m = w.iter().fold(0f32, |a, x| a.max(x.abs())).max(1e-12);
    w.iter()
        .map(|x| ((x / m * 127.0).round().clamp(-127.0, 127.0) as i8) as u8)
        .collect()
}

/// Q8_0 blocks: f16 scale (as raw bits of a plausible value) + 32 int8 quants.
pub fn q8_0_bytes(rng: &mut Rng, blocks: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(blocks * 34);
    for _ in 0..blocks {
        let scale: u16 = 0x1C00 + (rng.next() % 512) as u16;
        v.extend_from_slice(&scale.to_le_bytes());
        for _ in 0..32 {
            v.push(((rng.normal() * 30.0).round().clamp(-127.0, 127.0) as i8) as u8);
        }
    }
    v
}

/// Writes a small synthetic model tree: safetensors (BF16, F32, I8, I64, an empty tensor),
/// a GGUF (Q8_0 + F32), a config, a 0-byte file, a subdirectory, a symlink and an
/// executable script (mode must survive).
pub fn synth_tree(dir: &Path, seed: u64) {
    let mut r = Rng::new(seed);
    fs::create_dir_all(dir.join("sub")).unwrap();
    let w1 = weights(&mut r, 300_000);
    let w2 = weights(&mut r, 70_001);
    let w3 = weights(&mut r, 200_000);
    let ids: Vec<u8> = (0..512u64).flat_map(|i| i.to_le_bytes()).collect();
    let st = safetensors::build(&[
        ("embeddings.position_ids", "I64", vec![1, 512], ids),
        ("layer.0.attn.q.weight", "BF16", vec![600, 500], bf16_bytes(&w1)),
        ("layer.0.mlp.up.weight", "F32", vec![70_001], f32_bytes(&w2)),
        ("layer.0.mlp.down.weight", "I8", vec![400, 500], i8_tensorwise(&w3)),
        ("layer.0.empty", "F16", vec![0, 4], vec![]),
    ]);
    fs::write(dir.join("model.safetensors"), st).unwrap();
    let g = gguf::build(
        &[
            (
                "blk.0.ffn_up.weight",
                vec![32 * 64, 40],
                gguf::GGML_Q8_0,
                q8_0_bytes(&mut r, 64 * 40),
            ),
            (
                "output_norm.weight",
                vec![1000],
                gguf::GGML_F32,
                f32_bytes(&weights(&mut r, 1000)),
            ),
        ],
        32,
    );
    fs::write(dir.join("sub/model.gguf"), g).unwrap();
    let cfg = r#"{"architectures":["BertModel"],"hidden_size":384,"num_attention_heads":12,"vocab_size":30522}"#;
    fs::write(dir.join("config.json"), cfg.repeat(20)).unwrap();
    fs::write(dir.join("empty.txt"), b"").unwrap();
    fs::write(dir.join("sub/run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(dir.join("sub/run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("model.safetensors", dir.join("link.safetensors")).unwrap();
}

/// [`synth_tree`], plus the real MiniLM BF16 model's files under `minilm-bf16/` when the
/// models are fetched.
pub fn synth_tree_with_minilm(dir: &Path, seed: u64) {
    synth_tree(dir, seed);
    if let Some(m) = models() {
        let to = dir.join("minilm-bf16");
        fs::create_dir_all(&to).unwrap();
        for e in fs::read_dir(m.join("minilm-bf16")).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_file() {
                fs::copy(e.path(), to.join(e.file_name())).unwrap();
            }
        }
    }
}

/// `dcfs pack SRC DST ARGS..`, which must succeed (its stderr is the failure message).
pub fn pack_cli(src: &Path, dst: &Path, args: &[&str]) {
    let out = Command::new(dcfs_bin())
        .arg("pack")
        .arg(src)
        .arg(dst)
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// The tests' one tree walker: every entry under `dir` (directories included, symlinks
/// never followed) as its path relative to `dir` with its `symlink_metadata`, sorted. A
/// missing `dir` (a pack killed before creating it) has no entries.
pub fn walk(dir: &Path) -> Vec<(PathBuf, fs::Metadata)> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let rd = match fs::read_dir(dir.join(&rel)) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && rel.as_os_str().is_empty() => break,
            Err(e) => panic!("{}: {e}", dir.join(&rel).display()),
        };
        for e in rd {
            let r = rel.join(e.unwrap().file_name());
            let md = fs::symlink_metadata(dir.join(&r)).unwrap();
            if md.is_dir() {
                stack.push(r.clone());
            }
            out.push((r, md));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Every non-directory under `dir` (files, symlinks, others), as full paths, sorted.
pub fn walk_files(dir: &Path) -> Vec<PathBuf> {
    walk(dir)
        .into_iter()
        .filter(|(_, md)| !md.is_dir())
        .map(|(r, _)| dir.join(r))
        .collect()
}

/// BLAKE3 digest, mode and mtime of every regular file; targets of symlinks.
pub fn tree_state(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (rel, md) in walk(dir) {
        let p = dir.join(&rel);
        let v = if md.file_type().is_symlink() {
            format!("-> {}", fs::read_link(&p).unwrap().display())
        } else if md.is_dir() {
            continue;
        } else {
            let h = blake3::hash(&fs::read(&p).unwrap());
            format!("{} {:o} {}.{}", h.to_hex(), md.mode(), md.mtime(), md.mtime_nsec())
        };
        out.insert(rel.display().to_string(), v);
    }
    out
}

pub fn dcfs_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_dcfs"))
}

/// Mounting needs root and /dev/fuse; without them the test says why and passes (fails
/// under CI, see [`skip`]).
pub fn can_mount() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let ok = root && Path::new("/dev/fuse").exists();
    if !ok {
        skip(&format!("mount tests: need root and /dev/fuse (root={root})"));
    }
    ok
}

/// A daemonised `dcfs mount`, unmounted when dropped (even when the test fails).
pub struct Mounted {
    pub mnt: PathBuf,
}

impl Mounted {
    pub fn new(packed: &Path, mnt: &Path, extra: &[&str]) -> Mounted {
        fs::create_dir_all(mnt).unwrap();
        let out = Command::new(dcfs_bin())
            .arg("mount")
            .arg(packed)
            .arg(mnt)
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Mounted {
            mnt: mnt.canonicalize().unwrap(),
        }
    }

    pub fn stats(&self) -> serde_json::Value {
        let out = Command::new(dcfs_bin())
            .arg("stats")
            .arg(&self.mnt)
            .arg("--json")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let st = Command::new(dcfs_bin()).arg("umount").arg(&self.mnt).status();
        if !st.is_ok_and(|s| s.success()) {
            let _ = Command::new(dcfs_bin()).args(["umount", "-l"]).arg(&self.mnt).status();
        }
        // Wait for the daemon to let go, so the next mount of the same pack is clean.
        for _ in 0..100 {
            if !is_mounted(&self.mnt) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

pub fn is_mounted(p: &Path) -> bool {
    dcfs::fs::mounts().unwrap().iter().any(|m| m.mount_point == p)
}

/// Mounts with a caller-built `dcfs mount` command (e.g. run under `bash -c 'ulimit ...'`),
/// which must daemonise like the plain one; unmounted when dropped.
pub fn mount_with(mut cmd: Command, mnt: &Path) -> Mounted {
    fs::create_dir_all(mnt).unwrap();
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "mount failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Mounted {
        mnt: mnt.canonicalize().unwrap(),
    }
}

/// `bash -c SCRIPT` with `dcfs` as `$0` and `args` as `$1...`: runs dcfs under shell limits.
pub fn dcfs_under_shell(script: &str, args: &[&Path]) -> Command {
    let mut c = Command::new("bash");
    c.arg("-c").arg(script).arg(dcfs_bin()).args(args);
    c
}

/// Runs `cmd` to completion and returns whether it succeeded, its stdout (when piped) and
/// its peak resident set in KiB, taken from `wait4` for exactly this child (not from
/// `RUSAGE_CHILDREN`, which other tests' children would share).
// `wait4` below reaps the child; std's `wait` would then find nothing to wait for.
#[allow(clippy::zombie_processes)]
pub fn run_peak_rss(cmd: &mut Command) -> (bool, Vec<u8>, i64) {
    use std::io::Read;
    let mut child = cmd.spawn().unwrap();
    let mut out = Vec::new();
    if let Some(mut o) = child.stdout.take() {
        o.read_to_end(&mut out).unwrap();
    }
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: `rusage` is plain integers, for which all-zero is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our own child, not yet waited for (std waits only in `wait`, never
    // called here); `status` and `ru` are valid for writes.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    assert_eq!(r, pid, "wait4: {}", std::io::Error::last_os_error());
    let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    (ok, out, ru.ru_maxrss)
}
