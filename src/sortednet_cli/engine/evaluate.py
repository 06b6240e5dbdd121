"""Accuracy of one sub-model, with BatchNorm statistics recalibrated for it first."""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from ..models.layers import SlicedBatchNorm2d
from ..sorted.submodel import SubModel
from .data import ImageSet, Normalizer, eval_batches


def batch_norms(model: nn.Module) -> list[SlicedBatchNorm2d]:
    return [m for m in model.modules() if isinstance(m, SlicedBatchNorm2d)]


@torch.no_grad()
def recalibrate_bn(model: nn.Module, sub: SubModel, batches: Iterable[torch.Tensor]) -> None:
    """Recompute the running statistics `sub` uses as a cumulative average over `batches`.

    The shared buffers are overwritten: callers work on a copy or reload afterwards."""
    norms = batch_norms(model)
    if not norms:
        return
    saved_momentum = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for images in batches:
        model(images, sub)
    for m, momentum in zip(norms, saved_momentum):
        m.momentum = momentum
    model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, sub: SubModel, data: ImageSet, batch_size: int, normalize: Normalizer) -> float:
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=data.labels.device)
    for images, labels in eval_batches(data, batch_size, normalize):
        correct += (model(images, sub).argmax(1) == labels).sum()
    return correct.item() / max(1, len(data))


class SubModelEvaluator:
    """Measures sub-models one at a time: recalibrate (when asked and the model has BN), then
    count correct predictions. Calibration uses a fixed set of un-augmented training images."""

    def __init__(self, eval_data: ImageSet, calib_data: ImageSet, batch_size: int, normalize: Normalizer, recalibrate: bool):
        self.eval_data = eval_data
        self.calib_data = calib_data
        self.batch_size = batch_size
        self.normalize = normalize
        self.recalibrate = recalibrate

    def calib_batches(self):
        return (images for images, _ in eval_batches(self.calib_data, self.batch_size, self.normalize))

    def __call__(self, model: nn.Module, sub: SubModel) -> float:
        if self.recalibrate:
            recalibrate_bn(model, sub, self.calib_batches())
        return accuracy(model, sub, self.eval_data, self.batch_size, self.normalize)
