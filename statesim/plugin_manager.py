"""Build a fresh plugin host per run: built-ins first, then entry points, then merge and check.

Environment variables:

* ``STATESIM_DISABLE_PLUGIN_AUTOLOAD=1``: load no entry points (built-ins only).
* ``STATESIM_BLOCK_PLUGINS=a,b``: skip the named plugins (entry-point names or built-in module names).
* ``STATESIM_TRACE_HOOKS=1``: print pluggy's trace of every hook call (which plugin, what it returned).

A plugin that fails to import, has a misspelled or mis-typed hook, or registers a name that is
already taken is reported (``PluginHost.problems``: :class:`PluginProblem` records of name, distribution,
version, what went wrong and the fix), and everything else still loads; with ``strict=True`` the first
such problem raises instead. Names are merged in load order, so the first provider of a name keeps it;
a plugin whose registration hook is marked ``tryfirst`` (``trylast``) is merged before (after) the rest.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from importlib import import_module, metadata
from typing import Callable, Iterable

import pluggy

from statesim import hookspecs
from statesim.errors import PluginError
from statesim.kinds import KINDS, Kind
from statesim.pluginwatch import GAVE_UP, ImportTimedOut, watch_import
from statesim.registry import NameClashError, Provided, Registration, Registry

ENTRY_POINT_GROUP = "statesim"
AUTOLOAD_ENV = "STATESIM_DISABLE_PLUGIN_AUTOLOAD"
BLOCK_ENV = "STATESIM_BLOCK_PLUGINS"
TRACE_ENV = "STATESIM_TRACE_HOOKS"

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
    "statesim.builtin.scenarios.flipflop",
    "statesim.builtin.scenarios.sequences",
    "statesim.builtin.salamander.cpg",
    "statesim.builtin.scenarios.salamander",
    "statesim.builtin.loggers",
)


@dataclass(frozen=True)
class PluginInfo:
    """A loaded plugin: its name, distribution and version (None for built-ins)."""

    name: str
    distribution: str | None
    version: str | None


@dataclass(frozen=True)
class PluginProblem:
    """A plugin that could not be (fully) loaded: who, what went wrong, and how to fix it.

    ``str()`` renders the one paragraph statesim prints; ``needle in problem`` searches that paragraph.
    """

    name: str
    distribution: str | None
    version: str | None
    what: str
    fix: str
    #: The plugin was loaded despite the problem (a warning, e.g. another plugin API version): it is not
    #: among the plugins an unknown name may be missing from.
    loaded: bool = False

    @property
    def where(self) -> str:
        """``plugin 'NAME' (distribution DIST VERSION)``."""
        dist = " ".join(part for part in (self.distribution or "unknown", self.version or "") if part)
        return f"plugin '{self.name}' (distribution {dist})"

    def __str__(self) -> str:
        return f"{self.where} {self.what}. {self.fix}"

    def __contains__(self, needle: str) -> bool:
        return needle in str(self)

    def to_json(self) -> dict[str, str | None]:
        """The record as plain data (run.json)."""
        return {"name": self.name, "distribution": self.distribution, "version": self.version, "what": self.what,
                "fix": self.fix, "message": str(self)}


@dataclass
class PluginHost:
    """The plugin manager of one run, the merged registry, and the problems met while loading."""

    manager: pluggy.PluginManager
    registry: Registry
    plugins: list[PluginInfo] = field(default_factory=list)
    problems: list[PluginProblem] = field(default_factory=list)

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


def _check_record(kind: Kind, record: Registration) -> None:
    """A record's class must subclass its kind's base class and its params must be a pydantic model."""
    from pydantic import BaseModel

    if not (isinstance(record.cls, type) and issubclass(record.cls, kind.base_class())):
        raise TypeError(f"{kind.hook} registered '{record.name}' with {record.cls!r}, which is not a subclass "
                        f"of {kind.base_name}")
    if not (isinstance(record.params, type) and issubclass(record.params, BaseModel)):
        raise TypeError(f"{kind.hook} registered '{record.name}' with params {record.params!r}, which is not a "
                        f"pydantic model class")


def _others(manager: pluggy.PluginManager, plugin: object) -> list[object]:
    return [other for other in manager.get_plugins() if other is not plugin]


def _call_hook(manager: pluggy.PluginManager, plugin: object, kind: Kind) -> list[Registration]:
    """Call one registration hook of a single plugin through pluggy's caller and check what it returned.

    One plugin at a time, so a failure is that plugin's alone and every record is attributed to it;
    through pluggy's caller (not the bare function), so hook-call monitoring and tracing see the call.
    """
    caller = manager.subset_hook_caller(kind.hook, remove_plugins=_others(manager, plugin))
    records: list[Registration] = []
    for result in caller():
        for record in result or []:
            if not isinstance(record, Registration):
                raise TypeError(f"hook {kind.hook} returned {type(record).__name__}, expected statesim.Registration")
            _check_record(kind, record)
            records.append(record)
    return records


def _priority(manager: pluggy.PluginManager, plugin: object) -> int:
    """0 for a plugin with a ``tryfirst`` registration hook, 2 when all of them are ``trylast``, else 1."""
    impls = [impl for kind in KINDS for impl in getattr(manager.hook, kind.hook).get_hookimpls()
             if impl.plugin is plugin]
    if any(impl.tryfirst for impl in impls):
        return 0
    return 2 if impls and all(impl.trylast for impl in impls) else 1


def _tracing(manager: pluggy.PluginManager) -> None:
    """``STATESIM_TRACE_HOOKS=1``: pluggy's own tracing of every hook call, on stderr."""
    if os.environ.get(TRACE_ENV, "").strip().lower() in {"1", "true", "yes"}:
        manager.trace.root.setwriter(lambda text: sys.stderr.write(text))
        manager.enable_tracing()


def _load_entry_points(manager: pluggy.PluginManager, blocked: set[str], problem: Callable[..., None],
                       loaded: list[tuple[object, PluginInfo]]) -> None:
    """Import and register every entry point not blocked; report the ones that fail."""
    taken: dict[str, str] = {}
    for entry_point, dist, version in _entry_points():
        if entry_point.name in blocked:
            continue
        info = PluginInfo(entry_point.name, dist, version)
        if entry_point.name in taken or entry_point.name in BUILTIN_PLUGINS:
            problem(info, f"was not loaded: the plugin name '{entry_point.name}' is already used by "
                          f"{taken.get(entry_point.name, 'a built-in plugin')}",
                    "Uninstall one of the two distributions.")
            continue
        taken[entry_point.name] = f"distribution {dist or 'unknown'} {version or ''}".strip()
        skip = f"Skip it with {BLOCK_ENV}={entry_point.name}."
        where = PluginProblem(info.name, dist, version, "", "").where
        try:
            with watch_import(where, f"skip it with {BLOCK_ENV}={entry_point.name} (or --block-plugin "
                                     f"{entry_point.name})."):
                plugin = entry_point.load()
        except (Exception, SystemExit) as exc:  # a broken plugin must not take the others down
            if isinstance(exc, ImportTimedOut):
                GAVE_UP.add(entry_point.name)
            problem(info, f"failed to import: {type(exc).__name__}: {exc}", f"Fix or uninstall it, or s{skip[1:]}")
            continue
        try:
            manager.register(plugin, name=entry_point.name)
        except (ValueError, pluggy.PluginValidationError) as exc:
            problem(info, f"has an invalid hook: {' '.join(str(exc).split())}", skip)
            continue
        for attr in _unmarked_hooks(manager, plugin):
            problem(info, f"defines {attr}() without the @statesim.hookimpl marker, so statesim ignores it",
                    "Decorate it with @statesim.hookimpl.")
        _check_api(plugin, info, problem)
        loaded.append((plugin, info))


def _check_api(plugin: object, info: PluginInfo, problem: Callable[..., None]) -> None:
    """Warn when a plugin declares another plugin API version than this statesim provides."""
    declared = getattr(plugin, hookspecs.PLUGIN_API_ATTRIBUTE, None)
    if declared is None or declared == hookspecs.PLUGIN_API:
        return
    from statesim import __version__

    problem(info, f"was written for statesim plugin API {declared!r} ({hookspecs.PLUGIN_API_ATTRIBUTE} in "
                  f"{getattr(plugin, '__name__', info.name)}), but statesim {__version__} provides plugin API "
                  f"{hookspecs.PLUGIN_API}; it was loaded, and hooks or base classes it relies on may behave "
                  f"differently",
            f"Install a release of {info.distribution or info.name} written for plugin API {hookspecs.PLUGIN_API} "
            f"(or a statesim that provides API {declared!r}); its author sets {hookspecs.PLUGIN_API_ATTRIBUTE} = "
            f"{hookspecs.PLUGIN_API} once it is ported.", loaded=True)


def build_plugin_host(*, autoload: bool | None = None, block: Iterable[str] = (), strict: bool = False) -> PluginHost:
    """Load built-in and installed plugins into a new :class:`PluginHost` (never a global one).

    ``autoload=False`` loads the built-ins only (None: unless ``STATESIM_DISABLE_PLUGIN_AUTOLOAD`` is set);
    ``block`` skips plugins by name; ``strict`` raises a PluginError at the first plugin that fails to load
    instead of recording it in ``host.problems``.

    >>> import statesim
    >>> host = statesim.build_plugin_host(autoload=False)
    >>> "lstm" in host.registry.names("cell"), host.problems
    (True, [])
    >>> blocked = statesim.build_plugin_host(autoload=False, block=["statesim.builtin.cells"])
    >>> "lstm" in blocked.registry.names("cell")
    False
    """
    manager = pluggy.PluginManager("statesim")
    manager.add_hookspecs(hookspecs)
    _tracing(manager)
    blocked = set(block) | _blocked_from_env()
    if autoload is None:
        autoload = os.environ.get(AUTOLOAD_ENV, "").strip().lower() not in {"1", "true", "yes"}
    host = PluginHost(manager, Registry())

    def problem(info: PluginInfo, what: str, fix: str, loaded: bool = False) -> None:
        record = PluginProblem(info.name, info.distribution, info.version, what, fix, loaded)
        if strict:
            raise PluginError(f"{record} (--strict-plugins is on, so statesim stops here.)")
        host.problems.append(record)

    loaded: list[tuple[object, PluginInfo]] = []
    for module_name in BUILTIN_PLUGINS:
        if module_name in blocked:
            continue
        module = import_module(module_name)
        manager.register(module, name=module_name)
        loaded.append((module, PluginInfo(module_name, None, None)))
    if autoload:
        _load_entry_points(manager, blocked, problem, loaded)

    hooks = ", ".join(n for n in sorted(dir(hookspecs)) if n.startswith("statesim_"))
    while True:  # check_pending stops at the first bad plugin; report every one
        try:
            manager.check_pending()
            break
        except pluggy.PluginValidationError as exc:
            bad = exc.plugin
            info = next((i for p, i in loaded if p is bad), None)
            if info is None or info.distribution is None:
                raise
            problem(info, f"implements a hook that statesim does not define: {exc}",
                    f"Check the spelling of its statesim_* functions (hooks: {hooks}).")
            manager.unregister(bad)
            loaded = [(p, i) for p, i in loaded if p is not bad]

    # Merge in load order (built-ins first), except that tryfirst/trylast plugins move to the front/back.
    order = sorted(range(len(loaded)), key=lambda index: (_priority(manager, loaded[index][0]), index))
    for plugin, info in (loaded[index] for index in order):
        _merge(host, plugin, info, problem)
    # an unknown name is then reported with the plugin that failed (not one that loaded with a warning)
    host.registry.missing = [p for p in host.problems if not p.loaded]
    return host


def _merge(host: PluginHost, plugin: object, info: PluginInfo, problem: Callable[..., None]) -> None:
    """Add one plugin's registrations of every kind to the host's registry, all or none of them."""
    skip = f"Skip it with {BLOCK_ENV}={info.name}."
    try:
        records = {kind.name: _call_hook(host.manager, plugin, kind) for kind in KINDS}
    except Exception as exc:
        if info.distribution is None:
            raise
        problem(info, f"raised while registering: {type(exc).__name__}: {exc}", skip)
        host.manager.unregister(plugin)
        return
    staged = Registry({kind: dict(table) for kind, table in host.registry.entries.items()})
    try:
        for kind, kind_records in records.items():
            for record in kind_records:
                staged.add(kind, Provided(record, info.name, info.distribution, info.version))
    except NameClashError as exc:
        if info.distribution is None:
            raise
        problem(info, f"was refused: {exc.what}", f"{exc.fix} Plugin '{info.name}' was not loaded.")
        host.manager.unregister(plugin)
        return
    host.registry = staged
    host.plugins.append(info)
