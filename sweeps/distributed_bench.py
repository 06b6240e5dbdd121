"""Peak memory per rank and step time of one decoder under every strategy, precision and
activation checkpointing, as ratios to one fp32 process without checkpointing, in one run.

    .venv/bin/python sweeps/distributed_bench.py [OUT_DIR]        (default outputs/distributed_bench)

Three launches (one process; two ranks under torchrun with ddp; the same with fsdp), one thread
per rank, the same global batch. Each launch trains its four settings (fp32 / bf16, with and
without checkpointing) in turn, ROUNDS times over, on a model set up afresh each time: WARMUP
steps of the engine's own loop step (`train.advance`), then STEPS timed; medians are reported.
Memory: the peak resident set during those steps (VmHWM, reset after set-up) above the resident
set before the set-up, with glibc's mmap threshold fixed at 128 KiB so that freed tensors go back to the
system and the figure follows the live tensors: weights, gradients, optimizer state, activations,
gathered shards; the lowest round counts (a process's first adds its libraries' first-use
allocations). (The CPU has no allocator statistics.) The settings of one launch alternate; the
three launches run one after another, so their ratios carry the machine's load changes.
Environment: TEXT (the first 200,000 characters of ../shared/data/tinyshakespeare/input.txt),
STEPS (3), WARMUP (1), ROUNDS (2), BATCH (8 sequences of 128 characters), LAYERS / HIDDEN / FFN
(6 / 256 / 768: 5.1 M parameters). Writes OUT_DIR/distributed_bench.json and prints the table.
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STRATEGIES = ("single", "ddp", "fsdp")
SETTINGS = [("fp32", False), ("bf16", False), ("fp32", True), ("bf16", True)]  # (precision, gradient checkpointing)


def setting(name: str, default: str) -> str:
    return os.environ.get(name, default)


def overrides(strategy: str, precision: str, checkpointing: bool, text: Path) -> list[str]:
    steps = int(setting("STEPS", "3")) + int(setting("WARMUP", "1"))
    return [
        "model=llama", f"data.path={text}", f"model.layers={setting('LAYERS', '6')}", f"model.hidden={setting('HIDDEN', '256')}",
        "model.heads=4", f"model.ffn={setting('FFN', '768')}", "model.context=128", "data.block_size=128", "pool=exits",
        "trainer.device=cpu", "trainer.threads=1", f"trainer.batch_size={setting('BATCH', '8')}", f"trainer.max_steps={steps}",
        "trainer.log_every=1000", "trainer.eval_grid=false", "logger=none", f"trainer.strategy={strategy}",
        f"trainer.precision={precision}", f"trainer.gradient_checkpointing={str(checkpointing).lower()}",
    ]


def memory_mb(field: str) -> float:
    """VmRSS or VmHWM of this process, in MiB."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident set


class _Quiet:
    def set_info(self, text: str) -> None:
        pass


def measure(strategy: str, precision: str, checkpointing: bool, text: Path, run_dir: Path) -> dict:
    """One setting on this process (a rank under torchrun): its median step and peak memory."""
    from hydra import compose, initialize_config_module
    from rich.console import Console

    from sortednet_cli import cli
    from sortednet_cli.engine.train import LoopState, advance, flush, set_up, stall_watchdog
    from sortednet_cli.plugins import register_configs

    register_configs()
    with initialize_config_module("sortednet_cli.conf", version_base="1.3"):
        cfg = compose("train", overrides=cli.quote_numeric_options(overrides(strategy, precision, checkpointing, text)))
    gc.collect()
    before = memory_mb("VmRSS")
    with contextlib.ExitStack() as claims:
        run = set_up(cfg, run_dir, [], Console(file=io.StringIO()), claims)
        state, watchdog = LoopState(done=0, examples=0, saved_step=None), stall_watchdog(run)
        run.model.train()
        reset_peak()  # the set-up's passing peaks (a model built whole before fsdp shards it) left out
        times = []
        for _ in range(run.total_steps):
            start = time.perf_counter()
            advance(run, state, watchdog)
            flush(run, state, _Quiet())  # the losses read back: the step's work is done
            times.append(time.perf_counter() - start)
        peak = memory_mb("VmHWM")
        parameters = sum(p.numel() for p in run.model.parameters())  # a sharded parameter counts its whole size
        del run, state
    return {"step_s": statistics.median(times[int(setting("WARMUP", "1")):]), "peak_mb": peak - before, "parameters": parameters}


def launch(strategy: str, out: str, text: str) -> None:
    """Every setting of one strategy on this process, ROUNDS times in turn."""
    from sortednet_cli.engine.distributed import finish, from_environment

    rank = int(os.environ.get("RANK", "0"))
    results: dict = {}
    for round_ in range(int(setting("ROUNDS", "2"))):
        for precision, checkpointing in SETTINGS:
            name = f"{strategy}_{precision}" + ("_ckpt" if checkpointing else "")
            figures = measure(strategy, precision, checkpointing, Path(text), Path(out) / f"{name}_{round_}")
            results.setdefault(name, []).append(figures)
    finish(from_environment())
    Path(out, f"{strategy}.rank{rank}.json").write_text(json.dumps(results))


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else REPO / "outputs" / "distributed_bench")
    out.mkdir(parents=True, exist_ok=True)
    text = Path(setting("TEXT", str(out / "text.txt")))
    if "TEXT" not in os.environ:
        text.write_text((REPO.parent / "shared/data/tinyshakespeare/input.txt").read_text()[:200_000])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "131072"}
    rows = {}
    for strategy in STRATEGIES:
        ranks = 1 if strategy == "single" else 2
        launcher = [sys.executable] if ranks == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"]
        done = subprocess.run([*launcher, str(Path(__file__).resolve()), "--launch", strategy, str(out), str(text)],
                              env=env, cwd=REPO, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{strategy} failed:\n{done.stderr[-3000:]}")
        per_rank = [json.loads((out / f"{strategy}.rank{r}.json").read_text()) for r in range(ranks)]
        for name in per_rank[0]:
            rounds = [figures for rank in per_rank for figures in rank[name]]
            rows[name] = {"ranks": ranks, "step_s": statistics.median(f["step_s"] for f in rounds),
                          # the lowest round of each rank: a process's first round adds first-use allocations (library caches)
                          "peak_mb": max(min(f["peak_mb"] for f in rank[name]) for rank in per_rank),
                          "parameters": rounds[0]["parameters"], "rounds": rounds}
    base = rows["single_fp32"]
    print(f"decoder of {base['parameters'] / 1e6:.1f} M parameters, global batch {setting('BATCH', '8')} x 128 tokens, one thread per rank")
    print("| setting | ranks | step (s) | step / single fp32 | peak MiB per rank | peak / single fp32 |")
    print("|---|---|---|---|---|---|")
    for name, row in rows.items():
        row["step_ratio"], row["memory_ratio"] = row["step_s"] / base["step_s"], row["peak_mb"] / base["peak_mb"]
        print(f"| {name} | {row['ranks']} | {row['step_s']:.2f} | {row['step_ratio']:.2f} | {row['peak_mb']:.0f} | {row['memory_ratio']:.2f} |")
    import torch

    (out / "distributed_bench.json").write_text(json.dumps({"torch": torch.__version__, "cpus": os.cpu_count(), "rows": rows}, indent=1))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--launch":
        launch(*sys.argv[2:5])
    else:
        main()
