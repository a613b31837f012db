"""Generated scenario documents either validate or raise ConfigError (never another exception); valid ones
round-trip through dump and load.

Documents come from the pydantic schemas themselves (RunConfig's JSON schema, each component resolved to a
registered name whose own params schema is then followed), with junk mixed in at random places, and from
random mutations of the shipped scenario files. Raw text and bytes go through the YAML layer too.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from statesim.config import RunConfig, dump_config, validate_data
from statesim.errors import ConfigError
from statesim.plugin_manager import build_plugin_host
from statesim.yamlio import load_yaml, parse_yaml

ROOT = Path(__file__).resolve().parents[1]
HOST = build_plugin_host(autoload=False)
REGISTRY = HOST.registry
COMPONENT_KINDS = {"CellSpec": "cell", "TopologySpec": "topology", "InitialStateSpec": "initial_state",
                   "ScenarioSpec": "scenario", "LoggerSpec": "logger"}
SETTINGS = settings(max_examples=120, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                    st.text(max_size=12))
junk = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                     st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                    max_leaves=8)


def _number(schema: dict, integer: bool) -> st.SearchStrategy:
    low = schema.get("minimum", schema.get("exclusiveMinimum"))
    high = schema.get("maximum", schema.get("exclusiveMaximum"))
    if integer:
        low = None if low is None else math.floor(low) + (1 if "exclusiveMinimum" in schema else 0)
        high = None if high is None else math.ceil(high) - (1 if "exclusiveMaximum" in schema else 0)
        return st.integers(low if low is not None else -10**6, high if high is not None else 10**6)
    return st.floats(low, high, exclude_min="exclusiveMinimum" in schema, exclude_max="exclusiveMaximum" in schema,
                     allow_nan=False, allow_infinity=False)


def from_schema(schema: dict, defs: dict, depth: int = 0) -> st.SearchStrategy:
    """Values that mostly satisfy ``schema``; a small share of junk at any node."""
    if not depth:
        return _strict(schema, defs, depth)
    return st.integers(0, 39).flatmap(lambda roll: junk if roll == 0 else _strict(schema, defs, depth))


@st.composite
def _component(draw, kind: str, defs: dict, depth: int) -> dict:
    names = REGISTRY.names(kind)
    name = draw(st.sampled_from(names)) if names and draw(st.integers(0, 19)) else draw(st.text(max_size=10))
    params: dict[str, Any] = {}
    if name in REGISTRY.entries.get(kind, {}):
        schema = REGISTRY.get(kind, name).record.params.model_json_schema()
        params = draw(_strict(schema, {**defs, **schema.get("$defs", {})}, depth + 1))
    return {"type": name, **params}


def _strict(schema: dict, defs: dict, depth: int) -> st.SearchStrategy:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        if name in COMPONENT_KINDS:
            return _component(COMPONENT_KINDS[name], defs, depth)
        return _strict(defs[name], defs, depth)
    if "anyOf" in schema:
        return st.one_of([from_schema(s, defs, depth + 1) for s in schema["anyOf"]])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "const" in schema:
        return st.just(schema["const"])
    kind = schema.get("type")
    if kind == "integer":
        return _number(schema, True)
    if kind == "number":
        return _number(schema, False)
    if kind == "string":
        return st.text(max_size=12)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "array":
        if "prefixItems" in schema:
            return st.tuples(*[from_schema(s, defs, depth + 1) for s in schema["prefixItems"]]).map(list)
        items = schema.get("items", {})
        return st.lists(from_schema(items, defs, depth + 1) if items else junk, max_size=3 if depth < 4 else 1)
    if kind == "object" or "properties" in schema:
        if depth > 6:
            return st.just({})
        props = schema.get("properties", {})
        required = set(schema.get("required", []))
        fields = {k: from_schema(v, defs, depth + 1) for k, v in props.items()}
        extra = schema.get("additionalProperties")
        values = (from_schema(extra, defs, depth + 1) if isinstance(extra, dict) else junk)

        @st.composite
        def build(draw):
            out = {}
            for key, strategy in fields.items():
                # Required keys are usually present, optional ones half the time.
                if draw(st.integers(0, 29)) < (29 if key in required else 10):
                    out[key] = draw(strategy)
            if draw(st.integers(0, 29)) == 0 or isinstance(extra, dict):
                for key in draw(st.lists(st.text(max_size=6), max_size=2)):
                    out[key] = draw(values)
            return out

        return build()
    return junk


RUN_SCHEMA = RunConfig.model_json_schema()
documents = _strict(RUN_SCHEMA, RUN_SCHEMA["$defs"], 0)


def _canonical(data: Any) -> str:
    return json.dumps(data, sort_keys=True, default=str)


def _check(document: Any) -> RunConfig | None:
    """The property: validate or ConfigError; a valid config dumps to YAML that loads to the same config."""
    try:
        config = validate_data(document, REGISTRY, "<generated>")
    except ConfigError as exc:
        assert exc.issues and all(str(issue) for issue in exc.issues)
        return None
    text = dump_config(config)
    data, _ = parse_yaml(text, "<dumped>")
    again = validate_data(data, REGISTRY, "<dumped>")
    assert _canonical(again.resolved()) == _canonical(config.resolved())
    assert again.digest() == config.digest()
    return config


@SETTINGS
@given(documents)
def test_schema_generated_documents_validate_or_raise_config_error(document):
    _check(document)


def test_the_schema_strategy_produces_valid_documents_too():
    """Control: the generator is not just junk; a fair share of its documents are valid configs."""
    found = []

    @settings(max_examples=60, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(documents)
    def collect(document):
        found.append(_check(document) is not None)

    collect()
    assert sum(found) >= 6, f"{sum(found)} valid of {len(found)}"


SHIPPED = [load_yaml(p)[0] for p in sorted((ROOT / "scenarios").glob("*.yaml"))]


@st.composite
def mutated(draw) -> Any:
    """A shipped scenario with a few random edits: a value replaced, a key dropped, an unknown key added."""
    document = json.loads(json.dumps(draw(st.sampled_from(SHIPPED))))
    for _ in range(draw(st.integers(1, 4))):
        node, path = document, []
        while isinstance(node, (dict, list)) and node and draw(st.booleans()):
            key = draw(st.sampled_from(sorted(node, key=str) if isinstance(node, dict) else range(len(node))))
            path.append(key)
            node = node[key]
        if not path:
            if isinstance(document, dict):
                document[draw(st.text(max_size=6))] = draw(junk)
            continue
        parent = document
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "replace":
            parent[path[-1]] = draw(junk)
        elif action == "delete" and isinstance(parent, dict):
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=6))] = draw(junk)
    return document


@SETTINGS
@given(mutated())
def test_mutated_shipped_scenarios_validate_or_raise_config_error(document):
    _check(document)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.one_of(st.text(max_size=200), st.lists(st.sampled_from(
    ["a:", " b", "- ", "&x ", "*x", "!!python/object:os.system", "{", "}", "[", "]", ": ", "\n", "\t", "'", '"',
     "? ", "|", ">", "%YAML 1.1\n", "---\n", "...\n", "!!binary ", "<<: *x", "1e400", ".nan", "~", "0x1F"]),
    max_size=30).map("".join)))
def test_any_text_parses_or_raises_config_error(text):
    try:
        parse_yaml(text, "<fuzz>")
    except ConfigError as exc:
        assert "<fuzz>" in str(exc)


@settings(max_examples=100, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=200))
def test_any_bytes_load_or_raise_config_error(tmp_path, blob):
    path = tmp_path / "fuzz.yaml"
    path.write_bytes(blob)
    try:
        load_yaml(path)
    except ConfigError as exc:
        assert str(path) in str(exc)
