//! Packs on object storage, against a real S3 server (s3s-fs on loopback, started here):
//! push then verify/unpack byte-identical; an object replaced after open is a clear error,
//! never mixed bytes; a half-pushed pack and a hostile manifest are refused; anonymous
//! plain http works.

mod common;
#[path = "common/fault.rs"]
mod fault;
#[path = "common/s3.rs"]
mod s3;

use std::path::Path;
use std::process::Command;

use common::*;
use dcfs::format::manifest::{Manifest, MANIFEST};
use dcfs::remote::pack::RemotePack;
use dcfs::remote::{Location, Remote, RemoteOptions, RemoteUrl};
use s3::S3Server;

fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap();
    eprintln!(
        "{:?}\nstdout: {}\nstderr: {}",
        cmd,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn pack(src: &Path, dst: &Path) {
    pack_cli(src, dst, &["-j", "2"]);
}

fn url(bucket: &str, prefix: &str) -> RemoteUrl {
    match Location::parse(&format!("s3://{bucket}/{prefix}")).unwrap() {
        Location::Remote(u) => u,
        Location::Local(_) => unreachable!(),
    }
}

fn opts(s: &S3Server) -> RemoteOptions {
    RemoteOptions {
        endpoint: Some(s.endpoint()),
        allow_http: true,
        keys: s.keys.clone(),
        retry_budget: std::time::Duration::from_secs(5),
        ..Default::default()
    }
}

/// A synthetic tree plus, when fetched, the real MiniLM BF16 model.
fn source(t: &Path) -> std::path::PathBuf {
    let src = t.join("src");
    synth_tree_with_minilm(&src, 7);
    src
}

/// `dcfs verify URL` passes and `dcfs unpack URL` gives back `src`'s tree exactly (in
/// `t/back`); `what` names the path in the failure message.
fn verify_and_unpack_match(s: &S3Server, t: &Path, u: &str, src: &Path, what: &str) {
    let ep = s.endpoint();
    let out = run(s.dcfs().args(["verify", u, "--endpoint", &ep, "-j", "2"]));
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 failed"));
    let back = t.join("back");
    let out = run(s
        .dcfs()
        .args(["unpack", u])
        .arg(&back)
        .args(["--endpoint", &ep, "-j", "2"]));
    assert!(out.status.success());
    assert_eq!(tree_state(&back), tree_state(src), "{what} differs from the source");
}

/// Packs `src` and pushes it to `s3://bkt/PREFIX` on `s`.
fn push_tree(t: &Path, s: &S3Server, src: &Path, prefix: &str) -> (RemoteUrl, RemoteOptions) {
    let packed = t.join(format!("packed-{prefix}"));
    pack(src, &packed);
    let (u, o) = (url("bkt", prefix), opts(s));
    dcfs::remote::pack::push(&packed, &u, &o, &dcfs::pack::NoProgress).unwrap();
    (u, o)
}

/// All of file `ino` through `store`, in requests of `req` bytes from the front.
fn read_all(store: &std::sync::Arc<dcfs::store::Store>, ino: u64, fh: u64, req: u32) -> Vec<u8> {
    let mut got = Vec::new();
    loop {
        let d = store.read(ino, fh, got.len() as u64, req).unwrap();
        if d.is_empty() {
            return got;
        }
        got.extend_from_slice(&d);
    }
}

#[test]
fn push_then_verify_and_unpack_are_byte_identical() {
    let t = tempfile::tempdir().unwrap();
    let Some(s) = S3Server::start(&t.path().join("s3"), &["models"], false) else {
        return;
    };
    let src = source(t.path());
    let packed = t.path().join("packed");
    pack(&src, &packed);
    assert!(packed.join(MANIFEST).is_file(), "pack writes a manifest");
    let u = "s3://models/team/minilm";
    let ep = s.endpoint();
    // Small parts through the CLI would need a big file; the library's multipart path is
    // covered by `large_containers_go_up_in_parts`.
    let out = run(s
        .dcfs()
        .args(["push"])
        .arg(&packed)
        .args([u, "--endpoint", &ep, "--json"]));
    assert!(out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("push --json prints JSON");
    assert_eq!(report["schema_version"], 1, "push --json: {report}");
    verify_and_unpack_match(&s, t.path(), u, &src, "remote unpack");
    // Without consent to plain http the CLI refuses the endpoint.
    let out = run(s
        .dcfs()
        .env_remove("AWS_ALLOW_HTTP")
        .args(["verify", u, "--endpoint", &ep]));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--allow-http"));
}

/// `dcfs pack SRC s3://…` packs into a temporary directory under --tmp-dir, pushes it and
/// removes it: the pushed pack verifies and unpacks byte-identical; a push that fails
/// leaves nothing behind either.
#[test]
fn pack_to_s3_in_one_step_pushes_and_leaves_no_temporary() {
    let t = tempfile::tempdir().unwrap();
    let Some(s) = S3Server::start(&t.path().join("s3"), &["models"], false) else {
        return;
    };
    let src = t.path().join("src");
    synth_tree(&src, 19);
    let tmp = t.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let ep = s.endpoint();
    let u = "s3://models/one/step";
    let out = run(s.dcfs().arg("pack").arg(&src).arg(u).arg("--tmp-dir").arg(&tmp).args([
        "--endpoint",
        &ep,
        "-j",
        "2",
        "--json",
    ]));
    assert!(out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("pack --json prints JSON");
    assert!(report["push"]["files"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(
        report["push"]["files"].as_u64(),
        Some(report["files"].as_array().unwrap().len() as u64)
    );
    assert_eq!(
        std::fs::read_dir(&tmp).unwrap().count(),
        0,
        "the temporary pack was left behind"
    );
    verify_and_unpack_match(&s, t.path(), u, &src, "pack-to-s3 then unpack");

    // A wrong secret key: packing succeeds, the push fails; the temporary goes.
    let out = run(s
        .dcfs()
        .env("AWS_SECRET_ACCESS_KEY", "not-the-secret")
        .arg("pack")
        .arg(&src)
        .arg("s3://models/refused")
        .arg("--tmp-dir")
        .arg(&tmp)
        .args(["--endpoint", &ep, "-j", "2"]));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("pushing"),
        "the push is what failed"
    );
    assert_eq!(
        std::fs::read_dir(&tmp).unwrap().count(),
        0,
        "a failed push left its temporary pack"
    );
    // A plain http URL cannot take uploads; nothing is created.
    let out = run(s
        .dcfs()
        .arg("pack")
        .arg(&src)
        .arg(format!("{ep}/models/x"))
        .arg("--tmp-dir")
        .arg(&tmp));
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);
}

#[test]
fn large_containers_go_up_in_parts() {
    let t = tempfile::tempdir().unwrap();
    let Some(s) = S3Server::start(&t.path().join("s3"), &["bkt"], false) else {
        return;
    };
    // 40 MB of weights: above the 16 MiB single-PUT limit, so a multipart upload.
    let src = t.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut r = Rng::new(3);
    let w = weights(&mut r, 10_000_000);
    let st = dcfs::model::safetensors::build(&[("w", "F32", vec![10_000_000], f32_bytes(&w))]);
    std::fs::write(src.join("model.safetensors"), st).unwrap();
    let packed = t.path().join("packed");
    pack(&src, &packed);
    let u = url("bkt", "big");
    let o = opts(&s);
    let rep = dcfs::remote::pack::push(&packed, &u, &o, &dcfs::pack::NoProgress).unwrap();
    assert_eq!(rep.files, 1);
    assert!(rep.bytes > 16 << 20, "{} bytes is not multipart", rep.bytes);
    let p = RemotePack::open(&u, &o).unwrap();
    let v = dcfs::pack::verify_remote(&p, 2, &dcfs::pack::NoProgress).unwrap();
    assert_eq!(v.failures(), 0, "{:?}", v.files);
    let c = p.open_container(p.files().next().unwrap()).unwrap();
    let n = p.remote.counts();
    eprintln!("network: {n:?}");
    assert!(n.bytes >= c.packed_len(), "{n:?}");
    // Long reads are split into 8 MiB GETs, not one GET per window.
    assert!(n.gets > c.packed_len() / dcfs::remote::PART_LEN, "{n:?}");
}

#[test]
fn an_object_replaced_after_open_is_a_clear_error_never_mixed_bytes() {
    let t = tempfile::tempdir().unwrap();
    let Some(s) = S3Server::start(&t.path().join("s3"), &["bkt"], false) else {
        return;
    };
    let src = t.path().join("src");
    synth_tree(&src, 11);
    let packed = t.path().join("packed");
    pack(&src, &packed);
    let u = url("bkt", "p");
    let o = opts(&s);
    dcfs::remote::pack::push(&packed, &u, &o, &dcfs::pack::NoProgress).unwrap();
    let p = RemotePack::open(&u, &o).unwrap();
    let e = p.files().max_by_key(|e| e.packed).unwrap().clone();
    let c = p.open_container(&e).unwrap();
    // Replace the object with the same bytes but one payload byte changed: same length,
    // new ETag.
    let local = packed.join(e.container());
    let mut bytes = std::fs::read(&local).unwrap();
    let at = c.chunks[0].payload_offset as usize;
    bytes[at] ^= 0x40;
    let writer = Remote::new(&u, &o).unwrap();
    writer.put(&e.container(), bytes).unwrap();
    let err = c.decode_chunk(0).unwrap_err();
    eprintln!("{err}");
    assert!(
        matches!(err, dcfs::Error::Changed { .. }),
        "expected a 'replaced' error, got {err}"
    );
    assert!(err.to_string().contains("replaced"), "{err}");
    // A fresh open sees the new object, which then fails its own checks.
    let p = RemotePack::open(&u, &o).unwrap();
    let r = p
        .open_container(&e)
        .and_then(|c| (0..c.chunks.len()).try_for_each(|i| c.decode_chunk(i).map(drop)));
    assert!(r.is_err(), "a damaged replacement must not verify");
}

#[test]
fn a_half_pushed_pack_and_a_hostile_manifest_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let Some(s) = S3Server::start(&t.path().join("s3"), &["bkt"], false) else {
        return;
    };
    let src = t.path().join("src");
    synth_tree(&src, 5);
    let packed = t.path().join("packed");
    pack(&src, &packed);
    let u = url("bkt", "half");
    let o = opts(&s);
    // Nothing there at all.
    let err = RemotePack::open(&u, &o).unwrap_err();
    assert!(err.to_string().contains("did not finish"), "{err}");
    dcfs::remote::pack::push(&packed, &u, &o, &dcfs::pack::NoProgress).unwrap();
    RemotePack::open(&u, &o).unwrap();
    // A push interrupted before its marker: refused.
    let w = Remote::new(&u, &o).unwrap();
    w.delete(".dcfs-pack.json").unwrap();
    let err = RemotePack::open(&u, &o).unwrap_err();
    assert!(err.to_string().contains("did not finish"), "{err}");
    let out = run(s.dcfs().args(["verify", "s3://bkt/half", "--endpoint", &s.endpoint()]));
    assert_eq!(out.status.code(), Some(2));
    // Marker back, manifest hostile: a path climbing out of the destination.
    dcfs::remote::pack::push(&packed, &u, &o, &dcfs::pack::NoProgress).unwrap();
    let mut m = Manifest::build(&packed).unwrap();
    m.entries[0].path = "../../etc/evil".into();
    let json = serde_json::to_vec(&m).unwrap();
    w.put(MANIFEST, json).unwrap();
    let err = RemotePack::open(&u, &o).unwrap_err();
    assert!(err.is_corrupt(), "{err}");
    let back = t.path().join("back");
    let out = run(s
        .dcfs()
        .args(["unpack", "s3://bkt/half"])
        .arg(&back)
        .args(["--endpoint", &s.endpoint()]));
    assert_eq!(out.status.code(), Some(1), "a corrupt manifest is damage");
    assert!(!t.path().join("etc").exists());
    // A manifest whose sizes disagree with the objects: refused before decoding.
    let mut m = Manifest::build(&packed).unwrap();
    let f = m
        .entries
        .iter_mut()
        .find(|e| e.kind == dcfs::format::manifest::Kind::File)
        .unwrap();
    f.packed += 1;
    let name = f.clone();
    w.put(MANIFEST, m.to_json()).unwrap();
    let p = RemotePack::open(&u, &o).unwrap();
    let err = p.open_container(&name).unwrap_err();
    assert!(err.is_corrupt() && err.to_string().contains("manifest"), "{err}");
}

#[test]
fn anonymous_plain_http_serves_a_pack() {
    let t = tempfile::tempdir().unwrap();
    let Some(s) = S3Server::start(&t.path().join("s3"), &["pub"], true) else {
        return;
    };
    let src = t.path().join("src");
    synth_tree(&src, 9);
    let packed = t.path().join("packed");
    pack(&src, &packed);
    let ep = s.endpoint();
    let out = run(s
        .dcfs()
        .args(["push"])
        .arg(&packed)
        .args(["s3://pub/m", "--endpoint", &ep, "--no-sign-request"]));
    assert!(out.status.success());
    let http = format!("{ep}/pub/m");
    let out = run(s.dcfs().args(["verify", &http, "-j", "2"]));
    assert!(out.status.success());
    let back = t.path().join("back");
    let out = run(s.dcfs().args(["unpack", &http]).arg(&back));
    assert!(out.status.success());
    assert_eq!(tree_state(&back), tree_state(&src));
    // A prefix with no pack: refused, exit 2, no LIST needed to say so.
    let out = run(s.dcfs().args(["verify", &format!("{ep}/pub/nothing")]));
    assert_eq!(out.status.code(), Some(2));
}

/// Pushes a synthetic pack to an anonymous server and returns (server, source, url path).
fn anonymous_pack(t: &Path) -> Option<(S3Server, std::path::PathBuf)> {
    let s = S3Server::start(&t.join("s3"), &["pub"], true)?;
    let src = t.join("src");
    synth_tree(&src, 13);
    let packed = t.join("packed");
    // Small chunks: many ranged GETs, so many faults.
    let out = run(Command::new(dcfs_bin())
        .arg("pack")
        .arg(&src)
        .arg(&packed)
        .args(["-j", "2", "--chunk-size", "64K"]));
    assert!(out.status.success());
    let out = run(s.dcfs().args(["push"]).arg(&packed).args([
        "s3://pub/m",
        "--endpoint",
        &s.endpoint(),
        "--no-sign-request",
    ]));
    assert!(out.status.success());
    Some((s, src))
}

#[test]
fn transient_faults_are_retried_to_the_right_bytes() {
    let t = tempfile::tempdir().unwrap();
    let Some((s, src)) = anonymous_pack(t.path()) else {
        return;
    };
    // Every 3rd container GET: a 503, a truncated body, a reset, or a delay.
    let p = fault::FaultProxy::start(s.port, 3, false);
    let http = format!("http://127.0.0.1:{}/pub/m", p.port);
    let back = t.path().join("back");
    let out = run(s.dcfs().args(["unpack", &http, "-j", "2"]).arg(&back));
    assert!(out.status.success());
    assert_eq!(tree_state(&back), tree_state(&src));
    let n = p.faults.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("{n} faults injected");
    assert!(n >= 4, "only {n} faults injected");
}

/// The one retry loop (object_store's own is off): N 503s are retried, each counted, to
/// the right bytes; a store that stays unavailable fails, after a bounded number of
/// retries, with an error that says it gave up.
#[test]
fn unavailable_503s_are_retried_and_counted_and_a_permanent_one_fails() {
    let t = tempfile::tempdir().unwrap();
    let Some((s, _src)) = anonymous_pack(t.path()) else {
        return;
    };
    let packed = t.path().join("packed");
    let via = |port: u16| match Location::parse(&format!("http://127.0.0.1:{port}/pub/m")).unwrap() {
        Location::Remote(u) => u,
        Location::Local(_) => unreachable!(),
    };
    const N: u64 = 6;
    let p = fault::FaultProxy::unavailable(s.port, N);
    let o = RemoteOptions {
        allow_http: true,
        retry_budget: std::time::Duration::from_secs(20),
        ..Default::default()
    };
    let rp = RemotePack::open(&via(p.port), &o).unwrap();
    let mut files = 0;
    for e in rp.files() {
        let (obj, _) = rp.open_object(e).unwrap();
        use dcfs::remote::Source;
        let mut got = vec![0u8; obj.len() as usize];
        obj.read_exact_at(&mut got, 0).unwrap();
        assert!(got == std::fs::read(packed.join(e.container())).unwrap(), "{}", e.path);
        files += 1;
    }
    assert!(files > 0);
    let c = rp.remote.counts();
    eprintln!("{N} 503s: {c:?}");
    assert_eq!(p.faults.load(std::sync::atomic::Ordering::Relaxed), N);
    assert!(c.retries >= N, "{N} 503s but {} retries counted: {c:?}", c.retries);
    assert_eq!(c.errors, 0, "{c:?}");

    // Permanently unavailable: the read fails, naming the cause, after a few retries.
    let p = fault::FaultProxy::unavailable(s.port, u64::MAX);
    let o = RemoteOptions {
        retry_budget: std::time::Duration::from_secs(2),
        ..o
    };
    let rp = RemotePack::open(&via(p.port), &o).unwrap();
    let e = rp.files().next().unwrap();
    let t0 = std::time::Instant::now();
    let err = rp.open_container(e).unwrap_err();
    let took = t0.elapsed();
    let c = rp.remote.counts();
    eprintln!("permanent 503: {err} after {took:?}, {c:?}");
    assert!(
        err.to_string().contains("503") && err.to_string().contains("gave up"),
        "{err}"
    );
    // The 2 s budget, backoff from 125 ms doubling: between 2 and about 5 retries, then one
    // error. (A hang guard, not a timing: far above the budget.)
    assert!((2..=8).contains(&c.retries), "{c:?}");
    assert_eq!(c.errors, 1, "{c:?}");
    assert!(took < std::time::Duration::from_secs(30), "{took:?}");
}

#[test]
fn flipped_bits_in_transit_give_right_bytes_or_a_clear_error() {
    let t = tempfile::tempdir().unwrap();
    let Some((s, src)) = anonymous_pack(t.path()) else {
        return;
    };
    let want = tree_state(&src);
    for every in [2, 3, 5] {
        let p = fault::FaultProxy::start(s.port, every, true);
        let http = format!("http://127.0.0.1:{}/pub/m", p.port);
        let back = t.path().join(format!("back{every}"));
        let out = run(s.dcfs().args(["unpack", &http, "-j", "2"]).arg(&back));
        let got = if back.exists() {
            tree_state(&back)
        } else {
            Default::default()
        };
        // Whatever was written is right; a failure says so.
        for (k, v) in &got {
            assert_eq!(
                want.get(k),
                Some(v),
                "{k}: wrong bytes written through a faulty network (every {every})"
            );
        }
        if out.status.success() {
            assert_eq!(got, want);
        } else {
            assert!(!out.stderr.is_empty());
        }
        let out = run(s.dcfs().args(["verify", &http, "-j", "2"]));
        let code = out.status.code();
        assert!(matches!(code, Some(0..=2)), "{code:?}");
    }
}

#[test]
fn pack_writes_a_manifest_of_the_whole_tree_or_none_for_non_utf8_names() {
    use std::os::unix::ffi::OsStrExt;
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    synth_tree(&src, 21);
    let packed = t.path().join("packed");
    pack(&src, &packed);
    let bytes = std::fs::read(packed.join(MANIFEST)).unwrap();
    let m = Manifest::parse(&packed.join(MANIFEST), &bytes).unwrap();
    // Every file, directory and symlink of the source, and nothing else.
    let listed: std::collections::BTreeSet<String> = m.entries.iter().map(|e| e.path.clone()).collect();
    let mut want = std::collections::BTreeSet::new();
    for e in dcfs::format::tree::walk(&src).unwrap() {
        want.insert(e.rel().to_str().unwrap().to_string());
    }
    assert_eq!(listed, want);
    for e in m
        .entries
        .iter()
        .filter(|e| e.kind == dcfs::format::manifest::Kind::File)
    {
        let c = dcfs::format::Container::open(&packed.join(e.container())).unwrap();
        assert_eq!((c.meta.size, c.packed_len()), (e.size, e.packed), "{}", e.path);
        assert_eq!(Manifest::digest(e), Some(c.meta.blake3));
    }
    // A name that is not UTF-8 cannot be an object key: no manifest, the pack still works.
    let odd = t.path().join("odd");
    synth_tree(&odd, 22);
    std::fs::write(odd.join(std::ffi::OsStr::from_bytes(b"bad\xffname")), b"x").unwrap();
    let packed2 = t.path().join("packed2");
    let out = run(Command::new(dcfs_bin()).arg("pack").arg(&odd).arg(&packed2));
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no manifest"));
    assert!(!packed2.join(MANIFEST).exists());
    let out = run(Command::new(dcfs_bin()).arg("verify").arg(&packed2));
    assert!(out.status.success());
}

/// `dcfs mount s3://…` over real FUSE: every file of a real model (and a synthetic tree
/// with symlinks and nested directories) reads back byte-identical, with its mode and
/// mtime; an object replaced under the mount gives EIO, never other bytes; `dcfs stats`
/// counts the network requests.
#[test]
fn a_mounted_remote_pack_serves_the_source_and_a_replaced_object_gives_eio() {
    if !can_mount() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let Some(s) = S3Server::start(&t.path().join("s3"), &["models"], false) else {
        return;
    };
    let src = source(t.path());
    let packed = t.path().join("packed");
    pack(&src, &packed);
    let u = url("models", "team/minilm");
    let o = opts(&s);
    dcfs::remote::pack::push(&packed, &u, &o, &dcfs::pack::NoProgress).unwrap();
    let p = RemotePack::open(&u, &o).unwrap();
    // The largest synthetic file is replaced before anything reads it: same length, one
    // payload byte changed, a new ETag. The real model's files are all read below.
    let victim = p
        .files()
        .filter(|e| !e.path.starts_with("minilm-bf16/"))
        .max_by_key(|e| e.packed)
        .unwrap()
        .clone();
    let mnt = t.path().join("mnt");
    let mut cmd = s.dcfs();
    cmd.args(["mount", "s3://models/team/minilm"]).arg(&mnt).args([
        "--endpoint",
        &s.endpoint(),
        "-o",
        "max_inflight=4",
    ]);
    let m = mount_with(cmd, &mnt);
    let c = p.open_container(&victim).unwrap();
    let mut bytes = std::fs::read(packed.join(victim.container())).unwrap();
    bytes[c.chunks[0].payload_offset as usize] ^= 0x40;
    Remote::new(&u, &o).unwrap().put(&victim.container(), bytes).unwrap();
    let err = std::fs::read(m.mnt.join(&victim.path)).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{}: {err}", victim.path);
    // Everything else: the source's bytes, modes, mtimes and link targets.
    let mut want = tree_state(&src);
    assert!(want.remove(&victim.path).is_some(), "{} not in the source", victim.path);
    let mut got = std::collections::BTreeMap::new();
    for (rel, v) in &want {
        let q = m.mnt.join(rel);
        let md = std::fs::symlink_metadata(&q).unwrap_or_else(|e| panic!("{rel}: {e}"));
        use std::os::unix::fs::MetadataExt;
        let state = if md.file_type().is_symlink() {
            format!("-> {}", std::fs::read_link(&q).unwrap().display())
        } else {
            let h = blake3::hash(&std::fs::read(&q).unwrap_or_else(|e| panic!("{rel}: {e}")));
            format!("{} {:o} {}.{}", h.to_hex(), md.mode(), md.mtime(), md.mtime_nsec())
        };
        assert_eq!(&state, v, "{rel} differs through the remote mount");
        got.insert(rel.clone(), state);
    }
    assert_eq!(got.len(), want.len());
    // The mount lists exactly the source's entries (directories included).
    let names = |d: &Path| {
        walk(d)
            .into_iter()
            .map(|(r, _)| r.display().to_string())
            .collect::<std::collections::BTreeSet<_>>()
    };
    assert_eq!(names(&m.mnt), names(&src));
    let st = m.stats();
    eprintln!("stats: {st}");
    assert_eq!(st["remote"], true, "{st}");
    assert!(st["net_gets"].as_u64().unwrap() > 0, "{st}");
    // Every container but the victim was read in full (footer and index at mount, every
    // chunk since), so at least their packed bytes came over the network.
    let read: u64 = p.files().filter(|e| e.path != victim.path).map(|e| e.packed).sum();
    assert!(
        st["net_bytes"].as_u64().unwrap() >= read,
        "{st}, {read} packed bytes read"
    );
    assert!(
        st["net_errors"].as_u64().unwrap() >= 1,
        "the replaced object's GET: {st}"
    );
    let out = run(s.dcfs().arg("stats").arg(&m.mnt));
    assert!(String::from_utf8_lossy(&out.stdout).contains("GETs"));
}

/// A prefix whose push did not finish (no marker) does not mount, and says why.
#[test]
fn a_half_pushed_pack_does_not_mount() {
    if !can_mount() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let Some(s) = S3Server::start(&t.path().join("s3"), &["bkt"], false) else {
        return;
    };
    let mnt = t.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let out = run(s
        .dcfs()
        .args(["mount", "s3://bkt/nothing"])
        .arg(&mnt)
        .args(["--endpoint", &s.endpoint()]));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("did not finish"));
    assert!(!is_mounted(&mnt.canonicalize().unwrap()));
}

/// `dcfs mount http://…` on an anonymous server, through a proxy that breaks every 3rd
/// container GET (503, truncated body, reset, delay): the retries hide it, and every
/// file reads back as the source.
#[test]
fn a_plain_http_mount_through_transient_faults_serves_the_source() {
    if !can_mount() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let Some((s, src)) = anonymous_pack(t.path()) else {
        return;
    };
    let p = fault::FaultProxy::start(s.port, 3, false);
    let http = format!("http://127.0.0.1:{}/pub/m", p.port);
    let mnt = t.path().join("mnt");
    let mut cmd = s.dcfs();
    cmd.args(["mount", &http]).arg(&mnt);
    let m = mount_with(cmd, &mnt);
    assert_eq!(tree_state(&m.mnt), tree_state(&src));
    let n = p.faults.load(std::sync::atomic::Ordering::Relaxed);
    let st = m.stats();
    eprintln!("{n} faults injected; stats {st}");
    assert!(n >= 4, "only {n} faults injected");
    // Every retry is ours, so the resets, short bodies and 503s show in the stats.
    assert!(st["net_retries"].as_u64().unwrap() >= 1, "{st}");
    assert_eq!(st["net_errors"], 0, "{st}");
}

/// `Store::open_remote` (what the mount serves, without FUSE, so it runs without root):
/// the node table is the manifest's tree, every file reads back as the source, and the
/// network counters are in the stats.
#[test]
fn a_remote_store_serves_the_manifest_tree_and_the_source_bytes() {
    use dcfs::store::{NodeKind, Store, StoreOptions, ROOT_INO};
    let t = tempfile::tempdir().unwrap();
    let Some(s) = S3Server::start(&t.path().join("s3"), &["bkt"], false) else {
        return;
    };
    let src = t.path().join("src");
    synth_tree(&src, 17);
    let packed = t.path().join("packed");
    pack(&src, &packed);
    let u = url("bkt", "store");
    let o = opts(&s);
    dcfs::remote::pack::push(&packed, &u, &o, &dcfs::pack::NoProgress).unwrap();
    let store = Store::open_remote(&u, &o, StoreOptions::default()).unwrap();
    let p = RemotePack::open(&u, &o).unwrap();
    assert_eq!(store.node_count(), p.manifest.entries.len() as u64 + 1);
    let fh = store.open_handle();
    for e in &p.manifest.entries {
        let mut ino = ROOT_INO;
        for part in e.path.split('/') {
            ino = store
                .lookup(ino, std::ffi::OsStr::new(part))
                .unwrap_or_else(|| panic!("{} not served", e.path))
                .ino;
        }
        let n = store.node(ino).unwrap();
        let q = src.join(&e.path);
        match (&n.kind, e.kind) {
            (NodeKind::Dir { .. }, dcfs::format::manifest::Kind::Dir) => {}
            (NodeKind::Symlink { target }, dcfs::format::manifest::Kind::Symlink) => {
                assert_eq!(target, std::fs::read_link(&q).unwrap().as_os_str(), "{}", e.path);
            }
            (NodeKind::File { .. }, dcfs::format::manifest::Kind::File) => {
                let want = std::fs::read(&q).unwrap();
                assert_eq!(n.size, want.len() as u64, "{}", e.path);
                assert!(read_all(&store, ino, fh, 1 << 20) == want, "{}: bytes differ", e.path);
            }
            (k, want) => panic!("{}: served as {k:?}, the manifest says {want:?}", e.path),
        }
    }
    let st = store.stats();
    assert!(st.remote && st.net_gets > 0 && st.net_bytes > 0, "{st:?}");
    assert_eq!(st.net_errors, 0, "{st:?}");
}

/// A sequential reader of a remote pack is served by a few large GETs, not one per chunk:
/// the prefetch window is refilled by halves and neighbouring chunks share one GET (of up
/// to 8 MiB), while the bytes on the wire stay the packed bytes read.
#[test]
fn a_sequential_reader_is_served_by_few_large_gets() {
    use dcfs::store::{Store, StoreOptions, ROOT_INO};
    let t = tempfile::tempdir().unwrap();
    let Some(s) = S3Server::start(&t.path().join("s3"), &["bkt"], false) else {
        return;
    };
    let src = t.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let want = bf16_bytes(&weights(&mut Rng::new(5), 24 << 20));
    std::fs::write(src.join("w.bin"), &want).unwrap();
    let (u, o) = push_tree(t.path(), &s, &src, "seq");
    let p = RemotePack::open(&u, &o).unwrap();
    let e = p.files().next().unwrap().clone();
    let chunks = p.open_container(&e).unwrap().chunks.len() as u64;
    assert!(chunks >= 40, "{chunks} chunks: the test needs a long file");
    let so = StoreOptions {
        prefetch: 64,
        ..Default::default()
    };
    let store = Store::open_remote(&u, &o, so).unwrap();
    let ino = store.lookup(ROOT_INO, std::ffi::OsStr::new("w.bin")).unwrap().ino;
    let before = store.stats();
    let fh = store.open_handle();
    assert!(read_all(&store, ino, fh, 128 << 10) == want, "bytes differ");
    let st = store.stats();
    let (gets, bytes) = (st.net_gets - before.net_gets, st.net_bytes - before.net_bytes);
    eprintln!("{chunks} chunks, {} packed bytes: {gets} GETs, {bytes} bytes", e.packed);
    // One GET per chunk (the old path) fails this.
    assert!(gets * 3 <= chunks, "{gets} GETs for {chunks} chunks");
    assert!(
        bytes * 100 <= e.packed * 105,
        "{bytes} bytes fetched for {} packed",
        e.packed
    );
}

/// Without a disk cache, opening a container is one GET of its tail (footer and index;
/// plus its header in parallel when the tail does not reach it), and a file whose whole
/// container fits in that tail is then served with no request.
#[test]
fn a_mount_opens_each_container_with_one_get_and_small_files_need_none() {
    use dcfs::store::{Store, StoreOptions, ROOT_INO};
    let t = tempfile::tempdir().unwrap();
    let Some(s) = S3Server::start(&t.path().join("s3"), &["bkt"], false) else {
        return;
    };
    let src = t.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..6 {
        std::fs::write(
            src.join(format!("small{i}.json")),
            format!("{{\"layer\": {i}}}\n").repeat(50 * (i + 1)),
        )
        .unwrap();
    }
    std::fs::write(src.join("big.bin"), bf16_bytes(&weights(&mut Rng::new(9), 1 << 20))).unwrap();
    let (u, o) = push_tree(t.path(), &s, &src, "tails");
    let store = Store::open_remote(&u, &o, StoreOptions::default()).unwrap();
    let at_mount = store.stats().net_gets;
    // The marker, the manifest, one GET per container, and for the one container longer
    // than the tail a GET of its header, sent beside it.
    assert_eq!(
        at_mount,
        2 + 7 + 1,
        "requests to mount 7 containers: {:?}",
        store.stats()
    );
    let fh = store.open_handle();
    for i in 0..6 {
        let name = format!("small{i}.json");
        let ino = store.lookup(ROOT_INO, std::ffi::OsStr::new(&name)).unwrap().ino;
        let got = store.read(ino, fh, 0, 1 << 20).unwrap();
        assert!(got == std::fs::read(src.join(&name)).unwrap(), "{name} differs");
    }
    assert_eq!(store.stats().net_gets, at_mount, "small files fetched again");
    // A file longer than the tail still needs GETs, and reads right.
    let ino = store.lookup(ROOT_INO, std::ffi::OsStr::new("big.bin")).unwrap().ino;
    assert!(read_all(&store, ino, fh, 1 << 20) == std::fs::read(src.join("big.bin")).unwrap());
    assert!(store.stats().net_gets > at_mount);
}
