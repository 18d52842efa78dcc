//! Every `--json` output carries `schema_version`, so scripts can refuse a layout they do not
//! know. (`stats --json` needs a mount: tests/daemon.rs checks it.)

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

/// Runs `dcfs ARGS`, parses stdout as JSON and checks its schema_version.
fn json_of(args: &[&dyn AsRef<std::ffi::OsStr>], ok_exit: &[i32]) -> serde_json::Value {
    let out = Command::new(dcfs_bin())
        .args(args.iter().map(|a| a.as_ref()))
        .output()
        .unwrap();
    let shown: Vec<String> = args.iter().map(|a| a.as_ref().to_string_lossy().into_owned()).collect();
    let code = out.status.code().unwrap_or(-1);
    assert!(
        ok_exit.contains(&code),
        "{shown:?} exited {code}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{shown:?}: not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    assert!(v.is_object(), "{shown:?}: {v}");
    assert_eq!(v["schema_version"], 1, "{shown:?}: {v}");
    v
}

#[test]
fn every_json_output_has_a_schema_version() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    synth_tree(&src, 41);
    let p = t.path().join("packed");
    let un = t.path().join("un");
    let q = t.path().join("quant");
    let weights = src.join("model.safetensors");
    let j = &"--json";
    json_of(&[&"pack", &src, &p, j], &[0]);
    json_of(&[&"inspect", &p, j], &[0]);
    json_of(&[&"verify", &p, j], &[0]);
    json_of(&[&"unpack", &p, &un, j], &[0]);
    json_of(&[&"analyze", &weights, j], &[0]);
    // quantize reads config.json, which synth_tree fills with repeated (invalid) JSON.
    let qsrc = t.path().join("qsrc");
    std::fs::create_dir_all(&qsrc).unwrap();
    std::fs::copy(&weights, qsrc.join("model.safetensors")).unwrap();
    std::fs::write(qsrc.join("config.json"), r#"{"architectures":["BertModel"]}"#).unwrap();
    json_of(&[&"quantize", &qsrc, &q, j], &[0]);
    // `dcfs bench` exists only with the `bench` feature (default on).
    if cfg!(feature = "bench") {
        json_of(&[&"bench", &"read", &src, &"--runs", &"1", j], &[0]);
        json_of(&[&"bench", &"random", &weights, &"--count", &"10", j], &[0]);
        json_of(
            &[
                &"bench",
                &"codecs",
                &weights,
                &"--reps",
                &"1",
                &"--no-zstd19",
                &"--threads",
                &"1",
                j,
            ],
            &[0],
        );
    } else {
        eprintln!("SKIP dcfs bench --json: built without the bench feature");
    }
    // Without a GPU driver gpu-info still answers in JSON (exit 1).
    json_of(&[&"gpu-info", j], &[0, 1]);
}

/// A new `--json` flag must join the test above: count them in the CLI sources. Not run here:
/// `stats` (needs a mount; tests/daemon.rs), `bench storage` (drops the host's page cache),
/// `gpu-bench` (needs a GPU), `push` (needs an S3 server; tests/remote.rs).
#[test]
fn the_json_test_knows_every_json_flag() {
    let dir = root().join("src/cli");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_some_and(|x| x == "rs") {
            n += std::fs::read_to_string(Path::new(&path))
                .unwrap()
                .matches("    json: bool,")
                .count();
        }
    }
    assert_eq!(
        n, 14,
        "src/cli has {n} `json: bool` flags; the test above covers 10 plus stats, bench storage, gpu-bench and push (tests/remote.rs)"
    );
}
