"""Tasks: what is specific to a kind of problem (data, loss, metric); see base.py."""

from typing import Optional

import torch

from ..errors import UserError

from .base import Metric, Task
from .registry import TASKS
from .image import folder_task as _image_folder, task as _image  # noqa: F401  (registers cifar10, cifar100, fake, image_folder)
from .text import glue_task as _glue, instruction_task as _instructions, lm_task as _lm  # noqa: F401  (registers glue, instructions, text)


def check_pairing(data_cfg, model_cfg) -> None:
    """The model family must pair with the task's kind (it says which kinds it does)."""
    from ..models import families_for, family_named

    kind = TASKS.get(data_cfg.name).kind
    if kind not in family_named(model_cfg.name).task_kinds:
        raise UserError(f"data={data_cfg.name} is {kind.replace('_', ' ')}, which model={model_cfg.name} does not do "
                        f"(models for it: {', '.join(families_for(kind)) or 'none registered'})")


def build_task(data_cfg, model_cfg, device: torch.device, state: Optional[dict] = None) -> Task:
    """The task that reads `data_cfg`, with its data loaded onto `device`; `state` is what a
    checkpoint saved of it (a text task's tokenizer)."""
    check_pairing(data_cfg, model_cfg)
    return TASKS.get(data_cfg.name)(data_cfg, model_cfg, device, state=state)


__all__ = ["Metric", "Task", "TASKS", "build_task"]
