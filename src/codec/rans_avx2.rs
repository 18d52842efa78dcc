//! AVX2 decoding of whole 32-symbol groups: four vectors of eight lanes each, the same
//! arithmetic as the scalar loop, and the shared word stream handed out in ascending
//! lane order by a permutation looked up from the renormalisation mask. It reproduces the
//! scalar (and GPU) consumption order exactly, so the streams are interchangeable. The
//! encoder runs the same groups backwards and writes exactly the scalar encoder's bytes.

use std::arch::x86_64::*;

use super::rans_layout::{LANES, PROB_BITS, PROB_SCALE, STATE_LOW, WORD_BITS};

// The encoder's flush bound `f << 20` below is the scalar encoder's
// `((STATE_LOW >> PROB_BITS) << WORD_BITS) * f` with today's constants.
const _: () = assert!((STATE_LOW >> PROB_BITS) << WORD_BITS == 1 << 20);

/// For each 8-bit mask of lanes needing a word: the index of each lane's word among the
/// words loaded for the vector (lanes without a bit take word 0 and ignore it).
static PERM: [[u32; 8]; 256] = lane_tables(false);

/// The two permutation tables, built at compile time. Scanning the set lanes of mask `m`
/// (ascending, or descending for `compress`), the k-th lane `i` gives `t[m][i] = k` (expand:
/// which loaded word a lane takes) or `t[m][k] = i` (compress: which lane's word goes k-th).
const fn lane_tables(compress: bool) -> [[u32; 8]; 256] {
    let mut t = [[0u32; 8]; 256];
    let mut m = 0;
    while m < 256 {
        let mut k = 0;
        let mut j = 0;
        while j < 8 {
            let i = if compress { 7 - j } else { j };
            if m & (1 << i) != 0 {
                if compress {
                    t[m][k] = i as u32;
                } else {
                    t[m][i] = k as u32;
                }
                k += 1;
            }
            j += 1;
        }
        m += 1;
    }
    t
}

/// Whether this CPU can run [`decode_groups`] and [`encode_groups`] (AVX2, and POPCNT for
/// the word counts: without it `count_ones` is a dozen instructions on the critical path).
pub fn available() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("popcnt")
}

/// Constants of the group step, built once per call.
#[derive(Clone, Copy)]
struct K {
    mask: __m256i,
    low12: __m256i,
    one: __m256i,
    zero: __m256i,
    order: __m256i,
}

/// One group of 32 symbols for one lane set: four vectors of eight lanes, words handed out
/// in lane order. Returns the words consumed.
///
/// # Safety
/// AVX2; `dtab` has `PROB_SCALE` entries; `words` has 32 readable u16 at `pos`; `out` has
/// 32 writable bytes.
#[inline(always)]
unsafe fn group(k: K, dtab: *const i32, st: &mut [__m256i; 4], words: *const u8, out: *mut u8) -> usize {
    // SAFETY: guaranteed by the caller as documented above.
    unsafe {
        let mut syms = [k.zero; 4];
        let mut used = 0usize;
        for v in 0..4 {
            let x = st[v];
            let e = _mm256_i32gather_epi32::<4>(dtab, _mm256_and_si256(x, k.mask));
            syms[v] = _mm256_srli_epi32::<24>(e);
            let f = _mm256_add_epi32(_mm256_and_si256(e, k.low12), k.one);
            let bias = _mm256_and_si256(_mm256_srli_epi32::<12>(e), k.low12);
            let x = _mm256_add_epi32(
                _mm256_mullo_epi32(f, _mm256_srli_epi32::<{ PROB_BITS as i32 }>(x)),
                bias,
            );
            let need = _mm256_cmpeq_epi32(_mm256_srli_epi32::<16>(x), k.zero);
            let m = _mm256_movemask_ps(_mm256_castsi256_ps(need)) as usize;
            let w = _mm256_cvtepu16_epi32(_mm_loadu_si128(words.add(2 * used).cast()));
            let w = _mm256_permutevar8x32_epi32(w, _mm256_loadu_si256(PERM[m].as_ptr().cast()));
            st[v] = _mm256_blendv_epi8(x, _mm256_or_si256(_mm256_slli_epi32::<16>(x), w), need);
            used += m.count_ones() as usize;
        }
        let p01 = _mm256_packus_epi32(syms[0], syms[1]);
        let p23 = _mm256_packus_epi32(syms[2], syms[3]);
        _mm256_storeu_si256(
            out.cast(),
            _mm256_permutevar8x32_epi32(_mm256_packus_epi16(p01, p23), k.order),
        );
        used
    }
}

/// One sub-block's decoding state as the SIMD loops see it.
pub struct Lane<'a> {
    pub states: &'a mut [u32; LANES],
    pub words: &'a [u8],
    pub out: &'a mut [u8],
    /// Symbols decoded and words consumed so far.
    pub done: usize,
    pub pos: usize,
}

impl Lane<'_> {
    /// Whether one more whole group fits without reading past the words.
    fn can_step(&self) -> bool {
        self.done + LANES <= self.out.len() && self.pos + LANES <= self.words.len() / 2
    }
}

/// Decodes whole groups of one or two independent sub-blocks. Two sub-blocks advance in
/// lockstep so their gather latencies overlap; each stops where its next group could read
/// past its words, and the scalar loop finishes it.
///
/// # Safety
/// The CPU must support AVX2 and POPCNT ([`available`]).
#[target_feature(enable = "avx2,popcnt")]
pub unsafe fn decode_groups(dtab: &[u32], a: &mut Lane<'_>, b: Option<&mut Lane<'_>>) {
    assert_eq!(dtab.len(), PROB_SCALE as usize);
    // SAFETY: (whole block) every `group` call is preceded by `can_step`, which keeps its
    // 32 output bytes inside `out` and its at most 32 words inside `words`; `dtab` holds
    // PROB_SCALE entries and indices are masked below that.
    unsafe {
        let k = K {
            mask: _mm256_set1_epi32((PROB_SCALE - 1) as i32),
            low12: _mm256_set1_epi32(0xfff),
            one: _mm256_set1_epi32(1),
            zero: _mm256_setzero_si256(),
            order: _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7),
        };
        let load = |s: &[u32; LANES]| {
            [
                _mm256_loadu_si256(s.as_ptr().cast()),
                _mm256_loadu_si256(s.as_ptr().add(8).cast()),
                _mm256_loadu_si256(s.as_ptr().add(16).cast()),
                _mm256_loadu_si256(s.as_ptr().add(24).cast()),
            ]
        };
        let store = |st: &[__m256i; 4], s: &mut [u32; LANES]| {
            for (v, x) in st.iter().enumerate() {
                _mm256_storeu_si256(s.as_mut_ptr().add(8 * v).cast(), *x);
            }
        };
        let base = dtab.as_ptr() as *const i32;
        let mut sa = load(a.states);
        if let Some(b) = b {
            let mut sb = load(b.states);
            while a.can_step() && b.can_step() {
                a.pos += group(
                    k,
                    base,
                    &mut sa,
                    a.words.as_ptr().add(2 * a.pos),
                    a.out.as_mut_ptr().add(a.done),
                );
                b.pos += group(
                    k,
                    base,
                    &mut sb,
                    b.words.as_ptr().add(2 * b.pos),
                    b.out.as_mut_ptr().add(b.done),
                );
                a.done += LANES;
                b.done += LANES;
            }
            while b.can_step() {
                b.pos += group(
                    k,
                    base,
                    &mut sb,
                    b.words.as_ptr().add(2 * b.pos),
                    b.out.as_mut_ptr().add(b.done),
                );
                b.done += LANES;
            }
            store(&sb, b.states);
        }
        while a.can_step() {
            a.pos += group(
                k,
                base,
                &mut sa,
                a.words.as_ptr().add(2 * a.pos),
                a.out.as_mut_ptr().add(a.done),
            );
            a.done += LANES;
        }
        store(&sa, a.states);
    }
}

/// For each 8-bit mask of lanes that flush: the lanes in descending order, packed to the
/// front. The encoder runs backwards, so descending here is ascending for the decoder.
static PERM_DESC: [[u32; 8]; 256] = lane_tables(true);

/// Per-symbol parameters of [`encode_groups`].
pub struct EncTable {
    /// `cum << 12 | (freq - 1)`, the same packing as the decode table's entries.
    packed: [u32; 256],
}

impl EncTable {
    /// Built from a frequency table; symbols with frequency 0 must not occur in the data.
    pub fn new(freq: &[u32; 256], cum: &[u32; 256]) -> EncTable {
        let mut t = EncTable { packed: [0; 256] };
        for s in 0..256 {
            if freq[s] > 0 {
                t.packed[s] = cum[s] << 12 | (freq[s] - 1);
            }
        }
        t
    }
}

/// Constants of [`quotient`].
#[derive(Clone, Copy)]
struct QK {
    low16: __m256i,
    one: __m256i,
    two16: __m256,
}

/// `x / f` per lane, exact, for 32-bit `x` and `1 <= f <= PROB_SCALE` with `x / f < 2^22`
/// (the encoder's states give `x / f < 2^20`). A single-precision division is within 0.5 of
/// the true quotient there (two roundings of 2^-24 each on a value below 2^22), so its
/// truncation is off by at most one, and one remainder check each way fixes it. One
/// division beats two 64-bit gathers of reciprocals.
///
/// # Safety
/// AVX2.
#[inline(always)]
unsafe fn quotient(x: __m256i, f: __m256i, k: QK) -> __m256i {
    // SAFETY: register-only AVX2 arithmetic, guaranteed by the caller.
    unsafe {
        // x as float with one rounding: both 16-bit halves convert exactly, and so does the
        // scaling of the high half; only the sum rounds.
        let hi = _mm256_cvtepi32_ps(_mm256_srli_epi32::<16>(x));
        let lo = _mm256_cvtepi32_ps(_mm256_and_si256(x, k.low16));
        let fx = _mm256_add_ps(_mm256_mul_ps(hi, k.two16), lo);
        let q = _mm256_cvttps_epi32(_mm256_div_ps(fx, _mm256_cvtepi32_ps(f)));
        // r = x - q f in wrapping 32-bit arithmetic is exact, in [-f, 2f).
        let r = _mm256_sub_epi32(x, _mm256_mullo_epi32(q, f));
        let low = _mm256_cmpgt_epi32(_mm256_setzero_si256(), r);
        let high = _mm256_cmpgt_epi32(r, _mm256_sub_epi32(f, k.one));
        _mm256_sub_epi32(_mm256_add_epi32(q, low), high)
    }
}

/// Encodes whole groups of [`LANES`] symbols backwards, exactly as the scalar encoder does:
/// the same states, and the same words appended to `words` at `*n_words` in the same order.
/// `words` needs 8 spare entries past the last word written.
///
/// Every symbol of `groups` must have a nonzero frequency in `t`, or the stream is wrong
/// (never out of bounds: the gather index is a byte).
///
/// # Safety
/// The CPU must support AVX2 and POPCNT ([`available`]).
#[target_feature(enable = "avx2,popcnt")]
pub unsafe fn encode_groups(
    t: &EncTable,
    groups: &[u8],
    st: &mut [u32; LANES],
    words: &mut [u16],
    n_words: &mut usize,
) {
    assert_eq!(groups.len() % LANES, 0);
    // Each symbol emits at most one word, and the store writes 8 at a time.
    assert!(*n_words + groups.len() + 8 <= words.len());
    // SAFETY: (whole block) loads and stores stay inside `st`, `groups` (8 bytes at 8v of a
    // 32-byte group) and `words` (8 entries at `n_words`, bounded by the assert above since
    // `n_words` grows by at most one per symbol); gather indices are bytes, below 256.
    unsafe {
        let sign = _mm256_set1_epi32(i32::MIN);
        let low12 = _mm256_set1_epi32(0xfff);
        let low16 = _mm256_set1_epi32(0xffff);
        let one = _mm256_set1_epi32(1);
        let scale = _mm256_set1_epi32(PROB_SCALE as i32);
        let k = QK {
            low16,
            one,
            two16: _mm256_set1_ps(65536.0),
        };
        let packed = t.packed.as_ptr() as *const i32;
        let mut x = [_mm256_setzero_si256(); 4];
        for (v, xv) in x.iter_mut().enumerate() {
            *xv = _mm256_loadu_si256(st.as_ptr().add(8 * v).cast());
        }
        let mut nw = *n_words;
        for g in groups.chunks_exact(LANES).rev() {
            for v in (0..4).rev() {
                let idx = _mm256_cvtepu8_epi32(_mm_loadl_epi64(g.as_ptr().add(8 * v).cast()));
                let e = _mm256_i32gather_epi32::<4>(packed, idx);
                let f = _mm256_add_epi32(_mm256_and_si256(e, low12), one);
                let cum = _mm256_srli_epi32::<12>(e);
                // Flush when x >= f << 20; f << 20 - 1 wraps to u32::MAX at f = M, where
                // a lone symbol never flushes.
                let lim = _mm256_sub_epi32(_mm256_slli_epi32::<20>(f), one);
                let s = x[v];
                let flush = _mm256_cmpgt_epi32(_mm256_xor_si256(s, sign), _mm256_xor_si256(lim, sign));
                let m = _mm256_movemask_ps(_mm256_castsi256_ps(flush)) as usize;
                let w = _mm256_permutevar8x32_epi32(
                    _mm256_and_si256(s, low16),
                    _mm256_loadu_si256(PERM_DESC[m].as_ptr().cast()),
                );
                let w = _mm256_permute4x64_epi64::<0b1000>(_mm256_packus_epi32(w, w));
                _mm_storeu_si128(words.as_mut_ptr().add(nw).cast(), _mm256_castsi256_si128(w));
                nw += m.count_ones() as usize;
                let s = _mm256_blendv_epi8(s, _mm256_srli_epi32::<16>(s), flush);
                let q = quotient(s, f, k);
                // x' = (s / f) * M + s % f + cum = s + cum + q * (M - f)
                let cmpl = _mm256_sub_epi32(scale, f);
                x[v] = _mm256_add_epi32(_mm256_add_epi32(s, cum), _mm256_mullo_epi32(q, cmpl));
            }
        }
        for (v, xv) in x.iter().enumerate() {
            _mm256_storeu_si256(st.as_mut_ptr().add(8 * v).cast(), *xv);
        }
        *n_words = nw;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn permutation_table_hands_words_out_in_lane_order() {
        let t = &super::PERM[0b1010_0110];
        assert_eq!((t[1], t[2], t[5], t[7]), (0, 1, 2, 3));
        let t = &super::PERM_DESC[0b1010_0110];
        assert_eq!(t[..4], [7, 5, 2, 1]);
    }

    /// The vector quotient is exact at every boundary a state can hit: just below, at and
    /// just above each multiple of f, over the encoder's whole range (x < f * 2^20), for
    /// every f.
    #[test]
    fn vector_quotient_is_exact() {
        use std::arch::x86_64::*;
        if !super::available() {
            eprintln!("SKIP vector quotient test: this CPU has no AVX2");
            return;
        }
        let mut xs = Vec::new();
        for f in 1..=super::PROB_SCALE {
            let x_end = ((f as u64) << 20) - 1;
            let q_max = (x_end / f as u64) as u32;
            for q in (0..=q_max).step_by((q_max as usize / 499).max(1)).chain([q_max]) {
                let m = q as u64 * f as u64;
                for x in [m, m + f as u64 - 1, m.saturating_sub(1), m + 1] {
                    xs.push((x.min(x_end) as u32, f));
                }
            }
        }
        for c in xs.chunks(8) {
            let mut x = [0u32; 8];
            let mut f = [1u32; 8];
            for (i, &(a, b)) in c.iter().enumerate() {
                (x[i], f[i]) = (a, b);
            }
            let mut q = [0u32; 8];
            // SAFETY: AVX2 checked above; the arrays hold 8 lanes each.
            unsafe {
                let k = super::QK {
                    low16: _mm256_set1_epi32(0xffff),
                    one: _mm256_set1_epi32(1),
                    two16: _mm256_set1_ps(65536.0),
                };
                let r = super::quotient(
                    _mm256_loadu_si256(x.as_ptr().cast()),
                    _mm256_loadu_si256(f.as_ptr().cast()),
                    k,
                );
                _mm256_storeu_si256(q.as_mut_ptr().cast(), r);
            }
            for i in 0..8 {
                assert_eq!(q[i], x[i] / f[i], "x={} f={}", x[i], f[i]);
            }
        }
    }
}
