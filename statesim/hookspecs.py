"""Every hook a statesim plugin can implement: typed, documented, prefixed ``statesim_``.

A plugin is a module (or object) with functions marked ``@statesim.hookimpl``. Built-in plugins in
``statesim.builtin`` implement these very hooks; third-party ones are found through the ``statesim``
entry-point group. Each registration hook is called on every plugin and the results of all plugins
are merged by :mod:`statesim.plugin_manager`; a name provided twice is an error naming both providers.

Example plugin module::

    import statesim
    from mypkg.cells import LeakyCell

    @statesim.hookimpl
    def statesim_cells():
        return [statesim.Registration("leaky", LeakyCell, LeakyCell.Params, "leaky integrator")]
"""
from __future__ import annotations

import pluggy

from statesim.registry import Registration

hookspec = pluggy.HookspecMarker("statesim")


@hookspec
def statesim_cells() -> list[Registration]:
    """Return the cells this plugin provides.

    Each record's ``cls`` subclasses :class:`statesim.Cell`; ``params`` is the pydantic model that
    validates the YAML keys next to ``type`` (``cell: {type: leaky, hidden_size: 8}``). All plugins'
    results are merged; none stops the others.
    """


@hookspec
def statesim_topologies() -> list[Registration]:
    """Return the topologies (how cells are wired over time) this plugin provides.

    Each record's ``cls`` subclasses :class:`statesim.Topology`. Results of all plugins are merged.
    """


@hookspec
def statesim_initial_states() -> list[Registration]:
    """Return the initial-state policies this plugin provides.

    Each record's ``cls`` subclasses :class:`statesim.InitialState`. Results of all plugins are merged.
    """


@hookspec
def statesim_scenarios() -> list[Registration]:
    """Return the scenarios (data, training recipe, evaluation and plots) this plugin provides.

    Each record's ``cls`` subclasses :class:`statesim.Scenario`. Results of all plugins are merged.
    """


#: Registration hooks by the kind of thing they register, in the order they are listed to users.
REGISTRATION_HOOKS: dict[str, str] = {
    "cell": "statesim_cells",
    "topology": "statesim_topologies",
    "initial_state": "statesim_initial_states",
    "scenario": "statesim_scenarios",
}
