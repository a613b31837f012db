"""Untrusted files never run code or escape: pickle payloads, hostile YAML, paths out of the run folder, network.

(Config error wording in general: tests/test_config.py and tests/test_cli.py. Here: the hostile cases, through
the CLI, with exit code and the absence of a traceback checked.)
"""
from __future__ import annotations

import ast
import hashlib
import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from _reliability import ROOT, TINY_LINEAR, TINY_MOVING_AVERAGE, cli_env, deep_update, write_scenario
from statesim.checkpoint import list_checkpoints, load_checkpoint, load_weights_file
from statesim.errors import CheckpointError, StatesimError


class Payload:
    """Unpickling this runs ``touch SENTINEL``."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return os.system, (f"touch {self.sentinel}",)


# --------------------------------------------------------------------------- pickle payloads
def test_the_payload_is_live(tmp_path):
    """Control: an unrestricted unpickler does run it, so the tests below would notice if statesim did."""
    sentinel = tmp_path / "control"
    pickle.loads(pickle.dumps(Payload(sentinel)))
    assert sentinel.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("form", ["raw_pickle.pt", "torch_save.pth", "torch_save_mixed.pt", "pickle.safetensors"])
def test_weights_file_with_a_pickle_payload_is_refused_and_never_runs(tmp_path, form):
    sentinel = tmp_path / "PWNED"
    path = tmp_path / form
    if form == "raw_pickle.pt":
        path.write_bytes(pickle.dumps({"w": Payload(sentinel)}))
    elif form == "torch_save.pth":
        torch.save(Payload(sentinel), path)
    elif form == "torch_save_mixed.pt":
        torch.save({"w": torch.ones(3), "extra": Payload(sentinel)}, path)
    else:
        path.write_bytes(pickle.dumps(Payload(sentinel)))
    with pytest.raises(CheckpointError) as info:
        load_weights_file(path)
    assert str(path) in str(info.value)
    assert not sentinel.exists()


def test_plain_tensor_files_still_load(tmp_path):
    """weights_only=True accepts an ordinary state dict (and safetensors), so refusing payloads costs nothing."""
    from safetensors.torch import save_file

    weights = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.tensor([1, 2])}
    torch.save(weights, tmp_path / "w.pt")
    torch.save({"state_dict": weights}, tmp_path / "wrapped.pth")
    save_file(weights, str(tmp_path / "w.safetensors"))
    for name in ("w.pt", "wrapped.pth", "w.safetensors"):
        loaded = load_weights_file(tmp_path / name)
        assert set(loaded) == {"a", "b"} and all(torch.equal(loaded[k], weights[k]) for k in weights)


def test_checkpoint_whose_weights_are_a_pickle_is_refused_and_resume_falls_back(tmp_path):
    """The newest checkpoint's weights replaced by a payload, its sidecar's checksums forged to match."""
    from statesim.plugin_manager import build_plugin_host
    from statesim.run import execute

    config = write_scenario(tmp_path, TINY_LINEAR)
    run_dir = execute(config, out=tmp_path / "run", host=build_plugin_host(autoload=False), echo=lambda m: None)
    sidecars = list_checkpoints(run_dir / "checkpoints" / "main")
    sentinel = tmp_path / "PWNED"
    blob = pickle.dumps(Payload(sentinel))
    sidecars[-1].with_suffix(".safetensors").write_bytes(blob)
    meta = json.loads(sidecars[-1].read_text())
    meta["sha256"] = hashlib.sha256(blob).hexdigest()
    from statesim.checkpoint import _content_digest

    meta["sidecar_sha256"] = _content_digest(meta)  # the sidecar's own checksum forged too
    sidecars[-1].write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_checkpoint(sidecars[-1])
    messages: list[str] = []
    execute(config, resume=run_dir, host=build_plugin_host(autoload=False), echo=messages.append)
    assert any(str(sidecars[-1].with_suffix(".safetensors")) in m and "Falling back" in m for m in messages)
    assert f"resumed job 'main' at step {load_checkpoint(sidecars[-2])[1].step}" in messages
    assert not sentinel.exists()


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def test_no_code_path_unpickles_or_loads_yaml_unsafely():
    """Every torch.load passes weights_only=True; no pickle/marshal/shelve loading, unsafe YAML or
    allow_pickle anywhere in the package."""
    offenders = []
    for path in sorted((ROOT / "statesim").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node, name in _calls(tree):
            where = f"{path.relative_to(ROOT)}:{node.lineno} {name}"
            keywords = {k.arg: k.value for k in node.keywords}
            if name.endswith("torch.load") or name == "load" and "torch" in ast.unparse(node):
                flag = keywords.get("weights_only")
                if not (isinstance(flag, ast.Constant) and flag.value is True):
                    offenders.append(where)
            if name in {"pickle.load", "pickle.loads", "pickle.Unpickler", "marshal.loads", "shelve.open",
                        "yaml.load", "yaml.unsafe_load", "yaml.full_load", "yaml.load_all", "dill.load",
                        "dill.loads", "cloudpickle.loads"}:
                offenders.append(where)
            allow = keywords.get("allow_pickle")
            if allow is not None and not (isinstance(allow, ast.Constant) and allow.value is False):
                offenders.append(where)
    assert offenders == []


# --------------------------------------------------------------------------- hostile YAML through the CLI
HOSTILE = {
    "python_tag": ("scenario: !!python/object/apply:os.system ['touch {sentinel}']\n", 1, "not allowed"),
    "python_name": ("name: x\nscenario:\n  type: !!python/name:os.system\n", 3, "not allowed"),
    "billion_laughs": ("a: &a [x, x, x, x, x, x, x, x, x, x]\n"
                       + "".join(f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
                                 f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
                                 f"*{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(9))
                       + "scenario: *j\n", None, "refusing"),
    "duplicate_key": ("scenario: {type: linear_system}\nseed: 1\nseed: 2\n", 3, "duplicate key 'seed'"),
    "unhashable_key": ("scenario: {type: linear_system}\n? [1, 2]\n: 3\n", 2, "plain value"),
    "deep_nesting": ("a: " + "[" * 5000 + "]" * 5000 + "\n", None, ""),
    "tab_indent": ("scenario:\n\ttype: x\n", 2, ""),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_yaml_is_a_clear_error_naming_file_and_line(tmp_path, capsys, case):
    from statesim.cli import main

    text, line, phrase = HOSTILE[case]
    sentinel = tmp_path / "PWNED"
    path = tmp_path / f"{case}.yaml"
    path.write_text(text.replace("{sentinel}", str(sentinel)), encoding="utf-8")
    code = main(["validate", str(path)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error:") and str(path) in err and "Traceback" not in err
    if line is not None:
        assert f"line {line}" in err
    assert phrase in err
    assert not sentinel.exists()


@pytest.mark.parametrize("case", ["non_utf8", "directory", "missing", "unreadable"])
def test_files_that_cannot_be_read_give_a_clear_error(tmp_path, capsys, case):
    from statesim.cli import main

    path = tmp_path / "scenario.yaml"
    if case == "non_utf8":
        path.write_bytes(b"name: ok\nscenario: {type: linear_system}\nnote: caf\xe9\n")
    elif case == "directory":
        path.mkdir()
    elif case == "unreadable":
        path.write_text("scenario: {type: linear_system}\n")
        path.chmod(0)
        if os.access(path, os.R_OK):  # root reads anything: make it unreadable another way
            path.unlink()
            path.symlink_to(path)  # a symlink loop: reading it fails with ELOOP
    code = main(["run", str(path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and str(path) in err and "Traceback" not in err
    if case == "non_utf8":
        assert "line 3" in err and "UTF-8" in err
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- paths
@pytest.mark.parametrize("key,value", [("output.dir", "/tmp/elsewhere"), ("output.dir", "../outside"),
                                       ("output.dir", "runs/../../outside"), ("output.dir", "~/runs"),
                                       ("name", "../../escape"), ("name", "/abs"), ("name", "a/b"), ("name", "..")])
def test_scenario_paths_cannot_leave_the_working_directory(tmp_path, capsys, key, value):
    from statesim.cli import main

    section, _, field = key.rpartition(".")
    data = deep_update(TINY_LINEAR, {section: {field: value}} if section else {field: value})
    config = write_scenario(tmp_path, data)
    code = main(["run", str(config)])
    err = capsys.readouterr().err
    assert code == 2 and str(config) in err and f"`{key}`" in err and "Traceback" not in err
    assert "--out" in err or "plain folder name" in err


def test_default_run_folder_is_under_the_working_directory_and_out_may_go_anywhere(tmp_path, monkeypatch):
    from statesim.plugin_manager import build_plugin_host
    from statesim.run import execute

    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere" / "run"
    work.mkdir()
    monkeypatch.chdir(work)
    config = write_scenario(tmp_path, TINY_LINEAR)
    run_dir = execute(config, host=build_plugin_host(autoload=False), echo=lambda m: None)
    assert run_dir.resolve().parent == (work / "runs").resolve() and run_dir.name.startswith("tiny_linear-")
    assert execute(config, out=elsewhere, host=build_plugin_host(autoload=False), echo=lambda m: None) == elsewhere
    assert (elsewhere / "results.json").exists()


def test_run_context_paths_stay_inside_the_run_folder(tmp_path, builtin_host):
    from statesim.config import validate_data
    from statesim.scenario import RunContext

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (tmp_path / "secret").mkdir()
    (run_dir / "link").symlink_to(tmp_path / "secret")
    config = validate_data(TINY_LINEAR, builtin_host.registry)
    ctx = RunContext(config, builtin_host, run_dir, torch.device("cpu"))
    assert ctx.path("plots/a.png") == (run_dir / "plots" / "a.png").resolve()
    for escape in ("../x", "/etc/passwd", "a/../../x", "link/file"):
        with pytest.raises(StatesimError, match="outside the run folder"):
            ctx.path(escape)


# --------------------------------------------------------------------------- network
NO_NETWORK = textwrap.dedent("""
    import socket, sys
    seen = []
    def hook(event, args):
        if event == "socket.__new__" and args[1] in (socket.AF_INET, socket.AF_INET6):
            seen.append(event)
        elif event in ("socket.connect", "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr",
                       "socket.sendto", "socket.bind", "urllib.Request", "http.client.connect"):
            seen.append(event)
        else:
            return
        raise RuntimeError(f"network access: {event} {args!r}")
    sys.addaudithook(hook)
    from statesim.cli import main
    codes = []
    for argv in {commands}:
        try:
            codes.append(main(argv))
        except SystemExit as exc:  # --help
            codes.append(exc.code)
    print("CODES", codes)
    print("NETWORK", seen)
    try:  # control: the hook does catch a connection attempt
        socket.create_connection(("127.0.0.1", 9), timeout=1)
    except RuntimeError:
        print("CONTROL blocked")
""")


def test_no_command_touches_the_network(tmp_path):
    """Every subcommand's help, validate, plugins, a hostile file and a whole tiny run (plots included), in a
    fresh process under an audit hook that refuses and records any internet socket, DNS lookup or HTTP request."""
    from statesim.cli import build_parser

    data = deep_update(TINY_MOVING_AVERAGE, {"training": {"steps": 3}, "output": {"plots": True}})
    config = write_scenario(tmp_path, data)
    subcommands = [a for a in build_parser()._subparsers._group_actions[0].choices]
    evil = tmp_path / "evil.yaml"
    evil.write_text(HOSTILE["python_tag"][0].replace("{sentinel}", str(tmp_path / "PWNED")))
    commands = [[name, "--help"] for name in subcommands] + [
        ["validate", str(config)], ["plugins", "-v"], ["run", str(evil)],
        ["run", str(config), "--out", str(tmp_path / "run")]]
    script = tmp_path / "no_network.py"
    script.write_text(NO_NETWORK.replace("{commands}", json.dumps(commands)))
    done = subprocess.run([sys.executable, str(script)], env=cli_env(), cwd=tmp_path, capture_output=True,
                          text=True, timeout=240)
    assert "NETWORK []" in done.stdout and "CONTROL blocked" in done.stdout, done.stdout + done.stderr[-3000:]
    codes = json.loads(done.stdout.split("CODES", 1)[1].splitlines()[0].strip())
    assert codes == [0] * (len(commands) - 2) + [2, 0], done.stderr[-3000:]
    assert "Traceback" not in done.stderr and f"error: Problem in the scenario:\n  - {evil}, line 1" in done.stderr
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "runs").exists()
    assert (tmp_path / "run" / "results.json").exists() and list((tmp_path / "run" / "plots").glob("*.png"))


def test_the_tensorboard_and_mlflow_loggers_touch_no_network(tmp_path):
    """A run with both loggers (MLflow's default local store) under the same audit hook records nothing.

    urllib3 (imported by MLflow's client through requests) probes IPv6 support at import by opening an AF_INET6
    socket bound to ::1, the loopback: no traffic, but the hook would count it, so it is imported first."""
    data = deep_update(TINY_LINEAR, {"training": {"steps": 3}})
    config = write_scenario(tmp_path, data)
    commands = [["run", str(config), "--out", str(tmp_path / "run"), "--log", "tensorboard", "--log", "mlflow"]]
    script = tmp_path / "no_network.py"
    script.write_text("import urllib3  # noqa: F401\n" + NO_NETWORK.replace("{commands}", json.dumps(commands)))
    # The logger's own defaults, outside CI: MLflow's telemetry stays off by itself in CI and under pytest.
    env = {k: v for k, v in cli_env().items() if not k.startswith("MLFLOW_") and k not in ("CI", "PYTEST_CURRENT_TEST")}
    done = subprocess.run([sys.executable, str(script)], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=240)
    assert "NETWORK []" in done.stdout and "CONTROL blocked" in done.stdout, done.stdout + done.stderr[-3000:]
    assert "CODES [0]" in done.stdout and "warning: logger" not in done.stderr, done.stderr[-3000:]
    assert list((tmp_path / "run" / "tensorboard" / "main").glob("events.out.tfevents.*"))
    assert (tmp_path / "run" / "mlflow_run.json").is_file() and (tmp_path / "run" / "mlruns").is_dir()


# --------------------------------------------------------------------------- plugins during a run
# (Discovery, strict mode, block lists and every kind of broken hook: tests/test_plugins.py. Here: a real run
# with a broken and a clashing distribution installed still trains, and run.json records who was loaded.)
def _fake_distribution(root: Path, dist: str, plugin: str, source: str) -> None:
    info = root / f"{dist.replace('-', '_')}-1.2.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2\n")
    (info / "entry_points.txt").write_text(f"[statesim]\n{plugin} = {plugin}_mod\n")
    (root / f"{plugin}_mod.py").write_text(textwrap.dedent(source))


def test_a_run_survives_broken_and_clashing_plugins_and_records_them(tmp_path, monkeypatch, capsys):
    from statesim.cli import main

    site = tmp_path / "site"
    _fake_distribution(site, "broken-dist", "broken", "raise RuntimeError('boom at import')\n")
    _fake_distribution(site, "clash-dist", "clash", """
        import statesim
        from statesim.builtin.cells import VanillaCell, VanillaParams

        @statesim.hookimpl
        def statesim_cells():
            return [statesim.Registration("vanilla", VanillaCell, VanillaParams, "a second 'vanilla'")]
    """)
    monkeypatch.syspath_prepend(str(site))
    for var in ("STATESIM_DISABLE_PLUGIN_AUTOLOAD", "STATESIM_BLOCK_PLUGINS"):
        monkeypatch.delenv(var, raising=False)
    config = write_scenario(tmp_path, TINY_LINEAR)
    try:
        assert main(["run", str(config), "--out", str(tmp_path / "strict"), "--strict-plugins"]) == 2
        err = capsys.readouterr().err
        assert "broken-dist" in err and "Traceback" not in err and not (tmp_path / "strict").exists()
        assert main(["run", str(config), "--out", str(tmp_path / "run")]) == 0
        err = capsys.readouterr().err
    finally:
        for name in ("broken_mod", "clash_mod"):
            sys.modules.pop(name, None)
    assert "warning: plugin 'broken' (distribution broken-dist 1.2) failed to import" in err
    assert "'vanilla' is registered twice" in err and "clash-dist" in err
    env = json.loads((tmp_path / "run" / "run.json").read_text())
    names = {p["name"] for p in env["plugins"]}
    assert "statesim.builtin.cells" in names and not names & {"broken", "clash"}
    assert any("broken-dist" in p for p in env["plugin_problems"])
    assert any("clash-dist" in p for p in env["plugin_problems"])
    assert json.loads((tmp_path / "run" / "results.json").read_text())["scenario"] == "linear_system"
