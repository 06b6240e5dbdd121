"""Processes started by torchrun: the rank, the process group, the few collectives the loop uses.

How the ranks share the training (single, ddp, fsdp) is engine/strategy.py's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import UserError


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launched: bool = False  # started by torchrun (a process group can start, even for one rank)

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
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return Distributed()
    return Distributed(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", "0")), launched=True)


def init_process_group(info: Distributed, device: torch.device) -> None:
    """The process group of a run under torchrun (ddp and fsdp need one, even on one rank)."""
    if not info.launched or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    try:
        dist.init_process_group(backend)
    except Exception as exc:  # a missing rendezvous or backend surfaces in many types
        raise UserError(f"could not start the {backend} process group: {exc}") from None


def rank_device(device: torch.device, info: Distributed) -> torch.device:
    if info.launched and device.type == "cuda":
        torch.cuda.set_device(info.local_rank)
        return torch.device("cuda", info.local_rank)
    return device


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
    if info.launched and dist.is_initialized():
        dist.destroy_process_group()
