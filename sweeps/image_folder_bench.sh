#!/usr/bin/env bash
# `sortednet bench` on real CIFAR-10 images written as files (data=image_folder), one run per
# network: the engine's training step on the image-folder task (cached or streamed, as the task
# decides) against a plain torchvision ImageFolder + DataLoader loop, images/s and their ratio,
# then the grid, the epoch cost and the memory formats on the same images.
# Usage: sweeps/image_folder_bench.sh [OUT_DIR] [MODEL ...]   (default: resnet18 cpreresnet20)
# PER_CLASS=500 training PNGs per class, VAL_PER_CLASS=100 in val/, from CIFAR=../shared/data/cifar10
# (torchvision's python layout); DEVICE=auto, THREADS=0, QUICK=false; ARGS="..." more overrides.
# The tree is written once per (PER_CLASS, VAL_PER_CLASS) under OUT_DIR and reused (cifar_folder keeps a complete one).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
OUT=${1:-outputs/image_folder_bench}; shift || true
MODELS=${*:-resnet18 cpreresnet20}
CIFAR=${CIFAR:-../shared/data/cifar10}
PER_CLASS=${PER_CLASS:-500}
VAL_PER_CLASS=${VAL_PER_CLASS:-100}
DEVICE=${DEVICE:-auto}
THREADS=${THREADS:-0}
QUICK=${QUICK:-false}
TREE="$OUT/cifar10_png_${PER_CLASS}_${VAL_PER_CLASS}"

mkdir -p "$OUT"
"$BIN/python" -m sortednet_cli.tasks.image.cifar_folder "$CIFAR" "$TREE" --train-per-class "$PER_CLASS" --val-per-class "$VAL_PER_CLASS"

for model in $MODELS; do
  # shellcheck disable=SC2086  # ARGS is a list of overrides
  "$BIN/sortednet" bench "model=$model" data=image_folder "data.root=$TREE" "device=$DEVICE" "threads=$THREADS" \
    "bench.quick=$QUICK" ${ARGS:-} "hydra.run.dir=$OUT/$model"
done

"$BIN/python" - "$OUT" $MODELS <<'PY'
import json, sys
from pathlib import Path
out, models = Path(sys.argv[1]), sys.argv[2:]
lines = ["model\tdevice\tmode\ttrain_images\tproject_images_s\timagefolder_images_s\ttrain_speedup\tgrid_speedup\tsorted_over_full_epoch"]
for model in models:
    r = json.loads((out / model / "bench.json").read_text())
    ips, folder = r["train_images_per_second"], r["image_folder"]
    lines.append(f"{model}\t{r['device']}\t{folder['mode']}\t{folder['train_images']}\t{ips['project']:.0f}\t{ips['reference']:.0f}"
                 f"\t{r['train_speedup']:.2f}\t{r['grid_speedup']:.2f}\t{r['sorted_over_full_epoch']:.2f}")
(out / "summary.tsv").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
