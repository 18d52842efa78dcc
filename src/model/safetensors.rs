//! safetensors: `u64 LE header length | JSON header | data`, offsets relative to the data.

use super::{check_spans, malformed, Dtype, FileKind, Layout, ModelError, TensorSpan};
use serde_json::Value;

/// The format's own limit on the JSON header.
pub const MAX_JSON: u64 = 100_000_000;

pub fn parse(prefix: &[u8], file_len: u64) -> Result<Layout, ModelError> {
    if file_len < 8 {
        return Err(ModelError::Mismatch {
            what: "safetensors file length (at least the 8-byte header size)".into(),
            expected: 8,
            actual: file_len,
        });
    }
    let Some(len_bytes) = prefix.get(..8) else {
        return Err(ModelError::NeedMore { needed: 8 });
    };
    let n = u64::from_le_bytes(len_bytes.try_into().unwrap());
    if n > MAX_JSON {
        return Err(ModelError::Mismatch {
            what: "safetensors header length at most".into(),
            expected: MAX_JSON,
            actual: n,
        });
    }
    if 8 + n > file_len {
        return Err(ModelError::Mismatch {
            what: "safetensors header length within the file".into(),
            expected: file_len - 8,
            actual: n,
        });
    }
    let Some(json) = prefix.get(8..8 + n as usize) else {
        return Err(ModelError::NeedMore { needed: 8 + n });
    };
    let data_start = 8 + n;
    let data_len = file_len - data_start;
    let text = std::str::from_utf8(json).map_err(|_| malformed("safetensors header is not UTF-8"))?;
    if !text.trim_start().starts_with('{') {
        return Err(malformed("safetensors header is not a JSON object"));
    }
    let v: Value =
        serde_json::from_str(text.trim_end()).map_err(|e| malformed(format!("safetensors header JSON: {e}")))?;
    let Value::Object(map) = v else {
        return Err(malformed("safetensors header is not a JSON object"));
    };
    let mut tensors = Vec::with_capacity(map.len());
    for (name, info) in &map {
        if name == "__metadata__" {
            let ok = matches!(info, Value::Object(m) if m.values().all(|v| v.is_string()));
            if !ok {
                return Err(malformed("__metadata__ must map strings to strings"));
            }
            continue;
        }
        let obj = info
            .as_object()
            .ok_or_else(|| malformed(format!("tensor {name}: entry is not an object")))?;
        let dt = obj
            .get("dtype")
            .and_then(Value::as_str)
            .ok_or_else(|| malformed(format!("tensor {name}: missing dtype")))?;
        let dtype =
            Dtype::from_safetensors_name(dt).ok_or_else(|| malformed(format!("tensor {name}: unknown dtype {dt}")))?;
        let shape: Vec<u64> = obj
            .get("shape")
            .and_then(Value::as_array)
            .ok_or_else(|| malformed(format!("tensor {name}: missing shape")))?
            .iter()
            .map(|d| {
                d.as_u64()
                    .ok_or_else(|| malformed(format!("tensor {name}: bad dimension")))
            })
            .collect::<Result<_, _>>()?;
        let offs = obj
            .get("data_offsets")
            .and_then(Value::as_array)
            .filter(|a| a.len() == 2)
            .ok_or_else(|| malformed(format!("tensor {name}: data_offsets must be [begin, end]")))?;
        let (b, e) = match (offs[0].as_u64(), offs[1].as_u64()) {
            (Some(b), Some(e)) if b <= e => (b, e),
            _ => {
                return Err(malformed(format!(
                    "tensor {name}: data_offsets must be ascending integers"
                )))
            }
        };
        let numel = shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| malformed(format!("tensor {name}: element count overflows")))?;
        let want = numel
            .checked_mul(dtype.unit_bytes())
            .ok_or_else(|| malformed(format!("tensor {name}: byte size overflows")))?;
        if e - b != want {
            return Err(ModelError::Mismatch {
                what: format!("tensor {name} byte size (shape x dtype)"),
                expected: want,
                actual: e - b,
            });
        }
        if e > data_len {
            return Err(ModelError::Mismatch {
                what: format!("end of tensor {name} within the data section"),
                expected: data_len,
                actual: e,
            });
        }
        tensors.push(TensorSpan {
            name: name.clone(),
            dtype,
            shape,
            start: data_start + b,
            len: e - b,
        });
    }
    check_spans(&mut tensors, data_start, file_len)?;
    Ok(Layout {
        kind: FileKind::Safetensors,
        header_len: data_start,
        tensors,
    })
}

/// Builds a safetensors file from `(name, dtype, shape, bytes)`; used by tests and benches.
pub fn build(tensors: &[(&str, &str, Vec<u64>, Vec<u8>)]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut off = 0u64;
    for (name, dt, shape, bytes) in tensors {
        let end = off + bytes.len() as u64;
        header.insert(
            (*name).into(),
            serde_json::json!({"dtype": dt, "shape": shape, "data_offsets": [off, end]}),
        );
        off = end;
    }
    let mut json = serde_json::to_string(&Value::Object(header)).unwrap().into_bytes();
    while (json.len() + 8) % 8 != 0 {
        json.push(b' ');
    }
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&json);
    for (_, _, _, bytes) in tensors {
        out.extend_from_slice(bytes);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> Vec<u8> {
        build(&[
            ("a", "F32", vec![2, 3], vec![1; 24]),
            ("b", "BF16", vec![4], vec![2; 8]),
            ("c", "I8", vec![0], vec![]),
        ])
    }

    #[test]
    fn parses_a_valid_file() {
        let f = file();
        let l = parse(&f, f.len() as u64).unwrap();
        assert_eq!(l.tensors.len(), 3);
        let a = l.tensors.iter().find(|t| t.name == "a").unwrap();
        assert_eq!((a.start, a.len, a.dtype), (l.header_len, 24, Dtype::F32));
        assert!(matches!(
            parse(&f[..4], f.len() as u64),
            Err(ModelError::NeedMore { needed: 8 })
        ));
        assert!(matches!(
            parse(&f[..12], f.len() as u64),
            Err(ModelError::NeedMore { .. })
        ));
    }

    fn with_header(json: &str, data: usize) -> Vec<u8> {
        let mut f = (json.len() as u64).to_le_bytes().to_vec();
        f.extend_from_slice(json.as_bytes());
        f.resize(f.len() + data, 0);
        f
    }

    #[test]
    fn rejects_malformed_headers() {
        let cases = [
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}"#, // size mismatch
            r#"{"a":{"dtype":"F99","shape":[1],"data_offsets":[0,4]}}"#, // unknown dtype
            r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,400]}}"#, // out of bounds
            r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}}"#, // descending
            r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}}"#,
            r#"{"a":{"dtype":"U8","shape":[4294967296,4294967296,16],"data_offsets":[0,0]}}"#,
            r#"{"__metadata__":{"x":1}}"#,
            r#"[1,2]"#,
            r#"{"a":"#,
        ];
        for c in cases {
            let f = with_header(c, 16);
            assert!(
                matches!(
                    parse(&f, f.len() as u64),
                    Err(ModelError::Malformed { .. } | ModelError::Mismatch { .. })
                ),
                "{c}"
            );
        }
        // A header length claiming 2^60 bytes is refused before anything is allocated.
        let mut f = (1u64 << 60).to_le_bytes().to_vec();
        f.extend_from_slice(b"{}");
        assert!(matches!(parse(&f, f.len() as u64), Err(ModelError::Mismatch { .. })));
        assert!(parse(b"", 0).is_err());
    }
}
