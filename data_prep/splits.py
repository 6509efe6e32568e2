"""Duplicates, leakage and the stratified field-photo validation split."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence

from data_prep.findings import SKIPPED, Finding
from data_prep.layouts import Entry

VALIDATION_RULE = (
    "validation = field photos only, drawn per species (stratified) from the non-test field photos: "
    "a species with n >= 2 field photos gives min(n - 1, max(1, round(n * val_fraction))) of them, "
    "so it keeps at least one field photo in train; a species with 1 field photo keeps it in train; "
    "a species with none is train-only (herbarium only). Seeded, independent per species."
)


def validation_count(n_field: int, fraction: float) -> int:
    """How many of a species' ``n_field`` field photos go to validation (see :data:`VALIDATION_RULE`)."""
    if n_field < 2 or fraction <= 0:
        return 0
    return min(n_field - 1, max(1, round(n_field * fraction)))


def deduplicate(entries: Sequence[Entry], digests: Sequence[str]) -> tuple[list[bool], list[Finding]]:
    """Keep the first copy of each content hash; drop training copies of test images (leakage).

    Test entries are fixed by the user, so they win: a training-pool file whose content also
    appears in the test set is ``leakage``; any other repeat (within the test set, or within the
    training pool, whatever its label or domain) is a ``duplicate``. Because duplicates are removed
    from the pool before the validation split is drawn, train and validation cannot share an image.

    Returns:
        ``keep`` flags aligned with ``entries`` and the findings for the dropped ones.
    """
    keep = [True] * len(entries)
    findings: list[Finding] = []
    first_test: dict[str, Entry] = {}
    first_pool: dict[str, Entry] = {}
    order = [i for i, e in enumerate(entries) if e.split == "test"] + [
        i for i, e in enumerate(entries) if e.split != "test"
    ]
    for i in order:
        entry, digest = entries[i], digests[i]
        if entry.split == "test":
            if digest in first_test:
                keep[i] = False
                findings.append(Finding(entry.rel, "duplicate", SKIPPED, _same_as(first_test[digest], entry)))
            else:
                first_test[digest] = entry
        elif digest in first_test:
            keep[i] = False
            findings.append(Finding(entry.rel, "leakage", SKIPPED, _same_as(first_test[digest], entry)))
        elif digest in first_pool:
            keep[i] = False
            findings.append(Finding(entry.rel, "duplicate", SKIPPED, _same_as(first_pool[digest], entry)))
        else:
            first_pool[digest] = entry
    return keep, findings


def _same_as(kept: Entry, dropped: Entry) -> str:
    text = f"same content as {kept.rel}"
    if kept.label != dropped.label:
        text += f" (labelled {kept.label!r}, here {dropped.label!r})"
    return text


def choose_validation(entries: Sequence[Entry], fraction: float, seed: int) -> list[bool]:
    """Flags: True for the training-pool field photos that go to validation (see :data:`VALIDATION_RULE`)."""
    by_label: dict[str, list[int]] = defaultdict(list)
    for i, e in enumerate(entries):
        if e.split == "train" and e.domain == "field":
            by_label[e.label].append(i)
    flags = [False] * len(entries)
    for label, idx in sorted(by_label.items()):
        rng = random.Random(f"{seed}/{label}")
        for i in rng.sample(idx, validation_count(len(idx), fraction)):
            flags[i] = True
    return flags
