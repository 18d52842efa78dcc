//! The errno a reader of the mount sees: ENOENT for a missing name, ENOTDIR for a path
//! through a file, EISDIR for reading a directory, EROFS for a write, and EIO (never
//! wrong bytes) for a chunk whose payload was damaged after packing.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::os::unix::fs::FileExt;

use common::*;
use dcfs::pack::{self, NoProgress, PackOptions};

fn errno_of<T>(r: std::io::Result<T>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

#[test]
fn mount_answers_each_failure_with_its_errno() {
    if !can_mount() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    synth_tree(&src, 19);
    let packed = t.path().join("packed");
    pack::pack_tree(&src, &packed, &PackOptions::default(), &NoProgress).unwrap();

    // Damage one payload byte in the middle of the largest container's chunks (the
    // index and footer stay intact, so the mount starts and only that chunk is bad).
    let dcz = packed.join("model.safetensors.dcz");
    let bytes = fs::read(&dcz).unwrap();
    let index_offset = u64::from_le_bytes(bytes[bytes.len() - 48..][..8].try_into().unwrap());
    assert!(index_offset > 1024, "payload too small to damage: {index_offset}");
    let pos = index_offset / 2;
    let f = OpenOptions::new().write(true).open(&dcz).unwrap();
    f.write_all_at(&[bytes[pos as usize] ^ 0x40], pos).unwrap();
    drop(f);

    let m = Mounted::new(&packed, &t.path().join("mnt"), &[]);
    assert_eq!(
        errno_of(File::open(m.mnt.join("no-such-file"))),
        Some(libc::ENOENT),
        "missing name"
    );
    assert_eq!(
        errno_of(File::open(m.mnt.join("config.json/inner"))),
        Some(libc::ENOTDIR),
        "path through a file"
    );
    let mut dir = File::open(m.mnt.join("sub")).unwrap();
    let mut b = [0u8; 16];
    assert_eq!(errno_of(dir.read(&mut b)), Some(libc::EISDIR), "read of a directory");
    assert_eq!(
        errno_of(OpenOptions::new().write(true).open(m.mnt.join("config.json"))),
        Some(libc::EROFS),
        "write open"
    );

    // The undamaged file reads back whole; the damaged one fails with EIO, not wrong bytes.
    assert_eq!(
        fs::read(m.mnt.join("config.json")).unwrap(),
        fs::read(src.join("config.json")).unwrap()
    );
    let original = fs::read(src.join("model.safetensors")).unwrap();
    let served = File::open(m.mnt.join("model.safetensors")).unwrap();
    let (mut eio, mut off) = (0, 0usize);
    while off < original.len() {
        let end = (off + (256 << 10)).min(original.len());
        let mut buf = vec![0u8; end - off];
        match served.read_exact_at(&mut buf, off as u64) {
            Ok(()) => assert!(buf[..] == original[off..end], "wrong bytes at {off}"),
            Err(e) => {
                assert_ne!(e.kind(), ErrorKind::UnexpectedEof, "short read at {off}");
                assert_eq!(e.raw_os_error(), Some(libc::EIO), "damaged chunk at {off}: {e}");
                eio += 1;
            }
        }
        off = end;
    }
    assert!(eio > 0, "the damaged payload byte was never reported");
}
