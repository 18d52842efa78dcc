//! GGUF v2/v3 (little-endian): header, metadata key/values, tensor infos, aligned data.
//!
//! ```text
//! u32 magic "GGUF" | u32 version | u64 n_tensors | u64 n_kv
//! n_kv x (string key | u32 type | value)          string := u64 len | bytes
//! n_tensors x (string name | u32 n_dims | u64 dims[n_dims] | u32 ggml_type | u64 offset)
//! padding to general.alignment (default 32) | tensor data (offsets relative to here)
//! ```

use super::{check_spans, malformed, Dtype, FileKind, Layout, ModelError, TensorSpan};

pub const GGML_F32: u32 = 0;
pub const GGML_F16: u32 = 1;
pub const GGML_Q4_0: u32 = 2;
pub const GGML_Q4_1: u32 = 3;
pub const GGML_Q8_0: u32 = 8;
pub const GGML_BF16: u32 = 30;

const DEFAULT_ALIGNMENT: u64 = 32;
/// Caps that keep hostile counts from driving allocation or loops.
const MAX_DIMS: u32 = 8;
const MAX_ARRAY_DEPTH: u32 = 4;

/// (name, elements per block, bytes per block) by GGML type id.
fn ggml_type(id: u32) -> Option<(&'static str, u32, u32)> {
    Some(match id {
        0 => ("F32", 1, 4),
        1 => ("F16", 1, 2),
        2 => ("Q4_0", 32, 18),
        3 => ("Q4_1", 32, 20),
        6 => ("Q5_0", 32, 22),
        7 => ("Q5_1", 32, 24),
        8 => ("Q8_0", 32, 34),
        9 => ("Q8_1", 32, 36),
        10 => ("Q2_K", 256, 84),
        11 => ("Q3_K", 256, 110),
        12 => ("Q4_K", 256, 144),
        13 => ("Q5_K", 256, 176),
        14 => ("Q6_K", 256, 210),
        15 => ("Q8_K", 256, 292),
        16 => ("IQ2_XXS", 256, 66),
        17 => ("IQ2_XS", 256, 74),
        18 => ("IQ3_XXS", 256, 98),
        19 => ("IQ1_S", 256, 50),
        20 => ("IQ4_NL", 32, 18),
        21 => ("IQ3_S", 256, 110),
        22 => ("IQ2_S", 256, 82),
        23 => ("IQ4_XS", 256, 136),
        24 => ("I8", 1, 1),
        25 => ("I16", 1, 2),
        26 => ("I32", 1, 4),
        27 => ("I64", 1, 8),
        28 => ("F64", 1, 8),
        29 => ("IQ1_M", 256, 56),
        30 => ("BF16", 1, 2),
        34 => ("TQ1_0", 256, 54),
        35 => ("TQ2_0", 256, 66),
        _ => return None,
    })
}

/// The GGML block type with this name, if known.
pub fn dtype_from_name(name: &str) -> Option<Dtype> {
    (0..64).find_map(|id| match ggml_type(id) {
        Some((n, block, bytes)) if n == name => Some(Dtype::Ggml { id, block, bytes }),
        _ => None,
    })
}

pub fn type_name(id: u32) -> &'static str {
    ggml_type(id).map_or("GGML_UNKNOWN", |t| t.0)
}

/// A bounds-checked little-endian cursor; running past the prefix asks for more bytes.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    file_len: u64,
}

impl Cursor<'_> {
    fn take(&mut self, n: u64) -> Result<&[u8], ModelError> {
        let end = (self.pos as u64)
            .checked_add(n)
            .ok_or_else(|| malformed("GGUF length overflows"))?;
        if end > self.file_len {
            return Err(malformed("GGUF header runs past the end of the file"));
        }
        if end > self.buf.len() as u64 {
            // Ask for at least double, so a long header costs few rereads.
            let needed = end.max(self.buf.len() as u64 * 2).min(self.file_len);
            return Err(ModelError::NeedMore { needed });
        }
        let s = &self.buf[self.pos..end as usize];
        self.pos = end as usize;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32, ModelError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64, ModelError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn string(&mut self) -> Result<String, ModelError> {
        let n = self.u64()?;
        let b = self.take(n)?;
        Ok(String::from_utf8_lossy(b).into_owned())
    }
    /// Skips a value of type `ty`, returning it as u64 when it is an unsigned integer.
    fn value(&mut self, ty: u32, depth: u32) -> Result<Option<u64>, ModelError> {
        Ok(match ty {
            0 | 1 | 7 => Some(self.take(1)?[0] as u64),
            2 | 3 => Some(u16::from_le_bytes(self.take(2)?.try_into().unwrap()) as u64),
            4 | 5 => Some(self.u32()? as u64),
            6 => {
                self.take(4)?;
                None
            }
            10 | 11 => Some(self.u64()?),
            12 => {
                self.take(8)?;
                None
            }
            8 => {
                let n = self.u64()?;
                self.take(n)?;
                None
            }
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(malformed("GGUF arrays nested too deeply"));
                }
                let et = self.u32()?;
                let n = self.u64()?;
                let fixed = match et {
                    0 | 1 | 7 => Some(1),
                    2 | 3 => Some(2),
                    4..=6 => Some(4),
                    10..=12 => Some(8),
                    _ => None,
                };
                match fixed {
                    Some(w) => {
                        let bytes = n.checked_mul(w).ok_or_else(|| malformed("GGUF array size overflows"))?;
                        self.take(bytes)?;
                    }
                    None => {
                        // Every element takes at least 8 bytes, so a count beyond the file is a lie.
                        if n > self.file_len / 8 {
                            return Err(malformed("GGUF array longer than the file"));
                        }
                        for _ in 0..n {
                            self.value(et, depth + 1)?;
                        }
                    }
                }
                None
            }
            t => return Err(malformed(format!("GGUF metadata value of unknown type {t}"))),
        })
    }
}

pub fn parse(prefix: &[u8], file_len: u64) -> Result<Layout, ModelError> {
    let mut c = Cursor {
        buf: prefix,
        pos: 0,
        file_len,
    };
    if c.take(4)? != b"GGUF" {
        return Err(malformed("not a GGUF file (bad magic)"));
    }
    let version = c.u32()?;
    if !(2..=3).contains(&version) {
        let hint = if version.swap_bytes() <= 3 {
            " (big-endian GGUF is not supported)"
        } else {
            ""
        };
        return Err(malformed(format!(
            "GGUF version {version} is not supported (2 or 3){hint}"
        )));
    }
    let n_tensors = c.u64()?;
    let n_kv = c.u64()?;
    // Each tensor info and each KV takes well over 8 bytes.
    if n_tensors > file_len / 8 || n_kv > file_len / 8 {
        return Err(malformed("GGUF tensor or metadata count larger than the file"));
    }
    let mut alignment = DEFAULT_ALIGNMENT;
    for _ in 0..n_kv {
        let key = c.string()?;
        let ty = c.u32()?;
        let v = c.value(ty, 0)?;
        if key == "general.alignment" {
            match v {
                Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => alignment = a,
                _ => return Err(malformed("general.alignment must be a power of two up to 1 MiB")),
            }
        }
    }
    let mut infos = Vec::with_capacity(n_tensors.min(1 << 16) as usize);
    for _ in 0..n_tensors {
        let name = c.string()?;
        let n_dims = c.u32()?;
        if n_dims > MAX_DIMS {
            return Err(malformed(format!("tensor {name}: {n_dims} dimensions")));
        }
        let mut shape = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            shape.push(c.u64()?);
        }
        let ty = c.u32()?;
        let offset = c.u64()?;
        infos.push((name, shape, ty, offset));
    }
    let data_start = (c.pos as u64).next_multiple_of(alignment);
    if data_start > file_len {
        return Err(malformed("GGUF data section starts past the end of the file"));
    }
    let mut tensors = Vec::with_capacity(infos.len());
    for (name, shape, ty, offset) in infos {
        let (_, block, bytes) =
            ggml_type(ty).ok_or_else(|| malformed(format!("tensor {name}: unknown GGML type {ty}")))?;
        if offset % alignment != 0 {
            return Err(malformed(format!(
                "tensor {name}: offset {offset} not aligned to {alignment}"
            )));
        }
        let numel = shape
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .ok_or_else(|| malformed(format!("tensor {name}: element count overflows")))?;
        if numel % block as u64 != 0 {
            return Err(malformed(format!(
                "tensor {name}: {numel} elements is not a whole number of {block}-element blocks"
            )));
        }
        let len = (numel / block as u64)
            .checked_mul(bytes as u64)
            .ok_or_else(|| malformed(format!("tensor {name}: size overflows")))?;
        let start = data_start
            .checked_add(offset)
            .ok_or_else(|| malformed(format!("tensor {name}: offset overflows")))?;
        tensors.push(TensorSpan {
            name,
            dtype: Dtype::Ggml { id: ty, block, bytes },
            shape,
            start,
            len,
        });
    }
    check_spans(&mut tensors, data_start, file_len)?;
    Ok(Layout {
        kind: FileKind::Gguf,
        header_len: data_start,
        tensors,
    })
}

/// Builds a small GGUF v3 file: one string KV, an alignment KV and the given tensors
/// `(name, dims, ggml type, data)`. Used by tests.
pub fn build(tensors: &[(&str, Vec<u64>, u32, Vec<u8>)], alignment: u64) -> Vec<u8> {
    let mut f = b"GGUF".to_vec();
    f.extend_from_slice(&3u32.to_le_bytes());
    f.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    f.extend_from_slice(&2u64.to_le_bytes());
    let s = |f: &mut Vec<u8>, s: &str| {
        f.extend_from_slice(&(s.len() as u64).to_le_bytes());
        f.extend_from_slice(s.as_bytes());
    };
    s(&mut f, "general.name");
    f.extend_from_slice(&8u32.to_le_bytes());
    s(&mut f, "test");
    s(&mut f, "general.alignment");
    f.extend_from_slice(&4u32.to_le_bytes());
    f.extend_from_slice(&(alignment as u32).to_le_bytes());
    let mut off = 0u64;
    for (name, dims, ty, data) in tensors {
        s(&mut f, name);
        f.extend_from_slice(&(dims.len() as u32).to_le_bytes());
        for d in dims {
            f.extend_from_slice(&d.to_le_bytes());
        }
        f.extend_from_slice(&ty.to_le_bytes());
        f.extend_from_slice(&off.to_le_bytes());
        off = (off + data.len() as u64).next_multiple_of(alignment);
    }
    f.resize(f.len().next_multiple_of(alignment as usize), 0);
    for (_, _, _, data) in tensors {
        f.extend_from_slice(data);
        f.resize(f.len().next_multiple_of(alignment as usize), 0);
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_honours_alignment() {
        let f = build(
            &[
                ("w", vec![32, 2], GGML_Q8_0, vec![7; 68]),
                ("n", vec![3], GGML_F32, vec![1; 12]),
            ],
            64,
        );
        let l = parse(&f, f.len() as u64).unwrap();
        assert_eq!(l.header_len % 64, 0);
        assert_eq!(l.tensors[0].len, 68);
        assert_eq!(l.tensors[1].start, l.header_len + 128);
        // Short prefixes ask for more, never fail.
        for cut in [0, 3, 10, 30, 60] {
            assert!(
                matches!(parse(&f[..cut], f.len() as u64), Err(ModelError::NeedMore { .. })),
                "{cut}"
            );
        }
    }

    #[test]
    fn rejects_malformed() {
        let good = build(&[("w", vec![32], GGML_Q8_0, vec![7; 34])], 32);
        let mut bad_ver = good.clone();
        bad_ver[4] = 1;
        let mut bad_type = good.clone();
        // The tensor info: name "w" (u64 len 1, 'w'), u32 n_dims, u64 dim, then the u32 type.
        let ty_at = good.windows(4).position(|w| w == b"w\x01\x00\x00").unwrap() + 1 + 4 + 8;
        bad_type[ty_at..ty_at + 4].copy_from_slice(&99u32.to_le_bytes());
        let mut huge = good.clone();
        huge[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        for (what, f) in [("version", bad_ver), ("type", bad_type), ("count", huge)] {
            assert!(
                matches!(parse(&f, f.len() as u64), Err(ModelError::Malformed { .. })),
                "{what}"
            );
        }
        assert!(parse(b"GGUX\x03\0\0\0", 8).is_err());
        // Tensor data running past the end of the file.
        let data_at = parse(&good, good.len() as u64).unwrap().header_len as usize;
        assert!(parse(&good[..data_at + 20], data_at as u64 + 20).is_err());
    }
}
