"""Loading the splits for the ArcFace trainer: where the data is, which rows count, labels and domains.

:func:`load_splits` opens a ``save_to_disk`` folder (data_prep's output), a plain image folder or a Hub
dataset (:func:`open_dataset_dict`), checks the splits and columns, and encodes labels with
``datasets`` (``class_encode_column`` for string labels, ``align_labels_with_mapping`` for a
``ClassLabel`` in another order, ``cast_column`` for string labels of an evaluation split). Labels with
no training image are left out with one warning. Domains follow :mod:`data_prep.contract`.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from autotrain import logger
from data_prep.contract import DOMAINS, FIELD, canonical_domain, is_hub_id, is_saved_dataset


class DataInputError(ValueError):
    """A data problem the user must fix (wrong folder layout, unlabelled images): one line, names the place.

    ``python -m autotrain.trainers.image_classification_custom`` prints it as the last line and exits 2;
    the traceback goes to the log at DEBUG level.
    """


class DataNotFoundError(DataInputError, FileNotFoundError):
    """``data_path`` is neither a dataset folder nor a loadable Hub dataset (a ``FileNotFoundError`` too)."""


@dataclass
class SplitData:
    """One split: the HF dataset (images not decoded), labels and domains as numpy arrays."""

    name: str
    dataset: Any
    labels: np.ndarray
    domains: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class PreparedData:
    """The splits the trainer uses and the label order (from the training split's ``ClassLabel``)."""

    class_names: list[str]
    train: SplitData
    validation: SplitData | None = None
    test: SplitData | None = None
    has_domains: bool = True
    source: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def class_has_field(self) -> np.ndarray:
        """(C,) True where the training split has a field photo of the class."""
        has = np.zeros(len(self.class_names), dtype=bool)
        has[np.unique(self.train.labels[self.train.domains == FIELD])] = True
        return has


# ------------------------------------------------------------------------------------------------------
# Opening the data
# ------------------------------------------------------------------------------------------------------


def open_dataset_dict(data_path: str, token: str | None = None, config_name: str | None = None):
    """Open ``data_path`` as a ``DatasetDict``; returns it and its kind (``saved``, ``imagefolder``, ``hub``).

    Accepts a folder written by ``save_to_disk`` (a ``DatasetDict`` such as data_prep's output, or a
    single ``Dataset``, used as ``train``), a plain image folder (``imagefolder``: class subfolders,
    optionally under ``train/``, ``validation/``, ``test/``), or a Hub dataset id.

    Raises:
        DataNotFoundError: ``data_path`` is neither an existing folder nor a loadable Hub dataset.
    """
    from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

    path = Path(data_path)
    if path.is_dir():
        if is_saved_dataset(path):
            loaded = load_from_disk(str(path))
            if isinstance(loaded, Dataset):
                loaded = DatasetDict({"train": loaded})
            return loaded, "saved"
        return load_dataset("imagefolder", data_dir=str(path)), "imagefolder"
    if path.exists():
        raise DataNotFoundError(f"data_path {data_path!r} is a file, not a dataset folder")
    hint = (
        f" (build it with `python -m data_prep build <image folder> --out {data_path}`)"
        if path.name == "autotrain-data"
        else ""
    )
    if not is_hub_id(data_path):
        raise DataNotFoundError(
            f"data_path {data_path!r} does not exist (working directory: {os.getcwd()}){hint}"
        )
    try:
        return load_dataset(data_path, name=config_name, token=token), "hub"
    except Exception as err:
        raise DataNotFoundError(
            f"data_path {data_path!r} is not an existing folder (working directory: {os.getcwd()}) and "
            f"could not be loaded as a Hub dataset ({type(err).__name__}: {err}){hint}"
        ) from err


def _links_outside(root: Path) -> list[str]:
    """Paths (relative to ``root``, POSIX) of the symlinks under ``root`` that resolve outside it.

    Links are not followed while walking (a linked folder outside is reported, not entered), as in
    data_prep's ``outside_root`` finding.
    """
    from data_prep.discovery import inside

    found: list[str] = []
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in sorted(dirs) + sorted(files):
            path = Path(folder) / name
            if path.is_symlink() and not inside(path, root):
                found.append(path.relative_to(root).as_posix())
    return sorted(found)


def _leave_out_links_outside(dd, data_path: str, image_column: str) -> tuple[Any, str | None]:
    """Drop the rows of an image folder whose file resolves outside ``data_path`` (a symlink leading out of
    the collection); returns the dataset and a warning naming what was left out (None when nothing)."""
    from datasets import DatasetDict
    from datasets import Image as ImageFeature

    from data_prep.discovery import inside

    root = Path(data_path)
    outside = _links_outside(root)
    if not outside:
        return dd, None
    kept = {}
    for split, ds in dd.items():
        if image_column in ds.column_names and isinstance(ds.features[image_column], ImageFeature):
            paths = _values(ds.cast_column(image_column, ImageFeature(decode=False)), image_column)
            rows = [i for i, item in enumerate(paths) if not item.get("path") or inside(item["path"], root)]
            if len(rows) < len(ds):
                ds = ds.select(rows)
        kept[split] = ds
    shown = ", ".join(outside[:5]) + (f" and {len(outside) - 5} more" if len(outside) > 5 else "")
    note = (
        f"{data_path}: {len(outside)} symlink(s) lead outside the data folder and are left out (not followed, "
        f"nothing there is read): {shown}; copy those files into the folder to train on them"
    )
    return DatasetDict(kept), note


def _values(dataset, column: str) -> list:
    """A column as a list, read at once (iterating ``dataset[column]`` reads one row at a time)."""
    return dataset[column][:]


def _check_imagefolder(dd, data_path: str, target_column: str) -> None:
    """Refuse an image folder whose images sit directly in ``train/`` (or ``validation/``...) with no
    species folders: ``imagefolder`` gives them no label (``None``)."""
    for split, ds in dd.items():
        values = _values(ds, target_column) if target_column in ds.column_names else [None] * len(ds)
        unlabelled = sum(v is None for v in values)
        if unlabelled:
            folder = Path(data_path) / split
            where = folder if folder.is_dir() else Path(data_path)
            raise DataInputError(
                f"{where}: {unlabelled} image(s) not inside a species folder; expected one folder per species, "
                f"{where}/<species>/<image> (e.g. {where}/Quercus robur/1.jpg), or a dataset built with "
                "`python -m data_prep build`"
            )


def _warn(notes: list[str], note: str, stacklevel: int = 3) -> None:
    """A data note of :func:`load_splits`: a Python warning (for the caller), the log, and ``notes``."""
    warnings.warn(note, stacklevel=stacklevel)
    logger.warning(note)
    notes.append(note)


def _evaluation_splits(
    dd, data_path: str, valid_split: str | None, test_split: str | None, required: tuple[bool, bool], notes
) -> tuple[str | None, str | None]:
    """The validation and test splits to use (None: skipped); ``required`` = (validation, test).

    A ``config:`` prefix on a split name is dropped (the configuration comes with ``train_split``).

    A missing split is an error when required, else skipped (a missing validation split with a warning).
    An empty split (data_prep saves an empty validation split when no species has two field photos) is
    skipped with a warning whether or not it was named explicitly: the data was found, there is just
    nothing in it to evaluate.
    """
    splits = list(dd.keys())
    valid_split, test_split = _config_and_split(valid_split)[1], _config_and_split(test_split)[1]
    if valid_split is not None and valid_split not in dd:
        message = (
            f"valid_split {valid_split!r} not in {data_path!r} (splits: {splits}); set valid_split to null "
            "to train without validation"
        )
        if required[0]:
            raise ValueError(message)
        _warn(notes, f"{message}: training without validation (no early stopping, last epoch kept)", 4)
        valid_split = None
    if test_split is not None and test_split not in dd:
        if required[1]:
            raise ValueError(f"test_split {test_split!r} not in {data_path!r} (splits: {splits})")
        test_split = None
    if valid_split is not None and len(dd[valid_split]) == 0:
        note = (
            f"validation split {valid_split!r} is empty in {data_path!r}: training without validation, so "
            "no epoch selection (the last epoch is kept) and no early stopping"
        )
        _warn(notes, note, 4)
        valid_split = None
    if test_split is not None and len(dd[test_split]) == 0:
        _warn(notes, f"test split {test_split!r} is empty in {data_path!r}: skipped, no test metrics", 4)
        test_split = None
    return valid_split, test_split


# ------------------------------------------------------------------------------------------------------
# Labels and domains
# ------------------------------------------------------------------------------------------------------


def _label_table(dataset, column: str, split: str):
    """The label column of a split alone, as an in-memory ``Dataset``: encoding it decodes no image and
    writes no cache file next to the user's data.

    Raises:
        DataInputError: an image has no label (``None``, or ``-1`` in a ``ClassLabel`` column).
    """
    from datasets import ClassLabel, Dataset, Features

    feature = dataset.features[column]
    values = _values(dataset, column)
    missing = sum(v is None or (isinstance(feature, ClassLabel) and v < 0) for v in values)
    if missing:
        raise DataInputError(
            f"split {split!r}: {missing} image(s) without a {column!r} value; give every image a label "
            "(or leave those images out)"
        )
    return Dataset.from_dict({column: values}, features=Features({column: feature}))


def _encode_train_labels(dataset, column: str, split: str) -> tuple[list[str], np.ndarray]:
    """Label names and ``(N,)`` ids of the training split: a ``ClassLabel``'s own order, else the sorted
    string values (``class_encode_column``)."""
    from datasets import ClassLabel

    table = _label_table(dataset, column, split)
    if not isinstance(table.features[column], ClassLabel):
        table = table.class_encode_column(column)
    return list(table.features[column].names), np.asarray(_values(table, column), dtype=np.int64)


def _encode_eval_labels(dataset, column: str, names: list[str], split: str, unknown: set[str]) -> np.ndarray:
    """``(N,)`` ids into the training split's label ``names``; a label the training split lacks gets -1
    and its name is added to ``unknown``.

    Raises:
        DataInputError: an unlabelled image, or a ``ClassLabel`` whose names differ only in case from
            others (``align_labels_with_mapping`` matches names case-insensitively).
    """
    from datasets import ClassLabel, Value

    table = _label_table(dataset, column, split)
    feature = table.features[column]
    if isinstance(feature, ClassLabel) and list(feature.names) == names:
        return np.asarray(_values(table, column), dtype=np.int64)
    if isinstance(feature, ClassLabel):
        extra = sorted(set(feature.names) - set(names))
        known = names + extra
        lowered = [n.lower() for n in known]
        clashing = sorted(n for n in known if lowered.count(n.lower()) > 1)
        if clashing:
            raise DataInputError(
                f"split {split!r}: label names differ only in case ({', '.join(clashing[:10])}); give each "
                "species one spelling"
            )
        table = table.align_labels_with_mapping({n: i for i, n in enumerate(known)}, column)
    else:
        table = table.cast_column(column, Value("string")) if feature != Value("string") else table
        extra = sorted(set(table.unique(column)) - set(names))
        known = names + extra
        table = table.cast_column(column, ClassLabel(names=known))
    ids = np.asarray(_values(table, column), dtype=np.int64)
    outside = ids >= len(names)
    unknown.update(known[i] for i in np.unique(ids[outside]))
    ids[outside] = -1
    return ids


def _domains(dataset, column: str, split: str) -> np.ndarray:
    """``(N,)`` domain ids (``DOMAINS`` order) from a ``ClassLabel`` or string column; the words of
    ``data_prep.contract.DOMAIN_SYNONYMS`` are accepted, in any case.

    Raises:
        ValueError: a value that is no domain word (or no value).
    """
    from datasets import ClassLabel

    feature = dataset.features[column]
    values = _values(dataset, column)
    if isinstance(feature, ClassLabel):
        if list(feature.names) == list(DOMAINS) and all(v is not None and v >= 0 for v in values):
            return np.asarray(values, dtype=np.int64)
        values = [feature.int2str(v) if v is not None and v >= 0 else None for v in values]
    words = {v: canonical_domain(v) if v is not None else None for v in set(values)}
    bad = sorted(str(v) for v, word in words.items() if word is None)
    if bad:
        raise ValueError(f"split {split!r}: domain values must be {list(DOMAINS)}, found {bad}")
    ids = {v: DOMAINS.index(word) for v, word in words.items()}
    return np.asarray([ids[v] for v in values], dtype=np.int64)


@dataclass
class _Classes:
    """The training split's label names and the classes among them (labels with training images)."""

    names: list[str]  # every label name of the training split, in its order
    remap: np.ndarray  # (len(names),) label id -> class id, -1 for a label with no training image
    class_names: list[str]
    dropped: list[str]  # label names left out (no training image), then names seen only in evaluation
    left_out: dict[str, int] = field(default_factory=dict)  # evaluation split -> images of dropped labels
    eval_only: set[str] = field(default_factory=set)  # string labels found only in an evaluation split

    @classmethod
    def from_train(cls, names: list[str], train_ids: np.ndarray, data_path: str) -> _Classes:
        """Labels with no training image cannot be learned (no prototype, no gradient): they are left
        out, so ``class_has_field`` (and the "herbarium only" count) covers only classes with images.

        Raises:
            ValueError: fewer than 2 labels have training images.
        """
        present = np.unique(train_ids)
        remap = np.full(len(names), -1, dtype=np.int64)
        remap[present] = np.arange(len(present))
        dropped = [c for i, c in enumerate(names) if remap[i] < 0]
        if len(present) < 2:
            raise ValueError(
                f"{data_path!r}: need at least 2 classes with training images, found {len(present)}"
                + (f" ({len(dropped)} more label(s) have no training image)" if dropped else "")
            )
        return cls(names, remap, [names[i] for i in present], dropped)

    def note(self, data_path: str, emptied: list[str]) -> str | None:
        """The warning naming the labels left out and the evaluation images not evaluated (None: none)."""
        dropped = self.dropped + sorted(self.eval_only)
        if not dropped:
            return None
        shown = ", ".join(dropped[:20]) + (f" and {len(dropped) - 20} more" if len(dropped) > 20 else "")
        evaluated = "; ".join(
            f"{n} {split} image(s) of them not evaluated" for split, n in self.left_out.items()
        )
        return (
            f"{len(dropped)} label(s) of {data_path!r} have no training image and are left out (the "
            f"model has {len(self.class_names)} classes): {shown}"
            + (f"; {evaluated}" if evaluated else "")
            + (f"; split(s) {', '.join(emptied)} left empty and skipped" if emptied else "")
        )


def _split_data(
    dd,
    name: str | None,
    classes: _Classes,
    columns: tuple[str, str, str | None],
    ids: np.ndarray | None = None,
) -> SplitData | None:
    """One split as :class:`SplitData` (None for ``name`` None), rows of dropped labels left out.

    Args:
        columns: ``(image, label, domain)`` columns; domain None: every image is a field photo.
        ids: The split's label ids when already encoded (the training split), else encoded here.
    """
    if name is None:
        return None
    image_column, target_column, domain_column = columns
    ds = dd[name]
    for column in (image_column, target_column):
        if column not in ds.column_names:
            raise ValueError(f"column {column!r} not in split {name!r} (columns: {ds.column_names})")
    if ids is None:
        ids = _encode_eval_labels(ds, target_column, classes.names, name, classes.eval_only)
    labels = np.where(ids >= 0, classes.remap[np.maximum(ids, 0)], -1)
    if domain_column is None:
        domains = np.full(len(labels), FIELD, dtype=np.int64)
    else:
        domains = _domains(ds, domain_column, name)
    ds = ds.select_columns([image_column])
    known = labels >= 0
    if not known.all():
        classes.left_out[name] = int((~known).sum())
        rows = np.flatnonzero(known)
        ds, labels, domains = ds.select(rows), labels[rows], domains[rows]
    return SplitData(name=name, dataset=ds, labels=labels, domains=domains)


def _config_and_split(name: str | None) -> tuple[str | None, str | None]:
    """``"config:split"`` -> ``("config", "split")``; a plain split name -> ``(None, name)``."""
    if name and ":" in name:
        config, split = name.split(":", 1)
        return config, split
    return None, name


def load_splits(
    data_path: str,
    train_split: str = "train",
    valid_split: str | None = "validation",
    test_split: str | None = "test",
    image_column: str = "image",
    target_column: str = "label",
    domain_column: str = "domain",
    token: str | None = None,
    test_split_required: bool = False,
    valid_split_required: bool = True,
) -> PreparedData:
    """Load the training, validation and (when present) test splits with labels and domains.

    Args:
        data_path: See :func:`open_dataset_dict`.
        train_split: Training split; ``config:split`` selects a Hub dataset configuration.
        valid_split: Validation split or None.
        test_split: Test split or None; a missing test split is skipped unless ``test_split_required``.
        image_column: Image column.
        target_column: Label column (``ClassLabel``, or strings encoded in sorted order).
        domain_column: Domain column; when missing, every image counts as a field photo (warned).
        token: Hub token for private datasets.
        test_split_required: Raise when ``test_split`` is missing.
        valid_split_required: Raise when ``valid_split`` is missing (otherwise: warn, no validation).
            An empty validation or test split is always skipped with a warning (what data_prep writes
            when no species has enough field photos for validation).

    Raises:
        DataNotFoundError: see :func:`open_dataset_dict` (a ``FileNotFoundError``).
        DataInputError: an image folder without species folders, an image without a label.
        ValueError: a missing split or column, an empty training split, fewer than 2 classes with
            training images.
    """
    config_name, train_split = _config_and_split(train_split)
    dd, kind = open_dataset_dict(data_path, token=token, config_name=config_name)
    notes: list[str] = []
    if kind == "imagefolder":
        dd, note = _leave_out_links_outside(dd, data_path, image_column)
        if note:
            _warn(notes, note)
        _check_imagefolder(dd, data_path, target_column)
    if train_split not in dd:
        raise ValueError(f"train_split {train_split!r} not in {data_path!r} (splits: {list(dd.keys())})")
    if len(dd[train_split]) == 0:
        raise ValueError(f"train split {train_split!r} is empty in {data_path!r}: nothing to train on")
    required = (valid_split_required, test_split_required)
    valid_split, test_split = _evaluation_splits(dd, data_path, valid_split, test_split, required, notes)
    train = dd[train_split]
    for argument, column in (("image_column", image_column), ("target_column", target_column)):
        if column not in train.column_names:
            raise ValueError(
                f"{argument}: column {column!r} not in split {train_split!r} (columns: {train.column_names})"
            )
    names, train_ids = _encode_train_labels(train, target_column, train_split)
    classes = _Classes.from_train(names, train_ids, data_path)
    has_domains = domain_column in train.column_names
    if not has_domains:
        note = (
            f"domain_column {domain_column!r} not in {data_path!r} ({kind}): every image is treated as a "
            "field photo; per-domain metrics and class_domain_balanced sampling degrade to class-level"
        )
        _warn(notes, note)
    columns = (image_column, target_column, domain_column if has_domains else None)
    train_data = _split_data(dd, train_split, classes, columns, train_ids)
    valid_data, test_data = (_split_data(dd, name, classes, columns) for name in (valid_split, test_split))
    emptied = [d.name for d in (valid_data, test_data) if d is not None and len(d) == 0]
    note = classes.note(data_path, emptied)
    if note:
        _warn(notes, note)
    return PreparedData(
        class_names=classes.class_names,
        train=train_data,
        validation=valid_data if valid_data is not None and len(valid_data) else None,
        test=test_data if test_data is not None and len(test_data) else None,
        has_domains=has_domains,
        source=kind,
        notes=notes,
    )
