"""describe: every sub-model of a pool with its units, parameters and FLOPs (no data read)."""

from __future__ import annotations

import torch

from ..models import build_model
from ..models.cost import mflops_per_example, parameter_count
from ..sorted.pool import Pool, pool_from_config
from ..sorted.submodel import format_depth
from ..tasks import build_task


def describe_pool(model, pool: Pool, example) -> list[dict]:
    return [
        {
            "index": index,
            "width": sub.width,
            "depth": format_depth(sub.depth),
            "channels": model.unit_summary(sub.width),
            "params": parameter_count(model, sub),
            "mflops": round(mflops_per_example(model, sub, example), 3),
        }
        for index, sub in enumerate(pool)
    ]


def describe(cfg) -> tuple[list[dict], torch.nn.Module, Pool]:
    """The rows of `sortednet describe`, FLOPs counted on the task's example input; no data is
    read (the task's `*_without_data` answers: a text model's vocabulary from data.vocab_size,
    its FLOPs on its longest input)."""
    device = torch.device("cpu")
    task = build_task(cfg.data, cfg.model, device)
    model = build_model(cfg.model, task.model_fields_without_data())
    pool = pool_from_config(cfg.pool, model.depth_limits)
    return describe_pool(model, pool, task.example_input_without_data(1)), model, pool
