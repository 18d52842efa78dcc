//! A C program, compiled against the checked-in `dcfs.h` and linked to the built
//! `libdcfs_capi.so`, decodes every tensor of a packed real model; each one must equal the
//! original file's bytes. This is the C user's path end to end: header, linking, calls.

use std::path::{Path, PathBuf};
use std::process::Command;

use dcfs::pack::{pack_tree, NoProgress, PackOptions};

const PROGRAM: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "dcfs.h"

/* argv[1]: container; argv[2]: output directory. Writes tensor i's bytes to OUT/i.bin and
 * prints "i name nbytes" per tensor. */
int main(int argc, char **argv) {
    if (argc != 3) return 2;
    int64_t need = dcfs_tensor_names(argv[1], NULL, 0);
    if (need < 0) { fprintf(stderr, "names: %s\n", dcfs_last_error()); return 1; }
    char *names = malloc((size_t)need + 1);
    if (dcfs_tensor_names(argv[1], names, (size_t)need + 1) != need) return 1;
    int i = 0;
    for (char *name = strtok(names, "\n"); name; name = strtok(NULL, "\n"), i++) {
        dcfs_tensor_info info;
        if (dcfs_tensor_info_get(argv[1], name, &info) != 0) {
            fprintf(stderr, "info %s: %s\n", name, dcfs_last_error()); return 1;
        }
        void *buf = malloc(info.nbytes ? info.nbytes : 1);
        if (dcfs_decode_tensor_host(argv[1], name, buf, info.nbytes) != 0) {
            fprintf(stderr, "decode %s: %s\n", name, dcfs_last_error()); return 1;
        }
        char path[4096];
        snprintf(path, sizeof path, "%s/%d.bin", argv[2], i);
        FILE *f = fopen(path, "wb");
        if (!f || fwrite(buf, 1, info.nbytes, f) != info.nbytes || fclose(f) != 0) return 1;
        printf("%d %s %llu\n", i, name, (unsigned long long)info.nbytes);
        free(buf);
    }
    free(names);
    return 0;
}
"#;

/// The cdylib cargo built for this test run (deps/ or the profile directory).
fn library_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let deps = exe.parent()?;
    let found = [deps, deps.parent()?]
        .into_iter()
        .find(|d| d.join("libdcfs_capi.so").is_file())
        .map(Path::to_path_buf);
    found
}

/// Skips with a reason; under CI a missing prerequisite is a failure, not a skip.
fn skip(why: &str) {
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "prerequisite missing under CI: {why}"
    );
    eprintln!("SKIP c_program: {why}");
}

#[test]
fn a_c_program_decodes_every_tensor_of_a_real_model() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let model = root.join("models/minilm-bf16/model.safetensors");
    if !model.is_file() {
        return skip("models/minilm-bf16 is not fetched (scripts/fetch-models.sh)");
    }
    let Some(lib) = library_dir() else {
        return skip("libdcfs_capi.so was not built next to this test");
    };
    if Command::new("cc").arg("--version").output().is_err() {
        return skip("no C compiler (cc)");
    }
    let dir = tempfile::tempdir().unwrap();
    let (src, packed, out) = (
        dir.path().join("src"),
        dir.path().join("packed"),
        dir.path().join("out"),
    );
    std::fs::create_dir(&src).unwrap();
    std::fs::create_dir(&out).unwrap();
    std::fs::copy(&model, src.join("model.safetensors")).unwrap();
    pack_tree(&src, &packed, &PackOptions::default(), &NoProgress).unwrap();

    let c = dir.path().join("prog.c");
    std::fs::write(&c, PROGRAM).unwrap();
    let prog = dir.path().join("prog");
    let cc = Command::new("cc")
        .args(["-std=c99", "-Wall", "-Werror", "-o"])
        .arg(&prog)
        .arg(&c)
        .arg("-I")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")))
        .arg("-L")
        .arg(&lib)
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-ldcfs_capi")
        .output()
        .unwrap();
    assert!(
        cc.status.success(),
        "cc failed:\n{}",
        String::from_utf8_lossy(&cc.stderr)
    );
    let run = Command::new(&prog)
        .arg(packed.join("model.safetensors.dcz"))
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "the C program failed:\n{}",
        String::from_utf8_lossy(&run.stderr)
    );

    // The original bytes of each tensor, from the safetensors header.
    let file = std::fs::read(&model).unwrap();
    let n = u64::from_le_bytes(file[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&file[8..8 + n]).unwrap();
    let data = &file[8 + n..];
    let listed = String::from_utf8(run.stdout).unwrap();
    let mut seen = 0;
    for line in listed.lines() {
        let mut f = line.split(' ');
        let (i, name) = (f.next().unwrap(), f.next().unwrap());
        let offs = &header[name]["data_offsets"];
        let (a, b) = (offs[0].as_u64().unwrap() as usize, offs[1].as_u64().unwrap() as usize);
        let got = std::fs::read(out.join(format!("{i}.bin"))).unwrap();
        assert!(
            got == data[a..b],
            "tensor {name}: the C program's bytes differ from the original"
        );
        seen += 1;
    }
    let tensors = header
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| *k != "__metadata__")
        .count();
    assert_eq!(seen, tensors, "the C program listed {seen} of {tensors} tensors");
}
