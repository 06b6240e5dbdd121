"""Model registries: a config's `model.name` -> a builder of the full sorted network, and an
architecture description's `name` -> the class that rebuilds it (full or standalone)."""

from __future__ import annotations

from torch import nn

from ..registry import Registry

MODELS = Registry("model.name", group="model")
ARCHITECTURES = Registry("architecture")


def build_model(cfg) -> nn.Module:
    """The full-size sorted network for a `model` config."""
    return MODELS.get(cfg.name)(cfg)


def build_from_arch(arch: dict) -> nn.Module:
    kwargs = dict(arch)
    return ARCHITECTURES.get(kwargs.pop("name", None))(**kwargs)
