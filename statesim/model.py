"""Models: a topology of cells, an initial-state policy and an output head, built from config.

The three extension points besides cells are plugins too:

* a :class:`Topology` wires cells over time (unidirectional, stacked, bidirectional, ...) and runs
  them through the engine; one that can be stepped tick by tick offers :meth:`Topology.as_cell`;
* an :class:`InitialState` policy gives the state at ``t = 0`` for each named state part;
* the head maps the topology's output to the target size (``y = W h + b``) or is left out;
* an optional input embedding maps token ids to the topology's inputs;
* an optional conditioning :class:`Encoder` (also a plugin kind) reads what the sequence is conditioned on
  (a source sentence, an image) once per sequence and leaves a :class:`Memory`. The memory reaches the
  initial-state policy (``InitialContext.encoded``/``memory``) and the topology
  (:meth:`Topology.condition`, e.g. attention), so an encoder-decoder or a captioner is one
  :class:`SequenceModel`, trained by the one trainer and rebuilt from its ``build_spec``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

from statesim.cell import Cell, State, device_and_dtype
from statesim.engine import Trajectory, lengths_to_mask
from statesim.errors import NotSteppableError, StatesimError
from statesim.fastpath import policies
from statesim.forcing import Forcing
from statesim.config import components
from statesim.registry import Registry, provenance

CellFactory = Callable[[int], Cell]


class PluginParams(BaseModel):
    """Base of topology and initial-state parameter models: unknown keys are errors.

    >>> from statesim import PluginParams
    >>> class FillParams(PluginParams):
    ...     value: float = 0.0
    >>> FillParams(value=1.5)
    FillParams(value=1.5)
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # as the core keys (config.Strict)


@dataclass
class Memory:
    """What a conditioning encoder leaves the model: a summary ``encoded [B, E]`` and, for attention,
    per-step ``outputs [S, B, H]`` with their ``lengths [B]``.

    >>> import torch
    >>> from statesim import Memory
    >>> memory = Memory(torch.zeros(2, 5), outputs=torch.zeros(7, 2, 4), lengths=torch.tensor([7, 3]))
    >>> list(memory.repeat(3).encoded.shape), memory.repeat(3).lengths.tolist()  # e.g. 3 beams per sequence
    ([6, 5], [7, 7, 7, 3, 3, 3])
    """

    encoded: Tensor
    outputs: Tensor | None = None
    lengths: Tensor | None = None

    def repeat(self, k: int) -> "Memory":
        """Each batch row repeated ``k`` times in place (rows ``b*k .. b*k+k-1`` are copies of ``b``)."""
        return Memory(self.encoded.repeat_interleave(k, dim=0),
                      None if self.outputs is None else self.outputs.repeat_interleave(k, dim=1),
                      None if self.lengths is None else self.lengths.repeat_interleave(k))


@dataclass
class InitialContext:
    """What an initial-state policy may use: the sequence about to run, an encoding, the topology.

    :meth:`SequenceModel.initial` builds it; a policy reads what it needs and ignores the rest.

    >>> import torch
    >>> from statesim import InitialContext
    >>> context = InitialContext(inputs=torch.zeros(10, 4, 2), encoded=torch.ones(4, 8))
    >>> list(context.encoded.shape), context.prefix is None
    ([4, 8], True)
    """

    inputs: Tensor | None = None
    lengths: Tensor | None = None
    encoded: Tensor | None = None
    topology: "Topology | None" = None
    #: Steps that precede the sequence ``[K, B, F]`` (for policies that warm the system up on them).
    prefix: Tensor | None = None
    #: The conditioning encoder's whole memory (``encoded`` is its summary).
    memory: Memory | None = None


class InitialState(nn.Module):
    """Base of initial-state policies: ``forward(batch_size, ...) -> State`` for every named part.

    Register one with a :class:`statesim.Registration` in a plugin's ``statesim_initial_states`` hook; its
    ``__init__`` takes the model's ``state_spec`` and then its parameters as keywords.

    >>> import torch
    >>> from statesim import InitialState, PluginParams
    >>> class FillParams(PluginParams):
    ...     value: float = 0.0
    >>> class Fill(InitialState):
    ...     Params = FillParams
    ...     deterministic = True
    ...     def __init__(self, state_spec, value=0.0):
    ...         super().__init__(state_spec)
    ...         self.value = value
    ...     def forward(self, batch_size, *, device, dtype, context=None):
    ...         return {part: torch.full((batch_size, *shape), self.value, device=device, dtype=dtype)
    ...                 for part, shape in self.state_spec.items()}
    >>> policy = Fill.from_params({"h": (3,)}, FillParams(value=0.5))
    >>> policy(2, device="cpu", dtype=torch.float32)["h"].tolist()
    [[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]]
    """

    Params: ClassVar[type[BaseModel]] = PluginParams
    #: Whether the policy gives the same state every time it is called with the same context (no random
    #: draw): an export can then ship the state itself. Declared, never probed; a policy whose randomness
    #: depends on its parameters overrides this with a property.
    deterministic: ClassVar[bool] = False
    #: What the policy needs from the model around it, e.g. ``{"encoding"}`` (an encoder's output in
    #: ``InitialContext.encoded``). Validation refuses it where neither the scenario nor the topology supplies
    #: each need (see :attr:`Scenario.supplies`), so a combination that validates can run.
    needs: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def requires(cls, params: BaseModel) -> frozenset[str]:
        """What the policy needs with these parameters (``needs`` unless a parameter changes it)."""
        return cls.needs

    def __init__(self, state_spec: dict[str, tuple[int, ...]]) -> None:
        super().__init__()
        self.state_spec = dict(state_spec)

    def forward(self, batch_size: int, *, device: torch.device | str, dtype: torch.dtype,
                context: InitialContext | None = None) -> State:
        """The state at ``t = 0`` for a batch: every part of ``state_spec``, ``[batch_size, *shape]``.

        >>> import torch
        >>> from statesim.builtin.initial_states import Random
        >>> policy = Random({"h": (3,)}, scale=0.1, seed=0)
        >>> list(policy(4, device="cpu", dtype=torch.float32)["h"].shape)
        [4, 3]
        """
        raise NotImplementedError

    @classmethod
    def from_params(cls, state_spec: dict[str, tuple[int, ...]], params: BaseModel) -> "InitialState":
        """Build from validated YAML parameters."""
        return cls(state_spec, **dict(params))


class Topology(nn.Module):
    """Base of topologies: run cells over a sequence through the engine; same result shape as a cell's unroll.

    A topology's ``__init__`` takes ``input_size``, a ``cell_factory`` (``input size -> Cell``, the YAML's
    ``model.cell``) and its parameters; it names every state part of every cell it holds.

    >>> import torch
    >>> from statesim import Topology, PluginParams, unroll
    >>> from statesim.builtin.cells import LSTMCell
    >>> class Single(Topology):
    ...     Params = PluginParams
    ...     def __init__(self, input_size, cell_factory):
    ...         super().__init__(input_size)
    ...         self.cell = cell_factory(input_size)
    ...     @property
    ...     def state_spec(self):
    ...         return self.cell.state_spec
    ...     @property
    ...     def output_size(self):
    ...         return self.cell.output_size
    ...     def forward(self, inputs, state, *, lengths=None, forcing=None, return_states=False, t0=0):
    ...         return unroll(self.cell, inputs, state, lengths=lengths, forcing=forcing,
    ...                       return_states=return_states, t0=t0)
    ...     def as_cell(self):
    ...         return self.cell
    >>> topology = Single.from_params(2, lambda size: LSTMCell(size, hidden_size=3), PluginParams())
    >>> topology(torch.zeros(5, 4, 2), topology.as_cell().zero_state(4)).outputs.shape
    torch.Size([5, 4, 3])
    """

    Params: ClassVar[type[BaseModel]] = PluginParams
    #: What the topology gives the model's initial-state policy, e.g. ``{"encoding"}`` for an encoder-decoder
    #: (its encoder's final state); matched against :attr:`InitialState.needs` at validation.
    supplies: ClassVar[frozenset[str]] = frozenset()
    #: What the topology needs from the scenario, beyond ``{"source"}`` when its parameters name an encoder.
    needs: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def requires(cls, params: BaseModel) -> frozenset[str]:
        """What the topology needs from the scenario with these parameters: a source to encode if it has an
        encoder (:meth:`encoder_spec`), and its declared ``needs``."""
        return cls.needs | ({"source"} if cls.encoder_spec(params) is not None else frozenset())

    @classmethod
    def offers(cls, params: BaseModel) -> frozenset[str]:
        """What the topology gives the scenario and the policy with these parameters: its ``supplies``,
        ``{"encoder"}`` when it runs a sequence encoder (:meth:`encoder_spec`), and ``{"stepping"}`` when it
        can advance one tick at a time (:meth:`steppable`)."""
        return (cls.supplies | ({"encoder"} if cls.encoder_spec(params) is not None else frozenset())
                | ({"stepping"} if cls.steppable(params) else frozenset()))

    @classmethod
    def steppable(cls, params: BaseModel) -> bool:
        """Whether a topology with these parameters can run one tick at a time (:meth:`as_cell` gives a cell)."""
        return True

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
        """Run the whole sequence ``[T, B, F]`` from ``state``; the arguments mean what they mean to :func:`unroll`.

        >>> import torch, statesim
        >>> from statesim.config import validate_model
        >>> registry = statesim.build_plugin_host(autoload=False).registry
        >>> config = validate_model({"cell": {"type": "gru", "hidden_size": 3}, "topology": {"type": "stacked",
        ...                          "layers": 2}}, registry)
        >>> topology = statesim.build_model(registry, config, input_size=2).topology
        >>> state = {part: torch.zeros(4, *shape) for part, shape in topology.state_spec.items()}
        >>> traj = topology(torch.zeros(5, 4, 2), state, lengths=torch.tensor([5, 5, 2, 1]))
        >>> list(traj.outputs.shape), sorted(traj.final_state)
        ([5, 4, 3], ['layer0.h', 'layer1.h'])
        """
        raise NotImplementedError

    def as_cell(self) -> Cell | None:
        """A cell that steps this topology one tick (None when it needs the whole sequence).

        >>> import torch, statesim
        >>> from statesim.config import validate_model
        >>> registry = statesim.build_plugin_host(autoload=False).registry
        >>> def topology(spec):
        ...     config = validate_model({"cell": {"type": "gru", "hidden_size": 3}, "topology": spec}, registry)
        ...     return statesim.build_model(registry, config, input_size=2).topology
        >>> topology({"type": "stacked", "layers": 2}).as_cell().state_spec
        {'layer0.h': (3,), 'layer1.h': (3,)}
        >>> topology({"type": "bidirectional"}).as_cell() is None
        True
        """
        return None

    def condition(self, memory: Memory | None) -> "Topology":
        """This topology reading a conditioning encoder's ``memory`` (attention); itself when it reads none."""
        return self

    @classmethod
    def encoder_spec(cls, params: BaseModel) -> Any:
        """The ``TopologySpec`` of the sequence encoder this topology's parameters name (None: none).

        A model built with a conditioning encoder that runs a topology (``encoder: {type: sequence}``) runs
        this one; ``encoder_decoder`` names it as ``topology.encoder``.
        """
        return None

    @classmethod
    def from_params(cls, input_size: int, cell_factory: CellFactory, params: BaseModel) -> "Topology":
        """Build from validated YAML parameters."""
        # A subclass's __init__ takes the cell factory and its parameters; the base's takes neither.
        return cls(input_size, cell_factory, **dict(params))  # type: ignore[call-arg]

    @classmethod
    def from_config(cls, input_size: int, cell_factory: CellFactory, params: BaseModel,
                    registry: Registry) -> "Topology":
        """Build with the registry at hand (what :func:`build_model` calls).

        Defaults to :meth:`from_params`; a topology whose parameters name further components (an
        encoder-decoder's encoder and decoder topologies, a second cell) overrides this to build them.
        """
        return cls.from_params(input_size, cell_factory, params)


class EncoderParams(PluginParams):
    """Base of conditioning-encoder parameters (written by the scenario that builds the model).

    >>> from statesim import EncoderParams
    >>> class BagParams(EncoderParams):
    ...     features: int = 8
    >>> BagParams()
    BagParams(features=8)
    """


class Encoder(nn.Module):
    """Base of conditioning encoders: read a sequence's condition once, return its :class:`Memory`.

    ``forward(condition, lengths)`` gets the condition with the sequences on dim 1 (``[S, B, ...]`` or
    ``[1, B, C, H, W]``) and their lengths (or None). Register one in a plugin's ``statesim_encoders`` hook;
    a scenario names it in ``ctx.build_model(..., encoder={"type": NAME, ...})``.

    >>> import torch
    >>> from statesim import Encoder, EncoderParams, Memory
    >>> class Mean(Encoder):
    ...     Params = EncoderParams
    ...     @property
    ...     def encoded_size(self):
    ...         return 2
    ...     def forward(self, condition, lengths=None):
    ...         return Memory(condition.mean(dim=0))
    >>> Mean()(torch.ones(7, 4, 2)).encoded.shape
    torch.Size([4, 2])
    """

    Params: ClassVar[type[BaseModel]] = EncoderParams

    @property
    def encoded_size(self) -> int:
        """Size E of ``Memory.encoded``."""
        raise NotImplementedError

    @property
    def memory_size(self) -> int | None:
        """Size H of ``Memory.outputs`` per step (None when the memory has no steps to attend to)."""
        return None

    def forward(self, condition: Tensor, lengths: Tensor | None = None) -> Memory:
        """The memory of ``condition``."""
        raise NotImplementedError

    @classmethod
    def from_config(cls, params: BaseModel, registry: Registry, cell_factory: CellFactory,
                    topology_spec: Any) -> "Encoder":
        """Build from validated parameters; ``topology_spec`` is the model topology's :meth:`Topology.encoder_spec`."""
        return cls(**dict(params))


class Standardise(nn.Module):
    """Fixed z-scores inside a model: inputs ``(x - mean) / std`` on the way in, outputs ``y * std + mean`` on
    the way out, so a model trained on normalised data reads and writes the data's own units wherever it runs
    (trainer, ``statesim.embed``, ``statesim export``). The statistics are buffers: checkpoints store them.

    >>> import torch
    >>> from statesim.model import Standardise
    >>> scaling = Standardise({"input_mean": [1.0], "input_std": [2.0], "output_mean": [10.0], "output_std": [5.0]})
    >>> scaling.inputs(torch.tensor([[3.0]])).item(), scaling.outputs(torch.tensor([[1.0]])).item()
    (1.0, 15.0)
    """

    input_mean: Tensor | None
    input_std: Tensor | None
    output_mean: Tensor | None
    output_std: Tensor | None

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__()
        for name in ("input_mean", "input_std", "output_mean", "output_std"):
            values = spec.get(name)
            self.register_buffer(name, None if values is None else torch.tensor(values, dtype=torch.float32))
        #: The statistics as plain JSON data (what build_spec records to rebuild the model).
        self.spec = {k: (None if v is None else [float(x) for x in v]) for k, v in spec.items()}

    def inputs(self, x: Tensor) -> Tensor:
        """``(x - mean) / std`` (unchanged without input statistics)."""
        if self.input_mean is None or self.input_std is None:
            return x
        return (x - self.input_mean) / self.input_std

    def outputs(self, y: Tensor) -> Tensor:
        """``y * std + mean`` (unchanged without output statistics)."""
        if self.output_mean is None or self.output_std is None:
            return y
        return y * self.output_std + self.output_mean


class SequenceModel(nn.Module):
    """A topology, its initial-state policy and an optional output head: what trainers and embedders use.

    Built by :func:`build_model` from a model config; calling it is :meth:`forward`.

    >>> import torch, statesim
    >>> from statesim.config import validate_model
    >>> registry = statesim.build_plugin_host(autoload=False).registry
    >>> config = validate_model({"cell": {"type": "lstm", "hidden_size": 3}}, registry)
    >>> model = statesim.build_model(registry, config, input_size=2, output_size=1)
    >>> model.state_spec, model.output_size
    ({'h': (3,), 'c': (3,)}, 1)
    """

    #: The engine's path policy for this model (statesim.fastpath): ``auto``, ``generic`` or a fast path's
    #: name, and whether the generic loop's step is torch.compile'd; None inherits the surrounding policy.
    fast_path: str | None = None
    compile_steps: bool | None = None

    def __init__(self, topology: Topology, initial_state: InitialState, head: nn.Module | None = None, *,
                 embed: nn.Embedding | None = None, encoder: Encoder | None = None,
                 scaling: Standardise | None = None) -> None:
        super().__init__()
        self.topology, self.initial_state, self.head = topology, initial_state, head
        #: Token ids -> the topology's inputs (None: the inputs are features already).
        self.embed = embed
        #: Reads each sequence's condition into a Memory (None: an unconditioned model).
        self.encoder = encoder
        #: Fixed input and output z-scores (None: the model reads and writes its data as they are).
        self.scaling = scaling
        #: How :func:`build_model` made this model (resolved model config and sizes, plain JSON data);
        #: trainers store it in checkpoints so a checkpoint alone can rebuild the model (statesim.embed).
        self.build_spec: dict[str, Any] | None = None

    @property
    def input_size(self) -> int:
        """Features per step the topology reads (the embedding size for a model with an input embedding)."""
        return self.topology.input_size

    @property
    def output_size(self) -> int:
        return self.head.out_features if isinstance(self.head, nn.Linear) else self.topology.output_size

    @property
    def state_spec(self) -> dict[str, tuple[int, ...]]:
        return self.topology.state_spec

    def encode(self, condition: Tensor, lengths: Tensor | None = None) -> Memory:
        """The conditioning encoder's memory of ``condition`` (sequences on dim 1)."""
        if self.encoder is None:
            raise StatesimError("this model has no conditioning encoder, so it takes no condition; build it with "
                                "build_model(..., encoder={type: ...}) or leave the condition out.")
        return self.encoder(condition, lengths)

    def initial(self, batch_size: int, *, inputs: Tensor | None = None, lengths: Tensor | None = None,
                encoded: Tensor | None = None, prefix: Tensor | None = None, memory: Memory | None = None) -> State:
        """The state at ``t = 0`` from the model's initial-state policy (which sees the memory's summary)."""
        device, dtype = device_and_dtype(self)  # also for a model without parameters (salamander_cpg)
        if encoded is None and memory is not None:
            encoded = memory.encoded
        context = InitialContext(inputs, lengths, encoded, self.topology, prefix, memory)
        return self.initial_state(batch_size, device=device, dtype=dtype, context=context)

    def read_in(self, inputs: Tensor) -> Tensor:
        """Apply the input embedding (token ids ``[...]`` -> ``[..., input_size]``) or the input z-scores, if any."""
        if self.embed is not None:
            return self.embed(inputs)
        return inputs if self.scaling is None else self.scaling.inputs(inputs)

    def read_out(self, outputs: Tensor) -> Tensor:
        """Apply the output head (to ``[..., O]``), then the output z-scores' inverse, if any."""
        outputs = outputs if self.head is None else self.head(outputs)
        return outputs if self.scaling is None else self.scaling.outputs(outputs)

    def forward(self, inputs: Tensor, state: State | None = None, *, lengths: Tensor | None = None,
                forcing: Forcing | None = None, return_states: bool = False, t0: int = 0,
                encoded: Tensor | None = None, prefix: Tensor | None = None, condition: Tensor | None = None,
                condition_lengths: Tensor | None = None, memory: Memory | None = None,
                sampling: float = 0.0) -> Trajectory:
        """Unroll over ``inputs [T, B, F]`` (or token ids ``[T, B]``); outputs pass through the head.

        ``condition`` (encoded here) or an already encoded ``memory`` conditions the run: its summary reaches
        the initial-state policy and the memory the topology. ``encoded`` and ``prefix`` reach the policy
        directly (see :class:`InitialContext`). ``sampling > 0`` (scheduled sampling, token inputs only):
        with that probability per sequence and step, the input is the model's own previous prediction.
        With ``state`` None the initial-state policy gives the state at ``t = 0``; ``lengths``, ``forcing``,
        ``return_states`` and ``t0`` mean what they mean to :func:`unroll`. Padded steps (``t >= lengths[b]``)
        have zero outputs, after the head too. ``model(inputs, ...)`` calls this (``SequenceModel.__call__`` is
        ``nn.Module``'s).

        >>> import torch, statesim
        >>> from statesim.config import validate_model
        >>> registry = statesim.build_plugin_host(autoload=False).registry
        >>> config = validate_model({"cell": {"type": "lstm", "hidden_size": 3}}, registry)
        >>> model = statesim.build_model(registry, config, input_size=2, output_size=1)
        >>> traj = model(torch.ones(5, 3, 2), lengths=torch.tensor([5, 3, 1]))
        >>> list(traj.outputs.shape), traj.outputs[1:, 2].abs().sum().item()  # the third sequence is 1 step long
        ([5, 3, 1], 0.0)
        """
        if memory is None and condition is not None:
            memory = self.encode(condition, condition_lengths)
        if state is None:
            state = self.initial(inputs.shape[1], inputs=inputs, lengths=lengths, encoded=encoded, prefix=prefix,
                                 memory=memory)
        if sampling > 0:
            if forcing:
                raise StatesimError("scheduled sampling steps the model on its own predictions; it takes no forcing. "
                                    "Leave sampling at 0 when forcing.")
            traj = self._sampled(inputs, state, lengths, memory, sampling, t0)
            return traj if return_states else Trajectory(traj.outputs, traj.final_state, None)
        decisions = self.__dict__.setdefault("engine_decisions", {})  # which path ran, and why (for the run log)
        with policies.scope(self.fast_path, self.compile_steps, decisions):
            traj = self.topology.condition(memory)(self.read_in(inputs), state, lengths=lengths, forcing=forcing,
                                                   return_states=return_states, t0=t0)
        outputs = self.read_out(traj.outputs)
        if lengths is not None and (self.head is not None or self.scaling is not None):
            mask = lengths_to_mask(torch.as_tensor(lengths, device=inputs.device), inputs.shape[0])
            outputs = outputs * mask.unsqueeze(-1).to(outputs.dtype)
        return Trajectory(outputs, traj.final_state, traj.states)

    def _sampled(self, inputs: Tensor, state: State, lengths: Tensor | None, memory: Memory | None,
                 sampling: float, t0: int) -> Trajectory:
        if self.embed is None or inputs.is_floating_point():
            raise StatesimError("scheduled sampling feeds back predicted tokens, so it needs a model with an input "
                                "embedding (build_model(..., input_vocab=N)) and token-id inputs.")
        return fed_back(self.step_cell(memory), state, self.read_in, self.read_out, inputs, lengths,
                        sampling=sampling, t0=t0)

    def step_cell(self, memory: Memory | None = None) -> Cell:
        """The cell that advances this model one tick (bound to ``memory`` for a topology that attends).

        Raises a NotSteppableError for topologies that need the whole sequence, or a memory not given.

        >>> import torch, statesim
        >>> from statesim.config import validate_model
        >>> registry = statesim.build_plugin_host(autoload=False).registry
        >>> config = validate_model({"cell": {"type": "lstm", "hidden_size": 3}}, registry)
        >>> cell = statesim.build_model(registry, config, input_size=2, output_size=1).step_cell()
        >>> y, state = statesim.step(cell, torch.ones(4, 2))  # before the head: the cell's own output
        >>> list(y.shape)
        [4, 3]
        """
        cell = self.topology.condition(memory).as_cell()
        if cell is None:
            if self.encoder is not None and memory is None:
                raise NotSteppableError(f"{type(self.topology).__name__} reads the conditioning encoder's memory at "
                                        f"every step; pass it: model.step_cell(model.encode(condition, lengths)).")
            raise NotSteppableError(f"{type(self.topology).__name__} needs the whole sequence and cannot be stepped "
                                    f"one tick at a time; use a unidirectional or stacked topology.")
        return cell


def fed_back(cell: Cell, state: State, embed: Callable[[Tensor], Tensor], head: Callable[[Tensor], Tensor],
             tokens: Tensor, lengths: Tensor | None = None, *, sampling: float,
             generator: torch.Generator | None = None, t0: int = 0) -> Trajectory:
    """Scheduled sampling (Bengio et al. 2015): logits ``[T, B, V]`` and the states of a decoder reading
    ``tokens [T, B]``, where each step's input is, with probability ``sampling`` per sequence, the embedding
    of its own previous argmax instead; stepped by one prepared engine stepper, since each input depends on
    the last output. Padded steps (``t >= lengths``) keep the state, as the engine's unroll does."""
    from statesim.engine import Stepper

    stepper = Stepper(cell)
    logits, previous, states = [], None, []
    for t in range(tokens.shape[0]):
        current = tokens[t]
        if previous is not None:
            coin = torch.rand(current.shape, generator=generator, device="cpu").to(current.device) < sampling
            current = torch.where(coin, previous.argmax(-1).detach(), current)
        y, new_state = stepper.step(embed(current), state, t0 + t)
        if lengths is not None:
            keep = t < lengths.to(current.device)
            new_state = {k: torch.where(keep.view(-1, *([1] * (v.dim() - 1))), v, state[k])
                         for k, v in new_state.items()}
        state = new_state
        states.append(state)
        previous = head(y)
        logits.append(previous)
    return Trajectory(torch.stack(logits), state, {k: torch.stack([s[k] for s in states]) for k in state})


def _filled(params: BaseModel, field: str, value: int | None) -> BaseModel:
    """``params`` with ``field`` set to ``value`` when the model declares it and leaves it unset."""
    if value is not None and field in type(params).model_fields and getattr(params, field) is None:
        return params.model_copy(update={field: value})
    return params


def build_encoder(registry: Registry, spec: dict[str, Any], topology_spec: Any, cell_factory: CellFactory) -> Encoder:
    """A registered conditioning encoder from ``{type: NAME, ...params}`` (plain data, as build_spec stores it)."""
    from pydantic import ValidationError

    spec = dict(spec)
    name = spec.pop("type", None)
    entry = registry.get("encoder", str(name)).record
    try:
        params = entry.params.model_validate(spec)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise StatesimError(f"conditioning encoder '{name}': {'.'.join(map(str, first['loc']))}: {first['msg']}. "
                            f"Fix the encoder description the scenario passes to build_model.") from None
    return entry.cls.from_config(params, registry, cell_factory, topology_spec)


def build_model(registry: Registry, config: Any, input_size: int, output_size: int | None = None, *,
                input_vocab: int | None = None, encoder: dict[str, Any] | None = None,
                scaling: dict[str, Any] | None = None) -> SequenceModel:
    """Build a :class:`SequenceModel` from a resolved ``ModelConfig`` and the data's sizes.

    ``input_vocab``: the inputs are token ids, embedded to ``input_size`` features. ``encoder``: the
    conditioning encoder, ``{type: NAME, ...params}`` of a registered one. A topology whose parameters
    declare ``memory_size`` and an initial-state policy whose parameters declare ``encoded_size`` get the
    encoder's sizes when they leave them unset, so the learned maps always bridge encoder and model. A head
    ``y = W h + b`` is added when ``output_size`` differs from the topology's (``model.head: auto``).
    ``scaling``: fixed z-scores, ``{input_mean, input_std, output_mean, output_std}`` lists (see
    :class:`Standardise`; either pair may be None), applied before the topology and after the head.

    >>> import torch, statesim
    >>> from statesim.config import validate_model
    >>> registry = statesim.build_plugin_host(autoload=False).registry
    >>> config = validate_model({"cell": {"type": "gru", "hidden_size": 8},
    ...                          "initial_state": {"type": "learned"}}, registry)
    >>> model = statesim.build_model(registry, config, input_size=2, output_size=1)
    >>> type(model.topology).__name__, type(model.initial_state).__name__, model.head
    ('Unidirectional', 'Learned', Linear(in_features=8, out_features=1, bias=True))
    """
    cell_entry = registry.get("cell", config.cell.type).record

    def make_cell(size: int) -> Cell:
        return cell_entry.cls.from_params(size, config.cell.params)

    topology_entry = registry.get("topology", config.topology.type).record
    topology_params = config.topology.params
    conditioning = None
    if encoder is not None:
        conditioning = build_encoder(registry, encoder, topology_entry.cls.encoder_spec(topology_params), make_cell)
        topology_params = _filled(topology_params, "memory_size", conditioning.memory_size)
    elif topology_entry.cls.encoder_spec(topology_params) is not None:
        raise StatesimError(f"model.topology '{config.topology.type}' reads a source through an encoder, but this "
                            f"scenario gives its model nothing to encode; use it in a scenario with a source "
                            f"(translation), or choose another topology.")
    topology = topology_entry.cls.from_config(input_size, make_cell, topology_params, registry)
    policy_entry = registry.get("initial_state", config.initial_state.type).record
    policy_params = _filled(config.initial_state.params, "encoded_size",
                            conditioning.encoded_size if conditioning is not None else None)
    policy = policy_entry.cls.from_params(topology.state_spec, policy_params)
    head: nn.Module | None = None
    wants_head = config.head == "linear" or (
        config.head == "auto" and output_size is not None and output_size != topology.output_size)
    if wants_head:
        head = nn.Linear(topology.output_size, output_size or topology.output_size, bias=config.head_bias)
    embed = nn.Embedding(input_vocab, input_size) if input_vocab else None
    model = SequenceModel(topology, policy, head, embed=embed, encoder=conditioning,
                          scaling=Standardise(scaling) if scaling is not None else None)
    model.fast_path, model.compile_steps = getattr(config, "fast_path", None), getattr(config, "compile", None)
    model.build_spec = {"model": config.model_dump(mode="json"), "input_size": input_size, "output_size": output_size}
    # who provided each component (distribution, version): a host without the plugin is told what to install
    chosen = components(config) + ([("encoder", str(encoder.get("type")))] if encoder is not None else [])
    model.build_spec["providers"] = provenance(registry, chosen)
    if input_vocab:
        model.build_spec["input_vocab"] = input_vocab
    if encoder is not None:
        model.build_spec["encoder"] = dict(encoder)
    if model.scaling is not None:
        model.build_spec["scaling"] = model.scaling.spec
    return model
