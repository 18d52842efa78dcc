//! NEON decoding of whole 32-symbol groups: eight vectors of four lanes each, the same
//! arithmetic as the scalar loop, and the shared word stream handed out in ascending lane
//! order by a byte shuffle looked up from the renormalisation mask. It mirrors
//! `rans_avx2`'s decoder step for step (NEON has no gather, so the table lookup is four
//! scalar loads per vector) and consumes words in exactly the scalar (and GPU) order, so
//! the streams are interchangeable. Encoding stays scalar on aarch64.

use std::arch::aarch64::*;

use super::rans_layout::{LANES, PROB_BITS, PROB_SCALE, STATE_LOW, WORD_BITS};

/// u32 lanes per NEON vector, and vectors per group.
const W: usize = 4;
const VECS: usize = LANES / W;
const _: () = assert!(LANES % W == 0 && WORD_BITS == 16 && STATE_LOW == 1 << 16);

/// For each 4-bit mask of lanes needing a word: a `vqtbl1q_u8` index that puts the k-th
/// loaded little-endian u16 word (bytes `2k, 2k+1`) into the low half of the k-th set lane
/// and zeroes everything else (index 0xff is out of range, which reads as zero).
static SHUF: [[u8; 16]; 16] = shuffle_table();

const fn shuffle_table() -> [[u8; 16]; 16] {
    let mut t = [[0xffu8; 16]; 16];
    let mut m = 0;
    while m < 16 {
        let mut k = 0;
        let mut i = 0;
        while i < W {
            if m & (1 << i) != 0 {
                t[m][4 * i] = 2 * k as u8;
                t[m][4 * i + 1] = 2 * k as u8 + 1;
                k += 1;
            }
            i += 1;
        }
        m += 1;
    }
    t
}

/// Whether this CPU can run [`decode_groups`]. NEON is part of the aarch64 baseline, but
/// the dispatch asks anyway so it never assumes a feature it did not check.
pub fn available() -> bool {
    std::arch::is_aarch64_feature_detected!("neon")
}

/// Constants of the group step, built once per call.
#[derive(Clone, Copy)]
struct K {
    mask: uint32x4_t,
    low12: uint32x4_t,
    one: uint32x4_t,
    /// Lane i holds `1 << i`: summed under the need mask, it gives the 4-bit mask.
    bits: uint32x4_t,
}

/// The table lookup NEON lacks a gather for: `dtab[x & (PROB_SCALE - 1)]` per lane.
///
/// # Safety
/// NEON; `dtab` has `PROB_SCALE` entries.
#[inline(always)]
unsafe fn lookup(k: K, dtab: *const u32, x: uint32x4_t) -> uint32x4_t {
    // SAFETY: every index is masked below PROB_SCALE, the length the caller guarantees.
    unsafe {
        let i = vandq_u32(x, k.mask);
        let e = [
            *dtab.add(vgetq_lane_u32::<0>(i) as usize),
            *dtab.add(vgetq_lane_u32::<1>(i) as usize),
            *dtab.add(vgetq_lane_u32::<2>(i) as usize),
            *dtab.add(vgetq_lane_u32::<3>(i) as usize),
        ];
        vld1q_u32(e.as_ptr())
    }
}

/// One decode step for four lanes: returns the new states and the symbols (as u32), and
/// adds the words consumed to `used`.
///
/// # Safety
/// NEON; `dtab` has `PROB_SCALE` entries; `words` has 4 readable u16 at `*used`.
#[inline(always)]
unsafe fn step(k: K, dtab: *const u32, x: uint32x4_t, words: *const u8, used: &mut usize) -> (uint32x4_t, uint32x4_t) {
    // SAFETY: guaranteed by the caller as documented above.
    unsafe {
        let e = lookup(k, dtab, x);
        let sym = vshrq_n_u32::<24>(e);
        let f = vaddq_u32(vandq_u32(e, k.low12), k.one);
        let bias = vandq_u32(vshrq_n_u32::<12>(e), k.low12);
        // x' = f * (x >> PROB_BITS) + bias, in wrapping 32-bit arithmetic like the scalar loop.
        let x = vmlaq_u32(bias, f, vshrq_n_u32::<{ PROB_BITS as i32 }>(x));
        let need = vceqzq_u32(vshrq_n_u32::<16>(x));
        let m = vaddvq_u32(vandq_u32(need, k.bits)) as usize;
        let raw = vcombine_u8(vld1_u8(words.add(2 * *used)), vdup_n_u8(0));
        let w = vreinterpretq_u32_u8(vqtbl1q_u8(raw, vld1q_u8(SHUF[m].as_ptr())));
        let x = vbslq_u32(need, vorrq_u32(vshlq_n_u32::<16>(x), w), x);
        *used += m.count_ones() as usize;
        (x, sym)
    }
}

/// One group of 32 symbols for one lane set. Returns the words consumed.
///
/// # Safety
/// NEON; `dtab` has `PROB_SCALE` entries; `words` has 32 readable u16; `out` has 32
/// writable bytes.
#[inline(always)]
unsafe fn group(k: K, dtab: *const u32, st: &mut [uint32x4_t; VECS], words: *const u8, out: *mut u8) -> usize {
    // SAFETY: guaranteed by the caller. Vector v reads 4 words at `used`, which is at most
    // 4v after v vectors, so the last read ends at word 32.
    unsafe {
        let mut used = 0usize;
        let mut syms = [vdupq_n_u32(0); VECS];
        for v in 0..VECS {
            (st[v], syms[v]) = step(k, dtab, st[v], words, &mut used);
        }
        store_symbols(&syms, out);
        used
    }
}

/// Narrows 32 u32 symbols (each below 256) to bytes in lane order and stores them.
///
/// # Safety
/// NEON; `out` has 32 writable bytes.
#[inline(always)]
unsafe fn store_symbols(syms: &[uint32x4_t; VECS], out: *mut u8) {
    // SAFETY: two 16-byte stores at `out` and `out + 16`, inside the caller's 32 bytes.
    unsafe {
        let half = |a: uint32x4_t, b: uint32x4_t| vmovn_u16(vcombine_u16(vmovn_u32(a), vmovn_u32(b)));
        vst1q_u8(out, vcombine_u8(half(syms[0], syms[1]), half(syms[2], syms[3])));
        vst1q_u8(out.add(16), vcombine_u8(half(syms[4], syms[5]), half(syms[6], syms[7])));
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

    /// Decodes one group at the current position.
    ///
    /// # Safety
    /// NEON; `dtab` has `PROB_SCALE` entries; [`Lane::can_step`] holds.
    #[inline(always)]
    unsafe fn advance(&mut self, k: K, dtab: *const u32, st: &mut [uint32x4_t; VECS]) {
        // SAFETY: `can_step` keeps the 32 output bytes inside `out` and the at most 32
        // words read inside `words`.
        unsafe {
            self.pos += group(
                k,
                dtab,
                st,
                self.words.as_ptr().add(2 * self.pos),
                self.out.as_mut_ptr().add(self.done),
            );
        }
        self.done += LANES;
    }
}

/// Loads 32 lane states into eight vectors.
///
/// # Safety
/// NEON.
#[inline(always)]
unsafe fn load(s: &[u32; LANES]) -> [uint32x4_t; VECS] {
    // SAFETY: eight 4-lane loads inside the 32-entry array.
    unsafe { std::array::from_fn(|v| vld1q_u32(s.as_ptr().add(W * v))) }
}

/// Stores eight vectors back into 32 lane states.
///
/// # Safety
/// NEON.
#[inline(always)]
unsafe fn store(st: &[uint32x4_t; VECS], s: &mut [u32; LANES]) {
    for (v, x) in st.iter().enumerate() {
        // SAFETY: a 4-lane store inside the 32-entry array.
        unsafe { vst1q_u32(s.as_mut_ptr().add(W * v), *x) };
    }
}

/// Decodes whole groups of one or two independent sub-blocks. Two sub-blocks advance in
/// lockstep so their load latencies overlap; each stops where its next group could read
/// past its words, and the scalar loop finishes it.
///
/// # Safety
/// The CPU must support NEON ([`available`]).
#[target_feature(enable = "neon")]
pub unsafe fn decode_groups(dtab: &[u32], a: &mut Lane<'_>, b: Option<&mut Lane<'_>>) {
    assert_eq!(dtab.len(), PROB_SCALE as usize);
    // SAFETY: (whole block) every `advance` is preceded by `can_step`; `dtab` holds
    // PROB_SCALE entries and `lookup` masks indices below that.
    unsafe {
        let bits = [1u32, 2, 4, 8];
        let k = K {
            mask: vdupq_n_u32(PROB_SCALE - 1),
            low12: vdupq_n_u32(0xfff),
            one: vdupq_n_u32(1),
            bits: vld1q_u32(bits.as_ptr()),
        };
        let base = dtab.as_ptr();
        let mut sa = load(a.states);
        if let Some(b) = b {
            let mut sb = load(b.states);
            while a.can_step() && b.can_step() {
                a.advance(k, base, &mut sa);
                b.advance(k, base, &mut sb);
            }
            while b.can_step() {
                b.advance(k, base, &mut sb);
            }
            store(&sb, b.states);
        }
        while a.can_step() {
            a.advance(k, base, &mut sa);
        }
        store(&sa, a.states);
    }
}

#[cfg(test)]
mod tests {
    use super::super::rans::{decode_impl, encode, SUB_BLOCK};

    #[test]
    fn shuffle_table_hands_words_out_in_lane_order() {
        let t = &super::SHUF[0b1010];
        assert_eq!(t[4..6], [0, 1]);
        assert_eq!(t[12..14], [2, 3]);
        assert!(t[..4].iter().chain(&t[6..12]).chain(&t[14..]).all(|&b| b == 0xff));
    }

    use crate::test_rng as rng;

    /// Planes of every shape the format sees: empty, one symbol, uniform, geometric and
    /// small-alphabet skew, the max-skew table (255 symbols at frequency 1), and lengths
    /// around the group and sub-block edges.
    fn planes() -> Vec<Vec<u8>> {
        let mut r = rng(11);
        let mut p: Vec<Vec<u8>> = vec![
            vec![],
            vec![9; 100],
            vec![0xAB; SUB_BLOCK + 64],
            (0..SUB_BLOCK * 3 + 77).map(|_| r() as u8).collect(),
            (0..200_003).map(|_| (r() | 1 << 40).trailing_zeros() as u8).collect(),
            (0..150_000).map(|_| ((r() % 7) * (r() % 5)) as u8).collect(),
        ];
        let mut skew = vec![0u8; 300_000];
        for s in 1..=255u8 {
            skew[s as usize * 1100] = s;
        }
        p.push(skew);
        for len in [
            1,
            31,
            32,
            33,
            63,
            64,
            65,
            1000,
            SUB_BLOCK - 1,
            SUB_BLOCK + 1,
            2 * SUB_BLOCK + 17,
        ] {
            p.push((0..len).map(|i| (i * 7 + i / 3) as u8).collect());
        }
        p
    }

    /// The NEON decoder gives the scalar decoder's bytes on every plane shape.
    #[test]
    fn neon_decoder_is_bit_exact_with_scalar() {
        if !super::available() {
            eprintln!("SKIP NEON decoder test: this CPU has no NEON");
            return;
        }
        for p in planes() {
            let mut enc = Vec::new();
            encode(&p, &mut enc);
            let (mut s, mut v) = (vec![0u8; p.len()], vec![1u8; p.len()]);
            decode_impl(&enc, &mut s, false).unwrap();
            decode_impl(&enc, &mut v, true).unwrap();
            assert!(s == p, "len {}: scalar decode wrong", p.len());
            assert!(v == s, "len {}: NEON and scalar decodes differ", p.len());
        }
    }

    /// On damaged streams the NEON path fails exactly when the scalar one does, and where
    /// both succeed (a flip in padding) they give the same bytes.
    #[test]
    fn neon_decoder_agrees_with_scalar_on_damaged_streams() {
        if !super::available() {
            eprintln!("SKIP NEON damaged-stream test: this CPU has no NEON");
            return;
        }
        let mut r = rng(3);
        let data: Vec<u8> = (0..2 * SUB_BLOCK + 500).map(|_| (r() % 13) as u8).collect();
        let mut enc = Vec::new();
        encode(&data, &mut enc);
        let (mut s, mut v) = (vec![0u8; data.len()], vec![0u8; data.len()]);
        for _ in 0..300 {
            let mut bad = enc.clone();
            let i = (r() % bad.len() as u64) as usize;
            bad[i] ^= 1 << (r() % 8);
            let (a, b) = (decode_impl(&bad, &mut s, false), decode_impl(&bad, &mut v, true));
            assert_eq!(a, b, "byte {i}: the two decoders disagree on the verdict");
            if a.is_ok() {
                assert!(s == v, "byte {i}: the two decoders disagree on the bytes");
            }
        }
    }
}
