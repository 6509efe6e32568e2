"""Data for the ArcFace trainer: the decoded-image cache, the torch dataset, collator and samplers.

The input pipeline is built for CPU speed (the stock trainer decodes and augments every image with
albumentations in the main process, every epoch):

1. every image is decoded once, resized (PIL, the backbone's filter) and stored as uint8 in an
   ``(N, H, W, 3)`` array: training images at ``round(1.15 * image_size)`` squared (room for random
   crops), evaluation images at exactly ``image_size`` squared, which is what the saved
   ``ViTImageProcessor`` does (square resize, no crop). At 224 px a training image takes 200 KB
   (258x258x3): 4 GiB, the default ``cache_memory_mb``, holds about 20,000 of them; a larger split
   goes to a memory-mapped file instead;
2. training augmentation (:mod:`.augment`) works on uint8 tensors with ``torchvision.transforms.v2``
   (in DataLoader workers when ``dataloader_num_workers > 0``); conversion to float and normalisation
   happen once per batch in the collator, which also returns channels-last tensors;
3. samplers are seeded and epoch-aware, so a resumed run replays the same order.

Loading the splits lives in :mod:`.splits`, the augmentation spec in :mod:`.augment`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image as PILImage
from torch.utils.data import Dataset as TorchDataset
from torch.utils.data import Sampler, get_worker_info
from torchvision.transforms import v2

from autotrain import logger
from autotrain.trainers.image_classification_custom.augment import interpolation_mode
from autotrain.trainers.image_classification_custom.splits import DataInputError
from data_prep.contract import resampling

TRAIN_CACHE_FACTOR = 1.15


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
    resample = resampling(interpolation)
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
    return v2.functional.resize(
        x, [size, size], interpolation=interpolation_mode(interpolation), antialias=True
    )


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
