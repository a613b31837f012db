"""Generate the public API reference (``docs/api.md``) from the docstrings, so it cannot drift.

``python -m statesim.apidoc > docs/api.md`` writes, for every name in :data:`PUBLIC` (the one list of what
statesim promises to keep), its kind, import path, signature (type hints as written), docstring and
example. Every public name must have a docstring with an example (``>>>`` lines); ``tests/test_api_docs.py``
runs each example with :mod:`doctest`, fails when a name lacks one, and fails when the committed file is
stale. Module constants and class attributes are documented by ``#:`` comments above their assignment.
"""
from __future__ import annotations

import ast
import dataclasses
import doctest
import importlib
import inspect
import re
import sys
from dataclasses import dataclass
from functools import lru_cache
from types import ModuleType
from typing import Any

from pydantic import BaseModel

#: The public API, by topic: ``(title, intro, dotted names)``. A name is importable as written (a name of the
#: package ``statesim`` is one of its lazy exports); ``Class.member`` documents one member of a class.
PUBLIC: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("Cells", "A cell is one step of a dynamical system, `(x_t, state) -> (y_t, state)`; a plugin author "
     "subclasses `Cell` and overrides the members below (docs/writing-plugins.md).", (
        "statesim.Cell", "statesim.Cell.Params", "statesim.Cell.output_part", "statesim.Cell.state_spec",
        "statesim.Cell.output_size", "statesim.Cell.forward", "statesim.Cell.project_inputs",
        "statesim.Cell.transition", "statesim.Cell.numpy_step", "statesim.Cell.fused_form",
        "statesim.Cell.linear_form", "statesim.Cell.constrain_parameters_", "statesim.Cell.from_params",
        "statesim.Cell.zero_state", "statesim.CellParams", "statesim.State")),
    ("Running a cell", "The engine owns the time loop: `unroll` runs a whole sequence, `step` one tick, a "
     "`Stepper` is a cell prepared once for many calls.", (
        "statesim.unroll", "statesim.step", "statesim.Stepper", "statesim.Stepper.run", "statesim.Stepper.step",
        "statesim.Trajectory")),
    ("Forcing", "Clamp chosen units of the input or of a named state part for a window of steps "
     "(statesim.forcing).", (
        "statesim.Clamp", "statesim.Forcing")),
    ("Models", "A model is a topology of cells, an initial-state policy and an optional output head.", (
        "statesim.SequenceModel", "statesim.SequenceModel.forward", "statesim.SequenceModel.step_cell",
        "statesim.build_model", "statesim.Topology", "statesim.Topology.forward", "statesim.Topology.as_cell",
        "statesim.InitialState", "statesim.InitialState.forward", "statesim.InitialContext",
        "statesim.PluginParams", "statesim.Encoder", "statesim.EncoderParams", "statesim.Memory")),
    ("Embedding", "Step a trained model one tick at a time from a host simulation (docs/embedding.md).", (
        "statesim.embed.load", "statesim.embed.as_embedded", "statesim.embed.load_model",
        "statesim.embed.EmbeddedModel", "statesim.embed.EmbeddedModel.step", "statesim.embed.EmbeddedModel.reset",
        "statesim.embed.EmbeddedModel.rollout", "statesim.embed.EmbeddedModel.get_state",
        "statesim.embed.EmbeddedModel.set_state", "statesim.embed.EmbeddedModel.state",
        "statesim.embed.EmbeddedModel.save_state", "statesim.embed.EmbeddedModel.restore_state",
        "statesim.embed.EmbeddedModel.force", "statesim.embed.EmbeddedModel.release",
        "statesim.embed.EmbeddedModel.forcing", "statesim.embed.EmbeddedModel.refresh",
        "statesim.embed.EmbeddedModel.fast", "statesim.embed.EmbeddedModel.numpy_max_batch",
        "statesim.embed.EmbeddedModel.batch_size", "statesim.embed.EmbeddedModel.t",
        "statesim.embed.EmbeddedModel.state_parts", "statesim.embed.StateSnapshot")),
    ("Plugins and the registry", "A plugin module marks its hook functions with `hookimpl` and returns "
     "`Registration` records; the registry keeps each as a `Provided` record naming who provided it.", (
        "statesim.hookimpl", "statesim.PLUGIN_API", "statesim.Registration", "statesim.registry.Provided",
        "statesim.registry.Registry", "statesim.registry.Registry.get", "statesim.registry.Registry.names",
        "statesim.build_plugin_host")),
    ("Scenarios, data and training", "A scenario is a task: it builds its data and models and trains them "
     "with the shared trainer.", (
        "statesim.Scenario", "statesim.ScenarioParams", "statesim.RunContext", "statesim.SequenceData",
        "statesim.DataSplits", "statesim.Trainer", "statesim.load_config", "statesim.RunConfig",
        "statesim.ModelConfig")),
    ("Errors", "Every error statesim raises on purpose is a `StatesimError`; the CLI prints its message "
     "without a traceback.", (
        "statesim.StatesimError", "statesim.ConfigError", "statesim.PluginError", "statesim.CheckpointError",
        "statesim.ShapeError", "statesim.embed.EmbedError")),
)

HEADER = """\
<!-- Generated by `python -m statesim.apidoc > docs/api.md` from the docstrings. Do not edit by hand: change
     the docstrings (or statesim.apidoc.PUBLIC) and regenerate (tests/test_api_docs.py checks it and runs
     every example). -->
# Public API reference

The names below are statesim's public API: what plugins, host simulations and scripts may rely on. Each
has its signature (type hints as written in the code), its docstring and an example that the test suite
runs. The YAML keys are in [scenarios.md](scenarios.md); how to write a plugin in
[writing-plugins.md](writing-plugins.md); how to embed a model in [embedding.md](embedding.md).
"""


@dataclass(frozen=True)
class Entry:
    """One public name as documented: where it lives, what it is, its signature and its docstring."""

    name: str
    topic: str
    kind: str
    signature: str
    doc: str

    @property
    def example(self) -> bool:
        """Whether the docstring holds an example (``>>>`` lines)."""
        return bool(doctest.DocTestParser().get_examples(self.doc))


def _module_of(name: str) -> tuple[ModuleType, list[str]]:
    """The module ``name`` is looked up in and the attribute path after it (an attribute wins over a submodule
    of the same name: ``statesim.hookimpl`` is the marker, not the module defining it)."""
    parts = name.split(".")
    module = importlib.import_module(parts[0])
    for cut in range(1, len(parts)):
        try:
            found = getattr(module, parts[cut])
        except AttributeError:
            found = None
        if not isinstance(found, ModuleType):
            try:
                found = importlib.import_module(".".join(parts[:cut + 1])) if found is None else found
            except ModuleNotFoundError:
                raise AttributeError(f"{name}: {module.__name__} has no {parts[cut]!r}") from None
        if not isinstance(found, ModuleType):
            return module, parts[cut:]
        module = found
    return module, []


def _defined_in(module: ModuleType, attr: str) -> ModuleType:
    """The module whose source assigns ``attr`` (a lazy export of ``statesim`` lives in its own module)."""
    exports = getattr(module, "_EXPORTS", {})
    return importlib.import_module(exports[attr]) if attr in exports else module


@lru_cache(maxsize=None)
def _comment_docs(module_name: str) -> dict[str, str]:
    """``#:`` comments above assignments, by ``name`` or ``Class.name``: the docs of constants and attributes."""
    module = importlib.import_module(module_name)
    source = inspect.getsource(module)
    lines = source.splitlines()
    found: dict[str, str] = {}

    def visit(body: list[ast.stmt], prefix: str) -> None:
        for node in body:
            if isinstance(node, ast.ClassDef) and not prefix:
                visit(node.body, node.name + ".")
            targets: list[ast.expr] = []
            if isinstance(node, ast.Assign):
                targets = node.targets
            elif isinstance(node, ast.AnnAssign):
                targets = [node.target]
            for target in targets:
                if not isinstance(target, ast.Name):
                    continue
                comment: list[str] = []
                row = node.lineno - 2
                while row >= 0 and lines[row].strip().startswith("#:"):
                    comment.insert(0, lines[row].strip()[2:].removeprefix(" "))
                    row -= 1
                if comment:
                    found[prefix + target.id] = "\n".join(comment).strip()

    visit(ast.parse(source).body, "")
    return found


class _Text:
    """Renders as the given text (an annotation as written, a default without a memory address)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _annotation(annotation: Any) -> Any:
    if annotation is inspect.Parameter.empty:
        return annotation
    text = annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)
    text = re.sub(r" at 0x[0-9a-fA-F]+", "", text)
    if len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":
        text = text[1:-1]  # a forward reference written in quotes
    return _Text(text)


def _default(value: Any) -> Any:
    if value is inspect.Parameter.empty:
        return value
    if inspect.isfunction(value) or inspect.isbuiltin(value):
        return _Text(value.__qualname__)
    return _Text(re.sub(r" at 0x[0-9a-fA-F]+", "", repr(value)))


def _signature(obj: Any, drop_first: bool = False) -> str:
    """``(params) -> return`` with every annotation as written in the source, or '' when it has none."""
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return ""
    parameters = list(signature.parameters.values())
    if drop_first and parameters:
        parameters = parameters[1:]
    shown = [p.replace(annotation=_annotation(p.annotation), default=_default(p.default)) for p in parameters]
    return str(signature.replace(parameters=shown, return_annotation=_annotation(signature.return_annotation)))


def _class_kind(cls: type) -> str:
    if issubclass(cls, BaseException):
        return "exception"
    if issubclass(cls, BaseModel):
        return "pydantic model"
    if dataclasses.is_dataclass(cls):
        return "dataclass"
    return "class"


def entry(name: str, topic: str = "") -> Entry:
    """Resolve one public name to its :class:`Entry`."""
    module, path = _module_of(name)
    if not path:
        raise ValueError(f"{name} is a module, not a public name")
    home = _defined_in(module, path[0])
    owner: Any = getattr(module, path[0])
    if len(path) == 1:
        if inspect.isclass(owner) and issubclass(owner, BaseModel):
            fields = ", ".join(owner.model_fields) or "none"
            return Entry(name, topic, "pydantic model", f"fields: {fields}", inspect.cleandoc(owner.__doc__ or ""))
        if inspect.isclass(owner):
            init = owner.__init__ if "__init__" in vars(owner) or dataclasses.is_dataclass(owner) else owner
            signature = _signature(init, drop_first=init is not owner) if init is not owner else _signature(owner)
            return Entry(name, topic, _class_kind(owner), signature, inspect.cleandoc(owner.__doc__ or ""))
        if inspect.isfunction(owner):
            return Entry(name, topic, "function", _signature(owner), inspect.cleandoc(owner.__doc__ or ""))
        doc = _comment_docs(home.__name__).get(path[0], "")
        if callable(owner):  # a decorator object such as hookimpl
            return Entry(name, topic, "decorator", _signature(owner), doc)
        return Entry(name, topic, "constant", f"= {owner!r}", doc)
    if len(path) != 2 or not inspect.isclass(owner):
        raise ValueError(f"{name}: only module names and Class.member are documented")
    member = path[1]
    for base in owner.__mro__:
        if member in vars(base):
            raw = vars(base)[member]
            break
    else:
        raise AttributeError(f"{name} does not exist")
    if isinstance(raw, property):
        getter = raw.fget
        returns = inspect.signature(getter).return_annotation if getter is not None else inspect.Parameter.empty
        shown = _annotation(returns)
        return Entry(name, topic, "property", "" if shown is inspect.Parameter.empty else f"-> {shown!r}",
                     inspect.cleandoc(raw.__doc__ or ""))
    if isinstance(raw, (classmethod, staticmethod)):
        return Entry(name, topic, type(raw).__name__, _signature(raw.__func__, isinstance(raw, classmethod)),
                     inspect.cleandoc(raw.__func__.__doc__ or ""))
    if inspect.isfunction(raw):
        return Entry(name, topic, "method", _signature(raw, drop_first=True), inspect.cleandoc(raw.__doc__ or ""))
    defining = next(b for b in owner.__mro__ if member in vars(b))
    doc = _comment_docs(defining.__module__).get(f"{defining.__name__}.{member}", "")
    return Entry(name, topic, "class attribute", "", doc)


def entries() -> list[Entry]:
    """Every public name in :data:`PUBLIC`, in its order."""
    return [entry(name, title) for title, _, names in PUBLIC for name in names]


def problems() -> list[str]:
    """What the reference lacks: a public name without a docstring, or whose docstring has no example."""
    found = []
    for item in entries():
        if not item.doc.strip():
            found.append(f"{item.name}: no docstring")
        elif not item.example:
            found.append(f"{item.name}: its docstring has no example (>>> lines)")
    return found


def _anchor(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc):`~?([^`]+)`")


def _markdown(doc: str) -> list[str]:
    """A docstring as Markdown: reST roles as code, doctest paragraphs as fenced Python."""
    lines: list[str] = []
    for paragraph in re.split(r"\n\s*\n", doc.strip()):
        if paragraph.lstrip().startswith(">>>"):
            lines += ["```python", inspect.cleandoc(paragraph), "```", ""]
        else:
            text = _ROLE.sub(lambda m: f"``{m.group(1)}``", paragraph)
            lines += [text.rstrip(":") + ":" if text.endswith("::") else text, ""]
    return lines


def generate() -> str:
    """The Markdown reference of every name in :data:`PUBLIC`."""
    items = entries()
    out = [HEADER.rstrip("\n"), "", "## Contents", ""]
    for title, _, names in PUBLIC:
        out.append(f"- [{title}](#{_anchor(title)}): " + ", ".join(
            f"[`{n.removeprefix('statesim.')}`](#{_anchor(n)})" for n in names))
    for title, intro, _ in PUBLIC:
        out += ["", f"## {title}", "", intro]
        for item in (i for i in items if i.topic == title):
            out += ["", f'<a id="{_anchor(item.name)}"></a>', "", f"### `{item.name}`", "", f"*{item.kind}*", ""]
            if item.signature.startswith("fields: "):
                out += ["Fields: " + ", ".join(f"`{f}`" for f in item.signature[8:].split(", ")), ""]
            elif item.signature:
                short = item.name.rsplit(".", 1)[-1]
                out += ["```python", f"{short}{item.signature}" if item.signature.startswith("(")
                        else f"{short} {item.signature}", "```", ""]
            out += _markdown(item.doc)
    return "\n".join(line.rstrip() for line in out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    """``python -m statesim.apidoc > docs/api.md``; ``--check`` lists public names lacking a docstring or example."""
    args = sys.argv[1:] if argv is None else argv
    if "--check" in args:
        found = problems()
        for line in found:
            print(line, file=sys.stderr)
        return 1 if found else 0
    sys.stdout.write(generate())
    return 0


if __name__ == "__main__":
    sys.exit(main())
