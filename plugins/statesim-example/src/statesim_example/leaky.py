"""The ``leaky`` cell: a leaky-integrator RNN, ``h_t = (1 - a) h_{t-1} + a act(W_ih x_t + W_hh h_{t-1} + b)``.

A per-unit leak rate ``a`` in (0, 1] sets how fast each unit forgets: ``a = 1`` is the Elman RNN,
small ``a`` integrates slowly (a time constant of about ``1 / a`` steps). The leak is fixed, or
learned through a sigmoid so it stays in (0, 1).
"""
from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from statesim import Cell, CellParams, State

ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu, "identity": lambda v: v}


class LeakyParams(CellParams):
    """The YAML keys of ``cell: {type: leaky, ...}`` (``extra="forbid"`` comes from CellParams)."""

    hidden_size: int = Field(..., gt=0, description="number of leaky units (size of h)")
    leak: float = Field(0.5, gt=0, le=1, description="leak rate a in (0, 1]: 1 is the Elman RNN, small a "
                                                     "integrates over about 1/a steps")
    learn_leak: bool = Field(False, description="learn one leak rate per unit (kept in (0, 1) by a sigmoid)")
    activation: Literal["tanh", "relu", "identity"] = Field("tanh", description="nonlinearity of the update")
    bias: bool = Field(True, description="learn the biases b_ih and b_hh")


class LeakyCell(Cell):
    """Leaky-integrator RNN cell; parameters use torch.nn.RNN's names and layout."""

    Params = LeakyParams
    output_part = "h"  # y_t = h_t

    def __init__(self, input_size: int, hidden_size: int, leak: float = 0.5, learn_leak: bool = False,
                 activation: str = "tanh", bias: bool = True) -> None:
        super().__init__(input_size)
        self.hidden_size, self.activation = hidden_size, activation
        self._act = ACTIVATIONS[activation]
        bound = 1.0 / math.sqrt(hidden_size)
        self.weight_ih = nn.Parameter(torch.empty(hidden_size, input_size).uniform_(-bound, bound))
        self.weight_hh = nn.Parameter(torch.empty(hidden_size, hidden_size).uniform_(-bound, bound))
        self.bias_ih = nn.Parameter(torch.empty(hidden_size).uniform_(-bound, bound)) if bias else None
        self.bias_hh = nn.Parameter(torch.empty(hidden_size).uniform_(-bound, bound)) if bias else None
        if learn_leak:
            # A sigmoid keeps a learned leak inside (0, 1); leak == 1 exactly is only reachable when fixed.
            start = min(leak, 1 - 1e-4)
            self.leak_logit = nn.Parameter(torch.full((hidden_size,), math.log(start / (1 - start))))
        else:
            self.register_buffer("fixed_leak", torch.full((hidden_size,), float(leak)))

    @property
    def state_spec(self) -> dict[str, tuple[int, ...]]:
        return {"h": (self.hidden_size,)}

    @property
    def output_size(self) -> int:
        return self.hidden_size

    @property
    def leak(self) -> Tensor:
        """The per-unit leak rates ``a`` ``[hidden_size]``."""
        if hasattr(self, "leak_logit"):
            return torch.sigmoid(self.leak_logit)
        return self.fixed_leak

    def project_inputs(self, inputs: Tensor) -> Tensor:
        # W_ih x + b for the whole sequence in one matrix product, outside the engine's time loop.
        bias = None if self.bias_ih is None or self.bias_hh is None else self.bias_ih + self.bias_hh
        return F.linear(inputs, self.weight_ih, bias)

    def transition(self, projected_x: Tensor, state: State) -> tuple[Tensor, State]:
        h = state["h"]
        a = self.leak
        h = (1 - a) * h + a * self._act(projected_x + h @ self.weight_hh.T)
        return h, {"h": h}
