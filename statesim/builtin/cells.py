"""Built-in cells: the lecture's equations, registered exactly like a third-party plugin's cells.

Recurrent cells keep PyTorch's parameter names and layouts (``weight_ih``, ``weight_hh``,
``bias_ih``, ``bias_hh``; LSTM gates ``i, f, g, o``; GRU gates ``r, z, n``), so weights move between
a statesim cell and ``torch.nn.LSTM``/``GRU``/``RNN`` without reshuffling.
"""
from __future__ import annotations

import math
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from statesim.builtin import numpy_kernels
from statesim.cell import Cell, CellParams, NumpyStep, State
from statesim.errors import ShapeError
from statesim.fastpath.forms import FusedForm, LinearForm
from statesim.hookimpl import hookimpl
from statesim.registry import Registration

ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu, "sigmoid": torch.sigmoid, "identity": lambda v: v}
Activation = Literal["tanh", "relu", "sigmoid", "identity"]


def _uniform_(params: list[nn.Parameter], hidden_size: int) -> None:
    bound = 1.0 / math.sqrt(hidden_size)
    for p in params:
        nn.init.uniform_(p, -bound, bound)


def _fused(cell: VanillaCell | LSTMCell | GRUCell, kernel: str, parts: tuple[str, ...]) -> "FusedForm":
    """The cell's own parameters, in torch's order, as the fused ``kernel``'s weights."""
    weights = (cell.weight_ih, cell.weight_hh) if cell.bias_ih is None or cell.bias_hh is None else \
        (cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)
    return FusedForm(kernel, weights, cell.hidden_size, parts)


class LinearParams(CellParams):
    hidden_size: int = Field(..., gt=0, description="size of the state h")
    output_size: int | None = Field(None, gt=0, description="size of y; defaults to hidden_size")
    fixed: list[Literal["A", "B", "C", "D"]] = Field(default_factory=list,
                                                     description="matrices kept constant (not trained)")
    spectral_radius: float = Field(0.5, gt=0, description="initial spectral radius of D")
    init: dict[Literal["A", "B", "C", "D"], list[list[float]]] = Field(
        default_factory=dict, description="explicit initial values of any matrix, as nested lists")


class LinearCell(Cell):
    """The lecture's linear system: ``y_t = A x_t + B h_{t-1}``, ``h_t = C x_t + D h_{t-1}``."""

    Params = LinearParams
    # Registered with setattr in __init__ (one loop over the four matrices).
    A: nn.Parameter
    B: nn.Parameter
    C: nn.Parameter
    D: nn.Parameter

    def __init__(self, input_size: int, hidden_size: int, output_size: int | None = None,
                 fixed: Sequence[str] = (), spectral_radius: float = 0.5,
                 init: dict[str, list[list[float]]] | None = None) -> None:
        super().__init__(input_size)
        self.hidden_size, self._output_size = hidden_size, output_size or hidden_size
        shapes = {"A": (self._output_size, input_size), "B": (self._output_size, hidden_size),
                  "C": (hidden_size, input_size), "D": (hidden_size, hidden_size)}
        init = init or {}
        for name, shape in shapes.items():
            if name in init:
                value = torch.tensor(init[name], dtype=torch.get_default_dtype())
                if tuple(value.shape) != shape:
                    raise ShapeError(f"linear cell: init.{name} has shape {list(value.shape)}, expected {list(shape)} "
                                     f"(from input_size, hidden_size and output_size); fix model.cell.init.{name}.")
            elif name == "D":
                value = torch.randn(shape) / math.sqrt(hidden_size)
                radius = torch.linalg.eigvals(value).abs().max().clamp_min(1e-6)
                value = value * (spectral_radius / radius)
            else:
                value = torch.randn(shape) / math.sqrt(shape[1])
            setattr(self, name, nn.Parameter(value, requires_grad=name not in fixed))

    @property
    def state_spec(self) -> dict[str, tuple[int, ...]]:
        return {"h": (self.hidden_size,)}

    @property
    def output_size(self) -> int:
        return self._output_size

    def linear_form(self) -> "LinearForm":
        return LinearForm(self.A, self.B, self.C, self.D, state_part="h")

    def project_inputs(self, inputs: Tensor) -> Tensor:
        return inputs @ torch.cat([self.A, self.C]).T  # [T, B, out + hidden]: A x and C x at once

    def impulse_response(self, steps: int) -> Tensor:
        """Markov parameters ``[steps, out, in]``: ``G_0 = A``, ``G_k = B D^{k-1} C`` (response of y to x_{t-k})."""
        blocks: list[Tensor] = [self.A]
        power: Tensor = self.C
        for _ in range(1, steps):
            blocks.append(self.B @ power)
            power = self.D @ power
        return torch.stack(blocks)

    def transition(self, projected_x: Tensor, state: State) -> tuple[Tensor, State]:
        ax, cx = projected_x.split([self._output_size, self.hidden_size], dim=-1)
        h = state["h"]
        return ax + h @ self.B.T, {"h": cx + h @ self.D.T}

    def numpy_step(self) -> NumpyStep:
        return numpy_kernels.linear_step(self.A, self.B, self.C, self.D)


class VanillaParams(CellParams):
    hidden_size: int = Field(..., gt=0, description="number of hidden units")
    activation: Activation = Field("tanh", description="nonlinearity applied to the pre-activation")
    bias: bool = Field(True, description="learn the biases b_ih and b_hh")


class VanillaCell(Cell):
    """Elman RNN: ``h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)``, ``y_t = h_t``."""

    Params = VanillaParams
    output_part = "h"

    def __init__(self, input_size: int, hidden_size: int, activation: str = "tanh", bias: bool = True) -> None:
        super().__init__(input_size)
        self.hidden_size, self.activation, self.bias = hidden_size, activation, bias
        self._act = ACTIVATIONS[activation]
        self.weight_ih = nn.Parameter(torch.empty(hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(hidden_size, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(hidden_size)) if bias else None
        self.bias_hh = nn.Parameter(torch.empty(hidden_size)) if bias else None
        _uniform_([p for p in self.parameters()], hidden_size)

    @property
    def state_spec(self) -> dict[str, tuple[int, ...]]:
        return {"h": (self.hidden_size,)}

    @property
    def output_size(self) -> int:
        return self.hidden_size

    def fused_form(self) -> "FusedForm | None":
        if self.activation not in ("tanh", "relu"):
            return None  # torch's fused RNN kernels exist for tanh and relu only
        return _fused(self, f"rnn_{self.activation}", ("h",))

    def project_inputs(self, inputs: Tensor) -> Tensor:
        bias = None if self.bias_ih is None or self.bias_hh is None else self.bias_ih + self.bias_hh
        return F.linear(inputs, self.weight_ih, bias)

    def transition(self, projected_x: Tensor, state: State) -> tuple[Tensor, State]:
        h = self._act(projected_x + state["h"] @ self.weight_hh.T)
        return h, {"h": h}

    def numpy_step(self) -> NumpyStep:
        return numpy_kernels.vanilla_step(self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh, self.activation)


class LSTMParams(CellParams):
    hidden_size: int = Field(..., gt=0, description="number of units (size of h and c)")
    bias: bool = Field(True, description="learn gate biases")
    forget_bias: float = Field(0.0, description="added to the initial forget-gate bias (1.0 helps long lags)")


class LSTMCell(Cell):
    """LSTM (lecture Part 4): gates ``f, i, o, c'``; ``c_t = f*c_{t-1} + i*c'``, ``h_t = o*tanh(c_t)``,
    ``y_t = h_t``."""

    Params = LSTMParams
    output_part = "h"

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, forget_bias: float = 0.0) -> None:
        super().__init__(input_size)
        self.hidden_size = hidden_size
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden_size, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(4 * hidden_size)) if bias else None
        self.bias_hh = nn.Parameter(torch.empty(4 * hidden_size)) if bias else None
        _uniform_([p for p in self.parameters()], hidden_size)
        if self.bias_ih is not None and forget_bias:  # bias_ih exists iff bias
            with torch.no_grad():
                self.bias_ih[hidden_size:2 * hidden_size] += forget_bias

    @property
    def state_spec(self) -> dict[str, tuple[int, ...]]:
        return {"h": (self.hidden_size,), "c": (self.hidden_size,)}

    @property
    def output_size(self) -> int:
        return self.hidden_size

    def fused_form(self) -> "FusedForm":
        return _fused(self, "lstm", ("h", "c"))

    def project_inputs(self, inputs: Tensor) -> Tensor:
        bias = None if self.bias_ih is None or self.bias_hh is None else self.bias_ih + self.bias_hh
        return F.linear(inputs, self.weight_ih, bias)

    def transition(self, projected_x: Tensor, state: State) -> tuple[Tensor, State]:
        gates = projected_x + state["h"] @ self.weight_hh.T
        i, f, g, o = gates.chunk(4, dim=-1)
        c = torch.sigmoid(f) * state["c"] + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, {"h": h, "c": c}

    def numpy_step(self) -> NumpyStep:
        return numpy_kernels.lstm_step(self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)


class GRUParams(CellParams):
    hidden_size: int = Field(..., gt=0, description="number of units")
    bias: bool = Field(True, description="learn gate biases")


class GRUCell(Cell):
    """GRU: ``r, z`` gates, ``n = tanh(W_in x + b_in + r*(W_hn h + b_hn))``, ``h_t = (1-z)*n + z*h_{t-1}``."""

    Params = GRUParams
    output_part = "h"

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True) -> None:
        super().__init__(input_size)
        self.hidden_size = hidden_size
        self.weight_ih = nn.Parameter(torch.empty(3 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(3 * hidden_size, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(3 * hidden_size)) if bias else None
        self.bias_hh = nn.Parameter(torch.empty(3 * hidden_size)) if bias else None
        _uniform_([p for p in self.parameters()], hidden_size)

    @property
    def state_spec(self) -> dict[str, tuple[int, ...]]:
        return {"h": (self.hidden_size,)}

    @property
    def output_size(self) -> int:
        return self.hidden_size

    def fused_form(self) -> "FusedForm":
        return _fused(self, "gru", ("h",))

    def project_inputs(self, inputs: Tensor) -> Tensor:
        return F.linear(inputs, self.weight_ih, self.bias_ih)

    def transition(self, projected_x: Tensor, state: State) -> tuple[Tensor, State]:
        h = state["h"]
        hidden = F.linear(h, self.weight_hh, self.bias_hh)
        x_r, x_z, x_n = projected_x.chunk(3, dim=-1)
        h_r, h_z, h_n = hidden.chunk(3, dim=-1)
        r = torch.sigmoid(x_r + h_r)
        z = torch.sigmoid(x_z + h_z)
        n = torch.tanh(x_n + r * h_n)
        h = (1 - z) * n + z * h
        return h, {"h": h}

    def numpy_step(self) -> NumpyStep:
        return numpy_kernels.gru_step(self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)


class WindowParams(CellParams):
    window: int = Field(3, gt=0, description="number of inputs seen: x_t, x_{t-1}, ..., x_{t-window+1}")
    output_size: int = Field(1, gt=0, description="size of y")
    hidden: list[int] = Field(default_factory=list, description="hidden layer sizes of an MLP over the window; "
                                                                "empty for the linear predictor")
    activation: Activation = Field("tanh", description="activation of the MLP's hidden layers")
    bias: bool = Field(False, description="learn an output bias")


class WindowCell(Cell):
    """Stateless finite-horizon predictor ``y_t = sum_k w_k x_{t-k}`` (or an MLP over the window).

    Its state is the last ``window`` inputs, newest first, so the same engine unrolls it; the
    lecture's ``y_t = a x_t + b x_{t-1} + c x_{t-2}`` is ``window: 3``.
    """

    Params = WindowParams

    def __init__(self, input_size: int, window: int = 3, output_size: int = 1, hidden: Sequence[int] = (),
                 activation: str = "tanh", bias: bool = False) -> None:
        super().__init__(input_size)
        self.window, self._output_size = window, output_size
        sizes = [window * input_size, *hidden]
        layers: list[nn.Module] = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(fan_in, fan_out), _Activation(activation)]
        layers.append(nn.Linear(sizes[-1], output_size, bias=bias if not hidden else True))
        self.net = nn.Sequential(*layers)

    @property
    def state_spec(self) -> dict[str, tuple[int, ...]]:
        return {"window": (self.window, self.input_size)}

    @property
    def output_size(self) -> int:
        return self._output_size

    @property
    def weights(self) -> Tensor:
        """The linear predictor's coefficients ``[output_size, window, input_size]`` (w_0 weighs x_t)."""
        if len(self.net) > 1:  # AttributeError, so hasattr() and module walkers (torch.jit.trace) see no attribute
            raise AttributeError("WindowCell.weights exists only for the linear predictor (hidden: []); "
                                 "an MLP window has no per-lag coefficients")
        linear = self.net[-1]
        assert isinstance(linear, nn.Linear)  # __init__ ends the net with its output layer
        return linear.weight.view(self._output_size, self.window, self.input_size)

    def forward(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        window = torch.cat([x.unsqueeze(1), state["window"][:, :-1]], dim=1)
        return self.net(window.flatten(1)), {"window": window}

    def numpy_step(self) -> NumpyStep:
        linears = [m for m in self.net if isinstance(m, nn.Linear)]
        acts = [m.name for m in self.net if isinstance(m, _Activation)] + [None]
        return numpy_kernels.window_step([(m.weight, m.bias, a) for m, a in zip(linears, acts)])


class _Activation(nn.Module):
    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def forward(self, x: Tensor) -> Tensor:
        return ACTIVATIONS[self.name](x)


@hookimpl
def statesim_cells() -> list[Registration]:
    """The built-in cells."""
    return [
        Registration("linear", LinearCell, LinearParams, "linear state-space model [y; h] = [[A, B], [C, D]] [x; h]"),
        Registration("vanilla", VanillaCell, VanillaParams, "Elman RNN, h = act(W_ih x + W_hh h + b)"),
        Registration("lstm", LSTMCell, LSTMParams, "long short-term memory (h, c)"),
        Registration("gru", GRUCell, GRUParams, "gated recurrent unit"),
        Registration("window", WindowCell, WindowParams, "stateless sliding-window predictor (linear or MLP)"),
    ]
