"""Topology ``encoder_decoder`` (the lecture's encoder-decoder RNN; GNMT when its parts are stacks).

The encoder (any registered topology: unidirectional, bidirectional, stacked) reads the whole source and
yields a :class:`Memory`: its outputs at every source step and ``encoded``, its final state flattened
into one vector ``s``. The decoder (a steppable topology over any cell) generates the target; its state
at ``t = 0`` comes from the model's initial-state policy, which sees ``s`` as ``InitialContext.encoded``
(the ``encoded`` policy maps it through a learned layer). With attention (additive, Bahdanau et al.; or
dot/"general", Luong et al.) the decoder reads ``[input; context]`` where the context is the
attention-weighted sum of the encoder outputs, queried with the decoder's previous state (all parts
flattened, so any cell can be queried), and it outputs ``[y; context]``.

Contract extension (general, for any conditioned sequence model): :meth:`EncoderDecoder.encode` gives a
:class:`Memory`; :meth:`EncoderDecoder.forward` takes the decoder's inputs plus ``memory=``; and
:meth:`EncoderDecoder.decoder_cell` returns a cell bound to a memory, stepped by the engine for greedy or
beam decoding and scheduled sampling. :class:`Seq2SeqModel` adds token embeddings and the output head.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from statesim.builtin.state_policies import flatten_state, state_size
from statesim.cell import Cell, State
from statesim.config import CellSpec, InitialStateSpec, TopologySpec
from statesim.engine import Trajectory, lengths_to_mask, unroll
from statesim.errors import ShapeError, StatesimError
from statesim.forcing import Forcing
from statesim.hookimpl import hookimpl
from statesim.model import CellFactory, InitialContext, InitialState, PluginParams, Topology
from statesim.registry import Registration, Registry
from statesim.builtin.seq2seq import (PairData, beam_decode, decoder_logits, greedy_decode, sequence_cross_entropy)


@dataclass
class Memory:
    """What the encoder leaves the decoder: outputs ``[S, B, H]``, source lengths ``[B]``, summary ``[B, E]``."""

    outputs: Tensor
    lengths: Tensor
    encoded: Tensor

    def repeat(self, k: int) -> "Memory":
        """Each batch row repeated ``k`` times in place (rows ``b*k .. b*k+k-1`` are copies of ``b``)."""
        return Memory(self.outputs.repeat_interleave(k, dim=1), self.lengths.repeat_interleave(k),
                      self.encoded.repeat_interleave(k, dim=0))


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
        return self.key(memory.outputs) if self.kind == "additive" else memory.outputs

    def forward(self, query: Tensor, keys: Tensor, memory: Memory) -> tuple[Tensor, Tensor]:
        """Context ``[B, H]`` and weights ``[B, S]`` for a query ``[B, Q]``."""
        if self.kind == "additive":
            scores = self.v(torch.tanh(keys + self.query(query).unsqueeze(0))).squeeze(-1)  # [S, B]
        else:
            scores = (keys * self.query(query).unsqueeze(0)).sum(-1)
        steps = memory.outputs.shape[0]
        valid = lengths_to_mask(memory.lengths.to(scores.device), steps)
        weights = torch.softmax(scores.masked_fill(~valid, float("-inf")), dim=0)
        context = (weights.unsqueeze(-1) * memory.outputs).sum(0)
        return context, weights.T


class AttentionCell(Cell):
    """A decoder cell bound to a memory: reads ``[x; context]``, outputs ``[y; context]``; same state parts."""

    def __init__(self, inner: Cell, attention: Attention, memory: Memory) -> None:
        super().__init__(inner.input_size - memory.outputs.shape[-1])
        self.inner, self.attention, self.memory = inner, attention, memory
        self.keys = attention.keys(memory)

    @property
    def state_spec(self) -> dict[str, tuple[int, ...]]:
        return self.inner.state_spec

    @property
    def output_size(self) -> int:
        return self.inner.output_size + self.memory.outputs.shape[-1]

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
    encoder: TopologySpec = Field(default_factory=lambda: TopologySpec(type="unidirectional"),
                                  description="topology reading the source, e.g. {type: stacked, layers: 2, "
                                              "bidirectional_first: true}")
    decoder: TopologySpec = Field(default_factory=lambda: TopologySpec(type="unidirectional"),
                                  description="topology generating the target; must be steppable (unidirectional "
                                              "or stacked without a bidirectional first layer)")
    decoder_cell: CellSpec | None = Field(None, description="the decoder's cell when it differs from model.cell")
    attention: Literal["none", "additive", "dot"] = Field("none", description="attention over the encoder outputs")
    attention_size: int = Field(64, gt=0, description="hidden size of additive attention")
    target_input_size: int | None = Field(None, gt=0, description="size of the decoder's per-step input "
                                                                  "(the target embedding); defaults to the source's")


class EncoderDecoder(Topology):
    """Encoder over the source, decoder over the target started from the encoding; optional attention."""

    Params = EncoderDecoderParams

    def __init__(self, input_size: int, encoder: Topology, decoder: Topology, attention: str = "none",
                 attention_size: int = 64, target_input_size: int | None = None) -> None:
        super().__init__(input_size)
        self.encoder, self.decoder, self.attention_kind = encoder, decoder, attention
        self.target_input_size = target_input_size or input_size
        memory_size = encoder.output_size if attention != "none" else 0
        if decoder.input_size != self.target_input_size + memory_size:
            raise ShapeError(f"encoder_decoder: the decoder reads {decoder.input_size} features, expected "
                             f"{self.target_input_size + memory_size}.")
        if decoder.as_cell() is None:
            raise StatesimError(f"encoder_decoder: the decoder topology {type(decoder).__name__} cannot be stepped one "
                                f"tick at a time, which generation needs; use unidirectional or stacked without "
                                f"bidirectional_first for the decoder.")
        self.attention = (Attention(attention, state_size(decoder.state_spec), encoder.output_size, attention_size)
                          if attention != "none" else None)

    @classmethod
    def from_config(cls, input_size: int, cell_factory: CellFactory, params: Any,
                    registry: Registry) -> "EncoderDecoder":
        encoder = build_topology(registry, params.encoder, input_size, cell_factory)
        decoder_factory = cell_factory_for(registry, params.decoder_cell) if params.decoder_cell else cell_factory
        target_size = params.target_input_size or input_size
        memory_size = encoder.output_size if params.attention != "none" else 0
        decoder = build_topology(registry, params.decoder, target_size + memory_size, decoder_factory)
        return cls(input_size, encoder, decoder, params.attention, params.attention_size, target_size)

    @classmethod
    def from_params(cls, input_size: int, cell_factory: CellFactory, params: Any) -> "EncoderDecoder":
        raise StatesimError("encoder_decoder builds its encoder and decoder from the registry; build it with "
                            "statesim.model.build_model or Topology.from_config.")

    # ------------------------------------------------------------------ contract
    @property
    def state_spec(self) -> dict[str, tuple[int, ...]]:
        """The decoder's state parts (the state an initial-state policy fills from the encoding)."""
        return self.decoder.state_spec

    @property
    def output_size(self) -> int:
        return self.decoder.output_size + (self.encoder.output_size if self.attention is not None else 0)

    @property
    def encoded_size(self) -> int:
        """Size of the summary ``s``: the encoder's final state, all parts flattened."""
        return state_size(self.encoder.state_spec)

    def encode(self, source: Tensor, lengths: Tensor | None = None, state: State | None = None) -> Memory:
        """Run the encoder over ``source [S, B, F]`` from zeros (or ``state``)."""
        batch = source.shape[1]
        if lengths is None:
            lengths = torch.full((batch,), source.shape[0], dtype=torch.long, device=source.device)
        if state is None:
            state = {name: torch.zeros((batch, *shape), device=source.device, dtype=source.dtype)
                     for name, shape in self.encoder.state_spec.items()}
        traj = self.encoder(source, state, lengths=lengths)
        return Memory(traj.outputs, lengths, flatten_state(traj.final_state))

    def decoder_cell(self, memory: Memory | None) -> Cell:
        """The decoder as one steppable cell, bound to ``memory`` when it attends."""
        cell = self.decoder.as_cell()
        if self.attention is None:
            return cell
        if memory is None:
            raise ShapeError("encoder_decoder with attention needs the encoder's memory (memory=...).")
        cell = AttentionCell(cell, self.attention, memory)
        cell.train(self.training)
        return cell

    def forward(self, inputs: Tensor, state: State, *, lengths: Tensor | None = None,
                forcing: Forcing | None = None, return_states: bool = False, t0: int = 0,
                memory: Memory | None = None) -> Trajectory:
        """Teacher-forced decoder run over its inputs ``[T, B, F]`` given the encoder's ``memory``."""
        if memory is None:
            raise ShapeError("encoder_decoder needs the source: call encode(source) and pass memory=..., or use "
                             "statesim.builtin.encoder_decoder.Seq2SeqModel.")
        if self.attention is None:
            return self.decoder(inputs, state, lengths=lengths, forcing=forcing, return_states=return_states, t0=t0)
        return unroll(self.decoder_cell(memory), inputs, state, lengths=lengths, forcing=forcing,
                      return_states=return_states, t0=t0)

    def as_cell(self) -> Cell | None:
        """None: the decoder needs a memory; use :meth:`decoder_cell`."""
        return None


class Seq2SeqModel(nn.Module):
    """Embeddings, an :class:`EncoderDecoder`, the decoder's initial-state policy and the output head."""

    def __init__(self, topology: EncoderDecoder, initial_state: InitialState, source_vocab: int | None,
                 target_vocab: int, embed_size: int) -> None:
        super().__init__()
        self.topology, self.initial_state = topology, initial_state
        self.source_embed = nn.Embedding(source_vocab, embed_size) if source_vocab else nn.Identity()
        self.target_embed = nn.Embedding(target_vocab, embed_size)
        self.head = nn.Linear(topology.output_size, target_vocab)

    def _ref(self) -> Tensor:
        return self.head.weight

    def encode(self, batch: PairData) -> Memory:
        """The encoder's memory of a batch's sources."""
        source = self.source_embed(batch.source)
        return self.topology.encode(source, batch.source_lengths)

    def start_state(self, memory: Memory) -> State:
        """The decoder's state at ``t = 0`` from the initial-state policy, which sees the encoding."""
        ref = self._ref()
        context = InitialContext(encoded=memory.encoded, lengths=memory.lengths, topology=self.topology)
        return self.initial_state(memory.encoded.shape[0], device=ref.device, dtype=ref.dtype, context=context)

    def logits(self, batch: PairData, *, sampling: float = 0.0) -> Tensor:
        """Teacher-forced (optionally scheduled-sampling) logits ``[T, B, V]`` of the batch's targets."""
        memory = self.encode(batch)
        state = self.start_state(memory)
        inputs = batch.decoder_inputs()
        if sampling <= 0:
            traj = self.topology(self.target_embed(inputs), state, lengths=batch.target_lengths, memory=memory)
            return self.head(traj.outputs)
        return decoder_logits(self.topology.decoder_cell(memory), state, self.target_embed, self.head, inputs,
                              batch.target_lengths, sampling=sampling)

    def loss(self, batch: PairData, *, sampling: float = 0.0) -> Tensor:
        """Mean token cross-entropy of the batch's targets."""
        return sequence_cross_entropy(self.logits(batch, sampling=sampling), batch.target, batch.mask())

    @torch.no_grad()
    def generate(self, batch: PairData, *, beam_size: int = 1, max_len: int = 50,
                 length_penalty: float = 0.0) -> list[list[int]]:
        """Token ids per source by greedy (``beam_size`` 1) or beam search."""
        memory = self.encode(batch)
        state = self.start_state(memory)
        if beam_size <= 1:
            return greedy_decode(self.topology.decoder_cell(memory), state, self.target_embed, self.head,
                                 max_len=max_len)[0]
        return beam_decode(lambda k: self.topology.decoder_cell(memory.repeat(k)), state, self.target_embed,
                           self.head, beam_size=beam_size, max_len=max_len, length_penalty=length_penalty)[0]


def build_policy(registry: Registry, spec: InitialStateSpec, state_spec: dict[str, tuple[int, ...]],
                 encoded_size: int) -> InitialState:
    """Build a policy for a model whose encoder yields ``encoded_size`` features.

    A policy with an ``encoded_size`` parameter left unset gets the encoder's size, so the learned map
    always bridges encoder and decoder, whatever their sizes.
    """
    params = spec.params
    if "encoded_size" in type(params).model_fields and getattr(params, "encoded_size") is None:
        params = params.model_copy(update={"encoded_size": encoded_size})
    return registry.get("initial_state", spec.type).record.cls.from_params(state_spec, params)


def build_seq2seq(registry: Registry, config: Any, *, source_vocab: int | None, target_vocab: int,
                  embed_size: int, source_size: int | None = None) -> Seq2SeqModel:
    """A :class:`Seq2SeqModel` from a resolved ``ModelConfig`` whose topology is ``encoder_decoder``.

    Sources are token ids (``source_vocab``) or, with ``source_vocab=None``, feature vectors of
    ``source_size``.
    """
    entry = registry.get("topology", config.topology.type).record
    if not issubclass(entry.cls, EncoderDecoder):
        raise StatesimError(f"this scenario needs model.topology of type encoder_decoder (a sequence-to-sequence "
                            f"model), got '{config.topology.type}'. Put the topology you meant under "
                            f"model.topology.encoder or model.topology.decoder.")
    cell_factory = cell_factory_for(registry, config.cell)
    params = config.topology.params.model_copy(update={"target_input_size": embed_size})
    topology = entry.cls.from_config(embed_size if source_vocab else int(source_size), cell_factory, params, registry)
    policy = build_policy(registry, config.initial_state, topology.state_spec, topology.encoded_size)
    return Seq2SeqModel(topology, policy, source_vocab, target_vocab, embed_size)


@hookimpl
def statesim_topologies() -> list[Registration]:
    """Register encoder_decoder."""
    return [Registration("encoder_decoder", EncoderDecoder, EncoderDecoderParams,
                         "encoder reads the source, decoder generates the target from its encoding; "
                         "optional additive/dot attention")]


__all__ = ["Attention", "AttentionCell", "EncoderDecoder", "Memory", "Seq2SeqModel", "build_seq2seq",
           "build_policy"]
