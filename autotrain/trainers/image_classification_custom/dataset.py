"""Data for the ArcFace trainer: loading the splits, a decoded-image cache, transforms, samplers.

The input pipeline is built for CPU speed (the stock trainer decodes and augments every image with
albumentations in the main process, every epoch):

1. every image is decoded once, resized (PIL, the backbone's filter) and stored as uint8 in an
   ``(N, H, W, 3)`` array: training images at ``round(1.15 * image_size)`` squared (room for random
   crops), evaluation images at exactly ``image_size`` squared, which is what the saved
   ``ViTImageProcessor`` does (square resize, no crop). At 224 px a training image takes 200 KB
   (258x258x3): 4 GiB, the default ``cache_memory_mb``, holds about 20,000 of them; a larger split
   goes to a memory-mapped file instead;
2. training augmentation works on uint8 tensors with ``torchvision.transforms.v2`` (in DataLoader
   workers when ``dataloader_num_workers > 0``); conversion to float and normalisation happen once per
   batch in the collator, which also returns channels-last tensors;
3. samplers are seeded and epoch-aware, so a resumed run replays the same order.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image as PILImage
from torch.utils.data import Dataset as TorchDataset
from torch.utils.data import Sampler, get_worker_info
from torchvision.transforms import v2

from autotrain import logger

DOMAIN_NAMES = ("herbarium", "field")
FIELD = 1
TRAIN_CACHE_FACTOR = 1.15
_PIL_FILTERS = {
    "nearest": PILImage.Resampling.NEAREST,
    "bilinear": PILImage.Resampling.BILINEAR,
    "bicubic": PILImage.Resampling.BICUBIC,
    "lanczos": PILImage.Resampling.LANCZOS,
    "box": PILImage.Resampling.BOX,
    "hamming": PILImage.Resampling.HAMMING,
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


# ------------------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------------------


class DataInputError(ValueError):
    """A data problem the user must fix (wrong folder layout, unlabelled images): one line, names the place.

    ``python -m autotrain.trainers.image_classification_custom`` prints it as the last line and exits 2;
    the traceback goes to the log at DEBUG level.
    """


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


def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def open_dataset_dict(data_path: str, token: str | None = None, config_name: str | None = None):
    """Open ``data_path`` as a ``DatasetDict``.

    Accepts a folder written by ``save_to_disk`` (a ``DatasetDict`` such as data_prep's output, or a
    single ``Dataset``, used as ``train``), a plain image folder (``imagefolder``: class subfolders,
    optionally under ``train/``, ``validation/``, ``test/``), or a Hub dataset id.

    Raises:
        FileNotFoundError: ``data_path`` is neither an existing folder nor a loadable Hub dataset.
    """
    from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

    path = Path(data_path)
    if path.is_dir():
        if _is_saved_dataset(path):
            loaded = load_from_disk(str(path))
            if isinstance(loaded, Dataset):
                loaded = DatasetDict({"train": loaded})
            return loaded, "saved"
        return load_dataset("imagefolder", data_dir=str(path)), "imagefolder"
    if path.exists():
        raise FileNotFoundError(f"data_path {data_path!r} is a file, not a dataset folder")
    hint = (
        f" (build it with `python -m data_prep build <image folder> --out {data_path}`)"
        if path.name == "autotrain-data"
        else ""
    )
    if not _HUB_ID.match(data_path):
        raise FileNotFoundError(
            f"data_path {data_path!r} does not exist (working directory: {os.getcwd()}){hint}"
        )
    try:
        return load_dataset(data_path, name=config_name, token=token), "hub"
    except Exception as err:
        raise FileNotFoundError(
            f"data_path {data_path!r} is not an existing folder (working directory: {os.getcwd()}) and "
            f"could not be loaded as a Hub dataset ({type(err).__name__}: {err}){hint}"
        ) from err


def _links_outside(root: Path) -> list[str]:
    """Paths (relative to ``root``, POSIX) of the symlinks under ``root`` that resolve outside it.

    Links are not followed while walking (a linked folder outside is reported, not entered), as in
    data_prep's ``outside_root`` finding.
    """
    from data_prep.layouts import _inside

    found: list[str] = []
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in sorted(dirs) + sorted(files):
            path = Path(folder) / name
            if path.is_symlink() and not _inside(path, root):
                found.append(path.relative_to(root).as_posix())
    return sorted(found)


def _leave_out_links_outside(dd, data_path: str, image_column: str) -> tuple[Any, str | None]:
    """Drop the rows of an image folder whose file resolves outside ``data_path`` (a symlink leading out of
    the collection); returns the dataset and a warning naming what was left out (None when nothing)."""
    from datasets import DatasetDict
    from datasets import Image as ImageFeature

    from data_prep.layouts import _inside

    root = Path(data_path)
    outside = _links_outside(root)
    if not outside:
        return dd, None
    kept = {}
    for split, ds in dd.items():
        if image_column in ds.column_names and isinstance(ds.features[image_column], ImageFeature):
            paths = ds.cast_column(image_column, ImageFeature(decode=False))[image_column]
            rows = [i for i, item in enumerate(paths) if not item.get("path") or _inside(item["path"], root)]
            if len(rows) < len(ds):
                ds = ds.select(rows)
        kept[split] = ds
    shown = ", ".join(outside[:5]) + (f" and {len(outside) - 5} more" if len(outside) > 5 else "")
    note = (
        f"{data_path}: {len(outside)} symlink(s) lead outside the data folder and are left out (not followed, "
        f"nothing there is read): {shown}; copy those files into the folder to train on them"
    )
    return DatasetDict(kept), note


def _class_names(dataset, column: str) -> list[str]:
    feature = dataset.features[column]
    names = getattr(feature, "names", None)
    if names:
        return list(names)
    return sorted({str(v) for v in dataset[column]})


def _check_imagefolder(dd, data_path: str, target_column: str) -> None:
    """Refuse an image folder whose images sit directly in ``train/`` (or ``validation/``...) with no
    species folders: ``imagefolder`` gives them no label (``None``)."""
    for split, ds in dd.items():
        values = ds[target_column] if target_column in ds.column_names else [None] * len(ds)
        unlabelled = sum(v is None for v in values)
        if unlabelled:
            folder = Path(data_path) / split
            where = folder if folder.is_dir() else Path(data_path)
            raise DataInputError(
                f"{where}: {unlabelled} image(s) not inside a species folder; expected one folder per species, "
                f"{where}/<species>/<image> (e.g. {where}/Quercus robur/1.jpg), or a dataset built with "
                "`python -m data_prep build`"
            )


def _labels(
    dataset, column: str, class_names: Sequence[str], split: str, unknown: set[str] | None = None
) -> np.ndarray:
    """Label ids into ``class_names``; names not in it raise, or (with ``unknown``) are added there, id -1."""
    feature = dataset.features[column]
    names = getattr(feature, "names", None)
    index = {name: i for i, name in enumerate(class_names)}
    values = dataset[column]
    missing = sum(v is None or (bool(names) and v < 0) for v in values)  # ClassLabel -1: no label
    if missing:
        raise DataInputError(
            f"split {split!r}: {missing} image(s) without a {column!r} value; give every image a label "
            "(or leave those images out)"
        )
    if names:
        if list(names) == list(class_names):
            return np.asarray(values, dtype=np.int64)
        values = [names[v] for v in values]
    found = sorted({str(v) for v in values} - set(index))
    if found and unknown is None:
        raise ValueError(f"split {split!r} has classes that the training split lacks: {found[:10]}")
    if found:
        unknown.update(found)
    return np.asarray([index.get(str(v), -1) for v in values], dtype=np.int64)


def _domains(dataset, column: str, split: str) -> np.ndarray | None:
    if column not in dataset.column_names:
        return None
    feature = dataset.features[column]
    names = getattr(feature, "names", None)
    values = dataset[column]
    if names:
        values = [names[v] for v in values]
    values = [str(v).lower() for v in values]
    unknown = sorted(set(values) - set(DOMAIN_NAMES))
    if unknown:
        raise ValueError(f"split {split!r}: domain values must be {list(DOMAIN_NAMES)}, found {unknown}")
    return np.asarray([DOMAIN_NAMES.index(v) for v in values], dtype=np.int64)


def _warn(notes: list[str], note: str) -> None:
    """A data note of :func:`load_splits`: a Python warning (for the caller), the log, and ``notes``."""
    warnings.warn(note, stacklevel=3)
    logger.warning(note)
    notes.append(note)


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
        FileNotFoundError: see :func:`open_dataset_dict`.
        ValueError: a missing split or column, an empty training split, or classes in an evaluation
            split unknown to training.
    """
    config_name = None
    if ":" in train_split:
        config_name, train_split = train_split.split(":", 1)
    strip = lambda s: s.split(":", 1)[1] if s and ":" in s else s  # noqa: E731
    valid_split, test_split = strip(valid_split), strip(test_split)

    dd, kind = open_dataset_dict(data_path, token=token, config_name=config_name)
    notes = []
    if kind == "imagefolder":
        dd, note = _leave_out_links_outside(dd, data_path, image_column)
        if note:
            _warn(notes, note)
        _check_imagefolder(dd, data_path, target_column)
    splits = list(dd.keys())
    if train_split not in dd:
        raise ValueError(f"train_split {train_split!r} not in {data_path!r} (splits: {splits})")
    if valid_split is not None and valid_split not in dd:
        message = (
            f"valid_split {valid_split!r} not in {data_path!r} (splits: {splits}); set valid_split to null "
            "to train without validation"
        )
        if valid_split_required:
            raise ValueError(message)
        note = f"{message}: training without validation (no early stopping, last epoch kept)"
        _warn(notes, note)
        valid_split = None
    if test_split is not None and test_split not in dd:
        if test_split_required:
            raise ValueError(f"test_split {test_split!r} not in {data_path!r} (splits: {splits})")
        test_split = None
    if len(dd[train_split]) == 0:
        raise ValueError(f"train split {train_split!r} is empty in {data_path!r}: nothing to train on")
    # An empty split (data_prep saves an empty validation split when no species has two field photos)
    # is treated like a missing one, whether or not it was named explicitly: the data was found, there
    # is just nothing in it to evaluate.
    if valid_split is not None and len(dd[valid_split]) == 0:
        note = (
            f"validation split {valid_split!r} is empty in {data_path!r}: training without validation, so "
            "no epoch selection (the last epoch is kept) and no early stopping"
        )
        _warn(notes, note)
        valid_split = None
    if test_split is not None and len(dd[test_split]) == 0:
        note = f"test split {test_split!r} is empty in {data_path!r}: skipped, no test metrics"
        _warn(notes, note)
        test_split = None

    train = dd[train_split]
    for column in (image_column, target_column):
        if column not in train.column_names:
            raise ValueError(
                f"{'image_column' if column == image_column else 'target_column'}: column {column!r} not in "
                f"split {train_split!r} (columns: {train.column_names})"
            )
    class_names = _class_names(train, target_column)
    # Labels with no training image cannot be learned (no prototype, no gradient): they are left out,
    # with their evaluation images, and the warning names them. ``class_has_field`` (and with it the
    # "herbarium only" group of metrics.json and the model card) then counts only classes that have
    # herbarium sheets or field photos to train on.
    train_ids = _labels(train, target_column, class_names, train_split)
    present = np.unique(train_ids)
    trained = set(present.tolist())
    dropped_names = [c for i, c in enumerate(class_names) if i not in trained]
    remap = np.full(len(class_names), -1, dtype=np.int64)
    remap[present] = np.arange(len(present))
    full_names, class_names = class_names, [class_names[i] for i in present]
    if len(class_names) < 2:
        raise ValueError(
            f"{data_path!r}: need at least 2 classes with training images, found {len(class_names)}"
            + (f" ({len(dropped_names)} more label(s) have no training image)" if dropped_names else "")
        )

    has_domains = domain_column in train.column_names
    if not has_domains:
        note = (
            f"domain_column {domain_column!r} not in {data_path!r} ({kind}): every image is treated as a "
            "field photo; per-domain metrics and class_domain_balanced sampling degrade to class-level"
        )
        _warn(notes, note)

    left_out: dict[str, int] = {}  # evaluation split -> images of dropped classes
    eval_only: set[str] = set()  # string labels found only in an evaluation split

    def make(name: str | None) -> SplitData | None:
        if name is None:
            return None
        ds = dd[name]
        for column in (image_column, target_column):
            if column not in ds.column_names:
                raise ValueError(f"column {column!r} not in split {name!r} (columns: {ds.column_names})")
        ids = _labels(ds, target_column, full_names, name, None if name == train_split else eval_only)
        labels = np.where(ids >= 0, remap[np.maximum(ids, 0)], -1)
        domains = _domains(ds, domain_column, name) if has_domains else None
        if domains is None:
            domains = np.full(len(labels), FIELD, dtype=np.int64)
        ds = ds.select_columns([image_column])
        known = labels >= 0
        if not known.all():
            left_out[name] = int((~known).sum())
            rows = np.flatnonzero(known)
            ds, labels, domains = ds.select(rows), labels[rows], domains[rows]
        return SplitData(name=name, dataset=ds, labels=labels, domains=domains)

    train_data, valid_data, test_data = make(train_split), make(valid_split), make(test_split)
    emptied = [d.name for d in (valid_data, test_data) if d is not None and len(d) == 0]
    valid_data = None if valid_data is not None and len(valid_data) == 0 else valid_data
    test_data = None if test_data is not None and len(test_data) == 0 else test_data
    dropped_names += sorted(eval_only)
    if dropped_names:
        shown = ", ".join(dropped_names[:20]) + (
            f" and {len(dropped_names) - 20} more" if len(dropped_names) > 20 else ""
        )
        evaluated = "; ".join(f"{n} {split} image(s) of them not evaluated" for split, n in left_out.items())
        note = (
            f"{len(dropped_names)} label(s) of {data_path!r} have no training image and are left out (the "
            f"model has {len(class_names)} classes): {shown}"
            + (f"; {evaluated}" if evaluated else "")
            + (f"; split(s) {', '.join(emptied)} left empty and skipped" if emptied else "")
        )
        _warn(notes, note)
    return PreparedData(
        class_names=class_names,
        train=train_data,
        validation=valid_data,
        test=test_data,
        has_domains=has_domains,
        source=kind,
        notes=notes,
    )


# ------------------------------------------------------------------------------------------------------
# Decoded-image cache
# ------------------------------------------------------------------------------------------------------


def _decode_one(item: Any, size: int, resample: int, index: int) -> np.ndarray:
    """One dataset image as the model sees it, under the project's image policy (``data_prep.images``,
    shared with data_prep and the app): EXIF orientation, any mode to 8-bit RGB (16-bit scaled, alpha
    onto white), the first frame, reduced-scale decoding of large files and the pixel limit, then one
    resize with the backbone's filter."""
    from data_prep.images import ImageError, load_for_model

    if isinstance(item, dict) and item.get("bytes") is None and not item.get("path"):
        raise ValueError(f"image #{index} has neither bytes nor a path")
    if not isinstance(item, dict | PILImage.Image):
        raise TypeError(f"unsupported image entry {type(item).__name__}")
    path = item.get("path") if isinstance(item, dict) else None
    try:
        return load_for_model(item, size, resample, name=None if path else f"image #{index}")
    except ImageError as err:  # the user's file, not a crash: one line naming it and what to do
        if path and item.get("bytes") is None:  # a file on disk (an image folder)
            raise DataInputError(
                f"{path}: {err}; or build the dataset with `python -m data_prep build`, which leaves such "
                "files out and reports them"
            ) from err
        raise DataInputError(f"image #{index}{f' ({path})' if path else ''} of the dataset: {err}") from err


def decode_images(
    dataset: Any,
    image_column: str,
    size: int,
    interpolation: str = "bilinear",
    draft: bool = False,
    memory_budget_mb: int = 4096,
    spill_dir: str | None = None,
    num_threads: int | None = None,
    chunk: int = 256,
) -> np.ndarray:
    """Decode every image of ``dataset`` once into a ``(N, size, size, 3)`` uint8 array.

    Every data source (a data_prep dataset, an image folder, a Hub dataset) is decoded under the
    project's image policy (:mod:`data_prep.images`), like data_prep and the app: an EXIF-rotated photo
    is upright, a 16-bit scan is scaled rather than white, a cut-out is on white.

    Args:
        dataset: HF ``Dataset`` with an ``Image`` column.
        image_column: The image column.
        size: Square output size.
        interpolation: PIL filter name (the backbone's; also used by the saved image processor).
        draft: Kept for compatibility: reduced-scale decoding (JPEG DCT scaling never below
            ``size``, box reduction of other formats never below twice ``size``) is part of the image
            policy for every split, so that the app, which decodes the same way, sees the same pixels.
        memory_budget_mb: Above this size the array is a memory-mapped file in ``spill_dir``.
        spill_dir: Folder for the memory-mapped file.
        num_threads: Decoding threads (PIL releases the GIL); default: the CPU count.
        chunk: Rows read from the dataset at a time.
    """
    from datasets import Image as ImageFeature

    n = len(dataset)
    nbytes = n * size * size * 3
    if nbytes > memory_budget_mb * 2**20:
        if spill_dir is None:
            raise ValueError("the decoded images exceed cache_memory_mb and no spill folder was given")
        Path(spill_dir).mkdir(parents=True, exist_ok=True)
        file = Path(spill_dir) / f"images-{size}-{n}-{os.getpid()}.u8"
        logger.info(f"Image cache: {nbytes / 2**20:.0f} MiB > cache_memory_mb, memory-mapped at {file}")
        array = np.lib.format.open_memmap(file, mode="w+", dtype=np.uint8, shape=(n, size, size, 3))
    else:
        array = np.empty((n, size, size, 3), dtype=np.uint8)
    if isinstance(dataset.features.get(image_column), ImageFeature):
        dataset = dataset.cast_column(image_column, ImageFeature(decode=False))
    resample = _PIL_FILTERS.get(interpolation, PILImage.Resampling.BILINEAR)
    threads = num_threads or max(1, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for start in range(0, n, chunk):
            items = dataset[start : start + chunk][image_column]
            n_items = len(items)
            decoded = pool.map(
                _decode_one, items, [size] * n_items, [resample] * n_items, range(start, start + n_items)
            )
            for offset, image in enumerate(decoded):
                array[start + offset] = image
    return array


# ------------------------------------------------------------------------------------------------------
# Transforms, datasets, collator
# ------------------------------------------------------------------------------------------------------


def train_cache_size(image_size: int, augmentation: float) -> int:
    """Side of the cached training images: room for random crops when augmenting."""
    return int(round(image_size * TRAIN_CACHE_FACTOR)) if augmentation > 0 else image_size


def create_train_transform(
    image_size: int, strength: float = 1.0, interpolation: str = "bilinear"
) -> v2.Compose:
    """Augmentation on uint8 ``(3, H, W)`` tensors that narrows the herbarium/field gap.

    Herbarium sheets are flat, pale, dried and arbitrarily oriented; field photos are green, cluttered
    and partial. Random resized crops (scale down to ``1 - 0.65 * strength``), flips, rotation,
    brightness/contrast/saturation jitter, random grayscale and blur make the model rely on shape and
    venation rather than framing, lighting and paper tone. Hue is left alone: flower colour identifies
    species (and hue jitter costs ~10 ms per image). ``strength`` scales every probability and range;
    0 returns a plain resize. About 10 ms per 224 px image on one CPU core at strength 1.

    Args:
        image_size: Output side.
        strength: 0 (none) .. 2 (strongest); 1 is the default.
        interpolation: Resize filter name.
    """
    mode = v2.InterpolationMode.BICUBIC if interpolation == "bicubic" else v2.InterpolationMode.BILINEAR
    if strength <= 0:
        return v2.Compose([v2.Resize((image_size, image_size), interpolation=mode, antialias=True)])
    a = float(strength)
    min_scale = max(0.08, 1.0 - 0.65 * a)
    blur_kernel = max(3, (image_size // 32) | 1)
    # Probabilities keep the costly ops (rotation, hue: ~10 ms per 224 px image on one core) occasional.
    return v2.Compose(
        [
            v2.RandomResizedCrop(image_size, scale=(min_scale, 1.0), interpolation=mode, antialias=True),
            v2.RandomHorizontalFlip(p=0.5),
            v2.RandomVerticalFlip(p=min(0.5, 0.1 * a)),
            v2.RandomApply([v2.RandomRotation(degrees=min(180.0, 20.0 * a))], p=min(1.0, 0.25 * a)),
            v2.RandomApply(
                [v2.ColorJitter(brightness=0.4 * a, contrast=0.4 * a, saturation=0.5 * a)],
                p=min(1.0, 0.8 * a),
            ),
            v2.RandomGrayscale(p=min(1.0, 0.15 * a)),
            v2.RandomApply([v2.GaussianBlur(blur_kernel, sigma=(0.1, 1.5 * a))], p=min(1.0, 0.2 * a)),
        ]
    )


class CachedImageDataset(TorchDataset):
    """Items ``{"pixel_values": uint8 (3, H, W), "labels": int}`` from a decoded-image array.

    Args:
        images: ``(N, H, W, 3)`` uint8 (array or memmap).
        labels: ``(N,)`` class ids.
        transform: Applied to the uint8 ``(3, H, W)`` tensor (training augmentation) or None.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Any | None = None) -> None:
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image = torch.from_numpy(np.ascontiguousarray(self.images[index])).permute(2, 0, 1)
        if self.transform is not None:
            if get_worker_info() is None:
                # In the main process: one thread per small-image op is 10x faster than torch's intra-op
                # pool fighting the training step (DataLoader workers already run single-threaded).
                threads = torch.get_num_threads()
                torch.set_num_threads(1)
                try:
                    image = self.transform(image)
                finally:
                    torch.set_num_threads(threads)
            else:
                image = self.transform(image)
        return {"pixel_values": image, "labels": int(self.labels[index])}


class NormalizeCollator:
    """Stack uint8 images, convert to float, normalise with the model's mean/std, channels-last.

    Args:
        mean: Per-channel mean of ``[0, 1]`` pixels.
        std: Per-channel std.
        channels_last: Return ``torch.channels_last`` tensors (faster convolutions on CPU and GPU).
        keep_uint8: Return the stacked uint8 images (``ArcFaceTrainer`` normalises them on the device).
    """

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        channels_last: bool = True,
        keep_uint8: bool = False,
    ) -> None:
        self.keep_uint8 = keep_uint8
        self.scale = (1.0 / (255.0 * torch.tensor(std, dtype=torch.float32))).view(1, 3, 1, 1)
        self.shift = (torch.tensor(mean, dtype=torch.float32) / torch.tensor(std, dtype=torch.float32)).view(
            1, 3, 1, 1
        )
        self.channels_last = channels_last
        self._device_params: dict[torch.device, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def _on_device(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(scale, 255 * scale, shift)`` on ``device``, copied once per device (a host-to-device copy per
        batch would stall the GPU queue)."""
        params = self._device_params.get(device)
        if params is None:
            params = tuple(t.to(device) for t in (self.scale, 255.0 * self.scale, self.shift))
            self._device_params[device] = params
        return params

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers get the CPU tensors only
        return {**self.__dict__, "_device_params": {}}

    def _normalize(self, x: torch.Tensor, unit: bool) -> torch.Tensor:
        scale, unit_scale, shift = self._on_device(x.device)
        x = x.mul_(unit_scale if unit else scale).sub_(shift)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, 3, H, W)`` -> normalised float32 (on the images' device)."""
        return self._normalize(images.float(), unit=False)

    def normalize_unit(self, images: torch.Tensor) -> torch.Tensor:
        """Float ``[0, 1]`` ``(B, 3, H, W)`` (e.g. from :class:`BatchAugment`) -> normalised, in place."""
        return self._normalize(images, unit=True)

    def __call__(self, batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        images = torch.stack([item["pixel_values"] for item in batch])
        labels = torch.tensor([item["labels"] for item in batch], dtype=torch.long)
        if self.keep_uint8:  # normalised (and augmented) on the training device: a 4x smaller copy
            return {"pixel_values": images, "labels": labels}
        return {"pixel_values": self.normalize(images), "labels": labels}


def resize_uint8(images: np.ndarray, size: int, interpolation: str = "bilinear") -> torch.Tensor:
    """``(N, H, W, 3)`` uint8 -> ``(N, 3, size, size)`` uint8 (antialiased), e.g. cached training images
    brought to the evaluation size for prototypes and t-SNE."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    mode = v2.InterpolationMode.BICUBIC if interpolation == "bicubic" else v2.InterpolationMode.BILINEAR
    return v2.functional.resize(x, [size, size], interpolation=mode, antialias=True)


# ------------------------------------------------------------------------------------------------------
# Samplers
# ------------------------------------------------------------------------------------------------------


class BalancedSampler(Sampler[int]):
    """Seeded, epoch-aware training sampler: shuffling, or class (and domain) balancing.

    - ``mode="shuffle"``: a permutation of the dataset;
    - ``mode="class"``: each draw picks a class uniformly among the classes present, then an image of it
      uniformly (with replacement);
    - ``mode="class_domain"``: as ``class``, then a domain uniformly among the domains the class has
      (herbarium, field), then an image.

    An epoch has ``len(labels)`` draws rounded up to a multiple of ``multiple_of`` (the batch size times
    the number of processes), topped up with random images, so that no batch is a lone image (BatchNorm
    cannot train on one). The order depends only on ``(seed, epoch)``: every process of a distributed
    run and a resumed run see the same sequence. The Trainer calls ``set_epoch`` (through accelerate)
    before every epoch; without it consecutive iterations still differ.

    Args:
        labels: ``(N,)`` class ids.
        domains: ``(N,)`` domain ids (needed for ``class_domain``).
        mode: ``shuffle``, ``class`` or ``class_domain``.
        multiple_of: Round the epoch length up to a multiple of this.
        seed: Base seed.
    """

    def __init__(
        self,
        labels: Sequence[int],
        domains: Sequence[int] | None = None,
        mode: str = "class",
        multiple_of: int = 1,
        seed: int = 0,
    ) -> None:
        if mode not in ("shuffle", "class", "class_domain"):
            raise ValueError(f"mode must be shuffle, class or class_domain, got {mode!r}")
        labels = np.asarray(labels, dtype=np.int64)
        if mode == "class_domain" and domains is None:
            raise ValueError("class_domain sampling needs domains")
        self.mode = mode
        self.size = len(labels)
        multiple_of = max(1, int(multiple_of))
        self.num_samples = -(-self.size // multiple_of) * multiple_of
        self.seed = int(seed)
        self.epoch = 0
        self.classes = np.unique(labels)
        doms = np.zeros_like(labels) if domains is None else np.asarray(domains, dtype=np.int64)
        # pools[c] = one index array per domain of class c (a single array without domain balance)
        self.pools: list[list[np.ndarray]] = []
        for c in self.classes:
            idx = np.flatnonzero(labels == c)
            if mode == "class_domain":
                self.pools.append([idx[doms[idx] == d] for d in np.unique(doms[idx])])
            else:
                self.pools.append([idx])

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def indices(self, epoch: int) -> np.ndarray:
        """The draws of ``epoch`` (deterministic)."""
        rng = np.random.default_rng([self.seed, epoch])
        if self.mode == "shuffle":
            extra = rng.integers(self.size, size=self.num_samples - self.size)
            return np.concatenate([rng.permutation(self.size), extra])
        picks = rng.integers(len(self.classes), size=self.num_samples)
        out = np.empty(self.num_samples, dtype=np.int64)
        for ci, pool in enumerate(self.pools):
            where = np.flatnonzero(picks == ci)
            if len(where) == 0:
                continue
            which = rng.integers(len(pool), size=len(where))
            for di, members in enumerate(pool):
                sel = where[which == di]
                out[sel] = members[rng.integers(len(members), size=len(sel))]
        return out

    def __iter__(self):
        epoch = self.epoch
        self.epoch += 1
        return iter(self.indices(epoch).tolist())


SAMPLING_MODES = {"none": "shuffle", "class_balanced": "class", "class_domain_balanced": "class_domain"}


def create_sampler(
    sampling: str, labels: np.ndarray, domains: np.ndarray, seed: int, multiple_of: int = 1
) -> BalancedSampler:
    """The training sampler for the ``sampling`` parameter (``none`` = seeded shuffling)."""
    if sampling not in SAMPLING_MODES:
        raise ValueError(f"sampling: unknown value {sampling!r}")
    return BalancedSampler(labels, domains, mode=SAMPLING_MODES[sampling], multiple_of=multiple_of, seed=seed)


def cache_budget_note(n_images: int, size: int) -> str:
    """Human-readable size of a uint8 cache."""
    return f"{n_images} images x {size}x{size}x3 uint8 = {n_images * size * size * 3 / 2**20:.0f} MiB"
