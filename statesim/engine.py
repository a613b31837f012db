"""The engine owns the time loop: a :class:`Stepper` runs a cell over ``[T, B, F]`` or steps it one tick.

Every topology, trainer, decoder, embedding path, diagnostic and export runs a cell through a
:class:`Stepper` (directly, or through the one-shot wrappers :func:`unroll` and :func:`step`); cells
never loop, and :func:`time_loop` is the only loop over time. A stepper is prepared once: it checks its
forcing against the cell's state parts, binds the cell's step, and resolves the execution path (the
generic loop, or a fast path registered through the ``statesim_fast_paths`` hook, see
:mod:`statesim.fastpath`) the first time it runs.

Variable lengths: with ``lengths`` (one per sequence), steps at ``t >= lengths[b]`` leave sequence
``b``'s state unchanged and give a zero output, so the final state is each sequence's own last state.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from statesim.cell import Cell, State
from statesim.errors import ShapeError
from statesim.fastpath import policies, resolution
from statesim.forcing import Forcing

#: One step of a cell: ``(x_t, state) -> (y_t, new_state)`` (``Cell.forward`` or ``Cell.transition``).
StepFn = Callable[[Tensor, State], "tuple[Tensor, State]"]
#: Called after every step of a run that needs per-step access: ``(t, x_t, entering, y_t, new_state)``,
#: where ``x_t`` is what the step read (in :meth:`Stepper.run`, projected for cells that hoist their inputs,
#: the input of ``Stepper.transition``; in :meth:`Stepper.step`, the raw input) and ``entering`` the state it
#: read (after forcing).
OnStep = Callable[[int, Tensor, State, Tensor, State], None]
#: Checks one step's result against the state it read: ``(y, new_state, entering, batch, versions)``, where
#: ``versions`` are the entering parts' ``_version`` counters before the step (``Cell.check_step_result``).
ResultCheck = Callable[[Tensor, State, State, int, Sequence[int]], None]


def strict_mode() -> bool:
    """True under ``STATESIM_STRICT=1`` (``statesim --strict``): every step's result is checked, not only the first."""
    return os.environ.get("STATESIM_STRICT", "") not in ("", "0")


@dataclass
class Trajectory:
    """What an unroll returns: outputs ``[T, B, O]``, the final state, and optionally every state.

    >>> import torch
    >>> from statesim import unroll
    >>> from statesim.builtin.cells import LSTMCell
    >>> traj = unroll(LSTMCell(2, hidden_size=3), torch.zeros(10, 4, 2), return_states=True)
    >>> list(traj.outputs.shape), list(traj.final_state["c"].shape), list(traj.states["c"].shape)
    ([10, 4, 3], [4, 3], [10, 4, 3])
    """

    outputs: Tensor
    final_state: State
    states: dict[str, Tensor] | None = None  # each part ``[T, B, *shape]``: the state produced at step t


def lengths_to_mask(lengths: Tensor, steps: int) -> Tensor:
    """Boolean ``[T, B]`` mask, True where step ``t`` lies inside sequence ``b``."""
    return torch.arange(steps, device=lengths.device).unsqueeze(1) < lengths.to(torch.long).unsqueeze(0)


def time_loop(step: StepFn, xs: Tensor, state: State, mask: Tensor | None = None, *,
              read: Callable[[State, int], State] | None = None, t0: int = 0, want_states: bool = False,
              on_step: OnStep | None = None, check: ResultCheck | None = None, check_every: bool = False
              ) -> tuple[Tensor, State, dict[str, Tensor] | None]:
    """The time loop: ``step`` over ``xs [T, B, ...]`` from ``state``; outputs, final state, every state.

    ``mask [T, B]`` freezes finished sequences (zero output, state kept); ``read(state, t)`` is what the
    step reads at global step ``t`` (forcing); ``check`` judges the first step's result (every step's with
    ``check_every``). The compiled fast path compiles this very function.
    """
    batch = xs.shape[1]
    # unbind once: indexing xs[t] in the loop would make backward allocate a full-size gradient buffer per
    # step (O(T^2)); unbind's backward is a single stack.
    inputs = xs.unbind(0)
    if mask is not None:
        keeps, scales = mask.unbind(0), mask.unsqueeze(-1).to(xs.dtype).unbind(0)
    outputs: list[Tensor] = []
    history: list[State] = []
    for t, x_t in enumerate(inputs):
        entering = read(state, t0 + t) if read is not None else state
        if check is not None and (t == 0 or check_every):
            versions = [value._version for value in entering.values()]
            y, new_state = step(x_t, entering)
            check(y, new_state, entering, batch, versions)
        else:
            y, new_state = step(x_t, entering)
        if mask is not None:
            keep = keeps[t]
            y = y * scales[t].to(y.dtype)
            new_state = {name: torch.where(keep.view(batch, *([1] * (value.dim() - 1))), value, state[name])
                         for name, value in new_state.items()}
        if on_step is not None:
            on_step(t0 + t, x_t, entering, y, new_state)
        state = new_state
        outputs.append(y)
        if want_states:
            history.append(state)
    states = {name: torch.stack([h[name] for h in history]) for name in state} if want_states else None
    return torch.stack(outputs), state, states


_NO_FORCING = Forcing()  # shared by steppers without clamps; never modified


class Stepper:
    """A cell prepared to run: forcing checked and the step bound once, the execution path resolved once.

    ``forcing`` is the clamp schedule (global step indices); ``path`` pins the execution path (``generic``
    or a fast path's name; None follows :func:`statesim.fastpath.policy`); ``return_states`` makes
    :meth:`run` return every state; ``on_step`` is called after every step (and rules out fast paths).
    Prepare one and call it many times: the checks and the path choice are not repeated.

    >>> import torch
    >>> from statesim import Clamp, Forcing, Stepper
    >>> from statesim.builtin.cells import LSTMCell
    >>> stepper = Stepper(LSTMCell(2, hidden_size=3), forcing=Forcing([Clamp("h", 0.0, units=[0])]))
    >>> traj = stepper.run(torch.randn(10, 4, 2))
    >>> y, state = stepper.step(torch.randn(4, 2), traj.final_state, t=10)  # one more tick, step 10
    >>> list(y.shape)
    [4, 3]
    """

    __slots__ = ("cell", "forcing", "path", "return_states", "on_step", "hoisted", "transition", "_forward",
                 "_read", "_input_forcing", "_resolved", "_checked_batch", "_strict")

    def __init__(self, cell: Cell, *, forcing: Forcing | None = None, path: str | None = None,
                 return_states: bool = False, on_step: OnStep | None = None) -> None:
        self.cell = cell
        if forcing:
            forcing.check(cell.state_spec)
            self.forcing = forcing
            self._read = forcing.apply_to_state if forcing.forces_state else None
            self._input_forcing = any(c.target == "input" for c in forcing.clamps)
        else:
            self.forcing, self._read, self._input_forcing = _NO_FORCING, None, False
        self.path, self.return_states, self.on_step = path, bool(return_states), on_step
        self.hoisted = cell.hoists_inputs
        #: The step the loop runs on (projected) inputs: ``transition`` for cells that hoist, else ``forward``.
        self.transition: StepFn = cell.transition if self.hoisted else cell.forward
        self._forward: StepFn = cell.forward
        self._resolved: resolution.Resolved | None = None
        self._checked_batch = -1
        self._strict = strict_mode()

    # ------------------------------------------------------------------ pieces
    def project(self, inputs: Tensor) -> Tensor:
        """The cell's hoisted input work over a whole sequence ``[T, B, F]`` (identity when it hoists none)."""
        return self.cell.project_inputs(inputs) if self.hoisted else inputs

    def start(self, batch: int, like: Tensor) -> State:
        """A zero state for ``batch`` sequences, on ``like``'s device and dtype."""
        return self.cell.zero_state(batch, device=like.device, dtype=like.dtype)

    # ------------------------------------------------------------------ one tick
    def step(self, x: Tensor, state: State, t: int = 0) -> tuple[Tensor, State]:
        """Advance one tick at global step ``t``: ``x [B, input_size]`` -> ``(y, new_state)``; step ``t`` of
        :meth:`run`.

        Input, state and the step's result are checked on the first call and whenever the batch size changes
        (every call in strict mode); the caller keeps them consistent in between (the state a step returns is).

        >>> import torch
        >>> from statesim import Stepper
        >>> from statesim.builtin.cells import LSTMCell
        >>> stepper = Stepper(LSTMCell(2, hidden_size=3))
        >>> state = stepper.start(4, torch.zeros(0))
        >>> for t in range(5):
        ...     y, state = stepper.step(torch.ones(4, 2), state, t)
        >>> list(y.shape), sorted(state)
        ([4, 3], ['c', 'h'])
        """
        if not isinstance(x, Tensor) or x.shape[0] != self._checked_batch or self._strict:
            self.cell.check_input(x)
            self.cell.check_state(state, x.shape[0])
            versions = [value._version for value in state.values()]
            y, new_state = self.tick(x, state, t)
            self.cell.check_step_result(y, new_state, state, x.shape[0], versions)
            self._checked_batch = x.shape[0]
            return y, new_state
        return self.tick(x, state, t)

    def tick(self, x: Tensor, state: State, t: int = 0) -> tuple[Tensor, State]:
        """:meth:`step` without its checks (for callers that checked already, and for tracing an export)."""
        if self._input_forcing:
            x = self.forcing.apply_to_inputs(x.unsqueeze(0), t)[0]
        entering = self._read(state, t) if self._read is not None else state
        y, new_state = self._forward(x, entering)
        if self.on_step is not None:
            self.on_step(t, x, entering, y, new_state)
        return y, new_state

    # ------------------------------------------------------------------ a whole sequence
    def run(self, inputs: Tensor, state: State | None = None, lengths: Tensor | None = None, *,
            t0: int = 0) -> Trajectory:
        """Run over ``inputs [T, B, input_size]`` from ``state`` (zeros when None); ``t0`` is the global first step.

        With ``lengths [B]``, sequence ``b`` stops at ``lengths[b]``: its state is kept and its outputs are zero
        after that.

        >>> import torch
        >>> from statesim import Stepper
        >>> from statesim.builtin.cells import LSTMCell
        >>> traj = Stepper(LSTMCell(2, hidden_size=3)).run(torch.ones(6, 2, 2), lengths=torch.tensor([6, 3]))
        >>> traj.outputs[3:, 1].abs().sum().item()  # the second sequence ended after 3 steps
        0.0
        """
        cell = self.cell
        cell.check_input(inputs, time_major=True)
        steps, batch = inputs.shape[0], inputs.shape[1]
        state = self.start(batch, inputs) if state is None else state
        cell.check_state(state, batch)
        if self._input_forcing:
            inputs = self.forcing.apply_to_inputs(inputs, t0)
        mask = None
        if lengths is not None:
            lengths = torch.as_tensor(lengths, device=inputs.device)
            if lengths.shape != (batch,):
                raise ShapeError(f"{type(cell).__name__}: lengths must have shape [{batch}], "
                                 f"got {list(lengths.shape)}.")
            mask = lengths_to_mask(lengths, steps)
        resolved = self._resolved
        if resolved is None:
            resolved = self._resolved = resolution.resolve(self)
        fast, why = resolved.run(inputs, state, lengths)
        if fast is not None:
            return Trajectory(*fast)
        policies.record(cell, "generic", why)
        outputs, final, states = time_loop(self.transition, self.project(inputs), state, mask, read=self._read,
                                           t0=t0, want_states=self.return_states, on_step=self.on_step,
                                           check=cell.check_step_result, check_every=self._strict)
        return Trajectory(outputs, final, states)


def unroll(cell: Cell, inputs: Tensor, state: State | None = None, *, lengths: Tensor | None = None,
           forcing: Forcing | None = None, return_states: bool = False, t0: int = 0) -> Trajectory:
    """Run ``cell`` over ``inputs [T, B, input_size]`` from ``state`` (zeros when None): one :meth:`Stepper.run`.

    ``t0`` is the global index of the first step, so forcing windows stay right across chunks. ``lengths``
    ends sequence ``b`` at ``lengths[b]``; ``forcing`` clamps units of the input or of a state part;
    ``return_states`` also returns every state (``Trajectory.states``).

    >>> import torch
    >>> from statesim import Clamp, Forcing, unroll
    >>> from statesim.builtin.cells import LSTMCell
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> cell = LSTMCell(2, hidden_size=3)
    >>> silenced = Forcing([Clamp("h", 0.0, units=[0], start=2, stop=5)])  # h[0] read as 0 at steps 2, 3, 4
    >>> traj = unroll(cell, torch.randn(8, 4, 2), forcing=silenced, return_states=True)
    >>> list(traj.outputs.shape), list(traj.states["h"].shape)
    ([8, 4, 3], [8, 4, 3])
    """
    return Stepper(cell, forcing=forcing, return_states=return_states).run(inputs, state, lengths, t0=t0)


def step(cell: Cell, x: Tensor, state: State | None = None, *, forcing: Forcing | None = None,
         t: int = 0) -> tuple[Tensor, State]:
    """Advance ``cell`` by one tick from ``state`` (zeros when None): one :meth:`Stepper.step` at global step ``t``.

    Each call prepares a new :class:`Stepper`; a loop over many ticks prepares one and calls its ``step``.

    >>> import torch
    >>> from statesim import step
    >>> from statesim.builtin.cells import LSTMCell
    >>> cell = LSTMCell(2, hidden_size=3)
    >>> y, state = step(cell, torch.ones(4, 2))           # from a zero state
    >>> y, state = step(cell, torch.ones(4, 2), state, t=1)
    >>> list(y.shape), list(state["c"].shape)
    ([4, 3], [4, 3])
    """
    stepper = Stepper(cell, forcing=forcing)
    if state is None:
        cell.check_input(x)  # report a bad single-step input as [B, input_size] before reading its batch size
        state = stepper.start(x.shape[0], x)
    return stepper.step(x, state, t)  # checks input and state (a new stepper's first step)
