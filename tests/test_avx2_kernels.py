"""Regression: oneDNN's AVX2 backward-weights kernel for strided 1x1 convolutions on
channels_last inputs corrupts the heap (1 thread) or never returns (2 threads) at small channel
counts. CPUs with AVX-512 pick other kernels, so these tests cap oneDNN at AVX2 with
ONEDNN_MAX_CPU_ISA, which it reads at start-up: each run is a subprocess, with a timeout.

Every model family's narrowest sub-models (the narrowest width of each of its pools) go through
training steps, the grid (BN recalibration, shared evaluation, latency of the extracted
network), export and bench."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from sortednet_cli.errors import UserError
from sortednet_cli.models import build_model
from sortednet_cli.sorted.pool import pool_from_config

from conftest import REPO, compose_config

pytestmark = pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="oneDNN's x86 kernels only")

FAMILIES = ["cpreresnet20", "mobilenetv2", "resnet18", "resnet50"]
# The ImageNet stem (7x7 stride 2 + max-pool) makes a 32x32 image 8x8 before the first stage:
# the same convolutions and channel counts at a sixteenth of the work of the CIFAR stem.
FAMILY_OVERRIDES = {"resnet18": ["model.stem=imagenet"], "resnet50": ["model.stem=imagenet"]}
TIMEOUT_S = 240  # a run here takes seconds; the broken kernel spins forever


def narrowest_widths(model_name: str) -> list[float]:
    """The narrowest width of every pool preset that fits the model."""
    model = build_model(compose_config("train", [f"model={model_name}"]).model)
    widths = set()
    for preset in sorted((REPO / "conf" / "pool").glob("*.yaml")):
        try:
            pool = pool_from_config(OmegaConf.load(preset), model.depth_limits)
        except UserError:  # a pool of another family
            continue
        widths.add(pool.widths[0])
    return sorted(widths)


def run_avx2(args: list[str], cwd: Path) -> None:
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    try:
        done = subprocess.run([sys.executable, "-m", "sortednet_cli", *args], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"sortednet {' '.join(args[:1])} did not return within {TIMEOUT_S} s on AVX2 kernels (a hung step)")
    assert done.returncode == 0, f"exit {done.returncode} on AVX2 kernels:\n{done.stderr[-2000:]}"


def narrow_run(model_name: str, width: float) -> list[str]:
    # sandwich with two draws per step trains both depths of the pool in every step
    return [
        f"model={model_name}", *FAMILY_OVERRIDES.get(model_name, []), "pool=tiny", f"pool.widths=[{width}]", "pool.depths=[1,max]",
        "sampler=sandwich", "trainer.grad_accum=2", "trainer.accum_same_batch=true",
        "data=fake", "data.fake_train_size=128", "data.fake_test_size=64",
        "trainer.batch_size=64", "trainer.epochs=2", "trainer.device=cpu", "trainer.threads=1",
        "sched.warmup_epochs=0", "eval.calib_examples=64", "eval.latency_repeats=1",
    ]


@pytest.mark.parametrize("model_name", FAMILIES)
def test_narrowest_sub_models_train_and_evaluate_on_avx2_kernels(model_name, tmp_path):
    widths = narrowest_widths(model_name)
    assert widths[0] <= 0.05
    for width in widths:
        run_dir = tmp_path / f"w{width}"
        # train ends with the grid: recalibration, shared evaluation, latency of extracted networks
        run_avx2(["train", *narrow_run(model_name, width), f"hydra.run.dir={run_dir}"], tmp_path)
        assert (run_dir / "grid.csv").is_file()
    narrowest = tmp_path / f"w{widths[0]}"
    run_avx2(["eval-grid", f"checkpoint={narrowest}", "eval.method=naive", "eval.calib_examples=64",
              "eval.latency=false", f"hydra.run.dir={tmp_path / 'grid'}"], tmp_path)
    run_avx2(["export", f"checkpoint={narrowest}", f"sub.width={widths[0]}", "sub.depth=1",
              "eval.calib_examples=64", f"hydra.run.dir={tmp_path / 'export'}"], tmp_path)


@pytest.mark.parametrize("model_name", FAMILIES)
def test_bench_runs_the_narrowest_width_on_avx2_kernels(model_name, tmp_path):
    width = narrowest_widths(model_name)[0]
    run_avx2([
        "bench", f"model={model_name}", *FAMILY_OVERRIDES.get(model_name, []), "pool=tiny", f"pool.widths=[{width}]", "pool.depths=[1,max]",
        "data=fake", "data.fake_train_size=256", "data.fake_test_size=64", "threads=1", "device=cpu",
        "bench.rounds=1", "bench.steps=2", "bench.batch_size=64", "bench.workers=0",
        "bench.eval_examples=32", "bench.calib_examples=32", "bench.grid_rounds=1", f"hydra.run.dir={tmp_path}",
    ], tmp_path)
    report = json.loads((tmp_path / "bench.json").read_text())
    figures = {"train_speedup": report["train_speedup"], "grid_speedup": report["grid_speedup"],
               "sorted_over_full_epoch": report["sorted_over_full_epoch"],
               **{f"channels_last_speedup at {w}": v["channels_last_speedup"] for w, v in report["memory_format"].items()},
               **{f"{side} images/s": v for side, v in report["train_images_per_second"].items()},
               **{f"{side} epoch s": v for side, v in report["epoch_seconds_estimate"].items()}}
    assert set(report["memory_format"]) == {f"{width:g}"}  # the pool's one width is its widest and narrowest
    assert len(figures) == 8 and all(math.isfinite(v) and v > 0 for v in figures.values()), figures
    # shared and naive evaluation give the same grid on these kernels too
    assert report["grid_same_accuracy"] is True
