"""Scenario configuration: pydantic v2 models, registry-resolved components, errors with file and line.

A scenario file names parts by registered name (``cell: {type: lstm, hidden_size: 64}``). Validation
runs with the plugin registry as pydantic's validation context (:func:`registry_context`): every
:class:`ComponentSpec` looks its name up there and validates its parameters with the plugin's own
pydantic model, in the same pass as the static schema below. All problems are reported at once, each
with file, line, dotted key and, for unknown keys or names, a "did you mean".
"""
from __future__ import annotations

import copy
import hashlib
import json
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Literal, Sequence, TypeVar

from pydantic import (BaseModel, ConfigDict, Field, PrivateAttr, SerializationInfo, ValidationError, ValidationInfo,
                      field_validator, model_serializer, model_validator)
from pydantic_core import ErrorDetails, PydanticCustomError

from statesim import kinds
from statesim.errors import ConfigError
from statesim.forcing import ClampConfig
from statesim.registry import Registry, did_you_mean
from statesim.safepath import PathName, default_run_name
from statesim.yamlio import Lines, dump_yaml, load_yaml, parse_yaml


@dataclass
class ConfigIssue:
    """One problem: where (file, line, dotted key) and what to do about it."""

    file: str
    line: int | None
    key: str
    message: str

    def __str__(self) -> str:
        where = self.file + (f", line {self.line}" if self.line else "")
        return f"{where}: {('`' + self.key + '`: ') if self.key else ''}{self.message}"


class Strict(BaseModel):
    """Base of every config model: unknown keys are errors, and so are inf and nan (`lr: .inf`)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def registry_context(registry: Registry) -> dict[str, Any]:
    """The pydantic validation context that resolves component specs: ``model_validate(data, context=...)``."""
    return {"registry": registry}


class ComponentSpec(BaseModel):
    """A part chosen by registered name; its other keys are validated by that plugin's model.

    The registry comes through the validation context (:func:`registry_context`), so a spec exists only
    resolved: validating one without a registry is a validation error, never a late ``RuntimeError``.
    """

    model_config = ConfigDict(extra="allow")
    kind: ClassVar[str] = ""
    type: str = Field(..., description="registered name (see `statesim plugins`)")
    _params: BaseModel = PrivateAttr()

    @model_validator(mode="after")
    def _resolve(self, info: ValidationInfo) -> ComponentSpec:
        # Problems are raised as custom errors carrying what _issues needs to report them at their own key
        # (the plugin's errors, its params model): pydantic adds the spec's location.
        registry = (info.context or {}).get("registry")
        if not isinstance(registry, Registry):
            raise PydanticCustomError(
                "registry_missing", "{kind} '{name}' needs the plugin registry to validate its parameters: "
                "validate with context=statesim.config.registry_context(registry)", {"kind": self.kind,
                                                                                     "name": self.type})
        table = registry.entries.get(self.kind, {})
        if self.type not in table:
            raise PydanticCustomError("component_unknown", "{message}",
                                      {"message": registry.unknown(self.kind, self.type, self.kind.replace("_", "-"))})
        extra = self.model_extra or {}
        bad = _nonfinite(extra, ())
        if bad:  # whatever base a plugin's model has: .nan/.inf are refused as in the core keys
            raise PydanticCustomError("component_nonfinite", "NaN or infinity in {kind} '{name}'",
                                      {"kind": self.kind, "name": self.type, "bad": bad})
        params_model = table[self.type].record.params
        try:
            self._params = params_model.model_validate(extra, context=info.context)
        except ValidationError as exc:
            errors = exc.errors()
            summary = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)
            raise PydanticCustomError("component_params", "invalid parameters of {kind} '{name}': {summary}",
                                      {"kind": self.kind, "name": self.type, "summary": summary, "errors": errors,
                                       "model": params_model}) from None
        return self

    @property
    def params(self) -> BaseModel:
        """The parameters, validated by the registered plugin's model."""
        return self._params

    @model_serializer(mode="wrap")
    def _dump(self, handler: Any, info: SerializationInfo) -> dict[str, Any]:
        return {"type": self.type, **self._params.model_dump(mode=info.mode)}


class CellSpec(ComponentSpec):
    kind: ClassVar[str] = kinds.CELL.name


class TopologySpec(ComponentSpec):
    kind: ClassVar[str] = kinds.TOPOLOGY.name
    type: str = "unidirectional"


class InitialStateSpec(ComponentSpec):
    kind: ClassVar[str] = kinds.INITIAL_STATE.name
    type: str = "zeros"


class ScenarioSpec(ComponentSpec):
    kind: ClassVar[str] = kinds.SCENARIO.name


class LoggerSpec(ComponentSpec):
    """One entry of ``logging:``: a logger's name alone (``tensorboard``) or ``{type: NAME, ...params}``."""

    kind: ClassVar[str] = kinds.LOGGER.name

    @model_validator(mode="before")
    @classmethod
    def _name_alone(cls, data: Any) -> Any:
        return {"type": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _installed(self, info: ValidationInfo) -> LoggerSpec:
        # Refused here, before a run folder exists, rather than when the logger would first import it.
        from statesim.loggers import missing_package

        registry = (info.context or {}).get("registry")
        provided = registry.entries.get(self.kind, {}).get(self.type) if isinstance(registry, Registry) else None
        missing = missing_package(provided.record.cls) if provided is not None else None
        if missing is not None:
            raise PydanticCustomError(
                "logger_package_missing", "logger '{name}' needs the Python package '{package}', which is not "
                "installed here. Install it with pip install 'statesim[{extra}]', or remove '{name}' from `logging`",
                {"name": self.type, "package": missing[0], "extra": missing[1]})
        return self


class ModelConfig(Strict):
    """A model: a cell (or several, per the topology), how they are wired, how state starts, a head.

    >>> import statesim
    >>> from statesim.config import validate_model
    >>> registry = statesim.build_plugin_host(autoload=False).registry
    >>> config = validate_model({"cell": {"type": "lstm", "hidden_size": 8}}, registry)
    >>> config.cell.type, config.topology.type, config.initial_state.type, config.head
    ('lstm', 'unidirectional', 'zeros', 'auto')
    """

    cell: CellSpec = Field(..., description="the cell stepped by the engine, e.g. {type: lstm, hidden_size: 64}")
    # Defaults are data, validated like given values: that is when the registry (the context) resolves them.
    topology: TopologySpec = Field(default_factory=lambda: {"type": "unidirectional"}, validate_default=True,
                                   description="how cells are wired over time")
    initial_state: InitialStateSpec = Field(default_factory=lambda: {"type": "zeros"}, validate_default=True,
                                            description="policy giving the state at t = 0")
    head: Literal["auto", "linear", "none"] = Field(
        "auto", description="output head y = W h (+ b): 'auto' adds one only when sizes differ")
    head_bias: bool = Field(True, description="learn the head's bias")
    fast_path: str = Field("auto", description="engine path: 'auto' (a fused torch kernel or linear scan when the "
                                               "cells offer one and no state is forced, else the loop), 'generic' "
                                               "(always the time loop), or a fast path's name ('fused', 'scan')")
    compile: bool = Field(False, description="torch.compile the cell's step in the generic loop (custom cells; "
                                             "the compile time is reported)")

    @field_validator("fast_path")
    @classmethod
    def _known_path(cls, value: str) -> str:
        from statesim.fastpath.policies import known_modes

        if value not in known_modes():
            raise ValueError(f"unknown fast path '{value}'; choose one of {', '.join(known_modes())}")
        return value


class BPTTConfig(Strict):
    """Backpropagation through time. ``full``: one graph over the whole sequence. ``truncated``: the
    sequence is processed in chunks of ``k1`` steps, one optimizer update per chunk, the state carried
    across chunks; each update backpropagates through the last ``k2 >= k1`` steps (``k2`` defaults to
    ``k1``; with ``k2 > k1`` the ``k2 - k1`` earlier steps are recomputed from a detached state)."""

    mode: Literal["full", "truncated"] = Field("full", description="full or truncated BPTT")
    k1: int | None = Field(None, gt=0, description="steps per chunk / between updates (truncated)")
    k2: int | None = Field(None, gt=0, description="steps backpropagated per update, >= k1 (truncated)")


class ClipConfig(Strict):
    """Gradient clipping, applied after backward and before the optimizer step."""

    max_norm: float | None = Field(None, gt=0, description="clip the global gradient norm to this")
    norm_type: float = Field(2.0, gt=0, description="p of the global p-norm")
    max_value: float | None = Field(None, gt=0, description="clip each gradient element to [-v, v]")
    adaptive: float | None = Field(None, gt=0, description="clip the norm to this multiple of its running mean")


class ScheduleConfig(Strict):
    """Learning-rate schedule (steps count optimizer updates)."""

    type: Literal["constant", "cosine", "step", "exponential"] = Field("constant", description="schedule shape")
    warmup_steps: int = Field(0, ge=0, description="linear warm-up from 0 over this many steps")
    step_size: int = Field(1000, gt=0, description="'step': decay every step_size steps")
    gamma: float = Field(0.5, gt=0, description="'step'/'exponential': decay factor")
    min_lr: float = Field(0.0, ge=0, description="'cosine': final learning rate")


class TrainingConfig(Strict):
    """The shared trainer's settings, used by every scenario."""

    steps: int = Field(1000, ge=0, description="optimizer updates")
    batch_size: int = Field(32, gt=0, description="sequences per batch")
    lr: float = Field(1e-3, gt=0, description="learning rate")
    optimizer: Literal["adam", "adamw", "sgd"] = Field("adam", description="optimizer")
    weight_decay: float = Field(0.0, ge=0, description="weight decay")
    momentum: float = Field(0.0, ge=0, description="'sgd': momentum")
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig, description="learning-rate schedule")
    bptt: BPTTConfig = Field(default_factory=BPTTConfig, description="full or truncated BPTT")
    batching: Literal["random", "by_length"] = Field(
        "random", description="'random': any sequences share a batch; 'by_length': each batch holds sequences of "
                              "one length (padded data with lengths), so it runs only as long as its members and, "
                              "under truncated BPTT, every update costs the same")
    clip: ClipConfig = Field(default_factory=ClipConfig, description="gradient clipping")
    loss_from_step: int = Field(0, ge=0, description="ignore the first steps of every sequence in the loss "
                                                      "(lets the state settle)")
    eval_every: int = Field(100, gt=0, description="validate every this many steps")
    early_stopping: int | None = Field(None, gt=0, description="stop after this many validations without "
                                                               "improvement")
    min_delta: float = Field(0.0, ge=0, description="improvement needed to reset early stopping")
    log_every: int = Field(10, gt=0, description="write metrics.jsonl every this many steps")
    checkpoint_every: int = Field(500, gt=0, description="save a checkpoint every this many steps")
    keep_checkpoints: int = Field(2, gt=0, description="checkpoints kept per job (newest)")
    nonfinite: Literal["skip", "abort", "reduce_lr"] = Field(
        "abort", description="on a NaN/inf loss or gradient: skip the update, stop, or halve the lr and skip")
    nonfinite_max_fraction: float = Field(
        0.5, gt=0, le=1, description="'skip'/'reduce_lr': stop with an error when more than this share of the "
                                     "last `nonfinite_window` updates were non-finite")
    nonfinite_window: int = Field(100, ge=10, description="recent updates that `nonfinite_max_fraction` looks at")
    deterministic: bool = Field(False, description="use torch's deterministic algorithms")


class OutputConfig(Strict):
    """Where and what a run writes."""

    dir: str = Field("runs", description="parent folder of run folders (relative to the working directory)")
    plots: bool = Field(True, description="write plots/*.png")
    progress: bool = Field(True, description="show a progress bar")

    @field_validator("dir")
    @classmethod
    def _stays_below_cwd(cls, value: str) -> str:
        # A shared scenario file must not choose where on disk a run writes; the user does, with --out.
        path = Path(value)
        if not value.strip() or path.is_absolute() or value.startswith("~") or ".." in path.parts:
            raise ValueError("output.dir must be a relative folder without '..' (a scenario file may not write "
                             "outside the working directory); pass an absolute or outside folder with --out")
        return value


class RunConfig(Strict):
    """A scenario file.

    >>> import tempfile, statesim
    >>> from pathlib import Path
    >>> registry = statesim.build_plugin_host(autoload=False).registry
    >>> file = Path(tempfile.mkdtemp()) / "ls.yaml"
    >>> _ = file.write_text("scenario: {type: linear_system}\\nmodel:\\n  cell: {type: linear, hidden_size: 2}\\n")
    >>> config = statesim.load_config(file, registry)
    >>> config.name, config.scenario.type, config.seed, config.model.cell.hidden_size
    ('ls', 'linear_system', 0, 2)
    """

    name: PathName | None = Field(None, description="run name (a plain folder name); defaults to the scenario "
                                                    "file's stem")
    scenario: ScenarioSpec = Field(..., description="the scenario plugin and its parameters")
    model: ModelConfig | None = Field(None, description="the model, for scenarios that train one")
    training: TrainingConfig = Field(default_factory=TrainingConfig, description="shared trainer settings")
    forcing: list[ClampConfig] = Field(default_factory=list, description="clamps applied when evaluating, by "
                                       "scenarios that steer their model (salamander); checked against the "
                                       "model's input and state parts when it is built, before training")
    seed: int = Field(0, ge=0, lt=2**63, description="seed of torch, numpy and random")
    device: Literal["cpu", "cuda", "auto"] = Field("cpu", description="where to compute; 'auto' picks cuda if present")
    output: OutputConfig = Field(default_factory=OutputConfig, description="run-folder settings")
    logging: list[LoggerSpec] = Field(
        default_factory=lambda: ["jsonl"], validate_default=True,
        description="where records go besides metrics.jsonl (always written): logger names or {type: NAME, ...} "
                    "mappings, e.g. [jsonl, tensorboard]; `statesim run --log NAME` adds one")

    @field_validator("logging")
    @classmethod
    def _each_logger_once(cls, value: list[LoggerSpec]) -> list[LoggerSpec]:
        names = [spec.type for spec in value]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"the logger(s) {', '.join(twice)} are listed more than once; list each logger once "
                             f"(its parameters go in one {{type: NAME, ...}} mapping)")
        return value

    def resolved(self) -> dict[str, Any]:
        """The fully resolved config (defaults filled) as plain data."""
        return self.model_dump(mode="json")

    def digest(self) -> str:
        """Hash of the resolved config, stored in checkpoints so resume can refuse a changed run."""
        # Where a run writes, where it logs and on which device it computes may change on resume; what it
        # computes may not. Python mode: JSON mode turns both .nan and .inf into null, so they would hash alike.
        data = self.model_dump(mode="python", exclude={"output", "device", "logging"})
        from statesim.datafiles import data_files

        files = data_files(self)
        if files:  # the contents of data files the scenario reads decide the results too
            data["data_files"] = files
        text = json.dumps(data, sort_keys=True, allow_nan=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- resolution
def _unwrap(annotation: Any) -> list[type[BaseModel]]:
    """BaseModel classes inside an annotation (through Optional, list, dict)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        found += _unwrap(arg)
    return found


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names of the model reached by following ``loc`` from ``model`` (for suggestions)."""
    current: list[type[BaseModel]] = [model]
    for part in loc:
        if isinstance(part, int):
            continue
        nxt: list[type[BaseModel]] = []
        for cls in current:
            field = cls.model_fields.get(str(part))
            if field is not None:
                nxt += _unwrap(field.annotation)
        if not nxt:
            return []
        current = nxt
    return [name for cls in current for name in cls.model_fields]


def _line(lines: Lines, loc: tuple) -> int | None:
    for end in range(len(loc), -1, -1):
        if tuple(loc[:end]) in lines:
            return lines[tuple(loc[:end])]
    return None


def _issues(errors: list[ErrorDetails], model: type[BaseModel], prefix: tuple, file: str, lines: Lines,
            extra_fields: tuple[str, ...] = ()) -> list[ConfigIssue]:
    """One issue per validation error of ``model`` at ``prefix``; a component's own errors at their keys."""
    issues = []
    for err in errors:
        loc = prefix + tuple(err["loc"])
        key = ".".join(str(p) for p in loc)
        ctx: dict[str, Any] = dict(err.get("ctx") or {})
        if err["type"] == "component_unknown":
            key_loc = loc + ("type",)
            issues.append(ConfigIssue(file, _line(lines, key_loc), ".".join(map(str, key_loc)), ctx["message"]))
            continue
        if err["type"] == "component_nonfinite":
            issues += [ConfigIssue(file, _line(lines, loc + bad), ".".join(map(str, loc + bad)),
                                   f"{value} is not allowed here (NaN and infinity are refused in every parameter). "
                                   f"Give a finite number.") for bad, value in ctx["bad"]]
            continue
        if err["type"] == "component_params":
            issues += _issues(ctx["errors"], ctx["model"], loc, file, lines, extra_fields=("type",))
            continue
        if err["type"] == "extra_forbidden":
            options = _fields_at(model, tuple(err["loc"])[:-1]) + list(extra_fields)
            message = (f"unknown key '{loc[-1]}'.{did_you_mean(str(loc[-1]), options)} "
                       f"Allowed keys here: {', '.join(options)}.")
            if loc == ("sweep",):  # a sweep file given to `statesim run`/`validate`
                message = (f"'sweep' belongs to sweep files: run this one with `statesim sweep {file}`, which "
                           f"validates and runs every combination. Allowed keys of a single run: "
                           f"{', '.join(options)}.")
        elif err["type"] == "missing":
            message = "this key is required. Add it."
        else:
            got = err.get("input")
            # A missing package is not the value's fault: repeating the logger's name adds nothing.
            plain = isinstance(got, (dict, list)) or err["type"] == "logger_package_missing"
            shown = "" if plain else f" (got {got!r})"
            message = f"{err['msg']}{shown}."
        issues.append(ConfigIssue(file, _line(lines, loc), key, message))
    return issues


def _nonfinite(data: Any, path: tuple) -> list[tuple[tuple, str]]:
    """Key paths under ``data`` that hold a NaN or infinite float, with how it was written."""
    import math

    if isinstance(data, float) and not math.isfinite(data):
        return [(path, ".nan" if data != data else (".inf" if data > 0 else "-.inf"))]
    if isinstance(data, dict):
        return [hit for key, value in data.items() for hit in _nonfinite(value, path + (key,))]
    if isinstance(data, (list, tuple)):
        return [hit for index, value in enumerate(data) for hit in _nonfinite(value, path + (index,))]
    return []


M = TypeVar("M", bound=BaseModel)


def validate_as(model: type[M], data: Any, registry: Registry, file: str = "<config>", lines: Lines | None = None,
                path: tuple = ()) -> M:
    """``data`` validated as ``model`` (found at ``path`` of ``file``), every component resolved against
    ``registry``; one ConfigError lists every problem, with its line and dotted key."""
    try:
        return model.model_validate(data, context=registry_context(registry))
    except ValidationError as exc:
        raise ConfigError(_issues(exc.errors(), model, path, file, lines or {})) from None


def validate_model(data: Any, registry: Registry, file: str = "<model>") -> ModelConfig:
    """A model description (``{cell: {type: lstm, ...}, ...}``, plain data) validated and resolved."""
    return validate_as(ModelConfig, data, registry, file, path=("model",))


def components(node: Any) -> list[tuple[str, str]]:
    """Every ``(kind, registered name)`` chosen under a resolved config node, nested ones included."""
    found: list[tuple[str, str]] = []
    if isinstance(node, ComponentSpec):
        found.append((node.kind, node.type))
        node = node.params
    if isinstance(node, BaseModel):
        for name in type(node).model_fields:
            found += components(getattr(node, name))
    elif isinstance(node, (list, tuple)):
        for item in node:
            found += components(item)
    elif isinstance(node, dict):
        for item in node.values():
            found += components(item)
    return found


# --------------------------------------------------------------------------- overrides and loading
def apply_override(data: dict, assignment: str, lines: Lines, registry: Registry | None = None) -> None:
    """Apply one ``dotted.key=value`` (value parsed as YAML) to ``data`` in place.

    With a ``registry``, a new ``type`` of a component (``model.cell.type=gru``) drops the keys of the previous
    one that the new type does not take, so switching a cell does not fail on the old cell's parameters."""
    def fail(message: str) -> ConfigError:
        return ConfigError([ConfigIssue(f"--set {assignment}", None, "", message)])

    if "=" not in assignment:
        raise fail("an override must look like key.path=value, e.g. training.lr=0.01.")
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    if not all(part.strip() for part in parts):
        raise fail(f"'{key}' is not a dotted key path; write it like training.lr or model.cell.hidden_size.")
    value, _ = parse_yaml(raw, f"--set {assignment}")
    target: Any = data
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        if isinstance(target, list):
            if not part.isdigit() or int(part) >= len(target):
                raise fail(f"`{'.'.join(parts[:depth])}` is a list of {len(target)} item(s); address an item by its "
                           f"index 0..{len(target) - 1}, not '{part}'.")
            if last:
                target[int(part)] = value
            else:
                if not isinstance(target[int(part)], (dict, list)):
                    target[int(part)] = {}
                target = target[int(part)]
        elif last:
            if part == "type" and registry is not None:
                _drop_foreign_keys(target, value, registry, tuple(parts[:-1]), lines)
            target[part] = value
        else:
            if not isinstance(target.get(part), (dict, list)):
                target[part] = {}
            target = target[part]
    lines.pop(tuple(int(p) if p.isdigit() else p for p in parts), None)


def _drop_foreign_keys(spec: dict, new_type: Any, registry: Registry, path: tuple, lines: Lines) -> None:
    """Keep only the keys of a component mapping that its new type's parameters accept (``type`` aside)."""
    old_type = spec.get("type")
    if not isinstance(old_type, str) or not isinstance(new_type, str) or old_type == new_type:
        return
    kinds = [kind for kind, table in registry.entries.items() if old_type in table and new_type in table]
    if len(kinds) != 1:  # not a component mapping we can place (or an ambiguous one): leave it to validation
        return
    accepted = registry.entries[kinds[0]][new_type].record.params.model_fields
    for key in [k for k in spec if k != "type" and k not in accepted]:
        del spec[key]
        lines.pop(tuple(int(p) if p.isdigit() else p for p in path + (key,)), None)


def _blame_overrides(error: ConfigError, overrides: list[str], file_lines: Lines,
                     persists_without: Callable[[str, ConfigIssue], bool]) -> ConfigError:
    """Attribute each issue that an override caused to that ``--set`` instead of a line of the file.

    An issue about a whole mapping (a validator of ``scenario`` comparing two of its keys) is blamed on a
    ``--set`` inside that mapping only if it goes away without that ``--set`` (``persists_without``)."""
    paths = [(a, tuple(a.split("=", 1)[0].strip().split("."))) for a in overrides if "=" in a]
    for issue in error.issues:
        loc = tuple(issue.key.split(".")) if issue.key else ()
        for assignment, path in reversed(paths):  # the last --set of a key is the one that counts
            common = 0
            while common < min(len(loc), len(path)) and loc[common] == path[common]:
                common += 1
            created = tuple(int(p) if p.isdigit() else p for p in loc[:common]) not in file_lines
            if not common or not (common in (len(path), len(loc)) or created):
                continue
            if common == len(loc) < len(path) and not created and persists_without(assignment, issue):
                continue  # the mapping is wrong in the file itself (or through another --set)
            issue.file, issue.line = f"--set {assignment}", None
            break
    error.args = (error.render(),)
    return error


def validate_data(data: Any, registry: Registry, file: str = "<config>", lines: Lines | None = None) -> RunConfig:
    """Validate plain data as a RunConfig and resolve its components; raise one ConfigError listing all issues."""
    lines = lines or {}
    if not isinstance(data, dict):
        raise ConfigError([ConfigIssue(file, 1, "", "a scenario file must be a mapping with at least a "
                                                    "`scenario:` key.")])
    # The plugins' own problems come in the same message as the core keys', so one edit-run cycle fixes all.
    config = validate_as(RunConfig, data, registry, file, lines)
    issues = _unmet_needs(config, registry, file, lines)
    if issues:
        raise ConfigError(issues)
    return config


def _model_configs(node: Any, path: tuple) -> Iterator[tuple[tuple, ModelConfig]]:
    """Every ModelConfig in a validated config (``model:``, and those inside scenario parameters), with its path."""
    if isinstance(node, ModelConfig):
        yield path, node
    elif isinstance(node, BaseModel):
        for name in type(node).model_fields:
            yield from _model_configs(getattr(node, name), path + (name,))
        if isinstance(node, ComponentSpec):
            yield from _model_configs(node.params, path)
    elif isinstance(node, dict):
        for key, item in node.items():
            yield from _model_configs(item, path + (key,))
    elif isinstance(node, (list, tuple)):
        for index, item in enumerate(node):
            yield from _model_configs(item, path + (index,))


def _topology_fits(found: Any) -> bool:
    return not found.scenario and not found.topology


def _unmet_needs(config: RunConfig, registry: Registry, file: str, lines: Lines) -> list[ConfigIssue]:
    """A topology or initial-state policy whose needs (a source, an encoding, a prefix) nothing supplies."""
    from statesim.compatibility import default_params, fit, need_words

    scenario = registry.get("scenario", config.scenario.type).record.cls
    given = config.scenario.params

    def cls(kind: str, name: str) -> Any:
        return registry.get(kind, name).record.cls

    def givers(unmet: frozenset[str], kind: str) -> list[str]:
        return [n for n in registry.names(kind) if unmet <= frozenset(getattr(cls(kind, n), "supplies", ()))]

    issues = []
    for path, model in _model_configs(config, ()):
        topology, policy = cls("topology", model.topology.type), cls("initial_state", model.initial_state.type)
        found = fit(scenario, topology, model.topology.params, policy, model.initial_state.params, given)
        where = f"scenario '{config.scenario.type}'"
        if found.scenario or found.topology:
            unmet = found.scenario or found.topology
            fine = [n for n in registry.names("topology")
                    if _topology_fits(fit(scenario, cls("topology", n),
                                          default_params(registry.get("topology", n).record), policy,
                                          model.initial_state.params, given))]
            key = path + ("topology", "type")
            problem = (f"{where} needs {need_words(unmet)}, which topology '{model.topology.type}' is not"
                       if found.scenario else
                       f"topology '{model.topology.type}' needs {need_words(unmet)}, but {where} supplies none")
            issues.append(ConfigIssue(
                file, _line(lines, key), ".".join(map(str, key)),
                f"{problem}, so the model could not be built. Choose one of {', '.join(fine) or 'none installed'} "
                f"here" + ("" if found.scenario else
                           f", or a scenario that supplies it ({', '.join(givers(unmet, 'scenario')) or 'none'})")
                + "."))
        elif found.policy:
            fine = [n for n in registry.names("initial_state") if not fit(
                scenario, topology, model.topology.params, cls("initial_state", n),
                default_params(registry.get("initial_state", n).record), given).policy]
            tops = givers(found.policy, "topology")
            key = path + ("initial_state", "type")
            issues.append(ConfigIssue(
                file, _line(lines, key), ".".join(map(str, key)),
                f"initial_state '{model.initial_state.type}' needs {need_words(found.policy)}, but {where} with "
                f"topology '{model.topology.type}' supplies none, so the model's first forward would fail. "
                f"Choose one of {', '.join(fine)} here" + (f", or the topology {' / '.join(tops)}" if tops else "")
                + (f", or a scenario that supplies it ({', '.join(givers(found.policy, 'scenario'))})"
                   if givers(found.policy, "scenario") else "") + "."))
    return issues


def _add_loggers(data: dict, names: Sequence[str]) -> dict[int, str]:
    """Append each of ``names`` not listed yet to ``data['logging']``; returns ``{index: name}`` of those added."""
    listed = data.get("logging", ["jsonl"])
    if not isinstance(listed, list):
        return {}  # not a list: validation reports the key itself
    present = {entry.get("type") if isinstance(entry, dict) else entry for entry in listed}
    added = {}
    for name in names:
        if name not in present:
            added[len(listed)] = name
            listed = [*listed, name]
            present.add(name)
    if added:
        data["logging"] = listed
    return added


def _blame_loggers(error: ConfigError, added: dict[int, str]) -> ConfigError:
    """Attribute each issue about a logger that ``--log NAME`` added to that ``--log``."""
    for issue in error.issues:
        parts = issue.key.split(".")
        if len(parts) > 1 and parts[0] == "logging" and parts[1].isdigit() and int(parts[1]) in added:
            issue.file, issue.line = f"--log {added[int(parts[1])]}", None
    error.args = (error.render(),)
    return error


def load_config(path: str | Path, registry: Registry, overrides: Sequence[str] = (),
                loggers: Sequence[str] = ()) -> RunConfig:
    """Load, override and validate a scenario file.

    ``overrides`` are ``dotted.key=value`` strings, as ``statesim run --set``; ``loggers`` are logger names added to
    ``logging`` (``statesim run --log NAME``; one already listed is not added twice); every problem is reported at
    once in one :class:`~statesim.errors.ConfigError`.

    >>> import tempfile, statesim
    >>> from pathlib import Path
    >>> registry = statesim.build_plugin_host(autoload=False).registry
    >>> file = Path(tempfile.mkdtemp()) / "ls.yaml"
    >>> _ = file.write_text("scenario: {type: linear_system}\\nmodel:\\n  cell: {type: linear, hidden_size: 2}\\n")
    >>> statesim.load_config(file, registry, ["training.steps=10", "model.cell.hidden_size=4"]).training.steps
    10
    """
    original, lines = load_yaml(path)
    file_lines = dict(lines)
    added: dict[int, str] = {}

    def overridden(assignments: Sequence[str], lines: Lines) -> Any:
        data = copy.deepcopy(original) if original is not None else {}
        for assignment in assignments:
            if not isinstance(data, dict):
                break
            apply_override(data, assignment, lines, registry)
        if loggers and isinstance(data, dict):
            added.update(_add_loggers(data, loggers))
        return data

    def persists_without(skipped: str, issue: ConfigIssue) -> bool:
        kept = [a for a in overrides if a != skipped]
        try:
            validate_data(overridden(kept, dict(file_lines)), registry, str(path), dict(file_lines))
        except ConfigError as again:
            return any(i.key == issue.key and i.message == issue.message for i in again.issues)
        return False

    data = overridden(overrides, lines)
    try:
        config = validate_data(data, registry, str(path), lines)
    except ConfigError as exc:
        raise _blame_loggers(_blame_overrides(exc, list(overrides), file_lines, persists_without), added) from None
    if config.name is None:
        config.name = default_run_name(Path(path))
    return config


def dump_config(config: RunConfig) -> str:
    """The resolved config as YAML text."""
    return dump_yaml(config.resolved())
