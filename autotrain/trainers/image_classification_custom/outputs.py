"""Stages "outputs" and "push": the saved weights and temperature, the model folder, ``metrics.json``, the
map, reliability and confusion figures, the card; then the Hub upload and the clean-up (main process only).

The model folder: the ``save_arcface_model`` files, ``metrics.json`` (the reports of the saved model on
each evaluation split, the "no training" line, WiSE-FT, calibration, the training facts and the
evaluation by species of :mod:`evaluation`), ``tsne.png`` (or ``umap.png``), ``reliability.png``,
``confusions.png`` and ``README.md`` (the card, with the same numbers).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from huggingface_hub import HfApi

from autotrain import logger
from autotrain.trainers.common import pause_space
from autotrain.trainers.image_classification_custom import evaluation as E
from autotrain.trainers.image_classification_custom import metrics as M
from autotrain.trainers.image_classification_custom.arcface_trainer import TrainedRun
from autotrain.trainers.image_classification_custom.embedder import Embedder
from autotrain.trainers.image_classification_custom.embedding_map import MAP_TITLES
from autotrain.trainers.image_classification_custom.evaluation_card import CONFUSIONS_FILE, plot_confusions
from autotrain.trainers.image_classification_custom.model_card import (
    plot_reliability,
    plot_tsne,
    render_model_card,
)
from autotrain.trainers.image_classification_custom.model_io import save_arcface_model
from autotrain.trainers.image_classification_custom.modeling_arcface import ArcFaceForImageClassification
from autotrain.trainers.image_classification_custom.params import ImageClassificationCustomParams
from autotrain.trainers.image_classification_custom.splits import SplitData
from autotrain.trainers.image_classification_custom.stages import RunContext
from autotrain.trainers.image_classification_custom.wise_ft import WISE_FT_START, choose_saved_weights
from data_prep.contract import FIELD, read_taxonomy_csv

HUB_IGNORE_PATTERNS = [
    "checkpoint-*",
    "checkpoint-*/**",
    "autotrain-data/**",
    "cache/**",
    "*.u8",
    "*.npy",
    WISE_FT_START,
]
FALLBACK_TEMPERATURE = 1.85
"""Inference temperature without field validation photos to fit one on: the median of the temperatures
fitted on the validation split of the real leafsnap benchmark (1.90, 1.85, 1.84 over 3 seeds of the
shipped config; BENCHMARKS.md section 1). PlantCLEF's smoke test fitted 1.30-1.38: a higher T is the
more conservative (less confident) choice."""
TSNE_MAX_TRAIN_HERBARIUM = 600
TSNE_MAX_EVAL = 1500
TSNE_MIN_POINTS = 5


@dataclass(frozen=True)
class LabelledEmbeddings:
    """Embeddings ``(N, D)`` with their species ``(N,)`` and domains ``(N,)`` (``FIELD`` = field photo)."""

    embeddings: np.ndarray
    labels: np.ndarray
    domains: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, indices: np.ndarray) -> LabelledEmbeddings:
        """The rows ``indices``."""
        return LabelledEmbeddings(self.embeddings[indices], self.labels[indices], self.domains[indices])

    @staticmethod
    def concatenate(parts: Sequence[LabelledEmbeddings]) -> LabelledEmbeddings:
        """The rows of ``parts`` in order (at least one part)."""
        return LabelledEmbeddings(
            np.concatenate([p.embeddings for p in parts]),
            np.concatenate([p.labels for p in parts]),
            np.concatenate([p.domains for p in parts]),
        )


@dataclass
class Evaluation:
    """The saved model on each evaluation split: ``reports`` (``metrics.evaluation_report`` at the
    inference temperature), ``reliability`` (field photos' reliability bins) and ``embeddings``."""

    reports: dict[str, dict[str, dict[str, float]]]
    reliability: dict[str, list[dict[str, float]]]
    embeddings: dict[str, LabelledEmbeddings]


# ------------------------------------------------------------------------------------------------------
# Temperature and reports
# ------------------------------------------------------------------------------------------------------


def calibrate(
    model: ArcFaceForImageClassification,
    config: ImageClassificationCustomParams,
    validation: SplitData | None,
    raw: Mapping[str, tuple[np.ndarray | None, np.ndarray | M.ScoreRows]],
) -> dict[str, Any]:
    """Set the inference temperature: ``config.temperature``, else fitted on the field validation photos
    (their logits ``(N, C)`` at T = 1 in ``raw[validation.name][1]``, an array or read in chunks from a
    ``ScoreRows``), else :data:`FALLBACK_TEMPERATURE`. Returns what was done (for ``metrics.json`` and the
    card)."""
    if config.temperature is not None:
        model.set_logit_temperature(config.temperature)
        return {"temperature": config.temperature, "source": "config"}
    field = None if validation is None else validation.domains == FIELD
    if field is None or not field.any():
        model.set_logit_temperature(FALLBACK_TEMPERATURE)
        logger.warning(
            f"No field validation photos: confidences use the default temperature {FALLBACK_TEMPERATURE:g} "
            "(measured on the real benchmark), not one fitted to this collection"
        )
        return {
            "temperature": FALLBACK_TEMPERATURE,
            "source": "the default: no field validation photos to fit it on",
        }
    logits = M.as_rows(raw[validation.name][1]).take(field)
    labels = validation.labels[field]
    fitted = M.fit_temperature(logits, labels)
    before = M.expected_calibration_error(logits, labels)
    after = M.expected_calibration_error(logits.divided_by(fitted), labels)
    n = int(field.sum())
    if after > before:  # the NLL fit on few photos can miss: never save confidences made worse
        model.set_logit_temperature(1.0)
        logger.warning(
            f"Temperature {fitted:.3g} fitted on {n} field validation photos would raise their ECE from "
            f"{before:.3f} to {after:.3f}: kept T = 1 (confidences are uncalibrated; more field validation "
            "photos, or `temperature` in the config, fix this)"
        )
        return {
            "temperature": 1.0,
            "source": f"T = 1 kept: the temperature {fitted:.3g} fitted on {n} field validation photos "
            f"raised their ECE from {before:.3f} to {after:.3f}",
            "fitted_temperature_rejected": round(fitted, 4),
            "validation_field_ece_before": before,
            "validation_field_ece_after": before,
        }
    model.set_logit_temperature(fitted)
    logger.info(
        f"Temperature {fitted:.3g} fitted on the field validation photos: ECE {before:.3f} -> {after:.3f}"
    )
    return {
        "temperature": round(fitted, 4),
        "source": f"fitted on {n} field validation photos",
        "validation_field_ece_before": before,
        "validation_field_ece_after": after,
    }


def evaluate_splits(
    ctx: RunContext, raw: Mapping[str, tuple[np.ndarray, np.ndarray | M.ScoreRows]], temperature: float
) -> Evaluation:
    """The reports of every evaluation split from its embeddings ``(N, D)`` and logits ``(N, C)`` at T = 1
    (``raw``), the logits divided by ``temperature`` and read once in row chunks; one log line per
    split."""
    evaluation = Evaluation({}, {}, {})
    for split in ctx.evaluated:
        embeddings, logits = raw[split.name][0], M.as_rows(raw[split.name][1]).divided_by(temperature)
        summary = M.summarize(logits, split.labels)
        evaluation.reports[split.name] = M.summary_report(summary, split.domains, ctx.data.class_has_field)
        field = split.domains == FIELD
        evaluation.reliability[split.name] = M.summary_reliability_bins(summary.take(field))
        evaluation.embeddings[split.name] = LabelledEmbeddings(embeddings, split.labels, split.domains)
        logger.info(f"{split.name}: {M.readable(evaluation.reports[split.name])}")
    return evaluation


def training_facts(ctx: RunContext, trained: TrainedRun) -> dict[str, Any]:
    """``metrics.json``'s ``training``: steps, resumption, timings, device, precision, throughput."""
    resume = ctx.resume
    resumed_step = int(resume.rsplit("-", 1)[-1]) if resume and resume.rsplit("-", 1)[-1].isdigit() else None
    return {
        "global_step": trained.state.global_step,
        "num_processes": ctx.state.num_processes,
        "epochs_completed": round(trained.state.epoch or 0.0, 4),
        "best_checkpoint": trained.state.best_model_checkpoint,
        "best_metric": trained.state.best_metric,
        "resumed_from": resume,
        "resumed_from_step": resumed_step,
        "train_runtime_seconds": round(trained.runtime_seconds, 2),
        "decode_seconds": round(ctx.caches.seconds, 2),
        "device": str(ctx.state.device),
        "mixed_precision": trained.mixed_precision,
        "augmentation_device": "gpu" if ctx.batch_augment else "cpu",
        "torch_compile": ctx.config.torch_compile,
        "dataloader_num_workers": ctx.config.dataloader_num_workers,
        "throughput": trained.throughput,
    }


def build_summary(
    ctx: RunContext,
    trained: TrainedRun,
    evaluation: Evaluation,
    wise_ft: dict[str, Any],
    calibration: dict[str, Any],
) -> dict[str, Any]:
    """The content of ``metrics.json`` (``training.wall_seconds`` is added when the figures are done)."""
    has_field = ctx.data.class_has_field
    summary: dict[str, Any] = {
        "image_size": ctx.image_size,
        "classes": {
            "num_classes": len(ctx.data.class_names),
            "with_field": int(has_field.sum()),
            "herbarium_only": int((~has_field).sum()),
        },
        "best_model_metric": trained.best_model_metric,
        "notes": list(getattr(ctx.data, "notes", []) or []),
        **evaluation.reports,
    }
    if ctx.baseline is not None:
        summary["baseline_prototypes"] = ctx.baseline
    summary["wise_ft"] = wise_ft
    summary["calibration"] = {**calibration, "reliability_field": evaluation.reliability}
    summary["training"] = training_facts(ctx, trained)
    if ctx.hp_search is not None:
        summary["hp_search"] = ctx.hp_search
    return summary


# ------------------------------------------------------------------------------------------------------
# Figures and files
# ------------------------------------------------------------------------------------------------------


def tsne_points(
    evaluated: Mapping[str, LabelledEmbeddings],
    train: SplitData,
    embed_train: Callable[[np.ndarray], np.ndarray],
    seed: int,
) -> LabelledEmbeddings | None:
    """The points of ``tsne.png``: each evaluation split (at most :data:`TSNE_MAX_EVAL` images of each)
    and at most :data:`TSNE_MAX_TRAIN_HERBARIUM` training herbarium sheets, sampled with ``seed``.

    Args:
        evaluated: the evaluation splits' embeddings.
        train: the training split (labels and domains).
        embed_train: training-image indices ``(K,)`` -> their embeddings ``(K, D)``.
        seed: sampling seed.

    Returns:
        The points, or None when there are none.
    """
    rng = np.random.default_rng(seed)
    parts = []
    for part in evaluated.values():
        keep = np.arange(len(part))
        if len(keep) > TSNE_MAX_EVAL:
            keep = np.sort(rng.choice(keep, TSNE_MAX_EVAL, replace=False))
        parts.append(part.take(keep))
    herbarium = np.flatnonzero(train.domains != FIELD)
    if len(herbarium):
        if len(herbarium) > TSNE_MAX_TRAIN_HERBARIUM:
            herbarium = np.sort(rng.choice(herbarium, TSNE_MAX_TRAIN_HERBARIUM, replace=False))
        parts.append(
            LabelledEmbeddings(embed_train(herbarium), train.labels[herbarium], train.domains[herbarium])
        )
    return LabelledEmbeddings.concatenate(parts) if parts else None


def write_tsne(
    path: Path,
    points: LabelledEmbeddings | None,
    class_names: Sequence[str],
    seed: int,
    title: str,
    method: str = "tsne",
) -> str | None:
    """The map figure (``tsne.png``; ``method`` ``"umap"``: a UMAP map) of ``points`` (coloured by species);
    its file name, or None (with a warning) when there are fewer than :data:`TSNE_MIN_POINTS` points."""
    if points is None or len(points) < TSNE_MIN_POINTS:
        logger.warning(f"{method}: fewer than 5 images to plot; {path.name} not written")
        return None
    plot_tsne(
        points.embeddings,
        points.labels,
        points.domains,
        class_names,
        str(path),
        seed=seed,
        title=title,
        method=method,
    )
    return path.name


def _map_points(ctx: RunContext, embedder: Embedder, evaluation: Evaluation) -> LabelledEmbeddings | None:
    """The points of the map figure and of the silhouette and domain gap (:func:`tsne_points`)."""

    def embed_train(indices: np.ndarray) -> np.ndarray:
        return embedder.embed(ctx.caches.train, indices)

    return tsne_points(evaluation.embeddings, ctx.data.train, embed_train, ctx.config.seed)


def _map_figure(ctx: RunContext, points: LabelledEmbeddings | None, described: str) -> str | None:
    method = ctx.config.embedding_map
    title = f"{ctx.config.project_name}: {MAP_TITLES[method]} of the embeddings by species ({described})"
    return write_tsne(
        ctx.project / f"{method}.png", points, ctx.data.class_names, ctx.config.seed, title, method
    )


def read_taxonomy(ctx: RunContext) -> tuple[dict[str, str], dict[str, str]] | None:
    """``taxonomy_file`` read (``(genus, family)``, see ``read_taxonomy_csv``), or None without one; a
    one-line warning names how many of the model's species it lacks (and the first few)."""
    if not ctx.config.taxonomy_file:
        return None
    taxonomy = read_taxonomy_csv(ctx.config.taxonomy_file)
    missing = E.species_missing(ctx.data.class_names, taxonomy[0])
    if missing:
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        logger.warning(
            f"taxonomy_file {ctx.config.taxonomy_file!r} lacks {len(missing)} of the "
            f"{len(ctx.data.class_names)} species ({shown}): their images are left out of the genus/family top-1"
        )
    return taxonomy


def species_report(
    ctx: RunContext,
    raw: Mapping[str, tuple[np.ndarray, np.ndarray | M.ScoreRows]],
    temperature: float,
    points: LabelledEmbeddings | None,
    described: str,
) -> dict[str, Any]:
    """The :mod:`evaluation` entries of ``metrics.json``: per species, confused pairs and genus/family top-1
    on the test split (else validation; logits at T = 1 in ``raw``, divided by ``temperature``), and the
    silhouette and domain gap of the map ``points`` (``described``: which images they are)."""
    out: dict[str, Any] = {}
    if ctx.evaluated:
        split = ctx.evaluated[-1]  # test when there is one
        taxonomy = read_taxonomy(ctx)
        out.update(
            E.species_evaluation(
                split.name,
                M.as_rows(raw[split.name][1]).divided_by(temperature),
                split.labels,
                split.domains,
                ctx.data.class_names,
                ctx.data.class_has_field,
                taxonomy,
            )
        )
    if points is not None and len(points):
        out.update(
            E.embedding_structure(
                points.embeddings, points.labels, points.domains, ctx.data.class_names, described
            )
        )
        gap = out["domain_gap"]
        logger.info(
            f"Embeddings by species: silhouette {out['silhouette']['all']:.3f} (cosine, {len(points)} images); "
            f"herbarium-to-field distance median {gap['median']:.3f} over {gap['n_species']} species"
        )
    return out


def write_json(path: Path, payload: Any) -> None:
    """``payload`` as indented JSON (numpy scalars and arrays included), parent folders created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=_json_default) + "\n", encoding="utf-8")


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_report_files(
    project: Path,
    config: ImageClassificationCustomParams,
    summary: Mapping[str, Any],
    class_names: Sequence[str],
    tsne_file: str | None,
) -> None:
    """``metrics.json`` (``summary``), ``reliability.png`` (when some split has field photos),
    ``confusions.png`` (when ``summary`` has confused pairs) and the card ``README.md`` into ``project``."""
    write_json(project / "metrics.json", summary)
    reliability = summary["calibration"]["reliability_field"]
    reliability_file = None
    if any(reliability.values()):
        plot_reliability(reliability, str(project / "reliability.png"))
        reliability_file = "reliability.png"
    confused = summary.get("confused_pairs") or {}
    confusions_file = None
    if confused.get("pairs"):
        title = f"Most-confused species pairs ({confused['split']} split, {confused['images']} images)"
        plot_confusions(confused["pairs"], str(project / CONFUSIONS_FILE), title)
        confusions_file = CONFUSIONS_FILE
    card = render_model_card(
        config.public_dict(),
        summary,
        class_names,
        tsne_file=tsne_file,
        repo_id=config.resolved_repo_id,
        reliability_file=reliability_file,
        confusions_file=confusions_file,
    )
    (project / "README.md").write_text(card, encoding="utf-8")


# ------------------------------------------------------------------------------------------------------
# The stages
# ------------------------------------------------------------------------------------------------------


def save_outputs(ctx: RunContext, trained: TrainedRun) -> dict[str, Any]:
    """Stage "outputs" (main process): WiSE-FT mix, temperature, model folder, figures, metrics and card.

    Returns:
        The content of ``metrics.json``.
    """
    embedder = ctx.embedder()
    wise_ft = choose_saved_weights(ctx, embedder)
    # each evaluation split embedded once, at T = 1: the temperature is fitted on these logits and the
    # reports divide them by it (the same numbers as embedding again with T set). The logits are read
    # in row chunks from the embeddings (HeadLogits), never held as an (N, C) matrix.
    ctx.model.set_logit_temperature(1.0)
    raw = {}
    for split in ctx.evaluated:
        logits = embedder.logits(ctx.caches.evaluation[split.name])
        raw[split.name] = (logits.embeddings, logits)
    calibration = calibrate(ctx.model, ctx.config, ctx.data.validation, raw)
    logger.info("Finished training, saving the model folder...")
    save_arcface_model(ctx.model, ctx.project)
    evaluation = evaluate_splits(ctx, raw, ctx.model.config.logit_temperature)
    summary = build_summary(ctx, trained, evaluation, wise_ft, calibration)
    points = _map_points(ctx, embedder, evaluation)
    described = " + ".join([*evaluation.embeddings, "train herbarium sample"])
    summary.update(species_report(ctx, raw, ctx.model.config.logit_temperature, points, described))
    tsne_file = _map_figure(ctx, points, described) if ctx.config.tsne else None
    summary["embedding_map"] = {"method": ctx.config.embedding_map, "file": tsne_file}
    summary["training"]["wall_seconds"] = round(time.perf_counter() - ctx.wall_start, 2)
    write_report_files(ctx.project, ctx.config, summary, ctx.data.class_names, tsne_file)
    return summary


def push_folder_to_hub(config: ImageClassificationCustomParams, folder: str) -> str:
    """Create (or reuse) the Hub repository and upload the model folder, checkpoints and data excluded."""
    repo_id = config.resolved_repo_id
    api = HfApi(token=config.token)
    api.create_repo(repo_id=repo_id, repo_type="model", private=config.hub_private, exist_ok=True)
    api.upload_folder(
        folder_path=folder,
        repo_id=repo_id,
        repo_type="model",
        ignore_patterns=HUB_IGNORE_PATTERNS,
        commit_message="Upload ArcFace model trained with AutoTrain image_classification_custom",
    )
    logger.info(f"Pushed {folder} to https://huggingface.co/{repo_id}")
    return repo_id


def publish(ctx: RunContext, summary: Mapping[str, Any]) -> None:
    """Stage "push" (main process): upload when ``push_to_hub``, remove the temporary files (image cache,
    WiSE-FT start), pause the Space."""
    if ctx.config.push_to_hub:
        push_folder_to_hub(ctx.config, str(ctx.project))
    shutil.rmtree(ctx.project / "cache", ignore_errors=True)
    (ctx.project / WISE_FT_START).unlink(missing_ok=True)
    pause_space(ctx.config)
    logger.info(f"Done in {summary['training']['wall_seconds']:.0f}s: {ctx.project.resolve()}")
