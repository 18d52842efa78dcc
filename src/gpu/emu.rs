//! A CPU model of `cuda/rans_decode.cu`, step for step: the same descriptors, one warp of
//! 32 lanes per sub-block, the same ballot + prefix-count word assignment, the same
//! checks and error flags, and the same plane merge. It exists to prove the kernel's
//! decomposition bit-exact against [`crate::codec::rans::decode`] without a GPU, and to
//! count the work each lane does. It is not a fast decoder.

use super::plan::{BatchPlan, MergeDesc, SubBlockDesc, ERR_DESCRIPTOR, ERR_FINAL_STATE, ERR_INIT_STATE, ERR_WORDS};
use crate::codec::rans_layout::{LANES, PROB_BITS, PROB_SCALE, STATES_BYTES, STATE_LOW, SUB_BLOCK, WORD_BITS};
use crate::transform::Transform;

const WARP: usize = 32;
const _: () = assert!(LANES == WARP, "one rANS state per lane of a 32-wide warp");

/// Work counted while emulating: what each lane of the kernel would do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WarpStats {
    pub sub_blocks: u64,
    /// Symbols decoded (= lane-steps that produced a byte).
    pub symbols: u64,
    /// Groups of 32 symbols (= iterations of the kernel's loop, summed over warps).
    pub groups: u64,
    /// Groups in which at least one lane renormalised (ballot non-empty).
    pub groups_with_reads: u64,
    /// u16 words read by all lanes.
    pub words: u64,
    /// Stored bytes of the sub-blocks (prologue + words + padding).
    pub bytes_in: u64,
    /// Most words any single lane read in one sub-block.
    pub max_lane_words: u64,
}

impl WarpStats {
    pub fn add(&mut self, o: &WarpStats) {
        self.sub_blocks += o.sub_blocks;
        self.symbols += o.symbols;
        self.groups += o.groups;
        self.groups_with_reads += o.groups_with_reads;
        self.words += o.words;
        self.bytes_in += o.bytes_in;
        self.max_lane_words = self.max_lane_words.max(o.max_lane_words);
    }
}

fn u32_at(a: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(a[at..at + 4].try_into().unwrap())
}

fn u16_at(a: &[u8], at: usize) -> u32 {
    u16::from_le_bytes(a[at..at + 2].try_into().unwrap()) as u32
}

/// Emulates one warp of `dcfs_rans_decode` on descriptor `d`; returns its error flags.
pub fn warp_decode(arena: &mut [u8], d: &SubBlockDesc, stats: &mut WarpStats) -> u32 {
    let alen = arena.len() as u64;
    let scale = PROB_SCALE as u64;
    if d.src & 3 != 0
        || d.table & 3 != 0
        || (d.src_len as usize) < STATES_BYTES
        || d.src_len & 1 != 0
        || d.n_sym as usize > SUB_BLOCK
        || d.src > alen
        || d.src_len as u64 > alen - d.src
        || d.table > alen
        || 4 * scale > alen - d.table
        || d.dst > alen
        || d.n_sym as u64 > alen - d.dst
    {
        return ERR_DESCRIPTOR;
    }
    let (src, table, dst) = (d.src as usize, d.table as usize, d.dst as usize);
    let words_at = src + STATES_BYTES;
    let n_words = (d.src_len as usize - STATES_BYTES) / 2;
    let mask = PROB_SCALE - 1;
    let mut err = 0;
    // Registers of the 32 lanes.
    let mut x: [u32; WARP] = std::array::from_fn(|lane| u32_at(arena, src + 4 * lane));
    if x.iter().any(|&s| s < STATE_LOW) {
        err |= ERR_INIT_STATE; // __any_sync
    }
    let mut lane_words = [0u64; WARP];
    let mut pos = 0usize;
    let n_sym = d.n_sym as usize;
    let n_groups = n_sym.div_ceil(WARP);
    for g in 0..n_groups {
        // Phase 1, every lane at once: decode one symbol, decide whether to renormalise.
        let mut need = [false; WARP];
        for lane in 0..WARP {
            let j = g * WARP + lane;
            if j < n_sym {
                let e = u32_at(arena, table + 4 * (x[lane] & mask) as usize);
                arena[dst + j] = (e >> 24) as u8;
                x[lane] = ((e & mask) + 1) * (x[lane] >> PROB_BITS) + ((e >> PROB_BITS) & mask);
                need[lane] = x[lane] < STATE_LOW;
            }
        }
        // Phase 2: __ballot_sync, then each needy lane takes word pos + popc(ballot & below).
        let ballot: u32 = (0..WARP).filter(|&l| need[l]).fold(0, |b, l| b | 1 << l);
        for lane in 0..WARP {
            if need[lane] {
                let below = (1u64 << lane) as u32 - 1;
                let k = pos + (ballot & below).count_ones() as usize;
                let w = if k < n_words {
                    u16_at(arena, words_at + 2 * k)
                } else {
                    0
                };
                x[lane] = (x[lane] << WORD_BITS) | w;
                lane_words[lane] += 1;
            }
        }
        pos += ballot.count_ones() as usize;
        stats.groups_with_reads += (ballot != 0) as u64;
    }
    let words_ok = pos == n_words || (pos + 1 == n_words && pos & 1 == 1 && u16_at(arena, words_at + 2 * pos) == 0);
    if !words_ok {
        err |= ERR_WORDS;
    }
    if x.iter().any(|&s| s != STATE_LOW) {
        err |= ERR_FINAL_STATE; // !__all_sync
    }
    stats.sub_blocks += 1;
    stats.symbols += n_sym as u64;
    stats.groups += n_groups as u64;
    stats.words += pos as u64;
    stats.bytes_in += d.src_len as u64;
    stats.max_lane_words = stats.max_lane_words.max(lane_words.iter().copied().max().unwrap_or(0));
    err
}

/// `dcfs_merge`'s bounds rule: the output and every plane the transform reads lie inside
/// the arena, and the transform is known. A merge that fails it is skipped whole.
pub fn merge_in_bounds(m: &MergeDesc, arena_len: u64) -> bool {
    let Some(t) = u8::try_from(m.transform).ok().and_then(Transform::from_id) else {
        return false;
    };
    let n = m.n_units as u64;
    let span = |at: u64, len: u64| at <= arena_len && len <= arena_len - at;
    let out_len = n * t.unit() as u64;
    let Some(planes) = usize::try_from(out_len).ok().and_then(|l| t.plane_lens(l)) else {
        return false;
    };
    span(m.dst, out_len) && planes.iter().zip(m.plane).all(|(&len, at)| span(at, len as u64))
}

/// Emulates `dcfs_merge` for one chunk: unit `i` is what thread `i` of its grid row writes.
/// Checks the bounds first, as the kernel does, with the whole arena as the bound.
pub fn merge(arena: &mut [u8], m: &MergeDesc) {
    if !merge_in_bounds(m, arena.len() as u64) {
        return;
    }
    let n = m.n_units as usize;
    let dst = m.dst as usize;
    let p = m.plane.map(|o| o as usize);
    let t = Transform::from_id(m.transform as u8);
    for i in 0..n {
        match t {
            Some(Transform::None) => arena[dst + i] = arena[p[0] + i],
            Some(Transform::Split2) => {
                arena[dst + 2 * i] = arena[p[0] + i];
                arena[dst + 2 * i + 1] = arena[p[1] + i];
            }
            Some(Transform::Bf16Exp) => {
                let (e, sm) = (arena[p[0] + i], arena[p[1] + i]);
                arena[dst + 2 * i] = (e << 7) | (sm & 0x7f);
                arena[dst + 2 * i + 1] = (sm & 0x80) | (e >> 1);
            }
            Some(Transform::Split4) => {
                for b in 0..4 {
                    arena[dst + 4 * i + b] = arena[p[b] + i];
                }
            }
            Some(Transform::F32Exp) => {
                let (e, sm) = (arena[p[0] + i], arena[p[1] + i]);
                arena[dst + 4 * i] = arena[p[3] + i];
                arena[dst + 4 * i + 1] = arena[p[2] + i];
                arena[dst + 4 * i + 2] = (e << 7) | (sm & 0x7f);
                arena[dst + 4 * i + 3] = (sm & 0x80) | (e >> 1);
            }
            Some(tq @ (Transform::Q8_0 | Transform::Q4_0 | Transform::Q4_1)) => {
                let unit = tq.unit();
                let head = if tq == Transform::Q4_1 { 4 } else { 2 };
                let body = unit - head;
                for h in 0..head {
                    arena[dst + i * unit + h] = arena[p[h] + i];
                }
                arena.copy_within(p[head] + i * body..p[head] + (i + 1) * body, dst + i * unit + head);
            }
            None => {}
        }
    }
}

/// Runs a whole batch as the device would: upload, decode kernel, merge kernel. Returns
/// the arena and one flag word per sub-block.
pub fn run(plan: &BatchPlan, stats: &mut WarpStats) -> (Vec<u8>, Vec<u32>) {
    let mut arena = Vec::new();
    let flags = run_in(&mut arena, plan, stats);
    (arena, flags)
}

/// What fresh device memory holds, as far as the emulation is concerned: not zeros, so a
/// kernel that leaves an output byte unwritten is caught by the host checksum.
pub const POISON: u8 = 0xA5;

/// [`run`] in an arena kept between batches, as the device keeps its own: it grows (to
/// exactly the batch's length, poisoned) only when too small and is never cleared, so the
/// kernels see the same bounds (the whole buffer, often longer than the batch) and the
/// same stale bytes past the upload as on the device. Every flag is written.
pub fn run_in(arena: &mut Vec<u8>, plan: &BatchPlan, stats: &mut WarpStats) -> Vec<u32> {
    if (arena.len() as u64) < plan.arena_len {
        *arena = vec![POISON; plan.arena_len as usize];
    }
    arena[..plan.upload.len()].copy_from_slice(&plan.upload);
    let flags = plan.subs.iter().map(|d| warp_decode(arena, d, stats)).collect();
    for m in &plan.merges {
        merge(arena, m);
    }
    flags
}

/// Decodes one rANS stream (a whole plane) through the warp model. `Ok` only when every
/// sub-block's flags are clear; the error carries the OR of the flags.
pub fn decode_stream(stream: &[u8], out: &mut [u8], stats: &mut WarpStats) -> Result<(), u32> {
    let p = crate::codec::rans::parse(stream, out.len()).map_err(|_| ERR_DESCRIPTOR)?;
    // Arena: data (4-aligned, as the planner lays it) | table | output.
    let table_at = p.data.len().next_multiple_of(16);
    let out_at = table_at + 4 * PROB_SCALE as usize;
    let mut arena = vec![0u8; out_at + out.len()];
    arena[..p.data.len()].copy_from_slice(p.data);
    for (i, e) in p.table.decode_table().iter().enumerate() {
        arena[table_at + 4 * i..table_at + 4 * i + 4].copy_from_slice(&e.to_le_bytes());
    }
    let mut flags = 0;
    let mut start = 0u32;
    for (k, &end) in p.offsets.iter().enumerate() {
        let d = SubBlockDesc {
            src: start as u64,
            dst: (out_at + k * SUB_BLOCK) as u64,
            table: table_at as u64,
            src_len: end - start,
            n_sym: (out.len() - k * SUB_BLOCK).min(SUB_BLOCK) as u32,
        };
        flags |= warp_decode(&mut arena, &d, stats);
        start = end;
    }
    out.copy_from_slice(&arena[out_at..]);
    if flags == 0 {
        Ok(())
    } else {
        Err(flags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::rans;

    use crate::test_rng as rng;

    /// Encodes with the CPU coder, decodes with both, and demands identical bytes.
    fn same_as_cpu(data: &[u8]) -> WarpStats {
        let mut enc = Vec::new();
        rans::encode(data, &mut enc);
        let mut cpu = vec![0u8; data.len()];
        rans::decode(&enc, &mut cpu).unwrap();
        let mut emu = vec![0xEEu8; data.len()];
        let mut st = WarpStats::default();
        decode_stream(&enc, &mut emu, &mut st).unwrap();
        assert_eq!(emu, cpu, "len {}", data.len());
        assert_eq!(emu, data);
        st
    }

    #[test]
    fn edge_cases_match_the_cpu_decoder() {
        let st = same_as_cpu(&[]);
        assert_eq!(st.sub_blocks, 0);
        same_as_cpu(&[200]);
        // All 256 symbols, in lengths that are and are not multiples of 32 and of SUB_BLOCK.
        for len in [
            31,
            32,
            33,
            256,
            1000,
            SUB_BLOCK - 1,
            SUB_BLOCK,
            SUB_BLOCK + 1,
            3 * SUB_BLOCK + 77,
        ] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 3) as u8).collect();
            let st = same_as_cpu(&data);
            assert_eq!(st.sub_blocks, len.div_ceil(SUB_BLOCK) as u64);
            assert_eq!(st.symbols, len as u64);
        }
        // Max skew: one symbol at 4096 - 255, every other at frequency 1.
        let mut skew = vec![0u8; 3 * SUB_BLOCK + 5];
        for s in 1..=255u8 {
            skew[s as usize * 701] = s;
        }
        let st = same_as_cpu(&skew);
        assert!(st.words > 0);
        // One symbol only: no words at all.
        let st = same_as_cpu(&[9u8; 2 * SUB_BLOCK + 3]);
        assert_eq!(st.words, 0);
        // Random data, uniform and geometric.
        let mut r = rng(3);
        same_as_cpu(&(0..200_000).map(|_| r() as u8).collect::<Vec<_>>());
        same_as_cpu(
            &(0..200_001)
                .map(|_| (r() | 1 << 30).trailing_zeros() as u8)
                .collect::<Vec<_>>(),
        );
    }

    #[test]
    fn damage_is_flagged_never_silent() {
        let mut r = rng(11);
        let data: Vec<u8> = (0..70_000).map(|_| (r() % 23) as u8).collect();
        let mut enc = Vec::new();
        rans::encode(&data, &mut enc);
        let head = rans::parse(&enc, data.len()).unwrap().data_offset;
        let mut out = vec![0u8; data.len()];
        let mut st = WarpStats::default();
        let (mut flagged, mut cpu_err) = (0, 0);
        for _ in 0..300 {
            let mut bad = enc.clone();
            let i = head + (r() as usize % (enc.len() - head));
            bad[i] ^= 1 << (r() % 8);
            let emu = decode_stream(&bad, &mut out, &mut st);
            let cpu = rans::decode(&bad, &mut vec![0u8; data.len()]);
            // The emulated kernel accepts exactly what the CPU decoder accepts.
            assert_eq!(emu.is_ok(), cpu.is_ok(), "flip at {i}");
            flagged += emu.is_err() as u32;
            cpu_err += cpu.is_err() as u32;
        }
        assert_eq!(flagged, cpu_err);
        assert!(flagged > 250, "{flagged}");
    }

    #[test]
    fn merge_inverts_every_transform() {
        let mut r = rng(5);
        for &t in crate::gpu::TRANSFORMS {
            let len = t.unit() * 517;
            let data: Vec<u8> = (0..len).map(|_| r() as u8).collect();
            let planes = t.split(&data);
            // Arena: planes back to back (unaligned on purpose), then the output.
            let mut arena = Vec::new();
            let mut m = MergeDesc {
                n_units: (len / t.unit()) as u32,
                transform: t as u32,
                ..Default::default()
            };
            for (i, p) in planes.iter().enumerate() {
                m.plane[i] = arena.len() as u64;
                arena.extend_from_slice(p);
            }
            m.dst = arena.len() as u64;
            arena.resize(arena.len() + len, 0);
            merge(&mut arena, &m);
            assert_eq!(&arena[m.dst as usize..], &data[..], "{t}");
        }
    }

    #[test]
    fn merges_outside_the_arena_are_skipped() {
        let len = 4 * 100;
        let ok = MergeDesc {
            dst: 0,
            plane: [400, 500, 600, 700, 0],
            n_units: 100,
            transform: Transform::Split4 as u32,
        };
        let arena_len = 800;
        assert!(merge_in_bounds(&ok, arena_len));
        let bad = [
            MergeDesc { dst: 401, ..ok },
            MergeDesc {
                plane: [400, 500, 600, 701, 0],
                ..ok
            },
            MergeDesc { n_units: 101, ..ok },
            MergeDesc {
                n_units: u32::MAX,
                ..ok
            },
            MergeDesc { dst: u64::MAX, ..ok },
            MergeDesc { transform: 99, ..ok },
            MergeDesc {
                transform: 256 + Transform::Split4 as u32,
                ..ok
            },
        ];
        for m in bad {
            assert!(!merge_in_bounds(&m, arena_len), "{m:?}");
            // Skipped whole: no panic, no byte written.
            let mut arena = vec![POISON; arena_len as usize];
            merge(&mut arena, &m);
            assert!(arena.iter().all(|&b| b == POISON), "{m:?} wrote");
        }
        let mut arena = vec![1u8; arena_len as usize];
        merge(&mut arena, &ok);
        assert_eq!(&arena[..len], &[1u8; 400][..]);
    }

    #[test]
    fn bad_descriptors_are_flagged() {
        let mut arena = vec![0u8; 64 * 1024];
        let mut st = WarpStats::default();
        let ok = SubBlockDesc {
            src: 0,
            dst: 32 * 1024,
            table: 16 * 1024,
            src_len: STATES_BYTES as u32,
            n_sym: 0,
        };
        // Zero states are below STATE_LOW.
        assert_eq!(warp_decode(&mut arena, &ok, &mut st), ERR_INIT_STATE | ERR_FINAL_STATE);
        for bad in [
            SubBlockDesc { src: 2, ..ok },
            SubBlockDesc { table: 60 * 1024, ..ok },
            SubBlockDesc { src_len: 3, ..ok },
            SubBlockDesc {
                n_sym: SUB_BLOCK as u32 + 1,
                ..ok
            },
            SubBlockDesc {
                dst: 64 * 1024 - 10,
                n_sym: 11,
                ..ok
            },
        ] {
            assert_eq!(warp_decode(&mut arena, &bad, &mut st), ERR_DESCRIPTOR, "{bad:?}");
        }
    }
}
