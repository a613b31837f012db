"""statesim: simulate and train stateful dynamical systems ``f(x_t, h_{t-1}) -> (y_t, h_t)``.

Public names are imported lazily so ``statesim --help`` starts without importing torch.
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Cell": "statesim.cell", "CellParams": "statesim.cell", "State": "statesim.cell",
    "Trajectory": "statesim.engine", "unroll": "statesim.engine", "step": "statesim.engine",
    "Stepper": "statesim.engine",
    "Clamp": "statesim.forcing", "Forcing": "statesim.forcing",
    "hookimpl": "statesim.hookimpl", "Registration": "statesim.registry", "PLUGIN_API": "statesim.hookspecs",
    "Topology": "statesim.model", "InitialState": "statesim.model", "InitialContext": "statesim.model",
    "PluginParams": "statesim.model", "SequenceModel": "statesim.model", "build_model": "statesim.model",
    "Encoder": "statesim.model", "EncoderParams": "statesim.model", "Memory": "statesim.model",
    "Scenario": "statesim.scenario", "ScenarioParams": "statesim.scenario", "RunContext": "statesim.scenario",
    "SequenceData": "statesim.data", "DataSplits": "statesim.data",
    "Trainer": "statesim.trainer", "build_plugin_host": "statesim.plugin_manager",
    "load_config": "statesim.config", "RunConfig": "statesim.config", "ModelConfig": "statesim.config",
    "StatesimError": "statesim.errors", "ConfigError": "statesim.errors", "PluginError": "statesim.errors",
    "CheckpointError": "statesim.errors", "ShapeError": "statesim.errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]

# Bound eagerly: importing the submodule statesim.hookimpl would otherwise set the package attribute
# `hookimpl` to the module, and `@statesim.hookimpl` in a plugin would fail with "module is not callable".
from statesim.hookimpl import hookimpl as hookimpl  # noqa: E402


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'statesim' has no attribute {name!r}")
