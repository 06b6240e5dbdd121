"""Model registries: a config's `model.name` -> a builder of the full sorted network, and an
architecture description's `name` -> the class that rebuilds it (full or standalone)."""

from __future__ import annotations

from typing import Optional

from torch import nn

from ..registry import Registry

MODELS = Registry("model.name", group="model")
ARCHITECTURES = Registry("architecture")


def build_model(cfg, fields: Optional[dict] = None) -> nn.Module:
    """The full-size sorted network for a `model` config; `fields` are what the task decides
    about the model (a text task's vocabulary size and label count: `task.model_fields()`)."""
    return MODELS.get(cfg.name)(cfg, **(fields or {}))


def build_from_arch(arch: dict) -> nn.Module:
    kwargs = dict(arch)
    return ARCHITECTURES.get(kwargs.pop("name", None))(**kwargs)
