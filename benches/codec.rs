//! Single-core encode/decode throughput of rANS and zstd on real model chunks (MB/s of
//! original bytes). Uses models/ when fetched, else synthetic chunks with trained-weight
//! statistics. Run: `cargo bench --bench codec`.

use std::path::Path;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use dcfs::chunk::{self, CodecChoice, EncodeOptions};
use dcfs::codec::{self, Codec};
use dcfs::model::{safetensors, Dtype};
use dcfs::transform::Transform;

const CHUNK: usize = 1 << 20;

/// The first 1 MiB of the largest tensor of `file`, with its dtype.
fn real_chunk(file: &Path) -> Option<(Vec<u8>, Dtype)> {
    let data = std::fs::read(file).ok()?;
    let l = safetensors::parse(&data, data.len() as u64).ok()?;
    let t = l.tensors.iter().max_by_key(|t| t.len)?;
    let n = (t.len as usize).min(CHUNK);
    Some((data[t.start as usize..t.start as usize + n].to_vec(), t.dtype))
}

fn synthetic(dtype: Dtype) -> Vec<u8> {
    let mut s = 0x1234_5678_9abc_def0u64;
    let mut normal = move || {
        let mut acc = 0.0;
        for _ in 0..12 {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            acc += (s >> 11) as f64 / (1u64 << 53) as f64;
        }
        (acc - 6.0) * 0.04
    };
    match dtype {
        Dtype::BF16 => (0..CHUNK / 2)
            .flat_map(|_| ((normal() as f32).to_bits() >> 16).to_le_bytes()[..2].to_vec())
            .collect(),
        Dtype::I8 => (0..CHUNK)
            .map(|_| (normal() / 0.2 * 127.0).round().clamp(-127.0, 127.0) as i8 as u8)
            .collect(),
        _ => (0..CHUNK / 4).flat_map(|_| (normal() as f32).to_le_bytes()).collect(),
    }
}

fn inputs() -> Vec<(&'static str, Vec<u8>, Dtype)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    let mut v = Vec::new();
    for (name, dir, dt) in [
        ("bf16", "minilm-bf16", Dtype::BF16),
        ("int8", "minilm-int8-tensor", Dtype::I8),
        ("f32", "minilm-f32", Dtype::F32),
    ] {
        match real_chunk(&root.join(dir).join("model.safetensors")) {
            Some((d, t)) => v.push((name, d, t)),
            None => {
                eprintln!("{dir} not fetched: using a synthetic {name} chunk");
                v.push((name, synthetic(dt), dt));
            }
        }
    }
    v
}

fn planes(c: &mut Criterion) {
    let mut g = c.benchmark_group("plane");
    for (name, data, dtype) in inputs() {
        let t = dtype.transforms()[0];
        for (pi, plane) in t.split(&data).into_iter().enumerate() {
            g.throughput(Throughput::Bytes(plane.len() as u64));
            let id = format!("{name}-{}-p{pi}", t.name());
            for codec in [Codec::Rans, Codec::Zstd] {
                let mut enc = Vec::new();
                codec::encode(codec, &plane, 3, &mut enc);
                g.bench_with_input(BenchmarkId::new(format!("{codec}-encode"), &id), &plane, |b, p| {
                    b.iter(|| {
                        let mut out = Vec::with_capacity(p.len());
                        codec::encode(codec, p, 3, &mut out);
                        out
                    })
                });
                let mut out = vec![0u8; plane.len()];
                g.bench_with_input(BenchmarkId::new(format!("{codec}-decode"), &id), &enc, |b, e| {
                    b.iter(|| codec::decode(codec, e, &mut out).unwrap())
                });
            }
        }
    }
    g.finish();
}

fn chunks(c: &mut Criterion) {
    let mut g = c.benchmark_group("chunk");
    for (name, data, dtype) in inputs() {
        g.throughput(Throughput::Bytes(data.len() as u64));
        for choice in [CodecChoice::Auto, CodecChoice::Rans, CodecChoice::Zstd] {
            let opt = EncodeOptions {
                codec: choice,
                ..Default::default()
            };
            let cands: &[Transform] = dtype.transforms();
            let e = chunk::encode(&data, cands, true, &opt);
            g.bench_function(BenchmarkId::new(format!("encode-{choice:?}"), name), |b| {
                b.iter(|| chunk::encode(&data, cands, true, &opt))
            });
            let mut out = vec![0u8; data.len()];
            g.bench_function(BenchmarkId::new(format!("decode-{choice:?}"), name), |b| {
                b.iter(|| chunk::decode(e.codec, e.transform, &e.payload, &mut out).unwrap())
            });
        }
    }
    g.finish();
}

/// The plane merge alone (the last step of every decode), per transform, on 1 MiB.
fn merges(c: &mut Criterion) {
    let mut g = c.benchmark_group("merge");
    let data: Vec<u8> = inputs().into_iter().next().map(|(_, d, _)| d).unwrap_or_default();
    for &t in Transform::ALL {
        let n = data.len() / t.unit() * t.unit();
        let planes = t.split(&data[..n]);
        let refs: Vec<&[u8]> = planes.iter().map(|p| p.as_slice()).collect();
        let mut out = vec![0u8; n];
        g.throughput(Throughput::Bytes(n as u64));
        g.bench_function(t.name(), |b| b.iter(|| t.merge(&refs, &mut out)));
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(2)).warm_up_time(std::time::Duration::from_millis(500));
    targets = planes, chunks, merges
}
criterion_main!(benches);
