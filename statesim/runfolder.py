"""Open a finished run: its config, its checkpoint, its model.

A run folder written by ``statesim run`` holds ``config.yaml`` and ``checkpoints/<job>/step_N.json`` sidecars
with their verified ``.safetensors`` weights. :func:`find_checkpoint` picks the checkpoint a path names (the
newest one that verifies, of the chosen job), and :func:`load_model` rebuilds the trained model from it through
the plugin registry (from the model description stored with the checkpoint, else the run's ``config.yaml``),
in eval mode, without a trainer or optimizer. ``statesim diagnose``, ``statesim analyze``, ``statesim export``
and :func:`statesim.embed.load` all open runs this way.
"""
from __future__ import annotations

import math

from pathlib import Path
from typing import Any, Callable

import torch

from statesim.checkpoint import CheckpointInfo, latest_good_checkpoint, list_checkpoints, load_checkpoint
from statesim.errors import CheckpointError, EmbedError
from statesim.model import SequenceModel, build_model
from statesim.registry import Registry

__all__ = ["OlderCheckpointWarning", "find_checkpoint", "load_model", "resolve_model_config", "trained_jobs"]


def trained_jobs(run_dir: Path) -> list[str]:
    """Jobs of a run that left a checkpoint, sorted by name."""
    root = run_dir / "checkpoints"
    return sorted(p.name for p in root.iterdir() if p.is_dir() and list_checkpoints(p)) if root.is_dir() else []


def find_checkpoint(path: str | Path, job: str | None = None,
                    warn: Callable[[str], None] | None = None) -> tuple[Path, Path | None]:
    """The checkpoint sidecar ``path`` names and the run folder it belongs to (None when not in one).

    ``path`` is a run folder (its newest verified checkpoint of ``job`` is chosen: by default the only
    job, or ``main``), a job's checkpoint folder, or a checkpoint's ``.json``/``.safetensors`` file. A corrupt
    newer checkpoint passed over is reported through ``warn`` (default: an :class:`OlderCheckpointWarning`).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist. Pass a run folder written by `statesim run` or a "
                              f"checkpoint file (checkpoints/<job>/step_*.json).")
    if path.is_file():
        sidecar = path.with_suffix(".json")
        run_dir = next((p for p in sidecar.parents if (p / "config.yaml").is_file()), None)
        if not (path.suffix in (".json", ".safetensors") and sidecar.stem.startswith("step_")):
            # results.json, config.yaml...: say what to pass, rather than calling the file a corrupt checkpoint
            hint = f"the run folder {run_dir}" if run_dir is not None else "a run folder"
            raise CheckpointError(f"{path} is not a checkpoint (those are checkpoints/<job>/step_N.json with "
                                  f"their .safetensors). Pass {hint} or one of its checkpoint files.")
        return sidecar, run_dir
    if list_checkpoints(path):  # a job's checkpoint folder
        run_dir = next((p for p in path.parents if (p / "config.yaml").is_file()), None)
        return _newest_good(path, warn), run_dir
    jobs = trained_jobs(path)
    if not jobs:
        raise CheckpointError(f"{path} holds no checkpoints (expected {path}/checkpoints/<job>/step_*.json). "
                              f"Is it a finished `statesim run` folder?")
    if job is None:
        if len(jobs) == 1:
            job = jobs[0]
        elif "main" in jobs:
            job = "main"
        else:
            raise EmbedError(f"the run {path} trained several models ({', '.join(jobs)}); choose one with "
                             f"job=... (CLI: --job).")
    if job not in jobs:
        raise EmbedError(f"the run {path} has no checkpoints for job '{job}'; its jobs are: {', '.join(jobs)}.")
    return _newest_good(path / "checkpoints" / job, warn), path


class OlderCheckpointWarning(UserWarning):
    """The newest checkpoint of a job is corrupt; an older one is used instead."""


def _newest_good(folder: Path, warn: Callable[[str], None] | None = None) -> Path:
    import warnings

    def report(message: str) -> None:
        message = message.replace("Falling back to the previous checkpoint.", "Using an older checkpoint.")
        if warn is not None:
            warn(message)
        else:  # stacklevel 4: the caller of load/load_model/find_checkpoint, not this module
            warnings.warn(message, OlderCheckpointWarning, stacklevel=4)

    found = latest_good_checkpoint(folder, report)
    if found is None:
        raise CheckpointError(f"no checkpoint in {folder} verifies (each is missing, truncated or corrupt).")
    return found[1].path


def _run_yaml(run_dir: Path | None) -> dict[str, Any]:
    """The run's saved config as plain data, not validated: only its model and training sections are needed,
    and a host embedding one model need not have the plugin of the scenario that trained it."""
    if run_dir is None:
        return {}
    from statesim.yamlio import load_yaml

    data, _ = load_yaml(run_dir / "config.yaml")
    return data if isinstance(data, dict) else {}


def resolve_model_config(data: Any, registry: Registry, where: str, providers: Any = None) -> Any:
    """Validate and resolve a stored model description (plain data) against the registry; ``providers`` (the
    checkpoint's record of who provided each component) turns an unknown name into what to install."""
    from dataclasses import replace

    from statesim.config import validate_model

    if isinstance(providers, dict):
        registry = replace(registry, recorded={k: v for k, v in providers.items() if isinstance(v, dict)})
    return validate_model(data, registry, where)


def _stored_spec(spec: Any, sidecar: Path) -> dict[str, Any] | None:
    """The sidecar's ``meta.model`` (config and sizes), type-checked: it is data from a file."""
    if spec is None:
        return None
    sizes_ok = isinstance(spec, dict) and isinstance(spec.get("model"), dict) and all(
        isinstance(spec.get(k), int) and not isinstance(spec.get(k), bool) and spec[k] > 0
        for k in ("input_size",)) and (spec.get("output_size") is None or (
            isinstance(spec["output_size"], int) and not isinstance(spec["output_size"], bool)
            and spec["output_size"] > 0))
    vocab = spec.get("input_vocab") if isinstance(spec, dict) else None
    encoder = spec.get("encoder") if isinstance(spec, dict) else None
    scaling = spec.get("scaling") if isinstance(spec, dict) else None
    extras_ok = (vocab is None or (isinstance(vocab, int) and not isinstance(vocab, bool) and vocab > 0)) and (
        encoder is None or (isinstance(encoder, dict) and isinstance(encoder.get("type"), str))) and (
        scaling is None or _scaling_ok(scaling))
    if not (sizes_ok and extras_ok):
        raise CheckpointError(f"the checkpoint sidecar {sidecar} describes its model wrongly (meta.model must be "
                              f"{{model: {{...}}, input_size: N, output_size: N or null}}, optionally with "
                              f"input_vocab: N, encoder: {{type: NAME, ...}} and scaling: {{input_mean: [...], "
                              f"...}}); it was edited or damaged. Use "
                              f"another checkpoint of the run.")
    return spec


def _scaling_ok(scaling: Any) -> bool:
    """A sidecar's ``scaling``: the four statistics, each null or a list of finite numbers (stds positive)."""
    names = ("input_mean", "input_std", "output_mean", "output_std")
    if not isinstance(scaling, dict) or not set(scaling) <= set(names):
        return False
    for name, values in scaling.items():
        if values is None:
            continue
        if not isinstance(values, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                   and math.isfinite(v) and (v > 0 or "std" not in name)
                                                   for v in values):
            return False
    return True


def _build_checked(registry: Registry, config: Any, input_size: int, output_size: int | None,
                   tree: dict[str, Any], sidecar: Path, **extra: Any) -> SequenceModel:
    """Build the model a checkpoint describes, first without memory (meta device) to check it matches the
    checkpoint's tensors: a sidecar edited to say ``input_size: 10**12`` must not allocate terabytes."""
    stored = tree.get("model")
    if not isinstance(stored, dict):
        raise CheckpointError(f"the checkpoint {sidecar} holds no model weights.")
    try:
        with torch.device("meta"):
            described = build_model(registry, config, input_size, output_size, **extra)
            shapes = {k: tuple(v.shape) for k, v in described.state_dict().items()}
    except (NotImplementedError, RuntimeError):
        shapes = None  # a cell whose construction needs real numbers: the guarded build below still checks
    if shapes is not None:
        wrong = [k for k in sorted(set(shapes) | set(stored)) if k not in shapes or k not in stored
                 or not isinstance(stored[k], torch.Tensor) or tuple(stored[k].shape) != shapes[k]]
        if wrong:
            raise CheckpointError(f"the weights in {sidecar} do not fit the model its metadata describes "
                                  f"(first mismatch: {wrong[0]}); the sidecar was edited or belongs to another "
                                  f"model. Use another checkpoint of the run.")
    try:
        return build_model(registry, config, input_size, output_size, **extra)
    except (RuntimeError, MemoryError, ValueError, TypeError, OverflowError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"the model described by {sidecar} cannot be built ({first}).") from None


def load_model(path: str | Path, *, job: str | None = None, weights: str = "auto", registry: Registry | None = None,
               input_size: int | None = None, output_size: int | None = None,
               device: str | torch.device = "cpu") -> tuple[SequenceModel, CheckpointInfo]:
    """Rebuild a trained :class:`SequenceModel` from a run folder or checkpoint, in eval mode, without a trainer.

    ``weights``: ``"last"`` (the checkpoint's model), ``"best"`` (the best validated model kept for early
    stopping) or ``"auto"`` (best when the run used early stopping and one was kept, else last: the model
    the run finished with). ``input_size``/``output_size`` are needed only for checkpoints written before
    checkpoints recorded the model's sizes.

    >>> import tempfile, torch, statesim
    >>> from pathlib import Path
    >>> from statesim.config import TrainingConfig, validate_model
    >>> from statesim.runfolder import load_model
    >>> registry = statesim.build_plugin_host(autoload=False).registry
    >>> config = validate_model({"cell": {"type": "gru", "hidden_size": 3}}, registry)
    >>> model = statesim.build_model(registry, config, input_size=2, output_size=1)
    >>> folder = Path(tempfile.mkdtemp())
    >>> data = statesim.DataSplits(statesim.SequenceData(torch.randn(10, 4, 2), torch.randn(10, 4, 1)))
    >>> _ = statesim.Trainer(model, TrainingConfig(steps=1, batch_size=4), checkpoint_dir=folder).fit(data)
    >>> loaded, info = load_model(folder, registry=registry)
    >>> torch.equal(loaded.head.weight, model.head.weight), loaded.training
    (True, False)
    """
    if registry is None:
        from statesim.plugin_manager import build_plugin_host

        registry = build_plugin_host().registry
    sidecar, run_dir = find_checkpoint(path, job)
    tree, info = load_checkpoint(sidecar, map_location="cpu")
    spec = _stored_spec(info.meta.get("model"), sidecar)
    run_yaml = _run_yaml(run_dir)
    if spec is not None:
        config = resolve_model_config(spec["model"], registry, f"{sidecar} (stored model)", spec.get("providers"))
        input_size = spec["input_size"] if input_size is None else input_size
        output_size = spec["output_size"] if output_size is None else output_size
    elif isinstance(run_yaml.get("model"), dict):
        assert run_dir is not None  # _run_yaml is {} without a run folder
        config = resolve_model_config(run_yaml["model"], registry, f"{run_dir / 'config.yaml'}")
        if input_size is None:
            raise EmbedError(f"the checkpoint {sidecar} does not record the model's sizes (it predates that); "
                             f"pass input_size=... (and output_size=... when the model has a head).")
    else:
        raise EmbedError(f"cannot tell which model the checkpoint {sidecar} holds: it records no model and no "
                         f"run folder with a config.yaml `model:` section encloses it.")
    extra = {k: spec[k] for k in ("input_vocab", "encoder", "scaling") if spec is not None and spec.get(k) is not None}
    model = _build_checked(registry, config, int(input_size), output_size, tree, sidecar, **extra)

    best = tree.get("best_model")
    if weights == "best" and best is None:
        raise EmbedError(f"the checkpoint {sidecar} keeps no best model (the job validated nothing); "
                         f"use weights='last'.")
    if weights not in ("auto", "last", "best"):
        raise EmbedError(f"weights must be 'auto', 'last' or 'best', got {weights!r}.")
    early = bool((run_yaml.get("training") or {}).get("early_stopping"))
    # weights == "best" without a best model raised above, so `best is not None` changes nothing there.
    state_dict = best if (weights == "best" or (weights == "auto" and early)) and best is not None else tree["model"]
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"the weights in {sidecar} do not fit the model described by its config "
                              f"({str(exc).splitlines()[0]}).") from None
    model.to(device).eval()
    model.requires_grad_(False)
    return model, info
