"""Regenerate the figures of docs/gradients.md with statesim's own diagnostics.

    python docs/gradients_figures.py [GRADIENT_LAB_SWEEP_DIR [EXPLODING_SWEEP_DIR]]

Figures 1-3 and 5 are computed here from freshly built cells (seeded); figure 4 and 6 come from a run
of the gradient-lab sweep (default ``runs/sweeps/gradient_lab``): its trained models are diagnosed and
its comparison plot is copied. Images are written small (dpi 70) to docs/img/.
"""
from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from statesim import diagnostics as dg  # noqa: E402
from statesim.builtin.cells import GRUCell, LinearCell, LSTMCell, VanillaCell  # noqa: E402
from statesim.builtin.scenarios.long_lag import adding_data, last_step_mse  # noqa: E402
from statesim.config import TrainingConfig  # noqa: E402

IMG = Path(__file__).parent / "img"
DPI = 70


def save(fig, name: str) -> None:
    IMG.mkdir(parents=True, exist_ok=True)
    fig.savefig(IMG / name, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    print(f"wrote docs/img/{name}")


def shrink_copy(src: Path, name: str, factor: float = 0.6) -> None:
    """Copy a plot the tools wrote (dpi 110) at docs size."""
    from PIL import Image

    with Image.open(src) as img:
        img = img.convert("RGB")
        img.thumbnail((int(img.width * factor), int(img.height * factor)))
        img.save(IMG / name, optimize=True)
    print(f"wrote docs/img/{name}")


def linear_regimes() -> None:
    """Figure 1: ||P_k|| of the linear cell is ||D^k||; the spectral radius decides the regime."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for i, radius in enumerate([0.9, 1.0, 1.1]):
        gen = torch.Generator().manual_seed(3)
        D = torch.randn(8, 8, generator=gen, dtype=torch.float64)
        D = D * (radius / torch.linalg.eigvals(D).abs().max())
        cell = LinearCell(2, 8, init={"D": D.tolist()})
        flow = dg.gradient_flow(cell, torch.randn(100, 2, 2))
        ax.semilogy(flow.lags, flow.lag_norms["state"], color=f"C{i}", lw=2.5, alpha=0.6,
                    label=f"measured, ρ(D) = {radius} ({flow.verdict.split(' ')[0]})")
        ax.semilogy(flow.lags, flow.closed_form, "k:", lw=1)
        ax.semilogy(flow.lags, [radius ** k for k in flow.lags], color=f"C{i}", ls="--", lw=1)
    ax.plot([], [], "k:", label="closed form ‖D^k‖")
    ax.plot([], [], color="0.4", ls="--", label="ρ^k")
    ax.set(xlabel="lag k = t - s", ylabel="‖P_{s,t}‖ (spectral)", title="linear cell: P_{s,t} = D^{t-s}")
    ax.legend(fontsize=8)
    save(fig, "linear_regimes.png")


def untrained_cells() -> None:
    """Figure 2: lag curves of freshly initialised cells on adding-problem inputs (T = 100)."""
    torch.manual_seed(0)
    data = adding_data(100, 8, torch.Generator().manual_seed(0))
    cells = {"vanilla (tanh)": VanillaCell(2, 32), "gru": GRUCell(2, 32), "lstm": LSTMCell(2, 32),
             "lstm, forget bias 1": LSTMCell(2, 32, forget_bias=1.0)}
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for i, (name, cell) in enumerate(cells.items()):
        flow = dg.gradient_flow(cell, data.inputs)
        left.semilogy(flow.lags, flow.lag_norms["state"], color=f"C{i}", label=f"{name}: rate {flow.rate:.3f}")
        if "c<-c" in flow.lag_norms:
            left.semilogy(flow.lags, flow.lag_norms["c<-c"], color=f"C{i}", ls=":", label=f"{name}: ‖∂c_T/∂c_(T-k)‖")
            right.plot(range(1, 101), flow.self_diagonal["c"], color=f"C{i}", label=f"{name}: forget gate f_t")
    left.set(xlabel="lag k", ylabel="‖P_k‖", title="untrained cells, 32 units (geometric mean of 8 sequences)")
    left.legend(fontsize=7)
    right.set(xlabel="step t", ylabel="mean diag ∂c_t/∂c_(t-1) = mean f_t", ylim=(0, 1),
              title="the LSTM's cell path is damped only by f_t")
    right.legend(fontsize=7)
    save(fig, "untrained_cells.png")


def truncated_horizon() -> None:
    """Figure 5: truncated BPTT (k1 = k2 = 10) cuts every gradient at 10 steps, measured through the trainer."""
    from statesim.config import validate_model
    from statesim.model import build_model
    from statesim.plugin_manager import build_plugin_host

    torch.manual_seed(0)
    host = build_plugin_host(autoload=False)
    config = validate_model({"cell": {"type": "lstm", "hidden_size": 16}}, host.registry, "docs")
    model = build_model(host.registry, config, 2, 1)
    data = adding_data(40, 16, torch.Generator().manual_seed(1))
    data.targets[:] = data.targets[-1:]  # a target at every step, so each chunk has a loss
    from statesim.data import mse_loss

    rows = dg.bptt_horizon(model, data, TrainingConfig(bptt={"mode": "truncated", "k1": 10}), mse_loss)
    fig = dg.plot_horizon(rows, "truncated BPTT, k1 = k2 = 10: ‖∂L_u/∂x_t‖ per update u (gaps: exact zeros)")
    save(fig, "truncated_horizon.png")


def from_sweep(sweep: Path) -> None:
    """Figures 4 and 6: diagnose trained models of the sweep (what `statesim diagnose` does); copy its comparison."""
    from statesim.runfolder import load_model

    if not sweep.is_dir():
        print(f"no sweep folder {sweep}; run `statesim sweep scenarios/sweeps/gradient_lab.yaml` first")
        return
    if (sweep / "comparison.png").is_file():
        shrink_copy(sweep / "comparison.png", "gradient_lab_comparison.png")
    data = adding_data(100, 8, torch.Generator().manual_seed(99))
    for pattern, name in [("type=lstm_length=100_max_norm=none_*", "trained_lstm"),
                          ("type=vanilla_length=100_max_norm=none_*", "trained_vanilla")]:
        runs = sorted((sweep / "runs").glob(pattern))
        if not runs or not (runs[0] / "results.json").is_file():
            continue
        model, _ = load_model(runs[0], weights="last")
        flow = dg.gradient_flow(model.step_cell(), data.inputs)
        save(dg.plot_gradient_flow(flow, f"{name.replace('_', ' ')}, T = 100: {flow.verdict.split(' (')[0]}"),
             f"{name}_gradient_flow.png")
        grads = dg.loss_gradients(model, data.inputs, data.targets, last_step_mse)
        save(dg.plot_loss_gradients(grads, f"{name.replace('_', ' ')}: ‖∂E/∂h_s‖, loss at the last step"),
             f"{name}_loss_gradients.png")
        print(name, flow.verdict, round(flow.rate, 4), dg.training_summary(dg.read_metrics(runs[0] / "metrics.jsonl")))


def exploding(sweep: Path) -> None:
    """Figure 7: the exploding sweep's table plot and the gradient norms of its rho = 1.1 runs."""
    if not sweep.is_dir():
        print(f"no sweep folder {sweep}; run `statesim sweep scenarios/sweeps/exploding.yaml` first")
        return
    shrink_copy(sweep / "comparison.png", "exploding_comparison.png")
    for pattern, name in [("spectral_radius=1.1_max_norm=1.0_*", "exploding_clipped_training.png")]:
        runs = sorted((sweep / "runs").glob(pattern))
        if runs:
            records = dg.read_metrics(runs[0] / "metrics.jsonl")
            save(dg.plot_training(records, "linear cell, ρ(D) = 1.1 at start, SGD, clipping at 1.0"), name)
            print(dg.training_summary(records))


if __name__ == "__main__":
    torch.set_num_threads(1)
    linear_regimes()
    untrained_cells()
    truncated_horizon()
    from_sweep(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/sweeps/gradient_lab"))
    exploding(Path(sys.argv[2]) if len(sys.argv) > 2 else Path("runs/sweeps/exploding"))
