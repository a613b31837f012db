"""A fast kernel a cell offers is checked against the cell's own step before it is used (issue 19 item 3).

The wrong kernels here are what a plugin author writes by mistake: a NumPy step without the biases, a fused
form naming the wrong nonlinearity, a linear form with ``D`` transposed. Each must be caught by name, the
engine (or embed) must fall back to the cell's torch step, and the numbers must be that step's. Correct
built-in kernels must pass the check in float32 and float64, or the fallback would hide every fast path.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from _embed_models import CELLS, INPUT, make_model
from statesim import fastpath
from statesim.builtin import numpy_kernels
from statesim.builtin.cells import GRUCell, LinearCell, LSTMCell, VanillaCell, _fused
from statesim.embed import EmbeddedModel
from statesim.engine import unroll
from statesim.fastpath import FastPathError, LinearForm
from statesim.kernelcheck import (KernelMismatchWarning, fused_form_mismatch, linear_form_mismatch,
                                  numpy_step_mismatch)


class BiaslessNumpyStep(VanillaCell):
    """Its NumPy kernel forgets the biases: off by |b_ih + b_hh| before the nonlinearity."""

    def numpy_step(self):
        return numpy_kernels.vanilla_step(self.weight_ih, self.weight_hh, None, None, self.activation)


class ReluFusedForm(VanillaCell):
    """A tanh cell that claims torch's relu kernel."""

    def fused_form(self):
        return _fused(self, "rnn_relu", ("h",))


class TransposedLinearForm(LinearCell):
    """Its linear form passes D transposed (the step uses h @ D.T, the form reads D as given)."""

    def linear_form(self):
        return LinearForm(self.A, self.B, self.C, self.D.T, state_part="h")


def _inputs(steps: int = 30, batch: int = 2, size: int = INPUT, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(steps, batch, size, generator=torch.Generator().manual_seed(3), dtype=dtype)


def test_embed_refuses_a_numpy_kernel_that_drops_terms_and_steps_through_torch(builtin_host):
    model = make_model(builtin_host.registry, {"type": "vanilla", "hidden_size": 6}, head="none")
    cell = model.step_cell()
    cell.__class__ = BiaslessNumpyStep  # same weights, the plugin's wrong kernel
    inputs = _inputs()
    with torch.no_grad():
        truth = model(inputs).outputs.numpy()
    with pytest.warns(KernelMismatchWarning, match=r"BiaslessNumpyStep .*numpy_step.*differs by up to"):
        sim = EmbeddedModel(model, batch_size=2)
    assert not sim.fast
    np.testing.assert_allclose(sim.rollout(inputs.numpy()), truth, atol=1e-6, rtol=0)
    # the kernel is wrong by what it drops: the check measured a real difference, not rounding
    problem = numpy_step_mismatch(cell, cell.numpy_step())
    assert problem is not None and float(problem.rsplit(" ", 1)[-1]) > 1e-3


@pytest.mark.parametrize("name", list(CELLS))
def test_every_builtin_numpy_kernel_passes_the_check(builtin_host, name):
    model = make_model(builtin_host.registry, CELLS[name], head="linear", output_size=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", KernelMismatchWarning)
        sim = EmbeddedModel(model, batch_size=2)
    assert sim.fast


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_builtin_fused_and_linear_forms_pass_the_check(dtype):
    torch.manual_seed(0)
    fused = [VanillaCell(3, 5), VanillaCell(3, 5, activation="relu"), VanillaCell(3, 5, bias=False),
             LSTMCell(3, 4), GRUCell(3, 4)]
    for cell in fused:
        cell = cell.to(dtype)
        assert fused_form_mismatch(cell, cell.fused_form()) is None, type(cell).__name__
    linear = LinearCell(3, 4, output_size=2).to(dtype)
    assert linear_form_mismatch(linear, linear.linear_form()) is None


def _generic_reference(cell, inputs):
    with fastpath.policy("generic"):
        return unroll(cell, inputs)


@pytest.mark.parametrize("wrong", ["fused", "scan"])
def test_a_wrong_fast_form_is_declined_by_name_and_the_loop_runs(wrong):
    torch.manual_seed(1)
    cell = ReluFusedForm(INPUT, 5) if wrong == "fused" else TransposedLinearForm(INPUT, 5, output_size=2)
    with torch.no_grad():  # a non-symmetric D, so that D.T is really different
        if wrong == "scan":
            cell.D.add_(torch.triu(torch.ones(5, 5), 1) * 0.3)
    inputs = _inputs()
    reference = _generic_reference(cell, inputs)
    kind = "fused form" if wrong == "fused" else "linear form"
    with pytest.warns(KernelMismatchWarning, match=type(cell).__name__):
        with fastpath.policy("auto"), fastpath.record_decisions() as decisions:
            traj = unroll(cell, inputs)
    rows = fastpath.summarize(decisions)
    assert {row["path"] for row in rows} == {"generic"}
    assert any(f"{wrong}: the cell's {kind} does not compute its step" in row["reason"] for row in rows), rows
    torch.testing.assert_close(traj.outputs, reference.outputs, rtol=0, atol=0)
    with warnings.catch_warnings():  # checked once per cell: no second warning, no second check
        warnings.simplefilter("error", KernelMismatchWarning)
        unroll(cell, inputs)
    with fastpath.policy(wrong), pytest.raises(FastPathError, match=f"{kind} does not compute its step"):
        unroll(cell, inputs)


def test_a_kernel_that_raises_or_loses_a_state_part_is_refused():
    cell = LSTMCell(3, 4)

    def raising(x, state):
        raise ValueError("boom")

    assert "raised ValueError: boom" in numpy_step_mismatch(cell, raising)

    def collapses_c(x, state):  # NumPy broadcasts the one row back over the batch on the next step
        y, new = cell.numpy_step()(x, state)
        return y, {"h": new["h"], "c": new["c"][:1]}

    assert numpy_step_mismatch(cell, collapses_c) == "state part 'c' has shape (1, 4), the step gives (3, 4)"
