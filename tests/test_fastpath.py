"""Fast paths give the generic loop's numbers: outputs, states and gradients (statesim.fastpath).

Each fast path is compared with the engine's generic time loop on the same cell (the loop itself is
checked against closed forms and torch's modules in test_cells/test_engine), and the linear scan also
against the closed form ``h_t = sum_k D^(t-k) C x_k``. Multi-layer and bidirectional models are
compared with ``torch.nn.LSTM``/``GRU`` holding the same weights. No timing is asserted.
"""
from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from statesim import fastpath
from statesim.builtin.cells import GRUCell, LinearCell, LSTMCell, VanillaCell, WindowCell
from statesim.cell import Cell, State
from statesim.engine import unroll
from statesim.forcing import Clamp, Forcing

DOUBLE = torch.float64


def run(cell: Cell, inputs: Tensor, mode: str, *, state: State | None = None, **kwargs):
    """Unroll under ``mode``; returns the trajectory, every gradient, and the recorded paths."""
    params = [p for p in cell.parameters() if p.requires_grad]
    leaves = [inputs] + ([] if state is None else list(state.values()))
    with fastpath.policy(mode), fastpath.record_decisions() as decisions:
        traj = unroll(cell, inputs, state, **kwargs)
    gen = torch.Generator().manual_seed(7)  # a fixed random cotangent reaches every output and state
    loss = (traj.outputs * torch.randn(traj.outputs.shape, generator=gen, dtype=traj.outputs.dtype)).sum()
    for value in traj.final_state.values():
        loss = loss + (value * torch.randn(value.shape, generator=gen, dtype=value.dtype)).sum()
    for value in (traj.states or {}).values():
        loss = loss + (value * torch.randn(value.shape, generator=gen, dtype=value.dtype)).sum()
    grads = torch.autograd.grad(loss, params + leaves, allow_unused=True)
    return traj, grads, {row["path"] for row in fastpath.summarize(decisions)}


def assert_same(fast, generic, rel: float = 1e-10) -> None:
    """Outputs, final state, states and gradients agree (relative to each tensor's norm)."""
    (a, ga, _), (b, gb, _) = fast, generic

    def close(x: Tensor | None, y: Tensor | None, what: str) -> None:
        if x is None or y is None:
            assert x is None and y is None, what
            return
        err = float(((x - y).norm() / y.norm().clamp_min(1e-30)).detach())
        assert err <= rel, f"{what}: relative error {err:.2e} > {rel:.0e}"

    close(a.outputs, b.outputs, "outputs")
    assert set(a.final_state) == set(b.final_state)
    for part in b.final_state:
        close(a.final_state[part], b.final_state[part], f"final {part}")
    assert (a.states is None) == (b.states is None)
    for part in b.states or {}:
        close(a.states[part], b.states[part], f"states {part}")
    for i, (x, y) in enumerate(zip(ga, gb)):
        close(x, y, f"gradient {i}")


def make(kind: str, bias: bool = True) -> Cell:
    if kind == "lstm":
        return LSTMCell(3, hidden_size=5, bias=bias)
    if kind == "gru":
        return GRUCell(3, hidden_size=5, bias=bias)
    return VanillaCell(3, hidden_size=5, activation=kind, bias=bias)


# --------------------------------------------------------------------------- fused kernels
@pytest.mark.parametrize("kind", ["lstm", "gru", "tanh", "relu"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("ragged", [False, True])
def test_fused_matches_the_generic_loop(kind, bias, ragged):
    cell = make(kind, bias).to(DOUBLE)
    inputs = torch.randn(9, 4, 3, dtype=DOUBLE, requires_grad=True)
    state = {k: torch.randn(v.shape, dtype=DOUBLE, requires_grad=True) for k, v in cell.zero_state(4).items()}
    lengths = torch.tensor([9, 4, 1, 12]) if ragged else None  # 12 > T counts as the whole sequence
    fast = run(cell, inputs, "auto", state=state, lengths=lengths)
    generic = run(cell, inputs, "generic", state=state, lengths=lengths)
    assert fast[2] == {"fused"} and generic[2] == {"generic"}
    assert_same(fast, generic)


def test_fused_gradients_land_on_the_cells_own_parameters():
    cell = LSTMCell(3, hidden_size=4)
    inputs = torch.randn(6, 2, 3)
    with fastpath.policy("fused"):
        unroll(cell, inputs).outputs.square().sum().backward()
    fused_grads = {name: p.grad.clone() for name, p in cell.named_parameters()}
    cell.zero_grad()
    with fastpath.policy("generic"):
        unroll(cell, inputs).outputs.square().sum().backward()
    for name, p in cell.named_parameters():
        assert torch.allclose(fused_grads[name], p.grad, rtol=1e-5, atol=1e-6), name


@pytest.mark.parametrize("kind", ["gru", "tanh"])
def test_fused_h_only_kernels_also_return_every_state(kind):
    cell = make(kind).to(DOUBLE)
    inputs = torch.randn(7, 3, 3, dtype=DOUBLE, requires_grad=True)
    lengths = torch.tensor([7, 2, 5])
    fast = run(cell, inputs, "auto", lengths=lengths, return_states=True)
    generic = run(cell, inputs, "generic", lengths=lengths, return_states=True)
    assert fast[2] == {"fused"}
    assert_same(fast, generic)


def test_lstm_with_return_states_and_zero_lengths_take_the_loop_and_say_why():
    cell = LSTMCell(3, hidden_size=4).to(DOUBLE)
    inputs = torch.randn(5, 3, 3, dtype=DOUBLE, requires_grad=True)
    with fastpath.record_decisions() as decisions:
        unroll(cell, inputs, return_states=True)
        unroll(cell, inputs, lengths=torch.tensor([5, 0, 2]))
    reasons = [row["reason"] for row in fastpath.summarize(decisions) if row["path"] == "generic"]
    assert any("return_states" in r for r in reasons) and any("length 0" in r for r in reasons)
    assert_same(run(cell, inputs, "auto", lengths=torch.tensor([5, 0, 2])),
                run(cell, inputs, "generic", lengths=torch.tensor([5, 0, 2])))


def test_state_forcing_takes_the_loop_and_input_forcing_keeps_the_fast_path():
    cell = GRUCell(2, hidden_size=3).to(DOUBLE)
    inputs = torch.randn(8, 2, 2, dtype=DOUBLE, requires_grad=True)
    on_state = Forcing([Clamp("h", 0.5, units=[1], start=2, stop=5)])
    on_input = Forcing([Clamp("input", -1.0, units=[0], start=3)])
    forced = run(cell, inputs, "auto", forcing=on_state)
    assert forced[2] == {"generic"}
    assert_same(run(cell, inputs, "auto", forcing=on_input), run(cell, inputs, "generic", forcing=on_input))
    with fastpath.record_decisions() as decisions:
        unroll(cell, inputs, forcing=on_state)
    assert "clamp on a state part" in fastpath.summarize(decisions)[0]["reason"]


def test_demanding_a_path_that_cannot_run_is_a_clear_error():
    window = WindowCell(1, window=3)
    with fastpath.policy("fused"), pytest.raises(fastpath.FastPathError, match="no fused form.*fast_path: auto"):
        unroll(window, torch.randn(4, 2, 1))
    with pytest.raises(fastpath.FastPathError, match="unknown fast path 'fastest'.*auto, generic, fused, scan"):
        with fastpath.policy("fastest"):
            pass


def test_sigmoid_vanilla_cells_have_no_fused_form():
    assert VanillaCell(2, hidden_size=3, activation="sigmoid").fused_form() is None
    assert fastpath.explain(VanillaCell(2, hidden_size=3, activation="sigmoid"))[0] == "generic"


# --------------------------------------------------------------------------- several layers, one kernel call
def test_fused_sequence_runs_layers_and_directions_in_one_call():
    """The multi-layer, bidirectional kernel entry point equals torch.nn.LSTM with the same weights."""
    reference = nn.LSTM(3, 4, num_layers=2, bidirectional=True).to(DOUBLE)
    names = ["weight_ih", "weight_hh", "bias_ih", "bias_hh"]
    forms = [[fastpath.FusedForm("lstm", tuple(getattr(reference, f"{n}_l{i}{s}") for n in names), 4, ("h", "c"))
              for s in ("", "_reverse")] for i in range(2)]
    inputs = torch.randn(6, 5, 3, dtype=DOUBLE)
    lengths = torch.tensor([6, 1, 3, 6, 2])
    h0, c0 = torch.randn(4, 5, 4, dtype=DOUBLE), torch.randn(4, 5, 4, dtype=DOUBLE)
    states = [[{"h": h0[2 * i + d], "c": c0[2 * i + d]} for d in range(2)] for i in range(2)]
    assert fastpath.fused_incompatibility(forms, inputs, lengths) is None
    outputs, finals = fastpath.fused_sequence(forms, inputs, states, lengths)
    packed = nn.utils.rnn.pack_padded_sequence(inputs, lengths, enforce_sorted=False)
    out, (h_n, c_n) = reference(packed, (h0, c0))
    expected, _ = nn.utils.rnn.pad_packed_sequence(out, total_length=6)
    assert torch.allclose(outputs, expected, atol=1e-12)
    for i in range(2):
        for d in range(2):
            assert torch.allclose(finals[i][d]["h"], h_n[2 * i + d], atol=1e-12)
            assert torch.allclose(finals[i][d]["c"], c_n[2 * i + d], atol=1e-12)


# --------------------------------------------------------------------------- the linear scan
def closed_form(u: Tensor, M: Tensor) -> Tensor:
    """``h_t = sum_{k <= t} u_k M^(t-k)`` by explicit matrix powers (row-vector convention)."""
    steps = u.shape[0]
    powers = [torch.eye(M.shape[0], dtype=M.dtype)]
    for _ in range(steps):
        powers.append(powers[-1] @ M)
    return torch.stack([sum(u[k] @ powers[t - k] for k in range(t + 1)) for t in range(steps)])


@pytest.mark.parametrize("steps", [1, 2, 3, 5, 16, 17, 50])
def test_scan_matches_the_closed_form(steps):
    M = torch.randn(4, 4, dtype=DOUBLE) * 0.4
    u = torch.randn(steps, 3, 4, dtype=DOUBLE)
    assert torch.allclose(fastpath.scan_linear_(u.clone(), M), closed_form(u, M), atol=1e-12)


def test_scan_with_one_step_blocks():
    M = torch.randn(600, 600, dtype=DOUBLE) * 0.03
    u = torch.randn(9, 1, 600, dtype=DOUBLE)
    assert fastpath._block_size(9, 1, 600) == 1  # large states make the powers too costly: plain recurrence
    assert torch.allclose(fastpath.scan_linear_(u.clone(), M), closed_form(u, M), atol=1e-10)


@pytest.mark.parametrize("ragged", [False, True])
@pytest.mark.parametrize("return_states", [False, True])
def test_linear_cell_scan_matches_the_generic_loop(ragged, return_states):
    cell = LinearCell(3, hidden_size=5, output_size=2, spectral_radius=0.9).to(DOUBLE)
    inputs = torch.randn(40, 4, 3, dtype=DOUBLE, requires_grad=True)
    state = {"h": torch.randn(4, 5, dtype=DOUBLE, requires_grad=True)}
    lengths = torch.tensor([40, 17, 0, 1]) if ragged else None
    fast = run(cell, inputs, "auto", state=state, lengths=lengths, return_states=return_states)
    generic = run(cell, inputs, "generic", state=state, lengths=lengths, return_states=return_states)
    assert fast[2] == {"scan"} and generic[2] == {"generic"}
    assert_same(fast, generic)


def test_linear_scan_float32_long_sequence_within_1e_5():
    """The issue's shape (state 16, batch 64, T = 4096) in float32: scan vs loop within 1e-5 relative error."""
    cell = LinearCell(4, hidden_size=16, output_size=4, spectral_radius=0.95)
    inputs = torch.randn(4096, 64, 4, requires_grad=True)
    fast = run(cell, inputs, "scan")
    generic = run(cell, inputs, "generic")
    assert_same(fast, generic, rel=1e-5)


def test_fixed_matrices_get_no_gradient_on_the_scan():
    cell = LinearCell(2, hidden_size=3, fixed=["D"]).to(DOUBLE)
    inputs = torch.randn(10, 2, 2, dtype=DOUBLE)
    with fastpath.policy("scan"):
        unroll(cell, inputs).outputs.sum().backward()
    assert cell.D.grad is None and cell.C.grad is not None


# --------------------------------------------------------------------------- the generic loop, compile, runs
class PlainLSTM(Cell):
    """The LSTM equations as a plain ``forward`` cell, as a plugin author would write them."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size)
        self.hidden_size = hidden_size
        self.w = nn.Linear(input_size + hidden_size, 4 * hidden_size)

    @property
    def state_spec(self):
        return {"h": (self.hidden_size,), "c": (self.hidden_size,)}

    @property
    def output_size(self):
        return self.hidden_size

    def forward(self, x, state):
        i, f, g, o = self.w(torch.cat([x, state["h"]], -1)).chunk(4, -1)
        c = torch.sigmoid(f) * state["c"] + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, {"h": h, "c": c}


def test_generic_loop_backward_does_not_index_the_whole_sequence_per_step():
    """unbind, not x[t]: the backward graph holds one UnbindBackward, no per-step SelectBackward."""
    cell = PlainLSTM(2, 3)
    inputs = torch.randn(20, 2, 2, requires_grad=True)
    out = unroll(cell, inputs).outputs
    seen, stack, kinds = set(), [out.grad_fn], []
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        kinds.append(type(node).__name__)
        stack.extend(next_fn for next_fn, _ in node.next_functions)
    assert kinds.count("UnbindBackward0") == 1 and "SelectBackward0" not in kinds


@pytest.mark.slow
def test_compiled_loop_matches_the_generic_loop_and_reports_its_compile_time(monkeypatch):
    """Two compiled chunks of 2 steps and an eager tail of 1, with ragged lengths and every state returned."""
    monkeypatch.setattr(fastpath.policies, "COMPILE_CHUNK", 2)  # read where it is defined
    cell = PlainLSTM(2, 3).to(DOUBLE)
    inputs = torch.randn(5, 3, 2, dtype=DOUBLE, requires_grad=True)
    lengths = torch.tensor([5, 2, 3])
    with fastpath.record_decisions() as decisions:
        compiled = run(cell, inputs, "compiled", lengths=lengths, return_states=True)
    assert_same(compiled, run(cell, inputs, "generic", lengths=lengths, return_states=True))
    (row,) = fastpath.summarize(decisions)
    assert row["path"] == "compiled" and row["compile_seconds"] > 0
    with fastpath.policy("auto", compile=False):
        assert fastpath.explain(cell)[0] == "generic"
    with fastpath.policy("auto", compile=True):
        assert fastpath.explain(cell) == ("compiled",
                                          "torch.compile of the cell's step loop, 2 steps per compiled call")


def test_model_config_chooses_the_path_and_rejects_unknown_ones(builtin_host):
    from statesim.config import validate_data
    from statesim.errors import ConfigError
    from statesim.model import build_model

    data = {"scenario": {"type": "moving_average"},
            "model": {"cell": {"type": "lstm", "hidden_size": 4}, "fast_path": "generic"}}
    config = validate_data(data, builtin_host.registry)
    model = build_model(builtin_host.registry, config.model, 1, 1)
    model(torch.randn(5, 2, 1))
    assert {row["path"] for row in fastpath.summarize(model.engine_decisions)} == {"generic"}
    assert fastpath.plan(model) == [{"cell": "LSTMCell", "path": "generic", "reason": "fast_path: generic"}]
    model.fast_path = None  # inherit: auto
    assert fastpath.plan(model)[0]["path"] == "fused"
    data["model"]["fast_path"] = "turbo"
    with pytest.raises(ConfigError, match="model.fast_path.*unknown fast path 'turbo'"):
        validate_data(data, builtin_host.registry)


def test_linear_system_function_gradcheck():
    """The hand-written adjoint of the whole linear cell against finite differences."""
    args = [torch.randn(7, 2, 3, dtype=DOUBLE), torch.randn(2, 4, dtype=DOUBLE), torch.randn(2, 3, dtype=DOUBLE),
            torch.randn(2, 4, dtype=DOUBLE), torch.randn(4, 3, dtype=DOUBLE), torch.randn(4, 4, dtype=DOUBLE) * 0.4]
    args = [a.requires_grad_() for a in args]
    assert torch.autograd.gradcheck(lambda *a: fastpath._LinearSystem.apply(*a), args)


@pytest.mark.parametrize("steps", [1, 4, 7, 23])
def test_reverse_scan_is_the_scan_of_the_reversed_sequence(steps):
    M = torch.randn(3, 3, dtype=DOUBLE) * 0.5
    u = torch.randn(steps, 2, 3, dtype=DOUBLE)
    reversed_scan = fastpath.scan_linear_(u.clone(), M, reverse=True)
    assert torch.allclose(reversed_scan, closed_form(u.flip(0), M).flip(0), atol=1e-12)


@pytest.mark.slow
def test_a_deep_copy_of_a_compiled_cell_runs_its_own_step_and_weights(monkeypatch):
    """The compiled loop is cached per cell outside the cell, so a deepcopy (bptt_horizon trains one) compiles
    its own."""
    import copy

    monkeypatch.setattr(fastpath.policies, "COMPILE_CHUNK", 2)  # read where it is defined
    cell = PlainLSTM(2, 3).to(DOUBLE)
    inputs = torch.randn(4, 2, 2, dtype=DOUBLE)
    with fastpath.policy("compiled"):
        unroll(cell, inputs)  # compiles the original's loop
    twin = copy.deepcopy(cell)
    with torch.no_grad():
        for p in twin.parameters():
            p.mul_(-0.5)
    with fastpath.policy("compiled"):
        got = unroll(twin, inputs).outputs
    with fastpath.policy("generic"):
        want = unroll(twin, inputs).outputs
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


class _ReferencePath:
    """A third party's path: the reference loop of test_engine, counting its runs."""

    name = "reference"

    def __init__(self) -> None:
        self.runs = 0

    def prepare(self, stepper, request):
        if request.return_states:
            return "it returns no states"

        def run(inputs, state, lengths):
            self.runs += 1
            outputs = []
            for x_t in inputs:
                y, state = stepper.cell(x_t, state)
                outputs.append(y)
            return torch.stack(outputs), state, None

        return run, "the reference loop"


def test_a_plugin_fast_path_is_registered_through_the_hook_and_called_by_pluggy():
    from statesim import extensions, hookimpl

    path = _ReferencePath()

    class Plugin:
        @hookimpl
        def statesim_fast_paths(self):
            return [path]

    class LastPlugin:
        @hookimpl(trylast=True)
        def statesim_fast_paths(self):
            return [path]

    manager = extensions.manager()
    cell = LSTMCell(2, hidden_size=3).to(DOUBLE)
    inputs = torch.randn(6, 2, 2, dtype=DOUBLE, requires_grad=True)
    manager.register(Plugin(), name="test-reference-path")
    try:
        assert "reference" in fastpath.known_modes()
        demanded = run(cell, inputs, "reference")
        assert demanded[2] == {"reference"} and path.runs == 1
        assert_same(demanded, run(cell, inputs, "generic"))
        assert run(cell, inputs, "auto")[2] == {"reference"}  # registered later, so called before the built-ins
        with fastpath.policy("reference"), pytest.raises(fastpath.FastPathError, match="it returns no states"):
            unroll(cell, inputs, return_states=True)
    finally:
        manager.unregister(name="test-reference-path")
    manager.register(LastPlugin(), name="test-reference-path")
    try:
        assert run(cell, inputs, "auto")[2] == {"fused"}  # trylast: after the built-ins
    finally:
        manager.unregister(name="test-reference-path")
    assert "reference" not in fastpath.known_modes()
