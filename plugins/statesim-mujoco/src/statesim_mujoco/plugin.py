"""The module named by the entry point. Cheap to import (statesim imports every plugin on each command):
MuJoCo itself is imported only when the scenario runs."""
from __future__ import annotations

import statesim

from statesim_mujoco.scenario import SalamanderSwim, SalamanderSwimParams


STATESIM_PLUGIN_API = 1  # the statesim plugin API this plugin is written for (statesim.PLUGIN_API)


@statesim.hookimpl
def statesim_scenarios() -> list[statesim.Registration]:
    """Register the ``salamander_swim`` scenario."""
    return [statesim.Registration(
        "salamander_swim", SalamanderSwim, SalamanderSwimParams,
        "closed loop in MuJoCo: a swimmer driven by the salamander CPG or a trained RNN (statesim.embed), "
        "with speed, heading and steering by forcing")]
