"""``statesim run``: make the run folder, record everything needed to reproduce it, run the scenario."""
from __future__ import annotations

import datetime as _dt
import math
import os
import platform
import signal
import subprocess
import sys
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from statesim.config import RunConfig, dump_config, load_config
from statesim.datafiles import changed_files, data_files
from statesim.errors import ConfigError, StatesimError
from statesim.fileio import atomic_write_json, atomic_write_text, is_own_temporary
from statesim.loggers import LoggerSet, logging_session, open_loggers
from statesim.plugin_manager import PluginHost, build_plugin_host
from statesim.runlock import LOCK_NAME, RunLock
from statesim.safepath import confined, guard, refuse_symlinks, remove, symlinks_under
from statesim.scenario import RunContext
from statesim.trainer import Interrupted, rng_states, seed_everything, set_rng_states
from statesim.yamlio import parse_yaml


def resolve_device(name: str) -> torch.device:
    """'cpu', 'cuda' or 'auto' (cuda when available)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise StatesimError("device 'cuda' was requested but no CUDA device is available; "
                            "use --device cpu or device: auto.")
    return torch.device(name)


def environment(host: PluginHost) -> dict[str, Any]:
    """Versions of Python, torch, statesim and every plugin, and the git commit when available."""
    from statesim import __version__

    commit = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    return {"python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
            "statesim": __version__, "git_commit": commit,
            "plugins": [{"name": p.name, "distribution": p.distribution, "version": p.version} for p in host.plugins],
            "plugin_problems": [str(p) for p in host.problems],
            "plugin_problem_records": [p.to_json() for p in host.problems], "argv": sys.argv}


def flag_nonfinite(data: Any, path: str = "") -> tuple[Any, dict[str, str]]:
    """``data`` with NaN/inf floats replaced by None, and each replaced dotted path with what it held."""
    if hasattr(data, "tolist") and not isinstance(data, (str, bytes)):  # numpy scalars/arrays, tensors
        data = data.tolist()
    if isinstance(data, float) and not math.isfinite(data):
        return None, {path or "(value)": "nan" if data != data else ("inf" if data > 0 else "-inf")}
    flagged: dict[str, str] = {}
    if isinstance(data, dict):
        out = {}
        for key, value in data.items():
            out[key], found = flag_nonfinite(value, f"{path}.{key}" if path else str(key))
            flagged.update(found)
        return out, flagged
    if isinstance(data, (list, tuple)):
        items = []
        for index, value in enumerate(data):
            item, found = flag_nonfinite(value, f"{path}.{index}" if path else str(index))
            items.append(item)
            flagged.update(found)
        return items, flagged
    return data, flagged


def _config_diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = list(dict.fromkeys([*old, *new]))
        return [d for k in keys for d in _config_diff(old.get(k), new.get(k), f"{prefix}{k}.")]
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} -> {new!r}"]


class Progress:
    """A rich progress bar per training job, showing the loss."""

    def __init__(self, enabled: bool) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, \
            TimeElapsedColumn, TimeRemainingColumn

        self.bar = RichProgress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("loss {task.fields[loss]:.4g}"), TimeElapsedColumn(),
                                TimeRemainingColumn(), console=Console(stderr=True), disable=not enabled)
        self.tasks: dict[str, Any] = {}

    def start(self, job: str, total: int, done: int) -> Callable[..., None]:
        """Begin a job's bar; returns the per-update callback."""
        if not self.tasks:
            self.bar.start()
        task = self.bar.add_task(job, total=total, completed=done, loss=float("nan"))
        self.tasks[job] = task
        return lambda step, loss: self.bar.update(task, completed=step, loss=loss)

    def stop(self, job: str) -> None:
        """Finish a job's bar."""
        self.tasks.pop(job, None)
        if not self.tasks:
            self.bar.stop()


@contextmanager
def graceful_interrupt() -> Iterator[list[bool]]:
    """First Ctrl-C asks the trainer to checkpoint and stop; a second one interrupts at once."""
    flag = [False]
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum: int, frame: Any) -> None:
        if flag[0]:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        flag[0] = True
        # os.write, not print: a handler that prints while the main code is printing raises "reentrant call".
        os.write(2, b"\nstopping after the current update (Ctrl-C again to stop at once)...\n")

    try:
        signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield flag
        return
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


@contextmanager
def preserved_global_rng() -> Iterator[None]:
    """Restore torch's (CPU and CUDA), numpy's and random's global RNG states, and torch's deterministic-algorithms
    setting, after the block: a sub-run seeds them for itself without changing what its caller draws next."""
    states = rng_states()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        yield
    finally:
        set_rng_states(states)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


def prepare(config_file: str | Path, overrides: Sequence[str] = (), *, host: PluginHost | None = None,
            loggers: Sequence[str] = ()) -> tuple[RunConfig, PluginHost]:
    """Load plugins and validate a scenario file with its overrides (and ``--log`` loggers), down to each model's
    first forward."""
    from statesim.probing import check_first_forward

    host = host or build_plugin_host()
    config = load_config(config_file, host.registry, list(overrides), list(loggers))
    check_first_forward(config, host, str(config_file))
    return config, host


def execute(config_file: str | Path, overrides: Sequence[str] = (), *, out: str | Path | None = None,
            resume: str | Path | None = None, device: str | None = None, host: PluginHost | None = None,
            echo: Any = None, parent_stop: Callable[[], bool] | None = None, loggers: Sequence[str] = ()) -> Path:
    """Run a scenario file end to end; returns the run folder (locked while the run lives).

    ``loggers``: logger names added to the file's ``logging`` list (``statesim run --log NAME``).

    ``parent_stop``: this is a sub-run inside a running scenario (:meth:`RunContext.sub_run`), which stops
    when that callable says so: no SIGINT handler of its own, the caller's RNG states and deterministic-algorithms
    setting are restored afterwards, and the caller's process group (``--nproc``) stays up.
    """
    held: list[RunLock] = []
    try:
        if parent_stop is None:
            return _execute(config_file, overrides, out=out, resume=resume, device=device, host=host, echo=echo,
                            held=held, loggers=loggers)
        with preserved_global_rng():
            return _execute(config_file, overrides, out=out, resume=resume, device=device, host=host, echo=echo,
                            held=held, parent_stop=parent_stop, loggers=loggers)
    except OSError as exc:  # a full disk, a read-only or vanished folder: one paragraph, not a traceback
        where = f" {exc.filename}" if exc.filename else ""
        raise StatesimError(f"statesim could not read or write{where}: {exc.strerror or exc}. Free disk space or "
                            f"fix the permissions (or choose another --out); checkpoints already written are "
                            f"intact, so the run continues with --resume once it can write again.") from None
    finally:
        for lock in held:
            lock.release()


def _execute(config_file: str | Path, overrides: Sequence[str], *, out: str | Path | None, resume: str | Path | None,
             device: str | None, host: PluginHost | None, echo: Any, held: list[RunLock],
             parent_stop: Callable[[], bool] | None = None, loggers: Sequence[str] = ()) -> Path:
    echo = echo or (lambda message: print(message, file=sys.stderr))
    overrides = list(overrides) + ([f"device={device}"] if device else [])  # a copy: the caller's stays
    config, host = prepare(config_file, overrides, host=host, loggers=loggers)
    for problem in host.problems:
        echo(f"warning: {problem}")
    from statesim import distributed

    dp = distributed.setup(resolve_device(config.device))  # None unless started by --nproc or torchrun
    writer = dp is None or dp.is_writer  # rank 0 alone writes the run folder
    if not writer:
        echo = lambda message: None  # noqa: E731 - rank 0 reports; other ranks' errors still reach stderr
    created = False  # whether this run made its folder (a failure before anything was saved removes it again)
    owned: set[str] = set()  # what the run's loggers make in the folder, removed with it in that case
    if resume is not None:
        run_dir = _reopen_run_dir(Path(resume), config, writer, held)
    elif dp is not None and not writer:
        run_dir = Path(dp.share_text(""))  # the folder rank 0 made
    else:
        created = not run_dir_exists(out)
        run_dir = _new_run_dir(config, config_file, out, held)
        if dp is not None:
            dp.share_text(str(run_dir))
    try:
        with confined(run_dir):  # from here on every write and delete stays inside the run folder
            return _execute_in(run_dir, config, config_file, host, dp, writer, resume is not None, echo, parent_stop,
                               owned)
    except Exception as exc:
        if writer and resume is None and not isinstance(exc, Interrupted) and _clear_untrained(run_dir, created,
                                                                                                 owned):
            echo(f"note: removed {run_dir}: the run failed before it saved anything, so the same --out can be "
                 f"used again")
        raise


def _execute_in(run_dir: Path, config: RunConfig, config_file: str | Path, host: PluginHost, dp: Any,
                writer: bool, resumed: bool, echo: Any, parent_stop: Callable[[], bool] | None = None,
                owned: set[str] | None = None) -> Path:
    """Run the scenario into its (already opened) run folder; ``owned`` collects what its loggers make there."""
    env = environment(host)
    env["seed"] = config.seed
    env["resumed"] = resumed
    env["world_size"] = dp.world_size if dp is not None else 1
    env["data_files"] = data_files(config)  # resume compares them
    if writer and not resumed:  # a resume rewrites run.json only once it has finished
        atomic_write_json(run_dir / "run.json", env)

    registration = host.registry.get("scenario", config.scenario.type)
    scenario = registration.record.cls(config.scenario.params)
    progress = Progress(config.output.progress and sys.stderr.isatty() and not os.environ.get("CI"))
    # Rank 0 alone logs. Started before seeding, so that what the loggers import cannot change what the run draws.
    loggers = open_loggers(config, host.registry, run_dir, resumed, echo) if writer else None
    if loggers is not None and owned is not None:
        owned.update(loggers.outputs())
    with logging_session(loggers):
        return _run_scenario(run_dir, config, config_file, host, scenario, progress, loggers, dp, writer, resumed,
                             echo, env, parent_stop)


def _run_scenario(run_dir: Path, config: RunConfig, config_file: str | Path, host: PluginHost, scenario: Any,
                  progress: Progress, loggers: LoggerSet | None, dp: Any, writer: bool, resumed: bool, echo: Any,
                  env: dict[str, Any], parent_stop: Callable[[], bool] | None) -> Path:
    """Seed, run the scenario and write results.json and run.json (then give the results to the loggers)."""
    from statesim import distributed

    # Seeded last: importing rich (for Progress) draws from `random`, which would make a first run in a
    # process differ from later ones.
    seed_everything(config.seed)
    if config.training.deterministic:
        torch.use_deterministic_algorithms(True)
    # A sub-run's Ctrl-C is its caller's: one handler per process, and the caller's message says how to resume.
    with (graceful_interrupt() if parent_stop is None else nullcontext([False])) as stop_flag:
        device_ = dp.device if dp is not None else resolve_device(config.device)  # a rank uses its own GPU
        should_stop = parent_stop or (lambda: stop_flag[0])
        ctx = RunContext(config, host, run_dir, device_, resume=resumed,
                         progress=progress, should_stop=should_stop, echo=echo, loggers=loggers)
        try:
            results = scenario.run(ctx)
        except Interrupted as exc:
            if parent_stop is not None:
                raise
            raise Interrupted(f"{exc} Continue with: statesim run {config_file} --resume {run_dir}") from None
    # Wall times live in run.json so that results.json depends only on the config and seed.
    results = {"scenario": config.scenario.type, "seed": config.seed, **results}
    if ctx.engine_paths:  # the engine path each cell takes and why; what ran (counts, compile times) is
        # not a function of the config alone (a resume runs fewer steps), so it goes to run.json
        results["engine"] = ctx.engine_paths
        env["engine_calls"] = ctx.engine_calls
    env["train_seconds"] = {k: round(v, 3) for k, v in ctx.timings.items()}
    if ctx.decode_seconds:
        env["decode_seconds"] = {k: round(v, 3) for k, v in ctx.decode_seconds.items()}
    results, flagged = flag_nonfinite(results)
    if flagged:  # JSON has no NaN: write null and say which values were not finite
        results["nonfinite_values"] = flagged
        echo(f"warning: results with non-finite values (written as null, listed under nonfinite_values): "
             f"{', '.join(flagged)}")
    if writer:
        atomic_write_json(run_dir / "results.json", results)
        atomic_write_json(run_dir / "run.json", env)
    if loggers is not None:
        loggers.finish(results)
    if parent_stop is None:  # a sub-run shares its caller's process group, which the caller leaves
        distributed.teardown()
    return run_dir


def _reopen_run_dir(run_dir: Path, config: RunConfig, writer: bool, held: list[RunLock]) -> Path:
    """The folder of an earlier run to continue, after checking it is that run and safe to write in."""
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        raise StatesimError(f"cannot resume: {saved} does not exist. Pass the run folder of an earlier "
                            f"`statesim run` to --resume (a folder killed before it wrote config.yaml "
                            f"can be started again with --out {run_dir}).")
    refuse_symlinks(run_dir, "resume the run in")
    if writer:
        held.append(RunLock.acquire(run_dir))  # a live run of this folder refuses the resume
    old, _ = parse_yaml(saved.read_text(encoding="utf-8"), str(saved))
    diff = [d for d in _config_diff(old, config.resolved()) if not d.startswith(("output.", "device:", "logging:"))]
    if diff:
        raise StatesimError("cannot resume: the scenario differs from the one in "
                            f"{saved}:\n  " + "\n  ".join(diff) + "\nRun it as a new run instead.")
    recorded = _recorded_data_files(run_dir)
    changed = changed_files(recorded, data_files(config)) if recorded is not None else []
    if changed:
        raise StatesimError("cannot resume: data files the scenario reads changed since the run started:\n  "
                            + "\n  ".join(changed) + f"\nRestore them, or run it as a new run instead "
                            f"(hashes recorded in {run_dir / 'run.json'}).")
    if writer:
        # Temporary files of writes a kill interrupted: never published, never read, safe to drop.
        with confined(run_dir):
            for dirpath, _, filenames in os.walk(run_dir, followlinks=False):
                for name in filenames:
                    if is_own_temporary(Path(dirpath) / name):  # a user's own hidden *.tmp files stay
                        remove(Path(dirpath) / name)
    return run_dir


def _recorded_data_files(run_dir: Path) -> dict[str, str] | None:
    """The data-file hashes run.json recorded (None when it is missing or older than this record)."""
    import json

    try:
        recorded = json.loads((run_dir / "run.json").read_text(encoding="utf-8")).get("data_files")
    except (OSError, ValueError, AttributeError):
        return None  # killed before run.json was written: the checkpoint's config digest still differs
    if not isinstance(recorded, dict):
        return None
    return {str(k): str(v) for k, v in recorded.items()}


def run_dir_exists(out: str | Path | None) -> bool:
    """Whether ``--out`` names a folder that is there already (a default run folder is always new)."""
    return out is not None and Path(out).exists()


#: What a new run writes before its first result: removed again when it fails before saving anything else.
_BOOKKEEPING = {"config.yaml", "run.json", "metrics.jsonl", LOCK_NAME}


def _clear_untrained(run_dir: Path, created: bool, owned: set[str] | frozenset[str] = frozenset()) -> bool:
    """Empty (and, if this run made it, remove) a new run folder that holds only bookkeeping; True if cleared.

    A run that fails before it trained or wrote anything (a size check in its first forward, a component the
    scenario cannot use) would otherwise leave config.yaml and run.json, and the same ``--out`` would then be
    refused as an earlier run to ``--resume``. Anything else in the folder (a checkpoint, a plot, an empty
    metrics log being the only exception) keeps the whole folder as it is. ``owned``: top-level entries the
    run's loggers made (event files, a local MLflow store), bookkeeping too, unless they hold a link.
    """
    try:
        entries = list(run_dir.iterdir())
    except OSError:
        return False
    for entry in entries:
        if entry.is_symlink() or not (entry.is_file() or entry.is_dir()):
            return False
        if entry.name in owned:
            if entry.is_dir() and symlinks_under(entry):
                return False
            continue
        if entry.is_dir():
            if _holds_anything_but_folders(entry):
                return False  # e.g. checkpoints/ with a checkpoint in it
        elif not (entry.name in _BOOKKEEPING or is_own_temporary(entry)):
            return False
        elif entry.name == "metrics.jsonl" and entry.stat().st_size > 0:
            return False  # training logged a step: keep what it saved
    with confined(run_dir):
        for entry in entries:
            if entry.is_dir():
                for dirpath, _, filenames in sorted(os.walk(entry), key=lambda w: -len(w[0])):  # deepest first
                    for name in filenames:  # only in a logger's own folders
                        remove(Path(dirpath) / name)
                    guard(dirpath).rmdir()
            else:
                remove(entry)
    if created:
        run_dir.rmdir()
    return True


def _holds_anything_but_folders(folder: Path) -> bool:
    """True when ``folder`` holds a file or a link anywhere below it (links are never followed)."""
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        if filenames or any(Path(dirpath, d).is_symlink() for d in dirnames):
            return True
    return False


def _only_own_temporaries(run_dir: Path) -> bool:
    """True when ``run_dir`` holds nothing but statesim's lock and temporaries (a kill at its first write)."""
    return all(p.name == LOCK_NAME or is_own_temporary(p) for p in run_dir.iterdir())


def _new_run_dir(config: RunConfig, config_file: str | Path, out: str | Path | None, held: list[RunLock]) -> Path:
    """Create an empty run folder (``--out``, or ``output.dir/<name>-<time>``) holding the resolved config."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = Path(out) if out is not None else Path(config.output.dir) / f"{config.name}-{stamp}"
    if run_dir.exists() and not run_dir.is_dir():
        raise StatesimError(f"the run folder {run_dir} is an existing file, not a folder; choose another --out.")
    if run_dir.exists() and not _only_own_temporaries(run_dir):
        raise StatesimError(f"the run folder {run_dir} already exists and is not empty; choose another --out, "
                            f"or continue it with --resume {run_dir}.")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StatesimError(f"cannot create the run folder {run_dir}: {exc.strerror or exc}. "
                            f"Choose another --out.") from None
    held.append(RunLock.acquire(run_dir))
    # Checked again under the lock: a second run started at the same moment finds the first one's files.
    if not _only_own_temporaries(run_dir):
        raise StatesimError(f"the run folder {run_dir} was filled by another run while this one started; "
                            f"choose another --out.")
    with confined(run_dir):
        for stale in run_dir.iterdir():
            if is_own_temporary(stale):  # left by a kill at this folder's very first write
                remove(stale)
        atomic_write_text(run_dir / "config.yaml", f"# resolved config of {config_file}\n" + dump_config(config))
    return run_dir


__all__ = ["execute", "prepare", "ConfigError"]
