"""From class probabilities to an honest answer: combine photos, roll up ranks, admit uncertainty.

Pure functions on numpy arrays: no model, no UI. ``identify`` is what the app shows.

Several photos of one plant (leaf, flower, bark) are combined by default with the **mean of the
probabilities** (a mixture). The alternative, the mean of the log-probabilities (a product of
experts, renormalised), treats the photos as independent evidence, so one photo that is confidently
wrong (blurred, another plant in the frame) can veto the right species. ArcFace probabilities are
sharp (softmax of ``s * cos`` with ``s`` around 30), which makes that veto likely; the mixture lets
each photo vote and is the safer default. Use ``mean_log`` when every photo is clear and shows the
same plant: agreement between photos then sharpens the answer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from inference_app.taxonomy import UNLISTED, Taxonomy

#: How the app marks a species enrolled from a few images (no training on it; see ``enroll.py``).
ENROLLED_MARK = "(enrolled)"

CombineMethod = Literal["mean_prob", "mean_log"]
COMBINE_METHODS: tuple[str, ...] = ("mean_prob", "mean_log")
Level = Literal["species", "genus", "family", "uncertain"]


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax in float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def combine_probabilities(probs: np.ndarray, method: CombineMethod = "mean_prob") -> np.ndarray:
    """Combine the ``(n_photos, n_classes)`` probabilities of several photos of one plant.

    Args:
        probs: per-photo probabilities (rows sum to 1).
        method: ``"mean_prob"`` (arithmetic mean, robust to one bad photo) or ``"mean_log"``
            (softmax of the mean log-probability, i.e. normalised geometric mean).

    Returns:
        ``(n_classes,)`` probabilities summing to 1.
    """
    probs = np.atleast_2d(np.asarray(probs, dtype=np.float64))
    if probs.shape[0] == 0:
        raise ValueError("no photos to combine")
    if method == "mean_prob":
        combined = probs.mean(axis=0)
    elif method == "mean_log":
        combined = softmax(np.log(np.clip(probs, 1e-300, None)).mean(axis=0))
    else:
        raise ValueError(f"unknown combine method {method!r}; choose one of {COMBINE_METHODS}")
    return combined / combined.sum()


@dataclass
class Identification:
    """What the app tells the user about one plant (one or several photos)."""

    species: list[tuple[str, float]]
    level: Level
    answer: str | None
    confidence: float
    threshold: float
    genus: list[tuple[str, float]] = field(default_factory=list)
    family: list[tuple[str, float]] = field(default_factory=list)
    n_photos: int = 1
    combine: str = "mean_prob"
    skipped: list[str] = field(default_factory=list)
    enrolled: frozenset[str] = frozenset()

    def display(self, name: str) -> str:
        """``name``, marked when the species was enrolled from a few images rather than trained on."""
        return f"{name} {ENROLLED_MARK}" if name in self.enrolled else name

    @property
    def confident(self) -> bool:
        return self.level == "species"

    def summary_markdown(self) -> str:
        """One status paragraph: the answer at the finest confident rank, or an honest "no match"."""
        best, best_p = self.species[0]
        best = self.display(best)
        if self.level == "species":
            text = f"**{best}** ({best_p:.0%} confidence)."
        elif self.level in ("genus", "family"):
            text = (
                f"**Uncertain at species level** (best guess *{best}*, {best_p:.0%}, below the "
                f"{self.threshold:.0%} threshold), but probably {self.level} **{self.answer}** "
                f"({self.confidence:.0%})."
            )
        else:
            text = (
                f"**No confident match** (best guess *{best}* at {best_p:.0%}, below the "
                f"{self.threshold:.0%} threshold). The ranked guesses below may still help; "
                "try another photo of a leaf, flower or fruit."
            )
        if self.n_photos > 1:
            how = "mean of probabilities" if self.combine == "mean_prob" else "mean of log-probabilities"
            text += f" Combined from {self.n_photos} photos ({how})."
        for note in self.skipped:
            text += f"\n\nSkipped: {note}"
        return text


def identify(
    probs: np.ndarray,
    labels: Sequence[str],
    k: int = 5,
    threshold: float = 0.5,
    taxonomy: Taxonomy | None = None,
    combine: CombineMethod = "mean_prob",
    skipped: Sequence[str] = (),
    enrolled: Iterable[str] = (),
) -> Identification:
    """Rank species, roll up to genus/family, and pick the finest rank above ``threshold``.

    Args:
        probs: ``(n_photos, n_classes)`` or ``(n_classes,)`` probabilities.
        labels: class names, in the model's order.
        k: number of ranked species (and genera, families) to return.
        threshold: a rank is "confident" when its best probability reaches this value.
        taxonomy: optional; enables the genus and family roll-ups and the genus-level answer.
        combine: how several photos are combined (see the module docstring).
        skipped: messages about photos that could not be used.
        enrolled: species added by enrolment (``enroll.py``, no training): marked in the answer.
    """
    probs = np.atleast_2d(np.asarray(probs, dtype=np.float64))
    if probs.shape[1] != len(labels):
        raise ValueError(f"{probs.shape[1]} probabilities for {len(labels)} labels")
    combined = combine_probabilities(probs, combine)
    order = np.argsort(-combined, kind="stable")[: max(1, k)]
    species = [(labels[i], float(combined[i])) for i in order]
    genus: list[tuple[str, float]] = []
    family: list[tuple[str, float]] = []
    if taxonomy is not None:
        genus = taxonomy.rollup(labels, combined, "genus")[:k]
        if taxonomy.has_family:
            family = taxonomy.rollup(labels, combined, "family")[:k]

    ranked = {"species": species, "genus": genus, "family": family}
    photos = {"n_photos": probs.shape[0], "combine": combine, "skipped": list(skipped)}
    photos["enrolled"] = frozenset(enrolled)
    return Identification(
        **ranked, **_answer(species, genus, family, threshold), **photos, threshold=threshold
    )


def _answer(
    species: list[tuple[str, float]],
    genus: list[tuple[str, float]],
    family: list[tuple[str, float]],
    threshold: float,
) -> dict[str, object]:
    """``level``, ``answer`` and ``confidence``: the finest rank whose best guess reaches ``threshold``."""
    if species[0][1] >= threshold:
        return {"level": "species", "answer": species[0][0], "confidence": species[0][1]}
    for rank, ranked in (("genus", genus), ("family", family)):
        if ranked and ranked[0][0] != UNLISTED and ranked[0][1] >= threshold:
            return {"level": rank, "answer": ranked[0][0], "confidence": ranked[0][1]}
    return {"level": "uncertain", "answer": None, "confidence": species[0][1]}
