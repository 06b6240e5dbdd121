"""The all-exits update (Sorted LLaMA / SoFT): a draw picks a width, one forward pass computes
every depth of the pool at that width (each layer once, prefix sharing), and the draw trains a
weighted mean of the per-exit losses. No sub-model is sampled out: every exit learns on every batch.

What makes the exits agree with the full model, so that they draft well (LayerSkip, arXiv
2404.16710; `ExitTraining`): the exits' weights (uniform, rising with depth, or given), a
curriculum that switches the early exits on one by one over the first part of training (deepest
first), layer dropout rising with depth (a dropped block is the identity for that draw), and
self-distillation (every exit but the deepest also learns the deepest's detached distribution,
through the task's soft-target loss). Every random choice is a pure function of (seed, step, draw),
like the sampler's: resume and torchrun ranks see the same dropped layers.
"""

from __future__ import annotations

import collections.abc
import random
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

from ..errors import UserError
from ..values import is_number
from .pool import Pool
from .prefix_eval import prefix_outputs
from .submodel import SubModel
from .update import DrawLoss, ExitLoss, Forward

NAMED_WEIGHTS = ("uniform", "rising")


@dataclass(frozen=True)
class ExitTraining:
    """How the all-exits objective trains (trainer.exit_weights, exit_curriculum, layer_dropout,
    exit_distill_alpha, exit_distill_temperature); the defaults are Sorted LLaMA's plain mean."""

    weights: Any = "uniform"  # "uniform", "rising" (proportional to the exit's depth) or one weight per exit
    curriculum: float = 0.0  # the fraction of the steps over which the early exits are switched on
    layer_dropout: float = 0.0  # the last block's drop probability; the first block's is 0
    distill_alpha: float = 0.0  # the weight of each exit's soft loss against the deepest exit
    distill_temperature: float = 1.0
    seed: int = 0
    total_steps: int = 1

    @classmethod
    def from_trainer(cls, trainer, total_steps: int) -> "ExitTraining":
        weights = trainer.exit_weights
        listed = isinstance(weights, collections.abc.Sequence) and not isinstance(weights, str)
        return cls(tuple(weights) if listed else weights, trainer.exit_curriculum, trainer.layer_dropout,
                   trainer.exit_distill_alpha, trainer.exit_distill_temperature, trainer.seed, total_steps)

    @property
    def shapes_the_objective(self) -> bool:
        """Whether any setting differs from the plain mean of the exits' losses."""
        return self.weights != "uniform" or self.curriculum > 0 or self.layer_dropout > 0 or self.distill_alpha > 0

    def check(self) -> None:
        """The values alone (the weights' count is checked against the pool by AllExits)."""
        if not isinstance(self.weights, tuple):
            if self.weights not in NAMED_WEIGHTS:
                raise UserError(f"trainer.exit_weights must be uniform, rising or a list of weights, one per exit (got {self.weights})")
        elif not self.weights or not all(is_number(w) and w >= 0 for w in self.weights) or not self.weights[-1] > 0:
            raise UserError(f"trainer.exit_weights: a list of weights >= 0, one per exit shallowest first, the deepest's > 0 (got {list(self.weights)})")
        if not 0 <= self.curriculum < 1:
            raise UserError(f"trainer.exit_curriculum must be in [0, 1), a fraction of the training steps (got {self.curriculum})")
        if not 0 <= self.layer_dropout < 1:
            raise UserError(f"trainer.layer_dropout must be in [0, 1) (got {self.layer_dropout})")
        if self.distill_alpha < 0 or self.distill_temperature <= 0:
            raise UserError(f"trainer.exit_distill_alpha must be >= 0 and trainer.exit_distill_temperature > 0 "
                            f"(got {self.distill_alpha}, {self.distill_temperature})")


def exit_weights(spec: Any, depths: Sequence[tuple[int, ...]]) -> list[float]:
    """One weight per exit, in depth order: 1 each (uniform), the exit's block count (rising), or
    the list given (as many as the width has exits)."""
    if spec == "uniform":
        return [1.0] * len(depths)
    if spec == "rising":
        return [float(sum(depth)) for depth in depths]
    if len(spec) != len(depths):
        raise UserError(f"trainer.exit_weights has {len(spec)} weights; the pool has {len(depths)} exits per width (one weight each, shallowest first)")
    return [float(w) for w in spec]


def dropped_blocks(depth_limits: Sequence[int], rate: float, seed: int, step: int, draw: int) -> frozenset[tuple[int, int]]:
    """Layer dropout rising with depth: block i of a stage of n blocks is dropped with
    probability rate * i / (n - 1), so a stage's first block (which may change the shape) never
    is. A pure function of (seed, step, draw)."""
    if rate == 0:
        return frozenset()
    # Seeding with a string hashes it with SHA-512: stable across processes and platforms.
    rng = random.Random(f"sortednet/layer_dropout/{seed}/{step}/{draw}")
    dropped = set()
    for stage, blocks in enumerate(depth_limits):
        for index in range(blocks):
            if rng.random() < rate * index / max(1, blocks - 1):
                dropped.add((stage, index))
    return frozenset(dropped)


class AllExits:
    def __init__(self, pool: Pool, loss: Callable[[torch.Tensor, Any], torch.Tensor],
                 soft_loss: Optional[Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]] = None,
                 training: ExitTraining = ExitTraining()):
        training.check()
        if training.distill_alpha > 0 and soft_loss is None:
            raise UserError("trainer.exit_distill_alpha > 0 needs a task with a soft-target loss")
        self.loss_of = loss
        self.soft_loss = soft_loss
        self.training = training
        self.depths: dict[float, list[tuple[int, ...]]] = defaultdict(list)
        for sub in pool:
            self.depths[sub.width].append(sub.depth)
        self.weights = {width: exit_weights(training.weights, depths) for width, depths in self.depths.items()}

    def exits(self, width: float) -> list[SubModel]:
        """The sub-models one draw at `width` trains, in depth order (the rows it logs)."""
        return [SubModel(width, depth) for depth in self.depths[width]]

    def switched_on(self, width: float, step: int) -> list[bool]:
        """The curriculum: of n exits, exit i (0 the shallowest) trains from step
        curriculum * total_steps * (n - 1 - i) / (n - 1) on; the deepest from the start."""
        n = len(self.depths[width])
        span = self.training.curriculum * self.training.total_steps
        return [step >= span * (n - 1 - i) / max(1, n - 1) for i in range(n)]

    def step_weights(self, width: float, step: int) -> list[float]:
        """Each exit's share of the draw's objective at `step`: its weight if switched on, over
        the switched-on exits' total."""
        weights = [w if on else 0.0 for w, on in zip(self.weights[width], self.switched_on(width, step))]
        total = sum(weights)
        return [w / total for w in weights]

    def forward(self, model: nn.Module, sub: SubModel, inputs: Any, skipped: frozenset[tuple[int, int]] = frozenset()) -> list[torch.Tensor]:
        outputs = prefix_outputs(model, sub.width, self.depths[sub.width], inputs, skipped)
        return [outputs[depth] for depth in self.depths[sub.width]]

    def loss(self, sub: SubModel, outputs: list[torch.Tensor], targets: Any, step: int = 0) -> ExitLoss:
        """Each exit's loss (logged) and the objective: the exits' losses, each but the deepest's
        plus exit_distill_alpha times its soft loss against the deepest's detached outputs,
        weighted by `step_weights`."""
        per_exit = torch.stack([self.loss_of(out, targets) for out in outputs])
        trained = per_exit
        alpha = self.training.distill_alpha
        if alpha > 0 and len(outputs) > 1:
            teacher = outputs[-1].detach()
            soft = [self.soft_loss(out, teacher, self.training.distill_temperature) for out in outputs[:-1]]
            trained = per_exit + alpha * torch.stack([*soft, torch.zeros_like(soft[0])])
        weights = torch.tensor(self.step_weights(sub.width, step), dtype=trained.dtype, device=trained.device)
        return ExitLoss((weights * trained).sum(), per_exit)

    def at_step(self, step: int) -> tuple[Forward, DrawLoss]:
        """The forward and loss of the draws of optimizer step `step` (0-based)."""
        def forward(model: nn.Module, sub: SubModel, inputs: Any, draw: int) -> list[torch.Tensor]:
            skipped = dropped_blocks(model.depth_limits, self.training.layer_dropout, self.training.seed, step, draw)
            return self.forward(model, sub, inputs, skipped)

        return forward, lambda sub, outputs, targets: self.loss(sub, outputs, targets, step)
