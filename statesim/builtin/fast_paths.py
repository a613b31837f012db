"""Built-in fast paths ``fused``, ``scan`` and ``compiled``, registered exactly like a third-party plugin's.

Each is an alternative implementation of :meth:`statesim.engine.Stepper.run` (see :mod:`statesim.fastpath`
for the contract, the kernels and the policy that chooses among them).
"""
from __future__ import annotations

import time
import weakref
from functools import partial
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import Tensor

from statesim.fastpath import policies
from statesim.fastpath.forms import Decline, FastPath, FusedForm, Prepared, Request, Result, State
from statesim.fastpath.fused import FUSED_KERNELS, fused_incompatibility, fused_sequence
from statesim.fastpath.scan import _mask, run_linear
from statesim.hookimpl import hookimpl
from statesim.kernelcheck import FormVerdicts, fused_form_mismatch, linear_form_mismatch

if TYPE_CHECKING:
    from statesim.cell import Cell
    from statesim.engine import Stepper


class FusedPath:
    """``torch.nn.LSTM``/``GRU``/``RNN``'s fused kernel, run with the cell's own parameters."""

    name = "fused"

    def __init__(self) -> None:
        self._verdicts = FormVerdicts()

    def prepare(self, stepper: "Stepper", request: Request) -> "Prepared | str":
        cell = stepper.cell
        form = cell.fused_form()
        if form is None:
            return "the cell offers no fused form"
        if form.kernel not in FUSED_KERNELS:
            return f"no fused kernel named '{form.kernel}' is registered"
        if cell.output_part != form.state_parts[0]:
            return f"the kernel's output is its state part '{form.state_parts[0]}' but the cell declares " \
                   f"output_part {cell.output_part!r}"
        if request.return_states and len(form.state_parts) > 1:
            return f"every step's state was requested (return_states) and the kernel returns only " \
                   f"'{form.state_parts[0]}'"
        wrong = self._verdicts.problem(cell, "fused_form", lambda: fused_form_mismatch(cell, form),
                                       "its step in a time loop")
        if wrong is not None:
            return f"the cell's fused form does not compute its step ({wrong})"
        return (partial(self.run, form, return_states=request.return_states),
                f"torch's fused '{form.kernel}' kernel with the cell's own parameters")

    @staticmethod
    def run(form: FusedForm, inputs: Tensor, state: State, lengths: Tensor | None, *, return_states: bool) -> Result:
        """The fused kernel over the sequence; for one-part kernels every state is the output."""
        why = fused_incompatibility([[form]], inputs, lengths)
        if why is not None:
            raise Decline(why)
        outputs, finals = fused_sequence([[form]], inputs, [[state]], lengths)
        final = finals[0][0]
        states = None
        if return_states:  # the one part is the output; a finished sequence keeps its last state
            part = form.state_parts[0]
            states = {part: outputs if lengths is None else torch.where(
                _mask(lengths, inputs.shape[0]).unsqueeze(-1), outputs, final[part].unsqueeze(0))}
        return outputs, final, states


class ScanPath:
    """A linear time-invariant cell computed by a blocked scan instead of a Python time loop."""

    name = "scan"

    def __init__(self) -> None:
        self._verdicts = FormVerdicts()

    def prepare(self, stepper: "Stepper", request: Request) -> "Prepared | str":
        cell = stepper.cell
        form = cell.linear_form()
        if form is None:
            return "the cell is not a linear time-invariant system"
        wrong = self._verdicts.problem(cell, "linear_form", lambda: linear_form_mismatch(cell, form),
                                       "its step in a time loop")
        if wrong is not None:
            return f"the cell's linear form does not compute its step ({wrong})"
        part, want = form.state_part, request.return_states

        def run(inputs: Tensor, state: State, lengths: Tensor | None) -> Result:
            outputs, final, states = run_linear(form, inputs, state[part], lengths, want)
            return outputs, {part: final}, ({part: states} if states is not None else None)  # None iff not want

        return run, "linear time-invariant cell: blocked scan with the adjoint scan as its gradient"


class CompiledPath:
    """The engine's own :func:`~statesim.engine.time_loop`, every ``COMPILE_CHUNK`` steps in one compiled call.

    Chosen by ``compile: true``. The steps left over at the end run eagerly (no recompilation for a short
    tail). The first call's time, which is when the forward graph is traced and compiled, is reported as
    ``compile_seconds`` (the backward graph compiles on the first backward).
    """

    name = "compiled"

    def __init__(self) -> None:
        # Compiled loops per cell, kept outside the cell: a deepcopy of the cell (diagnostics.bptt_horizon
        # trains one) must compile its own loop, never call one bound to the original's step and weights.
        # The compiled function takes the step as an argument, so it holds no reference to the cell.
        self._compiled: "weakref.WeakKeyDictionary[Cell, dict[tuple, Callable]]" = weakref.WeakKeyDictionary()
        self._seconds: "weakref.WeakKeyDictionary[Cell, float]" = weakref.WeakKeyDictionary()

    def prepare(self, stepper: "Stepper", request: Request) -> "Prepared | str":
        pol = policies.current_policy()
        if pol.mode == "auto" and not pol.compile:
            return "model.compile is off"
        chunk = policies.COMPILE_CHUNK
        return (partial(self.run, stepper, demanded=pol.mode != "auto"),
                f"torch.compile of the cell's step loop, {chunk} steps per compiled call")

    def details(self, cell: "Cell") -> dict[str, Any]:
        """The compile time of a chunk function compiled by the last run, once."""
        seconds = self._seconds.pop(cell, None)
        return {} if seconds is None else {"compile_seconds": round(seconds, 3)}

    def run(self, stepper: "Stepper", inputs: Tensor, state: State, lengths: Tensor | None, *,
            demanded: bool) -> Result:
        from statesim.engine import lengths_to_mask, time_loop

        chunk, steps = policies.COMPILE_CHUNK, inputs.shape[0]
        if not demanded and steps < chunk:
            raise Decline(f"fewer than {chunk} steps (one compiled chunk)")
        cell, want = stepper.cell, stepper.return_states
        cache = self._compiled.setdefault(cell, {})
        key = (stepper.hoisted, lengths is not None, want)
        fn = cache.get(key)
        fresh = fn is None
        if fn is None:
            fn = cache[key] = torch.compile(partial(time_loop, want_states=want))
        xs = stepper.project(inputs)
        full = steps - steps % chunk
        keep = lengths_to_mask(lengths, steps) if lengths is not None else None
        pieces = xs.split(chunk)  # split, not slicing: its backward is one concatenation
        masks = keep.split(chunk) if keep is not None else [None] * len(pieces)
        outputs, states = [], []
        for index, (piece, mask) in enumerate(zip(pieces, masks)):
            started = time.perf_counter()
            if index * chunk < full:
                ys, state, hs = fn(stepper.transition, piece, state, mask)
            else:
                ys, state, hs = time_loop(stepper.transition, piece, state, mask, want_states=want)
            if fresh and index == 0 and full:
                self._seconds[cell] = time.perf_counter() - started
            outputs.append(ys)
            states.append(hs)
        history = {name: torch.cat([h[name] for h in states]) for name in state} if want else None
        return torch.cat(outputs), state, history


@hookimpl
def statesim_fast_paths() -> list[FastPath]:
    """The built-in fast paths, in the order ``fast_path: auto`` tries them."""
    return list(_PATHS)


#: One instance of each, so the compiled path's per-cell cache lives as long as the process.
_PATHS: tuple[FastPath, ...] = (FusedPath(), ScanPath(), CompiledPath())
