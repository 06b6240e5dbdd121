"""A run directory has one writer: a second process is refused with one line naming the holder,
and nothing the holder wrote changes; a claim left by a killed process blocks nothing."""

from __future__ import annotations

import errno
import io
import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from sortednet_cli.engine import claim as claim_module
from sortednet_cli.engine.claim import CLAIM_FILE, claimed
from sortednet_cli.engine.train import train

from conftest import TINY, compose_config, run_cli

# Another process claims the directory given, says so, and holds it until its stdin closes.
HOLDER = """
import sys
directory = sys.argv[1]
sys.argv = ["sortednet", "train", "hydra.run.dir=" + directory]
from sortednet_cli.engine.claim import claimed
with claimed(directory):
    print("held", flush=True)
    sys.stdin.read()
"""


def hold(directory: Path) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(directory)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file() and p.name != CLAIM_FILE}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("claim") / "run"
    train(compose_config("train", [*TINY, "trainer.epochs=1", "trainer.max_steps=2"]), run_dir, console=Console(file=io.StringIO()))
    return run_dir


def test_every_writer_into_a_directory_in_use_is_refused_naming_the_holder(finished_run, tmp_path, capsys):
    before = snapshot(finished_run)
    holder = hold(finished_run)
    try:
        attempts = {
            "train into it": ["train", *TINY, f"hydra.run.dir={finished_run}"],
            "resume it": ["train", f"resume={finished_run}", f"hydra.run.dir={tmp_path / 'resume'}"],
            "eval-grid there": ["eval-grid", f"checkpoint={finished_run}", "eval.latency=false", f"hydra.run.dir={finished_run}"],
            "export there": ["export", f"checkpoint={finished_run}", "sub.width=1.0", "sub.depth=[2,2,2]", f"hydra.run.dir={finished_run}"],
        }
        for attempt, args in attempts.items():
            code, _, err = run_cli(args, capsys)
            lines = err.strip().splitlines()
            assert code == 2 and len(lines) == 1, (attempt, err)
            assert f"{finished_run.resolve()} is in use: pid {holder.pid} on {socket.gethostname()}" in lines[0], attempt
            assert f"`sortednet train hydra.run.dir={finished_run}`" in lines[0], attempt
        assert snapshot(finished_run) == before  # not one byte of the holder's run changed (.hydra/ included)
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert not (finished_run / CLAIM_FILE).exists()  # released when the holder finished


def test_a_claim_left_by_a_killed_process_does_not_block_a_resume(finished_run, tmp_path, capsys):
    holder = hold(finished_run)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    stale = json.loads((finished_run / CLAIM_FILE).read_text())
    assert stale["pid"] == holder.pid  # the killed process could not clean up
    code, out, err = run_cli(["train", f"resume={finished_run}", f"hydra.run.dir={tmp_path / 'resume'}"], capsys)
    assert code == 0, err
    assert f"resuming {finished_run}" in out
    assert not (finished_run / CLAIM_FILE).exists()


def test_a_process_claims_a_directory_it_holds_once(tmp_path):
    # The CLI claims train's run directory before Hydra writes there; train claims it again.
    with claimed(tmp_path):
        with claimed(tmp_path):
            pass
        holder = subprocess.run([sys.executable, "-c", HOLDER, str(tmp_path)], capture_output=True, text=True, timeout=60)
        assert holder.returncode != 0 and "is in use: pid" in holder.stderr  # still held by this process
    assert not (tmp_path / CLAIM_FILE).exists()


def test_a_file_system_without_locks_runs_unprotected_with_a_warning(tmp_path, monkeypatch, capsys):
    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(claim_module.fcntl, "flock", no_locks)
    with claimed(tmp_path / "run"):
        (tmp_path / "run" / "written").write_text("ok")
    assert f"cannot claim {tmp_path / 'run'} (No locks available)" in capsys.readouterr().err
