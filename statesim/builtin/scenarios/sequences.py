"""Scenario ``sequences``: train the run's model on the user's own recordings (CSV, Parquet, ``.npz``), from YAML.

Three tasks: ``regression`` (y_t from x_<=t), ``forecast`` (the targets ``horizon`` steps ahead, from the
inputs and the targets seen so far; with ``outputs: path`` every step up to it, scored per step ahead and
drawn as a fan) and ``classification`` (one label per sequence, scored at its last
step). Splits by sequence or by time never leak (a window never crosses a split's boundary); z-score
statistics are fitted on the training split alone and written to ``normalisation.json``. Every score sits
next to a naive baseline (training mean, persistence, majority class). The walk-through is
``docs/your-data.md``.
"""
from __future__ import annotations

import json
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator

from statesim.builtin.sequences import reading, scoring
from statesim.builtin.sequences.reading import Columns, DataError, Recording, is_number_text
from statesim.builtin.sequences.shaping import SPLITS, Piece, Scaling, batch, split_names, task_piece, time_blocks, \
    windows
from statesim.config import RunConfig
from statesim.data import DataSplits, mse_loss
from statesim.datafiles import DataPath, resolve
from statesim.hookimpl import hookimpl
from statesim.registry import Registration
from statesim.scenario import Probe, RunContext, Scenario, ScenarioParams, sized_probe


class SplitParams(ScenarioParams):
    by: Literal["sequence", "time"] = Field("sequence", description="split whole sequences between train, val and "
                                            "test (`sequence`), or cut every sequence into consecutive train, val "
                                            "and test blocks (`time`)")
    train: float = Field(0.7, gt=0, description="fraction of the sequences (or of each sequence's steps) to train on")
    val: float = Field(0.15, ge=0, description="fraction for validation (the trainer's val loss)")
    test: float = Field(0.15, ge=0, description="fraction held out for the final scores and plots")
    seed: int | None = Field(None, ge=0, description="seed of the shuffle of sequences (`by: sequence`); the run's "
                             "`seed:` when unset")


class SequencesParams(ScenarioParams):
    path: DataPath = Field(description="the data file, or a folder of them (one sequence per file): a .csv with a "
                           "header row, a .parquet (pip install 'statesim[parquet]'), a .npy numeric table [T, C] "
                           "(one recording; its columns are named 0 .. C-1, so inputs: [0, 1], targets: [2]), or a "
                           ".npz with arrays `inputs` [N, T, F] and `targets` [N, T, O] (`labels` [N] to classify), "
                           "optional `lengths` [N], `input_names`, `target_names`; or a file an installed package "
                           "ships: {package: NAME, resource: RESOURCE} (e.g. matplotlib, "
                           "mpl-data/sample_data/Stocks.csv)")
    inputs: list[str] = Field(default_factory=list, description="input columns (CSV or Parquet names); a .npz uses "
                              "all its input columns when empty")
    targets: list[str] = Field(default_factory=list, description="target columns (one class-label column to "
                               "classify); required for a CSV")
    time: str | None = Field(None, description="a time column, numbers or ISO dates (YYYY-MM-DD): must increase "
                             "within each sequence; the x-axis of the plots")
    sequence_id: str | None = Field(None, description="a column naming the sequence of each row (one file, many "
                                    "sequences); without it the file is one sequence")
    task: Literal["regression", "forecast", "classification"] = Field(
        "regression", description="`regression`: y_t from x_<=t; `forecast`: the targets `horizon` steps ahead "
        "from the inputs and targets seen so far; `classification`: one label per sequence, at its last step")
    horizon: int = Field(1, ge=1, description="forecast: how many steps ahead the targets are predicted (the "
                         "model predicts y_{t+horizon}, one value per target; `outputs: path`: all of "
                         "y_{t+1..t+horizon})")
    outputs: Literal["point", "path"] = Field("point", description="forecast: `point` predicts the one step "
                                              "`horizon` ahead; `path` the whole path to it, horizon x targets "
                                              "outputs (horizon-major), scored at each step ahead and drawn as "
                                              "a fan (plots/forecast_fan.png)")
    window: int | None = Field(None, gt=1, description="cut sequences into windows of this many steps (long "
                               "recordings); whole sequences when unset")
    stride: int | None = Field(None, gt=0, description="steps between window starts; `window` when unset (no "
                               "overlap)")
    warmup: int = Field(0, ge=0, description="steps at the start of each window (or sequence) left out of the loss "
                        "and the scores, while the model's state settles from its initial state")
    split: SplitParams = Field(default_factory=SplitParams, description="how sequences are shared out")
    normalise: bool = Field(True, description="z-score inputs and targets with statistics of the training split "
                            "(written to normalisation.json; scores are in the data's own units)")
    missing: Literal["error", "ffill", "zero", "drop"] = Field(
        "error", description="a missing value (empty cell, NaN): refuse it, repeat the last value (`ffill`; a "
        "sequence's first value is refused), use 0, or (`drop`, tables only) leave out every row missing a value "
        "in the columns read (a series that starts later than the file)")
    comment: str | None = Field("#", description="CSV lines starting with this (after spaces) are skipped, "
                                "before and among the rows; null reads every line")
    plots: int = Field(3, ge=0, description="held-out sequences drawn in plots/predictions.png")

    @field_validator("inputs", "targets", "time", "sequence_id", mode="before")
    @classmethod
    def _column_numbers_are_names(cls, value: Any) -> Any:
        # A .npy table's columns are named by their index; `inputs: [0, 1]` then reads as it looks.
        if isinstance(value, list):
            return [str(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value]
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @model_validator(mode="after")
    def _consistent(self) -> "SequencesParams":
        csv_file = not self.path.lower().endswith(".npz")
        if csv_file and not self.targets:
            raise ValueError("name the target column(s) of the CSV: targets: [column, ...]")
        if csv_file and self.task != "forecast" and not self.inputs:
            raise ValueError(f"task {self.task} needs input columns: inputs: [column, ...] (a forecast may read its "
                             f"targets' past alone)")
        if self.task == "classification" and len(self.targets) > 1:
            raise ValueError("classification reads one label column: targets: [label]")
        if self.window is not None and self.warmup >= self.window:
            raise ValueError(f"warmup ({self.warmup}) leaves no step of a {self.window}-step window to score; "
                             f"lower warmup or raise window")
        if self.outputs == "path" and self.task != "forecast":
            raise ValueError(f"outputs: path is a forecast's path of future steps; task {self.task} has none "
                             f"(set task: forecast, or leave outputs out)")
        if self.stride is not None and self.window is None:
            raise ValueError("stride is the step between windows; set window too")
        return self


class Sequences(Scenario[SequencesParams]):
    """Fit the run's ``model`` to the recordings in ``scenario.path``; score it against naive baselines."""

    Params = SequencesParams

    def _columns(self) -> Columns:
        p = self.params
        return Columns(p.inputs, p.targets, p.time, p.sequence_id, p.task == "classification", p.missing, p.comment)

    def load(self) -> tuple[list[Recording], list[str]]:
        """The recordings and, to classify, the sorted class labels."""
        recordings = reading.read(resolve(self.params.path), self._columns())
        classes: list[str] = []
        if self.params.task == "classification":
            labels = {rec.labels[0] for rec in recordings if rec.labels}
            numeric = all(is_number_text(label) for label in labels)
            classes = sorted(labels, key=float if numeric else str)
            if len(classes) < 2:
                raise DataError(f"{self.params.path}: every sequence has the label {classes[0] if classes else '?'};"
                                f" classification needs at least two classes.")
        return recordings, classes

    def sizes(self, recordings: list[Recording], classes: list[str]) -> tuple[int, int]:
        """The model's input and output sizes for this task."""
        features, targets = recordings[0].inputs.shape[1], recordings[0].targets.shape[1]
        if self.params.task == "classification":
            return features, len(classes)
        if self.params.task == "forecast":
            return features + targets, targets * self._repeat()
        return features, targets

    def _repeat(self) -> int:
        """How many times the target columns repeat in the outputs: ``horizon`` for a forecast path, else 1."""
        return self.params.horizon if self.params.outputs == "path" else 1

    def probes(self, config: RunConfig) -> list[Probe]:
        """The run's model on the data's real sizes (validation reads the file, so bad data is refused there)."""
        recordings, classes = self.load()
        return [sized_probe(None, *self.sizes(recordings, classes))]

    def pieces(self, recordings: list[Recording], classes: list[str], seed: int) -> dict[str, list[Piece]]:
        """The windows of each split; no window holds steps of two splits."""
        p, s = self.params, self.params.split
        fractions = (s.train, s.val, s.test)
        out: dict[str, list[Piece]] = {name: [] for name in SPLITS}
        if s.by == "sequence":
            chosen = split_names(len(recordings), fractions, seed)
            for name in SPLITS:
                for i in chosen[name]:
                    piece = task_piece(recordings[i], 0, recordings[i].steps, p.task, p.horizon, classes,
                                       p.outputs == "path")
                    out[name] += windows(piece, p.window, p.stride or p.window or 1) if piece else []
            return out
        for rec in recordings:
            for name, (a, b) in zip(SPLITS, time_blocks(rec.steps, fractions)):
                piece = task_piece(rec, a, b, p.task, p.horizon, classes, p.outputs == "path")
                out[name] += windows(piece, p.window, p.stride or p.window or 1) if piece else []
        return out

    def run(self, ctx: RunContext) -> dict[str, Any]:
        p = self.params
        recordings, classes = self.load()
        seed = ctx.config.seed if p.split.seed is None else p.split.seed
        pieces = self.pieces(recordings, classes, seed)
        if not pieces["train"]:
            raise DataError(f"{p.path}: the training split is empty ({len(recordings)} sequence(s), split by "
                            f"{p.split.by}); raise scenario.split.train, lower scenario.window or scenario.horizon, "
                            f"or add sequences.")
        classify = p.task == "classification"
        scaling = Scaling.fit(pieces["train"], classify, self._repeat()) if p.normalise else None
        data = {name: batch(pieces[name], classify) if pieces[name] else None for name in SPLITS}
        assert data["train"] is not None
        # The z-scores live inside the model (buffers its checkpoints keep), so statesim.embed and statesim
        # export read and write the data's own units; the loss compares z-scored outputs and targets.
        model = ctx.build_model(None, *self.sizes(recordings, classes),
                                scaling=scaling.as_model() if scaling is not None else None)
        loss: scoring.Loss = scoring.last_step_cross_entropy if classify else mse_loss
        if scaling is not None and scaling.target_mean is not None and scaling.target_std is not None:
            loss = scoring.standardised(loss, scaling.target_mean.tolist(), scaling.target_std.tolist())
        loss = loss if classify else scoring.after_warmup(loss, p.warmup)
        ctx.train(model, DataSplits(data["train"], data["val"], data["test"]), loss_fn=loss)
        results: dict[str, Any] = {"task": p.task, "sizes": {name: len(pieces[name]) for name in SPLITS}}
        results["sizes"]["sequences"] = len(recordings)
        if p.task == "forecast":
            results["horizon"], results["outputs"] = p.horizon, p.outputs
        input_names, target_names = self._names(recordings)
        if scaling is not None:
            results["normalisation"] = scaling.as_json(input_names, target_names)
            self._write_normalisation(ctx, results["normalisation"])
        predictions = {name: self._predict(ctx, model, data[name]) for name in SPLITS if data[name]}
        if classify:
            results.update(self._classification(ctx, pieces, predictions, classes))
        else:
            results.update(self._regression(ctx, pieces, predictions, scaling, recordings, target_names))
        results["split"] = self._split_record(pieces)
        return results

    def _names(self, recordings: list[Recording]) -> tuple[list[str], list[str]]:
        p = self.params
        inputs = p.inputs or [f"input{i}" for i in range(recordings[0].inputs.shape[1])]
        targets = p.targets or [f"target{i}" for i in range(recordings[0].targets.shape[1])]
        return (inputs + targets if p.task == "forecast" else inputs), targets

    def _write_normalisation(self, ctx: RunContext, stats: dict[str, Any]) -> None:
        from statesim.distributed import is_writer
        from statesim.fileio import atomic_write_text

        if is_writer():
            atomic_write_text(ctx.path("normalisation.json"), json.dumps(stats, indent=2) + "\n")

    def _predict(self, ctx: RunContext, model: torch.nn.Module, data: Any) -> np.ndarray:
        """The model's outputs ``[T, N, O]`` on a split, in the data's own units (logits to classify)."""
        model.eval()
        with torch.no_grad():
            lengths = None if data.lengths is None else data.lengths.to(ctx.device)
            out = model(data.inputs.to(ctx.device), lengths=lengths).outputs.double().cpu().numpy()
        model.train()
        return out

    def _regression(self, ctx: RunContext, pieces: dict[str, list[Piece]], predictions: dict[str, np.ndarray],
                    scaling: Scaling | None, recordings: list[Recording], names: list[str]) -> dict[str, Any]:
        train_mean = np.concatenate([piece.targets for piece in pieces["train"]]).mean(axis=0)
        out: dict[str, Any] = {"baselines": {}}
        k = self.params.warmup
        for name, outputs in predictions.items():
            truth = np.concatenate([piece.targets[k:] for piece in pieces[name]])
            model = np.concatenate([outputs[k:len(piece.targets), n] for n, piece in enumerate(pieces[name])])
            out[name] = _clean(scoring.regression_scores(model, truth))
            base = {"train_mean": _clean(scoring.regression_scores(np.broadcast_to(train_mean, truth.shape), truth))}
            if self.params.task == "forecast":
                last = np.concatenate([piece.persistence[k:] for piece in pieces[name]
                                       if piece.persistence is not None])
                base["persistence"] = _clean(scoring.regression_scores(last, truth))
            out["baselines"][name] = base
            if self._repeat() > 1:
                out.setdefault("by_horizon", {})[name] = self._by_horizon(
                    model, truth, np.broadcast_to(train_mean, truth.shape), last)
        ahead = 1 if self._repeat() > 1 else self.params.horizon  # a path's first block is one step ahead
        shown = "test" if "test" in predictions else ("val" if "val" in predictions else "train")
        series = []
        for n, piece in enumerate(pieces[shown][:self.params.plots]):
            steps = len(piece.targets)
            rec = next(r for r in recordings if r.name == piece.name)
            offset = piece.start + (ahead if self.params.task == "forecast" else 0)
            t = rec.time[offset:offset + steps] if rec.time is not None else np.arange(offset, offset + steps)
            series.append({"label": f"{shown} sequence {piece.name} from step {piece.start}", "t": t,
                           "truth": piece.targets, "prediction": predictions[shown][:steps, n],
                           "persistence": piece.persistence})
        title = (f"{ahead}-step-ahead forecast vs truth ({shown} split)" if self.params.task == "forecast"
                 else f"predictions vs truth ({shown} split)")
        scoring.plot_predictions(ctx, "forecast" if self.params.task == "forecast" else "predictions", title,
                                 series, names)
        if self._repeat() > 1 and series:
            scoring.plot_fan(ctx, series[0], self.params.horizon, names, self.params.plots + 2)
        return out

    def _by_horizon(self, model: np.ndarray, truth: np.ndarray, mean: np.ndarray,
                    last: np.ndarray) -> list[dict[str, Any]]:
        """Scores of the model and both baselines at each step ahead h = 1..H (``[S, H * O]`` arrays)."""
        h_count = self._repeat()
        width = truth.shape[1] // h_count

        def at(values: np.ndarray, h: int) -> np.ndarray:
            return values[:, h * width:(h + 1) * width]

        return [{"h": h + 1, "model": _clean(scoring.regression_scores(at(model, h), at(truth, h))),
                 "persistence": _clean(scoring.regression_scores(at(last, h), at(truth, h))),
                 "train_mean": _clean(scoring.regression_scores(at(mean, h), at(truth, h)))}
                for h in range(h_count)]

    def _classification(self, ctx: RunContext, pieces: dict[str, list[Piece]], predictions: dict[str, np.ndarray],
                        classes: list[str]) -> dict[str, Any]:
        counts = np.bincount([int(piece.targets[0]) for piece in pieces["train"]], minlength=len(classes))
        majority = int(counts.argmax())
        out: dict[str, Any] = {"classes": classes, "baselines": {}}
        for name, logits in predictions.items():
            truth = np.array([int(piece.targets[0]) for piece in pieces[name]])
            chosen = np.array([int(logits[len(piece.targets) - 1, n].argmax()) for n, piece in enumerate(pieces[name])])
            out[name] = scoring.classification_scores(chosen, truth, len(classes))
            out["baselines"][name] = {"majority_class": scoring.classification_scores(
                np.full_like(truth, majority), truth, len(classes))}
            if name == "test":
                scoring.plot_confusion(ctx, chosen, truth, classes)
        return out

    def _split_record(self, pieces: dict[str, list[Piece]]) -> dict[str, Any]:
        """Which sequences (by sequence) or which steps of each (by time) each split holds, for the reader."""
        record: dict[str, Any] = {"by": self.params.split.by}
        for name in SPLITS:
            spans: dict[str, list[int]] = {}
            for piece in pieces[name]:
                a, b = piece.start, piece.start + len(piece.targets) + (
                    self.params.horizon if self.params.task == "forecast" else 0)
                old = spans.get(piece.name)
                spans[piece.name] = [min(old[0], a), max(old[1], b)] if old else [a, b]
            record[name] = sorted(spans) if self.params.split.by == "sequence" else spans
        return record


def _clean(scores: dict[str, float]) -> dict[str, float | None]:
    """NaN (an undefined score: a constant truth has no NRMSE) as None, so results.json stays JSON."""
    return {k: (None if v != v else v) for k, v in scores.items()}


@hookimpl
def statesim_scenarios() -> list[Registration]:
    """Register the scenario."""
    return [Registration("sequences", Sequences, SequencesParams,
                         "your own recordings (CSV, Parquet, .npz): regression, forecast or classification, from YAML")]
