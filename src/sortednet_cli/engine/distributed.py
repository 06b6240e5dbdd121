"""Data parallelism across processes started by torchrun.

Every rank draws the same sub-model at every draw (the sampler is a pure function of seed,
step and draw), reads its own shard of each mini-batch, and gradients are averaged with one
all-reduce per optimizer step, after all accumulated draws. That is what DDP's no_sync + final
backward does; it is done here directly because DDP's unused-parameter detection looks only at
the last forward, while the draws of one step use different blocks (depth) and slices (width).
BatchNorm is plain per rank: each normalises its own shard (the custom sliced BatchNorm has no
SyncBatchNorm counterpart); evaluation recalibrates statistics on one process anyway.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ..errors import UserError


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, n: int) -> slice:
        """This rank's part of a batch of n: every world_size-th item, from its rank."""
        return slice(self.rank, n, self.world_size)


def from_environment() -> Distributed:
    """torchrun's RANK / WORLD_SIZE / LOCAL_RANK, or a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Distributed()
    return Distributed(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))


def init_process_group(info: Distributed, device: torch.device) -> None:
    if not info.enabled or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    try:
        dist.init_process_group(backend)
    except Exception as exc:  # a missing rendezvous or backend surfaces in many types
        raise UserError(f"could not start the {backend} process group: {exc}") from None


def rank_device(device: torch.device, info: Distributed) -> torch.device:
    if info.enabled and device.type == "cuda":
        torch.cuda.set_device(info.local_rank)
        return torch.device("cuda", info.local_rank)
    return device


def average_gradients(model: nn.Module, info: Distributed) -> None:
    """One all-reduce of every gradient this step produced (the same set on every rank)."""
    if not info.enabled:
        return
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    flat = torch.cat([grad.reshape(-1) for grad in grads])  # each in logical order, whatever its memory format
    dist.all_reduce(flat)
    flat /= info.world_size
    for grad, reduced in zip(grads, flat.split([grad.numel() for grad in grads])):
        grad.copy_(reduced.view(grad.shape))


def average_tensor(values: torch.Tensor, info: Distributed) -> torch.Tensor:
    if info.enabled:
        values = values.clone()
        dist.all_reduce(values)
        values /= info.world_size
    return values


def any_rank(flag: bool, info: Distributed, device: torch.device) -> bool:
    """True on every rank when it is true on one (so all ranks stop at the same step)."""
    if not info.enabled:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def finish(info: Distributed) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
