"""Name -> spec registries (learners, backbones, data sets, task sources, augmentation presets, config sections)
and plugin discovery.

A plugin is one file that registers itself when imported. `discover()` imports every module of the built-in plugin
folders (`PLUGIN_PACKAGES`) and every module named by an installed package's `metassl.plugins` entry point, once,
the first time any registry is read; so a new file in a plugin folder, or a separate package declaring

    [project.entry-points."metassl.plugins"]
    my_method = "my_package.my_method"

is found with no list of imports to edit. The registries hold classes and functions only, never run state, so
several processes or runs in one process cannot interfere. This module sits at the bottom of the layers: it imports
plugin modules by name at run time, never statically, so the layer order (see tests/test_layers.py) holds.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import pkgutil
from typing import Generic, Iterator, TypeVar

from .errors import ConfigError

T = TypeVar("T")

#: folders whose every module is imported by `discover` (lower layers first, so a plugin may use a lower one's names)
PLUGIN_PACKAGES = ("metassl.data", "metassl.data.loaders", "metassl.models", "metassl.learners", "metassl.ssl",
                   "metassl.eval.transductive")
ENTRY_POINT_GROUP = "metassl.plugins"


class PluginError(ImportError):
    """A plugin module could not be imported; the message names the module and where it came from."""


class Registry(Generic[T]):
    """Registered entries by name. Reading it (lookup, iteration, `in`) first runs plugin discovery."""

    def __init__(self, kind: str, config_key: str | None = None):
        self.kind, self.config_key = kind, config_key
        self._entries: dict[str, T] = {}

    def add(self, name: str, value: T) -> T:
        if name in self._entries and self._entries[name] is not value:
            raise ValueError(f"{self.kind} {name!r} is registered twice (the second time by {_origin(value)}; "
                             f"first by {_origin(self._entries[name])}); rename one of them")
        self._entries[name] = value
        return value

    def lookup(self, name: str) -> T:
        """The entry, or a ConfigError naming the config key, the closest names and all known ones."""
        entries = self._all()
        if name not in entries:
            close = difflib.get_close_matches(name, entries, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            where = f" (config key {self.config_key})" if self.config_key else ""
            raise ConfigError(f"unknown {self.kind} {name!r}{where}.{hint} Known: {', '.join(sorted(entries))}")
        return entries[name]

    def get(self, name: str, default: T | None = None) -> T | None:
        return self._all().get(name, default)

    def _all(self) -> dict[str, T]:
        discover()
        return self._entries

    def __contains__(self, name: object) -> bool:
        return name in self._all()

    def __getitem__(self, name: str) -> T:
        return self._all()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._all()))

    def __len__(self) -> int:
        return len(self._all())

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._all().items())

    def values(self) -> list[T]:
        return [v for _, v in self.items()]


def _origin(value: object) -> str:
    target = getattr(value, "build", value)
    return getattr(target, "__module__", None) or type(value).__module__


LEARNERS: Registry = Registry("learner", "learner.name")
BACKBONES: Registry = Registry("backbone", "model.backbone")
DATASETS: Registry = Registry("data set", "data.dataset")
TASK_SOURCES: Registry = Registry("task source", "tasks.source")
AUGMENTATIONS: Registry = Registry("augmentation preset", "augment.preset")
#: config sections owned by a lower layer (e.g. `augment`, by the augmentation module): name -> dataclass
SECTIONS: Registry = Registry("config section")
#: transductive inference methods (`metassl eval --transductive NAME`): name -> eval.transductive.TransductiveSpec
TRANSDUCTIVE: Registry = Registry("transductive method", "--transductive")

_state = {"done": False, "running": False}


def discover() -> None:
    """Import the built-in plugin folders and the `metassl.plugins` entry points (once per process)."""
    if _state["done"] or _state["running"]:
        return
    _state["running"] = True
    try:
        for package in PLUGIN_PACKAGES:
            pkg = importlib.import_module(package)
            for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
                if not info.ispkg and not info.name.startswith("_"):
                    _import(f"{package}.{info.name}", f"the plugin folder {pkg.__path__[0]}")
        for ep in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            dist = getattr(ep, "dist", None)
            where = f"entry point {ep.name!r} of the installed package {dist.name if dist else '?'}"
            try:
                ep.load()
            except Exception as e:  # noqa: BLE001 - name the plugin, keep the cause
                raise PluginError(f"metassl plugin {ep.value!r} ({where}) failed to import: {type(e).__name__}: "
                                  f"{e}. Fix or uninstall that package.") from e
        _state["done"] = True
    finally:
        _state["running"] = False


def _import(module: str, where: str) -> None:
    try:
        importlib.import_module(module)
    except Exception as e:  # noqa: BLE001
        raise PluginError(f"metassl plugin module {module} (from {where}) failed to import: {type(e).__name__}: "
                          f"{e}") from e
