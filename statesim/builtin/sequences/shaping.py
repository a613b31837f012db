"""From recordings to training data: task pairs, leak-free splits, windows, z-score normalisation."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from statesim.builtin.sequences.reading import Recording
from statesim.data import SequenceData

SPLITS = ("train", "val", "test")


@dataclass
class Piece:
    """A stretch of one recording given to one split: model ``inputs [T, F]`` and ``targets [T, O]``.

    ``targets`` are floats (regression, forecast) or class ids in a ``[T]`` array (classification);
    ``persistence [T, O]`` is the last observed target at each step (the naive forecast), and ``start``
    is where the piece begins in its recording.
    """

    name: str
    inputs: np.ndarray
    targets: np.ndarray
    start: int
    persistence: np.ndarray | None = None


def split_names(count: int, fractions: tuple[float, float, float], seed: int) -> dict[str, list[int]]:
    """Indices of ``count`` recordings shuffled with ``seed`` and cut by ``fractions`` (train, val, test)."""
    order = np.random.default_rng(seed).permutation(count)
    cuts = _cuts(count, fractions)
    return {name: sorted(int(i) for i in order[a:b]) for name, (a, b) in zip(SPLITS, cuts)}


def _cuts(total: int, fractions: tuple[float, float, float]) -> list[tuple[int, int]]:
    """Contiguous ``[start, stop)`` blocks of ``total`` items in the ratio of ``fractions`` (train first)."""
    ends = np.round(np.cumsum(fractions) / sum(fractions) * total).astype(int)
    starts = np.concatenate([[0], ends[:-1]])
    return [(int(a), int(b)) for a, b in zip(starts, ends)]


def time_blocks(steps: int, fractions: tuple[float, float, float]) -> list[tuple[int, int]]:
    """The train, val and test blocks of a recording of ``steps`` steps split by time (contiguous, in order)."""
    return _cuts(steps, fractions)


def task_piece(rec: Recording, start: int, stop: int, task: str, horizon: int, classes: list[str],
               path: bool = False) -> Piece | None:
    """Rows ``[start, stop)`` of ``rec`` as model inputs and targets for ``task`` (None when too short).

    A forecast reads the inputs and the observed targets up to t and predicts the targets at t + horizon
    (``path``: at every t + 1 .. t + horizon, horizon-major: ``[y_{t+1}, ..., y_{t+H}]``, ``H * O`` wide);
    both ends lie inside ``[start, stop)``, so a piece never sees past its split's boundary.
    """
    x, y = rec.inputs[start:stop], rec.targets[start:stop]
    if task == "classification":
        assert rec.labels is not None
        label = classes.index(rec.labels[0])
        return Piece(rec.name, x, np.full(len(x), label), start) if len(x) else None
    if task == "regression":
        return Piece(rec.name, x, y, start) if len(x) else None
    if len(x) <= horizon:
        return None
    seen = np.concatenate([x, y], axis=1)[:-horizon]
    if path:
        steps = len(seen)
        ahead = np.concatenate([y[h:h + steps] for h in range(1, horizon + 1)], axis=1)
        return Piece(rec.name, seen, ahead, start, persistence=np.tile(y[:-horizon], (1, horizon)))
    return Piece(rec.name, seen, y[horizon:], start, persistence=y[:-horizon])


def windows(piece: Piece, length: int | None, stride: int) -> list[Piece]:
    """``piece`` cut into windows of ``length`` steps every ``stride`` steps (itself when ``length`` is None
    or longer than it); the count is ``(T - length) // stride + 1``."""
    steps = len(piece.inputs)
    if length is None or steps <= length:
        return [piece]
    out = []
    for a in range(0, steps - length + 1, stride):
        out.append(Piece(piece.name, piece.inputs[a:a + length], piece.targets[a:a + length], piece.start + a,
                         None if piece.persistence is None else piece.persistence[a:a + length]))
    return out


@dataclass
class Scaling:
    """z-score statistics fitted on the training split: ``(x - mean) / std`` per column."""

    input_mean: np.ndarray
    input_std: np.ndarray
    target_mean: np.ndarray | None
    target_std: np.ndarray | None

    @staticmethod
    def fit(pieces: list[Piece], classification: bool, repeat: int = 1) -> "Scaling":
        """Mean and std (population, ``np.std``) of every column over the training pieces' steps.

        ``repeat`` H: the targets are a forecast path, H blocks of the same O columns; each column's statistics
        are fitted over all H blocks and repeated per block, so every horizon step is scaled as its variable.
        """
        x = np.concatenate([p.inputs for p in pieces])
        y = None if classification else np.concatenate([p.targets for p in pieces])
        if y is not None and repeat > 1:
            y = y.reshape(len(y) * repeat, y.shape[1] // repeat)

        def spread(values: np.ndarray) -> np.ndarray:
            std = values.std(axis=0)
            return np.where(std > 1e-12, std, 1.0)  # a constant column is shifted, not blown up

        if y is None:
            return Scaling(x.mean(axis=0), spread(x), None, None)
        return Scaling(x.mean(axis=0), spread(x), np.tile(y.mean(axis=0), repeat), np.tile(spread(y), repeat))

    def as_json(self, input_names: list[str], target_names: list[str]) -> dict[str, object]:
        """The statistics by column name (``normalisation.json``)."""
        out: dict[str, object] = {"inputs": {n: {"mean": float(m), "std": float(s)}
                                             for n, m, s in zip(input_names, self.input_mean, self.input_std)}}
        if self.target_mean is not None and self.target_std is not None:
            # zip stops at the named columns: a forecast path repeats them per horizon step (fit's ``repeat``)
            out["targets"] = {n: {"mean": float(m), "std": float(s)}
                              for n, m, s in zip(target_names, self.target_mean, self.target_std)}
        return out


    def as_model(self) -> dict[str, list[float] | None]:
        """The statistics as :func:`statesim.model.build_model`'s ``scaling`` (inside the model, in checkpoints)."""
        def plain(values: np.ndarray | None) -> list[float] | None:
            return None if values is None else [float(v) for v in values]

        return {"input_mean": plain(self.input_mean), "input_std": plain(self.input_std),
                "output_mean": plain(self.target_mean), "output_std": plain(self.target_std)}


def batch(pieces: list[Piece], classification: bool) -> SequenceData:
    """Pieces stacked time-major and zero-padded (``lengths``), in the data's own units (the model scales)."""
    steps = max(len(p.inputs) for p in pieces)
    features = pieces[0].inputs.shape[1]
    x = np.zeros((steps, len(pieces), features), dtype=np.float32)
    lengths = np.array([len(p.inputs) for p in pieces])
    if classification:
        y: np.ndarray = np.zeros((steps, len(pieces)), dtype=np.int64)
    else:
        y = np.zeros((steps, len(pieces), pieces[0].targets.shape[1]), dtype=np.float32)
    for n, p in enumerate(pieces):
        x[:len(p.inputs), n] = p.inputs
        y[:len(p.targets), n] = p.targets
    ragged = bool((lengths != steps).any())
    return SequenceData(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(lengths) if ragged else None)
