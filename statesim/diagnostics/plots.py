"""Figures of the diagnostics: lag curves, loss gradients, training records, monitor history, BPTT horizon."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from statesim.diagnostics.flow import GradientFlow
from statesim.diagnostics.records import training_summary


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
