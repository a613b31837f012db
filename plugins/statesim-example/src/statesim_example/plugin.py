"""The plugin module named by the entry point: its ``@statesim.hookimpl`` functions register the cell.

Keep this module cheap to import: statesim imports every installed plugin on each command.
"""
from __future__ import annotations

import statesim

from statesim_example.leaky import LeakyCell, LeakyParams


STATESIM_PLUGIN_API = 1  # the statesim plugin API this plugin is written for (statesim.PLUGIN_API)


@statesim.hookimpl
def statesim_cells() -> list[statesim.Registration]:
    """Register the ``leaky`` cell with its parameter model."""
    return [statesim.Registration("leaky", LeakyCell, LeakyParams,
                                  "leaky-integrator RNN, h = (1-a) h + a act(W_ih x + W_hh h + b)")]
