"""Reading a user's recordings (CSV, Parquet, ``.npy``, ``.npz``) into named sequences, refusing bad data by
file, row and column."""
from __future__ import annotations

import csv
import datetime
import difflib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np

from statesim.errors import StatesimError


class DataError(StatesimError):
    """A data file the ``sequences`` scenario reads is missing, malformed or holds values it cannot use."""


@dataclass
class Recording:
    """One sequence: ``inputs [T, F]``, ``targets [T, O]`` (float) and ``labels [T]`` (str, classification)."""

    name: str
    inputs: np.ndarray
    targets: np.ndarray
    labels: list[str] | None = None
    time: np.ndarray | None = None

    @property
    def steps(self) -> int:
        return self.inputs.shape[0]


def _suggest(name: str, names: list[str]) -> str:
    close = difflib.get_close_matches(name, names, n=1)
    return f" Did you mean '{close[0]}'?" if close else ""


def _column_index(file: Path, header: list[str], name: str, key: str) -> int:
    if name not in header:
        raise DataError(f"{file}: the column '{name}' named in scenario.{key} is not in the file's header "
                        f"({', '.join(header)}).{_suggest(name, header)} Fix scenario.{key} or the header row.")
    return header.index(name)


def _number(file: Path, line: int, column: str, cell: str) -> float:
    """A cell as a float; empty or NaN is missing (NaN), inf is refused."""
    text = cell.strip()
    if text == "" or text.lower() in ("nan", "na"):
        return math.nan
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{file}, row {line}, column '{column}': '{text}' is not a number. Fix the cell (a decimal "
                        f"point, no units), or leave it empty and set scenario.missing: ffill or zero.") from None
    if math.isinf(value):
        raise DataError(f"{file}, row {line}, column '{column}': the value is {text}, which no model can learn "
                        f"from. Replace it with a finite number or leave the cell empty (scenario.missing).")
    return value


def fill_missing(values: np.ndarray, policy: str, file: Path, rows: list[int], columns: list[str]) -> np.ndarray:
    """Missing values (NaN) of ``values [T, C]`` refused (``error``) or filled (``ffill``, ``zero``)."""
    holes = np.isnan(values)
    if not holes.any():
        return values
    row, col = map(int, np.argwhere(holes)[0])
    if policy == "error":
        raise DataError(f"{file}, row {rows[row]}, column '{columns[col]}': the value is missing (empty or NaN; "
                        f"{int(holes.sum())} missing in all). Fill it in, or set scenario.missing: ffill (repeat "
                        f"the last value) or zero.")
    if policy == "zero":
        return np.where(holes, 0.0, values)
    if policy == "drop":
        raise DataError(f"{file}, row {rows[row]}, column '{columns[col]}': the value is missing, and "
                        f"scenario.missing: drop removes rows of a table (CSV, Parquet) only. Fill the array in, or "
                        f"set scenario.missing: ffill or zero.")
    filled = values.copy()
    for c in range(filled.shape[1]):
        missing = np.isnan(filled[:, c])
        if missing[0]:
            raise DataError(f"{file}, row {rows[0]}, column '{columns[c]}': the first value of a sequence is "
                            f"missing, so ffill has nothing to repeat (a series that starts later than the "
                            f"others). Fill it in, or use scenario.missing: drop (leave out every row with a "
                            f"missing value) or zero.")
        index = np.where(missing, 0, np.arange(len(missing)))
        filled[:, c] = filled[np.maximum.accumulate(index), c]
    return filled


@dataclass(frozen=True)
class Columns:
    """What to read from a file (the scenario's keys)."""

    inputs: list[str]
    targets: list[str]
    time: str | None = None
    sequence_id: str | None = None
    label_targets: bool = False  # classification: the target column holds class labels (any text)
    missing: str = "error"
    comment: str | None = "#"


def _uncommented(handle: TextIO, comment: str | None) -> Iterator[str]:
    """The file's lines, a comment line blanked (not dropped, so the reader's line numbers stay the file's)."""
    for line in handle:
        yield "\n" if comment and line.lstrip().startswith(comment) else line


def _header(path: Path, reader: Iterator[list[str]]) -> list[str]:
    """The first non-blank row (the column names)."""
    for row in reader:
        if row and any(cell.strip() for cell in row):
            return [name.strip() for name in row]
    raise DataError(f"{path}: the file is empty; a CSV needs a header row naming its columns and at least one "
                    f"data row.")


def read_header(path: Path, comment: str | None = "#") -> list[str]:
    """The header row of a CSV file (what validation checks the column names against)."""
    with _open(path) as handle:
        return _header(path, csv.reader(_uncommented(handle, comment)))


def require_file(path: Path) -> None:
    """Refuse a data path that is not a file, naming the key to fix."""
    if not path.is_file():
        raise DataError(f"{path}: no such file (relative paths are taken from the working directory). Fix "
                        f"scenario.path.")


def _open(path: Path) -> TextIO:
    require_file(path)
    return path.open(newline="", encoding="utf-8-sig")


def read_csv(path: Path, columns: Columns) -> list[Recording]:
    """The recordings of a CSV file: one, or one per value of the ``sequence_id`` column (in file order)."""
    with _open(path) as handle:
        reader = csv.reader(_uncommented(handle, columns.comment))
        header = _header(path, reader)
        rows = []
        for row in reader:
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise DataError(f"{path}, row {reader.line_num}: {len(row)} cells, but the header names "
                                f"{len(header)} columns. Every row needs one cell per column (an empty cell for a "
                                f"missing value).")
            rows.append((reader.line_num, row))
    return _grouped(path, header, rows, columns)


def read_parquet(path: Path, columns: Columns) -> list[Recording]:
    """The recordings of a Parquet file (``pip install 'statesim[parquet]'``); rows are counted from 1."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading Parquet needs pyarrow; pip install 'statesim[parquet]' (or convert the "
                        f"file to .csv or .npz).") from None
    require_file(path)
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises its own types for a damaged file
        raise DataError(f"{path}: not a readable Parquet file ({type(exc).__name__}: {exc}).") from None
    header = [str(name) for name in table.column_names]
    cells = [["" if v is None else str(v) for v in table.column(i).to_pylist()] for i in range(len(header))]
    rows = [(n + 1, [column[n] for column in cells]) for n in range(table.num_rows)]
    return _grouped(path, header, rows, columns)


def read_npy(path: Path, columns: Columns) -> list[Recording]:
    """A ``.npy`` table: a numeric array ``[T, C]`` (``[T]`` is one column) whose columns are named ``"0"`` ..
    ``"C-1"``, read like a CSV of those columns (rows counted from 1; NaN is a missing value)."""
    require_file(path)
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as exc:  # object arrays need pickle, which statesim never unpickles
        raise DataError(f"{path}: the array cannot be read without unpickling ({exc}); save a numeric array "
                        f"(np.save(path, values.astype(float))).") from None
    except OSError as exc:
        raise DataError(f"{path}: not a readable .npy file ({exc}); write it with np.save.") from None
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2 or array.dtype.kind not in "biuf" or array.shape[0] == 0:
        raise DataError(f"{path}: a .npy must hold a numeric table [T, C] (one recording, one column per "
                        f"variable), got {array.dtype} of shape {list(array.shape)}. Save several recordings as "
                        f"one .npy each in a folder, or as a .npz with inputs [N, T, F].")
    header = [str(i) for i in range(array.shape[1])]
    rows = [(t + 1, [repr(float(v)) for v in array[t]]) for t in range(array.shape[0])]
    return _grouped(path, header, rows, columns)


def _grouped(path: Path, header: list[str], rows: list[tuple[int, list[str]]], columns: Columns) -> list[Recording]:
    """Rows (numbered as the user counts them) grouped into recordings by the ``sequence_id`` column."""
    idx_in = [_column_index(path, header, c, "inputs") for c in columns.inputs]
    idx_out = [_column_index(path, header, c, "targets") for c in columns.targets]
    idx_time = None if columns.time is None else _column_index(path, header, columns.time, "time")
    idx_id = None if columns.sequence_id is None else _column_index(path, header, columns.sequence_id, "sequence_id")
    groups: dict[str, list[tuple[int, list[str]]]] = {}
    for line, row in rows:
        groups.setdefault(row[idx_id].strip() if idx_id is not None else "0", []).append((line, row))
    if not groups:
        raise DataError(f"{path}: the file has a header but no data rows; add the recordings below the header.")
    return [_recording(path, header, name, group, columns, idx_in, idx_out, idx_time) for name, group in groups.items()]


def _recording(path: Path, header: list[str], name: str, rows: list[tuple[int, list[str]]], columns: Columns,
               idx_in: list[int], idx_out: list[int], idx_time: int | None) -> Recording:
    if columns.missing == "drop":
        rows = _complete(path, name, rows, idx_in + idx_out + ([] if idx_time is None else [idx_time]))
    lines = [line for line, _ in rows]

    def numbers(indices: list[int]) -> np.ndarray:
        table = [[_number(path, line, header[i], row[i]) for i in indices] for line, row in rows]
        values = np.array(table, dtype=np.float64).reshape(len(rows), len(indices))
        return fill_missing(values, columns.missing, path, lines, [header[i] for i in indices])

    time = None
    if idx_time is not None:
        time = _times(path, header[idx_time], lines, [row[idx_time] for _, row in rows], columns.missing)
        order = time.astype("datetime64[us]").astype(np.int64) if time.dtype.kind == "M" else time
        backwards = np.nonzero(np.diff(order) <= 0)[0]
        if len(backwards):
            raise DataError(f"{path}, row {lines[backwards[0] + 1]}, column '{header[idx_time]}': time does not "
                            f"increase ({time[backwards[0]]} then {time[backwards[0] + 1]}). Sort the rows by time "
                            f"within each sequence (or name each sequence in a sequence_id column).")
    inputs = numbers(idx_in)
    if columns.label_targets:
        labels = [row[idx_out[0]].strip() for _, row in rows]
        empty = [line for line, label in zip(lines, labels) if not label]
        if empty:
            raise DataError(f"{path}, row {empty[0]}, column '{header[idx_out[0]]}': the class label is missing. "
                            f"Every row of a classified sequence needs its label.")
        if len(set(labels)) > 1:
            raise DataError(f"{path}, sequence '{name}' (rows {lines[0]}-{lines[-1]}), column '{header[idx_out[0]]}':"
                            f" the label changes within the sequence ({', '.join(sorted(set(labels))[:4])}). "
                            f"Classification gives one label per sequence; split it with a sequence_id column.")
        return Recording(name, inputs, np.zeros((len(rows), 0)), labels, time)
    return Recording(name, inputs, numbers(idx_out), None, time)


def _missing_cell(cell: str) -> bool:
    return cell.strip().lower() in ("", "nan", "na")


def _complete(path: Path, name: str, rows: list[tuple[int, list[str]]], indices: list[int]) -> list[tuple[int,
                                                                                                         list[str]]]:
    """``missing: drop``: the rows whose cells in the read columns are all present (a series that starts late)."""
    kept = [(line, row) for line, row in rows if not any(_missing_cell(row[i]) for i in indices)]
    if not kept:
        raise DataError(f"{path}, sequence '{name}' (rows {rows[0][0]}-{rows[-1][0]}): every row misses a value in "
                        f"the columns read, so scenario.missing: drop leaves nothing. Check scenario.inputs and "
                        f"scenario.targets, or use missing: ffill or zero.")
    return kept


def _times(path: Path, column: str, lines: list[int], cells: list[str], policy: str) -> np.ndarray:
    """The time column: numbers, or ISO dates (``YYYY-MM-DD``, optionally ``THH:MM:SS``) as ``datetime64``."""
    texts = [cell.strip() for cell in cells]
    if all(is_number_text(text) or _missing_cell(text) for text in texts):
        values = np.array([_number(path, line, column, text) for line, text in zip(lines, texts)])
        return fill_missing(values[:, None], policy, path, lines, [column])[:, 0]
    stamps = []
    for line, text in zip(lines, texts):
        try:
            stamps.append(np.datetime64(datetime.datetime.fromisoformat(text), "us"))
        except ValueError:
            raise DataError(f"{path}, row {line}, column '{column}': '{text}' is neither a number nor an ISO date "
                            f"(YYYY-MM-DD, or YYYY-MM-DDTHH:MM:SS). Fix the cell, or leave scenario.time out "
                            f"(steps are then counted).") from None
    return np.array(stamps)


def is_number_text(text: str) -> bool:
    """Whether ``float`` reads the text."""
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_npz(path: Path, columns: Columns) -> list[Recording]:
    """The recordings of a ``.npz``: ``inputs [N, T, F]``, ``targets [N, T, O]`` or ``labels [N]``, ``lengths``."""
    require_file(path)
    try:
        with np.load(path, allow_pickle=False) as archive:  # never unpickle a user's file
            arrays = {key: archive[key] for key in archive.files}
    except ValueError as exc:
        raise DataError(f"{path}: cannot be read without unpickling ({exc}); save plain numeric arrays with "
                        f"np.savez(path, inputs=..., targets=...).") from None
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npz archive ({exc}); write it with np.savez.") from None
    want = ["inputs", "labels" if columns.label_targets else "targets"]
    for key in want:
        if key not in arrays:
            raise DataError(f"{path}: the archive has no array '{key}' (it holds {', '.join(arrays) or 'nothing'})."
                            f"{_suggest(key, list(arrays))} Save it with np.savez(path, {key}=...).")
    inputs = arrays["inputs"]
    if inputs.ndim == 2:
        inputs = inputs[None]
    count, steps = inputs.shape[:2]
    lengths = arrays.get("lengths", np.full(count, steps))
    inputs = _select(path, arrays, inputs, "input_names", columns.inputs, "inputs")
    recordings = []
    for n in range(count):
        length = int(lengths[n])
        rows = list(range(length))
        x = fill_missing(np.asarray(inputs[n, :length], dtype=np.float64), columns.missing, path / f"inputs[{n}]",
                         rows, columns.inputs or [f"{i}" for i in range(inputs.shape[2])])
        if columns.label_targets:
            label = str(arrays["labels"].reshape(-1)[n])
            recordings.append(Recording(str(n), x, np.zeros((length, 0)), [label] * length))
            continue
        targets = arrays["targets"]
        targets = _select(path, arrays, targets[None] if targets.ndim == 2 else targets, "target_names",
                          columns.targets, "targets")
        y = fill_missing(np.asarray(targets[n, :length], dtype=np.float64), columns.missing, path / f"targets[{n}]",
                         rows, columns.targets or [f"{i}" for i in range(targets.shape[2])])
        recordings.append(Recording(str(n), x, y))
    return recordings


def _select(path: Path, arrays: dict[str, np.ndarray], values: np.ndarray, names_key: str, wanted: list[str],
            key: str) -> np.ndarray:
    """The columns of ``values [N, T, C]`` named in the scenario (all of them when it names none)."""
    if not wanted:
        return values
    names = [str(n) for n in arrays.get(names_key, np.array([], dtype=str))]
    if not names:
        raise DataError(f"{path}: scenario.{key} names columns, but the archive has no '{names_key}' array to find "
                        f"them in. Save np.savez(..., {names_key}=np.array([...])) or leave scenario.{key} out.")
    picked = []
    for name in wanted:
        if name not in names:
            raise DataError(f"{path}: the column '{name}' named in scenario.{key} is not in '{names_key}' "
                            f"({', '.join(names)}).{_suggest(name, names)}")
        picked.append(names.index(name))
    return values[..., picked]


def finite_check(path: Path, recordings: list[Recording]) -> None:
    """Refuse inf in arrays read from a binary file (CSV cells are checked as they are parsed)."""
    for rec in recordings:
        for key, values in (("inputs", rec.inputs), ("targets", rec.targets)):
            bad = np.argwhere(~np.isfinite(values))
            if len(bad):
                raise DataError(f"{path}: {key} of sequence {rec.name}, step {int(bad[0][0])}, column "
                                f"{int(bad[0][1])} is {values[tuple(bad[0])]}; replace it with a finite number.")


FOLDER_SUFFIXES = (".csv", ".parquet", ".pq", ".npy", ".npz")


def read_folder(path: Path, columns: Columns) -> list[Recording]:
    """The recordings of every data file in a folder (sorted by name): one per file, named by the file's stem
    (``stem/id`` when a ``sequence_id`` column splits a file further)."""
    files = sorted(f for f in path.iterdir() if f.is_file() and f.suffix.lower() in FOLDER_SUFFIXES)
    if not files:
        raise DataError(f"{path}: the folder holds no data files ({', '.join(FOLDER_SUFFIXES)}); put one recording "
                        f"per file in it, or point scenario.path at a file.")
    recordings = []
    for file in files:
        found = read(file, columns)
        for rec in found:
            rec.name = file.stem if len(found) == 1 and columns.sequence_id is None else f"{file.stem}/{rec.name}"
        recordings += found
    return recordings


def read(path: Path, columns: Columns) -> list[Recording]:
    """The recordings of a CSV, ``.npy``, ``.npz`` or Parquet file, or of a folder of them."""
    if path.is_dir():
        return read_folder(path, columns)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        recordings = read_npz(path, columns)
        finite_check(path, recordings)
        return recordings
    if suffix == ".csv":
        return read_csv(path, columns)
    if suffix == ".npy":
        return read_npy(path, columns)
    if suffix in (".parquet", ".pq"):
        return read_parquet(path, columns)
    raise DataError(f"{path}: statesim's sequences scenario reads .csv, .npy, .npz and .parquet files, not "
                    f"'{suffix}'. "
                    f"Convert it "
                    f"(e.g. np.savez(path, inputs=..., targets=...)).")
