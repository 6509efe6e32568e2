"""Collection audit: likely label errors, near-duplicates and outliers, found from image embeddings.

``python -m data_prep audit DATASET [--model DIR] [--out DIR]`` reads a folder written by
``python -m data_prep build``, embeds every image of every split, and reports three kinds of finding,
each a list of rows naming the image's relative ``path``, its split, label, a score and a reason (never
file bytes):

- ``label_issues``: cleanlab's ``find_label_issues`` on out-of-fold predicted probabilities of a
  logistic regression on the embeddings (``cross_val_predict``, stratified folds), within each domain
  (:mod:`data_prep.audit_labels`);
- ``near_duplicates``: pairs whose embedding cosine similarity is at least ``duplicate_threshold`` and
  whose grey 16 x 16 thumbnails correlate at least ``LAYOUT_THRESHOLD`` (exact copies are already
  dropped by the build's content hash); a pair with two labels is a label conflict, else a pair across
  splits is leakage;
- ``outliers``: images far from every other image, by cleanlab's ``OutOfDistribution`` score (mean
  cosine distance to the k nearest neighbours) beyond Tukey's far-out fence (see :func:`find_outliers`).

Embeddings come from a saved ArcFace model folder (``--model``: its ``embed``, as the app ranks with),
or, without one, from the pooled features of the embedded ImageNet backbone
(``data_prep.contract.EMBEDDED_BACKBONE``). Nothing is deleted: :mod:`data_prep.audit_report` writes
``audit.json``, ``audit.html`` (with thumbnails) and ``exclude.txt``, which
``python -m data_prep build ... --exclude FILE`` accepts.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from data_prep.audit_labels import find_label_issues
from data_prep.contract import (
    DOMAIN_COLUMN,
    EMBEDDED_BACKBONE,
    IMAGE_COLUMN,
    LABEL_COLUMN,
    PATH_COLUMN,
    is_saved_dataset_dict,
)
from data_prep.discovery import DataPrepError

#: Embedding cosine similarity at or above which a pair is a near-duplicate candidate. Chosen on the
#: real-image benchmark (``benchmarks/bench_audit.py``, embedded backbone, one injection seed): resized
#: and re-compressed copies scored 0.91-0.98 there, but so did distinct photos of one specimen (up to
#: 0.97), so the embedding alone cannot decide; the thumbnail correlation (``LAYOUT_THRESHOLD``) does.
DUPLICATE_THRESHOLD = 0.90
#: Neighbours used by the outlier distance.
OUTLIER_NEIGHBOURS = 5
#: Tukey's fence: an image is an outlier when its outlier distance is above Q3 + FENCE * IQR.
OUTLIER_FENCE = 1.5
#: Side of the grey thumbnail whose correlation confirms a near-duplicate pair (see :func:`layout_signature`).
SIGNATURE_SIDE = 16
#: Thumbnail correlation at or above which a candidate pair is confirmed as a near-duplicate: the
#: benchmark's copies scored >= 0.999, other pairs with cosine >= 0.9 at most 0.978.
LAYOUT_THRESHOLD = 0.99


@dataclass
class Embedded:
    """Every image of a dataset, embedded.

    Attributes:
        vectors: ``(N, D)`` float32 unit vectors, rows in split order (train, validation, test).
        signatures: ``(N, SIGNATURE_SIDE**2)`` layout signatures (:func:`layout_signature`).
        paths, splits: ``(N,)`` relative paths and split names.
        labels: ``(N,)`` class ids; ``classes`` their names.
        source: how the vectors were made (for the report).
        domains: ``(N,)`` domain ids (index into ``DOMAINS``); ``None``: all herbarium.
        trained: the vectors come from a trained model (``--model``), not the ImageNet backbone.
    """

    vectors: np.ndarray
    signatures: np.ndarray
    paths: list[str]
    splits: list[str]
    labels: np.ndarray
    classes: list[str]
    source: str
    images: Any = field(default=None, repr=False)  # {split: Dataset} for thumbnails
    domains: np.ndarray | None = None
    trained: bool = False

    def row(self, i: int, score: float, reason: str, **extra: Any) -> dict[str, Any]:
        """A finding row for image ``i``: its ``path``, ``split``, ``label``, ``score`` (4 decimals), ``reason``."""
        return {
            "path": self.paths[i],
            "split": self.splits[i],
            "label": self.classes[int(self.labels[i])],
            "score": round(float(score), 4),
            "reason": reason,
            **extra,
        }

    def domain_ids(self) -> np.ndarray:
        """``(N,)`` domain ids (all herbarium when unknown)."""
        return self.domains if self.domains is not None else np.zeros(len(self.paths), int)


# ------------------------------------------------------------------------------------------------
# Embedding
# ------------------------------------------------------------------------------------------------


def load_dataset_folder(dataset: str | Path) -> Any:
    """The ``DatasetDict`` of a ``data_prep build`` folder.

    Raises:
        DataPrepError: the folder does not exist or was not written by ``save_to_disk``.
    """
    from datasets import load_from_disk

    folder = Path(dataset)
    if not folder.is_dir():
        raise DataPrepError(f"{folder}: dataset folder not found")
    if not is_saved_dataset_dict(folder):
        raise DataPrepError(
            f"{folder}: not a dataset folder (no dataset_dict.json; run data_prep build first)"
        )
    dsd = load_from_disk(str(folder))
    missing = {IMAGE_COLUMN, LABEL_COLUMN, PATH_COLUMN} - set(next(iter(dsd.values())).column_names)
    if missing:
        raise DataPrepError(f"{folder}: not a data_prep dataset (missing column(s) {sorted(missing)})")
    return dsd


def load_embedder(
    model_dir: str | Path | None, classes: list[str], image_size: int | None = None
) -> tuple[Callable, dict[str, Any], str]:
    """``(embed, input, source)``: a function ``(B, 3, H, W) tensor -> (B, D) tensor``, the input spec
    (``size``, ``mean``, ``std``, ``resample``) and a description.

    With ``model_dir`` the saved ArcFace model's ``embed`` (its projection, as the app ranks with);
    without, the embedded backbone's pooled ImageNet features (the random projection is not used).
    ``image_size`` overrides the model's input side (smaller: faster, coarser).

    Raises:
        DataPrepError: ``model_dir`` is not a saved ArcFace model folder.
    """
    from autotrain.trainers.image_classification_custom import model_io
    from autotrain.trainers.image_classification_custom.enroll import EnrolError, load_model_folder

    if model_dir is not None:
        try:
            model, _ = load_model_folder(model_dir)
        except EnrolError as exc:
            raise DataPrepError(str(exc)) from None
        embed, source = model.embed, f"model {model_dir} (embed)"
    else:
        model = model_io.create_arcface_model(EMBEDDED_BACKBONE, classes, pretrained=True).eval()
        embed, source = model.forward_features, f"{EMBEDDED_BACKBONE} pooled ImageNet features (no model)"
    config = model.config
    spec = {
        "size": int(image_size or config.image_size),
        "mean": np.asarray(config.image_mean, np.float32),
        "std": np.asarray(config.image_std, np.float32),
        "resample": config.image_interpolation,
    }
    return embed, spec, source


def layout_signature(array: np.ndarray, side: int = SIGNATURE_SIDE) -> np.ndarray:
    """``(side * side,)`` unit vector: the image as a ``side x side`` grey thumbnail, mean removed.

    The dot product of two signatures is the correlation of their thumbnails: near 1 for a resized or
    re-compressed copy, lower for another photo of the same kind of object (the embedding alone cannot
    tell these apart: both are similar in content).
    """
    from PIL import Image

    grey = np.asarray(
        Image.fromarray(array).convert("L").resize((side, side), Image.Resampling.BOX), np.float32
    )
    grey = grey.ravel() - grey.mean()
    return grey / max(float(np.linalg.norm(grey)), 1e-6)


def _pixels(encoded: list[dict], spec: dict[str, Any]) -> tuple[Any, np.ndarray]:
    """``(B, 3, H, W)`` float tensor of encoded images (decoded and resized by the image policy), and
    their ``(B, SIGNATURE_SIDE**2)`` layout signatures."""
    import torch

    from data_prep.images import load_for_model

    arrays = [load_for_model(e["bytes"] or e["path"], spec["size"], spec["resample"]) for e in encoded]
    batch = (np.stack(arrays).astype(np.float32) / 255.0 - spec["mean"]) / spec["std"]
    signatures = np.stack([layout_signature(a) for a in arrays])
    return torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous(), signatures


def embed_dataset(
    dsd: Any,
    model_dir: str | Path | None = None,
    batch_size: int = 32,
    progress: bool = True,
    image_size: int | None = None,
) -> Embedded:
    """Embed every image of every split (unit vectors; a progress bar over images).

    Args:
        dsd: the ``DatasetDict`` (features image, label, domain, path).
        model_dir: a saved ArcFace model folder, or ``None`` for the embedded backbone.
        batch_size: images per forward pass.
        progress: show a tqdm bar.
        image_size: input side (default: the model's).
    """
    import torch
    from datasets import Image as ImageFeature
    from tqdm.auto import tqdm

    classes = list(next(iter(dsd.values())).features[LABEL_COLUMN].names)
    embed, spec, source = load_embedder(model_dir, classes, image_size)
    chunks, signatures, paths, splits, labels, domains = [], [], [], [], [], []
    bar = tqdm(total=sum(len(d) for d in dsd.values()), desc="embedding", unit="img", disable=not progress)
    with torch.inference_mode():
        for split, ds in dsd.items():
            raw = ds.cast_column(IMAGE_COLUMN, ImageFeature(decode=False))
            for start in range(0, len(raw), batch_size):
                rows = raw[start : start + batch_size]
                pixels, signature = _pixels(rows[IMAGE_COLUMN], spec)
                chunks.append(embed(pixels).float().numpy())
                signatures.append(signature)
                paths += rows[PATH_COLUMN]
                labels += rows[LABEL_COLUMN]
                domains += rows[DOMAIN_COLUMN] if DOMAIN_COLUMN in rows else [0] * len(rows[PATH_COLUMN])
                splits += [split] * len(rows[PATH_COLUMN])
                bar.update(len(rows[PATH_COLUMN]))
    bar.close()
    vectors = np.concatenate(chunks) if chunks else np.zeros((0, 1), np.float32)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    signature = np.concatenate(signatures) if signatures else np.zeros((0, SIGNATURE_SIDE**2), np.float32)
    return Embedded(
        vectors.astype(np.float32),
        signature,
        paths,
        splits,
        np.asarray(labels, int),
        classes,
        source,
        dsd,
        domains=np.asarray(domains, int),
        trained=model_dir is not None,
    )


# ------------------------------------------------------------------------------------------------
# Findings
# ------------------------------------------------------------------------------------------------


def _pairs_above(vectors: np.ndarray, threshold: float, block: int = 1024) -> list[tuple[int, int, float]]:
    """``[(i, j, cosine)]`` with ``i < j`` and ``cosine >= threshold`` (blockwise: memory O(block * N))."""
    pairs = []
    for start in range(0, len(vectors), block):
        sims = vectors[start : start + block] @ vectors.T
        rows, cols = np.nonzero(sims >= threshold)
        for r, c in zip(rows, cols):
            if start + r < c:
                pairs.append((int(start + r), int(c), float(sims[r, c])))
    return sorted(pairs, key=lambda p: -p[2])


def find_near_duplicates(
    emb: Embedded, threshold: float = DUPLICATE_THRESHOLD, layout_threshold: float = LAYOUT_THRESHOLD
) -> list[dict[str, Any]]:
    """Pairs whose embeddings have cosine ``>= threshold`` and whose layout signatures (grey 16 x 16
    thumbnails) correlate ``>= layout_threshold``; most similar embeddings first.

    Each row is the image suggested for exclusion (``path``): for a pair across splits the training
    copy, as the build does with exact leakage (``leakage: true``); within a split the later path. The
    other image is ``other_path``/``other_split``/``other_label``; ``layout`` is the thumbnail
    correlation. A pair whose two images have different labels is a ``label_conflict`` (not leakage):
    one label is wrong, and a human must decide which, so neither image is excluded.
    """
    order = {"test": 0, "validation": 1, "train": 2}
    rows = []
    for i, j, sim in _pairs_above(emb.vectors, threshold):
        layout = float(emb.signatures[i] @ emb.signatures[j])
        if layout < layout_threshold:
            continue
        keep, drop = sorted((i, j), key=lambda k: (order.get(emb.splits[k], 3), emb.paths[k]))
        conflict = emb.labels[i] != emb.labels[j]
        leakage = emb.splits[i] != emb.splits[j] and not conflict
        where = (
            f"across splits ({emb.splits[keep]} / {emb.splits[drop]})"
            if emb.splits[i] != emb.splits[j]
            else "same split"
        )
        if conflict:
            where += f", labels differ ({emb.classes[emb.labels[keep]]} / {emb.classes[emb.labels[drop]]}): label conflict"
        elif leakage:
            where += ": leakage"
        reason = f"cosine {sim:.3f}, thumbnail correlation {layout:.3f} with {emb.paths[keep]}, {where}"
        extra = {
            "other_path": emb.paths[keep],
            "other_split": emb.splits[keep],
            "other_label": emb.classes[emb.labels[keep]],
            "leakage": leakage,
            "label_conflict": bool(conflict),
        }
        rows.append(emb.row(drop, sim, reason, layout=round(layout, 4), **extra))
    return rows


def outlier_distances(vectors: np.ndarray, k: int = OUTLIER_NEIGHBOURS) -> np.ndarray:
    """``(N,)`` cleanlab ``OutOfDistribution`` scores turned back into distances (higher: more atypical).

    cleanlab scores an image ``exp(-t * d / median(d))``, ``d`` being its mean cosine distance to its k
    nearest other images (``t = 1``); this returns ``-log(score) = d / median(d)``, the distance in units
    of the collection's median, so a fence on it is a fence on distances, not on the squashed score.
    """
    from cleanlab.outlier import OutOfDistribution

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ood = OutOfDistribution(params={"k": k})  # cosine distance for features of dimension > 3
        scores = ood.fit_score(features=vectors)
    return -np.log(np.maximum(scores, 1e-12))


def find_outliers(
    emb: Embedded, k: int = OUTLIER_NEIGHBOURS, fence: float = OUTLIER_FENCE
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Off-topic images: an outlier distance (:func:`outlier_distances`) beyond Tukey's far-out fence.

    An image is an outlier when its distance is above ``Q3 + fence * IQR`` of all images' distances.

    Returns:
        ``(rows, most atypical first; notes with the rule and the cut-off)``; a row's ``score`` is its
        distance.
    """
    k = min(k, len(emb.vectors) - 1)
    notes: dict[str, Any] = {
        "rule": f"cleanlab OutOfDistribution (k={k} nearest, cosine) distance -log(score) > Q3 + {fence} * IQR"
    }
    if k < 1:
        return [], notes | {"skipped": "fewer than 2 images"}
    distances = outlier_distances(emb.vectors, k)
    q1, q3 = np.quantile(distances, [0.25, 0.75])
    cutoff = float(q3 + fence * (q3 - q1))
    notes |= {"cutoff": round(cutoff, 4), "quartiles": [round(float(q1), 4), round(float(q3), 4)]}
    flagged = sorted(np.flatnonzero(distances > cutoff), key=lambda i: -distances[i])
    reason = "outlier distance {:.3f} > cut-off {:.3f}"
    return [emb.row(int(i), distances[i], reason.format(distances[i], cutoff)) for i in flagged], notes


def default_out(dataset: str | Path) -> Path:
    """Where the audit is written without ``--out``: ``<dataset>-audit`` beside the dataset folder."""
    folder = Path(dataset).resolve()
    return folder.with_name(folder.name + "-audit")


def audit_dataset(
    dataset: str | Path,
    model: str | Path | None = None,
    out: str | Path | None = None,
    *,
    duplicate_threshold: float = DUPLICATE_THRESHOLD,
    seed: int = 0,
    batch_size: int = 32,
    image_size: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Audit a ``data_prep build`` folder; write ``audit.json``, ``audit.html`` and ``exclude.txt`` to ``out``.

    Args:
        dataset: the dataset folder.
        model: a saved ArcFace model folder, or ``None`` for the embedded backbone.
        out: where to write (default: ``<dataset>-audit`` beside the dataset, so a rebuild keeps it).
        duplicate_threshold: cosine similarity of a near-duplicate pair.
        seed: seed of the cross-validation folds.
        batch_size: images per forward pass.
        image_size: input side of the embedding model (default: the model's own).
        progress: show a progress bar.

    Returns:
        The audit (what ``audit.json`` holds).

    Raises:
        DataPrepError: not a dataset folder, or not a model folder.
    """
    from data_prep.audit_report import write_audit

    if model is not None and not Path(model).is_dir():
        raise DataPrepError(f"{model}: model folder not found")
    if model is not None and not (Path(model) / "config.json").is_file():
        raise DataPrepError(f"{model}: is not a model folder (no config.json)")
    dsd = load_dataset_folder(dataset)
    emb = embed_dataset(dsd, model, batch_size=batch_size, progress=progress, image_size=image_size)
    audit = {"dataset": str(dataset)} | find_all(emb, duplicate_threshold, seed)
    target = Path(out) if out is not None else default_out(dataset)
    audit["out"] = str(target)
    write_audit(audit, emb, target)
    return audit


def find_all(
    emb: Embedded, duplicate_threshold: float = DUPLICATE_THRESHOLD, seed: int = 0
) -> dict[str, Any]:
    """The three finding kinds for embedded images, with their parameters and counts (``audit.json``'s body)."""
    from data_prep.audit_report import EXCLUDE_RULE, exclusion_plan

    labels, label_notes = find_label_issues(emb, seed)
    outliers, outlier_notes = find_outliers(emb)
    findings = {
        "label_issues": labels,
        "near_duplicates": find_near_duplicates(emb, duplicate_threshold),
        "outliers": outliers,
    }
    exclude, not_excluded = exclusion_plan(emb, findings)
    counts = {kind: len(rows) for kind, rows in findings.items()}
    counts["leakage_pairs"] = sum(r["leakage"] for r in findings["near_duplicates"])
    counts["label_conflicts"] = sum(r["label_conflict"] for r in findings["near_duplicates"])
    counts |= {"excluded": len(exclude), "not_excluded": len(not_excluded)}
    return {
        "embeddings": emb.source,
        "images": len(emb.paths),
        "parameters": {
            "label_issues": label_notes | {"seed": seed},
            "near_duplicates": {
                "cosine_threshold": duplicate_threshold,
                "thumbnail_correlation_threshold": LAYOUT_THRESHOLD,
                "thumbnail": f"{SIGNATURE_SIDE}x{SIGNATURE_SIDE} grey, mean removed",
            },
            "outliers": outlier_notes,
            "exclude": EXCLUDE_RULE,
        },
        "findings": findings,
        "counts": counts,
        "exclude": exclude,
        "not_excluded": not_excluded,
    }
