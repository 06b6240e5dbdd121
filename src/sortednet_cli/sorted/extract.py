"""Take a sub-model out of the shared weights as a standalone network."""

from __future__ import annotations

import torch
from torch import nn

from ..models import build_from_arch
from .submodel import SubModel


def extract(model: nn.Module, sub: SubModel) -> nn.Module:
    """A network built at `sub`'s sizes holding copies of the leading slices of `model`'s tensors.

    Every tensor of a sub-model is the origin-anchored slice of the same-named full tensor, so
    one rule covers every layer (and running statistics)."""
    small = build_from_arch(model.sub_arch(sub))
    full_state = model.state_dict()
    small_state = {
        name: full_state[name][tuple(slice(0, n) for n in tensor.shape)].clone()
        for name, tensor in small.state_dict().items()
    }
    small.load_state_dict(small_state)
    return small.to(next(model.parameters()).device)


def parameter_count(model: nn.Module, sub: SubModel) -> int:
    return sum(p.numel() for p in build_from_arch(model.sub_arch(sub)).parameters())


@torch.no_grad()
def mflops_per_image(model: nn.Module, sub: SubModel, image_shape=(3, 32, 32)) -> float:
    """Forward FLOPs of `sub` for one image, counted by torch.utils.flop_counter (2 per MAC)."""
    from torch.utils.flop_counter import FlopCounterMode

    device = next(model.parameters()).device
    x = torch.zeros(1, *image_shape, device=device)
    was_training = model.training
    model.eval()
    with FlopCounterMode(display=False) as counter:
        model(x, sub)
    model.train(was_training)
    return counter.get_total_flops() / 1e6
