"""Command-line overrides laid over a config stored in a checkpoint."""

from __future__ import annotations

from typing import Iterable, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..errors import UserError


def override_keys(overrides: Sequence[str]) -> list[str]:
    """'data.root=x' -> 'data.root'; '+a.b=1' -> 'a.b'; 'data=fake' -> 'data'."""
    return [override.split("=", 1)[0].lstrip("+~") for override in overrides]


def overlay(base: DictConfig, composed: DictConfig, keys: Iterable[str]) -> DictConfig:
    """`base` with the values `composed` has at `keys` (group choices before their own keys),
    each checked against `base`'s own schema."""
    merged = base.copy()
    for key in sorted(set(keys), key=lambda k: k.count(".")):
        try:
            OmegaConf.update(merged, key, OmegaConf.select(composed, key), merge=False)
        except OmegaConfBaseException as exc:
            section = key.split(".")[0]
            name = OmegaConf.select(base, f"{section}.name", default=None)
            where = f"{section} ({name})" if isinstance(name, str) else section
            raise UserError(f"{key}: not a key of this checkpoint's {where} or a bad value: {str(exc).splitlines()[0]}") from None
    return merged
