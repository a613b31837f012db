"""The one contract at the heart of statesim: a cell maps ``(x_t, state) -> (y_t, state)``.

A cell is a ``torch.nn.Module`` subclass of :class:`Cell`. It declares its state as named parts with
per-sample shapes (an LSTM has ``h`` and ``c``), its input and output sizes, and one step of its
dynamics. It never loops over time: the engine (:mod:`statesim.engine`) owns unrolling, initial
states, forcing, masks and BPTT, so every feature works for every cell, including a stranger's.

Two optional methods let a cell be fast without changing the contract:

* :meth:`Cell.project_inputs` maps the whole input sequence ``[T, B, F]`` at once (one matrix product
  for every input projection); :meth:`Cell.transition` then takes one projected step. A cell that
  overrides neither simply implements :meth:`Cell.forward`.
* :meth:`Cell.numpy_step` returns a plain-NumPy function for one step, built from a snapshot of the
  current weights, so a host stepping one tick at a time (:mod:`statesim.embed`) avoids torch's
  per-call dispatch. A cell that offers none is stepped through :meth:`Cell.forward`.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping, Sequence

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

from statesim.errors import ShapeError

if TYPE_CHECKING:  # fastpath imports this module
    from statesim.fastpath.forms import FusedForm, LinearForm

#: A state is a named collection of tensors, each ``[B, *part_shape]``.
#:
#: >>> from statesim.builtin.cells import LSTMCell
#: >>> state = LSTMCell(2, hidden_size=3).zero_state(4)
#: >>> {part: list(value.shape) for part, value in state.items()}
#: {'h': [4, 3], 'c': [4, 3]}
State = dict[str, Tensor]

#: One step in NumPy: ``(x [B, input_size], {part: [B, *shape]}) -> (y [B, output_size], new_state)``.
#: It must not modify its arguments in place and must return fresh arrays (``y`` may be the same array as
#: a part of the new state). It is called by one thread at a time, so it may reuse scratch buffers.
NumpyStep = Callable[[np.ndarray, dict[str, np.ndarray]], tuple[np.ndarray, dict[str, np.ndarray]]]


def device_and_dtype(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Where ``module`` computes: its first floating-point parameter's device and dtype, else its first floating
    buffer's (a parameter-free dynamical system), else the CPU and torch's default dtype."""
    for tensor in module.parameters():
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    for buffer in module.buffers():
        if buffer.is_floating_point():
            return buffer.device, buffer.dtype
    return torch.device("cpu"), torch.get_default_dtype()


def state_size(state_spec: Mapping[str, tuple[int, ...]]) -> int:
    """Total number of state units (all parts flattened)."""
    return sum(math.prod(shape) for shape in state_spec.values())


def state_layout(state_spec: Mapping[str, tuple[int, ...]]) -> dict[str, slice]:
    """Where each named part lies in the flattened state (:func:`flatten_state`)."""
    layout, start = {}, 0
    for name, shape in state_spec.items():
        layout[name] = slice(start, start + math.prod(shape))
        start = layout[name].stop
    return layout


def flatten_state(state: Mapping[str, Tensor], state_spec: Mapping[str, tuple[int, ...]] | None = None) -> Tensor:
    """``[B, units]``: every part flattened and concatenated, in ``state_spec``'s order (the state's own when None)."""
    names = state if state_spec is None else state_spec
    return torch.cat([state[name].flatten(1) for name in names], dim=-1)


def unflatten_state(flat: Tensor, state_spec: Mapping[str, tuple[int, ...]]) -> State:
    """Inverse of :func:`flatten_state` for ``state_spec``'s order."""
    parts = flat.split([math.prod(shape) for shape in state_spec.values()], dim=-1)
    return {name: part.reshape(flat.shape[0], *shape) for (name, shape), part in zip(state_spec.items(), parts)}


class CellParams(BaseModel):
    """Base of every cell's parameter model: unknown keys are errors.

    >>> from pydantic import Field
    >>> from statesim import CellParams
    >>> class LeakyParams(CellParams):
    ...     hidden_size: int = Field(..., gt=0, description="number of units")
    ...     leak: float = Field(0.5, ge=0, le=1, description="fraction of the state replaced each step")
    >>> LeakyParams(hidden_size=4)
    LeakyParams(hidden_size=4, leak=0.5)
    >>> LeakyParams(hidden_size=4, lek=0.1)
    Traceback (most recent call last):
    pydantic_core._pydantic_core.ValidationError: 1 validation error for LeakyParams
    ...
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # as the core keys (config.Strict)


class Cell(nn.Module):
    """Base class of every cell: declare ``state_spec``/``output_size`` and implement one step.

    A cell never loops over time: the engine (:func:`statesim.unroll`, :func:`statesim.step`) does. Register it
    with a :class:`statesim.Registration` in a plugin's ``statesim_cells`` hook to name it in YAML.

    >>> import torch
    >>> from statesim import Cell, CellParams, unroll
    >>> class LeakyParams(CellParams):
    ...     hidden_size: int
    >>> class Leaky(Cell):
    ...     Params = LeakyParams
    ...     output_part = "h"
    ...     def __init__(self, input_size, hidden_size):
    ...         super().__init__(input_size)
    ...         self.hidden_size = hidden_size
    ...         self.w = torch.nn.Linear(input_size, hidden_size)
    ...     @property
    ...     def state_spec(self):
    ...         return {"h": (self.hidden_size,)}
    ...     @property
    ...     def output_size(self):
    ...         return self.hidden_size
    ...     def forward(self, x, state):
    ...         h = 0.5 * state["h"] + 0.5 * torch.tanh(self.w(x))
    ...         return h, {"h": h}
    >>> cell = Leaky.from_params(2, LeakyParams(hidden_size=3))
    >>> unroll(cell, torch.zeros(10, 4, 2)).outputs.shape
    torch.Size([10, 4, 3])
    """

    #: The pydantic model validating this cell's YAML parameters (everything except ``type``).
    #:
    #: >>> from statesim.builtin.cells import LSTMCell
    #: >>> LSTMCell.Params(hidden_size=8)
    #: LSTMParams(hidden_size=8, bias=True, forget_bias=0.0)
    Params: ClassVar[type[BaseModel]] = CellParams
    #: The state part ``y_t`` is (``"h"`` for an Elman RNN, LSTM or GRU: ``y_t = h_t``), or None when the output
    #: is not one of the state parts. Declared, never probed: fast paths that return only the output use it.
    #:
    #: >>> from statesim.builtin.cells import LSTMCell
    #: >>> LSTMCell.output_part
    #: 'h'
    output_part: ClassVar[str | None] = None

    def __init__(self, input_size: int) -> None:
        super().__init__()
        if int(input_size) <= 0:
            raise ShapeError(f"{type(self).__name__}: input_size must be positive, got {input_size}.")
        self.input_size = int(input_size)

    # ----------------------------------------------------------------- declared by each cell
    @property
    def state_spec(self) -> dict[str, tuple[int, ...]]:
        """Named state parts and their per-sample shapes, e.g. ``{"h": (64,), "c": (64,)}``.

        Forcing targets, ``zero_state`` and the engine's state checks all follow it.

        >>> from statesim.builtin.cells import LSTMCell
        >>> LSTMCell(2, hidden_size=3).state_spec
        {'h': (3,), 'c': (3,)}
        """
        raise NotImplementedError(f"{type(self).__name__} must declare state_spec")

    @property
    def output_size(self) -> int:
        """Size of ``y_t`` (before any output head).

        >>> from statesim.builtin.cells import LSTMCell
        >>> LSTMCell(2, hidden_size=3).output_size
        3
        """
        raise NotImplementedError(f"{type(self).__name__} must declare output_size")

    def forward(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """One step: ``x [B, input_size]`` and ``state`` to ``(y [B, output_size], new_state)``.

        Return a new state dict with every declared part; never modify ``state`` in place. The default calls
        :meth:`project_inputs` and :meth:`transition` on one step.

        >>> import torch
        >>> from statesim.builtin.cells import LSTMCell
        >>> cell = LSTMCell(2, hidden_size=3)
        >>> y, new_state = cell(torch.zeros(4, 2), cell.zero_state(4))
        >>> list(y.shape), sorted(new_state)
        ([4, 3], ['c', 'h'])
        """
        return self.transition(self.project_inputs(x.unsqueeze(0)).squeeze(0), state)

    # ----------------------------------------------------------------- parameter constraints
    def constrain_parameters_(self) -> None:
        """Project the parameters back onto the set this cell allows, in place, after every optimizer step.

        The default allows everything. Declare a constraint here (IndRNN's ``|u| <= u_max``, a non-negative gain)
        instead of clamping inside the step: a clamp in the step zeroes the gradient of every entry at its bound,
        a projection after the step keeps the gradient and the bound. Runs under ``torch.no_grad``; write into the
        parameters (``self.u.clamp_(-1, 1)``), never replace them (the optimizer holds references).

        >>> import torch
        >>> from statesim.builtin.cells import VanillaCell
        >>> class Bounded(VanillaCell):
        ...     def constrain_parameters_(self):
        ...         for p in self.parameters():
        ...             p.clamp_(-0.1, 0.1)
        >>> cell = Bounded(2, hidden_size=3)
        >>> with torch.no_grad():
        ...     cell.constrain_parameters_()
        >>> all(bool((p.abs() <= 0.1).all()) for p in cell.parameters())
        True
        """

    # ----------------------------------------------------------------- optional fast path
    def project_inputs(self, inputs: Tensor) -> Tensor:
        """Map a whole input sequence ``[T, B, F]`` ahead of the time loop (identity by default).

        A cell that overrides it (with :meth:`transition`) does its input work as one matrix product per
        sequence instead of one per step.

        >>> import torch
        >>> from statesim.builtin.cells import LSTMCell
        >>> LSTMCell(2, hidden_size=3).project_inputs(torch.zeros(10, 4, 2)).shape  # the four gates' inputs
        torch.Size([10, 4, 12])
        """
        return inputs

    def transition(self, projected_x: Tensor, state: State) -> tuple[Tensor, State]:
        """One step on a projected input; cells that hoist work out of the loop implement this.

        >>> import torch
        >>> from statesim.builtin.cells import LSTMCell
        >>> cell = LSTMCell(2, hidden_size=3)
        >>> projected = cell.project_inputs(torch.zeros(1, 4, 2))[0]
        >>> y, new_state = cell.transition(projected, cell.zero_state(4))
        >>> list(y.shape)
        [4, 3]
        """
        raise NotImplementedError(f"{type(self).__name__} must implement forward or transition")

    def numpy_step(self) -> NumpyStep | None:
        """A NumPy step built from the current weights (a snapshot), or None to be stepped through forward.

        It must return the same numbers as :meth:`forward` up to float rounding, in the weights' dtype;
        rebuild it after changing the weights.

        >>> import numpy as np
        >>> from statesim.builtin.cells import LSTMCell
        >>> kernel = LSTMCell(2, hidden_size=3).numpy_step()
        >>> y, new_state = kernel(np.zeros((4, 2), np.float32), {"h": np.zeros((4, 3), np.float32),
        ...                                                      "c": np.zeros((4, 3), np.float32)})
        >>> y.shape
        (4, 3)
        """
        return None

    @property
    def hoists_inputs(self) -> bool:
        """True when the cell splits its step into project_inputs + transition."""
        return type(self).transition is not Cell.transition

    def fused_form(self) -> "FusedForm | None":
        """The fused torch kernel this cell's step is, with its own weights, or None (see statesim.fastpath).

        Offer one only when the kernel computes exactly this cell's step (same state parts, and the output is the
        kernel's first part, declared as :attr:`output_part`).

        >>> from statesim.builtin.cells import LSTMCell
        >>> form = LSTMCell(2, hidden_size=3).fused_form()
        >>> form.kernel, form.state_parts
        ('lstm', ('h', 'c'))
        """
        return None

    def linear_form(self) -> "LinearForm | None":
        """``(A, B, C, D)`` when the cell is a linear time-invariant system, else None (see statesim.fastpath).

        >>> from statesim.builtin.cells import LinearCell, LSTMCell
        >>> form = LinearCell(1, hidden_size=2).linear_form()
        >>> list(form.D.shape), LSTMCell(1, hidden_size=2).linear_form()
        ([2, 2], None)
        """
        return None

    # ----------------------------------------------------------------- construction helpers
    @classmethod
    def from_params(cls, input_size: int, params: BaseModel) -> "Cell":
        """Build from validated YAML parameters (keyword arguments of ``__init__``).

        >>> from statesim.builtin.cells import LSTMCell
        >>> cell = LSTMCell.from_params(2, LSTMCell.Params(hidden_size=3))
        >>> cell.input_size, cell.state_spec
        (2, {'h': (3,), 'c': (3,)})
        """
        return cls(input_size=input_size, **dict(params))

    def zero_state(self, batch_size: int, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None) -> State:
        """A state of zeros for a batch, on the cell's device and dtype unless given.

        >>> import torch
        >>> from statesim.builtin.cells import LSTMCell
        >>> state = LSTMCell(2, hidden_size=3).zero_state(4, dtype=torch.float64)
        >>> list(state["c"].shape), state["c"].dtype
        ([4, 3], torch.float64)
        """
        if device is None or dtype is None:
            own_device, own_dtype = device_and_dtype(self)
            device = own_device if device is None else device
            dtype = own_dtype if dtype is None else dtype
        return {name: torch.zeros((batch_size, *shape), device=device, dtype=dtype)
                for name, shape in self.state_spec.items()}

    def check_input(self, x: Tensor, *, time_major: bool = False) -> None:
        """Raise a :class:`ShapeError` naming the cell when ``x`` cannot be fed to it."""
        name = type(self).__name__
        want = "[T, B, input_size]" if time_major else "[B, input_size]"
        if not isinstance(x, Tensor):
            raise ShapeError(f"{name}: expected a torch.Tensor input {want}, got {type(x).__name__}.")
        ndim = 3 if time_major else 2
        if x.dim() != ndim or x.shape[-1] != self.input_size:
            raise ShapeError(f"{name}: expected input of shape {want} with input_size={self.input_size}, "
                             f"got shape {list(x.shape)}.")
        if not x.is_floating_point():
            raise ShapeError(f"{name}: expected a floating-point input, got dtype {x.dtype}.")
        ref = _reference(self)
        if ref is not None and x.device != ref.device:
            raise ShapeError(f"{name}: input is on {x.device} but the cell's parameters are on {ref.device}; "
                             f"move one of them (model.to(device)).")
        if ref is not None and ref.is_floating_point() and x.dtype != ref.dtype:
            raise ShapeError(f"{name}: input of shape {list(x.shape)} has dtype {x.dtype} but the cell's parameters "
                             f"are {ref.dtype}; convert one of them (x.to({ref.dtype}) or model.to({x.dtype})).")

    def check_step_result(self, y: Any, new_state: Any, entering: Mapping[str, Tensor], batch: int,
                          versions: Sequence[int] | None = None) -> None:
        """Raise a :class:`ShapeError` when one step's ``(y, new_state)`` breaks the contract for ``entering``.

        The returned state must have exactly the declared parts, each ``[B, *shape]`` in the dtype and on the
        device of the state the step read, and ``y`` must be ``[B, output_size]``; ``versions`` (the entering
        parts' ``_version`` counters before the step) also catches a step that wrote into its input state.
        """
        name = type(self).__name__
        spec = self.state_spec
        if versions is not None:
            for (part, value), before in zip(entering.items(), versions):
                if value._version != before:
                    raise ShapeError(f"{name}: the step modified its input state part '{part}' in place; recorded "
                                     f"states then alias each other and outputs go wrong silently. Build new "
                                     f"tensors instead ({part} = {part} + ..., torch.where, or clone before "
                                     f"writing).")
        if not isinstance(new_state, Mapping):
            raise ShapeError(f"{name}: the step must return (y, state) with state a mapping of part name to "
                             f"tensor, got {type(new_state).__name__}.")
        if set(new_state) != set(spec):
            missing, extra = sorted(set(spec) - set(new_state)), sorted(set(new_state) - set(spec))
            raise ShapeError(f"{name}: the step returned state parts {sorted(new_state)}, but state_spec declares "
                             f"{sorted(spec)} (missing {missing}, extra {extra}); return every declared part "
                             f"and no other, or change state_spec.")
        for part, shape in spec.items():
            value, want = new_state[part], entering.get(part)
            if not isinstance(value, Tensor):
                raise ShapeError(f"{name}: the step returned state part '{part}' as {type(value).__name__}, "
                                 f"expected a tensor of shape {[batch, *shape]}.")
            if tuple(value.shape) != (batch, *shape):
                raise ShapeError(f"{name}: the step returned state part '{part}' of shape {list(value.shape)}, "
                                 f"expected {[batch, *shape]} (batch {batch}, state_spec {shape})"
                                 f"{_shape_hint(tuple(value.shape), (batch, *shape))}.")
            if want is not None and (value.dtype != want.dtype or value.device != want.device):
                raise ShapeError(f"{name}: the step returned state part '{part}' as {value.dtype} on "
                                 f"{value.device}, expected {want.dtype} on {want.device} (the state it read).")
        if not isinstance(y, Tensor):
            raise ShapeError(f"{name}: the step must return (y, state) with y a tensor, got {type(y).__name__}.")
        if tuple(y.shape) != (batch, self.output_size):
            raise ShapeError(f"{name}: the step returned y of shape {list(y.shape)}, expected "
                             f"{[batch, self.output_size]} (batch {batch}, output_size {self.output_size})"
                             f"{_shape_hint(tuple(y.shape), (batch, self.output_size))}.")

    def check_state(self, state: Mapping[str, Tensor], batch_size: int) -> None:
        """Raise a :class:`ShapeError` when ``state`` does not match ``state_spec``."""
        name = type(self).__name__
        spec = self.state_spec
        if set(state) != set(spec):
            raise ShapeError(f"{name}: state parts {sorted(state)} do not match the declared parts {sorted(spec)}.")
        for part, shape in spec.items():
            got = tuple(state[part].shape)
            if got != (batch_size, *shape):
                raise ShapeError(f"{name}: state part '{part}' should have shape {[batch_size, *shape]}, "
                                 f"got {list(got)}.")
        ref = _reference(self)
        if ref is not None and ref.is_floating_point():
            for part, value in state.items():
                if value.dtype != ref.dtype or value.device != ref.device:
                    raise ShapeError(f"{name}: state part '{part}' is {value.dtype} on {value.device} but the "
                                     f"cell's parameters are {ref.dtype} on {ref.device}; convert the state "
                                     f"(or the model) so they agree.")


def _reference(cell: nn.Module) -> Tensor | None:
    """The tensor inputs and states must match in device and dtype: the first floating parameter, else the first
    floating buffer (a parameter-free dynamical system such as the salamander CPG computes in its buffers' dtype)."""
    for tensor in (*cell.parameters(), *cell.buffers()):
        if tensor.is_floating_point():
            return tensor
    return next(cell.parameters(), None)


def _shape_hint(got: tuple[int, ...], want: tuple[int, ...]) -> str:
    """Why a returned shape differs from the expected one, in words a cell author recognises."""
    if len(got) != len(want):
        return f": rank {len(got)} instead of {len(want)}"
    if got[0] != want[0]:
        return ": the batch dimension changed (e.g. h[:1], a reduction over the batch, or broadcasting)"
    return ": wrong width"


def constrained_cells(module: nn.Module) -> list[Cell]:
    """The cells inside ``module`` that declare :meth:`Cell.constrain_parameters_` (found once, applied often)."""
    return [m for m in module.modules()
            if isinstance(m, Cell) and type(m).constrain_parameters_ is not Cell.constrain_parameters_]
