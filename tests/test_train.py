import csv
import functools
import io
import json
import math
import os
import pickle
import signal
import time

import pytest
import torch
from rich.console import Console

import sortednet_cli.engine.train as train_module
from sortednet_cli.engine.checkpoint import load_checkpoint
from sortednet_cli.engine.train import train
from sortednet_cli.errors import UserError
from sortednet_cli.reports.loggers import METRIC_COLUMNS

from conftest import TINY, compose_config


def quiet():
    return Console(file=io.StringIO(), width=120)


def run(tmp_path, *overrides, name="run"):
    cfg = compose_config("train", [*TINY, *overrides])
    return train(cfg, tmp_path / name, console=quiet())


@pytest.fixture
def tmp_run(tmp_path):
    (tmp_path / "run").mkdir()
    return tmp_path


def test_tiny_fake_run_learns_and_writes_its_files(tmp_run):
    result = run(tmp_run, "trainer.epochs=4")
    run_dir = tmp_run / "run"
    summary = json.loads((run_dir / "summary.json").read_text())
    for key in ("final_loss", "steps", "examples_per_second", "wall_seconds", "quick_eval"):
        assert key in summary
    assert summary["steps"] == 4 * (512 // 32)
    assert [(q["width"], q["depth"]) for q in summary["quick_eval"]] == [(1.0, "2-2-2"), (1.0, "1-1-1"), (0.5, "1-1-1")]
    assert all(0 <= q["accuracy"] <= 1 for q in summary["quick_eval"])
    assert summary["quick_eval"][0]["accuracy"] > 0.3  # chance is 0.1
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == METRIC_COLUMNS
    assert len(rows) == summary["steps"]  # one draw per step
    assert {r["depth"] for r in rows} <= {"1-1-1", "2-2-2"}
    assert load_checkpoint(run_dir)["step"] == summary["steps"]
    assert result.summary == summary


def test_grad_accum_logs_every_draw(tmp_run):
    run(tmp_run, "trainer.epochs=1", "trainer.grad_accum=3", "logger=csv")
    with open(tmp_run / "run" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    # 16 mini-batches in groups of 3: five steps of 3 draws, then one of 1
    expected = [(step, draw) for step in range(1, 6) for draw in range(3)] + [(6, 0)]
    assert [(int(r["step"]), int(r["draw"])) for r in rows] == expected


def test_accum_same_batch_takes_one_batch_per_step(tmp_run):
    result = run(tmp_run, "trainer.epochs=1", "trainer.grad_accum=2", "trainer.accum_same_batch=true")
    assert result.summary["steps"] == 16


def interrupt_at(monkeypatch, call_number):
    """Press Ctrl-C (a real SIGINT) during the given optimizer step."""
    calls = {"n": 0}
    original = train_module.sorted_update

    def update(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call_number:
            os.kill(os.getpid(), signal.SIGINT)
        return original(*args, **kwargs)

    monkeypatch.setattr(train_module, "sorted_update", update)


@pytest.mark.parametrize("extra", [[], ["trainer.grad_accum=2", "sampler=sandwich"]])
def test_interrupted_and_resumed_run_ends_with_the_same_weights(tmp_path, monkeypatch, extra):
    # 8 batches an epoch: the first case resumes within epoch 1 and crosses into epoch 2, the second within epoch 2
    overrides = ["data.fake_train_size=256", "trainer.epochs=2", "trainer.log_every=3", *extra]
    straight = run(tmp_path, *overrides, name="straight")

    interrupt_at(monkeypatch, 5)
    stopped = run(tmp_path, *overrides, name="stopped")
    assert stopped.interrupted and load_checkpoint(tmp_path / "stopped")["step"] == 5
    monkeypatch.undo()
    resumed = train(compose_config("train", [*TINY, *overrides, f"resume={tmp_path / 'stopped'}"]), tmp_path / "elsewhere", console=quiet())

    assert resumed.run_dir == tmp_path / "stopped"
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "stopped")
    assert a["step"] == b["step"]
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    with open(tmp_path / "straight" / "metrics.csv") as f1, open(tmp_path / "stopped" / "metrics.csv") as f2:
        losses = lambda f: [(r["step"], r["draw"], r["loss"]) for r in csv.DictReader(f)]
        assert losses(f1) == losses(f2)
    assert straight.summary["quick_eval"] == resumed.summary["quick_eval"]


def test_resume_refuses_to_change_the_run(tmp_run):
    run(tmp_run, "data.fake_train_size=128", "trainer.epochs=1")
    cfg = compose_config("train", [*TINY, "data.fake_train_size=128", f"resume={tmp_run / 'run'}", "pool=160"])
    with pytest.raises(UserError, match="'pool=160' cannot change when resuming"):
        train(cfg, tmp_run / "other", overrides=["pool=160", f"resume={tmp_run / 'run'}"], console=quiet())


class Exploit:
    def __reduce__(self):
        return (os.system, ("touch exploited",))


def test_a_crafted_checkpoint_cannot_run_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"format": "sortednet-cli/train/1", "model": Exploit()}, tmp_path / "evil.pt")
    with open(tmp_path / "evil_plain.pt", "wb") as f:
        pickle.dump(Exploit(), f)
    for name in ("evil.pt", "evil_plain.pt"):
        with pytest.raises(UserError, match="refused to load"):
            load_checkpoint(tmp_path / name)
    assert not (tmp_path / "exploited").exists()


def test_foreign_and_damaged_checkpoints_are_named(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="not a sortednet-cli checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    (tmp_path / "cut.pt").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(UserError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "cut.pt")
    with pytest.raises(UserError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing")


def test_a_diverging_run_stops_naming_step_and_sub_model(tmp_run):
    with pytest.raises(UserError, match=r"loss became (nan|inf) at step \d+ on sub-model w=[\d.]+ d=[\d-]+"):
        run(tmp_run, "optim.lr=1e30", "trainer.log_every=1")
    assert not (tmp_run / "run" / "last.pt").exists()


def test_wandb_logger_runs_offline(tmp_run, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run(tmp_run, "data.fake_train_size=128", "trainer.epochs=1", "logger=wandb")
    assert (tmp_run / "run" / "metrics.csv").exists()
    assert list((tmp_run / "run" / "wandb").glob("offline-run-*"))


@pytest.mark.parametrize("norm", ["in", "gn"])
def test_norm_variants_train_with_per_example_norms_and_nothing_to_recalibrate(tmp_run, norm):
    """model.norm=in|gn puts that norm in every place BatchNorm was: the trained network holds no
    running statistics (so evaluation recalibrates nothing) and, unlike BatchNorm, an example's
    training-mode output does not depend on the rest of its batch."""
    from sortednet_cli.models import build_model
    from sortednet_cli.models.layers import SlicedBatchNorm2d, SlicedGroupNorm, SlicedInstanceNorm2d
    from sortednet_cli.sorted.submodel import SubModel

    result = run(tmp_run, "data.fake_train_size=128", "trainer.epochs=1", f"model.norm={norm}", name="run")
    model = result.model
    kind = {"in": SlicedInstanceNorm2d, "gn": SlicedGroupNorm}[norm]
    bn_count = sum(isinstance(m, SlicedBatchNorm2d) for m in build_model(compose_config("train", TINY).model).modules())
    assert sum(isinstance(m, kind) for m in model.modules()) == bn_count > 0
    assert not any(isinstance(m, SlicedBatchNorm2d) for m in model.modules()) and model.recalibrated_norms() == []
    assert not [k for k in model.state_dict() if "running" in k or "num_batches_tracked" in k]
    assert math.isfinite(result.summary["final_loss"])
    assert all(not torch.equal(m.weight, torch.ones_like(m.weight)) for m in model.modules() if isinstance(m, kind))  # trained from 1

    x = torch.randn(4, 3, 32, 32)
    sub = SubModel(0.5, (1, 2, 1))
    model.train()
    with torch.no_grad():
        torch.testing.assert_close(model(x, sub)[:1], model(x[:1], sub), rtol=1e-4, atol=1e-5)
        bn = build_model(compose_config("train", TINY).model).train()
        assert not torch.allclose(bn(x, sub)[:1], bn(x[:1], sub), rtol=1e-3, atol=1e-3)


def test_tiny_real_cifar10_run_beats_chance(tmp_run, cifar10_root):
    result = run(
        tmp_run,
        "data=cifar10",
        f"data.root={cifar10_root}",
        "data.verify=false",
        "data.train_subset=1280",
        "data.val_size=1000",
        "data.eval_split=val",
        "pool=full",
        "trainer.epochs=2",
        "trainer.batch_size=32",  # 80 steps on 1,280 images: 27.6% measured here (chance is 10%)
        "optim.lr=0.05",
    )
    assert result.summary["quick_eval"][0]["accuracy"] > 0.2


def test_resuming_a_finished_run_keeps_its_training_figures(tmp_run):
    first = run(tmp_run, "data.fake_train_size=128", "trainer.epochs=1")
    again = train(compose_config("train", [*TINY, "data.fake_train_size=128", "trainer.epochs=1", f"resume={tmp_run / 'run'}"]), tmp_run / "x", console=quiet())
    for key in ("final_loss", "examples_per_second", "steps"):
        assert again.summary[key] == first.summary[key]


def test_bad_eval_settings_fail_before_training(tmp_run):
    for override, message in [("eval.batch_size=0", "eval.batch_size must be >= 1"), ("eval.calib_examples=0", "eval.calib_examples must be >= 1"),
                              ("eval.baseline=/nonexistent", "no checkpoint at /nonexistent")]:
        with pytest.raises(UserError, match=message):
            run(tmp_run, override)
        assert not (tmp_run / "run" / "metrics.csv").exists()


@pytest.mark.parametrize("channels_last", [True, False])
def test_the_model_gets_the_memory_format_asked_for(tmp_run, monkeypatch, channels_last):
    """data.channels_last decides the memory format of every batch that reaches the model,
    in training (augmented batches come out of the crop gather in channels_last order) and in
    the evaluation."""
    from sortednet_cli.models.preresnet import PreResNet

    seen = set()
    original_stem = PreResNet.run_stem  # every forward, whole or in prefix pieces, starts here

    def record(x):
        if len(x) == 1:  # FLOPs are counted on one zero image, forward only
            return
        seen.add("channels_last" if x.is_contiguous(memory_format=torch.channels_last) else
                 "nchw" if x.is_contiguous() else "other")

    monkeypatch.setattr(PreResNet, "run_stem", lambda self, x, width: (record(x), original_stem(self, x, width))[1])
    run(tmp_run, "data.fake_train_size=128", "trainer.epochs=1", "trainer.eval_grid=true", "eval.latency=false", f"data.channels_last={str(channels_last).lower()}")
    assert seen == {"channels_last" if channels_last else "nchw"}


def test_resume_may_change_the_memory_format(tmp_path, monkeypatch):
    """A run started with one memory format (say, one that hung) continues with the other: the
    continuation starts from the checkpoint (its first losses are the uninterrupted run's, up to
    float rounding, which later steps amplify) and runs to the end."""
    short = ["data.fake_train_size=256", "trainer.epochs=2"]  # 16 steps
    straight = run(tmp_path, *short, name="straight")
    interrupt_at(monkeypatch, 5)
    run(tmp_path, *short, name="stopped")
    monkeypatch.undo()
    overrides = [f"resume={tmp_path / 'stopped'}", "data.channels_last=false"]
    resumed = train(compose_config("train", [*TINY, *short, *overrides]), tmp_path / "x", overrides=overrides, console=quiet())
    assert resumed.summary["steps"] == straight.summary["steps"] == load_checkpoint(tmp_path / "stopped")["step"]
    losses = {}
    for name in ("straight", "stopped"):
        with open(tmp_path / name / "metrics.csv") as f:
            losses[name] = {int(r["step"]): float(r["loss"]) for r in csv.DictReader(f)}
    assert losses["straight"].keys() == losses["stopped"].keys()
    for step in (6, 7):  # the first steps after the resume
        assert losses["stopped"][step] == pytest.approx(losses["straight"][step], rel=1e-4)


def test_a_stalled_step_is_reported_with_its_sub_model(tmp_run, monkeypatch, caplog):
    """The watchdog reads a clock of the test's own: each reading a millisecond, and step 12 a
    minute; a loaded machine's slow ordinary steps cannot reach the bar."""
    clock = {"now": 0.0}

    def read_clock() -> float:
        clock["now"] += 0.001
        return clock["now"]

    original = train_module.sorted_update
    calls = {"n": 0}

    def update(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 12:
            clock["now"] += 60.0
            time.sleep(1.0)  # the watchdog, polling every 0.1 s, sees the step running
        return original(*args, **kwargs)

    monkeypatch.setattr(train_module, "sorted_update", update)
    monkeypatch.setattr(train_module, "StallWatchdog", functools.partial(train_module.StallWatchdog, clock=read_clock))
    console = quiet()
    cfg = compose_config("train", [*TINY, "trainer.epochs=1", "trainer.stall_factor=3", "trainer.stall_seconds=0.4"])
    with caplog.at_level("WARNING", logger="sortednet"):
        train(cfg, tmp_run / "run", console=console)
    warnings = [r.getMessage() for r in caplog.records if "has run for" in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].startswith("step 12 has run for") and "it trains w=" in warnings[0]
    assert f"sortednet train resume={tmp_run / 'run'}" in warnings[0] and "kill the process" in warnings[0]
    assert "step 12 finished after" in console.file.getvalue()


def test_inplace_distillation_trains_and_refuses_what_cannot_work(tmp_run):
    result = run(tmp_run, "data.fake_train_size=128", "trainer.epochs=1", "sampler=sandwich", "trainer.grad_accum=2", "trainer.accum_same_batch=true",
                 "trainer.distill=inplace", "trainer.distill_temperature=2", "trainer.distill_alpha=0.5")
    assert result.summary["final_loss"] > 0
    with open(tmp_run / "run" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert all((r["width"], r["depth"]) == ("1.0", "2-2-2") for r in rows if r["draw"] == "0")  # the teacher first
    for overrides, message in [
        (["sampler=sandwich", "trainer.grad_accum=2"], "needs trainer.accum_same_batch=true"),
        (["sampler=uniform", "trainer.grad_accum=2", "trainer.accum_same_batch=true"], "needs the largest sub-model \\(w=1 d=2-2-2\\) in every step"),
    ]:
        with pytest.raises(UserError, match=message):
            run(tmp_run, "trainer.distill=inplace", *overrides, name="refused")


def test_max_steps_caps_the_run_and_the_schedule(tmp_run):
    result = run(tmp_run, "trainer.epochs=3", "trainer.max_steps=5", "trainer.eval_grid=false")
    assert result.summary["steps"] == result.summary["total_steps"] == 5
    with open(tmp_run / "run" / "metrics.csv", newline="") as f:
        lrs = [float(r["lr"]) for r in csv.DictReader(f)]
    assert len(lrs) == 5 and lrs[-1] < lrs[0] / 2  # the cosine ran out over the 5 steps
