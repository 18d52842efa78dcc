//! The whole-file BLAKE3 digest, hashed in pieces. `verify` and `unpack` used to hash every
//! decoded byte on the one thread that consumes the chunks in order, which left the decode
//! threads waiting on it. Now the thread that decodes a chunk also hashes the BLAKE3
//! subtrees that lie inside it, while its bytes are still in cache, and the consumer only
//! joins their chaining values in file order. The result is `blake3::hash` of the file.
//!
//! Invariants (the BLAKE3 tree, paper section 2.1):
//! - The input is cut into [`CHUNK_LEN`] (1 KiB) BLAKE3 chunks, the last possibly short.
//! - Every run of 2^k of them that starts at a multiple of 2^k chunks and lies inside the
//!   input is a node of the tree. The one exception is the whole input, which is the root
//!   and is hashed differently.
//! - Pushing such nodes in input order onto a stack, merging the top two while they are
//!   the same size, keeps the stack spelling the binary count of chunks pushed so far. At
//!   the end the stack merges right to left, the last merge being the root.
//!
//! A stored chunk rarely starts on a 1 KiB boundary. Its bytes before the first boundary
//! ("head") and after the last ("tail") belong to BLAKE3 chunks it shares with its
//! neighbours. The consumer gathers those into one 1 KiB buffer and hashes them itself:
//! at most 2 KiB per stored chunk.

use blake3::hazmat::{merge_subtrees_non_root, merge_subtrees_root, ChainingValue, HasherExt, Mode};
use blake3::{Hasher, CHUNK_LEN};

const CHUNK: u64 = CHUNK_LEN as u64;

/// Whether a file of `len` bytes stored as chunks of `lens` bytes can be hashed in pieces:
/// it spans two BLAKE3 chunks or more (else its one chunk is the root), and no stored chunk
/// holds all of it (else a subtree inside it could be the root).
pub(crate) fn splittable(len: u64, mut lens: impl Iterator<Item = u64>) -> bool {
    len > CHUNK && lens.all(|l| l < len)
}

/// The hashed parts of one stored chunk: its `head` and `tail` lengths, left for the
/// consumer, and the chaining values of the whole subtrees between them, in order.
#[derive(Debug)]
pub(crate) struct Pieces {
    head: usize,
    tail: usize,
    nodes: Vec<Node>,
}

/// A subtree: its first BLAKE3 chunk, its height (2^height chunks) and chaining value.
#[derive(Clone, Copy, Debug)]
struct Node {
    first: u64,
    height: u32,
    cv: ChainingValue,
}

/// Hashes the subtrees inside the stored chunk `data`, which starts at byte `start` of a
/// file of `total` bytes. Runs on the decoding thread.
pub(crate) fn pieces(data: &[u8], start: u64, total: u64) -> Pieces {
    let end = start + data.len() as u64;
    // The whole BLAKE3 chunks inside: from the first boundary to the last one, or to the
    // end of the file, whose last BLAKE3 chunk may be short.
    let a = end.min(start.next_multiple_of(CHUNK));
    let b = if end == total { end } else { end / CHUNK * CHUNK }.max(a);
    let mut nodes = Vec::new();
    let mut x = a;
    while x < b {
        let first = x / CHUNK;
        let left = (b - x).div_ceil(CHUNK);
        // As large as the alignment of `x` allows, and no larger than what is left.
        let align = if first == 0 {
            u64::MAX
        } else {
            1 << first.trailing_zeros()
        };
        let n = align.min(1 << left.ilog2());
        let len = (n * CHUNK).min(b - x);
        let at = (x - start) as usize;
        let cv = Hasher::new()
            .set_input_offset(x)
            .update(&data[at..at + len as usize])
            .finalize_non_root();
        nodes.push(Node {
            first,
            height: n.trailing_zeros(),
            cv,
        });
        x += len;
    }
    Pieces {
        head: (a - start) as usize,
        tail: (end - b) as usize,
        nodes,
    }
}

/// Joins [`Pieces`] in file order into the file's digest.
pub(crate) struct TreeHasher {
    total: u64,
    /// BLAKE3 chunks in the file.
    chunks: u64,
    /// Bytes joined so far.
    next: u64,
    /// The bytes `[next rounded down to a BLAKE3 chunk, next)`, not yet hashed.
    partial: Vec<u8>,
    stack: Vec<Node>,
    /// Set once pieces came out of order: the digest can no longer match.
    broken: bool,
}

impl TreeHasher {
    /// For a file of `total` bytes that is [`splittable`].
    pub(crate) fn new(total: u64) -> TreeHasher {
        TreeHasher {
            total,
            chunks: total.div_ceil(CHUNK),
            next: 0,
            partial: Vec::with_capacity(CHUNK_LEN),
            stack: Vec::new(),
            broken: false,
        }
    }

    /// Joins the stored chunk `data` that starts at byte `start`, with its `pieces`.
    pub(crate) fn add(&mut self, start: u64, data: &[u8], p: &Pieces) {
        let end = start + data.len() as u64;
        if self.broken || start != self.next || end > self.total || p.head + p.tail > data.len() {
            self.broken = true;
            return;
        }
        self.partial.extend_from_slice(&data[..p.head]);
        let a = start + p.head as u64;
        if !self.partial.is_empty() && (a % CHUNK == 0 || a == self.total) {
            self.flush_partial(a);
        }
        for &n in &p.nodes {
            self.push(n);
        }
        self.partial.extend_from_slice(&data[data.len() - p.tail..]);
        self.next = end;
        if end == self.total && !self.partial.is_empty() {
            self.flush_partial(end);
        }
    }

    /// Makes the digest fail: a chunk reached the join without its pieces.
    pub(crate) fn poison(&mut self) {
        self.broken = true;
    }

    /// Hashes the gathered BLAKE3 chunk that ends at byte `end`.
    fn flush_partial(&mut self, end: u64) {
        let at = end - self.partial.len() as u64;
        let cv = Hasher::new()
            .set_input_offset(at)
            .update(&self.partial)
            .finalize_non_root();
        self.partial.clear();
        self.push(Node {
            first: at / CHUNK,
            height: 0,
            cv,
        });
    }

    fn push(&mut self, n: Node) {
        self.stack.push(n);
        while let [.., l, r] = self.stack[..] {
            // Same size, and not the merge that would be the whole file (the root).
            if l.height != r.height || (l.first == 0 && 2u64 << l.height >= self.chunks) {
                break;
            }
            self.stack.truncate(self.stack.len() - 2);
            self.stack.push(Node {
                first: l.first,
                height: l.height + 1,
                cv: merge_subtrees_non_root(&l.cv, &r.cv, Mode::Hash),
            });
        }
    }

    /// The file's digest, or `None` when the pieces did not cover it exactly once.
    pub(crate) fn finalize(mut self) -> Option<[u8; 32]> {
        if self.broken || self.next != self.total || !self.partial.is_empty() || self.stack.len() < 2 {
            return None;
        }
        let mut right = self.stack.pop()?.cv;
        while self.stack.len() > 1 {
            let left = self.stack.pop()?.cv;
            right = merge_subtrees_non_root(&left, &right, Mode::Hash);
        }
        Some(*merge_subtrees_root(&self.stack[0].cv, &right, Mode::Hash).as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// Hashes `data` cut at `cuts` in pieces, or `None` where it is not splittable.
    fn in_pieces(data: &[u8], cuts: &[usize]) -> Option<[u8; 32]> {
        let mut bounds = vec![0];
        bounds.extend(cuts.iter().copied().filter(|&c| c > 0 && c < data.len()));
        bounds.push(data.len());
        bounds.sort_unstable();
        bounds.dedup();
        let spans: Vec<_> = bounds.windows(2).map(|w| w[0]..w[1]).collect();
        let total = data.len() as u64;
        if !splittable(total, spans.iter().map(|s| s.len() as u64)) {
            return None;
        }
        let mut t = TreeHasher::new(total);
        for s in &spans {
            let p = pieces(&data[s.clone()], s.start as u64, total);
            t.add(s.start as u64, &data[s.clone()], &p);
        }
        t.finalize()
    }

    #[test]
    fn equals_blake3_at_awkward_sizes_and_cuts() {
        let k = CHUNK_LEN;
        let cases: &[(usize, &[usize])] = &[
            (k + 1, &[1]),
            (k + 1, &[k]),
            (2 * k, &[k]),
            (2 * k, &[100]),
            (3 * k, &[k, 2 * k]),
            (4 * k, &[2 * k]),
            (4 * k, &[3 * k + 5]),
            (8 * k, &[7, 8, 9, 5 * k]),
            (64 * k, &[32 * k]),
            (64 * k + 1, &[64 * k]),
            (1 << 20, &[1000, 2000, 3000, 524_288]),
            (3 << 20, &[1 << 20, 2 << 20]),
            ((3 << 20) + 17, &[(1 << 20) - 3, (2 << 20) + 1001]),
        ];
        for &(n, cuts) in cases {
            let d = bytes(n, n as u64);
            assert_eq!(
                in_pieces(&d, cuts),
                Some(*blake3::hash(&d).as_bytes()),
                "{n} bytes cut at {cuts:?}"
            );
        }
    }

    #[test]
    fn equals_blake3_at_random_sizes_and_cuts() {
        let mut x = 0x2545F4914F6CDD1Du64;
        let mut rnd = |m: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % m as u64) as usize
        };
        let mut hashed = 0;
        for round in 0..400 {
            let n = CHUNK_LEN + 1 + rnd(if round % 4 == 0 { 600_000 } else { 40_000 });
            let d = bytes(n, round);
            let mut cuts: Vec<usize> = (0..rnd(12) + 1).map(|_| rnd(n)).collect();
            if round % 3 == 0 {
                // Cuts on and beside 1 KiB boundaries, where the off-by-ones live.
                cuts = cuts.iter().map(|c| c / CHUNK_LEN * CHUNK_LEN + rnd(3)).collect();
            }
            if let Some(h) = in_pieces(&d, &cuts) {
                assert_eq!(h, *blake3::hash(&d).as_bytes(), "{n} bytes cut at {cuts:?}");
                hashed += 1;
            }
        }
        assert!(hashed > 300, "only {hashed} of 400 cases were splittable");
    }

    #[test]
    fn small_or_single_chunk_files_are_not_split() {
        assert!(!splittable(CHUNK, [600, 424].into_iter()));
        assert!(!splittable(5000, [5000].into_iter()));
        assert!(!splittable(5000, [5000, 0].into_iter()));
        assert!(splittable(5000, [4000, 1000].into_iter()));
    }

    #[test]
    fn pieces_out_of_order_or_missing_give_no_digest() {
        let d = bytes(10_000, 7);
        let total = d.len() as u64;
        let (a, b) = (&d[..4000], &d[4000..]);
        let (pa, pb) = (pieces(a, 0, total), pieces(b, 4000, total));
        let mut t = TreeHasher::new(total);
        t.add(4000, b, &pb);
        t.add(0, a, &pa);
        assert_eq!(t.finalize(), None);
        let mut t = TreeHasher::new(total);
        t.add(0, a, &pa);
        assert_eq!(t.finalize(), None, "a missing tail is not a digest");
        let mut t = TreeHasher::new(total);
        t.add(0, a, &pa);
        t.poison();
        t.add(4000, b, &pb);
        assert_eq!(t.finalize(), None, "a chunk that came without its pieces");
        let mut t = TreeHasher::new(total);
        t.add(0, a, &pa);
        t.add(4000, b, &pb);
        assert_eq!(t.finalize(), Some(*blake3::hash(&d).as_bytes()));
    }
}
