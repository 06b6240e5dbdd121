"""The metric of every sub-model of a pool: one at a time (naive) or sharing prefixes (shared).

Within a stage, running the first d blocks is a prefix of running more, and a stage's input
depends only on the depths of the stages before it. So for one width the depth settings form a
tree (stage 1 depth, then stage 2 depth, ...) and one walk over it computes every block output
exactly once, emitting the head's outputs at each leaf. BatchNorm recalibration walks the same
tree: a block's statistics depend only on what ran before it, so each tree node keeps its own
copy of the block's buffers (swapped in and out around the block), and each leaf its own head
statistics. Both methods give the same predictions up to float reduction order.

Model- and task-agnostic: it needs the prefix protocol of sortednet_cli.models.protocol, and a
`new_meter()` (from the task) that accumulates one sub-model's outputs against the targets.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from typing import Any, Callable, Iterable, Iterator, Optional

import torch
from torch import nn

from .pool import Pool
from .submodel import SubModel

Batches = Callable[[], Iterable[tuple[Any, Any]]]
NewMeter = Callable[[], Any]  # a fresh meter: update(outputs, targets), value()


@contextlib.contextmanager
def preserved_buffers(model: nn.Module) -> Iterator[None]:
    """Evaluation rewrites running statistics; put the originals back afterwards."""
    saved = {name: buf.clone() for name, buf in model.named_buffers()}
    momenta = {m: m.momentum for m in model.recalibrated_norms()}
    try:
        yield
    finally:
        with torch.no_grad():
            for name, buf in model.named_buffers():
                buf.copy_(saved[name])
        for m, momentum in momenta.items():
            m.momentum = momentum


def _reset_statistics(model: nn.Module) -> None:
    for m in model.recalibrated_norms():
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches


def _record_details(details: Optional[dict], sub: SubModel, meter: Any) -> None:
    if details is not None and hasattr(meter, "details"):
        details[sub] = meter.details()


@torch.no_grad()
def recalibrate(model: nn.Module, sub: SubModel, calib_batches: Batches) -> None:
    """Recompute the BatchNorm statistics `sub` uses (cumulative average, no gradients)."""
    _reset_statistics(model)
    model.train()
    for inputs, _ in calib_batches():
        model(inputs, sub)
    model.eval()


@torch.no_grad()
def evaluate_naive(model: nn.Module, pool: Pool, eval_batches: Batches, calib_batches: Batches, recalibrate_bn: bool, new_meter: NewMeter,
                   details: Optional[dict] = None) -> dict[SubModel, float]:
    """Each sub-model on its own: recalibrate its statistics, then measure it. `details`, if
    given, receives each sub-model's secondary figures (meters with a `details()`)."""
    results = {}
    with preserved_buffers(model):
        for sub in pool:
            if recalibrate_bn:
                recalibrate(model, sub, calib_batches)
            model.eval()
            meter = new_meter()
            for inputs, targets in eval_batches():
                meter.update(model(inputs, sub), targets)
            results[sub] = meter.value()
            _record_details(details, sub, meter)
    return results


class _NodeStatistics:
    """Per tree node copies of a module's buffers, swapped in around each use of the module."""

    def __init__(self, enabled: bool, norms: list[nn.Module]):
        self.enabled = enabled
        self.norms = set(norms)
        self.store: dict[tuple, dict[str, torch.Tensor]] = {}

    @contextlib.contextmanager
    def use(self, key: tuple, module: nn.Module, keep: bool) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        buffers = dict(module.named_buffers())
        if key not in self.store:
            for m in module.modules():
                if m in self.norms:
                    m.reset_running_stats()
            self.store[key] = {name: buf.clone() for name, buf in buffers.items()}
        for name, buf in buffers.items():
            buf.copy_(self.store[key][name])
        yield
        if keep:
            for name, buf in buffers.items():
                self.store[key][name].copy_(buf)


class _PrefixTree:
    """Walks the depth settings of one width, computing each block output once."""

    def __init__(self, model: nn.Module, width: float, depths: list[tuple[int, ...]], stats: _NodeStatistics,
                 skipped: frozenset[tuple[int, int]] = frozenset()):
        self.model = model
        self.width = width
        self.depths = depths
        self.stats = stats
        self.skipped = skipped  # (stage, block) pairs run as the identity (layer dropout in training)
        self.last_stage = len(depths[0]) - 1

    def walk(self, inputs: Any, keep_stats: bool) -> dict[tuple[int, ...], torch.Tensor]:
        outputs: dict[tuple[int, ...], torch.Tensor] = {}
        # The stem is the same for every depth of a width: its statistics need no per-node copy.
        h = self.model.run_stem(inputs, self.width)
        self._stage(h, 0, (), keep_stats, outputs)
        return outputs

    def _stage(self, h, stage: int, prefix: tuple[int, ...], keep: bool, outputs: dict) -> None:
        needed = sorted({d[stage] for d in self.depths if d[:stage] == prefix})
        for j in range(1, needed[-1] + 1):
            if (stage, j - 1) not in self.skipped:
                with self.stats.use(("block", stage, prefix, j), self.model.block_module(stage, j - 1), keep):
                    h = self.model.run_block(stage, j - 1, h, self.width)
            if j not in needed:
                continue
            path = prefix + (j,)
            if stage == self.last_stage:
                with self.stats.use(("head", path), self.model.head_module(), keep):
                    outputs[path] = self.model.run_head(h, self.width)
            else:
                self._stage(h, stage + 1, path, keep, outputs)


def prefix_outputs(model: nn.Module, width: float, depths: list[tuple[int, ...]], inputs: Any,
                   skipped: frozenset[tuple[int, int]] = frozenset()) -> dict[tuple[int, ...], torch.Tensor]:
    """The outputs of every depth setting of one width on `inputs`, each block computed once
    (with gradients when enabled: the all-exits update trains through it); the `skipped`
    (stage, block) pairs pass their input on unchanged."""
    return _PrefixTree(model, width, depths, _NodeStatistics(False, []), skipped).walk(inputs, keep_stats=False)


def calibrated_walk(model: nn.Module, width: float, depths: list[tuple[int, ...]], calib_inputs: Iterable[Any],
                    recalibrate_bn: bool = True) -> Callable[[Any], dict[tuple[int, ...], torch.Tensor]]:
    """One width's prefix tree with each node's statistics recalibrated on `calib_inputs` (with
    `recalibrate_bn`): a function from inputs to the outputs of every depth setting, the model in
    eval mode. Rewrites the running statistics: call it under `preserved_buffers`."""
    tree = _PrefixTree(model, width, depths, _NodeStatistics(recalibrate_bn, model.recalibrated_norms()))
    if recalibrate_bn:
        _reset_statistics(model)
        model.train()
        for inputs in calib_inputs:
            tree.walk(inputs, keep_stats=True)
    model.eval()
    return lambda inputs: tree.walk(inputs, keep_stats=False)


@torch.no_grad()
def evaluate_shared(model: nn.Module, pool: Pool, eval_batches: Batches, calib_batches: Batches, recalibrate_bn: bool, new_meter: NewMeter,
                    details: Optional[dict] = None) -> dict[SubModel, float]:
    """Every sub-model of the pool, one prefix-tree walk per width and batch."""
    by_width: dict[float, list[tuple[int, ...]]] = defaultdict(list)
    for sub in pool:
        by_width[sub.width].append(sub.depth)
    results = {}
    with preserved_buffers(model):
        for width, depths in by_width.items():
            walk = calibrated_walk(model, width, depths, (inputs for inputs, _ in calib_batches()), recalibrate_bn)
            meters = {depth: new_meter() for depth in depths}
            for inputs, targets in eval_batches():
                for depth, out in walk(inputs).items():
                    meters[depth].update(out, targets)
            for depth in depths:
                results[SubModel(width, depth)] = meters[depth].value()
                _record_details(details, SubModel(width, depth), meters[depth])
    return {sub: results[sub] for sub in pool}


METHODS = {"shared": evaluate_shared, "naive": evaluate_naive}
