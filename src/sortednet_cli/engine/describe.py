"""describe: every sub-model of a pool with its units, parameters and FLOPs, and the memory per
rank of training the full model (engine/memory.py); no data read."""

from __future__ import annotations

from typing import Any, Optional

import torch

from ..errors import UserError
from ..models import build_model, family_named
from ..models.cost import mflops_per_example, parameter_count
from ..sorted.pool import Pool, pool_from_config
from ..sorted.submodel import format_depth
from ..tasks import build_task
from .memory import MemoryEstimate, TrainingPlan, estimate_memory


def describe_pool(model, pool: Pool, example) -> list[dict]:
    return [
        {
            "index": index,
            "width": sub.width,
            "depth": format_depth(sub.depth),
            "channels": model.unit_summary(sub.width),
            "params": parameter_count(model, sub),
            "mflops": round(mflops_per_example(model, sub, example), 3),
        }
        for index, sub in enumerate(pool)
    ]


def describe(cfg) -> tuple[list[dict], torch.nn.Module, Pool]:
    """The rows of `sortednet describe`, FLOPs counted on the task's example input; no data is
    read (the task's `*_without_data` answers: a text model's vocabulary from data.vocab_size,
    its FLOPs on its longest input)."""
    device = torch.device("cpu")
    task = build_task(cfg.data, cfg.model, device)
    model = build_model(cfg.model, task.model_fields_without_data())
    pool = pool_from_config(cfg.pool, model.depth_limits)
    return describe_pool(model, pool, task.example_input_without_data(1)), model, pool


def _value(setting: Any) -> Any:
    return getattr(setting, "value", setting)  # an Enum of the trainer's schema


def training_plan(cfg, task, pool: Pool) -> TrainingPlan:
    """How the full model would train, as the trainer's settings say (trainer.strategy, precision,
    gradient_checkpointing, fsdp_cpu_offload, batch_size, objective), on memory.world_size ranks.
    strategy auto: single on one rank, ddp on more; precision auto: bf16 on CUDA, fp32 on a CPU
    (trainer.device=auto: the device training would pick here)."""
    trainer, ranks = cfg.trainer, cfg.memory.world_size
    if ranks < 1:
        raise UserError(f"memory.world_size must be >= 1 (got {ranks})")
    strategy = _value(trainer.strategy)
    if strategy == "auto":
        strategy = "single" if ranks == 1 else "ddp"
    precision = _value(trainer.precision)
    if precision == "auto":
        device = _value(trainer.device)
        on_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        precision = "bf16" if on_cuda else "fp32"
    if trainer.batch_size % ranks:
        raise UserError(f"trainer.batch_size={trainer.batch_size} (the global batch) must divide evenly over memory.world_size={ranks} ranks")
    seq_len = task.example_input_without_data(1).input_ids.shape[-1]
    widest = max(sub.width for sub in pool)
    exits = sum(1 for sub in pool if sub.width == widest) if _value(trainer.objective) == "all_exits" else 1
    plan = TrainingPlan(strategy, ranks, precision, trainer.gradient_checkpointing, trainer.fsdp_cpu_offload,
                        trainer.batch_size // ranks, seq_len, exits)
    plan.check()
    return plan


def describe_memory(cfg) -> Optional[MemoryEstimate]:
    """The memory per rank of training the full model, from the config alone (no model built, no
    data read); None for a family that declares no memory shape (models/registry.py)."""
    memory_shape = family_named(cfg.model.name).memory_shape
    if memory_shape is None:
        return None
    task = build_task(cfg.data, cfg.model, torch.device("cpu"))
    shape = memory_shape(cfg.model, **task.model_fields_without_data())
    pool = pool_from_config(cfg.pool, (shape.layers,))
    return estimate_memory(shape, training_plan(cfg, task, pool))
