"""Latency of a sub-model as a standalone network (what a deployment runs)."""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from torch import nn


@torch.no_grad()
def latency_ms_per_example(small: nn.Module, inputs: Any, batch_size: int, repeats: int) -> float:
    """Median over `repeats` timed forward passes of a standalone (extracted) sub-model on
    `inputs` (the task's example input, `batch_size` examples), after one warm-up, in ms per
    example."""
    device = next(small.parameters()).device
    times = []
    for attempt in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        small(inputs)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if attempt:  # the first pass warms up caches and kernels
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times) / batch_size
