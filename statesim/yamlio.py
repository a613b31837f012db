"""Safe YAML in and out: data only, duplicate keys rejected, line numbers kept for error messages."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from statesim.errors import ConfigError

#: Documents larger than this many nodes after alias expansion are refused ("billion laughs"). Scenario files
#: have hundreds; the limits keep the worst accepted file under a second and ~25 MB (docs/reliability.md).
MAX_NODES = 20_000
#: Scenario files are kilobytes; anything larger is refused before it is read (a 20 MB file took minutes and
#: gigabytes to compose). 1 MiB still holds a 100x100 inline `init:` matrix.
MAX_BYTES = 1024 * 1024
#: Parser events (node starts, scalars, aliases, ends) allowed before composing; counted as they stream.
MAX_EVENTS = MAX_NODES
_MERGE_TAG = "tag:yaml.org,2002:merge"

Lines = dict[tuple[str | int, ...], int]


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys; it never constructs Python objects."""


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == _MERGE_TAG:  # `<<: *defaults` (plain YAML): merged below, explicit keys win
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, f"a mapping key must be a plain value, not a {type(key).__name__}",
                key_node.start_mark) from None
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key '{key}' (first defined on line {seen[key] + 1})", key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _collect_lines(node: yaml.Node, path: tuple, lines: Lines, budget: list[int],
                   at: dict[tuple[int, int], tuple] | None = None) -> None:
    budget[0] -= 1
    if budget[0] < 0:
        raise ValueError(f"document expands to more than {MAX_NODES} nodes (anchors/aliases)")
    lines.setdefault(path, node.start_mark.line + 1)
    if at is not None:  # every node's position -> its key path, to name the key of a later load error
        at.setdefault((node.start_mark.line, node.start_mark.column), path)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.start_mark.line)
            lines.setdefault(path + (key,), key_node.start_mark.line + 1)
            if at is not None:
                named = path + (key,) if isinstance(key_node, yaml.ScalarNode) else path
                at.setdefault((key_node.start_mark.line, key_node.start_mark.column), named)
            _collect_lines(value_node, path + (key,), lines, budget, at)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _collect_lines(item, path + (index,), lines, budget, at)


def _key_at(at: dict[tuple[int, int], tuple], mark: Any) -> str:
    """The dotted key at a YAML mark: the node starting there, else the deepest key on its line."""
    if mark is None:
        return ""
    path = at.get((mark.line, mark.column))
    if path is None:
        on_line = [p for (line, _), p in at.items() if line == mark.line]
        path = max(on_line, key=len, default=())
    return ".".join(str(part) for part in path)


def _issue(file: str, line: int | None, key: str, message: str) -> ConfigError:
    from statesim.config import ConfigIssue

    return ConfigError([ConfigIssue(file, line, key, message)])


def _too_large(size: int) -> str:
    return (f"the file is {size / 1e6:.1f} MB; scenario files may be at most {MAX_BYTES // (1024 * 1024)} MiB. "
            f"Keep large data (matrices, corpora) in a data file the scenario reads")


def _count_events(text: str) -> int | None:
    """Stream the parser's events, stopping past MAX_EVENTS; the count, or None when the YAML is invalid."""
    parser = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: ~20x faster
    count = 0
    try:
        for _ in yaml.parse(text, Loader=parser):
            count += 1
            if count > MAX_EVENTS:
                return count
    except yaml.YAMLError:
        return None  # the full loader below reports it with file, line and key
    return count


def load_yaml(path: str | Path) -> tuple[Any, Lines]:
    """Load one YAML document as plain data plus a map from key path to line number."""
    path = Path(path)
    name = str(path)
    if not path.exists():
        raise _issue(name, None, "", "the file does not exist. Check the path (scenarios live in scenarios/).")
    if path.is_dir():
        raise _issue(name, None, "", "this is a directory, not a YAML file. Name a .yaml file inside it.")
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise _issue(name, None, "", _too_large(size) + ".")
        with path.open("rb") as handle:  # bounded even for a FIFO or device that reports size 0
            raw = handle.read(MAX_BYTES + 1)
    except OSError as exc:
        raise _issue(name, None, "",
                     f"the file cannot be read ({exc.strerror or exc}). Check its permissions.") from None
    if len(raw) > MAX_BYTES:
        raise _issue(name, None, "", _too_large(len(raw)) + ".")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise _issue(name, line, "", f"the file is not valid UTF-8 (byte {exc.start}). Save it as UTF-8.") from None
    return parse_yaml(text, name)


def parse_yaml(text: str, name: str = "<string>") -> tuple[Any, Lines]:
    """Parse YAML text; syntax errors become a ConfigError naming file and line."""
    at: dict[tuple[int, int], tuple] = {}
    if len(text) > MAX_BYTES:
        raise _issue(name, None, "", _too_large(len(text.encode("utf-8", "replace"))) + ".")
    events = _count_events(text)
    if events is not None and events > MAX_EVENTS:
        raise _issue(name, None, "", f"the document has more than {MAX_EVENTS} YAML nodes; scenario files are "
                                     f"small. Keep large data in a data file the scenario reads; refusing to load it.")
    try:
        node = yaml.compose(text, Loader=_LineLoader)
        lines: Lines = {}
        if node is not None:
            _collect_lines(node, (), lines, [MAX_NODES], at)
        loader = _LineLoader(text)
        try:
            data = loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        problem = exc.problem or "invalid YAML"
        if "could not determine a constructor" in str(exc):
            raise _issue(name, line, _key_at(at, mark), f"{exc.problem}: YAML tags that build Python objects are not "
                         f"allowed; scenario files are data only. Remove the tag.") from None
        raise _issue(name, line, _key_at(at, mark), f"{problem}. Fix the YAML syntax there.") from None
    except yaml.YAMLError as exc:
        raise _issue(name, None, "", f"invalid YAML: {exc}") from None
    except ValueError as exc:
        raise _issue(name, None, "", f"{exc}; refusing to load it.") from None
    except RecursionError:
        raise _issue(name, None, "", "the document nests too deeply; refusing to load it.") from None
    return data, lines


def dump_yaml(data: Any) -> str:
    """Dump plain data as block-style YAML with keys in their given order."""
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True)
