"""Checkpoints: written atomically, read with weights_only=True so a crafted file cannot run code."""

from __future__ import annotations

import dataclasses
import os
import pickle
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ..config import TrainConfig
from ..errors import UserError
from ..models import FAMILIES
from ..renames import upgrade_config
from ..tasks import TASKS
from .optim import OPTIMIZERS, SCHEDULERS

TRAIN_FORMAT = "sortednet-cli/train/1"
CHECKPOINT_NAME = "last.pt"


def checkpoint_config(checkpoint: dict) -> DictConfig:
    """The typed training config a checkpoint was written with: the plug-in nodes (model, data,
    optimizer, schedule) typed by their own schemas, keys added since filled with defaults and
    keys renamed since under their new names."""
    raw = OmegaConf.to_container(OmegaConf.create(checkpoint["config"]))
    plugins = {"model": FAMILIES, "data": TASKS, "optim": OPTIMIZERS, "sched": SCHEDULERS}

    def has_key(section: str, key: str) -> bool:
        schema = plugins[section].schema(raw[section]["name"]) if section in plugins else None
        return schema is None or key in {f.name for f in dataclasses.fields(schema)}

    saved = OmegaConf.create(upgrade_config(raw, has_key))
    cfg = OmegaConf.merge(OmegaConf.structured(TrainConfig), saved)
    for key, registry in plugins.items():
        cfg[key] = registry.typed(saved[key].name, saved[key])
    return cfg


def save_atomic(obj: Any, path: Path) -> None:
    """Write to a temporary file beside `path`, then rename: a crash never leaves half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def resolve_checkpoint(location: str | os.PathLike) -> Path:
    """A .pt file, or a run directory holding last.pt."""
    path = Path(location).expanduser()
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}")
    return path


def load_checkpoint(location: str | os.PathLike, expected_format: str = TRAIN_FORMAT) -> dict:
    path = resolve_checkpoint(location)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(
            f"refused to load {path}: it holds objects other than tensors and plain data "
            "(not a sortednet-cli checkpoint, or a crafted file)"
        ) from None
    except Exception as exc:  # a damaged file can fail in any layer of the unpickler
        raise UserError(f"{path} is not a readable checkpoint (truncated or damaged?): {exc}") from None
    if not isinstance(data, dict) or data.get("format") != expected_format:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise UserError(f"{path} is not a sortednet-cli checkpoint of this kind (format {found!r}, expected {expected_format!r})")
    return data
