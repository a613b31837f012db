"""The leaky cell and the example's scenario file pass statesim's contract suites, as any plugin's would.

Named apart from statesim's own tests/test_conformance.py so that pytest can collect both in one session.
"""
from __future__ import annotations

from pathlib import Path

from statesim.testing import CellContractTests, ScenarioContractTests

SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"


class TestLeakyCell(CellContractTests):
    cell_spec = {"type": "leaky", "hidden_size": 5, "leak": 0.3}


class TestLeakyCellLearnedLeak(CellContractTests):
    cell_spec = {"type": "leaky", "hidden_size": 4, "learn_leak": True, "activation": "relu", "bias": False}


class TestLeakyScenario(ScenarioContractTests):
    scenario_file = SCENARIOS / "leaky_moving_average.yaml"
    scenario_type = "moving_average"
    tiny_overrides = ["training.steps=2", "training.checkpoint_every=1", "output.plots=false", "scenario.steps=10",
                      "scenario.train_sequences=4", "scenario.test_sequences=2"]
