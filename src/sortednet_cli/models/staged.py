"""What every sliced CNN here shares: stages of blocks in `self.stages`, a forward pass that is
the prefix protocol's walk, standalone sub-networks cut by one slicing rule."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..errors import UserError
from ..sorted.submodel import SubModel, scaled
from .layers import SlicedBatchNorm2d
from .registry import build_from_arch


class ResidualUnits:
    """Channel counts of a residual network whose arch names a stem width and, per stage, the
    blocks' planes and outputs (cPreResNet, ResNet): every count scaled by the width."""

    def units(self, width: float) -> dict:
        a = self.arch
        return {
            "stem": scaled(a["stem"], width),
            "planes": [scaled(p, width) for p in a["planes"]],
            "outs": [scaled(o, width) for o in a["outs"]],
        }

    def unit_summary(self, width: float) -> str:
        """Planes per stage at `width`, e.g. '16-32-64'."""
        return "-".join(str(p) for p in self.units(width)["planes"])


class StagedNetwork(nn.Module):
    """Subclasses build `self.stages` (a ModuleList of ModuleLists of blocks) and `self.arch`,
    and define `units`, `unit_summary`, `run_stem`, `run_block`, `run_head` and `head_module`."""

    stages: nn.ModuleList
    arch: dict

    @property
    def depth_limits(self) -> tuple[int, ...]:
        return tuple(len(stage) for stage in self.stages)

    def recalibrated_norms(self) -> list[nn.Module]:
        return [m for m in self.modules() if isinstance(m, SlicedBatchNorm2d)]

    def sub_arch(self, sub: SubModel) -> dict:
        return {**self.arch, **self.units(sub.width), "blocks": list(sub.depth)}

    def standalone_arch(self, sub: SubModel) -> dict:
        """The architecture `extract` builds: `sub_arch(sub)`, unless a family exports some
        sub-models as another class (ResNet's full-width ones as torchvision's)."""
        return self.sub_arch(sub)

    def block_module(self, stage: int, index: int) -> nn.Module:
        return self.stages[stage][index]

    def forward(self, x: torch.Tensor, sub: Optional[SubModel] = None) -> torch.Tensor:
        # At width 1 every layer keeps all its units, so the plain network is the same walk.
        width, depth = (1.0, self.depth_limits) if sub is None else (sub.width, sub.depth)
        x = self.run_stem(x, width)
        for stage, blocks in enumerate(depth):
            for index in range(blocks):
                x = self.run_block(stage, index, x, width)
        return self.run_head(x, width)

    def extract(self, sub: SubModel) -> nn.Module:
        """A network built at `sub`'s sizes holding copies of the leading slices of this one's
        tensors: every tensor of a sub-model is the origin-anchored slice of the same-named
        full tensor, so one rule covers every layer (and running statistics)."""
        small = build_from_arch(self.standalone_arch(sub))
        full_state = self.state_dict()
        small.load_state_dict({
            name: full_state[name][tuple(slice(0, n) for n in tensor.shape)].clone()
            for name, tensor in small.state_dict().items()
        })
        return small.to(next(self.parameters()).device)


def head_classes(cfg, num_classes: Optional[int] = None) -> int:
    """The class count of an image family's head: the task's (`num_classes`, from
    `task.model_fields()`: the data decides), else `model.num_classes`, else 10. Every image
    family's build takes `num_classes` this way."""
    count = num_classes if num_classes is not None else cfg.num_classes if cfg.num_classes is not None else 10
    if count < 1:
        raise UserError(f"model.num_classes must be >= 1 (got {count})")
    return int(count)


def check_image_size(family: str, image_size: int, stride: int) -> None:
    """An image family takes images at least as large as its total stride: below it, the last
    stages would see zero padding only. (`image_size` is the task's, from `task.model_fields()`.)"""
    if image_size < stride:
        raise UserError(f"data.image_size={image_size} is too small for model={family}: it downsamples by {stride}, "
                        f"so it takes images of at least {stride}x{stride} pixels")


def image_bench():
    """The CNN families' side of `sortednet bench` (tasks/image/bench.py; engine/bench.py drives it)."""
    from ..tasks.image.bench import ImageBench  # deferred: the bench imports the task layer

    return ImageBench()
