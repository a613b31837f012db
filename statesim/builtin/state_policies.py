"""Initial-state policies ``warmup`` and ``encoded`` (the lecture's "problem of initial states").

* ``warmup``: start from zeros or a random state, run the model's own topology for ``steps`` ticks on a
  prefix, and use the state it reaches ("simulate the RNN for a few time steps to generate a plausible
  initial state"). The prefix is given (``InitialContext.prefix``: the steps that precede the sequence),
  the first steps of the sequence itself, zeros, or noise.
* ``encoded``: the state comes from another module's output (``InitialContext.encoded [B, E]``), as an
  image-captioning decoder's state comes from a CNN, or an encoder-decoder's decoder state from the
  encoder's summary. With ``encoded_size`` set, a learned affine map (after layer normalisation, and
  followed by the activation) takes the encoding to every state part; without it the encoding must already
  have one feature per state unit and is split across the parts in ``state_spec`` order.

Like every policy they act on each named state part, so a stack's ``layer1.c`` or a bidirectional
pair's ``bwd.h`` each get theirs.
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, Field
from torch import Tensor, nn

from statesim.cell import State, flatten_state, state_size, unflatten_state  # noqa: F401 - flatten_state for users
from statesim.errors import ShapeError
from statesim.hookimpl import hookimpl
from statesim.model import InitialContext, InitialState, PluginParams
from statesim.registry import Registration


class WarmupParams(PluginParams):
    steps: int = Field(10, ge=1, description="ticks simulated before t = 0")
    start: Literal["zeros", "random"] = Field("zeros", description="state the warm-up starts from")
    scale: float = Field(0.1, ge=0, description="std of the random start")
    prefix: Literal["given", "inputs", "zeros", "noise"] = Field(
        "given", description="what the system reads while warming up: the given prefix (the steps before the "
                             "sequence), the sequence's own first steps, zeros, or N(0, noise_scale) noise")
    noise_scale: float = Field(1.0, ge=0, description="std of the 'noise' prefix")
    grad: bool = Field(True, description="backpropagate through the warm-up (trains the dynamics it uses)")


class Warmup(InitialState):
    """Run the model for ``steps`` ticks on a prefix from a zero or random start; use the state reached."""

    Params = WarmupParams

    def __init__(self, state_spec: dict[str, tuple[int, ...]], steps: int = 10, start: str = "zeros",
                 scale: float = 0.1, prefix: str = "given", noise_scale: float = 1.0, grad: bool = True) -> None:
        super().__init__(state_spec)
        self.steps, self.start, self.scale = steps, start, scale
        self.prefix, self.noise_scale, self.grad = prefix, noise_scale, grad

    @classmethod
    def requires(cls, params: BaseModel) -> frozenset[str]:
        """``prefix: given`` reads the steps before each sequence, which the scenario must supply."""
        return frozenset({"prefix"}) if getattr(params, "prefix", None) == "given" else frozenset()

    @property
    def deterministic(self) -> bool:  # type: ignore[override]
        """No random start and no noise prefix: the same prefix always reaches the same state."""
        return self.start == "zeros" and self.prefix != "noise"

    def _prefix(self, batch_size: int, device: torch.device | str, dtype: torch.dtype,
                context: InitialContext) -> Tensor:
        assert context.topology is not None  # forward checked it
        width = context.topology.input_size
        if self.prefix == "given":
            if context.prefix is None:
                raise ShapeError("initial_state 'warmup' with prefix: given needs the steps before the sequence "
                                 "(model(inputs, prefix=...)); this caller gave none. Use prefix: inputs, zeros or "
                                 "noise, or pass a prefix.")
            return context.prefix[-self.steps:]
        if self.prefix == "inputs":
            if context.inputs is None:
                raise ShapeError("initial_state 'warmup' with prefix: inputs needs the sequence; none was given.")
            return context.inputs[:self.steps]
        if self.prefix == "zeros":
            return torch.zeros(self.steps, batch_size, width, device=device, dtype=dtype)
        return torch.randn(self.steps, batch_size, width, device=device, dtype=dtype) * self.noise_scale

    def forward(self, batch_size: int, *, device: torch.device | str, dtype: torch.dtype,
                context: InitialContext | None = None) -> State:
        if context is None or context.topology is None:
            raise ShapeError("initial_state 'warmup' runs the model's topology and needs it in the InitialContext "
                             "(SequenceModel.initial passes it).")
        state = {name: torch.zeros((batch_size, *shape), device=device, dtype=dtype)
                 for name, shape in self.state_spec.items()}
        if self.start == "random":
            state = {name: torch.randn_like(value) * self.scale for name, value in state.items()}
        prefix = self._prefix(batch_size, device, dtype, context)
        with torch.set_grad_enabled(self.grad and torch.is_grad_enabled()):
            final = context.topology(prefix, state).final_state
        return final if self.grad else {name: value.detach() for name, value in final.items()}


class EncodedParams(PluginParams):
    encoded_size: int | None = Field(None, gt=0, description="size E of the encoding; learns an affine map E -> "
                                                             "state. Omit to split an encoding of exactly one "
                                                             "feature per state unit across the parts")
    activation: Literal["tanh", "identity"] = Field("tanh", description="applied after the map")
    normalize: bool = Field(True, description="layer-normalise the encoding before the learned map (an LSTM "
                                              "encoder's c grows with the source length and would saturate tanh)")


class Encoded(InitialState):
    """The state is another module's output: ``h_0 = act(W s + b)`` for an encoding ``s`` (or ``s`` itself)."""

    Params = EncodedParams
    deterministic = True  # a function of the encoding
    needs = frozenset({"encoding"})

    def __init__(self, state_spec: dict[str, tuple[int, ...]], encoded_size: int | None = None,
                 activation: str = "tanh", normalize: bool = True) -> None:
        super().__init__(state_spec)
        self.units = state_size(self.state_spec)
        self.encoded_size, self.activation = encoded_size, activation
        self.map = nn.Linear(encoded_size, self.units) if encoded_size else None
        self.norm = nn.LayerNorm(encoded_size) if encoded_size and normalize else None

    @property
    def input_size(self) -> int:
        """Size of the encoding this policy expects (what the encoder must produce)."""
        return self.encoded_size or self.units

    def forward(self, batch_size: int, *, device: torch.device | str, dtype: torch.dtype,
                context: InitialContext | None = None) -> State:
        encoded = None if context is None else context.encoded
        if encoded is None:
            raise ShapeError("initial_state 'encoded' needs an encoding (model(inputs, encoded=...), or an "
                             "encoder-decoder topology); none was given.")
        if encoded.dim() != 2 or encoded.shape != (batch_size, self.input_size):
            raise ShapeError(f"initial_state 'encoded' expects an encoding of shape [{batch_size}, {self.input_size}], "
                             f"got {list(encoded.shape)}. Set encoded_size to the encoder's output size.")
        if self.norm is not None:
            encoded = self.norm(encoded)
        flat = self.map(encoded) if self.map is not None else encoded
        if self.activation == "tanh":
            flat = torch.tanh(flat)
        return unflatten_state(flat.to(device, dtype), self.state_spec)


@hookimpl
def statesim_initial_states() -> list[Registration]:
    """Register warmup and encoded."""
    return [
        Registration("warmup", Warmup, WarmupParams,
                     "run the system for k steps on a prefix from zeros/random; start from the state reached"),
        Registration("encoded", Encoded, EncodedParams,
                     "state from another module's output (a CNN's or an encoder's), via a learned map"),
    ]
