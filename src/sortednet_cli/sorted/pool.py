"""The pool: the list of sub-models a run trains and evaluates, in grid order."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Sequence

from ..errors import UserError
from ..values import is_int, is_number
from .submodel import SubModel, depth_order_key, format_depth


@dataclass(frozen=True)
class Pool:
    name: str
    members: tuple[SubModel, ...]

    def __len__(self) -> int:
        return len(self.members)

    def __iter__(self):
        return iter(self.members)

    @property
    def widths(self) -> list[float]:
        return sorted({s.width for s in self.members})

    @property
    def largest(self) -> SubModel:
        return self.members[-1]

    @property
    def smallest(self) -> SubModel:
        return self.members[0]

    def to_dict(self) -> dict:
        return {"name": self.name, "members": [s.to_dict() for s in self.members]}

    @classmethod
    def from_dict(cls, data: dict) -> "Pool":
        return cls(str(data["name"]), tuple(SubModel.from_dict(m) for m in data["members"]))


def all_depths(depth_limits: Sequence[int]) -> list[tuple[int, ...]]:
    settings = itertools.product(*(range(1, limit + 1) for limit in depth_limits))
    return sorted(settings, key=depth_order_key)


def _one_depth(entry: Any, depth_limits: Sequence[int]) -> tuple[int, ...]:
    stages = len(depth_limits)
    if entry == "max":
        return tuple(depth_limits)
    if not (is_int(entry) or isinstance(entry, (list, tuple))):
        raise UserError(
            f"pool.depths: {entry!r} is not a depth (use an int k, a per-stage list like "
            f"{list(depth_limits)}, or 'max')"
        )
    depth = (entry,) * stages if isinstance(entry, int) else tuple(entry)
    if len(depth) != stages or not all(is_int(d) for d in depth):
        raise UserError(
            f"pool.depths: {list(depth)} needs {stages} whole numbers, one block count per stage"
        )
    for stage, (d, limit) in enumerate(zip(depth, depth_limits), start=1):
        if not 1 <= d <= limit:
            raise UserError(
                f"pool.depths: {format_depth(depth)} asks for {d} blocks in stage {stage}, "
                f"which has 1..{limit}"
            )
    return depth


def build_pool(name: str, widths: Sequence[Any], depths: Any, depth_limits: Sequence[int]) -> Pool:
    """Validate a pool spec against a model's depth limits and list its sub-models in grid order:
    widths ascending, then depth settings in depth order."""
    widths = list(widths)
    if not widths:
        raise UserError("pool.widths is empty: a pool needs at least one width")
    for w in widths:
        if not is_number(w) or not 0 < w <= 1:
            raise UserError(f"pool.widths: {w!r} is outside (0, 1]")
    if len(set(widths)) != len(widths):
        repeated = sorted({w for w in widths if widths.count(w) > 1})
        raise UserError(f"pool.widths lists {repeated} more than once")

    if depths == "all":
        settings = all_depths(depth_limits)
    elif isinstance(depths, (list, tuple)):
        if not depths:
            raise UserError("pool.depths is empty: a pool needs at least one depth")
        settings = [_one_depth(entry, depth_limits) for entry in depths]
        if len(set(settings)) != len(settings):
            repeated = sorted({format_depth(d) for d in settings if settings.count(d) > 1})
            raise UserError(f"pool.depths lists {repeated} more than once")
    else:
        raise UserError(f"pool.depths must be 'all' or a list, not {depths!r}")

    members = [
        SubModel(float(w), d)
        for w in sorted(widths)
        for d in sorted(settings, key=depth_order_key)
    ]
    return Pool(name, tuple(members))


def pool_from_config(pool_cfg, depth_limits: Sequence[int]) -> Pool:
    """The pool a `pool` config node describes (name, widths, depths)."""
    from omegaconf import OmegaConf

    spec = OmegaConf.to_container(pool_cfg, resolve=True)
    return build_pool(spec["name"], spec["widths"], spec["depths"], depth_limits)
