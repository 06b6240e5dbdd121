"""cPreResNet: the pre-activation bottleneck ResNet of the LCS code, depth 9n+2.

One class serves both roles. Built at full size it is the sorted network: `model(x, sub)` runs
sub-model `sub` on views of the shared tensors. Built at a sub-model's channel counts it is that
sub-model as a plain standalone network (`model(x)`), which is what export writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from .layers import Norm, SlicedConv2d, make_norm
from .registry import ModelFamily, register_family
from .staged import ResidualUnits, StagedNetwork, check_image_size, head_classes, image_bench

EXPANSION = 4
FULL_STEM = 16
FULL_PLANES = (16, 32, 64)


class Bottleneck(nn.Module):
    """norm-ReLU-1x1, norm-ReLU-3x3 (stride), norm-ReLU-1x1, plus the shortcut."""

    def __init__(self, cin: int, planes: int, cout: int, stride: int, projection: bool, norm, gn_groups: int):
        super().__init__()
        self.norm1 = make_norm(norm, cin, gn_groups)
        self.conv1 = SlicedConv2d(cin, planes, 1, bias=False)
        self.norm2 = make_norm(norm, planes, gn_groups)
        self.conv2 = SlicedConv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.norm3 = make_norm(norm, planes, gn_groups)
        self.conv3 = SlicedConv2d(planes, cout, 1, bias=False)
        self.shortcut = SlicedConv2d(cin, cout, 1, stride=stride, bias=False) if projection else None

    def forward(self, x: torch.Tensor, planes: Optional[int] = None, cout: Optional[int] = None) -> torch.Tensor:
        out = self.conv1(F.relu(self.norm1(x)), planes)
        out = self.conv2(F.relu(self.norm2(out)), planes)
        out = self.conv3(F.relu(self.norm3(out)), cout)
        residual = x if self.shortcut is None else self.shortcut(x, cout)
        return out + residual


@dataclass
class CPreResNetConfig:
    name: str = "cpreresnet20"
    norm: Norm = Norm["bn"]  # bn | in | gn
    blocks_per_stage: int = 2  # 2 = cPreResNet20
    num_classes: Optional[int] = None  # null: the data's class count (a number must match it)
    gn_groups: int = 8  # norm=gn: gcd(channels, gn_groups) groups


class PreResNet(ResidualUnits, StagedNetwork):
    def __init__(
        self,
        stem: int = FULL_STEM,
        planes: Sequence[int] = FULL_PLANES,
        outs: Sequence[int] = tuple(p * EXPANSION for p in FULL_PLANES),
        blocks: Sequence[int] = (2, 2, 2),
        norm: str = "bn",
        num_classes: int = 10,
        gn_groups: int = 8,
    ):
        super().__init__()
        self.arch = {
            "name": "preresnet",
            "stem": int(stem),
            "planes": [int(p) for p in planes],
            "outs": [int(o) for o in outs],
            "blocks": [int(b) for b in blocks],
            "norm": norm,
            "num_classes": int(num_classes),
            "gn_groups": int(gn_groups),
        }
        self.stem = SlicedConv2d(3, stem, 3, padding=1, bias=False)
        stages = []
        cin = stem
        for index, (p, o, n) in enumerate(zip(planes, outs, blocks)):
            stride = 1 if index == 0 else 2
            stage = nn.ModuleList(
                Bottleneck(cin if b == 0 else o, p, o, stride if b == 0 else 1, b == 0, norm, gn_groups)
                for b in range(n)
            )
            stages.append(stage)
            cin = o
        self.stages = nn.ModuleList(stages)
        self.head_norm = make_norm(norm, cin, gn_groups)
        self.classifier = SlicedConv2d(cin, num_classes, 1, bias=True)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and m is not self.classifier:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 0.5)
                nn.init.zeros_(m.bias)

    def run_stem(self, x: torch.Tensor, width: float) -> torch.Tensor:
        return self.stem(x, self.units(width)["stem"])

    def run_block(self, stage: int, index: int, x: torch.Tensor, width: float) -> torch.Tensor:
        units = self.units(width)
        return self.stages[stage][index](x, units["planes"][stage], units["outs"][stage])

    def run_head(self, x: torch.Tensor, width: float) -> torch.Tensor:
        x = F.relu(self.head_norm(x))
        x = F.adaptive_avg_pool2d(x, 1)
        return self.classifier(x).flatten(1)

    def head_module(self) -> nn.Module:
        return self.head_norm


def cpreresnet_from_config(cfg, num_classes: Optional[int] = None, image_size: int = 32) -> PreResNet:
    if cfg.blocks_per_stage < 1:
        raise UserError(f"model.blocks_per_stage must be >= 1 (got {cfg.blocks_per_stage})")
    check_image_size(cfg.name, image_size, 4)  # stages 2 and 3 halve the map
    return cpreresnet(cfg.blocks_per_stage, cfg.norm.value, head_classes(cfg, num_classes), cfg.gn_groups)


def cpreresnet(blocks_per_stage: int, norm: str, num_classes: int, gn_groups: int) -> PreResNet:
    """cPreResNet of depth 9n+2 at full width (n = blocks_per_stage; n=2 is cPreResNet20)."""
    return PreResNet(blocks=(blocks_per_stage,) * 3, norm=norm, num_classes=num_classes, gn_groups=gn_groups)


register_family(ModelFamily("cpreresnet20", CPreResNetConfig, cpreresnet_from_config, {"preresnet": PreResNet},
                            frozenset({"image_classification"}), bench=image_bench))
