"""statesim.analysis against independent truths: closed forms, a brute-force grid, the CPG's known rhythm."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from statesim.analysis import (dominant_period, find_fixed_points, kaplan_yorke, limit_cycle, linearize,
                               lyapunov_spectrum, sample_starts)
from statesim.builtin.cells import GRUCell, LinearCell, LSTMCell, VanillaCell

F64 = torch.float64


def _linear_cell(seed: int = 0) -> LinearCell:
    torch.manual_seed(seed)
    return LinearCell(2, 4, 3, spectral_radius=0.8)


def test_linear_fixed_point_is_the_closed_form_and_its_spectrum_is_that_of_d():
    cell = _linear_cell()
    x = torch.tensor([0.3, -0.7])
    D, C = cell.D.detach().double(), cell.C.detach().double()
    truth = torch.linalg.solve(torch.eye(4, dtype=F64) - D, C @ x.double())  # h* = (I - D)^-1 C x*
    starts = 3 * torch.randn(32, 4, generator=torch.Generator().manual_seed(1), dtype=F64)
    points = find_fixed_points(cell, x, starts)
    assert len(points) == 1 and points.counts["unique"] == 1 and points.kinds == ["fixed"]
    assert torch.allclose(points.states[0], truth, atol=1e-10)
    eig_d = torch.linalg.eigvals(D)
    assert torch.allclose(points.eigenvalues[0].abs(), eig_d.abs().sort(descending=True).values, atol=1e-10)
    assert points.stability == ["stable"]


def test_local_linear_model_of_the_linear_cell_is_the_cell_itself():
    cell = _linear_cell()
    local = linearize(cell, torch.tensor([0.3, -0.7]), torch.randn(4, dtype=F64))
    for name in "ABCD":
        assert torch.allclose(getattr(local, name), getattr(cell, name).detach().double(), atol=1e-12), name


def test_lyapunov_exponents_of_the_linear_cell_are_log_abs_eigenvalues_of_d():
    cell = _linear_cell(3)
    spectrum = lyapunov_spectrum(cell, torch.zeros(2), torch.ones(4, dtype=F64), steps=3000)
    truth = torch.log(torch.linalg.eigvals(cell.D.detach().double()).abs()).sort(descending=True).values
    assert torch.allclose(spectrum.exponents, truth, atol=3e-3), (spectrum.exponents, truth)
    assert spectrum.history.shape == (3000, 4)


def _bistable_pair() -> tuple[VanillaCell, torch.Tensor]:
    W = torch.tensor([[1.6, 0.3], [-0.25, 1.9]], dtype=F64)
    cell = VanillaCell(1, 2, bias=False)
    with torch.no_grad():
        cell.weight_hh.copy_(W)
        cell.weight_ih.zero_()
    return cell, W


def _grid_fixed_points(W: torch.Tensor, half_width: float = 1.2, n: int = 2401) -> torch.Tensor:
    """Fixed points of h = tanh(W h) by brute force: local minima of q on a fine grid, refined by bisection-free
    Newton steps on the exact map (the grid alone places them to its spacing)."""
    axis = torch.linspace(-half_width, half_width, n, dtype=F64)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1)
    q = 0.5 * ((torch.tanh(grid @ W.T) - grid) ** 2).sum(-1)
    pooled = -torch.nn.functional.max_pool2d(-q[None, None], 3, 1, 1)[0, 0]
    where = torch.nonzero((q == pooled) & (q < 1e-5))
    return grid[where[:, 0], where[:, 1]]


def test_fixed_points_of_a_hand_made_2d_rnn_match_a_brute_force_grid_search():
    cell, W = _bistable_pair()
    starts = torch.rand(256, 2, generator=torch.Generator().manual_seed(0), dtype=F64) * 2.4 - 1.2
    points = find_fixed_points(cell, torch.zeros(1), starts)
    grid = _grid_fixed_points(W)
    assert len(points) == len(grid) == 5
    spacing = 2.4 / 2400
    for truth in grid:  # each grid minimum has one found point within a grid spacing
        assert float((points.states - truth).norm(dim=1).min()) < 2 * spacing
    # Stability from the analytic Jacobian diag(1 - h^2) W at each point.
    for k in range(len(points)):
        h = points.states[k]
        eig = torch.linalg.eigvals(torch.diag(1 - torch.tanh(W @ h) ** 2) @ W).abs()
        expected = "unstable" if float(eig.max()) > 1 else "stable"
        assert points.stability[k] == expected
    assert sorted(points.unstable_dimensions()) == [0, 0, 1, 1, 2]  # 2 memories, 2 saddles, the origin


def test_linearisation_predicts_small_deviations_of_an_lstm_with_a_head_to_second_order():
    torch.manual_seed(0)
    cell = LSTMCell(3, 5).double()
    head = torch.nn.Linear(5, 2).double()
    x0 = torch.randn(3, dtype=F64)
    state = {"h": 0.3 * torch.randn(1, 5, dtype=F64), "c": 0.3 * torch.randn(1, 5, dtype=F64)}
    flat = torch.cat([state["h"], state["c"]], 1)[0]
    local = linearize(cell, x0, flat, head)
    errors = []
    for eps in (1e-3, 1e-4):
        dx, dz = eps * torch.randn(3, dtype=F64), eps * torch.randn(10, dtype=F64)
        z = flat + dz
        with torch.no_grad():
            y, new = cell((x0 + dx)[None], {"h": z[None, :5], "c": z[None, 5:]})
            y0, new0 = cell(x0[None], state)
        actual_y = head(y)[0] - head(y0)[0]
        actual_h = torch.cat([new["h"], new["c"]], 1)[0] - torch.cat([new0["h"], new0["c"]], 1)[0]
        actual_y, actual_h = actual_y.detach(), actual_h.detach()
        errors.append(max(float((actual_y - (local.A @ dx + local.B @ dz)).abs().max()),
                          float((actual_h - (local.C @ dx + local.D @ dz)).abs().max())))
    assert errors[0] < 1e-5 and errors[1] < errors[0] / 50  # second order: 10x smaller step, ~100x smaller error


def test_the_local_linear_config_builds_a_linear_model_with_the_same_numbers(builtin_host):
    from statesim.embed import as_embedded

    torch.manual_seed(1)
    cell = GRUCell(2, 3)
    local = linearize(cell, torch.zeros(2), 0.1 * torch.randn(3, dtype=F64))
    assert local.model_config()["cell"]["type"] == "linear"
    model = local.build(builtin_host.registry)
    dx = 0.01 * torch.randn(6, 1, 2, dtype=F64)
    with torch.no_grad():
        out = model(dx, {"h": torch.zeros(1, 3, dtype=F64)}).outputs[:, 0]
    h, expected = torch.zeros(3, dtype=F64), []
    for t in range(6):
        expected.append(local.A @ dx[t, 0] + local.B @ h)
        h = local.C @ dx[t, 0] + local.D @ h
    assert torch.allclose(out, torch.stack(expected), atol=1e-12)
    embedded = as_embedded(model, batch_size=1)  # the robotics path steps it like any trained model
    embedded.reset(batch_size=1, initial_state={"h": torch.zeros(1, 3, dtype=F64).numpy()})
    stepped = np.stack([embedded.step(dx[t].numpy()) for t in range(6)])
    assert torch.allclose(torch.from_numpy(stepped).reshape(6, -1), torch.stack(expected), atol=1e-9)


def test_fixed_points_of_a_stacked_model_hold_under_the_engine_step(builtin_host):
    from statesim.engine import step
    from statesim.model import build_model
    from statesim.runfolder import resolve_model_config

    config = resolve_model_config({"cell": {"type": "gru", "hidden_size": 4},
                                   "topology": {"type": "stacked", "layers": 2}}, builtin_host.registry, "test")
    torch.manual_seed(2)
    model = build_model(builtin_host.registry, config, 2, 2)
    cell = model.step_cell()
    inputs = torch.randn(30, 8, 2)
    starts = sample_starts(cell, inputs, None, 64, generator=torch.Generator().manual_seed(0))
    points = find_fixed_points(cell, torch.zeros(2), starts)
    assert len(points) >= 1 and set(cell.state_spec) == {"layer0.h", "layer1.h"}
    twin = cell.double()
    for k in range(len(points)):
        state = points.state(k, cell.state_spec)
        _, after = step(twin, torch.zeros(1, 2, dtype=F64), state)
        residual = max(float((after[p] - state[p]).abs().max()) for p in state)
        assert residual < 1e-6 if points.kinds[k] == "fixed" else residual < 1e-2


def test_a_third_party_cell_gets_the_analysis_checked_by_finite_differences():
    """The example distribution's leaky cell (installed by the README's test line): no analysis code knows it."""
    from statesim_example.leaky import LeakyCell

    torch.manual_seed(3)
    cell = LeakyCell(2, 5, leak=0.3)
    with torch.no_grad():
        cell.weight_hh.mul_(6.0)  # strong recurrence: several fixed points
    x = torch.tensor([0.2, -0.1])
    starts = sample_starts(cell, torch.randn(40, 16, 2), None, 128, noise=0.2,
                           generator=torch.Generator().manual_seed(0))
    points = find_fixed_points(cell, x, starts)
    assert len(points) >= 1 and points.kinds[0] == "fixed"
    twin = cell.double()
    eps = 1e-6
    for k in range(len(points)):
        h = points.states[k]
        with torch.no_grad():
            _, after = twin(x.double()[None], {"h": h[None]})
            assert float((after["h"][0] - h).abs().max()) < 1e-6
            columns = []
            for j in range(5):
                bump = torch.zeros(5, dtype=F64)
                bump[j] = eps
                up = twin(x.double()[None], {"h": (h + bump)[None]})[1]["h"][0]
                down = twin(x.double()[None], {"h": (h - bump)[None]})[1]["h"][0]
                columns.append((up - down) / (2 * eps))
        assert torch.allclose(points.jacobians[k], torch.stack(columns, 1), atol=1e-7)


def test_dominant_period_and_kaplan_yorke_on_known_signals():
    t = torch.arange(2000, dtype=F64)
    signal = torch.stack([torch.sin(2 * math.pi * t / 37.3), 0.5 * torch.cos(2 * math.pi * t / 37.3 + 1)], 1)
    assert abs(dominant_period(signal) - 37.3) < 0.05
    assert dominant_period(torch.ones(100, 2)) is None
    assert kaplan_yorke([-0.1, -0.5]) == 0.0
    assert kaplan_yorke([0.5, -1.0]) == pytest.approx(1.5)
    assert kaplan_yorke([0.0, -0.2, -1.0]) == pytest.approx(1.0)


@pytest.mark.slow
@pytest.mark.parametrize("drive,frequency,neutral", [(2.0, 0.2 * 2.0, 1), (4.0, 0.2 * 4.0 + 0.3, 5)])
def test_salamander_cpg_limit_cycle_period_and_lyapunov_spectrum(drive, frequency, neutral):
    """The CPG's own rhythm (docs/salamander.md): 0.2 d Hz walking, 0.2 d + 0.3 Hz swimming.

    Walking, every oscillator is phase-locked: one zero exponent (the shift along the cycle). Swimming,
    the limbs are off (R = 0 above d = 3) and nothing couples into their phases, so each of the 4 limb
    phases is neutral too (1 + 4 zero exponents). The amplitude equations r'' = a (a/4 (R - r) - r') are
    linear and critically damped: 2 x 20 exponents near -a/2 = -10 per second.
    """
    from statesim.builtin.salamander.cpg import SalamanderCPG

    cpg = SalamanderCPG(2)
    state = cpg.random_state(1, torch.Generator().manual_seed(1))
    cycle = limit_cycle(cpg, torch.tensor([drive, drive]), state, warmup=400, steps=800, dt=cpg.p.dt)
    assert cycle is not None
    assert abs(cycle.period_steps * cpg.p.dt - 1 / frequency) < 0.01 / frequency
    per_second = cycle.spectrum.exponents / cpg.p.dt
    # A zero exponent's estimate carries an O(1/T) bias from the start (measured: -0.087/s after 800 steps,
    # -0.046/s after 1 500); the contracting ones are far below (-0.88/s and less).
    assert int((per_second.abs() < 0.15).sum()) == neutral
    assert float(per_second[neutral:].max()) < -0.5
    assert int(((per_second + 10).abs() < 1.0).sum()) >= 2 * cpg.oscillators - 4
    # The Jacobian product over one period (125 and 45.5 -> 45 steps) keeps the phase direction: multiplier 1.
    assert float(cycle.monodromy_multipliers.abs()[0]) == pytest.approx(1.0, abs=0.02)
    assert float(cycle.monodromy_multipliers.abs()[neutral]) < 0.9


# --------------------------------------------------------------------------- end to end
def _run(tmp_path, name: str, sets: list[str]):
    from statesim.plugin_manager import build_plugin_host
    from statesim.run import execute

    from _reliability import ROOT

    overrides = sets + ["output.progress=false"]
    return execute(ROOT / "scenarios" / f"{name}.yaml", overrides, out=tmp_path / name,
                   host=build_plugin_host(autoload=False), echo=lambda m: None)


@pytest.mark.slow
def test_flipflop_stores_its_eight_memories_as_stable_fixed_points_and_analyze_agrees(tmp_path, capsys):
    """A shortened default run (600 updates on 512 sequences) solves the task and shows 2^3 stable points."""
    import json

    from statesim.cli import main

    run_dir = _run(tmp_path, "flipflop", ["training.steps=600", "scenario.train_sequences=512", "output.plots=false"])
    results = json.loads((run_dir / "results.json").read_text())
    assert results["test_accuracy"]["met"], results["test_accuracy"]
    assert results["stable_fixed_points"]["value"] == 8 and results["stable_fixed_points"]["met"]
    patterns = {tuple(p) for p in results["stable_points_read_out"]}
    assert len(patterns) == 8 and all(abs(v) == 1 for p in patterns for v in p)  # one memory per stable point
    assert results["saddles"]["value"] >= 3
    assert main(["analyze", str(run_dir), "--inputs-from-data", "--starts", "256", "--steps", "300"]) == 0
    report = json.loads((run_dir / "analysis" / "main" / "report.json").read_text())
    assert report["fixed_points"]["counts"]["attractors"] == 8
    # Along a held-out sequence (pulses flip memories) nearby trajectories do not diverge (measured -0.18 per
    # step here, +0.013 when only one step was left after the warm-up); without input the model settles on a
    # memory, not on a cycle.
    assert report["lyapunov_along"].startswith("scenario data") and report["lyapunov"]["steps"] == 64 - 64 // 4
    assert report["lyapunov"]["per_step"][0] < 0.1 and report["limit_cycle"] is None
    assert (run_dir / "analysis" / "main" / "local_linear_0.yaml").is_file()
    for plot in ("fixed_points", "eigenvalues", "lyapunov"):
        assert (run_dir / "analysis" / f"main_{plot}.png").stat().st_size > 1000
    capsys.readouterr()


@pytest.mark.slow
@pytest.mark.parametrize("name,sets", [
    ("adding", ["scenario.length=12", "scenario.train_sequences=256", "training.steps=60", "model.cell.hidden_size=8"]),
    ("copy", ["scenario.delay=4", "scenario.symbols=2", "scenario.train_sequences=256", "training.steps=60",
              "model.cell.hidden_size=8"])])
def test_an_lstm_trained_on_a_long_lag_task_is_analysed_end_to_end(tmp_path, capsys, name, sets):
    import json

    from statesim.cli import main
    from statesim.yamlio import load_yaml

    run_dir = _run(tmp_path, name, sets + ["output.plots=false", "scenario.diagnose=false"])
    assert main(["analyze", str(run_dir), "--starts", "128", "--steps", "200"]) == 0
    report = json.loads((run_dir / "analysis" / "main" / "report.json").read_text())
    assert report["state_parts"] == {"h": [8], "c": [8]}  # the search runs in the LSTM's whole state
    counts = report["fixed_points"]["counts"]
    assert counts["starts"] == 128 and counts["unique"] >= 1
    assert len(report["lyapunov"]["per_step"]) == 16
    point = report["fixed_points"]["points"][0]
    config, _ = load_yaml(run_dir / "analysis" / point["local_linear_model"])
    assert config["model"]["cell"]["type"] == "linear" and config["model"]["cell"]["hidden_size"] == 16
    capsys.readouterr()
