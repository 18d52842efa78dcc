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

/// Decodes as many whole groups of 32 symbols as can be done without reading past
/// `words`; returns (symbols decoded, words consumed). `states` are updated in place.
///
/// # Safety
/// The CPU must support AVX2 ([`available`]) and `dtab` must hold `PROB_SCALE` entries.
#[target_feature(enable = "avx2")]
pub unsafe fn decode_groups(dtab: &[u32], states: &mut [u32; LANES], words: &[u8], out: &mut [u8]) -> (usize, usize) {
    assert_eq!(dtab.len(), PROB_SCALE as usize);
    let n_words = words.len() / 2;
    let groups = out.len() / LANES;
    let mut pos = 0usize;
    let mut g = 0usize;
    // SAFETY (whole block): loads/stores below stay inside `states` (32 u32), `out`
    // (g < groups keeps 32 bytes in bounds), `words` (pos + 32 <= n_words before a group,
    // and a group consumes at most 32 words, 8 per vector) and `dtab` (indices are masked
    // to PROB_SCALE - 1).
    unsafe {
        let mut st = [
            _mm256_loadu_si256(states.as_ptr().cast()),
            _mm256_loadu_si256(states.as_ptr().add(8).cast()),
            _mm256_loadu_si256(states.as_ptr().add(16).cast()),
            _mm256_loadu_si256(states.as_ptr().add(24).cast()),
        ];
        let mask = _mm256_set1_epi32((PROB_SCALE - 1) as i32);
        let low12 = _mm256_set1_epi32(0xfff);
        let one = _mm256_set1_epi32(1);
        let zero = _mm256_setzero_si256();
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        let base = dtab.as_ptr() as *const i32;
        while g < groups && pos + LANES <= n_words {
            let mut syms = [zero; 4];
            for v in 0..4 {
                let x = st[v];
                let e = _mm256_i32gather_epi32::<4>(base, _mm256_and_si256(x, mask));
                syms[v] = _mm256_srli_epi32::<24>(e);
                let f = _mm256_add_epi32(_mm256_and_si256(e, low12), one);
                let bias = _mm256_and_si256(_mm256_srli_epi32::<12>(e), low12);
                let x = _mm256_add_epi32(
                    _mm256_mullo_epi32(f, _mm256_srli_epi32::<{ PROB_BITS as i32 }>(x)),
                    bias,
                );
                let need = _mm256_cmpeq_epi32(_mm256_srli_epi32::<16>(x), zero);
                let m = _mm256_movemask_ps(_mm256_castsi256_ps(need)) as usize;
                let w = _mm256_cvtepu16_epi32(_mm_loadu_si128(words.as_ptr().add(2 * pos).cast()));
                let w = _mm256_permutevar8x32_epi32(w, _mm256_loadu_si256(PERM[m].as_ptr().cast()));
                let renorm = _mm256_or_si256(_mm256_slli_epi32::<16>(x), w);
                st[v] = _mm256_blendv_epi8(x, renorm, need);
                pos += m.count_ones() as usize;
            }
            let p01 = _mm256_packus_epi32(syms[0], syms[1]);
            let p23 = _mm256_packus_epi32(syms[2], syms[3]);
            let bytes = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(p01, p23), order);
            _mm256_storeu_si256(out.as_mut_ptr().add(g * LANES).cast(), bytes);
            g += 1;
        }
        for (v, s) in st.iter().enumerate() {
            _mm256_storeu_si256(states.as_mut_ptr().add(8 * v).cast(), *s);
        }
    }
    (g * LANES, pos)
}

#[cfg(test)]
mod tests {
    #[test]
    fn permutation_table_hands_words_out_in_lane_order() {
        let t = &super::PERM[0b1010_0110];
        assert_eq!((t[1], t[2], t[5], t[7]), (0, 1, 2, 3));
    }
}
