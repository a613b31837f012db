"""Gradient-flow diagnostics against independent truth: matrix powers, autograd through the engine, gate formulas."""
import json
import math

import pytest
import torch

from statesim import diagnostics as dg
from statesim.builtin.cells import LinearCell, LSTMCell, WindowCell
from statesim.config import TrainingConfig
from statesim.data import SequenceData, mse_loss
from statesim.engine import unroll
from statesim.plugin_manager import build_plugin_host


def _linear_with_radius(radius: float, n: int = 6, seed: int = 0) -> tuple[LinearCell, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    D = torch.randn(n, n, generator=gen, dtype=torch.float64)
    D = D * (radius / torch.linalg.eigvals(D).abs().max())
    cell = LinearCell(2, n, init={"D": D.tolist()})
    return cell, D


@pytest.mark.parametrize("radius", [0.9, 1.0, 1.1])
@pytest.mark.parametrize("norm", ["spectral", "frobenius"])
def test_linear_cell_lag_curve_equals_matrix_powers(radius, norm):
    cell, D = _linear_with_radius(radius)
    flow = dg.gradient_flow(cell, torch.randn(200, 3, 2), norm=norm)
    order = 2 if norm == "spectral" else "fro"
    truth = torch.stack([torch.linalg.matrix_norm(torch.linalg.matrix_power(D, k), ord=order) for k in range(201)])
    measured = flow.lag_norms["state"]
    assert measured.shape == truth.shape
    assert torch.allclose(measured, truth, rtol=1e-5, atol=0)
    assert flow.constant_jacobian
    eig_true = sorted(torch.linalg.eigvals(D).tolist(), key=lambda z: (round(abs(z), 9), z.imag))
    eig_found = sorted(flow.eigenvalues.tolist(), key=lambda z: (round(abs(z), 9), z.imag))
    assert max(abs(a - b) for a, b in zip(eig_true, eig_found)) < 1e-6
    report = flow.to_json()
    assert abs(report["spectral_radius"] - radius) < 1e-6
    assert report["closed_form_max_relative_error"] < 1e-9
    assert abs(flow.rate - radius) < 0.01  # the tail of ||D^k|| grows like rho^k
    expected = {0.9: "vanishing", 1.0: "norm-preserving", 1.1: "exploding"}[radius]
    assert flow.verdict.startswith(expected)


def _cells():
    host = build_plugin_host()
    return host, host.registry.names("cell")


def _make_cell(host, name: str, input_size: int = 2):
    record = host.registry.get("cell", name).record
    values = {key: 3 for key, f in record.params.model_fields.items() if f.is_required()}
    return record.cls.from_params(input_size, record.params.model_validate(values))


@pytest.mark.parametrize("name", _cells()[1])
def test_step_jacobians_match_autograd_through_the_engine_for_every_registered_cell(name):
    host = build_plugin_host()
    torch.manual_seed(1)
    cell = _make_cell(host, name).to(torch.float64)
    steps, batch = 6, 2
    inputs = torch.randn(steps, batch, cell.input_size, dtype=torch.float64)
    start = {k: 0.3 * torch.randn(batch, *shape, dtype=torch.float64) for k, shape in cell.state_spec.items()}
    trace = dg.step_jacobians(cell, inputs, start)
    spec = cell.state_spec
    # Independent truth: d state_T / d state_{T-k} by autograd through the engine's own unroll, sample by sample.
    k = 3
    state_before = unroll(cell, inputs[:steps - k], start).final_state if steps > k else start
    flat0 = dg.flatten_state(state_before, spec)

    def tail(z):
        return dg.flatten_state(unroll(cell, inputs[steps - k:], dg.unflatten_state(z, spec)).final_state, spec)

    full = torch.autograd.functional.jacobian(lambda z: tail(z).sum(0), flat0)  # [N, B, N]
    truth = full.permute(1, 0, 2)
    product = trace.jacobians[steps - 1] @ trace.jacobians[steps - 2] @ trace.jacobians[steps - 3]
    assert torch.allclose(product, truth, atol=1e-9, rtol=1e-7)
    norms = dg.product_norms(trace.jacobians, trace.layout)
    assert torch.allclose(norms["state"][k], torch.linalg.matrix_norm(truth, ord=2), atol=1e-9, rtol=1e-7)
    flow = dg.gradient_flow(cell, inputs, start)
    assert set(flow.self_diagonal) == set(spec)
    json.dumps(flow.to_json())  # the report is plain data


def test_lstm_cell_path_self_jacobian_is_the_forget_gate():
    torch.manual_seed(2)
    cell = LSTMCell(3, 5, forget_bias=1.0).to(torch.float64)
    inputs = torch.randn(7, 4, 3, dtype=torch.float64)
    flow = dg.gradient_flow(cell, inputs)
    traj = unroll(cell, inputs, return_states=True)
    h_prev = torch.cat([torch.zeros(1, 4, 5, dtype=torch.float64), traj.states["h"][:-1]])
    n = 5
    pre_f = inputs @ cell.weight_ih[n:2 * n].T + cell.bias_ih[n:2 * n] + h_prev @ cell.weight_hh[n:2 * n].T \
        + cell.bias_hh[n:2 * n]
    forget = torch.sigmoid(pre_f).detach()
    assert torch.allclose(flow.self_diagonal["c"], forget.mean((1, 2)), atol=1e-10)
    assert torch.allclose(flow.self_diagonal_max["c"], forget.amax(2).mean(1), atol=1e-10)
    assert set(flow.lag_norms) == {"state", "h<-h", "h<-c", "c<-h", "c<-c"}


def test_window_cell_has_a_finite_gradient_horizon():
    cell = WindowCell(2, window=4)
    flow = dg.gradient_flow(cell, torch.randn(12, 3, 2))
    assert flow.horizon == 4
    assert all(float(v) > 0 for v in flow.lag_norms["state"][:4])
    assert all(float(v) == 0 for v in flow.lag_norms["state"][4:])
    assert flow.verdict.startswith("finite memory")


def _tiny_model(cell_type="linear", hidden=4, input_size=2, output_size=1):
    from statesim.config import validate_model
    from statesim.model import build_model

    host = build_plugin_host(autoload=False)
    config = validate_model({"cell": {"type": cell_type, "hidden_size": hidden}}, host.registry)
    return build_model(host.registry, config, input_size, output_size).to(torch.float64)


@pytest.mark.parametrize("cell_type", ["linear", "lstm"])
def test_loss_gradients_match_autograd_of_the_loss_through_the_model(cell_type):
    torch.manual_seed(3)
    model = _tiny_model(cell_type)
    inputs = torch.randn(9, 3, 2, dtype=torch.float64)
    targets = torch.randn(9, 3, 1, dtype=torch.float64)
    grads = dg.loss_gradients(model, inputs, targets, mse_loss)
    mask = torch.ones(9, 3, dtype=torch.bool)
    # The state entering step s: perturb it and differentiate the model's own forward. For the LSTM (y_s = h_s)
    # only s = 0 compares like with like: later states also reach E through their own step's output.
    for s in ((0, 4) if cell_type == "linear" else (0,)):
        with torch.no_grad():
            prefix = model(inputs[:s]).final_state if s else model.initial(3)
        prefix = {k: v.clone().requires_grad_(True) for k, v in prefix.items()}
        out = model(inputs[s:], prefix).outputs
        full_out = torch.cat([model(inputs[:s]).outputs.detach(), out]) if s else out
        loss = mse_loss(full_out, targets, mask)
        truth = torch.autograd.grad(loss, list(prefix.values()))
        for name, g in zip(prefix, truth):
            assert math.isclose(float(grads[name][s]), float(g.norm()), rel_tol=1e-9, abs_tol=1e-12)


def test_truncated_bptt_gradient_horizon_measured_through_the_trainer():
    torch.manual_seed(4)
    model = _tiny_model("vanilla", hidden=5)
    data = SequenceData(torch.randn(20, 6, 2), torch.randn(20, 6, 1))
    truncated = TrainingConfig(bptt={"mode": "truncated", "k1": 5})
    rows = dg.bptt_horizon(model, data, truncated, mse_loss)
    assert rows.shape == (4, 20)
    for u in range(4):
        inside = torch.zeros(20, dtype=torch.bool)
        inside[5 * u:5 * u + 5] = True
        assert (rows[u][~inside] == 0).all()
        assert (rows[u][inside] > 0).all()
    longer = dg.bptt_horizon(model, data, TrainingConfig(bptt={"mode": "truncated", "k1": 5, "k2": 8}), mse_loss)
    for u in range(4):
        stop = 5 * u + 5
        inside = torch.zeros(20, dtype=torch.bool)
        inside[max(stop - 8, 0):stop] = True
        assert (longer[u][~inside] == 0).all() and (longer[u][inside] > 0).all()
    full = dg.bptt_horizon(model, data, TrainingConfig(), mse_loss)
    assert full.shape == (1, 20) and (full > 0).all()


def _train(log_every, clip, steps=40):
    from statesim.data import DataSplits
    from statesim.trainer import Trainer

    torch.manual_seed(5)
    model = _tiny_model("vanilla", hidden=6).float()
    gen = torch.Generator().manual_seed(0)
    data = SequenceData(torch.randn(15, 32, 2, generator=gen), torch.randn(15, 32, 1, generator=gen))
    records = []
    monitor = dg.GradientFlowMonitor(data.inputs[:, :2], every=20)
    trainer = Trainer(model, TrainingConfig(steps=steps, batch_size=8, lr=0.01, log_every=log_every, clip=clip),
                      log=records.append, on_update=monitor)
    trainer.fit(DataSplits(data))
    return records, monitor


def test_training_summary_counts_clipped_updates_exactly_from_sampled_records():
    every, _ = _train(1, {"max_norm": 0.3})
    sampled, monitor = _train(7, {"max_norm": 0.3})
    truth = sum(r["clipped"] for r in every if "grad_norm" in r)
    assert 0 < truth < 40
    summary = dg.training_summary(sampled)["main"]
    assert summary["clipped_updates"] == truth and summary["fraction_is_exact"]
    assert summary["fraction_clipped"] == pytest.approx(truth / 40)
    assert summary["nonfinite_updates"] == 0
    assert [s for s, _ in monitor.history] == [20, 40]
    assert sum("gradflow_rate" in r for r in sampled) == 2
    dg.plot_training(sampled)
    dg.plot_monitor(monitor.history)


@pytest.mark.slow
def test_diagnose_a_finished_run(tmp_path):
    from statesim.cli import main
    from statesim.run import execute

    run_dir = execute("scenarios/adding.yaml", ["scenario.length=8", "scenario.train_sequences=64",
                                                "scenario.val_sequences=16", "scenario.test_sequences=16",
                                                "training.steps=6", "training.log_every=2",
                                                "model.cell.hidden_size=4"], out=tmp_path / "run",
                      echo=lambda m: None)
    assert main(["diagnose", str(run_dir), "--batch", "3"]) == 0
    report = json.loads((run_dir / "diagnostics" / "report.json").read_text())
    job = report["jobs"]["main"]
    assert job["inputs"] == "scenario data" and job["cell"] == "LSTMCell"
    assert len(job["lag_norms"]["c<-c"]) == 9 and len(job["loss_gradient_norms"]["c"]) == 9
    assert report["training"]["main"]["updates"] == 6
    for name in ("training.png", "main_gradient_flow.png", "main_loss_gradients.png"):
        assert (run_dir / "diagnostics" / name).stat().st_size > 1000
    # A scenario without data of its own for diagnostics: standard-normal inputs of --steps length.
    other = execute("scenarios/linear_system.yaml", ["scenario.steps=10", "scenario.train_sequences=8",
                                                     "scenario.test_sequences=4", "training.steps=3",
                                                     "output.plots=false"], out=tmp_path / "lin", echo=lambda m: None)
    report = dg.diagnose_run(other, steps=12, echo=lambda m: None)
    entry = report["jobs"]["main"]
    assert entry["inputs"] == "standard normal" and entry["constant_jacobian"]
    assert entry["closed_form_max_relative_error"] < 1e-9


def test_diagnose_gives_the_cell_the_scenario_data_through_the_models_input_layer(tmp_path, monkeypatch):
    """The gradient flow is measured on the cell, so a scenario's diagnostic batch must pass the model's input
    layer first (here input z-scores of mean 1 and std 2 attached to the loaded model): the cell sees
    (x - 1) / 2, not the raw x."""
    from statesim.model import Standardise
    from statesim.run import execute

    run_dir = execute("scenarios/adding.yaml", ["scenario.length=6", "scenario.train_sequences=16",
                                                "scenario.val_sequences=4", "scenario.test_sequences=4",
                                                "training.steps=2", "model.cell.hidden_size=3",
                                                "output.plots=false"], out=tmp_path / "run", echo=lambda m: None)
    from statesim.builtin.scenarios.long_lag import Adding, AddingParams
    from statesim import runfolder
    from statesim.diagnostics import report as diagnose_module

    loaded, flow, seen = runfolder.load_model, diagnose_module.gradient_flow, []

    def scaled(*args, **kwargs):
        model, info = loaded(*args, **kwargs)
        model.scaling = Standardise({"input_mean": [1.0, 1.0], "input_std": [2.0, 2.0],
                                     "output_mean": [0.0], "output_std": [1.0]})
        return model, info

    def recorded(cell, inputs, **kwargs):
        seen.append(inputs)
        return flow(cell, inputs, **kwargs)

    monkeypatch.setattr(runfolder, "load_model", scaled)
    monkeypatch.setattr(diagnose_module, "gradient_flow", recorded)
    diagnose_module.diagnose_run(run_dir, batch=3, seed=0, echo=lambda m: None)
    params = json.loads(json.dumps(__import__("yaml").safe_load((run_dir / "config.yaml").read_text())["scenario"]))
    params.pop("type")
    raw = Adding(AddingParams(**params)).diagnostic_batch("main", 3, 0)[0].inputs
    torch.testing.assert_close(seen[0], (raw - 1) / 2)


def test_diagnose_refuses_a_folder_that_is_not_a_run(tmp_path):
    from statesim.cli import main

    assert main(["diagnose", str(tmp_path)]) == 2
