"""Data parallelism on CPU with the gloo backend and 2 processes: ddp and fsdp against one process
on the same global batch, sharded checkpoints resumed on the same and on another world size,
precision. One 2-rank launch trains every job in turn (`two_ranks`); the tests compare."""

import contextlib
import csv
import io
import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp
from rich.console import Console

from conftest import TINY, TINY_DECODER, TINY_ENCODER, compose_config, run_cli, write_tiny_text

CNN = [*TINY, "data.fake_train_size=128", "trainer.epochs=1", "model.norm=gn", "trainer.grad_accum=2", "sampler=sandwich", "trainer.log_every=2"]
TEXT = ["trainer.device=cpu", "trainer.batch_size=8", "trainer.grad_accum=2", "sampler=sandwich",
        "trainer.eval_grid=false", "eval.latency=false", "eval.batch_size=64", "sched.warmup_steps=0", "optim.lr=3e-3", "trainer.log_every=1"]


def decoder(text, *extra):
    """A tiny decoder cutting heads and FFN units (pool exits_tiny: 2 widths x 2 depths), clipped gradients."""
    return ["model=llama", f"data.path={text}", *TINY_DECODER, "model.sort_heads=true", "pool=exits_tiny", *TEXT, "trainer.epochs=2", *extra]


def encoder(glue, *extra):
    """A tiny encoder cutting heads and FFN units, without dropout (each rank would draw its own masks)."""
    return ["model=bert", f"data.root={glue}", *TINY_ENCODER, "model.dropout=0.0", "data.train_subset=40", "pool=enc_tiny", *TEXT,
            "trainer.epochs=1", *extra]


def small_text(path):
    """Short patterned text: 8 steps an epoch at batch 8 x 16 tokens with 2 draws a step."""
    write_tiny_text(path)
    path.write_text("\n".join(path.read_text().splitlines()[:48]) + "\n")
    return path


def jobs(text, glue, out):
    """(name, overrides, what happens) for the two ranks, in order."""
    exits = decoder(text, "trainer.objective=all_exits")
    distill = decoder(text, "trainer.objective=sampled", "trainer.distill=inplace", "trainer.accum_same_batch=true")
    return [
        ("cnn_ddp", CNN, "record draws"),
        ("cnn_fsdp", [*CNN, "trainer.strategy=fsdp", "data.channels_last=false"], None),
        ("ddp_sampled", decoder(text, "trainer.objective=sampled", "trainer.strategy=ddp"), None),
        ("fsdp_sampled", decoder(text, "trainer.objective=sampled", "trainer.strategy=fsdp"), "record draws"),
        ("ddp_exits", [*exits, "trainer.strategy=ddp"], None),
        ("fsdp_exits", [*exits, "trainer.strategy=fsdp"], None),
        ("fsdp_distill_checkpointing", [*distill, "trainer.strategy=fsdp", "trainer.gradient_checkpointing=true"], None),
        ("ddp_encoder", encoder(glue, "trainer.strategy=ddp"), None),
        ("fsdp_encoder", encoder(glue, "trainer.strategy=fsdp"), None),
        ("fsdp_killed", [*exits, "trainer.strategy=fsdp"], "killed after the first checkpoint"),
        ("fsdp_resumed", [f"resume={out / 'fsdp_killed'}"], None),
        ("fsdp_from_one", [f"resume={out / 'single_killed'}", "trainer.strategy=fsdp"], None),
        ("fsdp_bf16", [*exits, "trainer.strategy=fsdp", "trainer.precision=bf16"], None),
    ]


class Killed(Exception):
    """A run stopped dead right after it wrote its first checkpoint."""


@contextlib.contextmanager
def killed_after_first_checkpoint():
    from sortednet_cli.engine import train as train_module

    original = train_module.save_checkpoint

    def save_then_die(run, state):
        path = original(run, state)
        raise Killed(path)

    train_module.save_checkpoint = save_then_die
    try:
        yield
    finally:
        train_module.save_checkpoint = original


@contextlib.contextmanager
def recorded_draws(drawn: list):
    from sortednet_cli.sorted.sampler import SandwichSampler

    original = SandwichSampler.draw

    def recording(self, step, draw, per_step):
        sub = original(self, step, draw, per_step)
        drawn.append((step, draw, sub.width, list(sub.depth)))
        return sub

    SandwichSampler.draw = recording
    try:
        yield
    finally:
        SandwichSampler.draw = original


def quiet():
    return Console(file=io.StringIO())


@contextlib.contextmanager
def one_thread():
    """One thread, as each rank has: tiny models gain nothing from more, and lose much on a loaded machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_job(overrides, run_dir, how):
    """Trains one job; returns (weights or None if killed, the draws it recorded)."""
    from sortednet_cli.engine.train import train

    drawn: list = []
    with contextlib.ExitStack() as stack:
        stack.enter_context(one_thread())
        if how == "record draws":
            stack.enter_context(recorded_draws(drawn))
        if how == "killed after the first checkpoint":
            stack.enter_context(killed_after_first_checkpoint())
        try:
            result = train(compose_config("train", overrides), run_dir, overrides=overrides, console=quiet())
        except Killed:
            return None, drawn
    return result.model.state_dict(), drawn


def worker(rank: int, world: int, ports: list, text: str, glue: str, out: str) -> None:
    from pathlib import Path

    from sortednet_cli.engine.runtime import set_threads

    set_threads(1, "worker")
    out = Path(out)
    for (name, overrides, how), port in zip(jobs(text, glue, out), ports):
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
        resumed = any(o.startswith("resume=") for o in overrides)
        weights, drawn = train_job(overrides, out / name if not resumed else out / f"{name}_unused", how)
        if name == "fsdp_killed" and rank == 0:  # kept apart: fsdp_resumed continues in the killed run's directory
            shutil.copytree(out / name, out / "fsdp_killed_copy", symlinks=True)
        if rank == 0 or drawn:  # rank 0's model has the whole weights (rank 1's are shards under fsdp)
            torch.save({"state": weights if rank == 0 else None, "drawn": drawn}, out / f"{name}.rank{rank}.pt")


def gloo_works() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_gloo_available()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def single(overrides, run_dir, how=None):
    return train_job(overrides, run_dir, how)[0]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, glue_root):
    """Every job of `jobs` trained by 2 ranks (gloo, one thread each), after the one-process run
    that fsdp_from_one resumes; returns (out dir, text path, glue root)."""
    if not gloo_works():
        pytest.skip("torch.distributed with gloo is not available here")
    out = tmp_path_factory.mktemp("ranks")
    text = small_text(out / "input.txt")
    single(decoder(text, "trainer.objective=all_exits"), out / "single_killed", "killed after the first checkpoint")
    ports = [free_port() for _ in jobs(text, glue_root, out)]
    try:
        mp.start_processes(worker, args=(2, ports, str(text), str(glue_root), str(out)), nprocs=2, start_method="spawn")
    except Exception as exc:  # gloo may fail to start in restricted sandboxes
        pytest.skip(f"gloo could not start: {exc}")
    return out, text, glue_root


def saved(out, name, rank=0):
    return torch.load(out / f"{name}.rank{rank}.pt", weights_only=True)


def assert_same_weights(mine, theirs, atol=1e-5):
    assert mine.keys() == theirs.keys()
    for name, tensor in theirs.items():
        torch.testing.assert_close(mine[name], tensor, rtol=0, atol=atol, msg=name)


def test_every_rank_draws_the_same_sub_models(two_ranks):
    out, _, _ = two_ranks
    for name in ("cnn_ddp", "fsdp_sampled"):
        drawn = [saved(out, name, rank)["drawn"] for rank in (0, 1)]
        assert drawn[0] == drawn[1] and len(drawn[0]) > 0
    assert len(saved(out, "cnn_ddp")["drawn"]) == 4  # 2 steps of 2 draws


def test_a_cnn_under_ddp_and_fsdp_matches_one_process_on_the_global_batch(two_ranks, tmp_path):
    out, _, _ = two_ranks
    one = single(CNN, tmp_path / "single")
    assert_same_weights(saved(out, "cnn_ddp")["state"], one)
    assert_same_weights(saved(out, "cnn_fsdp")["state"], one)  # in NCHW: FSDP2 shards contiguous parameters only
    # rank 0 wrote the run directory; rank 1 wrote nothing
    assert (out / "cnn_ddp" / "last.pt").is_file() and (out / "cnn_ddp" / "summary.json").is_file()


@pytest.mark.parametrize("objective", ["sampled", "exits"])
def test_ddp_and_fsdp_match_one_process_on_a_decoder(two_ranks, tmp_path, objective):
    """Accumulated draws of different depths and widths (heads and FFN units), clipped gradients."""
    out, text, _ = two_ranks
    extra = "trainer.objective=" + ("all_exits" if objective == "exits" else "sampled")
    one = single(decoder(text, extra), tmp_path / "single")
    for strategy in ("ddp", "fsdp"):
        assert_same_weights(saved(out, f"{strategy}_{objective}")["state"], one)


def test_ddp_and_fsdp_match_one_process_on_an_encoder(two_ranks, tmp_path):
    out, _, glue = two_ranks
    one = single(encoder(glue), tmp_path / "single")
    for strategy in ("ddp", "fsdp"):
        assert_same_weights(saved(out, f"{strategy}_encoder")["state"], one)


def test_fsdp_in_place_distillation_with_gradient_checkpointing(two_ranks, tmp_path):
    """Recomputed layers (sliced inside their call, the recomputation too) give one process's weights without checkpointing."""
    out, text, _ = two_ranks
    one = single(decoder(text, "trainer.objective=sampled", "trainer.distill=inplace", "trainer.accum_same_batch=true"), tmp_path / "single")
    assert_same_weights(saved(out, "fsdp_distill_checkpointing")["state"], one)


def test_fsdp_resumes_exactly_and_on_another_world_size(two_ranks, tmp_path):
    out, text, _ = two_ranks
    uninterrupted = saved(out, "fsdp_exits")["state"]
    assert (out / "fsdp_killed_copy" / "last.dcp").is_symlink() and not (out / "fsdp_killed_copy" / "last.pt").exists()
    # Killed after epoch 1, resumed on the same 2 ranks: the same run.
    assert_same_weights(saved(out, "fsdp_resumed")["state"], uninterrupted, atol=0)
    # 2 ranks -> 1 process (the sharded checkpoint read without a process group).
    resumed = tmp_path / "copy"
    shutil.copytree(out / "fsdp_killed_copy", resumed, symlinks=True)
    one = single([f"resume={resumed}", "trainer.strategy=single"], tmp_path / "unused")
    assert_same_weights(one, uninterrupted)
    assert (resumed / "last.pt").is_file() and not os.path.lexists(resumed / "last.dcp")  # one checkpoint, the newest
    # 1 process -> 2 ranks (last.pt into the shards).
    assert_same_weights(saved(out, "fsdp_from_one")["state"], single(decoder(text, "trainer.objective=all_exits"), tmp_path / "single"))


def test_bf16_trains_and_keeps_float32_master_weights(two_ranks, tmp_path):
    from torch.distributed.checkpoint import FileSystemReader

    out, text, _ = two_ranks
    metadata = FileSystemReader(str(out / "fsdp_bf16" / "last.dcp")).read_metadata()
    weights = {k: v for k, v in metadata.state_dict_metadata.items() if k.startswith("model.")}
    assert weights and {v.properties.dtype for v in weights.values()} == {torch.float32}  # the sharded master weights
    one = tmp_path / "single"
    model = single(decoder(text, "trainer.objective=all_exits", "trainer.precision=bf16"), one)
    assert {t.dtype for t in model.values()} == {torch.float32}
    for run_dir in (out / "fsdp_bf16", one):
        with open(run_dir / "metrics.csv", newline="") as f:
            losses = [float(row["loss"]) for row in csv.DictReader(f)]
        assert sum(losses[-4:]) < 0.8 * sum(losses[:4])
    bf16, fp32 = saved(out, "fsdp_bf16")["state"], saved(out, "fsdp_exits")["state"]
    assert any(not torch.equal(bf16[name], fp32[name]) for name in fp32)  # computed in bf16 indeed


@one_thread()
def test_commands_read_a_sharded_checkpoint_and_name_missing_shards(two_ranks, tmp_path, capsys):
    out, _, _ = two_ranks
    run = out / "fsdp_exits"
    code, _, err = run_cli(["eval-grid", f"checkpoint={run}", "eval.latency=false", f"hydra.run.dir={tmp_path / 'grid'}"], capsys)
    assert code == 0, err
    assert (tmp_path / "grid" / "grid.csv").is_file()
    code, _, err = run_cli(["export", f"checkpoint={run}", f"hydra.run.dir={tmp_path / 'export'}"], capsys)
    assert code == 0, err
    code, out_text, err = run_cli(["generate", f"checkpoint={run}", "generate.max_new_tokens=4", f"hydra.run.dir={tmp_path / 'gen'}"], capsys)
    assert code == 0, err
    broken = tmp_path / "broken"
    shutil.copytree(out / "fsdp_killed_copy", broken, symlinks=True)
    (broken / "last.dcp" / "__1_0.distcp").unlink()
    code, _, err = run_cli(["eval-grid", f"checkpoint={broken}", f"hydra.run.dir={tmp_path / 'x'}"], capsys)
    assert code != 0 and err.count("\n") == 1, err
    assert "sharded checkpoint missing 1 of its 2 shard files (__1_0.distcp); copy the whole directory" in err


@pytest.mark.skipif(not gloo_works(), reason="torch.distributed with gloo is not available here")
def test_torchrun_makes_a_single_run_directory(tmp_path):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "sortednet_cli", "train"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([*torchrun, *TINY, "data.fake_train_size=128", "trainer.epochs=1"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    if result.returncode != 0 and "gloo" in result.stderr.lower() and "connect" in result.stderr.lower():
        pytest.skip("gloo could not connect here")
    assert result.returncode == 0, result.stderr[-2000:]
    runs = list((tmp_path / "outputs" / "train").iterdir())
    assert len(runs) == 1
    summary = json.loads((runs[0] / "summary.json").read_text())
    assert summary["steps"] == 4  # 128 images in global batches of 32


@pytest.mark.parametrize("overrides, env, message", [
    (["trainer.strategy=fsdp"], {}, "trainer.strategy=fsdp needs processes started by torchrun"),
    (["trainer.strategy=ddp"], {}, "trainer.strategy=ddp needs processes started by torchrun"),
    (["trainer.batch_size=32"], {"RANK": "0", "WORLD_SIZE": "3"}, "trainer.batch_size=32 (the global batch) must divide evenly over 3 ranks"),
    (["trainer.precision=fp16"], {}, "trainer.precision=fp16 needs a CUDA device"),
    (["trainer.gradient_checkpointing=true"], {}, "trainer.gradient_checkpointing=true: model=cpreresnet20 has no activation checkpointing"),
    (["trainer.fsdp_cpu_offload=true"], {}, "trainer.fsdp_cpu_offload=true needs trainer.strategy=fsdp"),
])
def test_bad_parallel_settings_are_one_line_before_training(overrides, env, message, tmp_path, capsys, monkeypatch):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    code, out, err = run_cli(["train", *TINY, *overrides, f"hydra.run.dir={tmp_path / 'run'}"], capsys)
    assert code != 0 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "run" / "metrics.csv").exists()


def test_fsdp_refuses_a_channels_last_model_before_sharding():
    from sortednet_cli.engine.distributed import Distributed
    from sortednet_cli.engine.strategy import FullyShardedDataParallel
    from sortednet_cli.errors import UserError
    from sortednet_cli.models import build_model

    model = build_model(compose_config("train", TINY).model, {"num_classes": 10}).to(memory_format=torch.channels_last)
    strategy = FullyShardedDataParallel(Distributed(0, 2, 0, launched=True), torch.device("cpu"), cpu_offload=False)
    with pytest.raises(UserError, match="shards contiguous parameters only, and stem.weight is not .a channels_last model: set data.channels_last=false"):
        strategy.prepare(model, "fp32")
