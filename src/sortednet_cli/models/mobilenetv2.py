"""MobileNetV2 for 32x32 inputs (the CIFAR variant): inverted residual blocks, ReLU6.

One class serves both roles, like PreResNet. Built at full size it is the sorted network:
`model(x, sub)` runs sub-model `sub` on views of the shared tensors. Built at a sub-model's
channel counts (`sub_arch(sub)`) it is that sub-model as a plain standalone network (`model(x)`).

Width w: every layer keeps its first scaled(c, w) channels, c being the layer's channel count in
the full network. That includes each block's expanded (hidden) channels, scaled from the full
count t * c_in rather than taken as t times the scaled input, and the 1280-channel last conv
(which the paper keeps at 1280 below width 1). The 3 input channels and the logits are never cut.
Depth: stage s runs its first d_s blocks, 1 <= d_s <= n_s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..sorted.submodel import scaled
from .layers import Norm, SlicedConv2d, SlicedDepthwiseConv2d, make_norm
from .registry import ModelFamily, register_family
from .staged import StagedNetwork, check_image_size, head_classes, image_bench

# Per stage: (expansion t, output channels c, blocks n, stride of the first block s). Stage 2
# keeps stride 1 (ImageNet's has 2), so a 32x32 input ends at 4x4.
CIFAR_STAGES = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
FULL_STEM = 32
FULL_LAST = 1280
EXPANSIONS = tuple(t for t, _, _, _ in CIFAR_STAGES)
FULL_OUTS = tuple(c for _, c, _, _ in CIFAR_STAGES)
FULL_BLOCKS = tuple(n for _, _, n, _ in CIFAR_STAGES)
CIFAR_STRIDES = tuple(s for _, _, _, s in CIFAR_STAGES)
# A stage's first block expands the previous stage's output, its other blocks their own stage's.
FULL_FIRST_HIDDEN = tuple(t * c for t, c in zip(EXPANSIONS, (FULL_STEM, *FULL_OUTS[:-1])))
FULL_HIDDEN = tuple(t * c for t, c in zip(EXPANSIONS, FULL_OUTS))


class InvertedResidual(nn.Module):
    """1x1 expand-norm-ReLU6 (absent when t = 1), 3x3 depthwise (stride)-norm-ReLU6,
    1x1 project-norm, plus the input when `residual`."""

    def __init__(self, cin: int, hidden: int, cout: int, stride: int, expand: bool, residual: bool, norm: str, gn_groups: int):
        super().__init__()
        if expand:
            self.expand = SlicedConv2d(cin, hidden, 1, bias=False)
            self.expand_norm = make_norm(norm, hidden, gn_groups)
        else:
            self.expand = None
            hidden = cin  # without expansion the depthwise conv runs on the input itself
        self.depthwise = SlicedDepthwiseConv2d(hidden, 3, stride=stride, padding=1)
        self.depthwise_norm = make_norm(norm, hidden, gn_groups)
        self.project = SlicedConv2d(hidden, cout, 1, bias=False)
        self.project_norm = make_norm(norm, cout, gn_groups)
        self.residual = residual

    def forward(self, x: torch.Tensor, hidden: int, cout: int) -> torch.Tensor:
        out = x
        if self.expand is not None:
            out = F.relu6(self.expand_norm(self.expand(out, hidden)))
        out = F.relu6(self.depthwise_norm(self.depthwise(out)))
        out = self.project_norm(self.project(out, cout))
        return out + x if self.residual else out


class Head(nn.Module):
    """1x1 conv to the last channels-norm-ReLU6, global average pool, classifier (a 1x1 conv)."""

    def __init__(self, cin: int, last: int, num_classes: int, norm: str, gn_groups: int):
        super().__init__()
        self.conv = SlicedConv2d(cin, last, 1, bias=False)
        self.norm = make_norm(norm, last, gn_groups)
        self.classifier = SlicedConv2d(last, num_classes, 1, bias=True)

    def forward(self, x: torch.Tensor, last: int) -> torch.Tensor:
        x = F.relu6(self.norm(self.conv(x, last)))
        x = F.adaptive_avg_pool2d(x, 1)
        return self.classifier(x).flatten(1)


@dataclass
class MobileNetV2Config:
    name: str = "mobilenetv2"
    norm: Norm = Norm["bn"]  # bn | in | gn
    num_classes: Optional[int] = None  # null: the data's class count (a number must match it)
    gn_groups: int = 8  # norm=gn: gcd(channels, gn_groups) groups


class MobileNetV2(StagedNetwork):
    def __init__(
        self,
        stem: int = FULL_STEM,
        expansions: Sequence[int] = EXPANSIONS,
        first_hidden: Sequence[int] = FULL_FIRST_HIDDEN,
        hidden: Sequence[int] = FULL_HIDDEN,
        outs: Sequence[int] = FULL_OUTS,
        blocks: Sequence[int] = FULL_BLOCKS,
        strides: Sequence[int] = CIFAR_STRIDES,
        last: int = FULL_LAST,
        norm: str = "bn",
        num_classes: int = 10,
        gn_groups: int = 8,
    ):
        super().__init__()
        self.arch = {
            "name": "mobilenetv2",
            "stem": int(stem),
            "expansions": [int(t) for t in expansions],
            "first_hidden": [int(h) for h in first_hidden],
            "hidden": [int(h) for h in hidden],
            "outs": [int(o) for o in outs],
            "blocks": [int(b) for b in blocks],
            "strides": [int(s) for s in strides],
            "last": int(last),
            "norm": norm,
            "num_classes": int(num_classes),
            "gn_groups": int(gn_groups),
        }
        self.stem = SlicedConv2d(3, stem, 3, padding=1, bias=False)
        self.stem_norm = make_norm(norm, stem, gn_groups)
        stages = []
        cin = stem
        for t, h_first, h, o, n, s in zip(expansions, first_hidden, hidden, outs, blocks, strides):
            # The residual goes by position: a stage's first block changes the shape in the full
            # network. Comparing channel counts would not do, as they can coincide after
            # rounding at small widths (16 and 24 both keep 1 channel at width 0.05).
            stage = nn.ModuleList(
                InvertedResidual(
                    cin if b == 0 else o,
                    h_first if b == 0 else h,
                    o,
                    s if b == 0 else 1,
                    expand=t != 1,
                    residual=b > 0,
                    norm=norm,
                    gn_groups=gn_groups,
                )
                for b in range(n)
            )
            stages.append(stage)
            cin = o
        self.stages = nn.ModuleList(stages)
        self.head = Head(cin, last, num_classes, norm, gn_groups)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and m is not self.head.classifier:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.head.classifier.weight, 0.0, 0.01)
        nn.init.zeros_(self.head.classifier.bias)

    def units(self, width: float) -> dict:
        """Channel counts of every layer group at `width`."""
        a = self.arch
        return {
            "stem": scaled(a["stem"], width),
            "first_hidden": [scaled(h, width) for h in a["first_hidden"]],
            "hidden": [scaled(h, width) for h in a["hidden"]],
            "outs": [scaled(o, width) for o in a["outs"]],
            "last": scaled(a["last"], width),
        }

    def unit_summary(self, width: float) -> str:
        """Output channels per stage at `width`, e.g. '16-24-32-64-96-160-320'."""
        return "-".join(str(o) for o in self.units(width)["outs"])

    def run_stem(self, x: torch.Tensor, width: float) -> torch.Tensor:
        return F.relu6(self.stem_norm(self.stem(x, self.units(width)["stem"])))

    def run_block(self, stage: int, index: int, x: torch.Tensor, width: float) -> torch.Tensor:
        units = self.units(width)
        hidden = units["first_hidden" if index == 0 else "hidden"][stage]
        return self.stages[stage][index](x, hidden, units["outs"][stage])

    def run_head(self, x: torch.Tensor, width: float) -> torch.Tensor:
        return self.head(x, self.units(width)["last"])

    def head_module(self) -> nn.Module:
        return self.head


def mobilenetv2_from_config(cfg, num_classes: Optional[int] = None, image_size: int = 32) -> MobileNetV2:
    check_image_size(cfg.name, image_size, math.prod(CIFAR_STRIDES))
    return MobileNetV2(norm=cfg.norm.value, num_classes=head_classes(cfg, num_classes), gn_groups=cfg.gn_groups)


register_family(ModelFamily("mobilenetv2", MobileNetV2Config, mobilenetv2_from_config, {"mobilenetv2": MobileNetV2},
                            frozenset({"image_classification"}), bench=image_bench))
