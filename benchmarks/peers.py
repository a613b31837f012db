"""Peer implementations measured beside statesim: JAX ``lax.scan``, Flax ``nn.RNN`` and ReservoirPy.

Each builder returns ``None`` (and a note) when its package is missing; install them with
``pip install -e '.[bench]'``. Every peer gets the same weights as the statesim model it is compared
with, and its outputs are checked against statesim's before any time is taken.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np


def available(module: str) -> str | None:
    """None when ``module`` imports, else a note saying how to get it."""
    try:
        __import__(module)
    except Exception as exc:  # noqa: BLE001 - any import failure means: skip this peer
        return f"{module} not installed ({type(exc).__name__}); pip install -e '.[bench]' to measure it"
    return None


def jax_version() -> dict[str, str]:
    """Versions of the optional peers that are installed."""
    found = {}
    for name in ("jax", "jaxlib", "flax", "reservoirpy"):
        try:
            found[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001
            pass
    return found


# --------------------------------------------------------------------------- JAX / Flax LSTM
def jax_lstm(w_ih: np.ndarray, w_hh: np.ndarray, bias: np.ndarray, x: np.ndarray
             ) -> tuple[Callable[[], Any], Callable[[], Any], np.ndarray]:
    """Jitted ``lax.scan`` LSTM (torch's gate order, input projection hoisted): forward, forward+backward, outputs.

    ``x`` is time-major ``[T, B, F]``; the loss of forward+backward is the mean square of every output.
    """
    import jax
    import jax.numpy as jnp

    params = tuple(jnp.asarray(a) for a in (w_ih, w_hh, bias))
    xs = jnp.asarray(x)
    hidden = w_hh.shape[1]

    def run(params: Any, xs: Any) -> Any:
        w_ih, w_hh, bias = params
        projected = xs @ w_ih.T + bias
        zeros = jnp.zeros((xs.shape[1], hidden), xs.dtype)

        def step(carry: Any, p: Any) -> Any:
            h, c = carry
            i, f, g, o = jnp.split(p + h @ w_hh.T, 4, axis=-1)
            c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
            h = jax.nn.sigmoid(o) * jnp.tanh(c)
            return (h, c), h

        return jax.lax.scan(step, (zeros, zeros), projected)[1]

    forward = jax.jit(run)
    train = jax.jit(jax.value_and_grad(lambda p, xs: jnp.mean(run(p, xs) ** 2)))
    outputs = np.asarray(forward(params, xs))
    return (lambda: forward(params, xs).block_until_ready(),
            lambda: jax.block_until_ready(train(params, xs)), outputs)


def flax_lstm(w_ih: np.ndarray, w_hh: np.ndarray, bias: np.ndarray, x: np.ndarray
              ) -> tuple[Callable[[], Any], Callable[[], Any], np.ndarray]:
    """Flax ``nn.RNN(nn.OptimizedLSTMCell)`` with the same weights: forward, forward+backward, outputs ``[T, B, H]``."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    hidden = w_hh.shape[1]
    model = nn.RNN(nn.OptimizedLSTMCell(features=hidden))
    xb = jnp.asarray(np.ascontiguousarray(x.transpose(1, 0, 2)))  # Flax is batch-major
    params = model.init(jax.random.PRNGKey(0), xb)
    # Flax's gates are separate Dense layers named i, f, g, o: input kernels without bias, hidden with bias.
    cell = dict(params["params"]["cell"])
    for k, gate in enumerate("ifgo"):
        rows = slice(k * hidden, (k + 1) * hidden)
        cell[f"i{gate}"] = {"kernel": jnp.asarray(w_ih[rows].T)}
        cell[f"h{gate}"] = {"kernel": jnp.asarray(w_hh[rows].T), "bias": jnp.asarray(bias[rows])}
    params = {"params": {"cell": cell}}
    forward = jax.jit(model.apply)
    train = jax.jit(jax.value_and_grad(lambda p, xs: jnp.mean(model.apply(p, xs) ** 2)))
    outputs = np.asarray(forward(params, xb)).transpose(1, 0, 2)
    return (lambda: forward(params, xb).block_until_ready(),
            lambda: jax.block_until_ready(train(params, xb)), outputs)


# --------------------------------------------------------------------------- reservoirs
def jax_reservoir(w_ih: np.ndarray, w_hh: np.ndarray, bias: np.ndarray, x: np.ndarray
                  ) -> tuple[Callable[[], Any], np.ndarray]:
    """Jitted ``lax.scan`` of ``h = tanh(W_hh h + W_ih x + b)`` over ``x [T, F]`` (batch 1): run, states."""
    import jax
    import jax.numpy as jnp

    w_ih, w_hh, bias, xs = (jnp.asarray(a) for a in (w_ih, w_hh, bias, x))

    @jax.jit
    def run(xs: Any) -> Any:
        projected = xs @ w_ih.T + bias

        def step(h: Any, p: Any) -> Any:
            h = jnp.tanh(p + w_hh @ h)
            return h, h

        return jax.lax.scan(step, jnp.zeros(w_hh.shape[0], xs.dtype), projected)[1]

    states = np.asarray(run(xs))
    return lambda: run(xs).block_until_ready(), states


def reservoirpy_reservoir(w_ih: np.ndarray, w_hh: np.ndarray, bias: np.ndarray, x: np.ndarray
                          ) -> tuple[Callable[[], Any], np.ndarray]:
    """ReservoirPy's ``Reservoir.run`` with its defaults (float64, leak rate 1) on the same matrices."""
    from reservoirpy.nodes import Reservoir

    reservoir = Reservoir(units=w_hh.shape[0], W=w_hh.astype(np.float64), Win=w_ih.astype(np.float64),
                          bias=bias.astype(np.float64), lr=1.0)
    x64 = x.astype(np.float64)
    reservoir.run(x64[:1])  # initialise it, so reset() has a state to reset

    def run() -> Any:
        reservoir.reset()  # every run starts from h = 0
        return reservoir.run(x64)

    return run, np.asarray(run())
