"""Build a fresh plugin host per run: built-ins first, then entry points, then merge and check.

Environment variables:

* ``STATESIM_DISABLE_PLUGIN_AUTOLOAD=1``: load no entry points (built-ins only).
* ``STATESIM_BLOCK_PLUGINS=a,b``: skip the named plugins (entry-point names or built-in module names).

A plugin that fails to import, has a misspelled or mis-typed hook, or registers a name that is
already taken is reported (``PluginHost.problems``) with its name and distribution, and everything
else still loads; with ``strict=True`` the first such problem raises instead.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import import_module, metadata
from types import ModuleType
from typing import Iterable

import pluggy

from statesim import hookspecs
from statesim.errors import PluginError
from statesim.pluginwatch import watch_import
from statesim.registry import Provided, Registration, Registry

ENTRY_POINT_GROUP = "statesim"
AUTOLOAD_ENV = "STATESIM_DISABLE_PLUGIN_AUTOLOAD"
BLOCK_ENV = "STATESIM_BLOCK_PLUGINS"

#: Built-in plugins, registered through the same hooks as any third-party plugin.
BUILTIN_PLUGINS: tuple[str, ...] = (
    "statesim.builtin.cells",
    "statesim.builtin.topologies",
    "statesim.builtin.initial_states",
    "statesim.builtin.layered",
    "statesim.builtin.encoder_decoder",
    "statesim.builtin.state_policies",
    "statesim.builtin.scenarios.translation",
    "statesim.builtin.scenarios.captioning",
    "statesim.builtin.scenarios.initial_state_effect",
    "statesim.builtin.scenarios.moving_average",
    "statesim.builtin.scenarios.linear_system",
    "statesim.builtin.scenarios.long_lag",
    "statesim.builtin.salamander.cpg",
    "statesim.builtin.scenarios.salamander",
)


@dataclass(frozen=True)
class PluginInfo:
    """A loaded plugin: its name, distribution and version (None for built-ins)."""

    name: str
    distribution: str | None
    version: str | None


@dataclass
class PluginHost:
    """The plugin manager of one run, the merged registry, and the problems met while loading."""

    manager: pluggy.PluginManager
    registry: Registry
    plugins: list[PluginInfo] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def provided_by(self, plugin: str) -> dict[str, list[str]]:
        """Names registered by one plugin, per kind."""
        return {kind: sorted(n for n, p in table.items() if p.plugin == plugin)
                for kind, table in self.registry.entries.items()}


def _blocked_from_env() -> set[str]:
    return {name.strip() for name in os.environ.get(BLOCK_ENV, "").split(",") if name.strip()}


def _entry_points() -> list[tuple[metadata.EntryPoint, str | None, str | None]]:
    """Every ``statesim`` entry point with its distribution's name and version, sorted by name.

    Walks the distributions rather than using ``metadata.entry_points()``, which keeps only one
    entry point per name and would hide a name clash between two distributions.
    """
    found, seen = [], set()
    for dist in metadata.distributions():
        name = dist.metadata["Name"] if dist.metadata else None
        key = (name or "").lower().replace("-", "_")
        if key in seen:  # the same distribution twice on sys.path: the first one is what imports
            continue
        seen.add(key)
        found += [(ep, name, dist.version) for ep in dist.entry_points if ep.group == ENTRY_POINT_GROUP]
    return sorted(found, key=lambda item: (item[0].name, item[1] or ""))


def _unmarked_hooks(manager: pluggy.PluginManager, plugin: object) -> list[str]:
    """Functions named like a hook that lack the ``@statesim.hookimpl`` marker (pluggy skips them silently)."""
    names = [n for n in dir(plugin) if n.startswith("statesim_") and callable(getattr(plugin, n, None))]
    return [n for n in names if manager.parse_hookimpl_opts(plugin, n) is None]


#: The base class each registration hook's classes must subclass (module, class), imported only when checked.
_BASES: dict[str, tuple[str, str]] = {
    "statesim_cells": ("statesim.cell", "Cell"),
    "statesim_topologies": ("statesim.model", "Topology"),
    "statesim_initial_states": ("statesim.model", "InitialState"),
    "statesim_scenarios": ("statesim.scenario", "Scenario"),
}


def _check_record(hook_name: str, record: Registration) -> None:
    """A record's class must subclass its kind's base class and its params must be a pydantic model."""
    from pydantic import BaseModel

    if hook_name in _BASES:
        module, name = _BASES[hook_name]
        base = getattr(import_module(module), name)
        if not (isinstance(record.cls, type) and issubclass(record.cls, base)):
            raise TypeError(f"{hook_name} registered '{record.name}' with {record.cls!r}, which is not a subclass "
                            f"of statesim.{name}")
    if not (isinstance(record.params, type) and issubclass(record.params, BaseModel)):
        raise TypeError(f"{hook_name} registered '{record.name}' with params {record.params!r}, which is not a "
                        f"pydantic model class")


def _call_hook(manager: pluggy.PluginManager, plugin: object, hook_name: str) -> list[Registration]:
    """Call one registration hook of a single plugin and check what it returned."""
    impls = [impl for impl in getattr(manager.hook, hook_name).get_hookimpls() if impl.plugin is plugin]
    records: list[Registration] = []
    for impl in impls:
        result = impl.function()
        for record in result or []:
            if not isinstance(record, Registration):
                raise TypeError(f"hook {hook_name} returned {type(record).__name__}, expected statesim.Registration")
            _check_record(hook_name, record)
            records.append(record)
    return records


def build_plugin_host(*, autoload: bool | None = None, block: Iterable[str] = (), strict: bool = False) -> PluginHost:
    """Load built-in and installed plugins into a new :class:`PluginHost` (never a global one)."""
    manager = pluggy.PluginManager("statesim")
    manager.add_hookspecs(hookspecs)
    blocked = set(block) | _blocked_from_env()
    if autoload is None:
        autoload = os.environ.get(AUTOLOAD_ENV, "").strip().lower() not in {"1", "true", "yes"}
    host = PluginHost(manager, Registry())

    def problem(message: str) -> None:
        if strict:
            raise PluginError(message + " (--strict-plugins is on, so statesim stops here.)")
        host.problems.append(message)

    loaded: list[tuple[object, PluginInfo]] = []
    for module_name in BUILTIN_PLUGINS:
        if module_name in blocked:
            continue
        module = import_module(module_name)
        manager.register(module, name=module_name)
        loaded.append((module, PluginInfo(module_name, None, None)))

    if autoload:
        taken: dict[str, str] = {}
        for entry_point, dist, version in _entry_points():
            if entry_point.name in blocked:
                continue
            where = f"plugin '{entry_point.name}' (distribution {dist or 'unknown'} {version or ''})".replace(" )", ")")
            if entry_point.name in taken or entry_point.name in BUILTIN_PLUGINS:
                problem(f"{where} was not loaded: the plugin name '{entry_point.name}' is already used by "
                        f"{taken.get(entry_point.name, 'a built-in plugin')}. Uninstall one of the two distributions.")
                continue
            taken[entry_point.name] = f"distribution {dist or 'unknown'} {version or ''}".strip()
            try:
                with watch_import(where, f"skip it with {BLOCK_ENV}={entry_point.name} (or --block-plugin "
                                         f"{entry_point.name})."):
                    plugin = entry_point.load()
            except (Exception, SystemExit) as exc:  # a broken plugin must not take the others down
                problem(f"{where} failed to import: {type(exc).__name__}: {exc}. "
                        f"Fix or uninstall it, or skip it with {BLOCK_ENV}={entry_point.name}.")
                continue
            try:
                manager.register(plugin, name=entry_point.name)
            except (ValueError, pluggy.PluginValidationError) as exc:
                problem(f"{where} has an invalid hook: {' '.join(str(exc).split())}. Skip it with {BLOCK_ENV}={entry_point.name}.")
                continue
            for attr in _unmarked_hooks(manager, plugin):
                problem(f"{where} defines {attr}() without the @statesim.hookimpl marker, so statesim ignores it. "
                        f"Decorate it with @statesim.hookimpl.")
            loaded.append((plugin, PluginInfo(entry_point.name, dist, version)))

    while True:  # check_pending stops at the first bad plugin; report every one
        try:
            manager.check_pending()
            break
        except pluggy.PluginValidationError as exc:
            bad = exc.plugin
            info = next((i for p, i in loaded if p is bad), None)
            if info is None or info.distribution is None:
                raise
            problem(f"plugin '{info.name}' (distribution {info.distribution} {info.version or ''}) implements a "
                    f"hook that statesim does not define: {exc}. Check the spelling of its statesim_* functions "
                    f"(hooks: {', '.join(n for n in sorted(dir(hookspecs)) if n.startswith('statesim_'))}).".replace(" )", ")"))
            manager.unregister(bad)
            loaded = [(p, i) for p, i in loaded if p is not bad]

    for plugin, info in loaded:
        try:
            records = {kind: _call_hook(manager, plugin, hook) for kind, hook in hookspecs.REGISTRATION_HOOKS.items()}
        except Exception as exc:
            if info.distribution is None:
                raise
            dist = f"{info.distribution} {info.version or ''}".strip()
            problem(f"plugin '{info.name}' (distribution {dist}) raised while registering: "
                    f"{type(exc).__name__}: {exc}. Skip it with {BLOCK_ENV}={info.name}.")
            manager.unregister(plugin)
            continue
        staged = Registry({kind: dict(table) for kind, table in host.registry.entries.items()})
        try:
            for kind, kind_records in records.items():
                for record in kind_records:
                    staged.add(kind, Provided(record, info.name, info.distribution, info.version))
        except PluginError as exc:
            if info.distribution is None:
                raise
            problem(str(exc) + f" Plugin '{info.name}' was not loaded.")
            manager.unregister(plugin)
            continue
        host.registry = staged
        host.plugins.append(info)
    return host


def plugin_modules() -> tuple[ModuleType, ...]:
    """The imported built-in plugin modules (for documentation and tests)."""
    return tuple(import_module(name) for name in BUILTIN_PLUGINS)
