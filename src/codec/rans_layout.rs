//! Stream layout constants shared by the CPU coder, the CPU emulation of the GPU kernel and
//! `cuda/rans_decode.cu` (which receives them as `-D` defines at NVRTC compile time, so the
//! two can never drift apart).

/// Number of interleaved rANS states per sub-block: one per lane of a 32-wide GPU warp.
pub const LANES: usize = 32;
/// Symbols per independently decodable sub-block. 64 KiB keeps the 128-byte state prologue
/// under 0.2% of the raw plane while still giving a GPU thousands of warps per batch.
pub const SUB_BLOCK: usize = 64 * 1024;
/// Precision of the normalised frequency table: frequencies sum to `1 << PROB_BITS`.
pub const PROB_BITS: u32 = 12;
/// Sum of all frequencies.
pub const PROB_SCALE: u32 = 1 << PROB_BITS;
/// Lower bound of a normalised state; states live in `[STATE_LOW, 2^32)`.
pub const STATE_LOW: u32 = 1 << 16;
/// Bits moved per renormalisation step (one little-endian u16 word).
pub const WORD_BITS: u32 = 16;
/// Bytes of the per-sub-block prologue: the initial state of every lane as u32 LE.
pub const STATES_BYTES: usize = LANES * 4;
