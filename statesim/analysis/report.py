"""``statesim analyze RUN``: fixed points, local linear models, Lyapunov spectrum and limit cycle of a trained model.

Writes ``analysis/<job>/report.json``, one ``local_linear_<k>.yaml`` per fixed point (a ``model:`` section for
the ``linear`` cell) and three plots per job in the run folder: fixed points in the PCA plane of the visited
states with trajectories, eigenvalues against the unit circle, and the convergence of the Lyapunov spectrum.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from statesim.analysis.fixed_points import FixedPointOptions, FixedPoints, find_fixed_points, sample_starts
from statesim.analysis.linearize import linearize
from statesim.analysis.lyapunov import LyapunovSpectrum, limit_cycle, lyapunov_spectrum
from statesim.errors import StatesimError

#: Local linear models written out per job (the lowest-q fixed points first).
MAX_LINEAR_MODELS = 16


class AnalyzeError(StatesimError):
    """A run or model cannot be analysed as asked."""


@dataclass
class AnalysisOptions:
    """What :func:`analyze_model` explores and for how long."""

    starts: int = 1024
    trajectories: int = 16
    trajectory_steps: int = 200
    input_noise: float = 0.5  # std of the noise around x* that drives the exploring trajectories
    start_noise: float = 0.01
    lyapunov_steps: int = 1000
    warmup: int = 200
    dt: float | None = None
    seed: int = 0
    fixed_points: FixedPointOptions | None = None


def _initial_state(model: Any, batch: int, generator: torch.Generator) -> dict[str, Tensor]:
    try:
        state = model.initial(batch)
    except (StatesimError, TypeError, ValueError, RuntimeError):  # a policy that needs context it lacks here
        state = model.step_cell().zero_state(batch)
    return {k: v + 0.1 * torch.randn(v.shape, generator=generator, dtype=v.dtype) for k, v in state.items()}


def analyze_model(model: Any, x_star: Tensor, *, inputs: Tensor | None = None,
                  options: AnalysisOptions | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Analyse ``model`` at the constant input ``x_star``; returns ``(report, artefacts)``.

    ``inputs [T, B, F]``: trajectories to sample starts on and to measure the Lyapunov spectrum along (the
    scenario's data); by default ``x_star`` plus Gaussian noise drives them.
    """
    options = options or AnalysisOptions()
    generator = torch.Generator().manual_seed(options.seed)
    try:
        cell = model.step_cell()
    except TypeError as exc:
        raise AnalyzeError(f"cannot analyse this model: {exc}") from None
    cell.eval()
    dtype = next((p.dtype for p in cell.parameters()), torch.get_default_dtype())
    x_star = torch.as_tensor(x_star, dtype=dtype).reshape(-1)
    if x_star.numel() != cell.input_size:
        raise AnalyzeError(f"the constant input has {x_star.numel()} values but the model takes {cell.input_size} "
                           f"inputs; pass --input with {cell.input_size} comma-separated numbers.")
    driven_by_data = inputs is not None
    if inputs is None:
        shape = (options.trajectory_steps, options.trajectories, cell.input_size)
        inputs = x_star + options.input_noise * torch.randn(shape, generator=generator, dtype=dtype)
    inputs = inputs.to(dtype)
    state0 = _initial_state(model, inputs.shape[1], generator)
    starts = sample_starts(cell, inputs, state0, options.starts, noise=options.start_noise, generator=generator)
    points = find_fixed_points(cell, x_star, starts, options.fixed_points)
    head = model.head if isinstance(model.head, torch.nn.Linear) else None
    linear = [linearize(cell, x_star, points.states[k], head) for k in range(min(len(points), MAX_LINEAR_MODELS))]

    visited = starts  # states the trajectories visited (with a little noise): the PCA basis of the plot
    along = inputs[:, 0] if driven_by_data else x_star
    start_state = {k: v[:1] for k, v in state0.items()}
    spectrum = lyapunov_spectrum(cell, along, start_state, steps=None if driven_by_data else options.lyapunov_steps,
                                 # data sequences are short: a quarter of one is warm-up, the rest is measured
                                 warmup=min(options.warmup, inputs.shape[0] // 4) if driven_by_data else options.warmup,
                                 dt=options.dt)
    cycle = limit_cycle(cell, x_star, start_state, warmup=options.warmup, steps=options.lyapunov_steps,
                        dt=options.dt)
    report = {"cell": type(cell).__name__, "state_parts": {p: list(s) for p, s in cell.state_spec.items()},
              "input": x_star.tolist(), "trajectories": "scenario data" if driven_by_data else
              f"x* + N(0, {options.input_noise}^2) noise", "fixed_points": points.to_json(dt=options.dt),
              "local_linear_models": len(linear), "lyapunov": spectrum.to_json(),
              "lyapunov_along": "scenario data (first sequence)" if driven_by_data else "constant input x*",
              "limit_cycle": None if cycle is None else cycle.to_json()}
    artefacts = {"points": points, "linear": linear, "spectrum": spectrum, "cycle": cycle, "visited": visited,
                 "cell": cell, "inputs": inputs, "state0": state0}
    return report, artefacts


# --------------------------------------------------------------------------- plots
def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_fixed_points(points: FixedPoints, visited: Tensor, trajectories: Tensor, title: str = "") -> Any:
    """Fixed points (filled: stable, x: unstable, o: marginal) and trajectories in the PCA plane of ``visited``."""
    plt = _plt()
    centre = visited.mean(0)
    _, _, vh = torch.linalg.svd(visited - centre, full_matrices=False)
    basis = vh[:2].T

    def project(z: Tensor) -> Tensor:
        return (z.to(torch.float64) - centre) @ basis

    fig, ax = plt.subplots(figsize=(5.5, 5))
    for b in range(min(trajectories.shape[1], 8)):
        path = project(trajectories[:, b])
        ax.plot(path[:, 0], path[:, 1], color="0.75", lw=0.7)
    style = {"stable": dict(marker="o", color="C0"), "unstable": dict(marker="x", color="C3"),
             "marginal": dict(marker="s", color="C2", mfc="none")}
    if len(points):
        where = project(points.states)
        for kind, kw in style.items():
            idx = [k for k, s in enumerate(points.stability) if s == kind]
            if idx:
                ax.plot(where[idx, 0], where[idx, 1], ls="none", ms=8, label=f"{kind} ({len(idx)})", **kw)
        ax.legend(fontsize=8)
    ax.set(title=title or "fixed points in the PCA plane of visited states", xlabel="PC1", ylabel="PC2")
    fig.tight_layout()
    return fig


def plot_eigenvalues(points: FixedPoints, limit: int = 4, title: str = "") -> Any:
    """Eigenvalues of the state Jacobian at up to ``limit`` fixed points, against the unit circle."""
    plt = _plt()
    count = max(1, min(limit, len(points)))
    fig, axes = plt.subplots(1, count, figsize=(3.2 * count, 3.3), squeeze=False)
    angle = torch.linspace(0, 2 * math.pi, 200)
    for k, ax in enumerate(axes[0]):
        ax.plot(torch.cos(angle), torch.sin(angle), color="0.6", lw=0.8)
        if k < len(points):
            ev = points.eigenvalues[k]
            ax.plot(ev.real, ev.imag, "o", ms=3, color="C3" if points.stability[k] == "unstable" else "C0")
            ax.set_title(f"point {k}: {points.stability[k]}", fontsize=9)
        ax.set_aspect("equal")
        ax.axhline(0, color="0.85", lw=0.5)
        ax.axvline(0, color="0.85", lw=0.5)
    fig.suptitle(title or "eigenvalues of d state_t / d state_(t-1) at the fixed points", fontsize=9)
    fig.tight_layout()
    return fig


def plot_lyapunov(spectrum: LyapunovSpectrum, count: int = 8, title: str = "") -> Any:
    """Running estimates of the largest ``count`` exponents against the number of steps."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    scale = 1.0 / spectrum.dt if spectrum.dt else 1.0
    steps = torch.arange(1, spectrum.history.shape[0] + 1)
    for i in range(min(count, spectrum.history.shape[1])):
        ax.plot(steps, spectrum.history[:, i] * scale, lw=0.9,
                label=f"λ{i + 1} = {float(spectrum.exponents[i]) * scale:.3g}")
    ax.axhline(0, color="0.5", lw=0.6)
    ax.set(xscale="log", xlabel="steps", ylabel="exponent per " + ("second" if spectrum.dt else "step"),
           title=title or "Lyapunov spectrum: convergence (QR method)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- a run folder
def _trajectory_states(cell: Any, inputs: Tensor, state0: dict[str, Tensor]) -> Tensor:
    from statesim.cell import flatten_state
    from statesim.engine import unroll

    with torch.no_grad():
        traj = unroll(cell, inputs, state0, return_states=True)
    assert traj.states is not None  # return_states=True
    steps, batch = inputs.shape[0], inputs.shape[1]
    return flatten_state({k: v.reshape(steps * batch, *v.shape[2:]) for k, v in traj.states.items()},
                         cell.state_spec).reshape(steps, batch, -1)


def write_job(out: Path, job: str, report: dict[str, Any], artefacts: dict[str, Any]) -> None:
    """Write one job's report, local linear models and plots under ``out``."""
    from statesim.fileio import atomic_write_json, atomic_write_text, save_figure
    from statesim.yamlio import dump_yaml

    folder = out / job
    for k, local in enumerate(artefacts["linear"]):
        text = (f"# local linear model of job '{job}' at fixed point {k} (statesim analyze)\n"
                f"# {local.to_json()['note']}\n" + dump_yaml({"model": local.model_config()}))
        atomic_write_text(folder / f"local_linear_{k}.yaml", text)
        report["fixed_points"]["points"][k]["local_linear_model"] = f"{job}/local_linear_{k}.yaml"
        report["fixed_points"]["points"][k]["operating_point"] = local.to_json()["operating_point"]
    atomic_write_json(folder / "report.json", report)
    points, cell = artefacts["points"], artefacts["cell"]
    trajectories = _trajectory_states(cell, artefacts["inputs"], artefacts["state0"])
    save_figure(plot_fixed_points(points, artefacts["visited"], trajectories, f"{job}: fixed points"),
                out / f"{job}_fixed_points.png")
    save_figure(plot_eigenvalues(points, title=f"{job}: eigenvalues at the fixed points"),
                out / f"{job}_eigenvalues.png")
    save_figure(plot_lyapunov(artefacts["spectrum"], title=f"{job}: Lyapunov spectrum"), out / f"{job}_lyapunov.png")


def analyze_run(run_dir: str | Path, *, job: str | None = None, x_star: list[float] | None = None,
                inputs_from_data: bool = False, options: AnalysisOptions | None = None, host: Any = None,
                echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Analyse every trained job of a run (or ``job``); writes ``analysis/`` in the run folder."""
    from statesim.config import load_config
    from statesim.plugin_manager import build_plugin_host
    from statesim.runfolder import load_model, trained_jobs
    from statesim.safepath import confined, refuse_symlinks

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise AnalyzeError(f"{run_dir} is not a run folder (no config.yaml); pass the folder `statesim run` wrote.")
    options = options or AnalysisOptions()
    host = host or build_plugin_host()
    jobs = trained_jobs(run_dir)
    if job is not None:
        if job not in jobs:
            raise AnalyzeError(f"the run {run_dir} has no checkpoints for job '{job}'; its jobs are: "
                               f"{', '.join(jobs) or 'none'}.")
        jobs = [job]
    if not jobs:
        raise AnalyzeError(f"{run_dir} has no checkpoints (it trained no model); nothing to analyse.")
    scenario = None
    if inputs_from_data:  # only then is the scenario needed (the models rebuild from their checkpoints alone)
        config = load_config(run_dir / "config.yaml", host.registry)
        scenario = host.registry.get("scenario", config.scenario.type).record.cls(config.scenario.params)
    refuse_symlinks(run_dir, "analyse")
    results: dict[str, Any] = {"run_dir": str(run_dir), "jobs": {}}
    with confined(run_dir):
        for name in jobs:
            model, _ = load_model(run_dir, job=name, weights="last", registry=host.registry)
            inputs = None
            if scenario is not None:
                offered = scenario.diagnostic_batch(name, options.trajectories, options.seed)
                if offered is None:
                    raise AnalyzeError(f"the scenario '{config.scenario.type}' offers no data batch for analysis "
                                       f"(job '{name}'); drop --inputs-from-data to explore with x* plus noise.")
                with torch.no_grad():  # in the cell's units: after the model's embedding or input z-scores
                    inputs = model.read_in(offered[0].inputs)
            point = torch.zeros(model.input_size) if x_star is None else torch.tensor(x_star)
            report, artefacts = analyze_model(model, point, inputs=inputs, options=options)
            write_job(run_dir / "analysis", name, report, artefacts)
            results["jobs"][name] = report
            fp = report["fixed_points"]["counts"]
            lam = report["lyapunov"]["per_step"]
            echo(f"{name}: {fp['unique']} fixed/slow points from {fp['starts']} starts ({fp['attractors']} attracting "
                 f"and {fp['saddles']} saddle fixed points, {fp['slow']} slow points); largest Lyapunov exponent "
                 f"{lam[0]:.4g} per step" + (f"; limit cycle of {report['limit_cycle']['period_steps']:.2f} steps"
                                              if report["limit_cycle"] else ""))
    return results


__all__ = ["AnalysisOptions", "AnalyzeError", "analyze_model", "analyze_run", "plot_eigenvalues",
           "plot_fixed_points", "plot_lyapunov", "write_job"]
