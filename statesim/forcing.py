"""Forcing: steer a system by clamping chosen units of its input or of a named state part.

Semantics (one rule for inputs and states): a clamp active at step ``t`` replaces what the cell
*reads* at step ``t``. For ``target="input"`` the chosen input units of ``x_t`` are overwritten; for a
state part (``target="h"``, ``"c"``, ``"layer1.h"``) the chosen units of the state entering step ``t``
(``h_{t-1}``) are overwritten before the cell computes ``(y_t, h_t)``; units index the part's
flattened per-sample shape (plain vector parts: the vector's entries). The states the engine returns
are what the dynamics produced; the clamp acts on every step inside its window ``[start, stop)``.
A NaN in a tensor or list value leaves that unit of that sample unforced, so one batched run can clamp
a different unit in each sample (clamp sweeps, ablation maps).

Gradients: a forced unit is a constant for the step that reads it, so no gradient flows through it
back to earlier steps or to the parameters that produced the overwritten value; the other units are
untouched. If the forcing value is a tensor with ``requires_grad=True``, gradients flow into it, so a
forcing signal can itself be optimised (optimal control, input inference).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence, Union

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor

from statesim.cell import State
from statesim.errors import ForcingError

#: A value is a constant, one value per unit, a tensor broadcastable to ``[steps, B, units]`` (or
#: ``[B, units]``/``[units]``), or a schedule ``t -> value`` of the global step index.
ForcingValue = Union[float, Sequence[float], Tensor, Callable[[int], Union[float, Tensor]]]


@dataclass
class Clamp:
    """Overwrite ``units`` of ``target`` with ``value`` for global steps ``start <= t < stop``.

    ``target`` is ``"input"`` or a state part (``"h"``, ``"c"``, ``"layer1.h"``); ``units`` index the target's
    flattened per-sample shape (None: every unit); ``stop=None`` is open-ended. ``value`` is a constant, one
    value per unit, a tensor broadcastable to ``[B, units]`` (or ``[stop - start, B, units]``), or a function of
    the global step ``t``. A NaN in a value leaves that unit of that sample free (not forced).

    A clamp on an input unit, and one on the state entering each step, free in sample 1 (NaN):

    >>> import torch
    >>> from statesim import Clamp, Forcing, unroll
    >>> from statesim.builtin.cells import LSTMCell
    >>> cell = LSTMCell(2, hidden_size=3)
    >>> on_input = Clamp("input", 1.0, units=[0], start=0, stop=5)
    >>> on_state = Clamp("h", torch.tensor([[0.5], [float("nan")]]), units=[2])
    >>> traj = unroll(cell, torch.zeros(5, 2, 2), forcing=Forcing([on_input, on_state]))
    >>> free = unroll(cell, torch.zeros(5, 2, 2), forcing=Forcing([on_input]))
    >>> same = [torch.allclose(traj.outputs[:, b], free.outputs[:, b], atol=1e-6) for b in (0, 1)]
    >>> same  # sample 0's h[2] was clamped; sample 1's was free
    [False, True]
    """

    target: str
    value: ForcingValue
    units: Sequence[int] | None = None
    start: int = 0
    stop: int | None = None

    def __post_init__(self) -> None:
        # NaN entries mean "not forced here"; decided once, so clamps without NaN pay nothing per step.
        try:
            self.partial = not callable(self.value) and bool(
                torch.isnan(torch.as_tensor(self.value, dtype=torch.float64).detach()).any())
        except (TypeError, ValueError, RuntimeError):
            self.partial = False  # a malformed value is reported where it is applied, as before

    def active(self, t: int) -> bool:
        """Whether the clamp acts at global step ``t``."""
        return t >= self.start and (self.stop is None or t < self.stop)

    def value_at(self, t: int, batch: int, n_units: int, like: Tensor) -> Tensor:
        """The clamp's value at global step ``t`` as a ``[batch, n_units]`` tensor."""
        value = self.value(t) if callable(self.value) else self.value
        value = torch.as_tensor(value, dtype=like.dtype, device=like.device)
        if value.dim() == 3:  # [steps of the window, B, units]
            value = value[t - self.start]
        return value.expand(batch, n_units) if value.dim() < 2 or value.shape[0] == 1 else value

    def index(self, width: int) -> Tensor | slice:
        """Units as an index into the last dimension."""
        if self.units is None:
            return slice(None)
        units = list(self.units)
        bad = [u for u in units if not -width <= u < width]
        if bad:
            raise ForcingError(f"forcing of '{self.target}': units {bad} out of range for width {width} (a unit "
                               f"indexes the target's flattened per-sample shape, 0..{width - 1}); fix the clamp's "
                               f"units.")
        return torch.as_tensor(units, dtype=torch.long)


@dataclass
class Forcing:
    """A set of clamps applied by the engine; empty forcing costs nothing.

    The clamps act on what the cell reads; the states the engine returns are what the dynamics produced.

    >>> import torch
    >>> from statesim import Clamp, Forcing, unroll
    >>> from statesim.builtin.cells import LSTMCell
    >>> forcing = Forcing([Clamp("input", lambda t: 0.1 * t, units=[1]), Clamp("c", 0.0, start=3)])
    >>> forcing.forces_state, bool(Forcing())
    (True, False)
    >>> unroll(LSTMCell(2, hidden_size=3), torch.zeros(6, 4, 2), forcing=forcing).outputs.shape
    torch.Size([6, 4, 3])
    """

    clamps: list[Clamp] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.clamps)

    @property
    def forces_state(self) -> bool:
        """Whether any clamp targets a state part (needs per-step work in the loop)."""
        return any(c.target != "input" for c in self.clamps)

    def check(self, state_parts: Iterable[str]) -> None:
        """Raise a ForcingError naming the valid targets when a clamp names an unknown one."""
        valid = ["input", *state_parts]
        for clamp in self.clamps:
            if clamp.target not in valid:
                raise ForcingError(f"forcing target '{clamp.target}' is not 'input' or a state part of this model; "
                                   f"valid targets: {valid}. Fix the clamp's target (a stack's parts are named "
                                   f"like layer1.h).")

    def apply_to_inputs(self, inputs: Tensor, t0: int = 0) -> Tensor:
        """Apply every input clamp to a whole sequence ``[T, B, F]`` starting at global step ``t0``."""
        clamps = [c for c in self.clamps if c.target == "input"]
        if not clamps:
            return inputs
        inputs = inputs.clone()
        steps, batch, width = inputs.shape
        for clamp in clamps:
            idx = clamp.index(width)
            n_units = width if clamp.units is None else len(clamp.units)
            for t in range(max(clamp.start - t0, 0), steps if clamp.stop is None else min(clamp.stop - t0, steps)):
                value = clamp.value_at(t0 + t, batch, n_units, inputs)
                if clamp.partial:
                    value = torch.where(torch.isnan(value), inputs[t][:, idx], value)
                inputs[t][:, idx] = value
        return inputs

    def apply_to_state(self, state: State, t: int) -> State:
        """Overwrite clamped state units for global step ``t`` (out of place; autograd-safe)."""
        clamps = [c for c in self.clamps if c.target != "input" and c.active(t)]
        if not clamps:
            return state
        state = dict(state)
        for clamp in clamps:
            # Units index the flattened per-sample part, so multi-dimensional parts ([B, k, F]) clamp too.
            original = state[clamp.target]
            part = original.reshape(original.shape[0], -1).clone()
            width = part.shape[-1]
            n_units = width if clamp.units is None else len(clamp.units)
            idx = clamp.index(width)
            value = clamp.value_at(t, part.shape[0], n_units, part)
            if clamp.partial:
                value = torch.where(torch.isnan(value), part[:, idx], value)
            part[:, idx] = value
            state[clamp.target] = part.view(original.shape)
        return state


class ClampConfig(BaseModel):
    """A clamp as written in YAML: ``{target: input, units: [0, 1], start: 100, stop: 200, value: 3.0}``."""

    model_config = ConfigDict(extra="forbid")
    target: str = Field(description="'input' or a state part name such as 'h', 'c' or 'layer1.h'")
    units: list[int] | None = Field(None, description="unit indices to clamp; all units when omitted")
    start: int = Field(0, ge=0, description="first step of the window (global step index)")
    stop: int | None = Field(None, description="end of the window (exclusive); open-ended when omitted")
    value: float | list[float] | None = Field(None, description="constant value, or one per unit")
    ramp: tuple[float, float] | None = Field(None, description="linear ramp from the first to the second value "
                                                                "over [start, stop)")

    @model_validator(mode="after")
    def _one_value(self) -> "ClampConfig":
        if (self.value is None) == (self.ramp is None):
            raise ValueError("give exactly one of 'value' or 'ramp'")
        if self.ramp is not None and self.stop is None:
            raise ValueError("a 'ramp' needs a 'stop'")
        if self.stop is not None and self.stop <= self.start:
            raise ValueError("'stop' must be greater than 'start'")
        return self

    def problems(self, input_size: int, state_spec: dict[str, tuple[int, ...]]) -> list[tuple[str, str]]:
        """``(key, message)`` for each way this clamp does not fit a model of these sizes (none: it fits)."""
        widths = {"input": input_size, **{part: math.prod(shape) for part, shape in state_spec.items()}}
        if self.target not in widths:
            return [("target", f"'{self.target}' is not 'input' or a state part of the model; valid targets: "
                               f"{', '.join(widths)}.")]
        width, found = widths[self.target], []
        bad = [u for u in self.units or [] if not -width <= u < width]
        if bad:
            found.append(("units", f"units {bad} are out of range for '{self.target}', which has {width} units "
                                   f"(0..{width - 1})."))
        count = len(self.units) if self.units is not None else width
        if isinstance(self.value, list) and len(self.value) not in (1, count):
            found.append(("value", f"{len(self.value)} values for {count} clamped units of '{self.target}'; give "
                                   f"one value, or one per unit."))
        return found

    def to_clamp(self) -> Clamp:
        """The runtime clamp this config describes."""
        if self.ramp is None:
            assert self.value is not None  # _one_value: exactly one of value and ramp
            return Clamp(self.target, self.value, self.units, self.start, self.stop)
        assert self.stop is not None  # _one_value: a ramp needs a stop
        first, last, start, span = self.ramp[0], self.ramp[1], self.start, max(self.stop - self.start - 1, 1)
        return Clamp(self.target, lambda t: first + (last - first) * (t - start) / span, self.units,
                     self.start, self.stop)


def forcing_from_config(clamps: Sequence[ClampConfig]) -> Forcing:
    """Build runtime forcing from its YAML description."""
    return Forcing([c.to_clamp() for c in clamps])
