"""Every hook a statesim plugin can implement: typed, documented, prefixed ``statesim_``.

A plugin is a module (or object) with functions marked ``@statesim.hookimpl``. Built-in plugins in
``statesim.builtin`` implement these very hooks; third-party ones are found through the ``statesim``
entry-point group. Each registration hook is called on every plugin and the results of all plugins
are merged by :mod:`statesim.plugin_manager`; a name provided twice is an error naming both providers.
Which hook registers which kind, and the base class its records' classes subclass, is the table in
:mod:`statesim.kinds`. The manager calls each hook through pluggy's hook caller, so ``tryfirst`` and
``trylast`` order the merge (a ``tryfirst`` plugin's names are merged before the others') and pluggy's
tracing (``STATESIM_TRACE_HOOKS=1``) shows every call.

Example plugin module::

    import statesim
    STATESIM_PLUGIN_API = 1  # the statesim plugin API this plugin was written for (statesim.PLUGIN_API)
    from mypkg.cells import LeakyCell

    @statesim.hookimpl
    def statesim_cells():
        return [statesim.Registration("leaky", LeakyCell, LeakyCell.Params, "leaky integrator")]
"""
from __future__ import annotations

import pluggy

from typing import TYPE_CHECKING, Any, Callable

from statesim.registry import Registration

#: The plugin API this statesim provides: the hooks below, the base classes their records subclass and the
#: contracts in docs/writing-plugins.md. It changes only when an existing plugin would break. A plugin module
#: says which version it was written for with ``STATESIM_PLUGIN_API = 1``; a different value is reported as a
#: warning naming both versions (the plugin still loads), and no declaration is taken to mean this one.
#:
#: >>> import statesim
#: >>> statesim.PLUGIN_API
#: 1
PLUGIN_API = 1
#: The module attribute a plugin declares its plugin API version in.
PLUGIN_API_ATTRIBUTE = "STATESIM_PLUGIN_API"

if TYPE_CHECKING:
    from statesim.cell import Cell
    from statesim.fastpath.forms import FastPath
    from statesim.loggers import Logger
    from statesim.model import Encoder, InitialState, Topology
    from statesim.scenario import Scenario
    from statesim.sweep import Executor

hookspec = pluggy.HookspecMarker("statesim")


@hookspec
def statesim_cells() -> list[Registration[Cell]]:
    """Return the cells this plugin provides.

    Each record's ``cls`` subclasses :class:`statesim.Cell`; ``params`` is the pydantic model that
    validates the YAML keys next to ``type`` (``cell: {type: leaky, hidden_size: 8}``). All plugins'
    results are merged; none stops the others.
    """


@hookspec
def statesim_topologies() -> list[Registration[Topology]]:
    """Return the topologies (how cells are wired over time) this plugin provides.

    Each record's ``cls`` subclasses :class:`statesim.Topology`. Results of all plugins are merged.
    """


@hookspec
def statesim_initial_states() -> list[Registration[InitialState]]:
    """Return the initial-state policies this plugin provides.

    Each record's ``cls`` subclasses :class:`statesim.InitialState`. Results of all plugins are merged.
    """


@hookspec
def statesim_scenarios() -> list[Registration[Scenario[Any]]]:
    """Return the scenarios (data, training recipe, evaluation and plots) this plugin provides.

    Each record's ``cls`` subclasses :class:`statesim.Scenario`. Results of all plugins are merged.
    """


@hookspec
def statesim_fast_paths() -> "list[FastPath]":
    """Return the engine fast paths this plugin provides: alternative implementations of ``Stepper.run``.

    Each object has a ``name`` (the value of ``model.fast_path`` that demands it) and
    ``prepare(stepper, request)``, returning ``(run, why chosen)`` or why it cannot run (see
    :class:`statesim.fastpath.FastPath`). ``fast_path: auto`` tries the paths in hook-call order: a plugin's
    paths come before the built-in ones unless its hook is marked ``trylast=True``. Called on the
    process-wide manager of :mod:`statesim.extensions`.
    """


@hookspec
def statesim_sweep_executors() -> "dict[str, Callable[[int | None], Executor]]":
    """Return the sweep executors this plugin provides: ``{name: factory(workers) -> Executor}``.

    ``statesim sweep --executor NAME`` picks one (see :class:`statesim.sweep.Executor`); a name provided
    twice is an error. Called on the process-wide manager of :mod:`statesim.extensions`.
    """


@hookspec
def statesim_encoders() -> list[Registration[Encoder]]:
    """Return the conditioning encoders this plugin provides (what a model reads once per sequence).

    Each record's ``cls`` subclasses :class:`statesim.Encoder`: it reads a sequence's condition (a source
    sentence, an image) and returns a :class:`statesim.Memory`. A scenario names one when it builds its
    model (``build_model(..., encoder={type: NAME, ...})``) and the model's ``build_spec`` records it, so
    checkpoints rebuild. Results of all plugins are merged.
    """


@hookspec
def statesim_loggers() -> list[Registration[Logger]]:
    """Return the loggers this plugin provides (where a run's records go besides metrics.jsonl).

    Each record's ``cls`` subclasses :class:`statesim.loggers.Logger` and ``params`` validates the keys next to
    ``type`` in a scenario file's ``logging:`` list (``logging: [jsonl, {type: NAME, ...}]``, or
    ``statesim run --log NAME``). The run calls a logger on rank 0 only; one that raises is reported and
    disabled, and the run goes on. Results of all plugins are merged.
    """
