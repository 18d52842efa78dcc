//! AVX2 decoding of whole 32-symbol groups: four vectors of eight lanes each, the same
//! arithmetic as the scalar loop, and the shared word stream handed out in ascending
//! lane order by a permutation looked up from the renormalisation mask. It reproduces the
//! scalar (and GPU) consumption order exactly, so the streams are interchangeable.

use std::arch::x86_64::*;

use super::rans_layout::{LANES, PROB_BITS, PROB_SCALE};

/// For each 8-bit mask of lanes needing a word: the index of each lane's word among the
/// words loaded for the vector (lanes without a bit take word 0 and ignore it).
static PERM: [[u32; 8]; 256] = {
    let mut t = [[0u32; 8]; 256];
    let mut m = 0;
    while m < 256 {
        let mut i = 0;
        let mut k = 0;
        while i < 8 {
            if m & (1 << i) != 0 {
                t[m][i] = k;
                k += 1;
            }
            i += 1;
        }
        m += 1;
    }
    t
};

/// Whether this CPU can run [`decode_groups`].
pub fn available() -> bool {
    std::is_x86_feature_detected!("avx2")
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
/// The CPU must support AVX2 ([`available`]).
#[target_feature(enable = "avx2")]
pub unsafe fn decode_groups(dtab: &[u32], a: &mut Lane<'_>, b: Option<&mut Lane<'_>>) {
    assert_eq!(dtab.len(), PROB_SCALE as usize);
    // SAFETY (whole block): every `group` call is preceded by `can_step`, which keeps its
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

#[cfg(test)]
mod tests {
    #[test]
    fn permutation_table_hands_words_out_in_lane_order() {
        let t = &super::PERM[0b1010_0110];
        assert_eq!((t[1], t[2], t[5], t[7]), (0, 1, 2, 3));
    }
}
