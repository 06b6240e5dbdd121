"""Latency of a sub-model as a standalone network (what a deployment runs)."""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn



@torch.no_grad()
def latency_ms_per_image(small: nn.Module, batch_size: int, repeats: int, channels_last: bool) -> float:
    """Median over `repeats` timed forward passes of a standalone (extracted) sub-model, after
    one warm-up, in ms per image."""
    device = next(small.parameters()).device
    x = torch.randn(batch_size, 3, 32, 32, device=device)
    if channels_last:
        small = small.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    times = []
    for attempt in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        small(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if attempt:  # the first pass warms up caches and kernels
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times) / batch_size
