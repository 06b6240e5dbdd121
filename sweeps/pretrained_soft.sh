#!/usr/bin/env bash
# Sorted fine-tuning of a pretrained decoder, as the paper does it (docs/pretrained.md), on CPU:
#  1. pretrain an ordinary qwen2-layout decoder (pool=full, byte-level BPE) on Tiny Shakespeare,
#     export it as a Hugging Face directory: from then on the "pretrained checkpoint";
#  2. the ordinary model truncated at every exit (eval-grid pool=exits);
#  3. sorted fine-tuning from model.pretrained=<that directory> on the same text (<= 1/4 the steps);
#  4. sorted and ordinary instruction tuning of the same directory on SST-2 instruction pairs,
#     the ordinary one truncated at every exit;
#  5. bench-decode of the fine-tuned models and of the ordinary ones;  6. report side by side.
# Usage: sweeps/pretrained_soft.sh [OUT]   (PRETRAIN_STEPS, FINETUNE_STEPS, SST2_STEPS, THREADS);
# rerun after a failure: the steps done are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
OUT=${1:-outputs/pretrained_soft}
TEXT=${TEXT:-../shared/data/tinyshakespeare/input.txt}
SST2=${SST2:-../shared/data/sst2}
PRETRAIN_STEPS=${PRETRAIN_STEPS:-1600}
FINETUNE_STEPS=${FINETUNE_STEPS:-$((PRETRAIN_STEPS / 4))}
SST2_STEPS=${SST2_STEPS:-200}
THREADS=${THREADS:-2}
mkdir -p "$OUT"
times="$OUT/wall_times.tsv"
touch "$times"
step() {  # step NAME command...: run it, log it, record its wall time; a step done before is skipped
  local name=$1; shift
  [ -f "$OUT/$name.done" ] && return 0
  local start=$(date +%s)
  "$@" > "$OUT/$name.log" 2>&1
  printf '%s\t%s\n' "$name" $(( $(date +%s) - start )) | tee -a "$times"
  touch "$OUT/$name.done"
}
COMMON="trainer.device=cpu trainer.threads=$THREADS eval.latency=false"
EVAL="device=cpu eval.latency=false"

step pretrain "$BIN/sortednet" train model=decoder model.arch=qwen2 model.layers=6 model.hidden=128 model.heads=4 model.kv_heads=2 \
  model.ffn=384 model.context=128 data.path="$TEXT" data.tokenizer=bpe data.vocab_size=1024 data.block_size=128 pool=full \
  trainer.batch_size=32 trainer.max_steps="$PRETRAIN_STEPS" optim.lr=2e-3 sched.warmup_steps=100 $COMMON hydra.run.dir="$OUT/pretrain"
step export "$BIN/sortednet" export checkpoint="$OUT/pretrain" sub=one sub.width=1 sub.depth=6 hydra.run.dir="$OUT/export"
PRETRAINED="$OUT/export/w1_d6"
step truncated "$BIN/sortednet" eval-grid checkpoint="$OUT/pretrain" pool=exits $EVAL hydra.run.dir="$OUT/truncated"
step sorted_finetune "$BIN/sortednet" train model=decoder model.pretrained="$PRETRAINED" data.path="$TEXT" data.block_size=128 \
  pool=exits trainer.objective=all_exits trainer.batch_size=32 trainer.max_steps="$FINETUNE_STEPS" optim.lr=1e-3 sched.warmup_steps=20 \
  $COMMON hydra.run.dir="$OUT/sorted_finetune"

# Reviews up to 150 characters: with the template they fit the model's 128-token context.
"$BIN/python" sweeps/sst2_instructions.py "$SST2" "$OUT/sst2_instructions" 150 | tee "$OUT/sst2_instructions.txt"
SFT="data=instructions data.path=$OUT/sst2_instructions/train.jsonl data.val_path=$OUT/sst2_instructions/val.jsonl data.max_length=128 \
  trainer.batch_size=32 trainer.max_steps=$SST2_STEPS optim.lr=1e-3 sched.warmup_steps=20"
step sst2_sorted "$BIN/sortednet" train model=decoder model.pretrained="$PRETRAINED" $SFT pool=exits trainer.objective=all_exits \
  $COMMON hydra.run.dir="$OUT/sst2_sorted"
step sst2_ordinary "$BIN/sortednet" train model=decoder model.pretrained="$PRETRAINED" $SFT pool=full $COMMON hydra.run.dir="$OUT/sst2_ordinary"
step sst2_truncated "$BIN/sortednet" eval-grid checkpoint="$OUT/sst2_ordinary" pool=exits $EVAL hydra.run.dir="$OUT/sst2_truncated"

step bench_sorted_finetune "$BIN/sortednet" bench-decode checkpoint="$OUT/sorted_finetune" threads=1 hydra.run.dir="$OUT/bench_sorted_finetune"
step bench_pretrained "$BIN/sortednet" bench-decode checkpoint="$OUT/pretrain" threads=1 hydra.run.dir="$OUT/bench_pretrained"
step bench_sst2_sorted "$BIN/sortednet" bench-decode checkpoint="$OUT/sst2_sorted" threads=1 hydra.run.dir="$OUT/bench_sst2_sorted"
step bench_sst2_ordinary "$BIN/sortednet" bench-decode checkpoint="$OUT/sst2_ordinary" threads=1 hydra.run.dir="$OUT/bench_sst2_ordinary"
# The two tasks measure different losses: one report each, ordinary-truncated beside sorted.
step report_shakespeare "$BIN/sortednet" report "runs=[$OUT/truncated,$OUT/sorted_finetune]" hydra.run.dir="$OUT/report_shakespeare"
step report_sst2 "$BIN/sortednet" report "runs=[$OUT/sst2_truncated,$OUT/sst2_sorted]" hydra.run.dir="$OUT/report_sst2"
