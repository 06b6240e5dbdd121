"""`sortednet <command> [overrides]`: picks a command and hands the rest of the line to Hydra.

Each command is a full Hydra app (overrides, -m, --cfg, --help, -cd). User mistakes, whether
Hydra finds them while composing the config or our code finds them later, end as one line on
stderr and exit code 2; set SORTEDNET_TRACEBACK=1 to see the traceback instead.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import importlib
import logging
import os
import shutil
import sys
import tempfile
from typing import Callable, Iterator, Optional

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from .engine.claim import claim, release_all
from .plugins import register_configs
from .errors import UserError
from .renames import renamed_override

COMMANDS = {
    "train": "train a sorted network on a pool of sub-models (the main job)",
    "eval-grid": "evaluate every sub-model of a checkpoint into the width x depth grid, then select",
    "select": "re-select sub-models from a grid with a new bar on its metric (no re-evaluation)",
    "export": "write sub-models out as small standalone checkpoints",
    "describe": "list a pool's sub-models with channels, parameters and MFLOPs",
    "bench": "measure the fast paths against plain PyTorch, side by side (bench.json)",
    "report": "compare the train jobs of a sweep (or given runs): table, loss curves, grids",
    "generate": "text from a trained decoder: full, one exit, early exit or self-speculative",
    "bench-decode": "every decoding mode of a trained decoder against full greedy (decode.json)",
}

CONFIG_PACKAGE = "pkg://sortednet_cli.conf"
# Commands that read a checkpoint: their data.* keys apply to the checkpoint's own data config.
CHECKPOINT_COMMANDS = ("eval-grid", "export")
# conf/hydra/launcher/<ours>.yaml build on these plugins' configs: the extra that installs each.
LAUNCHER_EXTRAS = {"submitit_slurm": "slurm", "joblib": "joblib"}
# OmegaConf.update asserts, with this message (an AssertionError, not an OmegaConf error), when
# Hydra applies an override such as `pool.widths=[1.0]` under a config group with no option
# chosen (eval-grid's pool is null): the node it would set a key in is None.
EMPTY_GROUP_ASSERTION = "Unexpected type for root: NoneType"
NOISE = ("full_key:", "reference_type", "object_type", "Set the environment variable HYDRA_FULL_ERROR")


def one_line(exc: BaseException) -> str:
    """An exception and its cause as one line, without OmegaConf's location footers."""
    parts = [str(exc)]
    if exc.__cause__ is not None and str(exc.__cause__) not in parts[0]:
        parts.append(str(exc.__cause__))
    text = " ".join(line.strip() for part in parts for line in part.splitlines()
                    if line.strip() and not line.strip().startswith(NOISE))
    return text.split(" Config search path:")[0]


def fail(message: str) -> None:
    print(f"sortednet: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def hydra_command(config_name: str) -> Callable:
    """Make `task(cfg)` a Hydra app reading conf/<config_name>.yaml from the installed package."""
    register_configs()

    def wrap(task: Callable[[DictConfig], None]) -> Callable[[], None]:
        @hydra.main(version_base="1.3", config_path=CONFIG_PACKAGE, config_name=config_name)
        @functools.wraps(task)
        def run(cfg: DictConfig) -> None:
            # Failures also go to the job's log file, so `sortednet report` can tell a failed
            # sweep job from one still running.
            log = logging.getLogger("sortednet")
            try:
                task(cfg)
            except UserError as exc:
                log.error("%s", exc)
                # In a sweep, Hydra runs the other jobs first and re-raises this one at the end
                # (main() turns it into the one line); exiting here would cut the sweep short.
                if os.environ.get("SORTEDNET_TRACEBACK") or HydraConfig.get().mode == RunMode.MULTIRUN:
                    raise
                fail(str(exc))
            except Exception as exc:
                log.exception("%s: %s", type(exc).__name__, exc)
                raise

        return run

    return wrap


class ClaimRunDir(Callback):
    """Claims the run directory before Hydra writes .hydra/ into it, so that a command refused
    because another process writes there leaves that process's files as they were (every
    command's conf names this in hydra.callbacks; main() releases the claim). A sweep's jobs
    each have their own directory, which train claims itself."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        try:
            claim(config.hydra.run.dir)
            refuse_a_trained_run_dir(config)
        except UserError as exc:  # Hydra would turn an exception here into a warning and go on
            fail(str(exc))


def refuse_a_trained_run_dir(config: DictConfig) -> None:
    """A command whose hydra.run.dir already holds a train run would overwrite that run's .hydra/
    record at once (which report and resume read), and a train its checkpoint and metrics later,
    even if it then fails on a bad input."""
    from .engine.checkpoint import CHECKPOINT_NAME, SHARDED_NAME

    run_dir, command = config.hydra.run.dir, config.hydra.job.name
    for name in (CHECKPOINT_NAME, SHARDED_NAME):
        if not os.path.lexists(os.path.join(run_dir, name)):
            continue
        if command != "train":
            what_to_do = (f"its .hydra/ record is the run's own: give {command} a directory of its own "
                          f"(`sortednet train resume={run_dir}` re-runs a finished run's evaluation in place)")
        elif config.get("resume"):
            what_to_do = "drop hydra.run.dir: a resumed run continues in its own directory and logs to a new one"
        else:
            what_to_do = f"continue it with `sortednet train resume={run_dir}`, or train into another hydra.run.dir"
        raise UserError(f"hydra.run.dir={run_dir} already holds a train run ({name}); {what_to_do}")


def config_groups() -> set[str]:
    from importlib.resources import files

    return {entry.name for entry in files("sortednet_cli.conf").iterdir() if entry.is_dir() and not entry.name.startswith("_")}


def quote_numeric_options(args: list[str]) -> list[str]:
    """`pool=160` names the option file 160.yaml, but Hydra reads 160 as an int and rejects it
    as a group choice; quoting numeric choices (also inside a sweep like `pool=160,full`) keeps
    the natural spelling working."""
    groups = config_groups()
    quoted = []
    for arg in args:
        key, sep, value = arg.partition("=")
        if sep and key.lstrip("+~") in groups and not any(c in value for c in "[]()'\""):
            value = ",".join(f"'{v}'" if v.strip().isdigit() else v for v in value.split(","))
        quoted.append(f"{key}{sep}{value}")
    return quoted


def checkpoint_data_overrides(args: list[str]) -> list[str]:
    """eval-grid and export start from the checkpoint's data config, which Hydra does not know
    when it composes: `data.root=x` (no data=<option>) becomes `+data.root=x`, and the command
    lays it over the checkpoint's data, checking it against that data's own schema."""
    if any(arg.split("=", 1)[0].lstrip("+~") == "data" for arg in args):
        return args
    return [f"+{arg}" if arg.startswith("data.") and "=" in arg else arg for arg in args]


def resume_overrides(args: list[str]) -> list[str]:
    """`train resume=<run>` continues the checkpoint's model and data, which Hydra does not know
    when it composes (it composes the default CNN on CIFAR-10): `data.path=x` becomes
    `++data.path=x` (added, or set where the default has the key), and train checks it against
    the checkpoint's own config (refused unless resumable, then typed by that config's schema)."""
    if not any(arg.startswith("resume=") and arg not in ("resume=", "resume=null") for arg in args):
        return args
    return [f"++{arg.lstrip('+')}" if arg.lstrip("+").startswith(("data.", "model.")) and "=" in arg else arg for arg in args]


def secondary_rank_overrides() -> list[str]:
    """Under torchrun, ranks other than 0 write nothing: their Hydra run directory is a
    temporary one, removed at exit, so a run has one directory."""
    rank = int(os.environ.get("RANK", "0"))
    if rank == 0:
        return []
    scratch = tempfile.mkdtemp(prefix=f"sortednet-rank{rank}-")
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    return [f"hydra.run.dir={scratch}", "hydra.output_subdir=null"]


def with_install_hint(message: str) -> str:
    for plugin_config, extra in LAUNCHER_EXTRAS.items():
        if f"Could not load 'hydra/launcher/{plugin_config}'" in message:
            return f"{message} Install the launcher: pip install 'sortednet-cli[{extra}]'"
    return message


@contextlib.contextmanager
def hydra_process_state(argv: list[str]) -> Iterator[None]:
    """What a Hydra app reads from the process, set for one call and restored after: its command
    line (`hydra.main` parses sys.argv; there is no argument for it), and HYDRA_FULL_ERROR=1, with
    which Hydra re-raises a composition error for main() to print as one line, instead of
    printing its own multi-line report and exiting."""
    saved_argv, saved_full_error = sys.argv, os.environ.get("HYDRA_FULL_ERROR")
    sys.argv = argv
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        yield
    finally:
        sys.argv = saved_argv
        if saved_full_error is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = saved_full_error


def usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: sortednet <command> [hydra overrides] [-m] [--cfg job] [--help]", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, text in COMMANDS.items()]
    lines += ["", "`sortednet <command> --help` shows that command's config groups and keys."]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return
    command = argv[0]
    if command not in COMMANDS:
        fail(f"unknown command {command!r} (commands: {', '.join(COMMANDS)}; see sortednet --help)")
    renamed = renamed_override(argv[1:])
    if renamed:
        fail(renamed)
    app = importlib.import_module(f"sortednet_cli.commands.{command.replace('-', '_')}").main
    args = quote_numeric_options(argv[1:])
    if command in CHECKPOINT_COMMANDS:
        args = checkpoint_data_overrides(args)
    if command == "train":
        args = resume_overrides(args)
    try:
        with hydra_process_state([f"sortednet {command}", *args, *secondary_rank_overrides()]):
            app()
    except (HydraException, OmegaConfBaseException) as exc:
        if os.environ.get("SORTEDNET_TRACEBACK"):
            raise
        fail(with_install_hint(one_line(exc)))
    except UserError as exc:  # a failed sweep job, re-raised by Hydra after the others ran, or a refused claim
        if os.environ.get("SORTEDNET_TRACEBACK"):
            raise
        fail(str(exc))
    except AssertionError as exc:
        if os.environ.get("SORTEDNET_TRACEBACK") or not str(exc).startswith(EMPTY_GROUP_ASSERTION):
            raise
        fail("an override sets a key under a config group with no option chosen; choose one first, e.g. pool=160 pool.widths=[0.5,1.0]")
    finally:
        release_all()  # the command's run directory (a one-line failure skips Hydra's end callbacks)
