"""Renamed config keys: the old key on the command line is one line naming the new one, and what
earlier runs saved under the old names (checkpoint configs, run directories) still reads."""

from __future__ import annotations

import io

import pytest
import torch
from rich.console import Console

from sortednet_cli.engine.checkpoint import checkpoint_config, load_checkpoint
from sortednet_cli.engine.train import train
from sortednet_cli.renames import RENAMED_KEYS

from conftest import TINY, compose_config, run_cli

# The command each old key was set on.
OLD_KEYS = {
    "trainer.update": ("train", "all_exits"),
}


def test_every_renamed_key_is_tested():
    assert set(OLD_KEYS) == set(RENAMED_KEYS)


@pytest.mark.parametrize("old", sorted(OLD_KEYS))
@pytest.mark.parametrize("prefix", ["", "+"])
def test_an_old_key_on_the_command_line_is_one_line_naming_the_new_one(old, prefix, tmp_path, capsys):
    command, value = OLD_KEYS[old]
    code, out, err = run_cli([command, f"{prefix}{old}={value}", f"hydra.run.dir={tmp_path / 'out'}"], capsys)
    assert code == 2 and out == ""
    assert err == f"sortednet: error: {old} was renamed to {RENAMED_KEYS[old]}\n"
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def old_run(tmp_path_factory):
    """A tiny finished run whose checkpoint is rewritten as an earlier version saved it: its
    config under the old key names and values."""
    run_dir = tmp_path_factory.mktemp("old")
    train(compose_config("train", [*TINY, "trainer.epochs=1"]), run_dir, console=Console(file=io.StringIO()))
    path = run_dir / "last.pt"
    checkpoint = torch.load(path, weights_only=True)
    config = checkpoint["config"]
    assert "objective: sampled" in config
    checkpoint["config"] = config.replace("objective: sampled", "update: draws")
    torch.save(checkpoint, path)
    return run_dir


def test_a_checkpoint_config_with_old_keys_reads_with_the_new_ones(old_run):
    cfg = checkpoint_config(load_checkpoint(old_run))
    assert cfg.trainer.objective.value == "sampled"
    assert "update" not in cfg.trainer


def test_a_checkpoint_with_old_keys_evaluates_and_resumes(old_run, tmp_path, capsys):
    code, _, err = run_cli(["eval-grid", f"checkpoint={old_run}", "eval.latency=false", f"hydra.run.dir={tmp_path / 'grid'}"], capsys)
    assert code == 0, err
    assert (tmp_path / "grid" / "grid.csv").is_file() and (tmp_path / "grid" / "selected.json").is_file()
    # A finished run resumed runs its evaluation again.
    code, _, err = run_cli(["train", f"resume={old_run}", "trainer.eval_grid=true", "eval.latency=false", f"hydra.run.dir={tmp_path / 'resume'}"], capsys)
    assert code == 0, err
    assert (old_run / "grid.csv").is_file()
