"""The JSON files runs leave behind (summary, grid, selection, bench, caches): one format."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional


def read_json(path: Path) -> Optional[Any]:
    """The file's content; None when it does not exist or is still being written."""
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except json.JSONDecodeError:
        return None


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")
