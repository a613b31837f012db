"""Run folders under faults: a second process, a full or read-only disk, a kill at the first write or while
pruning, a refused resume, a user's own hidden files, file modes."""
from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

from _reliability import (ROOT, TINY_LINEAR, cli_env, deep_update, metrics_lines, run_cli, statesim_cmd,
                          write_scenario)
from statesim.errors import StatesimError
from statesim.run import execute


def _run(config: Path, out: Path | None = None, resume: Path | None = None, echo=lambda m: None) -> Path:
    from statesim.plugin_manager import build_plugin_host

    return execute(config, out=out, resume=resume, host=build_plugin_host(autoload=False), echo=echo)


# --------------------------------------------------------------------------- the run-folder lock
@pytest.mark.slow
def test_two_runs_into_one_folder_and_a_resume_of_a_live_run_are_refused_naming_the_pid(tmp_path):
    """Two real `statesim run --out X` started together: one runs, the other exits 2 naming the folder; a
    --resume of the live run exits 2 naming its pid; once it has finished the resume is accepted."""
    config = write_scenario(tmp_path, deep_update(TINY_LINEAR, {"training": {"steps": 400, "checkpoint_every": 50}}))
    run_dir = tmp_path / "run"
    first, second = (subprocess.Popen(statesim_cmd("run", config, "--out", run_dir), env=cli_env(), cwd=ROOT,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2))
    outcomes = []
    for process in (first, second):
        _, err = process.communicate(timeout=300)
        outcomes.append((process.returncode, err, process.pid))
    codes = sorted(code for code, _, _ in outcomes)
    assert codes == [0, 2], outcomes
    loser = next(err for code, err, _ in outcomes if code == 2)
    assert "Traceback" not in loser and str(run_dir) in loser
    assert "in use by another statesim process" in loser or "not empty" in loser or "filled by another" in loser
    assert len([json.loads(line) for line in metrics_lines(run_dir)]) == 400  # one run's records, once each

    live_dir = tmp_path / "live"
    live = subprocess.Popen(statesim_cmd("run", config, "--out", live_dir, "--set", "training.steps=100000"),
                            env=cli_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while len(metrics_lines(live_dir)) < 3:
            assert live.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        refused = run_cli("run", config, "--resume", live_dir, "--set", "training.steps=100000")
        assert refused.returncode == 2, refused.stderr
        assert f"pid {live.pid}" in refused.stderr and "Traceback" not in refused.stderr
    finally:
        live.kill()
        live.wait()
    from statesim.runlock import RunLock

    RunLock.acquire(live_dir).release()  # a SIGKILLed holder leaves no stale lock


def test_a_held_lock_refuses_a_new_run_naming_the_holder(tmp_path):
    """Deterministic half of the race above: another process holds the lock of an empty --out."""
    config = write_scenario(tmp_path, TINY_LINEAR)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = subprocess.Popen(["python", "-c", "import sys, time; from statesim.runlock import RunLock; "
                               "RunLock.acquire(sys.argv[1]); print('held', flush=True); time.sleep(60)", run_dir],
                              stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(StatesimError, match=f"in use by another statesim process \\(pid {holder.pid}"):
            _run(config, out=run_dir)
        assert sorted(p.name for p in run_dir.iterdir()) == [".statesim.lock"]  # nothing written
    finally:
        holder.kill()
        holder.wait()
    _run(config, out=run_dir)  # the holder is gone: the lock is free
    assert (run_dir / "results.json").exists()


# --------------------------------------------------------------------------- OSError: one paragraph
@pytest.mark.parametrize("fault", ["read_only", "disk_full"])
def test_unwritable_or_full_disk_is_one_paragraph(tmp_path, monkeypatch, capsys, fault):
    """EROFS when creating a file (a read-only existing --out; root ignores chmod, so injected) and ENOSPC
    on fsync (a full disk): exit 2, one paragraph naming the file and --resume, no traceback."""
    from statesim import fileio
    from statesim.cli import main

    monkeypatch.setenv("STATESIM_DISABLE_PLUGIN_AUTOLOAD", "1")
    config = write_scenario(tmp_path, TINY_LINEAR)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    if fault == "read_only":
        def mkstemp(prefix="", suffix="", dir=None):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(Path(dir) / prefix))
        monkeypatch.setattr(fileio.tempfile, "mkstemp", mkstemp)
    else:
        real, calls = os.fsync, [0]

        def fsync(fd):
            calls[0] += 1
            if calls[0] > 6:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            real(fd)
        monkeypatch.setattr(fileio.os, "fsync", fsync)
    code = main(["run", str(config), "--out", str(run_dir), "--set", "output.progress=false"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert err.startswith("error: statesim could not read or write") and "--resume" in err
    assert os.strerror(errno.EROFS if fault == "read_only" else errno.ENOSPC) in err
    if fault == "read_only":
        assert str(run_dir) in err


# --------------------------------------------------------------------------- Low items
def test_a_kill_at_the_first_write_leaves_a_folder_out_accepts(tmp_path):
    """Only statesim's lock and a temporary file are left: --out accepts the folder (and cleans it)."""
    config = write_scenario(tmp_path, TINY_LINEAR)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / ".config.yaml.statesim-abc123.tmp").write_text("partial")
    (run_dir / ".statesim.lock").write_text("12345\n")
    with pytest.raises(StatesimError, match=f"--out {run_dir}"):
        _run(config, resume=run_dir)  # nothing to resume, and the message says what to do
    _run(config, out=run_dir)
    assert (run_dir / "results.json").exists() and not list(run_dir.glob("*.tmp"))


def test_orphan_weights_after_a_kill_while_pruning_are_removed(tmp_path):
    """A kill between deleting a sidecar and its weights leaves step_N.safetensors alone: the next save drops it."""
    config = write_scenario(tmp_path, TINY_LINEAR)
    straight = _run(config, out=tmp_path / "straight")
    run_dir = tmp_path / "run"
    _run(config, out=run_dir)
    folder = run_dir / "checkpoints" / "main"
    orphan = folder / "step_00000003.safetensors"
    orphan.write_bytes(b"left by a kill")
    (run_dir / "results.json").unlink()
    newest = sorted(folder.glob("step_*.json"))[-1]
    newest.unlink()  # resume from the previous checkpoint, so training saves again
    _run(config, resume=run_dir)
    assert not orphan.exists()
    assert sorted(p.stem for p in folder.glob("*.safetensors")) == sorted(p.stem for p in folder.glob("*.json"))
    assert (run_dir / "results.json").read_bytes() == (straight / "results.json").read_bytes()


def test_a_refused_resume_leaves_run_json_and_user_files_alone(tmp_path):
    """A resume refused by the trainer (checkpoint of another config) must not have rewritten run.json; a
    successful one deletes only statesim's temporaries, never a user's hidden *.tmp files."""
    config = write_scenario(tmp_path, TINY_LINEAR)
    run_dir = _run(config, out=tmp_path / "run")
    run_json = (run_dir / "run.json").read_bytes()
    sidecar = sorted((run_dir / "checkpoints" / "main").glob("step_*.json"))[-1]
    from statesim.checkpoint import _content_digest

    data = json.loads(sidecar.read_text())
    data["config_digest"] = "0" * 16
    data["sidecar_sha256"] = _content_digest(data)
    sidecar.write_text(json.dumps(data))
    with pytest.raises(StatesimError, match="different config"):
        _run(config, resume=run_dir)
    assert (run_dir / "run.json").read_bytes() == run_json

    fresh = _run(config, out=tmp_path / "fresh")
    (fresh / "results.json").unlink()
    mine = [fresh / ".notes.tmp", fresh / "checkpoints" / ".draft.yaml.tmp"]
    for path in mine:
        path.write_text("a user's file")
    ours = fresh / ".results.json.statesim-x1y2.tmp"
    ours.write_text("partial")
    _run(config, resume=fresh)
    assert all(path.read_text() == "a user's file" for path in mine)
    assert not ours.exists()


def test_published_files_follow_the_umask(tmp_path):
    """Atomic writes gave 0600 files (mkstemp's mode) whatever the umask; now 0666 & ~umask like open()."""
    from statesim.fileio import atomic_write_text

    old = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "a.json", "{}")
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        os.umask(0o077)
        assert stat.S_IMODE(atomic_write_text(tmp_path / "b.json", "{}").stat().st_mode) == 0o600
    finally:
        os.umask(old)
