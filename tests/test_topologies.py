"""Topologies bidirectional, stacked and encoder_decoder: against torch's own modules, and with every cell."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from statesim import fastpath
from statesim.builtin.cells import LSTMCell
from statesim.builtin.layered import Bidirectional, Stacked, reverse_padded
from statesim.engine import unroll
from statesim.errors import ShapeError
from statesim.forcing import Clamp, Forcing
from statesim.model import build_model
from statesim.plugin_manager import build_plugin_host

_HOST = build_plugin_host()
CELLS = _HOST.registry.names("cell")


#: The statesim side of a comparison with torch.nn.LSTM on each path: under the default policy the LSTM cells run
#: torch's own fused kernel, and the comparison would be the kernel against itself.
PATHS = pytest.mark.parametrize("path", ["generic", "fused"])


def copy_lstm(cell: LSTMCell, torch_lstm: nn.LSTM, suffix: str) -> None:
    """Copy torch.nn.LSTM's weights of one layer/direction into a statesim LSTM cell."""
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, name).copy_(getattr(torch_lstm, f"{name}_{suffix}"))


def ragged_batch(batch=4, steps=7, features=3):
    lengths = torch.tensor([7, 3, 5, 1])[:batch]
    x = torch.randn(steps, batch, features)
    mask = torch.arange(steps).unsqueeze(1) < lengths
    return x * mask.unsqueeze(-1), lengths


def test_reverse_padded_reverses_each_sequence_within_its_length():
    x = torch.arange(5.0).view(5, 1, 1).repeat(1, 2, 1)
    out = reverse_padded(x, torch.tensor([5, 3]))
    assert out[:, 0, 0].tolist() == [4, 3, 2, 1, 0]
    assert out[:3, 1, 0].tolist() == [2, 1, 0]


@PATHS
def test_bidirectional_matches_torch_lstm_on_ragged_batch(path):
    x, lengths = ragged_batch()
    ref = nn.LSTM(3, 5, bidirectional=True)
    topo = Bidirectional(3, lambda n: LSTMCell(n, 5))
    copy_lstm(topo.fwd, ref, "l0")
    copy_lstm(topo.bwd, ref, "l0_reverse")
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    out_packed, (h_n, c_n) = ref(packed)
    expected, _ = pad_packed_sequence(out_packed, total_length=x.shape[0])
    state = {name: torch.zeros(4, 5) for name in topo.state_spec}
    with fastpath.policy(path):
        traj = topo(x, state, lengths=lengths)
    torch.testing.assert_close(traj.outputs, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(traj.final_state["fwd.h"], h_n[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(traj.final_state["bwd.h"], h_n[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(traj.final_state["fwd.c"], c_n[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(traj.final_state["bwd.c"], c_n[1], atol=1e-5, rtol=1e-5)
    # gradients agree too
    traj.outputs.square().sum().backward()
    expected.square().sum().backward()
    torch.testing.assert_close(topo.bwd.weight_hh.grad, ref.weight_hh_l0_reverse.grad, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("merge", ["sum", "mean"])
def test_bidirectional_merge(merge):
    x, lengths = ragged_batch()
    cat = Bidirectional(3, lambda n: LSTMCell(n, 5))
    other = Bidirectional(3, lambda n: LSTMCell(n, 5), merge=merge)
    other.load_state_dict(cat.state_dict())
    state = {name: torch.zeros(4, 5) for name in cat.state_spec}
    both = cat(x, state, lengths=lengths).outputs
    total = both[..., :5] + both[..., 5:]
    torch.testing.assert_close(other(x, state, lengths=lengths).outputs, total if merge == "sum" else total / 2)


@PATHS
def test_stacked_matches_torch_two_layer_lstm(path):
    x, lengths = ragged_batch()
    ref = nn.LSTM(3, 6, num_layers=2)
    topo = Stacked(3, lambda n: LSTMCell(n, 6), layers=2)
    copy_lstm(topo.layers[0], ref, "l0")
    copy_lstm(topo.layers[1], ref, "l1")
    out_packed, (h_n, c_n) = ref(pack_padded_sequence(x, lengths, enforce_sorted=False))
    expected, _ = pad_packed_sequence(out_packed, total_length=x.shape[0])
    state = {name: torch.zeros(4, 6) for name in topo.state_spec}
    with fastpath.policy(path):
        traj = topo(x, state, lengths=lengths)
    torch.testing.assert_close(traj.outputs, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(traj.final_state["layer1.h"], h_n[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(traj.final_state["layer0.c"], c_n[0], atol=1e-5, rtol=1e-5)


@PATHS
def test_stacked_residual_bidirectional_first_matches_torch_layers(path):
    """GNMT's encoder: bi layer 0, layers 1..2 uni, residual from layer 2 on; built from torch layers by hand."""
    x = torch.randn(6, 3, 4)
    bi, l1, l2 = nn.LSTM(4, 5, bidirectional=True), nn.LSTM(10, 10), nn.LSTM(10, 10)
    topo = Stacked(4, lambda n: LSTMCell(n, 5 if n == 4 else 10), layers=3, residual=True, residual_from=2,
                   bidirectional_first=True)
    copy_lstm(topo.layers[0].fwd, bi, "l0")
    copy_lstm(topo.layers[0].bwd, bi, "l0_reverse")
    copy_lstm(topo.layers[1], l1, "l0")
    copy_lstm(topo.layers[2], l2, "l0")
    y0, _ = bi(x)
    y1, _ = l1(y0)
    y2 = l2(y1)[0] + y1
    state = {name: torch.zeros(3, *shape) for name, shape in topo.state_spec.items()}
    with fastpath.policy(path):
        out = topo(x, state).outputs
    torch.testing.assert_close(out, y2, atol=1e-5, rtol=1e-5)
    assert "layer0.bwd.c" in topo.state_spec and topo.as_cell() is None


def test_stacked_residual_size_mismatch_is_a_clear_error():
    with pytest.raises(ShapeError, match="residual"):
        Stacked(3, lambda n: LSTMCell(n, 5), layers=2, residual=True, residual_from=0)


def test_stack_cell_steps_equal_layerwise_unroll_and_forcing_routes_by_layer():
    x, lengths = ragged_batch()
    topo = Stacked(3, lambda n: LSTMCell(n, 6), layers=3, residual=True, dropout=0.3).eval()
    state = {name: torch.randn(4, 6) for name in topo.state_spec}
    forcing = Forcing([Clamp("layer1.h", 0.5, units=[0, 2], start=2, stop=4), Clamp("input", 1.0, units=[1])])
    layerwise = topo(x, state, lengths=lengths, forcing=forcing, return_states=True)
    cell = topo.as_cell()
    assert set(cell.state_spec) == {f"layer{i}.{p}" for i in range(3) for p in "hc"}
    stepped = unroll(cell, x, state, lengths=lengths, forcing=forcing, return_states=True)
    torch.testing.assert_close(stepped.outputs, layerwise.outputs, atol=1e-5, rtol=1e-5)
    for name in topo.state_spec:
        torch.testing.assert_close(stepped.final_state[name], layerwise.final_state[name], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(stepped.states[name], layerwise.states[name], atol=1e-5, rtol=1e-5)
    # the clamp really acted: without it, layer 1 differs
    free = topo(x, state, lengths=lengths)
    assert not torch.allclose(free.final_state["layer2.h"], layerwise.final_state["layer2.h"])


def test_stacked_dropout_only_in_training():
    topo = Stacked(3, lambda n: LSTMCell(n, 6), layers=2, dropout=0.5)
    x = torch.randn(5, 2, 3)
    state = {name: torch.zeros(2, 6) for name in topo.state_spec}
    topo.train()
    a, b = topo(x, state).outputs, topo(x, state).outputs
    assert not torch.allclose(a, b)
    topo.eval()
    torch.testing.assert_close(topo(x, state).outputs, topo(x, state).outputs)


# --------------------------------------------------------------------------- every cell
def cell_spec(name: str) -> dict:
    """Small, valid parameters for any registered cell (required ints get 4)."""
    record = _HOST.registry.get("cell", name).record
    spec = {"type": name}
    for field, info in record.params.model_fields.items():
        if info.is_required() and info.annotation is int:
            spec[field] = 4
    return spec


TOPOLOGIES = {
    "unidirectional": {"type": "unidirectional"},
    "bidirectional": {"type": "bidirectional"},
    "stacked": {"type": "stacked", "layers": 2, "dropout": 0.1},
    "stacked_residual_bifirst": {"type": "stacked", "layers": 3, "residual": True, "residual_from": 2,
                                 "bidirectional_first": True, "merge": "sum"},
}


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("topology", list(TOPOLOGIES))
@pytest.mark.parametrize("policy", ["zeros", "random", "learned", "warmup"])
def test_every_topology_and_policy_runs_with_every_cell(cell, topology, policy):
    from statesim.config import validate_data

    initial = {"type": policy} if policy != "warmup" else {"type": "warmup", "steps": 3, "prefix": "noise"}
    data = {"scenario": {"type": "moving_average"},
            "model": {"cell": cell_spec(cell), "topology": TOPOLOGIES[topology], "initial_state": initial}}
    config = validate_data(data, _HOST.registry)
    for features in (3, 2):  # a cell with a fixed input size (a CPG's two drives) gets the size it takes
        try:
            _HOST.registry.get("cell", cell).record.cls.from_params(features, config.model.cell.params)
            break
        except ShapeError:
            continue
    try:
        model = build_model(_HOST.registry, config.model, features, 2)
    except ShapeError as exc:  # a cell that cannot read another layer's outputs says so clearly
        assert topology.startswith("stacked") and "input" in str(exc)
        return
    x = torch.randn(5, 3, features)
    lengths = torch.tensor([5, 2, 4])
    traj = model(x, lengths=lengths)
    assert traj.outputs.shape == (5, 3, 2)
    assert torch.all(traj.outputs[2:, 1] == 0)
    assert set(traj.final_state) == set(model.state_spec)
    params = [p for p in model.parameters() if p.requires_grad]
    traj.outputs.square().sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    if policy == "learned":
        assert all(p.grad is not None for p in model.initial_state.parameters())
    if topology in ("unidirectional", "stacked"):  # steppable: one tick of the model's cell equals unroll's first
        model.eval()
        state = model.initial(3, inputs=x)
        y, _ = model.step_cell()(x[0], state)
        torch.testing.assert_close(model.topology(x[:1], state).outputs[0], y)
