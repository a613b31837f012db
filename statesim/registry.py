"""Registration records and the registry that merges what every plugin provides."""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, overload

from pydantic import BaseModel

from statesim.errors import PluginError, UnknownNameError

if TYPE_CHECKING:
    from statesim.cell import Cell
    from statesim.loggers import Logger
    from statesim.model import Encoder, InitialState, Topology
    from statesim.scenario import Scenario

#: The registered class: a Cell, Topology, InitialState, Scenario or Encoder subclass (statesim.kinds).
T = TypeVar("T")


class NameClashError(PluginError):
    """A name of one kind registered by two plugins: what happened and how to fix it, kept apart."""

    def __init__(self, what: str, fix: str) -> None:
        self.what, self.fix = what, fix
        super().__init__(f"{what}. {fix}")


@dataclass(frozen=True)
class Registration(Generic[T]):
    """One named thing a plugin provides: its class and the pydantic model of its YAML parameters.

    A registration hook returns a list of them; ``description`` is shown by ``statesim plugins`` and the
    generated reference.

    >>> import statesim
    >>> from statesim.builtin.cells import LSTMCell
    >>> @statesim.hookimpl
    ... def statesim_cells():
    ...     return [statesim.Registration("my_lstm", LSTMCell, LSTMCell.Params, "an LSTM under another name")]
    >>> record = statesim_cells()[0]
    >>> record.name, record.cls.__name__, record.params.__name__
    ('my_lstm', 'LSTMCell', 'LSTMParams')
    """

    name: str
    cls: type[T]
    params: type[BaseModel]
    description: str = ""


@dataclass(frozen=True)
class Provided(Generic[T]):
    """A registration together with the plugin (and distribution) that provided it.

    ``distribution`` and ``version`` are None for a built-in; checkpoints record them, so a host without the
    plugin is told what to install.

    >>> import statesim
    >>> registry = statesim.build_plugin_host(autoload=False).registry
    >>> provided = registry.get("cell", "lstm")
    >>> provided.record.name, provided.plugin, provided.distribution
    ('lstm', 'statesim.builtin.cells', None)
    """

    record: Registration[T]
    plugin: str
    distribution: str | None
    version: str | None


@dataclass
class Registry:
    """Registered names per kind (``cell``, ``topology``, ``initial_state``, ``scenario``).

    ``missing``: the plugins that failed to load or were dropped (``PluginProblem`` records), so that a name
    they would have provided is reported with the reason instead of a did-you-mean. ``recorded``: who provided
    each name in a file being loaded (a checkpoint's ``providers``, see :func:`provenance`), per kind, so that
    a host without that distribution is told what to install.

    >>> import statesim
    >>> registry = statesim.build_plugin_host(autoload=False).registry
    >>> registry.names("initial_state")
    ['encoded', 'learned', 'random', 'warmup', 'zeros']
    """

    entries: dict[str, dict[str, Provided[Any]]] = field(default_factory=dict)
    missing: list[Any] = field(default_factory=list)
    recorded: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)

    def add(self, kind: str, provided: Provided[Any]) -> None:
        """Add one record; a name already taken raises a NameClashError naming both providers."""
        table = self.entries.setdefault(kind, {})
        name = provided.record.name
        if name in table:
            first = table[name]
            raise NameClashError(
                f"The {kind} name '{name}' is registered twice: by plugin '{first.plugin}' "
                f"(distribution {_origin(first)}) and by plugin '{provided.plugin}' (distribution {_origin(provided)})",
                f"Uninstall or block one of them (STATESIM_BLOCK_PLUGINS={provided.plugin}), or rename the second "
                f"one.")
        table[name] = provided

    def names(self, kind: str) -> list[str]:
        """Registered names of one kind, sorted.

        >>> import statesim
        >>> registry = statesim.build_plugin_host(autoload=False).registry
        >>> registry.names("topology")
        ['bidirectional', 'encoder_decoder', 'stacked', 'unidirectional']
        """
        return sorted(self.entries.get(kind, {}))

    # The plugin manager checks every registered class against its kind's base (statesim.kinds), so the
    # record of a known kind holds a subclass of that base.
    @overload
    def get(self, kind: Literal["cell"], name: str) -> Provided[Cell]: ...
    @overload
    def get(self, kind: Literal["topology"], name: str) -> Provided[Topology]: ...
    @overload
    def get(self, kind: Literal["initial_state"], name: str) -> Provided[InitialState]: ...
    @overload
    def get(self, kind: Literal["scenario"], name: str) -> Provided[Scenario[Any]]: ...
    @overload
    def get(self, kind: Literal["encoder"], name: str) -> Provided[Encoder]: ...
    @overload
    def get(self, kind: Literal["logger"], name: str) -> Provided[Logger]: ...
    @overload
    def get(self, kind: str, name: str) -> Provided[Any]: ...

    def get(self, kind: str, name: str) -> Provided[Any]:
        """The record for ``name``; an UnknownNameError (a KeyError) carrying a did-you-mean when unknown.

        >>> import statesim
        >>> registry = statesim.build_plugin_host(autoload=False).registry
        >>> registry.get("cell", "gru").record.cls.__name__
        'GRUCell'
        >>> try:
        ...     registry.get("cell", "lstn")
        ... except KeyError as error:
        ...     print(error.args[0])
        unknown cell 'lstn'. Did you mean 'lstm'? Registered cells: ...
        """
        table = self.entries.get(kind, {})
        if name not in table:
            raise UnknownNameError(self.unknown(kind, name))
        return table[name]

    def unknown(self, kind: str, name: str, label: str | None = None) -> str:
        """The message for a ``kind`` named ``name`` that no loaded plugin registered (``label``: the kind as the
        user reads it, e.g. ``initial-state``)."""
        return unknown_name_message(label or kind, name, list(self.entries.get(kind, {})), missing=self.missing,
                                    recorded=self.recorded.get(kind, {}).get(name))


def _origin(provided: Provided[Any]) -> str:
    if provided.distribution is None:
        return "statesim (built-in)"
    return " ".join(part for part in (provided.distribution, provided.version) if part)


def provenance(registry: Registry, components: list[tuple[str, str]]) -> dict[str, dict[str, dict[str, Any]]]:
    """``{kind: {name: {plugin, distribution, version}}}`` of the named components, as plain data for a file."""
    found: dict[str, dict[str, dict[str, Any]]] = {}
    for kind, name in components:
        provided = registry.entries.get(kind, {}).get(name)
        if provided is not None:
            found.setdefault(kind, {})[name] = {"plugin": provided.plugin, "distribution": provided.distribution,
                                                "version": provided.version}
    return found


def did_you_mean(word: str, options: list[str]) -> str:
    """' Did you mean X?' for the closest option, or ''."""
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


def _resembles(name: str, problem: Any) -> bool:
    """Whether a plugin that failed to load is, by its plugin or distribution name, the likely provider."""
    key = name.lower().replace("-", "_")
    names = [str(getattr(problem, "name", "") or ""), str(getattr(problem, "distribution", "") or "")]
    return any(key in n.lower().replace("-", "_") or n.lower().replace("-", "_") in key for n in names if n)


def _install_hint(recorded: Any) -> str:
    """What to install, from a file's record of who provided the name (data from a file: checked)."""
    if not isinstance(recorded, dict) or not isinstance(recorded.get("distribution"), str):
        return ""
    dist, version = recorded["distribution"], recorded.get("version")
    pin = f"{dist}=={version}" if isinstance(version, str) and version else dist
    return (f" It was provided by distribution {dist} {version or ''}".rstrip() +
            f" where this was saved, which is not installed (or did not load) here: pip install '{pin}'.")


def unknown_name_message(kind: str, name: str, options: list[str], *, missing: list[Any] | tuple[()] = (),
                         recorded: Any = None) -> str:
    """The message for an unregistered name: who should have provided it and why it did not, else what exists
    and the closest one."""
    listing = f"Registered {kind}s: {', '.join(sorted(options)) or 'none'} (see `statesim plugins`)."
    likely = [p for p in missing if _resembles(name, p)]
    install = _install_hint(recorded)
    if likely:  # the reason it is missing, not a guess at an unrelated name
        return (f"unknown {kind} '{name}': {' '.join(str(p) for p in likely)}{install} {listing}")
    if install:
        return f"unknown {kind} '{name}'.{install} {listing}"
    others = f" Plugins that did not load (one may provide it): {' '.join(str(p) for p in missing)}" if missing else ""
    return f"unknown {kind} '{name}'.{did_you_mean(name, options)}{others} {listing}"
