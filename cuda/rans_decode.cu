// dcfs GPU decode: interleaved rANS sub-blocks -> byte planes -> original bytes.
//
// Compiled at run time by NVRTC (src/gpu/nvrtc.rs) and in CI by scripts/nvrtc-check.sh.
// Every layout constant arrives as a -D define generated from src/codec/rans_layout.rs and
// src/transform.rs (`dcfs gpu-defines` prints them), so the kernel cannot drift from the
// CPU coder. src/gpu/emu.rs is a line-by-line CPU model of this file, tested bit-exact
// against the CPU decoder; keep the two in step.
//
// Memory model: one device "arena" holds the batch (sub-block bytes, decode tables, the
// scratch byte planes and the output); descriptors carry byte offsets into it. Offsets
// the kernels dereference as u16/u32 are 4-byte aligned by the host planner
// (src/gpu/plan.rs) and re-checked here: a bad descriptor sets an error flag, it never
// reads out of line.

#ifndef DCFS_LANES
#error "DCFS_LANES must be defined (dcfs gpu-defines)"
#endif
#ifndef DCFS_SUB_BLOCK
#error "DCFS_SUB_BLOCK must be defined (dcfs gpu-defines)"
#endif
#ifndef DCFS_PROB_BITS
#error "DCFS_PROB_BITS must be defined (dcfs gpu-defines)"
#endif
#ifndef DCFS_STATE_LOW
#error "DCFS_STATE_LOW must be defined (dcfs gpu-defines)"
#endif
#ifndef DCFS_WORD_BITS
#error "DCFS_WORD_BITS must be defined (dcfs gpu-defines)"
#endif
#ifndef DCFS_STATES_BYTES
#error "DCFS_STATES_BYTES must be defined (dcfs gpu-defines)"
#endif
#if !defined(DCFS_T_NONE) || !defined(DCFS_T_SPLIT2) || !defined(DCFS_T_BF16_EXP) || \
    !defined(DCFS_T_SPLIT4) || !defined(DCFS_T_F32_EXP) || !defined(DCFS_T_Q8_0) ||   \
    !defined(DCFS_T_Q4_0) || !defined(DCFS_T_Q4_1)
#error "transform ids DCFS_T_* must be defined (dcfs gpu-defines)"
#endif

// One warp decodes one sub-block, lane i owning interleaved state i: the layout only
// works if a sub-block has exactly as many states as a warp has lanes.
#if DCFS_LANES != 32
#error "the kernel maps one rANS state to one lane of a 32-wide warp"
#endif
// Decode table entries pack sym << 24 | (slot - cum) << PROB_BITS | (freq - 1): the two
// low fields must fit in 24 bits.
#if DCFS_PROB_BITS > 12
#error "decode table packing needs PROB_BITS <= 12"
#endif
#if DCFS_WORD_BITS != 16
#error "renormalisation reads one u16 word at a time"
#endif

#define DCFS_PROB_SCALE (1u << DCFS_PROB_BITS)
#define DCFS_PROB_MASK (DCFS_PROB_SCALE - 1u)
#define DCFS_FULL_WARP 0xffffffffu

// Error flags, one word per sub-block (0 = decoded and structurally verified).
// src/gpu/plan.rs mirrors these values.
#define DCFS_ERR_DESCRIPTOR 1u   // misaligned, short or out-of-arena sub-block; too many symbols
#define DCFS_ERR_INIT_STATE 2u   // an initial state below STATE_LOW
#define DCFS_ERR_WORDS 4u        // words over- or under-consumed
#define DCFS_ERR_FINAL_STATE 8u  // a lane did not end at STATE_LOW

// One rANS sub-block. Mirrors `SubBlockDesc` in src/gpu/plan.rs (#[repr(C)], 32 bytes).
struct DcfsSubBlock {
    unsigned long long src;    // arena offset of the 128-byte state prologue (4-aligned)
    unsigned long long dst;    // arena offset where the n_sym decoded bytes go
    unsigned long long table;  // arena offset of the 4096 x u32 decode table (4-aligned)
    unsigned int src_len;      // bytes: prologue + words (+ at most one zero pad word)
    unsigned int n_sym;        // symbols, <= SUB_BLOCK
};

// One chunk's plane merge. Mirrors `MergeDesc` in src/gpu/plan.rs (#[repr(C)], 56 bytes).
struct DcfsMerge {
    unsigned long long dst;       // arena offset of the chunk's original bytes
    unsigned long long plane[5];  // arena offsets of its planes (unused ones are 0)
    unsigned int n_units;         // transform units (elements or quant blocks)
    unsigned int transform;       // DCFS_T_* id
};

// Decodes one sub-block per warp. Launch with blockDim.x a multiple of 32 and at least
// n_subs warps in the grid; warps past n_subs exit.
//
// Lane -> stream mapping (the contract of src/codec/rans.rs):
//   * symbol j of the sub-block belongs to lane j % 32, so group g (symbols 32g..32g+31)
//     is decoded by all lanes at once, lane i producing symbol 32g + i; the 32 one-byte
//     stores of a group are contiguous and coalesce;
//   * lane i starts from the u32 state at prologue offset 4*i;
//   * all lanes share one stream of u16 words. After decoding a symbol, the lanes whose
//     state fell below STATE_LOW take one word each, in ascending lane order: lane i
//     reads word pos + popc(ballot & lanes_below_i), and pos advances by popc(ballot).
//     This is exactly the CPU order (symbol order within the group).
extern "C" __global__ void dcfs_rans_decode(unsigned char* __restrict__ arena,
                                            unsigned long long arena_len,
                                            const DcfsSubBlock* __restrict__ subs,
                                            unsigned int n_subs,
                                            unsigned int* __restrict__ flags) {
    const unsigned int warp = (blockIdx.x * blockDim.x + threadIdx.x) / 32u;
    const unsigned int lane = threadIdx.x & 31u;
    if (warp >= n_subs) {
        return;  // warp-uniform: blockDim.x is a multiple of 32
    }
    const DcfsSubBlock d = subs[warp];
    if ((d.src & 3ull) != 0 || (d.table & 3ull) != 0 || d.src_len < DCFS_STATES_BYTES ||
        (d.src_len & 1u) != 0 || d.n_sym > DCFS_SUB_BLOCK || d.src > arena_len ||
        d.src_len > arena_len - d.src || d.table > arena_len ||
        4ull * DCFS_PROB_SCALE > arena_len - d.table || d.dst > arena_len ||
        d.n_sym > arena_len - d.dst) {
        if (lane == 0) {
            flags[warp] = DCFS_ERR_DESCRIPTOR;
        }
        return;
    }
    const unsigned int* __restrict__ states = (const unsigned int*)(arena + d.src);
    const unsigned short* __restrict__ words =
        (const unsigned short*)(arena + d.src + DCFS_STATES_BYTES);
    const unsigned int* __restrict__ table = (const unsigned int*)(arena + d.table);
    unsigned char* __restrict__ out = arena + d.dst;
    const unsigned int n_words = (d.src_len - DCFS_STATES_BYTES) / 2u;
    const unsigned int below_me = (1u << lane) - 1u;  // lanes that read before this one

    unsigned int err = 0;
    unsigned int x = states[lane];
    if (__any_sync(DCFS_FULL_WARP, x < DCFS_STATE_LOW)) {
        err |= DCFS_ERR_INIT_STATE;
    }
    unsigned int pos = 0;  // next unread word; identical in every lane
    const unsigned int n_groups = (d.n_sym + 31u) / 32u;
    for (unsigned int g = 0; g < n_groups; ++g) {
        const unsigned int j = g * 32u + lane;
        const bool active = j < d.n_sym;  // only the last group can be partial
        bool need = false;
        if (active) {
            const unsigned int e = __ldg(&table[x & DCFS_PROB_MASK]);
            out[j] = (unsigned char)(e >> 24);
            x = ((e & DCFS_PROB_MASK) + 1u) * (x >> DCFS_PROB_BITS) +
                ((e >> DCFS_PROB_BITS) & DCFS_PROB_MASK);
            need = x < DCFS_STATE_LOW;
        }
        const unsigned int ballot = __ballot_sync(DCFS_FULL_WARP, need);
        if (need) {
            const unsigned int k = pos + __popc(ballot & below_me);
            // Past the end reads as zero, like the CPU decoder; the count check below
            // then flags the sub-block.
            const unsigned int w = k < n_words ? (unsigned int)words[k] : 0u;
            x = (x << DCFS_WORD_BITS) | w;
        }
        pos += __popc(ballot);
    }
    // The encoder started every lane at STATE_LOW and wrote exactly the words consumed;
    // a sub-block is padded to 4 bytes with at most one zero word.
    const bool words_ok =
        pos == n_words || (pos + 1u == n_words && (pos & 1u) == 1u && words[pos] == 0);
    if (!words_ok) {
        err |= DCFS_ERR_WORDS;
    }
    if (!__all_sync(DCFS_FULL_WARP, x == DCFS_STATE_LOW)) {
        err |= DCFS_ERR_FINAL_STATE;
    }
    if (lane == 0) {
        flags[warp] = err;
    }
}

// Re-interleaves the decoded planes of each chunk into its original bytes, the inverse of
// Transform::split in src/transform.rs. blockIdx.y selects the chunk; threads stride over
// its units. Destinations are 16-byte aligned by the planner, so 2- and 4-byte units are
// written with one store each.
//
// Bounds: a merge whose output or any plane it reads would leave [0, arena_len), or whose
// transform is unknown, is skipped whole (block-uniform: blockIdx.y selects the merge).
// Its output stays unwritten and the host checksum sends the chunk to the CPU. The same
// rule is `merge_in_bounds` in src/gpu/emu.rs.
__device__ static bool dcfs_span_ok(unsigned long long at, unsigned long long len,
                                    unsigned long long arena_len) {
    return at <= arena_len && len <= arena_len - at;
}

__device__ static bool dcfs_merge_in_bounds(const DcfsMerge& m, unsigned long long arena_len) {
    const unsigned long long n = m.n_units;
    unsigned long long unit, planes, head;  // head: planes of n bytes before a body plane
    switch (m.transform) {
        case DCFS_T_NONE: unit = 1; planes = 1; head = 1; break;
        case DCFS_T_SPLIT2:
        case DCFS_T_BF16_EXP: unit = 2; planes = 2; head = 2; break;
        case DCFS_T_SPLIT4:
        case DCFS_T_F32_EXP: unit = 4; planes = 4; head = 4; break;
        case DCFS_T_Q8_0: unit = 34; planes = 3; head = 2; break;
        case DCFS_T_Q4_0: unit = 18; planes = 3; head = 2; break;
        case DCFS_T_Q4_1: unit = 20; planes = 5; head = 4; break;
        default: return false;
    }
    if (!dcfs_span_ok(m.dst, n * unit, arena_len)) {
        return false;
    }
    for (unsigned long long k = 0; k < planes; ++k) {
        const unsigned long long len = k < head ? n : n * (unit - head);
        if (!dcfs_span_ok(m.plane[k], len, arena_len)) {
            return false;
        }
    }
    return true;
}

extern "C" __global__ void dcfs_merge(unsigned char* __restrict__ arena,
                                      unsigned long long arena_len,
                                      const DcfsMerge* __restrict__ merges,
                                      unsigned int n_merges) {
    if (blockIdx.y >= n_merges) {
        return;
    }
    const DcfsMerge m = merges[blockIdx.y];
    if (!dcfs_merge_in_bounds(m, arena_len)) {
        return;
    }
    unsigned char* __restrict__ dst = arena + m.dst;
    const unsigned char* __restrict__ p0 = arena + m.plane[0];
    const unsigned char* __restrict__ p1 = arena + m.plane[1];
    const unsigned char* __restrict__ p2 = arena + m.plane[2];
    const unsigned char* __restrict__ p3 = arena + m.plane[3];
    const unsigned char* __restrict__ p4 = arena + m.plane[4];
    const bool aligned = (m.dst & 3ull) == 0;
    const unsigned int stride = gridDim.x * blockDim.x;
    for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < m.n_units; i += stride) {
        switch (m.transform) {
            case DCFS_T_NONE:
                dst[i] = p0[i];
                break;
            case DCFS_T_SPLIT2:
            case DCFS_T_BF16_EXP: {
                unsigned int lo = p0[i], hi = p1[i];
                if (m.transform == DCFS_T_BF16_EXP) {
                    // p0 = exponent byte, p1 = sign | 7 mantissa bits
                    const unsigned int e = lo, sm = hi;
                    lo = ((e << 7) | (sm & 0x7fu)) & 0xffu;
                    hi = (sm & 0x80u) | (e >> 1);
                }
                if (aligned) {
                    ((unsigned short*)dst)[i] = (unsigned short)(lo | (hi << 8));
                } else {
                    dst[2 * i] = (unsigned char)lo;
                    dst[2 * i + 1] = (unsigned char)hi;
                }
                break;
            }
            case DCFS_T_SPLIT4:
            case DCFS_T_F32_EXP: {
                unsigned int b0, b1, b2, b3;
                if (m.transform == DCFS_T_F32_EXP) {
                    // p0 = exponent, p1 = sign | top 7 mantissa bits, p2, p3 = low bytes
                    const unsigned int e = p0[i], sm = p1[i];
                    b0 = p3[i];
                    b1 = p2[i];
                    b2 = ((e << 7) | (sm & 0x7fu)) & 0xffu;
                    b3 = (sm & 0x80u) | (e >> 1);
                } else {
                    b0 = p0[i];
                    b1 = p1[i];
                    b2 = p2[i];
                    b3 = p3[i];
                }
                if (aligned) {
                    ((unsigned int*)dst)[i] = b0 | (b1 << 8) | (b2 << 16) | (b3 << 24);
                } else {
                    dst[4 * i] = (unsigned char)b0;
                    dst[4 * i + 1] = (unsigned char)b1;
                    dst[4 * i + 2] = (unsigned char)b2;
                    dst[4 * i + 3] = (unsigned char)b3;
                }
                break;
            }
            case DCFS_T_Q8_0:
            case DCFS_T_Q4_0:
            case DCFS_T_Q4_1: {
                // GGUF blocks: `head` scale bytes, one plane each, then a body plane.
                const unsigned int unit = m.transform == DCFS_T_Q8_0 ? 34u
                                          : m.transform == DCFS_T_Q4_0 ? 18u
                                                                       : 20u;
                const unsigned int head = m.transform == DCFS_T_Q4_1 ? 4u : 2u;
                const unsigned int body = unit - head;
                const unsigned char* heads[5] = {p0, p1, p2, p3, p4};
                const unsigned char* src_body = heads[head];
                unsigned char* blk = dst + (unsigned long long)i * unit;
                for (unsigned int h = 0; h < head; ++h) {
                    blk[h] = heads[h][i];
                }
                const unsigned char* sb = src_body + (unsigned long long)i * body;
                for (unsigned int b = 0; b < body; ++b) {
                    blk[head + b] = sb[b];
                }
                break;
            }
            default:
                break;  // the planner never sends an unknown transform
        }
    }
}
