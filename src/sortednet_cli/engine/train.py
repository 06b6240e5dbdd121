"""The training run, top to bottom: set up, loop over optimizer steps, checkpoint, quick evaluation.

Everything random is a pure function of the seed and the global step (which sub-model, which
batch, which crop), so the loop is a plain `for step in range(start, total)` and resuming from a
checkpoint at any step reproduces the uninterrupted run exactly.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from torch import nn

from ..errors import UserError
from ..models import build_model
from ..reports.console import make_console
from ..reports.loggers import NullLogger, build_logger
from ..reports.progress import TrainProgress
from ..reports.tables import accuracy_table
from ..sorted.extract import mflops_per_image
from ..sorted.pool import Pool, pool_from_config
from ..sorted.sampler import build_sampler
from ..sorted.submodel import format_depth
from ..sorted.update import sorted_update
from .checkpoint import CHECKPOINT_NAME, TRAIN_FORMAT, checkpoint_config, load_checkpoint, resolve_checkpoint, save_atomic
from .data import Normalizer, TrainBatches, load_splits
from .distributed import any_rank, average_gradients, average_tensor, finish, from_environment, init_process_group, rank_device
from .evaluate import EvalData, evaluate_pool
from .grid import check_grid_settings, run_grid
from .overrides import overlay, override_keys
from .runtime import build_optimizer, build_scheduler, configure_backend, select_device
from .watchdog import StallWatchdog

SUMMARY_FILE = "summary.json"

# What may change when resuming; everything else would make the continuation a different run.
RESUMABLE_KEYS = (
    "resume",
    "trainer.device",
    "trainer.threads",
    "trainer.log_every",
    "trainer.checkpoint_every",
    "trainer.eval_grid",
    "trainer.channels_last",  # a memory format changes speed, not the run
    "trainer.stall_factor",
    "trainer.stall_seconds",
    "logger",
    "data.root",
    "data.verify",
    "data.download",
    "eval",
    "select",
)


@dataclass
class TrainResult:
    run_dir: Path
    summary: dict
    model: nn.Module
    interrupted: bool = False


class StopOnInterrupt:
    """The first Ctrl-C asks the loop to stop after the current step; a second one aborts."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: leave Ctrl-C alone
            self._previous = None
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def config_for_resume(checkpoint: dict, cfg: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """The checkpoint's own config, with the command line's runtime-only overrides applied."""
    saved = checkpoint_config(checkpoint)
    keys = override_keys(overrides)
    for override, key in zip(overrides, keys):
        if not any(key == allowed or key.startswith(allowed + ".") for allowed in RESUMABLE_KEYS):
            raise UserError(
                f"'{override}' cannot change when resuming (only {', '.join(RESUMABLE_KEYS[1:])} can); "
                "start a new run instead"
            )
    return overlay(saved, cfg, keys)


def validate_trainer(cfg) -> None:
    checks = {
        "epochs": cfg.epochs >= 1,
        "batch_size": cfg.batch_size >= 1,
        "grad_accum": cfg.grad_accum >= 1,
        "checkpoint_every": cfg.checkpoint_every >= 1,
        "log_every": cfg.log_every >= 1,
    }
    for key, ok in checks.items():
        if not ok:
            raise UserError(f"trainer.{key} must be >= 1 (got {getattr(cfg, key)})")
    for key in ("stall_factor", "stall_seconds"):
        if getattr(cfg, key) < 0:
            raise UserError(f"trainer.{key} must be >= 0, 0 turns the stall warning off (got {getattr(cfg, key)})")


def quick_eval_members(pool: Pool) -> list:
    """The full, a middle and the smallest sub-model (fewer when the pool is smaller)."""
    picks = [pool.largest, pool.members[len(pool) // 2], pool.smallest]
    return list(dict.fromkeys(picks))


def train(cfg: DictConfig, run_dir: Path, overrides: Sequence[str] = (), console: Optional[Console] = None) -> TrainResult:
    ranks = from_environment()
    # Under torchrun only rank 0 prints and writes; every rank trains.
    console = (console or make_console()) if ranks.is_main else Console(file=io.StringIO())
    run_dir = Path(run_dir)
    checkpoint = None
    if cfg.resume:
        checkpoint_path = resolve_checkpoint(cfg.resume)
        checkpoint = load_checkpoint(checkpoint_path)
        cfg = config_for_resume(checkpoint, cfg, overrides)
        run_dir = checkpoint_path.parent
        console.print(f"resuming {run_dir} at step {checkpoint['step']}")

    # --- set up -----------------------------------------------------------------------------
    if ranks.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    trainer = cfg.trainer
    validate_trainer(trainer)
    check_grid_settings(cfg.eval, cfg.select)  # fail now, not after hours of training
    if trainer.batch_size % ranks.world_size:
        raise UserError(f"trainer.batch_size={trainer.batch_size} (the global batch) must divide evenly over {ranks.world_size} ranks")
    device = rank_device(select_device(trainer.device.value), ranks)
    init_process_group(ranks, device)
    configure_backend(device, trainer.threads)
    torch.manual_seed(trainer.seed)  # the initial weights
    memory_format = torch.channels_last if trainer.channels_last else torch.contiguous_format
    model = build_model(cfg.model).to(device=device, memory_format=memory_format)
    pool = pool_from_config(cfg.pool, model.depth_limits)
    splits = load_splits(cfg.data, cfg.model.num_classes)
    normalize = Normalizer(device, trainer.channels_last)
    batches = TrainBatches(splits.train.to(device), trainer.batch_size, trainer.seed, cfg.data.augment, normalize)
    sampler = build_sampler(cfg.sampler, pool, trainer.seed, cost=lambda sub: mflops_per_image(model, sub))

    g = trainer.grad_accum
    # Each step takes g mini-batches, or one shared by all g draws with accum_same_batch.
    steps_per_epoch = len(batches) if trainer.accum_same_batch else math.ceil(len(batches) / g)
    total_steps = trainer.epochs * steps_per_epoch
    optimizer = build_optimizer(cfg.optim, model)
    scheduler = build_scheduler(cfg.sched, optimizer, steps_per_epoch, total_steps)
    start_step, elapsed_before, images_before = 0, 0.0, 0
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        torch.set_rng_state(checkpoint["rng"]["torch"])
        start_step, elapsed_before, images_before = checkpoint["step"], checkpoint["elapsed_s"], checkpoint["images"]

    config_dict = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    logger = build_logger(cfg.logger, run_dir, config_dict, resume_step=start_step if checkpoint else None) if ranks.is_main else NullLogger()
    autocast = (
        (lambda: torch.autocast("cuda", dtype=torch.bfloat16))
        if device.type == "cuda" and trainer.amp
        else contextlib.nullcontext
    )

    saved_step = start_step if checkpoint is not None else None

    def save(step: int) -> Path:
        nonlocal saved_step
        path = run_dir / CHECKPOINT_NAME
        if not ranks.is_main:
            return path
        state = {
            "format": TRAIN_FORMAT,
            "model": model.state_dict(),
            "arch": model.arch,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "sampler": sampler.state_dict(),
            "rng": {"torch": torch.get_rng_state()},
            "epoch": step // steps_per_epoch,
            "step": step,
            "elapsed_s": elapsed_before + time.perf_counter() - start_time,
            "images": images,
            "config": OmegaConf.to_yaml(cfg, resolve=True),
            "pool": pool.to_dict(),
        }
        save_atomic(state, path)
        saved_step = step
        return path

    def warn_stall(message: str) -> None:
        logging.getLogger("sortednet").warning("%s", message)
        console.print(f"[bold yellow]warning:[/] {message}", highlight=False)

    def stall_advice(subs: list) -> str:
        kept = f"last.pt (step {saved_step}) is intact" if saved_step is not None else "no checkpoint has been written yet"
        return (
            f"it trains {', '.join(sub.label for sub in subs)} and may be stuck in a native kernel. "
            f"A step stuck in native code ignores Ctrl-C: kill the process (kill {os.getpid()}), "
            f"then continue with `sortednet train resume={run_dir}`; {kept}"
        )

    console.print(
        f"training {cfg.model.name} on {splits.train.images.shape[0]} {cfg.data.name.value} images, "
        f"pool {pool.name} ({len(pool)} sub-models), sampler {sampler.name}, grad_accum {g}, "
        f"{trainer.epochs} epochs x {steps_per_epoch} steps on {device}"
        + (f" x {ranks.world_size} ranks" if ranks.enabled else "") + f"; run dir {run_dir}",
        highlight=False,
    )

    # --- the loop ---------------------------------------------------------------------------
    pending: list[tuple[int, int, int, object, torch.Tensor, float]] = []  # draws not yet logged
    last_losses: list[float] = []
    images = images_before
    start_time = time.perf_counter()

    def flush() -> None:
        """Read the pending losses back in one transfer, check them, log them."""
        nonlocal last_losses
        if not pending:
            return
        values = average_tensor(torch.stack([entry[4] for entry in pending]).float(), ranks).cpu().tolist()
        elapsed = round(elapsed_before + time.perf_counter() - start_time, 3)
        rows = []
        for (epoch, step, draw, sub, _, lr), loss in zip(pending, values):
            if not math.isfinite(loss):
                raise UserError(
                    f"loss became {loss} at step {step} on sub-model {sub.label}; "
                    "lower optim.lr or check the data (last.pt keeps the last good checkpoint)"
                )
            rows.append({"epoch": epoch, "step": step, "width": sub.width, "depth": format_depth(sub.depth),
                         "loss": round(loss, 6), "lr": lr, "elapsed_s": elapsed, "draw": draw})
        logger.log_draws(rows)
        last_losses = values
        progress.set_info(f"loss {sum(values) / len(values):.4f} lr {rows[-1]['lr']:.4g} {pending[-1][3].label}")
        pending.clear()

    interrupted = False
    done = start_step
    model.train()
    try:
        watchdog = StallWatchdog(warn_stall, trainer.stall_factor, trainer.stall_seconds)
        with StopOnInterrupt() as stop, watchdog, TrainProgress(console, total_steps, start_step, steps_per_epoch, trainer.log_every) as progress:
            for step in range(start_step, total_steps):
                epoch, step_in_epoch = divmod(step, steps_per_epoch)
                first_batch = step_in_epoch if trainer.accum_same_batch else step_in_epoch * g
                num_draws = g if trainer.accum_same_batch else min(g, len(batches) - first_batch)
                subs = [sampler.draw(step, d, g) for d in range(num_draws)]

                def draws():
                    shard = ranks.shard(batches.batch_size)
                    shared = batches.get(epoch, first_batch, shard) if trainer.accum_same_batch else None
                    for d, sub in enumerate(subs):
                        yield (sub, *(shared or batches.get(epoch, first_batch + d, shard)))

                lr = scheduler.get_last_lr()[0]
                watchdog.step_started(step + 1, stall_advice(subs))
                losses = sorted_update(model, optimizer, draws(), num_draws, F.cross_entropy, autocast,
                                       before_step=lambda: average_gradients(model, ranks))
                watchdog.step_finished()
                scheduler.step()
                images += num_draws * batches.batch_size
                pending.extend((epoch, step + 1, d, sub, loss, lr) for d, (sub, loss) in enumerate(zip(subs, losses)))

                done = step + 1
                epoch_end = done % steps_per_epoch == 0
                at_flush = done % trainer.log_every == 0 or epoch_end or done == total_steps
                # Ranks must agree on where to stop, so under torchrun they stop at a flush.
                if ranks.enabled:
                    stopping = at_flush and any_rank(stop.requested, ranks, device)
                else:
                    stopping = stop.requested
                if at_flush or stopping:
                    flush()
                progress.update(done)
                if stopping:
                    interrupted = True
                    break
                if (epoch_end and (epoch + 1) % trainer.checkpoint_every == 0) or done == total_steps:
                    save(done)

        wall = time.perf_counter() - start_time
        finish(ranks)
        summary = {
            "final_loss": sum(last_losses) / len(last_losses) if last_losses else None,
            "steps": done,
            "total_steps": total_steps,
            "epochs_done": done / steps_per_epoch,
            "images_per_second": (images - images_before) / wall if wall > 0 else None,
            "wall_seconds": elapsed_before + wall,
            "device": str(device),
            "pool": pool.name,
            "pool_size": len(pool),
            "eval_split": splits.eval_name,
        }
        previous = run_dir / SUMMARY_FILE
        if done == start_step and previous.is_file():
            # Resumed a finished run (say, to evaluate again): its training figures stand.
            trained = json.loads(previous.read_text())
            summary.update({k: trained[k] for k in ("final_loss", "images_per_second", "wall_seconds") if k in trained})
        if interrupted:
            path = save(done)
            console.print(f"interrupted after step {done}; checkpoint saved to {path}")
            console.print(f"resume with: sortednet train resume={run_dir}", highlight=False)
            if ranks.is_main:
                _write_json(run_dir / SUMMARY_FILE, {**summary, "interrupted": True})
            return TrainResult(run_dir, summary, model, interrupted=True)
        if not ranks.is_main:
            return TrainResult(run_dir, summary, model)

        # --- evaluation: the grid of every sub-model, or a quick look at three -------------
        eval_data = EvalData.from_splits(splits, cfg.eval, device, normalize)
        members = quick_eval_members(pool)
        if trainer.eval_grid:  # the grid measures the quick three too
            scores = run_grid(model, pool, eval_data, cfg.eval, cfg.select, run_dir, str(run_dir / CHECKPOINT_NAME), console, device, trainer.channels_last)
        else:
            scores = evaluate_pool(model, Pool("quick", tuple(members)), eval_data, cfg.eval, method="naive")
        quick = [{"width": s.width, "depth": format_depth(s.depth), "accuracy": scores[s]} for s in members]
        console.print(accuracy_table(quick, title=f"quick evaluation on {splits.eval_name} ({len(splits.eval)} images)"))
        summary["quick_eval"] = quick
        _write_json(run_dir / SUMMARY_FILE, summary)
        logger.log_summary(summary)
        return TrainResult(run_dir, summary, model)
    finally:
        logger.close()


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")
