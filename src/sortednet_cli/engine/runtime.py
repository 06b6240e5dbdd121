"""Device, threads, optimizer and schedule: the pieces a run sets up before its loop."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import UserError


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("trainer.device=cuda but no CUDA device is available here (use trainer.device=cpu or auto)")
    return torch.device(name)


def configure_backend(device: torch.device, threads: int) -> None:
    if threads < 0:
        raise UserError(f"trainer.threads must be >= 0 (0 = torch's default), got {threads}")
    if threads:
        torch.set_num_threads(threads)
    if device.type == "cuda":
        # Sub-model shapes repeat across steps, so autotuned kernels pay off.
        torch.backends.cudnn.benchmark = True


def build_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    if cfg.name != "sgd":
        raise UserError(f"optim.name={cfg.name!r} is not known (known: sgd)")
    if cfg.lr <= 0:
        raise UserError(f"optim.lr must be > 0 (got {cfg.lr})")
    return torch.optim.SGD(
        model.parameters(),
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        nesterov=cfg.nesterov,
        foreach=True,
    )


def build_scheduler(cfg, optimizer: torch.optim.Optimizer, steps_per_epoch: int, total_steps: int):
    """Linear warm-up over `warmup_epochs`, then cosine decay to zero; stepped every optimizer step.

    The warm-up takes at most a quarter of the run, so short runs still decay."""
    if cfg.name != "cosine":
        raise UserError(f"sched.name={cfg.name!r} is not known (known: cosine)")
    if cfg.warmup_epochs < 0:
        raise UserError(f"sched.warmup_epochs must be >= 0 (got {cfg.warmup_epochs})")
    warmup = min(int(round(cfg.warmup_epochs * steps_per_epoch)), total_steps // 4)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
