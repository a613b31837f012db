"""A run that fails before it saved anything leaves nothing that blocks a rerun (issue 19 item 4): the same
--out gives the same error again, not "already exists ... --resume"; a folder with anything saved is kept."""
from __future__ import annotations

import pytest

from statesim.errors import StatesimError
from statesim.run import _clear_untrained, execute

BAD = ["model.initial_state.type=encoded", "output.progress=false"]  # linear_system has no encoder: fails at once


def test_a_run_failing_its_first_forward_removes_its_new_folder_and_can_be_rerun(tmp_path):
    out = tmp_path / "run"
    notes = []
    for _ in range(2):  # the second attempt meets the same error, not the folder the first one left
        with pytest.raises(StatesimError, match="initial_state 'encoded' needs an encoding"):
            execute("scenarios/linear_system.yaml", BAD, out=out, echo=notes.append)
        assert not out.exists()
    assert notes == [f"note: removed {out}: the run failed before it saved anything, so the same --out can be "
                     f"used again"] * 2


def test_an_existing_empty_out_folder_is_emptied_but_kept(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    with pytest.raises(StatesimError):
        execute("scenarios/linear_system.yaml", BAD, out=out, echo=lambda m: None)
    assert out.is_dir() and list(out.iterdir()) == []


def _bookkeeping(folder, metrics=""):
    folder.mkdir()
    (folder / "config.yaml").write_text("name: x\n")
    (folder / "run.json").write_text("{}")
    (folder / "metrics.jsonl").write_text(metrics)
    (folder / "checkpoints" / "main").mkdir(parents=True)


def test_only_bookkeeping_and_empty_folders_are_cleared(tmp_path):
    _bookkeeping(tmp_path / "a")
    assert _clear_untrained(tmp_path / "a", created=True) and not (tmp_path / "a").exists()


@pytest.mark.parametrize("saved", ["checkpoint", "metrics", "plot", "link"])
def test_a_folder_holding_anything_saved_is_kept_untouched(tmp_path, saved):
    run = tmp_path / "b"
    _bookkeeping(run, metrics='{"step": 1}\n' if saved == "metrics" else "")
    if saved == "checkpoint":
        (run / "checkpoints" / "main" / "step_1.json").write_text("{}")
    elif saved == "plot":
        (run / "plots").mkdir()
        (run / "plots" / "loss.png").write_bytes(b"png")
    elif saved == "link":
        (run / "checkpoints" / "main" / "elsewhere").symlink_to(tmp_path)
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    assert not _clear_untrained(run, created=True)
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before
