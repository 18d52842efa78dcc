//! dcfs: lossless, dtype-aware compression of model weights, served through a read-only
//! FUSE mount as the original files.
//!
//! Layers, each depending only on those above it in this list:
//! `codec` (raw/zstd/rANS) and `transform` (byte planes) → `chunk` (one chunk's payload)
//! → `model` (safetensors/GGUF headers) → `format` (the `.dcz` container) → `pack`
//! (trees: pack, unpack, verify, inspect) → `store` (cached reads of a packed tree) → `fs`
//! (the FUSE adaptor). `gpu` offloads rANS decoding; it uses `codec`, `chunk` and
//! `format`, and `pack` uses it. `quantize` (DC's lossy INT8 stage and `analyze`) uses
//! `model`/`chunk`/`codec`/`pack`; nothing depends on it.

// Symbol tables are indexed by symbol value; index loops say that more plainly.
#![allow(clippy::needless_range_loop)]

pub mod bench;
pub mod chunk;
pub mod codec;
pub mod error;
pub mod format;
pub mod fs;
pub mod gpu;
pub mod model;
pub mod pack;
pub mod quantize;
pub mod remote;
pub mod store;
pub mod transform;

pub use error::{Error, Result};
