"""Tasks: what is specific to a kind of problem (data, loss, metric); see base.py."""

import torch

from .base import Metric, Task
from .registry import TASKS
from .image import task as _image  # noqa: F401  (registers cifar10 and fake)


def build_task(data_cfg, model_cfg, device: torch.device, channels_last: bool) -> Task:
    """The task that reads `data_cfg`, with its data loaded onto `device`."""
    return TASKS.get(data_cfg.name)(data_cfg, model_cfg, device, channels_last)


__all__ = ["Metric", "Task", "TASKS", "build_task"]
