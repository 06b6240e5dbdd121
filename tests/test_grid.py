"""eval-grid, select and export."""

import csv
import io
import json
import os
import shutil

import pytest
import torch
from rich.console import Console

from sortednet_cli import load_exported
from sortednet_cli.engine.evaluate import EvalData, evaluate_pool
from sortednet_cli.engine.eval_grid import load_trained
from sortednet_cli.engine.train import train
from sortednet_cli.sorted.pool import pool_from_config
from sortednet_cli.errors import UserError
from sortednet_cli.jsonfiles import write_json
from sortednet_cli.models.preresnet import cpreresnet
from sortednet_cli.reports.grid_report import grid_columns
from sortednet_cli.sorted.prefix_eval import preserved_buffers, recalibrate
from sortednet_cli.sorted.pool import build_pool
from sortednet_cli.sorted.selection import pareto_front, select
from sortednet_cli.sorted.submodel import SubModel
from sortednet_cli.tasks import build_task
from sortednet_cli.tasks.image.task import ACCURACY

from conftest import TINY, compose_config, prefix_tree_outputs, run_cli

FAST_EVAL = ["eval.latency=false", "eval.calib_examples=128", "data.test_subset=128"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny pool trained for a few epochs on fake data (no grid)."""
    run_dir = tmp_path_factory.mktemp("trained")
    train(compose_config("train", [*TINY, "trainer.epochs=3"]), run_dir, console=Console(file=io.StringIO()))
    return run_dir


def eval_data(model, *overrides, calib=128, n=128):
    cfg = compose_config("train", [*TINY, f"eval.calib_examples={calib}", f"data.test_subset={n}", *overrides])
    task = build_task(cfg.data, cfg.model, torch.device("cpu"))
    return cfg, EvalData.from_task(task, cfg.eval)


def randomized_bn_model(norm="bn"):
    torch.manual_seed(0)
    model = cpreresnet(2, norm, 10, 8).to(memory_format=torch.channels_last)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0.5, 0.3)
    return model


def test_prefix_tree_logits_equal_each_sub_model_run_alone():
    model = randomized_bn_model()
    depths = [(1, 1, 1), (1, 2, 1), (2, 1, 2), (2, 2, 2), (1, 2, 2)]
    calib = torch.randn(64, 3, 32, 32) * 1.3 + 0.2
    images = torch.randn(16, 3, 32, 32)
    shared = prefix_tree_outputs(model, 0.45, depths, list(calib.split(32)), images)
    with torch.no_grad():
        for depth in depths:
            sub = SubModel(0.45, depth)
            with preserved_buffers(model):
                recalibrate(model, sub, lambda: [(chunk, None) for chunk in calib.split(32)])
                alone = model(images, sub)
            torch.testing.assert_close(shared[depth], alone, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("pool_name", ["tiny", "160"])
def test_shared_and_naive_give_the_same_accuracy(trained, pool_name):
    run = load_trained(trained, torch.device("cpu"))
    cfg, model = run.cfg, run.model
    pool = pool_from_config(compose_config("describe", [f"pool={pool_name}"]).pool, model.depth_limits)
    n = 128 if pool_name == "tiny" else 16  # 160 sub-models, each recalibrated and evaluated twice
    _, data = eval_data(model, calib=n, n=n)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    shared = evaluate_pool(model, pool, data, cfg.eval, "shared")
    naive = evaluate_pool(model, pool, data, cfg.eval, "naive")
    assert shared == naive
    assert len(shared) == len(pool)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # buffers restored


def test_recalibration_changes_only_batch_norm_models_and_is_reproducible(trained):
    run = load_trained(trained, torch.device("cpu"))
    cfg, model, pool = run.cfg, run.model, run.pool
    _, data = eval_data(model)
    running = compose_config("train", ["eval.bn=running"]).eval
    recal = evaluate_pool(model, pool, data, cfg.eval)
    assert recal == evaluate_pool(model, pool, data, cfg.eval)
    assert recal != evaluate_pool(model, pool, data, running)

    gn = randomized_bn_model("gn")
    assert not gn.recalibrated_norms()
    assert evaluate_pool(gn, pool, data, cfg.eval) == evaluate_pool(gn, pool, data, running)


def hand_grid():
    rows = []
    for w, d, cost, acc in [
        (0.25, "1-1-1", 1.0, 0.50),
        (0.25, "2-2-2", 2.0, 0.80),
        (0.5, "1-1-1", 2.0, 0.80),  # exact tie with the row above
        (0.5, "2-2-2", 3.0, 0.79),  # dearer and worse: off the front
        (1.0, "1-1-1", 4.0, 0.90),
        (1.0, "2-2-2", 8.0, 0.95),
    ]:
        rows.append({"width": w, "depth": d, "mflops": cost, "params": int(cost * 1000), "accuracy": acc, "relative": acc / 0.95, "latency_ms_bs1": None, "latency_ms_bs256": None})
    return rows


def test_selection_pareto_front_ties_and_narrowest_per_depth():
    result = select(hand_grid(), ACCURACY, baseline=0.95, metric_bar=None, min_relative=0.8, cost_name="mflops")
    assert result["bar"]["accuracy"] == pytest.approx(0.76)
    assert [(r["width"], r["depth"]) for r in result["selected"]] == [(0.25, "2-2-2"), (0.5, "1-1-1"), (0.5, "2-2-2"), (1.0, "1-1-1"), (1.0, "2-2-2")]
    assert [(r["width"], r["depth"]) for r in result["pareto"]] == [(0.25, "2-2-2"), (0.5, "1-1-1"), (1.0, "1-1-1"), (1.0, "2-2-2")]
    assert {r["depth"]: r["width"] for r in result["narrowest_per_depth"]} == {"1-1-1": 0.5, "2-2-2": 0.25}


def test_selection_bar_is_the_higher_of_absolute_and_relative_and_budget():
    result = select(hand_grid(), ACCURACY, 0.95, metric_bar=0.85, min_relative=0.5, cost_name="params", budget=4500)
    assert result["bar"]["accuracy"] == 0.85
    assert len(result["selected"]) == 2
    assert result["budget"]["best"]["width"] == 1.0 and result["budget"]["best"]["depth"] == "1-1-1"
    assert result["budget"]["passes_bar"]


def test_empty_selection_is_an_answer():
    result = select(hand_grid(), ACCURACY, 0.95, metric_bar=0.99, min_relative=None, cost_name="mflops")
    assert result["selected"] == [] and result["pareto"] == [] and result["best"]["accuracy"] == 0.95


def test_bad_bars_and_missing_costs():
    with pytest.raises(UserError, match="min_relative must be in"):
        select(hand_grid(), ACCURACY, 0.95, None, 1.5, "mflops")
    with pytest.raises(UserError, match="select.metric_bar must be in"):
        select(hand_grid(), ACCURACY, 0.95, 80, None, "mflops")
    with pytest.raises(UserError, match="needs the latency_ms_bs1 column"):
        select(hand_grid(), ACCURACY, 0.95, None, 0.9, "latency")


def test_pareto_front_of_identical_points_keeps_both():
    a = {"mflops": 1.0, "accuracy": 0.5}
    b = dict(a)
    assert pareto_front([a, b], "mflops", ACCURACY) == [a, b]


def test_eval_grid_cli_writes_grid_selection_and_pictures(trained, tmp_path, capsys):
    out = tmp_path / "grid"
    code, stdout, err = run_cli(["eval-grid", f"checkpoint={trained}", "data=fake", "eval.latency_repeats=1", "eval.calib_examples=128", "data.test_subset=128", f"hydra.run.dir={out}"], capsys)
    assert code == 0, err
    with open(out / "grid.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == grid_columns("accuracy") and len(rows) == 4
    assert all(float(r["latency_ms_bs1"]) > 0 and float(r["latency_ms_bs256"]) > 0 for r in rows)
    meta = json.loads((out / "grid.json").read_text())
    assert len(meta["rows"]) == 4 and meta["baseline"]["source"] == "this checkpoint's full model"
    full = next(r for r in rows if r["width"] == "1.0" and r["depth"] == "2-2-2")
    assert float(full["relative"]) == pytest.approx(1.0)
    selected = json.loads((out / "selected.json").read_text())
    assert {"selected", "pareto", "bar"} <= set(selected)
    assert (out / "grid.png").stat().st_size > 10_000 and (out / "selection.png").stat().st_size > 10_000
    assert "baseline" in stdout

    # select with a new bar re-selects from the csv alone
    code, stdout, err = run_cli(["select", f"grid={out}", "select.metric_bar=0.999", "select.min_relative=null", f"hydra.run.dir={tmp_path / 'sel'}"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "sel" / "selected.json").read_text())["selected"] == []
    assert "no sub-model reaches the bar" in stdout


def test_eval_grid_defaults_to_the_newest_train_run_and_a_baseline_run(trained, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    newest = tmp_path / "outputs" / "train" / "2026-01-01_00-00-00"
    shutil.copytree(trained, newest)
    code, stdout, err = run_cli(["eval-grid", "data=fake", *FAST_EVAL, f"eval.baseline={trained}", "pool=tiny", "hydra.run.dir=g"], capsys)
    assert code == 0, err
    assert "using the newest train run, outputs/train/2026-01-01_00-00-00" in stdout
    meta = json.loads((tmp_path / "g" / "grid.json").read_text())
    assert meta["baseline"]["source"] == f"full model of {trained}"
    assert (trained / "baseline.json").is_file()  # cached for the next grid


def test_export_round_trip_is_smaller_and_scores_the_same(trained, tmp_path, capsys):
    code, _, err = run_cli(["export", f"checkpoint={trained}", "eval.calib_examples=128", "sub.width=0.5", "sub.depth=[1,1,1]", f"hydra.run.dir={tmp_path}"], capsys)
    assert code == 0, err
    path = tmp_path / "w0.5_d1-1-1.pt"
    small = load_exported(path)
    assert isinstance(small, torch.nn.Module) and not small.training
    run = load_trained(trained, torch.device("cpu"))
    cfg, model = run.cfg, run.model
    sub = SubModel(0.5, (1, 1, 1))
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters()) / 3
    assert os.path.getsize(path) < os.path.getsize(trained / "last.pt") / 3

    _, data = eval_data(model, calib=128, n=128)
    grid_accuracy = evaluate_pool(model, build_pool("one", [0.5], [1], (2, 2, 2)), data, cfg.eval)[sub]
    correct = sum(int((small(x).argmax(1) == y).sum()) for x, y in data.eval_batches())
    assert correct / data.eval_size == grid_accuracy

    # plain torch: the state dict alone loads into the model class, no pool or sampler code
    from sortednet_cli.models.preresnet import PreResNet

    blob = torch.load(path, weights_only=True)
    plain = PreResNet(**{k: v for k, v in blob["arch"].items() if k != "name"})
    plain.load_state_dict(blob["state_dict"])


def test_export_selected_writes_one_file_per_selected_sub_model(trained, tmp_path, capsys):
    grid_dir = tmp_path / "grid"
    assert run_cli(["eval-grid", f"checkpoint={trained}", "data=fake", *FAST_EVAL, "select.min_relative=0.5", f"hydra.run.dir={grid_dir}"], capsys)[0] == 0
    selected = json.loads((grid_dir / "selected.json").read_text())["selected"]
    code, _, err = run_cli(["export", f"checkpoint={trained}", "eval.calib_examples=128", "sub=selected", f"sub.file={grid_dir / 'selected.json'}", f"hydra.run.dir={tmp_path / 'ex'}"], capsys)
    assert code == 0, err
    assert len(list((tmp_path / "ex").glob("w*_d*.pt"))) == len(selected) > 0


def test_select_on_a_lower_is_better_grid_uses_the_baseline_grid_json_records(tmp_path, capsys):
    """A loss grid's bar is a ceiling: baseline / min_relative, with the baseline grid.json
    records (the relative column holds baseline / value, which is not value / baseline)."""
    metric = {"name": "loss", "higher_is_better": False, "lower": 0.0, "upper": None}
    cells = [(0.5, "1-1-1", 1.0, 1.0), (0.5, "2-2-2", 2.0, 0.7), (1.0, "1-1-1", 3.0, 0.6), (1.0, "2-2-2", 4.0, 0.5)]
    with open(tmp_path / "grid.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, grid_columns("loss"))
        writer.writeheader()
        writer.writerows({"width": w, "depth": d, "params": int(c * 1000), "mflops": c, "loss": v, "relative": 0.5 / v,
                          "latency_ms_bs1": "", "latency_ms_bs256": ""} for w, d, c, v in cells)
    write_json(tmp_path / "grid.json", {"metric": metric, "baseline": {"loss": 0.5, "source": "given number"}, "full": {"width": 1.0, "depth": "2-2-2"}})
    code, _, err = run_cli(["select", f"grid={tmp_path}", "select.min_relative=0.8", f"hydra.run.dir={tmp_path / 'sel'}"], capsys)
    assert code == 0, err
    selected = json.loads((tmp_path / "sel" / "selected.json").read_text())
    assert selected["bar"]["loss"] == pytest.approx(0.5 / 0.8) and selected["bar"]["baseline"] == 0.5
    assert [(r["width"], r["depth"]) for r in selected["selected"]] == [(1.0, "1-1-1"), (1.0, "2-2-2")]


@pytest.mark.parametrize(
    "args, message",
    [
        (["eval-grid", "checkpoint=/nonexistent"], "no checkpoint at /nonexistent"),
        (["eval-grid", "CKPT", "pool=tiny", "pool.depths=[3]"], "asks for 3 blocks in stage 1"),
        (["eval-grid", "CKPT", "pool.widths=[1.0]"], "choose one first"),
        (["eval-grid", "CKPT", "eval.baseline=1.7"], "eval.baseline=1.7 must be an accuracy"),
        (["eval-grid", "CKPT", "select.min_relative=1.5"], "select.min_relative must be in (0, 1]"),
        (["eval-grid", "CKPT", "data.bogus=1"], "Key 'bogus' not in 'ImageDataConfig'"),
        (["export", "CKPT", "sub.width=1.5"], "outside (0, 1]"),
        (["export", "CKPT", "sub.depth=[1,3,1]"], "asks for 3 blocks in stage 2"),
        (["export", "CKPT", "sub=selected", "sub.file=/nonexistent.json"], "no selection at /nonexistent.json"),
        (["select", "grid=/nonexistent"], "no grid at /nonexistent"),
        (["select", "grid=BADGRID"], "is not a grid: missing columns"),
        (["select", "grid=LONEGRID"], "lone.csv has no complete lone.json beside it (eval-grid writes both, with metric, baseline, full)"),
    ],
)
def test_bad_input_is_one_line(trained, tmp_path, capsys, args, message):
    bad_grid = tmp_path / "bad.csv"
    bad_grid.write_text("width,depth,accuracy\n1.0,2-2-2,0.5\n")
    write_json(tmp_path / "bad.json", {"metric": ACCURACY.to_dict(), "baseline": {"accuracy": 0.5}, "full": {"width": 1.0, "depth": "2-2-2"}})
    lone_grid = tmp_path / "lone.csv"
    lone_grid.write_text(",".join(grid_columns("accuracy")) + "\n1.0,2-2-2,10,1.0,0.5,1.0,1.0,1.0\n")
    args = [a.replace("CKPT", f"checkpoint={trained}").replace("BADGRID", str(bad_grid)).replace("LONEGRID", str(lone_grid)) for a in args]
    code, _, err = run_cli([*args, "data=fake", *FAST_EVAL, f"hydra.run.dir={tmp_path / 'run'}"] if args[0] != "select" else [*args, f"hydra.run.dir={tmp_path / 'run'}"], capsys)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and message in err
    assert not (tmp_path / "run" / "grid.csv").exists()


@pytest.mark.parametrize("override", ["data.bogus=1", "data.test_subset=many"])
def test_data_keys_without_a_data_option_are_checked_against_the_checkpoints_data(trained, tmp_path, capsys, override):
    code, _, err = run_cli(["eval-grid", f"checkpoint={trained}", override, *FAST_EVAL[:2], f"hydra.run.dir={tmp_path}"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"{override.split('=')[0]}: not a key of this checkpoint's data (fake) or a bad value" in err


def test_a_crafted_export_file_is_refused(tmp_path):
    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'exploited'}",))

    torch.save({"format": "sortednet-cli/export/1", "arch": Exploit()}, tmp_path / "evil.pt")
    with pytest.raises(UserError, match="refused to load"):
        load_exported(tmp_path / "evil.pt")
    assert not (tmp_path / "exploited").exists()
