"""Data parallelism on CPU with the gloo backend and 2 processes."""

import io
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp
from rich.console import Console

from conftest import TINY, compose_config

OVERRIDES = [*TINY, "trainer.epochs=1", "model.norm=gn", "trainer.grad_accum=2", "sampler=sandwich", "trainer.log_every=2"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    from sortednet_cli.engine.runtime import set_threads
    from sortednet_cli.engine.train import train
    from sortednet_cli.sorted.sampler import SandwichSampler

    set_threads(1, "worker")

    drawn = []
    original = SandwichSampler.draw

    def recording(self, step, draw, per_step):
        sub = original(self, step, draw, per_step)
        drawn.append((step, draw, sub.width, list(sub.depth)))
        return sub

    SandwichSampler.draw = recording
    result = train(compose_config("train", OVERRIDES), os.path.join(out, "run"), console=Console(file=io.StringIO()))
    torch.save({"state": result.model.state_dict(), "drawn": drawn}, os.path.join(out, f"rank{rank}.pt"))


def gloo_works() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_gloo_available()


def test_average_gradients_is_the_mean_of_the_ranks_gradients_in_every_memory_format(monkeypatch):
    """The one all-reduce of a step, on two simulated ranks: every gradient (channels_last ones
    too) becomes the mean of both ranks' (all_reduce stands in for the other rank's sum)."""
    from sortednet_cli.engine import distributed
    from sortednet_cli.engine.distributed import Distributed, average_gradients

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 2)).to(memory_format=torch.channels_last)
    model(torch.randn(2, 3, 8, 8).contiguous(memory_format=torch.channels_last)).sum().backward()
    model[2].bias.grad = None  # a parameter this step did not use
    mine = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    other = {name: torch.randn_like(grad) for name, grad in mine.items()}
    assert model[0].weight.grad.is_contiguous(memory_format=torch.channels_last)

    def all_reduce(flat):
        flat.add_(torch.cat([other[name].reshape(-1) for name in mine]))

    monkeypatch.setattr(distributed.dist, "all_reduce", all_reduce)
    average_gradients(model, Distributed(rank=0, world_size=2))
    for name, p in model.named_parameters():
        if name in mine:
            torch.testing.assert_close(p.grad, (mine[name] + other[name]) / 2, rtol=0, atol=1e-7, msg=name)
    assert model[2].bias.grad is None


@pytest.mark.skipif(not gloo_works(), reason="torch.distributed with gloo is not available here")
def test_two_ranks_end_identical_and_match_one_process_on_the_global_batch(tmp_path):
    try:
        mp.start_processes(worker, args=(2, free_port(), str(tmp_path)), nprocs=2, start_method="spawn")
    except Exception as exc:  # gloo may fail to start in restricted sandboxes
        pytest.skip(f"gloo could not start: {exc}")
    saved = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert saved[0]["drawn"] == saved[1]["drawn"] and len(saved[0]["drawn"]) == 16
    rank0, rank1 = saved[0]["state"], saved[1]["state"]
    for name in rank0:
        if "running" not in name and "num_batches" not in name:
            assert torch.equal(rank0[name], rank1[name]), name

    from sortednet_cli.engine.train import train

    single = train(compose_config("train", OVERRIDES), tmp_path / "single", console=Console(file=io.StringIO())).model.state_dict()
    for name, tensor in single.items():
        torch.testing.assert_close(rank0[name], tensor, rtol=1e-4, atol=1e-5, msg=name)
    # rank 0 wrote the run directory; rank 1 wrote nothing
    assert (tmp_path / "run" / "last.pt").is_file() and (tmp_path / "run" / "summary.json").is_file()


@pytest.mark.skipif(not gloo_works(), reason="torch.distributed with gloo is not available here")
def test_torchrun_makes_a_single_run_directory(tmp_path):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "sortednet_cli", "train"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([*torchrun, *TINY, "trainer.epochs=1"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    if result.returncode != 0 and "gloo" in result.stderr.lower() and "connect" in result.stderr.lower():
        pytest.skip("gloo could not connect here")
    assert result.returncode == 0, result.stderr[-2000:]
    runs = list((tmp_path / "outputs" / "train").iterdir())
    assert len(runs) == 1
    summary = json.loads((runs[0] / "summary.json").read_text())
    assert summary["steps"] == 16
