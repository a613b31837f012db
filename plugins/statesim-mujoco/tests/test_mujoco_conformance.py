"""The salamander_swim scenario passes statesim's scenario contract suite, as any plugin's would.

Its tiny run still trains a small salamander RNN and swims it in MuJoCo, so the run's checks are slow.
"""
from __future__ import annotations

import json
from pathlib import Path

from statesim.testing import ScenarioContractTests

ROOT = Path(__file__).resolve().parents[3]
TRAIN = ["training.steps=2", "training.checkpoint_every=1", "scenario.train_trajectories=2",
         "scenario.val_trajectories=0", "scenario.test_trajectories=1", "scenario.trajectory_seconds=[6, 6]",
         "scenario.eval_seconds=16", "scenario.measure_seconds=6", "scenario.ablation_seconds=2",
         "scenario.steer_seconds=8", "model.cell.hidden_size=4", "scenario.eval_levels=[0.5, 2.5, 3.5, 4.0]",
         "scenario.validation_levels=[1.5, 4.25]", "scenario.validation_turns=[[4.3, 3.7]]",
         "scenario.turn_conditions=[[4.5, 3.5]]", "scenario.ablation_drives=[4.0]", "forcing=[]",
         "scenario.forced_units=2", "output.plots=false", "output.progress=false"]


class TestSalamanderSwimScenario(ScenarioContractTests):
    scenario_file = ROOT / "scenarios" / "salamander_mujoco.yaml"
    scenario_type = "salamander_swim"
    slow_run = True
    tiny_overrides = [
        f"scenario.train_overrides={json.dumps(TRAIN)}", "scenario.drives=[0.5, 4.0]", "scenario.seeds=[0]",
        "scenario.turn_pairs=[[4.5, 3.5]]", "scenario.swim_seconds=5", "scenario.settle_seconds=2",
        "scenario.compare_drives=[4.0]", "scenario.compare_seconds=5", "scenario.unit_seconds=4",
        "scenario.unit_grid=[3.5, 4.5]", "scenario.neuron_counts=[1, 2]",
        "scenario.input_commands=[{start_s: 3.5, stop_s: 5.5, kind: input, drives: [4.75, 4.75], expect: faster}]",
        "scenario.neuron_commands=[{start_s: 3.5, stop_s: 5.5, kind: turn_units, drives: [4.4, 3.6], "
        "expect: left}]", "scenario.render=false", "output.plots=false",
        f"scenario.train_scenario={ROOT / 'scenarios' / 'salamander.yaml'}"]  # the shipped one is cwd-relative
    #: It trains its RNN as a nested run (rnn/), checked below, and no model in its own folder.
    trains = False

    def test_the_rnn_it_trained_left_a_complete_run(self, run_dir: Path) -> None:
        """The nested salamander run it trained first has its own checkpoints, metrics and results."""
        self.check_metrics_and_checkpoints(run_dir / "rnn", trained=True)
        assert json.loads((run_dir / "rnn" / "results.json").read_text())["scenario"] == "salamander"
