"""The tools that read a finished run (export, diagnose, embed) under hostile or damaged files."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from _reliability import TINY_LINEAR, write_scenario
from statesim.checkpoint import _content_digest, list_checkpoints


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished tiny linear_system run (two checkpoints kept)."""
    from statesim.plugin_manager import build_plugin_host
    from statesim.run import execute

    folder = tmp_path_factory.mktemp("finished")
    config = write_scenario(folder, TINY_LINEAR)
    return execute(config, out=folder / "run", host=build_plugin_host(autoload=False), echo=lambda m: None)


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    import shutil

    target = tmp_path / "run"
    shutil.copytree(run_dir, target)
    return target


@pytest.fixture
def cli(monkeypatch, capsys):
    monkeypatch.setenv("STATESIM_DISABLE_PLUGIN_AUTOLOAD", "1")
    from statesim.cli import main

    def run(*argv):
        code = main([str(a) for a in argv])
        captured = capsys.readouterr()
        return code, captured.err

    return run


HOSTILE_META = {"model_not_a_mapping": "x", "input_size_text": {"input_size": "abc"},
                "input_size_huge": {"input_size": 10**12}, "hidden_size_huge": {"hidden_size": 10**7}}


@pytest.mark.parametrize("case", sorted(HOSTILE_META))
def test_export_with_hostile_sidecar_meta_is_one_paragraph(tmp_path, cli, case):
    """meta.model edited (and the sidecar re-signed): a TypeError, a ValueError and an allocator error for
    input_size 10**12 became tracebacks; now exit 2 naming the sidecar, nothing allocated or written."""
    run_dir = _copy(finished_run_dir(tmp_path), tmp_path)
    sidecar = list_checkpoints(run_dir / "checkpoints" / "main")[-1]
    data = json.loads(sidecar.read_text())
    change = HOSTILE_META[case]
    if isinstance(change, str):
        data["meta"]["model"] = change
    elif "hidden_size" in change:
        data["meta"]["model"]["model"]["cell"]["hidden_size"] = change["hidden_size"]
    else:
        data["meta"]["model"].update(change)
    data["sidecar_sha256"] = _content_digest(data)
    sidecar.write_text(json.dumps(data))
    code, err = cli("export", run_dir, "--format", "torchscript", "--verify-steps", "0")
    assert code == 2 and "Traceback" not in err, err
    assert err.startswith("error:") and str(sidecar) in err
    assert not (run_dir / "export").exists()


def finished_run_dir(tmp_path: Path) -> Path:
    """A fresh finished run (function scope: these tests edit it)."""
    from statesim.plugin_manager import build_plugin_host
    from statesim.run import execute

    config = write_scenario(tmp_path / "src", TINY_LINEAR)
    return execute(config, out=tmp_path / "src" / "run", host=build_plugin_host(autoload=False), echo=lambda m: None)


def test_diagnose_skips_metrics_lines_that_are_json_but_not_records(tmp_path, finished_run, cli):
    """A list, a record with a string step, one with a text loss, an update record without its loss: valid
    JSON that is no training record (TypeError, KeyError before); diagnose skips them and reports the rest."""
    run_dir = _copy(finished_run, tmp_path)
    metrics = run_dir / "metrics.jsonl"
    good = metrics.read_text().splitlines()
    hostile = ['[1, 2, 3]', '"text"', '{"job": "main", "step": "7", "grad_norm": 1.0}',
               '{"job": "main", "step": 7, "loss": "high", "grad_norm": 1.0, "grad_norm_clipped": 1.0}',
               '{"job": "main", "step": 8, "grad_norm": 1.0}', '{"job": ["main"], "step": 9}']
    metrics.write_text("\n".join(good[:3] + hostile + good[3:]) + "\n")
    code, err = cli("diagnose", run_dir, "--batch", "2", "--steps", "6")
    assert code == 0 and "Traceback" not in err, err
    report = json.loads((run_dir / "diagnostics" / "report.json").read_text())
    assert report["training"]["main"]["logged_records"] == len(good)


def test_embed_load_and_export_warn_when_the_newest_checkpoint_is_corrupt(tmp_path, finished_run, cli):
    """They silently used an older checkpoint; now a warning names the corrupt file and the one used."""
    import warnings

    from statesim import embed, runfolder
    from statesim.plugin_manager import build_plugin_host

    run_dir = _copy(finished_run, tmp_path)
    sidecars = list_checkpoints(run_dir / "checkpoints" / "main")
    weights = sidecars[-1].with_suffix(".safetensors")
    weights.write_bytes(weights.read_bytes()[:-16])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = embed.load(run_dir, registry=build_plugin_host(autoload=False).registry)
    messages = [str(w.message) for w in caught if issubclass(w.category, runfolder.OlderCheckpointWarning)]
    assert len(messages) == 1 and str(weights) in messages[0] and "older checkpoint" in messages[0]
    assert model.source == sidecars[-2]
    code, err = cli("export", run_dir, "--format", "torchscript", "--verify-steps", "0")
    assert code == 0 and str(weights) in err and "older checkpoint" in err, err


@pytest.mark.parametrize("command", ["plugins", "validate"])
def test_a_plugin_that_hangs_at_import_is_named_then_given_up_on(tmp_path, command):
    """`statesim plugins`/`validate` hung forever, naming nothing, on a plugin that blocks at import. The
    watchdog names it after STATESIM_PLUGIN_IMPORT_WARN seconds and interrupts the import after
    STATESIM_PLUGIN_IMPORT_TIMEOUT; the command then finishes, reporting the plugin as broken."""
    import subprocess

    from _reliability import ROOT, cli_env, statesim_cmd
    from test_reliability_untrusted import _fake_distribution

    site = tmp_path / "site"
    _fake_distribution(site, "hang-dist", "hang", "import time\ntime.sleep(3600)\n")
    env = cli_env(PYTHONPATH=str(site), STATESIM_PLUGIN_IMPORT_WARN="0.5",
                  STATESIM_PLUGIN_IMPORT_TIMEOUT="3")
    env.pop("STATESIM_DISABLE_PLUGIN_AUTOLOAD")
    args = [command] + ([str(write_scenario(tmp_path, TINY_LINEAR))] if command == "validate" else [])
    done = subprocess.run(statesim_cmd(*args), env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "still importing plugin 'hang' (distribution hang-dist 1.2) after 0.5 s" in done.stderr
    assert "STATESIM_BLOCK_PLUGINS=hang" in done.stderr and "Traceback" not in done.stderr
    assert "failed to import: ImportTimedOut: its import did not finish within 3 s" in done.stdout + done.stderr


@pytest.mark.parametrize("name", ["results.json", "run.json", "config.yaml"])
def test_export_of_a_file_that_is_no_checkpoint_names_what_to_pass(finished_run, cli, name):
    """`statesim export RUN/results.json` called it a corrupt checkpoint and advised deleting it."""
    before = (finished_run / name).read_bytes()
    code, err = cli("export", finished_run / name, "--format", "torchscript", "--verify-steps", "0")
    assert code == 2 and "Traceback" not in err, err
    assert "is not a checkpoint" in err and f"Pass the run folder {finished_run}" in err
    assert "Delete" not in err and (finished_run / name).read_bytes() == before
