//! Byte-plane transforms: regroup the bytes of typed elements so that bytes with the same
//! role (exponent, mantissa, block scale, quant) sit together and an order-0 coder sees
//! their real distribution. Pure functions on slices; the discriminants are on-disk values.

id_enum! {
    /// How a chunk's bytes are regrouped into planes. The ids are on-disk values.
    pub enum Transform {
        /// One plane, the bytes as they are (INT8, FP8, opaque data).
        None = 0 => "none",
        /// 16-bit elements as two planes: low bytes, high bytes.
        Split2 = 1 => "split2",
        /// BF16 as exponent byte + (sign | 7 mantissa bits): the exponent's bits straddle
        /// the two bytes in memory, so this split gives the coder the whole exponent at once.
        Bf16Exp = 2 => "bf16-exp",
        /// 32-bit elements as four byte planes.
        Split4 = 3 => "split4",
        /// F32 as exponent byte, sign | top 7 mantissa bits, then the two low mantissa bytes.
        F32Exp = 4 => "f32-exp",
        /// GGUF Q8_0 blocks (f16 scale + 32 int8): scale low bytes, scale high bytes, quants.
        Q8_0 = 5 => "q8_0-split",
        /// GGUF Q4_0 blocks (f16 scale + 16 nibble bytes).
        Q4_0 = 6 => "q4_0-split",
        /// GGUF Q4_1 blocks (f16 scale, f16 min + 16 nibble bytes).
        Q4_1 = 7 => "q4_1-split",
    }
}

impl Transform {
    /// Bytes per unit the transform works on; chunk lengths must be a multiple of it.
    pub fn unit(self) -> usize {
        use Transform::*;
        match self {
            None => 1,
            Split2 | Bf16Exp => 2,
            Split4 | F32Exp => 4,
            Q8_0 => 34,
            Q4_0 => 18,
            Q4_1 => 20,
        }
    }

    /// For block transforms: how many leading bytes of each block are scale bytes that get
    /// a plane of their own each; the rest of the block is one plane.
    fn block_head(self) -> Option<usize> {
        match self {
            Transform::Q8_0 | Transform::Q4_0 => Some(2),
            Transform::Q4_1 => Some(4),
            _ => Option::None,
        }
    }

    /// Lengths of the planes of a `len`-byte input, or `None` if `len` is not a whole
    /// number of units.
    pub fn plane_lens(self, len: usize) -> Option<Vec<usize>> {
        let unit = self.unit();
        if len % unit != 0 {
            return Option::None;
        }
        let n = len / unit;
        Some(match self.block_head() {
            Some(h) => {
                let mut v = vec![n; h];
                v.push(n * (unit - h));
                v
            }
            Option::None => vec![n; unit],
        })
    }

    /// Splits `data` into planes. Panics if `data.len()` is not a multiple of `unit()`;
    /// callers plan chunks so that it always is.
    pub fn split(self, data: &[u8]) -> Vec<Vec<u8>> {
        let lens = self.plane_lens(data.len()).expect("chunk is a whole number of units");
        // Pre-sized planes written through zipped iterators: no per-byte capacity checks,
        // so the byte shuffles compile to tight (often vectorised) loops.
        let mut planes: Vec<Vec<u8>> = lens.iter().map(|&l| vec![0u8; l]).collect();
        match self {
            Transform::None => planes[0].copy_from_slice(data),
            Transform::Bf16Exp => {
                let (e, sm) = planes.split_at_mut(1);
                for ((p, e), sm) in data.chunks_exact(2).zip(e[0].iter_mut()).zip(sm[0].iter_mut()) {
                    let (lo, hi) = (p[0], p[1]);
                    *e = (hi << 1) | (lo >> 7);
                    *sm = (hi & 0x80) | (lo & 0x7f);
                }
            }
            Transform::F32Exp => {
                let [p0, p1, p2, p3] = &mut planes[..] else {
                    unreachable!("f32-exp has four planes")
                };
                let outs = p0.iter_mut().zip(p1.iter_mut()).zip(p2.iter_mut()).zip(p3.iter_mut());
                for (p, (((a, b), c), d)) in data.chunks_exact(4).zip(outs) {
                    *a = (p[3] << 1) | (p[2] >> 7);
                    *b = (p[3] & 0x80) | (p[2] & 0x7f);
                    *c = p[1];
                    *d = p[0];
                }
            }
            Transform::Split2 => {
                let [p0, p1] = &mut planes[..] else {
                    unreachable!("split2 has two planes")
                };
                for (p, (a, b)) in data.chunks_exact(2).zip(p0.iter_mut().zip(p1.iter_mut())) {
                    *a = p[0];
                    *b = p[1];
                }
            }
            Transform::Split4 => {
                let [p0, p1, p2, p3] = &mut planes[..] else {
                    unreachable!("split4 has four planes")
                };
                let outs = p0.iter_mut().zip(p1.iter_mut()).zip(p2.iter_mut()).zip(p3.iter_mut());
                for (p, (((a, b), c), d)) in data.chunks_exact(4).zip(outs) {
                    *a = p[0];
                    *b = p[1];
                    *c = p[2];
                    *d = p[3];
                }
            }
            Transform::Q8_0 | Transform::Q4_0 | Transform::Q4_1 => {
                let h = self.block_head().unwrap_or(0);
                let unit = self.unit();
                let (heads, tail) = planes.split_at_mut(h);
                for (i, blk) in data.chunks_exact(unit).enumerate() {
                    for (b, plane) in blk[..h].iter().zip(heads.iter_mut()) {
                        plane[i] = *b;
                    }
                    tail[0][i * (unit - h)..(i + 1) * (unit - h)].copy_from_slice(&blk[h..]);
                }
            }
        }
        planes
    }

    /// Inverse of [`split`](Self::split): writes the original bytes into `out`.
    /// The caller guarantees plane lengths match `plane_lens(out.len())`.
    pub fn merge(self, planes: &[&[u8]], out: &mut [u8]) {
        debug_assert_eq!(
            self.plane_lens(out.len()),
            Some(planes.iter().map(|p| p.len()).collect())
        );
        match self {
            Transform::None => out.copy_from_slice(planes[0]),
            Transform::Bf16Exp => {
                for ((o, &e), &sm) in out.chunks_exact_mut(2).zip(planes[0]).zip(planes[1]) {
                    o.copy_from_slice(&bf16_of(e, sm).to_le_bytes());
                }
            }
            Transform::Split2 => {
                for ((o, &a), &b) in out.chunks_exact_mut(2).zip(planes[0]).zip(planes[1]) {
                    o[0] = a;
                    o[1] = b;
                }
            }
            Transform::Split4 => merge4(planes, out, u32::from_le_bytes),
            Transform::F32Exp => merge4(planes, out, |[e, sm, m1, m0]| {
                u32::from(m0) | u32::from(m1) << 8 | u32::from(bf16_of(e, sm)) << 16
            }),
            Transform::Q8_0 => merge_blocks::<2, 32>(planes, out),
            Transform::Q4_0 => merge_blocks::<2, 16>(planes, out),
            Transform::Q4_1 => merge_blocks::<4, 16>(planes, out),
        }
    }
}

/// Merge of a 4-plane transform: `word` turns the i-th byte of each plane into the i-th
/// little-endian word of the output. Zipped iterators and whole-word stores, not indexing: no bounds checks,
/// and the loop vectorizes (indexed byte stores ran at a fifth of the speed).
#[inline(always)]
fn merge4(planes: &[&[u8]], out: &mut [u8], word: impl Fn([u8; 4]) -> u32) {
    let words = out
        .chunks_exact_mut(4)
        .zip(planes[0])
        .zip(planes[1])
        .zip(planes[2])
        .zip(planes[3]);
    for ((((o, &a), &b), &c), &d) in words {
        o.copy_from_slice(&word([a, b, c, d]).to_le_bytes());
    }
}

/// Merge of a block transform: `H` scale bytes per block, one plane each, then the `B`
/// body bytes from the last plane. Sizes known at compile time let each block be a few
/// fixed moves instead of a loop and a slice copy of run-time length. They must be
/// `block_head` and `unit - block_head` of the transform (`every_transform_roundtrips`
/// fails otherwise).
fn merge_blocks<const H: usize, const B: usize>(planes: &[&[u8]], out: &mut [u8]) {
    let heads: [&[u8]; H] = std::array::from_fn(|j| planes[j]);
    let bodies = planes[H].chunks_exact(B);
    for (i, (blk, body)) in out.chunks_exact_mut(H + B).zip(bodies).enumerate() {
        let (h, b) = blk.split_at_mut(H);
        for (x, plane) in h.iter_mut().zip(&heads) {
            *x = plane[i];
        }
        b.copy_from_slice(body);
    }
}

/// The top 16 bits of a float (a BF16 value, or the high half of an F32) from its exponent
/// byte `e` and its sign-and-7-mantissa-bits byte `sm`: sign, then `e`, then the 7 bits.
#[inline(always)]
fn bf16_of(e: u8, sm: u8) -> u16 {
    u16::from(e) << 7 | u16::from(sm & 0x7f) | u16::from(sm & 0x80) << 8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_transform_roundtrips() {
        for (i, &t) in Transform::ALL.iter().enumerate() {
            // Ids are dense from 0: the fuzz harness and the proptests draw them by index.
            assert_eq!(t as usize, i);
            assert_eq!(Transform::from_id(t as u8), Some(t));
            let len = t.unit() * 103;
            let data: Vec<u8> = (0..len).map(|i| (i * 31 + i / 7) as u8).collect();
            let planes = t.split(&data);
            let lens: Vec<usize> = planes.iter().map(|p| p.len()).collect();
            assert_eq!(Some(lens), t.plane_lens(len));
            let refs: Vec<&[u8]> = planes.iter().map(|p| p.as_slice()).collect();
            let mut out = vec![0; len];
            t.merge(&refs, &mut out);
            assert_eq!(out, data, "{t}");
        }
        assert!(Transform::from_id(Transform::ALL.len() as u8).is_none());
        assert!(Transform::Split4.plane_lens(6).is_none());
    }

    #[test]
    fn bf16_exponent_plane_holds_the_exponent() {
        // 1.0 in BF16 is 0x3F80: exponent 127, sign 0, mantissa 0.
        let planes = Transform::Bf16Exp.split(&[0x80, 0x3F, 0x80, 0xBF]);
        assert_eq!(planes[0], vec![127, 127]);
        assert_eq!(planes[1], vec![0x00, 0x80]);
        // 1.0f32 = 0x3F800000.
        let planes = Transform::F32Exp.split(&[0, 0, 0x80, 0x3F]);
        assert_eq!(planes[0], vec![127]);
    }
}
