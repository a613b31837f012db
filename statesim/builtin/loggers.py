"""Built-in loggers: ``jsonl`` (metrics.jsonl, always written), ``tensorboard`` and ``mlflow``.

Registered through ``statesim_loggers`` like any plugin's. The tensorboard and mlflow packages are imported
only when such a logger starts, so listing plugins or running without them costs nothing.
"""
from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

from pydantic import Field

from statesim.hookimpl import hookimpl
from statesim.loggers import Logger, LoggerParams, RunInfo, flatten, scalar_results, scalars
from statesim.registry import Registration
from statesim.safepath import PathName


class JsonlParams(LoggerParams):
    pass


class JsonlLogger(Logger):
    """``metrics.jsonl``: written by the run itself whatever ``logging`` lists (resume and ``statesim diagnose``
    read it), so this entry only names it."""

    Params = JsonlParams


class TensorBoardParams(LoggerParams):
    dir: PathName = Field("tensorboard", description="folder of the event files, inside the run folder")
    images: bool = Field(True, description="log plots/*.png as images when the run finishes")


class TensorBoardLogger(Logger):
    """Event files under ``<run>/tensorboard/``: one sub-folder per training job (scalars ``<job>/<key>``
    at the record's step) and the folder itself for the run (the resolved config as text, the results as
    ``results/<key>`` scalars, the plots as images).

    On ``--resume`` each job's writer purges its steps after the checkpoint it continues from (TensorBoard's
    ``purge_step``), and the run's own scalars and images are purged and written again, so no step appears
    twice; the config text of the first attempt stays (TensorBoard purges no text, and the config is the same).
    """

    Params = TensorBoardParams
    params: TensorBoardParams
    requires = ("tensorboard", "tensorboard")

    def start(self, run: RunInfo) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.run, self.root = run, run.run_dir / self.params.dir
        self.jobs: dict[str, Any] = {}
        earlier = run.resumed and any(self.root.glob("events.out.tfevents.*"))
        self.summary = SummaryWriter(str(self.root), purge_step=0 if run.resumed else None)
        # A resume leaves the earlier attempt's config text (purging does not reach text): the config is the same.
        if not earlier:
            # Markdown: a fenced block keeps the YAML's indentation in TensorBoard's text tab.
            self.summary.add_text("config", f"```yaml\n{run.config_text}```", global_step=0)
        self.summary.flush()

    def _writer(self, job: str, purge_step: int | None = None) -> Any:
        from torch.utils.tensorboard import SummaryWriter

        if job not in self.jobs:
            self.jobs[job] = SummaryWriter(str(self.root / job), purge_step=purge_step)
        return self.jobs[job]

    def job_started(self, job: str, step: int) -> None:
        old = self.jobs.pop(job, None)
        if old is not None:
            old.close()
        # Records after the checkpoint were dropped from metrics.jsonl and are logged again: hide the earlier ones.
        self._writer(job, purge_step=step + 1 if self.run.resumed else None)

    def log(self, record: dict[str, Any]) -> None:
        job = str(record.get("job", "main"))
        writer = self._writer(job)
        for key, value in scalars(record).items():
            writer.add_scalar(f"{job}/{key}", value, global_step=int(record.get("step", 0)))

    def finish(self, results: dict[str, Any]) -> None:
        for key, value in scalar_results(results).items():
            self.summary.add_scalar(f"results/{key}", value, global_step=0)
        plots = self.run.run_dir / "plots"
        if self.params.images and plots.is_dir():
            import numpy as np
            from PIL import Image

            for png in sorted(plots.rglob("*.png")):
                with Image.open(png) as image:
                    pixels = np.asarray(image.convert("RGB"))
                self.summary.add_image(f"plots/{png.relative_to(plots).with_suffix('').as_posix()}", pixels,
                                       global_step=0, dataformats="HWC")
        self.summary.flush()

    def outputs(self) -> tuple[str, ...]:
        return (self.params.dir,)

    def close(self, status: str) -> None:
        for writer in [*getattr(self, "jobs", {}).values(), getattr(self, "summary", None)]:
            if writer is not None:
                writer.close()
        self.jobs = {}


class MlflowParams(LoggerParams):
    tracking_uri: str | None = Field(None, description="MLflow tracking URI (a server, http://host:5000, or a store, "
                                                       "sqlite:///mlflow.db); default: a file store in the run "
                                                       "folder's mlruns/")
    experiment: str | None = Field(None, description="MLflow experiment name (created when missing); default: the "
                                                     "run's name")
    artifacts: bool = Field(True, description="upload the run folder (checkpoints, plots, results) as the MLflow "
                                              "run's artifacts when the run finishes")


#: The file in the run folder naming the MLflow run, so that ``--resume`` continues it.
MLFLOW_RECORD = "mlflow_run.json"
#: The default local store, inside the run folder (never uploaded as an artifact of itself).
MLFLOW_STORE = "mlruns"
_STATUS = {"finished": "FINISHED", "interrupted": "KILLED", "failed": "FAILED"}
#: MLflow's limits: batch sizes and a parameter value's length.
_PARAMS_PER_BATCH, _METRICS_PER_BATCH, _PARAM_LENGTH = 100, 1000, 6000


def _key(name: str) -> str:
    """A metric or parameter name MLflow accepts (letters, digits, ``_-. /``; others become ``_``)."""
    return re.sub(r"[^\w\-. /]", "_", name)[:250]


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text[:_PARAM_LENGTH]


class MlflowLogger(Logger):
    """One MLflow run per statesim run: the resolved config as parameters (dotted keys), every record as metrics
    ``<job>/<key>`` at its step, the results as ``results/<key>`` and the run folder as artifacts.

    The default store is MLflow's file store in ``<run>/mlruns`` (MLflow 3 asks for ``MLFLOW_ALLOW_FILE_STORE``,
    which is set for it; a database store needs SQLAlchemy and migrations that take seconds per run). MLflow's
    telemetry is turned off unless ``MLFLOW_DISABLE_TELEMETRY`` is set. The run id is kept in
    ``<run>/mlflow_run.json``: ``--resume`` continues the same MLflow run.
    """

    Params = MlflowParams
    params: MlflowParams
    requires = ("mlflow", "mlflow")

    def start(self, run: RunInfo) -> None:
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # statesim makes no network calls of its own
        uri = self.params.tracking_uri
        if uri is None:
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            uri = (run.run_dir / MLFLOW_STORE).resolve().as_uri()
        from mlflow.tracking import MlflowClient

        self.run, self.client = run, MlflowClient(tracking_uri=uri)
        continued = self._continued(run) if run.resumed else None
        known: set[str] = set()
        if continued is not None:
            self.run_id: str = continued
            self.client.update_run(self.run_id, status="RUNNING")
            known = set(self.client.get_run(self.run_id).data.params)
        else:
            name = self.params.experiment or run.name
            found = self.client.get_experiment_by_name(name)
            experiment = found.experiment_id if found is not None else self.client.create_experiment(name)
            self.run_id = self.client.create_run(experiment, run_name=run.run_dir.name,
                                                 tags={"statesim.run_dir": str(run.run_dir)}).info.run_id
            from statesim.fileio import atomic_write_json

            atomic_write_json(run.run_dir / MLFLOW_RECORD, {"run_id": self.run_id,
                                                            "tracking_uri": self.params.tracking_uri})
        from mlflow.entities import Param

        # Parameters cannot change once logged: a resume logs only those the earlier attempt did not.
        params = [Param(_key(k), _param_value(v)) for k, v in flatten(run.config).items() if _key(k) not in known]
        for first in range(0, len(params), _PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=params[first:first + _PARAMS_PER_BATCH])

    def _continued(self, run: RunInfo) -> str | None:
        """The MLflow run an earlier attempt of this run folder logged to, when it is in this tracking store."""
        try:
            record = json.loads((run.run_dir / MLFLOW_RECORD).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or record.get("tracking_uri") != self.params.tracking_uri:
            return None
        run_id = record.get("run_id")
        try:
            return self.client.get_run(run_id).info.run_id if isinstance(run_id, str) else None
        except Exception:  # deleted, or another store: start a new MLflow run
            return None

    def _metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(_key(k), v, now, step) for k, v in values.items()]
        for first in range(0, len(metrics), _METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[first:first + _METRICS_PER_BATCH])

    def log(self, record: dict[str, Any]) -> None:
        job = str(record.get("job", "main"))
        self._metrics({f"{job}/{k}": v for k, v in scalars(record).items()}, int(record.get("step", 0)))

    def finish(self, results: dict[str, Any]) -> None:
        self._metrics({f"results/{k}": v for k, v in scalar_results(results).items()}, 0)
        if self.params.artifacts:
            self._upload(self.run.run_dir)

    def _upload(self, run_dir: Path) -> None:
        """Every file of the run folder, but the local store itself, the lock and links."""
        from statesim.fileio import is_own_temporary
        from statesim.runlock import LOCK_NAME

        for entry in sorted(run_dir.iterdir()):
            if entry.name in (MLFLOW_STORE, LOCK_NAME) or entry.is_symlink() or is_own_temporary(entry):
                continue
            if entry.is_dir():
                self.client.log_artifacts(self.run_id, str(entry), artifact_path=entry.name)
            elif entry.is_file():
                self.client.log_artifact(self.run_id, str(entry))

    def outputs(self) -> tuple[str, ...]:
        return (MLFLOW_RECORD,) if self.params.tracking_uri else (MLFLOW_RECORD, MLFLOW_STORE)

    def close(self, status: str) -> None:
        if getattr(self, "run_id", None) is not None and not getattr(self, "closed", False):
            self.closed = True
            self.client.set_terminated(self.run_id, _STATUS.get(status, "FAILED"))


@hookimpl
def statesim_loggers() -> list[Registration[Logger]]:
    """Register the built-in loggers."""
    return [Registration("jsonl", JsonlLogger, JsonlParams,
                         "the run folder's metrics.jsonl: always written (resume and `statesim diagnose` read it), "
                         "so this entry only names it; the default"),
            Registration("tensorboard", TensorBoardLogger, TensorBoardParams,
                         "TensorBoard event files in the run folder's tensorboard/: every record as scalars "
                         "`<job>/<key>`, the resolved config as text, the results and the plots "
                         "(pip install 'statesim[tensorboard]')"),
            Registration("mlflow", MlflowLogger, MlflowParams,
                         "an MLflow run: the resolved config as params, every record as metrics, the run folder as "
                         "artifacts; a file store in the run folder's mlruns/ unless `tracking_uri` is given "
                         "(pip install 'statesim[mlflow]')")]
