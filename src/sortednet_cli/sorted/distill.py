"""In-place distillation (US-Nets): within one optimizer step whose draws share a mini-batch,
the largest sub-model learns from the labels and every other draw from the largest's detached
predictions, through the task's soft-target loss."""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from ..errors import UserError
from .submodel import SubModel


class InplaceDistillation:
    """The loss of each draw of one step (a `DrawLoss`); the largest must be drawn first."""

    def __init__(
        self,
        largest: SubModel,
        hard_loss: Callable[[torch.Tensor, Any], torch.Tensor],
        soft_loss: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor],
        temperature: float,
        alpha: float,
    ):
        self.largest = largest
        self.hard_loss = hard_loss
        self.soft_loss = soft_loss
        self.temperature = temperature
        self.alpha = alpha  # the weight of the labels in a student's loss
        self.teacher: Optional[torch.Tensor] = None

    def __call__(self, sub: SubModel, outputs: torch.Tensor, targets: Any) -> torch.Tensor:
        if sub == self.largest:
            self.teacher = outputs.detach()
            return self.hard_loss(outputs, targets)
        if self.teacher is None:
            raise UserError(f"trainer.distill=inplace: a step trained {sub.label} before the largest sub-model {self.largest.label}, so it has no teacher")
        soft = self.soft_loss(outputs, self.teacher, self.temperature)
        if self.alpha == 0:
            return soft
        return self.alpha * self.hard_loss(outputs, targets) + (1 - self.alpha) * soft
