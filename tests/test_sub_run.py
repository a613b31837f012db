"""``RunContext.sub_run``: a scenario runs another scenario file into its own run folder without disturbing
the caller's global RNG streams, its Ctrl-C handling or its deterministic-algorithms setting."""
from __future__ import annotations

import json
import random
import signal
from pathlib import Path
from typing import Any

import numpy as np
import torch

from statesim import Registration, RunContext, Scenario, ScenarioParams
from statesim.plugin_manager import build_plugin_host
from statesim.registry import Provided
from statesim.run import execute

#: What the probe scenarios saw, per run (module level: the scenario objects are built by the runner).
SEEN: dict[str, Any] = {}


class InnerParams(ScenarioParams):
    pass


class Inner(Scenario[InnerParams]):
    Params = InnerParams

    def run(self, ctx: RunContext) -> dict[str, Any]:
        SEEN["inner_runs"] = SEEN.get("inner_runs", 0) + 1
        SEEN["inner_handler"] = signal.getsignal(signal.SIGINT)
        SEEN["inner_should_stop"] = ctx.should_stop
        SEEN["inner_deterministic"] = torch.are_deterministic_algorithms_enabled()
        return {"draw": float(torch.rand(()).item()), "np_draw": float(np.random.rand())}


class OuterParams(ScenarioParams):
    inner: str


class Outer(Scenario[OuterParams]):
    Params = OuterParams

    def run(self, ctx: RunContext) -> dict[str, Any]:
        torch.rand(3), np.random.rand(3), random.random()  # the caller's streams are mid-way, not at a seed
        before = (torch.get_rng_state().clone(), np.random.get_state(), random.getstate())
        SEEN["outer_handler"] = signal.getsignal(signal.SIGINT)
        SEEN["outer_should_stop"] = ctx.should_stop
        folder = ctx.sub_run(self.params.inner, "inner", ["seed=7"])
        after = (torch.get_rng_state(), np.random.get_state(), random.getstate())
        SEEN["handler_after"] = signal.getsignal(signal.SIGINT)
        SEEN["rng_same"] = (torch.equal(before[0], after[0]),
                            all(np.array_equal(a, b) for a, b in zip(before[1], after[1])),
                            before[2] == after[2])
        SEEN["deterministic_after"] = torch.are_deterministic_algorithms_enabled()
        return {"inner_folder": str(folder.relative_to(ctx.run_dir))}


def _host() -> Any:
    host = build_plugin_host()
    for name, cls, params in (("probe_inner", Inner, InnerParams), ("probe_outer", Outer, OuterParams)):
        host.registry.add("scenario", Provided(Registration(name, cls, params), "test_sub_run", None, None))
    return host


def _files(tmp_path: Path) -> Path:
    inner = tmp_path / "inner.yaml"
    inner.write_text("scenario: {type: probe_inner}\ntraining: {deterministic: true}\n"
                     "output: {plots: false, progress: false}\n")
    outer = tmp_path / "outer.yaml"
    outer.write_text(f"scenario: {{type: probe_outer, inner: '{inner}'}}\nseed: 3\n"
                     "output: {plots: false, progress: false}\n")
    return outer


def test_a_sub_run_leaves_the_callers_rngs_handler_and_settings_as_they_were(tmp_path):
    SEEN.clear()
    assert not torch.are_deterministic_algorithms_enabled()
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN in a background job, default_int_handler in a terminal
    run_dir = execute(_files(tmp_path), out=tmp_path / "run", host=_host(), echo=lambda m: None)
    assert SEEN["rng_same"] == (True, True, True)
    # one SIGINT handler: the outer run's, seen unchanged inside the sub-run and after it; the sub-run stops
    # when the outer run is asked to
    assert SEEN["outer_handler"] is not before
    assert SEEN["inner_handler"] is SEEN["outer_handler"] is SEEN["handler_after"]
    assert SEEN["inner_should_stop"] is SEEN["outer_should_stop"]
    assert SEEN["inner_deterministic"] and not SEEN["deterministic_after"]
    assert signal.getsignal(signal.SIGINT) is before  # the outer run restored it
    # the sub-run is a complete run of its own, seeded by its own seed (7) as `statesim run` would
    inner = json.loads((run_dir / "inner" / "results.json").read_text())
    torch.manual_seed(7)
    np.random.seed(7)
    assert inner["seed"] == 7 and inner["draw"] == float(torch.rand(()).item())
    assert inner["np_draw"] == float(np.random.rand())
    assert json.loads((run_dir / "results.json").read_text())["inner_folder"] == "inner"


def test_a_finished_sub_run_is_reused_on_resume(tmp_path):
    SEEN.clear()
    outer, host = _files(tmp_path), _host()
    run_dir = execute(outer, out=tmp_path / "run", host=host, echo=lambda m: None)
    (run_dir / "results.json").unlink()  # as if the outer run was killed after its sub-run finished
    execute(outer, resume=run_dir, host=host, echo=lambda m: None)
    assert SEEN["inner_runs"] == 1 and (run_dir / "results.json").is_file()
