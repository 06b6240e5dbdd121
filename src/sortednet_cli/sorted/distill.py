"""In-place distillation (US-Nets): within one optimizer step whose draws share a mini-batch,
the largest sub-model learns from the labels and every other draw from the largest's detached
predictions, through the task's soft-target loss."""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch

import torch.nn.functional as F

from ..errors import UserError
from .submodel import SubModel


def kl_soft_loss(logits: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) on temperature-softened distributions over the last dimension,
    averaged over the rows (every other dimension), scaled by T^2 so its gradients keep the size
    of the hard loss's (Hinton et al.). The soft-target loss of every classifying task."""
    log_student = F.log_softmax(logits.flatten(0, -2) / temperature, dim=-1)
    log_teacher = F.log_softmax(teacher.flatten(0, -2) / temperature, dim=-1)
    return F.kl_div(log_student, log_teacher, log_target=True, reduction="batchmean") * temperature**2


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
