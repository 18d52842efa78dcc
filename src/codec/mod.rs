//! Entropy coders for one byte plane: `raw`, `zstd` and our interleaved `rans`.
//!
//! Codecs know nothing of models or files: they turn a plane into bytes and back, and
//! treat every input byte as hostile on the way back.

pub mod rans;
#[cfg(target_arch = "x86_64")]
mod rans_avx2;
pub mod rans_layout;
#[cfg(target_arch = "aarch64")]
mod rans_neon;

/// Errors of a plane decoder. Always means "these bytes are not a valid stream".
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CodecError {
    #[error("{0}")]
    Corrupt(&'static str),
    #[error("{what}: expected {expected}, found {actual}")]
    Mismatch {
        what: &'static str,
        expected: u64,
        actual: u64,
    },
    #[error("zstd: {0}")]
    Zstd(String),
    #[error("unknown codec id {0}")]
    UnknownCodec(u8),
}

impl CodecError {
    pub(crate) const fn corrupt(what: &'static str) -> CodecError {
        CodecError::Corrupt(what)
    }
}

id_enum! {
    /// How one plane (or a whole raw chunk) is stored. The ids are on-disk values.
    pub enum Codec {
        Raw = 0 => "raw",
        Rans = 1 => "rans",
        Zstd = 2 => "zstd",
    }
}

/// Encodes `plane` with `codec`, appending to `out`.
pub fn encode(codec: Codec, plane: &[u8], zstd_level: i32, out: &mut Vec<u8>) {
    match codec {
        Codec::Raw => out.extend_from_slice(plane),
        Codec::Rans => rans::encode(plane, out),
        Codec::Zstd => {
            let z = zstd::bulk::compress(plane, zstd_level).expect("zstd compression of memory cannot fail");
            out.extend_from_slice(&z);
        }
    }
}

/// Decodes `stored` into `out`, which has exactly the original plane length.
pub fn decode(codec: Codec, stored: &[u8], out: &mut [u8]) -> Result<(), CodecError> {
    match codec {
        Codec::Raw => {
            if stored.len() != out.len() {
                return Err(CodecError::Mismatch {
                    what: "raw plane length",
                    expected: out.len() as u64,
                    actual: stored.len() as u64,
                });
            }
            out.copy_from_slice(stored);
            Ok(())
        }
        Codec::Rans => rans::decode(stored, out),
        Codec::Zstd => {
            // The output buffer is the cap: zstd fails instead of growing past it. Each thread
            // keeps one decompression context: making one per plane showed in the mount's
            // profile (ZSTD_createDCtx, 2% of its CPU).
            let n = ZSTD_DCTX
                .with(|d| {
                    let mut d = d.borrow_mut();
                    if d.is_none() {
                        *d = Some(zstd::bulk::Decompressor::new()?);
                    }
                    d.as_mut().expect("just set").decompress_to_buffer(stored, out)
                })
                .map_err(|e| CodecError::Zstd(e.to_string()))?;
            if n != out.len() {
                return Err(CodecError::Mismatch {
                    what: "zstd plane length",
                    expected: out.len() as u64,
                    actual: n as u64,
                });
            }
            Ok(())
        }
    }
}

thread_local! {
    /// This thread's zstd decompression context, made on first use.
    static ZSTD_DCTX: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_codec_roundtrips_and_rejects_wrong_lengths() {
        let plane: Vec<u8> = (0..50_000u32).map(|i| (i % 17 + i / 5000) as u8).collect();
        for &c in Codec::ALL {
            let mut enc = Vec::new();
            encode(c, &plane, 3, &mut enc);
            let mut out = vec![0; plane.len()];
            decode(c, &enc, &mut out).unwrap();
            assert_eq!(out, plane, "{c}");
            let mut short = vec![0; plane.len() - 1];
            assert!(decode(c, &enc, &mut short).is_err(), "{c}");
            assert_eq!(Codec::from_id(c as u8), Some(c));
        }
        assert_eq!(Codec::ALL, [Codec::Raw, Codec::Rans, Codec::Zstd]);
        assert_eq!(Codec::from_id(9), None);
        assert_eq!(Codec::try_from(9), Err(9));
    }
}
