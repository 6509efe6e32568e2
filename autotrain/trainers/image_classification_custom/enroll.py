"""Enrol new species into a saved ArcFace model folder, without retraining.

``python -m autotrain.trainers.image_classification_custom.enroll --model DIR --images ROOT [--out DIR]
[--replace]`` embeds ``ROOT/<species>/*`` (herbarium sheets or photos) with the saved model and adds one
class centre per new species: the L2-normalised mean of its embeddings, or, when the model has
``k = config.arcface_subcenters > 1`` sub-centres per class, ``k`` k-means centres of its normalised
embeddings (sklearn ``KMeans``; with fewer distinct images than ``k`` the centres are repeated). This is
the "herbarium dictionary" of mean embeddings that PlantCLEF entries kept: the ArcFace logits are
``s * cos(embedding, centre) / T``, so a new centre competes with the trained ones on the same scale.

Existing classes keep their ids and centres (their logits do not change); new species get the ids after
the existing ones. ``config.json`` gets the new ``id2label``/``label2id`` and an ``enrolled_species``
entry ``{name: number of images}`` that the app uses to mark them; ``README.md`` gets (or has replaced)
a section with the table of enrolled species. A species that already exists is refused unless
``replace=True`` (then its centres are replaced by the enrolled ones).

Images are opened under the project's image policy (``data_prep.images``: bad files are reported by
name and skipped) and preprocessed by the folder's own ``preprocessor_config.json``
(``AutoImageProcessor``), as ``pipeline("image-classification", ...)`` and the app do.

The folder is rewritten atomically: everything is written to a temporary sibling folder, which then
replaces the target by two renames (the previous folder survives as ``.<name>.enroll-old-*`` if the
process dies between them).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# --- project names (one place, so that the paths can follow the issue-11 restructuring) -------------
from autotrain.trainers.image_classification_custom.model_io import respect_umask
from autotrain.trainers.image_classification_custom.modeling_arcface import ArcFaceForImageClassification
from data_prep.images import DEFAULT_MIN_SIDE, ImageError, open_model_image

logger = logging.getLogger(__name__)

COMMAND = f"python -m {__spec__.name if __spec__ else __name__}"
"""How the model card and ``--help`` name this command (``__name__`` is ``__main__`` under ``-m``)."""

CARD_START = "<!-- enrolled-species:start -->"
CARD_END = "<!-- enrolled-species:end -->"
CONFIG_KEY = "enrolled_species"
"""``config.json`` key: ``{species: number of images its centres were computed from}``."""

Preprocess = Callable[[Sequence[Any]], Any]
"""A transformers image processor, or any callable ``list[PIL.Image] -> (B, 3, H, W)`` tensor (the app's)."""


class EnrolError(ValueError):
    """Bad input for enrolment; ``str(error)`` is one line naming the folder or species and the reason."""


# ----------------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------------


def species_folders(images_root: str | os.PathLike) -> dict[str, list[Path]]:
    """``{species: [files]}`` for ``images_root/<species>/*`` (sorted; hidden files and folders skipped).

    Raises:
        EnrolError: ``images_root`` is not a folder, or holds no species folder with files.
    """
    root = Path(images_root)
    if not root.is_dir():
        raise EnrolError(f"{root}: images folder not found (expected ROOT/<species>/<image files>)")
    species = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(f for f in folder.iterdir() if f.is_file() and not f.name.startswith("."))
        species[folder.name] = files
    if not species:
        raise EnrolError(f"{root}: no species folders (expected ROOT/<species>/<image files>)")
    return species


def species_key(name: str) -> str:
    """What two species names share when they differ only in case, spaces or underscores."""
    return " ".join(str(name).replace("_", " ").split()).casefold()


def _match_existing(
    species: dict[str, list[Path]], label2id: Mapping[str, int], images_root: Any, replace: bool
) -> dict[str, list[Path]]:
    """Folder names -> species names: stripped; a name that matches an existing species up to case, spaces
    or underscores is that species (refused without ``replace``); two folders of one species are an error."""
    existing = {species_key(label): str(label) for label in label2id}
    named: dict[str, list[Path]] = {}
    clashes: list[str] = []
    for folder, files in species.items():
        name = existing.get(species_key(folder), folder.strip())
        if any(species_key(other) == species_key(name) for other in named):
            raise EnrolError(
                f"{images_root}: two folders name species {name!r} (up to case, spaces, underscores)"
            )
        if species_key(folder) in existing:
            clashes.append(repr(folder) if folder == name else f"{folder!r} (= existing {name!r})")
        named[name] = files
    if clashes and not replace:
        shown = ", ".join(clashes[:5]) + (f" (+{len(clashes) - 5} more)" if len(clashes) > 5 else "")
        raise EnrolError(f"{images_root}: species already in the model: {shown} (use --replace)")
    return named


def _decode_size(preprocess: Preprocess, config: Any) -> tuple[int, int]:
    """``(height, width)`` the reduced-scale decode must keep, read from the processor like the app does."""
    size = getattr(preprocess, "size", None)
    edge = getattr(preprocess, "shortest_edge", None)
    if isinstance(size, Mapping):
        edge = size.get("shortest_edge")
        if "height" in size:
            return int(size["height"]), int(size["width"])
    if edge:
        return int(edge), int(edge)
    if isinstance(size, Sequence) and len(size) == 2:
        return int(size[0]), int(size[1])
    side = int(getattr(config, "image_size", 224))
    return side, side


def _pixel_values(preprocess: Preprocess, images: list[Any]) -> torch.Tensor:
    from transformers.image_processing_utils import ImageProcessingMixin

    if isinstance(preprocess, ImageProcessingMixin):
        return preprocess(images, return_tensors="pt")["pixel_values"]
    out = preprocess(images)
    return out["pixel_values"] if isinstance(out, Mapping) else out


@torch.inference_mode()
def embed_species(
    model: nn.Module,
    preprocess: Preprocess,
    species: Mapping[str, Sequence[Path]],
    batch_size: int = 32,
    progress: bool = True,
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Embed every species' images with ``model.embed``.

    Args:
        model: an ArcFace model (``embed(pixel_values) -> (B, D)`` unit vectors).
        preprocess: see :data:`Preprocess`.
        species: ``{species: [image files]}``.
        batch_size: images per forward pass.
        progress: show a tqdm bar (images).

    Returns:
        ``({species: (n_usable, D) float32}, [one line per skipped file])``; a species without any usable
        image is absent from the dict.
    """
    from tqdm.auto import tqdm

    model.eval()
    device = next(model.parameters()).device
    size = _decode_size(preprocess, model.config)
    skipped: list[str] = []
    out: dict[str, np.ndarray] = {}
    bar = tqdm(
        total=sum(len(f) for f in species.values()), desc="embedding", unit="img", disable=not progress
    )
    for name, files in species.items():
        chunks = []
        for start in range(0, len(files), batch_size):
            images = []
            for file in files[start : start + batch_size]:
                try:
                    images.append(open_model_image(file, size, name=str(file), min_side=DEFAULT_MIN_SIDE))
                except (ImageError, OSError) as err:
                    skipped.append(f"{file}: skipped ({err})")
                    logger.warning("%s: skipped (%s)", file, err)
            bar.update(len(files[start : start + batch_size]))
            if images:
                pixels = _pixel_values(preprocess, images).to(device)
                chunks.append(model.embed(pixels).float().cpu().numpy())
        if chunks:
            out[name] = np.concatenate(chunks)
    bar.close()
    return out, skipped


# ----------------------------------------------------------------------------------------------------
# Centres
# ----------------------------------------------------------------------------------------------------


def class_centres(embeddings: np.ndarray, subcenters: int = 1, seed: int = 0) -> np.ndarray:
    """Unit-norm centres of one class from its embeddings.

    Args:
        embeddings: ``(N, D)``, N >= 1 (normalised here).
        subcenters: ``k``; 1 gives the normalised mean, more give k-means centres (largest cluster first;
            with fewer than ``k`` distinct embeddings the centres are repeated in turn).
        seed: k-means ``random_state``.

    Returns:
        ``(k, D)`` float64 unit vectors.
    """
    emb = F.normalize(torch.as_tensor(np.asarray(embeddings), dtype=torch.float64), dim=-1).numpy()
    if subcenters == 1:
        return F.normalize(torch.from_numpy(emb.mean(0, keepdims=True)), dim=-1).numpy()
    from sklearn.cluster import KMeans

    n_clusters = min(subcenters, len(np.unique(emb.round(6), axis=0)))
    if n_clusters == 1:
        centres = emb.mean(0, keepdims=True)
    else:
        kmeans = KMeans(n_clusters=n_clusters, n_init=10, random_state=seed).fit(emb)
        order = np.argsort(-np.bincount(kmeans.labels_, minlength=n_clusters), kind="stable")
        centres = kmeans.cluster_centers_[order]
    centres = F.normalize(torch.from_numpy(np.ascontiguousarray(centres)), dim=-1).numpy()
    return centres[np.arange(subcenters) % len(centres)]


def add_centres(model: nn.Module, centres: Mapping[str, np.ndarray]) -> dict[str, int]:
    """Write class centres into ``model.head`` and its config; new species get ids after the existing ones.

    The head's weight has ``num_classes * k`` rows, row ``c * k + j`` being sub-centre ``j`` of class ``c``
    (class-major, ``ArcFaceHead``): existing rows are kept, an existing species' rows are overwritten.

    Args:
        model: an ArcFace model (``model.head`` an ``ArcFaceHead``), changed in place.
        centres: ``{species: (k, D)}`` unit vectors.

    Returns:
        ``{species: class id}`` of the written species.
    """
    head, config = model.head, model.config
    k = head.subcenters
    label2id = {str(name): int(i) for name, i in config.label2id.items()}
    weight = head.weight.detach().clone()
    ids, new_rows = {}, []
    for name, rows in centres.items():
        rows_t = torch.as_tensor(rows, dtype=weight.dtype, device=weight.device).reshape(k, -1)
        if name in label2id:
            ids[name] = label2id[name]
            weight[ids[name] * k : (ids[name] + 1) * k] = rows_t
        else:
            ids[name] = head.num_classes + len(new_rows)
            new_rows.append(rows_t)
    if new_rows:
        weight = torch.cat([weight, *new_rows])
    head.weight = nn.Parameter(weight, requires_grad=head.weight.requires_grad)
    head.num_classes = weight.shape[0] // k
    id2label = {int(i): str(n) for i, n in config.id2label.items()}
    id2label.update({i: name for name, i in ids.items()})
    config.id2label = id2label
    config.label2id = {name: i for i, name in id2label.items()}
    return ids


def enroll_in_memory(
    model: nn.Module,
    preprocess: Preprocess,
    images_root: str | os.PathLike,
    replace: bool = False,
    batch_size: int = 32,
    progress: bool = True,
) -> tuple[nn.Module, dict[str, int]]:
    """Enrol ``images_root/<species>/*`` into a loaded model (no files written; the app's ``--enroll``).

    Args:
        model: an ``ArcFaceForImageClassification`` (project or ``trust_remote_code`` class), changed in
            place.
        preprocess: the folder's image processor (``AutoImageProcessor.from_pretrained(folder)``) or a
            callable ``list[PIL.Image] -> (B, 3, H, W)`` tensor.
        images_root: folder of species folders.
        replace: replace the centres of species that already exist instead of refusing.
        batch_size: images per forward pass.
        progress: show a progress bar.

    Returns:
        ``(model, {species: number of usable images})``; ``config.enrolled_species`` holds every species
        enrolled so far.

    Raises:
        EnrolError: no species folders; an existing species without ``replace``; a species folder without
            a usable image. Skipped files are logged (warning) and listed in ``model.enroll_skipped``.
    """
    species = _match_existing(species_folders(images_root), model.config.label2id, images_root, replace)
    embeddings, skipped = embed_species(model, preprocess, species, batch_size, progress)
    empty = [name for name in species if name not in embeddings]
    if empty:
        raise EnrolError(f"{Path(images_root) / empty[0]}: no usable image for species {empty[0]!r}")
    k = int(model.head.subcenters)
    add_centres(model, {name: class_centres(emb, k) for name, emb in embeddings.items()})
    enrolled = {name: int(len(emb)) for name, emb in embeddings.items()}
    setattr(model.config, CONFIG_KEY, {**(getattr(model.config, CONFIG_KEY, None) or {}), **enrolled})
    model.enroll_skipped = skipped
    return model, enrolled


# ----------------------------------------------------------------------------------------------------
# Model card
# ----------------------------------------------------------------------------------------------------


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def enrolled_section(enrolled: Mapping[str, int], label2id: Mapping[str, int], subcenters: int = 1) -> str:
    """The model card's "Enrolled species" section (between :data:`CARD_START` and :data:`CARD_END`)."""
    how = "the normalised mean embedding" if subcenters == 1 else f"{subcenters} k-means sub-centres"
    lines = [
        CARD_START,
        "## Enrolled species",
        "",
        f"Added after training, without retraining (`{COMMAND}`): each species' class centre is "
        f"{how} of its images. The model now has {len(label2id)} classes, {len(enrolled)} of them "
        "enrolled; the class counts and evaluation above are those of the trained model and do not cover "
        "enrolled species. Expect weaker ranks for them than for trained species, and on views unlike "
        "their enrolment images (on real leafsnap images, species enrolled from two leaf views reached "
        "field top-5 of about 0.06 among 185 species, chance 0.03; see the project's BENCHMARKS.md).",
        "",
        "| Species | Images | Class id |",
        "|---|---:|---:|",
        *(f"| {_cell(name)} | {n} | {label2id[name]} |" for name, n in sorted(enrolled.items())),
        CARD_END,
    ]
    return "\n".join(lines) + "\n"


def update_model_card(readme: str | None, section: str, title: str) -> str:
    """``readme`` with the enrolled-species section replaced, or appended; a minimal card when None."""
    if readme is None:
        readme = (
            "---\nlibrary_name: transformers\npipeline_tag: image-classification\ntags:\n- arcface\n---\n\n"
            f"# {title}\n\nArcFace image classifier (load with `trust_remote_code=True`).\n"
        )
    start, end = readme.find(CARD_START), readme.find(CARD_END)
    if start >= 0 and end > start:
        return readme[:start] + section + readme[end + len(CARD_END) :].lstrip("\n")
    return readme.rstrip("\n") + "\n\n" + section


# ----------------------------------------------------------------------------------------------------
# Folder
# ----------------------------------------------------------------------------------------------------

# written again by save_pretrained (weights, config) or by update_model_card
_REWRITTEN = ("config.json", "README.md", "*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin")


def load_model_folder(model_dir: str | os.PathLike) -> tuple[nn.Module, Any]:
    """``(model, image processor)`` of a saved ArcFace folder (eval mode, CPU).

    Raises:
        EnrolError: not a folder with ``config.json``, or not an ArcFace model.
    """
    from transformers import AutoImageProcessor

    folder = Path(model_dir)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise EnrolError(f"{folder}: model folder not found (no config.json)")
    model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
    if model_type != ArcFaceForImageClassification.config_class.model_type:
        raise EnrolError(f"{config_file}: model_type {model_type!r} is not an ArcFace model of this project")
    model = ArcFaceForImageClassification.from_pretrained(folder).eval()
    return model, AutoImageProcessor.from_pretrained(folder)


def _write_folder(model: nn.Module, source: Path, target: Path, target_is_new: bool) -> None:
    def rewritten(folder: str, names: list[str]) -> list[str]:
        # top level only; a new folder (--out) leaves out the training checkpoints, which describe the
        # model before enrolment (in place they stay whole, to resume training from)
        left_out = _REWRITTEN + (("checkpoint-*",) if target_is_new else ())
        return [n for n in names if Path(folder) == source and any(fnmatch(n, p) for p in left_out)]

    shutil.copytree(source, target, ignore=rewritten, dirs_exist_ok=True)
    model.save_pretrained(target, safe_serialization=True)
    respect_umask(target)
    readme = source / "README.md"
    text = readme.read_text(encoding="utf-8") if readme.is_file() else None
    section = enrolled_section(
        getattr(model.config, CONFIG_KEY), model.config.label2id, model.head.subcenters
    )
    (target / "README.md").write_text(update_model_card(text, section, source.name), encoding="utf-8")


def save_enrolled(model: nn.Module, source: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write the enrolled model to ``out`` (default: over ``source``) atomically.

    Every other file of ``source`` (code, preprocessor, metrics, figures) is copied along. The new folder
    is complete in a temporary sibling before it takes ``out``'s name.

    Raises:
        EnrolError: ``out`` is an existing non-empty folder other than ``source``.
    """
    source, target = Path(source).resolve(), Path(out or source).resolve()
    if target != source and target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise EnrolError(f"{target}: output folder exists and is not empty (choose another --out)")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.enroll-tmp-", dir=target.parent))
    try:
        _write_folder(model, source, tmp, target_is_new=target != source)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.enroll-old-", dir=target.parent))
        os.rename(target, old / target.name)
    os.rename(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target


def enroll_folder(
    model_dir: str | os.PathLike,
    images_root: str | os.PathLike,
    out: str | os.PathLike | None = None,
    replace: bool = False,
    batch_size: int = 32,
    progress: bool = True,
) -> tuple[Path, dict[str, int], list[str]]:
    """Enrol ``images_root/<species>/*`` into the saved model ``model_dir`` (see the module docstring).

    Returns:
        ``(written folder, {species: number of images}, [skipped files])``.

    Raises:
        EnrolError: see :func:`load_model_folder`, :func:`enroll_in_memory`, :func:`save_enrolled`.
    """
    model, processor = load_model_folder(model_dir)
    model, enrolled = enroll_in_memory(model, processor, images_root, replace, batch_size, progress)
    return save_enrolled(model, model_dir, out), enrolled, model.enroll_skipped


def main(argv: Sequence[str] | None = None) -> int:
    """Command line; returns the exit status (2 with a one-line message for bad input)."""
    parser = argparse.ArgumentParser(
        prog=COMMAND, description="Enrol new species into a saved model, without retraining."
    )
    parser.add_argument("--model", required=True, help="saved model folder")
    parser.add_argument("--images", required=True, help="ROOT with one folder of images per species")
    parser.add_argument("--out", default=None, help="output folder (default: rewrite --model in place)")
    parser.add_argument("--replace", action="store_true", help="replace the centres of existing species")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        folder, enrolled, skipped = enroll_folder(
            args.model, args.images, args.out, args.replace, args.batch_size, not args.quiet
        )
    except EnrolError as err:
        print(f"enroll: error: {err}", file=sys.stderr)
        return 2
    print(
        f"enrolled {len(enrolled)} species ({sum(enrolled.values())} images, {len(skipped)} skipped) into {folder}"
    )
    for name, n in enrolled.items():
        print(f"  {name}: {n} images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
