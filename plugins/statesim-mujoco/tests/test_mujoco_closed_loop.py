"""The closed loop: controllers stepped through statesim.embed, the CPG swimming, forcing at step time, a tiny run.

The scenario is found through the installed entry point, like `statesim run` finds it.
"""
from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch

import statesim.embed
from statesim import StatesimError
from statesim.engine import unroll
from statesim.plugin_manager import build_plugin_host

from statesim_mujoco.controllers import CPGController, RNNController
from statesim_mujoco.loop import Force, constant, run_cpg, run_rnn
from statesim_mujoco.metrics import locomotion
from statesim_mujoco.swimmer import Swimmer, SwimmerParams

ROOT = Path(__file__).resolve().parents[3]
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def host():
    built = build_plugin_host()
    assert not built.problems, built.problems
    return built


def test_the_scenario_is_registered_by_the_distributions_entry_point(host):
    entry = host.registry.get("scenario", "salamander_swim")
    assert entry.distribution == "statesim-mujoco"
    points = [ep for ep in metadata.distribution("statesim-mujoco").entry_points if ep.group == "statesim"]
    assert [(ep.name, ep.value) for ep in points] == [("mujoco", "statesim_mujoco.plugin")]


def test_the_cpg_mapping_is_validated_by_the_registered_cells_own_model(host, monkeypatch):
    from statesim import ConfigError
    from statesim.run import prepare

    monkeypatch.chdir(ROOT)
    config, _ = prepare("scenarios/salamander_mujoco.yaml", host=host)
    defaults = host.registry.get("cell", "salamander_cpg").record.params(dt=0.02).model_dump()
    assert config.scenario.params.cpg == defaults  # resolved with the cell's defaults, as config.yaml records
    with pytest.raises(ConfigError, match=r"`scenario.cpg`: .*dt: Input should be greater than 0"):
        prepare("scenarios/salamander_mujoco.yaml", ["scenario.cpg.dt=-1"], host=host)


def test_cpg_stepped_through_embed_equals_the_engines_unroll(host):
    cpg = CPGController(host.registry, {}, batch_size=2)
    steps = 120
    drives = np.zeros((steps, 2, 2), dtype=np.float32)
    drives[:, 0] = [4.0, 4.0]
    drives[:, 1] = np.linspace([2.0, 1.0], [4.5, 3.5], steps)
    cpg.reset(drives[0], seed=3)
    initial = {k: torch.as_tensor(v) for k, v in cpg.sim.get_state().items()}
    stepped = np.stack([cpg.step(drives[t]) for t in range(steps)])
    reference = unroll(cpg.cell, torch.as_tensor(drives), initial).outputs.numpy()
    np.testing.assert_allclose(stepped, reference, rtol=1e-5, atol=1e-5)


def test_cpg_drives_the_swimmer_faster_with_drive_and_turns_toward_the_stronger_side(host):
    seeds, seconds = (0, 1), 8.0
    pairs = [(3.25, 3.25), (4.0, 4.0), (4.75, 4.75), (4.5, 3.5), (3.5, 4.5)]
    cpg = CPGController(host.registry, {}, len(pairs))
    swimmer = Swimmer(SwimmerParams(), cpg.dt, len(pairs))
    for seed in seeds:
        ep = run_cpg(cpg, swimmer, constant(pairs, int(seconds / cpg.dt)), seed)
        m = [locomotion(*ep.agent(b), ep.dt, 3.0) for b in range(len(pairs))]
        speeds = [x["speed_mps"] for x in m[:3]]
        assert speeds[0] < speeds[1] < speeds[2], (seed, speeds)
        assert all(x["frequency_hz"] == pytest.approx(0.2 * d + 0.3, abs=0.03) for x, (d, _) in zip(m, pairs[:3]))
        assert abs(m[1]["turn_rate_deg_s"]) < 1.0  # symmetric drive: straight
        assert m[3]["turn_rate_deg_s"] > 5.0, m[3]  # d_L > d_R: left (counter-clockwise)
        assert m[4]["turn_rate_deg_s"] < -5.0, m[4]


def _tiny_rnn(host, segments: int = 8) -> RNNController:
    from statesim.config import validate_model
    from statesim.model import build_model

    config = validate_model({"cell": {"type": "lstm", "hidden_size": 8}}, host.registry)
    torch.manual_seed(0)
    model = build_model(host.registry, config, 2 + segments + 4 + 1, segments + 4)
    return RNNController(statesim.embed.as_embedded(model), segments)


def test_rnn_inputs_carry_observations_and_the_flag_only_in_the_warm_up(host):
    rnn = _tiny_rnn(host)
    observed = np.arange(12, dtype=np.float32).reshape(1, 12)
    x = rnn.inputs(np.array([[4.0, 3.0]]), observed)
    np.testing.assert_array_equal(x[0], [4.0, 3.0, *range(12), 1.0])
    np.testing.assert_array_equal(rnn.inputs(np.array([[4.0, 3.0]]), None)[0], [4.0, 3.0] + [0.0] * 13)


def test_forcing_the_rnns_drive_mid_run_equals_running_it_on_the_forced_drives(host):
    rnn, seconds = _tiny_rnn(host), 3.0
    cpg = CPGController(host.registry, {}, 1)
    swimmer = Swimmer(SwimmerParams(), cpg.dt, 1)
    steps, warmup = int(seconds / cpg.dt), 50
    drives = constant([(4.0, 4.0)], steps)
    forced = run_rnn(rnn, cpg, swimmer, drives, 0, warmup, [Force(80, 110, "input", [0, 1], [4.5, 3.0])])
    edited = drives.copy()
    edited[80:110] = [4.5, 3.0]
    plain = run_rnn(rnn, cpg, swimmer, edited, 0, warmup)
    np.testing.assert_allclose(forced.targets, plain.targets, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(forced.com, plain.com, rtol=1e-9, atol=1e-9)
    unforced = run_rnn(rnn, cpg, swimmer, drives, 0, warmup)
    assert np.abs(unforced.targets[80:] - forced.targets[80:]).max() > 1e-4  # the clamp did act
    np.testing.assert_array_equal(unforced.targets[:80], forced.targets[:80])  # and not before its tick


def test_a_neuron_clamp_holds_the_state_read_at_each_forced_tick(host):
    rnn = _tiny_rnn(host)
    cpg = CPGController(host.registry, {}, 1)
    swimmer = Swimmer(SwimmerParams(), cpg.dt, 1)
    steps, start, stop = 100, 60, 70
    ep = run_rnn(rnn, cpg, swimmer, constant([(4.0, 4.0)], steps), 0, 50,
                 [Force(start, stop, "h", [1, 5], np.array([0.3, -0.2], dtype=np.float32))], record_states=True)
    # the clamp replaces the state the cell reads at ticks start..stop-1: replay those ticks by hand
    cell = rnn.sim.cell
    for t in range(start, stop):
        h = torch.as_tensor(ep.states["h"][t - 1]).clone()
        h[:, [1, 5]] = torch.tensor([0.3, -0.2])
        state = {"h": h, "c": torch.as_tensor(ep.states["c"][t - 1])}
        x = torch.as_tensor(rnn.inputs(ep.drives[t], None))
        with torch.no_grad():
            _, new = cell(x, state)
        np.testing.assert_allclose(ep.states["h"][t], new["h"].numpy(), rtol=1e-5, atol=1e-6)


def test_a_missing_rnn_run_is_a_one_paragraph_error(host, tmp_path, monkeypatch):
    from statesim.run import execute

    monkeypatch.chdir(ROOT)
    with pytest.raises(StatesimError, match="rnn_run '.*nowhere' does not exist.*statesim run scenarios/salamander"):
        execute("scenarios/salamander_mujoco.yaml", ["scenario.rnn_run=" + str(tmp_path / "nowhere"),
                                                      "scenario.drives=[4.0]", "scenario.seeds=[0]",
                                                      "scenario.turn_pairs=[[4.5, 3.5]]", "scenario.swim_seconds=4",
                                                      "scenario.settle_seconds=1", "output.plots=false"],
                out=tmp_path / "run", host=host, echo=lambda m: None)


@pytest.mark.slow
def test_tiny_closed_loop_run_trains_its_rnn_then_swims_steers_and_reports(host, tmp_path, monkeypatch):
    from statesim.run import execute

    monkeypatch.chdir(ROOT)
    train = ["training.steps=10", "scenario.train_trajectories=2", "scenario.val_trajectories=0",
             "scenario.test_trajectories=1", "scenario.trajectory_seconds=[6, 6]", "scenario.eval_seconds=16",
             "scenario.measure_seconds=6", "scenario.ablation_seconds=2", "scenario.steer_seconds=8",
             "model.cell.hidden_size=4", "scenario.eval_levels=[0.5, 2.5, 3.5, 4.0]",
             # the weights choice is judged on drives kept apart from the eval levels (2.5 and 2.45 are not)
             "scenario.validation_levels=[1.5, 4.25]", "scenario.validation_turns=[[4.3, 3.7]]",
             "scenario.turn_conditions=[[4.5, 3.5]]", "scenario.ablation_drives=[4.0]", "forcing=[]",
             "scenario.forced_units=2", "output.plots=false", "output.progress=false"]
    overrides = [
        f"scenario.train_overrides={json.dumps(train)}", "scenario.drives=[0.5, 4.0]", "scenario.seeds=[0]",
        "scenario.turn_pairs=[[4.5, 3.5]]", "scenario.swim_seconds=5", "scenario.settle_seconds=2",
        "scenario.compare_drives=[4.0]", "scenario.compare_seconds=5", "scenario.unit_seconds=4",
        "scenario.unit_grid=[3.5, 4.5]", "scenario.neuron_counts=[1, 2]",
        "scenario.input_commands=[{start_s: 3.5, stop_s: 5.5, kind: input, drives: [4.75, 4.75], expect: faster}]",
        "scenario.neuron_commands=[{start_s: 3.5, stop_s: 5.5, kind: turn_units, drives: [4.4, 3.6], expect: left}]",
        "scenario.render_frames=2", "output.progress=false"]
    run_dir = execute("scenarios/salamander_mujoco.yaml", overrides, out=tmp_path / "run", host=host,
                      echo=lambda m: None)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["scenario"] == "salamander_swim"
    # the RNN was trained first by the salamander scenario, into the run folder, and loaded from there
    assert results["rnn"]["trained_here"] and (run_dir / "rnn" / "results.json").is_file()
    speeds = results["cpg"]["speed_grows_with_drive"]["value"]["mean_speed_mps"]
    assert speeds[0] < 1e-3 < speeds[1]  # d = 0.5 is outside the CPG's range: the body stays still
    assert results["cpg"]["speed_grows_with_drive"]["pass"]
    assert results["cpg"]["turning"]["rows"][0]["per_seed"][0]["turned"] == "left"
    row = results["rnn"]["per_drive"][0]
    assert row["drive"] == 4.0 and row["distance_ratio"] == pytest.approx(
        row["rnn"]["distance_m"] / row["cpg"]["distance_m"], rel=1e-3)
    for which in ("input", "neurons"):
        commands = results["steering"][which]["commands"]
        assert len(commands) == 1 and isinstance(commands[0]["pass"], bool)
    turn = results["steering"]["neurons"]["neurons"]["turn_units"]
    assert [row["neurons"] for row in turn["calibration"]] == [1, 2] and len(turn["list"]) == turn["chosen_count"]
    assert set(results["targets_met"]) == {"cpg_speed_grows_with_drive", "cpg_turns_the_right_way", "pd_tracking",
                                           "rnn_distance_ratio", "steer_inputs", "steer_neurons"}
    for name in ("trajectories", "steering_input", "steering_neurons"):
        assert (run_dir / "plots" / f"{name}.png").is_file()
    rendering = results["rendering"]
    if rendering["available"]:
        assert (run_dir / rendering["file"]).is_file() and rendering["frames"] == 2
    else:
        assert "MUJOCO_GL" in rendering["reason"] and not (run_dir / "plots" / "frames.png").exists()
