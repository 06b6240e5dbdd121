"""Registries: a name in a config picks an implementation, and adding one is a decorator.

Each kind of plug-in (model family, task, sampler, optimizer, scheduler, logger) has one
`Registry`; asking for a name it does not hold fails with the names it does hold.
"""

from __future__ import annotations

from typing import Any, Callable, Generic, Optional, TypeVar

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from .errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, group: Optional[str] = None):
        self.kind = kind  # the config key that names an entry, e.g. "model.name"
        self.group = group  # the config group whose options entries' schemas type
        self._entries: dict[str, T] = {}
        self._schemas: dict[str, Optional[type]] = {}

    def register(self, name: str, schema: Optional[type] = None) -> Callable[[T], T]:
        """Decorator: `@MODELS.register("cpreresnet20", schema=CPreResNetConfig)`. The schema
        (a dataclass) is stored in Hydra's ConfigStore as `schemas/<group>/<name>`, which the
        option's YAML file lists first in its defaults (`/schemas/<group>/<name>@_here_`): bad
        keys then fail while composing, and schemas do not show as options of the group."""

        def add(entry: T) -> T:
            self._entries[name] = entry
            self._schemas[name] = schema
            if schema is not None and self.group is not None:
                ConfigStore.instance().store(group=f"schemas/{self.group}", name=name, node=schema)
            return entry

        return add

    def get(self, name: Any) -> T:
        if name not in self._entries:
            raise UserError(f"{self.kind}={name!r} is not known (known: {', '.join(self.names())})")
        return self._entries[name]

    def schema(self, name: Any) -> Optional[type]:
        self.get(name)
        return self._schemas[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def typed(self, name: Any, node):
        """`node` (a plain config) merged onto the entry's schema: typed, defaults filled in."""
        schema = self.schema(name)
        return node if schema is None else OmegaConf.merge(OmegaConf.structured(schema), node)
