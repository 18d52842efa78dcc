//! Where a SmoothQuant factor can be undone inside the model itself, so that the output
//! needs no tensor a stock loader does not know.
//!
//! Smoothing stores `W·diag(s)` for a linear layer; the layer's input must then arrive
//! divided by `s`. That is exact only when the op producing the input is linear per
//! channel and feeds nothing but the smoothed layers: then its output channel j can be
//! divided by `s_j` (a norm's weight and bias, or a linear layer's row j and bias j).
//! A layer whose input has any other producer or another reader (a GELU, a residual
//! stream, the attention softmax) stays unsmoothed, with the reason recorded.
//!
//! The rules are per architecture (`model_type` in config.json), because a tensor's name
//! alone does not say whether a norm's output also feeds a residual connection.

use std::collections::HashMap;

/// What absorbs `1/s`: output channel j of this op is divided by `s_j`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Producer {
    /// A norm whose affine weight (and bias) multiply its output per channel. Only norms
    /// of the form `w ⊙ n(x) + b` qualify (LayerNorm, RMSNorm), not `(1 + w) ⊙ n(x)`.
    Norm { weight: String, bias: Option<String> },
    /// A linear layer whose output feeds the consumer through per-channel linear ops only
    /// (attention's weighted sum of values; a gated MLP's elementwise product).
    Rows { weight: String, bias: Option<String> },
}

impl Producer {
    /// The tensors to divide, weight first.
    pub fn tensors(&self) -> impl Iterator<Item = &str> {
        let (w, b) = match self {
            Producer::Norm { weight, bias } | Producer::Rows { weight, bias } => (weight, bias),
        };
        std::iter::once(w.as_str()).chain(b.as_deref())
    }
}

/// Linear layers that read the same input, and the op that produces it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FoldGroup {
    /// `X.weight` names; one `s` is shared by all of them.
    pub consumers: Vec<String>,
    pub producer: Producer,
}

/// The fold groups for `model_type` over the tensors present (`name -> shape`), and, for
/// every 2-D `.weight` that no group covers, why it cannot be smoothed. Groups whose
/// tensors are missing or whose shapes disagree are left out (their layers are reported).
pub fn plan(model_type: Option<&str>, shapes: &HashMap<String, Vec<u64>>) -> (Vec<FoldGroup>, HashMap<String, String>) {
    let mut groups = Vec::new();
    let mut names: Vec<&String> = shapes.keys().collect();
    names.sort();
    let has = |n: &str| shapes.contains_key(n);
    let opt = |n: String| has(&n).then_some(n);
    match model_type {
        // Post-norm encoders: every LayerNorm output is also the residual stream, so no
        // LayerNorm can absorb a factor. Attention's output projection reads a weighted sum
        // of value rows, so it folds into the value projection.
        Some("bert" | "roberta" | "xlm-roberta") => {
            for n in &names {
                let Some(p) = n.strip_suffix(".attention.output.dense.weight") else {
                    continue;
                };
                let v = format!("{p}.attention.self.value.weight");
                if has(&v) {
                    groups.push(FoldGroup {
                        consumers: vec![n.to_string()],
                        producer: Producer::Rows {
                            weight: v,
                            bias: opt(format!("{p}.attention.self.value.bias")),
                        },
                    });
                }
            }
        }
        // Pre-norm decoders with RMSNorm `w ⊙ x/rms(x)`: the norms feed only q/k/v and
        // gate/up; down reads silu(gate) ⊙ up, linear in up's rows; o reads the attention
        // mix of v's rows when no key/value head is shared (v rows == o inputs).
        Some("llama" | "mistral" | "qwen2") => {
            for n in &names {
                let Some(l) = n.strip_suffix(".self_attn.q_proj.weight") else {
                    continue;
                };
                let qkv: Vec<String> = ["q", "k", "v"]
                    .iter()
                    .map(|x| format!("{l}.self_attn.{x}_proj.weight"))
                    .collect();
                let norm = format!("{l}.input_layernorm.weight");
                if qkv.iter().all(|x| has(x)) && has(&norm) {
                    groups.push(FoldGroup {
                        consumers: qkv,
                        producer: Producer::Norm {
                            weight: norm,
                            bias: None,
                        },
                    });
                }
                let gu: Vec<String> = ["gate", "up"]
                    .iter()
                    .map(|x| format!("{l}.mlp.{x}_proj.weight"))
                    .collect();
                let norm = format!("{l}.post_attention_layernorm.weight");
                if gu.iter().all(|x| has(x)) && has(&norm) {
                    groups.push(FoldGroup {
                        consumers: gu,
                        producer: Producer::Norm {
                            weight: norm,
                            bias: None,
                        },
                    });
                }
                for (consumer, producer) in [
                    ("mlp.down_proj", "mlp.up_proj"),
                    ("self_attn.o_proj", "self_attn.v_proj"),
                ] {
                    let (c, w) = (format!("{l}.{consumer}.weight"), format!("{l}.{producer}.weight"));
                    if has(&c) && has(&w) {
                        groups.push(FoldGroup {
                            consumers: vec![c],
                            producer: Producer::Rows {
                                weight: w,
                                bias: opt(format!("{l}.{producer}.bias")),
                            },
                        });
                    }
                }
            }
        }
        _ => {}
    }
    // Shapes must line up: every consumer has the producer's channel count as inputs.
    groups.retain(|g| {
        let Some(ch) = shapes
            .get(producer_weight(&g.producer))
            .and_then(|s| s.first().copied())
        else {
            return false;
        };
        let cols_ok = g
            .consumers
            .iter()
            .all(|c| shapes.get(c).is_some_and(|s| s.len() == 2 && s[1] == ch));
        let weight_ok = match &g.producer {
            Producer::Norm { weight, .. } => shapes[weight].len() == 1,
            Producer::Rows { weight, .. } => shapes[weight].len() == 2,
        };
        let bias_ok = g.producer.tensors().skip(1).all(|b| shapes[b] == [ch]);
        cols_ok && weight_ok && bias_ok
    });
    let covered: std::collections::HashSet<&str> = groups
        .iter()
        .flat_map(|g| g.consumers.iter().map(String::as_str))
        .collect();
    let mut reasons = HashMap::new();
    for n in names {
        if shapes[n].len() != 2 || !n.ends_with(".weight") || covered.contains(n.as_str()) {
            continue;
        }
        reasons.insert(n.clone(), why_not(model_type, n));
    }
    (groups, reasons)
}

fn producer_weight(p: &Producer) -> &str {
    match p {
        Producer::Norm { weight, .. } | Producer::Rows { weight, .. } => weight,
    }
}

fn why_not(model_type: Option<&str>, name: &str) -> String {
    let known = matches!(
        model_type,
        Some("bert" | "roberta" | "xlm-roberta" | "llama" | "mistral" | "qwen2")
    );
    if !known {
        return format!(
            "no folding rule for model_type {}",
            model_type.map_or("(none)".to_string(), |m| format!("{m:?}"))
        );
    }
    let n = name.trim_end_matches(".weight");
    if n.ends_with(".output.dense") && !n.ends_with(".attention.output.dense") {
        "input follows GELU".into()
    } else if n.ends_with(".attention.self.query")
        || n.ends_with(".attention.self.key")
        || n.ends_with(".attention.self.value")
        || n.ends_with(".intermediate.dense")
    {
        "input is a LayerNorm output that is also the residual stream".into()
    } else if n.ends_with("pooler.dense") {
        "input is the final hidden state, which is also the model's output".into()
    } else {
        "no producer that only feeds this layer".into()
    }
}
