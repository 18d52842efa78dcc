//! Model file parsers: safetensors and GGUF headers in, tensor spans out.
//!
//! Parsers see only the bytes they are given (a prefix of the file plus its length) and
//! say how many more bytes they need; they never touch the disk. Every size read from a
//! header is checked against the file before it is used.

pub mod gguf;
pub mod safetensors;

use crate::transform::Transform;

/// The parsed layout of a model file.
#[derive(Clone, Debug, PartialEq)]
pub struct Layout {
    pub kind: FileKind,
    /// Bytes `[0, header_len)` are the header (its own chunk).
    pub header_len: u64,
    /// Tensors sorted by `start`, non-overlapping, inside the file.
    pub tensors: Vec<TensorSpan>,
}

id_enum! {
    /// What a packed file is, as recorded in its container.
    pub enum FileKind {
        Opaque = 0 => "opaque",
        Safetensors = 1 => "safetensors",
        Gguf = 2 => "gguf",
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct TensorSpan {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<u64>,
    /// Absolute offset of the first byte in the file.
    pub start: u64,
    pub len: u64,
}

/// Element types we know how to regroup. GGUF block types carry their block geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dtype {
    Bool,
    U8,
    I8,
    F8E4M3,
    F8E5M2,
    I16,
    U16,
    F16,
    BF16,
    I32,
    U32,
    F32,
    I64,
    U64,
    F64,
    /// A GGML block type: `id` as in the GGUF file, `block` elements in `bytes` bytes.
    Ggml {
        id: u32,
        block: u32,
        bytes: u32,
    },
}

/// The element dtypes, one row each: the name safetensors headers use, the one-byte code
/// of the chunk index, and bytes per element. The only place these facts are written;
/// GGML block types have their own table in [`gguf`] and share code [`GGML_CODE`].
const ELEMENT_DTYPES: [(Dtype, &str, u8, u64); 15] = [
    (Dtype::Bool, "BOOL", 1, 1),
    (Dtype::U8, "U8", 2, 1),
    (Dtype::I8, "I8", 3, 1),
    (Dtype::F8E4M3, "F8_E4M3", 4, 1),
    (Dtype::F8E5M2, "F8_E5M2", 5, 1),
    (Dtype::I16, "I16", 6, 2),
    (Dtype::U16, "U16", 7, 2),
    (Dtype::F16, "F16", 8, 2),
    (Dtype::BF16, "BF16", 9, 2),
    (Dtype::I32, "I32", 10, 4),
    (Dtype::U32, "U32", 11, 4),
    (Dtype::F32, "F32", 12, 4),
    (Dtype::I64, "I64", 13, 8),
    (Dtype::U64, "U64", 14, 8),
    (Dtype::F64, "F64", 15, 8),
];

/// The chunk-index code of every GGML block type.
pub const GGML_CODE: u8 = 16;

impl Dtype {
    fn element_row(self) -> Option<&'static (Dtype, &'static str, u8, u64)> {
        ELEMENT_DTYPES.iter().find(|r| r.0 == self)
    }

    /// Parses an element dtype as named in safetensors headers (GGML names are not valid
    /// there).
    pub fn from_safetensors_name(name: &str) -> Option<Dtype> {
        ELEMENT_DTYPES.iter().find(|r| r.1 == name).map(|r| r.0)
    }

    /// Parses a dtype name as written in safetensors headers or GGML type tables.
    pub fn from_name(name: &str) -> Option<Dtype> {
        Dtype::from_safetensors_name(name).or_else(|| gguf::dtype_from_name(name))
    }

    /// The safetensors name of an element dtype; `None` for GGML block types.
    pub fn safetensors_name(self) -> Option<&'static str> {
        self.element_row().map(|r| r.1)
    }

    /// Bytes of one unit (element, or block for GGML quantised types).
    pub fn unit_bytes(self) -> u64 {
        match self {
            Dtype::Ggml { bytes, .. } => bytes as u64,
            _ => self.element_row().map_or(1, |r| r.3),
        }
    }

    /// Elements per unit.
    pub fn unit_elems(self) -> u64 {
        match self {
            Dtype::Ggml { block, .. } => block as u64,
            _ => 1,
        }
    }

    pub fn name(self) -> String {
        match self {
            Dtype::Ggml { id, .. } => gguf::type_name(id).to_string(),
            _ => self.safetensors_name().unwrap_or("?").to_string(),
        }
    }
    /// Transforms worth trying for this dtype, best guess first. Chunk planning keeps
    /// chunk lengths a multiple of the first transform's unit.
    pub fn transforms(self) -> &'static [Transform] {
        use Dtype::*;
        match self {
            BF16 => &[Transform::Bf16Exp, Transform::Split2],
            F16 | I16 | U16 => &[Transform::Split2],
            F32 => &[Transform::F32Exp, Transform::Split4],
            I32 | U32 => &[Transform::Split4],
            Ggml { id: gguf::GGML_F32, .. } => &[Transform::F32Exp, Transform::Split4],
            Ggml { id: gguf::GGML_F16, .. } => &[Transform::Split2],
            Ggml {
                id: gguf::GGML_BF16, ..
            } => &[Transform::Bf16Exp, Transform::Split2],
            Ggml {
                id: gguf::GGML_Q8_0, ..
            } => &[Transform::Q8_0, Transform::None],
            Ggml {
                id: gguf::GGML_Q4_0, ..
            } => &[Transform::Q4_0, Transform::None],
            Ggml {
                id: gguf::GGML_Q4_1, ..
            } => &[Transform::Q4_1, Transform::None],
            _ => &[Transform::None],
        }
    }

    /// A stable one-byte code for the chunk index (inspection only; decoding never needs it).
    pub fn code(self) -> u8 {
        match self {
            Dtype::Ggml { .. } => GGML_CODE,
            _ => self.element_row().map_or(0, |r| r.2),
        }
    }
}

/// Why a header was rejected. Parsers never guess: anything they cannot prove is an error.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ModelError {
    /// Not an error: the parser needs the first `needed` bytes of the file.
    #[error("need {needed} bytes of header")]
    NeedMore { needed: u64 },
    #[error("{what}")]
    Malformed { what: String },
    #[error("{what}: expected {expected}, found {actual}")]
    Mismatch { what: String, expected: u64, actual: u64 },
}

pub(crate) fn malformed(what: impl Into<String>) -> ModelError {
    ModelError::Malformed { what: what.into() }
}

/// Largest header prefix we will ever read (a 100 MB safetensors header plus slack; GGUF
/// vocabularies of the largest public models stay far below this).
pub const MAX_HEADER: u64 = 256 << 20;

/// Recognises the format from the first bytes, whatever the file is called: Hugging Face
/// caches keep models as `blobs/<hash>` with no suffix. GGUF by its magic; safetensors by
/// its shape (a little-endian u64 header length within [`MAX_HEADER`], then a JSON object),
/// or by its `.safetensors` name. Returns `Opaque` for anything else. Whether the header
/// then parses is [`parse`]'s question.
pub fn sniff(name: &str, prefix: &[u8]) -> FileKind {
    if prefix.starts_with(b"GGUF") {
        FileKind::Gguf
    } else if name.ends_with(".safetensors") || looks_like_safetensors(prefix) {
        FileKind::Safetensors
    } else {
        FileKind::Opaque
    }
}

/// Whether a file's name says it is a model file: a header that then fails to parse is an
/// error for such a file (unless `--lenient`), but only a warning for a file recognised by
/// its content alone, which is then packed as opaque bytes.
pub fn named_as_model(name: &str) -> bool {
    name.ends_with(".safetensors") || name.ends_with(".gguf")
}

fn looks_like_safetensors(prefix: &[u8]) -> bool {
    let Some(len) = prefix.get(..8) else { return false };
    let n = u64::from_le_bytes(len.try_into().expect("8 bytes"));
    (2..=MAX_HEADER).contains(&n) && prefix.get(8) == Some(&b'{')
}

/// Parses the header of a file of kind `kind` from `prefix` (the first bytes of a file of
/// `file_len` bytes).
pub fn parse(kind: FileKind, prefix: &[u8], file_len: u64) -> Result<Layout, ModelError> {
    match kind {
        FileKind::Safetensors => safetensors::parse(prefix, file_len),
        FileKind::Gguf => gguf::parse(prefix, file_len),
        FileKind::Opaque => Ok(Layout {
            kind,
            header_len: 0,
            tensors: Vec::new(),
        }),
    }
}

/// Sorts tensors by offset and proves they lie inside `[lo, hi)` without overlapping.
pub(crate) fn check_spans(tensors: &mut [TensorSpan], lo: u64, hi: u64) -> Result<(), ModelError> {
    tensors.sort_by(|a, b| a.start.cmp(&b.start).then(a.len.cmp(&b.len)));
    let mut prev_end = lo;
    let mut prev_name = "<header>";
    for t in tensors.iter() {
        if t.start < prev_end {
            return Err(malformed(format!("tensor {} overlaps {}", t.name, prev_name)));
        }
        let end = t
            .start
            .checked_add(t.len)
            .ok_or_else(|| malformed(format!("tensor {} offset overflows", t.name)))?;
        if end > hi {
            return Err(ModelError::Mismatch {
                what: format!("end of tensor {} within file", t.name),
                expected: hi,
                actual: end,
            });
        }
        prev_end = end;
        prev_name = &t.name;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtype_table_round_trips_and_keeps_its_codes() {
        // The codes are written into chunk indexes: they may never change.
        let codes: Vec<(String, u8, u64)> = ELEMENT_DTYPES
            .iter()
            .map(|r| (r.0.name(), r.0.code(), r.0.unit_bytes()))
            .collect();
        let want = [
            ("BOOL", 1, 1),
            ("U8", 2, 1),
            ("I8", 3, 1),
            ("F8_E4M3", 4, 1),
            ("F8_E5M2", 5, 1),
            ("I16", 6, 2),
            ("U16", 7, 2),
            ("F16", 8, 2),
            ("BF16", 9, 2),
            ("I32", 10, 4),
            ("U32", 11, 4),
            ("F32", 12, 4),
            ("I64", 13, 8),
            ("U64", 14, 8),
            ("F64", 15, 8),
        ];
        let want: Vec<(String, u8, u64)> = want.iter().map(|&(n, c, b)| (n.to_string(), c, b)).collect();
        assert_eq!(codes, want);
        for r in ELEMENT_DTYPES {
            assert_eq!(Dtype::from_name(r.1), Some(r.0));
            assert_eq!(Dtype::from_safetensors_name(r.1), Some(r.0));
            assert_eq!(r.0.safetensors_name(), Some(r.1));
        }
        let q = Dtype::from_name("Q4_1").expect("a GGML name");
        assert_eq!(
            (q.code(), q.name().as_str(), q.safetensors_name()),
            (GGML_CODE, "Q4_1", None)
        );
        assert_eq!(Dtype::from_safetensors_name("Q4_1"), None);
    }

    #[test]
    fn file_kind_ids() {
        for &k in FileKind::ALL {
            assert_eq!(FileKind::try_from(k as u8), Ok(k));
            assert_eq!(k.to_string(), k.name());
        }
        assert_eq!(FileKind::from_id(3), None);
    }
}
