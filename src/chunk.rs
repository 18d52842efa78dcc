//! One chunk: transform into planes, code each plane, frame the result; and back.
//!
//! ```text
//! payload (codec != raw) := u8 n_planes | n_planes x (u8 plane codec | u32 LE stored len) | bodies
//! payload (codec == raw) := the original bytes
//! ```

use crate::codec::{self, rans, Codec, CodecError};
use crate::transform::Transform;

/// Codec policy for a pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CodecChoice {
    /// Smallest of rANS and zstd per plane, preferring rANS unless zstd is clearly smaller.
    Auto,
    Rans,
    Zstd,
    Raw,
}

id_enum! {
    /// Chunk-level codec as recorded in the index.
    pub enum ChunkCodec {
        /// Stored verbatim: served without decoding.
        Raw = 0 => "raw",
        Rans = 1 => "rans",
        Zstd = 2 => "zstd",
        /// Planes use different codecs.
        Mixed = 3 => "mixed",
    }
}

#[derive(Clone, Copy, Debug)]
pub struct EncodeOptions {
    pub codec: CodecChoice,
    pub zstd_level: i32,
    /// A chunk whose coded size is above `(1 - min_gain) * len` is stored raw.
    pub min_gain: f64,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        EncodeOptions {
            codec: CodecChoice::Auto,
            zstd_level: 3,
            min_gain: 0.03,
        }
    }
}

/// Statistics of one plane, for `inspect`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PlaneStat {
    pub len: u64,
    pub stored: u64,
    /// Order-0 entropy of the plane, in bits.
    pub entropy_bits: f64,
    pub codec: Option<Codec>,
}

pub struct Encoded {
    pub codec: ChunkCodec,
    pub transform: Transform,
    pub payload: Vec<u8>,
    pub planes: Vec<PlaneStat>,
}

/// zstd must beat rANS by this factor in `auto` to be picked: rANS decodes faster and
/// maps onto the GPU path.
const ZSTD_PREFERENCE: f64 = 0.97;
/// A plane whose order-0 bound saves less than this is not worth an rANS attempt.
const RANS_HOPELESS: f64 = 0.995;

/// Planes at most this long get a full zstd trial in `auto`; longer ones are probed first.
const ZSTD_PROBE: usize = 64 * 1024;

/// Whether zstd could beat rANS on `plane` by [`ZSTD_PREFERENCE`]: zstd on a slice from the
/// middle of the plane is compared with that slice's order-0 bound, which rANS reaches
/// within about 1%. Only structure beyond order 0 (repeats, runs, text) lets zstd win,
/// and a slice shows it; the full trial costs as much as the rANS encode itself, so
/// `auto` runs it only when the probe says it has a chance (with a 3% margin).
fn zstd_may_win(plane: &[u8], level: i32) -> bool {
    if plane.len() <= 2 * ZSTD_PROBE {
        return true;
    }
    let at = (plane.len() - ZSTD_PROBE) / 2;
    let probe = &plane[at..at + ZSTD_PROBE];
    let bound = rans::entropy_bits(&rans::histogram(probe)) / 8.0;
    let mut v = Vec::new();
    codec::encode(Codec::Zstd, probe, level, &mut v);
    (v.len() as f64) < bound
}

/// Picks the transform whose planes have the smallest total order-0 entropy.
pub fn pick_transform(data: &[u8], candidates: &[Transform]) -> Transform {
    split_best(data, candidates).0
}

/// The planes of a transform, with each plane's symbol counts.
type Split = (Transform, Vec<Vec<u8>>, Vec<[u64; 256]>);

/// Splits `data` by the candidate whose planes have the smallest total order-0 entropy and
/// returns that split with its histograms, so the encoder does not redo either.
fn split_best(data: &[u8], candidates: &[Transform]) -> Split {
    let mut best: Option<(f64, Split)> = None;
    for t in candidates.iter().copied().filter(|t| data.len() % t.unit() == 0) {
        let planes = t.split(data);
        let counts: Vec<[u64; 256]> = planes.iter().map(|p| rans::histogram(p)).collect();
        let cost: f64 = counts.iter().map(rans::entropy_bits).sum();
        if best.as_ref().is_none_or(|b| cost < b.0) {
            best = Some((cost, (t, planes, counts)));
        }
    }
    best.map(|b| b.1)
        .unwrap_or_else(|| (Transform::None, vec![data.to_vec()], vec![rans::histogram(data)]))
}

/// Encodes one chunk. `candidates` are the transforms the dtype allows, best guess first;
/// `compress` false stores the chunk raw (partial compression).
pub fn encode(data: &[u8], candidates: &[Transform], compress: bool, opt: &EncodeOptions) -> Encoded {
    let raw = |planes| Encoded {
        codec: ChunkCodec::Raw,
        transform: Transform::None,
        payload: data.to_vec(),
        planes,
    };
    if !compress || opt.codec == CodecChoice::Raw || data.is_empty() {
        return raw(vec![PlaneStat {
            len: data.len() as u64,
            stored: data.len() as u64,
            entropy_bits: if data.is_empty() {
                0.0
            } else {
                rans::entropy_bits(&rans::histogram(data))
            },
            codec: Some(Codec::Raw),
        }]);
    }
    let (transform, planes, plane_counts) = split_best(data, candidates);
    let mut bodies: Vec<(Codec, Vec<u8>)> = Vec::with_capacity(planes.len());
    let mut stats = Vec::with_capacity(planes.len());
    for (p, counts) in planes.iter().zip(&plane_counts) {
        let h = rans::entropy_bits(counts);
        let mut best: (Codec, Vec<u8>) = (Codec::Raw, Vec::new());
        let mut best_len = p.len();
        let try_rans =
            matches!(opt.codec, CodecChoice::Auto | CodecChoice::Rans) && h / 8.0 < RANS_HOPELESS * p.len() as f64;
        if try_rans {
            let mut v = Vec::new();
            rans::encode_with(p, &rans::FreqTable::from_counts(counts), &mut v);
            if v.len() < best_len {
                best_len = v.len();
                best = (Codec::Rans, v);
            }
        }
        let try_zstd = match opt.codec {
            CodecChoice::Zstd => true,
            CodecChoice::Auto => zstd_may_win(p, opt.zstd_level),
            _ => false,
        };
        if try_zstd {
            let mut v = Vec::new();
            codec::encode(Codec::Zstd, p, opt.zstd_level, &mut v);
            let bar = if best.0 == Codec::Rans {
                best_len as f64 * ZSTD_PREFERENCE
            } else {
                best_len as f64
            };
            if (v.len() as f64) < bar {
                best_len = v.len();
                best = (Codec::Zstd, v);
            }
        }
        if best.0 == Codec::Raw {
            best.1 = p.clone();
        }
        stats.push(PlaneStat {
            len: p.len() as u64,
            stored: best_len as u64,
            entropy_bits: h,
            codec: Some(best.0),
        });
        bodies.push(best);
    }
    let framed = 1 + 5 * bodies.len() + bodies.iter().map(|b| b.1.len()).sum::<usize>();
    if framed as f64 > (1.0 - opt.min_gain) * data.len() as f64 {
        for s in &mut stats {
            s.stored = s.len;
            s.codec = Some(Codec::Raw);
        }
        return raw(stats);
    }
    let mut payload = Vec::with_capacity(framed);
    payload.push(bodies.len() as u8);
    for (c, b) in &bodies {
        payload.push(*c as u8);
        payload.extend_from_slice(&(b.len() as u32).to_le_bytes());
    }
    for (_, b) in &bodies {
        payload.extend_from_slice(b);
    }
    let coded: Vec<Codec> = bodies.iter().map(|b| b.0).filter(|&c| c != Codec::Raw).collect();
    let codec = if coded.iter().all(|&c| c == Codec::Rans) {
        ChunkCodec::Rans
    } else if coded.iter().all(|&c| c == Codec::Zstd) {
        ChunkCodec::Zstd
    } else {
        ChunkCodec::Mixed
    };
    Encoded {
        codec,
        transform,
        payload,
        planes: stats,
    }
}

/// The coded planes of a payload, parsed and bounds-checked.
pub struct Framed<'a> {
    pub planes: Vec<(Codec, &'a [u8], usize)>,
}

/// Parses the plane framing of a non-raw payload for a chunk of `len` bytes.
pub fn parse(transform: Transform, payload: &[u8], len: usize) -> Result<Framed<'_>, CodecError> {
    let lens = transform.plane_lens(len).ok_or(CodecError::corrupt(
        "chunk length is not a whole number of transform units",
    ))?;
    let n = *payload.first().ok_or(CodecError::corrupt("empty payload"))? as usize;
    if n != lens.len() {
        return Err(CodecError::Mismatch {
            what: "plane count",
            expected: lens.len() as u64,
            actual: n as u64,
        });
    }
    let mut pos = 1 + 5 * n;
    if payload.len() < pos {
        return Err(CodecError::corrupt("plane table truncated"));
    }
    let mut planes = Vec::with_capacity(n);
    for (i, &plen) in lens.iter().enumerate() {
        let e = &payload[1 + 5 * i..6 + 5 * i];
        let c = Codec::from_id(e[0]).ok_or(CodecError::UnknownCodec(e[0]))?;
        let sl = u32::from_le_bytes(e[1..5].try_into().unwrap()) as usize;
        let body = payload
            .get(pos..pos.saturating_add(sl))
            .ok_or(CodecError::corrupt("plane body runs past the payload"))?;
        pos += sl;
        planes.push((c, body, plen));
    }
    if pos != payload.len() {
        return Err(CodecError::Mismatch {
            what: "payload length",
            expected: pos as u64,
            actual: payload.len() as u64,
        });
    }
    Ok(Framed { planes })
}

/// Decodes a payload into `out` (the chunk's original length).
pub fn decode(codec: ChunkCodec, transform: Transform, payload: &[u8], out: &mut [u8]) -> Result<(), CodecError> {
    if codec == ChunkCodec::Raw {
        return codec::decode(Codec::Raw, payload, out);
    }
    let framed = parse(transform, payload, out.len())?;
    if transform == Transform::None {
        let (c, body, _) = framed.planes[0];
        return codec::decode(c, body, out);
    }
    // The planes go into this thread's scratch buffers, reused from chunk to chunk: a
    // fresh buffer per plane cost a page fault and a page clear per 4 KiB in the mount.
    // A reused buffer holds stale bytes until the codec overwrites every byte of its
    // plane (or fails, and the chunk is refused); the checksum checks the result anyway.
    // Taken out of the cell while in use, so a nested call could never find it borrowed.
    let mut bufs = PLANES.with(|c| c.take());
    if bufs.len() < framed.planes.len() {
        bufs.resize_with(framed.planes.len(), Vec::new);
    }
    let mut r = Ok(());
    for (b, &(c, body, plen)) in bufs.iter_mut().zip(&framed.planes) {
        if b.len() < plen {
            b.resize(plen, 0);
        }
        r = codec::decode(c, body, &mut b[..plen]);
        if r.is_err() {
            break;
        }
    }
    if r.is_ok() {
        let refs: Vec<&[u8]> = bufs
            .iter()
            .zip(&framed.planes)
            .map(|(b, &(_, _, plen))| &b[..plen])
            .collect();
        transform.merge(&refs, out);
    }
    // A rare huge chunk must not pin its planes' memory in every thread for good.
    bufs.retain(|b| b.capacity() <= MAX_KEPT_PLANE);
    PLANES.with(|c| c.replace(bufs));
    r
}

/// Largest plane buffer a thread keeps between chunks (planes of 1 MiB chunks are at
/// most 1 MiB; larger chunks allocate afresh).
const MAX_KEPT_PLANE: usize = 4 << 20;

thread_local! {
    /// Per-thread plane buffers for [`decode`].
    static PLANES: std::cell::Cell<Vec<Vec<u8>>> = const { std::cell::Cell::new(Vec::new()) };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bf16ish(n: usize) -> Vec<u8> {
        let mut r = crate::test_rng(0x9E3779B97F4A7C15);
        let mut v = Vec::with_capacity(2 * n);
        for _ in 0..n {
            let s = r();
            // Exponents cluster around 120..124 like trained weights; mantissas are noise.
            let e = 118 + (s % 7) as u16 + ((s >> 8) % 3) as u16;
            let bits = ((s >> 20) as u16 & 0x8000) | (e << 7) | ((s >> 32) as u16 & 0x7f);
            v.extend_from_slice(&bits.to_le_bytes());
        }
        v
    }

    #[test]
    fn chunks_roundtrip_under_every_policy() {
        let data = bf16ish(100_000);
        for codec in [
            CodecChoice::Auto,
            CodecChoice::Rans,
            CodecChoice::Zstd,
            CodecChoice::Raw,
        ] {
            let opt = EncodeOptions {
                codec,
                ..Default::default()
            };
            let e = encode(&data, &[Transform::Bf16Exp, Transform::Split2], true, &opt);
            let mut out = vec![0; data.len()];
            decode(e.codec, e.transform, &e.payload, &mut out).unwrap();
            assert_eq!(out, data, "{codec:?}");
            if codec != CodecChoice::Raw {
                assert!(e.payload.len() < data.len() * 3 / 4, "{codec:?}: {}", e.payload.len());
            }
        }
        let e = encode(&data, &[Transform::Bf16Exp], false, &EncodeOptions::default());
        assert_eq!(e.codec, ChunkCodec::Raw);
    }

    #[test]
    fn auto_probe_skips_zstd_only_where_it_cannot_win() {
        // Weight-like planes (order-0 data): zstd cannot reach the order-0 bound.
        let w = bf16ish(400_000);
        for p in Transform::Bf16Exp.split(&w) {
            assert!(!zstd_may_win(&p, 3));
        }
        // Text repeats: zstd wins by far, and auto must still pick it on a large plane.
        let line = b"{\"architectures\": [\"BertModel\"], \"hidden_size\": 384, \"vocab\": 30522}\n";
        let text: Vec<u8> = line.iter().copied().cycle().take(600_000).collect();
        assert!(zstd_may_win(&text, 3));
        let e = encode(&text, &[Transform::None], true, &EncodeOptions::default());
        assert_eq!(e.codec, ChunkCodec::Zstd);
        let mut out = vec![0; text.len()];
        decode(e.codec, e.transform, &e.payload, &mut out).unwrap();
        assert_eq!(out, text);
        // Small planes always get the full trial.
        assert!(zstd_may_win(&text[..2 * ZSTD_PROBE], 3) && zstd_may_win(&w[..1000], 3));
    }

    #[test]
    fn incompressible_chunks_stay_raw() {
        let mut s = 1u64;
        let data: Vec<u8> = (0..50_000)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (s >> 56) as u8
            })
            .collect();
        let e = encode(&data, &[Transform::None], true, &EncodeOptions::default());
        assert_eq!(e.codec, ChunkCodec::Raw);
        assert_eq!(e.payload, data);
    }

    #[test]
    fn corrupt_payloads_error() {
        let data = bf16ish(5000);
        let e = encode(&data, &[Transform::Bf16Exp], true, &EncodeOptions::default());
        let mut out = vec![0; data.len()];
        assert!(decode(e.codec, e.transform, &e.payload[..e.payload.len() - 1], &mut out).is_err());
        assert!(decode(e.codec, e.transform, &[], &mut out).is_err());
        assert!(decode(e.codec, Transform::Split4, &e.payload, &mut out[..9998]).is_err());
    }
}
