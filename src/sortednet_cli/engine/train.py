"""The training run, top to bottom: `set_up`, `run_loop`, `finish`.

Everything random is a pure function of the seed and the global step (which sub-model, which
batch, which augmentation), so the loop is a plain `for step in range(start, total)` and
resuming from a checkpoint at any step reproduces the uninterrupted run exactly.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Optional, Sequence

import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from torch import nn

from ..errors import UserError
from ..jsonfiles import read_json, write_json
from ..models import FAMILIES, build_from_arch, build_model, family_named, family_of
from ..models.cost import mflops_per_example
from ..renames import upgrade_record
from ..reports.console import make_console
from ..reports.loggers import NullLogger, build_logger
from ..reports.progress import TrainProgress
from ..reports.tables import metric_table
from ..sorted.pool import Pool, pool_from_config
from ..sorted.sampler import Sampler, build_sampler
from ..sorted.submodel import SubModel, format_depth
from ..sorted.distill import InplaceDistillation
from ..sorted.exits import AllExits, ExitTraining
from ..sorted.update import DrawLoss, Forward, plain_loss, sorted_update, sub_forward
from ..tasks import Task, build_task
from . import sharded
from .checkpoint import CHECKPOINT_NAME, TRAIN_FORMAT, checkpoint_config, load_checkpoint, resolve_checkpoint, save_atomic
from .claim import claimed
from .distributed import Distributed, any_rank, average_tensor, finish as finish_ranks, from_environment, init_process_group, rank_device
from .eval_grid import check_grid_settings, run_grid
from .evaluate import EvalData, evaluate_pool
from .optim import build_optimizer, build_scheduler
from .overrides import overlay, override_keys
from .runtime import configure_backend, select_device
from .strategy import Strategy, autocast_for, build_strategy, resolve_precision, resolve_strategy
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
    "trainer.stall_factor",
    "trainer.stall_seconds",
    "trainer.strategy",  # single, ddp and fsdp train the same steps: a run may resume on another world size
    "trainer.fsdp_cpu_offload",
    "trainer.gradient_checkpointing",  # memory against time, the same gradients
    "logger",
    "data.root",
    "data.path",
    "data.verify",
    "data.download",
    "data.channels_last",  # a memory format changes speed, not the run
    "data.cache",  # an image folder cached or streamed gives the same batches
    "data.memory_budget_gb",
    "data.workers",
    "eval",
    "select",
)


@dataclass
class TrainResult:
    run_dir: Path
    summary: dict
    model: nn.Module
    interrupted: bool = False


@dataclass
class PendingDraw:
    """A trained draw whose loss is still on the device (read back in batches, at flushes)."""

    epoch: int
    step: int
    draw: int
    sub: SubModel
    loss: torch.Tensor
    lr: float


@dataclass
class Run:
    """Everything `set_up` prepares: the loop and `finish` only read it."""

    cfg: DictConfig
    run_dir: Path
    ranks: Distributed
    device: torch.device
    console: Console
    task: Task
    model: nn.Module
    pool: Pool
    sampler: Sampler
    batches: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    logger: Any
    autocast: Callable[[], ContextManager]
    strategy: Strategy
    steps_per_epoch: int
    total_steps: int
    start_step: int
    elapsed_before: float
    examples_before: int  # training examples seen before this process (resumed runs)
    resumed: bool
    all_exits: Optional[AllExits] = None  # trainer.objective=all_exits
    scaler: Optional[torch.amp.GradScaler] = None  # trainer.precision=fp16
    precision: str = "fp32"  # trainer.precision, auto resolved


@dataclass
class LoopState:
    """What the loop changes as it goes."""

    done: int
    examples: int  # training examples seen (sequences, windows or images; all exits of a draw share them)
    saved_step: Optional[int]
    start_time: float = field(default_factory=time.perf_counter)
    pending: list[PendingDraw] = field(default_factory=list)
    last_losses: list[float] = field(default_factory=list)
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
                f"'{override.lstrip('+')}' cannot change when resuming (only {', '.join(RESUMABLE_KEYS[1:])} can); "
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
        "max_steps": cfg.max_steps is None or cfg.max_steps >= 1,
    }
    for key, ok in checks.items():
        if not ok:
            raise UserError(f"trainer.{key} must be >= 1 (got {getattr(cfg, key)})")
    for key in ("stall_factor", "stall_seconds"):
        if getattr(cfg, key) < 0:
            raise UserError(f"trainer.{key} must be >= 0, 0 turns the stall warning off (got {getattr(cfg, key)})")
    if cfg.clip_grad_norm is not None and cfg.clip_grad_norm <= 0:
        raise UserError(f"trainer.clip_grad_norm must be > 0 or null (got {cfg.clip_grad_norm})")
    if cfg.distill.value == "inplace" and cfg.objective.value == "all_exits":
        raise UserError("trainer.distill=inplace and trainer.objective=all_exits do not combine: all_exits already trains every exit of a width on the same batch")
    exit_training = ExitTraining.from_trainer(cfg, total_steps=1)
    exit_training.check()
    if cfg.objective.value != "all_exits" and exit_training.shapes_the_objective:
        raise UserError("trainer.exit_weights, exit_curriculum, layer_dropout and exit_distill_alpha shape the all-exits objective: "
                        "they need trainer.objective=all_exits")
    if cfg.distill.value == "inplace":
        if not cfg.accum_same_batch:
            raise UserError("trainer.distill=inplace needs trainer.accum_same_batch=true: the largest sub-model teaches on the batch the step's draws share")
        if cfg.distill_temperature <= 0 or not 0 <= cfg.distill_alpha <= 1:
            raise UserError(f"trainer.distill_temperature must be > 0 and trainer.distill_alpha in [0, 1] (got {cfg.distill_temperature}, {cfg.distill_alpha})")


def check_distillation_teacher(run: "Run", steps: int = 64) -> None:
    """In-place distillation needs the largest sub-model in every step; the sampler is a pure
    function of the step, so its first steps show whether it draws one."""
    for step in range(min(steps, run.total_steps)):
        if run.pool.largest not in plan_step(run, step).subs:
            raise UserError(
                f"trainer.distill=inplace needs the largest sub-model ({run.pool.largest.label}) in every step, but "
                f"sampler={run.sampler.name} with trainer.grad_accum={run.cfg.trainer.grad_accum} drew step {step + 1} without it; "
                "use sampler=sandwich with trainer.grad_accum >= 2"
            )


def quick_eval_members(pool: Pool) -> list:
    """The full, a middle and the smallest sub-model (fewer when the pool is smaller)."""
    picks = [pool.largest, pool.members[len(pool) // 2], pool.smallest]
    return list(dict.fromkeys(picks))


# --- set up -------------------------------------------------------------------------------


def set_up(cfg: DictConfig, run_dir: Path, overrides: Sequence[str], console: Optional[Console], claims: contextlib.ExitStack) -> Run:
    """Everything the loop needs; the run directory's claim goes on `claims` (held until the run ends)."""
    ranks = from_environment()
    # Under torchrun only rank 0 prints and writes (and claims the run directory); every rank trains.
    console = (console or make_console()) if ranks.is_main else Console(file=io.StringIO())
    cfg, run_dir, checkpoint = open_run(cfg, Path(run_dir), overrides, ranks, console, claims)
    trainer = cfg.trainer
    device, strategy, precision = start_device(cfg, ranks)
    task, model = build_task_and_model(cfg, device, checkpoint)
    pool = pool_from_config(cfg.pool, model.depth_limits)
    batches = task.train_batches(trainer.batch_size, trainer.seed)
    example = task.example_input(1)
    sampler = build_sampler(cfg.sampler, pool, trainer.seed, cost=lambda sub: mflops_per_example(model, sub, example))
    steps_per_epoch, total_steps = count_steps(trainer, len(batches))
    model = prepare_model(trainer, model, strategy, precision)
    optimizer = build_optimizer(cfg.optim, model)
    scheduler = build_scheduler(cfg.sched, optimizer, steps_per_epoch, total_steps)
    scaler = strategy.gradient_scaler() if precision == "fp16" else None
    start_step, elapsed_before, examples_before = restore_training_state(checkpoint, model, optimizer, scheduler, scaler, strategy)
    config_dict = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    logger = build_logger(cfg.logger, run_dir, config_dict, resume_step=start_step if checkpoint else None) if ranks.is_main else NullLogger()
    run = Run(
        cfg=cfg, run_dir=run_dir, ranks=ranks, device=device, console=console,
        task=task, model=model, pool=pool, sampler=sampler, batches=batches,
        optimizer=optimizer, scheduler=scheduler, logger=logger, autocast=autocast_for(device, precision), strategy=strategy,
        steps_per_epoch=steps_per_epoch, total_steps=total_steps,
        start_step=start_step, elapsed_before=elapsed_before, examples_before=examples_before, resumed=checkpoint is not None,
        all_exits=all_exits_for(trainer, pool, task, total_steps), scaler=scaler, precision=precision,
    )
    announce(run)
    if trainer.distill.value == "inplace":
        check_distillation_teacher(run)
    return run


def all_exits_for(trainer, pool: Pool, task: Task, total_steps: int) -> Optional[AllExits]:
    """trainer.objective=all_exits: every exit of the drawn width, trained as trainer.exit_*
    and trainer.layer_dropout say; None for sampled draws."""
    if trainer.objective.value != "all_exits":
        return None
    return AllExits(pool, task.loss, task.soft_loss, ExitTraining.from_trainer(trainer, total_steps))


def open_run(cfg: DictConfig, run_dir: Path, overrides: Sequence[str], ranks: Distributed, console: Console,
             claims: contextlib.ExitStack) -> tuple[DictConfig, Path, Optional[dict]]:
    """The run's config, directory and checkpoint (None for a new run). A resumed run continues
    in its checkpoint's directory, with the checkpoint's config and the command line's
    runtime-only overrides on top. Rank 0 claims the directory before anything is read or
    written there: a run still going is refused here."""
    checkpoint_path = None
    if cfg.resume:
        checkpoint_path = resolve_checkpoint(cfg.resume)
        run_dir = checkpoint_path.parent
    if ranks.is_main:
        claims.enter_context(claimed(run_dir))
    if checkpoint_path is None:
        return cfg, run_dir, None
    checkpoint = load_checkpoint(checkpoint_path)
    cfg = config_for_resume(checkpoint, cfg, overrides)
    console.print(f"resuming {run_dir} at step {checkpoint['step']}")
    return cfg, run_dir, checkpoint


def start_device(cfg: DictConfig, ranks: Distributed) -> tuple[torch.device, Strategy, str]:
    """The trainer settings checked, then this rank's device, its process group and threads, the
    strategy sharing the training over the ranks and the precision (fp32, bf16 or fp16)."""
    trainer = cfg.trainer
    validate_trainer(trainer)
    if trainer.batch_size % ranks.world_size:
        raise UserError(f"trainer.batch_size={trainer.batch_size} (the global batch) must divide evenly over {ranks.world_size} ranks")
    check_gradient_checkpointing(cfg)
    device = rank_device(select_device(trainer.device.value), ranks)
    strategy_name, precision = resolve_strategy(trainer, ranks, device), resolve_precision(trainer, device)
    init_process_group(ranks, device)
    configure_backend(device, trainer.threads)
    return device, build_strategy(strategy_name, trainer, ranks, device), precision


def check_gradient_checkpointing(cfg: DictConfig) -> None:
    if cfg.trainer.gradient_checkpointing and family_named(cfg.model.name).gradient_checkpointing is None:
        having = [name for name in FAMILIES.names() if FAMILIES.get(name).gradient_checkpointing is not None]
        raise UserError(f"trainer.gradient_checkpointing=true: model={cfg.model.name} has no activation checkpointing "
                        f"(these do: {', '.join(having)})")


def prepare_model(trainer, model: nn.Module, strategy: Strategy, precision: str) -> nn.Module:
    """Gradient checkpointing switched on where asked, then the model wrapped or sharded by its
    strategy (before its optimizer is built: under fsdp the optimizer holds the shards)."""
    if trainer.gradient_checkpointing:
        family_of(model).gradient_checkpointing(model)
    return strategy.prepare(model, precision)


def build_task_and_model(cfg: DictConfig, device: torch.device, checkpoint: Optional[dict]) -> tuple[Task, nn.Module]:
    """The task, then the network it decides (its class count, a text task's vocabulary) on the
    device in the task's memory format. A resumed run rebuilds both from the checkpoint: the
    task from its state (a trained tokenizer is kept there), the network from its `arch`
    (pretrained weights are not fetched again)."""
    task = build_task(cfg.data, cfg.model, device, state=checkpoint.get("task") if checkpoint else None)
    check_grid_settings(cfg.eval, cfg.select, task.metric)  # fail now, not after hours of training
    fields = task.model_fields()  # a text task trains its tokenizer here
    task.state()  # a tokenizer a checkpoint cannot keep fails now, not at the first checkpoint
    torch.manual_seed(cfg.trainer.seed)  # the initial weights
    model = build_from_arch(checkpoint["arch"]) if checkpoint else build_model(cfg.model, fields)
    return task, model.to(device=device, memory_format=task.memory_format)


def count_steps(trainer, batches_per_epoch: int) -> tuple[int, int]:
    """Optimizer steps per epoch and in all. Each step takes g mini-batches, or one shared by all
    g draws with accum_same_batch; trainer.max_steps caps the total."""
    g = trainer.grad_accum
    steps_per_epoch = batches_per_epoch if trainer.accum_same_batch else math.ceil(batches_per_epoch / g)
    total_steps = trainer.epochs * steps_per_epoch
    if trainer.max_steps is not None:
        total_steps = min(total_steps, trainer.max_steps)
    return steps_per_epoch, total_steps


def restore_training_state(checkpoint: Optional[dict], model: nn.Module, optimizer: torch.optim.Optimizer, scheduler,
                           scaler: Optional[torch.amp.GradScaler], strategy: Strategy) -> tuple[int, float, int]:
    """A resumed run's weights, optimizer, schedule and random state put back; returns the step
    it continues from, the seconds and the training examples before it (0s for a new run).
    Either checkpoint (last.pt, sharded) resumes under any strategy and world size."""
    if checkpoint is None:
        return 0, 0.0, 0
    if "sharded" in checkpoint:
        sharded.load_sharded(model, optimizer, Path(checkpoint["sharded"]))
    elif strategy.shards_checkpoints:
        sharded.load_full_into_sharded(model, optimizer, checkpoint["model"], checkpoint["optimizer"])
    else:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    if scaler is not None and checkpoint.get("scaler"):
        scaler.load_state_dict(checkpoint["scaler"])
    torch.set_rng_state(checkpoint["rng"]["torch"])
    if "cuda" in checkpoint["rng"] and strategy.device.type == "cuda":  # dropout on the GPU continues exactly
        torch.cuda.set_rng_state_all(checkpoint["rng"]["cuda"])
    # Checkpoints of earlier versions count the examples under "images".
    return checkpoint["step"], checkpoint["elapsed_s"], checkpoint.get("examples", checkpoint.get("images", 0))


def announce(run: Run) -> None:
    """The console's one line on what is about to train."""
    trainer = run.cfg.trainer
    run.console.print(
        f"training {run.cfg.model.name} on {run.task.describe()}, "
        f"pool {run.pool.name} ({len(run.pool)} sub-models), sampler {run.sampler.name}"
        + (" (every exit of the drawn width)" if run.all_exits is not None else "")
        + f", grad_accum {trainer.grad_accum}, "
        f"{trainer.epochs} epochs x {run.steps_per_epoch} steps on {run.device}"
        + (f" x {run.ranks.world_size} ranks" if run.ranks.enabled else "") + f" ({run.strategy.name}, {run.precision})"
        + (f", at most {run.total_steps} steps" if trainer.max_steps is not None else "")
        + f"; run dir {run.run_dir}",
        highlight=False,
    )


# --- the loop -------------------------------------------------------------------------------


def save_checkpoint(run: Run, state: LoopState) -> Path:
    """last.pt, written by rank 0; under fsdp, a sharded checkpoint every rank writes its part of
    (a collective call). Either replaces the other (a run resumed under another strategy)."""
    meta = {
        "format": TRAIN_FORMAT,
        "arch": run.model.arch,
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict() if run.scaler is not None else None,
        "rng": {"torch": torch.get_rng_state(), **({"cuda": torch.cuda.get_rng_state_all()} if run.device.type == "cuda" else {})},
        "step": state.done,
        "elapsed_s": run.elapsed_before + time.perf_counter() - state.start_time,
        "examples": state.examples,
        "config": OmegaConf.to_yaml(run.cfg, resolve=True),
        "pool": run.pool.to_dict(),
        "task": run.task.state(),
    }
    path = run.run_dir / CHECKPOINT_NAME
    if run.strategy.shards_checkpoints:
        path = sharded.save_sharded(run.model, run.optimizer, meta, run.run_dir, run.ranks.is_main)
        if run.ranks.is_main:
            (run.run_dir / CHECKPOINT_NAME).unlink(missing_ok=True)
    elif run.ranks.is_main:
        save_atomic({**meta, "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict()}, path)
        sharded.remove(run.run_dir)
    state.saved_step = state.done
    return path


def flush(run: Run, state: LoopState, progress: TrainProgress) -> None:
    """Read the pending losses back in one transfer, check them, log them."""
    if not state.pending:
        return
    values = average_tensor(torch.stack([p.loss for p in state.pending]).float(), run.ranks).cpu().tolist()
    elapsed = round(run.elapsed_before + time.perf_counter() - state.start_time, 3)
    rows = []
    for pending, loss in zip(state.pending, values):
        if not math.isfinite(loss):
            raise UserError(
                f"loss became {loss} at step {pending.step} on sub-model {pending.sub.label}; "
                "lower optim.lr or check the data (last.pt keeps the last good checkpoint)"
            )
        rows.append({"epoch": pending.epoch, "step": pending.step, "width": pending.sub.width, "depth": format_depth(pending.sub.depth),
                     "loss": round(loss, 6), "lr": pending.lr, "elapsed_s": elapsed, "draw": pending.draw})
    run.logger.log_draws(rows)
    state.last_losses = values
    progress.set_info(f"loss {sum(values) / len(values):.4f} lr {rows[-1]['lr']:.4g} {state.pending[-1].sub.label}")
    state.pending.clear()


@dataclass
class StepPlan:
    """Which sub-models an optimizer step trains, on which mini-batches of which epoch."""

    step: int
    epoch: int
    first_batch: int
    subs: list[SubModel]


def plan_step(run: Run, step: int) -> StepPlan:
    trainer = run.cfg.trainer
    g = trainer.grad_accum
    epoch, step_in_epoch = divmod(step, run.steps_per_epoch)
    first_batch = step_in_epoch if trainer.accum_same_batch else step_in_epoch * g
    num_draws = g if trainer.accum_same_batch else min(g, len(run.batches) - first_batch)
    subs = [run.sampler.draw(step, d, g) for d in range(num_draws)]
    if trainer.distill.value == "inplace":  # the teacher first
        subs.sort(key=lambda sub: sub != run.pool.largest)
    return StepPlan(step, epoch, first_batch, subs)


def draw_objective(run: Run, step: int) -> tuple[Forward, DrawLoss]:
    """How each draw of step `step` computes its outputs and its loss: one sub-model on the task's
    loss or in-place distillation's, or every exit of the drawn width (trainer.objective=all_exits:
    its weights, curriculum and dropped layers depend on the step)."""
    if run.all_exits is not None:
        return run.all_exits.at_step(step)
    return sub_forward, draw_loss(run)


def draw_loss(run: Run) -> DrawLoss:
    """The loss of one sub-model's draw: the task's, or in-place distillation's."""
    trainer = run.cfg.trainer
    if trainer.distill.value == "inplace":
        return InplaceDistillation(run.pool.largest, run.task.loss, run.task.soft_loss, trainer.distill_temperature, trainer.distill_alpha)
    return plain_loss(run.task.loss)


def train_step(run: Run, plan: StepPlan) -> list[PendingDraw]:
    """One optimizer step: its draws (sub-model + mini-batch), gradients accumulated."""
    trainer = run.cfg.trainer
    epoch, first_batch, subs = plan.epoch, plan.first_batch, plan.subs
    shard = run.ranks.shard(run.batches.batch_size)
    shared_batch = run.batches.get(epoch, first_batch, shard) if trainer.accum_same_batch else None

    def draws():
        for d, sub in enumerate(subs):
            yield (sub, *(shared_batch or run.batches.get(epoch, first_batch + d, shard)))

    lr = run.scheduler.get_last_lr()[0]
    forward, loss_fn = draw_objective(run, plan.step)
    losses = sorted_update(run.strategy.step_model(run.model), run.optimizer, draws(), len(subs), loss_fn, run.autocast,
                           clip_grad_norm=trainer.clip_grad_norm, forward=run.strategy.step_forward(forward, len(subs)), scaler=run.scaler)
    run.scheduler.step()
    if run.all_exits is None:
        return [PendingDraw(epoch, plan.step + 1, d, sub, loss, lr) for d, (sub, loss) in enumerate(zip(subs, losses))]
    # One row per exit of each draw.
    return [PendingDraw(epoch, plan.step + 1, d, exit_sub, exit_loss, lr)
            for d, (sub, loss) in enumerate(zip(subs, losses))
            for exit_sub, exit_loss in zip(run.all_exits.exits(sub.width), loss)]


def stall_advice(run: Run, state: LoopState, subs: list[SubModel]) -> str:
    kept = f"last.pt (step {state.saved_step}) is intact" if state.saved_step is not None else "no checkpoint has been written yet"
    return (
        f"it trains {', '.join(sub.label for sub in subs)} and may be stuck in a native kernel. "
        f"A step stuck in native code ignores Ctrl-C: kill the process (kill {os.getpid()}), "
        f"then continue with `sortednet train resume={run.run_dir}`; {kept}"
    )


def stall_watchdog(run: Run) -> StallWatchdog:
    """The loop's watchdog (trainer.stall_factor, trainer.stall_seconds): a stalled step is
    warned about in the log and on the console."""

    def warn(message: str) -> None:
        logging.getLogger("sortednet").warning("%s", message)
        run.console.print(f"[bold yellow]warning:[/] {message}", highlight=False)

    return StallWatchdog(warn, run.cfg.trainer.stall_factor, run.cfg.trainer.stall_seconds)


def advance(run: Run, state: LoopState, watchdog: StallWatchdog) -> StepPlan:
    """The loop's step number `state.done`: planned, watched, trained (`train_step`: the sorted
    update and the scheduler step); its losses stay on the device, pending until a flush.
    `sortednet bench` times this same function (engine/bench.py)."""
    step = state.done
    plan = plan_step(run, step)
    watchdog.step_started(step + 1, lambda: stall_advice(run, state, plan.subs))
    drawn = train_step(run, plan)
    watchdog.step_finished()
    state.pending.extend(drawn)
    state.examples += len(plan.subs) * run.batches.batch_size
    state.done = step + 1
    return plan


def flush_due(run: Run, state: LoopState) -> bool:
    """Whether the step just done ends with a flush: every trainer.log_every steps, at epoch
    ends and after the last step."""
    return state.done % run.cfg.trainer.log_every == 0 or state.done % run.steps_per_epoch == 0 or state.done == run.total_steps


def run_loop(run: Run) -> LoopState:
    trainer = run.cfg.trainer
    state = LoopState(done=run.start_step, examples=run.examples_before, saved_step=run.start_step if run.resumed else None)
    run.model.train()
    watchdog = stall_watchdog(run)
    progress = TrainProgress(run.console, run.total_steps, run.start_step, run.steps_per_epoch, trainer.log_every)
    with StopOnInterrupt() as stop, watchdog, progress:
        while state.done < run.total_steps:
            advance(run, state, watchdog)
            epoch_end = state.done % run.steps_per_epoch == 0
            at_flush = flush_due(run, state)
            # Ranks must agree on where to stop, so under torchrun they stop at a flush.
            stopping = (at_flush and any_rank(stop.requested, run.ranks, run.device)) if run.ranks.enabled else stop.requested
            if at_flush or stopping:
                flush(run, state, progress)
            progress.update(state.done)
            if stopping:
                state.interrupted = True
                break
            if (epoch_end and (state.done // run.steps_per_epoch) % trainer.checkpoint_every == 0) or state.done == run.total_steps:
                save_checkpoint(run, state)
    return state


# --- the finish: summary, then the grid of every sub-model (or a quick look at three) -------


def finish(run: Run, state: LoopState) -> TrainResult:
    wall = time.perf_counter() - state.start_time
    # What needs every rank first: an interrupted run's checkpoint, the trained model's whole weights.
    saved = save_checkpoint(run, state) if state.interrupted else None
    model = run.model if state.interrupted else run.strategy.full_model(run.model)
    finish_ranks(run.ranks)
    summary = {
        "final_loss": sum(state.last_losses) / len(state.last_losses) if state.last_losses else None,
        "steps": state.done,
        "total_steps": run.total_steps,
        "epochs_done": state.done / run.steps_per_epoch,
        "examples_per_second": (state.examples - run.examples_before) / wall if wall > 0 else None,
        "wall_seconds": run.elapsed_before + wall,
        "device": str(run.device),
        "pool": run.pool.name,
        "pool_size": len(run.pool),
        "eval_split": run.task.eval_name,
    }
    previous = run.run_dir / SUMMARY_FILE
    if state.done == run.start_step and previous.is_file():
        # Resumed a finished run (say, to evaluate again): its training figures stand.
        trained = upgrade_record(read_json(previous))
        summary.update({k: trained[k] for k in ("final_loss", "examples_per_second", "wall_seconds") if k in trained})
    if state.interrupted:
        run.console.print(f"interrupted after step {state.done}; checkpoint saved to {saved}")
        run.console.print(f"resume with: sortednet train resume={run.run_dir}", highlight=False)
        if run.ranks.is_main:
            write_json(run.run_dir / SUMMARY_FILE, {**summary, "interrupted": True})
        return TrainResult(run.run_dir, summary, run.model, interrupted=True)
    if not run.ranks.is_main:
        return TrainResult(run.run_dir, summary, run.model)

    cfg, metric = run.cfg, run.task.metric
    eval_data = EvalData.from_task(run.task, cfg.eval)
    members = quick_eval_members(run.pool)
    if cfg.trainer.eval_grid:  # the grid measures the quick three too
        scores = run_grid(model, run.pool, eval_data, cfg.eval, cfg.select, run.run_dir, str(resolve_checkpoint(run.run_dir)), run.console, run.device)
    else:
        scores = evaluate_pool(model, Pool("quick", tuple(members)), eval_data, cfg.eval, method="naive")
    quick = [{"width": s.width, "depth": format_depth(s.depth), metric.name: scores[s]} for s in members]
    run.console.print(metric_table(quick, metric, title=f"quick evaluation on {run.task.eval_name} ({eval_data.eval_size} examples)"))
    summary["quick_eval"] = quick
    write_json(run.run_dir / SUMMARY_FILE, summary)
    run.logger.log_summary(summary)
    return TrainResult(run.run_dir, summary, model)


def train(cfg: DictConfig, run_dir: Path, overrides: Sequence[str] = (), console: Optional[Console] = None) -> TrainResult:
    with contextlib.ExitStack() as claims:
        run = set_up(cfg, run_dir, overrides, console, claims)
        try:
            return finish(run, run_loop(run))
        finally:
            run.logger.close()
