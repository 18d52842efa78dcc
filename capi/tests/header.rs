//! The checked-in `dcfs.h` is exactly what cbindgen generates from `src/lib.rs`, so a C
//! user never compiles against a declaration the library does not have.

use std::path::Path;

#[test]
fn the_checked_in_header_matches_the_code() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("capi/cbindgen.toml parses");
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_crate(dir)
        .with_config(config)
        .generate()
        .expect("cbindgen generates the header")
        .write(&mut generated);
    let generated = String::from_utf8(generated).expect("the header is UTF-8");
    let path = dir.join("dcfs.h");
    if std::env::var_os("DCFS_BLESS_HEADER").is_some() {
        std::fs::write(&path, &generated).expect("write dcfs.h");
    }
    let checked_in = std::fs::read_to_string(&path).expect("capi/dcfs.h exists");
    assert!(
        checked_in == generated,
        "capi/dcfs.h is out of date with capi/src/lib.rs; regenerate it with \
         `DCFS_BLESS_HEADER=1 cargo test -p dcfs-capi --test header`"
    );
}
