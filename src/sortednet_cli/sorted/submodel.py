"""A sub-model: a width and a per-stage depth, both counted from the origin of the shared weights.

Nothing here knows about convolutions: a model only has to say how many stages it has and how
many blocks (layers) each stage holds at most.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True, order=True)
class SubModel:
    width: float
    depth: tuple[int, ...]

    @property
    def label(self) -> str:
        return f"w={self.width:g} d={format_depth(self.depth)}"

    def to_dict(self) -> dict:
        return {"width": self.width, "depth": list(self.depth)}

    @classmethod
    def from_dict(cls, row: dict) -> "SubModel":
        return cls(float(row["width"]), tuple(int(d) for d in row["depth"]))


def full_submodel(depth_limits: Sequence[int]) -> SubModel:
    """The whole network: width 1 with every stage at its full depth."""
    return SubModel(1.0, tuple(depth_limits))


def scaled(channels: int, width: float) -> int:
    """Channels kept at `width`: the first max(1, round_half_up(channels * width))."""
    # The small epsilon keeps 0.15 * 20 = 2.9999999999999996 from rounding down.
    return max(1, math.floor(channels * width + 0.5 + 1e-9))


def format_depth(depth: Sequence[int]) -> str:
    return "-".join(str(d) for d in depth)


def parse_depth(text: str) -> tuple[int, ...]:
    """Inverse of format_depth: '1-2-2' -> (1, 2, 2)."""
    try:
        return tuple(int(part) for part in str(text).split("-"))
    except ValueError:
        raise ValueError(f"not a depth like 1-2-2: {text!r}") from None


def depth_order_key(depth: Sequence[int]) -> tuple:
    """The depth axis order: by total blocks, then lexicographic (111, 112, 121, 211, 122, ...)."""
    return (sum(depth), tuple(depth))
