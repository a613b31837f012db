"""Fast paths inside the layered topologies and whole runs: stacked/bidirectional cells take the fused kernel
per cell (and match torch.nn.LSTM/GRU with the same weights); a run reports the path in its log and results."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from statesim import fastpath
from statesim.cell import Cell

DOUBLE = torch.float64


def _layered(host, topology: dict, cell: str, size: int = 4, input_size: int = 3):
    from statesim.config import validate_model

    config = validate_model({"cell": {"type": cell, "hidden_size": size}, "topology": topology, "head": "none"},
                            host.registry)
    from statesim.model import build_model

    return build_model(host.registry, config, input_size).to(DOUBLE)


def _copy_into_torch(rnn: nn.Module, cells: list[list[Cell]]) -> None:
    """Give ``torch.nn.LSTM``/``GRU`` the statesim cells' weights (layer by layer, forward then reverse)."""
    with torch.no_grad():
        for layer, pair in enumerate(cells):
            for direction, cell in enumerate(pair):
                suffix = f"_l{layer}" + ("_reverse" if direction else "")
                for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    getattr(rnn, name + suffix).copy_(getattr(cell, name))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_stacked_and_bidirectional_models_run_fused_and_match_torch(builtin_host, cell):
    """Per-cell fused dispatch inside the stacked/bidirectional topologies equals torch's multi-layer modules."""
    inputs = torch.randn(7, 3, 3, dtype=DOUBLE)
    lengths = torch.tensor([7, 3, 5])
    torch_cls = nn.LSTM if cell == "lstm" else nn.GRU
    cases = [({"type": "stacked", "layers": 2}, dict(num_layers=2), lambda t: [[layer] for layer in t.layers]),
             ({"type": "bidirectional"}, dict(bidirectional=True), lambda t: [[t.fwd, t.bwd]])]
    for topology, torch_kwargs, cells_of in cases:
        model = _layered(builtin_host, topology, cell)
        reference = torch_cls(3, 4, **torch_kwargs).to(DOUBLE)
        _copy_into_torch(reference, cells_of(model.topology))
        model.engine_decisions = {}
        traj = model(inputs, lengths=lengths)
        assert {row["path"] for row in fastpath.summarize(model.engine_decisions)} == {"fused"}
        packed = nn.utils.rnn.pack_padded_sequence(inputs, lengths, enforce_sorted=False)
        expected, _ = nn.utils.rnn.pad_packed_sequence(reference(packed)[0], total_length=7)
        assert torch.allclose(traj.outputs, expected, atol=1e-12)
        model.fast_path = "generic"
        assert torch.allclose(model(inputs, lengths=lengths).outputs, expected, atol=1e-12)


@pytest.mark.slow
def test_a_run_reports_the_engine_path_in_results_and_log(tmp_path):
    from statesim.run import execute

    scenario = tmp_path / "ma.yaml"
    scenario.write_text(
        "scenario:\n  type: moving_average\n  steps: 20\n  train_sequences: 8\n  test_sequences: 4\n"
        "  models:\n    lstm: {cell: {type: lstm, hidden_size: 3}}\n"
        "    loop: {cell: {type: linear, hidden_size: 1, output_size: 1}, head: none, fast_path: generic}\n"
        "training: {steps: 3, batch_size: 4}\noutput: {plots: false, progress: false}\n")
    log: list[str] = []
    run_dir = execute(scenario, out=tmp_path / "run", echo=log.append)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["engine"]["lstm-on-ema"] == [
        {"cell": "LSTMCell", "path": "fused",
         "reason": "torch's fused 'lstm' kernel with the cell's own parameters"}]
    assert results["engine"]["loop-on-ema"][0]["path"] == "generic"
    assert any(line.startswith("engine: job 'lstm-on-ema': LSTMCell ran 3x on the fused path") for line in log)
    calls = json.loads((run_dir / "run.json").read_text())["engine_calls"]
    assert calls["loop-on-ema"][0]["calls"] == 3
