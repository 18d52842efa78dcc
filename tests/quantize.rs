//! `dcfs quantize` end to end: a synthetic model (BF16/F16/F32 linears, embeddings, norms,
//! a sharded index) and, when fetched, all-MiniLM-L6-v2 in F32. The output must parse,
//! carry the compressed-tensors layout, and dequantize to within half a quantization step.

mod common;

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::process::Command;

use common::{bf16_bytes, dcfs_bin, f32_bytes, weights, Rng};
use dcfs::model::{safetensors, Dtype, TensorSpan};
use dcfs::quantize::to_f32;

fn f16_bytes(w: &[f32]) -> Vec<u8> {
    // Values here are normal f16 numbers; truncating the mantissa is enough for a test input.
    w.iter()
        .flat_map(|&x| {
            let b = x.to_bits();
            let sign = ((b >> 16) & 0x8000) as u16;
            let e = ((b >> 23) & 0xff) as i32 - 127 + 15;
            let h = if e <= 0 {
                sign
            } else {
                sign | ((e as u16) << 10) | ((b >> 13) & 0x3ff) as u16
            };
            h.to_le_bytes()
        })
        .collect()
}

struct Model {
    bytes: Vec<u8>,
    tensors: HashMap<String, TensorSpan>,
}

impl Model {
    fn load(p: &Path) -> Model {
        let bytes = fs::read(p).unwrap();
        let l = safetensors::parse(&bytes, bytes.len() as u64).unwrap();
        let tensors = l.tensors.into_iter().map(|t| (t.name.clone(), t)).collect();
        Model { bytes, tensors }
    }
    fn raw(&self, n: &str) -> &[u8] {
        let t = &self.tensors[n];
        &self.bytes[t.start as usize..(t.start + t.len) as usize]
    }
    fn floats(&self, n: &str) -> Vec<f32> {
        to_f32(self.tensors[n].dtype, self.raw(n)).unwrap()
    }
}

fn run(args: &[&str]) -> String {
    let out = Command::new(dcfs_bin()).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "dcfs {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Checks every quantized tensor of `q` against its source in `orig`; returns how many.
fn check(orig: &Model, q: &Model, channel: bool) -> usize {
    let mut n = 0;
    for (name, t) in &q.tensors {
        if name.ends_with("_scale") {
            continue;
        }
        let src = &orig.tensors[name.as_str()];
        if t.dtype != Dtype::I8 || src.dtype == Dtype::I8 {
            assert_eq!(q.raw(name), orig.raw(name), "{name} kept bit for bit");
            continue;
        }
        n += 1;
        assert_eq!(t.shape, src.shape, "{name}");
        let scale_t = &q.tensors[&format!("{name}_scale")];
        assert_eq!(scale_t.dtype, Dtype::F32);
        let want_shape = if channel { vec![t.shape[0], 1] } else { vec![1] };
        assert_eq!(scale_t.shape, want_shape, "{name}_scale");
        let scales = q.floats(&format!("{name}_scale"));
        let w = orig.floats(name);
        let cols = t.shape[1] as usize;
        for (i, (&code, &x)) in q.raw(name).iter().zip(&w).enumerate() {
            let s = scales[if channel { i / cols } else { 0 }];
            let d = (code as i8) as f32 * s;
            // Half a step, plus f32 rounding of x/s and q*s (a few ulps of x).
            assert!(
                (d - x).abs() <= s * 0.5 * (1.0 + 1e-5) + x.abs() * 1e-6,
                "{name}[{i}]: {x} vs {d}"
            );
        }
    }
    n
}

fn synth(dir: &Path) {
    let mut r = Rng::new(42);
    fs::create_dir_all(dir).unwrap();
    let a = safetensors::build(&[
        (
            "embed_tokens.weight",
            "BF16",
            vec![100, 64],
            bf16_bytes(&weights(&mut r, 6400)),
        ),
        (
            "layers.0.q_proj.weight",
            "BF16",
            vec![64, 64],
            bf16_bytes(&weights(&mut r, 4096)),
        ),
        (
            "layers.0.up_proj.weight",
            "F16",
            vec![128, 64],
            f16_bytes(&weights(&mut r, 8192)),
        ),
        ("layers.0.norm.weight", "F32", vec![64], f32_bytes(&[1.0; 64])),
    ]);
    let b = safetensors::build(&[
        (
            "layers.0.down_proj.weight",
            "F32",
            vec![64, 128],
            f32_bytes(&weights(&mut r, 8192)),
        ),
        ("layers.0.down_proj.bias", "F32", vec![64], f32_bytes(&[0.1; 64])),
        (
            "lm_head.weight",
            "F32",
            vec![100, 64],
            f32_bytes(&weights(&mut r, 6400)),
        ),
    ]);
    fs::write(dir.join("model-00001-of-00002.safetensors"), a).unwrap();
    fs::write(dir.join("model-00002-of-00002.safetensors"), b).unwrap();
    let index = serde_json::json!({"metadata": {}, "weight_map": {
        "embed_tokens.weight": "model-00001-of-00002.safetensors",
        "layers.0.q_proj.weight": "model-00001-of-00002.safetensors",
        "layers.0.up_proj.weight": "model-00001-of-00002.safetensors",
        "layers.0.norm.weight": "model-00001-of-00002.safetensors",
        "layers.0.down_proj.weight": "model-00002-of-00002.safetensors",
        "layers.0.down_proj.bias": "model-00002-of-00002.safetensors",
        "lm_head.weight": "model-00002-of-00002.safetensors",
    }});
    fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    fs::write(dir.join("config.json"), r#"{"model_type":"llama"}"#).unwrap();
    fs::write(dir.join("tokenizer.json"), r#"{"version":"1.0"}"#).unwrap();
}

#[test]
fn quantizes_a_synthetic_sharded_model() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    synth(&src);
    for (gran, channel) in [("tensor", false), ("channel", true)] {
        let dst = t.path().join(gran);
        let s = |p: &Path| p.to_str().unwrap().to_string();
        run(&["quantize", &s(&src), &s(&dst), "--granularity", gran]);
        let mut n = 0;
        for shard in ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"] {
            n += check(&Model::load(&src.join(shard)), &Model::load(&dst.join(shard)), channel);
        }
        assert_eq!(
            n, 3,
            "q_proj, up_proj, down_proj quantized; embeddings, norm, lm_head kept"
        );
        let idx: serde_json::Value =
            serde_json::from_slice(&fs::read(dst.join("model.safetensors.index.json")).unwrap()).unwrap();
        assert_eq!(
            idx["weight_map"]["layers.0.down_proj.weight_scale"],
            "model-00002-of-00002.safetensors"
        );
        assert!(idx["weight_map"].get("lm_head.weight_scale").is_none());
        let cfg: serde_json::Value = serde_json::from_slice(&fs::read(dst.join("config.json")).unwrap()).unwrap();
        let qc = &cfg["quantization_config"];
        assert_eq!(qc["quant_method"], "compressed-tensors");
        assert_eq!(qc["config_groups"]["group_0"]["weights"]["strategy"], gran);
        // naive-quantized: I8 `weight` + `weight_scale`, what the stock loader expects when
        // the group names this format (it would infer pack-quantized otherwise).
        assert_eq!(qc["config_groups"]["group_0"]["format"], "naive-quantized");
        assert!(qc["ignore"].as_array().unwrap().iter().any(|v| v == "lm_head"));
        assert_eq!(
            fs::read(dst.join("tokenizer.json")).unwrap(),
            fs::read(src.join("tokenizer.json")).unwrap()
        );
    }
    // --skip keeps a layer; --prune-ratio zeroes at least that share of a quantized tensor.
    let dst = t.path().join("pruned");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    run(&[
        "quantize",
        &s(&src),
        &s(&dst),
        "--skip",
        "*q_proj*",
        "--prune-ratio",
        "0.5",
    ]);
    let q = Model::load(&dst.join("model-00001-of-00002.safetensors"));
    assert_eq!(q.tensors["layers.0.q_proj.weight"].dtype, Dtype::BF16);
    let up = q.raw("layers.0.up_proj.weight");
    assert!(up.iter().filter(|&&b| b == 0).count() >= up.len() / 2);
    // Analyze reads the same model and reports JSON with every tensor.
    let json: serde_json::Value = serde_json::from_str(&run(&["analyze", &s(&src), "--json"])).unwrap();
    assert_eq!(json["tensors"].as_array().unwrap().len(), 5);
}

#[test]
fn quantizes_minilm_when_present() {
    let Some(models) = common::models() else {
        return;
    };
    let src = models.join("minilm-f32");
    if !src.join("model.safetensors").exists() {
        eprintln!("SKIP: {} not fetched", src.display());
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let dst = t.path().join("q");
    run(&["quantize", src.to_str().unwrap(), dst.to_str().unwrap()]);
    let orig = Model::load(&src.join("model.safetensors"));
    let q = Model::load(&dst.join("model.safetensors"));
    // 6 layers x (q, k, v, attention out, intermediate, output) + the pooler.
    assert_eq!(check(&orig, &q, true), 37);
    assert_eq!(q.tensors["embeddings.word_embeddings.weight"].dtype, Dtype::F32);
    assert!(dst.join("1_Pooling/config.json").exists());
}
