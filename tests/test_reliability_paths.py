"""No scenario key, checkpoint metadata or hostile run folder makes statesim write or delete outside the run.

Issue 20 (1): keys of ``moving_average``'s ``models:`` and ``initial_state_effect``'s ``policies:`` became job
names and then paths, so ``"../../../X"`` wrote outside ``--out`` and ``"/tmp/victim"`` with
``keep_checkpoints: 1`` deleted the checkpoints already in that folder. Each case below is the attack itself,
with a bystander folder whose files must survive untouched.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from _reliability import TINY_LINEAR, TINY_MOVING_AVERAGE, deep_update, write_scenario

HOSTILE_NAMES = ["../../../escaped", "/ABSOLUTE", "..", ".", "a/b", "a\\b", "line\nbreak", "tab\tname",
                 "right\u202eto-left", "", " lead", "-option", ".hidden", "nul\x00byte", "x" * 101]


def _bystander(root: Path) -> dict[Path, bytes]:
    """A folder outside the run holding files named like a run's own (what the attack deleted)."""
    victim = root / "victim"
    victim.mkdir(parents=True)
    files = {victim / "step_00000001.json": b'{"mine": 1}', victim / "step_00000001.safetensors": b"weights",
             victim / "notes.txt": b"keep me"}
    for path, data in files.items():
        path.write_bytes(data)
    return files


def _assert_untouched(files: dict[Path, bytes]) -> None:
    folder = next(iter(files)).parent
    assert sorted(folder.iterdir()) == sorted(files), "a file appeared in or vanished from the bystander folder"
    for path, data in files.items():
        assert path.read_bytes() == data


def _moving_average_with_model_key(key: str) -> dict:
    return deep_update(TINY_MOVING_AVERAGE, {
        "scenario": {"models": {key: {"cell": {"type": "window", "window": 3, "output_size": 1}, "head": "none"}}},
        "training": {"steps": 4, "checkpoint_every": 1, "keep_checkpoints": 1}})


@pytest.mark.parametrize("key", HOSTILE_NAMES)
def test_model_keys_that_are_not_plain_names_are_refused_by_validate_and_run(tmp_path, capsys, monkeypatch, key):
    from statesim.cli import main

    monkeypatch.chdir(tmp_path)
    files = _bystander(tmp_path)
    config = write_scenario(tmp_path / "in", _moving_average_with_model_key(key))
    for command in (["validate", str(config)], ["run", str(config), "--out", str(tmp_path / "out" / "run")]):
        code = main(command)
        err = capsys.readouterr().err
        assert code == 2, err
        assert str(config) in err and "scenario.models" in err and "plain folder name" in err
        assert "Traceback" not in err and "\n\n" not in err.strip()  # one paragraph per problem
    assert not (tmp_path / "out").exists()
    _assert_untouched(files)


def test_the_absolute_key_attack_leaves_the_victims_checkpoints_alone(tmp_path, capsys, monkeypatch):
    """The exact attack of the report: key '<victim folder>' with keep_checkpoints 1."""
    from statesim.cli import main

    monkeypatch.chdir(tmp_path)
    files = _bystander(tmp_path)
    victim = next(iter(files)).parent
    config = write_scenario(tmp_path, _moving_average_with_model_key(str(victim)))
    assert main(["run", str(config), "--out", str(tmp_path / "run")]) == 2
    capsys.readouterr()
    _assert_untouched(files)


@pytest.mark.parametrize("key", ["../../../escaped", "/ABSOLUTE", "bidi\u202eevil", "a b"])
def test_policy_keys_of_initial_state_effect_are_checked(tmp_path, key):
    from statesim.config import load_config
    from statesim.errors import ConfigError
    from statesim.plugin_manager import build_plugin_host

    data = {"scenario": {"type": "initial_state_effect", "policies": {key: {"type": "zeros"}}},
            "model": {"cell": {"type": "gru", "hidden_size": 4}}}
    with pytest.raises(ConfigError) as caught:
        load_config(write_scenario(tmp_path, data), build_plugin_host(autoload=False).registry)
    assert "scenario.policies" in str(caught.value) and "plain folder name" in str(caught.value)


@pytest.mark.parametrize("name", ["run\nname", "tab\tname", "evil\u202etxt.yaml", "../up", "."])
def test_run_names_with_controls_separators_or_bidi_overrides_are_refused(tmp_path, name):
    from statesim.config import load_config
    from statesim.errors import ConfigError
    from statesim.plugin_manager import build_plugin_host

    with pytest.raises(ConfigError, match="plain folder name"):
        load_config(write_scenario(tmp_path, deep_update(TINY_LINEAR, {"name": name})),
                    build_plugin_host(autoload=False).registry)


def test_a_default_run_name_from_an_odd_file_name_is_made_plain(tmp_path):
    from statesim.config import load_config
    from statesim.plugin_manager import build_plugin_host
    from statesim.safepath import name_problem

    data = {k: v for k, v in TINY_LINEAR.items() if k != "name"}
    config = load_config(write_scenario(tmp_path, data, name="my run\u202e\t.yaml"),
                         build_plugin_host(autoload=False).registry)
    assert config.name == "my_run__" and name_problem(config.name) is None


def test_good_names_pass_the_rule():
    from statesim.safepath import name_problem

    for name in ["main", "window-on-ema", "lstm_64", "T=50,clip=1.0", "v1.2", "größe", "a+b@c"]:
        assert name_problem(name) is None, name
    for name in HOSTILE_NAMES:
        assert name_problem(name) is not None, repr(name)


# --------------------------------------------------------------------------- defence in depth
def test_guard_refuses_writes_and_deletes_outside_the_root_or_through_a_link(tmp_path):
    from statesim.fileio import atomic_write_bytes
    from statesim.safepath import UnsafePathError, confined, remove

    root, outside = tmp_path / "run", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "precious").write_bytes(b"1")
    (root / "diagnostics").symlink_to(outside, target_is_directory=True)
    with confined(root):
        atomic_write_bytes(root / "plots" / "ok.png", b"fine")  # a new folder inside is fine
        for path in (outside / "new", root / ".." / "outside" / "new", root / "diagnostics" / "report.json"):
            with pytest.raises(UnsafePathError):
                atomic_write_bytes(path, b"no")
        for path in (outside / "precious", root / "diagnostics" / "precious"):
            with pytest.raises(UnsafePathError):
                remove(path)
    assert sorted(p.name for p in outside.iterdir()) == ["precious"] and (outside / "precious").read_bytes() == b"1"
    assert (root / "plots" / "ok.png").read_bytes() == b"fine"
    atomic_write_bytes(outside / "free", b"outside a run nothing is confined")  # the guard is scoped


def _finished_tiny_run(tmp_path: Path) -> tuple[Path, Path]:
    from statesim.plugin_manager import build_plugin_host
    from statesim.run import execute

    config = write_scenario(tmp_path / "in", TINY_LINEAR)
    run_dir = execute(config, out=tmp_path / "run", host=build_plugin_host(autoload=False), echo=lambda m: None)
    return config, run_dir


def test_resume_refuses_a_run_folder_whose_checkpoints_link_outside(tmp_path):
    """A hostile run folder: checkpoints/main is a link to someone's folder that --resume would prune."""
    from statesim.plugin_manager import build_plugin_host
    from statesim.run import execute
    from statesim.safepath import UnsafePathError

    config, run_dir = _finished_tiny_run(tmp_path)
    files = _bystander(tmp_path)
    victim = next(iter(files)).parent
    checkpoints = run_dir / "checkpoints" / "main"
    for path in checkpoints.iterdir():
        os.replace(path, victim / path.name)  # the link's target holds real checkpoints of this run
    files.update({victim / p.name: p.read_bytes() for p in [victim / n for n in os.listdir(victim)]})
    checkpoints.rmdir()
    checkpoints.symlink_to(victim, target_is_directory=True)
    (run_dir / "results.json").unlink()
    with pytest.raises(UnsafePathError, match="symbolic link"):
        execute(config, resume=run_dir, host=build_plugin_host(autoload=False), echo=lambda m: None)
    _assert_untouched(files)


def test_diagnose_refuses_a_diagnostics_link_pointing_outside(tmp_path):
    from statesim.cli import main

    _, run_dir = _finished_tiny_run(tmp_path)
    files = _bystander(tmp_path)
    (run_dir / "diagnostics").symlink_to(next(iter(files)).parent, target_is_directory=True)
    assert main(["diagnose", str(run_dir)]) == 2
    _assert_untouched(files)


def test_a_plugin_scenario_passing_a_path_as_job_name_is_refused(tmp_path, builtin_host):
    import torch

    from statesim.config import load_config
    from statesim.data import DataSplits, SequenceData
    from statesim.errors import StatesimError
    from statesim.scenario import RunContext

    config = load_config(write_scenario(tmp_path, TINY_LINEAR), builtin_host.registry)
    ctx = RunContext(config, builtin_host, tmp_path / "run", torch.device("cpu"))
    model = ctx.build_model(None, 1, 1)
    data = DataSplits(SequenceData(torch.zeros(3, 2, 1), torch.zeros(3, 2, 1)))
    with pytest.raises(StatesimError, match="job name"):
        ctx.train(model, data, job="../../elsewhere")
    assert not (tmp_path / "elsewhere").exists()


@pytest.mark.parametrize("hostile", ["../../ESCAPED", "/tmp/ESCAPED", "a\nb"])
def test_export_default_path_ignores_a_hostile_sidecar_job(tmp_path, capsys, hostile):
    from statesim.checkpoint import _content_digest
    from statesim.cli import main

    _, run_dir = _finished_tiny_run(tmp_path)
    for sidecar in (run_dir / "checkpoints" / "main").glob("step_*.json"):
        data = json.loads(sidecar.read_text())
        data["meta"]["job"] = hostile
        data["sidecar_sha256"] = _content_digest(data)  # re-signed: the sidecar checksum is no secret
        sidecar.write_text(json.dumps(data))
    before = set(Path("/tmp").iterdir())
    assert main(["export", str(run_dir), "--format", "torchscript", "--verify-steps", "0"]) == 0, \
        capsys.readouterr().err
    assert (run_dir / "export" / "main.step.pt").is_file()
    written = {p for p in tmp_path.rglob("*.step.pt")}
    assert written == {run_dir / "export" / "main.step.pt"}
    assert not any("ESCAPED" in p.name for p in set(Path("/tmp").iterdir()) - before)
