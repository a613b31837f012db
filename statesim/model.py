"""Models: a topology of cells, an initial-state policy and an output head, built from config.

The three extension points besides cells are plugins too:

* a :class:`Topology` wires cells over time (unidirectional, stacked, bidirectional, ...) and runs
  them through the engine; one that can be stepped tick by tick offers :meth:`Topology.as_cell`;
* an :class:`InitialState` policy gives the state at ``t = 0`` for each named state part;
* the head maps the topology's output to the target size (``y = W h + b``) or is left out.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

from statesim import fastpath
from statesim.cell import Cell, State, device_and_dtype
from statesim.engine import Trajectory, lengths_to_mask
from statesim.errors import NotSteppableError
from statesim.forcing import Forcing
from statesim.registry import Registry

CellFactory = Callable[[int], Cell]


class PluginParams(BaseModel):
    """Base of topology and initial-state parameter models: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # as the core keys (config.Strict)


@dataclass
class InitialContext:
    """What an initial-state policy may use: the sequence about to run, an encoding, the topology."""

    inputs: Tensor | None = None
    lengths: Tensor | None = None
    encoded: Tensor | None = None
    topology: "Topology | None" = None
    #: Steps that precede the sequence ``[K, B, F]`` (for policies that warm the system up on them).
    prefix: Tensor | None = None


class InitialState(nn.Module):
    """Base of initial-state policies: ``forward(batch_size, ...) -> State`` for every named part."""

    Params: ClassVar[type[BaseModel]] = PluginParams
    #: Whether the policy gives the same state every time it is called with the same context (no random
    #: draw): an export can then ship the state itself. Declared, never probed; a policy whose randomness
    #: depends on its parameters overrides this with a property.
    deterministic: ClassVar[bool] = False

    def __init__(self, state_spec: dict[str, tuple[int, ...]]) -> None:
        super().__init__()
        self.state_spec = dict(state_spec)

    def forward(self, batch_size: int, *, device: torch.device | str, dtype: torch.dtype,
                context: InitialContext | None = None) -> State:
        """The state at ``t = 0`` for a batch."""
        raise NotImplementedError

    @classmethod
    def from_params(cls, state_spec: dict[str, tuple[int, ...]], params: BaseModel) -> "InitialState":
        """Build from validated YAML parameters."""
        return cls(state_spec, **dict(params))


class Topology(nn.Module):
    """Base of topologies: run cells over a sequence through the engine; same result shape as a cell's unroll."""

    Params: ClassVar[type[BaseModel]] = PluginParams

    def __init__(self, input_size: int) -> None:
        super().__init__()
        self.input_size = input_size

    @property
    def state_spec(self) -> dict[str, tuple[int, ...]]:
        """Every named state part of every cell the topology holds (e.g. ``layer1.h``)."""
        raise NotImplementedError

    @property
    def output_size(self) -> int:
        """Size of the topology's output per step."""
        raise NotImplementedError

    def forward(self, inputs: Tensor, state: State, *, lengths: Tensor | None = None,
                forcing: Forcing | None = None, return_states: bool = False, t0: int = 0) -> Trajectory:
        """Run the whole sequence ``[T, B, F]`` from ``state``."""
        raise NotImplementedError

    def as_cell(self) -> Cell | None:
        """A cell that steps this topology one tick (None when it needs the whole sequence)."""
        return None

    @classmethod
    def from_params(cls, input_size: int, cell_factory: CellFactory, params: BaseModel) -> "Topology":
        """Build from validated YAML parameters."""
        return cls(input_size, cell_factory, **dict(params))

    @classmethod
    def from_config(cls, input_size: int, cell_factory: CellFactory, params: BaseModel,
                    registry: Registry) -> "Topology":
        """Build with the registry at hand (what :func:`build_model` calls).

        Defaults to :meth:`from_params`; a topology whose parameters name further components (an
        encoder-decoder's encoder and decoder topologies, a second cell) overrides this to build them.
        """
        return cls.from_params(input_size, cell_factory, params)


class SequenceModel(nn.Module):
    """A topology, its initial-state policy and an optional output head: what trainers and embedders use."""

    #: The engine's path policy for this model (statesim.fastpath): ``auto``, ``generic`` or a fast path's
    #: name, and whether the generic loop's step is torch.compile'd; None inherits the surrounding policy.
    fast_path: str | None = None
    compile_steps: bool | None = None

    def __init__(self, topology: Topology, initial_state: InitialState, head: nn.Module | None = None) -> None:
        super().__init__()
        self.topology, self.initial_state, self.head = topology, initial_state, head
        #: How :func:`build_model` made this model (resolved model config and sizes, plain JSON data);
        #: trainers store it in checkpoints so a checkpoint alone can rebuild the model (statesim.embed).
        self.build_spec: dict[str, Any] | None = None

    @property
    def input_size(self) -> int:
        return self.topology.input_size

    @property
    def output_size(self) -> int:
        return self.head.out_features if isinstance(self.head, nn.Linear) else self.topology.output_size

    @property
    def state_spec(self) -> dict[str, tuple[int, ...]]:
        return self.topology.state_spec

    def initial(self, batch_size: int, *, inputs: Tensor | None = None, lengths: Tensor | None = None,
                encoded: Tensor | None = None, prefix: Tensor | None = None) -> State:
        """The state at ``t = 0`` from the model's initial-state policy."""
        device, dtype = device_and_dtype(self)  # also for a model without parameters (salamander_cpg)
        context = InitialContext(inputs, lengths, encoded, self.topology, prefix)
        return self.initial_state(batch_size, device=device, dtype=dtype, context=context)

    def read_out(self, outputs: Tensor) -> Tensor:
        """Apply the output head (to ``[..., O]``)."""
        return outputs if self.head is None else self.head(outputs)

    def forward(self, inputs: Tensor, state: State | None = None, *, lengths: Tensor | None = None,
                forcing: Forcing | None = None, return_states: bool = False, t0: int = 0,
                encoded: Tensor | None = None, prefix: Tensor | None = None) -> Trajectory:
        """Unroll over ``inputs [T, B, F]``; outputs pass through the head.

        ``encoded`` and ``prefix`` reach the initial-state policy (see :class:`InitialContext`).
        """
        if state is None:
            state = self.initial(inputs.shape[1], inputs=inputs, lengths=lengths, encoded=encoded, prefix=prefix)
        decisions = self.__dict__.setdefault("engine_decisions", {})  # which path ran, and why (for the run log)
        with fastpath.scope(self.fast_path, self.compile_steps, decisions):
            traj = self.topology(inputs, state, lengths=lengths, forcing=forcing, return_states=return_states, t0=t0)
        outputs = self.read_out(traj.outputs)
        if lengths is not None and self.head is not None:
            mask = lengths_to_mask(torch.as_tensor(lengths, device=inputs.device), inputs.shape[0])
            outputs = outputs * mask.unsqueeze(-1).to(outputs.dtype)
        return Trajectory(outputs, traj.final_state, traj.states)

    def step_cell(self) -> Cell:
        """The cell that advances this model one tick; raises for topologies that need the whole sequence."""
        cell = self.topology.as_cell()
        if cell is None:
            raise NotSteppableError(f"{type(self.topology).__name__} needs the whole sequence and cannot be stepped "
                            f"one tick at a time; use a unidirectional or stacked topology.")
        return cell


def build_model(registry: Registry, config: Any, input_size: int, output_size: int | None = None) -> SequenceModel:
    """Build a :class:`SequenceModel` from a resolved ``ModelConfig`` and the data's sizes."""
    cell_entry = registry.get("cell", config.cell.type).record

    def make_cell(size: int) -> Cell:
        return cell_entry.cls.from_params(size, config.cell.params)

    topology_entry = registry.get("topology", config.topology.type).record
    topology = topology_entry.cls.from_config(input_size, make_cell, config.topology.params, registry)
    policy_entry = registry.get("initial_state", config.initial_state.type).record
    policy = policy_entry.cls.from_params(topology.state_spec, config.initial_state.params)
    head: nn.Module | None = None
    wants_head = config.head == "linear" or (
        config.head == "auto" and output_size is not None and output_size != topology.output_size)
    if wants_head:
        head = nn.Linear(topology.output_size, output_size or topology.output_size, bias=config.head_bias)
    model = SequenceModel(topology, policy, head)
    model.fast_path, model.compile_steps = getattr(config, "fast_path", None), getattr(config, "compile", None)
    model.build_spec = {"model": config.model_dump(mode="json"), "input_size": input_size, "output_size": output_size}
    return model
