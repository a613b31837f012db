"""``ScenarioContractTests``: a scenario's shipped YAML validates, and a tiny run leaves a complete run folder."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import pytest

from statesim.config import dump_config, load_config
from statesim.testing import _common


class ScenarioContractTests:
    """Subclass, set :attr:`scenario_file`, :attr:`scenario_type` and :attr:`tiny_overrides` (``--set`` overrides
    that make a run take seconds), and pytest checks the file and one tiny run. Set :attr:`slow_run` to mark the
    run's checks ``slow`` when even a tiny run takes long."""

    scenario_file: ClassVar[str | Path] = ""
    scenario_type: ClassVar[str] = ""
    tiny_overrides: ClassVar[list[str]] = []
    slow_run: ClassVar[bool] = False
    #: Whether the run trains a model in its own folder (checkpoints/<job>/); a pure simulation does not.
    trains: ClassVar[bool] = True

    def pytest_generate_tests(self, metafunc: Any) -> None:
        """The run's checks share one tiny run per class; ``slow_run`` marks them slow."""
        if "run_size" in metafunc.fixturenames:
            marks = [pytest.mark.slow] if self.slow_run else []
            metafunc.parametrize("run_size", [pytest.param("tiny", marks=marks)], scope="class")

    @pytest.fixture(scope="class")
    @classmethod
    def run_dir(cls, run_size: str, tmp_path_factory: Any) -> Path:
        """The folder of one tiny run of the scenario file (plots off, progress off)."""
        from statesim.run import execute

        out = tmp_path_factory.mktemp(cls.scenario_type or "scenario") / "run"
        return execute(cls.scenario_file, [*cls.tiny_overrides, "output.progress=false"], out=out,
                       host=_host(), echo=lambda message: None)

    def test_shipped_yaml_validates_and_round_trips(self, tmp_path: Path) -> None:
        """The file validates as this scenario, and its resolved config, saved and loaded again, is the same."""
        registry = _common.registry()
        config = load_config(self.scenario_file, registry)
        assert config.scenario.type == self.scenario_type
        saved = tmp_path / "resolved.yaml"
        saved.write_text(dump_config(config), encoding="utf-8")
        assert load_config(saved, registry).resolved() == config.resolved()

    def test_tiny_overrides_validate(self) -> None:
        """The tiny run's overrides are valid keys of this scenario (so a rename is reported here, plainly)."""
        load_config(self.scenario_file, _common.registry(), list(self.tiny_overrides))

    def test_tiny_run_leaves_a_complete_run_folder(self, run_dir: Path) -> None:
        """One test, so that pytest-xdist never runs the tiny run twice (once per worker)."""
        self.check_config_run_and_results(run_dir)
        self.check_metrics_and_checkpoints(run_dir)

    def check_config_run_and_results(self, run_dir: Path) -> None:
        """``config.yaml`` (loadable), ``run.json`` and ``results.json`` naming the scenario and seed."""
        config = load_config(run_dir / "config.yaml", _common.registry())
        assert config.scenario.type == self.scenario_type
        run = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
        assert isinstance(run, dict) and "train_seconds" in run
        results = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
        assert results["scenario"] == self.scenario_type and results["seed"] == config.seed

    def check_metrics_and_checkpoints(self, run_dir: Path, trained: bool | None = None) -> None:
        """Every trained job logged metrics and left a checkpoint that rebuilds its model."""
        from statesim.runfolder import load_model, trained_jobs

        if not (self.trains if trained is None else trained):
            return  # the scenario trains no model in its own run folder
        jobs = trained_jobs(run_dir)
        assert jobs, "the run left no checkpoint (checkpoints/<job>/step_*.json)"
        lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
        logged = {json.loads(line).get("job") for line in lines}
        for job in jobs:
            assert job in logged, f"job '{job}' logged no metrics"
            model, info = load_model(run_dir, job=job, registry=_common.registry())
            assert model.build_spec is not None and info.step > 0, f"job '{job}': checkpoint of step {info.step}"


def _host() -> Any:
    from statesim.plugin_manager import build_plugin_host

    return build_plugin_host()
