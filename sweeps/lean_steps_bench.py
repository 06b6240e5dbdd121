"""Full greedy decoding through the lean layer steps against the library's own layers, for every
supported decoder type, measured side by side in one run.

    .venv/bin/python sweeps/lean_steps_bench.py [OUT_DIR]        (default outputs/lean_steps_bench)

Each type gets a model of LAYERS x HIDDEN (FFN 3 x HIDDEN, 4 heads, 2 key/value heads where the
type groups them) from its layout's scratch config, random weights, float32, one thread, under
SDPA attention (Gemma 2 under eager: its soft-capped attention). ROUNDS rounds of: one decoder on
the lean steps and one on the library's layers (`ExitDecoder(library_layers=True)`), alternated,
each a warm-up and then a PROMPT-token prompt continued by NEW tokens; the medians of the rounds
and of their per-round ratios are reported, with whether the two gave the same tokens.
Environment: LAYERS (12), HIDDEN (128), NEW (150), PROMPT (8), ROUNDS (3). Writes
OUT_DIR/lean_steps_bench.json and prints the table.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from pathlib import Path

import torch

from sortednet_cli.decode.engine import ExitDecoder
from sortednet_cli.models.hf_layouts import layout_for, supported_types
from sortednet_cli.models.transformer import sorted_from_config

LAYERS = int(os.environ.get("LAYERS", 12))
HIDDEN = int(os.environ.get("HIDDEN", 128))
NEW = int(os.environ.get("NEW", 150))
PROMPT = int(os.environ.get("PROMPT", 8))
ROUNDS = int(os.environ.get("ROUNDS", 3))
EAGER_ONLY = {"gemma2"}  # attention logits soft-capped: the library runs it under eager attention


def scratch_model(model_type: str):
    grouped = model_type not in ("gpt2", "gpt_neox")
    sizes = {"vocab_size": 256, "hidden": HIDDEN, "layers": LAYERS, "heads": 4, "kv_heads": 2 if grouped else 4, "ffn": 3 * HIDDEN,
             "context": PROMPT + NEW + 16, "dropout": 0.0, "rope_theta": 10000.0, "bos_token_id": None, "eos_token_id": None}
    config = layout_for(model_type, True).scratch_config(model_type, sizes)
    config._attn_implementation = "eager" if model_type in EAGER_ONLY else "sdpa"
    torch.manual_seed(0)
    return sorted_from_config(config).eval(), config._attn_implementation


def measure(model_type: str) -> dict:
    model, attention = scratch_model(model_type)
    decoders = {"lean": ExitDecoder(model), "library": ExitDecoder(model, library_layers=True)}
    prompt = torch.randint(0, 256, (PROMPT,), generator=torch.Generator().manual_seed(1)).tolist()
    rates: dict[str, list[float]] = {name: [] for name in decoders}
    tokens = {}
    for _ in range(ROUNDS):
        for name, decoder in decoders.items():
            decoder.full(prompt, 8)
            generation = decoder.full(prompt, NEW)
            rates[name].append(generation.stats["tokens_per_second"])
            tokens[name] = generation.tokens
    ratios = [lean / library for lean, library in zip(rates["lean"], rates["library"])]
    return {"model_type": model_type, "attention": attention, "lean_steps": model.lean_decoding,
            "lean_tokens_per_second": statistics.median(rates["lean"]), "library_tokens_per_second": statistics.median(rates["library"]),
            "speedup": statistics.median(ratios), "round_speedups": ratios, "same_tokens": tokens["lean"] == tokens["library"]}


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/lean_steps_bench")
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    rows = [measure(model_type) for model_type in supported_types(causal=True)]
    print(f"full greedy, {LAYERS} x {HIDDEN}, {PROMPT}-token prompt + {NEW} new tokens, one thread, medians of {ROUNDS} rounds")
    print(f"{'type':10s} {'attention':9s} {'lean tok/s':>10s} {'library tok/s':>13s} {'speed-up':>8s}  same tokens")
    for row in rows:
        print(f"{row['model_type']:10s} {row['attention']:9s} {row['lean_tokens_per_second']:10.1f} {row['library_tokens_per_second']:13.1f} "
              f"{row['speedup']:7.2f}x  {'yes' if row['same_tokens'] else 'NO'}")
    (out / "lean_steps_bench.json").write_text(json.dumps({"layers": LAYERS, "hidden": HIDDEN, "new_tokens": NEW, "rounds": ROUNDS,
                                                         "threads": 1, "rows": rows}, indent=2))
    print(f"wrote {out / 'lean_steps_bench.json'}")


if __name__ == "__main__":
    main()
