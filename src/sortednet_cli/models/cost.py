"""What a sub-model costs: its own parameters and its forward FLOPs per example."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..sorted.submodel import SubModel
from .registry import build_from_arch, family_of


def parameter_count(model: nn.Module, sub: SubModel) -> int:
    return sum(p.numel() for p in build_from_arch(model.sub_arch(sub)).parameters())


@torch.no_grad()
def mflops_per_example(model: nn.Module, sub: SubModel, example: Any) -> float:
    """Forward FLOPs of `sub` on a one-example input (the task's example input), counted by
    torch.utils.flop_counter (2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    # Models with attention kernels the counter cannot see switch to countable ones for it.
    with family_of(model).flop_context(model), FlopCounterMode(display=False) as counter:
        model(example, sub)
    model.train(was_training)
    return counter.get_total_flops() / 1e6


@dataclass(frozen=True)
class TransformerShape:
    """The sizes of a Transformer's full model that a memory estimate needs (engine/memory.py),
    answered by its family from the model config alone (no weights read, nothing allocated)."""

    parameters: int  # every parameter of the full model, each shared tensor once
    layer_parameters: int  # the largest layer's
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    gated_ffn: bool  # a gate beside the up projection (LLaMA's SwiGLU): two FFN-wide outputs, then their product
    outputs: int  # the head's width: the vocabulary of a decoder, the labels of a classifier
    causal: bool  # a decoder: a [batch, 1, seq, seq] mask, the head on every position (a classifier's: on the first)
