"""Name -> spec registries (learners, backbones, data sets, task sources). They hold classes and functions only,
never run state, so several processes or runs in one process cannot interfere."""

from __future__ import annotations

import difflib
from typing import Generic, TypeVar

from .config import ConfigError

T = TypeVar("T")


class Registry(dict, Generic[T]):
    def __init__(self, kind: str, config_key: str | None = None):
        super().__init__()
        self.kind, self.config_key = kind, config_key

    def add(self, name: str, value: T) -> T:
        if name in self:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self[name] = value
        return value

    def lookup(self, name: str) -> T:
        """The entry, or a ConfigError naming the config key, the closest names and all known ones."""
        if name not in self:
            close = difflib.get_close_matches(name, self, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            where = f" (config key {self.config_key})" if self.config_key else ""
            raise ConfigError(f"unknown {self.kind} {name!r}{where}.{hint} Known: {', '.join(sorted(self))}")
        return self[name]
