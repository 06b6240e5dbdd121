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
from sortednet_cli.plugins import register_configs

REPO = Path(__file__).resolve().parents[1]
SHARED_CIFAR10 = Path(os.environ.get("SORTEDNET_TEST_CIFAR10", REPO.parent / "shared" / "data" / "cifar10"))

# Small and fast: a tiny pool on a few hundred synthetic images.
TINY = [
    "data=fake",
    "data.fake_train_size=512",
    "data.fake_test_size=256",
    "pool=tiny",
    "trainer.epochs=2",
    "trainer.batch_size=32",
    "trainer.device=cpu",
    "sched.warmup_epochs=0",
    "trainer.eval_grid=false",
    "eval.calib_images=256",
]

torch.set_num_threads(2)


def compose_config(config_name: str, overrides: list[str] = ()):
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_module("sortednet_cli.conf", version_base="1.3"):
        return compose(config_name, overrides=cli.quote_numeric_options(list(overrides)))


def run_cli(args: list[str], capsys=None) -> tuple[int, str, str]:
    """Run `sortednet ARGS` in this process; returns (exit code, stdout, stderr)."""
    saved_argv = sys.argv[:]
    GlobalHydra.instance().clear()
    code = 0
    try:
        cli.main(list(args))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = saved_argv
        GlobalHydra.instance().clear()
    out, err = capsys.readouterr() if capsys else ("", "")
    return code, out, err


@pytest.fixture
def cifar10_root() -> Path:
    if not (SHARED_CIFAR10 / "cifar-10-batches-py" / "data_batch_1").is_file():
        pytest.skip(f"real CIFAR-10 not found at {SHARED_CIFAR10} (set SORTEDNET_TEST_CIFAR10)")
    return SHARED_CIFAR10
