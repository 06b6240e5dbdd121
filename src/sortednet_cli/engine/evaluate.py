"""What evaluations measure: the task's evaluation split, and a fixed set of un-augmented
training examples for norm statistics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import nn

from ..sorted.pool import Pool
from ..sorted.prefix_eval import METHODS
from ..sorted.submodel import SubModel
from ..tasks import Task


@dataclass
class EvalData:
    task: Task
    batch_size: int
    calib_count: int

    @classmethod
    def from_task(cls, task: Task, eval_cfg) -> "EvalData":
        return cls(task, eval_cfg.batch_size, eval_cfg.calib_examples)

    def eval_batches(self):
        return self.task.eval_batches(self.batch_size)

    def calib_batches(self):
        return self.task.calib_batches(self.batch_size, self.calib_count)

    @property
    def eval_size(self) -> int:
        return self.task.eval_size()

    @property
    def calib_size(self) -> int:
        return self.task.calib_size(self.calib_count)


def recalibrates(model: nn.Module, eval_cfg) -> bool:
    return eval_cfg.bn.value == "recalibrate" and bool(model.recalibrated_norms())


def evaluate_pool(model: nn.Module, pool: Pool, data: EvalData, eval_cfg, method: str = "shared", details: Optional[dict] = None) -> dict[SubModel, float]:
    """The task's metric for every pool member; the model's own buffers are left as they were.
    `details` receives the secondary figures of tasks whose meters have them."""
    return METHODS[method](model, pool, data.eval_batches, data.calib_batches, recalibrates(model, eval_cfg), data.task.meter, details)
