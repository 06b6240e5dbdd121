"""The SortedNet update: several sub-model draws, their gradients accumulated, one optimizer step."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, ContextManager, Iterable, NamedTuple, Optional, Union

import torch
from torch import nn

from .submodel import SubModel

Draw = tuple[SubModel, Any, Any]  # (sub-model, inputs, targets)


class ExitLoss(NamedTuple):
    """An all-exits draw's loss: what it trains (a scalar: the exits' losses weighted, with their
    distillation terms) and each exit's own loss against the targets (what is logged)."""

    objective: torch.Tensor
    per_exit: torch.Tensor


# (sub-model, outputs, targets) -> the draw's loss: a scalar, or an ExitLoss (all-exits update).
DrawLoss = Callable[[SubModel, Any, Any], Union[torch.Tensor, ExitLoss]]
# (model, sub-model, inputs, the draw's index in its step) -> outputs
Forward = Callable[[nn.Module, SubModel, Any, int], Any]


def sub_forward(model: nn.Module, sub: SubModel, inputs: Any, draw: int) -> torch.Tensor:
    return model(inputs, sub)


def plain_loss(loss: Callable[[torch.Tensor, Any], torch.Tensor]) -> DrawLoss:
    """Every draw on the task's own loss against its targets."""
    return lambda sub, outputs, targets: loss(outputs, targets)


def sorted_update(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    draws: Iterable[Draw],
    num_draws: int,
    loss_fn: DrawLoss,
    autocast: Callable[[], ContextManager] = contextlib.nullcontext,
    clip_grad_norm: Optional[float] = None,
    forward: Forward = sub_forward,
    scaler: Optional[torch.amp.GradScaler] = None,
) -> list[torch.Tensor]:
    """Train each drawn (sub-model, inputs, targets) on loss / num_draws, then step once.

    The gradient norm is clipped over the step's accumulated gradient (once data parallelism
    has averaged it: its wrapper does in the last draw's backward). `forward` computes a draw's
    outputs (by default `model(inputs, sub)`). `scaler` (fp16): losses scaled for the backward,
    gradients unscaled before clipping, the step skipped where they overflowed.
    Returns the per-draw losses (scalars, or each exit's loss), detached and still on the device
    (no host synchronisation)."""
    optimizer.zero_grad(set_to_none=True)
    losses = []
    for draw, (sub, inputs, targets) in enumerate(draws):
        with autocast():
            loss = loss_fn(sub, forward(model, sub, inputs, draw), targets)
        objective, logged = (loss.objective, loss.per_exit) if isinstance(loss, ExitLoss) else (loss, loss)
        objective = objective / num_draws
        (objective if scaler is None else scaler.scale(objective)).backward()
        losses.append(logged.detach())
    if scaler is not None:
        scaler.unscale_(optimizer)
    if clip_grad_norm is not None:
        nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm, foreach=True)
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)
        scaler.update()
    return losses
