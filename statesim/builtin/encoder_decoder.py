"""Topology ``encoder_decoder`` and encoder ``sequence`` (the lecture's encoder-decoder RNN; GNMT when its
parts are stacks).

One model, the core :class:`~statesim.model.SequenceModel`: its conditioning encoder (``sequence``: token
embeddings or features, then the encoder topology named by ``topology.encoder``, any registered one)
reads the whole source and leaves a :class:`~statesim.model.Memory`: the encoder's outputs at every source
step and ``encoded``, its final state flattened into one vector ``s``. The topology, ``encoder_decoder``,
is the decoder (a steppable topology over any cell) generating the target; its state at ``t = 0`` comes
from the model's initial-state policy, which sees ``s`` as ``InitialContext.encoded`` (the ``encoded``
policy maps it through a learned layer). With attention (additive, Bahdanau et al.; or dot/"general",
Luong et al.) the decoder reads ``[input; context]`` where the context is the attention-weighted sum of
the encoder outputs, queried with the decoder's previous state (all parts flattened, so any cell can be
queried), and it outputs ``[y; context]``: :meth:`EncoderDecoder.condition` binds the memory, and the
engine steps the bound cell for greedy or beam decoding and scheduled sampling.
"""
from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from statesim.builtin.state_policies import flatten_state, state_size
from statesim.cell import Cell, State
from statesim.config import CellSpec, TopologySpec
from statesim.engine import Trajectory, lengths_to_mask, unroll
from statesim.errors import ShapeError, StatesimError
from statesim.forcing import Forcing
from statesim.hookimpl import hookimpl
from statesim.model import CellFactory, Encoder, EncoderParams, Memory, PluginParams, Topology
from statesim.registry import Registration, Registry


def _outputs(memory: Memory) -> Tensor:
    """The memory's per-step encoder outputs (EncoderDecoder.condition refuses a memory without them)."""
    if memory.outputs is None:
        raise ShapeError("attention needs per-step encoder outputs in the memory; this conditioning encoder gives "
                         "only a summary. Use attention: none.")
    return memory.outputs


class Attention(nn.Module):
    """Additive ``v^T tanh(W_q q + W_k k)`` or dot ``(W q) . k`` scores, softmax over the real source steps."""

    def __init__(self, kind: str, query_size: int, key_size: int, size: int) -> None:
        super().__init__()
        self.kind = kind
        if kind == "additive":
            self.query = nn.Linear(query_size, size, bias=False)
            self.key = nn.Linear(key_size, size, bias=True)
            self.v = nn.Linear(size, 1, bias=False)
        else:
            self.query = nn.Linear(query_size, key_size, bias=False)

    def keys(self, memory: Memory) -> Tensor:
        """Per-memory work done once, not once per decoder step."""
        outputs = _outputs(memory)
        return self.key(outputs) if self.kind == "additive" else outputs

    def forward(self, query: Tensor, keys: Tensor, memory: Memory) -> tuple[Tensor, Tensor]:
        """Context ``[B, H]`` and weights ``[B, S]`` for a query ``[B, Q]``."""
        if self.kind == "additive":
            scores = self.v(torch.tanh(keys + self.query(query).unsqueeze(0))).squeeze(-1)  # [S, B]
        else:
            scores = (keys * self.query(query).unsqueeze(0)).sum(-1)
        outputs = _outputs(memory)
        if memory.lengths is None:
            raise ShapeError("attention needs the source lengths in the memory; this conditioning encoder gives "
                             "per-step outputs without them.")
        steps = outputs.shape[0]
        valid = lengths_to_mask(memory.lengths.to(scores.device), steps)
        weights = torch.softmax(scores.masked_fill(~valid, float("-inf")), dim=0)
        context = (weights.unsqueeze(-1) * outputs).sum(0)
        return context, weights.T


class AttentionCell(Cell):
    """A decoder cell bound to a memory: reads ``[x; context]``, outputs ``[y; context]``; same state parts."""

    def __init__(self, inner: Cell, attention: Attention, memory: Memory) -> None:
        super().__init__(inner.input_size - _outputs(memory).shape[-1])
        self.inner, self.attention, self.memory = inner, attention, memory
        self.keys = attention.keys(memory)

    @property
    def state_spec(self) -> dict[str, tuple[int, ...]]:
        return self.inner.state_spec

    @property
    def output_size(self) -> int:
        return self.inner.output_size + _outputs(self.memory).shape[-1]

    def forward(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        context, _ = self.attention(flatten_state(state), self.keys, self.memory)
        y, new_state = self.inner(torch.cat([x, context], dim=-1), state)
        return torch.cat([y, context], dim=-1), new_state


def cell_factory_for(registry: Registry, spec: CellSpec) -> CellFactory:
    """A factory of cells of a registered kind, from a resolved spec."""
    entry = registry.get("cell", spec.type).record
    return lambda size: entry.cls.from_params(size, spec.params)


def build_topology(registry: Registry, spec: TopologySpec, input_size: int, cell_factory: CellFactory) -> Topology:
    """A registered topology from a resolved spec."""
    entry = registry.get("topology", spec.type).record
    return entry.cls.from_config(input_size, cell_factory, spec.params, registry)


class EncoderDecoderParams(PluginParams):
    encoder: TopologySpec = Field(default_factory=lambda: {"type": "unidirectional"}, validate_default=True,
                                  description="topology reading the source, e.g. {type: stacked, layers: 2, "
                                              "bidirectional_first: true}")
    decoder: TopologySpec = Field(default_factory=lambda: {"type": "unidirectional"}, validate_default=True,
                                  description="topology generating the target; must be steppable (unidirectional "
                                              "or stacked without a bidirectional first layer)")
    decoder_cell: CellSpec | None = Field(None, description="the decoder's cell when it differs from model.cell")
    attention: Literal["none", "additive", "dot"] = Field("none", description="attention over the encoder outputs")
    attention_size: int = Field(64, gt=0, description="hidden size of additive attention")
    memory_size: int | None = Field(None, gt=0, description="size of the encoder's outputs per source step; set "
                                                            "from the model's conditioning encoder when omitted")


class EncoderDecoder(Topology):
    """The decoder over the target, started from the encoding; optional attention over the encoder's memory."""

    Params = EncoderDecoderParams

    def __init__(self, input_size: int, decoder: Topology, attention: str = "none", attention_size: int = 64,
                 memory_size: int | None = None) -> None:
        super().__init__(input_size)
        self.decoder, self.attention_kind = decoder, attention
        if attention != "none" and memory_size is None:
            raise StatesimError("encoder_decoder with attention needs the encoder's output size (memory_size); "
                                "build the model with its conditioning encoder (build_model(..., encoder=...)).")
        self.memory_size = 0 if attention == "none" or memory_size is None else memory_size  # None raised above
        if decoder.input_size != input_size + self.memory_size:
            raise ShapeError(f"encoder_decoder: the decoder reads {decoder.input_size} features, expected "
                             f"{input_size + self.memory_size}.")
        if decoder.as_cell() is None:
            raise StatesimError(f"encoder_decoder: the decoder topology {type(decoder).__name__} cannot be stepped one "
                                f"tick at a time, which generation needs; use unidirectional or stacked without "
                                f"bidirectional_first for the decoder.")
        self.attention = (Attention(attention, state_size(decoder.state_spec), self.memory_size, attention_size)
                          if attention != "none" else None)

    @classmethod
    def from_config(cls, input_size: int, cell_factory: CellFactory, params: Any,
                    registry: Registry) -> "EncoderDecoder":
        decoder_factory = cell_factory_for(registry, params.decoder_cell) if params.decoder_cell else cell_factory
        memory_size = (params.memory_size or 0) if params.attention != "none" else 0
        decoder = build_topology(registry, params.decoder, input_size + memory_size, decoder_factory)
        return cls(input_size, decoder, params.attention, params.attention_size, params.memory_size)

    @classmethod
    def from_params(cls, input_size: int, cell_factory: CellFactory, params: Any) -> "EncoderDecoder":
        raise StatesimError("encoder_decoder builds its decoder from the registry; build it with "
                            "statesim.model.build_model or Topology.from_config.")

    @classmethod
    def encoder_spec(cls, params: Any) -> TopologySpec:
        """The source's topology: the model's ``sequence`` encoder runs it."""
        return params.encoder

    # ------------------------------------------------------------------ contract
    @property
    def state_spec(self) -> dict[str, tuple[int, ...]]:
        """The decoder's state parts (the state an initial-state policy fills from the encoding)."""
        return self.decoder.state_spec

    @property
    def output_size(self) -> int:
        return self.decoder.output_size + self.memory_size

    def condition(self, memory: Memory | None) -> Topology:
        """The decoder, bound to ``memory`` when it attends."""
        if self.attention is None:
            return self.decoder
        if memory is None:
            return self  # cannot run or step without the memory: forward and as_cell say so
        if memory.outputs is None:
            raise ShapeError("encoder_decoder with attention needs per-step encoder outputs in the memory; this "
                             "conditioning encoder gives only a summary. Use attention: none.")
        return _Attending(self, memory)

    def forward(self, inputs: Tensor, state: State, *, lengths: Tensor | None = None,
                forcing: Forcing | None = None, return_states: bool = False, t0: int = 0) -> Trajectory:
        """Teacher-forced decoder run over its inputs ``[T, B, F]`` (attention needs :meth:`condition` first)."""
        if self.attention is not None:
            raise ShapeError("encoder_decoder with attention reads the encoder's memory: run it through its model "
                             "(model(inputs, condition=source)) or topology.condition(memory).")
        return self.decoder(inputs, state, lengths=lengths, forcing=forcing, return_states=return_states, t0=t0)

    def as_cell(self) -> Cell | None:
        """The decoder's cell without attention; None with attention (bind a memory with :meth:`condition`)."""
        return self.decoder.as_cell() if self.attention is None else None


class _Attending(Topology):
    """An attending encoder_decoder bound to one memory: what the model runs and steps for that batch."""

    def __init__(self, parent: EncoderDecoder, memory: Memory) -> None:
        super().__init__(parent.input_size)
        self.parent, self.memory = parent, memory
        self.train(parent.training)

    @property
    def state_spec(self) -> dict[str, tuple[int, ...]]:
        return self.parent.state_spec

    @property
    def output_size(self) -> int:
        return self.parent.output_size

    def as_cell(self) -> Cell:
        inner, attention = self.parent.decoder.as_cell(), self.parent.attention
        assert inner is not None and attention is not None  # EncoderDecoder.__init__ and condition checked both
        cell = AttentionCell(inner, attention, self.memory)
        cell.train(self.training)
        return cell

    def forward(self, inputs: Tensor, state: State, *, lengths: Tensor | None = None,
                forcing: Forcing | None = None, return_states: bool = False, t0: int = 0) -> Trajectory:
        return unroll(self.as_cell(), inputs, state, lengths=lengths, forcing=forcing,
                      return_states=return_states, t0=t0)


class SequenceEncoderParams(EncoderParams):
    vocab: int | None = Field(None, gt=0, description="source vocabulary size: the source is token ids, embedded "
                                                      "to `size`; omit for a source of feature vectors")
    size: int = Field(..., gt=0, description="features per source step (the embedding size with a vocabulary)")


class SequenceEncoder(Encoder):
    """Embeds a source ``[S, B]`` of ids (or takes ``[S, B, size]`` features) and runs the encoder topology."""

    Params = SequenceEncoderParams

    def __init__(self, topology: Topology, size: int, vocab: int | None = None) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, size) if vocab else None
        self.topology = topology

    @classmethod
    def from_config(cls, params: Any, registry: Registry, cell_factory: CellFactory,
                    topology_spec: Any) -> "SequenceEncoder":
        if topology_spec is None:
            raise StatesimError("the 'sequence' encoder runs the source topology the model's topology names "
                                "(topology: {type: encoder_decoder, encoder: {...}}); this model's topology names "
                                "none.")
        return cls(build_topology(registry, topology_spec, params.size, cell_factory), params.size, params.vocab)

    @property
    def encoded_size(self) -> int:
        """Size of the summary ``s``: the encoder's final state, all parts flattened."""
        return state_size(self.topology.state_spec)

    @property
    def memory_size(self) -> int:
        return self.topology.output_size

    def forward(self, condition: Tensor, lengths: Tensor | None = None) -> Memory:
        """Run the encoder over the source from zeros."""
        source = self.embed(condition) if self.embed is not None else condition
        batch = source.shape[1]
        if lengths is None:
            lengths = torch.full((batch,), source.shape[0], dtype=torch.long, device=source.device)
        state = {name: torch.zeros((batch, *shape), device=source.device, dtype=source.dtype)
                 for name, shape in self.topology.state_spec.items()}
        traj = self.topology(source, state, lengths=lengths)
        return Memory(flatten_state(traj.final_state), traj.outputs, lengths)


@hookimpl
def statesim_topologies() -> list[Registration]:
    """Register encoder_decoder."""
    return [Registration("encoder_decoder", EncoderDecoder, EncoderDecoderParams,
                         "the decoder of an encoder-decoder: generates the target from the source's encoding; "
                         "optional additive/dot attention over the encoder's outputs")]


@hookimpl
def statesim_encoders() -> list[Registration]:
    """Register the sequence encoder."""
    return [Registration("sequence", SequenceEncoder, SequenceEncoderParams,
                         "embeds a source of token ids (or takes features) and runs the encoder topology; memory: "
                         "its outputs and final state")]


__all__ = ["Attention", "AttentionCell", "EncoderDecoder", "SequenceEncoder"]
