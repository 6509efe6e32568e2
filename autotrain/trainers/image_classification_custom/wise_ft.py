"""WiSE-FT: the saved weights as a mix of the starting model and the fine-tuned one.

Wortsman et al., "Robust fine-tuning of zero-shot models", CVPR 2022. The starting model here is the
pretrained backbone with the projection and the ArcFace centres at the class-mean prototypes
(:func:`stages.start_from_prototypes`); it is kept before training (:func:`keep_start_weights`, also on
disk so that a resumed run has it) and mixed in after training (:func:`choose_saved_weights`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from autotrain import logger
from autotrain.trainers.image_classification_custom import metrics as M
from autotrain.trainers.image_classification_custom.embedder import Embedder
from autotrain.trainers.image_classification_custom.splits import SplitData
from autotrain.trainers.image_classification_custom.stages import RunContext
from data_prep.contract import FIELD

WISE_FT_START = "wise_ft_start.safetensors"
WISE_FT_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)


@torch.no_grad()
def apply_wise_ft(
    model: torch.nn.Module, start: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor], alpha: float
) -> None:
    """Load ``(1 - alpha) * start + alpha * tuned`` into ``model`` (WiSE-FT weight-space ensembling).

    Floating-point tensors are interpolated; integer buffers (BatchNorm's ``num_batches_tracked``) are
    taken from ``tuned``.

    Args:
        model: the fine-tuned model (its architecture matches both state dicts).
        start: state dict before fine-tuning (here: pretrained backbone, projection and prototype centres).
        tuned: state dict after fine-tuning.
        alpha: mixing coefficient in [0, 1].
    """
    mixed = {}
    for key, value in tuned.items():
        if value.is_floating_point() and key in start:
            mixed[key] = torch.lerp(start[key].to(value.dtype), value, float(alpha))
        else:
            mixed[key] = value
    model.load_state_dict(mixed, strict=True)


def _cpu_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}


def selects_alpha(ctx: RunContext) -> bool:
    """True when the alpha is chosen on field validation photos (``wise_ft_select`` and there are some)."""
    validation = ctx.data.validation
    has_field_validation = validation is not None and bool(np.any(validation.domains == FIELD))
    return ctx.config.wise_ft_select and has_field_validation


def keep_start_weights(ctx: RunContext) -> None:
    """Stage "WiSE-FT start": ``ctx.start_weights`` when WiSE-FT needs them (an alpha below 1, a report
    or a selection). A new run keeps the current weights (and the main process writes them to
    :data:`WISE_FT_START`); a resumed run reads that file back, or warns and saves the fine-tuned weights
    as they are."""
    config, project = ctx.config, ctx.project
    if not (config.wise_ft_alpha < 1.0 or bool(config.wise_ft_report) or selects_alpha(ctx)):
        return
    if ctx.resume is None:
        ctx.start_weights = _cpu_state_dict(ctx.model)
        if ctx.is_main:
            save_file(ctx.start_weights, str(project / WISE_FT_START))
    elif (project / WISE_FT_START).is_file():
        ctx.start_weights = load_file(str(project / WISE_FT_START))
    else:
        logger.warning(
            f"WiSE-FT: resuming without {WISE_FT_START} in {str(project)!r}: the starting weights are "
            "unknown, so the fine-tuned weights are saved as they are (wise_ft_alpha ignored)"
        )


def select_wise_ft_alpha(
    embedder: Embedder,
    start: dict[str, torch.Tensor],
    tuned: dict[str, torch.Tensor],
    validation: SplitData,
    images: np.ndarray,
) -> dict[str, Any]:
    """Choose the WiSE-FT alpha of :data:`WISE_FT_GRID` with the best field-validation MRR.

    Alpha 0 is the starting model (the frozen-feature prototype line), so a run whose fine-tuning lost
    what the pretrained features knew falls back towards them instead of saving a worse model. Ties go to
    the larger alpha.

    Args:
        embedder: runs the model whose weights are mixed.
        start, tuned: the state dicts mixed by :func:`apply_wise_ft`.
        validation: the validation split (its field photos are scored).
        images: its cached uint8 images ``(N, S, S, 3)``.

    Returns:
        ``{"alpha", "by", "validation_mrr": {alpha: mrr}}``.
    """
    field = validation.domains == FIELD
    scores = {}
    for a in WISE_FT_GRID:
        apply_wise_ft(embedder.model, start, tuned, a)
        logits = embedder.logits(images, np.flatnonzero(field))  # read in row chunks, never (N, C)
        scores[a] = M.mean_reciprocal_rank(logits, validation.labels[field])
    best = max(scores, key=lambda a: (round(scores[a], 6), a))
    logger.info(
        "WiSE-FT alpha chosen on the field validation photos: "
        + ", ".join(f"{a:g}: MRR {m:.3f}" for a, m in scores.items())
        + f" -> {best:g}"
    )
    if best == 0.0:
        logger.warning(
            "Training did not beat the starting model on the field validation photos: the saved weights are "
            "the starting model (pretrained backbone, class-mean prototypes) and the fine-tuned weights are "
            "discarded; more epochs, another learning rate or more field photos may help"
        )
    return {
        "alpha": best,
        "by": "field validation MRR",
        "validation_mrr": {str(a): m for a, m in scores.items()},
    }


def wise_ft_report(
    ctx: RunContext, embedder: Embedder, tuned: dict[str, torch.Tensor]
) -> list[dict[str, Any]]:
    """The evaluation report of every evaluation split at each alpha of ``wise_ft_report``."""
    rows = []
    for alpha in ctx.config.wise_ft_report:
        apply_wise_ft(embedder.model, ctx.start_weights, tuned, alpha)
        row: dict[str, Any] = {"alpha": float(alpha)}
        for split in ctx.evaluated:
            row[split.name] = ctx.report(embedder.logits(ctx.caches.evaluation[split.name]), split)
        rows.append(row)
        logger.info(
            f"WiSE-FT alpha {alpha:g}: " + "; ".join(f"{k} {M.readable(row[k])}" for k in row if k != "alpha")
        )
    return rows


def choose_saved_weights(ctx: RunContext, embedder: Embedder) -> dict[str, Any]:
    """Load the weights to save into ``embedder.model``: ``wise_ft_alpha`` (or the alpha chosen on the
    field validation photos) mixing the start and the fine-tuned weights; the fine-tuned weights as they
    are without start weights.

    Returns:
        ``metrics.json``'s ``wise_ft``: ``{"alpha", "selection", "report"}``.
    """
    if ctx.start_weights is None:
        return {"alpha": 1.0, "selection": None, "report": None}
    tuned = _cpu_state_dict(embedder.model)
    report = wise_ft_report(ctx, embedder, tuned) if ctx.config.wise_ft_report else None
    alpha, selection = ctx.config.wise_ft_alpha, None
    if selects_alpha(ctx):
        validation = ctx.data.validation
        selection = select_wise_ft_alpha(
            embedder, ctx.start_weights, tuned, validation, ctx.caches.evaluation[validation.name]
        )
        alpha = selection["alpha"]
    apply_wise_ft(embedder.model, ctx.start_weights, tuned, alpha)
    if alpha < 1.0:
        logger.info(f"WiSE-FT: saved weights = {1 - alpha:g} x start + {alpha:g} x fine-tuned")
    return {"alpha": alpha, "selection": selection, "report": report}
