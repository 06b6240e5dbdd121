"""Renamed config keys: the old key on the command line is one line naming the new one, and what
earlier runs saved under the old names (checkpoint configs, run directories) still reads."""

from __future__ import annotations

import csv
import io
import json
import shutil

import pytest
import torch
from rich.console import Console

from omegaconf import OmegaConf

from sortednet_cli.engine.checkpoint import checkpoint_config, load_checkpoint
from sortednet_cli.engine.train import train
from sortednet_cli.renames import RENAMED_FIELDS, RENAMED_KEYS

from conftest import TINY, compose_config, run_cli

# The command each old key was set on.
OLD_KEYS = {
    "trainer.update": ("train", "all_exits"),
    "eval.calib_images": ("eval-grid", "64"),
    "bench.eval_images": ("bench", "16"),
    "bench.calib_images": ("bench", "16"),
    "select.min_accuracy": ("select", "0.8"),
    "trainer.channels_last": ("train", "false"),
    "trainer.amp": ("train", "true"),
}
# How an earlier version wrote what now has the new names: in the saved config, summary.json,
# grid.json and the checkpoint.
OLD_CONFIG = {"objective: sampled": "update: draws", "calib_examples: 128": "calib_images: 128", "metric_bar: null": "min_accuracy: 0.05",
              "precision: auto": "amp: true"}


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


def rename_fields(path, renames: dict) -> None:
    record = json.loads(path.read_text())
    path.write_text(json.dumps({renames.get(k, k): v for k, v in record.items()}))


@pytest.fixture(scope="module")
def old_run_dir(tmp_path_factory):
    """A tiny finished run with its grid, rewritten as an earlier version wrote it: the config
    (in the checkpoint and in .hydra/) under the old key names and values, summary.json and
    grid.json under the old field names, the checkpoint's example count under "images"."""
    run_dir = tmp_path_factory.mktemp("old")
    overrides = [*TINY, "trainer.epochs=1", "pool=full", "trainer.eval_grid=true", "eval.latency=false"]
    train(compose_config("train", overrides), run_dir, console=Console(file=io.StringIO()))
    path = run_dir / "last.pt"
    checkpoint = torch.load(path, weights_only=True)
    config = checkpoint["config"]
    for new, old in OLD_CONFIG.items():
        assert new in config
        config = config.replace(new, old)
    raw = OmegaConf.to_container(OmegaConf.create(config))
    raw["trainer"]["channels_last"] = raw["data"].pop("channels_last")  # the memory format was the trainer's
    config = OmegaConf.to_yaml(raw)
    checkpoint["config"] = config
    checkpoint["images"] = checkpoint.pop("examples")
    torch.save(checkpoint, path)
    (run_dir / ".hydra").mkdir()
    (run_dir / ".hydra" / "config.yaml").write_text(config)
    OmegaConf.save(OmegaConf.create(["pool=full"]), run_dir / ".hydra" / "overrides.yaml")
    old_fields = {new: old for old, new in RENAMED_FIELDS.items()}
    rename_fields(run_dir / "summary.json", old_fields)
    rename_fields(run_dir / "grid.json", old_fields)
    return run_dir


@pytest.fixture
def old_run(old_run_dir, tmp_path):
    """A copy of the old run for one test (resuming writes into it)."""
    return shutil.copytree(old_run_dir, tmp_path / "old_run")


def test_the_old_run_is_written_with_the_old_names(old_run):
    assert "images_per_second" in json.loads((old_run / "summary.json").read_text())
    grid = json.loads((old_run / "grid.json").read_text())
    assert "eval_images" in grid and "calib_images" in grid and "eval_examples" not in grid


def test_a_checkpoint_config_with_old_keys_reads_with_the_new_ones(old_run):
    cfg = checkpoint_config(load_checkpoint(old_run))
    assert cfg.trainer.objective.value == "sampled"
    assert (cfg.eval.calib_examples, cfg.select.metric_bar, cfg.data.channels_last) == (128, 0.05, True)
    assert cfg.trainer.precision.value == "auto"  # amp=true was bf16 autocast on CUDA alone
    for section, old in (("trainer", "update"), ("eval", "calib_images"), ("select", "min_accuracy"), ("trainer", "channels_last"), ("trainer", "amp")):
        assert old not in cfg[section]


def test_a_text_runs_old_trainer_channels_last_is_dropped():
    """Its data has no memory format: the old key moves nowhere, and the config still types."""
    raw = OmegaConf.to_container(compose_config("train", ["model=llama"]), resolve=True, enum_to_str=True)
    assert "channels_last" not in raw["data"]
    raw["trainer"]["channels_last"] = True
    cfg = checkpoint_config({"config": OmegaConf.to_yaml(raw)})
    assert "channels_last" not in cfg.trainer and "channels_last" not in cfg.data and cfg.data.name == "text"


def test_a_checkpoint_with_old_keys_evaluates_and_resumes(old_run, tmp_path, capsys):
    code, _, err = run_cli(["eval-grid", f"checkpoint={old_run}", "eval.latency=false", f"hydra.run.dir={tmp_path / 'grid'}"], capsys)
    assert code == 0, err
    assert (tmp_path / "grid" / "grid.csv").is_file() and (tmp_path / "grid" / "selected.json").is_file()
    old_speed = json.loads((old_run / "summary.json").read_text())["images_per_second"]
    # A finished run resumed runs its evaluation again; its training figures stand.
    code, _, err = run_cli(["train", f"resume={old_run}", "eval.latency=false", f"hydra.run.dir={tmp_path / 'resume'}"], capsys)
    assert code == 0, err
    summary = json.loads((old_run / "summary.json").read_text())
    assert summary["examples_per_second"] == old_speed and "images_per_second" not in summary
    # The run's own eval.* and select.* settings, saved as eval.calib_images and select.min_accuracy.
    assert json.loads((old_run / "grid.json").read_text())["calib_examples"] == 128
    assert json.loads((old_run / "selected.json").read_text())["bar"]["metric_bar"] == 0.05


def test_report_reads_an_old_run_directory(old_run, tmp_path, capsys):
    old = json.loads((old_run / "summary.json").read_text())
    old_grid = json.loads((old_run / "grid.json").read_text())
    code, out, err = run_cli(["report", f"runs=[{old_run}]", f"hydra.run.dir={tmp_path / 'report'}"], capsys)
    assert code == 0, err
    with open(tmp_path / "report" / "summary.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert float(row["examples_per_second"]) == pytest.approx(old["images_per_second"])
    assert row["status"] == "complete" and row["selected"] != ""
    # The noise line counts the baseline's evaluation examples, which grid.json named eval_images.
    assert f"on these {old_grid['eval_images']} evaluation examples" in " ".join(out.split())


def test_select_reads_an_old_grid(old_run, tmp_path, capsys):
    code, out, err = run_cli(["select", f"grid={old_run}", "select.metric_bar=0.05", "select.min_relative=null", f"hydra.run.dir={tmp_path / 'sel'}"], capsys)
    assert code == 0, err
    selected = json.loads((tmp_path / "sel" / "selected.json").read_text())
    assert selected["bar"]["metric_bar"] == 0.05 and selected["bar"]["min_relative"] is None


def test_an_old_amp_setting_reads_as_its_precision():
    from sortednet_cli.renames import upgrade_config

    assert [upgrade_config({"trainer": {"amp": amp}})["trainer"] for amp in (True, False)] == [{"precision": "auto"}, {"precision": "fp32"}]
