"""Registration records and the registry that merges what every plugin provides."""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from pydantic import BaseModel

from statesim.errors import PluginError, UnknownNameError


class NameClashError(PluginError):
    """A name of one kind registered by two plugins: what happened and how to fix it, kept apart."""

    def __init__(self, what: str, fix: str) -> None:
        self.what, self.fix = what, fix
        super().__init__(f"{what}. {fix}")


@dataclass(frozen=True)
class Registration:
    """One named thing a plugin provides: its class and the pydantic model of its YAML parameters."""

    name: str
    cls: type
    params: type[BaseModel]
    description: str = ""


@dataclass(frozen=True)
class Provided:
    """A registration together with the plugin (and distribution) that provided it."""

    record: Registration
    plugin: str
    distribution: str | None
    version: str | None


@dataclass
class Registry:
    """Registered names per kind (``cell``, ``topology``, ``initial_state``, ``scenario``)."""

    entries: dict[str, dict[str, Provided]] = field(default_factory=dict)

    def add(self, kind: str, provided: Provided) -> None:
        """Add one record; a name already taken raises a NameClashError naming both providers."""
        table = self.entries.setdefault(kind, {})
        name = provided.record.name
        if name in table:
            first = table[name]
            raise NameClashError(
                f"The {kind} name '{name}' is registered twice: by plugin '{first.plugin}' "
                f"(distribution {first.distribution or 'statesim (built-in)'}) and by plugin '{provided.plugin}' "
                f"(distribution {provided.distribution or 'statesim (built-in)'})",
                f"Uninstall or block one of them (STATESIM_BLOCK_PLUGINS={provided.plugin}), or rename the second "
                f"one.")
        table[name] = provided

    def names(self, kind: str) -> list[str]:
        """Registered names of one kind, sorted."""
        return sorted(self.entries.get(kind, {}))

    def get(self, kind: str, name: str) -> Provided:
        """The record for ``name``; an UnknownNameError (a KeyError) carrying a did-you-mean when unknown."""
        table = self.entries.get(kind, {})
        if name not in table:
            raise UnknownNameError(unknown_name_message(kind, name, list(table)))
        return table[name]


def did_you_mean(word: str, options: list[str]) -> str:
    """' Did you mean X?' for the closest option, or ''."""
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.5)
    return f" Did you mean '{close[0]}'?" if close else ""


def unknown_name_message(kind: str, name: str, options: list[str]) -> str:
    """The message for an unregistered name: what exists and the closest one."""
    return (f"unknown {kind} '{name}'.{did_you_mean(name, options)} "
            f"Registered {kind}s: {', '.join(sorted(options)) or 'none'} (see `statesim plugins`).")
