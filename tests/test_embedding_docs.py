"""docs/embedding.md stays true: its host-loop example runs against a trained run, its sidecar example matches."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "embedding.md"


def _block(after: str, lang: str) -> str:
    text = DOC.read_text(encoding="utf-8")
    start = text.index(after)
    match = re.compile(rf"```{lang}\n(.*?)```", re.S).search(text, start)
    return match.group(1)


@pytest.fixture(scope="module")
def ls_run(tmp_path_factory) -> Path:
    """A small trained run of the linear_system scenario at ./runs/ls, as the doc assumes."""
    from statesim.run import execute

    root = tmp_path_factory.mktemp("doc")
    execute("scenarios/linear_system.yaml",
            ["training.steps=3", "scenario.steps=20", "scenario.train_sequences=8", "scenario.test_sequences=4",
             "scenario.impulse_steps=5", "output.plots=false"], out=root / "runs" / "ls", echo=lambda m: None)
    return root


def test_host_loop_example_runs(ls_run, monkeypatch, capsys):
    """The complete host-loop example executes as written; its lesion changes outputs and restore undoes it."""
    monkeypatch.chdir(ls_run)
    namespace: dict = {}
    exec(compile(_block("<!-- host-loop example", "python"), str(DOC), "exec"), namespace)
    assert "steps taken:" in capsys.readouterr().out
    what_if, normal = np.stack(namespace["what_if"]), np.stack(namespace["normal"])
    assert what_if.shape == normal.shape == (20, 4, 2)
    assert not np.allclose(what_if, normal)


def test_sidecar_example_has_the_real_keys(ls_run):
    """The sidecar shown in the doc has exactly the keys a real export writes."""
    from statesim.runfolder import load_model
    from statesim.export import export_model

    model, info = load_model(ls_run / "runs" / "ls")
    real = json.loads(export_model(model, ls_run / "step.pt", "torchscript", source=info).read_text())
    shown = json.loads(_block("The sidecar `<file>.json` says", "json"))
    assert set(shown) <= set(real) and set(real) - set(shown) <= {"torch"}
    assert [i["name"] for i in shown["inputs"]] == [i["name"] for i in real["inputs"]]
    assert [o["name"] for o in shown["outputs"]] == [o["name"] for o in real["outputs"]]
    assert shown["state_parts"] == real["state_parts"]
