"""The CLI in-process: commands, overrides, multirun, and one-line errors for user mistakes."""

import csv
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO, TINY, compose_config, run_cli

# Every option of these groups composes into a train config: each conf/<group>/*.yaml, as found
# (a new option needs no list here).
GROUPS = ("model", "pool", "sampler", "data", "optim", "sched", "trainer", "logger", "experiment")
OPTIONS = [(group, path.stem) for group in GROUPS for path in sorted((REPO / "conf" / group).glob("*.yaml"))]
# Experiments that set a Transformer family's keys compose with that family.
EXPERIMENT_FAMILY = {"sst2_quick": "bert", "glue_paper": "bert", "shakespeare_quick": "llama", "shakespeare_spec": "llama", "imagenet_resnet50": "resnet50"}


@pytest.mark.parametrize("group, option", OPTIONS)
def test_every_config_group_option_composes(group, option):
    family = [f"model={EXPERIMENT_FAMILY[option]}"] if group == "experiment" and option in EXPERIMENT_FAMILY else []
    cfg = compose_config("train", [*family, f"{group}={option}"])
    if group not in ("experiment", "trainer", "sched"):
        assert cfg[group].name == option


def test_a_transformer_family_brings_its_training_defaults():
    cfg = compose_config("train", ["model=llama"])
    assert (cfg.pool.name, cfg.data.name, cfg.optim.name, cfg.sched.warmup_steps, cfg.trainer.objective) == ("exits", "text", "adamw", 200, "all_exits")
    cfg = compose_config("train", ["model=bert", "optim=sgd", "pool=enc_grid"])  # the command line still wins
    assert (cfg.pool.name, cfg.data.name, cfg.optim.name, cfg.trainer.objective) == ("enc_grid", "glue", "sgd", "sampled")


def test_the_options_found_include_every_default_of_train():
    """The composed options are read from conf/ itself: every group has some, and the train
    command's default of each group is among them (so the search looks where Hydra does)."""
    cfg = compose_config("train")
    assert {group for group, _ in OPTIONS} == set(GROUPS)
    for group in ("model", "pool", "sampler", "data", "optim", "logger"):
        assert (group, cfg[group].name) in OPTIONS


def test_help_lists_commands(capsys):
    code, out, _ = run_cli(["--help"], capsys)
    assert code == 0 and "train" in out and "describe" in out


def test_python_dash_m_behaves_like_the_console_script(tmp_path):
    by_module = subprocess.run([sys.executable, "-m", "sortednet_cli", "--help"], capture_output=True, text=True)
    by_script = subprocess.run([str(REPO / ".venv" / "bin" / "sortednet"), "--help"], capture_output=True, text=True) if (REPO / ".venv" / "bin" / "sortednet").exists() else by_module
    assert by_module.returncode == 0 and by_module.stdout == by_script.stdout


def test_describe_writes_one_row_per_sub_model(tmp_path, capsys):
    code, out, _ = run_cli(["describe", "pool=160", f"hydra.run.dir={tmp_path}"], capsys)
    assert code == 0
    with open(tmp_path / "pool.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["index", "width", "depth", "channels", "params", "mflops"]
    assert len(rows) == 160 and rows[-1]["depth"] == "2-2-2" and int(rows[-1]["params"]) == 219482
    assert "total: 160 sub-models" in out
    code, _, _ = run_cli(["describe", "pool=full", f"hydra.run.dir={tmp_path / 'full'}"], capsys)
    assert len((tmp_path / "full" / "pool.csv").read_text().splitlines()) == 2


def test_describe_mobilenetv2_pool_mbv2_has_80_rows(tmp_path, capsys):
    code, out, err = run_cli(["describe", "model=mobilenetv2", "pool=mbv2", f"hydra.run.dir={tmp_path}"], capsys)
    assert code == 0, err
    with open(tmp_path / "pool.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 80 and rows[-1]["depth"] == "1-2-3-4-3-3-1" and int(rows[-1]["params"]) == 2236682
    assert 175 < float(rows[-1]["mflops"]) < 177
    assert {r["depth"] for r in rows} == {"1-1-1-1-1-1-1", "1-2-2-2-2-2-1", "1-2-3-3-3-3-1", "1-2-3-4-3-3-1"}


def test_a_model_family_brings_its_defaults_and_the_command_line_wins():
    assert compose_config("train", ["model=mobilenetv2"]).pool.name == "mbv2"
    assert compose_config("train", ["model=mobilenetv2", "pool=mbv2_tiny"]).pool.name == "mbv2_tiny"
    assert compose_config("train", ["pool=tiny", "model=mobilenetv2"]).pool.name == "tiny"
    assert compose_config("describe", ["model=mobilenetv2"]).pool.name == "mbv2"
    today = compose_config("train", ["model=cpreresnet20", "pool=160"])
    assert today == compose_config("train", [])
    assert (today.pool.name, today.data.name, today.optim.name, today.optim.lr, today.sched.warmup_epochs) == ("160", "cifar10", "sgd", 0.1, 5)


def test_each_family_types_its_own_model_keys(capsys):
    code, _, err = run_cli(["describe", "model=mobilenetv2", "model.blocks_per_stage=3"], capsys)
    assert code == 2 and "blocks_per_stage" in err
    code, _, err = run_cli(["describe", "model=cpreresnet20", "model.norm=batch"], capsys)
    assert code == 2 and "model.norm" in err


def test_cfg_job_prints_the_composed_config(capsys):
    code, out, _ = run_cli(["train", "--cfg", "job", "pool=tiny", "trainer.grad_accum=4"], capsys)
    assert code == 0 and "grad_accum: 4" in out and "name: tiny" in out


def test_train_runs_from_the_cli_with_overrides(tmp_path, capsys):
    code, out, _ = run_cli(["train", *TINY, "trainer.epochs=1", f"hydra.run.dir={tmp_path}"], capsys)
    assert code == 0, out
    assert {"last.pt", "metrics.csv", "summary.json"} <= {p.name for p in tmp_path.iterdir()}
    assert (tmp_path / ".hydra" / "config.yaml").exists()
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == 16


def test_multirun_over_grad_accum_gives_one_run_per_value(tmp_path, capsys):
    code, out, _ = run_cli(["train", "-m", *TINY, "data.fake_train_size=128", "trainer.epochs=1", "trainer.grad_accum=1,2", f"hydra.sweep.dir={tmp_path}"], capsys)
    assert code == 0, out
    steps = [json.loads((tmp_path / str(job) / "summary.json").read_text())["steps"] for job in (0, 1)]
    assert steps == [4, 2]  # 4 batches of 32


@pytest.mark.parametrize(
    "args, message",
    [
        (["pool.widths=[0,1]"], "pool.widths: 0.0 is outside (0, 1]"),
        (["pool.widths=[0.5,1.5]"], "outside (0, 1]"),
        (["pool.depths=[3]"], "3-3-3 asks for 3 blocks in stage 1, which has 1..2"),
        (["pool.depths=[0]"], "which has 1..2"),
        (["pool.depths=[[1,2]]"], "needs 3 whole numbers"),
        (["pool.widths=[]"], "pool.widths is empty"),
        (["pool.depths=[1,1]"], "more than once"),
        (["trainer.grad_accum=0"], "trainer.grad_accum must be >= 1 (got 0)"),
        (["trainer.threads=-1"], "trainer.threads must be >= 0 (0 = torch's default), got -1"),
        (["trainer.foo=1"], "Key 'foo' not in 'TrainerConfig'"),
        (["trainer.grad_accum=two"], "Value 'two' of type 'str' could not be converted to Integer"),
        (["model.norm=batch"], "Invalid value 'batch', expected one of [bn, in, gn]"),
        (["pool=nope"], "Could not find 'pool/nope'"),
        (["optimizer=adam"], "Could not override 'optimizer'"),
        (["data=cifar10", "data.root=/nonexistent"], "CIFAR-10 not found: looked for /nonexistent/cifar-10-batches-py/"),
        (["resume=/nonexistent/run"], "no checkpoint at /nonexistent/run"),
        (["sampler=weighted", "sampler.weights=[1,2]"], "sampler.weights has 2 entries but the pool has 4"),
        (["trainer.device=cuda"] if not torch.cuda.is_available() else ["trainer.epochs=0"], "trainer."),
    ],
)
def test_bad_input_is_one_line_with_exit_code_2(tmp_path, capsys, args, message):
    code, out, err = run_cli(["train", *TINY, *args, f"hydra.run.dir={tmp_path / 'run'}"], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("sortednet: error: ") and message in lines[0]
    assert not (tmp_path / "run" / "last.pt").exists()


@pytest.mark.parametrize("command", ["generate", "bench-decode", "bench"])
def test_a_negative_thread_count_is_one_line_for_every_command(tmp_path, capsys, command):
    code, _, err = run_cli([command, "threads=-1", f"hydra.run.dir={tmp_path}"], capsys)
    assert code == 2 and err.strip().splitlines() == ["sortednet: error: threads must be >= 0 (0 = torch's default), got -1"]
    assert not {"generation.json", "decode.json", "bench.json"} & {p.name for p in tmp_path.iterdir()}


def test_omegaconfs_empty_group_assertion_is_one_line_and_any_other_assertion_is_raised(tmp_path, capsys, monkeypatch):
    """An override under a group with no option chosen trips OmegaConf's assertion: one line.
    An AssertionError of anything else is a bug and keeps its traceback. Either way cli.main
    gives back the sys.argv and HYDRA_FULL_ERROR it set for Hydra."""
    code, out, err = run_cli(["eval-grid", "checkpoint=/nonexistent", "pool.widths=[1.0]", f"hydra.run.dir={tmp_path / 'run'}"], capsys)
    assert code == 2 and out == "" and err.startswith("sortednet: error: an override sets a key under a config group with no option chosen")
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "run").exists()

    from sortednet_cli import cli
    from sortednet_cli.commands import describe

    seen = {}

    def app():
        seen.update(argv=sys.argv[:], full_error=os.environ.get("HYDRA_FULL_ERROR"))
        raise AssertionError("a bug of ours")

    monkeypatch.setattr(describe, "main", app)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    argv = sys.argv[:]
    with pytest.raises(AssertionError, match="a bug of ours"):
        cli.main(["describe", "pool=160,full"])
    assert seen == {"argv": ["sortednet describe", "pool='160',full"], "full_error": "1"}
    assert sys.argv == argv and "HYDRA_FULL_ERROR" not in os.environ


def test_resume_from_something_that_is_not_a_checkpoint(tmp_path, capsys):
    not_a_checkpoint = tmp_path / "notes.pt"
    not_a_checkpoint.write_text("hello")
    code, _, err = run_cli(["train", f"resume={not_a_checkpoint}", f"hydra.run.dir={tmp_path / 'run'}"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "not a readable checkpoint" in err
    assert not_a_checkpoint.read_text() == "hello"


def test_corrupt_dataset_is_one_line(tmp_path, capsys):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
        (folder / name).write_bytes(b"\x80\x02garbage")
    code, _, err = run_cli(["train", f"data.root={tmp_path}", "data.verify=false", f"hydra.run.dir={tmp_path / 'run'}"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "could not be read" in err


def test_unknown_command(capsys):
    code, _, err = run_cli(["trian"], capsys)
    assert code == 2 and "unknown command 'trian'" in err


def test_a_failing_sweep_job_does_not_stop_the_others(tmp_path, capsys):
    # The second job's grad_accum is invalid; the first and third still run.
    code, _, err = run_cli(["train", "-m", *TINY, "data.fake_train_size=128", "trainer.epochs=1", "trainer.grad_accum=1,0,2", f"hydra.sweep.dir={tmp_path}"], capsys)
    assert code == 2
    assert err.strip().splitlines()[-1] == "sortednet: error: trainer.grad_accum must be >= 1 (got 0)"
    assert (tmp_path / "0" / "summary.json").is_file() and (tmp_path / "2" / "summary.json").is_file()
    assert not (tmp_path / "1" / "summary.json").exists()
