"""Regression: oneDNN's AVX2 backward-weights kernel for strided 1x1 convolutions on
channels_last inputs corrupts the heap (1 thread) or never returns (2 threads) at small channel
counts. CPUs with AVX-512 pick other kernels, so these tests cap oneDNN at AVX2 with
ONEDNN_MAX_CPU_ISA, which it reads at start-up: every family's commands run in one subprocess
(tests/run_commands.py), which pays the interpreter's start-up once, with a timeout.

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
TIMEOUT_S = 600  # the four families' commands take about a minute or two; the broken kernel spins forever


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


def run_avx2(commands: list[list[str]], cwd: Path) -> None:
    """Run `sortednet` commands one after another in one subprocess capped at AVX2 kernels."""
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    runner = Path(__file__).with_name("run_commands.py")
    try:
        done = subprocess.run([sys.executable, str(runner), json.dumps(commands)], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{len(commands)} sortednet commands did not return within {TIMEOUT_S} s on AVX2 kernels (a hung step)")
    assert done.returncode == 0, f"exit {done.returncode} on AVX2 kernels:\n{done.stderr[-2000:]}"


def narrow_run(model_name: str, width: float) -> list[str]:
    # one step of 32 images: sandwich with two draws trains both depths of the pool in it
    return [
        f"model={model_name}", *FAMILY_OVERRIDES.get(model_name, []), "pool=tiny", f"pool.widths=[{width}]", "pool.depths=[1,max]",
        "sampler=sandwich", "trainer.grad_accum=2", "trainer.accum_same_batch=true",
        "data=fake", "data.fake_train_size=32", "data.fake_test_size=32",
        "trainer.batch_size=32", "trainer.epochs=1", "trainer.device=cpu", "trainer.threads=1",
        "sched.warmup_epochs=0", "eval.calib_examples=32", "eval.latency_repeats=1",
    ]


def bench_args(model_name: str, width: float, run_dir: Path) -> list[str]:
    return [
        "bench", f"model={model_name}", *FAMILY_OVERRIDES.get(model_name, []), "pool=tiny", f"pool.widths=[{width}]", "pool.depths=[1,max]",
        "data=fake", "data.fake_train_size=256", "data.fake_test_size=64", "threads=1", "device=cpu",
        "bench.rounds=1", "bench.steps=1", "bench.batch_size=32", "bench.workers=0",
        "bench.eval_examples=32", "bench.calib_examples=32", "bench.grid_rounds=1", f"hydra.run.dir={run_dir}",
    ]


def family_commands(model_name: str, root: Path) -> tuple[list[float], list[list[str]]]:
    """One family's commands on AVX2 kernels, run in `root`: a training run per narrowest width
    (each ends with the grid: recalibration, shared evaluation; at the narrowest also the latency
    of extracted networks), the naive grid and an export of the narrowest, and the bench at the
    narrowest width. Returns the widths and the commands."""
    widths = narrowest_widths(model_name)
    narrowest = root / f"w{widths[0]}"
    # the extracted networks are timed (forward passes of 1 and 256 images) at the narrowest width
    commands = [["train", *narrow_run(model_name, width), *([] if width == widths[0] else ["eval.latency=false"]),
                 f"hydra.run.dir={root / f'w{width}'}"] for width in widths]
    commands += [
        ["eval-grid", f"checkpoint={narrowest}", "eval.method=naive", "eval.calib_examples=32",
         "eval.latency=false", f"hydra.run.dir={root / 'grid'}"],
        ["export", f"checkpoint={narrowest}", f"sub.width={widths[0]}", "sub.depth=1",
         "eval.calib_examples=32", f"hydra.run.dir={root / 'export'}"],
        bench_args(model_name, widths[0], root / "bench"),
    ]
    return widths, commands


@pytest.fixture(scope="module")
def avx2_families(tmp_path_factory) -> dict[str, tuple[list[float], Path]]:
    """Every family's commands, one after another in one AVX2 subprocess: family -> (widths, root)."""
    root = tmp_path_factory.mktemp("avx2")
    runs, commands = {}, []
    for model_name in FAMILIES:
        widths, family = family_commands(model_name, root / model_name)
        runs[model_name] = widths, root / model_name
        commands += family
    run_avx2(commands, root)
    return runs


@pytest.fixture(params=FAMILIES)
def avx2_runs(request, avx2_families) -> tuple[str, list[float], Path]:
    """One family's part of the AVX2 run: (family, its narrowest widths, its run root)."""
    return request.param, *avx2_families[request.param]


def test_narrowest_sub_models_train_and_evaluate_on_avx2_kernels(avx2_runs):
    model_name, widths, root = avx2_runs
    assert widths[0] <= 0.05
    for width in widths:
        assert (root / f"w{width}" / "grid.csv").is_file()
    assert (root / "grid" / "grid.csv").is_file()
    assert any((root / "export").glob("*.pt")), sorted(p.name for p in (root / "export").iterdir())


def test_bench_runs_the_narrowest_width_on_avx2_kernels(avx2_runs):
    model_name, widths, root = avx2_runs
    width = widths[0]
    report = json.loads((root / "bench" / "bench.json").read_text())
    figures = {"train_speedup": report["train_speedup"], "grid_speedup": report["grid_speedup"],
               "sorted_over_full_epoch": report["sorted_over_full_epoch"],
               **{f"channels_last_speedup at {w}": v["channels_last_speedup"] for w, v in report["memory_format"].items()},
               **{f"{side} images/s": v for side, v in report["train_images_per_second"].items()},
               **{f"{side} epoch s": v for side, v in report["epoch_seconds_estimate"].items()}}
    assert set(report["memory_format"]) == {f"{width:g}"}  # the pool's one width is its widest and narrowest
    assert len(figures) == 8 and all(math.isfinite(v) and v > 0 for v in figures.values()), figures
    # shared and naive evaluation give the same grid on these kernels too
    assert report["grid_same_accuracy"] is True
