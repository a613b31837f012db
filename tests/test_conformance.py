"""statesim's own built-ins run the contract suites plugin authors run (statesim.testing)."""
from __future__ import annotations

from pathlib import Path

import pytest


from statesim.testing import CellContractTests, PolicyContractTests, ScenarioContractTests, TopologyContractTests

#: Small, non-default settings of every built-in cell (each branch a plugin cell could also take).
CELL_SPECS = {
    "linear": {"type": "linear", "hidden_size": 4, "output_size": 2},
    "vanilla": {"type": "vanilla", "hidden_size": 5},
    "vanilla_relu_nobias": {"type": "vanilla", "hidden_size": 5, "activation": "relu", "bias": False},
    "vanilla_sigmoid": {"type": "vanilla", "hidden_size": 4, "activation": "sigmoid"},
    "lstm": {"type": "lstm", "hidden_size": 4, "forget_bias": 1.0},
    "gru": {"type": "gru", "hidden_size": 4},
    "gru_nobias": {"type": "gru", "hidden_size": 4, "bias": False},
    "window": {"type": "window", "window": 3, "output_size": 2},
    "window_mlp": {"type": "window", "window": 2, "output_size": 2, "hidden": [4], "bias": True},
}


#: Cells whose ONNX export tests/test_export.py already checks against the engine (ONNX_CASES there).
EXPORT_TESTED = {"linear", "vanilla", "lstm", "gru", "window_mlp"}


def _suite(name: str, spec: dict, **attrs) -> type:
    return type(f"TestCell_{name}", (CellContractTests,), {"cell_spec": spec, **attrs})


for _name, _spec in CELL_SPECS.items():
    globals()[f"TestCell_{_name}"] = _suite(_name, _spec, check_onnx=_name not in EXPORT_TESTED)


class TestCell_salamander_cpg(CellContractTests):
    cell_spec = {"type": "salamander_cpg"}
    input_size = 2  # the two drives (d_L, d_R)


# --------------------------------------------------------------------------- topologies and policies
TOPOLOGY_SPECS = {
    "unidirectional": {"type": "unidirectional"},
    "bidirectional": {"type": "bidirectional", "merge": "sum"},
    "stacked": {"type": "stacked", "layers": 2},
    "stacked_residual_bifirst": {"type": "stacked", "layers": 3, "residual": True, "residual_from": 2,
                                 "bidirectional_first": True, "merge": "sum"},
    "encoder_decoder": {"type": "encoder_decoder", "encoder": {"type": "bidirectional"}},
    "encoder_decoder_attention": {"type": "encoder_decoder", "attention": "additive", "attention_size": 4},
}
POLICY_SPECS = {
    "zeros": {"type": "zeros"},
    "random": {"type": "random", "scale": 0.3},
    "learned": {"type": "learned"},
    "warmup": {"type": "warmup", "steps": 3, "prefix": "noise"},
    "warmup_inputs": {"type": "warmup", "steps": 2, "prefix": "inputs", "start": "random"},
    "encoded": {"type": "encoded"},  # sized by the encoding it is given (the encoder's, or the suite's)
}

for _name, _spec in TOPOLOGY_SPECS.items():
    # an encoder-decoder without attention reaches its encoder only through the encoded initial state
    _policy = {"type": "encoded"} if _spec["type"] == "encoder_decoder" else None
    globals()[f"TestTopology_{_name}"] = type(f"TestTopology_{_name}", (TopologyContractTests,),
                                              {"topology_spec": _spec, "initial_state_spec": _policy})
for _name, _spec in POLICY_SPECS.items():
    globals()[f"TestPolicy_{_name}"] = type(f"TestPolicy_{_name}", (PolicyContractTests,), {"policy_spec": _spec})


# --------------------------------------------------------------------------- scenarios
ROOT = Path(__file__).resolve().parents[1]
SMALL_TRAINING = ["training.steps=2", "training.checkpoint_every=1", "output.plots=false"]
#: Per shipped scenario file: its scenario type and the overrides that make a run take seconds.
SCENARIO_RUNS = {
    "moving_average": ("moving_average", ["scenario.steps=10", "scenario.train_sequences=4",
                                          "scenario.test_sequences=2"]),
    "linear_system": ("linear_system", ["scenario.steps=12", "scenario.train_sequences=4", "scenario.test_sequences=2",
                                        "scenario.impulse_steps=5"]),
    "adding": ("adding", ["scenario.length=8", "scenario.train_sequences=8", "scenario.val_sequences=4",
                          "scenario.test_sequences=4", "scenario.diagnose=false", "model.cell.hidden_size=4"]),
    "copy": ("copy", ["scenario.delay=2", "scenario.symbols=2", "scenario.train_sequences=8",
                      "scenario.val_sequences=4", "scenario.test_sequences=4", "scenario.diagnose=false",
                      "model.cell.hidden_size=4"]),
    "sequences_csv": ("sequences", ["model.cell.hidden_size=4"]),
    "flipflop": ("flipflop", ["scenario.steps=8", "scenario.train_sequences=8", "scenario.test_sequences=4",
                              "model.cell.hidden_size=4"]),
    "initial_state_effect": ("initial_state_effect", ["scenario.prefix_steps=3", "scenario.window_steps=6",
                                                      "scenario.first_steps=2", "scenario.train_sequences=8",
                                                      "scenario.test_sequences=4", "model.cell.hidden_size=4"]),
    "translation": ("translation", ["scenario.max_number=999", "scenario.train_size=24", "scenario.val_size=0",
                                    "scenario.test_size=4", "scenario.embed_size=4", "scenario.examples=2",
                                    "scenario.beam_size=1", "model.cell.hidden_size=4", "training.batch_size=8"]),
    "captioning": ("captioning", ["scenario.train_images=8", "scenario.val_images=0", "scenario.test_images=4",
                                  "scenario.channels=2", "scenario.features=4", "scenario.embed_size=4",
                                  "scenario.beam_size=1", "model.cell.hidden_size=4", "training.batch_size=4"]),
}

for _name, (_type, _sets) in SCENARIO_RUNS.items():
    globals()[f"TestScenario_{_name}"] = type(f"TestScenario_{_name}", (ScenarioContractTests,), {
        "scenario_file": ROOT / "scenarios" / f"{_name}.yaml", "scenario_type": _type,
        "tiny_overrides": [*SMALL_TRAINING, *_sets]})


class TestScenario_salamander(ScenarioContractTests):
    """Its evaluation simulates every drive level and steering window even after two updates: tens of seconds."""

    scenario_file = ROOT / "scenarios" / "salamander.yaml"
    scenario_type = "salamander"
    slow_run = True
    tiny_overrides = [*SMALL_TRAINING, "scenario.train_trajectories=2", "scenario.val_trajectories=1",
                      "scenario.test_trajectories=1", "scenario.trajectory_seconds=[6, 6]", "scenario.eval_seconds=16",
                      "scenario.measure_seconds=6", "scenario.ablation_seconds=2", "scenario.steer_seconds=8",
                      "model.cell.hidden_size=4", "scenario.eval_levels=[0.5, 2.5, 3.5, 4.0]",
                      "scenario.validation_levels=[1.5, 4.25]", "scenario.validation_turns=[[4.3, 3.7]]",
                      "scenario.turn_conditions=[[4.5, 3.5]]", "scenario.ablation_drives=[4.0]", "forcing=[]",
                      "scenario.forced_units=2"]


# --------------------------------------------------------------------------- the suite can fail
BROKEN_CELL = '''
import pytest
import torch

from statesim.builtin.cells import GRUCell
from statesim.testing import CellContractTests


class Broken(GRUCell):
    def numpy_step(self):
        inner = super().numpy_step()

        def step(x, state):
            y, new = inner(x, state)
            return y + 1e-3, new  # a stray term

        return step

    def project_inputs(self, inputs):
        return super().project_inputs(inputs.cumsum(0))  # mixes time steps: one step alone is still right


class TestBroken(CellContractTests):
    cell_spec = {"type": "gru", "hidden_size": 4}

    @pytest.fixture
    def make_cell(self):
        def make(seed=0):
            torch.manual_seed(seed)
            return Broken(3, 4).double().eval()
        return make
'''


@pytest.mark.slow  # a second pytest process: 17 s on 2 busy cores
def test_the_cell_suite_fails_a_cell_that_breaks_its_contract(tmp_path):
    """A wrong numpy_step and a project_inputs that mixes time steps fail their checks (the checks can fail)."""
    import subprocess
    import sys

    (tmp_path / "test_broken.py").write_text(BROKEN_CELL, encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k",
                           "numpy_step or project_inputs or plain_loop", str(tmp_path / "test_broken.py")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert "3 failed" in done.stdout, done.stdout[-2000:]
    for name in ("test_numpy_step_equals_generic_loop", "test_project_inputs_then_transition_equals_forward",
                 "test_unroll_equals_its_step_in_a_plain_loop"):
        assert f"FAILED test_broken.py::TestBroken::{name}" in done.stdout
