"""The process's plugin manager for runtime extension points: engine fast paths and sweep executors.

A run's registries (cells, topologies, scenarios...) come from a fresh :class:`statesim.plugin_manager.PluginHost`
per run. The engine and the sweep runner have no run at hand, so their extension points are hooks on one
process-wide pluggy manager, built on first use: the built-in plugins below first, then every installed
``statesim`` entry point (the same plugins, the same environment switches ``STATESIM_DISABLE_PLUGIN_AUTOLOAD``
and ``STATESIM_BLOCK_PLUGINS``). A plugin that fails to load is skipped here; the run's plugin host reports it.

Hooks are called through pluggy's hook caller (``manager().hook.statesim_fast_paths()``), so ``tryfirst``,
``trylast`` and tracing work, and a plugin registered later is called earlier (pluggy's order).
"""
from __future__ import annotations

import os
from importlib import import_module, metadata

import pluggy

from statesim import hookspecs

#: Built-in plugins of the runtime hooks, registered exactly as an installed plugin would be.
BUILTIN_PLUGINS: tuple[str, ...] = ("statesim.builtin.fast_paths", "statesim.builtin.executors")

_MANAGER: pluggy.PluginManager | None = None


def _load_entry_points(manager: pluggy.PluginManager) -> None:
    from statesim.plugin_manager import AUTOLOAD_ENV, BLOCK_ENV, ENTRY_POINT_GROUP
    from statesim.pluginwatch import GAVE_UP, ImportTimedOut, watch_import

    if os.environ.get(AUTOLOAD_ENV, "").strip().lower() in {"1", "true", "yes"}:
        return
    blocked = {name.strip() for name in os.environ.get(BLOCK_ENV, "").split(",") if name.strip()}
    for entry_point in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        if entry_point.name in blocked or entry_point.name in GAVE_UP or manager.has_plugin(entry_point.name):
            continue
        try:
            with watch_import(f"plugin '{entry_point.name}'", f"skip it with {BLOCK_ENV}={entry_point.name}."):
                plugin = entry_point.load()
            manager.register(plugin, name=entry_point.name)
        except (Exception, SystemExit) as exc:  # reported by the run's plugin host, which loads the same plugin
            if isinstance(exc, ImportTimedOut):
                GAVE_UP.add(entry_point.name)
            continue


def manager() -> pluggy.PluginManager:
    """The process-wide manager of the runtime hooks (built on first use)."""
    global _MANAGER
    if _MANAGER is None:
        built = pluggy.PluginManager("statesim")
        built.add_hookspecs(hookspecs)
        for name in BUILTIN_PLUGINS:
            built.register(import_module(name), name=name)
        _load_entry_points(built)
        _MANAGER = built
    return _MANAGER


def reset() -> None:
    """Forget the manager, so the next use loads the plugins again (after installing one, in tests)."""
    global _MANAGER
    _MANAGER = None
