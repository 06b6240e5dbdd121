"""Run directories under outputs/: the newest train run, grid and sweep that commands default to."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .checkpoint import CHECKPOINT_NAME, SHARDED_NAME


def _newest(candidates: list[Path], missing: str) -> Path:
    """The most recently modified candidate; UserError(missing) when there is none."""
    if not candidates:
        raise UserError(missing)
    return max(candidates, key=lambda p: p.stat().st_mtime)


def newest_train_run(outputs: Path = Path("outputs")) -> Path:
    candidates = [path for name in (CHECKPOINT_NAME, SHARDED_NAME)
                  for path in (*outputs.glob(f"train/*/{name}"), *outputs.glob(f"multirun/train/*/*/{name}"))]
    missing = f"no train run with a {CHECKPOINT_NAME} or {SHARDED_NAME} under {outputs.resolve()}; pass checkpoint=<run dir or .pt>"
    return _newest(candidates, missing).parent


def newest_grid(outputs: Path = Path("outputs")) -> Path:
    missing = f"no grid.csv under {outputs.resolve()}; pass grid=<grid.csv or its directory>"
    return _newest(list(outputs.glob("**/grid.csv")), missing)


def newest_sweep(root: Path = Path("outputs/multirun/train")) -> Path:
    sweeps = [p for p in root.glob("*") if p.is_dir()] if root.is_dir() else []
    missing = f"no train sweep under {root.resolve()}; pass sweep_dir=<multirun dir> or runs=[<run dir>,...]"
    return _newest(sweeps, missing)
