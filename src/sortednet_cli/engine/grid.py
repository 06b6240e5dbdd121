"""eval-grid: measure every sub-model of a pool, write the grid, select above the bar."""

from __future__ import annotations

import json
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from omegaconf import DictConfig
from rich.console import Console
from torch import nn

from ..errors import UserError
from ..models import build_from_arch
from ..reports.grid_report import grid_table, save_heatmap, write_grid
from ..reports.selection_report import print_selection, write_selection
from ..sorted.extract import extract, mflops_per_image
from ..sorted.pool import Pool
from ..sorted.selection import check_bar, select
from ..sorted.submodel import SubModel, format_depth
from .checkpoint import CHECKPOINT_NAME, checkpoint_config, load_checkpoint, resolve_checkpoint
from .data import Normalizer, load_splits
from .evaluate import EvalData, evaluate_pool
from .overrides import overlay, override_keys
from .runtime import select_device
from .latency import latency_ms_per_image

LATENCY_BATCH_SIZES = (1, 256)
BASELINE_CACHE = "baseline.json"


def newest_train_run(outputs: Path = Path("outputs")) -> Path:
    candidates = list(outputs.glob(f"train/*/{CHECKPOINT_NAME}")) + list(outputs.glob(f"multirun/train/*/*/{CHECKPOINT_NAME}"))
    if not candidates:
        raise UserError(f"no train run with a {CHECKPOINT_NAME} under {outputs.resolve()}; pass checkpoint=<run dir or .pt>")
    return max(candidates, key=lambda p: p.stat().st_mtime).parent


def load_trained(location, device: torch.device) -> tuple[DictConfig, nn.Module, Pool, Path]:
    """A train checkpoint's config, its model (weights loaded, on `device`) and its pool."""
    path = resolve_checkpoint(location)
    checkpoint = load_checkpoint(path)
    cfg = checkpoint_config(checkpoint)
    model = build_from_arch(checkpoint["arch"])
    model.load_state_dict(checkpoint["model"])
    memory_format = torch.channels_last if cfg.trainer.channels_last else torch.contiguous_format
    model = model.to(device=device, memory_format=memory_format).eval()
    return cfg, model, Pool.from_dict(checkpoint["pool"]), path


@dataclass
class TrainedRun:
    cfg: DictConfig
    model: nn.Module
    pool: Pool
    path: Path
    device: torch.device


def open_trained_run(location: Optional[str], device_name: str, console: Console) -> TrainedRun:
    """The checkpoint a command was given, or the newest train run's (and say so)."""
    if location is None:
        location = newest_train_run()
        console.print(f"checkpoint not given: using the newest train run, {location}", highlight=False)
    device = select_device(device_name)
    return TrainedRun(*load_trained(location, device), device)


def eval_data_for(run: TrainedRun, cfg: DictConfig, overrides: Sequence[str]) -> EvalData:
    """The run's own data settings with the command line's data.* overrides on top."""
    data_keys = [k for k in override_keys(overrides) if k == "data" or k.startswith("data.")]
    splits = load_splits(overlay(run.cfg, cfg, data_keys).data, run.cfg.model.num_classes)
    normalize = Normalizer(run.device, run.cfg.trainer.channels_last)
    return EvalData.from_splits(splits, cfg.eval, run.device, normalize)


def _eval_key(data: EvalData, eval_cfg) -> str:
    return f"{len(data.eval)} images|{float(data.eval.labels.float().sum())}|bn={eval_cfg.bn.value}|calib={len(data.calib)}"


def check_grid_settings(eval_cfg, select_cfg) -> None:
    """Everything a grid needs from eval.* and select.*, checked before any training or
    evaluation starts (a run should not fail hours in on a typo)."""
    for key, least in (("batch_size", 1), ("calib_images", 1), ("latency_repeats", 1)):
        if getattr(eval_cfg, key) < least:
            raise UserError(f"eval.{key} must be >= {least} (got {getattr(eval_cfg, key)})")
    check_bar(select_cfg.min_accuracy, select_cfg.min_relative)
    value = eval_cfg.baseline
    if value is None:
        return
    try:
        number = float(value)
    except ValueError:
        resolve_checkpoint(value)  # a run directory: it must hold a checkpoint
        return
    if not 0 < number <= 1:
        raise UserError(f"eval.baseline={value} must be an accuracy in (0, 1] or a train run directory")


def resolve_baseline(value: Optional[str], model: nn.Module, scores: dict, data: EvalData, eval_cfg, method: str, device: torch.device) -> dict:
    """The accuracy relative numbers divide by, and where it came from."""
    full = SubModel(1.0, tuple(model.depth_limits))
    if value is None:
        accuracy = scores[full] if full in scores else evaluate_pool(model, Pool("full", (full,)), data, eval_cfg, method)[full]
        return {"accuracy": accuracy, "source": "this checkpoint's full model"}
    try:
        number = float(value)
    except ValueError:
        number = None
    if number is not None:
        return {"accuracy": number, "source": "given number"}
    checkpoint = resolve_checkpoint(value)
    run = checkpoint.parent
    cache_path = run / BASELINE_CACHE
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    # Keyed by the images and the checkpoint's write time: a run still training is re-measured.
    key = f"{_eval_key(data, eval_cfg)}|checkpoint={checkpoint.stat().st_mtime_ns}"
    if key not in cache:
        _, other, _, _ = load_trained(run, device)
        other_full = SubModel(1.0, tuple(other.depth_limits))
        cache[key] = evaluate_pool(other, Pool("full", (other_full,)), data, eval_cfg, method)[other_full]
        cache_path.write_text(json.dumps(cache, indent=2) + "\n")
    return {"accuracy": cache[key], "source": f"full model of {run}"}


def run_grid(
    model: nn.Module,
    pool: Pool,
    data: EvalData,
    eval_cfg,
    select_cfg,
    run_dir: Path,
    label: str,
    console: Console,
    device: torch.device,
    channels_last: bool = True,
) -> dict[SubModel, float]:
    """Evaluate the pool, write grid.csv/json/png and the selection; return every sub-model's
    accuracy."""
    check_grid_settings(eval_cfg, select_cfg)
    method = eval_cfg.method.value
    console.print(f"evaluating {len(pool)} sub-models on {len(data.eval)} images (method {method}, bn {eval_cfg.bn.value})", highlight=False)
    start = time.perf_counter()
    scores = evaluate_pool(model, pool, data, eval_cfg, method)
    eval_seconds = time.perf_counter() - start
    baseline = resolve_baseline(eval_cfg.baseline, model, scores, data, eval_cfg, method, device)

    rows = []
    for sub in pool:
        small = extract(model, sub).eval()  # the sub-model as a deployment would run it
        row = {
            "width": sub.width,
            "depth": format_depth(sub.depth),
            "params": sum(p.numel() for p in small.parameters()),
            "mflops": round(mflops_per_image(model, sub), 4),
            "accuracy": scores[sub],
            "relative": scores[sub] / baseline["accuracy"] if baseline["accuracy"] > 0 else None,
            "latency_ms_bs1": None,
            "latency_ms_bs256": None,
        }
        if eval_cfg.latency:
            for batch_size in LATENCY_BATCH_SIZES:
                row[f"latency_ms_bs{batch_size}"] = round(latency_ms_per_image(small, batch_size, eval_cfg.latency_repeats, channels_last), 5)
        rows.append(row)

    meta = {
        "checkpoint": label,
        "pool": pool.name,
        "eval_images": len(data.eval),
        "method": method,
        "bn": eval_cfg.bn.value,
        "calib_images": len(data.calib),
        "device": str(device),
        "eval_seconds": eval_seconds,
        "baseline": baseline,
    }
    write_grid(rows, meta, run_dir)
    title = f"pool {pool.name} ({len(pool)} sub-models) | {label}"
    save_heatmap(rows, title, run_dir / "grid.png")
    console.print(grid_table(rows, "accuracy (%): rows depth, columns width"))
    console.print(f"baseline {100 * baseline['accuracy']:.2f}% ({baseline['source']})", highlight=False)
    console.print(f"grid: {run_dir / 'grid.csv'}, {run_dir / 'grid.png'} ({eval_seconds:.1f} s of evaluation)", highlight=False)
    select_and_report(rows, baseline["accuracy"], select_cfg, title, run_dir, console)
    return scores


def select_and_report(rows: list[dict], baseline: float, select_cfg, title: str, run_dir: Path, console: Console) -> dict:
    result = select(rows, baseline, select_cfg.min_accuracy, select_cfg.min_relative, select_cfg.cost.value, select_cfg.budget)
    write_selection(result, rows, title, run_dir)
    print_selection(console, result)
    console.print(f"selection: {run_dir / 'selected.json'}, {run_dir / 'selection.png'}", highlight=False)
    return result
