"""``statesim sweep``: run every combination of a grid of config values, each as an ordinary run folder.

A sweep is a scenario file plus a grid, given on the command line (``--grid training.lr=0.01,0.003``,
``--seeds 3``) or in a ``sweep:`` section of the file::

    sweep:
      grid:                                   # dotted config key -> values (YAML values)
        model.cell.type: [vanilla, lstm]
        training.clip.max_norm: [null, 1.0]
      seeds: 2                                # N seeds (base seed, +1, ...) or an explicit list
      metrics: [test_mse, steps_to_solve]     # results.json keys in the table (default: every scalar)
      plot: {x: model.cell.type, y: [test_mse], hue: training.clip.max_norm}
      out: runs/sweeps/my_sweep               # the sweep folder (default: runs/sweeps/<name>)

Each combination runs through :func:`statesim.run.execute` into ``<sweep>/runs/<combination>/``. A run
that fails is recorded (``<sweep>/errors/<combination>.txt``) and the others go on; running the sweep
again skips runs that have ``results.json`` and resumes unfinished ones from their checkpoints. The
sweep writes ``summary.csv``, ``summary.md`` (per run, and averaged over seeds) and ``comparison.png``.

Runs go to an :class:`Executor`: ``local`` (a process pool, parallel up to the cores) by default or
``serial`` (in this process), or ``ray`` (:mod:`statesim.sweep_ray`, a Ray cluster or local instance);
each implements the same two-method interface and is registered through the ``statesim_sweep_executors``
hook (the built-ins by :mod:`statesim.builtin.executors`, as a plugin's would be).

Modules: ``spec`` (the specification, the grid, run names), ``executors`` (one run as plain data, the
executor interface and the built-in executors), ``runner`` (:func:`run_sweep`), ``summary`` (rows, averages
over seeds, ``summary.md``/``.csv``, the comparison plot). The public names are importable from
``statesim.sweep`` itself (``statesim.sweep.Executor`` is the interface docs/writing-plugins.md names).
"""
from __future__ import annotations

from statesim.sweep.executors import (Executor, LocalExecutor, RunOutcome, RunTask, SerialExecutor, available_cores,
                                      executors, make_executor, run_task)
from statesim.sweep.runner import SweepResult, run_sweep, validate_combinations
from statesim.sweep.spec import SweepError, SweepSpec, load_sweep, overrides_of, parse_grid_arg, run_name
from statesim.sweep.summary import aggregate, collect_rows, markdown_table, plot_comparison, write_summary

__all__ = ["Executor", "LocalExecutor", "RunOutcome", "RunTask", "SerialExecutor", "SweepError", "SweepResult",
           "SweepSpec", "aggregate", "available_cores", "collect_rows", "executors", "load_sweep", "make_executor",
           "markdown_table", "overrides_of", "parse_grid_arg", "plot_comparison", "run_name", "run_sweep",
           "run_task", "validate_combinations", "write_summary"]
