"""Built-in topologies ``bidirectional`` and ``stacked`` (the lecture's bidirectional RNNs, GNMT's stack).

Both are built from a cell factory, so they work with any registered cell, and both run their cells
through :func:`statesim.engine.unroll`. Their state parts are the cells' parts under a prefix:
``fwd.h``/``bwd.h`` for a bidirectional pair, ``layer0.h``/``layer1.c`` for a stack (``layer0.fwd.h``
when the first layer of a stack is bidirectional), so initial-state policies and forcing address each
part per layer and per direction.

Forcing routes by prefix: a clamp on ``layer1.h`` reaches layer 1's ``h``; an ``input`` clamp acts on the
topology's input (what the first layer reads). A clamp on a ``bwd.*`` part counts the steps of the backward
pass (step 0 is each sequence's own last element).
"""
from __future__ import annotations

from typing import Literal, TypeVar

import torch
from pydantic import BaseModel, Field
from torch import Tensor, nn

from statesim.cell import Cell, NumpyStep, State
from statesim.engine import Trajectory, lengths_to_mask, unroll
from statesim.errors import ShapeError
from statesim.forcing import Clamp, Forcing
from statesim.hookimpl import hookimpl
from statesim.model import CellFactory, PluginParams, Topology
from statesim.registry import Registration

Merge = Literal["concat", "sum", "mean"]
V = TypeVar("V")


# --------------------------------------------------------------------------- helpers
def prefixed(prefix: str, state: dict[str, V]) -> dict[str, V]:
    """``{part: v}`` -> ``{prefix.part: v}``."""
    return {f"{prefix}.{name}": value for name, value in state.items()}


def unprefixed(prefix: str, state: State) -> State:
    """The parts of ``state`` under ``prefix.``, with the prefix removed."""
    head = prefix + "."
    return {name[len(head):]: value for name, value in state.items() if name.startswith(head)}


def route_forcing(forcing: Forcing | None, prefix: str, *, with_inputs: bool) -> Forcing | None:
    """The clamps of ``forcing`` that reach the sub-module under ``prefix`` (prefix removed)."""
    if not forcing:
        return None
    head = prefix + "."
    clamps = [Clamp(c.target[len(head):], c.value, c.units, c.start, c.stop)
              for c in forcing.clamps if c.target.startswith(head)]
    if with_inputs:
        clamps += [c for c in forcing.clamps if c.target == "input"]
    return Forcing(clamps) if clamps else None


def check_forcing_targets(forcing: Forcing | None, state_spec: dict) -> None:
    """Raise the engine's error for a clamp naming no state part of this topology."""
    if forcing:
        forcing.check(state_spec)


def reverse_padded(inputs: Tensor, lengths: Tensor | None) -> Tensor:
    """Reverse each sequence within its own length: ``out[t, b] = x[len_b - 1 - t, b]`` for ``t < len_b``.

    Padding stays at the end, so the backward pass starts at each sequence's own last element. The map
    is its own inverse on the real steps.
    """
    steps, batch = inputs.shape[0], inputs.shape[1]
    if lengths is None:
        return inputs.flip(0)
    t = torch.arange(steps, device=inputs.device).unsqueeze(1)
    lengths = lengths.to(inputs.device).to(torch.long).unsqueeze(0)
    index = torch.where(t < lengths, lengths - 1 - t, t)  # [T, B]
    index = index.view(steps, batch, *([1] * (inputs.dim() - 2))).expand_as(inputs)
    return inputs.gather(0, index)


def merge_outputs(forward: Tensor, backward: Tensor, merge: str) -> Tensor:
    """Combine the two directions' outputs."""
    if merge == "concat":
        return torch.cat([forward, backward], dim=-1)
    if merge == "sum":
        return forward + backward
    return (forward + backward) / 2


# --------------------------------------------------------------------------- bidirectional
class BidirectionalParams(PluginParams):
    merge: Merge = Field("concat", description="how the two directions' outputs combine: concat, sum or mean")


class Bidirectional(Topology):
    """A forward and a backward cell over the sequence; outputs merged per step. Needs the whole sequence."""

    Params = BidirectionalParams

    @classmethod
    def steppable(cls, params: BaseModel) -> bool:
        """Never: the backward cell reads the sequence from its end."""
        return False

    def __init__(self, input_size: int, cell_factory: CellFactory, merge: str = "concat") -> None:
        super().__init__(input_size)
        self.merge = merge
        self.fwd = cell_factory(input_size)
        self.bwd = cell_factory(input_size)
        if merge != "concat" and self.fwd.output_size != self.bwd.output_size:
            raise ShapeError(f"bidirectional merge '{merge}' needs equal output sizes, got {self.fwd.output_size} "
                             f"and {self.bwd.output_size}; use merge: concat.")

    @property
    def state_spec(self) -> dict[str, tuple[int, ...]]:
        return {**prefixed("fwd", self.fwd.state_spec), **prefixed("bwd", self.bwd.state_spec)}

    @property
    def output_size(self) -> int:
        size = self.fwd.output_size
        return size + self.bwd.output_size if self.merge == "concat" else size

    def forward(self, inputs: Tensor, state: State, *, lengths: Tensor | None = None,
                forcing: Forcing | None = None, return_states: bool = False, t0: int = 0) -> Trajectory:
        check_forcing_targets(forcing, self.state_spec)
        if forcing:  # input clamps act in the original time, before the sequence is reversed
            inputs = forcing.apply_to_inputs(inputs, t0)
        if lengths is not None:
            lengths = torch.as_tensor(lengths, device=inputs.device)
        ahead = unroll(self.fwd, inputs, unprefixed("fwd", state), lengths=lengths,
                       forcing=route_forcing(forcing, "fwd", with_inputs=False), return_states=return_states, t0=t0)
        back = unroll(self.bwd, reverse_padded(inputs, lengths), unprefixed("bwd", state), lengths=lengths,
                      forcing=route_forcing(forcing, "bwd", with_inputs=False), return_states=return_states, t0=t0)
        outputs = merge_outputs(ahead.outputs, reverse_padded(back.outputs, lengths), self.merge)
        states = None
        if return_states:
            assert ahead.states is not None and back.states is not None  # unroll returns them when asked
            states = {**prefixed("fwd", ahead.states),
                      **prefixed("bwd", {k: reverse_padded(v, lengths) for k, v in back.states.items()})}
        final = {**prefixed("fwd", ahead.final_state), **prefixed("bwd", back.final_state)}
        return Trajectory(outputs, final, states)


# --------------------------------------------------------------------------- stacked
def _layer(module: nn.Module) -> Cell | Topology:
    # nn.ModuleList types its items as nn.Module; a stack's layers are cells or (bidirectional) topologies.
    assert isinstance(module, (Cell, Topology))
    return module


def _cell_layer(module: nn.Module) -> Cell:
    # A StackCell's layers are cells: Stacked.as_cell declines a bidirectional first layer.
    assert isinstance(module, Cell)
    return module


def layers_state_spec(layers: nn.ModuleList) -> dict[str, tuple[int, ...]]:
    """Every layer's state parts, named ``layer{i}.{part}`` (shared by the stack and its steppable cell)."""
    spec: dict[str, tuple[int, ...]] = {}
    for i, layer in enumerate(layers):
        spec.update(prefixed(f"layer{i}", _layer(layer).state_spec))
    return spec


class StackCell(Cell):
    """A stack of cells stepped together, one tick at a time: a stacked topology seen as one cell.

    State parts are ``layer{i}.{part}``; dropout (training only) and residual connections act as in
    :class:`Stacked`, so stepping this cell equals the stack's layer-by-layer unroll (in eval mode).
    """

    def __init__(self, layers: nn.ModuleList, residual_from: int | None, dropout: float) -> None:
        super().__init__(_cell_layer(layers[0]).input_size)
        self.layers, self.residual_from, self.dropout = layers, residual_from, dropout

    @property
    def state_spec(self) -> dict[str, tuple[int, ...]]:
        return layers_state_spec(self.layers)

    @property
    def output_size(self) -> int:
        return _layer(self.layers[-1]).output_size

    @property
    def output_part(self) -> str | None:  # type: ignore[override]
        """The last layer's output part (None when that layer adds a residual to its output)."""
        last = len(self.layers) - 1
        inner = getattr(self.layers[last], "output_part", None)
        if inner is None or (self.residual_from is not None and last >= self.residual_from):
            return None
        return f"layer{last}.{inner}"

    def forward(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        new_state: State = {}
        for i, layer in enumerate(self.layers):
            if i > 0 and self.dropout:
                x = nn.functional.dropout(x, self.dropout, self.training)
            y, layer_state = layer(x, unprefixed(f"layer{i}", state))
            if self.residual_from is not None and i >= self.residual_from:
                y = y + x
            new_state.update(prefixed(f"layer{i}", layer_state))
            x = y
        return x, new_state

    def numpy_step(self) -> NumpyStep | None:
        """The layers' NumPy kernels chained (None when a layer has none, or dropout is active)."""
        if self.training and self.dropout:
            return None
        found = [_cell_layer(layer).numpy_step() for layer in self.layers]
        kernels = [kernel for kernel in found if kernel is not None]
        if len(kernels) != len(found):
            return None
        parts = [[(f"layer{i}.{p}", p) for p in _cell_layer(layer).state_spec] for i, layer in enumerate(self.layers)]
        residual_from = self.residual_from

        def step(x, state):
            new_state = {}
            for i, (kernel, names) in enumerate(zip(kernels, parts)):
                y, layer_state = kernel(x, {inner: state[outer] for outer, inner in names})
                if residual_from is not None and i >= residual_from:
                    y = y + x
                new_state.update({outer: layer_state[inner] for outer, inner in names})
                x = y
            return x, new_state

        return step


class StackedParams(PluginParams):
    layers: int = Field(2, ge=1, description="number of layers")
    residual: bool = Field(False, description="add each layer's input to its output (from layer residual_from on)")
    residual_from: int = Field(1, ge=1, description="index (from 0) of the first layer with a residual connection; "
                                                    "1 = from the second layer on, as in GNMT")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the inputs of layers 1.. (training only)")
    bidirectional_first: bool = Field(False, description="make layer 0 bidirectional (GNMT's encoder)")
    merge: Merge = Field("concat", description="merge of the bidirectional first layer's two directions")


class Stacked(Topology):
    """N layers of cells, each reading the previous layer's outputs; optional residuals, dropout, bi first layer."""

    Params = StackedParams

    @classmethod
    def steppable(cls, params: BaseModel) -> bool:
        """Unless the first layer is bidirectional."""
        return not getattr(params, "bidirectional_first", False)

    def __init__(self, input_size: int, cell_factory: CellFactory, layers: int = 2, residual: bool = False,
                 residual_from: int = 1, dropout: float = 0.0, bidirectional_first: bool = False,
                 merge: str = "concat") -> None:
        super().__init__(input_size)
        self.residual_from = residual_from if residual else None
        self.dropout, self.bidirectional_first = dropout, bidirectional_first
        modules: list[nn.Module] = []
        size = input_size
        for i in range(layers):
            module = (Bidirectional(size, cell_factory, merge) if (i == 0 and bidirectional_first)
                      else cell_factory(size))
            out = module.output_size
            if self.residual_from is not None and i >= self.residual_from and out != size:
                raise ShapeError(f"stacked: layer {i} has input size {size} but output size {out}, so it cannot have a "
                                 f"residual connection; make the sizes equal, or set residual_from to a later layer.")
            modules.append(module)
            size = out
        self.layers = nn.ModuleList(modules)

    @property
    def state_spec(self) -> dict[str, tuple[int, ...]]:
        return layers_state_spec(self.layers)

    @property
    def output_size(self) -> int:
        return _layer(self.layers[-1]).output_size

    def forward(self, inputs: Tensor, state: State, *, lengths: Tensor | None = None,
                forcing: Forcing | None = None, return_states: bool = False, t0: int = 0) -> Trajectory:
        check_forcing_targets(forcing, self.state_spec)
        x = inputs
        final: State = {}
        states: dict[str, Tensor] = {}
        for i, module in enumerate(self.layers):
            layer = _layer(module)
            if i > 0 and self.dropout:
                x = nn.functional.dropout(x, self.dropout, self.training)
            routed = route_forcing(forcing, f"layer{i}", with_inputs=i == 0)
            layer_state = unprefixed(f"layer{i}", state)
            if isinstance(layer, Topology):
                traj = layer(x, layer_state, lengths=lengths, forcing=routed, return_states=return_states, t0=t0)
            else:
                traj = unroll(layer, x, layer_state, lengths=lengths, forcing=routed, return_states=return_states,
                              t0=t0)
            y = traj.outputs
            if self.residual_from is not None and i >= self.residual_from:
                y = y + x
                if lengths is not None:  # padded steps stay zero, as the engine leaves them
                    mask = lengths_to_mask(torch.as_tensor(lengths, device=y.device), y.shape[0])
                    y = y * mask.unsqueeze(-1).to(y.dtype)
            final.update(prefixed(f"layer{i}", traj.final_state))
            if return_states:
                states.update(prefixed(f"layer{i}", traj.states))
            x = y
        return Trajectory(x, final, states if return_states else None)

    def as_cell(self) -> Cell | None:
        """The stack as one steppable cell (None with a bidirectional first layer, which needs the whole sequence)."""
        if self.bidirectional_first:
            return None
        cell = StackCell(self.layers, self.residual_from, self.dropout)
        cell.train(self.training)
        return cell


@hookimpl
def statesim_topologies() -> list[Registration]:
    """Register bidirectional and stacked."""
    return [
        Registration("bidirectional", Bidirectional, BidirectionalParams,
                     "forward and backward cells over the whole sequence, outputs merged (ragged batches handled)"),
        Registration("stacked", Stacked, StackedParams,
                     "N layers of cells; optional residual connections, dropout, bidirectional first layer"),
    ]
