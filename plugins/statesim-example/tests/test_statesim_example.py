"""Tests of the example plugin, exercised THROUGH statesim's entry-point discovery.

Nothing here imports ``statesim_example`` by name: the cell class is looked up in the registry of a
plugin host built from the installed distributions, exactly as ``statesim run`` does. The file name
is unique across the repository so pytest can collect it next to statesim's own tests/.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch

from statesim import ConfigError, build_plugin_host, unroll
from statesim.config import load_config
from statesim.model import build_model

HERE = Path(__file__).resolve().parent
SCENARIO = HERE.parent / "scenarios" / "leaky_moving_average.yaml"
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def host():
    """A fresh plugin host with autoloading on, as `statesim run` builds it."""
    built = build_plugin_host(autoload=True)
    assert not built.problems, built.problems
    return built


def _config(tmp_path: Path, host, cell: str, overrides: list[str] = ()):
    """Validate a scenario file whose model uses ``cell`` (a YAML flow mapping)."""
    path = tmp_path / "leaky.yaml"
    path.write_text("scenario: {type: moving_average}\n"
                    "model:\n"
                    f"  cell: {cell}\n"
                    "  head: none\n", encoding="utf-8")
    return load_config(path, host.registry, list(overrides))


def _leaky_from_yaml(tmp_path: Path, host, cell: str, input_size: int):
    config = _config(tmp_path, host, cell)
    model = build_model(host.registry, config.model, input_size, None).double()
    return model, model.step_cell()


def test_entry_point_registers_the_leaky_cell_with_its_distribution(host):
    dist = metadata.distribution("statesim-example")
    points = [ep for ep in dist.entry_points if ep.group == "statesim"]
    assert [ep.name for ep in points] == ["example"]
    provided = host.registry.get("cell", "leaky")
    assert provided.plugin == "example"
    assert provided.distribution == "statesim-example"
    assert provided.version == dist.version
    assert provided.record.params.model_fields["hidden_size"].is_required()
    assert any(p.name == "example" and p.distribution == "statesim-example" for p in host.plugins)


def test_leak_one_is_torch_rnn_with_copied_weights(tmp_path, host):
    model, cell = _leaky_from_yaml(tmp_path, host, "{type: leaky, hidden_size: 5, leak: 1.0}", input_size=3)
    reference = torch.nn.RNN(3, 5, nonlinearity="tanh").double()
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(reference, f"{name}_l0").copy_(getattr(cell, name))
    x = torch.randn(7, 4, 3, dtype=torch.float64)
    h0 = torch.randn(4, 5, dtype=torch.float64)
    ours = model(x, {"h": h0})
    theirs, h_last = reference(x, h0.unsqueeze(0))
    torch.testing.assert_close(ours.outputs, theirs)
    torch.testing.assert_close(ours.final_state["h"], h_last[0])
    (ours.outputs ** 2).sum().backward()
    (theirs ** 2).sum().backward()
    for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        torch.testing.assert_close(getattr(cell, name).grad, getattr(reference, f"{name}_l0").grad)


def test_identity_unit_is_the_lectures_exponential_moving_average(tmp_path, host):
    leak = 0.25
    _, cell = _leaky_from_yaml(tmp_path, host, f"{{type: leaky, hidden_size: 1, leak: {leak}, "
                                               "activation: identity, bias: false}", input_size=1)
    with torch.no_grad():
        cell.weight_ih.fill_(1.0)
        cell.weight_hh.zero_()
    x = np.random.default_rng(0).normal(size=(50, 2))
    h = unroll(cell, torch.from_numpy(x).unsqueeze(-1)).outputs[..., 0].detach().numpy()
    # Closed form from h_0 = 0: h_t = sum_k a (1 - a)^k x_{t-k}, an EMA with gamma = 1 - a.
    kernel = leak * (1 - leak) ** np.arange(50)
    expected = np.stack([np.convolve(x[:, b], kernel)[:50] for b in range(2)], axis=1)
    np.testing.assert_allclose(h, expected, rtol=1e-12, atol=1e-12)


def test_learned_leak_matches_a_handwritten_loop_and_gradcheck(tmp_path, host):
    _, cell = _leaky_from_yaml(tmp_path, host, "{type: leaky, hidden_size: 3, leak: 0.3, learn_leak: true}",
                               input_size=2)
    with torch.no_grad():
        cell.leak_logit.copy_(torch.tensor([-1.0, 0.0, 2.0]))
    x = torch.randn(6, 2, 2, dtype=torch.float64)
    out = unroll(cell, x).outputs.detach().numpy()
    W, U = cell.weight_ih.detach().numpy(), cell.weight_hh.detach().numpy()
    b = (cell.bias_ih + cell.bias_hh).detach().numpy()
    a = 1 / (1 + np.exp(-np.array([-1.0, 0.0, 2.0])))
    h = np.zeros((2, 3))
    for t in range(6):
        h = (1 - a) * h + a * np.tanh(x[t].numpy() @ W.T + h @ U.T + b)
        np.testing.assert_allclose(out[t], h, rtol=1e-12, atol=1e-12)

    def through_leak(logit: torch.Tensor) -> torch.Tensor:
        params = {**dict(cell.named_parameters()), "leak_logit": logit}
        return torch.func.functional_call(cell, params, (x[0], {"h": torch.zeros(2, 3, dtype=torch.float64)}))[0]

    assert torch.autograd.gradcheck(through_leak, (cell.leak_logit.detach().clone().requires_grad_(),))
    assert torch.autograd.gradcheck(lambda inp: unroll(cell, inp).outputs, (x.clone().requires_grad_(),))


def test_its_params_are_validated_from_yaml_with_line_and_suggestion(tmp_path, host):
    with pytest.raises(ConfigError) as caught:
        _config(tmp_path, host, "{type: leaky, hidden_size: 4, leek: 0.3}")
    text = str(caught.value)
    assert "leaky.yaml, line 3" in text and "`model.cell.leek`" in text and "Did you mean 'leak'?" in text
    with pytest.raises(ConfigError) as caught:
        _config(tmp_path, host, "{type: leaky, hidden_size: 4, leak: 1.5}")
    assert "`model.cell.leak`" in str(caught.value) and "1.5" in str(caught.value)
    config = _config(tmp_path, host, "{type: leaky, hidden_size: 4}", ["model.cell.leak=0.125"])
    assert config.model.cell.params.leak == 0.125
    assert config.resolved()["model"]["cell"] == {"type": "leaky", "hidden_size": 4, "leak": 0.125,
                                                  "learn_leak": False, "activation": "tanh", "bias": True}


def test_statesim_plugins_lists_it(tmp_path):
    env = {**os.environ, "STATESIM_BLOCK_PLUGINS": ""}
    env.pop("STATESIM_DISABLE_PLUGIN_AUTOLOAD", None)
    done = subprocess.run([sys.executable, "-m", "statesim", "plugins"], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    version = metadata.version("statesim-example")
    lines = done.stdout.splitlines()
    index = lines.index(f"example  (statesim-example {version})")
    assert lines[index + 1].split() == ["cells:", "leaky"]


@pytest.mark.slow
def test_shipped_scenario_runs_and_the_leaky_unit_fits_the_ema_the_window_cannot(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    env.pop("STATESIM_DISABLE_PLUGIN_AUTOLOAD", None)
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "statesim", "run", str(SCENARIO), "--out", str(out),
         "--set", "training.steps=150", "--set", "scenario.steps=40", "--set", "scenario.train_sequences=64",
         "--set", "scenario.test_sequences=16", "--set", "training.lr=0.05"],
        capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    results = json.loads((out / "results.json").read_text())
    pairings = results["pairings"]
    assert set(pairings) == {"window-on-moving_average", "leaky-on-moving_average", "window-on-ema", "leaky-on-ema"}
    assert pairings["leaky-on-ema"]["test_mse"] < pairings["window-on-ema"]["test_mse"] / 10
    saved = (out / "config.yaml").read_text()
    assert "type: leaky" in saved and "learn_leak: true" in saved
