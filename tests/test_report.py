"""Sweeps, launchers and `sortednet report`: job lists, real multiruns, and reports on finished,
failed and unfinished jobs."""

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser

from conftest import REPO, run_cli
from sortednet_cli import cli
from sortednet_cli.reports.jobs import Job, job_labels, load_job, report_metric
from sortednet_cli.jsonfiles import read_json, write_json
from sortednet_cli.errors import UserError
from sortednet_cli.plugins import register_configs
from sortednet_cli.reports.grid_report import grid_columns
from sortednet_cli.reports.report_figures import moving_average, plot_grids, width_buckets

def small(train_images: int = 256) -> list[str]:
    """One epoch of train_images / 32 mini-batches on synthetic images, one thread (the test
    machine's cores are shared); the pool is chosen by each test."""
    return [
        "data=fake",
        f"data.fake_train_size={train_images}",
        "data.fake_test_size=128",
        "trainer.epochs=1",
        "trainer.batch_size=32",
        "trainer.device=cpu",
        "trainer.threads=1",
        "sched.warmup_epochs=0",
        "eval.latency=false",
        f"eval.calib_examples={min(128, train_images)}",
    ]


def sweep_jobs(args: list[str]) -> list:
    """The composed config of every job `sortednet train -m ARGS` would launch, found the way
    Hydra's basic sweeper finds them: hydra.sweeper.params first, the command line on top."""
    register_configs()
    args = cli.quote_numeric_options(args)
    GlobalHydra.instance().clear()
    with initialize_config_module("sortednet_cli.conf", version_base="1.3"):
        # Sweep values on the command line cannot be composed as one config; the rest decides the params.
        single = [o.input_line for o in OverridesParser.create().parse_overrides(args) if not o.is_sweep_override()]
        params = compose("train", overrides=single, return_hydra_config=True).hydra.sweeper.params
        arguments = [f"{key}={value}" for key, value in params.items()] + args
        job_lists = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(arguments), None)[0]
        return [compose("train", overrides=job) for job in job_lists]


@pytest.mark.parametrize(
    "args, expected",
    [
        (["+sweep=grad_accum"], [("160", "uniform", g, 200) for g in (1, 2, 4, 8)]),
        (["+sweep=grad_accum", "pool=tiny"], [("tiny", "uniform", g, 200) for g in (1, 2, 4, 8)]),
        (["+sweep=grad_accum", "trainer.grad_accum=1,2"], [("160", "uniform", g, 200) for g in (1, 2)]),
        (["+sweep=variants"], [(p, "uniform", 1, 200) for p in ("160", "width_only", "depth_only", "full")]),
        (["+sweep=variants", "experiment=quick"], [(p, "uniform", 1, 10) for p in ("160", "width_only", "depth_only", "full")]),
        (["+sweep=samplers"], [("160", s, 1, 200) for s in ("uniform", "sandwich", "weighted")]),
        (["+sweep=samplers", "pool=160,tiny"], [(p, s, 1, 200) for s in ("uniform", "sandwich", "weighted") for p in ("160", "tiny")]),
        (["+sweep=fidelity"], [("full", "full", 1, 200), ("160", "uniform", 1, 200), ("160", "sandwich", 3, 200), ("160", "sandwich", 3, 200), ("160", "uniform", 3, 200)]),
    ],
)
def test_sweep_configs_compose_to_the_expected_jobs(args, expected):
    jobs = sweep_jobs(args)
    assert [(c.pool.name, c.sampler.name, c.trainer.grad_accum, c.trainer.epochs) for c in jobs] == expected


def test_grad_accum_sweep_runs_one_job_per_value_on_the_pool_given(tmp_path, capsys):
    # 64 images: 2 mini-batches, so every job is one or two optimizer steps.
    code, out, err = run_cli(["train", "-m", "+sweep=grad_accum", "pool=tiny", *small(64), "trainer.eval_grid=false", f"hydra.sweep.dir={tmp_path}"], capsys)
    assert code == 0, err
    jobs = sorted(p for p in tmp_path.iterdir() if p.is_dir())
    assert [p.name for p in jobs] == ["0", "1", "2", "3"]
    for job, g in zip(jobs, (1, 2, 4, 8)):
        config = (job / ".hydra" / "config.yaml").read_text()
        assert "name: tiny" in config and f"grad_accum: {g}\n" in config
        assert (job / "summary.json").is_file()


@pytest.fixture(scope="module")
def variants_sweep(tmp_path_factory):
    """A real 2-job sweep: pool=tiny and the baseline pool=full, each ending with its grid."""
    sweep_dir = tmp_path_factory.mktemp("sweep")
    code, _, _ = run_cli(["train", "-m", "+sweep=variants", "pool=tiny,full", *small(), "trainer.eval_grid=true", f"hydra.sweep.dir={sweep_dir}"])
    assert code == 0
    return sweep_dir


def read_summary(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_report_on_a_finished_sweep(variants_sweep, tmp_path, capsys):
    sweep_dir = tmp_path / "sweep"
    shutil.copytree(variants_sweep, sweep_dir)
    assert all((sweep_dir / job / name).is_file() for job in ("0", "1") for name in ("grid.csv", "selected.json"))
    code, out, err = run_cli(["report", f"sweep_dir={sweep_dir}", f"hydra.run.dir={tmp_path / 'report'}"], capsys)
    assert code == 0, err
    rows = read_summary(sweep_dir / "summary.csv")
    assert [(r["job"], r["label"], r["status"], r["pool"]) for r in rows] == [("0", "pool=tiny", "complete", "tiny"), ("1", "pool=full", "complete", "full")]
    tiny, full = rows
    assert int(tiny["grid_size"]) == 4 and int(full["grid_size"]) == 1
    assert float(full["full_relative"]) == 1.0
    assert float(tiny["mean_relative"]) == pytest.approx(float(tiny["mean_accuracy"]) / float(full["full_accuracy"]))
    assert int(tiny["steps"]) == 8 and float(tiny["wall_seconds"]) > 0 and 1 <= int(tiny["selected"]) <= 4
    for image in ("loss_curves.png", "grids.png"):
        assert (sweep_dir / image).read_bytes().startswith(b"\x89PNG")
    report = (sweep_dir / "report.md").read_text()
    assert "Baseline: job 1 (pool=full)" in report and "| 0 | pool=tiny | complete |" in report
    assert "sortednet train -m +sweep=variants pool=tiny,full" in report and "![" in report
    assert "Baseline: job 1 (pool=full)" in out and "pool=tiny" in out


def test_report_lists_failed_and_unfinished_jobs_and_reports_the_rest(variants_sweep, tmp_path, capsys):
    sweep_dir = tmp_path / "sweep"
    shutil.copytree(variants_sweep, sweep_dir)
    # Job 0 as if killed while training; job 2 a real failure, run into the sweep directory.
    for name in ("summary.json", "grid.csv", "grid.json", "selected.json"):
        (sweep_dir / "0" / name).unlink()
    code, _, _ = run_cli(["train", "pool=tiny", *small(), "trainer.grad_accum=0", f"hydra.run.dir={sweep_dir / '2'}"], capsys)
    assert code == 2
    code, out, err = run_cli(["report", f"sweep_dir={sweep_dir}", f"hydra.run.dir={tmp_path / 'report'}"], capsys)
    assert code == 0, err
    rows = {r["job"]: r for r in read_summary(sweep_dir / "summary.csv")}
    assert {job: r["status"] for job, r in rows.items()} == {"0": "incomplete", "1": "complete", "2": "failed"}
    assert "trainer.grad_accum must be >= 1 (got 0)" in rows["2"]["note"]
    assert rows["0"]["mean_accuracy"] == "" and float(rows["1"]["full_relative"]) == 1.0
    assert "job 2 (" in out and "failed: trainer.grad_accum must be >= 1" in out and "job 0 (" in out
    assert "## Jobs not complete" in (sweep_dir / "report.md").read_text()
    assert (sweep_dir / "loss_curves.png").is_file() and (sweep_dir / "grids.png").is_file()


def test_report_on_given_runs_writes_into_its_own_run_dir(variants_sweep, tmp_path, capsys):
    runs = f"runs=[{variants_sweep / '0'},{variants_sweep / '1'}]"
    code, _, err = run_cli(["report", runs, f"hydra.run.dir={tmp_path}"], capsys)
    assert code == 0, err
    rows = read_summary(tmp_path / "summary.csv")
    assert [(r["label"], r["status"]) for r in rows] == [("pool=tiny", "complete"), ("pool=full", "complete")]
    assert (tmp_path / "report.md").is_file() and (tmp_path / "grids.png").is_file() and (tmp_path / "loss_curves.png").is_file()


@pytest.mark.parametrize(
    "args, message",
    [
        (["sweep_dir=/nonexistent/sweep"], "no sweep directory at /nonexistent/sweep"),
        (["sweep_dir={empty}"], "holds no jobs"),
        (["runs=[/nonexistent/run]"], "/nonexistent/run is not a train run directory"),
        (["runs=[]"], "runs=[] is empty"),
        (["sweep_dir={empty}", "runs=[{empty}]"], "not both"),
        (["width_buckets=0"], "width_buckets and smooth must be >= 1"),
        ([], "no train sweep under"),
    ],
)
def test_bad_report_input_is_one_line_with_exit_code_2(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)  # so the default sweep_dir finds no outputs/
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run_cli(["report", *(a.format(empty=empty) for a in args), f"hydra.run.dir={tmp_path / 'report'}"], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sortednet: error: ") and message in lines[0], err


def write_run(run_dir, pool: str, cells: list[tuple[float, str, float]], meta: dict) -> None:
    """A finished train run with a hand-written grid: cells are (width, depth, metric value), the
    metric column named as meta says; grid.json records a baseline of 1.0 unless meta gives one."""
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text(f"pool:\n  name: {pool}\ntrainer:\n  eval_grid: true\n  epochs: 1\n")
    (run_dir / ".hydra" / "overrides.yaml").write_text(f"- pool={pool}\n")
    write_json(run_dir / "summary.json", {"pool": pool, "steps": 4, "total_steps": 4})
    metric = meta["metric"]["name"]
    columns = grid_columns(metric)
    with open(run_dir / "grid.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, columns, restval="")
        writer.writeheader()
        writer.writerows({"width": w, "depth": d, "params": 1000, "mflops": 1.0, metric: value} for w, d, value in cells)
    write_json(run_dir / "grid.json", {"baseline": {metric: 1.0, "source": "given number"}, **meta})


def test_report_on_a_lower_is_better_metric(tmp_path, capsys):
    loss = {"metric": {"name": "loss", "higher_is_better": False}, "full": {"width": 1.0, "depth": "2-2-2"}}
    write_run(tmp_path / "full", "full", [(1.0, "2-2-2", 0.5)], loss)
    write_run(tmp_path / "tiny", "tiny", [(0.5, "1-1-1", 1.0), (0.5, "2-2-2", 0.8), (1.0, "1-1-1", 0.625), (1.0, "2-2-2", 0.4)], loss)
    code, out, err = run_cli(["report", f"runs=[{tmp_path / 'full'},{tmp_path / 'tiny'}]", f"hydra.run.dir={tmp_path / 'report'}"], capsys)
    assert code == 0, err
    base, tiny = read_summary(tmp_path / "report" / "summary.csv")
    assert {"full_loss", "mean_loss", "min_loss"} <= set(tiny) and "full_accuracy" not in tiny
    assert float(base["full_relative"]) == 1.0
    # Lower is better: relative = baseline / value, and min_loss is the worst (highest) loss.
    assert float(tiny["full_loss"]) == 0.4 and float(tiny["full_relative"]) == pytest.approx(0.5 / 0.4)
    assert float(tiny["min_loss"]) == 1.0 and float(tiny["min_relative"]) == 0.5
    assert float(tiny["mean_loss"]) == pytest.approx(0.70625) and float(tiny["mean_relative"]) == pytest.approx(0.5 / 0.70625)
    report = (tmp_path / "report" / "report.md").read_text()
    assert "full model 0.5." in report and "| 0.4 | 0.7062 | 1 | 125.0% | 70.8% | 50.0% |" in report and "worst (highest)" in report
    assert (tmp_path / "report" / "grids.png").read_bytes().startswith(b"\x89PNG")
    # Jobs measuring different metrics are not put in one table.
    accuracy = {"metric": {"name": "accuracy", "higher_is_better": True, "lower": 0.0, "upper": 1.0}, "full": {"width": 1.0, "depth": "2-2-2"}}
    write_run(tmp_path / "accuracy", "tiny", [(1.0, "2-2-2", 0.9)], accuracy)
    with pytest.raises(UserError, match=r"different metrics: accuracy \(higher is better\), loss \(lower is better\); report them separately"):
        report_metric([load_job(tmp_path / name, name) for name in ("tiny", "accuracy")])


def test_grid_figure_shows_a_loss_as_recorded_and_the_lowest_darkest(tmp_path, monkeypatch):
    import matplotlib.figure

    loss = {"metric": {"name": "loss", "higher_is_better": False}, "full": {"width": 1.0, "depth": "2-2-2"}, "baseline": None}
    write_run(tmp_path / "tiny", "tiny", [(1.0, "1-1-1", 0.625), (1.0, "2-2-2", 0.4)], loss)
    job = load_job(tmp_path / "tiny", "tiny")
    figures = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, *args, **kwargs: figures.append(fig))
    assert plot_grids([job], {job.run_dir: "tiny"}, None, tmp_path / "grids.png", job.metric)
    (ax, *_), = [fig.axes for fig in figures]
    cells = {text.get_text().split("\n")[0]: text.get_color() for text in ax.texts}
    assert set(cells) == {"0.625", "0.4"}  # not scaled as a percentage
    (image,) = ax.images
    assert image.cmap(image.norm(0.4))[2] > 0.4 and image.norm(0.4) < image.norm(0.625)
    assert image.cmap.name.endswith("_r")  # reversed: the lower loss gets the darker blue


def test_jobs_are_labelled_by_the_overrides_that_differ_or_by_directory_when_many_do():
    def job(name, overrides):
        return Job(name, Path(name), overrides, {}, None, None, None, None, "complete", "")

    sweep = [job("0", ["pool=full", "trainer.grad_accum=2"]), job("1", ["pool=160", "trainer.grad_accum=2"])]
    assert list(job_labels(sweep).values()) == ["pool=full", "pool=160"]
    grid_of_a_checkpoint = job("truncated", ["checkpoint=out/pretrain", "device=cpu"])
    finetune = job("sorted_finetune", ["model=decoder", "model.pretrained=out/w1_d6", "data.path=in.txt", "pool=exits"])
    assert list(job_labels([grid_of_a_checkpoint, finetune]).values()) == ["checkpoint=pretrain device=cpu", "sorted_finetune"]
    assert list(job_labels([job("a", ["pool=160"]), job("b", ["pool=160"])]).values()) == ["a", "b"]


def grid_job(cells: list[tuple[float, str, float]], meta) -> Job:
    grid = [{"width": w, "depth": d, "accuracy": value} for w, d, value in cells]
    return Job("0", Path("run"), [], {}, None, grid, meta, None, "complete", "")


def test_the_full_model_is_the_one_grid_json_names():
    # Seven stages of unequal depth (MobileNetV2): no blocks_per_stage to guess from.
    mbv2 = [(0.25, "1-1-1-1-1-1-1", 0.3), (0.25, "1-2-3-4-3-3-1", 0.5), (1.0, "1-1-1-1-1-1-1", 0.6), (1.0, "1-2-3-4-3-3-1", 0.9)]
    accuracy = {"name": "accuracy", "higher_is_better": True, "lower": 0.0, "upper": 1.0}
    full = grid_job(mbv2, {"metric": accuracy, "full": {"width": 1.0, "depth": "1-2-3-4-3-3-1"}})
    assert full.full_value == 0.9 and full.full_depth == "1-2-3-4-3-3-1"
    narrow = grid_job(mbv2, {"metric": accuracy, "full": {"width": 0.25, "depth": "1-2-3-4-3-3-1"}})
    assert narrow.full_value == 0.5 and narrow.full_depth == "1-2-3-4-3-3-1"
    assert grid_job(mbv2, {"metric": accuracy, "full": {"width": 0.5, "depth": "1-2-3-4-3-3-1"}}).full_value is None  # not in the pool
    assert grid_job([], None).full_value is None and grid_job([], None).full_depth is None


def test_a_job_whose_grid_has_no_grid_json_has_no_grid(tmp_path):
    """grid.csv without its grid.json (a grid still being written) reads as no grid yet."""
    loss = {"metric": {"name": "loss", "higher_is_better": False}, "full": {"width": 1.0, "depth": "2-2-2"}}
    write_run(tmp_path / "run", "tiny", [(1.0, "2-2-2", 0.4)], loss)
    assert load_job(tmp_path / "run", "run").full_value == 0.4
    (tmp_path / "run" / "grid.json").unlink()
    job = load_job(tmp_path / "run", "run")
    assert job.grid is None and job.full_value is None and job.status == "incomplete"


def test_read_json_is_none_for_missing_and_half_written_files(tmp_path):
    write_json(tmp_path / "a.json", {"steps": 3})
    assert (tmp_path / "a.json").read_text() == '{\n  "steps": 3\n}\n' and read_json(tmp_path / "a.json") == {"steps": 3}
    (tmp_path / "b.json").write_text('{"steps": ')
    assert read_json(tmp_path / "b.json") is None and read_json(tmp_path / "missing.json") is None


def test_width_buckets_and_moving_average():
    assert width_buckets([1.0, 0.25, 0.5, 0.75, 0.5, 0.125], 4) == [[0.125, 0.25], [0.5], [0.75], [1.0]]
    assert width_buckets([1.0], 4) == [[1.0]]
    assert moving_average([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]


@pytest.mark.parametrize(
    "launcher, plugin, expected",
    [
        ("slurm", "hydra_plugins.hydra_submitit_launcher", ["SlurmLauncher", "timeout_min: 1440", "gpus_per_node: 1", "partition: null", "cpus_per_task: 4"]),
        ("local_parallel", "hydra_plugins.hydra_joblib_launcher", ["JoblibLauncher", "n_jobs: 2"]),
    ],
)
def test_launcher_configs_compose(capsys, launcher, plugin, expected):
    pytest.importorskip(plugin)
    code, out, err = run_cli(["train", "--cfg", "hydra", f"hydra/launcher={launcher}", "+sweep=grad_accum"], capsys)
    assert code == 0, err
    launcher_section = out.split("  launcher:", 1)[1].split("\n  sweeper:", 1)[0]
    assert all(text in launcher_section for text in expected), launcher_section


def test_a_missing_launcher_plugin_names_the_extra_to_install():
    # Blocking the plugin's import hides it from Hydra, as if it were not installed.
    script = (
        "import sys; sys.modules['hydra_plugins.hydra_submitit_launcher'] = None\n"
        "from sortednet_cli.cli import main; main(['train', '--cfg', 'hydra', 'hydra/launcher=slurm'])"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=REPO)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "Could not load 'hydra/launcher/submitit_slurm'" in lines[0] and "pip install 'sortednet-cli[slurm]'" in lines[0]


def test_local_parallel_launcher_runs_two_jobs(tmp_path, capsys):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    args = ["train", "-m", "hydra/launcher=local_parallel", "pool=tiny", *small(64), "trainer.eval_grid=false", "trainer.grad_accum=1,2", f"hydra.sweep.dir={tmp_path}"]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    steps = [json.loads((tmp_path / job / "summary.json").read_text())["steps"] for job in ("0", "1")]
    assert steps == [2, 1]

