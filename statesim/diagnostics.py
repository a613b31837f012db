"""Gradient-flow diagnostics (lecture Part 3): why RNNs are hard to train, measured on any cell.

Everything here works through the cell contract only: a cell's step ``(x_t, state) -> (y_t, state)``
and its named state parts. The state is flattened part by part into one vector of size ``N`` so a
step has one Jacobian ``J_t = d state_t / d state_{t-1}`` (``[N, N]``), and the lecture's product

    P_{s,t} = prod_{i=s}^{t-1} d h_i / d h_{i-1}

is a product of ``t - s`` such Jacobians. For the ``linear`` cell ``J_t = D`` for every ``t`` and
``P_{s,t} = D^{t-s} = Q Lambda^{t-s} Q^{-1}``: :func:`gradient_flow` notices a state-independent
Jacobian and reports its eigenvalues and the closed form next to the measurement. For the LSTM the
diagonal of the ``c <- c`` block of ``J_t`` is exactly the forget gate ``f_t`` (the gate "that damps
the gradient and never amplifies it"), so it is reported as the part's self-diagonal.

API: :func:`step_jacobians`, :func:`gradient_flow` (lag curves, spectrum, verdict),
:func:`loss_gradients` (``||dE/dh_s||`` vs lag), :func:`bptt_horizon` (the horizon truncated BPTT
imposes, measured through the real trainer), :func:`training_summary` (clipping and non-finite
statistics from ``metrics.jsonl``), :class:`GradientFlowMonitor` (a training callback), the plots,
and :func:`diagnose_run` behind ``statesim diagnose RUN_DIR``.
"""
from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Literal

import torch
from torch import Tensor

# The one flattening of a state (statesim.cell), re-exported here, where the Jacobians are taken over it.
from statesim.cell import Cell, State, device_and_dtype, flatten_state, state_layout, unflatten_state  # noqa: F401
from statesim.engine import Stepper, lengths_to_mask
from statesim.errors import StatesimError

NormKind = Literal["spectral", "frobenius"]
#: Per-step growth factors inside ``[1 - TOLERANCE, 1 + TOLERANCE]`` count as norm-preserving.
TOLERANCE = 0.02


def _batched_jacobian(fn: Callable[[Tensor], Tensor], flat: Tensor) -> Tensor:
    """Per-sample Jacobians ``[B, N_out, N_in]`` of a map that treats batch rows independently."""
    def summed(z: Tensor) -> Tensor:
        return fn(z).sum(0)  # rows are independent, so d(sum_b out_b)/d z_b is sample b's Jacobian

    try:
        jac = torch.func.jacrev(summed)(flat)  # [N_out, B, N_in]
    except (RuntimeError, NotImplementedError, TypeError):
        # A cell using an operation functorch cannot vmap: one backward pass per output unit instead.
        z = flat.detach().requires_grad_(True)
        with torch.enable_grad():
            out = summed(z)
            rows = [torch.autograd.grad(out[i], z, retain_graph=True, allow_unused=True)[0] for i in range(out.numel())]
        jac = torch.stack([torch.zeros_like(z) if r is None else r for r in rows])
    return jac.permute(1, 0, 2)


@dataclass
class JacobianTrace:
    """Per-step state Jacobians along one trajectory."""

    jacobians: Tensor  # [T, B, N, N]: d state_t / d state_{t-1}
    layout: dict[str, slice]
    states: Tensor  # [T + 1, B, N]: the initial state and the state after each step


def _as_float64(cell: Cell) -> Cell:
    """A float64 copy, so products over hundreds of steps are exact to ~1e-12 and do not overflow early."""
    return copy.deepcopy(cell).to(torch.float64)


def step_jacobians(cell: Cell, inputs: Tensor, state: State | None = None, *, exact: bool = True) -> JacobianTrace:
    """Run ``cell`` over ``inputs [T, B, F]`` and return ``d state_t / d state_{t-1}`` for every step."""
    if exact:
        cell = _as_float64(cell)
        inputs = inputs.to(torch.float64)
        state = None if state is None else {k: v.to(torch.float64) for k, v in state.items()}
    spec = cell.state_spec
    jacobians, states = [], []

    def observe(t: int, x_t: Tensor, entering: State, y: Tensor, new_state: State) -> None:
        def advance(z: Tensor) -> Tensor:
            return flatten_state(stepper.transition(x_t, unflatten_state(z, spec))[1], spec)

        if not states:
            states.append(flatten_state(entering, spec))
        jacobians.append(_batched_jacobian(advance, flatten_state(entering, spec)).detach())
        states.append(flatten_state(new_state, spec))

    # The engine's own loop, observed at every step (so on the generic path, whatever the policy).
    stepper = Stepper(cell, path="generic", on_step=observe)
    with torch.no_grad():
        stepper.run(inputs, state)
    return JacobianTrace(torch.stack(jacobians), state_layout(spec), torch.stack(states))


# --------------------------------------------------------------------------- products over lags
def matrix_norms(matrices: Tensor, norm: NormKind = "spectral") -> Tensor:
    """Spectral (largest singular value) or Frobenius norm of each matrix in ``[..., n, m]``."""
    return torch.linalg.matrix_norm(matrices, ord=2 if norm == "spectral" else "fro")


def product_norms(jacobians: Tensor, layout: dict[str, slice], max_lag: int | None = None,
                  norm: NormKind = "spectral") -> dict[str, Tensor]:
    """``||P_k||`` for lags ``k = 0..K`` ending at the last step: ``P_k = J_T J_{T-1} ... J_{T-k+1}``.

    Returns ``[K + 1, B]`` per block: ``"state"`` (the whole state) and ``"a<-b"`` for every pair of parts
    (``d a_T / d b_{T-k}``); ``P_0 = I``.
    """
    steps, batch, n, _ = jacobians.shape
    max_lag = steps if max_lag is None else min(max_lag, steps)
    product = torch.eye(n, dtype=jacobians.dtype, device=jacobians.device).expand(batch, n, n).clone()
    blocks = {"state": (slice(None), slice(None))}
    blocks.update({f"{a}<-{b}": (layout[a], layout[b]) for a in layout for b in layout})
    out: dict[str, list[Tensor]] = {name: [] for name in blocks}
    for k in range(max_lag + 1):
        if k:
            product = product @ jacobians[steps - k]
        for name, (rows, cols) in blocks.items():
            out[name].append(matrix_norms(product[:, rows, cols], norm))
    return {name: torch.stack(values) for name, values in out.items()}


def geometric_mean(values: Tensor, dim: int = -1) -> Tensor:
    """``exp(mean(log v))``; zero when any value is zero."""
    return torch.exp(torch.log(values.clamp_min(0)).mean(dim))


@dataclass
class GradientFlow:
    """What :func:`gradient_flow` measured; :meth:`to_json` gives the report written by `statesim diagnose`."""

    norm: NormKind
    parts: dict[str, tuple[int, ...]]
    lags: list[int]
    lag_norms: dict[str, Tensor]  # block -> [K + 1] geometric mean over the batch of ||P_k||
    sigma_max: Tensor  # [T] largest singular value of J_t (geometric mean over the batch)
    spectral_radius: Tensor  # [T] largest |eigenvalue| of J_t (mean over the batch)
    self_diagonal: dict[str, Tensor]  # part -> [T] mean diagonal of its own block of J_t (LSTM c: forget gate)
    self_diagonal_max: dict[str, Tensor]  # part -> [T] the largest such diagonal entry (the best-kept unit)
    rate: float  # measured growth factor per step of ||P_k|| over the second half of the lags
    verdict: str
    horizon: int | None  # first lag at which P_k is exactly zero (finite-memory cells), else None
    constant_jacobian: bool
    eigenvalues: Tensor | None = None  # of J when it is the same at every step (linear cell: D)
    closed_form: Tensor | None = None  # ||J^k|| for k = 0..K when J is constant
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def geometric_mean_sigma_max(self) -> float:
        """Geometric mean over time of the per-step largest singular value (an upper bound of the rate)."""
        return float(geometric_mean(self.sigma_max))

    def to_json(self) -> dict[str, Any]:
        """Plain data for ``report.json``."""
        report: dict[str, Any] = {
            "norm": self.norm, "state_parts": {k: list(v) for k, v in self.parts.items()}, "max_lag": self.lags[-1],
            "rate_per_step": self.rate, "verdict": self.verdict, "horizon": self.horizon,
            "geometric_mean_sigma_max": self.geometric_mean_sigma_max,
            "mean_spectral_radius": float(self.spectral_radius.mean()),
            "lag_norms": {k: v.tolist() for k, v in self.lag_norms.items()},
            "sigma_max_per_step": self.sigma_max.tolist(), "spectral_radius_per_step": self.spectral_radius.tolist(),
            "self_diagonal_mean": {k: float(v.mean()) for k, v in self.self_diagonal.items()},
            "self_diagonal_per_step": {k: v.tolist() for k, v in self.self_diagonal.items()},
            "self_diagonal_max_mean": {k: float(v.mean()) for k, v in self.self_diagonal_max.items()},
            "constant_jacobian": self.constant_jacobian, **self.extra}
        if self.eigenvalues is not None:
            eig = sorted(self.eigenvalues.tolist(), key=lambda z: -abs(z))
            report["eigenvalues"] = [[z.real, z.imag] for z in eig]
            report["spectral_radius"] = abs(eig[0])
        if self.closed_form is not None:
            report["closed_form_norms"] = self.closed_form.tolist()
            measured = self.lag_norms["state"]
            scale = self.closed_form.abs().clamp_min(1e-300)
            report["closed_form_max_relative_error"] = float(((measured - self.closed_form).abs() / scale).max())
        return report


def tail_rate(curve: Tensor) -> float:
    """Growth factor per step of ``||P_k||`` over the second half of the lags (least-squares slope of the log).

    The tail, not ``||P_K||^(1/K)``, because a product often changes scale over its first few factors
    (transients, non-normal matrices) before settling into its asymptotic rate, which decides the regime.
    """
    max_k = len(curve) - 1
    if max_k < 1:
        return 1.0
    if (curve <= 0).any():
        return 0.0
    start = max_k // 2 if max_k >= 4 else 0
    k = torch.arange(start, max_k + 1, dtype=torch.float64)
    logs = torch.log(curve[start:].to(torch.float64))
    slope = ((k - k.mean()) * (logs - logs.mean())).sum() / ((k - k.mean()) ** 2).sum()
    return float(torch.exp(slope))


def verdict_of(rate: float, horizon: int | None) -> str:
    """Name the regime from the measured per-step growth factor of ``||P_k||``."""
    if horizon is not None:
        return f"finite memory: gradients are exactly zero beyond lag {horizon - 1}"
    if rate < 1 - TOLERANCE:
        return "vanishing"
    if rate > 1 + TOLERANCE:
        return "exploding"
    return "norm-preserving (neither vanishing nor exploding)"


def gradient_flow(cell: Cell, inputs: Tensor, state: State | None = None, *, max_lag: int | None = None,
                  norm: NormKind = "spectral") -> GradientFlow:
    """Measure ``||P_k||`` against lag, the per-step Jacobian spectrum and the regime, for any cell."""
    trace = step_jacobians(cell, inputs, state)
    jac = trace.jacobians
    steps = jac.shape[0]
    norms = product_norms(jac, trace.layout, max_lag, norm)
    lag_norms = {k: geometric_mean(v, dim=1) for k, v in norms.items()}
    sigma = geometric_mean(torch.linalg.matrix_norm(jac, ord=2), dim=1)
    radius = torch.linalg.eigvals(jac).abs().amax(-1).mean(1)
    diagonals = {name: torch.diagonal(jac[:, :, sl, sl], dim1=-2, dim2=-1) for name, sl in trace.layout.items()}
    self_diag = {name: d.mean((1, 2)) for name, d in diagonals.items()}
    self_diag_max = {name: d.amax(2).mean(1) for name, d in diagonals.items()}
    state_curve = lag_norms["state"]
    max_k = len(state_curve) - 1
    zero = (norms["state"] == 0).all(dim=1).nonzero()
    horizon = int(zero[0]) if len(zero) else None
    rate = tail_rate(state_curve)
    constant = bool(torch.allclose(jac, jac[:1].expand_as(jac), rtol=1e-10, atol=1e-12))
    eigenvalues = closed_form = None
    if constant:
        single = jac[0, 0]
        eigenvalues = torch.linalg.eigvals(single)
        powers = [torch.eye(single.shape[0], dtype=single.dtype)]
        for _ in range(max_k):
            powers.append(powers[-1] @ single)
        closed_form = matrix_norms(torch.stack(powers), norm)
    return GradientFlow(norm, dict(cell.state_spec), list(range(max_k + 1)), lag_norms, sigma, radius, self_diag,
                        self_diag_max, rate, verdict_of(rate, horizon), horizon, constant, eigenvalues, closed_form,
                        extra={"steps": steps, "batch": int(jac.shape[1])})


# --------------------------------------------------------------------------- dE/dh_s through a model
def loss_gradients(model: Any, inputs: Tensor, targets: Tensor, loss_fn: Callable[[Tensor, Tensor, Tensor], Tensor],
                   lengths: Tensor | None = None) -> dict[str, Tensor]:
    """``||dE/d state_s||`` for every part and ``s = 0..T`` (``s = 0``: the initial state), over the whole batch.

    This is the total derivative BPTT propagates (its ``delta_s``): through every later step and, for cells whose
    output reads the state (``y_s = h_s``), through the loss at step ``s`` itself.

    ``model`` is a :class:`statesim.model.SequenceModel` whose topology can be stepped; it runs on the engine's
    own loop (a :class:`~statesim.engine.Stepper` observing every step) and keeps every intermediate state.
    """
    model = copy.deepcopy(model).to(torch.float64)
    cell = model.step_cell()
    inputs = inputs.to(torch.float64)
    targets = targets.to(torch.float64) if targets.is_floating_point() else targets
    spec = cell.state_spec
    steps, batch = inputs.shape[0], inputs.shape[1]
    with torch.enable_grad():
        start = model.initial(batch, inputs=inputs, lengths=lengths)
        state = {k: v.detach().requires_grad_(True) for k, v in start.items()}
        states = [state]
        stepper = Stepper(cell, path="generic", on_step=lambda t, x, entering, y, new: states.append(new))
        out = model.read_out(stepper.run(inputs, state).outputs)
        mask = (lengths_to_mask(lengths, steps) if lengths is not None
                else torch.ones(steps, batch, dtype=torch.bool))
        loss = loss_fn(out, targets, mask)
        flat = [s[name] for s in states for name in spec]
        grads = torch.autograd.grad(loss, flat, allow_unused=True)
    result = {name: torch.zeros(len(states), dtype=torch.float64) for name in spec}
    for index, grad in enumerate(grads):
        s, part = divmod(index, len(spec))
        if grad is not None:
            result[list(spec)[part]][s] = grad.norm()
    return result


# --------------------------------------------------------------------------- truncated BPTT horizon
def bptt_horizon(model: Any, data: Any, training: Any, loss_fn: Callable[[Tensor, Tensor, Tensor], Tensor]
                 ) -> Tensor:
    """``||dL_u/dx_t||`` for each update ``u`` of one pass over a batch, measured through the real trainer.

    Returns ``[updates, T]``. With truncated BPTT (``k1``, ``k2``) row ``u`` is non-zero only on the ``k2``
    steps its graph spans: the gradient horizon. The model is copied and trained with a negligible SGD step.
    """
    from statesim.data import DataSplits, SequenceData
    from statesim.trainer import Trainer

    class _LeafBatches(SequenceData):
        """Each batch the trainer draws becomes a fresh leaf, so each update's input gradient is its own."""

        leaf: Tensor | None = None

        def select(self, index: Tensor | slice) -> SequenceData:
            picked = SequenceData.select(self, index)
            inputs = picked.inputs.detach().clone().requires_grad_(True)
            _LeafBatches.leaf = inputs
            return replace(picked, inputs=inputs)

    def f64(value: Tensor | None) -> Tensor | None:
        return value.to(torch.float64) if value is not None and value.is_floating_point() else value

    source = _LeafBatches(f64(data.inputs.detach()), f64(data.targets), data.lengths, f64(data.condition),
                          data.condition_lengths, f64(data.prefix))
    truncated = training.bptt.mode == "truncated"
    k1 = (training.bptt.k1 or data.steps) if truncated else data.steps
    updates = math.ceil(data.steps / k1)
    config = training.model_copy(update={"optimizer": "sgd", "lr": 1e-12, "momentum": 0.0, "steps": updates,
                                         "batch_size": len(data), "early_stopping": None})
    rows: list[Tensor] = []

    def capture(trainer: Trainer, record: dict[str, Any]) -> None:
        leaf = _LeafBatches.leaf
        grad = leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)
        rows.append(grad.detach().flatten(1).norm(dim=1))
        leaf.grad = None

    trainer = Trainer(copy.deepcopy(model).to(torch.float64), config, loss_fn=loss_fn, on_update=capture)
    trainer.fit(DataSplits(source))
    return torch.stack(rows)


# --------------------------------------------------------------------------- training records
def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Records of ``metrics.jsonl`` (lines cut by a kill are skipped)."""
    records = []
    path = Path(path)
    if not path.exists():
        return records
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            continue
        if _is_record(record):  # valid JSON that is not a training record (a list, a string step) is skipped
            records.append(record)
    return records


#: Keys of a metrics record that hold numbers; anything else there makes the line unusable. An update record
#: (one with grad_norm) has loss and grad_norm_clipped too.
_NUMERIC_KEYS = ("loss", "grad_norm", "grad_norm_clipped", "lr", "clipped_total", "nonfinite_total", "val_loss")


def _is_record(record: Any) -> bool:
    def number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    return (isinstance(record, dict) and isinstance(record.get("job", "main"), str)
            and isinstance(record.get("step"), int) and not isinstance(record.get("step"), bool)
            and all(number(record[key]) for key in _NUMERIC_KEYS if key in record)
            and ("grad_norm" not in record or ("loss" in record and "grad_norm_clipped" in record)))


def training_summary(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per job: updates, exact fraction of clipped updates, non-finite count, gradient-norm statistics."""
    jobs: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        if "grad_norm" in record:
            jobs.setdefault(record.get("job", "main"), []).append(record)
    summary = {}
    for job, rows in jobs.items():
        last = max(rows, key=lambda r: r["step"])
        finite = [r["grad_norm"] for r in rows if r["grad_norm"] is not None and math.isfinite(r["grad_norm"])]
        sampled_clipped = sum(bool(r.get("clipped")) for r in rows)
        exact = "clipped_total" in last
        clipped = last["clipped_total"] if exact else sampled_clipped
        updates = last["step"] if exact else len(rows)
        nonfinite = last.get("nonfinite_total", sum(bool(r.get("nonfinite")) for r in rows))
        ordered = sorted(finite)
        summary[job] = {
            "updates": int(last["step"]), "logged_records": len(rows), "clipped_updates": int(clipped),
            "fraction_clipped": clipped / max(updates, 1), "fraction_is_exact": exact,
            "nonfinite_updates": int(nonfinite),
            "grad_norm_median": ordered[len(ordered) // 2] if ordered else None,
            "grad_norm_max": ordered[-1] if ordered else None,
            "grad_norm_clipped_max": max((r["grad_norm_clipped"] for r in rows
                                          if r.get("grad_norm_clipped") is not None
                                          and math.isfinite(r["grad_norm_clipped"])), default=None)}
    return summary


class GradientFlowMonitor:
    """Training callback (``ctx.train(..., on_update=monitor)``): measure ``||P_k||`` every ``every`` updates.

    Each measurement is appended to :attr:`history` and logged to ``metrics.jsonl`` as ``gradflow_rate`` and
    ``gradflow_norm_at_max_lag``; :func:`plot_monitor` draws how the lag curve changes over training.
    """

    def __init__(self, inputs: Tensor, every: int = 100, max_lag: int | None = None,
                 norm: NormKind = "spectral") -> None:
        self.inputs, self.every, self.max_lag, self.norm = inputs, every, max_lag, norm
        self.history: list[tuple[int, GradientFlow]] = []

    def measure(self, model: Any, step: int) -> GradientFlow:
        """Measure now and remember it."""
        cell = model.step_cell()
        flow = gradient_flow(cell, self.inputs.to(device_and_dtype(cell)[0]), max_lag=self.max_lag,
                             norm=self.norm)
        self.history.append((step, flow))
        return flow

    def __call__(self, trainer: Any, record: dict[str, Any]) -> None:
        step = record["step"]
        if step % self.every and step != trainer.config.steps:
            return
        flow = self.measure(trainer.model, step)
        if trainer.log is not None:
            trainer.log({"job": trainer.job, "step": step, "gradflow_rate": flow.rate,
                         "gradflow_norm_at_max_lag": float(flow.lag_norms["state"][-1]),
                         "gradflow_verdict": flow.verdict})


# --------------------------------------------------------------------------- plots
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _positive(values: Tensor) -> Tensor:
    """NaN where a value is not positive, so log plots leave a gap instead of failing."""
    values = values.clone().to(torch.float64)
    values[values <= 0] = float("nan")
    return values


def plot_gradient_flow(flow: GradientFlow, title: str = "") -> Any:
    """Log-scale ``||P_k||`` per block against lag, with ``rho^k`` and the closed form when known."""
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    lags = flow.lags
    for name, curve in flow.lag_norms.items():
        if name == "state":
            left.semilogy(lags, _positive(curve), lw=2, label="‖P_k‖ (whole state)")
        elif len(flow.parts) > 1:
            to, src = name.split("<-")
            left.semilogy(lags, _positive(curve), lw=1.2, ls="-" if to == src else ":",
                          label=f"‖∂{to}_T/∂{src}_(T-k)‖")
    if flow.closed_form is not None:
        left.semilogy(lags, _positive(flow.closed_form), "k--", lw=1, label="closed form ‖J^k‖ (= ‖D^k‖ for linear)")
    if flow.eigenvalues is not None:
        rho = float(flow.eigenvalues.abs().max())
        left.semilogy(lags, [rho ** k for k in lags], color="0.5", lw=1, ls="-.", label=f"ρ^k, ρ = {rho:.3g}")
    else:
        g = flow.geometric_mean_sigma_max
        left.semilogy(lags, [g ** k for k in lags], color="0.5", lw=1, ls="-.",
                      label=f"(geo-mean σ_max)^k = {g:.3g}^k (upper bound)")
    measured = torch.cat([_positive(c) for c in flow.lag_norms.values()])
    measured = measured[torch.isfinite(measured)]
    if len(measured):  # keep the bound line from squashing the measurements
        left.set_ylim(float(measured.min()) / 10, float(measured.max()) * 10)
    left.set(xlabel="lag k = t - s", ylabel=f"{flow.norm} norm", title=title or f"gradient flow: {flow.verdict}")
    left.legend(fontsize=7)
    steps = range(1, len(flow.sigma_max) + 1)
    right.plot(steps, flow.sigma_max, label="σ_max(J_t)")
    right.plot(steps, flow.spectral_radius, label="ρ(J_t)")
    for index, (name, diag) in enumerate(flow.self_diagonal.items()):
        right.plot(steps, diag, ls="--", color=f"C{index + 2}", label=f"mean diag ∂{name}_t/∂{name}_(t-1)")
        right.plot(steps, flow.self_diagonal_max[name], ls=":", color=f"C{index + 2}",
                   label=f"max diag ∂{name}_t/∂{name}_(t-1)")
    right.axhline(1.0, color="0.6", lw=0.8)
    right.set(xlabel="step t", title="per-step Jacobian along the trajectory")
    right.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_loss_gradients(grads: dict[str, Tensor], title: str = "‖∂E/∂h_s‖ against lag T - s") -> Any:
    """Log-scale ``||dE/d state_s||`` per part against the lag from the end of the sequence."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, values in grads.items():
        steps = len(values) - 1
        ax.semilogy(list(range(steps, -1, -1)), _positive(values), label=f"‖∂E/∂{name}_s‖")
    ax.set(xlabel="lag T - s", ylabel="norm over the batch", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_training(records: list[dict[str, Any]], title: str = "") -> Any:
    """Gradient norm before and after clipping per job (log scale), clipped updates marked, loss below."""
    plt = _plt()
    summary = training_summary(records)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    for index, job in enumerate(summary):
        rows = sorted((r for r in records if r.get("job", "main") == job and "grad_norm" in r), key=lambda r: r["step"])
        steps = [r["step"] for r in rows]
        color = f"C{index}"
        top.semilogy(steps, [r["grad_norm"] for r in rows], color=color, lw=1, label=f"{job}: before clipping")
        top.semilogy(steps, [r["grad_norm_clipped"] for r in rows], color=color, lw=1, ls="--",
                     label=f"{job}: after clipping")
        clipped = [(r["step"], r["grad_norm"]) for r in rows if r.get("clipped")]
        if clipped:
            top.scatter(*zip(*clipped), s=8, color=color, marker="x")
        bad = [r["step"] for r in rows if r.get("nonfinite")]
        for step in bad:
            top.axvline(step, color="red", lw=0.5)
        s = summary[job]
        bottom.semilogy(steps, _positive(torch.tensor([r["loss"] for r in rows], dtype=torch.float64)), color=color,
                        label=f"{job}: {100 * s['fraction_clipped']:.1f}% clipped, {s['nonfinite_updates']} non-finite")
        vals = [(r["step"], r["val_loss"]) for r in records if r.get("job", "main") == job and "val_loss" in r]
        if vals:
            bottom.semilogy(*zip(*vals), color=color, ls=":", marker=".", label=f"{job}: validation")
    top.set(ylabel="global gradient norm", title=title or "gradient norm per update (x: clipped)")
    top.legend(fontsize=7)
    bottom.set(xlabel="update", ylabel="loss")
    bottom.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_monitor(history: list[tuple[int, GradientFlow]], title: str = "‖P_k‖ during training") -> Any:
    """Lag curves measured by a :class:`GradientFlowMonitor`, coloured by training step."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    cmap = plt.get_cmap("viridis")
    for index, (step, flow) in enumerate(history):
        ax.semilogy(flow.lags, _positive(flow.lag_norms["state"]), color=cmap(index / max(len(history) - 1, 1)),
                    label=f"update {step}: rate {flow.rate:.3f}")
    ax.set(xlabel="lag k", ylabel="‖P_k‖", title=title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_horizon(rows: Tensor, title: str = "truncated BPTT: ‖∂L_u/∂x_t‖ per update u") -> Any:
    """Input-gradient norm over time for each update: zero outside the steps each truncated graph spans."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for u, row in enumerate(rows):
        ax.semilogy(range(len(row)), _positive(row), marker=".", ms=3, label=f"update {u + 1}")
    ax.set(xlabel="input step t", ylabel="‖∂L/∂x_t‖ (gaps are exact zeros)", title=title)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- statesim diagnose RUN_DIR
class DiagnoseError(StatesimError):
    """A run folder cannot be diagnosed."""


def diagnose_run(run_dir: str | Path, *, host: Any = None, batch: int = 8, steps: int = 100,
                 max_lag: int | None = None, norm: NormKind = "spectral", seed: int = 0,
                 echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Diagnose a finished run: gradient flow of every trained job plus clipping statistics.

    Writes ``diagnostics/report.json`` and PNGs in ``diagnostics/`` of the run folder and returns the report.
    """
    from statesim.plugin_manager import build_plugin_host
    from statesim.safepath import confined, refuse_symlinks

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise DiagnoseError(f"{run_dir} is not a run folder (no config.yaml); pass the folder `statesim run` wrote.")
    refuse_symlinks(run_dir, "diagnose")  # it writes diagnostics/ there: never through a link
    with confined(run_dir):
        return _diagnose_in(run_dir, host or build_plugin_host(), batch=batch, steps=steps, max_lag=max_lag,
                            norm=norm, seed=seed, echo=echo)


def _diagnose_in(run_dir: Path, host: Any, *, batch: int, steps: int, max_lag: int | None, norm: NormKind,
                 seed: int, echo: Callable[[str], None]) -> dict[str, Any]:
    """Diagnose every trained job of ``run_dir`` (its writes already confined to it)."""
    from statesim.config import load_config
    from statesim.fileio import atomic_write_json, save_figure
    from statesim.runfolder import load_model, trained_jobs

    out = run_dir / "diagnostics"
    records = read_metrics(run_dir / "metrics.jsonl")
    report: dict[str, Any] = {"run_dir": str(run_dir), "training": training_summary(records), "jobs": {}}
    if records:
        save_figure(plot_training(records), out / "training.png")
    config = load_config(run_dir / "config.yaml", host.registry)
    scenario = host.registry.get("scenario", config.scenario.type).record.cls(config.scenario.params)
    jobs = trained_jobs(run_dir)
    if not jobs:
        echo(f"note: {run_dir} has no checkpoints (it trains no model); only training statistics were diagnosed.")
    for job in jobs:
        try:
            model, _ = load_model(run_dir, job=job, weights="last", registry=host.registry)
        except StatesimError as exc:
            echo(f"note: job '{job}' cannot be rebuilt: {exc}")
            continue
        offered = scenario.diagnostic_batch(job, batch, seed)
        if offered is not None:
            data, loss_fn = offered
            inputs = data.inputs
        else:
            inputs = torch.randn(steps, batch, model.input_size, generator=torch.Generator().manual_seed(seed))
            data = loss_fn = None
        try:
            cell = model.step_cell()
        except TypeError as exc:
            echo(f"note: job '{job}': {exc}")
            continue
        flow = gradient_flow(cell, inputs, max_lag=max_lag, norm=norm)
        entry = {"inputs": "scenario data" if data is not None else "standard normal",
                 "cell": type(cell).__name__, **flow.to_json()}
        save_figure(plot_gradient_flow(flow, f"{job}: {flow.verdict}"), out / f"{job}_gradient_flow.png")
        if data is not None:
            grads = loss_gradients(model, data.inputs, data.targets, loss_fn, data.lengths)
            entry["loss_gradient_norms"] = {k: v.tolist() for k, v in grads.items()}
            save_figure(plot_loss_gradients(grads, f"{job}: ‖∂E/∂h_s‖ against lag"), out / f"{job}_loss_gradients.png")
        report["jobs"][job] = entry
        echo(f"{job}: {type(cell).__name__}, rate per step {flow.rate:.4g} -> {flow.verdict}")
    for job, stats in report["training"].items():
        echo(f"{job}: {stats['updates']} updates, {100 * stats['fraction_clipped']:.1f}% clipped, "
             f"{stats['nonfinite_updates']} non-finite")
    atomic_write_json(out / "report.json", report)
    return report
