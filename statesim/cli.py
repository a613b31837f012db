"""The ``statesim`` command. Heavy imports (torch) happen inside subcommands so ``--help`` is instant."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable, TextIO

if TYPE_CHECKING:
    from statesim.plugin_manager import PluginHost

EPILOG = """examples:
  statesim run scenarios/moving_average.yaml
  statesim run scenarios/moving_average.yaml --set training.lr=0.01 --out runs/ma
  statesim run scenarios/moving_average.yaml --resume runs/ma
  statesim validate scenarios/linear_system.yaml --print
  statesim plugins
  statesim export runs/ma --job linear-on-ema --format onnx
  statesim diagnose runs/adding-20250101-120000
  statesim analyze runs/flipflop-20250101-120000
  statesim sweep scenarios/sweeps/gradient_lab.yaml --seeds 2
  statesim run scenarios/moving_average.yaml --nproc 2
  statesim run scenarios/moving_average.yaml --log tensorboard

environment:
  STATESIM_DISABLE_PLUGIN_AUTOLOAD=1   load only built-in plugins
  STATESIM_BLOCK_PLUGINS=a,b           skip the named plugins
  STATESIM_STRICT=1                    check every step's returned state, not only the first (run --strict)
"""


def _plugin_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--block-plugin", action="append", default=[], metavar="NAME",
                        help="skip the plugin NAME (repeatable)")
    parser.add_argument("--strict-plugins", action="store_true",
                        help="fail when any plugin cannot be loaded instead of skipping it")


def _host(args: argparse.Namespace) -> PluginHost:
    from statesim.plugin_manager import build_plugin_host

    return build_plugin_host(block=args.block_plugin, strict=args.strict_plugins)


def _set_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="scenario YAML file")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override a config key (dotted path, value as YAML), e.g. --set training.lr=0.01; "
                             "a whole mapping: --set 'model.cell={type: gru, hidden_size: 32}'; a new component "
                             "type (--set model.cell.type=gru) keeps only the keys that type accepts")


def cmd_run(args: argparse.Namespace) -> int:
    """Train and evaluate a scenario."""
    import os

    if args.nproc > 1 and int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
        return _launch_ranks(args)
    from statesim.run import execute

    run_dir = execute(args.file, args.overrides, out=args.out, resume=args.resume, device=args.device,
                      host=_host(args), loggers=args.loggers)
    if int(os.environ.get("RANK", "0") or 0) != 0:  # a data-parallel rank other than 0: rank 0 reports
        return 0
    print(f"run folder: {run_dir}")
    results = run_dir / "results.json"
    if results.exists():
        print(results.read_text(encoding="utf-8").strip())
    try:
        import json

        seconds = json.loads((run_dir / "run.json").read_text(encoding="utf-8")).get("train_seconds") or {}
    except (OSError, ValueError):
        seconds = {}
    if seconds:
        print("training time: " + ", ".join(f"{job} {value:.2f} s" for job, value in seconds.items()))
    summary = _targets_summary(results)
    if summary:
        print(summary)
    return 0


def _targets_summary(results_file: Path) -> str | None:
    """One closing line for a scenario whose results carry ``targets_met`` (name -> met), so a user sees it last."""
    import json

    try:
        met = json.loads(results_file.read_text(encoding="utf-8")).get("targets_met")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(met, dict) or not met:
        return None
    missed = [name for name, ok in met.items() if not ok]
    line = f"targets met: {len(met) - len(missed)} of {len(met)}"
    line += f"; missed: {', '.join(missed)}" if missed else " (all)"
    report = results_file.parent / "report.md"
    return line + (f"; details in {report}" if report.exists() else "")


def _launch_ranks(args: argparse.Namespace) -> int:
    """``run --nproc N``: start N local ranks of the same command (torchrun's environment) and wait."""
    from statesim.distributed import launch, rank_command

    argv = ["run", args.file, *[f"--set={o}" for o in args.overrides]]
    for flag, value in (("--out", args.out), ("--resume", args.resume), ("--device", args.device)):
        if value is not None:
            argv.append(f"{flag}={value}")
    argv += [f"--block-plugin={name}" for name in args.block_plugin]
    argv += [f"--log={name}" for name in args.loggers]
    argv += ["--strict-plugins"] if args.strict_plugins else []
    launch(rank_command(argv), args.nproc)
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """Check a scenario file without running it."""
    from statesim.config import dump_config
    from statesim.run import prepare

    config, host = prepare(args.file, args.overrides, host=_host(args))
    for problem in host.problems:
        print(f"warning: {problem}", file=sys.stderr)
    if args.print:
        print(dump_config(config), end="")
    else:
        print(f"{args.file}: valid (scenario '{config.scenario.type}')")
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    """List every plugin and what it registers."""
    from statesim.kinds import KINDS

    host = _host(args)
    for info in host.plugins:
        origin = "built-in" if info.distribution is None else f"{info.distribution} {info.version}"
        print(f"{info.name}  ({origin})")
        provided = host.provided_by(info.name)
        for kind in KINDS:
            if provided.get(kind.name):
                print(f"    {kind.plural}: {', '.join(provided[kind.name])}")
    for problem in host.problems:
        print(f"problem: {problem}")
    if args.verbose:
        print()
        for kind in KINDS:
            for name in host.registry.names(kind.name):
                entry = host.registry.get(kind.name, name)
                print(f"{kind.label} {name}: {entry.record.description}  [{entry.plugin}]")
    return 0


def cmd_diagnose(args: argparse.Namespace) -> int:
    """Gradient-flow diagnostics of a finished run."""
    from statesim.diagnostics.report import diagnose_run

    diagnose_run(args.run_dir, host=_host(args), batch=args.batch, steps=args.steps, max_lag=args.max_lag,
                 norm=args.norm, seed=args.seed)
    print(f"report: {args.run_dir}/diagnostics/report.json (plots beside it)")
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    """Fixed points, local linear models, Lyapunov spectrum and limit cycle of a finished run's models."""
    from statesim.analysis.report import AnalysisOptions, AnalyzeError, analyze_run

    x_star = None
    if args.input is not None:
        try:
            x_star = [float(v) for v in args.input.split(",")]
        except ValueError:
            raise AnalyzeError(f"--input takes comma-separated numbers (one per model input), "
                               f"got {args.input!r}.") from None
    options = AnalysisOptions(starts=args.starts, lyapunov_steps=args.steps, dt=args.dt, seed=args.seed)
    analyze_run(args.run_dir, job=args.job, x_star=x_star, inputs_from_data=args.inputs_from_data,
                options=options, host=_host(args))
    print(f"report: {args.run_dir}/analysis/<job>/report.json (plots in {args.run_dir}/analysis/)")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    """Run a grid of configurations, each as an ordinary run folder, and summarise them."""
    from statesim.sweep.executors import make_executor
    from statesim.sweep.runner import run_sweep
    from statesim.sweep.spec import load_sweep

    spec = load_sweep(args.file, args.grid, args.seeds, args.out, args.overrides)
    executor = make_executor(args.executor, args.workers)
    if args.ray_address:
        if args.executor != "ray":
            from statesim.sweep.spec import SweepError

            raise SweepError("--ray-address goes with --executor ray.")
        executor.address = args.ray_address  # type: ignore[attr-defined]  # the ray executor (checked above)
    result = run_sweep(spec, executor, host=_host(args))
    print((result.out / "summary.md").read_text(encoding="utf-8"))
    return 1 if result.failed else 0


def cmd_export(args: argparse.Namespace) -> int:
    """Export one step of a trained model (TorchScript or ONNX) with a JSON sidecar, then verify it."""
    from pathlib import Path

    from statesim.export import TOLERANCE, ExportError, default_path, export_job_name, export_model, verify_export
    from statesim.runfolder import find_checkpoint, load_model
    from statesim.safepath import confined

    host = _host(args)
    sidecar_in, run_dir = find_checkpoint(args.run_dir, args.job,
                                          warn=lambda message: print(f"warning: {message}", file=sys.stderr))
    model, info = load_model(sidecar_in, weights=args.weights, registry=host.registry)
    job = export_job_name(sidecar_in, info.meta)
    if args.out:
        out = Path(args.out)
        sidecar = export_model(model, out, args.format, source=info, opset=args.opset)
    else:  # the default lies inside the run folder, and the sidecar's metadata cannot move it out
        base = run_dir or sidecar_in.parent
        out = default_path(base, job, args.format)
        with confined(base):
            sidecar = export_model(model, out, args.format, source=info, opset=args.opset)
    print(f"exported job '{job}' (step {info.step}) as {args.format}: {out}\nsidecar: {sidecar}")
    if args.verify_steps:
        error = verify_export(sidecar, model, steps=args.verify_steps)
        if error > TOLERANCE:
            raise ExportError(f"the export differs from the engine by {error:.3g} (> {TOLERANCE}) over "
                              f"{args.verify_steps} steps; do not use it. Report this with the model's config.")
        print(f"verified: max abs error {error:.2g} against the engine over {args.verify_steps} steps")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``statesim``."""
    parser = argparse.ArgumentParser(
        prog="statesim", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Simulate and train stateful dynamical systems f(x_t, h_{t-1}) -> (y_t, h_t) from YAML scenarios.")
    from statesim import __version__

    parser.add_argument("--version", action="version", version=f"statesim {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_run_command(sub)
    _add_validate_command(sub)
    _add_plugins_command(sub)
    _add_diagnose_command(sub)
    _add_analyze_command(sub)
    _add_sweep_command(sub)
    _add_export_command(sub)
    return parser


def _add_run_command(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """The ``run`` subcommand's arguments."""
    run = sub.add_parser("run", help="train and evaluate a scenario, writing a run folder",
                         description="Train and evaluate a scenario. Writes config.yaml, metrics.jsonl, results.json, "
                                     "checkpoints/ and plots/ to the run folder (runs/<name>-<timestamp> by default).")
    _set_args(run)
    run.add_argument("--strict", action="store_true",
                     help="debug mode: check every step's returned state (parts, shapes, dtypes, no writes into "
                          "the input state), not only each unroll's first step; same as STATESIM_STRICT=1")
    run.add_argument("--out", help="run folder to create (default: runs/<name>-<timestamp>)")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last good checkpoint")
    run.add_argument("--device", choices=["cpu", "cuda", "auto"], help="override the scenario's device")
    run.add_argument("--log", action="append", default=[], metavar="NAME", dest="loggers",
                     help="also log to the logger NAME, e.g. tensorboard or mlflow (repeatable; added to the file's "
                          "`logging:` list; metrics.jsonl is always written)")
    run.add_argument("--nproc", type=int, default=1, metavar="N",
                     help="data-parallel training on N local processes (gloo on CPU, NCCL on CUDA); under "
                          "torchrun, leave it out (docs/scaling.md)")
    _plugin_args(run)
    run.set_defaults(func=cmd_run)


def _add_validate_command(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """The ``validate`` subcommand's arguments."""
    validate = sub.add_parser("validate", help="check a scenario file without running it",
                              description="Validate a scenario file and its --set overrides; list every problem.")
    _set_args(validate)
    validate.add_argument("--print", action="store_true", help="print the fully resolved config")
    _plugin_args(validate)
    validate.set_defaults(func=cmd_validate)


def _add_plugins_command(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """The ``plugins`` subcommand's arguments."""
    plugins = sub.add_parser("plugins", help="list plugins and what they register",
                             description="List every loaded plugin (name, distribution, version) and the cells, "
                                         "topologies, initial-state policies and scenarios it registers.")
    plugins.add_argument("-v", "--verbose", action="store_true", help="also describe every registered name")
    _plugin_args(plugins)
    plugins.set_defaults(func=cmd_plugins)


def _add_diagnose_command(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """The ``diagnose`` subcommand's arguments."""
    diagnose = sub.add_parser("diagnose", help="gradient-flow diagnostics of a finished run",
                              description="Measure ||dh_t/dh_s|| (the product P_{s,t}) and ||dE/dh_s|| against the lag "
                                          "for every trained model of RUN_DIR, the per-step Jacobian spectrum and the "
                                          "vanishing/exploding verdict, and summarise clipping and non-finite "
                                          "gradients from metrics.jsonl. Writes RUN_DIR/diagnostics/report.json "
                                          "and PNGs.")
    diagnose.add_argument("run_dir", metavar="RUN_DIR", help="a folder written by `statesim run`")
    diagnose.add_argument("--batch", type=int, default=8, help="sequences to measure on (default 8)")
    diagnose.add_argument("--steps", type=int, default=100,
                          help="sequence length when the scenario offers no data of its own (default 100)")
    diagnose.add_argument("--max-lag", type=int, default=None, help="longest lag measured (default: the sequence)")
    diagnose.add_argument("--norm", choices=["spectral", "frobenius"], default="spectral", help="matrix norm")
    diagnose.add_argument("--seed", type=int, default=0, help="seed of the measured sequences")
    _plugin_args(diagnose)
    diagnose.set_defaults(func=cmd_diagnose)


def _add_analyze_command(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """The ``analyze`` subcommand's arguments."""
    analyze = sub.add_parser("analyze", help="fixed points, linearisation and Lyapunov spectrum of a finished run",
                             description="For every trained model of RUN_DIR (or --job): fixed and slow points at a "
                                         "constant input (minimising 1/2||f(x*, h) - h||^2 from many starts on the "
                                         "model's trajectories), the eigenvalues and local linear model (a `linear` "
                                         "cell config) at each, the Lyapunov spectrum, and the limit cycle's period "
                                         "and Floquet multipliers when the model oscillates. Writes "
                                         "RUN_DIR/analysis/<job>/report.json, local_linear_<k>.yaml and PNGs.")
    analyze.add_argument("run_dir", metavar="RUN_DIR", help="a folder written by `statesim run`")
    analyze.add_argument("--job", help="analyse one model of a run that trained several (default: all)")
    analyze.add_argument("--input", metavar="CONST", help="the constant input x*, comma-separated (default: zeros)")
    analyze.add_argument("--inputs-from-data", action="store_true",
                         help="sample starts on, and measure the spectrum along, the scenario's own data")
    analyze.add_argument("--starts", type=int, default=1024, help="starts of the fixed-point search (default 1024)")
    analyze.add_argument("--steps", type=int, default=1000, help="steps of the Lyapunov spectrum (default 1000)")
    analyze.add_argument("--dt", type=float, default=None, help="seconds per step, to report rates per second")
    analyze.add_argument("--seed", type=int, default=0, help="seed of the starts and noise (default 0)")
    _plugin_args(analyze)
    analyze.set_defaults(func=cmd_analyze)


def _add_sweep_command(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """The ``sweep`` subcommand's arguments."""
    sweep = sub.add_parser("sweep", help="run every combination of a grid of config values",
                           description="Run every combination of --grid values (and of the file's `sweep:` section) "
                                       "times --seeds, each as an ordinary run folder under the sweep folder, then "
                                       "write summary.csv, summary.md and comparison.png. Failed runs are reported "
                                       "without stopping the others; running again skips finished runs.")
    _set_args(sweep)
    sweep.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                       help="values of one config key, e.g. --grid model.cell.type=lstm,gru (repeatable)")
    sweep.add_argument("--seeds", type=int, default=None, help="seeds per combination (base seed, +1, ...)")
    sweep.add_argument("--out", help="sweep folder (default: runs/sweeps/<name>)")
    sweep.add_argument("--executor", default="local",
                       help="where runs execute: local (process pool), serial, or ray (pip install 'statesim[ray]')")
    sweep.add_argument("--ray-address", default=None, metavar="ADDRESS",
                       help="Ray cluster for --executor ray, as ray.init takes it (ray://head:10001, auto; "
                            "default: RAY_ADDRESS, else a new local instance)")
    sweep.add_argument("--workers", type=int, default=None, help="parallel runs (default: available cores)")
    _plugin_args(sweep)
    sweep.set_defaults(func=cmd_sweep)


def _add_export_command(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """The ``export`` subcommand's arguments."""
    export = sub.add_parser("export", help="export one step of a trained model (TorchScript or ONNX)",
                            description="Write a single-step module (x, state...) -> (y, state...) of a finished run's "
                                        "model plus a JSON sidecar naming inputs, outputs, shapes and state parts, "
                                        "then run it against the engine on random inputs.")
    export.add_argument("run_dir", help="run folder, or a checkpoint file (checkpoints/<job>/step_*.json)")
    export.add_argument("--format", choices=["torchscript", "onnx"], required=True, help="export format")
    export.add_argument("--job", help="which model of a run that trained several (default: the only one, or main)")
    export.add_argument("--weights", choices=["auto", "last", "best"], default="auto",
                        help="checkpoint weights: best validated (auto: when the run early-stopped) or last")
    export.add_argument("--out", help="output file (default: RUN_DIR/export/<job>.step.pt|.onnx)")
    export.add_argument("--opset", type=int, default=None, help="ONNX opset version (default: the exporter's)")
    export.add_argument("--verify-steps", type=int, default=100, metavar="N",
                        help="steps compared against the engine after export (0 skips the check)")
    _plugin_args(export)
    export.set_defaults(func=cmd_export)


def _show_statesim_warnings_plainly() -> None:
    """statesim's own warnings read ``warning: <paragraph>`` on stderr, without Python's file:line and source."""
    import warnings

    default = warnings.showwarning

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: TextIO | None = None,
             line: str | None = None) -> None:
        if category.__module__.startswith("statesim."):  # by module: importing the classes would import torch
            print(f"warning: {message}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    warnings.showwarning = show


def main(argv: list[str] | None = None) -> int:
    """Entry point: run a subcommand; user errors print one paragraph and exit non-zero."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    func: Callable[[argparse.Namespace], int] = args.func
    if getattr(args, "strict", False):
        os.environ["STATESIM_STRICT"] = "1"  # an environment variable so worker processes inherit it
    from statesim.errors import StatesimError

    _show_statesim_warnings_plainly()
    try:
        try:
            return func(args)
        except StatesimError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return exc.exit_code
        except Exception as exc:  # Interrupted from the trainer is a clean stop, not a crash
            from statesim.trainer import Interrupted

            if isinstance(exc, Interrupted):
                print(str(exc) if "--resume" in str(exc) else f"{exc} Continue with --resume.", file=sys.stderr)
                return 130
            raise
    except KeyboardInterrupt:  # outermost, so a Ctrl-C while reporting another stop still exits quietly
        print("interrupted at once; checkpoints written so far are intact (continue with --resume RUN_DIR).",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
