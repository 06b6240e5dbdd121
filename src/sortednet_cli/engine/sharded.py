"""Sharded checkpoints (trainer.strategy=fsdp), written with torch.distributed.checkpoint.

`last.dcp` in the run directory is a symbolic link to the directory of the newest checkpoint:
every rank writes its shards of the weights and optimizer state there (a filesystem the ranks
share), rank 0 adds `meta.pt` (what last.pt holds besides them: config, architecture, schedule,
random state, step, task) and then points the link at it with one rename, so an interrupted save
leaves the previous checkpoint whole. Reading reshards: a checkpoint of N ranks resumes on M ranks
or in one process, and eval-grid, export and generate read the weights without a process group.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist
from torch import nn

from ..errors import UserError

SHARDED_NAME = "last.dcp"
META_NAME = "meta.pt"


def is_sharded(path: Path) -> bool:
    return (path / META_NAME).is_file() or (path.name == SHARDED_NAME and path.is_symlink())


def _process_group() -> bool:
    return dist.is_available() and dist.is_initialized()


def save_sharded(model: nn.Module, optimizer: torch.optim.Optimizer, meta: dict, run_dir: Path, is_main: bool) -> Path:
    """Every rank's shards and rank 0's meta.pt into a new directory, then the link moved to it
    (a collective call: every rank calls it at the same step)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    link = run_dir / SHARDED_NAME
    name = [_fresh_name(run_dir, meta["step"]) if is_main else None]
    dist.broadcast_object_list(name, src=0)
    target = run_dir / name[0]
    weights, optimizer_state = get_state_dict(model, optimizer)
    dcp.save({"model": weights, "optimizer": optimizer_state}, checkpoint_id=target)
    if is_main:
        torch.save(meta, target / (META_NAME + ".tmp"))
        os.replace(target / (META_NAME + ".tmp"), target / META_NAME)
        previous = link.resolve() if link.is_symlink() else None
        temporary = run_dir / (SHARDED_NAME + ".tmp")
        temporary.unlink(missing_ok=True)
        temporary.symlink_to(target.name)
        os.replace(temporary, link)
        if previous is not None and previous != target.resolve():
            shutil.rmtree(previous, ignore_errors=True)
    dist.barrier()
    return link


def _fresh_name(run_dir: Path, step: int) -> str:
    """A directory name no checkpoint uses (a resumed run may save the step it resumed from)."""
    count = 0
    while (run_dir / f"{SHARDED_NAME}.step{step}.{count}").exists():
        count += 1
    return f"{SHARDED_NAME}.step{step}.{count}"


def read_meta(path: Path) -> dict:
    """meta.pt of a sharded checkpoint, once its shard files are checked to be all there."""
    check_complete(path)
    return torch.load(path / META_NAME, map_location="cpu", weights_only=True)


def check_complete(path: Path) -> None:
    from torch.distributed.checkpoint import FileSystemReader

    if not (path / META_NAME).is_file():
        raise UserError(f"{path} is not a complete sharded checkpoint: it has no {META_NAME} (an unfinished save or copy?)")
    try:
        metadata = FileSystemReader(str(path)).read_metadata()
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} is not a complete sharded checkpoint: its .metadata cannot be read ({exc})") from None
    files = sorted({info.relative_path for info in metadata.storage_data.values()})
    missing = [name for name in files if not (path / name).is_file()]
    if missing:
        raise UserError(f"{path} is a sharded checkpoint missing {len(missing)} of its {len(files)} shard files "
                        f"({', '.join(missing)}); copy the whole directory")


def load_sharded(model: nn.Module, optimizer: Optional[torch.optim.Optimizer], path: Path) -> None:
    """The weights (and optimizer state) of a sharded checkpoint into `model`, sharded or plain,
    on any number of ranks or in a process without a process group (resharded as they load)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict, set_model_state_dict, set_state_dict

    check_complete(path)
    no_dist = not _process_group()
    if optimizer is None:
        state = {"model": get_model_state_dict(model)}
        dcp.load(state, checkpoint_id=path, no_dist=no_dist)
        set_model_state_dict(model, state["model"])
        return
    weights, optimizer_state = get_state_dict(model, optimizer)
    state = {"model": weights, "optimizer": optimizer_state}
    dcp.load(state, checkpoint_id=path, no_dist=no_dist)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


def load_full_into_sharded(model: nn.Module, optimizer: torch.optim.Optimizer, weights: dict, optimizer_state: dict) -> None:
    """A full checkpoint (last.pt: one process's or rank 0's) into a sharded model: every rank
    keeps its shard. The optimizer state is keyed by parameter index there, by name here."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    full = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, weights, options=full)
    names = {id(p): name for name, p in model.named_parameters()}
    state, groups = {}, []
    for saved, current in zip(optimizer_state["param_groups"], optimizer.param_groups):
        fqns = [names[id(p)] for p in current["params"]]
        for index, fqn in zip(saved["params"], fqns):
            if index in optimizer_state["state"]:
                state[fqn] = optimizer_state["state"][index]
        groups.append({**saved, "params": fqns})
    set_optimizer_state_dict(model, optimizer, {"state": state, "param_groups": groups}, options=full)


def remove(run_dir: Path) -> None:
    """The sharded checkpoint of a run that now writes last.pt (it changed strategy on resume)."""
    link = run_dir / SHARDED_NAME
    if link.is_symlink():
        target = link.resolve()
        link.unlink()
        shutil.rmtree(target, ignore_errors=True)
