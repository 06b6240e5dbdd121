"""`python run_commands.py JSON`: run several sortednet commands, one after another, in this
one process (JSON: a list of argument lists). Tests that need a fresh interpreter (an
environment variable read at start-up) pay its start-up once instead of once per command.
Stops at the first command that fails, with its exit code."""

import json
import sys

from hydra.core.global_hydra import GlobalHydra

from sortednet_cli import cli

if __name__ == "__main__":
    for args in json.loads(sys.argv[1]):
        GlobalHydra.instance().clear()
        try:
            cli.main(args)
        except SystemExit as exc:
            if exc.code not in (0, None):
                print(f"sortednet {' '.join(args)} exited with {exc.code}", file=sys.stderr)
                raise
