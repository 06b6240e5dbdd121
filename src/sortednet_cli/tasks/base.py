"""The task protocol: what is specific to a kind of problem.

A task owns its data (training batches, evaluation and calibration batches, an example input
for FLOPs and latency, the memory format), its loss (and a soft-target loss for distillation)
and its metric. The engine and the sorted machinery only pass its batches to the model and its
outputs back to it, so they hold no image, label or token specifics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Protocol, runtime_checkable

import torch

Batch = tuple[Any, Any]  # (inputs the model takes, targets the loss and the metric take)


@dataclass(frozen=True)
class Metric:
    """A task's headline metric: its grid column name, its direction and its range.

    The range is what a value can be (accuracy in [0, 1]; a loss in [0, inf); Matthews
    correlation in [-1, 1]); bars and baselines outside it are user mistakes."""

    name: str
    higher_is_better: bool = True
    lower: float = -math.inf
    upper: float = math.inf

    def in_range(self, value: float, positive: bool = False) -> bool:
        return self.lower <= value <= self.upper and (value > 0 or not positive)

    def range_text(self, positive: bool = False) -> str:
        """'[0, 1]', or '(0, 1]' for a value that must also be positive (a baseline)."""
        lower = max(self.lower, 0) if positive else self.lower
        left = "(" if positive and lower == 0 else "["
        upper = f"{self.upper:g}]" if self.upper < math.inf else "inf)"
        return f"{left}{lower:g}, {upper}"

    def described(self) -> str:
        return f"{'an' if self.name[0] in 'aeiou' else 'a'} {self.name}"

    def relative(self, value: Optional[float], baseline: Optional[float]) -> Optional[float]:
        """value / baseline when higher is better, baseline / value when lower is better; None
        where that ratio means nothing (a baseline or value that is not positive)."""
        if value is None or baseline is None or baseline <= 0:
            return None
        if self.higher_is_better:
            return value / baseline
        return baseline / value if value > 0 else None

    def at_least_as_good(self, value: float, bar: float) -> bool:
        return value >= bar if self.higher_is_better else value <= bar

    def worst(self, values: list[float]) -> float:
        return min(values) if self.higher_is_better else max(values)

    def column(self, statistic: str) -> str:
        """A report column of a statistic of this metric: full_accuracy, min_loss, ..."""
        return f"{statistic}_{self.name}"

    @property
    def is_fraction(self) -> bool:
        """Shown as a percentage (accuracy, F1, correlations)."""
        return self.lower >= -1 and self.upper <= 1

    def format(self, value: Optional[float], digits: int = 2) -> str:
        if value is None:
            return ""
        return f"{100 * value:.{digits}f}%" if self.is_fraction else f"{value:.4g}"

    def to_dict(self) -> dict:
        finite = lambda v: v if math.isfinite(v) else None  # noqa: E731  (JSON has no infinity)
        return {"name": self.name, "higher_is_better": self.higher_is_better, "lower": finite(self.lower), "upper": finite(self.upper)}

    @classmethod
    def from_dict(cls, data: dict) -> "Metric":
        """A grid.json's metric (what `to_dict` wrote)."""
        lower, upper = data.get("lower"), data.get("upper")
        return cls(data["name"], data["higher_is_better"], -math.inf if lower is None else lower, math.inf if upper is None else upper)


class Meter(Protocol):
    """Accumulates one sub-model's outputs over the evaluation batches. A meter may also have
    `details() -> dict`: secondary figures the grid shows beside the metric (F1's accuracy,
    a loss's perplexity)."""

    def update(self, outputs: torch.Tensor, targets: Any) -> None: ...

    def value(self) -> float: ...


class TrainBatches(Protocol):
    batch_size: int

    def __len__(self) -> int: ...

    def get(self, epoch: int, index: int, shard: slice = slice(None)) -> Batch:
        """Mini-batch `index` of `epoch` (or this rank's shard of it), rebuilt exactly from
        (seed, epoch, index): resuming mid-epoch depends on it."""


@runtime_checkable
class Task(Protocol):
    """Built as `Task(data_cfg, model_cfg, device, state=None)`; `state` is what `state()`
    returned when the checkpoint was written. The task decides its `memory_format` (an image
    task from data.channels_last); the engine moves the model to it."""

    name: str
    kind: str  # what model families pair with (ModelFamily.task_kinds): "language_modeling", ...
    metric: Metric
    memory_format: torch.memory_format
    eval_name: str  # the split evaluations measure: "val" or "test"
    tokenizer: Any  # what a text task encodes with (saved with exported models); None without text

    def describe(self) -> str:
        """What is trained on, for the console: '45000 cifar10 images'."""

    def state(self) -> dict:
        """What a checkpoint must keep to rebuild this task exactly (a trained tokenizer)."""

    def model_fields(self) -> dict:
        """What the task decides about the model: keyword arguments of the model builder (a
        text task's vocabulary size and label count); empty for images."""

    def model_fields_without_data(self) -> dict:
        """model_fields() decided without reading any data (sortednet describe): a text task whose
        tokenizer would be trained here takes its vocabulary size from data.vocab_size."""

    def train_batches(self, batch_size: int, seed: int) -> TrainBatches: ...

    def eval_batches(self, batch_size: int) -> Iterator[Batch]: ...

    def calib_batches(self, batch_size: int, count: int) -> Iterator[Batch]:
        """Un-augmented training batches, `count` examples, for norm statistics."""

    def eval_size(self) -> int: ...

    def calib_size(self, count: int) -> int:
        """How many examples `calib_batches(..., count)` really gives."""

    def eval_fingerprint(self) -> str:
        """Identifies the evaluation set, for caching a baseline measured on it."""

    def example_input(self, batch_size: int) -> Any:
        """An input of the shape the model takes, for counting FLOPs and timing latency."""

    def example_input_without_data(self, batch_size: int) -> Any:
        """The same without reading any data (describe's FLOPs): a text task's longest input."""

    def loss(self, outputs: torch.Tensor, targets: Any) -> torch.Tensor: ...

    def soft_loss(self, outputs: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
        """The loss against a teacher's (detached) outputs, for in-place distillation."""

    def meter(self) -> Meter: ...


class PromptSource(Protocol):
    """What a task whose models decode (a family that `decodes`) also gives: bench-decode's prompts."""

    def prompt_windows(self, count: int, length: int) -> list[list[int]]:
        """`count` windows of `length` token ids spread evenly over the evaluation text."""
