"""The task registry: a data config's `name` picks the task that reads it."""

from ..registry import Registry

TASKS = Registry("data.name", group="data")
