"""Reference specimens: load them, embed them once (cached on disk), find a photo's nearest ones.

A reference set is any of:

- a dataset written by ``data_prep`` (``save_to_disk``) with ``image``, ``label`` (``ClassLabel``), optional
  ``domain`` and ``path``; of a ``DatasetDict``, every split but ``test`` unless splits are chosen
  (``test`` holds the held-out field photos the model is measured on: a test photo would find itself
  among its nearest specimens, at similarity 1.00);
- a Hub dataset repo id (``datasets.load_dataset``, offline from the cache when HF_HUB_OFFLINE=1);
- a folder ``ROOT/<species>/*`` or the ``data_prep`` layout ``ROOT/{herbarium,field,test}/<species>/*``
  (``ROOT/<species>/{herbarium,field}/*`` works too).

Embeddings are cached in ``<model>/.reference_cache/<key>.npz`` (or a user cache folder when the
model folder is a Hub snapshot or read-only), keyed by the model's and the data's hashes.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from data_prep.contract import (
    DOMAIN_COLUMN,
    DOMAIN_SYNONYMS,
    DOMAINS,
    FIELD,
    IMAGE_COLUMN,
    LABEL_COLUMN,
    PATH_COLUMN,
    is_hub_id,
    is_saved_dataset,
)
from inference_app.images import load_image

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif"}
#: Folder names that give the domain: the contract's synonyms, and data_prep's ``test/`` (field photos).
DOMAIN_FOLDERS = {**DOMAIN_SYNONYMS, "test": DOMAINS[FIELD]}
CACHE_VERSION = 1
#: Splits a reference set leaves out unless chosen: data_prep's held-out field photos (the test set).
HELD_OUT_SPLITS = ("test",)
#: ``split`` value that chooses every split, held-out ones included.
ALL_SPLITS = "all"


def _short_hash(text: str, length: int = 16) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


class ReferenceSetError(ValueError):
    """A reference set that cannot be used; the message says why."""


@dataclass
class ReferenceSet:
    """Reference specimens: species, domain and an id per item, and a way to get each image.

    Args:
        species: species name of each item.
        domain: ``"herbarium"``, ``"field"`` or ``"unknown"`` per item.
        ids: a readable id per item (relative path).
        fingerprint: a hash of the data (changes when the data changes).
        source: where it came from, for messages.
        loader: ``loader(i)`` returns image ``i`` (path, bytes or PIL image).
    """

    species: list[str]
    domain: list[str]
    ids: list[str]
    fingerprint: str
    source: str
    loader: Callable[[int], object]

    def __len__(self) -> int:
        return len(self.species)

    def image(self, index: int, max_side: int | None = 512) -> Image.Image:
        """Item ``index`` as an RGB image (downsized to ``max_side``)."""
        return load_image(self.loader(int(index)), max_side=max_side)

    def subset(self, indices: Sequence[int]) -> ReferenceSet:
        """The items at ``indices`` (for quick tests and benchmarks)."""
        indices = [int(i) for i in indices]
        digest = _short_hash(f"{self.fingerprint}:{indices}")
        return ReferenceSet(
            species=[self.species[i] for i in indices],
            domain=[self.domain[i] for i in indices],
            ids=[self.ids[i] for i in indices],
            fingerprint=digest,
            source=f"{self.source} (subset of {len(indices)})",
            loader=lambda i, _parent=self.loader, _map=indices: _parent(_map[i]),
        )


def _dataset_fingerprint(path: Path) -> str:
    """Hash of the saved dataset's metadata and arrow file names, sizes and mtimes (cheap)."""
    digest = hashlib.sha256()
    for file in sorted(path.rglob("*")):
        if file.is_file() and (file.suffix in (".json", ".arrow")):
            stat = file.stat()
            digest.update(f"{file.relative_to(path)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
            if file.name == "state.json":
                digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def _from_datasets(datasets_by_split: dict, fingerprint: str, source: str) -> ReferenceSet:
    """Build a ReferenceSet from ``{split: datasets.Dataset}``."""
    from datasets import ClassLabel

    species: list[str] = []
    domain: list[str] = []
    ids: list[str] = []
    parts: list[tuple[object, int]] = []  # (dataset with only the image column, first index)
    offset = 0
    for split, ds in datasets_by_split.items():
        columns = set(ds.column_names)
        image_column = IMAGE_COLUMN if IMAGE_COLUMN in columns else None
        label_column = next((c for c in (LABEL_COLUMN, "species", "labels", "target") if c in columns), None)
        if image_column is None or label_column is None:
            raise ReferenceSetError(
                f"{source} split '{split}' needs an 'image' and a 'label' column; it has {sorted(columns)}"
            )
        label_feature = ds.features[label_column]
        labels = ds[label_column]
        if isinstance(label_feature, ClassLabel):
            labels = [label_feature.int2str(int(v)) for v in labels]
        species += [str(v) for v in labels]
        if DOMAIN_COLUMN in columns:
            domain_feature = ds.features[DOMAIN_COLUMN]
            values = ds[DOMAIN_COLUMN]
            if isinstance(domain_feature, ClassLabel):
                values = [domain_feature.int2str(int(v)) for v in values]
            domain += [str(v) for v in values]
        else:
            domain += ["unknown"] * len(ds)
        if PATH_COLUMN in columns:
            ids += [str(v) for v in ds[PATH_COLUMN]]
        else:
            ids += [f"{split}/{i}" for i in range(len(ds))]
        parts.append((ds.select_columns([image_column]), offset))
        offset += len(ds)

    starts = [offset for _, offset in parts]

    def loader(index: int):
        part = int(np.searchsorted(starts, index, side="right")) - 1
        ds, offset = parts[part]
        return ds[index - offset]["image"]

    return ReferenceSet(species, domain, ids, fingerprint, source, loader)


def _from_folder(root: Path) -> ReferenceSet:
    """``ROOT/<species>/*``, ``ROOT/<domain>/<species>/*`` or ``ROOT/<species>/<domain>/*``."""
    items: list[tuple[str, str, str]] = []
    digest = hashlib.sha256()
    for file in sorted(root.rglob("*")):
        relative = file.relative_to(root)
        if (
            file.suffix.lower() not in IMAGE_SUFFIXES
            or any(part.startswith(".") for part in relative.parts)
            or not file.is_file()
        ):
            continue
        parts = relative.parts
        if len(parts) < 2:
            continue
        if parts[0].lower() in DOMAIN_FOLDERS and len(parts) >= 3:
            domain, species = DOMAIN_FOLDERS[parts[0].lower()], parts[1]
        elif len(parts) >= 3 and parts[1].lower() in DOMAIN_FOLDERS:
            species, domain = parts[0], DOMAIN_FOLDERS[parts[1].lower()]
        else:
            species, domain = parts[0], "unknown"
        stat = file.stat()
        digest.update(f"{relative}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        items.append((species, domain, str(relative)))
    if not items:
        raise ReferenceSetError(
            f"no images found in {root}: expected ROOT/<species>/*.jpg or ROOT/{{herbarium,field}}/<species>/*.jpg"
        )
    species, domain, ids = (list(column) for column in zip(*items))
    return ReferenceSet(species, domain, ids, digest.hexdigest()[:16], str(root), lambda i: root / ids[i])


def choose_splits(splits: dict, split: str | None, source: str) -> dict:
    """The splits of a dataset that a reference set uses, in their order, and a log line naming them.

    Args:
        splits: ``{name: datasets.Dataset}``.
        split: ``None`` (every split but :data:`HELD_OUT_SPLITS`; all of them when nothing else is
            left), ``"all"``, one split name or several separated by commas (``"train,test"``).
        source: the dataset, for messages.

    Raises:
        ReferenceSetError: a chosen split that ``splits`` does not have.
    """
    if split is None:
        chosen = [name for name in splits if name not in HELD_OUT_SPLITS] or list(splits)
    elif split.strip() == ALL_SPLITS:
        chosen = list(splits)
    else:
        chosen = [name.strip() for name in split.split(",") if name.strip()]
    for name in chosen:
        if name not in splits:
            raise ReferenceSetError(f"{source} has no split '{name}' (it has {sorted(splits)})")
    left_out = [name for name in splits if name not in chosen]
    logger.info(
        "reference set %s: split%s %s%s",
        source,
        "s" if len(chosen) > 1 else "",
        ", ".join(chosen),
        f" ({', '.join(left_out)} left out; --reference-split all uses every split)" if left_out else "",
    )
    return {name: splits[name] for name in chosen}


def load_reference_set(source: str | Path, split: str | None = None) -> ReferenceSet:
    """Load a reference set from a saved dataset, a folder of images or a Hub dataset repo id.

    Args:
        source: folder or Hub dataset repo id.
        split: for a ``DatasetDict``, the splits to use (:func:`choose_splits`; default: every split but
            ``test``, the held-out photos the model is measured on).

    Raises:
        ReferenceSetError: nothing usable at ``source``, or no such split.
    """
    path = Path(source).expanduser()
    if path.is_dir() and is_saved_dataset(path):
        from datasets import DatasetDict, load_from_disk

        loaded = load_from_disk(str(path))
        splits = dict(loaded) if isinstance(loaded, DatasetDict) else {"data": loaded}
        splits = choose_splits(splits, split, str(path))
        fingerprint = _short_hash(f"{_dataset_fingerprint(path)}:{sorted(splits)}")
        return _from_datasets(splits, fingerprint, str(path))
    if path.is_dir():
        return _from_folder(path)
    if path.exists():
        raise ReferenceSetError(
            f"reference set '{source}' is a file: give a dataset folder, an image folder or a Hub dataset id"
        )
    if is_hub_id(str(source), namespaced=True):
        from datasets import load_dataset

        single = split.strip() if split and split.strip() != ALL_SPLITS and "," not in split else None
        try:
            loaded = load_dataset(str(source), split=single)
        except Exception as error:  # datasets raises many types for a missing repo
            raise ReferenceSetError(
                f"reference set '{source}' is neither a folder nor a loadable Hub dataset: {error}"
            ) from error
        splits = choose_splits(dict(loaded) if single is None else {single: loaded}, split, str(source))
        fingerprint = _short_hash(
            ":".join(f"{name}={ds._fingerprint}" for name, ds in sorted(splits.items()))
        )
        return _from_datasets(splits, fingerprint, str(source))
    raise ReferenceSetError(f"reference set '{source}' does not exist")


def _writable_dir(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
        return True
    except OSError:
        return False


def user_cache_dir() -> Path:
    """``$HERBARIUM_APP_CACHE`` or ``$XDG_CACHE_HOME/herbarium-arcface`` (``~/.cache/...``)."""
    if os.environ.get("HERBARIUM_APP_CACHE"):
        return Path(os.environ["HERBARIUM_APP_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "herbarium-arcface"


def default_cache_dir(model_dir: Path | None, from_hub: bool = False) -> Path:
    """``<model>/.reference_cache`` when the model folder is local and writable, else the user cache."""
    if model_dir is not None and not from_hub:
        folder = Path(model_dir) / ".reference_cache"
        if _writable_dir(folder):
            return folder
        logger.info(
            "model folder %s is read-only: caching reference embeddings in %s", model_dir, user_cache_dir()
        )
    folder = user_cache_dir() / "reference_cache"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _save_npz(path: Path, **arrays) -> None:
    """Write atomically, so a crash never leaves a half-written cache behind."""
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with temporary.open("wb") as handle:
        np.savez(handle, **arrays)
    os.replace(temporary, path)


@dataclass
class Neighbour:
    """One reference specimen close to the query."""

    index: int
    species: str
    domain: str
    id: str
    similarity: float


class ReferenceIndex:
    """Unit-length embeddings of a reference set, for cosine nearest-neighbour search.

    Args:
        reference: the reference set.
        embeddings: ``(N, D)`` float32, unit length, in the set's order.
        cache_path: where they are cached.
        from_cache: whether they were read from the cache rather than computed.
    """

    def __init__(
        self, reference: ReferenceSet, embeddings: np.ndarray, cache_path: Path | None, from_cache: bool
    ):
        self.reference = reference
        self.embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        self.cache_path = cache_path
        self.from_cache = from_cache

    @staticmethod
    def cache_key(model_hash: str, reference: ReferenceSet) -> str:
        return _short_hash(f"v{CACHE_VERSION}:{model_hash}:{reference.fingerprint}", 20)

    @classmethod
    def build(
        cls,
        predictor,
        reference: ReferenceSet,
        cache_dir: Path | None = None,
        batch_size: int = 32,
        progress: bool = True,
    ) -> ReferenceIndex:
        """Embed every reference image once, or read the embeddings from the cache.

        Args:
            predictor: a ``Predictor`` (its ``model_hash`` and ``embed`` are used).
            reference: the reference set.
            cache_dir: cache folder (default: see ``default_cache_dir``).
            batch_size: images per ``embed`` call.
            progress: show a tqdm bar while embedding.
        """
        if cache_dir is None:
            cache_dir = default_cache_dir(predictor.model_dir, getattr(predictor, "from_hub", False))
        cache_dir = Path(cache_dir)
        key = cls.cache_key(predictor.model_hash, reference)
        cache_path = cache_dir / f"{key}.npz"
        if cache_path.is_file():
            try:
                with np.load(cache_path, allow_pickle=False) as cached:
                    embeddings = cached["embeddings"]
                    ids = cached["ids"].tolist()
                if embeddings.shape[0] == len(reference) and ids == reference.ids:
                    logger.info("reference embeddings from cache %s", cache_path)
                    return cls(reference, embeddings, cache_path, from_cache=True)
                logger.warning("stale reference cache %s: recomputing", cache_path)
            except (OSError, ValueError, KeyError) as error:
                logger.warning("unreadable reference cache %s (%s): recomputing", cache_path, error)

        chunks = []
        bar = tqdm(total=len(reference), desc="embedding reference set", unit="img", disable=not progress)
        for start in range(0, len(reference), batch_size):
            indices = range(start, min(start + batch_size, len(reference)))
            chunks.append(predictor.embed([reference.loader(i) for i in indices]))
            bar.update(len(indices))
        bar.close()
        embeddings = np.concatenate(chunks).astype(np.float32)
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            _save_npz(
                cache_path,
                embeddings=embeddings,
                ids=np.array(reference.ids),
                species=np.array(reference.species),
                domain=np.array(reference.domain),
                meta=np.array(json.dumps({"source": reference.source, "model_hash": predictor.model_hash})),
            )
        except OSError as error:
            logger.warning("could not write the reference cache %s: %s", cache_path, error)
            cache_path = None
        return cls(reference, embeddings, cache_path, from_cache=False)

    def __len__(self) -> int:
        return len(self.reference)

    def neighbours(self, query: np.ndarray, n: int = 6) -> list[Neighbour]:
        """The ``n`` most cosine-similar reference items to one ``(D,)`` query embedding."""
        query = np.asarray(query, dtype=np.float32).reshape(-1)
        query = query / (np.linalg.norm(query) or 1.0)
        similarity = self.embeddings @ query
        n = min(n, len(similarity))
        top = np.argpartition(-similarity, n - 1)[:n] if n < len(similarity) else np.arange(len(similarity))
        top = top[np.argsort(-similarity[top], kind="stable")]
        ref = self.reference
        return [
            Neighbour(int(i), ref.species[i], ref.domain[i], ref.ids[i], float(similarity[i])) for i in top
        ]

    def thumbnail(self, index: int, size: int = 256) -> Image.Image:
        """A small RGB copy of reference image ``index``."""
        return self.reference.image(index, max_side=size)

    def example_files(self, folder: Path, n: int = 6) -> list[Path]:
        """Write up to ``n`` example photos (field photos of distinct species first) as JPEGs."""
        folder.mkdir(parents=True, exist_ok=True)
        order = sorted(range(len(self.reference)), key=lambda i: (self.reference.domain[i] != "field", i))
        chosen, seen = [], set()
        for i in order:
            if self.reference.species[i] not in seen:
                chosen.append(i)
                seen.add(self.reference.species[i])
            if len(chosen) == n:
                break
        files = []
        for rank, i in enumerate(chosen):
            path = folder / f"example_{rank:02d}.jpg"
            if not path.is_file():
                buffer = io.BytesIO()
                self.reference.image(i, max_side=512).save(buffer, format="JPEG", quality=90)
                path.write_bytes(buffer.getvalue())
            files.append(path)
        return files
