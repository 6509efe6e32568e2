"""Class scores ``(N, C)`` read in row chunks, and the per-image summary every evaluation metric reduces.

Evaluation never holds an ``(N, C)`` matrix of N evaluated images by C classes: the scores come as a
:class:`ScoreRows` (an array, or logits computed chunk by chunk from ``(N, D)`` embeddings and the
ArcFace head, ``embedder.HeadLogits``), and :func:`summarize` reads it :data:`CHUNK_ELEMENTS` scores at a
time into a :class:`RowSummary` of a few numbers per image (the true class's rank, the top-1 class, the
top-1 softmax probability, the most probable genus/family). Top-k, MRR, macro-F1, ECE, per-species and
genus/family top-1 are reductions of that summary, so the extra memory is ``O(N + CHUNK_ELEMENTS)``.

Every per-image number is computed row by row with the same numpy operations as on the whole matrix,
so the metrics are exactly those of the one-piece computation whatever the chunk size.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np

CHUNK_ELEMENTS = 1 << 20
"""Scores per chunk (rows = ``CHUNK_ELEMENTS // C``, at least 1): 8 MiB per float64 copy of a chunk, so
the evaluation's working memory is the same for 100 or 10,000 classes."""


def chunk_rows(num_classes: int, rows: int | None = None) -> int:
    """Rows per chunk: ``rows`` when given, else ``CHUNK_ELEMENTS // num_classes`` (at least 1)."""
    if rows is not None:
        if rows < 1:
            raise ValueError(f"chunk rows must be >= 1, got {rows}")
        return int(rows)
    return max(1, CHUNK_ELEMENTS // max(1, int(num_classes)))


class ScoreRows(ABC):
    """Class scores ``(N, C)`` (logits or similarities) that are read a block of rows at a time."""

    @property
    @abstractmethod
    def shape(self) -> tuple[int, int]:
        """``(N, C)``."""

    @abstractmethod
    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` as an array ``(stop - start, C)``."""

    @abstractmethod
    def take(self, indices: np.ndarray) -> ScoreRows:
        """The rows ``indices`` (int positions or an ``(N,)`` bool mask), in that order."""

    def __len__(self) -> int:
        return self.shape[0]

    def divided_by(self, temperature: float) -> ScoreRows:
        """The scores divided by ``temperature`` (each chunk divided as it is read)."""
        return DividedRows(self, float(temperature))

    def chunks(self, rows: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """``(start, block)`` for consecutive blocks of ``chunk_rows(C, rows)`` rows."""
        n, c = self.shape
        step = chunk_rows(c, rows)
        for start in range(0, n, step):
            yield start, self.rows(start, min(n, start + step))


@dataclass(frozen=True)
class ArrayRows(ScoreRows):
    """A :class:`ScoreRows` over an array already in memory (``rows`` returns views)."""

    array: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.array.shape)

    def rows(self, start: int, stop: int) -> np.ndarray:
        return self.array[start:stop]

    def take(self, indices: np.ndarray) -> ArrayRows:
        return ArrayRows(self.array[np.asarray(indices)])


@dataclass(frozen=True)
class DividedRows(ScoreRows):
    """``parent`` divided by ``temperature``, chunk by chunk (the numbers of ``array / temperature``)."""

    parent: ScoreRows
    temperature: float

    @property
    def shape(self) -> tuple[int, int]:
        return self.parent.shape

    def rows(self, start: int, stop: int) -> np.ndarray:
        return self.parent.rows(start, stop) / self.temperature

    def take(self, indices: np.ndarray) -> DividedRows:
        return DividedRows(self.parent.take(indices), self.temperature)


def as_rows(scores: np.ndarray | ScoreRows) -> ScoreRows:
    """``scores`` as a :class:`ScoreRows` (an array ``(N, C)`` is wrapped, not copied).

    Raises:
        ValueError: an array that is not 2-D.
    """
    if isinstance(scores, ScoreRows):
        return scores
    array = np.asarray(scores)
    if array.ndim != 2:
        raise ValueError(f"class scores must be (N, C), got shape {array.shape}")
    return ArrayRows(array)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (N, C) logits, in float64 (one float64 working array besides the input)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


@dataclass(frozen=True)
class RowSummary:
    """What the metrics need of each image's scores ``(N, C)``, all ``(N,)``.

    Attributes:
        labels: true class ids.
        rank: 1-based rank of the true class (1 + number of classes scored strictly higher).
        prediction: top-1 class (argmax of the scores; the first on ties).
        confidence: top-1 softmax probability (float64; the scores taken as logits).
        softmax_prediction: argmax of the softmax (the class ``confidence`` belongs to).
        groups: per grouping name (``genus``, ``family``), the most probable group (species
            probabilities summed per group), as a group index.
    """

    labels: np.ndarray
    rank: np.ndarray
    prediction: np.ndarray
    confidence: np.ndarray
    softmax_prediction: np.ndarray
    groups: dict[str, np.ndarray] = field(default_factory=dict)

    COLUMNS = ("rank", "prediction", "confidence", "softmax_prediction")

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, indices: np.ndarray) -> RowSummary:
        """The images ``indices`` (int positions or an ``(N,)`` bool mask), in that order."""
        indices = np.asarray(indices)
        return RowSummary(
            self.labels[indices],
            *(getattr(self, name)[indices] for name in self.COLUMNS),
            groups={k: v[indices] for k, v in self.groups.items()},
        )

    def to_array(self) -> np.ndarray:
        """``(N, 4)`` float64: rank, prediction, confidence, softmax prediction (groups left out); class
        ids and ranks below 2**53 are exact."""
        return np.stack([getattr(self, name).astype(np.float64) for name in self.COLUMNS], axis=1)

    @classmethod
    def from_array(cls, array: np.ndarray, labels: np.ndarray) -> RowSummary:
        """The summary :meth:`to_array` wrote, with its ``(N,)`` ``labels``."""
        array = np.asarray(array, dtype=np.float64)
        as_int = [array[:, i].astype(np.int64) for i in range(array.shape[1])]
        return cls(np.asarray(labels, dtype=np.int64), as_int[0], as_int[1], array[:, 2], as_int[3])


def block_ranks(block: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """1-based rank of the true class of each row of ``block`` ``(n, C)``; ties count in its favour."""
    z = np.asarray(block, dtype=np.float64)
    true = z[np.arange(len(labels)), labels]
    return 1 + (z > true[:, None]).sum(axis=1)


def _summarize_block(
    block: np.ndarray, labels: np.ndarray, groups: Mapping[str, tuple[np.ndarray, np.ndarray]]
) -> tuple[np.ndarray, ...]:
    """rank, prediction, confidence, softmax prediction and each grouping's argmax of one block."""
    z = np.asarray(block, dtype=np.float64)
    rank = block_ranks(z, labels)
    prediction = z.argmax(axis=1)
    probs = softmax(z)
    out = [rank, prediction, probs.max(axis=1), probs.argmax(axis=1)]
    for order, starts in groups.values():
        out.append(np.add.reduceat(probs[:, order], starts, axis=1).argmax(axis=1))
    return tuple(out)


def _group_columns(group_of_class: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The class order that puts each group's classes side by side, and where each group starts in it
    (groups are ``0..G-1``, each with at least one class)."""
    group_of_class = np.asarray(group_of_class, dtype=np.int64)
    order = np.argsort(group_of_class, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(group_of_class[order]) != 0])
    return order, starts


def summarize(
    scores: np.ndarray | ScoreRows,
    labels: np.ndarray,
    groups: Mapping[str, np.ndarray] | None = None,
    rows: int | None = None,
) -> RowSummary:
    """The :class:`RowSummary` of ``scores`` ``(N, C)``, read in chunks of ``rows`` rows (default:
    :func:`chunk_rows`); memory ``O(N + rows x C)``.

    Args:
        scores: class scores (an array or a :class:`ScoreRows`); softmax quantities take them as logits.
        labels: ``(N,)`` true class ids in ``[0, C)``.
        groups: name -> ``(C,)`` group index ``0..G-1`` of each class (every group used): the summary
            holds each image's most probable group (softmax probabilities summed per group).
        rows: rows per chunk.

    Raises:
        ValueError: ``labels`` does not have one id in ``[0, C)`` per row.
    """
    scores = as_rows(scores)
    labels = np.asarray(labels, dtype=np.int64)
    n, c = scores.shape
    if len(labels) != n:
        raise ValueError(f"{len(labels)} labels for {n} rows of class scores")
    if n and (labels.min() < 0 or labels.max() >= c):
        raise ValueError(f"labels must be class ids in [0, {c}), got {labels.min()}..{labels.max()}")
    columns = {name: _group_columns(g) for name, g in (groups or {}).items()}
    parts: list[tuple[np.ndarray, ...]] = [
        _summarize_block(block, labels[start : start + len(block)], columns)
        for start, block in scores.chunks(rows)
    ]
    dtypes = (np.int64, np.int64, np.float64, np.int64) + (np.int64,) * len(columns)
    merged = [
        np.concatenate([p[i] for p in parts]).astype(t, copy=False) if parts else np.zeros(0, t)
        for i, t in enumerate(dtypes)
    ]
    return RowSummary(labels, *merged[:4], groups=dict(zip(columns, merged[4:])))
