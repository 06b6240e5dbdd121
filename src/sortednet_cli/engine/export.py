"""export: sub-models out of a training checkpoint as small standalone networks."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ..errors import UserError
from ..models import build_from_arch
from ..sorted.prefix_eval import preserved_buffers, recalibrate
from ..sorted.pool import build_pool
from ..sorted.submodel import SubModel, format_depth, parse_depth
from .checkpoint import load_checkpoint, save_atomic

EXPORT_FORMAT = "sortednet-cli/export/1"
# What an export keeps of its task's state: what a user of the small network needs to feed it
# and read it (an image folder's class names, normalisation and image size).
EXPORTED_TASK_KEYS = ("classes", "mean", "std", "image_size")
TASK_FILE = "task.json"


def exported_task(task_state: Optional[dict]) -> dict:
    return {key: task_state[key] for key in EXPORTED_TASK_KEYS if key in (task_state or {})}


def requested_submodels(sub_cfg, checkpoint_path: Path, depth_limits) -> list[SubModel]:
    """The sub-models `sub=one` (sub.width, sub.depth) or `sub=selected` (a selected.json) names,
    validated against the model like any pool."""
    if sub_cfg.kind.value == "one":
        depth = sub_cfg.depth
        depth = list(depth) if not isinstance(depth, (str, int)) else depth
        return list(build_pool("export", [sub_cfg.width], [depth], depth_limits))
    file = Path(sub_cfg.file) if sub_cfg.file else checkpoint_path.parent / "selected.json"
    if not file.is_file():
        raise UserError(f"no selection at {file}; run eval-grid first or pass sub.file=<selected.json>")
    try:
        rows = json.loads(file.read_text())["selected"]
        subs = [(float(r["width"]), list(parse_depth(r["depth"]))) for r in rows]
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{file} is not a selected.json of this tool ({exc})") from None
    if not subs:
        raise UserError(f"{file} selects no sub-model: nothing to export (lower the bar with sortednet select)")
    members = []
    for width, depth in subs:
        members.extend(build_pool("export", [width], [depth], depth_limits))
    return members


def export_one(model: nn.Module, sub: SubModel, calib_batches, recalibrate_bn: bool, source: Path, out_dir: Path,
               task: Optional[dict] = None) -> dict:
    """One sub-model as a .pt; `task` (exported_task of the checkpoint's task state) goes in with it."""
    with preserved_buffers(model):
        if recalibrate_bn:
            recalibrate(model, sub, calib_batches)
        small = model.extract(sub)
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in small.state_dict().items()}
    params = sum(p.numel() for p in small.parameters())
    path = out_dir / f"w{sub.width:g}_d{format_depth(sub.depth)}.pt"
    save_atomic(
        {
            "format": EXPORT_FORMAT,
            "arch": small.arch,
            "state_dict": state,
            "sub": sub.to_dict(),
            "params": params,
            "source": str(source),
            "bn_recalibrated": recalibrate_bn,
            **({"task": task} if task else {}),
        },
        path,
    )
    return {"width": sub.width, "depth": format_depth(sub.depth), "params": params, "bytes": os.path.getsize(path), "path": str(path)}


def export_hf_dir(model: nn.Module, sub: SubModel, tokenizer, out_dir: Path) -> Path:
    """A library-backed sub-model as a standard Hugging Face model directory beside its .pt."""
    directory = out_dir / f"w{sub.width:g}_d{format_depth(sub.depth)}"
    model.export_hf(sub, directory, tokenizer)
    return directory


def load_exported(path: str | os.PathLike) -> nn.Module:
    """An exported sub-model as a plain torch.nn.Module in eval mode (`model(x)` runs it); its
    `task` attribute holds what the export kept of its task (an image folder's `classes`, `mean`,
    `std`, `image_size`; empty for the other tasks)."""
    blob = load_checkpoint(path, expected_format=EXPORT_FORMAT)
    model = build_from_arch(blob["arch"])
    model.load_state_dict(blob["state_dict"])
    model.task = dict(blob.get("task", {}))
    return model.eval()


def full_model_bytes(model: nn.Module, out_dir: Path) -> int:
    """Size of the full network's weights alone, saved the same way (for comparison)."""
    probe = out_dir / ".full_weights.pt"
    torch.save({name: t.detach().cpu().contiguous() for name, t in model.state_dict().items()}, probe)
    size = os.path.getsize(probe)
    probe.unlink()
    return size
