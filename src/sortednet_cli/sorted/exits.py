"""The all-exits update (Sorted LLaMA / SoFT): a draw picks a width, one forward pass computes
every depth of the pool at that width (each layer once, prefix sharing), and the draw's loss is
the mean of the per-exit losses. No sub-model is sampled out: every exit learns on every batch."""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable

import torch
from torch import nn

from .pool import Pool
from .prefix_eval import prefix_outputs
from .submodel import SubModel


class AllExits:
    def __init__(self, pool: Pool, loss: Callable[[torch.Tensor, Any], torch.Tensor]):
        self.loss_of = loss
        self.depths: dict[float, list[tuple[int, ...]]] = defaultdict(list)
        for sub in pool:
            self.depths[sub.width].append(sub.depth)

    def exits(self, width: float) -> list[SubModel]:
        """The sub-models one draw at `width` trains, in depth order (the rows it logs)."""
        return [SubModel(width, depth) for depth in self.depths[width]]

    def forward(self, model: nn.Module, sub: SubModel, inputs: Any) -> list[torch.Tensor]:
        outputs = prefix_outputs(model, sub.width, self.depths[sub.width], inputs)
        return [outputs[depth] for depth in self.depths[sub.width]]

    def loss(self, sub: SubModel, outputs: list[torch.Tensor], targets: Any) -> torch.Tensor:
        """One loss per exit; the update trains their mean."""
        return torch.stack([self.loss_of(out, targets) for out in outputs])
