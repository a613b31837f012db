"""The engine: step == unroll, states, variable lengths, forcing semantics and gradients, input errors.

References are hand-written loops over the cell's own one-step ``forward`` (no engine), with the clamps
written out explicitly, and closed-form gradients of the linear cell.
"""
import math

import pytest
import torch

from statesim.builtin.cells import GRUCell, LinearCell, LSTMCell, VanillaCell, WindowCell
from statesim.engine import lengths_to_mask, step, unroll
from statesim.errors import ShapeError
from statesim.forcing import Clamp, ClampConfig, Forcing, forcing_from_config

DT = torch.float64
TOL = dict(rtol=1e-10, atol=1e-12)

CELLS = {
    "linear": lambda: LinearCell(3, 4, output_size=2),
    "vanilla": lambda: VanillaCell(3, 4),
    "lstm": lambda: LSTMCell(3, 4),
    "gru": lambda: GRUCell(3, 4),
    "window": lambda: WindowCell(3, window=3, output_size=2),
}
STATE_PART = {"linear": "h", "vanilla": "h", "lstm": "c", "gru": "h", "window": "window"}


def _random_state(cell, batch):
    return {k: torch.randn(batch, *shape, dtype=DT) for k, shape in cell.state_spec.items()}


def _reference(cell, x, state, input_clamps=(), state_clamps=(), t0=0):
    """The engine's documented semantics written as a plain loop.

    ``input_clamps``: (units, start, stop, value(t) -> [B, n]); ``state_clamps``: (part, units, start, stop, value).
    """
    outputs, states = [], []
    for t in range(x.shape[0]):
        g = t0 + t
        xt = x[t].clone()
        for units, start, stop, value in input_clamps:
            if start <= g < stop:
                xt[:, units] = value(g)
        read = dict(state)
        for part, units, start, stop, value in state_clamps:
            if start <= g < stop:
                flat = read[part].reshape(read[part].shape[0], -1).clone()
                flat[:, units] = value(g)
                read[part] = flat.view(read[part].shape)
        y, state = cell(xt, read)
        outputs.append(y)
        states.append(state)
    return torch.stack(outputs), state, states


# --------------------------------------------------------------------------- step == unroll
@pytest.mark.parametrize("name", list(CELLS))
def test_step_by_step_equals_unroll_with_forcing(name):
    cell = CELLS[name]().to(DT)
    steps, batch = 7, 3
    x = torch.randn(steps, batch, 3, dtype=DT)
    state0 = _random_state(cell, batch)
    forcing = Forcing([Clamp("input", 2.0, units=[1], start=2, stop=4),
                       Clamp(STATE_PART[name], lambda t: 0.1 * t, units=[0, 2], start=3, stop=6)])
    traj = unroll(cell, x, state0, forcing=forcing, return_states=True)
    state = state0
    for t in range(steps):
        y, state = step(cell, x[t], state, forcing=forcing, t=t)
        torch.testing.assert_close(y, traj.outputs[t], **TOL)
        for part in state:
            torch.testing.assert_close(state[part], traj.states[part][t], **TOL)
    for part in state:
        torch.testing.assert_close(state[part], traj.final_state[part], **TOL)
    ref_out, ref_final, _ = _reference(
        cell, x, state0, input_clamps=[([1], 2, 4, lambda t: 2.0)],
        state_clamps=[(STATE_PART[name], [0, 2], 3, 6, lambda t: 0.1 * t)])
    torch.testing.assert_close(traj.outputs, ref_out, **TOL)
    for part in ref_final:
        torch.testing.assert_close(traj.final_state[part], ref_final[part], **TOL)


@pytest.mark.parametrize("name", list(CELLS))
def test_return_states_are_the_states_produced_at_each_step(name):
    cell = CELLS[name]().to(DT)
    x = torch.randn(5, 2, 3, dtype=DT)
    state0 = _random_state(cell, 2)
    traj = unroll(cell, x, state0, return_states=True)
    _, _, ref_states = _reference(cell, x, state0)
    assert set(traj.states) == set(cell.state_spec)
    for part, shape in cell.state_spec.items():
        assert traj.states[part].shape == (5, 2, *shape)
        for t in range(5):
            torch.testing.assert_close(traj.states[part][t], ref_states[t][part], **TOL)
    assert unroll(cell, x, state0).states is None


def test_zero_state_is_the_default():
    cell = VanillaCell(3, 4).to(DT)
    x = torch.randn(4, 2, 3, dtype=DT)
    torch.testing.assert_close(unroll(cell, x).outputs, unroll(cell, x, cell.zero_state(2)).outputs, **TOL)


# --------------------------------------------------------------------------- variable lengths
@pytest.mark.parametrize("name", ["vanilla", "lstm", "window"])
def test_variable_lengths_final_state_and_padding(name):
    cell = CELLS[name]().to(DT)
    steps, lengths = 6, torch.tensor([6, 2, 4, 1])
    x = torch.randn(steps, 4, 3, dtype=DT) * 5  # padding is garbage, not zeros
    state0 = _random_state(cell, 4)
    traj = unroll(cell, x, state0, lengths=lengths, return_states=True)
    for b, n in enumerate(lengths.tolist()):
        alone = unroll(cell, x[:n, b:b + 1], {k: v[b:b + 1] for k, v in state0.items()})
        torch.testing.assert_close(traj.outputs[:n, b], alone.outputs[:, 0], **TOL)
        assert torch.equal(traj.outputs[n:, b], torch.zeros_like(traj.outputs[n:, b]))
        for part in state0:
            torch.testing.assert_close(traj.final_state[part][b], alone.final_state[part][0], **TOL)
            for t in range(n, steps):  # the state is held after the end
                torch.testing.assert_close(traj.states[part][t, b], alone.final_state[part][0], **TOL)


def test_variable_lengths_padding_gets_no_gradient():
    cell = VanillaCell(3, 4).to(DT)
    x = torch.randn(5, 2, 3, dtype=DT, requires_grad=True)
    traj = unroll(cell, x, lengths=torch.tensor([5, 3]))
    (traj.outputs.sum() + traj.final_state["h"].sum()).backward()
    assert torch.equal(x.grad[3:, 1], torch.zeros(2, 3, dtype=DT))
    assert x.grad[:3, 1].abs().min() > 0


def test_lengths_to_mask_and_bad_lengths():
    mask = lengths_to_mask(torch.tensor([3, 0, 1]), 4)
    expected = torch.tensor([[1, 0, 1], [1, 0, 0], [1, 0, 0], [0, 0, 0]], dtype=torch.bool)
    assert torch.equal(mask, expected)
    cell = VanillaCell(3, 4)
    with pytest.raises(ValueError, match="lengths"):
        unroll(cell, torch.randn(4, 2, 3), lengths=torch.tensor([4, 2, 1]))


# --------------------------------------------------------------------------- forcing semantics
def test_input_clamp_window_and_units():
    cell = VanillaCell(3, 4).to(DT)
    x = torch.randn(8, 2, 3, dtype=DT)
    forcing = Forcing([Clamp("input", 3.0, units=[0, 2], start=2, stop=5)])
    traj = unroll(cell, x, forcing=forcing)
    ref, _, _ = _reference(cell, x, cell.zero_state(2), input_clamps=[([0, 2], 2, 5, lambda t: 3.0)])
    torch.testing.assert_close(traj.outputs, ref, **TOL)
    # the caller's inputs are untouched, and outside the window nothing changes
    assert not torch.any(x[2:5, :, 0] == 3.0)
    torch.testing.assert_close(traj.outputs[:2], unroll(cell, x[:2]).outputs, **TOL)


def test_state_clamp_acts_on_what_the_step_reads_and_states_are_produced_values():
    """Clamping h on [3, 5) replaces h_{t-1} read at steps 3 and 4; the returned state at 3 is f(x_3, clamped)."""
    cell = VanillaCell(2, 3).to(DT)
    x = torch.randn(6, 2, 2, dtype=DT)
    forcing = Forcing([Clamp("h", 0.5, units=[1], start=3, stop=5)])
    traj = unroll(cell, x, forcing=forcing, return_states=True)
    h = torch.zeros(2, 3, dtype=DT)
    W, U, b = cell.weight_ih.detach(), cell.weight_hh.detach(), (cell.bias_ih + cell.bias_hh).detach()
    for t in range(6):
        read = h.clone()
        if 3 <= t < 5:
            read[:, 1] = 0.5
        h = torch.tanh(x[t] @ W.T + read @ U.T + b)
        torch.testing.assert_close(traj.states["h"][t], h, **TOL)
        torch.testing.assert_close(traj.outputs[t], h, **TOL)
    # the produced state at the last forced step is not the clamp value
    assert not torch.allclose(traj.states["h"][4, :, 1], torch.full((2,), 0.5, dtype=DT))


def test_lstm_cell_state_clamp():
    cell = LSTMCell(2, 3).to(DT)
    x = torch.randn(6, 2, 2, dtype=DT)
    forcing = Forcing([Clamp("c", [1.0, -1.0], units=[0, 2], start=1, stop=4)])
    traj = unroll(cell, x, forcing=forcing)
    ref, ref_final, _ = _reference(cell, x, cell.zero_state(2),
                                   state_clamps=[("c", [0, 2], 1, 4, lambda t: torch.tensor([1.0, -1.0], dtype=DT))])
    torch.testing.assert_close(traj.outputs, ref, **TOL)
    torch.testing.assert_close(traj.final_state["c"], ref_final["c"], **TOL)
    assert not torch.allclose(traj.outputs, unroll(cell, x).outputs)


def test_open_ended_clamp_and_all_units():
    cell = GRUCell(2, 3).to(DT)
    x = torch.randn(5, 2, 2, dtype=DT)
    traj = unroll(cell, x, forcing=Forcing([Clamp("h", 0.0, start=2)]))
    ref, _, _ = _reference(cell, x, cell.zero_state(2), state_clamps=[("h", slice(None), 2, 99, lambda t: 0.0)])
    torch.testing.assert_close(traj.outputs, ref, **TOL)


def test_t0_offsets_windows_so_chunks_equal_one_long_unroll():
    cell = LSTMCell(2, 3).to(DT)
    x = torch.randn(9, 2, 2, dtype=DT)
    values = torch.randn(4, 2, 1, dtype=DT)  # [window steps, B, units]
    inputs = torch.randn(6, 2, 1, dtype=DT)
    forcing = Forcing([Clamp("input", lambda t: math.sin(t), units=[0], start=1, stop=6),
                       Clamp("input", inputs, units=[1], start=2, stop=8),
                       Clamp("h", values, units=[2], start=3, stop=7)])
    whole = unroll(cell, x, forcing=forcing)
    state, parts = None, []
    for start, stop in [(0, 2), (2, 5), (5, 9)]:
        chunk = unroll(cell, x[start:stop], state, forcing=forcing, t0=start)
        parts.append(chunk.outputs)
        state = chunk.final_state
    torch.testing.assert_close(torch.cat(parts), whole.outputs, **TOL)
    ref, _, _ = _reference(cell, x, cell.zero_state(2),
                           input_clamps=[([0], 1, 6, lambda t: math.sin(t)), ([1], 2, 8, lambda t: inputs[t - 2])],
                           state_clamps=[("h", [2], 3, 7, lambda t: values[t - 3])])
    torch.testing.assert_close(whole.outputs, ref, **TOL)
    # t0 shifts the window: starting at global step 10 nothing is clamped
    torch.testing.assert_close(unroll(cell, x, forcing=forcing, t0=10).outputs, unroll(cell, x).outputs, **TOL)


def test_ramp_from_config_and_per_sequence_values():
    cfg = ClampConfig(target="input", units=[1], start=2, stop=6, ramp=(1.0, -2.0))
    cell = VanillaCell(2, 3).to(DT)
    x = torch.randn(8, 3, 2, dtype=DT)
    traj = unroll(cell, x, forcing=forcing_from_config([cfg]))
    ramp = {2: 1.0, 3: 0.0, 4: -1.0, 5: -2.0}  # linear from 1 at t=2 to -2 at t=5 (stop - 1)
    ref, _, _ = _reference(cell, x, cell.zero_state(3), input_clamps=[([1], 2, 6, lambda t: ramp[t])])
    torch.testing.assert_close(traj.outputs, ref, **TOL)
    per_sequence = torch.tensor([[1.0], [2.0], [3.0]], dtype=DT)  # [B, units]
    traj = unroll(cell, x, forcing=Forcing([Clamp("h", per_sequence, units=[0], start=1, stop=3)]))
    ref, _, _ = _reference(cell, x, cell.zero_state(3), state_clamps=[("h", [0], 1, 3, lambda t: per_sequence)])
    torch.testing.assert_close(traj.outputs, ref, **TOL)


def test_clamp_config_validation():
    with pytest.raises(ValueError, match="exactly one"):
        ClampConfig(target="h", value=1.0, ramp=(0.0, 1.0), stop=3)
    with pytest.raises(ValueError, match="stop"):
        ClampConfig(target="h", ramp=(0.0, 1.0))
    with pytest.raises(ValueError, match="greater"):
        ClampConfig(target="h", value=1.0, start=4, stop=4)


def test_unknown_target_and_bad_units_are_reported():
    cell = LSTMCell(2, 3)
    with pytest.raises(ValueError, match=r"valid targets: \['input', 'h', 'c'\]"):
        unroll(cell, torch.randn(3, 1, 2), forcing=Forcing([Clamp("q", 1.0)]))
    with pytest.raises(ValueError, match="out of range"):
        unroll(cell, torch.randn(3, 1, 2), forcing=Forcing([Clamp("h", 1.0, units=[3])]))


# --------------------------------------------------------------------------- gradients and forcing
def _linear(n_in=2, n_h=3, n_out=2):
    cell = LinearCell(n_in, n_h, output_size=n_out).to(DT)
    with torch.no_grad():
        cell.D.copy_(torch.randn(n_h, n_h, dtype=DT) * 0.4)
    return cell, *(getattr(cell, n).detach() for n in "ABCD")


def test_gradient_through_a_forced_state_unit_is_zero_and_flows_into_the_value():
    """y_s = A x_s + B (P h_{s-1} + e_1 v): d y_s/d x_r = B P D^{s-1-r} C, d y_s/d v = B e_1."""
    cell, A, B, C, D = _linear()
    steps, s, batch = 6, 4, 2
    x = torch.randn(steps, batch, 2, dtype=DT, requires_grad=True)
    v = torch.tensor([0.7], dtype=DT, requires_grad=True)
    traj = unroll(cell, x, forcing=Forcing([Clamp("h", v, units=[1], start=s, stop=s + 1)]))
    w = torch.randn(batch, 2, dtype=DT)
    (traj.outputs[s] * w).sum().backward()
    P = torch.diag(torch.tensor([1.0, 0.0, 1.0], dtype=DT))
    for r in range(s):
        expected = w @ B @ P @ torch.linalg.matrix_power(D, s - 1 - r) @ C
        torch.testing.assert_close(x.grad[r], expected, **TOL)
    torch.testing.assert_close(x.grad[s], w @ A, **TOL)
    assert torch.equal(x.grad[s + 1:], torch.zeros_like(x.grad[s + 1:]))
    torch.testing.assert_close(v.grad, (w @ B[:, 1]).sum().reshape(1), **TOL)


def test_fully_clamped_state_cuts_every_gradient_to_the_past():
    cell = VanillaCell(2, 3).to(DT)
    x = torch.randn(6, 2, 2, dtype=DT, requires_grad=True)
    traj = unroll(cell, x, forcing=Forcing([Clamp("h", 0.0, start=3, stop=4)]))
    traj.outputs[3:].sum().backward()
    assert torch.equal(x.grad[:3], torch.zeros_like(x.grad[:3]))
    assert x.grad[3:].abs().min() > 0


def test_forced_input_unit_gets_no_gradient_and_input_value_gets_analytic_gradient():
    cell, A, B, C, D = _linear()
    x = torch.randn(5, 2, 2, dtype=DT, requires_grad=True)
    v = torch.randn(5, 2, 1, dtype=DT, requires_grad=True)  # a tensor value per step and sequence
    traj = unroll(cell, x, forcing=Forcing([Clamp("input", v, units=[0])]))
    traj.outputs[4].sum().backward()
    assert torch.equal(x.grad[..., 0], torch.zeros(5, 2, dtype=DT))
    assert x.grad[..., 1].abs().min() > 0
    ones = torch.ones(2, dtype=DT)
    for r in range(5):  # d sum(y_4) / d v_r = 1^T G_{4-r} e_0, with G the Markov parameters
        G = A if r == 4 else B @ torch.linalg.matrix_power(D, 3 - r) @ C
        torch.testing.assert_close(v.grad[r, :, 0], (ones @ G[:, 0]).expand(2), **TOL)


def test_forcing_value_gradient_matches_finite_differences():
    cell = LSTMCell(2, 3).to(DT)
    x = torch.randn(5, 2, 2, dtype=DT)

    def run(v_in, v_c):
        forcing = Forcing([Clamp("input", v_in, units=[1], start=1, stop=3),
                           Clamp("c", lambda t: v_c * t, units=[0, 2], start=2, stop=4)])
        return unroll(cell, x, forcing=forcing).outputs

    v_in = torch.randn(2, 1, dtype=DT, requires_grad=True)
    v_c = torch.randn(2, dtype=DT, requires_grad=True)
    assert torch.autograd.gradcheck(run, (v_in, v_c))


# --------------------------------------------------------------------------- errors name the cell
@pytest.mark.parametrize("bad, pattern", [
    (torch.randn(4, 2, 5), r"LSTMCell: expected input of shape \[T, B, input_size\] with input_size=3"),
    (torch.randn(2, 3), r"LSTMCell: expected input of shape \[T, B, input_size\]"),
    (torch.ones(4, 2, 3, dtype=torch.long), r"LSTMCell: expected a floating-point input"),
    (torch.randn(4, 2, 3, dtype=torch.float64),
     r"LSTMCell: input .*has dtype torch.float64 but the cell's parameters are torch.float32"),
    (torch.randn(4, 2, 3, device="meta"), r"LSTMCell: input is on meta"),
    ([[1.0, 2.0, 3.0]], r"LSTMCell: expected a torch.Tensor input"),
])
def test_bad_inputs_raise_shape_errors_naming_the_cell(bad, pattern):
    cell = LSTMCell(3, 4)
    with pytest.raises(ShapeError, match=pattern):
        unroll(cell, bad)


def test_bad_states_raise_shape_errors_naming_the_cell():
    cell = LSTMCell(3, 4)
    x = torch.randn(4, 2, 3)
    with pytest.raises(ShapeError, match=r"LSTMCell: state parts \['h'\] do not match the declared parts \['c', 'h'\]"):
        unroll(cell, x, {"h": torch.zeros(2, 4)})
    with pytest.raises(ShapeError, match=r"LSTMCell: state part 'c' should have shape \[2, 4\], got \[2, 5\]"):
        unroll(cell, x, {"h": torch.zeros(2, 4), "c": torch.zeros(2, 5)})
    with pytest.raises(ShapeError, match=r"LSTMCell: state part 'h' is torch.float64"):
        unroll(cell, x, {"h": torch.zeros(2, 4, dtype=DT), "c": torch.zeros(2, 4)})
    with pytest.raises(ShapeError, match=r"VanillaCell: expected input of shape \[B, input_size\]"):
        step(VanillaCell(3, 4), torch.randn(2, 2), None)
    with pytest.raises(ShapeError, match="GRUCell: input_size must be positive"):
        GRUCell(0, 3)


# --------------------------------------------------------------------------- the prepared stepper
@pytest.mark.parametrize("name", list(CELLS))
def test_one_prepared_stepper_steps_and_runs_like_the_reference_loop(name):
    """One Stepper, prepared once with its clamp schedule, stepped tick by tick and run over the sequence."""
    from statesim.engine import Stepper

    cell = CELLS[name]().to(DT)
    x = torch.randn(7, 3, 3, dtype=DT)
    state0 = _random_state(cell, 3)
    forcing = Forcing([Clamp("input", 2.0, units=[1], start=2, stop=4),
                       Clamp(STATE_PART[name], lambda t: 0.1 * t, units=[0, 2], start=3, stop=6)])
    ref_out, ref_final, ref_states = _reference(
        cell, x, state0, input_clamps=[([1], 2, 4, lambda t: 2.0)],
        state_clamps=[(STATE_PART[name], [0, 2], 3, 6, lambda t: 0.1 * t)])
    stepper = Stepper(cell, forcing=forcing, return_states=True)
    state = state0
    for t in range(7):
        y, state = stepper.step(x[t], state, t)
        torch.testing.assert_close(y, ref_out[t], **TOL)
        for part in state:
            torch.testing.assert_close(state[part], ref_states[t][part], **TOL)
    traj = stepper.run(x, state0)
    torch.testing.assert_close(traj.outputs, ref_out, **TOL)
    for part in ref_final:
        torch.testing.assert_close(traj.final_state[part], ref_final[part], **TOL)
        torch.testing.assert_close(traj.states[part], torch.stack([s[part] for s in ref_states]), **TOL)


def test_stepper_checks_its_forcing_once_and_its_inputs_when_the_batch_changes():
    from statesim.engine import Stepper

    cell = LSTMCell(3, 4)
    with pytest.raises(ValueError, match="forcing target 'q'"):
        Stepper(cell, forcing=Forcing([Clamp("q", 1.0)]))
    stepper = Stepper(cell)
    y, state = stepper.step(torch.randn(2, 3), cell.zero_state(2))
    with pytest.raises(ShapeError, match=r"state part 'h' should have shape \[5, 4\]"):
        stepper.step(torch.randn(5, 3), state)


def test_on_step_sees_every_step_and_keeps_the_generic_loop():
    from statesim import fastpath
    from statesim.engine import Stepper

    cell = LSTMCell(3, 4).to(DT)
    x = torch.randn(5, 2, 3, dtype=DT)
    seen = []
    stepper = Stepper(cell, on_step=lambda t, x_t, entering, y, new: seen.append((t, y, new["c"])))
    with fastpath.record_decisions() as decisions:
        traj = stepper.run(x, t0=10)
    assert [t for t, _, _ in seen] == list(range(10, 15))
    torch.testing.assert_close(torch.stack([y for _, y, _ in seen]), traj.outputs, **TOL)
    torch.testing.assert_close(seen[-1][2], traj.final_state["c"], **TOL)
    (row,) = fastpath.summarize(decisions)
    assert row["path"] == "generic" and "observed" in row["reason"]


def test_declared_output_part_is_the_part_the_output_equals():
    """Cell.output_part is a declaration; check it against what each built-in cell's step returns."""
    from statesim.builtin.layered import Stacked

    cells = {**{n: f() for n, f in CELLS.items()},
             "stack": Stacked(3, lambda size: LSTMCell(size, 4), layers=2).as_cell(),
             "residual_stack": Stacked(3, lambda size: GRUCell(size, 3), layers=2, residual=True).as_cell()}
    declared = {n: c.output_part for n, c in cells.items()}
    assert declared == {"linear": None, "vanilla": "h", "lstm": "h", "gru": "h", "window": None,
                        "stack": "layer1.h", "residual_stack": None}
    for name, cell in cells.items():
        y, new = cell(torch.randn(2, 3), cell.zero_state(2))
        new2 = cell(torch.randn(2, 3), new)
        if cell.output_part is not None:
            assert torch.equal(new2[0], new2[1][cell.output_part]), name
        else:  # no part equals the output
            assert not any(v.shape == new2[0].shape and torch.equal(v, new2[0]) for v in new2[1].values()), name
