use super::*;
use crate::model::safetensors;
use crate::pack::NoProgress;

/// Deterministic Gaussian-ish weights (sum of uniforms) with a few outlier columns.
fn weights(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
    let mut r = crate::test_rng(seed);
    let mut next = || (r() >> 11) as f64 / (1u64 << 53) as f64;
    (0..rows * cols)
        .map(|i| {
            let g = (0..4).map(|_| next()).sum::<f64>() - 2.0;
            let outlier = if i % cols == 3 { 8.0 } else { 1.0 };
            (g * 0.03 * outlier) as f32
        })
        .collect()
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn dequantized_within_half_a_step() {
    let (rows, cols) = (16, 40);
    let w = weights(rows, cols, 7);
    for g in [Granularity::Tensor, Granularity::Channel] {
        let qz = quantize(&w, rows, cols, g).unwrap();
        assert_eq!(qz.scales.len(), if g == Granularity::Tensor { 1 } else { rows });
        assert!(qz.q.iter().all(|&v| v != i8::MIN), "codes stay symmetric");
        let d = dequantize(&qz, cols);
        for (i, (a, b)) in w.iter().zip(&d).enumerate() {
            let s = qz.scales[if g == Granularity::Tensor { 0 } else { i / cols }];
            assert!(
                (a - b).abs() <= s * 0.5 * (1.0 + 1e-5) + a.abs() * 1e-6,
                "{g:?} element {i}: {a} vs {b}"
            );
        }
        // The largest magnitude maps to ±127 exactly.
        assert_eq!(qz.q.iter().map(|v| v.unsigned_abs()).max(), Some(127));
    }
}

#[test]
fn channel_codes_use_the_full_range_per_row() {
    let (rows, cols) = (8, 64);
    let w = weights(rows, cols, 3);
    let qz = quantize(&w, rows, cols, Granularity::Channel).unwrap();
    for row in qz.q.chunks(cols) {
        assert_eq!(row.iter().map(|v| v.unsigned_abs()).max(), Some(127));
    }
}

#[test]
fn zero_rows_and_bad_input() {
    let w = vec![0.0f32; 12];
    let qz = quantize(&w, 3, 4, Granularity::Channel).unwrap();
    assert!(qz.q.iter().all(|&v| v == 0));
    assert!(qz.scales.iter().all(|&s| s == 1.0));
    assert!(quantize(&w, 3, 5, Granularity::Tensor).is_err());
    let mut bad = w.clone();
    bad[5] = f32::NAN;
    assert!(quantize(&bad, 3, 4, Granularity::Tensor).is_err());
}

#[test]
fn pruning_zeroes_exactly_the_ratio_and_the_least_important() {
    let (rows, cols) = (32, 50);
    for ratio in [0.1, 0.3, 0.5] {
        let mut w = weights(rows, cols, 11);
        assert!(w.iter().all(|&x| x != 0.0));
        let orig = w.clone();
        let n = prune(&mut w, cols, None, ratio);
        let want = (ratio * (rows * cols) as f64).floor() as usize;
        assert_eq!(n, want);
        assert_eq!(w.iter().filter(|&&x| x == 0.0).count(), want);
        // Every zeroed weight is no larger than every kept one.
        let max_zeroed = orig
            .iter()
            .zip(&w)
            .filter(|(_, &p)| p == 0.0)
            .map(|(o, _)| o.abs())
            .fold(0f32, f32::max);
        let min_kept = w
            .iter()
            .filter(|&&p| p != 0.0)
            .map(|p| p.abs())
            .fold(f32::MAX, f32::min);
        assert!(max_zeroed <= min_kept);
    }
    // With statistics, a channel with huge activations keeps its small weights.
    let mut w = vec![0.01f32, 1.0, 0.01, 1.0];
    let act = [1000.0f32, 1.0];
    assert_eq!(prune(&mut w, 2, Some(&act), 0.5), 2);
    assert_eq!(w, vec![0.01, 0.0, 0.01, 0.0]);
    assert_eq!(prune(&mut w, 2, None, 0.0), 0);
}

#[test]
fn smoothing_is_invertible_and_balances_columns() {
    let (rows, cols) = (12, 10);
    let w = weights(rows, cols, 5);
    let act: Vec<f32> = (0..cols).map(|j| if j == 2 { 50.0 } else { 1.0 + j as f32 }).collect();
    let s = smooth_scales(&w, cols, &act, 0.5);
    let mut sw = w.clone();
    smooth(&mut sw, cols, &s);
    // With α = 0.5, max|W'_j| = max|X_j| / s_j = sqrt(max|X_j| · max|W_j|).
    for j in 0..cols {
        let wmax = (0..rows).map(|r| w[r * cols + j].abs()).fold(0f32, f32::max);
        let swmax = (0..rows).map(|r| sw[r * cols + j].abs()).fold(0f32, f32::max);
        let want = (act[j] * wmax).sqrt();
        assert!((swmax - want).abs() <= want * 1e-5, "column {j}");
    }
    // X·Wᵀ == (X/s)·W'ᵀ.
    let x: Vec<f32> = (0..cols).map(|j| (j as f32 - 4.0) * 0.3).collect();
    for r in 0..rows {
        let a: f32 = (0..cols).map(|j| x[j] * w[r * cols + j]).sum();
        let b: f32 = (0..cols).map(|j| x[j] / s[j] * sw[r * cols + j]).sum();
        assert!((a - b).abs() <= 1e-5 * (1.0 + a.abs()));
    }
    unsmooth(&mut sw, cols, &s);
    for (a, b) in w.iter().zip(&sw) {
        assert!((a - b).abs() <= a.abs() * 1e-6);
    }
    // A dead channel (zero activation) is left alone.
    let s0 = smooth_scales(&w, cols, &vec![0.0; cols], 0.5);
    assert!(s0.iter().all(|&v| v == 1.0));
}

#[test]
fn skip_rules() {
    let d = QuantOptions::default().skip;
    assert!(matches_pattern("Encoder.Layer.0.X", "layer.0"));
    assert!(matches_pattern(
        "encoder.layer.0.attention.self.query.weight",
        "encoder.*.query.*"
    ));
    assert!(!matches_pattern(
        "encoder.layer.0.attention.self.key.weight",
        "encoder.*.query.*"
    ));
    assert!(matches_pattern("abc", "a*c"));
    assert!(!matches_pattern("ac", "ab*bc"));
    let lin = "encoder.layer.0.attention.self.query.weight";
    assert_eq!(skip_reason(lin, Dtype::F32, &[4, 4], &d), None);
    assert_eq!(skip_reason(lin, Dtype::BF16, &[4, 4], &d), None);
    assert!(skip_reason(lin, Dtype::I8, &[4, 4], &d).is_some());
    assert!(skip_reason(lin, Dtype::F32, &[16], &d).is_some());
    assert!(skip_reason("encoder.layer.0.attention.self.query.bias", Dtype::F32, &[4, 4], &d).is_some());
    assert!(skip_reason("embeddings.word_embeddings.weight", Dtype::F32, &[4, 4], &d).is_some());
    assert!(skip_reason("model.norm.weight", Dtype::F32, &[4, 4], &d).is_some());
    assert!(skip_reason("lm_head.weight", Dtype::F32, &[4, 4], &d).is_some());
    assert!(skip_reason(lin, Dtype::F32, &[4, 4], &["query".to_string()]).is_some());
}

#[test]
fn half_precision_decodes_exactly() {
    // 1.0, -2.0, 65504 (max), smallest subnormal, 0.5
    let h: [u16; 5] = [0x3c00, 0xc000, 0x7bff, 0x0001, 0x3800];
    let want = [1.0f32, -2.0, 65504.0, 2f32.powi(-24), 0.5];
    for (h, w) in h.iter().zip(want) {
        assert_eq!(f16_to_f32(*h), w, "{h:#06x}");
    }
    assert_eq!(f16_to_f32(0x0200), 2f32.powi(-15));
    assert!(f16_to_f32(0x7e00).is_nan());
    let bf: Vec<u8> = [0x3f80u16, 0xc040].iter().flat_map(|v| v.to_le_bytes()).collect();
    assert_eq!(to_f32(Dtype::BF16, &bf).unwrap(), vec![1.0, -3.0]);
    assert!(to_f32(Dtype::I8, &[1]).is_err());
}

fn model_dir(dir: &std::path::Path) -> Vec<f32> {
    let w = weights(6, 8, 9);
    let file = safetensors::build(&[
        (
            "emb.embed_tokens.weight",
            "F32",
            vec![4, 8],
            f32_bytes(&weights(4, 8, 1)),
        ),
        ("layer.fc1.weight", "F32", vec![6, 8], f32_bytes(&w)),
        ("layer.fc1.bias", "F32", vec![6], f32_bytes(&[0.5; 6])),
    ]);
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("model.safetensors"), file).unwrap();
    std::fs::write(dir.join("config.json"), r#"{"model_type": "toy"}"#).unwrap();
    std::fs::write(dir.join("tokenizer.json"), "{}").unwrap();
    w
}

#[test]
fn quantizes_a_directory_atomically() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let w = model_dir(&src);
    let dst = t.path().join("out");
    let mut stats = HashMap::new();
    stats.insert("layer.fc1.weight".to_string(), vec![1.0f32; 8]);
    let opts = QuantOptions {
        act_stats: Some(stats),
        prune_ratio: 0.25,
        ..Default::default()
    };
    let r = quantize_dir(&src, &dst, &opts, &NoProgress).unwrap();
    assert_eq!(r.quantized(), 1);
    assert_eq!(r.tensors.iter().map(|t| t.pruned).sum::<usize>(), 12);
    let bytes = std::fs::read(dst.join("model.safetensors")).unwrap();
    let l = safetensors::parse(&bytes, bytes.len() as u64).unwrap();
    assert_eq!(
        l.tensors.len(),
        4,
        "weight, weight_scale, bias, embeddings: nothing else"
    );
    let get = |n: &str| l.tensors.iter().find(|t| t.name == n).unwrap_or_else(|| panic!("{n}"));
    let q = get("layer.fc1.weight");
    assert_eq!((q.dtype, q.shape.clone()), (Dtype::I8, vec![6, 8]));
    assert_eq!(get("layer.fc1.weight_scale").shape, vec![6, 1]);
    let e = get("emb.embed_tokens.weight");
    assert_eq!(e.dtype, Dtype::F32);
    // Dequantize: every kept weight is within half a step of the original.
    let span = |t: &crate::model::TensorSpan| &bytes[t.start as usize..(t.start + t.len) as usize];
    let codes: Vec<i8> = span(q).iter().map(|&b| b as i8).collect();
    let scales = to_f32(Dtype::F32, span(get("layer.fc1.weight_scale"))).unwrap();
    let d = dequantize(
        &Quantized {
            q: codes,
            scales: scales.clone(),
        },
        8,
    );
    let mut zeros = 0;
    for (i, (a, b)) in w.iter().zip(&d).enumerate() {
        let step = scales[i / 8];
        if *b == 0.0 {
            zeros += 1;
        } else {
            assert!(
                (a - b).abs() <= step * 0.5 * (1.0 + 1e-5) + a.abs() * 1e-6,
                "element {i}"
            );
        }
    }
    assert!(zeros >= 12);
    let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(dst.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["model_type"], "toy");
    let qc = &cfg["quantization_config"];
    assert_eq!(qc["config_groups"]["group_0"]["weights"]["strategy"], "channel");
    // The stock loader picks the compressor from the group's format: naive keeps I8 `weight`.
    assert_eq!(qc["config_groups"]["group_0"]["format"], "naive-quantized");
    assert_eq!(qc["format"], "naive-quantized");
    assert_eq!(qc["dequantize"], true);
    assert_eq!(std::fs::read(dst.join("tokenizer.json")).unwrap(), b"{}");
    // No temporary directory is left behind, and a second run refuses to overwrite.
    let names: Vec<_> = std::fs::read_dir(t.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(matches!(
        quantize_dir(&src, &dst, &opts, &NoProgress),
        Err(QuantError::Invalid { .. })
    ));
}

/// A BERT attention tail: value projection -> (attention mix) -> output dense. Returns the
/// float tensors by name.
fn bert_dir(dir: &std::path::Path, dtype: &str) -> HashMap<String, Vec<f32>> {
    let (h, o) = (8usize, 6usize);
    let mut t = HashMap::new();
    t.insert("enc.layer.0.attention.self.value.weight".to_string(), weights(h, h, 4));
    t.insert(
        "enc.layer.0.attention.self.value.bias".to_string(),
        (0..h).map(|i| 0.1 * i as f32 - 0.3).collect(),
    );
    t.insert(
        "enc.layer.0.attention.output.dense.weight".to_string(),
        weights(o, h, 6),
    );
    t.insert("enc.layer.0.output.dense.weight".to_string(), weights(o, h, 8));
    let enc = |v: &[f32]| -> Vec<u8> {
        if dtype == "BF16" {
            v.iter().flat_map(|&x| f32_to_bf16(x).to_le_bytes()).collect()
        } else {
            f32_bytes(v)
        }
    };
    let shape = |n: &str| -> Vec<u64> {
        if n.ends_with(".bias") {
            vec![h as u64]
        } else if n.contains("self.value") {
            vec![h as u64, h as u64]
        } else {
            vec![o as u64, h as u64]
        }
    };
    let mut names: Vec<&String> = t.keys().collect();
    names.sort();
    let file = safetensors::build(
        &names
            .iter()
            .map(|n| (n.as_str(), dtype, shape(n), enc(&t[*n])))
            .collect::<Vec<_>>(),
    );
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("model.safetensors"), file).unwrap();
    std::fs::write(dir.join("config.json"), r#"{"model_type": "bert"}"#).unwrap();
    // What the source holds after its own dtype rounding.
    t.into_iter()
        .map(|(n, v)| {
            let v = if dtype == "BF16" {
                to_f32(Dtype::BF16, &enc(&v)).unwrap()
            } else {
                v
            };
            (n, v)
        })
        .collect()
}

fn read_floats(path: &std::path::Path) -> HashMap<String, (Dtype, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap();
    let l = safetensors::parse(&bytes, bytes.len() as u64).unwrap();
    let mut out = HashMap::new();
    for t in &l.tensors {
        let b = &bytes[t.start as usize..(t.start + t.len) as usize];
        let v = if t.dtype == Dtype::I8 {
            b.iter().map(|&x| x as i8 as f32).collect()
        } else {
            to_f32(t.dtype, b).unwrap()
        };
        out.insert(t.name.clone(), (t.dtype, v));
    }
    // Dequantize: q * scale (row-wise or tensor-wise).
    let names: Vec<String> = out.keys().cloned().collect();
    for n in names {
        if out[&n].0 != Dtype::I8 {
            continue;
        }
        let s = out[&format!("{n}_scale")].1.clone();
        let (d, q) = out.get_mut(&n).unwrap();
        let per = q.len() / s.len();
        for (i, x) in q.iter_mut().enumerate() {
            *x *= s[i / per];
        }
        *d = Dtype::F32;
    }
    out
}

/// y = D (V x + b) for the attention tail (the softmax mix is a per-channel-linear op in
/// between and commutes with the fold, so it is left out).
fn attention_tail(t: &HashMap<String, Vec<f32>>, x: &[f32]) -> Vec<f32> {
    let v = &t["enc.layer.0.attention.self.value.weight"];
    let b = &t["enc.layer.0.attention.self.value.bias"];
    let d = &t["enc.layer.0.attention.output.dense.weight"];
    let h = b.len();
    let mid: Vec<f32> = (0..h)
        .map(|r| (0..h).map(|c| v[r * h + c] * x[c]).sum::<f32>() + b[r])
        .collect();
    d.chunks(h)
        .map(|row| row.iter().zip(&mid).map(|(a, m)| a * m).sum())
        .collect()
}

#[test]
fn smoothing_folds_into_the_value_projection() {
    for dtype in ["F32", "BF16"] {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        let orig = bert_dir(&src, dtype);
        let mut stats = HashMap::new();
        // One activation channel 100x the rest: smoothing moves it into the weights.
        let act: Vec<f32> = (0..8).map(|j| if j == 3 { 100.0 } else { 1.0 }).collect();
        for n in orig.keys().filter(|n| n.ends_with(".weight")) {
            stats.insert(n.clone(), act.clone());
        }
        let opts = QuantOptions {
            smooth_alpha: Some(0.5),
            act_stats: Some(stats),
            ..Default::default()
        };
        let dst = t.path().join("out");
        let r = quantize_dir(&src, &dst, &opts, &NoProgress).unwrap();
        assert_eq!(r.smoothed, 1);
        let un: Vec<_> = r
            .unsmoothed
            .iter()
            .map(|u| (u.name.as_str(), u.reason.as_str()))
            .collect();
        assert_eq!(
            un,
            [
                (
                    "enc.layer.0.attention.self.value.weight",
                    "input is a LayerNorm output that is also the residual stream"
                ),
                ("enc.layer.0.output.dense.weight", "input follows GELU"),
            ]
        );
        let out = read_floats(&dst.join("model.safetensors"));
        assert_eq!(out.len(), 7, "3 weights + 3 scales + the bias: no smoothing tensor");
        let bias = &out["enc.layer.0.attention.self.value.bias"];
        assert_eq!(bias.0, Dtype::from_name(dtype).unwrap(), "the bias keeps its dtype");
        assert_ne!(
            bias.1, orig["enc.layer.0.attention.self.value.bias"],
            "the bias absorbed 1/s"
        );
        let q: HashMap<String, Vec<f32>> = out.into_iter().map(|(n, (_, v))| (n, v)).collect();
        // The quantized model computes what the original did, to quantization error.
        for seed in 0..4u64 {
            let x: Vec<f32> = weights(1, 8, 100 + seed).iter().map(|v| v * 30.0).collect();
            let a = attention_tail(&orig, &x);
            let dist = |b: &[f32]| a.iter().zip(b).map(|(u, v)| (u - v) * (u - v)).sum::<f32>().sqrt();
            let norm = a.iter().map(|v| v * v).sum::<f32>().sqrt();
            let err = dist(&attention_tail(&q, &x));
            assert!(err <= 0.05 * norm, "{dtype} seed {seed}: error {err} vs norm {norm}");
            // Without the fold (original value projection), the smoothed dense is far off.
            let mut unfolded = q.clone();
            for n in [
                "enc.layer.0.attention.self.value.weight",
                "enc.layer.0.attention.self.value.bias",
            ] {
                unfolded.insert(n.to_string(), orig[n].clone());
            }
            assert!(dist(&attention_tail(&unfolded, &x)) > 10.0 * err, "{dtype} seed {seed}");
        }
        let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(dst.join("config.json")).unwrap()).unwrap();
        assert_eq!(cfg["quantization_config"]["dcfs"]["smoothed_layers"], 1);
        assert_eq!(
            cfg["quantization_config"]["dcfs"]["unsmoothed_layers"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
    }
}

#[test]
fn smoothing_without_a_rule_changes_nothing() {
    // A model type with no folding rule: every layer is reported and left unsmoothed, so the
    // output equals plain quantization byte for byte.
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    model_dir(&src);
    let mut stats = HashMap::new();
    stats.insert("layer.fc1.weight".to_string(), (0..8).map(|j| 1.0 + j as f32).collect());
    let smooth = QuantOptions {
        smooth_alpha: Some(0.5),
        act_stats: Some(stats),
        ..Default::default()
    };
    let r = quantize_dir(&src, &t.path().join("s"), &smooth, &NoProgress).unwrap();
    assert_eq!(r.smoothed, 0);
    assert_eq!(r.unsmoothed.len(), 1);
    assert!(r.unsmoothed[0].reason.contains("no folding rule"), "{:?}", r.unsmoothed);
    quantize_dir(&src, &t.path().join("p"), &QuantOptions::default(), &NoProgress).unwrap();
    assert_eq!(
        std::fs::read(t.path().join("s/model.safetensors")).unwrap(),
        std::fs::read(t.path().join("p/model.safetensors")).unwrap()
    );
}

#[test]
fn fold_rules_per_architecture() {
    let mut shapes: HashMap<String, Vec<u64>> = HashMap::new();
    let l = "model.layers.0";
    for (n, s) in [
        ("self_attn.q_proj.weight", vec![64, 64]),
        ("self_attn.k_proj.weight", vec![16, 64]),
        ("self_attn.v_proj.weight", vec![16, 64]),
        ("self_attn.o_proj.weight", vec![64, 64]),
        ("mlp.gate_proj.weight", vec![128, 64]),
        ("mlp.up_proj.weight", vec![128, 64]),
        ("mlp.down_proj.weight", vec![64, 128]),
        ("input_layernorm.weight", vec![64]),
        ("post_attention_layernorm.weight", vec![64]),
    ] {
        shapes.insert(format!("{l}.{n}"), s);
    }
    let (groups, reasons) = fold::plan(Some("llama"), &shapes);
    let by: HashMap<String, &fold::FoldGroup> = groups.iter().map(|g| (g.consumers[0].clone(), g)).collect();
    assert_eq!(by[&format!("{l}.self_attn.q_proj.weight")].consumers.len(), 3);
    assert_eq!(
        by[&format!("{l}.mlp.gate_proj.weight")].producer,
        fold::Producer::Norm {
            weight: format!("{l}.post_attention_layernorm.weight"),
            bias: None
        }
    );
    assert!(matches!(
        &by[&format!("{l}.mlp.down_proj.weight")].producer,
        fold::Producer::Rows { weight, .. } if weight.ends_with("mlp.up_proj.weight")
    ));
    // Shared key/value heads (16 value rows for 64 inputs of o_proj): o_proj is not folded.
    assert!(!by.contains_key(&format!("{l}.self_attn.o_proj.weight")));
    assert!(reasons.contains_key(&format!("{l}.self_attn.o_proj.weight")));
    assert_eq!(groups.len(), 3);
    // Unknown architectures fold nothing.
    let (groups, reasons) = fold::plan(Some("gemma"), &shapes);
    assert!(groups.is_empty());
    assert_eq!(reasons.len(), 7);
    let (groups, _) = fold::plan(None, &shapes);
    assert!(groups.is_empty());
}

#[test]
fn failures_leave_no_output() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    model_dir(&src);
    let dst = t.path().join("out");
    // Statistics with the wrong channel count are refused, and nothing is left behind.
    let mut stats = HashMap::new();
    stats.insert("layer.fc1.weight".to_string(), vec![1.0f32; 3]);
    let opts = QuantOptions {
        prune_ratio: 0.1,
        act_stats: Some(stats),
        ..Default::default()
    };
    assert!(matches!(
        quantize_dir(&src, &dst, &opts, &NoProgress),
        Err(QuantError::Invalid { .. })
    ));
    assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 1);
    // Smoothing without statistics, bad ratios.
    let bad = QuantOptions {
        smooth_alpha: Some(0.5),
        ..Default::default()
    };
    assert!(quantize_dir(&src, &dst, &bad, &NoProgress).is_err());
    let bad = QuantOptions {
        prune_ratio: 1.0,
        ..Default::default()
    };
    assert!(quantize_dir(&src, &dst, &bad, &NoProgress).is_err());
    // A malformed safetensors file is a Model error naming the file.
    std::fs::write(src.join("model.safetensors"), b"\x10\0\0\0\0\0\0\0{\"a\":1}        ").unwrap();
    let e = quantize_dir(&src, &dst, &QuantOptions::default(), &NoProgress).unwrap_err();
    assert!(matches!(e, QuantError::Model { .. }), "{e}");
    assert!(e.to_string().contains("model.safetensors"));
    assert!(!dst.exists());
    std::fs::write(src.join("model.safetensors"), b"\x01").unwrap();
    assert!(quantize_dir(&src, &dst, &QuantOptions::default(), &NoProgress).is_err());
}

#[test]
fn analysis_groups_and_ratios() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    model_dir(&src);
    let r = analyze_dir(&src, 3, &NoProgress).unwrap();
    assert_eq!(r.tensors.len(), 2);
    let groups: Vec<_> = r.groups.iter().map(|g| g.group.as_str()).collect();
    assert_eq!(groups, ["mlp up", "embeddings"]);
    assert_eq!(group_of("encoder.layer.0.output.dense.weight"), "mlp down");
    assert_eq!(group_of("encoder.layer.0.attention.output.dense.weight"), "attn out");
    assert_eq!(group_of("model.layers.0.self_attn.k_proj.weight"), "attn q/k/v");
    // The order-0 bound never exceeds 8 bits per code.
    for t in &r.tensors {
        assert!(t.tensor.bits_per_weight <= 8.0 && t.channel.bits_per_weight <= 8.0);
        assert!(t.tensor.bound >= 1.0);
    }
}

#[test]
fn tensor_wise_codes_have_lower_entropy_than_channel_wise() {
    // Rows with very different spreads: tensor-wise codes of the narrow rows cluster near 0.
    let (rows, cols) = (64, 256);
    let mut w = weights(rows, cols, 21);
    for (r, row) in w.chunks_mut(cols).enumerate() {
        let f = 0.2 + (r % 8) as f32;
        row.iter_mut().for_each(|x| *x *= f);
    }
    let h = |g| {
        let q = quantize(&w, rows, cols, g).unwrap();
        let b: Vec<u8> = q.q.iter().map(|&v| v as u8).collect();
        crate::codec::rans::entropy_bits(&crate::codec::rans::histogram(&b))
    };
    assert!(h(Granularity::Tensor) < h(Granularity::Channel));
}
