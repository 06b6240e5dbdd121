"""A run directory has one writer.

A process that writes into a run directory first claims it: an exclusive `flock` on
`<dir>/.claim.json`, a file that says who holds it (pid, host, command, since when). The kernel
drops the lock when the process ends, however it ends (kill -9 included), so a claim left behind
by a dead process blocks nothing: the next claimer takes the lock and rewrites the file. While
the holder lives, a second claimer is refused with one line naming it.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

from ..errors import UserError

CLAIM_FILE = ".claim.json"

# This process's claims: run directory -> the descriptor holding its lock. A process may claim
# a directory it already holds (train into the directory the CLI claimed for it): one claim.
_held: dict[Path, int] = {}


def claim(directory) -> bool:
    """Claim `directory` (created if missing) for this process; False when this process already
    holds it, or when its file system has no locks (then with a warning)."""
    directory = Path(directory).resolve()
    if directory in _held:
        return False
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CLAIM_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UserError(_refusal(directory, path)) from None
        except OSError as exc:  # a file system without flock (some cluster mounts): run unprotected
            os.close(fd)
            print(f"sortednet: warning: cannot claim {directory} ({exc.strerror}): nothing stops a second process writing there", file=sys.stderr)
            return False
        if _still_there(fd, path):
            break
        os.close(fd)  # the holder released and removed the file we opened: claim a fresh one
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps(_holder()).encode())
    _held[directory] = fd
    return True


def release(directory) -> None:
    directory = Path(directory).resolve()
    fd = _held.pop(directory)
    # Removed while still locked: a claimer that opened it meanwhile sees it gone and makes a fresh one.
    with contextlib.suppress(FileNotFoundError):
        os.unlink(directory / CLAIM_FILE)
    os.close(fd)


def release_all() -> None:
    for directory in list(_held):
        release(directory)


@contextlib.contextmanager
def claimed(directory) -> Iterator[None]:
    """Hold `directory` for the duration (released at the end if claimed here)."""
    acquired = claim(directory)
    try:
        yield
    finally:
        if acquired:
            release(directory)


def _still_there(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def _holder() -> dict:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": " ".join(sys.argv),
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
    }


def _refusal(directory: Path, path: Path) -> str:
    return (f"{directory} is in use: {_who(path)} writes there; wait for it to finish or stop it, "
            "or write elsewhere (another hydra.run.dir)")


def _who(path: Path) -> str:
    for _ in range(20):  # the holder writes who it is just after it takes the lock
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            holder = json.loads(path.read_text())
            return f"pid {holder['pid']} on {holder['host']} (`{holder['command']}`, since {holder['started']})"
        time.sleep(0.05)
    return "another process"
