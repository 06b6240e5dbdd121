"""MobileNetV2, the second model family, through the same commands as cPreResNet: a sweep,
the grid, select, export + load_exported and report."""

import csv
import json

import torch

from sortednet_cli import load_exported
from sortednet_cli.engine.eval_grid import load_trained
from sortednet_cli.engine.evaluate import EvalData, evaluate_pool
from sortednet_cli.sorted.pool import build_pool
from sortednet_cli.sorted.submodel import SubModel
from sortednet_cli.tasks import build_task

from conftest import compose_config, run_cli

MBV2 = [
    "model=mobilenetv2", "pool=mbv2_tiny", "data=fake", "data.fake_train_size=128", "data.fake_test_size=64",
    "trainer.epochs=2", "trainer.batch_size=32", "trainer.device=cpu", "sched.warmup_epochs=0",
    "eval.latency=false", "eval.calib_examples=64", "select.min_relative=0.5",
]


def test_mobilenetv2_sweep_grid_export_and_report(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    code, _, err = run_cli(["train", "-m", *MBV2, "trainer.grad_accum=1,2", f"hydra.sweep.dir={sweep}"], capsys)
    assert code == 0, err
    job = sweep / "0"
    with open(job / "grid.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["width"], r["depth"]) for r in rows] == [
        ("0.25", "1-1-1-1-1-1-1"), ("0.25", "1-2-3-4-3-3-1"), ("1.0", "1-1-1-1-1-1-1"), ("1.0", "1-2-3-4-3-3-1")]
    assert json.loads((job / "grid.json").read_text())["full"] == {"width": 1.0, "depth": "1-2-3-4-3-3-1"}

    # the checkpoint's own data settings, a data.* key laid over them (checked against its schema)
    code, _, err = run_cli(["export", f"checkpoint={job}", "data.fake_test_size=64", "eval.calib_examples=64",
                            "sub.width=0.25", "sub.depth=1", f"hydra.run.dir={tmp_path / 'export'}"], capsys)
    assert code == 0, err
    small = load_exported(tmp_path / "export" / "w0.25_d1-1-1-1-1-1-1.pt")
    run = load_trained(job, torch.device("cpu"))
    cfg = compose_config("train", MBV2)
    data = EvalData.from_task(build_task(cfg.data, cfg.model, torch.device("cpu")), cfg.eval)
    sub = SubModel(0.25, (1,) * 7)
    grid_accuracy = evaluate_pool(run.model, build_pool("one", [0.25], [1], run.model.depth_limits), data, cfg.eval)[sub]
    with torch.no_grad():
        correct = sum(int((small(x).argmax(1) == y).sum()) for x, y in data.eval_batches())
    assert correct / data.eval_size == grid_accuracy
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in run.model.parameters()) / 10

    code, out, err = run_cli(["report", f"sweep_dir={sweep}"], capsys)
    assert code == 0, err
    with open(sweep / "summary.csv", newline="") as f:
        summary = list(csv.DictReader(f))
    assert len(summary) == 2 and all(row["status"] == "complete" and row["full_accuracy"] for row in summary)
