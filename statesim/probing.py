"""Validation's first forward: build every model a scenario trains and run it once on a tiny batch shaped like the
scenario's data, so that a combination which fails at once (a forcing clamp naming no state part, an initial-state
policy given nothing to read, a plugin cell that returns the wrong shape) fails in `statesim validate`, before a
run folder exists, and not at run start."""
from __future__ import annotations

import tempfile
import warnings
from dataclasses import replace
from pathlib import Path

import torch

from statesim.config import ConfigIssue, RunConfig
from statesim.errors import ConfigError, StatesimError
from statesim.plugin_manager import PluginHost
from statesim.scenario import Probe, RunContext

class UntrainedParametersWarning(UserWarning):
    """Some of a model's parameters receive no gradient from its outputs, so training never changes them."""


#: What a model's first forward may raise when its settings (or its plugin's code) do not fit the scenario.
FORWARD_FAILURES = (StatesimError, RuntimeError, ValueError, TypeError, IndexError, KeyError, AttributeError)


def first_forward_issues(config: RunConfig, host: PluginHost, file: str) -> list[ConfigIssue]:
    """The problems of building each of the scenario's models and running its first forward (none: all ran)."""
    scenario = host.registry.get("scenario", config.scenario.type).record.cls(config.scenario.params)
    probes = scenario.probes(config)
    if not probes:
        return []
    issues: list[ConfigIssue] = []
    # The global RNG is the run's: building models here must not change what the run later draws.
    with tempfile.TemporaryDirectory() as folder, torch.random.fork_rng(devices=[]):
        ctx = RunContext(config, host, Path(folder), torch.device("cpu"), echo=lambda message: None)
        for probe in probes:
            issues += _probe_issues(ctx, probe, file)
    return issues


def _probe_issues(ctx: RunContext, probe: Probe, file: str) -> list[ConfigIssue]:
    """Build one model and run it on its probe batch; the problems found, attributed to ``file``."""
    batch = probe.batch
    try:
        model = probe.build(ctx)
        outputs = model(batch.inputs, lengths=batch.lengths, prefix=batch.prefix, condition=batch.condition,
                        condition_lengths=batch.condition_lengths).outputs
    except ConfigError as exc:  # the forcing clamps checked against the built model: already keyed
        return [replace(issue, file=file) for issue in exc.issues]
    except FORWARD_FAILURES as exc:
        message = str(exc).strip() or type(exc).__name__
        return [ConfigIssue(file, None, probe.key, f"this model fails its first forward on the scenario's shapes "
                                                   f"(inputs {list(batch.inputs.shape)}): {type(exc).__name__}: "
                                                   f"{message} Change the model's settings under `{probe.key}` "
                                                   f"(or fix the plugin that raised).")]
    if outputs.shape[:2] != batch.inputs.shape[:2]:
        return [ConfigIssue(file, None, probe.key, f"this model's first forward returned outputs of shape "
                                                   f"{list(outputs.shape)} for inputs {list(batch.inputs.shape)}; "
                                                   f"a model must give one output per step and sequence "
                                                   f"([T, N, O]). Fix the cell or topology plugin that shapes it.")]
    _warn_untrained(model, outputs, probe.key, file)
    return []


def _warn_untrained(model: torch.nn.Module, outputs: torch.Tensor, key: str, file: str) -> None:
    """Warn when parameters get no gradient from the outputs (an encoder nothing reads): they would never train."""
    if not outputs.requires_grad:  # a model without trainable parameters: nothing to train
        return
    try:
        outputs.float().sum().backward()
    except FORWARD_FAILURES:  # the forward ran; a backward failure is the trainer's to report
        return
    dead = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    if not dead:
        return
    parts = sorted({".".join(name.split(".")[:2]) for name in dead})
    warnings.warn(UntrainedParametersWarning(
        f"{file}: `{key}`: {len(dead)} parameter tensors ({', '.join(parts)}) receive no gradient from the "
        f"model's outputs, so training will never change them. Connect them or drop them: for example an "
        f"encoder_decoder whose decoder starts from zeros without attention never reads its encoder (use "
        f"initial_state: {{type: encoded}} or attention: additive)."), stacklevel=2)


def check_first_forward(config: RunConfig, host: PluginHost, file: str) -> None:
    """Raise one ConfigError listing every model of the scenario that fails to build or to run its first forward."""
    issues = first_forward_issues(config, host, file)
    if issues:
        raise ConfigError(issues)
