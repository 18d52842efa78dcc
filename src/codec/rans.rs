//! Order-0 interleaved rANS with a static frequency table per coded plane.
//!
//! The stream is cut into independent sub-blocks of [`SUB_BLOCK`] symbols. Inside a
//! sub-block, symbol `j` belongs to lane `j % LANES`; all lanes share one stream of 16-bit
//! words, consumed in symbol order. That order is exactly what a GPU warp produces when
//! every lane that needs a word takes the next one by a ballot prefix count, so the CPU
//! decoder here, the CPU emulation in `gpu::emu` and `cuda/rans_decode.cu` all read the
//! same bytes.
//!
//! ```text
//! stream  := header table pad4 offsets data
//! header  := u8 version(=1) | u8 prob_bits | u16 reserved(=0) | u32 n_symbols
//! table   := u8[32] presence bitmap (bit s of byte s/8) |
//!            per present symbol, ascending: freq-1 as 1 byte (<0x80) or 2 bytes (0x80|hi7, lo8)
//! pad4    := zero bytes up to a multiple of 4 from the stream start
//! offsets := u32 LE x n_sub: end of sub-block k, in bytes from the start of `data`
//! data    := per sub-block: u32 LE x LANES initial states | u16 LE words | pad to 4 bytes
//! ```
//! `n_sub = ceil(n_symbols / SUB_BLOCK)`. After decoding a sub-block every lane must be
//! back at `STATE_LOW` and every word must have been consumed: a cheap structural check
//! on top of the chunk checksum.

pub use super::rans_layout::*;
use super::CodecError;

const VERSION: u8 = 1;
/// Byte offsets inside the fixed part of the stream header.
const H_VERSION: usize = 0;
const H_PROB_BITS: usize = 1;
const H_RESERVED: usize = 2;
const H_N_SYMBOLS: usize = 4;
const H_TABLE: usize = 8;
const BITMAP_BYTES: usize = 32;

/// Normalised frequency table of one plane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FreqTable {
    /// `freq[s]`, summing to [`PROB_SCALE`] (or all zero for an empty plane).
    pub freq: [u32; 256],
    /// Cumulative start of each symbol's slot range.
    pub cum: [u32; 256],
}

impl FreqTable {
    /// Builds a table from raw symbol counts, keeping every present symbol at frequency >= 1
    /// and spending the rounding error where it costs the fewest bits.
    pub fn from_counts(counts: &[u64; 256]) -> FreqTable {
        let total: u64 = counts.iter().sum();
        let mut freq = [0u32; 256];
        if let Some(half) = total.checked_div(2).filter(|_| total > 0) {
            let scale = PROB_SCALE as u64;
            for s in 0..256 {
                if counts[s] > 0 {
                    let f = (counts[s] * scale + half) / total;
                    freq[s] = f.clamp(1, scale) as u32;
                }
            }
            let mut sum: i64 = freq.iter().map(|&f| f as i64).sum();
            // Fix the rounding error where it costs the fewest bits: rank symbols by the
            // code-length change of one step, count * log2(f / f'), and step the best ones.
            // Each pass moves every symbol at most once; one or two passes settle it.
            while sum != PROB_SCALE as i64 {
                let up = sum < PROB_SCALE as i64;
                let mut cand: Vec<(f64, usize)> = (0..256)
                    .filter(|&s| if up { freq[s] > 0 } else { freq[s] > 1 })
                    .map(|s| {
                        let (c, f) = (counts[s] as f64, freq[s] as f64);
                        let cost = if up {
                            -c * ((f + 1.0) / f).ln()
                        } else {
                            c * (f / (f - 1.0)).ln()
                        };
                        (cost, s)
                    })
                    .collect();
                cand.sort_by(|a, b| a.0.total_cmp(&b.0));
                let need = (PROB_SCALE as i64 - sum).unsigned_abs() as usize;
                for &(_, s) in cand.iter().take(need) {
                    if up {
                        freq[s] += 1;
                        sum += 1;
                    } else {
                        freq[s] -= 1;
                        sum -= 1;
                    }
                }
            }
        }
        Self::with_freqs(freq)
    }

    fn with_freqs(freq: [u32; 256]) -> FreqTable {
        let mut cum = [0u32; 256];
        let mut acc = 0;
        for s in 0..256 {
            cum[s] = acc;
            acc += freq[s];
        }
        FreqTable { freq, cum }
    }

    fn write(&self, out: &mut Vec<u8>) {
        let mut bitmap = [0u8; BITMAP_BYTES];
        for s in 0..256 {
            if self.freq[s] > 0 {
                bitmap[s / 8] |= 1 << (s % 8);
            }
        }
        out.extend_from_slice(&bitmap);
        for s in 0..256 {
            if self.freq[s] > 0 {
                let v = self.freq[s] - 1;
                if v < 0x80 {
                    out.push(v as u8);
                } else {
                    out.push(0x80 | (v >> 8) as u8);
                    out.push(v as u8);
                }
            }
        }
    }

    /// Parses a table and returns it with the number of bytes it took. Hostile input gives
    /// `Corrupt`, never a panic.
    fn read(buf: &[u8], n_symbols: u32) -> Result<(FreqTable, usize), CodecError> {
        let bitmap = buf
            .get(..BITMAP_BYTES)
            .ok_or(CodecError::corrupt("rANS table bitmap truncated"))?;
        let mut pos = BITMAP_BYTES;
        let mut freq = [0u32; 256];
        let mut sum = 0u32;
        for s in 0..256 {
            if bitmap[s / 8] & (1 << (s % 8)) == 0 {
                continue;
            }
            let b0 = *buf.get(pos).ok_or(CodecError::corrupt("rANS table truncated"))?;
            pos += 1;
            let v = if b0 < 0x80 {
                b0 as u32
            } else {
                let b1 = *buf.get(pos).ok_or(CodecError::corrupt("rANS table truncated"))?;
                pos += 1;
                ((b0 as u32 & 0x7f) << 8) | b1 as u32
            };
            freq[s] = v + 1;
            sum += v + 1;
            if sum > PROB_SCALE {
                return Err(CodecError::corrupt("rANS frequencies exceed the scale"));
            }
        }
        if n_symbols > 0 && sum != PROB_SCALE {
            return Err(CodecError::Mismatch {
                what: "rANS frequency sum",
                expected: PROB_SCALE as u64,
                actual: sum as u64,
            });
        }
        Ok((Self::with_freqs(freq), pos))
    }

    /// Decode lookup: slot -> `sym << 24 | (slot - cum) << 12 | (freq - 1)`.
    pub fn decode_table(&self) -> Vec<u32> {
        let mut t = vec![0u32; PROB_SCALE as usize];
        for s in 0..256 {
            let (f, c) = (self.freq[s], self.cum[s]);
            for slot in c..c + f {
                t[slot as usize] = (s as u32) << 24 | (slot - c) << 12 | (f - 1);
            }
        }
        t
    }
}

/// Symbol counts of a byte slice.
pub fn histogram(data: &[u8]) -> [u64; 256] {
    // Four sub-histograms break the store-to-load dependency on repeated symbols.
    let mut h = [[0u32; 256]; 4];
    let mut it = data.chunks_exact(4);
    for q in &mut it {
        h[0][q[0] as usize] += 1;
        h[1][q[1] as usize] += 1;
        h[2][q[2] as usize] += 1;
        h[3][q[3] as usize] += 1;
    }
    for &b in it.remainder() {
        h[0][b as usize] += 1;
    }
    let mut out = [0u64; 256];
    for s in 0..256 {
        out[s] = h[0][s] as u64 + h[1][s] as u64 + h[2][s] as u64 + h[3][s] as u64;
    }
    out
}

/// Order-0 entropy of `counts` in bits: the floor for any order-0 coder.
pub fn entropy_bits(counts: &[u64; 256]) -> f64 {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return 0.0;
    }
    let t = total as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let c = c as f64;
            -c * (c / t).log2()
        })
        .sum()
}

fn pad4(out: &mut Vec<u8>, base: usize) {
    while (out.len() - base) % 4 != 0 {
        out.push(0);
    }
}

/// Encodes `data` as one rANS stream, appended to `out`.
pub fn encode(data: &[u8], out: &mut Vec<u8>) {
    let counts = histogram(data);
    let table = FreqTable::from_counts(&counts);
    encode_with(data, &table, out);
}

/// Encodes with a given table (which must cover every symbol of `data`).
pub fn encode_with(data: &[u8], table: &FreqTable, out: &mut Vec<u8>) {
    #[cfg(target_arch = "x86_64")]
    let simd = use_simd();
    #[cfg(not(target_arch = "x86_64"))]
    let simd = false;
    encode_impl(data, table, out, simd)
}

/// The encoder, with the AVX2 group loop (`simd`) or the scalar one; both write the same
/// bytes.
fn encode_impl(data: &[u8], table: &FreqTable, out: &mut Vec<u8>, simd: bool) {
    let base = out.len();
    let n = u32::try_from(data.len()).expect("planes are capped far below 4 GiB");
    out.push(VERSION);
    out.push(PROB_BITS as u8);
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&n.to_le_bytes());
    table.write(out);
    pad4(out, base);
    let n_sub = data.len().div_ceil(SUB_BLOCK);
    let offsets_at = out.len();
    out.resize(offsets_at + 4 * n_sub, 0);
    let data_at = out.len();

    // Per-symbol encoder parameters. The state update x' = (x / f) * M + x % f + cum is
    // rewritten as x' = x + bias + q * (M - f) with q = x / f, and q = hi64(x * rcp), which
    // is exact for 32-bit x with rcp = floor(2^64 / f) + 1 (f >= 2). For f = 1,
    // rcp = 2^64 - 1 gives q = x - 1, and bias = cum + M - 1 absorbs the difference, so the
    // hot loop has no branch on the frequency.
    #[derive(Clone, Copy, Default)]
    struct Sym {
        x_max: u32,
        cmpl: u32,
        bias: u32,
        rcp: u64,
    }
    let mut syms = [Sym::default(); 256];
    for (s, e) in syms.iter_mut().enumerate() {
        let f = table.freq[s];
        if f > 0 {
            let x_max = (((STATE_LOW >> PROB_BITS) as u64) << WORD_BITS) * f as u64;
            *e = Sym {
                // x_max <= 2^32 (f <= M); saturating keeps "x >= x_max" exact for 32-bit x
                // except at f = M, where a lone symbol never needs a flush anyway.
                x_max: x_max.min(u32::MAX as u64) as u32,
                cmpl: PROB_SCALE - f,
                bias: if f >= 2 {
                    table.cum[s]
                } else {
                    table.cum[s] + PROB_SCALE - 1
                },
                rcp: if f >= 2 { u64::MAX / f as u64 + 1 } else { u64::MAX },
            };
        }
    }
    #[cfg(target_arch = "x86_64")]
    let vec_table = simd.then(|| super::rans_avx2::EncTable::new(&table.freq, &table.cum));
    #[cfg(not(target_arch = "x86_64"))]
    let _ = simd;
    // At most one word per symbol, plus the vector loop's 8-entry stores.
    let mut words: Vec<u16> = vec![0; SUB_BLOCK + 8];
    for (k, block) in data.chunks(SUB_BLOCK).enumerate() {
        let mut st = [STATE_LOW; LANES];
        let mut n_words = 0usize;
        // Encode backwards; within a group of LANES symbols the decoder takes words in
        // ascending lane order, so the encoder emits them in descending order and the
        // whole word list is reversed at the end. Groups are walked whole so the lane
        // index is a constant per unrolled step rather than j % LANES.
        let full = block.len() / LANES * LANES;
        let step = |lane: usize, sym: u8, st: &mut [u32; LANES], words: &mut [u16], n_words: &mut usize| {
            let e = syms[sym as usize];
            debug_assert!(e.rcp != 0, "symbol missing from table");
            let mut x = st[lane];
            let flush = x >= e.x_max;
            // Branch-free: always store, advance only when flushing.
            words[*n_words] = x as u16;
            *n_words += flush as usize;
            x = if flush { x >> WORD_BITS } else { x };
            let q = ((x as u128 * e.rcp as u128) >> 64) as u32;
            st[lane] = x.wrapping_add(e.bias).wrapping_add(q.wrapping_mul(e.cmpl));
        };
        for j in (full..block.len()).rev() {
            step(j % LANES, block[j], &mut st, &mut words, &mut n_words);
        }
        #[cfg(target_arch = "x86_64")]
        if let Some(t) = &vec_table {
            // SAFETY: `vec_table` exists only when `use_simd` found AVX2 and POPCNT. (That the
            // table covers every symbol is this function's correctness contract, not a memory
            // one: the gather index is a byte.)
            unsafe { super::rans_avx2::encode_groups(t, &block[..full], &mut st, &mut words, &mut n_words) };
        }
        #[cfg(target_arch = "x86_64")]
        let scalar_groups = vec_table.is_none();
        #[cfg(not(target_arch = "x86_64"))]
        let scalar_groups = true;
        if scalar_groups {
            for g in block[..full].chunks_exact(LANES).rev() {
                // Four lanes per iteration: four independent state chains in flight at once.
                const _: () = assert!(LANES % 4 == 0);
                for q in (0..LANES / 4).rev() {
                    let l = 4 * q;
                    step(l + 3, g[l + 3], &mut st, &mut words, &mut n_words);
                    step(l + 2, g[l + 2], &mut st, &mut words, &mut n_words);
                    step(l + 1, g[l + 1], &mut st, &mut words, &mut n_words);
                    step(l, g[l], &mut st, &mut words, &mut n_words);
                }
            }
        }
        let words = &words[..n_words];
        for x in st {
            out.extend_from_slice(&x.to_le_bytes());
        }
        let at = out.len();
        out.resize(at + 2 * words.len(), 0);
        for (dst, &w) in out[at..].chunks_exact_mut(2).zip(words.iter().rev()) {
            dst.copy_from_slice(&w.to_le_bytes());
        }
        pad4(out, data_at);
        let end = (out.len() - data_at) as u32;
        out[offsets_at + 4 * k..offsets_at + 4 * k + 4].copy_from_slice(&end.to_le_bytes());
    }
}

/// A parsed stream header: what a decoder (CPU, emulated GPU or real GPU) needs.
#[derive(Debug)]
pub struct Parsed<'a> {
    pub n_symbols: usize,
    pub table: FreqTable,
    /// End offset of each sub-block inside `data`.
    pub offsets: Vec<u32>,
    /// The sub-block region.
    pub data: &'a [u8],
    /// Offset of `data` from the start of the stream (a multiple of 4).
    pub data_offset: usize,
}

impl<'a> Parsed<'a> {
    /// Byte range of sub-block `k` inside `data`, validated by [`parse`].
    pub fn sub_block(&self, k: usize) -> &'a [u8] {
        let start = if k == 0 { 0 } else { self.offsets[k - 1] as usize };
        &self.data[start..self.offsets[k] as usize]
    }
}

/// Parses and validates the header of a stream that must decode to `expected_len` bytes.
pub fn parse(stream: &[u8], expected_len: usize) -> Result<Parsed<'_>, CodecError> {
    let head = stream
        .get(..H_TABLE)
        .ok_or(CodecError::corrupt("rANS header truncated"))?;
    if head[H_VERSION] != VERSION {
        return Err(CodecError::Mismatch {
            what: "rANS stream version",
            expected: VERSION as u64,
            actual: head[H_VERSION] as u64,
        });
    }
    if head[H_PROB_BITS] as u32 != PROB_BITS {
        return Err(CodecError::Mismatch {
            what: "rANS probability bits",
            expected: PROB_BITS as u64,
            actual: head[H_PROB_BITS] as u64,
        });
    }
    if head[H_RESERVED] != 0 || head[H_RESERVED + 1] != 0 {
        return Err(CodecError::corrupt("rANS reserved bytes are not zero"));
    }
    let n = u32::from_le_bytes(head[H_N_SYMBOLS..H_N_SYMBOLS + 4].try_into().unwrap());
    if n as usize != expected_len {
        return Err(CodecError::Mismatch {
            what: "rANS symbol count",
            expected: expected_len as u64,
            actual: n as u64,
        });
    }
    let (table, tlen) = FreqTable::read(&stream[H_TABLE..], n)?;
    let offsets_at = (H_TABLE + tlen).next_multiple_of(4);
    if stream
        .get(H_TABLE + tlen..offsets_at)
        .is_some_and(|pad| pad.iter().any(|&b| b != 0))
    {
        return Err(CodecError::corrupt("rANS table padding is not zero"));
    }
    let n_sub = expected_len.div_ceil(SUB_BLOCK);
    let data_offset = offsets_at + 4 * n_sub;
    let off_bytes = stream
        .get(offsets_at..data_offset)
        .ok_or(CodecError::corrupt("rANS offsets truncated"))?;
    let data = &stream[data_offset..];
    let mut offsets = Vec::with_capacity(n_sub);
    let mut prev = 0u32;
    for c in off_bytes.chunks_exact(4) {
        let end = u32::from_le_bytes(c.try_into().unwrap());
        if end < prev.saturating_add(STATES_BYTES as u32) || end as usize > data.len() || end % 2 != 0 {
            return Err(CodecError::corrupt("rANS sub-block offsets out of order or bounds"));
        }
        offsets.push(end);
        prev = end;
    }
    if prev as usize != data.len() {
        return Err(CodecError::Mismatch {
            what: "rANS stream length",
            expected: prev as u64,
            actual: data.len() as u64,
        });
    }
    Ok(Parsed {
        n_symbols: n as usize,
        table,
        offsets,
        data,
        data_offset,
    })
}

/// Splits a sub-block into its initial lane states and its word bytes.
fn prologue(block: &[u8]) -> Result<([u32; LANES], &[u8]), CodecError> {
    if block.len() < STATES_BYTES {
        return Err(CodecError::corrupt("rANS sub-block shorter than its state prologue"));
    }
    let (states, words) = block.split_at(STATES_BYTES);
    let mut st = [0u32; LANES];
    for (x, c) in st.iter_mut().zip(states.chunks_exact(4)) {
        *x = u32::from_le_bytes(c.try_into().unwrap());
        if *x < STATE_LOW {
            return Err(CodecError::corrupt("rANS initial state below the normalised range"));
        }
    }
    Ok((st, words))
}

/// Decodes symbols `done..` with the scalar loop (words from `pos`), then proves the
/// sub-block ended where the encoder started: every word consumed, every lane at
/// `STATE_LOW`.
fn finish(
    dtab: &[u32],
    st: &mut [u32; LANES],
    words: &[u8],
    out: &mut [u8],
    done: usize,
    mut pos: usize,
) -> Result<(), CodecError> {
    let n_words = words.len() / 2;
    let mask = PROB_SCALE - 1;
    let word = |p: usize| -> u32 {
        match words.get(2 * p..2 * p + 2) {
            Some(w) => u16::from_le_bytes([w[0], w[1]]) as u32,
            None => 0,
        }
    };
    let mut groups = out[done..].chunks_exact_mut(LANES);
    for group in &mut groups {
        for (lane, o) in group.iter_mut().enumerate() {
            let mut x = st[lane];
            let e = dtab[(x & mask) as usize];
            *o = (e >> 24) as u8;
            x = ((e & 0xfff) + 1) * (x >> PROB_BITS) + ((e >> 12) & 0xfff);
            let w = word(pos);
            let need = x < STATE_LOW;
            x = if need { (x << WORD_BITS) | w } else { x };
            pos += need as usize;
            st[lane] = x;
        }
    }
    for (lane, o) in groups.into_remainder().iter_mut().enumerate() {
        let mut x = st[lane];
        let e = dtab[(x & mask) as usize];
        *o = (e >> 24) as u8;
        x = ((e & 0xfff) + 1) * (x >> PROB_BITS) + ((e >> 12) & 0xfff);
        if x < STATE_LOW {
            x = (x << WORD_BITS) | word(pos);
            pos += 1;
        }
        st[lane] = x;
    }
    // Words beyond the stream read as zero above; catch that here, and any other drift.
    // The sub-block is padded to 4 bytes with at most one zero word.
    let padded = pos == n_words || (pos + 1 == n_words && pos % 2 == 1 && word(pos) == 0);
    if !padded || words.len() % 2 != 0 || st.iter().any(|&x| x != STATE_LOW) {
        return Err(CodecError::corrupt("rANS sub-block did not end in its initial state"));
    }
    Ok(())
}

/// Whether the SIMD group loops run: AVX2 in the decoder and the encoder on x86_64, NEON in
/// the decoder on aarch64 (`DCFS_NO_SIMD=1` forces the scalar paths, for comparisons).
fn use_simd() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| simd_available() && std::env::var_os("DCFS_NO_SIMD").is_none())
}

#[cfg(target_arch = "x86_64")]
fn simd_available() -> bool {
    super::rans_avx2::available()
}

#[cfg(target_arch = "aarch64")]
fn simd_available() -> bool {
    super::rans_neon::available()
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn simd_available() -> bool {
    false
}

/// The decode path this process uses: "avx2", "neon" or "scalar".
pub fn decode_path() -> &'static str {
    match (use_simd(), cfg!(target_arch = "aarch64")) {
        (false, _) => "scalar",
        (true, true) => "neon",
        (true, false) => "avx2",
    }
}

/// Decodes one sub-block, or two independent ones side by side (`b`), which lets the SIMD
/// path overlap their latencies.
fn decode_blocks(
    dtab: &[u32],
    a: (&[u8], &mut [u8]),
    b: Option<(&[u8], &mut [u8])>,
    simd: bool,
) -> Result<(), CodecError> {
    if dtab.len() != PROB_SCALE as usize {
        return Err(CodecError::corrupt("rANS decode table has the wrong size"));
    }
    let (mut sa, wa) = prologue(a.0)?;
    let mut b = match b {
        Some((blk, out)) => {
            let (st, w) = prologue(blk)?;
            Some((st, w, out))
        }
        None => None,
    };
    let (mut done_a, mut pos_a, mut done_b, mut pos_b) = (0, 0, 0, 0);
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    if simd {
        #[cfg(target_arch = "x86_64")]
        use super::rans_avx2::{decode_groups, Lane};
        #[cfg(target_arch = "aarch64")]
        use super::rans_neon::{decode_groups, Lane};
        let mut la = Lane {
            states: &mut sa,
            words: wa,
            out: &mut *a.1,
            done: 0,
            pos: 0,
        };
        let mut lb = b.as_mut().map(|(st, w, out)| Lane {
            states: st,
            words: w,
            out,
            done: 0,
            pos: 0,
        });
        // SAFETY: `simd` is true only when `simd_available` found AVX2 and POPCNT (x86_64)
        // or NEON (aarch64).
        unsafe { decode_groups(dtab, &mut la, lb.as_mut()) };
        (done_a, pos_a) = (la.done, la.pos);
        if let Some(lb) = lb {
            (done_b, pos_b) = (lb.done, lb.pos);
        }
    }
    finish(dtab, &mut sa, wa, a.1, done_a, pos_a)?;
    if let Some((mut st, w, out)) = b {
        finish(dtab, &mut st, w, out, done_b, pos_b)?;
    }
    Ok(())
}

/// Decodes one sub-block: `out.len()` symbols from `block` (states then words).
pub fn decode_sub_block(dtab: &[u32], block: &[u8], out: &mut [u8]) -> Result<(), CodecError> {
    decode_blocks(dtab, (block, out), None, use_simd())
}

/// Decodes a whole stream into `out`, whose length is the expected symbol count.
pub fn decode(stream: &[u8], out: &mut [u8]) -> Result<(), CodecError> {
    decode_impl(stream, out, use_simd())
}

/// The decoder, with the SIMD group loop (`simd`, which must only be true when
/// `simd_available`) or the scalar one; both give the same bytes and the same verdicts.
pub(super) fn decode_impl(stream: &[u8], out: &mut [u8], simd: bool) -> Result<(), CodecError> {
    let simd = simd && simd_available();
    let p = parse(stream, out.len())?;
    if p.n_symbols == 0 {
        return Ok(());
    }
    let dtab = p.table.decode_table();
    for (k, pair) in out.chunks_mut(2 * SUB_BLOCK).enumerate() {
        if pair.len() > SUB_BLOCK {
            let (a, b) = pair.split_at_mut(SUB_BLOCK);
            decode_blocks(&dtab, (p.sub_block(2 * k), a), Some((p.sub_block(2 * k + 1), b)), simd)?;
        } else {
            decode_blocks(&dtab, (p.sub_block(2 * k), pair), None, simd)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(data: &[u8]) -> usize {
        let mut enc = Vec::new();
        encode(data, &mut enc);
        let mut dec = vec![0u8; data.len()];
        decode(&enc, &mut dec).unwrap();
        assert_eq!(dec, data);
        enc.len()
    }

    use crate::test_rng as rng;

    #[test]
    fn empty_and_single_symbols() {
        assert!(roundtrip(&[]) < 64);
        roundtrip(&[7]);
        roundtrip(&[0u8; 1000]);
        // A one-symbol plane needs no words at all: only the state prologue.
        let n = roundtrip(&[0xAB; 3 * SUB_BLOCK + 5]);
        assert!(n < 4 * (STATES_BYTES + 8) + 64, "{n}");
    }

    #[test]
    fn all_symbols_and_odd_lengths() {
        for len in [
            1,
            31,
            32,
            33,
            255,
            256,
            1000,
            SUB_BLOCK - 1,
            SUB_BLOCK,
            SUB_BLOCK + 1,
            2 * SUB_BLOCK + 17,
        ] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 3) as u8).collect();
            roundtrip(&data);
        }
    }

    #[test]
    fn max_skew() {
        // One symbol dominates, 255 others appear exactly once: every rare one gets freq 1.
        let mut data = vec![0u8; 200_000];
        for s in 1..=255u8 {
            data[s as usize * 700] = s;
        }
        roundtrip(&data);
        let t = FreqTable::from_counts(&histogram(&data));
        assert_eq!(t.freq.iter().sum::<u32>(), PROB_SCALE);
        assert_eq!(t.freq[0], PROB_SCALE - 255);
    }

    #[test]
    fn random_uniform_and_geometric() {
        let mut r = rng(42);
        let uni: Vec<u8> = (0..300_000).map(|_| r() as u8).collect();
        let n = roundtrip(&uni);
        assert!(n < uni.len() + uni.len() / 100, "uniform overhead too big: {n}");
        let geo: Vec<u8> = (0..300_000).map(|_| (r() | 1 << 40).trailing_zeros() as u8).collect();
        let n = roundtrip(&geo);
        let bound = entropy_bits(&histogram(&geo)) / 8.0;
        assert!((n as f64) < bound * 1.01 + 2000.0, "geometric: {n} vs bound {bound}");
    }

    /// The AVX2 encoder writes exactly the scalar encoder's bytes, on skewed, uniform,
    /// one-symbol, max-skew and odd-length planes.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vector_encoder_is_byte_identical_to_scalar() {
        if !super::super::rans_avx2::available() {
            eprintln!("SKIP vector encoder test: this CPU has no AVX2");
            return;
        }
        let mut r = rng(5);
        let mut planes: Vec<Vec<u8>> = vec![
            vec![],
            vec![9; 100],
            vec![0xAB; SUB_BLOCK + 64],
            (0..SUB_BLOCK * 2 + 77).map(|_| r() as u8).collect(),
            (0..200_003).map(|_| (r() | 1 << 40).trailing_zeros() as u8).collect(),
            (0..150_000).map(|_| ((r() % 7) * (r() % 5)) as u8).collect(),
        ];
        let mut skew = vec![0u8; 300_000];
        for s in 1..=255u8 {
            skew[s as usize * 1100] = s;
        }
        planes.push(skew);
        for len in [31, 32, 33, 64, 65, 1000] {
            planes.push((0..len).map(|i| (i * 7 + i / 3) as u8).collect());
        }
        for p in &planes {
            let t = FreqTable::from_counts(&histogram(p));
            let (mut a, mut b) = (Vec::new(), Vec::new());
            encode_impl(p, &t, &mut a, false);
            encode_impl(p, &t, &mut b, true);
            assert!(a == b, "len {}: vector and scalar streams differ", p.len());
            let mut dec = vec![0u8; p.len()];
            decode(&b, &mut dec).unwrap();
            assert_eq!(&dec, p);
        }
    }

    #[test]
    fn hostile_streams_never_panic() {
        let mut r = rng(7);
        let data: Vec<u8> = (0..70_000).map(|_| (r() % 13) as u8).collect();
        let mut enc = Vec::new();
        encode(&data, &mut enc);
        let mut out = vec![0u8; data.len()];
        for _ in 0..1500 {
            let i = (r() % enc.len() as u64) as usize;
            let mut bad = enc.clone();
            bad[i] ^= 1 << (r() % 8);
            // Either an error, or (the flip hit padding) the right bytes: never a panic.
            if decode(&bad, &mut out).is_ok() {
                continue;
            }
        }
        for cut in [0, 1, 7, 8, 40, enc.len() / 2, enc.len() - 1] {
            assert!(decode(&enc[..cut], &mut out).is_err());
        }
        let mut short = vec![0u8; data.len() - 1];
        assert!(decode(&enc, &mut short).is_err());
    }
}
