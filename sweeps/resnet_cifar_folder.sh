#!/usr/bin/env bash
# A short sorted training run of each ResNet on real CIFAR-10 images written as PNG files
# (data=image_folder), then its grid and selection (train ends with eval-grid and select).
# The held-out images are CIFAR-10 training images too (val/), never the degraded test set.
# Usage: sweeps/resnet_cifar_folder.sh [OUT_DIR] [MODEL ...]   (default: resnet18 resnet50)
# PER_CLASS=500 training PNGs per class, VAL_PER_CLASS=100, STEPS=300 of BATCH=64, THREADS=2,
# CIFAR=../shared/data/cifar10 (torchvision's python layout); a model already done is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
OUT=${1:-outputs/resnet_cifar_folder}; shift || true
MODELS=${*:-resnet18 resnet50}
CIFAR=${CIFAR:-../shared/data/cifar10}
PER_CLASS=${PER_CLASS:-500}
VAL_PER_CLASS=${VAL_PER_CLASS:-100}
STEPS=${STEPS:-300}
BATCH=${BATCH:-64}
THREADS=${THREADS:-2}
TREE="$OUT/cifar10_png_${PER_CLASS}_${VAL_PER_CLASS}"

mkdir -p "$OUT"
"$BIN/python" -m sortednet_cli.tasks.image.cifar_folder "$CIFAR" "$TREE" --train-per-class "$PER_CLASS" --val-per-class "$VAL_PER_CLASS"
for model in $MODELS; do
  [ -f "$OUT/$model.done" ] && continue
  start=$(date +%s)
  "$BIN/sortednet" train "model=$model" "pool=$model" data=image_folder "data.root=$TREE" trainer.batch_size="$BATCH" \
    trainer.max_steps="$STEPS" trainer.threads="$THREADS" trainer.device=cpu eval.calib_examples=500 eval.latency=false \
    ${ARGS:-} "hydra.run.dir=$OUT/$model" > "$OUT/$model.log" 2>&1
  printf '%s\t%s\n' "$model" $(( $(date +%s) - start )) | tee -a "$OUT/wall_times.tsv"
  touch "$OUT/$model.done"
done
