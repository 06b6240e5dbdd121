"""sortednet bench wiring: a miniature run writes every figure (timings are not asserted), times
the engine's own training step, and runs on an image folder against torchvision's ImageFolder."""

import json
import math
from pathlib import Path

import pytest
import torch

from sortednet_cli.engine import bench as engine_bench
from sortednet_cli.engine import train as engine_train
from sortednet_cli.tasks.image.bench import ImageBench, plain_folder_dataset

from conftest import compose_config, run_cli
from test_image_folder import write_tree

TINY_COUNTS = [
    "bench.rounds=1",
    "bench.steps=1",
    "bench.batch_size=32",
    "bench.workers=0",
    "bench.eval_examples=16",
    "bench.calib_examples=16",
    "bench.grid_rounds=1",
    "device=cpu",
]
TINY_BENCH = ["data=fake", "data.fake_train_size=256", "data.fake_test_size=64", *TINY_COUNTS]
# comparison 1 (one engine side), the epoch cost (two), the memory formats (two widths x two formats)
ENGINE_SIDES = 1 + 2 + 2 * 2


def finite_positive(values) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in values)


def check_image_figures(report: dict, widths: set) -> None:
    assert finite_positive([report[key] for key in ("train_speedup", "grid_speedup", "sorted_over_full_epoch")])
    assert set(report["train_images_per_second"]) == {"project", "reference"}
    for key in ("train_images_per_second", "epoch_seconds_estimate", "grid_seconds"):
        assert finite_positive(report[key].values()), (key, report[key])
    assert report["grid_same_accuracy"] is True
    assert report["torch"] and report["device"].startswith("cpu")
    # the memory formats compared at the pool's widest and narrowest width
    assert set(report["memory_format"]) == widths
    assert all(finite_positive(v.values()) for v in report["memory_format"].values())
    assert all(len(t["runs_s"]) == report["settings"]["rounds"] for t in report["raw"]["train"].values())


def test_bench_writes_every_ratio_and_times_the_engines_own_step(tmp_path, capsys, monkeypatch):
    calls = {"train_step": 0, "flush": 0}
    real_step, real_flush = engine_train.train_step, engine_bench.flush

    def counted_step(run, plan):
        calls["train_step"] += 1
        return real_step(run, plan)

    def counted_flush(*args):
        calls["flush"] += 1
        return real_flush(*args)

    monkeypatch.setattr(engine_train, "train_step", counted_step)  # what train.advance calls
    monkeypatch.setattr(engine_bench, "flush", counted_flush)
    code, out, err = run_cli(["bench", *TINY_BENCH, f"hydra.run.dir={tmp_path}"], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "bench.json").read_text())
    check_image_figures(report, {"1", "0.05"})
    assert "image_folder" not in report
    # every engine side ran its warm-up and one timed round of one step, each through the loop's
    # own train_step, and each segment ended with a flush of its losses
    assert calls["train_step"] == ENGINE_SIDES * 2 and calls["flush"] >= ENGINE_SIDES * 2
    assert report["pool"] == "160"
    for row in ("1. training images/s, pool=160", "2. grid eval of pool=160", "3. epoch time", "4. training step at w=1"):
        assert row in out
    assert "1/4 training throughput" in out and "4/4 training step by memory format" in out


def test_the_engine_loop_steps_the_scheduler_and_flushes_its_losses():
    cfg = compose_config("bench", [*TINY_BENCH, "pool=tiny", "trainer.log_every=2"])
    ctx = engine_bench.open_context(cfg, torch.device("cpu"), None, Path("."))
    with ctx.engine_loop(ctx.pool) as loop:
        before = [p.detach().clone() for p in loop.model.parameters()]
        loop.steps(3)
        assert loop.state.done == 3 and loop.run.scheduler.last_epoch == 3
        assert loop.state.pending == [] and len(loop.state.last_losses) == 1  # flushed at step 2 and at the end
        assert loop.run.optimizer is not None and type(loop.run.optimizer).__name__ == cfg.optim.name.upper()
        assert any(not torch.equal(a, b) for a, b in zip(before, loop.model.parameters()))
        assert loop.model.training


def test_bench_rejects_bad_settings(tmp_path, capsys):
    code, _, err = run_cli(["bench", *TINY_BENCH, "bench.rounds=0", f"hydra.run.dir={tmp_path}"], capsys)
    assert code == 2 and "bench.rounds must be >= 1" in err


def test_bench_refuses_data_it_cannot_run_on_in_one_line(tmp_path, capsys):
    code, _, err = run_cli(["bench", "data=text", f"hydra.run.dir={tmp_path}"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "sortednet bench reads data=" in err


# --- data=image_folder: the engine's step against torchvision's ImageFolder + DataLoader ------


@pytest.mark.parametrize("cache", ["memory", "stream"])
def test_bench_on_an_image_folder_against_torchvisions_image_folder(tmp_path, capsys, cache):
    root = write_tree(tmp_path / "tree", train=16, jpeg_every=None)
    args = ["data=image_folder", f"data.root={root}", "data.image_size=16", "data.workers=0", f"data.cache={cache}",
            "pool=tiny", *TINY_COUNTS, "bench.batch_size=16", f"hydra.run.dir={tmp_path / 'bench'}"]
    code, out, err = run_cli(["bench", *args], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "bench" / "bench.json").read_text())
    check_image_figures(report, {"1", "0.5"})
    assert report["data"] == "image_folder"
    folder = report["image_folder"]
    assert folder["mode"] == ("cached" if cache == "memory" else "streamed")
    assert (folder["train_images"], folder["eval_images"], folder["classes"], folder["image_size"]) == (48, 12, 3, 16)
    assert folder["reference"] == "torchvision.datasets.ImageFolder + DataLoader"
    assert "plain ImageFolder loop" in out and f"({folder['mode']})" in out
    # the rows name the pool the bench ran, not the default's
    assert report["pool"] == "tiny" and "1. training images/s, pool=tiny" in out and "pool=160" not in out


def test_the_plain_image_folder_reads_the_tasks_training_files_at_its_size(tmp_path):
    root = write_tree(tmp_path / "tree", train=16, val=0, jpeg_every=None)  # no val/: a share of each class is held out
    cfg = compose_config("bench", ["data=image_folder", f"data.root={root}", "data.image_size=24", "data.val_fraction=0.25",
                                   "data.workers=0", "data.train_subset=30"])
    from sortednet_cli.tasks import build_task

    task = build_task(cfg.data, cfg.model, torch.device("cpu"))
    dataset = plain_folder_dataset(task)
    assert len(dataset) == len(task.train) == 30
    assert {Path(path).resolve() for path, _ in dataset.samples} == {Path(p).resolve() for p in task.train_files.files}
    image, label = dataset[0]
    assert image.shape == (3, 24, 24) and dataset.classes == task.classes
    # its labels are the task's: the same class index for the same file
    labels = dict(zip((Path(p).resolve() for p in task.train_files.files), task.train_files.labels.tolist()))
    assert all(labels[Path(path).resolve()] == index for path, index in dataset.samples)
    ImageBench().check(cfg)
