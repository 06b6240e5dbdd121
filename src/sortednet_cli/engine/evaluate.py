"""What evaluations measure: the eval split and a fixed set of un-augmented calibration images."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..sorted.grid import METHODS
from ..sorted.pool import Pool
from ..sorted.submodel import SubModel
from .data import ImageSet, Normalizer, Splits, eval_batches


@dataclass
class EvalData:
    eval: ImageSet
    calib: ImageSet
    batch_size: int
    normalize: Normalizer

    @classmethod
    def from_splits(cls, splits: Splits, eval_cfg, device: torch.device, normalize: Normalizer) -> "EvalData":
        """The eval split, and the first `eval.calib_images` training images for BN statistics."""
        return cls(splits.eval.to(device), splits.train.first(eval_cfg.calib_images).to(device), eval_cfg.batch_size, normalize)

    def eval_batches(self):
        return eval_batches(self.eval, self.batch_size, self.normalize)

    def calib_batches(self):
        return eval_batches(self.calib, self.batch_size, self.normalize)


def recalibrates(model: nn.Module, eval_cfg) -> bool:
    return eval_cfg.bn.value == "recalibrate" and model.has_batch_norm


def evaluate_pool(model: nn.Module, pool: Pool, data: EvalData, eval_cfg, method: str = "shared") -> dict[SubModel, float]:
    """Accuracy in [0, 1] of every pool member; the model's own buffers are left as they were."""
    return METHODS[method](model, pool, data.eval_batches, data.calib_batches, recalibrates(model, eval_cfg))
