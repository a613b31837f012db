"""Built-in topologies. ``unidirectional``: one cell, output at each step as the input arrives."""
from __future__ import annotations

from torch import Tensor

from statesim.cell import Cell, State
from statesim.engine import Trajectory, unroll
from statesim.forcing import Forcing
from statesim.hookimpl import hookimpl
from statesim.model import CellFactory, PluginParams, Topology
from statesim.registry import Registration


class UnidirectionalParams(PluginParams):
    pass


class Unidirectional(Topology):
    """One cell unrolled forward in time by the engine."""

    Params = UnidirectionalParams

    def __init__(self, input_size: int, cell_factory: CellFactory) -> None:
        super().__init__(input_size)
        self.cell = cell_factory(input_size)

    @property
    def state_spec(self) -> dict[str, tuple[int, ...]]:
        return self.cell.state_spec

    @property
    def output_size(self) -> int:
        return self.cell.output_size

    def forward(self, inputs: Tensor, state: State, *, lengths: Tensor | None = None,
                forcing: Forcing | None = None, return_states: bool = False, t0: int = 0) -> Trajectory:
        return unroll(self.cell, inputs, state, lengths=lengths, forcing=forcing, return_states=return_states, t0=t0)

    def as_cell(self) -> Cell:
        return self.cell


@hookimpl
def statesim_topologies() -> list[Registration]:
    """The built-in topologies."""
    return [Registration("unidirectional", Unidirectional, UnidirectionalParams,
                         "one cell, output at each step as the input arrives")]
