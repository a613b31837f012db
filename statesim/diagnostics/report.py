"""``statesim diagnose RUN_DIR``: gradient flow of every trained job of a run, with clipping statistics."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from statesim.diagnostics.flow import gradient_flow
from statesim.diagnostics.gradients import loss_gradients
from statesim.diagnostics.jacobians import NormKind
from statesim.diagnostics.plots import plot_gradient_flow, plot_loss_gradients, plot_training
from statesim.diagnostics.records import read_metrics, training_summary
from statesim.errors import StatesimError


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
    # Where the run logged does not matter here: a run logged to TensorBoard is diagnosed where it is not installed.
    config = load_config(run_dir / "config.yaml", host.registry, ["logging=[]"])
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
            with torch.no_grad():  # the cell reads what the model's input layer gives it (embedding, z-scores)
                inputs = model.read_in(data.inputs)
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
