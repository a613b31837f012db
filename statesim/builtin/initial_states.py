"""Built-in initial-state policies (the lecture's "problem of initial states")."""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from statesim.cell import State
from statesim.hookimpl import hookimpl
from statesim.model import InitialContext, InitialState, PluginParams
from statesim.registry import Registration


class ZerosParams(PluginParams):
    pass


class Zeros(InitialState):
    """``h_0 = 0`` for every state part."""

    Params = ZerosParams
    deterministic = True

    def forward(self, batch_size: int, *, device: torch.device | str, dtype: torch.dtype,
                context: InitialContext | None = None) -> State:
        return {name: torch.zeros((batch_size, *shape), device=device, dtype=dtype)
                for name, shape in self.state_spec.items()}


class RandomParams(PluginParams):
    distribution: Literal["normal", "uniform"] = Field("normal",
                                                       description="normal(0, scale) or uniform(-scale, scale)")
    scale: float = Field(0.1, ge=0, description="standard deviation or half-width")
    seed: int | None = Field(None, description="seed of the policy's own generator; torch's global RNG when omitted")


class Random(InitialState):
    """A random state, resampled for every sequence (the network learns to forget it)."""

    Params = RandomParams

    def __init__(self, state_spec: dict[str, tuple[int, ...]], distribution: str = "normal", scale: float = 0.1,
                 seed: int | None = None) -> None:
        super().__init__(state_spec)
        self.distribution, self.scale = distribution, scale
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None

    def forward(self, batch_size: int, *, device: torch.device | str, dtype: torch.dtype,
                context: InitialContext | None = None) -> State:
        state = {}
        for name, shape in self.state_spec.items():
            size = (batch_size, *shape)
            if self.distribution == "normal":
                value = torch.randn(size, generator=self.generator, dtype=dtype) * self.scale
            else:
                value = (torch.rand(size, generator=self.generator, dtype=dtype) * 2 - 1) * self.scale
            state[name] = value.to(device)
        return state


class LearnedParams(PluginParams):
    pass


class Learned(InitialState):
    """A trainable initial state, one vector per state part, shared by all sequences."""

    Params = LearnedParams
    deterministic = True

    def __init__(self, state_spec: dict[str, tuple[int, ...]]) -> None:
        super().__init__(state_spec)
        self.values = nn.ParameterDict({name.replace(".", "__"): nn.Parameter(torch.zeros(shape))
                                        for name, shape in self.state_spec.items()})

    def forward(self, batch_size: int, *, device: torch.device | str, dtype: torch.dtype,
                context: InitialContext | None = None) -> State:
        return {name: self.values[name.replace(".", "__")].to(device, dtype).expand(batch_size, *shape)
                for name, shape in self.state_spec.items()}


@hookimpl
def statesim_initial_states() -> list[Registration]:
    """The built-in initial-state policies."""
    return [
        Registration("zeros", Zeros, ZerosParams, "h_0 = 0"),
        Registration("random", Random, RandomParams, "random h_0, resampled per sequence"),
        Registration("learned", Learned, LearnedParams, "trainable h_0"),
    ]
