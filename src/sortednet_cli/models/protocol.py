"""The model protocol: what the engine and the sorted machinery ask of a sorted network.

A model is stages of blocks (a CNN has several stages; a Transformer is one stage of L layers).
A sub-model `SubModel(width, depth)` runs the first `depth[s]` blocks of stage s, each keeping
the units a width gives it (the model owns that rounding: channels, heads, FFN units).
`tests/test_protocols.py` checks every registered model family against this class.
"""

from __future__ import annotations

from typing import Any, Optional, Protocol, runtime_checkable

import torch
from torch import nn

from ..sorted.submodel import SubModel


@runtime_checkable
class SortedModel(Protocol):
    arch: dict  # plain data that build_from_arch turns back into this network

    @property
    def depth_limits(self) -> tuple[int, ...]:
        """The most blocks each stage holds."""

    def units(self, width: float) -> dict:
        """Unit counts (channels, heads, FFN units...) of every layer group at `width`."""

    def unit_summary(self, width: float) -> str:
        """A short text of the units a width keeps, for tables: '8-16-32'."""

    def sub_arch(self, sub: SubModel) -> dict:
        """The architecture of `sub` as a standalone network (for build_from_arch)."""

    def forward(self, inputs: Any, sub: Optional[SubModel] = None) -> torch.Tensor:
        """Sub-model `sub` on views of the shared tensors; `sub=None`: the whole network."""

    def extract(self, sub: SubModel) -> nn.Module:
        """`sub` as a standalone network holding copies of its slices."""

    def recalibrated_norms(self) -> list[nn.Module]:
        """The norm layers whose running statistics evaluation must recompute per sub-model
        (BatchNorm); empty for norms without statistics (LayerNorm, GroupNorm)."""

    # The prefix protocol: a forward pass in pieces, so evaluation can share the work of
    # sub-models that agree on their first blocks.
    def run_stem(self, inputs: Any, width: float) -> torch.Tensor: ...

    def run_block(self, stage: int, index: int, hidden: torch.Tensor, width: float) -> torch.Tensor: ...

    def run_head(self, hidden: torch.Tensor, width: float) -> torch.Tensor: ...

    def block_module(self, stage: int, index: int) -> nn.Module:
        """The module whose buffers belong to one block (per-node statistics live there)."""

    def head_module(self) -> nn.Module:
        """The module whose buffers belong to the head."""
