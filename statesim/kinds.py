"""The one table of plugin kinds: what a plugin can register, through which hook, subclassing which base.

Everything that needs the list of kinds reads it here: the plugin manager (which hook to call, which
base class a registered class must subclass), the config (``ComponentSpec.kind``), ``statesim plugins``
and the generated reference (labels and titles). A new kind is one row here plus its hook
specification in :mod:`statesim.hookspecs`.
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module


@dataclass(frozen=True)
class Kind:
    """One kind of registered thing."""

    name: str  # the registry key and ComponentSpec.kind, e.g. "cell"
    hook: str  # the registration hook, e.g. "statesim_cells"
    base: str  # "module:Class" every registered class must subclass (imported only when checked)
    label: str  # singular, for people: "initial state"
    plural: str  # "initial states"
    title: str  # section title in docs/scenarios.md
    yaml: str  # where a scenario file names one, e.g. "model.cell"

    def base_class(self) -> type:
        """The base class (imported now)."""
        module, name = self.base.split(":")
        return getattr(import_module(module), name)

    @property
    def base_name(self) -> str:
        """The public name of the base, e.g. ``statesim.Cell``."""
        return "statesim." + self.base.split(":")[1]


CELL = Kind("cell", "statesim_cells", "statesim.cell:Cell", "cell", "cells", "Cells", "model.cell")
TOPOLOGY = Kind("topology", "statesim_topologies", "statesim.model:Topology", "topology", "topologies",
                "Topologies", "model.topology")
INITIAL_STATE = Kind("initial_state", "statesim_initial_states", "statesim.model:InitialState", "initial state",
                     "initial states", "Initial-state policies", "model.initial_state")
SCENARIO = Kind("scenario", "statesim_scenarios", "statesim.scenario:Scenario", "scenario", "scenarios",
                "Scenarios", "scenario")
ENCODER = Kind("encoder", "statesim_encoders", "statesim.model:Encoder", "encoder", "encoders",
               "Conditioning encoders", "(chosen by the scenario, stored with the model)")
LOGGER = Kind("logger", "statesim_loggers", "statesim.loggers:Logger", "logger", "loggers", "Loggers", "logging")

#: Every kind, in the order they are listed to users.
KINDS: tuple[Kind, ...] = (CELL, TOPOLOGY, INITIAL_STATE, SCENARIO, ENCODER, LOGGER)
BY_NAME: dict[str, Kind] = {kind.name: kind for kind in KINDS}
