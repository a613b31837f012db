"""Kill and resume every shipped scenario with targets: the resumed run equals a straight one.

Each scenario file under ``scenarios/`` runs with a tiny budget (``--set`` overrides). A straight run records
which file every atomic write publishes; forked children then die (``os._exit``, no cleanup, like SIGKILL) at
chosen writes: inside the first checkpoint, halfway through the run's writes, and inside ``results.json``
(after the final checkpoint, where ``adding``/``copy`` have already decided to stop). ``--resume`` must then
give byte-identical ``results.json`` and ``metrics.jsonl``.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from _reliability import ROOT, cli_env

QUIET = ["output.plots=false", "output.progress=false", "training.log_every=1"]
#: Scenario file -> overrides giving a run of a second or two that still checkpoints a few times.
TINY = {
    "moving_average.yaml": ["scenario.steps=12", "scenario.train_sequences=16", "scenario.test_sequences=4",
                            "training.steps=8", "training.batch_size=4", "training.checkpoint_every=3"],
    "linear_system.yaml": ["scenario.steps=12", "scenario.train_sequences=16", "scenario.test_sequences=4",
                           "scenario.impulse_steps=6", "training.steps=8", "training.batch_size=4",
                           "training.checkpoint_every=3"],
    # solve thresholds loose enough to be met early, so the stop request and solve history are exercised.
    "adding.yaml": ["scenario.length=8", "scenario.train_sequences=64", "scenario.val_sequences=32",
                    "scenario.test_sequences=32", "scenario.check_every=2", "scenario.solve_mse=0.2",
                    "scenario.gradient_flow_every=4", "model.cell.hidden_size=4", "training.steps=30",
                    "training.batch_size=16", "training.checkpoint_every=3", "training.lr=0.05"],
    "copy.yaml": ["scenario.delay=2", "scenario.symbols=2", "scenario.alphabet=3", "scenario.train_sequences=64",
                  "scenario.val_sequences=32", "scenario.test_sequences=32", "scenario.check_every=2",
                  "scenario.solve_accuracy=0.6", "model.cell.hidden_size=8", "training.steps=30",
                  "training.batch_size=16", "training.checkpoint_every=3", "training.lr=0.05"],
    "initial_state_effect.yaml": ["scenario.prefix_steps=4", "scenario.window_steps=8", "scenario.first_steps=3",
                                  "scenario.train_sequences=16", "scenario.test_sequences=8",
                                  "model.cell.hidden_size=4", "training.steps=4", "training.batch_size=8",
                                  "training.checkpoint_every=2"],
    "translation.yaml": ["scenario.max_number=99", "scenario.train_size=32", "scenario.val_size=8",
                         "scenario.test_size=8", "scenario.beam_size=2", "scenario.embed_size=4",
                         "model.cell.hidden_size=8", "training.steps=6", "training.batch_size=8",
                         "training.eval_every=3", "training.checkpoint_every=2"],
    "translation_corpus.yaml": ["scenario.embed_size=4", "scenario.beam_size=2", "model.cell.hidden_size=8",
                                "training.steps=6", "training.batch_size=8", "training.checkpoint_every=2"],
    "captioning.yaml": ["scenario.train_images=32", "scenario.val_images=8", "scenario.test_images=8",
                        "scenario.channels=2", "scenario.features=4", "scenario.embed_size=4",
                        "scenario.beam_size=2", "model.cell.hidden_size=8", "training.steps=6",
                        "training.batch_size=8", "training.eval_every=3", "training.checkpoint_every=2"],
    "salamander.yaml": ["training.steps=6", "training.checkpoint_every=2", "scenario.train_trajectories=2",
                        "scenario.val_trajectories=1", "scenario.test_trajectories=1",
                        "scenario.trajectory_seconds=[6, 8]", "scenario.eval_seconds=16", "scenario.measure_seconds=8",
                        "scenario.ablation_seconds=3", "scenario.steer_seconds=12", "model.cell.hidden_size=4",
                        "scenario.eval_levels=[0.5, 4.0]", "scenario.turn_conditions=[[4.5, 3.5]]",
                        "scenario.ablation_drives=[4.0]", "scenario.forced_units=2",
                        "scenario.validation_levels=[0.8, 2.0, 4.25]", "scenario.validation_turns=[[4.3, 3.7]]"],
}
#: Named kill points: which write (by what it publishes) the child dies inside.
KILL_POINTS = ("first_checkpoint", "halfway", "results")
#: Scenarios whose tiny run costs many seconds die at fewer points: the first checkpoint's resume is the same
#: trainer path for every scenario, the salamander's own state (weight candidates, the choice made after
#: training) is what "halfway" and "results" exercise.
FEWER_KILL_POINTS = {"salamander.yaml": ("halfway", "results")}

MATRIX = textwrap.dedent("""
    import json, os, sys
    from pathlib import Path
    os.environ["STATESIM_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    import statesim.fileio as fileio
    from statesim.run import execute
    import torch._dynamo  # imported by the first optimizer; once here, not in every child

    config, overrides = Path(sys.argv[1]), json.loads(sys.argv[2])
    base, points = Path(sys.argv[3]), json.loads(sys.argv[4])
    quiet = lambda message: None
    writes = []  # (number of fsyncs before the write, path) of every atomic write of the straight run
    real_fsync, real_write = os.fsync, fileio.atomic_write_bytes
    calls = [0]
    def counting_fsync(fd):
        calls[0] += 1
        real_fsync(fd)
    def recording_write(path, data):
        writes.append((calls[0], str(path)))
        return real_write(path, data)
    os.fsync, fileio.atomic_write_bytes = counting_fsync, recording_write
    straight = base / "straight"
    execute(config, overrides, out=straight, echo=quiet)
    os.fsync, fileio.atomic_write_bytes = real_fsync, real_write
    rel = [(n, str(Path(p).relative_to(straight))) for n, p in writes]
    checkpoint_writes = [n for n, p in rel if p.startswith("checkpoints/") and p.endswith(".json")]
    choose = {"first_checkpoint": checkpoint_writes[0] + 1,  # inside the first sidecar: weights published alone
              "halfway": rel[len(rel) // 2][0] + 1,
              "results": next(n for n, p in rel if p == "results.json") + 1}
    report = {"writes": len(rel), "points": {}}
    for name in points:
        n = choose[name]
        run_dir = base / name
        pid = os.fork()
        if pid == 0:
            import signal
            signal.alarm(120)
            count = [0]
            def fsync(fd):
                count[0] += 1
                if count[0] == n:
                    os._exit(137)
                real_fsync(fd)
            os.fsync = fsync
            code = 0
            try:
                execute(config, overrides, out=run_dir, echo=quiet)
            except BaseException:
                import traceback
                traceback.print_exc()
                code = 4
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        entry = {"fsync": n, "exit": code}
        if code == 137 and (run_dir / "config.yaml").exists():
            execute(config, overrides, resume=run_dir, echo=quiet)
            entry["results_equal"] = ((run_dir / "results.json").read_bytes()
                                      == (straight / "results.json").read_bytes())
            entry["metrics_equal"] = ((run_dir / "metrics.jsonl").read_bytes()
                                      == (straight / "metrics.jsonl").read_bytes())
            entry["tmp_left"] = [str(p) for p in run_dir.rglob("*.tmp")]
        report["points"][name] = entry
    print(json.dumps(report))
""")

SLOW = {"translation.yaml", "translation_corpus.yaml", "captioning.yaml", "initial_state_effect.yaml",
        "salamander.yaml"}


@pytest.mark.parametrize("scenario", [pytest.param(name, marks=pytest.mark.slow) if name in SLOW else name
                                      for name in TINY])
def test_kill_and_resume_gives_the_straight_results(tmp_path, scenario):
    """For each kill point: the child died there, and --resume reproduces the straight run byte for byte."""
    script = tmp_path / "matrix.py"
    script.write_text(MATRIX)
    points = FEWER_KILL_POINTS.get(scenario, KILL_POINTS)
    done = subprocess.run([sys.executable, str(script), str(ROOT / "scenarios" / scenario), json.dumps(TINY[scenario]
                           + QUIET), str(tmp_path), json.dumps(points)], env=cli_env(), capture_output=True,
                          text=True, timeout=400, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    print(scenario, json.dumps(report))
    assert set(report["points"]) == set(points)
    for point, entry in report["points"].items():
        assert entry["exit"] == 137, (point, entry)
        assert entry["results_equal"] and entry["metrics_equal"], (point, entry)
        assert entry["tmp_left"] == [], (point, entry)
