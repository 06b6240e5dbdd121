"""Checkpoints: written atomically, read with weights_only=True so a crafted file cannot run code.

A run keeps last.pt (one file: one process's, or rank 0's under ddp) or, under fsdp, last.dcp
(sharded: engine/sharded.py); every reader takes either."""

from __future__ import annotations

import dataclasses
import os
import pickle
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from ..config import TrainConfig
from ..errors import UserError
from ..models import FAMILIES
from ..renames import upgrade_config
from ..tasks import TASKS
from .optim import OPTIMIZERS, SCHEDULERS
from .sharded import SHARDED_NAME, is_sharded, load_sharded, read_meta

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
    """A .pt file, a sharded checkpoint's directory, or a run directory holding last.pt or last.dcp."""
    path = Path(location).expanduser()
    if path.is_dir() and not is_sharded(path):
        path = path / CHECKPOINT_NAME if (path / CHECKPOINT_NAME).is_file() or not (path / SHARDED_NAME).exists() else path / SHARDED_NAME
    if not (path.is_file() or is_sharded(path)):
        raise UserError(f"no checkpoint at {path}")
    return path


def load_weights(model: nn.Module, checkpoint: dict) -> None:
    """A checkpoint's weights into a plain model: last.pt's, or a sharded checkpoint's (read
    without a process group)."""
    if "sharded" in checkpoint:
        load_sharded(model, None, Path(checkpoint["sharded"]))
    else:
        model.load_state_dict(checkpoint["model"])


def load_checkpoint(location: str | os.PathLike, expected_format: str = TRAIN_FORMAT) -> dict:
    """The checkpoint as a dict; a sharded one's holds its meta.pt and, under "sharded", the
    directory its weights and optimizer state are read from (`load_weights`)."""
    path = resolve_checkpoint(location)
    try:
        data = read_meta(path.resolve()) if is_sharded(path) else torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(
            f"refused to load {path}: it holds objects other than tensors and plain data "
            "(not a sortednet-cli checkpoint, or a crafted file)"
        ) from None
    except UserError:  # a sharded checkpoint's shards missing
        raise
    except Exception as exc:  # a damaged file can fail in any layer of the unpickler
        raise UserError(f"{path} is not a readable checkpoint (truncated or damaged?): {exc}") from None
    if not isinstance(data, dict) or data.get("format") != expected_format:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise UserError(f"{path} is not a sortednet-cli checkpoint of this kind (format {found!r}, expected {expected_format!r})")
    return {**data, "sharded": str(path.resolve())} if is_sharded(path) else data
