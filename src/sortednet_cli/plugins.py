"""Every config schema in Hydra's ConfigStore: the commands' own, and those of the built-in
plug-ins (model families, tasks, optimizers, schedules), which store theirs as they register."""

from .config import register_configs as register_command_configs


def register_configs() -> None:
    from . import models, tasks  # noqa: F401  (importing registers them)
    from .engine import optim  # noqa: F401

    register_command_configs()
