"""Shared helpers: compose configs like the CLI does, and run the CLI in-process."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from sortednet_cli import cli
from sortednet_cli.engine.runtime import set_threads
from sortednet_cli.plugins import register_configs

REPO = Path(__file__).resolve().parents[1]
SHARED_CIFAR10 = Path(os.environ.get("SORTEDNET_TEST_CIFAR10", REPO.parent / "shared" / "data" / "cifar10"))

# Small and fast: a tiny pool on a few hundred synthetic images.
TINY = [
    "data=fake",
    "data.fake_train_size=512",
    "data.fake_test_size=128",
    "pool=tiny",
    "trainer.epochs=2",
    "trainer.batch_size=32",
    "trainer.device=cpu",
    "sched.warmup_epochs=0",
    "trainer.eval_grid=false",
    "eval.calib_examples=128",
]

# `make test` runs two pytest-xdist workers on this 2-core machine: a thread each, so the two do
# not fight over the cores; a lone pytest process takes both.
set_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2, "conftest")

# Tiny Transformers (2 layers, hidden 32) on tiny hand-made text; the data paths come from the
# session fixtures glue_root and text_path (tiny_text_overrides puts them in).
TINY_ENCODER = ["model.layers=2", "model.hidden=32", "model.heads=2", "model.ffn=64", "model.max_length=32", "data.vocab_size=150", "model.sort_heads=true"]
TINY_DECODER = ["model.layers=2", "model.hidden=32", "model.heads=2", "model.ffn=64", "model.context=32", "data.block_size=16"]
TINY_TEXT_TRAINING = ["trainer.device=cpu", "trainer.epochs=1", "trainer.batch_size=16", "sched.warmup_steps=5", "eval.latency=false", "eval.batch_size=64"]

POSITIVE = ["a charming and often affecting journey", "the best film of the year", "warm , funny and wise", "a gorgeous , witty , seductive movie", "it is a delight"]
NEGATIVE = ["a dull , lifeless mess", "the worst film of the year", "boring and far too long", "a tedious , joyless slog", "it is a chore"]


def write_tiny_glue(root: Path, rows: int = 240) -> Path:
    """An SST-2-style folder (train.tsv, dev.tsv with a `sentence\tlabel` header) whose label
    is learnable from its words."""
    root.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    for name, count in (("train.tsv", rows), ("dev.tsv", rows // 4)):
        lines = ["sentence\tlabel"]
        for i in range(count):
            label = int(torch.randint(0, 2, (1,), generator=gen))
            phrases = POSITIVE if label else NEGATIVE
            pick = torch.randint(0, len(phrases), (2,), generator=gen).tolist()
            lines.append(f"{phrases[pick[0]]} ; {phrases[pick[1]]} \t{label}")
        (root / name).write_text("\n".join(lines) + "\n")
    return root


def write_tiny_text(path: Path) -> Path:
    """A few thousand characters of patterned text: learnable in a few hundred steps."""
    gen = torch.Generator().manual_seed(0)
    words = ["ROMEO:", "JULIET:", "to be", "or not", "the night", "is young", "my lord", "good morrow"]
    lines = [" ".join(words[i] for i in torch.randint(0, len(words), (6,), generator=gen).tolist()) for _ in range(300)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="session")
def glue_root(tmp_path_factory) -> Path:
    return write_tiny_glue(tmp_path_factory.mktemp("glue") / "sst2")


@pytest.fixture(scope="session")
def text_path(tmp_path_factory) -> Path:
    return write_tiny_text(tmp_path_factory.mktemp("text") / "input.txt")


def tiny_text_overrides(model: str, glue_root: Path, text_path: Path) -> list[str]:
    """A tiny model of a Transformer family on its tiny data."""
    if model in ("llama", "decoder"):
        return [f"model={model}", f"data.path={text_path}", *TINY_DECODER]
    return [f"model={model}", f"data.root={glue_root}", *TINY_ENCODER]


def compose_config(config_name: str, overrides: list[str] = ()):
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_module("sortednet_cli.conf", version_base="1.3"):
        return compose(config_name, overrides=cli.quote_numeric_options(list(overrides)))


def run_cli(args: list[str], capsys=None) -> tuple[int, str, str]:
    """Run `sortednet ARGS` in this process; returns (exit code, stdout, stderr). Every run also
    checks that cli.main gave back the command line and environment it set for Hydra."""
    process_state = (sys.argv[:], os.environ.get("HYDRA_FULL_ERROR"))
    GlobalHydra.instance().clear()
    code = 0
    try:
        cli.main(list(args))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        GlobalHydra.instance().clear()
    assert (sys.argv, os.environ.get("HYDRA_FULL_ERROR")) == process_state, "cli.main left sys.argv or HYDRA_FULL_ERROR changed"
    out, err = capsys.readouterr() if capsys else ("", "")
    return code, out, err


def copy_leading_slices(full: torch.nn.Module, small: torch.nn.Module) -> torch.nn.Module:
    """Fill `small` (built at a sub-model's sizes) with the leading slices of `full`'s
    same-named tensors: by hand, to check the models' own extract against."""
    full_state = full.state_dict()
    with torch.no_grad():
        for name, tensor in small.state_dict().items():
            source = full_state[name]
            for dim, n in enumerate(tensor.shape):
                source = source.narrow(dim, 0, n)
            tensor.copy_(source)
    return small


@torch.no_grad()
def randomize_norms(model: torch.nn.Module, mean: float = 0.0, std: float = 1.0) -> None:
    """Norm statistics and affine parameters away from their defaults, so that a wrong slice
    or a statistic shared by mistake shows in the outputs."""
    for name, buf in model.named_buffers():
        if name.endswith("running_mean"):
            buf.normal_()
        elif name.endswith("running_var"):
            buf.uniform_(0.5, 2.0)
    for name, p in model.named_parameters():
        if "norm" in name:
            p.normal_(mean, std)


@torch.no_grad()
def prefix_tree_outputs(model, width: float, depths: list, calib_chunks: list, images: torch.Tensor) -> dict:
    """One width's prefix-tree walk as shared evaluation runs it, each node's statistics
    calibrated on `calib_chunks`; the model's own statistics are left as they were."""
    from sortednet_cli.sorted.prefix_eval import calibrated_walk, preserved_buffers

    with preserved_buffers(model):
        return calibrated_walk(model, width, depths, calib_chunks)(images)


@pytest.fixture
def cifar10_root() -> Path:
    if not (SHARED_CIFAR10 / "cifar-10-batches-py" / "data_batch_1").is_file():
        pytest.skip(f"real CIFAR-10 not found at {SHARED_CIFAR10} (set SORTEDNET_TEST_CIFAR10)")
    return SHARED_CIFAR10


def interrupt_at_update(monkeypatch, count: int) -> None:
    """Ctrl-C (SIGINT) arrives during the `count`-th sorted update of the next training run."""
    from sortednet_cli.engine import train as train_module

    calls = {"n": 0}
    original = train_module.sorted_update

    def update(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == count:
            train_module.signal.raise_signal(train_module.signal.SIGINT)
        return original(*args, **kwargs)

    monkeypatch.setattr(train_module, "sorted_update", update)
