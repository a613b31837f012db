"""NumPy step kernels of the built-in cells (their :meth:`~statesim.cell.Cell.numpy_step`).

Each factory takes a snapshot of the cell's weights and returns a closure that does one step with
as few NumPy calls as possible, because at batch 1 the per-call overhead, not the arithmetic,
dominates. Two tricks keep the call count down without changing the numbers beyond float rounding:

* ``[x, h]`` is written into one scratch row so the whole affine map is a single matrix product;
* ``sigmoid(z) = 0.5 * tanh(z / 2) + 0.5``, with the ``1/2`` folded into the gate weights, so all
  gates of an LSTM (or ``r, z`` of a GRU) go through one ``tanh`` call.
"""
from __future__ import annotations

from typing import Callable, Sequence, overload

import numpy as np
from torch import Tensor

from statesim.cell import NumpyStep

Array = np.ndarray


@overload
def to_numpy(tensor: Tensor) -> Array: ...
@overload
def to_numpy(tensor: None) -> None: ...
@overload
def to_numpy(tensor: Tensor | None) -> Array | None: ...


def to_numpy(tensor: Tensor | None) -> Array | None:
    """A detached CPU NumPy copy of a tensor (None stays None)."""
    return None if tensor is None else tensor.detach().cpu().numpy().copy()


def _sigmoid(v: Array) -> Array:
    return 0.5 * np.tanh(0.5 * v) + 0.5


NUMPY_ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "tanh": np.tanh, "relu": lambda v: np.maximum(v, 0), "sigmoid": _sigmoid, "identity": lambda v: v}


class _Stacked:
    """Scratch ``[x, h]`` rows per batch size, so one product covers input and recurrent weights."""

    def __init__(self, input_size: int, hidden_size: int, dtype: np.dtype) -> None:
        self.input_size, self.width, self.dtype = input_size, input_size + hidden_size, dtype
        self.buffers: dict[int, Array] = {}

    def __call__(self, x: Array, h: Array) -> Array:
        buffer = self.buffers.get(x.shape[0])
        if buffer is None:
            buffer = self.buffers[x.shape[0]] = np.empty((x.shape[0], self.width), self.dtype)
        buffer[:, :self.input_size] = x
        buffer[:, self.input_size:] = h
        return buffer


def _stack_weights(weight_ih: Array, weight_hh: Array) -> Array:
    """``[W_ih, W_hh]^T`` as one contiguous ``[F + H, rows]`` matrix."""
    return np.ascontiguousarray(np.concatenate([weight_ih, weight_hh], axis=1).T)


def _bias(rows: int, dtype: np.dtype, *biases: Array | None) -> Array:
    total = np.zeros(rows, dtype)
    for bias in biases:
        if bias is not None:
            total += bias
    return total


def linear_step(A: Tensor, B: Tensor, C: Tensor, D: Tensor) -> NumpyStep:
    """``y = A x + B h``, ``h' = C x + D h`` as one product of ``[x, h]`` with ``[[A, B], [C, D]]^T``."""
    a, b, c, d = (to_numpy(m) for m in (A, B, C, D))
    out = a.shape[0]
    weight = np.ascontiguousarray(np.block([[a, b], [c, d]]).T)
    stacked = _Stacked(a.shape[1], d.shape[0], weight.dtype)

    def step(x: Array, state: dict[str, Array]) -> tuple[Array, dict[str, Array]]:
        both = stacked(x, state["h"]) @ weight
        return both[:, :out], {"h": both[:, out:]}

    return step


def vanilla_step(weight_ih: Tensor, weight_hh: Tensor, bias_ih: Tensor | None, bias_hh: Tensor | None,
                 activation: str) -> NumpyStep:
    """Elman step ``h' = act([x, h] W^T + b)``."""
    weight = _stack_weights(to_numpy(weight_ih), to_numpy(weight_hh))
    bias = _bias(weight.shape[1], weight.dtype, to_numpy(bias_ih), to_numpy(bias_hh))
    stacked = _Stacked(weight_ih.shape[1], weight_hh.shape[1], weight.dtype)
    act = NUMPY_ACTIVATIONS[activation]

    def step(x: Array, state: dict[str, Array]) -> tuple[Array, dict[str, Array]]:
        pre = stacked(x, state["h"]) @ weight
        pre += bias
        h = act(pre)
        return h, {"h": h}

    return step


def lstm_step(weight_ih: Tensor, weight_hh: Tensor, bias_ih: Tensor | None, bias_hh: Tensor | None) -> NumpyStep:
    """LSTM step with torch's gate order ``i, f, g, o`` regrouped to ``i, f, o | g`` for one ``tanh``."""
    hidden = weight_hh.shape[1]
    weight = _stack_weights(to_numpy(weight_ih), to_numpy(weight_hh))
    bias = _bias(weight.shape[1], weight.dtype, to_numpy(bias_ih), to_numpy(bias_hh))
    order = np.r_[0:2 * hidden, 3 * hidden:4 * hidden, 2 * hidden:3 * hidden]  # i, f, o, g
    scale = np.r_[np.full(3 * hidden, 0.5), np.ones(hidden)].astype(weight.dtype)
    weight = np.ascontiguousarray(weight[:, order] * scale)
    bias = bias[order] * scale
    stacked = _Stacked(weight_ih.shape[1], hidden, weight.dtype)
    i_, f_, o_, g_ = (slice(k * hidden, (k + 1) * hidden) for k in range(4))
    sig = slice(0, 3 * hidden)

    def step(x: Array, state: dict[str, Array]) -> tuple[Array, dict[str, Array]]:
        gates = stacked(x, state["h"]) @ weight
        gates += bias
        np.tanh(gates, out=gates)
        s = gates[:, sig]
        s *= 0.5
        s += 0.5  # i, f, o are now sigmoids
        c = gates[:, f_] * state["c"]
        c += gates[:, i_] * gates[:, g_]
        h = np.tanh(c)
        h *= gates[:, o_]
        return h, {"h": h, "c": c}

    return step


def gru_step(weight_ih: Tensor, weight_hh: Tensor, bias_ih: Tensor | None, bias_hh: Tensor | None) -> NumpyStep:
    """GRU step (torch's ``r, z, n``): ``r, z`` through one halved ``tanh``; ``n`` keeps its recurrent part apart."""
    hidden = weight_hh.shape[1]
    w_ih, w_hh = to_numpy(weight_ih), to_numpy(weight_hh)
    dtype = w_ih.dtype
    b_ih = _bias(3 * hidden, dtype, to_numpy(bias_ih))
    b_hh = _bias(3 * hidden, dtype, to_numpy(bias_hh))
    # Columns: [r, z] from x and h together (halved for the tanh form), then W_in x, then W_hn h.
    rz = slice(0, 2 * hidden)
    top = np.concatenate([0.5 * w_ih[rz], w_ih[2 * hidden:], np.zeros((hidden, w_ih.shape[1]), dtype)])
    bottom = np.concatenate([0.5 * w_hh[rz], np.zeros((hidden, hidden), dtype), w_hh[2 * hidden:]])
    weight = np.ascontiguousarray(np.concatenate([top, bottom], axis=1).T)
    bias = np.concatenate([0.5 * (b_ih[rz] + b_hh[rz]), b_ih[2 * hidden:], b_hh[2 * hidden:]]).astype(dtype)
    stacked = _Stacked(w_ih.shape[1], hidden, dtype)
    r_, z_, xn_, hn_ = (slice(k * hidden, (k + 1) * hidden) for k in range(4))

    def step(x: Array, state: dict[str, Array]) -> tuple[Array, dict[str, Array]]:
        h_prev = state["h"]
        pre = stacked(x, h_prev) @ weight
        pre += bias
        gates = np.tanh(pre[:, rz])
        gates *= 0.5
        gates += 0.5  # r, z
        n = gates[:, r_] * pre[:, hn_]
        n += pre[:, xn_]
        np.tanh(n, out=n)
        # h' = (1 - z) n + z h = n + z (h - n)
        h = h_prev - n
        h *= gates[:, z_]
        h += n
        return h, {"h": h}

    return step


def mlp_step(layers: Sequence[tuple[Tensor, Tensor | None, str | None]]) -> Callable[[Array], Array]:
    """An MLP ``[(weight, bias, activation after it or None)]`` as a NumPy function of ``[B, in]``."""
    plan = [(np.ascontiguousarray(to_numpy(w).T), to_numpy(b), NUMPY_ACTIVATIONS[a] if a else None)
            for w, b, a in layers]

    def run(v: Array) -> Array:
        for weight, bias, act in plan:
            v = v @ weight
            if bias is not None:
                v += bias
            if act is not None:
                v = act(v)
        return v

    return run


def window_step(layers: Sequence[tuple[Tensor, Tensor | None, str | None]]) -> NumpyStep:
    """Sliding window: shift ``x`` in (newest first), then the MLP over the flattened window."""
    net = mlp_step(layers)

    def step(x: Array, state: dict[str, Array]) -> tuple[Array, dict[str, Array]]:
        old = state["window"]
        window = np.empty_like(old)
        window[:, 0] = x
        window[:, 1:] = old[:, :-1]
        return net(window.reshape(window.shape[0], -1)), {"window": window}

    return step
