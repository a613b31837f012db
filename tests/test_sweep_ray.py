"""`statesim sweep --executor ray` on a local Ray instance the test starts: same results as the serial executor,
a run that fails is reported without stopping the others, a rerun skips finished runs."""
import csv
import json
from pathlib import Path

import pytest
import ray  # the ray extra; dev includes it so CI runs this

from statesim.cli import main
from statesim.sweep import SerialExecutor, load_sweep, make_executor, run_name, run_sweep
from statesim.sweep_ray import RayExecutor
from test_sweep import TINY as RUN  # the same tiny run as the local-executor tests

TINY = RUN + """\
sweep:
  grid:
    training.lr: [0.01, 0.1]
"""


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray instance with 2 CPUs, shut down after the module."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.slow
def test_ray_sweep_matches_serial_and_isolates_failures(tmp_path, local_ray):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    spec = load_sweep(path, seeds=2, out=tmp_path / "ray")
    combos = spec.combinations()
    broken = tmp_path / "ray" / "runs" / run_name(combos[2])  # a non-empty folder that is no run: that run fails
    broken.mkdir(parents=True)
    (broken / "stray.txt").write_text("x")
    executor = make_executor("ray")
    assert isinstance(executor, RayExecutor) and executor.slots == 2
    result = run_sweep(spec, executor, echo=lambda m: None)
    assert [o.status for o in result.outcomes] == ["done", "done", "failed", "done"]
    assert "already exists" in (tmp_path / "ray" / "errors" / f"{run_name(combos[2])}.txt").read_text()
    serial = run_sweep(load_sweep(path, seeds=2, out=tmp_path / "serial"), SerialExecutor(), echo=lambda m: None)
    for a, b in zip(result.outcomes, serial.outcomes):
        if a.status == "done":  # the same run in a Ray worker and in this process: the same results
            assert json.loads((Path(a.run_dir) / "results.json").read_text()) == \
                json.loads((Path(b.run_dir) / "results.json").read_text())
    # The CLI reuses the running instance; with the cause fixed, only the failed run executes.
    (broken / "stray.txt").unlink()
    assert main(["sweep", str(path), "--seeds", "2", "--out", str(tmp_path / "ray"), "--executor", "ray"]) == 0
    rows = list(csv.DictReader((tmp_path / "ray" / "summary.csv").open()))
    assert [r["status"] for r in rows] == ["ok"] * 4
    assert sorted(p.name for p in (tmp_path / "ray" / "runs").iterdir()) == sorted(run_name(c) for c in combos)
