//! Chunk planning: the header is its own chunk(s), tensors are cut at their boundaries into
//! pieces of at most the chunk size (a whole number of elements or blocks), and any gap
//! between tensors is opaque.

use crate::format::{MAX_CHUNK_LEN, NO_TENSOR};
use crate::model::{Dtype, Layout};
use crate::transform::Transform;

#[derive(Clone, Debug, PartialEq)]
pub struct PlannedChunk {
    pub offset: u64,
    pub len: u32,
    /// `None` for header, gap and opaque bytes.
    pub dtype: Option<Dtype>,
    pub tensor: u32,
    /// False when partial compression keeps this chunk raw.
    pub compress: bool,
}

impl PlannedChunk {
    pub fn transforms(&self) -> &'static [Transform] {
        match self.dtype {
            Some(d) => d.transforms(),
            None => &[Transform::None],
        }
    }
}

/// Plans the chunks of a file of `size` bytes.
pub fn plan_chunks(size: u64, layout: &Layout, chunk_size: u32, compress_fraction: f64) -> Vec<PlannedChunk> {
    let chunk_size = chunk_size.clamp(4096, MAX_CHUNK_LEN) as u64;
    let mut out = Vec::new();
    let opaque = |out: &mut Vec<PlannedChunk>, from: u64, to: u64| {
        let mut p = from;
        while p < to {
            let n = (to - p).min(chunk_size);
            out.push(PlannedChunk {
                offset: p,
                len: n as u32,
                dtype: None,
                tensor: NO_TENSOR,
                compress: true,
            });
            p += n;
        }
    };
    let mut pos = 0u64;
    opaque(&mut out, 0, layout.header_len.min(size));
    pos = pos.max(layout.header_len.min(size));
    for (ti, t) in layout.tensors.iter().enumerate() {
        if t.len == 0 {
            continue;
        }
        opaque(&mut out, pos, t.start);
        let unit = t.dtype.unit_bytes().max(1);
        let step = (chunk_size / unit).max(1) * unit;
        let step = if step > MAX_CHUNK_LEN as u64 { chunk_size } else { step };
        let n = t.len.div_ceil(step);
        let mut p = t.start;
        let end = t.start + t.len;
        let mut k = 0u64;
        while p < end {
            let len = (end - p).min(step);
            // Spread the coded chunks evenly: chunk k is coded when the running quota grows.
            let compress = ((k + 1) as f64 * compress_fraction).floor() > (k as f64 * compress_fraction).floor()
                || compress_fraction >= 1.0;
            out.push(PlannedChunk {
                offset: p,
                len: len as u32,
                dtype: Some(t.dtype),
                tensor: ti as u32,
                compress,
            });
            p += len;
            k += 1;
        }
        debug_assert_eq!(k, n);
        pos = end;
    }
    opaque(&mut out, pos, size);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{safetensors, FileKind, TensorSpan};

    #[test]
    fn chunks_tile_the_file_on_tensor_and_unit_boundaries() {
        let f = safetensors::build(&[
            ("a", "BF16", vec![5000], vec![1; 10000]),
            ("b", "F32", vec![3], vec![2; 12]),
            ("c", "I8", vec![9000], vec![3; 9000]),
        ]);
        let l = safetensors::parse(&f, f.len() as u64).unwrap();
        let plan = plan_chunks(f.len() as u64 + 5, &l, 4096, 1.0);
        let mut pos = 0;
        for c in &plan {
            assert_eq!(c.offset, pos);
            if let Some(d) = c.dtype {
                assert_eq!(c.len as u64 % d.unit_bytes(), 0);
            }
            pos += c.len as u64;
        }
        assert_eq!(pos, f.len() as u64 + 5);
        assert_eq!(plan[0].dtype, None);
        assert_eq!(plan.last().unwrap().len, 5, "trailing bytes are opaque");
    }

    #[test]
    fn compress_fraction_codes_that_share_of_each_tensor() {
        let l = Layout {
            kind: FileKind::Safetensors,
            header_len: 0,
            tensors: vec![TensorSpan {
                name: "t".into(),
                dtype: Dtype::U8,
                shape: vec![40960],
                start: 0,
                len: 40960,
            }],
        };
        for (f, want) in [(0.0, 0), (0.2, 2), (0.5, 5), (1.0, 10)] {
            let coded = plan_chunks(40960, &l, 4096, f).iter().filter(|c| c.compress).count();
            assert_eq!(coded, want, "fraction {f}");
        }
    }
}
