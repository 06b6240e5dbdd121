#!/usr/bin/env bash
# Every supported model_type through the CLI, from scratch, on real data (tiny models, CPU):
# train (with its grid), export, the export loaded by transformers' Auto class with no sortednet
# code (reproducing the grid's metric), and for decoders `generate` in every mode.
# Usage: sweeps/architectures.sh [OUT_DIR] [TYPE ...]   (make check-architectures; STEPS=200, THREADS=2)
# Types already in OUT_DIR/summary.tsv are appended to, not cleared.
# Data: Tiny Shakespeare and SST-2 from ../shared/data, or TEXT=... and GLUE_ROOT=... .
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
OUT=${1:-outputs/architectures}; shift || true
TEXT=${TEXT:-../shared/data/tinyshakespeare/input.txt}
GLUE_ROOT=${GLUE_ROOT:-../shared/data/sst2}
DECODERS="llama mistral qwen2 qwen3 olmo2 gemma2 phi3 gpt2 gpt_neox"
ENCODERS="bert roberta xlm-roberta electra distilbert deberta-v2"
TYPES=${*:-$DECODERS $ENCODERS}
STEPS=${STEPS:-200}
THREADS=${THREADS:-2}
COMMON="trainer.device=cpu trainer.threads=$THREADS eval.latency=false optim.lr=3e-3 sched.warmup_steps=20 trainer.max_steps=$STEPS trainer.batch_size=32"
mkdir -p "$OUT"
summary="$OUT/summary.tsv"
[ -f "$summary" ] || printf 'type\tkind\tsteps\ttrain_s\tfull_metric\tnarrowest_metric\texport_auto_metric\tgenerate_modes\n' > "$summary"

for type in $TYPES; do
  run="$OUT/$type"
  rm -rf "$run"
  start=$(date +%s)
  if [[ " $DECODERS " == *" $type "* ]]; then
    kind=decoder
    kv=2; [[ "$type" == gpt2 || "$type" == gpt_neox ]] && kv=null
    "$BIN/sortednet" train model=decoder model.arch="$type" model.layers=4 model.hidden=64 model.heads=4 model.kv_heads=$kv \
      model.ffn=128 model.context=64 data.path="$TEXT" data.tokenizer=bpe data.vocab_size=512 data.block_size=64 \
      data.eval_windows=200 pool=exits_grid $COMMON hydra.run.dir="$run/train" \
      > "$run.train.log" 2>&1
    metric=loss
  else
    kind=encoder
    "$BIN/sortednet" train model=encoder model.arch="$type" model.layers=4 model.hidden=64 model.heads=4 model.ffn=128 \
      model.max_length=64 data.root="$GLUE_ROOT" data.train_subset=8000 data.vocab_size=4000 pool=enc_grid \
      $COMMON hydra.run.dir="$run/train" > "$run.train.log" 2>&1
    metric=accuracy
  fi
  train_s=$(( $(date +%s) - start ))
  "$BIN/sortednet" export checkpoint="$run/train" sub=one sub.width=0.5 sub.depth=2 hydra.run.dir="$run/export" > "$run.export.log" 2>&1
  auto=$("$BIN/python" - "$run" "$kind" "$TEXT" "$GLUE_ROOT" 2>"$run.auto.log" <<'PY'
import csv, sys
import torch, torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
run, kind, text_path, glue_root = sys.argv[1:]
directory = f"{run}/export/w0.5_d2"
tokenizer = AutoTokenizer.from_pretrained(directory)
with torch.no_grad():
    if kind == "decoder":  # the validation split the grid measured, as consecutive windows
        model = AutoModelForCausalLM.from_pretrained(directory).eval()
        text = open(text_path, encoding="utf-8").read()
        ids = torch.tensor(tokenizer(text[int(len(text) * 0.9):], add_special_tokens=False)["input_ids"])
        windows = ids[: 200 * 64 + 1]
        x = torch.stack([windows[i * 64:i * 64 + 65] for i in range(200)])
        print(f"{F.cross_entropy(model(input_ids=x[:, :-1]).logits.flatten(0, 1), x[:, 1:].flatten()).item():.4f}")
    else:
        model = AutoModelForSequenceClassification.from_pretrained(directory).eval()
        rows = [line.rstrip("\n").split("\t") for line in open(f"{glue_root}/validation.tsv", encoding="utf-8")][1:]
        correct = 0
        for start in range(0, len(rows), 128):
            chunk = rows[start:start + 128]
            batch = tokenizer([r[0] for r in chunk], padding=True, truncation=True, max_length=64, return_tensors="pt")
            correct += int((model(**batch).logits.argmax(-1) == torch.tensor([int(r[1]) for r in chunk])).sum())
        print(f"{correct / len(rows):.4f}")
PY
)
  read -r full narrow grid_export < <("$BIN/python" - "$run/train/grid.csv" "$metric" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
metric = sys.argv[2]
full = max(rows, key=lambda r: (float(r["width"]), int(r["depth"])))
narrow = min(rows, key=lambda r: (float(r["width"]), int(r["depth"])))
at = [r for r in rows if float(r["width"]) == 0.5 and r["depth"] == "2"]
print(full[metric], narrow[metric], at[0][metric] if at else "")
PY
)
  modes=""
  if [[ $kind == decoder ]]; then
    for mode in full exit early_exit speculative; do
      "$BIN/sortednet" generate checkpoint="$run/train" prompt="ROMEO:" generate.mode=$mode generate.max_new_tokens=24 \
        hydra.run.dir="$run/generate_$mode" > "$run.generate_$mode.log" 2>&1 && modes="$modes$mode,"
    done
  fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s (grid %s)\t%s\n' "$type" "$kind" "$STEPS" "$train_s" "$full" "$narrow" "$auto" "$grid_export" "${modes%,}" >> "$summary"
  echo "$type done: $(tail -1 "$summary")"
done
column -t -s $'\t' "$summary"
