"""Scenario-file validation: every mistake reported at once with file, line and dotted key; overrides;
the resolved config; and a meta-test that every shipped scenario validates."""
from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from statesim.config import dump_config, load_config, validate_data
from statesim.errors import ConfigError
from statesim.plugin_manager import build_plugin_host
from statesim.yamlio import parse_yaml

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = sorted((ROOT / "scenarios").glob("*.yaml"))


@pytest.fixture(scope="module")
def registry():
    """Built-ins plus installed plugins, built once for the module (validation never mutates it)."""
    return build_plugin_host().registry


def _write(tmp_path: Path, text: str | bytes, name: str = "scenario.yaml") -> Path:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def _issues(path: Path, registry, overrides: list[str] = ()) -> list:
    with pytest.raises(ConfigError) as caught:
        load_config(path, registry, list(overrides))
    return caught.value.issues


BASE = "scenario: {type: moving_average}\n"
BILLION_LAUGHS = "".join(
    [f"l0: &l0 [{', '.join(['lol'] * 9)}]\n"]
    + [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 10)]) + BASE

#: (id, file text, expected line, expected dotted key, a phrase of the message)
MISTAKES = [
    ("unknown-top-key", BASE + "model:\n  cell: {type: lstm, hidden_size: 4}\ntrainig:\n  steps: 10\n",
     4, "trainig", "unknown key 'trainig'. Did you mean 'training'?"),
    ("unknown-nested-key", BASE + "training:\n  lr: 0.1\n  stpes: 5\n", 4, "training.stpes", "Did you mean 'steps'?"),
    ("unknown-plugin-param", BASE + "model:\n  cell:\n    type: lstm\n    hidden_size: 4\n    forget_bais: 1.0\n",
     6, "model.cell.forget_bais", "Did you mean 'forget_bias'?"),
    ("unknown-cell-type", BASE + "model:\n  cell: {type: lstn, hidden_size: 4}\n", 3, "model.cell.type",
     "unknown cell 'lstn'. Did you mean 'lstm'?"),
    ("unknown-scenario", "scenario:\n  type: moving_averag\n", 2, "scenario.type",
     "unknown scenario 'moving_averag'. Did you mean 'moving_average'?"),
    ("wrong-type", BASE + "training:\n  lr: fast\n", 3, "training.lr", "valid number"),
    ("wrong-literal", BASE + "training:\n  optimizer: adamm\n", 3, "training.optimizer", "'adam'"),
    ("wrong-plugin-type", BASE + "model:\n  cell: {type: gru, hidden_size: many}\n", 3, "model.cell.hidden_size",
     "valid integer"),
    ("missing-plugin-param", BASE + "model:\n  cell: {type: lstm}\n", 3, "model.cell.hidden_size",
     "this key is required"),
    ("missing-scenario", "seed: 3\n", 1, "scenario", "this key is required"),
    ("out-of-range", BASE + "seed: 1\ntraining:\n  batch_size: 0\n", 4, "training.batch_size", "greater than 0"),
    ("infinite", BASE + "training:\n  lr: .inf\n", 3, "training.lr", "finite number"),
    ("nan", BASE + "training:\n  clip: {max_norm: .nan}\n", 3, "training.clip.max_norm", "finite number"),
    ("bad-syntax", BASE + "model: {cell: {type: lstm\nseed: 1\n", 3, None, "Fix the YAML syntax"),
    ("bad-indent", BASE + "training:\n  lr: 0.1\n   steps: 3\n", 4, None, "Fix the YAML syntax"),
    ("duplicate-key", BASE + "seed: 1\ntraining: {steps: 3}\nseed: 2\n", 4, "seed",
     "duplicate key 'seed' (first defined on line 2)"),
    ("duplicate-nested-key", BASE + "training:\n  lr: 0.1\n  lr: 0.2\n", 4, "training.lr", "duplicate key 'lr'"),
    ("duplicate-flow-key", "scenario: {type: moving_average, steps: 3, steps: 4}\n", 1, "scenario.steps",
     "duplicate key 'steps' (first defined on line 1)"),
    ("python-tag", "scenario: !!python/object/apply:os.system ['echo hacked']\n", 1, "scenario",
     "tags that build Python objects are not allowed"),
    ("nested-python-tag", BASE + "model:\n  cell: !!python/name:os.system\n", 3, "model.cell",
     "tags that build Python objects are not allowed"),
    ("not-a-mapping", "- scenario\n- model\n", 1, None, "must be a mapping"),
]


@pytest.mark.parametrize("text, line, key, phrase", [m[1:] for m in MISTAKES], ids=[m[0] for m in MISTAKES])
def test_each_mistake_names_file_line_and_key(tmp_path, registry, text, line, key, phrase):
    path = _write(tmp_path, text)
    issues = _issues(path, registry)
    assert len(issues) == 1, issues
    issue = issues[0]
    assert (issue.file, issue.line) == (str(path), line)
    if key is not None:
        assert issue.key == key
    rendered = str(issue)
    assert rendered.startswith(f"{path}, line {line}: " + (f"`{key}`: " if key else ""))
    assert phrase in rendered


def test_billion_laughs_is_refused_quickly(tmp_path, registry):
    path = _write(tmp_path, BILLION_LAUGHS)
    started = time.perf_counter()
    issues = _issues(path, registry)
    assert time.perf_counter() - started < 5
    assert issues[0].file == str(path) and "refusing to load it" in str(issues[0])


def test_file_level_problems(tmp_path, registry):
    latin1 = _write(tmp_path, b"scenario: {type: moving_average}\nname: caf\xe9\n", "latin1.yaml")
    (issue,) = _issues(latin1, registry)
    assert (issue.file, issue.line) == (str(latin1), 2) and "not valid UTF-8" in issue.message
    (issue,) = _issues(tmp_path, registry)
    assert issue.file == str(tmp_path) and "is a directory" in issue.message
    (issue,) = _issues(tmp_path / "nope.yaml", registry)
    assert issue.file == str(tmp_path / "nope.yaml") and "does not exist" in issue.message


def test_all_mistakes_are_reported_at_once_including_plugin_params(tmp_path, registry):
    path = _write(tmp_path, "scenario:\n  type: moving_average\n  gamma: 2\n"
                            "model:\n  cell:\n    type: lstm\n    hidden_size: 0\n"
                            "training:\n  lr: -1\n  stpes: 3\n")
    issues = _issues(path, registry)
    found = {(i.key, i.line) for i in issues}
    assert found == {("scenario.gamma", 3), ("model.cell.hidden_size", 7), ("training.lr", 9),
                     ("training.stpes", 10)}
    with pytest.raises(ConfigError) as caught:
        load_config(path, registry)
    assert str(caught.value).startswith("4 problem(s) in the scenario:")


def test_two_plugin_param_mistakes_in_an_otherwise_valid_file(tmp_path, registry):
    path = _write(tmp_path, "scenario: {type: moving_average, steps: 2}\n"
                            "model:\n  cell: {type: window, window: 0}\n  initial_state: {type: zeros, scale: 2}\n")
    issues = _issues(path, registry)
    assert {(i.key, i.line) for i in issues} == {("scenario.steps", 1), ("model.cell.window", 3),
                                                 ("model.initial_state.scale", 4)}
    assert "unknown key 'scale'" in str([i for i in issues if i.key.endswith("scale")][0])


# --------------------------------------------------------------------------- --set overrides
def test_overrides_are_applied_and_validated(tmp_path, registry):
    path = ROOT / "scenarios" / "linear_system.yaml"
    config = load_config(path, registry, ["model.cell.hidden_size=32", "training.lr=0.01",
                                          "training.schedule.type=constant", "scenario.noise=0.5", "seed=7"])
    assert config.model.cell.params.hidden_size == 32
    assert config.training.lr == 0.01 and config.training.schedule.type == "constant"
    assert config.scenario.params.noise == 0.5 and config.seed == 7
    assert load_config(path, registry, ["training.lr=0.1", "training.lr=0.2"]).training.lr == 0.2


@pytest.mark.parametrize("override, key, phrase", [
    ("training.lr=fast", "training.lr", "valid number"),
    ("training.lr=-1", "training.lr", "greater than 0"),
    ("model.cell.hidden_size=0", "model.cell.hidden_size", "greater than 0"),
    ("trainig.lr=1", "trainig", "Did you mean 'training'?"),
    ("model.cell.hiden_size=3", "model.cell.hiden_size", "Did you mean 'hidden_size'?"),
    ("training.lr.x=1", "training.lr", "valid number"),
])
def test_a_bad_override_is_blamed_on_its_set(registry, override, key, phrase):
    issues = _issues(ROOT / "scenarios" / "linear_system.yaml", registry, ["seed=3", override])
    assert len(issues) == 1, issues
    assert (issues[0].file, issues[0].line, issues[0].key) == (f"--set {override}", None, key)
    assert str(issues[0]).startswith(f"--set {override}: `{key}`:") and phrase in str(issues[0])


@pytest.mark.parametrize("override, phrase", [
    ("training.lr", "must look like key.path=value"),
    ("training..lr=1", "is not a dotted key path"),
    ("training.lr=[1, 2", "Fix the YAML syntax"),
    ("scenario.coefficients.x=1", "address an item by its index 0..2"),
    ("scenario.coefficients.5=1", "address an item by its index 0..2"),
])
def test_malformed_overrides_name_the_set(registry, override, phrase):
    issues = _issues(ROOT / "scenarios" / "moving_average.yaml", registry, [override])
    assert issues[0].file == f"--set {override}" and phrase in str(issues[0])


def test_override_into_a_list_and_a_section_the_file_lacks(registry):
    path = ROOT / "scenarios" / "moving_average.yaml"
    config = load_config(path, registry, ["scenario.coefficients.2=0.4", "training.clip.max_norm=1.5"])
    assert config.scenario.params.coefficients[2] == 0.4 and config.training.clip.max_norm == 1.5
    # moving_average has no `model:`; a --set that creates half of one is blamed on the --set.
    issues = _issues(path, registry, ["model.cell.hidden_size=32"])
    assert [(i.file, i.key) for i in issues] == [("--set model.cell.hidden_size=32", "model.cell.type")]


def test_a_mapping_level_error_is_blamed_on_the_set_that_causes_it_not_the_last_one(tmp_path, registry):
    """A salamander validator compares validation and eval drives: it was blamed on the last `--set` under
    `scenario` whatever that set. It is blamed on the `--set` that causes it, or on the file when the file's
    own values clash."""
    path = ROOT / "scenarios" / "salamander.yaml"
    issues = _issues(path, registry, ["scenario.eval_levels=[2.0]", "scenario.ablation_seconds=3"])
    assert [(i.file, i.key) for i in issues] == [("--set scenario.eval_levels=[2.0]", "scenario")], issues
    clashing = tmp_path / "clash.yaml"
    clashing.write_text(path.read_text().replace("  eval_seconds: 120.0", "  eval_seconds: 120.0\n"
                                                                           "  eval_levels: [2.0]"))
    issues = _issues(clashing, registry, ["scenario.ablation_seconds=3"])
    assert [(i.file, i.line, i.key) for i in issues] == [(str(clashing), 7, "scenario")], issues
    assert "lie within held_out_width" in str(issues[0])


def test_a_new_component_type_keeps_only_the_keys_it_accepts(tmp_path, registry):
    """--set model.cell.type=gru on a vanilla cell with `activation` drops that key (gru has none) and keeps
    hidden_size; a later --set of the new type's own key still applies, and a foreign key set after the switch
    is still an error."""
    path = _write(tmp_path, "scenario: {type: linear_system}\n"
                            "model:\n  cell: {type: vanilla, hidden_size: 5, activation: relu}\n")
    with pytest.raises(ConfigError, match="unknown key 'activation'"):
        validate_data({"scenario": {"type": "linear_system"},
                       "model": {"cell": {"type": "gru", "hidden_size": 5, "activation": "relu"}}}, registry)
    config = load_config(path, registry, ["model.cell.type=gru", "model.cell.bias=false"])
    assert config.model.cell.type == "gru" and config.model.cell.model_extra == {"hidden_size": 5, "bias": False}
    issues = _issues(path, registry, ["model.cell.type=gru", "model.cell.activation=tanh"])
    assert [(i.file, i.key) for i in issues] == [("--set model.cell.activation=tanh", "model.cell.activation")]
    # the same type again changes nothing
    assert load_config(path, registry, ["model.cell.type=vanilla"]).model.cell.model_extra["activation"] == "relu"


# --------------------------------------------------------------------------- the resolved config
def test_resolved_config_fills_defaults_and_round_trips(tmp_path, registry):
    config = load_config(ROOT / "scenarios" / "moving_average.yaml", registry, ["training.lr=0.05"])
    resolved = config.resolved()
    assert resolved["training"]["optimizer"] == "adam" and resolved["training"]["lr"] == 0.05
    assert resolved["scenario"]["noise"] == 0.0  # a scenario-plugin default
    window = resolved["scenario"]["models"]["window"]
    assert window["cell"]["type"] == "window" and window["cell"]["hidden"] == []  # a cell-plugin default
    assert window["topology"]["type"] == "unidirectional" and window["initial_state"]["type"] == "zeros"
    text = dump_config(config)
    data, _ = parse_yaml(text)
    assert data == resolved
    again = load_config(_write(tmp_path, text), registry)
    assert again.resolved() == resolved and again.digest() == config.digest()


def test_components_resolve_through_the_validation_context_or_not_at_all(registry):
    """A spec is validated with the registry (pydantic's validation context) or refused at validation time: no
    half-built spec whose params raise when read too early. Defaults given as data are resolved the same way."""
    from pydantic import ValidationError

    from statesim.config import ModelConfig, registry_context, validate_model

    config = ModelConfig.model_validate({"cell": {"type": "lstm", "hidden_size": 4}},
                                        context=registry_context(registry))
    assert config.cell.params.hidden_size == 4
    assert config.topology.type == "unidirectional" and config.topology.params is not None  # a default, resolved
    with pytest.raises(ValidationError, match="registry_context"):
        ModelConfig.model_validate({"cell": {"type": "lstm", "hidden_size": 4}})
    with pytest.raises(ConfigError) as info:
        validate_model({"cell": {"type": "lstm", "hidden_size": 0, "hiden": 1}, "head": "some"}, registry)
    keys = {issue.key for issue in info.value.issues}
    assert keys == {"model.cell.hidden_size", "model.cell.hiden", "model.head"}, keys
    assert "Did you mean 'hidden_size'?" in str(info.value)


def test_digest_changes_with_what_is_computed(registry):
    path = ROOT / "scenarios" / "linear_system.yaml"
    base = load_config(path, registry).digest()
    assert re.fullmatch(r"[0-9a-f]{16}", base)
    assert load_config(path, registry, ["training.lr=0.02"]).digest() != base
    assert load_config(path, registry, ["training.lr=0.01"]).digest() == base  # the file's own value


# --------------------------------------------------------------------------- shipped scenarios
@pytest.mark.parametrize("path", SCENARIOS, ids=[p.name for p in SCENARIOS])
def test_every_shipped_scenario_validates_and_names_its_command(path, registry, monkeypatch):
    monkeypatch.chdir(ROOT)
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first == f"# statesim run scenarios/{path.name}", first
    config = load_config(Path("scenarios") / path.name, registry)
    assert config.name
    assert dump_config(config)


def test_the_shipped_scenarios_are_found():
    assert {"moving_average.yaml", "linear_system.yaml"} <= {p.name for p in SCENARIOS}


def test_a_sweep_file_given_to_run_points_to_statesim_sweep(builtin_host):
    from statesim.config import load_config
    from statesim.errors import ConfigError

    sweep_file = Path(__file__).resolve().parents[1] / "scenarios" / "sweeps" / "gradient_lab.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config(sweep_file, builtin_host.registry)
    assert f"statesim sweep {sweep_file}" in str(caught.value)
    assert "Did you mean 'seed'" not in str(caught.value)


def test_forcing_clamps_are_checked_against_the_model_when_it_is_built(tmp_path, builtin_host):
    """A clamp that cannot fit the model fails when the model is built, before any training."""
    from statesim.run import execute

    path = _write(tmp_path, "scenario: {type: linear_system, steps: 20}\n"
                            "model: {cell: {type: lstm, hidden_size: 3}}\n"
                            "training: {steps: 5}\n"
                            "forcing:\n"
                            "  - {target: hh, value: 0.0}\n"
                            "  - {target: c, units: [3], value: 1.0}\n"
                            "  - {target: input, units: [0], value: [1.0, 2.0]}\n"
                            "  - {target: h, units: [0, 2], start: 3, stop: 5, value: 0.5}\n")
    with pytest.raises(ConfigError) as info:
        execute(path, ["output.progress=false"], out=tmp_path / "run", host=builtin_host)
    keys = [issue.key for issue in info.value.issues]
    assert keys == ["forcing.0.target", "forcing.1.units", "forcing.2.value"]
    assert "valid targets: input, h, c" in str(info.value) and "(0..2)" in str(info.value)
    assert not (tmp_path / "run" / "checkpoints").exists()  # stopped before training
