//! Batch planning: lays a set of chunks out in one device arena and writes the kernel
//! descriptors. Shared by the CUDA backend and the CPU emulation, so the emulation tests
//! this code too.
//!
//! ```text
//! arena := upload (sub-block bytes, decode tables, raw plane bodies; copied to the device)
//!        | scratch (decoded byte planes of transformed chunks)
//!        | out (the chunks' original bytes; copied back)
//! ```
//! Offsets the kernel reads as u16/u32 are 4-aligned; planes and outputs are 16-aligned.

use std::ops::Range;

use crate::chunk::{self, ChunkCodec};
use crate::codec::{rans, Codec};
use crate::format::{ChunkEntry, Container};
use crate::transform::Transform;

/// Kernel error flags (`DCFS_ERR_*` in `cuda/rans_decode.cu`).
pub const ERR_DESCRIPTOR: u32 = 1;
pub const ERR_INIT_STATE: u32 = 2;
pub const ERR_WORDS: u32 = 4;
pub const ERR_FINAL_STATE: u32 = 8;

/// One sub-block for `dcfs_rans_decode`; layout identical to `DcfsSubBlock`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SubBlockDesc {
    pub src: u64,
    pub dst: u64,
    pub table: u64,
    pub src_len: u32,
    pub n_sym: u32,
}

/// One chunk for `dcfs_merge`; layout identical to `DcfsMerge`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MergeDesc {
    pub dst: u64,
    pub plane: [u64; 5],
    pub n_units: u32,
    pub transform: u32,
}

const _: () = assert!(std::mem::size_of::<SubBlockDesc>() == 32);
const _: () = assert!(std::mem::size_of::<MergeDesc>() == 56);

/// Where a planned chunk's bytes end up.
#[derive(Clone, Debug)]
pub struct Slot {
    pub chunk: usize,
    /// Arena range of the decoded original bytes.
    pub out: Range<u64>,
    /// Its sub-blocks in [`BatchPlan::subs`] (and in the flags).
    pub subs: Range<usize>,
}

/// A chunk the GPU path does not take, and why (logged at debug; the CPU decodes it).
#[derive(Clone, Debug)]
pub struct Skipped {
    pub chunk: usize,
    pub reason: &'static str,
}

/// A laid-out batch, ready for the emulation or the device.
#[derive(Clone, Debug, Default)]
pub struct BatchPlan {
    /// Bytes of `arena[0..upload.len()]`.
    pub upload: Vec<u8>,
    pub arena_len: u64,
    /// Arena range to copy back (every slot's `out` lies inside it).
    pub out: Range<u64>,
    pub subs: Vec<SubBlockDesc>,
    pub merges: Vec<MergeDesc>,
    pub slots: Vec<Slot>,
    pub skipped: Vec<Skipped>,
    /// Symbols decoded by the rANS kernel in this batch.
    pub symbols: u64,
}

/// Address spaces while planning; resolved to arena offsets by [`Planner::finish`].
const SPACE_SHIFT: u32 = 60;
const UPLOAD: u64 = 0;
const SCRATCH: u64 = 1 << SPACE_SHIFT;
const OUT: u64 = 2 << SPACE_SHIFT;

/// Builds a [`BatchPlan`] chunk by chunk.
#[derive(Default)]
pub struct Planner {
    plan: BatchPlan,
    scratch_len: u64,
    out_len: u64,
}

fn align(x: u64, a: u64) -> u64 {
    x.next_multiple_of(a)
}

impl Planner {
    pub fn new() -> Planner {
        Planner::default()
    }

    /// Bytes of original data planned so far.
    pub fn out_len(&self) -> u64 {
        self.out_len
    }

    fn upload(&mut self, bytes: &[u8], a: u64) -> u64 {
        let at = align(self.plan.upload.len() as u64, a);
        self.plan.upload.resize(at as usize, 0);
        self.plan.upload.extend_from_slice(bytes);
        at
    }

    /// Plans chunk `index` (entry `c`, stored `payload`). `raw_on_device` also uploads
    /// chunks stored raw (for decoding into device memory); otherwise they are skipped,
    /// since the host already has their bytes.
    pub fn add(&mut self, index: usize, c: &ChunkEntry, payload: &[u8], raw_on_device: bool) {
        let len = c.orig_len as u64;
        let skip = |p: &mut Planner, reason| p.plan.skipped.push(Skipped { chunk: index, reason });
        if c.codec == ChunkCodec::Raw {
            if !raw_on_device || payload.len() as u64 != len {
                return skip(self, "stored raw: nothing to decode");
            }
            let src = self.upload(payload, 16);
            let out = OUT | align(self.out_len, 16);
            self.out_len = (out & !OUT) + len;
            self.plan.merges.push(MergeDesc {
                dst: out,
                plane: [src, 0, 0, 0, 0],
                n_units: len as u32,
                transform: Transform::None as u32,
            });
            let n = self.plan.subs.len();
            self.plan.slots.push(Slot {
                chunk: index,
                out: out..out + len,
                subs: n..n,
            });
            return;
        }
        let Ok(framed) = chunk::parse(c.transform, payload, len as usize) else {
            return skip(self, "plane framing invalid (the CPU decoder names the damage)");
        };
        if framed.planes.iter().any(|p| p.0 == Codec::Zstd) {
            return skip(self, "zstd plane: no GPU zstd decoder; decoded on the CPU");
        }
        if framed.planes.len() > 5 {
            return skip(self, "more than 5 planes");
        }
        let mut parsed = Vec::with_capacity(framed.planes.len());
        for &(codec, body, plen) in &framed.planes {
            if codec == Codec::Rans {
                match rans::parse(body, plen) {
                    Ok(p) => parsed.push(Some(p)),
                    Err(_) => return skip(self, "rANS header invalid (the CPU decoder names the damage)"),
                }
            } else if body.len() != plen {
                return skip(self, "raw plane of the wrong length");
            } else {
                parsed.push(None);
            }
        }
        let out = OUT | align(self.out_len, 16);
        self.out_len = (out & !OUT) + len;
        let direct = c.transform == Transform::None && parsed[0].is_some();
        let sub_start = self.plan.subs.len();
        let mut merge = MergeDesc {
            dst: out,
            n_units: (len / c.transform.unit() as u64) as u32,
            transform: c.transform as u32,
            ..Default::default()
        };
        for (i, (p, &(_, body, plen))) in parsed.iter().zip(&framed.planes).enumerate() {
            let Some(p) = p else {
                merge.plane[i] = UPLOAD | self.upload(body, 16);
                continue;
            };
            let dst = if direct {
                out
            } else {
                let at = SCRATCH | align(self.scratch_len, 16);
                self.scratch_len = (at & !SCRATCH) + plen as u64;
                at
            };
            merge.plane[i] = dst;
            if p.n_symbols == 0 {
                continue;
            }
            let dtab = p.table.decode_table();
            let table_bytes: Vec<u8> = dtab.iter().flat_map(|e| e.to_le_bytes()).collect();
            let table = self.upload(&table_bytes, 16);
            let data = self.upload(p.data, 16);
            let mut start = 0u64;
            for (k, &end) in p.offsets.iter().enumerate() {
                let n_sym = (plen - k * rans::SUB_BLOCK).min(rans::SUB_BLOCK);
                self.plan.subs.push(SubBlockDesc {
                    src: data + start,
                    dst: dst + (k * rans::SUB_BLOCK) as u64,
                    table,
                    src_len: (end as u64 - start) as u32,
                    n_sym: n_sym as u32,
                });
                start = end as u64;
            }
            self.plan.symbols += plen as u64;
        }
        if !direct {
            self.plan.merges.push(merge);
        }
        self.plan.slots.push(Slot {
            chunk: index,
            out: out..out + len,
            subs: sub_start..self.plan.subs.len(),
        });
    }

    /// Resolves every offset into the arena.
    pub fn finish(mut self) -> BatchPlan {
        let scratch_base = align(self.plan.upload.len() as u64, 256);
        let out_base = align(scratch_base + self.scratch_len, 256);
        let fix = |x: u64| -> u64 {
            let off = x & ((1 << SPACE_SHIFT) - 1);
            match x >> SPACE_SHIFT {
                0 => off,
                1 => scratch_base + off,
                _ => out_base + off,
            }
        };
        for s in &mut self.plan.subs {
            s.src = fix(s.src);
            s.dst = fix(s.dst);
            s.table = fix(s.table);
        }
        for m in &mut self.plan.merges {
            m.dst = fix(m.dst);
            for p in &mut m.plane {
                *p = fix(*p);
            }
        }
        for s in &mut self.plan.slots {
            s.out = fix(s.out.start)..fix(s.out.start) + (s.out.end - s.out.start);
        }
        self.plan.out = out_base..out_base + self.out_len;
        self.plan.arena_len = out_base + self.out_len;
        self.plan
    }
}

/// How many of chunks `idx` of `c` the planner gives to the GPU (decoded to host memory):
/// the exact count a working GPU path must decode, for `gpu-bench` and the tests.
/// Chunks whose payload cannot be read count as not planned.
pub fn planned_for_gpu(c: &Container, idx: &[usize]) -> usize {
    let mut p = Planner::new();
    for (k, &i) in idx.iter().enumerate() {
        if let Ok(payload) = c.read_payload(i) {
            p.add(k, &c.chunks[i], &payload, false);
        }
    }
    p.finish().slots.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::CodecChoice;
    use crate::model::safetensors;
    use crate::pack::{pack_tree, NoProgress, PackOptions};

    /// A packed synthetic model (BF16 weights, F32, raw-ish bytes), each container opened.
    fn packed(codec: CodecChoice) -> (tempfile::TempDir, Vec<Container>) {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        std::fs::create_dir(&src).unwrap();
        let mut next = crate::test_rng(0x9E37_79B9_7F4A_7C15);
        // Small-magnitude weights: BF16/F32 whose exponents compress well under rANS.
        let bf16: Vec<u8> = (0..400_000)
            .flat_map(|_| {
                let v = ((next() % 2001) as f32 - 1000.0) * 4e-5;
                ((v.to_bits() >> 16) as u16).to_le_bytes()
            })
            .collect();
        let f32b: Vec<u8> = (0..100_000)
            .flat_map(|_| (((next() % 2001) as f32 - 1000.0) * 4e-5).to_le_bytes())
            .collect();
        let st = safetensors::build(&[
            ("a.weight", "BF16", vec![400, 1000], bf16),
            ("b.weight", "F32", vec![100_000], f32b),
        ]);
        std::fs::write(src.join("model.safetensors"), st).unwrap();
        std::fs::write(src.join("notes.txt"), b"hello ".repeat(5000)).unwrap();
        let mut o = PackOptions {
            threads: 1,
            ..Default::default()
        };
        o.encode.codec = codec;
        let dst = t.path().join("dst");
        pack_tree(&src, &dst, &o, &NoProgress).unwrap();
        let mut v = Vec::new();
        for e in std::fs::read_dir(&dst).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "dcz") {
                v.push(Container::open(&p).unwrap());
            }
        }
        assert!(!v.is_empty());
        (t, v)
    }

    fn plan_all(c: &Container, raw_on_device: bool) -> BatchPlan {
        let mut p = Planner::new();
        for i in 0..c.chunks.len() {
            p.add(i, &c.chunks[i], &c.read_payload(i).unwrap(), raw_on_device);
        }
        p.finish()
    }

    fn disjoint(mut v: Vec<Range<u64>>, what: &str) {
        v.retain(|r| r.start < r.end);
        v.sort_by_key(|r| r.start);
        for w in v.windows(2) {
            assert!(w[0].end <= w[1].start, "{what} overlap: {:?} and {:?}", w[0], w[1]);
        }
    }

    #[test]
    fn output_regions_never_overlap_and_stay_in_the_arena() {
        for codec in [CodecChoice::Rans, CodecChoice::Auto] {
            let (_t, cs) = packed(codec);
            for c in &cs {
                for raw in [false, true] {
                    let plan = plan_all(c, raw);
                    let upload = plan.upload.len() as u64;
                    assert!(upload <= plan.out.start && plan.out.end <= plan.arena_len);
                    // Every chunk is planned or skipped, exactly once.
                    let mut seen: Vec<usize> = plan.slots.iter().map(|s| s.chunk).collect();
                    seen.extend(plan.skipped.iter().map(|s| s.chunk));
                    seen.sort();
                    assert_eq!(seen, (0..c.chunks.len()).collect::<Vec<_>>());
                    for s in &plan.slots {
                        assert!(plan.out.start <= s.out.start && s.out.end <= plan.out.end);
                        assert_eq!(s.out.end - s.out.start, c.chunks[s.chunk].orig_len as u64);
                        assert_eq!(s.out.start % 16, 0, "outputs are 16-aligned");
                    }
                    disjoint(plan.slots.iter().map(|s| s.out.clone()).collect(), "chunk outputs");
                    // What the rANS kernel writes: inside the arena, past the upload, and
                    // never two sub-blocks on the same bytes.
                    let mut writes = Vec::new();
                    for d in &plan.subs {
                        let w = d.dst..d.dst + d.n_sym as u64;
                        assert!(w.start >= upload && w.end <= plan.arena_len, "{w:?}");
                        assert!(d.src + d.src_len as u64 <= upload, "sub-block reads past the upload");
                        assert!(d.table % 4 == 0 && d.table < upload);
                        writes.push(w);
                    }
                    for m in &plan.merges {
                        assert!(
                            plan.out.start <= m.dst && m.dst <= plan.out.end,
                            "merge writes outside the outputs"
                        );
                    }
                    disjoint(writes, "sub-block outputs");
                }
            }
        }
    }

    #[test]
    fn rans_chunks_are_planned_and_raw_and_zstd_are_skipped_with_a_reason() {
        let (_t, cs) = packed(CodecChoice::Rans);
        let mut planned = 0;
        for c in &cs {
            let plan = plan_all(c, false);
            for s in &plan.skipped {
                assert!(!s.reason.is_empty());
                let e = &c.chunks[s.chunk];
                assert!(e.codec != ChunkCodec::Rans || s.reason.contains("zstd"), "{}", s.reason);
            }
            for s in &plan.slots {
                assert_ne!(c.chunks[s.chunk].codec, ChunkCodec::Raw);
            }
            let idx: Vec<usize> = (0..c.chunks.len()).collect();
            assert_eq!(planned_for_gpu(c, &idx), plan.slots.len());
            planned += plan.slots.len();
            // With raw chunks on the device, every raw chunk gets a slot too.
            let raw = c.chunks.iter().filter(|e| e.codec == ChunkCodec::Raw).count();
            assert_eq!(plan_all(c, true).slots.len(), plan.slots.len() + raw);
        }
        assert!(planned > 0, "a rANS pack plans chunks for the GPU");

        let (_t, cs) = packed(CodecChoice::Zstd);
        for c in &cs {
            let plan = plan_all(c, false);
            assert!(plan.slots.is_empty(), "zstd chunks never go to the GPU");
            assert_eq!(plan.skipped.len(), c.chunks.len());
        }
    }

    #[test]
    fn an_empty_plan_is_empty() {
        let plan = Planner::new().finish();
        assert!(plan.slots.is_empty() && plan.subs.is_empty() && plan.merges.is_empty());
        assert_eq!(plan.out, 0..0);
        assert_eq!(plan.arena_len, 0);
    }
}
