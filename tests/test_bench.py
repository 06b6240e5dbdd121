"""sortednet bench wiring: a miniature run writes every figure (timings are not asserted)."""

import json

from conftest import run_cli

TINY_BENCH = [
    "data=fake",
    "data.fake_train_size=256",
    "data.fake_test_size=64",
    "bench.rounds=1",
    "bench.steps=1",
    "bench.batch_size=32",
    "bench.workers=0",
    "bench.eval_examples=16",
    "bench.calib_examples=16",
    "bench.grid_rounds=1",
    "device=cpu",
]


def test_bench_writes_every_ratio(tmp_path, capsys):
    code, out, err = run_cli(["bench", *TINY_BENCH, f"hydra.run.dir={tmp_path}"], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "bench.json").read_text())
    for key in ("train_speedup", "grid_speedup", "sorted_over_full_epoch"):
        assert report[key] > 0
    assert report["grid_same_accuracy"] is True
    assert report["torch"] and report["device"].startswith("cpu")
    assert set(report["train_images_per_second"]) == {"project", "reference"}
    assert "1. training images/s" in out
    # the memory formats compared at the pool's widest and narrowest width
    assert set(report["memory_format"]) == {"1", "0.05"}
    assert all(v["channels_last_speedup"] > 0 for v in report["memory_format"].values())


def test_bench_rejects_bad_settings(tmp_path, capsys):
    code, _, err = run_cli(["bench", *TINY_BENCH, "bench.rounds=0", f"hydra.run.dir={tmp_path}"], capsys)
    assert code == 2 and "bench.rounds must be >= 1" in err
