"""The SortedNet update: several sub-model draws, their gradients accumulated, one optimizer step."""

from __future__ import annotations

import contextlib
from typing import Callable, ContextManager, Iterable

import torch
from torch import nn

from .submodel import SubModel

Draw = tuple[SubModel, torch.Tensor, torch.Tensor]


def sorted_update(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    draws: Iterable[Draw],
    num_draws: int,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    autocast: Callable[[], ContextManager] = contextlib.nullcontext,
    before_step: Callable[[], None] = lambda: None,
) -> list[torch.Tensor]:
    """Train each drawn (sub-model, inputs, targets) on loss / num_draws, then step once.

    `before_step` runs once the gradients of all draws are in (data parallelism averages them
    there: one all-reduce per step). Returns the per-draw losses, detached and still on the
    device (no host synchronisation)."""
    optimizer.zero_grad(set_to_none=True)
    losses = []
    for sub, inputs, targets in draws:
        with autocast():
            loss = loss_fn(model(inputs, sub), targets)
        (loss / num_draws).backward()
        losses.append(loss.detach())
    before_step()
    optimizer.step()
    return losses
