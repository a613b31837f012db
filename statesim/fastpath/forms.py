"""What cells, fast paths and the engine exchange: the forms a cell offers, a path's request and contract.

:class:`FusedForm` and :class:`LinearForm` are what :meth:`statesim.cell.Cell.fused_form` and
:meth:`statesim.cell.Cell.linear_form` return; :class:`FastPath` is what a ``statesim_fast_paths`` hook
returns; :class:`Decline` and :class:`FastPathError` are how a path, or the engine, says it cannot run.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Protocol

from torch import Tensor

from statesim.errors import StatesimError

if TYPE_CHECKING:
    from statesim.engine import Stepper

State = dict[str, Tensor]
#: What a fast path returns: outputs ``[T, B, O]``, the final state, and every state (or None).
Result = tuple[Tensor, State, "dict[str, Tensor] | None"]


class FastPathError(StatesimError):
    """A fast path was demanded (``model.fast_path: NAME``) where it cannot run."""


class Decline(Exception):
    """Raised by a prepared path's ``run`` when a data-dependent check fails (e.g. a zero length)."""


# --------------------------------------------------------------------------- what cells offer
@dataclass(slots=True)
class FusedForm:
    """A cell whose step is torch's fused ``kernel`` with ``weights`` in torch's order and layout.

    ``weights`` are the cell's own parameters ``(weight_ih, weight_hh[, bias_ih, bias_hh])``;
    ``state_parts`` names the state in the kernel's order (``("h", "c")`` for an LSTM); the kernel's output
    is its first part, which must be the cell's declared :attr:`~statesim.cell.Cell.output_part`.
    """

    kernel: str
    weights: tuple[Tensor, ...]
    hidden_size: int
    state_parts: tuple[str, ...] = ("h",)

    @property
    def has_biases(self) -> bool:
        """Whether the weights include ``bias_ih`` and ``bias_hh``."""
        return len(self.weights) == 4


@dataclass(slots=True)
class LinearForm:
    """A time-invariant linear cell ``y_t = A x_t + B h_{t-1}``, ``h_t = C x_t + D h_{t-1}``."""

    A: Tensor
    B: Tensor
    C: Tensor
    D: Tensor
    state_part: str = "h"


@dataclass(frozen=True)
class Request:
    """What a stepper needs from its runs, as far as choosing a path goes."""

    forces_state: bool
    return_states: bool
    observed: bool = False


#: A prepared fast path: ``run(inputs, state, lengths) -> Result`` and why it was chosen.
Prepared = tuple[Callable[[Tensor, State, "Tensor | None"], Result], str]


class FastPath(Protocol):
    """A whole-sequence implementation of :meth:`statesim.engine.Stepper.run` (returned by ``statesim_fast_paths``)."""

    name: str

    def prepare(self, stepper: "Stepper", request: Request) -> "Prepared | str":
        """``(run, why chosen)`` when the path can run ``stepper.cell`` for ``request``, else why not (a short clause).

        Called once per stepper. ``run(inputs, state, lengths)`` gets inputs with input forcing applied and a
        checked state; it may still raise :class:`Decline` for a reason only the data shows (a zero length,
        too few steps).
        """
