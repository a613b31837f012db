"""The adding and copy benchmarks: data as specified, losses on the right steps, and small real runs."""
import json

import pytest
import torch

from statesim.builtin.scenarios.long_lag import _RecallLoss, adding_data, copy_data, last_step_mse


def test_adding_data_has_one_marker_per_half_and_the_sum_as_target():
    data = adding_data(30, 200, torch.Generator().manual_seed(0))
    values, markers = data.inputs[..., 0], data.inputs[..., 1]
    assert data.inputs.shape == (30, 200, 2) and data.targets.shape == (30, 200, 1)
    assert ((values >= 0) & (values <= 1)).all()
    assert (markers.sum(0) == 2).all()
    assert (markers[:15].sum(0) == 1).all() and (markers[15:].sum(0) == 1).all()
    assert torch.allclose(data.targets[-1, :, 0], (values * markers).sum(0))
    assert (data.targets[:-1] == 0).all()
    # Predicting the mean sum (1.0) gives the variance of U(0,1) + U(0,1): 1/6.
    big = adding_data(10, 20000, torch.Generator().manual_seed(1))
    assert float(((big.targets[-1] - 1.0) ** 2).mean()) == pytest.approx(1 / 6, abs=0.01)


def test_copy_data_layout():
    delay, symbols, alphabet = 7, 3, 5
    data = copy_data(delay, symbols, alphabet, 50, torch.Generator().manual_seed(0))
    length = symbols + delay + symbols
    assert data.inputs.shape == (length, 50, alphabet + 2) and data.targets.shape == (length, 50)
    ids = data.inputs.argmax(-1)
    assert (data.inputs.sum(-1) == 1).all()  # one-hot
    assert (ids[:symbols] < alphabet).all()
    assert (ids[symbols + delay - 1] == alphabet + 1).all()  # the delimiter
    blanks = torch.ones(length, dtype=torch.bool)
    blanks[:symbols] = False
    blanks[symbols + delay - 1] = False
    assert (ids[blanks] == alphabet).all()
    assert torch.equal(data.targets[-symbols:], ids[:symbols])


def test_losses_use_only_their_steps():
    outputs = torch.randn(6, 4, 1)
    targets = torch.randn(6, 4, 1)
    mask = torch.ones(6, 4, dtype=torch.bool)
    assert float(last_step_mse(outputs, targets, mask)) == pytest.approx(
        float(((outputs[-1] - targets[-1]) ** 2).mean()))
    logits = torch.randn(6, 4, 5)
    classes = torch.randint(0, 5, (6, 4))
    expected = torch.nn.functional.cross_entropy(logits[-2:].reshape(-1, 5), classes[-2:].reshape(-1))
    assert float(_RecallLoss(2)(logits, classes, mask)) == pytest.approx(float(expected), rel=1e-6)


@pytest.mark.slow
def test_lstm_solves_a_short_adding_problem(tmp_path):
    from statesim.run import execute

    run_dir = execute("scenarios/adding.yaml", ["scenario.length=10", "scenario.train_sequences=1024",
                                                "scenario.check_every=25", "training.steps=800", "training.lr=0.01",
                                                "model.cell.hidden_size=16", "output.plots=false"],
                      out=tmp_path / "run", echo=lambda m: None)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["solved"] and results["steps_to_solve"] is not None
    assert results["steps_to_solve"] % 25 == 0 and results["updates"] == results["steps_to_solve"]  # stops when solved
    assert results["test_mse"] < 0.02 < results["baseline_mse_predict_mean"]
    val = [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "val_mse" in r]
    assert val[-1]["val_mse"] < 0.01 and all(r["val_mse"] >= 0.01 for r in val[:-1])


@pytest.mark.slow
def test_copy_task_runs_and_reports_accuracy(tmp_path):
    from statesim.run import execute

    run_dir = execute("scenarios/copy.yaml", ["scenario.delay=3", "scenario.symbols=2", "scenario.alphabet=3",
                                              "scenario.train_sequences=256", "scenario.check_every=10",
                                              "scenario.stop_when_solved=false",
                                              "training.steps=20", "model.cell.hidden_size=8"],
                      out=tmp_path / "run", echo=lambda m: None)
    results = json.loads((run_dir / "results.json").read_text())
    # accuracy counts whole recalls: 512 test sequences (the default) x 2 symbols each, not a bare bound
    recalls = results["test_accuracy"] * 512 * 2
    assert abs(recalls - round(recalls)) < 1e-6, results["test_accuracy"]
    assert results["chance_accuracy"] == pytest.approx(1 / 3)
    assert [s for s, _ in results["val_accuracy_history"]][:2] == [10, 20]
    assert (run_dir / "plots" / "gradient_flow.png").is_file() and (run_dir / "plots" / "loss_gradients.png").is_file()
