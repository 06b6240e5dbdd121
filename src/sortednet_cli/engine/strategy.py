"""How the ranks of a run share its training (trainer.strategy): one process, torch's
DistributedDataParallel, or FSDP2 (`fully_shard`).

Every rank draws the same sub-model at every draw (the sampler is a pure function of seed, step
and draw) and reads its own shard of each mini-batch. FSDP depends on it: ranks running different
depths in one micro-batch would issue mismatched collectives. Every training forward, a plain
sub-model's or the all-exits prefix walk, goes through `StepModule`, the module a strategy wraps,
so that DDP's reducer and FSDP's root gathering see it.

- ddp: gradients of the draws before a step's last accumulate locally (`no_sync`); the last
  draw's backward all-reduces them in buckets, overlapped with the backward. The draws of one step
  use different blocks (depth) and slices (width), so unused parameters are searched for in every
  synchronising forward (`find_unused_parameters`); DDP marks a parameter used in any draw of the
  accumulation as used. Buffers are not broadcast: BatchNorm statistics stay per rank, as each
  rank normalises its own shard.
- fsdp: `fully_shard` on every block of the model (a Transformer's layers, a CNN's blocks:
  `block_module`) and on the root: parameters, gradients and optimizer state are sharded over the ranks; each block's
  parameters are gathered for its forward and again for its backward, and its gradients
  reduce-scattered after every draw's backward (so accumulated gradients stay sharded). With
  precision bf16 (or fp16) the gathered parameters and the compute are in that type, gradients
  are reduced in float32 and the sharded master weights stay float32. FSDP2 shards contiguous
  parameters only: a CNN trains under it in NCHW (data.channels_last=false); its sliced BatchNorm
  keeps per-rank statistics, as under ddp.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, ContextManager, Optional

import torch
from torch import nn

from ..errors import UserError
from .distributed import Distributed

STRATEGIES = ("single", "ddp", "fsdp")


def resolve_strategy(trainer, ranks: Distributed, device: torch.device) -> str:
    """trainer.strategy checked against how the process was started; auto: single for one
    process, ddp under torchrun with several."""
    name = trainer.strategy.value
    if name == "auto":
        name = "ddp" if ranks.enabled else "single"
    if name == "single" and ranks.enabled:
        raise UserError(f"trainer.strategy=single under torchrun with {ranks.world_size} ranks would train {ranks.world_size} "
                        "separate models; use trainer.strategy=ddp or fsdp (or auto)")
    if name in ("ddp", "fsdp") and not ranks.launched:
        raise UserError(f"trainer.strategy={name} needs processes started by torchrun "
                        f"(torchrun --nproc-per-node=N -m sortednet_cli train ...); one process trains with trainer.strategy=single or auto")
    if trainer.fsdp_cpu_offload and name != "fsdp":
        raise UserError(f"trainer.fsdp_cpu_offload=true needs trainer.strategy=fsdp (got {name})")
    if trainer.fsdp_cpu_offload and device.type != "cuda":
        raise UserError("trainer.fsdp_cpu_offload=true moves sharded parameters from the GPU to the CPU; "
                        f"this run is on {device.type}, where they are already")
    return name


class StepModule(nn.Module):
    """The module a strategy wraps around the model: its forward runs one draw's forward function
    (`model(inputs, sub)`, or the all-exits prefix walk) on the model inside the wrapper's hooks."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, forward: Callable, *args: Any) -> Any:
        return forward(self.model, *args)


class Strategy:
    """One process: the model trains as it is."""

    name = "single"
    shards_checkpoints = False  # last.pt (rank 0's full state), or a sharded checkpoint (engine/sharded.py)

    def __init__(self, ranks: Distributed, device: torch.device):
        self.ranks = ranks
        self.device = device

    def prepare(self, model: nn.Module, precision: str) -> nn.Module:
        """Wraps or shards `model` in place (before its optimizer is built); returns it."""
        return model

    def step_forward(self, forward: Callable, num_draws: int) -> Callable:
        """The forward of one step's draws, in order (called once per draw)."""
        return forward

    def step_model(self, model: nn.Module) -> nn.Module:
        """What a step's forward is called on (the wrapper, or the model)."""
        return model

    def gradient_scaler(self):
        """The fp16 loss scaler: its found-infinity flag must agree over the ranks."""
        return torch.amp.GradScaler(self.device.type)

    def full_model(self, model: nn.Module) -> Optional[nn.Module]:
        """The trained model with its whole weights, on rank 0 (None elsewhere): evaluation at the
        end of training and `TrainResult.model`. A collective call under fsdp."""
        return model if self.ranks.is_main else None


class DataParallel(Strategy):
    name = "ddp"

    def prepare(self, model: nn.Module, precision: str) -> nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        # device_ids=None: the inputs are on this rank's device already (nothing to scatter).
        self.wrapper = DistributedDataParallel(StepModule(model), find_unused_parameters=True, broadcast_buffers=False)
        return model

    def step_model(self, model: nn.Module) -> nn.Module:
        return self.wrapper

    def step_forward(self, forward: Callable, num_draws: int) -> Callable:
        calls = {"n": 0}

        def run(wrapper: nn.Module, *args: Any) -> Any:
            calls["n"] += 1
            # The reducer decides at forward time whether the backward synchronises.
            quiet = wrapper.no_sync() if calls["n"] < num_draws else contextlib.nullcontext()
            with quiet:
                return wrapper(forward, *args)

        return run


class FullyShardedDataParallel(Strategy):
    name = "fsdp"
    shards_checkpoints = True

    def __init__(self, ranks: Distributed, device: torch.device, cpu_offload: bool):
        super().__init__(ranks, device)
        self.cpu_offload = cpu_offload

    def prepare(self, model: nn.Module, precision: str) -> nn.Module:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

        scattered = [name for name, p in model.named_parameters() if not p.is_contiguous()]
        if scattered:
            raise UserError(f"trainer.strategy=fsdp shards contiguous parameters only, and {scattered[0]} is not (a channels_last "
                            "model: set data.channels_last=false)")
        low = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        options = {
            "mesh": init_device_mesh(self.device.type, (self.ranks.world_size,)),
            "mp_policy": MixedPrecisionPolicy(param_dtype=low, reduce_dtype=torch.float32 if low else None),
            "offload_policy": CPUOffloadPolicy() if self.cpu_offload else OffloadPolicy(),
        }
        for stage, blocks in enumerate(model.depth_limits):
            for index in range(blocks):
                fully_shard(model.block_module(stage, index), **options)
        self.wrapper = fully_shard(StepModule(model), **options)
        return model

    def step_model(self, model: nn.Module) -> nn.Module:
        return self.wrapper

    def step_forward(self, forward: Callable, num_draws: int) -> Callable:
        return lambda wrapper, *args: wrapper(forward, *args)

    def gradient_scaler(self):
        from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

        return ShardedGradScaler(self.device.type)

    def full_model(self, model: nn.Module) -> Optional[nn.Module]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        from ..models import build_from_arch

        weights = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not self.ranks.is_main:
            return None
        plain = build_from_arch(model.arch)
        plain.load_state_dict(weights)
        return plain.to(self.device)


def build_strategy(name: str, trainer, ranks: Distributed, device: torch.device) -> Strategy:
    if name == "fsdp":
        return FullyShardedDataParallel(ranks, device, trainer.fsdp_cpu_offload)
    return DataParallel(ranks, device) if name == "ddp" else Strategy(ranks, device)


def autocast_for(device: torch.device, precision: str) -> Callable[[], ContextManager]:
    """Autocast in bf16 or fp16 on the run's device; fp32: nothing."""
    low = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if low is None:
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=low)


def resolve_precision(trainer, device: torch.device) -> str:
    """trainer.precision checked against the device; auto: bf16 on CUDA, fp32 elsewhere."""
    name = trainer.precision.value
    if name == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if name == "fp16" and device.type != "cuda":
        raise UserError(f"trainer.precision=fp16 needs a CUDA device (this run is on {device.type}, where float16 autocast is "
                        "slow and its loss scaling untested); use trainer.precision=bf16 or fp32")
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError("trainer.precision=bf16: this GPU has no bfloat16; use trainer.precision=fp16 or fp32")
    return name
