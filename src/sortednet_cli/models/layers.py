"""Layers that can run on their first channels.

Each keeps its full-size tensors as ordinary parameters and buffers (so state dicts look like
torch.nn's) and, when asked for fewer channels, uses views of the leading slices: no copies, and
gradients land in the shared tensors. Input channels always follow the incoming activation.
"""

from __future__ import annotations

import math
from enum import Enum
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


class SlicedConv2d(nn.Conv2d):
    def forward(self, x: torch.Tensor, out_channels: Optional[int] = None) -> torch.Tensor:
        out_channels = out_channels or self.out_channels
        weight = self.weight[:out_channels, : x.shape[1]]
        bias = None if self.bias is None else self.bias[:out_channels]
        if self.kernel_size == (1, 1) and self.padding == (0, 0) and self.stride != (1, 1):
            return pointwise_strided_conv(x, weight, bias, self.stride)
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation)


def pointwise_strided_conv(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], stride) -> torch.Tensor:
    """A 1x1 convolution with stride s, written as keeping every s-th pixel and a stride-1 1x1
    convolution: the same arithmetic, and it keeps oneDNN's AVX2 backward-weights kernel for
    strided 1x1 convolutions on channels_last inputs out of the step (that kernel corrupts the
    heap or spins forever at small channel counts on CPUs without AVX-512)."""
    return F.conv2d(x[:, :, :: stride[0], :: stride[1]], weight, bias)


class SlicedLinear(nn.Linear):
    """A linear layer on the first in_features of its input (a classifier after a sliced
    feature vector); its outputs (the logits) are never cut."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight[:, : x.shape[-1]], self.bias)


class SlicedDepthwiseConv2d(nn.Conv2d):
    """A depthwise convolution (one k x k filter per channel, weight (C, 1, k, k)): on c input
    channels it runs the first c filters with groups=c."""

    def __init__(self, channels: int, kernel_size: int, stride: int = 1, padding: int = 0, bias: bool = False):
        super().__init__(channels, channels, kernel_size, stride=stride, padding=padding, groups=channels, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        bias = None if self.bias is None else self.bias[:c]
        return F.conv2d(x, self.weight[:c], bias, self.stride, self.padding, self.dilation, groups=c)


class SlicedBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm whose running statistics are shared by every width: a width updates the first
    entries. momentum=None means a cumulative average (used to recalibrate a sub-model)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        momentum = self.momentum
        if self.training:
            self.num_batches_tracked.add_(1)
            if momentum is None:
                momentum = 1.0 / float(self.num_batches_tracked)
        return F.batch_norm(
            x,
            self.running_mean[:c],
            self.running_var[:c],
            self.weight[:c],
            self.bias[:c],
            self.training,
            momentum or 0.0,
            self.eps,
        )


class SlicedInstanceNorm2d(nn.InstanceNorm2d):
    def __init__(self, channels: int):
        super().__init__(channels, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        return F.instance_norm(x, weight=self.weight[:c], bias=self.bias[:c], eps=self.eps)


class SlicedGroupNorm(nn.GroupNorm):
    """GroupNorm over gcd(channels, groups) groups, so any channel count works."""

    def __init__(self, groups: int, channels: int):
        super().__init__(math.gcd(channels, groups), channels)
        self.max_groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        groups = math.gcd(c, self.max_groups)
        return F.group_norm(x, groups, self.weight[:c], self.bias[:c], self.eps)


# "in" is a Python keyword, so this one enum is built from a mapping.
Norm = Enum("Norm", {"bn": "bn", "in": "in", "gn": "gn"}, type=str)


def make_norm(kind: str, channels: int, gn_groups: int = 8) -> nn.Module:
    if kind == "bn":
        return SlicedBatchNorm2d(channels)
    if kind == "in":
        return SlicedInstanceNorm2d(channels)
    if kind == "gn":
        return SlicedGroupNorm(gn_groups, channels)
    raise ValueError(f"unknown norm {kind!r}")
