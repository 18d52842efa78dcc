#!/usr/bin/env python3
"""Per-input-channel activation maxima of every nn.Linear, for `dcfs quantize --act-stats`.

Runs a safetensors model directory (loaded with transformers.AutoModel from the local
directory only; HF_HUB_OFFLINE=1) on a small fixed calibration text, with a forward hook
on every nn.Linear recording max |X_j| over all tokens for each input channel j, and
writes `<linear>.input_max` (F32, [in_features]) to a safetensors file. The names match
the model's weight names: `<linear>.weight` in the model <-> `<linear>.input_max` here.

Needs torch, transformers and safetensors (scripts/dc_accuracy.py documents the venv).
The calibration text is deliberately disjoint from the evaluation sentences of
scripts/dc_accuracy.py.

Usage: scripts/calibrate.py MODEL_DIR OUT.safetensors [--text FILE] [--max-len N]
"""

import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

CALIBRATION_TEXT = [
    "The committee postponed its decision until the auditors had reviewed the accounts.",
    "Rain is expected over the northern hills by late afternoon, clearing overnight.",
    "She tuned the violin, checked the bow, and walked onto the stage without a word.",
    "To reset the router, hold the button on the back for ten seconds.",
    "The recipe calls for two cups of flour, a pinch of salt and warm water.",
    "Investors reacted nervously to the central bank's unexpected rate increase.",
    "A single mutation in the gene was enough to change the protein's shape.",
    "The train from Lyon arrived forty minutes late because of a signal failure.",
    "He argued that the proof relied on an assumption nobody had checked.",
    "Our cat spends most of the day asleep in a patch of sunlight by the window.",
    "The museum's new wing houses a collection of medieval manuscripts.",
    "Please submit the completed form to the front desk before Friday.",
    "Volcanic ash grounded flights across much of the region for three days.",
    "The compiler rejected the program because a lifetime did not outlive its borrow.",
    "Children in the village walk two miles to the nearest school.",
    "The striker scored twice in the second half to win the cup final.",
    "Photosynthesis converts light energy into chemical energy stored in sugars.",
    "The negotiations collapsed after neither side would accept the border proposal.",
    "A gentle breeze carried the smell of pine needles across the campsite.",
    "The database index was rebuilt overnight to speed up the slow queries.",
    "What time does the pharmacy on the corner close on Sundays?",
    "Ancient traders crossed the desert with caravans of camels and spices.",
    "The startup raised twelve million dollars to expand into Asian markets.",
    "Wear sturdy boots; the trail is muddy and steep after the bridge.",
    "The novel follows three generations of a family running a small bakery.",
    "Memory bandwidth, not arithmetic, limits the speed of this kernel.",
    "The telescope captured faint light from a galaxy billions of years old.",
    "He forgot his umbrella and arrived at the interview soaking wet.",
    "Regular exercise lowers blood pressure and improves sleep quality.",
    "The orchestra rehearsed the symphony's final movement until midnight.",
    "Local farmers worry that the drought will ruin this year's harvest.",
    "The lawyer advised her client to say nothing until the hearing.",
]


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="model directory (config.json + model.safetensors + tokenizer)")
    p.add_argument("out", help="output .safetensors file of <linear>.input_max tensors")
    p.add_argument("--text", help="calibration text file, one sample per line (default: built in)")
    p.add_argument("--max-len", type=int, default=128, help="truncate samples to this many tokens")
    return p.parse_args(argv)


def calibrate(model_dir, texts, max_len=128):
    """Returns {"<linear>.input_max": float32 tensor [in_features]} for every nn.Linear."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModel.from_pretrained(model_dir, local_files_only=True, dtype=torch.float32)
    model.eval()
    maxima = {}
    hooks = []

    def hook(name):
        def f(_module, inputs, _output):
            x = inputs[0].detach().abs().reshape(-1, inputs[0].shape[-1]).amax(dim=0).float()
            prev = maxima.get(name)
            maxima[name] = x if prev is None else torch.maximum(prev, x)
        return f

    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear):
            hooks.append(m.register_forward_hook(hook(name)))
    if not hooks:
        raise SystemExit(f"calibrate: {model_dir}: no nn.Linear modules")
    with torch.no_grad():
        for t in texts:  # one sample at a time: no padding tokens in the statistics
            enc = tok(t, return_tensors="pt", truncation=True, max_length=max_len)
            model(**enc)
    for h in hooks:
        h.remove()
    # Weight names in the file may carry a prefix the module tree lacks (or vice versa);
    # map module names onto the weight names present in the safetensors file.
    from safetensors import safe_open

    with safe_open(os.path.join(model_dir, "model.safetensors"), "pt") as f:
        weights = set(f.keys())
    prefix = getattr(model, "base_model_prefix", "")
    out = {}
    for name, v in maxima.items():
        for cand in (name, f"{prefix}.{name}", name.removeprefix(prefix + ".")):
            if f"{cand}.weight" in weights:
                out[f"{cand}.input_max"] = v.contiguous()
                break
        else:
            print(f"calibrate: warning: no weight named like {name}.weight; skipped", file=sys.stderr)
    return out


def main(argv=None):
    a = parse_args(argv if argv is not None else sys.argv[1:])
    texts = CALIBRATION_TEXT
    if a.text:
        with open(a.text) as f:
            texts = [line.strip() for line in f if line.strip()]
    from safetensors.torch import save_file

    stats = calibrate(a.model, texts, a.max_len)
    tmp = f"{a.out}.tmp-{os.getpid()}"
    save_file(stats, tmp, metadata={"calibration_samples": str(len(texts))})
    os.replace(tmp, a.out)
    print(f"calibrate: {len(stats)} linear layers, {len(texts)} samples -> {a.out}")


if __name__ == "__main__":
    main()
