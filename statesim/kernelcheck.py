"""A fast kernel a cell offers (``numpy_step``, ``fused_form``, ``linear_form``) is checked against the cell's own
torch step on a few random steps before any path trusts it.

A kernel that dropped a term otherwise gives wrong numbers silently (issue 19 item 3: a ``numpy_step`` 0.039
off the torch step was used by :mod:`statesim.embed`). The check is the same for built-in and plugin cells: a
few steps of a small random batch from a random state, outputs and final state compared within the dtype's
rounding. A kernel that fails it is not used; :class:`KernelMismatchWarning` names the cell and the worst part.
"""
from __future__ import annotations

import warnings
import weakref
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
from torch import Tensor

from statesim.cell import Cell, NumpyStep, State, device_and_dtype

if TYPE_CHECKING:
    from statesim.fastpath.forms import FusedForm, LinearForm

#: Steps and batch of the check: enough for a dropped term to show, cheap next to any real sequence.
CHECK_STEPS, CHECK_BATCH = 5, 3


class KernelMismatchWarning(UserWarning):
    """A cell's fast kernel disagrees with its own step, so the slower torch step is used instead."""


def tolerance(dtype: torch.dtype) -> tuple[float, float]:
    """``(rtol, atol)`` for two implementations of one step in ``dtype`` (rounding only, never a dropped term)."""
    if dtype == torch.float64:
        return 1e-9, 1e-10
    if dtype in (torch.float16, torch.bfloat16):
        return 2e-2, 2e-2
    return 1e-4, 1e-5


def probe(cell: Cell, seed: int = 0) -> tuple[Tensor, State]:
    """Random inputs ``[T, B, F]`` and a random state, in the cell's dtype and on its device."""
    device, dtype = device_and_dtype(cell)
    gen = torch.Generator().manual_seed(seed)
    inputs = torch.randn(CHECK_STEPS, CHECK_BATCH, cell.input_size, generator=gen, dtype=dtype)
    state = {part: 0.5 * torch.randn(CHECK_BATCH, *shape, generator=gen, dtype=dtype)
             for part, shape in cell.state_spec.items()}
    return inputs.to(device), {part: v.to(device) for part, v in state.items()}


def reference(cell: Cell, inputs: Tensor, state: State) -> tuple[Tensor, State]:
    """The cell's own step, one call per time step: every output ``[T, B, out]`` and the final state."""
    outputs = []
    with torch.no_grad():
        for x in inputs:
            y, state = cell(x, dict(state))
            outputs.append(y)
    return torch.stack(outputs), dict(state)


def _worst(truth: Tensor, got: Tensor, name: str, dtype: torch.dtype) -> tuple[float, str] | None:
    """The largest difference and where, when it is beyond rounding; None when the two agree."""
    got = torch.as_tensor(got).to(truth)
    if got.shape != truth.shape:
        return float("inf"), f"{name} has shape {tuple(got.shape)}, the step gives {tuple(truth.shape)}"
    rtol, atol = tolerance(dtype)
    if torch.allclose(got, truth, rtol=rtol, atol=atol, equal_nan=True):
        return None
    return float((got - truth).abs().max()), f"{name} differs by up to {float((got - truth).abs().max()):.3g}"


def compare(cell: Cell, run: Callable[[Tensor, State], tuple[Tensor, State]], seed: int = 0) -> str | None:
    """None when ``run(inputs, state) -> (outputs, final state)`` equals the cell's step, else what differs."""
    inputs, state = probe(cell, seed)
    truth_y, truth_state = reference(cell, inputs, state)
    try:
        with torch.no_grad():
            got_y, got_state = run(inputs, state)
    except Exception as error:  # noqa: BLE001 - a kernel that raises is as untrustworthy as one that is wrong
        return f"it raised {type(error).__name__}: {error}"
    dtype = device_and_dtype(cell)[1]
    problems = [_worst(truth_y, got_y, "the output", dtype)]
    for part, value in truth_state.items():
        if part not in got_state:
            problems.append((float("inf"), f"it returns no state part '{part}'"))
        else:
            problems.append(_worst(value, got_state[part], f"state part '{part}'", dtype))
    found = [p for p in problems if p is not None]
    return max(found, key=lambda p: p[0])[1] if found else None


def numpy_step_mismatch(cell: Cell, kernel: NumpyStep) -> str | None:
    """None when the NumPy kernel equals the cell's step on :data:`CHECK_STEPS` random steps, else what differs."""

    def run(inputs: Tensor, state: State) -> tuple[Tensor, State]:
        arrays = {part: v.detach().cpu().numpy().copy() for part, v in state.items()}
        outputs = []
        for x in inputs:
            y, arrays = kernel(x.detach().cpu().numpy().copy(), arrays)
            outputs.append(np.array(y, copy=True))
        return torch.from_numpy(np.stack(outputs)), {part: torch.from_numpy(np.asarray(v))
                                                      for part, v in arrays.items()}

    return compare(cell, run)


def fused_form_mismatch(cell: Cell, form: "FusedForm") -> str | None:
    """None when the fused kernel equals the cell's step, else what differs."""
    from statesim.fastpath.fused import fused_sequence

    def run(inputs: Tensor, state: State) -> tuple[Tensor, State]:
        outputs, finals = fused_sequence([[form]], inputs, [[state]])
        return outputs, {**state, **finals[0][0]}  # parts the kernel does not carry are reported as missing

    return compare(cell, run)


def linear_form_mismatch(cell: Cell, form: "LinearForm") -> str | None:
    """None when the linear form's scan equals the cell's step, else what differs."""
    from statesim.fastpath.scan import run_linear

    def run(inputs: Tensor, state: State) -> tuple[Tensor, State]:
        outputs, final, _ = run_linear(form, inputs, state[form.state_part], None, False)
        return outputs, {**state, form.state_part: final}

    return compare(cell, run)


def warn_mismatch(cell: Cell, kernel: str, problem: str, instead: str) -> None:
    """Say once, by name, that a cell's kernel is not used and why."""
    warnings.warn(f"cell {type(cell).__name__} ({type(cell).__module__}) offers a {kernel} that does not compute "
                  f"its own step: {problem}. statesim uses {instead} instead. Fix the {kernel} so that it returns "
                  f"the numbers of forward(), or stop offering it.", KernelMismatchWarning, stacklevel=3)


class FormVerdicts:
    """Each cell's fused/linear form is checked once per cell (a wrong form is wrong whatever its weights)."""

    def __init__(self) -> None:
        self._seen: "weakref.WeakKeyDictionary[Cell, dict[str, str | None]]" = weakref.WeakKeyDictionary()

    def problem(self, cell: Cell, kind: str, check: Callable[[], str | None], instead: str) -> str | None:
        """The cached verdict for ``cell``'s ``kind`` of form, checking (and warning) the first time."""
        verdicts = self._seen.setdefault(cell, {})
        if kind not in verdicts:
            verdict = verdicts[kind] = check()
            if verdict is not None:
                warn_mismatch(cell, kind, verdict, instead)
        return verdicts[kind]
