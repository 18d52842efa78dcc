//! Appends payloads, then the index and the self-checking footer.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::{encode_footer, encode_header, encode_index, ChunkEntry, FileMeta, TensorEntry, HEADER_LEN};
use crate::error::{Error, Result};

pub struct Writer {
    out: BufWriter<File>,
    path: PathBuf,
    pos: u64,
    chunks: Vec<ChunkEntry>,
}

impl Writer {
    /// Creates (truncates) `path` and writes the container header.
    pub fn create(path: &Path) -> Result<Writer> {
        let f = File::create(path).map_err(|e| Error::io(path, e))?;
        Self::new(f, path)
    }

    /// Writes a container into `f`, a new empty file the caller created (`path` names it
    /// in errors).
    pub fn new(f: File, path: &Path) -> Result<Writer> {
        let mut out = BufWriter::with_capacity(1 << 20, f);
        out.write_all(&encode_header()).map_err(|e| Error::io(path, e))?;
        Ok(Writer {
            out,
            path: path.to_path_buf(),
            pos: HEADER_LEN,
            chunks: Vec::new(),
        })
    }

    /// Appends one chunk's payload; `entry.payload_offset` and `payload_len` are filled in.
    pub fn push(&mut self, mut entry: ChunkEntry, payload: &[u8]) -> Result<()> {
        entry.payload_offset = self.pos;
        entry.payload_len = payload.len() as u32;
        self.out.write_all(payload).map_err(|e| Error::io(&self.path, e))?;
        self.pos += payload.len() as u64;
        self.chunks.push(entry);
        Ok(())
    }

    pub fn chunks(&self) -> &[ChunkEntry] {
        &self.chunks
    }

    /// Writes index and footer and syncs the file to disk. Returns the container length.
    pub fn finish(mut self, meta: &FileMeta, tensors: &[TensorEntry]) -> Result<u64> {
        let index = encode_index(meta, &self.chunks, tensors);
        let footer = encode_footer(self.pos, &index);
        let io = |e| Error::io(&self.path, e);
        self.out.write_all(&index).map_err(io)?;
        self.out.write_all(&footer).map_err(io)?;
        let f = self
            .out
            .into_inner()
            .map_err(|e| Error::io(&self.path, e.into_error()))?;
        f.sync_all().map_err(|e| Error::io(&self.path, e))?;
        Ok(self.pos + index.len() as u64 + footer.len() as u64)
    }
}
