"""Optimizers and learning-rate schedules, each a registry entry with its config schema."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional

import torch
from torch import nn

from ..errors import UserError
from ..registry import Registry

OPTIMIZERS = Registry("optim.name", group="optim")
SCHEDULERS = Registry("sched.name", group="sched")


@dataclass
class SGDConfig:
    name: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False


@dataclass
class AdamWConfig:
    name: str = "adamw"
    lr: float = 5e-4
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.01


@dataclass
class CosineConfig:
    name: str = "cosine"
    warmup_epochs: float = 5.0
    # Warm-up in optimizer steps instead of epochs (the Transformer recipes count steps).
    warmup_steps: Optional[int] = None


def _check_lr(cfg) -> None:
    if cfg.lr <= 0:
        raise UserError(f"optim.lr must be > 0 (got {cfg.lr})")


@OPTIMIZERS.register("sgd", schema=SGDConfig)
def sgd(cfg, model: nn.Module) -> torch.optim.Optimizer:
    _check_lr(cfg)
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                           nesterov=cfg.nesterov, foreach=True)


@OPTIMIZERS.register("adamw", schema=AdamWConfig)
def adamw(cfg, model: nn.Module) -> torch.optim.Optimizer:
    _check_lr(cfg)
    if len(cfg.betas) != 2 or not all(0 <= b < 1 for b in cfg.betas):
        raise UserError(f"optim.betas must be two numbers in [0, 1) (got {list(cfg.betas)})")
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                             weight_decay=cfg.weight_decay, foreach=True)


@SCHEDULERS.register("cosine", schema=CosineConfig)
def cosine(cfg, optimizer: torch.optim.Optimizer, steps_per_epoch: int, total_steps: int):
    """Linear warm-up (`warmup_steps`, else `warmup_epochs`), then cosine decay to zero; stepped
    every optimizer step. A warm-up in epochs takes at most a quarter of the run, so short runs
    still decay."""
    if cfg.warmup_epochs < 0 or (cfg.warmup_steps is not None and cfg.warmup_steps < 0):
        raise UserError(f"sched.warmup_epochs and sched.warmup_steps must be >= 0 (got {cfg.warmup_epochs}, {cfg.warmup_steps})")
    if cfg.warmup_steps is not None:
        warmup = min(cfg.warmup_steps, total_steps)
    else:
        warmup = min(int(round(cfg.warmup_epochs * steps_per_epoch)), total_steps // 4)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def build_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    return OPTIMIZERS.get(cfg.name)(cfg, model)


def build_scheduler(cfg, optimizer: torch.optim.Optimizer, steps_per_epoch: int, total_steps: int):
    return SCHEDULERS.get(cfg.name)(cfg, optimizer, steps_per_epoch, total_steps)
