"""Built-in cells against independent truth: the seed's closed forms and torch's own recurrent modules."""
import pytest
import torch
from torch import nn

from statesim import fastpath
from statesim.builtin.cells import GRUCell, LinearCell, LSTMCell, VanillaCell, WindowCell
from statesim.engine import unroll

DT = torch.float64
TOL = dict(rtol=1e-10, atol=1e-12)
#: statesim's side of a comparison with torch.nn.LSTM/GRU/RNN runs pinned to each path: under the default policy
#: a cell with a fused form runs torch's own kernel, and the comparison would be the kernel against itself.
PATHS = pytest.mark.parametrize("path", ["generic", "fused"])


def _linear_cell(n_in=2, n_h=3, n_out=2, **kw):
    cell = LinearCell(n_in, n_h, output_size=n_out, **kw).to(DT)
    with torch.no_grad():  # a generic (non-symmetric) D with spectral radius below one
        cell.D.copy_(torch.randn(n_h, n_h, dtype=DT) * 0.3)
    return cell


# --------------------------------------------------------------------------- linear
def test_linear_matches_closed_form():
    """h_t = sum_k D^k C x_{t-k} + D^t h_0 and y_t = A x_t + B h_{t-1} (seed equations)."""
    steps, batch = 7, 3
    cell = _linear_cell()
    A, B, C, D = (getattr(cell, n).detach() for n in "ABCD")
    x = torch.randn(steps, batch, 2, dtype=DT)
    h0 = torch.randn(batch, 3, dtype=DT)
    traj = unroll(cell, x, {"h": h0}, return_states=True)

    def h(t):  # state after t inputs (t = 0 is h_0); x_{t} is inputs[t - 1]
        total = torch.linalg.matrix_power(D, t) @ h0.T
        for k in range(t):
            total = total + torch.linalg.matrix_power(D, k) @ C @ x[t - 1 - k].T
        return total.T

    for t in range(1, steps + 1):
        torch.testing.assert_close(traj.states["h"][t - 1], h(t), **TOL)
        torch.testing.assert_close(traj.outputs[t - 1], x[t - 1] @ A.T + h(t - 1) @ B.T, **TOL)
    torch.testing.assert_close(traj.final_state["h"], h(steps), **TOL)


def test_linear_impulse_response_is_the_response_to_an_impulse():
    """G_0 = A, G_k = B D^{k-1} C, and it equals y after a unit impulse from rest."""
    cell = _linear_cell(n_in=2, n_h=3, n_out=2)
    A, B, C, D = (getattr(cell, n).detach() for n in "ABCD")
    steps = 6
    G = cell.impulse_response(steps).detach()
    assert G.shape == (steps, 2, 2)
    torch.testing.assert_close(G[0], A, **TOL)
    for k in range(1, steps):
        torch.testing.assert_close(G[k], B @ torch.linalg.matrix_power(D, k - 1) @ C, **TOL)
    impulses = torch.zeros(steps, 2, 2, dtype=DT)
    impulses[0] = torch.eye(2, dtype=DT)  # batch element j gets an impulse on input j
    out = unroll(cell, impulses).outputs.detach()  # [steps, j, out]
    torch.testing.assert_close(out.transpose(1, 2), G, **TOL)


def test_linear_fixed_matrices_get_no_gradient():
    cell = _linear_cell(fixed=["A", "D"])
    assert not cell.A.requires_grad and not cell.D.requires_grad
    assert cell.B.requires_grad and cell.C.requires_grad
    unroll(cell, torch.randn(5, 2, 2, dtype=DT)).outputs.pow(2).sum().backward()
    assert cell.A.grad is None and cell.D.grad is None
    assert cell.B.grad.abs().sum() > 0 and cell.C.grad.abs().sum() > 0
    assert {n for n, p in cell.named_parameters() if p.requires_grad} == {"B", "C"}


def test_linear_explicit_init_and_bad_shape():
    cell = LinearCell(1, 1, init={"A": [[0.5]], "B": [[0.25]], "C": [[1.0]], "D": [[0.9]]})
    values = [getattr(cell, n).detach() for n in "ABCD"]
    torch.testing.assert_close(torch.cat([v.flatten() for v in values]), torch.tensor([0.5, 0.25, 1.0, 0.9]))
    with pytest.raises(ValueError, match="init.D"):
        LinearCell(1, 2, init={"D": [[0.9]]})


def test_linear_default_spectral_radius():
    cell = LinearCell(2, 5, spectral_radius=0.7)
    assert float(torch.linalg.eigvals(cell.D.detach()).abs().max()) == pytest.approx(0.7, rel=1e-5)


# --------------------------------------------------------------------------- torch references
def _compare_with_torch(cell, ref, state0, ref_state0, path, steps=6, batch=3):
    """Outputs, final states and gradients wrt every parameter, the input and the initial state, with statesim's
    side on ``path`` (``generic``: the engine's loop over the cell's own step; ``fused``: its fused form)."""
    x = torch.randn(steps, batch, cell.input_size, dtype=DT, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    state0 = {k: v.clone().requires_grad_(True) for k, v in state0.items()}
    ref_state0 = tuple(v.clone().requires_grad_(True) for v in ref_state0)
    with fastpath.policy(path), fastpath.record_decisions() as decisions:
        traj = unroll(cell, x, state0)
    assert {key[1] for key in decisions} == {path}, decisions  # the path really taken
    out_ref, final_ref = ref(x_ref, ref_state0 if len(ref_state0) > 1 else ref_state0[0])
    final_ref = final_ref if isinstance(final_ref, tuple) else (final_ref,)
    torch.testing.assert_close(traj.outputs, out_ref, **TOL)
    parts = list(cell.state_spec)
    for part, value in zip(parts, final_ref):
        torch.testing.assert_close(traj.final_state[part], value[0], **TOL)
    w_out = torch.randn_like(out_ref)
    w_fin = [torch.randn_like(v[0]) for v in final_ref]
    loss = (traj.outputs * w_out).sum() + sum((traj.final_state[p] * w).sum() for p, w in zip(parts, w_fin))
    loss_ref = (out_ref * w_out).sum() + sum((v[0] * w).sum() for v, w in zip(final_ref, w_fin))
    loss.backward()
    loss_ref.backward()
    ref_params = dict(ref.named_parameters())
    names = [n for n, _ in cell.named_parameters()]
    assert names, "cell has parameters"
    for name, p in cell.named_parameters():
        torch.testing.assert_close(p.grad, ref_params[name + "_l0"].grad, **TOL)
    torch.testing.assert_close(x.grad, x_ref.grad, **TOL)
    for part, ref_value in zip(parts, ref_state0):
        torch.testing.assert_close(state0[part].grad, ref_value.grad[0], **TOL)


def _copy_into(ref, cell):
    with torch.no_grad():
        for name, p in cell.named_parameters():
            getattr(ref, name + "_l0").copy_(p)


@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("bias", [True, False])
@PATHS
def test_vanilla_matches_torch_rnn(activation, bias, path):
    cell = VanillaCell(3, 4, activation=activation, bias=bias).to(DT)
    ref = nn.RNN(3, 4, nonlinearity=activation, bias=bias, dtype=DT)
    _copy_into(ref, cell)
    h0 = torch.randn(1, 3, 4, dtype=DT)
    _compare_with_torch(cell, ref, {"h": h0[0]}, (h0,), path)


@pytest.mark.parametrize("bias", [True, False])
@PATHS
def test_lstm_matches_torch_lstm(bias, path):
    cell = LSTMCell(3, 4, bias=bias).to(DT)
    ref = nn.LSTM(3, 4, bias=bias, dtype=DT)
    _copy_into(ref, cell)
    h0, c0 = torch.randn(1, 3, 4, dtype=DT), torch.randn(1, 3, 4, dtype=DT)
    _compare_with_torch(cell, ref, {"h": h0[0], "c": c0[0]}, (h0, c0), path)


@PATHS
def test_lstm_forget_bias_shifts_only_the_forget_gate_and_still_matches_torch(path):
    torch.manual_seed(5)
    plain = LSTMCell(2, 3, forget_bias=0.0)
    torch.manual_seed(5)
    shifted = LSTMCell(2, 3, forget_bias=1.0)
    diff = (shifted.bias_ih - plain.bias_ih).detach()
    expected = torch.zeros(12)
    expected[3:6] = 1.0  # torch's gate order i, f, g, o
    torch.testing.assert_close(diff, expected)
    torch.testing.assert_close(shifted.bias_hh, plain.bias_hh)
    torch.testing.assert_close(shifted.weight_ih, plain.weight_ih)
    cell = shifted.to(DT)
    ref = nn.LSTM(2, 3, dtype=DT)
    _copy_into(ref, cell)
    _compare_with_torch(cell, ref, {"h": torch.zeros(2, 3, dtype=DT), "c": torch.zeros(2, 3, dtype=DT)},
                        (torch.zeros(1, 2, 3, dtype=DT), torch.zeros(1, 2, 3, dtype=DT)), path, batch=2)


def test_lstm_step_follows_the_seed_gate_equations():
    """c_t = f*c_{t-1} + i*c', h_t = o*tanh(c_t) with f, i, o sigmoids and c' = tanh (written out)."""
    cell = LSTMCell(2, 3).to(DT)
    x, h, c = torch.randn(4, 2, dtype=DT), torch.randn(4, 3, dtype=DT), torch.randn(4, 3, dtype=DT)
    W, U = cell.weight_ih.detach(), cell.weight_hh.detach()
    b = (cell.bias_ih + cell.bias_hh).detach()
    pre = x @ W.T + h @ U.T + b
    i, f, g, o = pre[:, :3], pre[:, 3:6], pre[:, 6:9], pre[:, 9:]
    c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    y, state = cell(x, {"h": h, "c": c})
    torch.testing.assert_close(state["c"], c_new, **TOL)
    torch.testing.assert_close(y, torch.sigmoid(o) * torch.tanh(c_new), **TOL)
    torch.testing.assert_close(state["h"], y, **TOL)


@pytest.mark.parametrize("bias", [True, False])
@PATHS
def test_gru_matches_torch_gru(bias, path):
    cell = GRUCell(3, 4, bias=bias).to(DT)
    ref = nn.GRU(3, 4, bias=bias, dtype=DT)
    _copy_into(ref, cell)
    h0 = torch.randn(1, 3, 4, dtype=DT)
    _compare_with_torch(cell, ref, {"h": h0[0]}, (h0,), path)


def test_vanilla_identity_activation_and_forward_equals_transition():
    cell = VanillaCell(2, 3, activation="identity").to(DT)
    x, h = torch.randn(4, 2, dtype=DT), torch.randn(4, 3, dtype=DT)
    expected = x @ cell.weight_ih.T + cell.bias_ih + h @ cell.weight_hh.T + cell.bias_hh
    y, state = cell(x, {"h": h})
    torch.testing.assert_close(y, expected, **TOL)
    torch.testing.assert_close(state["h"], expected, **TOL)


# --------------------------------------------------------------------------- window
def test_window_k3_is_the_seed_moving_average():
    """y_t = a x_t + b x_{t-1} + c x_{t-2}, with x before the start taken as 0."""
    a, b, c = 0.5, 0.3, 0.2
    cell = WindowCell(1, window=3).to(DT)
    with torch.no_grad():
        cell.net[-1].weight.copy_(torch.tensor([[a, b, c]], dtype=DT))
    assert cell.state_spec == {"window": (3, 1)}
    torch.testing.assert_close(cell.weights.detach(), torch.tensor([[[a], [b], [c]]], dtype=DT))
    x = torch.randn(8, 2, 1, dtype=DT)
    padded = torch.cat([torch.zeros(2, 2, 1, dtype=DT), x])
    expected = a * padded[2:] + b * padded[1:-1] + c * padded[:-2]
    traj = unroll(cell, x)
    torch.testing.assert_close(traj.outputs, expected, **TOL)
    # the state holds the last three inputs, newest first
    torch.testing.assert_close(traj.final_state["window"], torch.stack([x[-1], x[-2], x[-3]], dim=1), **TOL)


def test_window_with_several_inputs_uses_the_documented_weight_layout():
    cell = WindowCell(2, window=2, output_size=3, bias=True).to(DT)
    w = cell.weights.detach()  # [out, window, in]; w[:, 0] weighs x_t
    bias = cell.net[-1].bias.detach()
    x = torch.randn(5, 4, 2, dtype=DT)
    prev = torch.cat([torch.zeros(1, 4, 2, dtype=DT), x[:-1]])
    expected = x @ w[:, 0].T + prev @ w[:, 1].T + bias
    torch.testing.assert_close(unroll(cell, x).outputs, expected, **TOL)


def test_window_mlp_option():
    cell = WindowCell(1, window=3, hidden=[5], activation="tanh").to(DT)
    first, last = cell.net[0], cell.net[-1]
    assert first.in_features == 3 and first.out_features == 5 and last.in_features == 5
    x = torch.randn(6, 2, 1, dtype=DT)
    padded = torch.cat([torch.zeros(2, 2, 1, dtype=DT), x])
    stacked = torch.cat([padded[2:], padded[1:-1], padded[:-2]], dim=-1)  # [x_t, x_{t-1}, x_{t-2}]
    expected = torch.tanh(stacked @ first.weight.T + first.bias) @ last.weight.T + last.bias
    traj = unroll(cell, x)
    torch.testing.assert_close(traj.outputs, expected.detach(), **TOL)
    traj.outputs.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in cell.parameters())


# --------------------------------------------------------------------------- registration
def test_builtin_cells_are_registered_with_their_params(builtin_host):
    registry = builtin_host.registry
    for name, cls in [("linear", LinearCell), ("vanilla", VanillaCell), ("lstm", LSTMCell),
                      ("gru", GRUCell), ("window", WindowCell)]:
        record = registry.get("cell", name).record
        assert record.cls is cls and record.params is cls.Params
