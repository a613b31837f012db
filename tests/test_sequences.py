"""The ``sequences`` scenario: the user's own recordings, checked against truths computed here with numpy."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from statesim.builtin.scenarios.sequences import Sequences, SequencesParams
from statesim.builtin.sequences import reading, scoring
from statesim.builtin.sequences.reading import Columns, DataError
from statesim.builtin.sequences.shaping import Piece, Scaling, time_blocks, windows
from statesim.cli import main

QUIET = {"output": {"plots": False, "progress": False}}


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    """A CSV file of ``rows`` under ``header``."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def scenario_file(folder: Path, scenario: dict, *, model: dict | None = None, training: dict | None = None) -> Path:
    """A scenario YAML for ``sequences`` with a tiny training recipe."""
    doc = {"name": "seq", "scenario": {"type": "sequences", **scenario},
           "model": model or {"cell": {"type": "gru", "hidden_size": 4}},
           "training": {"steps": 2, "batch_size": 4, "lr": 0.01, "log_every": 1, "checkpoint_every": 100,
                        **(training or {})},
           "seed": 0, **QUIET}
    path = folder / "seq.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def run(folder: Path, scenario: dict, **kwargs: dict) -> tuple[Path, dict]:
    """Run the scenario into ``folder/run``; its folder and results."""
    path = scenario_file(folder, scenario, **kwargs)
    out = folder / "run"
    assert main(["run", str(path), "--out", str(out)]) == 0
    return out, json.loads((out / "results.json").read_text())


def linear_system(sequences: int, steps: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Inputs ``[N, T]`` and outputs of ``h_t = 0.8 h_{t-1} + x_t``, ``y_t = 0.5 h_t``."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(sequences, steps))
    h = np.zeros(sequences)
    y = np.zeros_like(x)
    for t in range(steps):
        h = 0.8 * h + x[:, t]
        y[:, t] = 0.5 * h
    return x, y


def long_table(x: np.ndarray, y: np.ndarray) -> list[list[object]]:
    """Rows ``id, time, x, y`` of ``[N, T]`` arrays."""
    return [[f"s{n}", t, f"{x[n, t]:.6f}", f"{y[n, t]:.6f}"] for n in range(x.shape[0]) for t in range(x.shape[1])]


# --------------------------------------------------------------------------- learning
def test_a_linear_cell_learns_a_linear_system_written_to_csv(tmp_path):
    x, y = linear_system(12, 40)
    write_csv(tmp_path / "lin.csv", ["id", "t", "x", "y"], long_table(x, y))
    _, results = run(tmp_path, {"path": str(tmp_path / "lin.csv"), "sequence_id": "id", "time": "t",
                                "inputs": ["x"], "targets": ["y"], "normalise": False},
                     model={"cell": {"type": "linear", "hidden_size": 1, "output_size": 1}, "head": "none"},
                     training={"steps": 150, "lr": 0.05})
    assert results["test"]["nrmse"] < 0.05, results["test"]
    assert results["baselines"]["test"]["train_mean"]["nrmse"] > 0.9


def test_a_separable_classification_is_learned(tmp_path):
    rng = np.random.default_rng(1)
    rows = []
    for n in range(48):
        label = "up" if n % 2 else "down"
        for t, value in enumerate(rng.normal(1.0 if n % 2 else -1.0, 0.5, size=8)):
            rows.append([f"s{n}", t, f"{value:.5f}", label])
    write_csv(tmp_path / "cls.csv", ["id", "t", "x", "label"], rows)
    _, results = run(tmp_path, {"path": str(tmp_path / "cls.csv"), "sequence_id": "id", "inputs": ["x"],
                                "targets": ["label"], "task": "classification"},
                     model={"cell": {"type": "vanilla", "hidden_size": 8}}, training={"steps": 60, "lr": 0.05})
    assert results["classes"] == ["down", "up"]
    assert results["test"]["accuracy"] >= 0.9 and results["test"]["macro_f1"] >= 0.9
    majority = results["baselines"]["test"]["majority_class"]["accuracy"]
    assert majority <= 0.75


# --------------------------------------------------------------------------- normalisation and splits
def offset_table(tmp_path: Path) -> Path:
    """Six sequences whose levels differ (sequence k sits near k), so split statistics differ from global ones."""
    rng = np.random.default_rng(2)
    rows = [[f"s{k}", t, f"{k + rng.normal():.6f}", f"{2 * k + rng.normal():.6f}"] for k in range(6) for t in range(20)]
    return write_csv(tmp_path / "off.csv", ["id", "t", "x", "y"], rows)


def test_normalisation_is_numpys_on_the_training_split_only(tmp_path):
    path = offset_table(tmp_path)
    out, results = run(tmp_path, {"path": str(path), "sequence_id": "id", "inputs": ["x"], "targets": ["y"],
                                  "split": {"by": "sequence", "train": 0.5, "val": 0.25, "test": 0.25}})
    data = np.loadtxt(path, delimiter=",", skiprows=1, usecols=(2, 3))
    ids = np.array([row.split(",")[0] for row in path.read_text().splitlines()[1:]])
    train = np.isin(ids, results["split"]["train"])
    stats = json.loads((out / "normalisation.json").read_text())
    assert stats == results["normalisation"]
    assert stats["inputs"]["x"]["mean"] == pytest.approx(data[train, 0].mean(), abs=1e-9)
    assert stats["inputs"]["x"]["std"] == pytest.approx(data[train, 0].std(), abs=1e-9)
    assert stats["targets"]["y"]["mean"] == pytest.approx(data[train, 1].mean(), abs=1e-9)
    assert stats["targets"]["y"]["std"] == pytest.approx(data[train, 1].std(), abs=1e-9)
    assert abs(stats["inputs"]["x"]["mean"] - data[:, 0].mean()) > 0.1  # the held-out sequences were left out


def test_a_sequence_split_shares_out_every_sequence_once(tmp_path):
    path = offset_table(tmp_path)
    _, results = run(tmp_path, {"path": str(path), "sequence_id": "id", "inputs": ["x"], "targets": ["y"],
                                "split": {"by": "sequence", "train": 0.5, "val": 0.25, "test": 0.25}})
    parts = [set(results["split"][name]) for name in ("train", "val", "test")]
    assert parts[0].isdisjoint(parts[1]) and parts[0].isdisjoint(parts[2]) and parts[1].isdisjoint(parts[2])
    assert set().union(*parts) == {f"s{k}" for k in range(6)}


def test_another_split_seed_shuffles_differently():
    params = {"path": "unused.csv", "inputs": ["x"], "targets": ["y"]}
    from statesim.builtin.sequences.shaping import split_names

    assert split_names(20, (0.6, 0.2, 0.2), 0) != split_names(20, (0.6, 0.2, 0.2), 1)
    assert split_names(20, (0.6, 0.2, 0.2), 3) == split_names(20, (0.6, 0.2, 0.2), 3)
    assert SequencesParams(**params).split.by == "sequence"


@pytest.mark.parametrize("horizon", [1, 3])
def test_a_time_split_keeps_every_window_inside_its_block(tmp_path, horizon):
    x, y = linear_system(2, 97)
    path = write_csv(tmp_path / "lin.csv", ["id", "t", "x", "y"], long_table(x, y))
    scenario = Sequences(SequencesParams(path=str(path), sequence_id="id", inputs=["x"], targets=["y"],
                                         task="forecast", horizon=horizon, window=8, stride=3,
                                         split={"by": "time", "train": 0.6, "val": 0.2, "test": 0.2}))
    recordings, classes = scenario.load()
    pieces = scenario.pieces(recordings, classes, seed=0)
    blocks = dict(zip(("train", "val", "test"), time_blocks(97, (0.6, 0.2, 0.2))))
    assert blocks == {"train": (0, 58), "val": (58, 78), "test": (78, 97)}
    for name, (a, b) in blocks.items():
        assert pieces[name]
        for piece in pieces[name]:
            # the window reads steps [start, start + len) and predicts up to start + len - 1 + horizon
            assert a <= piece.start and piece.start + len(piece.targets) + horizon <= b


def test_the_window_count_is_the_closed_form():
    piece = Piece("a", np.zeros((103, 1)), np.zeros((103, 1)), 0)
    cut = windows(piece, 10, 7)
    assert len(cut) == (103 - 10) // 7 + 1 == 14
    assert [w.start for w in cut] == list(range(0, 103 - 10 + 1, 7))
    assert all(len(w.inputs) == 10 for w in cut)
    assert windows(piece, 200, 7) == [piece]


def test_the_scenario_counts_windows_per_split(tmp_path):
    x, y = linear_system(6, 50)
    path = write_csv(tmp_path / "lin.csv", ["id", "t", "x", "y"], long_table(x, y))
    _, results = run(tmp_path, {"path": str(path), "sequence_id": "id", "inputs": ["x"], "targets": ["y"],
                                "window": 12, "stride": 5, "split": {"train": 0.5, "val": 0.25, "test": 0.25}})
    per_sequence = (50 - 12) // 5 + 1
    counts = {name: len(results["split"][name]) for name in ("train", "val", "test")}
    assert counts == {"train": 3, "val": 1, "test": 2}  # round(6 * [0.5, 0.75, 1.0]) = [3, 4, 6]
    assert results["sizes"] == {**{k: v * per_sequence for k, v in counts.items()}, "sequences": 6}


# --------------------------------------------------------------------------- baselines
def test_forecast_baselines_are_the_hand_computed_ones(tmp_path):
    rng = np.random.default_rng(4)
    y = np.cumsum(rng.normal(size=100))
    path = write_csv(tmp_path / "walk.csv", ["y"], [[f"{v:.6f}"] for v in y])
    y = np.loadtxt(path, skiprows=1)
    _, results = run(tmp_path, {"path": str(path), "targets": ["y"], "task": "forecast", "horizon": 2,
                                "split": {"by": "time", "train": 0.6, "val": 0.2, "test": 0.2}})
    truth, last = y[82:100], y[80:98]  # test block [80, 100): predict y[t + 2] from y[<= t]
    base = results["baselines"]["test"]
    assert base["persistence"]["mse"] == pytest.approx(np.mean((last - truth) ** 2))
    assert base["persistence"]["mae"] == pytest.approx(np.mean(np.abs(last - truth)))
    train_mean = y[2:60].mean()  # the training targets: y[2:60] of the train block [0, 60)
    assert base["train_mean"]["mse"] == pytest.approx(np.mean((train_mean - truth) ** 2))
    assert base["train_mean"]["nrmse"] == pytest.approx(np.sqrt(np.mean((train_mean - truth) ** 2)) / truth.std())
    assert results["horizon"] == 2 and set(results["test"]) == {"mse", "mae", "nrmse"}


def test_classification_scores_are_accuracy_and_macro_f1():
    truth = np.array([0, 0, 1, 1, 2])
    chosen = np.array([0, 1, 1, 1, 0])
    scores = scoring.classification_scores(chosen, truth, 3)
    f1 = [2 * 1 / (2 * 1 + 1 + 1), 2 * 2 / (2 * 2 + 1 + 0), 0.0]
    assert scores == {"accuracy": pytest.approx(3 / 5), "macro_f1": pytest.approx(np.mean(f1))}


# --------------------------------------------------------------------------- readers
def test_npz_gives_the_arrays_of_the_csv(tmp_path):
    x, y = linear_system(3, 15)
    path = write_csv(tmp_path / "lin.csv", ["id", "t", "x", "y"], long_table(x, y))
    from_csv = reading.read(path, Columns(["x"], ["y"], "t", "id"))
    x6, y6 = np.round(x, 6), np.round(y, 6)
    np.savez(tmp_path / "lin.npz", inputs=x6[..., None], targets=y6[..., None], input_names=np.array(["x"]),
             target_names=np.array(["y"]))
    from_npz = reading.read(tmp_path / "lin.npz", Columns(["x"], ["y"]))
    assert len(from_csv) == len(from_npz) == 3
    for a, b in zip(from_csv, from_npz):
        np.testing.assert_allclose(a.inputs, b.inputs, atol=1e-12)
        np.testing.assert_allclose(a.targets, b.targets, atol=1e-12)


def test_parquet_gives_the_arrays_of_the_csv(tmp_path):
    pa = pytest.importorskip("pyarrow")  # in the dev extra, so CI runs this
    import pyarrow.parquet as pq

    x, y = linear_system(3, 15)
    rows = long_table(x, y)
    path = write_csv(tmp_path / "lin.csv", ["id", "t", "x", "y"], rows)
    table = pa.table({"id": [r[0] for r in rows], "t": [float(r[1]) for r in rows],
                      "x": [float(r[2]) for r in rows], "y": [float(r[3]) for r in rows]})
    pq.write_table(table, tmp_path / "lin.parquet")
    columns = Columns(["x"], ["y"], "t", "id")
    from_csv, from_parquet = reading.read(path, columns), reading.read(tmp_path / "lin.parquet", columns)
    assert [r.name for r in from_csv] == [r.name for r in from_parquet] == ["s0", "s1", "s2"]
    for a, b in zip(from_csv, from_parquet):
        np.testing.assert_array_equal(a.inputs, b.inputs)
        np.testing.assert_array_equal(a.targets, b.targets)
        np.testing.assert_array_equal(a.time, b.time)
    pq.write_table(pa.table({"x": [1.0, None, 3.0], "y": [1.0, 2.0, 3.0]}), tmp_path / "hole.parquet")
    with pytest.raises(DataError, match=r"hole.parquet, row 2, column 'x': the value is missing"):
        reading.read(tmp_path / "hole.parquet", Columns(["x"], ["y"]))
    pq.write_table(pa.table({"x": ["a", "b"], "y": [1.0, 2.0]}), tmp_path / "text.parquet")
    with pytest.raises(DataError, match=r"text.parquet, row 1, column 'x': 'a' is not a number"):
        reading.read(tmp_path / "text.parquet", Columns(["x"], ["y"]))


def test_a_folder_of_files_is_one_sequence_per_file(tmp_path):
    from statesim.datafiles import file_sha256

    x, y = linear_system(3, 15)
    rows = long_table(x, y)
    single = write_csv(tmp_path / "all.csv", ["id", "t", "x", "y"], rows)
    folder = tmp_path / "runs"
    folder.mkdir()
    for n in range(3):
        write_csv(folder / f"s{n}.csv", ["t", "x", "y"], [r[1:] for r in rows if r[0] == f"s{n}"])
    (folder / "notes.txt").write_text("ignored", encoding="utf-8")
    from_file = reading.read(single, Columns(["x"], ["y"], "t", "id"))
    from_folder = reading.read(folder, Columns(["x"], ["y"], "t"))
    assert [r.name for r in from_folder] == ["s0", "s1", "s2"]
    for a, b in zip(from_file, from_folder):
        np.testing.assert_array_equal(a.inputs, b.inputs)
        np.testing.assert_array_equal(a.targets, b.targets)
    before = file_sha256(str(folder))
    write_csv(folder / "s1.csv", ["t", "x", "y"], [[0, 1.0, 2.0]])
    assert file_sha256(str(folder)) not in (before, "missing")  # a resume refuses a changed folder
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="holds no data files"):
        reading.read(empty, Columns(["x"], ["y"]))


def test_a_folder_of_npy_tables_gives_the_arrays_of_the_csv(tmp_path):
    """One .npy table [T, C] per recording, columns named by their index (`inputs: [1]` in YAML reads as "1"),
    a NaN filled by the missing policy, and a non-numeric or 3-D array refused by name."""
    x, y = linear_system(3, 15)
    path = write_csv(tmp_path / "lin.csv", ["id", "t", "x", "y"], long_table(x, y))
    from_csv = reading.read(path, Columns(["x"], ["y"], "t", "id"))
    folder = tmp_path / "tables"
    folder.mkdir()
    for n, recording in enumerate(from_csv):
        np.save(folder / f"s{n}.npy", np.column_stack([recording.time, recording.inputs, recording.targets]))
    params = SequencesParams(path=str(folder), inputs=[1], targets=[2], time=0)
    assert (params.inputs, params.targets, params.time) == (["1"], ["2"], "0")
    from_npy = reading.read(folder, Columns(params.inputs, params.targets, params.time))
    assert [r.name for r in from_npy] == ["s0", "s1", "s2"]
    for a, b in zip(from_csv, from_npy):
        np.testing.assert_array_equal(a.inputs, b.inputs)
        np.testing.assert_array_equal(a.targets, b.targets)
    gap = np.array([[0.0, 1.0], [1.0, np.nan], [2.0, 3.0]])
    np.save(tmp_path / "gap.npy", gap)
    with pytest.raises(DataError, match=r"row 2, column '1'"):
        reading.read(tmp_path / "gap.npy", Columns(["0"], ["1"]))
    filled = reading.read(tmp_path / "gap.npy", Columns(["0"], ["1"], missing="ffill"))[0]
    np.testing.assert_array_equal(filled.targets[:, 0], [1.0, 1.0, 3.0])
    np.save(tmp_path / "cube.npy", np.zeros((2, 3, 4)))
    with pytest.raises(DataError, match=r"numeric table \[T, C\]"):
        reading.read(tmp_path / "cube.npy", Columns(["0"], ["1"]))
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(DataError, match="without unpickling"):
        reading.read(tmp_path / "objects.npy", Columns(["0"], ["1"]))


def test_npz_lengths_make_ragged_sequences(tmp_path):
    np.savez(tmp_path / "r.npz", inputs=np.ones((2, 5, 1)), targets=np.ones((2, 5, 1)), lengths=np.array([5, 3]))
    recordings = reading.read(tmp_path / "r.npz", Columns([], []))
    assert [r.steps for r in recordings] == [5, 3]


def test_an_npz_that_needs_unpickling_is_refused(tmp_path):
    np.savez(tmp_path / "p.npz", inputs=np.array([{"a": 1}], dtype=object), targets=np.zeros((1, 1, 1)))
    with pytest.raises(DataError, match="without unpickling"):
        reading.read(tmp_path / "p.npz", Columns([], []))


def test_missing_values_are_filled_by_the_declared_policy():
    values = np.array([[1.0, 5.0], [np.nan, 6.0], [3.0, np.nan], [np.nan, np.nan]])
    filled = reading.fill_missing(values, "ffill", Path("f.csv"), [2, 3, 4, 5], ["a", "b"])
    np.testing.assert_array_equal(filled, [[1, 5], [1, 6], [3, 6], [3, 6]])
    np.testing.assert_array_equal(reading.fill_missing(values, "zero", Path("f.csv"), [2, 3, 4, 5], ["a", "b"]),
                                  np.nan_to_num(values))


# --------------------------------------------------------------------------- bad data, through the CLI
GOOD = [["s0", 0, 1.0, 2.0], ["s0", 1, 1.5, 2.5], ["s1", 0, 0.5, 1.0], ["s1", 1, 0.7, 1.1]]


@pytest.mark.parametrize("case, expected", [
    ("ragged", ["bad.csv, row 3:", "3 cells, but the header names 4"]),
    ("text", ["bad.csv, row 4, column 'y'", "'fast' is not a number"]),
    ("empty", ["bad.csv: the file is empty"]),
    ("header_only", ["no data rows"]),
    ("column", ["the column 'yy'", "scenario.targets", "Did you mean 'y'?"]),
    ("nan", ["bad.csv, row 2, column 'x'", "missing", "scenario.missing: ffill"]),
    ("inf", ["bad.csv, row 3, column 'x'", "inf"]),
    ("time", ["bad.csv, row 3, column 't'", "time does not increase"]),
    ("nofile", ["nothing.csv: no such file"]),
])
def test_bad_data_is_refused_by_file_row_and_column_with_exit_2(tmp_path, capsys, case, expected):
    rows = [list(r) for r in GOOD]
    header, targets = ["id", "t", "x", "y"], ["y"]
    if case == "ragged":
        rows[1] = rows[1][:3]
    elif case == "text":
        rows[2][3] = "fast"
    elif case == "nan":
        rows[0][2] = ""
    elif case == "inf":
        rows[1][2] = "inf"
    elif case == "time":
        rows[1][1] = 0
    elif case == "column":
        targets = ["yy"]
    elif case == "header_only":
        rows = []
    path = write_csv(tmp_path / "bad.csv", header, rows)
    if case == "empty":
        path.write_text("", encoding="utf-8")
    scenario = {"path": str(tmp_path / ("nothing.csv" if case == "nofile" else "bad.csv")), "sequence_id": "id",
                "time": "t", "inputs": ["x"], "targets": targets}
    yaml_path = scenario_file(tmp_path, scenario)
    for command in (["validate", str(yaml_path)], ["run", str(yaml_path), "--out", str(tmp_path / "r")]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "Traceback" not in err
        for text in expected:
            assert text in err, err


def test_keys_that_do_not_fit_the_task_are_config_errors(tmp_path, capsys):
    yaml_path = scenario_file(tmp_path, {"path": "x.csv", "inputs": ["x"]})
    assert main(["validate", str(yaml_path)]) == 2
    assert "name the target column(s)" in capsys.readouterr().err


def test_probes_build_the_model_on_the_datas_sizes(tmp_path, capsys):
    path = write_csv(tmp_path / "ok.csv", ["id", "t", "x", "y"], GOOD)
    forecast = Sequences(SequencesParams(path=str(path), sequence_id="id", inputs=["x"], targets=["y"],
                                         task="forecast"))
    probe, = forecast.probes(None)  # type: ignore[arg-type]
    assert probe.batch.inputs.shape[-1] == 2 and probe.batch.targets.shape[-1] == 1  # reads x and y, predicts y
    labelled = write_csv(tmp_path / "lab.csv", ["id", "x", "label"], [["a", 1, "3"], ["b", 2, "10"], ["c", 0, "3"]])
    classify = Sequences(SequencesParams(path=str(labelled), sequence_id="id", inputs=["x"], targets=["label"],
                                         task="classification"))
    probe, = classify.probes(None)  # type: ignore[arg-type]
    assert probe.batch.targets.shape[-1] == 2 and classify.load()[1] == ["3", "10"]  # numeric labels sort as numbers
    ok = scenario_file(tmp_path, {"path": str(path), "sequence_id": "id", "inputs": ["x"], "targets": ["y"],
                                  "task": "forecast"})
    assert main(["validate", str(ok)]) == 0


def test_a_run_writes_the_prediction_plot_and_the_scaling(tmp_path):
    x, y = linear_system(4, 20)
    path = write_csv(tmp_path / "lin.csv", ["id", "t", "x", "y"], long_table(x, y))
    doc = scenario_file(tmp_path, {"path": str(path), "sequence_id": "id", "time": "t", "inputs": ["x"],
                                   "targets": ["y"], "task": "forecast", "plots": 1})
    assert main(["run", str(doc), "--out", str(tmp_path / "r"), "--set", "output.plots=true"]) == 0
    assert (tmp_path / "r" / "plots" / "forecast.png").is_file()
    assert (tmp_path / "r" / "normalisation.json").is_file()
    assert Scaling.fit([Piece("a", np.ones((3, 1)), np.ones((3, 1)), 0)], False).input_std.tolist() == [1.0]


def test_embed_and_export_apply_the_training_z_scores_themselves(tmp_path):
    """The z-scores are part of the model: statesim.embed steps raw data to raw predictions, the export too."""
    from statesim.embed import load
    from statesim.export import export_model, verify_export
    from statesim.runfolder import load_model

    x, y = linear_system(4, 30, seed=5)
    x, y = 3.0 + 2.0 * x, 1.0 + y  # far from zero mean and unit std, so a missing scaling would show
    path = write_csv(tmp_path / "lin.csv", ["id", "t", "x", "y"], long_table(x, y))
    out, results = run(tmp_path, {"path": str(path), "sequence_id": "id", "inputs": ["x"], "targets": ["y"],
                                  "split": {"train": 0.5, "val": 0.25, "test": 0.25}}, training={"steps": 5})
    test, = results["split"]["test"]
    xt, yt = np.round(x[int(test[1:])], 6), np.round(y[int(test[1:])], 6)
    for fast in (True, False):  # the NumPy kernel and the torch step
        model = load(out, fast=fast)
        model.reset(batch_size=1)
        predicted = np.array([model.step([v])[0] for v in xt])
        assert np.mean((predicted - yt) ** 2) == pytest.approx(results["test"]["mse"], rel=1e-4)
    scale = json.loads((out / "normalisation.json").read_text())
    trained, _ = load_model(out)
    assert trained.scaling is not None
    assert trained.scaling.input_mean.tolist() == pytest.approx([scale["inputs"]["x"]["mean"]])
    assert trained.scaling.output_std.tolist() == pytest.approx([scale["targets"]["y"]["std"]])
    sidecar = export_model(trained, tmp_path / "step.pt", "torchscript")
    assert verify_export(sidecar, trained, steps=10) < 1e-4


def test_without_normalise_the_model_holds_no_scaling(tmp_path):
    from statesim.runfolder import load_model

    x, y = linear_system(4, 10)
    path = write_csv(tmp_path / "lin.csv", ["id", "t", "x", "y"], long_table(x, y))
    out, results = run(tmp_path, {"path": str(path), "sequence_id": "id", "inputs": ["x"], "targets": ["y"],
                                  "normalise": False})
    assert load_model(out)[0].scaling is None and "normalisation" not in results
    assert not (out / "normalisation.json").exists()


@pytest.mark.parametrize("scaling, ok", [
    ({"input_mean": [0.5], "input_std": [2.0], "output_mean": None, "output_std": None}, True),
    ({"input_mean": [0.5], "input_std": [0.0]}, False),  # a std of 0 would divide by zero
    ({"input_mean": [float("nan")]}, False),
    ({"input_mean": "0.5"}, False),
    ({"shift": [1.0]}, False),
])
def test_a_checkpoint_sidecar_with_damaged_scaling_is_refused(scaling, ok):
    from statesim.runfolder import _scaling_ok

    assert _scaling_ok(scaling) is ok


@pytest.mark.slow
def test_the_shipped_csv_example_beats_its_baseline(tmp_path, monkeypatch):
    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)  # the file names its data relative to the repository root
    out = tmp_path / "run"
    assert main(["run", "scenarios/sequences_csv.yaml", "--out", str(out), "--set", "training.steps=150",
                 "--set", "output.plots=false", "--set", "output.progress=false"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["split"]["test"] == ["run1"] and results["sizes"]["sequences"] == 6
    assert results["test"]["nrmse"] < 0.3 < results["baselines"]["test"]["train_mean"]["nrmse"]


# --------------------------------------------------------------------------- data a package ships
STOCKS = {"package": "matplotlib", "resource": "mpl-data/sample_data/Stocks.csv"}


def stocks_file() -> Path:
    """matplotlib's Stocks.csv, found without statesim (the independent truth of where it lies)."""
    import matplotlib

    return Path(matplotlib.__file__).parent / "mpl-data" / "sample_data" / "Stocks.csv"


def test_a_package_resource_resolves_to_the_file_and_is_hashed():
    import hashlib

    from statesim.datafiles import file_sha256, resolve

    params = SequencesParams(path=STOCKS, targets=["^GSPC"], task="forecast")
    assert params.path == "package:matplotlib/mpl-data/sample_data/Stocks.csv"
    assert resolve(params.path).samefile(stocks_file())
    assert file_sha256(params.path) == hashlib.sha256(stocks_file().read_bytes()).hexdigest()


@pytest.mark.parametrize("path, expected", [
    ("package:no_such_package_xyz/data.csv", ["no installed package 'no_such_package_xyz'", "pip install"]),
    ("package:matplotlib/mpl-data/nothing.csv", ["ships no file 'mpl-data/nothing.csv'", "resource key"]),
])
def test_a_missing_package_or_resource_is_refused(path, expected):
    from statesim.datafiles import PackageDataError, file_sha256, resolve

    with pytest.raises(PackageDataError) as error:
        resolve(path)
    assert all(text in str(error.value) for text in expected)
    assert file_sha256(path) == "missing"


def test_a_mapping_with_other_keys_is_a_config_error():
    with pytest.raises(ValueError, match="exactly the keys package and resource"):
        SequencesParams(path={"package": "matplotlib"}, targets=["y"])


def test_comments_iso_dates_and_drop_read_the_stocks_file_as_csv_does():
    with stocks_file().open(newline="") as handle:
        rows = [row for row in csv.reader(line for line in handle if not line.startswith("#"))]
    header, body = rows[0], rows[1:]
    a, b = header.index("^GSPC"), header.index("AMZN")  # AMZN starts in 1997: leading missing cells
    kept = [row for row in body if row and row[a].strip() and row[b].strip()]
    columns = Columns(["AMZN"], ["^GSPC"], "Date", missing="drop")
    rec, = reading.read(stocks_file(), columns)
    np.testing.assert_array_equal(rec.targets[:, 0], [float(row[a]) for row in kept])
    np.testing.assert_array_equal(rec.inputs[:, 0], [float(row[b]) for row in kept])
    assert rec.time is not None and rec.time.dtype.kind == "M"
    assert str(rec.time[0].astype("datetime64[D]")) == kept[0][0]
    with pytest.raises(DataError, match=r"row 3, column 'AMZN'.*missing: drop"):
        reading.read(stocks_file(), Columns(["AMZN"], ["^GSPC"], "Date", missing="ffill"))


def test_dates_that_go_back_and_text_that_is_no_date_are_refused(tmp_path):
    file = tmp_path / "d.csv"
    file.write_text("# a comment\nday,x\n2020-01-02,1\n# another\n2020-01-01,2\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"row 5, column 'day': time does not increase"):
        reading.read(file, Columns(["x"], ["x"], "day"))
    file.write_text("day,x\n2020-01-01,1\nMonday,2\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"row 3, column 'day': 'Monday' is neither a number nor an ISO date"):
        reading.read(file, Columns(["x"], ["x"], "day"))
    file.write_text("#x,y\nday,x\n2020-01-01,1\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"header \(#x, y\)"):  # comment: null reads '#x,y' as the header
        reading.read(file, Columns(["x"], ["x"], "day", comment=None))


@pytest.mark.slow
def test_the_shipped_stocks_example_reports_persistence_from_the_file(tmp_path):
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "run"
    assert main(["run", str(root / "scenarios/sequences_stocks.yaml"), "--out", str(out), "--set",
                 "training.steps=20", "--set", "output.plots=false", "--set", "output.progress=false"]) == 0
    results = json.loads((out / "results.json").read_text())
    with stocks_file().open(newline="") as handle:
        rows = [row for row in csv.reader(line for line in handle if not line.startswith("#"))]
    a, b = rows[0].index("^GSPC"), rows[0].index("^IXIC")
    y = np.array([float(row[a]) for row in rows[1:] if row and row[a].strip() and row[b].strip()])
    start, end = results["split"]["test"]["0"]
    test = y[start:end]
    assert results["baselines"]["test"]["persistence"]["mse"] == pytest.approx(np.mean(np.diff(test) ** 2))
    assert "package:matplotlib/mpl-data/sample_data/Stocks.csv" in json.loads((out / "run.json").read_text())[
        "data_files"]


# --------------------------------------------------------------------------- multi-step forecasts (outputs: path)
def ar1(sequences: int, steps: int, a: float = 0.9, seed: int = 0) -> np.ndarray:
    """``[N, T]`` of the noise-free ``x_{t+1} = a x_t`` from random starts (so ``x_{t+h} = a^h x_t``)."""
    start = np.random.default_rng(seed).uniform(1.0, 3.0, size=sequences)
    return start[:, None] * a ** np.arange(steps)[None, :]


def test_a_path_piece_holds_the_next_h_values_horizon_major():
    from statesim.builtin.sequences.reading import Recording
    from statesim.builtin.sequences.shaping import task_piece

    x = ar1(1, 10)[0]
    y = np.stack([x, 10 * x], axis=1)  # two target columns, to check the order of the H blocks
    rec = Recording("r", np.zeros((10, 0)), y)
    piece = task_piece(rec, 0, 10, "forecast", 3, [], path=True)
    assert piece is not None and piece.targets.shape == (7, 6) and piece.inputs.shape == (7, 2)
    hand = np.array([[y[t + 1, 0], y[t + 1, 1], y[t + 2, 0], y[t + 2, 1], y[t + 3, 0], y[t + 3, 1]]
                     for t in range(7)])
    np.testing.assert_array_equal(piece.targets, hand)
    np.testing.assert_allclose(piece.targets[:, ::2], x[:7, None] * 0.9 ** np.arange(1, 4), rtol=1e-12)
    np.testing.assert_array_equal(piece.persistence, np.tile(y[:7], (1, 3)))
    scaling = Scaling.fit([piece], False, repeat=3)  # each variable's statistics, repeated per horizon step
    np.testing.assert_allclose(scaling.target_mean, np.tile(piece.targets.reshape(21, 2).mean(0), 3))


def test_a_linear_model_learns_the_ar1_path_and_scores_every_step_ahead(tmp_path):
    horizon, a = 3, 0.9
    x = ar1(10, 12, a)
    rows = [[f"s{n}", t, f"{x[n, t]:.9f}"] for n in range(10) for t in range(12)]
    path = write_csv(tmp_path / "ar.csv", ["id", "t", "x"], rows)
    _, results = run(tmp_path, {"path": str(path), "sequence_id": "id", "time": "t", "targets": ["x"],
                                "task": "forecast", "horizon": horizon, "outputs": "path", "normalise": False},
                       model={"cell": {"type": "linear", "hidden_size": 1, "output_size": horizon}, "head": "none"},
                       training={"steps": 600, "lr": 0.05})
    by_h = results["by_horizon"]["test"]
    assert [row["h"] for row in by_h] == [1, 2, 3] and results["outputs"] == "path"
    test = np.stack([np.round(x[int(name[1:])], 9) for name in results["split"]["test"]])
    for h, row in enumerate(by_h, start=1):
        truth, last = test[:, h:12 - horizon + h], test[:, :12 - horizon]
        assert row["persistence"]["mse"] == pytest.approx(np.mean((truth - last) ** 2), rel=1e-9)
        assert row["model"]["mse"] < 0.02 * row["persistence"]["mse"], row
    assert results["baselines"]["test"]["persistence"]["mse"] == pytest.approx(
        np.mean([row["persistence"]["mse"] for row in by_h]))  # the overall score is the mean over the steps


def test_outputs_path_needs_a_forecast():
    with pytest.raises(ValueError, match="outputs: path is a forecast's path"):
        SequencesParams(path="a.csv", inputs=["x"], targets=["y"], outputs="path")


def test_the_fan_plot_is_written_from_origins_whose_path_fits(tmp_path):
    assert scoring.fan_origins(10, 3, 4) == [0, 2, 5, 7] and scoring.fan_origins(2, 3, 4) == []
    x = ar1(4, 12)
    path = write_csv(tmp_path / "ar.csv", ["id", "x"], [[f"s{n}", x[n, t]] for n in range(4) for t in range(12)])
    doc = scenario_file(tmp_path, {"path": str(path), "sequence_id": "id", "targets": ["x"], "task": "forecast",
                                   "horizon": 4, "outputs": "path", "plots": 1})
    assert main(["run", str(doc), "--out", str(tmp_path / "r"), "--set", "output.plots=true"]) == 0
    assert (tmp_path / "r" / "plots" / "forecast_fan.png").is_file()
    assert (tmp_path / "r" / "plots" / "forecast.png").is_file()


def test_a_path_model_embeds_and_exports_with_its_scaling_repeated_per_step(tmp_path):
    from statesim.embed import load
    from statesim.export import export_model, verify_export
    from statesim.runfolder import load_model

    horizon = 3
    x = 5.0 + ar1(6, 12)  # far from zero mean and unit std, so a missing or unrepeated scaling would show
    rows = [[f"s{n}", t, f"{x[n, t]:.9f}"] for n in range(6) for t in range(12)]
    path = write_csv(tmp_path / "ar.csv", ["id", "t", "x"], rows)
    out, results = run(tmp_path, {"path": str(path), "sequence_id": "id", "targets": ["x"], "task": "forecast",
                                  "horizon": horizon, "outputs": "path",
                                  "split": {"train": 0.5, "val": 0.17, "test": 0.33}}, training={"steps": 5})
    trained, _ = load_model(out)
    assert trained.scaling is not None and trained.scaling.output_mean is not None
    scale = json.loads((out / "normalisation.json").read_text())["targets"]["x"]
    assert trained.scaling.output_mean.tolist() == pytest.approx([scale["mean"]] * horizon)
    seen = np.stack([np.round(x[int(name[1:])], 9) for name in results["split"]["test"]])
    truth = np.stack([seen[:, h:12 - horizon + h] for h in range(1, horizon + 1)], axis=-1)  # [N, T, H]
    for fast in (True, False):
        model = load(out, fast=fast)
        predicted = []
        for series in seen:
            model.reset(batch_size=1)
            predicted.append([model.step([v]) for v in series[:12 - horizon]])
        assert np.mean((np.array(predicted) - truth) ** 2) == pytest.approx(results["test"]["mse"], rel=1e-4)
    sidecar = export_model(trained, tmp_path / "step.pt", "torchscript")
    assert verify_export(sidecar, trained, steps=10) < 1e-4
