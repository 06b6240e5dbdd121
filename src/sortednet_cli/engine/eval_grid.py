"""eval-grid: measure every sub-model of a pool, write the grid, select above the bar."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from rich.console import Console
from torch import nn

from ..errors import UserError
from ..decode.bench import agreement_with_full, ms_per_decoded_token
from ..models import build_from_arch, family_of
from ..models.cost import mflops_per_example
from ..reports.grid_report import grid_columns, grid_table, save_heatmap, write_grid
from ..reports.selection_report import print_selection, write_selection
from ..sorted.pool import Pool
from ..sorted.selection import check_bar, select
from ..sorted.submodel import SubModel, format_depth, full_submodel
from ..tasks import Metric, Task, build_task
from .checkpoint import checkpoint_config, load_checkpoint, load_weights, resolve_checkpoint
from .evaluate import EvalData, evaluate_pool
from .latency import latency_ms_per_example
from .overrides import override_keys
from ..jsonfiles import read_json, write_json
from .runs import newest_train_run
from .runtime import select_device, set_threads

LATENCY_BATCH_SIZES = (1, 256)
# A decoder's agreement column: greedy continuations of this many validation prompts of this many
# tokens, each this long (clipped to the context), checked against the full model.
AGREEMENT_PROMPTS, AGREEMENT_PROMPT_TOKENS, AGREEMENT_NEW_TOKENS = 8, 16, 64
BASELINE_CACHE = "baseline.json"


@dataclass
class TrainedRun:
    """A train checkpoint opened for evaluation: its config, model (weights loaded, on `device`,
    in eval mode), pool, path and what it saved of its task (a text task's tokenizer)."""

    cfg: DictConfig
    model: nn.Module
    pool: Pool
    path: Path
    device: torch.device
    task_state: Optional[dict] = None


def load_trained(location, device: torch.device) -> TrainedRun:
    path = resolve_checkpoint(location)
    checkpoint = load_checkpoint(path)
    model = build_from_arch(checkpoint["arch"])
    load_weights(model, checkpoint)
    model = model.to(device).eval()
    return TrainedRun(checkpoint_config(checkpoint), model, Pool.from_dict(checkpoint["pool"]), path, device, checkpoint.get("task"))


def open_trained_run(location: Optional[str], device_name: str, console: Console) -> TrainedRun:
    """The checkpoint a command was given, or the newest train run's (and say so)."""
    if location is None:
        location = newest_train_run()
        console.print(f"checkpoint not given: using the newest train run, {location}", highlight=False)
    return load_trained(location, select_device(device_name))


def open_decoder(location: Optional[str], device_name: str, threads: int, console: Console):
    """generate's and bench-decode's checkpoint: a trained decoder with its tokenizer (a
    decode.run.DecoderRun; imported here, so that the CNN commands load no tokenizer code)."""
    from ..decode.run import decoder_run

    set_threads(threads, "threads")
    return decoder_run(open_trained_run(location, device_name, console))


def data_config_for(run: TrainedRun, cfg: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """The run's own data settings, or those of a `data=<option>` given, with the command line's
    data.* keys on top: each checked against the data schema it lands in."""
    keys = [k for k in override_keys(overrides) if k == "data" or k.startswith("data.")]
    data = (cfg.data if "data" in keys else run.cfg.data).copy()
    for key in keys:
        if key == "data":
            continue
        try:
            OmegaConf.update(data, key[len("data."):], OmegaConf.select(cfg, key), merge=False)
        except OmegaConfBaseException as exc:
            raise UserError(f"{key}: not a key of this checkpoint's data ({data.name}) or a bad value: {str(exc).splitlines()[0]}") from None
    return data


def task_for(run: TrainedRun, cfg: DictConfig, overrides: Sequence[str]) -> Task:
    """The run's task on its (overridden) data; the model moves to the task's memory format."""
    task = build_task(data_config_for(run, cfg, overrides), run.cfg.model, run.device, state=run.task_state)
    run.model.to(memory_format=task.memory_format)
    return task


def check_grid_settings(eval_cfg, select_cfg, metric: Metric) -> None:
    """Everything a grid needs from eval.* and select.*, checked before any training or
    evaluation starts (a run should not fail hours in on a typo)."""
    for key, least in (("batch_size", 1), ("calib_examples", 1), ("latency_repeats", 1)):
        if getattr(eval_cfg, key) < least:
            raise UserError(f"eval.{key} must be >= {least} (got {getattr(eval_cfg, key)})")
    check_bar(metric, select_cfg.metric_bar, select_cfg.min_relative)
    value = eval_cfg.baseline
    if value is None:
        return
    try:
        number = float(value)
    except ValueError:
        resolve_checkpoint(value)  # a run directory: it must hold a checkpoint
        return
    if not metric.in_range(number, positive=True):
        raise UserError(f"eval.baseline={value} must be {metric.described()} in {metric.range_text(positive=True)} or a train run directory")


def resolve_baseline(value: Optional[str], model: nn.Module, scores: dict, data: EvalData, eval_cfg, method: str, device: torch.device) -> dict:
    """The metric value relative numbers compare with, and where it came from."""
    metric = data.task.metric
    full = full_submodel(model.depth_limits)
    if value is None:
        score = scores[full] if full in scores else evaluate_pool(model, Pool("full", (full,)), data, eval_cfg, method)[full]
        return {metric.name: score, "source": "this checkpoint's full model"}
    try:
        number = float(value)
    except ValueError:
        number = None
    if number is not None:
        return {metric.name: number, "source": "given number"}
    checkpoint = resolve_checkpoint(value)
    run = checkpoint.parent
    cache_path = run / BASELINE_CACHE
    cache = read_json(cache_path) or {}
    # Keyed by the evaluation set and the checkpoint's write time: a run still training is re-measured.
    key = f"{data.task.eval_fingerprint()}|bn={eval_cfg.bn.value}|calib={data.calib_size}|checkpoint={checkpoint.stat().st_mtime_ns}"
    if key not in cache:
        other_run = load_trained(run, device)
        other = other_run.model.to(memory_format=data.task.memory_format)
        other_data = data
        if (other_run.task_state or {}) != data.task.state():
            # A text run has its own tokenizer: the same examples, encoded its way.
            other_task = build_task(data.task.cfg, other_run.cfg.model, device, state=other_run.task_state)
            other_data = EvalData(other_task, data.batch_size, data.calib_count)
        other_full = full_submodel(other.depth_limits)
        cache[key] = evaluate_pool(other, Pool("full", (other_full,)), other_data, eval_cfg, method)[other_full]
        write_json(cache_path, cache)
    return {metric.name: cache[key], "source": f"full model of {run}"}


def grid_row(model: nn.Module, sub: SubModel, score: float, baseline: float, task: Task, eval_cfg, details: Optional[dict] = None) -> dict:
    small = model.extract(sub).eval()  # the sub-model as a deployment would run it
    metric = task.metric
    row = {
        "width": sub.width,
        "depth": format_depth(sub.depth),
        "params": sum(p.numel() for p in small.parameters()),
        "mflops": round(mflops_per_example(model, sub, task.example_input(1)), 4),
        metric.name: score,
        **(details or {}),
        "relative": metric.relative(score, baseline),
        "latency_ms_bs1": None,
        "latency_ms_bs256": None,
    }
    if family_of(small).decodes:  # how often the full model would accept this sub-model's drafts
        prompts = task.prompt_windows(min(AGREEMENT_PROMPTS, task.eval_size()), AGREEMENT_PROMPT_TOKENS)
        row["agreement"] = round(agreement_with_full(model, small, prompts, AGREEMENT_NEW_TOKENS), 4)
    if eval_cfg.latency:
        for batch_size in LATENCY_BATCH_SIZES:
            inputs = task.example_input(batch_size)
            row[f"latency_ms_bs{batch_size}"] = round(latency_ms_per_example(small, inputs, batch_size, eval_cfg.latency_repeats), 5)
        if family_of(small).decodes:  # a language model is for decoding: time a token of it
            prompt = task.example_input(1).input_ids[0, :16].tolist()
            row["decode_ms_per_token"] = round(ms_per_decoded_token(small, prompt, eval_cfg.latency_repeats), 4)
    return row


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
) -> dict[SubModel, float]:
    """Evaluate the pool, write grid.csv/json/png and the selection; return every sub-model's
    metric value."""
    metric = data.task.metric
    check_grid_settings(eval_cfg, select_cfg, metric)
    method = eval_cfg.method.value
    console.print(f"evaluating {len(pool)} sub-models on {data.eval_size} examples (method {method}, bn {eval_cfg.bn.value})", highlight=False)
    start = time.perf_counter()
    details: dict = {}
    scores = evaluate_pool(model, pool, data, eval_cfg, method, details)
    eval_seconds = time.perf_counter() - start
    baseline = resolve_baseline(eval_cfg.baseline, model, scores, data, eval_cfg, method, device)
    rows = [grid_row(model, sub, scores[sub], baseline[metric.name], data.task, eval_cfg, details.get(sub)) for sub in pool]

    full = full_submodel(model.depth_limits)
    meta = {
        "checkpoint": label,
        "pool": pool.name,
        "eval_examples": data.eval_size,
        "method": method,
        "bn": eval_cfg.bn.value,
        "calib_examples": data.calib_size,
        "device": str(device),
        "eval_seconds": eval_seconds,
        "baseline": baseline,
        "metric": metric.to_dict(),
        "extra_columns": [key for key in rows[0] if key not in grid_columns(metric.name)],
        "full": {"width": full.width, "depth": format_depth(full.depth)},
    }
    write_grid(rows, meta, run_dir)
    title = f"pool {pool.name} ({len(pool)} sub-models) | {label}"
    save_heatmap(rows, title, run_dir / "grid.png", metric)
    unit = f"{metric.name} (%)" if metric.is_fraction else metric.name
    console.print(grid_table(rows, f"{unit}: rows depth, columns width", metric))
    console.print(f"baseline {metric.format(baseline[metric.name])} ({baseline['source']})", highlight=False)
    console.print(f"grid: {run_dir / 'grid.csv'}, {run_dir / 'grid.png'} ({eval_seconds:.1f} s of evaluation)", highlight=False)
    select_and_report(rows, metric, baseline[metric.name], select_cfg, title, run_dir, console)
    return scores


def select_and_report(rows: list[dict], metric: Metric, baseline: float, select_cfg, title: str, run_dir: Path, console: Console) -> dict:
    result = select(rows, metric, baseline, select_cfg.metric_bar, select_cfg.min_relative, select_cfg.cost.value, select_cfg.budget)
    write_selection(result, rows, title, run_dir, metric)
    print_selection(console, result, metric)
    console.print(f"selection: {run_dir / 'selected.json'}, {run_dir / 'selection.png'}", highlight=False)
    return result

