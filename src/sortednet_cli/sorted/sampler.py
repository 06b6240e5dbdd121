"""Samplers: which sub-model each draw of each optimizer step trains.

A draw is a pure function of (seed, step, draw), so resuming needs no sampler state and every
data-parallel rank picks the same sub-model without talking to the others.
"""

from __future__ import annotations

import bisect
import itertools
import random
from typing import Callable, Optional, Sequence

from ..errors import UserError
from ..registry import Registry
from .pool import Pool
from .submodel import SubModel


def _unit_random(seed: int, step: int, draw: int) -> float:
    # Seeding with a string hashes it with SHA-512: stable across processes and platforms.
    return random.Random(f"sortednet/{seed}/{step}/{draw}").random()


SAMPLERS = Registry("sampler.name")


class Sampler:
    """Draws pool members with fixed probabilities (uniform unless given)."""

    def __init__(self, pool: Pool, seed: int, probabilities: Optional[Sequence[float]] = None, name: str = "uniform"):
        self.pool = pool
        self.seed = seed
        self.name = name
        n = len(pool)
        probs = list(probabilities) if probabilities is not None else [1.0 / n] * n
        total = sum(probs)
        self.probabilities = [p / total for p in probs]
        self._cumulative = list(itertools.accumulate(self.probabilities))

    def _random_member(self, step: int, draw: int) -> SubModel:
        u = _unit_random(self.seed, step, draw)
        index = min(bisect.bisect_right(self._cumulative, u), len(self.pool) - 1)
        return self.pool.members[index]

    def draw(self, step: int, draw: int, draws_per_step: int) -> SubModel:
        return self._random_member(step, draw)


class SandwichSampler(Sampler):
    """US-Nets' sandwich rule: each step trains the largest, the smallest, then random members.

    With one draw per step the three roles take turns from step to step."""

    def draw(self, step: int, draw: int, draws_per_step: int) -> SubModel:
        role = draw if draws_per_step > 1 else step % 3
        if role == 0:
            return self.pool.largest
        if role == 1:
            return self.pool.smallest
        return self._random_member(step, draw)


class FullSampler(Sampler):
    """Always the pool's largest member: ordinary training of one network."""

    def draw(self, step: int, draw: int, draws_per_step: int) -> SubModel:
        return self.pool.largest


@SAMPLERS.register("uniform")
def uniform(cfg, pool: Pool, seed: int, cost: Callable[[SubModel], float]) -> Sampler:
    return Sampler(pool, seed)


@SAMPLERS.register("sandwich")
def sandwich(cfg, pool: Pool, seed: int, cost: Callable[[SubModel], float]) -> Sampler:
    return SandwichSampler(pool, seed, name="sandwich")


@SAMPLERS.register("full")
def full(cfg, pool: Pool, seed: int, cost: Callable[[SubModel], float]) -> Sampler:
    return FullSampler(pool, seed, name="full")


@SAMPLERS.register("weighted")
def weighted(cfg, pool: Pool, seed: int, cost: Callable[[SubModel], float]) -> Sampler:
    """Explicit weights win over alpha; `cost` (e.g. MFLOPs) is only asked for with alpha."""
    if cfg.weights is not None:
        weights = list(cfg.weights)
        if len(weights) != len(pool):
            raise UserError(
                f"sampler.weights has {len(weights)} entries but the pool has {len(pool)} sub-models"
            )
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise UserError("sampler.weights must be non-negative with a positive sum")
        return Sampler(pool, seed, weights, name="weighted")
    if cfg.alpha is not None:
        return Sampler(pool, seed, [cost(s) ** cfg.alpha for s in pool], name="weighted")
    raise UserError("sampler=weighted needs sampler.weights=[...] or sampler.alpha=<number>")


@SAMPLERS.register("width_major")
def width_major(cfg, pool: Pool, seed: int, cost: Callable[[SubModel], float]) -> Sampler:
    """Width first, then depth: P(width) from `sampler.weights` (one per width, ascending) or
    proportional to width^alpha (alpha 0: every width alike), and the depth settings of a width
    equally likely. With alpha > 0 the wide channels, which only wide draws train, get more draws
    than under the uniform draw over sub-models."""
    widths = pool.widths
    if cfg.weights is not None:
        width_weights = list(cfg.weights)
        if len(width_weights) != len(widths):
            raise UserError(f"sampler=width_major: sampler.weights has {len(width_weights)} entries but the pool has {len(widths)} widths")
    else:
        alpha = 1.0 if cfg.alpha is None else cfg.alpha
        width_weights = [w**alpha for w in widths]
    if any(w < 0 for w in width_weights) or sum(width_weights) <= 0:
        raise UserError("sampler.weights must be non-negative with a positive sum")
    per_width = {w: sum(1 for s in pool if s.width == w) for w in widths}
    by_width = dict(zip(widths, width_weights))
    return Sampler(pool, seed, [by_width[s.width] / per_width[s.width] for s in pool], name="width_major")


def build_sampler(cfg, pool: Pool, seed: int, cost: Callable[[SubModel], float]) -> Sampler:
    """The sampler a `sampler` config names; `cost(sub)` is asked only by samplers that need it."""
    return SAMPLERS.get(cfg.name)(cfg, pool, seed, cost)
