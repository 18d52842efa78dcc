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

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FileKind {
    Opaque = 0,
    Safetensors = 1,
    Gguf = 2,
}

impl FileKind {
    pub fn from_id(id: u8) -> Option<FileKind> {
        match id {
            0 => Some(FileKind::Opaque),
            1 => Some(FileKind::Safetensors),
            2 => Some(FileKind::Gguf),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            FileKind::Opaque => "opaque",
            FileKind::Safetensors => "safetensors",
            FileKind::Gguf => "gguf",
        }
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

impl Dtype {
    /// Parses a dtype name as written in safetensors headers or GGML type tables.
    pub fn from_name(name: &str) -> Option<Dtype> {
        safetensors::dtype_from_str(name).or_else(|| gguf::dtype_from_name(name))
    }

    /// Bytes of one unit (element, or block for GGML quantised types).
    pub fn unit_bytes(self) -> u64 {
        use Dtype::*;
        match self {
            Bool | U8 | I8 | F8E4M3 | F8E5M2 => 1,
            I16 | U16 | F16 | BF16 => 2,
            I32 | U32 | F32 => 4,
            I64 | U64 | F64 => 8,
            Ggml { bytes, .. } => bytes as u64,
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
        use Dtype::*;
        match self {
            Bool => "BOOL".into(),
            U8 => "U8".into(),
            I8 => "I8".into(),
            F8E4M3 => "F8_E4M3".into(),
            F8E5M2 => "F8_E5M2".into(),
            I16 => "I16".into(),
            U16 => "U16".into(),
            F16 => "F16".into(),
            BF16 => "BF16".into(),
            I32 => "I32".into(),
            U32 => "U32".into(),
            F32 => "F32".into(),
            I64 => "I64".into(),
            U64 => "U64".into(),
            F64 => "F64".into(),
            Ggml { id, .. } => gguf::type_name(id).to_string(),
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
        use Dtype::*;
        match self {
            Bool => 1,
            U8 => 2,
            I8 => 3,
            F8E4M3 => 4,
            F8E5M2 => 5,
            I16 => 6,
            U16 => 7,
            F16 => 8,
            BF16 => 9,
            I32 => 10,
            U32 => 11,
            F32 => 12,
            I64 => 13,
            U64 => 14,
            F64 => 15,
            Ggml { .. } => 16,
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
