"""Scenario YAML under load and odd-but-valid input: huge files refused before composing, merge keys,
NaN/inf in every params model, a digest that tells .nan from .inf."""
from __future__ import annotations

import tracemalloc

import pytest
import yaml

from statesim.errors import ConfigError


def _dense(path, megabytes: float) -> None:
    """Megabytes of real YAML: a long list of small flow sequences (many nodes per byte)."""
    line = "  - [1.5, 2.5, 3.5, 4.5]\n"
    with path.open("w") as handle:
        handle.write("name: big\nscenario:\n  type: moving_average\nx:\n")
        for _ in range(int(megabytes * 1e6 / len(line)) // 1000):
            handle.write(line * 1000)


@pytest.mark.parametrize("case", ["20MB", "200MB_sparse", "0.9MB_dense", "20MB_text"])
def test_large_yaml_is_refused_before_it_is_composed(tmp_path, monkeypatch, case):
    """Refused by size (stat, before reading) or by the number of parser events (streamed, stopped at the
    limit), never composed: the pure-Python composer is not called and Python allocations stay far below
    100 MB (the old path took 107 s and 3.3 GB for 20 MB; see docs/reliability.md for timings)."""
    from statesim import yamlio

    path = tmp_path / "big.yaml"
    if case == "200MB_sparse":
        path.write_text("scenario: {type: moving_average}\n")
        with path.open("r+b") as handle:
            handle.truncate(200_000_000)
    else:
        _dense(path, 0.9 if case == "0.9MB_dense" else 20)

    def no_compose(*args, **kwargs):
        raise AssertionError("a refused document must not be composed")

    monkeypatch.setattr(yamlio.yaml, "compose", no_compose)
    tracemalloc.start()
    try:
        with pytest.raises(ConfigError) as info:
            if case == "20MB_text":  # the --set / saved config.yaml path takes text
                yamlio.parse_yaml(path.read_text(), str(path))
            else:
                yamlio.load_yaml(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(path) in str(info.value)
    assert ("at most 1 MiB" if case != "0.9MB_dense" else "more than 20000 YAML nodes") in str(info.value)
    assert peak < (60 if case != "20MB_text" else 100) * 2**20, peak


def test_a_fifo_is_read_only_up_to_the_limit(tmp_path):
    """A FIFO (or device) reports size 0; reading stops after MAX_BYTES instead of exhausting memory."""
    import os
    import threading

    from statesim import yamlio

    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)

    def feed():
        with fifo.open("wb") as handle:
            try:
                for _ in range(yamlio.MAX_BYTES // 65536 + 8):
                    handle.write(b"#" * 65536)
            except BrokenPipeError:
                pass

    writer = threading.Thread(target=feed)
    writer.start()
    with pytest.raises(ConfigError, match="at most 1 MiB"):
        yamlio.load_yaml(fifo)
    writer.join(timeout=10)


def test_merge_keys_are_plain_yaml(tmp_path, builtin_host):
    """`<<: *defaults` was refused as 'tags that build Python objects'; it merges, explicit keys win, and a
    duplicate explicit key is still an error."""
    from statesim.config import load_config

    path = tmp_path / "merge.yaml"
    path.write_text("base: &train {steps: 7, lr: 0.01, batch_size: 4}\n"
                    "scenario: {type: linear_system}\n"
                    "training:\n  <<: *train\n  lr: 0.02\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="unknown key 'base'"):  # an anchor's home is still a key
        load_config(path, builtin_host.registry)
    from statesim.yamlio import parse_yaml

    data, _ = parse_yaml(path.read_text(), str(path))
    assert data["training"] == {"steps": 7, "lr": 0.02, "batch_size": 4}
    assert data == yaml.safe_load(path.read_text())  # the same as PyYAML's own safe loader
    dup = "a: &a {x: 1}\nb:\n  <<: *a\n  y: 2\n  y: 3\n"
    with pytest.raises(ConfigError, match="duplicate key 'y'"):
        parse_yaml(dup, "dup.yaml")


NONFINITE_PARAMS = {
    "scenario": ("scenario", {"type": "linear_system", "spectral_radius": float("inf")}, "scenario.spectral_radius"),
    "cell": ("model", {"cell": {"type": "lstm", "hidden_size": 2, "forget_bias": float("nan")}},
             "model.cell.forget_bias"),
    "initial_state": ("model", {"cell": {"type": "vanilla", "hidden_size": 2},
                                "initial_state": {"type": "random", "scale": float("-inf")}},
                      "model.initial_state.scale"),
    "nested_list": ("model", {"cell": {"type": "linear", "hidden_size": 1, "init": {"D": [[float("nan")]]}}},
                    "model.cell.init.D.0.0"),
}


@pytest.mark.parametrize("case", sorted(NONFINITE_PARAMS))
def test_nan_and_inf_are_refused_in_scenario_and_plugin_params(tmp_path, capsys, case):
    """Core keys refused `.inf`; scenario, cell and policy params accepted it. Through `statesim validate`:
    exit 2, the dotted key and the file named."""
    from statesim.cli import main

    section, value, key = NONFINITE_PARAMS[case]
    data = {"scenario": {"type": "linear_system"}, section: value}
    path = tmp_path / "nonfinite.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    assert ".nan" in path.read_text() or ".inf" in path.read_text()
    code = main(["validate", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert f"`{key}`" in err and str(path) in err and ("NaN" in err or "finite" in err)


def test_the_config_digest_tells_nan_from_inf(builtin_host):
    """JSON mode turned both into null, so a run with .nan and one with .inf hashed alike (and would resume
    each other's checkpoints). Values that validation lets through (forcing) and ones set in code differ."""
    from statesim.config import validate_data

    def digest(value, where):
        if where == "forcing":
            return validate_data({"scenario": {"type": "linear_system"},
                                  "forcing": [{"target": "input", "value": value}]}, builtin_host.registry).digest()
        config = validate_data({"scenario": {"type": "linear_system"},
                                "model": {"cell": {"type": "lstm", "hidden_size": 2}}}, builtin_host.registry)
        config.model.cell._params = config.model.cell.params.model_copy(update={"forget_bias": value})
        return config.digest()

    for where in ("forcing", "params"):
        values = [digest(v, where) for v in (float("nan"), float("inf"), float("-inf"), 1.0)]
        assert len(set(values)) == 4, (where, values)
