"""sortednet bench: the engine's own training step against plain PyTorch, side by side.

One driver for every family. Comparison 1 times the training loop's real step (train.py's
`advance`: the plan, the watchdog, `train_step` with its scheduler step; the losses flushed where
the loop flushes them) against the plain-PyTorch loop the family's bench supplies; comparison 2
the grid of the pool, shared against naive evaluation; then the family's own comparisons, timed
with the same engine loops. Both sides of each comparison run in this one process, on the same
device, data, model class and sampler, alternating `rounds` times; medians are reported, so
background load or clock changes hit both sides alike.

A family's bench (`ModelFamily.bench()` returns it: tasks/image/bench.py, tasks/text/bench.py)
supplies only what is its own, as `FamilyBench` lists; it imports nothing from the engine, and
gets the `BenchContext` to build engine loops and time them.
"""

from __future__ import annotations

import contextlib
import copy
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Protocol

import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from torch import nn

from ..config import BenchSettings, TrainerConfig
from ..errors import UserError
from ..models import build_model
from ..reports.loggers import NullLogger
from ..sorted.exits import AllExits
from ..sorted.pool import Pool, build_pool, pool_from_config
from ..sorted.prefix_eval import METHODS
from ..sorted.sampler import Sampler
from ..tasks import Task, build_task
from .distributed import Distributed
from .optim import build_optimizer, build_scheduler
from .strategy import Strategy, autocast_for, resolve_precision
from .train import LoopState, Run, advance, flush, flush_due, stall_watchdog

QUICK = {"rounds": 5, "steps": 6, "eval_examples": 64, "calib_examples": 64, "grid_rounds": 3}
COUNTS = ("rounds", "steps", "batch_size", "workers", "eval_examples", "calib_examples", "grid_rounds")

Sides = dict[str, Callable[[], None]]
GridBatches = tuple[Callable[[], Any], Callable[[], Any], dict]  # (eval batches, calibration batches, sizes)


class PlainLoop(Protocol):
    """A family's plain-PyTorch training loop: `run(steps)` trains that many steps."""

    def run(self, steps: int) -> None: ...

    def close(self) -> None: ...


class FamilyBench(Protocol):
    """What a family's bench supplies; the driver does the rest."""

    def check(self, cfg) -> None:
        """Refuse data this bench cannot run on (a UserError, one line)."""

    def header(self, ctx: "BenchContext") -> str: ...

    def train_title(self, ctx: "BenchContext") -> str: ...

    def train_pool(self, ctx: "BenchContext") -> Pool:
        """What comparison 1 trains on both sides."""

    def plain(self, ctx: "BenchContext", pool: Pool) -> PlainLoop:
        """The plain side of comparison 1, on a fresh model with ctx.template's weights."""

    def grid_title(self, ctx: "BenchContext") -> str: ...

    def grid_batches(self, ctx: "BenchContext") -> GridBatches: ...

    def extras(self, ctx: "BenchContext") -> list[tuple[str, Callable[["BenchContext", "EngineLoop"], dict]]]:
        """Its own comparisons: (title, fn(ctx, the engine loop of comparison 1) -> figures)."""

    def report(self, ctx: "BenchContext", figures: dict) -> dict:
        """bench.json from the figures (train, throughput, grid, grid_same, grid_sizes, extras')."""

    def print_report(self, report: dict, console: Console) -> None: ...


def settings(cfg) -> dict:
    """The bench.* counts; bench.quick shrinks those left at their defaults."""
    defaults = BenchSettings()
    values = {k: getattr(cfg.bench, k) for k in COUNTS}
    if cfg.bench.quick:
        values.update({k: v for k, v in QUICK.items() if values[k] == getattr(defaults, k)})
    for key, value in values.items():
        least = 0 if key == "workers" else 1
        if value < least:
            raise UserError(f"bench.{key} must be >= {least} (got {value})")
    return values


# --- timing -----------------------------------------------------------------------------------


class PeakMemory:
    """Peak resident memory (CPU, from /proc) or peak allocated memory (CUDA) over a block."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_mib = None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            with contextlib.suppress(OSError):
                Path("/proc/self/clear_refs").write_text("5")  # reset the kernel's peak RSS
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak_mib = torch.cuda.max_memory_allocated() / 2**20
        else:
            with contextlib.suppress(OSError):
                for line in Path("/proc/self/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        self.peak_mib = int(line.split()[1]) / 1024


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(run: Callable[[], None], device: torch.device) -> tuple[float, Optional[float]]:
    """(seconds, peak MiB) of one run."""
    with PeakMemory(device) as peak:
        _sync(device)
        start = time.perf_counter()
        run()
        _sync(device)
        seconds = time.perf_counter() - start
    return seconds, peak.peak_mib


def alternate(sides: Sides, rounds: int, device: torch.device, warm_up: bool = True) -> dict[str, dict]:
    """Run each side once to warm up (and take its peak memory), then `rounds` times in turn;
    seconds per run. Without warm-up the peak memory is taken over the first timed round."""
    times = {name: [] for name in sides}
    peaks = {name: _timed(run, device)[1] for name, run in sides.items()} if warm_up else {}
    for _ in range(rounds):
        for name, run in sides.items():
            seconds, peak = _timed(run, device)
            times[name].append(seconds)
            peaks.setdefault(name, peak)
    return {name: {"median_s": statistics.median(t), "runs_s": t, "peak_mib": peaks[name]} for name, t in times.items()}


# --- the engine's side ------------------------------------------------------------------------


class _Quiet:
    """flush's progress display, with nothing shown."""

    def set_info(self, info: str) -> None:
        pass


class EngineLoop:
    """The training loop's own step (train.py's `advance`), `steps` at a time: the plan, the
    watchdog around `train_step` (the sorted update, the scheduler step), the losses flushed
    where the loop flushes them (every trainer.log_every steps, at epoch ends) and at the end of
    each timed segment. Nothing is logged and no checkpoint is written. A context manager: its
    exit stops the watchdog's thread (and the workers of streamed batches)."""

    def __init__(self, run: Run):
        self.run = run
        self.state = LoopState(done=0, examples=0, saved_step=None)
        self.watchdog = stall_watchdog(run)
        run.model.train()

    def __enter__(self) -> "EngineLoop":
        self.watchdog.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.watchdog.__exit__(*exc)
        getattr(self.run.batches, "close", lambda: None)()

    @property
    def model(self) -> nn.Module:
        return self.run.model

    @property
    def steps_per_epoch(self) -> int:
        return self.run.steps_per_epoch

    def steps(self, count: int) -> None:
        for _ in range(count):
            advance(self.run, self.state, self.watchdog)
            if flush_due(self.run, self.state):
                flush(self.run, self.state, _Quiet())
        flush(self.run, self.state, _Quiet())


def bench_trainer(cfg, batch_size: int, all_exits: bool) -> DictConfig:
    """The composed trainer settings (the family's: precision, gradient clipping, log_every, the stall
    watchdog, epochs for the schedule) with one draw per step of the bench's batch and seed."""
    trainer = OmegaConf.merge(OmegaConf.structured(TrainerConfig), cfg.trainer or {})
    trainer.merge_with({"batch_size": batch_size, "seed": cfg.seed, "grad_accum": 1, "accum_same_batch": False,
                        "distill": "none", "objective": "all_exits" if all_exits else "sampled", "max_steps": None})
    return trainer


@dataclass
class BenchContext:
    """What every comparison shares: the config, the counts, the device, the task, the initial
    weights (`template`) and the composed pool; it builds engine loops and times sides."""

    cfg: DictConfig
    settings: dict
    device: torch.device
    console: Console
    run_dir: Path
    task: Task
    template: nn.Module
    pool: Pool
    batch_size: int

    def fresh_model(self) -> nn.Module:
        """A copy of the template: the same initial weights for every side, without building and
        initialising the network again (most of a small bench's time on ResNet-50)."""
        return copy.deepcopy(self.template).to(self.device)

    def one_pool(self, name: str, width: float) -> Pool:
        """The sub-model of one width at full depth, alone."""
        return build_pool(name, [width], ["max"], self.template.depth_limits)

    def engine_loop(self, pool: Pool, task: Optional[Task] = None, all_exits: Optional[Pool] = None) -> EngineLoop:
        """The engine's training loop on a fresh model (enter it to use it): `pool` drawn by the
        uniform sampler, on `task` (ctx.task, or one in another memory format); `all_exits`:
        every exit of that pool at the drawn width (trainer.objective=all_exits)."""
        task = self.task if task is None else task
        trainer = bench_trainer(self.cfg, self.batch_size, all_exits is not None)
        model = self.fresh_model().to(memory_format=task.memory_format)
        batches = task.train_batches(trainer.batch_size, trainer.seed)
        steps_per_epoch, total_steps = len(batches), trainer.epochs * len(batches)
        optimizer = build_optimizer(self.cfg.optim, model)
        run = Run(
            cfg=OmegaConf.create({"trainer": trainer}), run_dir=self.run_dir, ranks=Distributed(), device=self.device,
            console=self.console, task=task, model=model, pool=pool, sampler=Sampler(pool, self.cfg.seed), batches=batches,
            optimizer=optimizer, scheduler=build_scheduler(self.cfg.sched, optimizer, steps_per_epoch, total_steps),
            logger=NullLogger(), autocast=autocast_for(self.device, resolve_precision(trainer, self.device)),
            strategy=Strategy(Distributed(), self.device), steps_per_epoch=steps_per_epoch,
            total_steps=total_steps, start_step=0, elapsed_before=0.0, examples_before=0, resumed=False,
            all_exits=AllExits(all_exits, task.loss) if all_exits is not None else None,
        )
        return EngineLoop(run)

    def alternate(self, sides: Sides, rounds: Optional[int] = None, warm_up: bool = True) -> dict[str, dict]:
        return alternate(sides, rounds or self.settings["rounds"], self.device, warm_up)


# --- the driver -------------------------------------------------------------------------------


def open_context(cfg, device: torch.device, console: Console, run_dir: Path) -> BenchContext:
    s = settings(cfg)
    task = build_task(cfg.data, cfg.model, device)
    fields = task.model_fields()
    torch.manual_seed(cfg.seed)
    template = build_model(cfg.model, fields)
    pool = pool_from_config(cfg.pool, template.depth_limits)
    batch_size = min(s["batch_size"], len(task.train))
    return BenchContext(cfg, s, device, console, run_dir, task, template, pool, batch_size)


def compare_training(ctx: BenchContext, family: FamilyBench, engine: EngineLoop, pool: Pool) -> dict:
    """Comparison 1: the engine's step against the family's plain loop, on the same pool."""
    plain = family.plain(ctx, pool)
    steps = ctx.settings["steps"]
    try:
        times = ctx.alternate({"project": lambda: engine.steps(steps), "reference": lambda: plain.run(steps)})
    finally:
        plain.close()
    throughput = {name: steps * ctx.batch_size / t["median_s"] for name, t in times.items()}
    return {"train": times, "throughput": throughput}


def compare_grid(ctx: BenchContext, family: FamilyBench, model: nn.Module) -> dict:
    """Comparison 2: the pool's grid, shared against naive evaluation (norms recalibrated where
    the model has statistics to recompute)."""
    eval_batches, calib_batches, sizes = family.grid_batches(ctx)
    model.eval()
    recalibrate = bool(model.recalibrated_norms())
    results = {}

    def grid(method: str) -> Callable[[], None]:
        def run() -> None:
            results[method] = METHODS[method](model, ctx.pool, eval_batches, calib_batches, recalibrate, ctx.task.meter)
        return run

    # A grid evaluation is long enough to need no warm-up run of its own.
    times = ctx.alternate({"shared": grid("shared"), "naive": grid("naive")}, ctx.settings["grid_rounds"], warm_up=False)
    same = max(abs(results["shared"][sub] - results["naive"][sub]) for sub in ctx.pool) < 1e-9
    return {"grid": times, "grid_same": same, "grid_sizes": sizes}


def run_bench(cfg, device: torch.device, console: Console, run_dir: Path, family: FamilyBench) -> dict:
    """Every comparison of `family`'s bench, its table printed; returns bench.json's report."""
    family.check(cfg)
    ctx = open_context(cfg, device, console, run_dir)
    console.print(family.header(ctx), highlight=False)
    extras = family.extras(ctx)
    total = 2 + len(extras)
    pool = family.train_pool(ctx)
    with ctx.engine_loop(pool) as engine:  # comparison 1's, kept for the family's comparisons
        console.print(f"1/{total} {family.train_title(ctx)} ...", highlight=False)
        figures = compare_training(ctx, family, engine, pool)
        console.print(f"2/{total} {family.grid_title(ctx)} ...", highlight=False)
        figures.update(compare_grid(ctx, family, engine.model))
        for number, (title, compare) in enumerate(extras, start=3):
            console.print(f"{number}/{total} {title} ...", highlight=False)
            engine.model.train()
            figures.update(compare(ctx, engine))
        report = family.report(ctx, figures)
    family.print_report(report, console)
    return report
