"""Model registry.

A sorted model is an nn.Module with:
  - `depth_limits`: the most blocks each stage holds,
  - `forward(x, sub)`: run sub-model `sub` on the shared weights (`sub=None`: all of them),
  - `arch` and `sub_arch(sub)`: plain dicts that `build_from_arch` turns back into a network
    (the full one, or `sub` as a standalone network),
  - `has_batch_norm`: whether evaluation must recalibrate running statistics,
  - `channel_summary(width)`: a short text of the channels a width keeps (for tables),
  - the prefix protocol, so evaluation can share the work of sub-models that agree on their
    first blocks: `run_stem(x, width)`, `run_block(stage, index, x, width)`,
    `run_head(x, width)`, `block_module(stage, index)` and `head_module()` (the modules whose
    buffers, e.g. BatchNorm statistics, belong to one block or to the head).
"""

from __future__ import annotations

from torch import nn

from ..errors import UserError
from .mobilenetv2 import MobileNetV2
from .preresnet import PreResNet, cpreresnet

ARCHITECTURES = {"preresnet": PreResNet, "mobilenetv2": MobileNetV2}


def build_model(cfg) -> nn.Module:
    """The full-size sorted network for a `model` config."""
    if cfg.name == "cpreresnet20":
        if cfg.blocks_per_stage < 1:
            raise UserError(f"model.blocks_per_stage must be >= 1 (got {cfg.blocks_per_stage})")
        if cfg.num_classes < 1:
            raise UserError(f"model.num_classes must be >= 1 (got {cfg.num_classes})")
        return cpreresnet(cfg.blocks_per_stage, cfg.norm.value, cfg.num_classes, cfg.gn_groups)
    raise UserError(f"model.name={cfg.name!r} is not a known model (known: cpreresnet20)")


def build_from_arch(arch: dict) -> nn.Module:
    kwargs = dict(arch)
    name = kwargs.pop("name", None)
    if name not in ARCHITECTURES:
        raise UserError(f"unknown architecture {name!r} (known: {', '.join(ARCHITECTURES)})")
    return ARCHITECTURES[name](**kwargs)
