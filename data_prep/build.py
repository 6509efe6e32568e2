"""``build_dataset``: input layout -> validated, downsized ``DatasetDict`` + report + balance figure.

Pipeline: discover (:mod:`layouts`) -> validate/normalise every file in worker processes
(:mod:`validate`), streaming the encoded images into a temporary Arrow file -> drop duplicates and
leakage, draw the stratified field validation split (:mod:`splits`) -> select the splits, save
with ``save_to_disk`` (atomically replacing an earlier build), write ``prep_report.json`` and
``dataset_balance.png``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
from datasets import Dataset, DatasetDict, DatasetInfo, Features, load_from_disk
from datasets.arrow_writer import ArrowWriter
from datasets.table import ConcatenationTable, InMemoryTable
from tqdm.auto import tqdm

from data_prep.audit_report import normalise_exclude_paths, read_exclude_list
from data_prep.contract import DOMAINS, dataset_features, is_saved_dataset_dict
from data_prep.figures import save_balance_figure
from data_prep.filetype import describe_file, scrub_detail
from data_prep.findings import FIXED, IGNORED, SKIPPED, Finding
from data_prep.layouts import DataPrepError, Discovery, Entry, discover
from data_prep.report import format_summary, make_report
from data_prep.splits import choose_validation, deduplicate
from data_prep.validate import ProcessResult, process_image

REPORT_NAME = "prep_report.json"
FIGURE_NAME = "dataset_balance.png"
SHARD_BYTES = 500 * 1024 * 1024  # the save_to_disk default shard size


class StrictModeError(DataPrepError):
    """Raised by ``build_dataset(strict=True)`` when anything was reported; carries the report."""

    def __init__(self, report: dict[str, Any]):
        self.report = report
        super().__init__(f"--strict: {len(report['findings'])} finding(s): {report['finding_counts']}")


#: The dataset schema, under the name data_prep has always exported (it is ``contract.dataset_features``).
create_features = dataset_features


def default_num_proc() -> int:
    """Worker processes used when ``num_proc`` is not given: the CPU count, at most 8."""
    return max(1, min(8, os.cpu_count() or 1))


def _process_all(files: list[str], num_proc: int, progress: bool, **kwargs: Any):
    work = functools.partial(process_image, **kwargs)
    bar = functools.partial(
        tqdm, total=len(files), desc="validating images", unit="img", disable=not progress
    )
    if num_proc <= 1 or len(files) < 2 * num_proc:
        yield from bar(map(work, files))
        return
    chunksize = max(1, min(16, len(files) // (num_proc * 8)))
    with ProcessPoolExecutor(max_workers=num_proc) as pool:
        yield from bar(pool.map(work, files, chunksize=chunksize))


def check_out(out: Path) -> None:
    """Raise :class:`DataPrepError` when ``out`` is a non-empty folder that holds no earlier build."""
    if out.exists() and any(out.iterdir()) and not is_saved_dataset_dict(out):
        raise DataPrepError(
            f"output folder {out} exists and does not hold an earlier build; choose another --out"
        )


def build_dataset(
    source: str | Path,
    out: str | Path | None = None,
    layout: str = "auto",
    *,
    val_fraction: float = 0.2,
    max_side: int = 1024,
    min_side: int = 32,
    quality: int = 90,
    num_proc: int | None = None,
    seed: int = 0,
    strict: bool = False,
    exclude: str | Path | None = None,
    progress: bool = True,
) -> tuple[DatasetDict, dict[str, Any]]:
    """Build the project's ``DatasetDict`` from a folder tree, PlantCLEF list files or a CSV.

    Args:
        source: input root (folder) or CSV file.
        out: where to ``save_to_disk`` (plus ``prep_report.json`` and ``dataset_balance.png``);
            ``None`` keeps everything in memory and writes nothing. An earlier build there is replaced.
        layout: ``"auto"``, ``"folders"``, ``"plantclef"`` or ``"csv"`` (see :mod:`data_prep.layouts`).
        val_fraction: share of each species' field photos drawn for validation (see ``VALIDATION_RULE``).
        max_side: longer side after downsizing (0: keep sizes).
        min_side: shorter side below which an image is skipped as ``too_small``.
        quality: JPEG quality of re-encoded images.
        num_proc: worker processes for decoding (default: :func:`default_num_proc`).
        seed: seed of the validation draw.
        strict: raise :class:`StrictModeError` (after writing the dataset and report) if anything
            was reported.
        exclude: a file listing paths (relative to ``source``, ``./`` allowed, or absolute under it) to
            leave out, one a line, ``#`` comments (e.g. the ``exclude.txt`` of ``data_prep audit``); each
            is reported as ``excluded``; ``settings.exclude`` records the file's absolute path.
        progress: show tqdm bars.

    Returns:
        ``(dataset_dict, report)``; the dataset is the saved one (memory-mapped) when ``out`` is given.

    Raises:
        DataPrepError: missing input, unknown layout, no images at all, an unreadable ``exclude`` file,
            or an ``out`` that holds something else.
    """
    start = time.perf_counter()
    out_path = Path(out) if out is not None else None
    if out_path is not None:
        check_out(out_path)
    disc, settings = prepare(source, layout, exclude, val_fraction, max_side, min_side, quality, seed)
    if out_path is not None:
        out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".data_prep-", dir=out_path.parent if out_path is not None else None))
    try:
        validated = validate_into_arrow(
            disc.entries,
            tmp / "all.arrow",
            dataset_features(disc.classes),
            num_proc or default_num_proc(),
            progress,
            image_options(settings),
        )
        rows = Dataset.from_file(str(tmp / "all.arrow"), in_memory=out_path is None)
        has_test = any(e.split == "test" for e in disc.entries)
        dsd, report, shards = assemble(disc, disc.classes, has_test, rows, validated, out_path, settings)
        report["stats"] |= _timing(start, len(disc.entries))
        if out_path is not None:
            dsd = save_build(dsd, out_path, tmp, report, progress, shards)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if strict and report["findings"]:
        raise StrictModeError(report)
    return dsd, report


def prepare(
    source: str | Path,
    layout: str,
    exclude: str | Path | None,
    val_fraction: float,
    max_side: int,
    min_side: int,
    quality: int,
    seed: int,
) -> tuple[Discovery, dict[str, Any]]:
    """Discover ``source`` (leaving out the ``exclude`` list) and collect the build settings.

    Returns:
        ``(discovery, settings)``; ``settings`` is the report's ``settings`` block (``max_side``,
        ``min_side``, ``quality``, ``val_fraction``, ``seed``, and ``exclude`` when given).

    Raises:
        DataPrepError: missing input, unknown layout, unreadable ``exclude`` file, no images at all.
    """
    disc = discover(source, layout)
    settings_exclude = {}
    if exclude is not None:
        disc.exclude(normalise_exclude_paths(read_exclude_list(exclude), disc.root), Path(exclude).name)
        settings_exclude = {"exclude": str(Path(exclude).resolve())}
    if not disc.entries:
        raise DataPrepError(f"no image files found in {disc.root} ({disc.layout} layout)")
    options = {"max_side": max_side, "min_side": min_side, "quality": quality}
    return disc, options | {"val_fraction": val_fraction, "seed": seed} | settings_exclude


def image_options(settings: dict[str, Any]) -> dict[str, int]:
    """The per-image options of :func:`data_prep.validate.process_image` (``max_side``, ``min_side``, ``quality``)."""
    return {key: settings[key] for key in ("max_side", "min_side", "quality")}


def _timing(start: float, n_files: int) -> dict[str, float]:
    """Seconds since ``start`` and files per second, for the report's ``stats``."""
    seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 3), "images_per_s": round(n_files / seconds, 1)}


def assemble(
    disc: Discovery,
    classes: list[str],
    has_test: bool,
    rows: Dataset,
    validated: Validated,
    out: Path | None,
    settings: dict[str, Any],
    row_of: Sequence[int] | None = None,
) -> tuple[DatasetDict, dict[str, Any], dict[str, int]]:
    """Drop duplicates and leakage, draw the splits and assemble the report (nothing saved).

    Args:
        disc: the discovery (its root, layout, findings and ignored-file count are reported).
        classes: the label names of ``rows``' ``ClassLabel`` (sorted species names).
        has_test: whether the input had any test file (then a ``test`` split exists, even if empty).
        rows: the validated images (features ``dataset_features(classes)``).
        validated: what validation produced, its lists in discovery order.
        out: the output folder, for the report (None: nothing written).
        settings: the build settings (see :func:`prepare`).
        row_of: row of ``rows`` holding each kept entry (default: the i-th row holds the i-th entry;
            the join of shard parts, whose rows are in part order, passes its own).

    Returns:
        ``(dataset_dict, report, shards)``: ``shards`` is each split's number of ``save_to_disk``
        shards, from the stored image bytes.
    """
    kept = validated.kept
    row_of = range(len(kept)) if row_of is None else row_of
    findings: list[Finding] = list(disc.findings) + [f for _, f in validated.skips]
    split_idx = _assign_splits(
        kept, validated.digests, has_test, settings["val_fraction"], settings["seed"], findings
    )
    # fixes only for the files that stay: a fixed file dropped as a duplicate has one outcome, "skipped"
    stays = {i for idx in split_idx.values() for i in idx}
    findings += [f for i in sorted(stays) for f in validated.fixes[i]]
    used = _label_findings(classes, kept, split_idx, findings)
    if used and used != classes:  # classes whose every file was skipped leave the label set
        new_id = {c: i for i, c in enumerate(used)}
        label_ids = [-1] * len(rows)
        for i, entry in enumerate(kept):
            label_ids[row_of[i]] = new_id.get(entry.label, -1)
        classes = used
        rows = _relabel(rows, label_ids, dataset_features(used))
    dsd = DatasetDict({name: rows.select([row_of[i] for i in idx]) for name, idx in split_idx.items()})
    pairs = {name: [(kept[i].label, kept[i].domain) for i in idx] for name, idx in split_idx.items()}
    stats = validated.stats | {"ignored_system_files": disc.ignored_files}
    report = make_report(disc, out, classes, pairs, findings, settings=settings, stats=stats)
    nbytes = validated.nbytes
    shards = {name: 1 + sum(nbytes[i] for i in idx) // SHARD_BYTES for name, idx in split_idx.items()}
    return dsd, report, shards


def _label_findings(
    classes: list[str], kept: list[Entry], split_idx: dict[str, list[int]], findings: list[Finding]
) -> list[str]:
    """Report labels without images (left out of the label set) or without training images; the labels kept."""
    images = {kept[i].label for idx in split_idx.values() for i in idx}
    training = {kept[i].label for name in ("train", "validation") for i in split_idx[name]}
    n_test = {c: 0 for c in classes}
    for i in split_idx.get("test", []):
        n_test[kept[i].label] += 1
    for c in classes:
        if c not in images:
            findings.append(Finding(c, "class_without_images", IGNORED, "every file skipped: not a label"))
        elif c not in training:
            findings.append(
                Finding(
                    c,
                    "class_without_training_images",
                    IGNORED,
                    f"{n_test[c]} test image(s), no herbarium sheet or field photo to train on",
                )
            )
    return [c for c in classes if c in images]


def _relabel(rows: Dataset, label_ids: list[int], features: Features) -> Dataset:
    """``rows`` with its ``label`` column replaced (Arrow column swap: the image bytes are not copied)."""
    table = rows.data
    column = table.column_names.index("label")
    label_field, array = pa.field("label", pa.int64()), pa.array(label_ids, pa.int64())
    if isinstance(table, ConcatenationTable):  # joined shard parts: swap on the concatenated Arrow table
        table = InMemoryTable(
            table.table.set_column(column, label_field, array)
        )  # (zero-copy: buffers stay mapped)
    else:
        table = table.set_column(column, label_field, array)
    return Dataset(table, info=DatasetInfo(features=features))


@dataclass
class Validated:
    """What validating a list of entries produced; ``kept`` .. ``positions`` are aligned with the Arrow rows.

    Attributes:
        kept: the kept entries.
        digests: their content digests (BLAKE2b of the original bytes), for duplicates and leakage.
        nbytes: their stored image sizes in bytes (for the ``save_to_disk`` shard count).
        fixes: the fix findings of each kept entry (reported only for the entries that survive
            deduplication).
        positions: each kept entry's index in the list that was validated.
        skips: ``(index in that list, finding)`` for each skipped file, in that order.
        stats: counters for the report (``files``, ``resized``, ``stored_original``, ``reencoded``).
    """

    kept: list[Entry] = field(default_factory=list)
    digests: list[str] = field(default_factory=list)
    nbytes: list[int] = field(default_factory=list)
    fixes: list[list[Finding]] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    skips: list[tuple[int, Finding]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)


def validate_into_arrow(
    entries: list[Entry],
    arrow_path: Path,
    features: Features,
    num_proc: int,
    progress: bool,
    options: dict[str, int],
) -> Validated:
    """Validate and normalise every file of ``entries`` (worker processes, a tqdm bar) and stream the kept
    ones, encoded with ``features``, into the Arrow file ``arrow_path``; skips and fixes become findings."""
    label_id = {c: i for i, c in enumerate(features["label"].names)}
    out = Validated(stats={"files": len(entries), "resized": 0, "stored_original": 0, "reencoded": 0})
    with ArrowWriter(features=features, path=str(arrow_path)) as writer:
        results = _process_all([str(e.file) for e in entries], num_proc, progress, **options)
        for position, (entry, res) in enumerate(zip(entries, results)):
            skip = _collect(entry, res, out.stats)
            if skip is not None:
                out.skips.append((position, skip))
                continue
            out.fixes.append(
                [Finding(entry.rel, reason, FIXED, scrub_detail(detail)) for reason, detail in res.fixes]
            )
            record = {
                "image": {"bytes": res.image_bytes, "path": None},
                "label": label_id[entry.label],
                "domain": DOMAINS.index(entry.domain),
                "path": entry.rel,
            }
            writer.write(features.encode_example(record))
            out.kept.append(entry)
            out.digests.append(res.digest or "")
            out.nbytes.append(len(res.image_bytes or b""))
            out.positions.append(position)
        writer.finalize()
    return out


def _assign_splits(
    kept: list[Entry],
    digests: list[str],
    has_test: bool,
    val_fraction: float,
    seed: int,
    findings: list[Finding],
) -> dict[str, list[int]]:
    """Drop duplicates and leakage, draw validation; ``{split: indices into kept}`` (``test`` if ``has_test``)."""
    keep, dup_findings = deduplicate(kept, digests)
    findings += dup_findings
    unique = [(i, e) for i, e in enumerate(kept) if keep[i]]
    in_val = choose_validation([e for _, e in unique], val_fraction, seed)
    split_idx: dict[str, list[int]] = {"train": [], "validation": []}
    if has_test:
        split_idx["test"] = []
    for (i, e), val in zip(unique, in_val):
        split_idx["test" if e.split == "test" else ("validation" if val else "train")].append(i)
    return split_idx


def _collect(entry: Entry, res: ProcessResult, stats: dict[str, Any]) -> Finding | None:
    """The skip finding of one processed file, or None when it is kept (then counted in ``stats``).

    A report never quotes file contents: a non-image is described by its detected type, and quoted
    bytes in decoder messages are withheld (see :mod:`data_prep.filetype`).
    """
    if res.skip is not None:
        reason, detail = res.skip
        if reason == "not_an_image":
            detail = f"detected type: {describe_file(entry.file)}"
        return Finding(entry.rel, reason, SKIPPED, scrub_detail(detail))
    stats["resized"] += int(res.resized)
    stats["reencoded" if res.reencoded else "stored_original"] += 1
    return None


@contextlib.contextmanager
def _datasets_bars(enabled: bool) -> Iterator[None]:
    """Silence the ``datasets`` progress bars inside the block when ``enabled`` is False."""
    was_enabled = datasets.is_progress_bar_enabled()
    if not enabled:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled and not enabled:
            datasets.enable_progress_bars()


def save_build(
    dsd: DatasetDict, out: Path, tmp: Path, report: dict[str, Any], progress: bool, shards: dict[str, int]
) -> DatasetDict:
    """Write dataset, report and figure into a fresh folder, then swap it in for ``out``.

    ``shards`` is computed from the stored image sizes: it also avoids ``save_to_disk``'s own size
    estimate, which divides by zero on an empty split with an ``Image`` column.
    """
    staging = tmp / "out"
    with _datasets_bars(progress):
        dsd.save_to_disk(str(staging), num_shards=shards)
    (staging / REPORT_NAME).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    save_balance_figure(report["per_class"], staging / FIGURE_NAME)
    if out.exists():
        check_out(out)
        shutil.rmtree(out)
    shutil.move(str(staging), str(out))
    return load_from_disk(str(out))


__all__ = ["StrictModeError", "build_dataset", "create_features", "format_summary"]
