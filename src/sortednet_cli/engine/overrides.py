"""Command-line overrides laid over a config stored in a checkpoint."""

from __future__ import annotations

from typing import Iterable, Sequence

from omegaconf import DictConfig, OmegaConf


def override_keys(overrides: Sequence[str]) -> list[str]:
    """'data.root=x' -> 'data.root'; '+a.b=1' -> 'a.b'; 'data=fake' -> 'data'."""
    return [override.split("=", 1)[0].lstrip("+~") for override in overrides]


def overlay(base: DictConfig, composed: DictConfig, keys: Iterable[str]) -> DictConfig:
    """`base` with the values `composed` has at `keys` (group choices before their own keys)."""
    merged = base.copy()
    for key in sorted(set(keys), key=lambda k: k.count(".")):
        OmegaConf.update(merged, key, OmegaConf.select(composed, key), merge=False)
    return merged
