"""Stage "hyperparameter search" (optional ``hp_search`` block): Optuna trials before the normal run.

The trials run through ``transformers.Trainer.hyperparameter_search(backend="optuna")`` on one
:class:`arcface_trainer.ArcFaceTrainer` whose ``model_init`` hands every trial a fresh copy of the
prototype-started model (:func:`stages.start_from_prototypes`) with the trial's ArcFace margin and scale;
the trial's backbone and head learning rates go to the optimizer groups
(``ArcFaceTrainer._hp_search_setup``). Each trial keeps its best epoch by field-validation MRR as a normal
run does; then :class:`TrialScore` mixes those weights with the starting ones at the trial's WiSE-FT alpha
(``wise_ft.apply_wise_ft``) and scores the field validation photos' MRR with the
:class:`embedder.Embedder`; that number is the trial's objective.

Why the alpha is in the Optuna space rather than left to ``wise_ft_select``: it costs no training (one
pass over the validation photos per trial), and it interacts with the learning rates (a large backbone
learning rate that forgets the pretrained features can still win with a smaller alpha), which a grid
applied after the final run cannot feed back into the choice of learning rate. With
``hp_search.wise_ft_alpha: null`` the alpha is left out: each trial is scored as the final run will
choose it (the ``wise_ft_select`` grid, or ``wise_ft_alpha``).

The table of trials goes to ``hp_search.csv`` and ``hp_search.md`` in the project folder; the best trial's
values replace those of the config for the normal run (``ctx.config``, the model's head) and are recorded
in ``ctx.hp_search`` (``metrics.json``'s ``hp_search``, a line of the card). The starting model is scored
the same way first (alpha 0); when no trial beats it, the log and the card say so and the normal run chooses
its alpha on the field validation photos, saving the starting model unless its own training beats it.
"""

from __future__ import annotations

import copy
import csv
import shutil
from dataclasses import replace
from typing import Any

import numpy as np
import optuna
import torch
from transformers import EarlyStoppingCallback, TrainerCallback

from autotrain import logger
from autotrain.trainers.image_classification_custom import metrics as M
from autotrain.trainers.image_classification_custom.arcface_trainer import build_trainer
from autotrain.trainers.image_classification_custom.callbacks import BackboneWarmupCallback
from autotrain.trainers.image_classification_custom.embedder import Embedder
from autotrain.trainers.image_classification_custom.params import ImageClassificationCustomParams
from autotrain.trainers.image_classification_custom.splits import DataInputError, SplitData
from autotrain.trainers.image_classification_custom.stages import RunContext
from autotrain.trainers.image_classification_custom.wise_ft import apply_wise_ft, select_wise_ft_alpha
from data_prep.contract import FIELD

SEARCH_DIR = "hp_search"  # the trials' checkpoints, under the project folder; deleted after the search
TABLE_FILES = ("hp_search.csv", "hp_search.md")
LOG_SCALE = frozenset({"backbone_lr", "head_lr", "arcface_scale"})
METRIC = "field validation MRR"


def require_field_validation(ctx: RunContext) -> SplitData:
    """The validation split, which must hold field photos (the search is scored on them).

    Raises:
        DataInputError: no validation split, or one without field photos (one line; exit status 2).
    """
    config, validation = ctx.config, ctx.data.validation
    if validation is None or not np.any(validation.domains == FIELD):
        what = "no validation split" if validation is None else f"no field photos in {validation.name!r}"
        raise DataInputError(
            f"hp_search: {config.resolved_data_path!r} has {what}; the search is scored on field validation "
            "photos: add a validation split with field photos, or remove hp_search from the config"
        )
    if ctx.state.num_processes > 1:
        raise ValueError("hp_search runs in one process: start it without torchrun / accelerate launch")
    return validation


def search_space(config: ImageClassificationCustomParams) -> dict[str, tuple[float, float]]:
    """The searched parameters and their ranges (``{name: (low, high)}``): ``hp_search.searched`` without
    ``backbone_lr`` (with a one-line warning) when a trial ends before the backbone is unfrozen
    (``trial_epochs`` <= ``warmup_epochs``), since no trial would use it."""
    search = config.hp_search
    space = dict(search.searched)
    trial_epochs = search.trial_epochs or config.epochs
    if "backbone_lr" in space and trial_epochs <= config.warmup_epochs:
        del space["backbone_lr"]
        logger.warning(
            f"hp_search: backbone_lr is not searched: a trial's {trial_epochs} epoch(s) are all head-only "
            f"(warmup_epochs {config.warmup_epochs}), so the backbone never trains in a trial; set "
            "hp_search.trial_epochs above warmup_epochs to search it"
        )
    return space


def suggest(trial: optuna.Trial, space: dict[str, tuple[float, float]]) -> dict[str, float]:
    """The trial's values of the searched parameters ``space`` (:func:`search_space`; log scale for the
    learning rates and the scale)."""
    return {
        name: trial.suggest_float(name, low, high, log=name in LOG_SCALE)
        for name, (low, high) in space.items()
    }


def field_mrr(embedder: Embedder, validation: SplitData, images: np.ndarray) -> float:
    """MRR of ``embedder.model`` on the field photos of ``validation`` (``images``: its cached uint8 images
    ``(N, S, S, 3)``): the search's objective."""
    field = validation.domains == FIELD
    return float(M.mean_reciprocal_rank(embedder.logits(images[field]), validation.labels[field]))


def set_margin_and_scale(model: torch.nn.Module, margin: float, scale: float) -> None:
    """Give ``model`` (an ``ArcFaceForImageClassification``) ArcFace margin ``margin`` (radians) and scale
    ``scale``: a new head with the same centres, and the same values in ``model.config``."""
    head = model.head
    new = type(head)(
        head.in_features,
        head.num_classes,
        scale=scale,
        margin=margin,
        subcenters=head.subcenters,
        eps=head.eps,
        temperature=head.temperature,
    ).to(head.weight.device, head.weight.dtype)
    new.load_state_dict(head.state_dict())
    model.head = new
    model.config.arcface_margin, model.config.arcface_scale = float(margin), float(scale)


class TrialModels:
    """``model_init`` of the search: a copy of the prototype-started model with the trial's margin/scale.

    Args:
        ctx: the run; ``ctx.model`` is the started model (copied once, on the CPU).
    """

    def __init__(self, ctx: RunContext) -> None:
        self.started = copy.deepcopy(ctx.model).cpu()
        self.start_weights = {k: v.detach().clone() for k, v in self.started.state_dict().items()}
        self.config = ctx.config
        self.params: dict[str, float] = {}

    def __call__(self, trial: optuna.Trial | None = None) -> torch.nn.Module:
        self.params = dict(trial.params) if trial is not None else {}
        model = copy.deepcopy(self.started)
        margin = self.params.get("arcface_margin", self.config.arcface_margin)
        set_margin_and_scale(model, margin, self.params.get("arcface_scale", self.config.arcface_scale))
        return model


class TrialScore(TrainerCallback):
    """At the end of each trial (after the best epoch is loaded): the objective, field validation MRR of
    the trial's weights mixed with the starting ones at its WiSE-FT alpha; resets the per-run state of
    the callbacks the trials share.

    Args:
        ctx: the run (validation split, cached images, embedder settings).
        models: the search's :class:`TrialModels` (starting weights, the current trial's values).
    """

    def __init__(self, ctx: RunContext, models: TrialModels) -> None:
        self.ctx, self.models, self.trainer = ctx, models, None

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.trainer is None:
            return
        ctx, validation = self.ctx, self.ctx.data.validation
        images = ctx.caches.evaluation[validation.name]
        embedder = replace(ctx, model=model).embedder()
        tuned = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        start, alpha = self.models.start_weights, self.models.params.get("wise_ft_alpha")
        if alpha is None and ctx.config.wise_ft_select:
            selection = select_wise_ft_alpha(embedder, start, tuned, validation, images)
            score = selection["validation_mrr"][str(selection["alpha"])]
        else:
            apply_wise_ft(model, start, tuned, ctx.config.wise_ft_alpha if alpha is None else alpha)
            score = field_mrr(embedder, validation, images)
        self.trainer.objective = float(score)
        for callback in self.trainer.callback_handler.callbacks:
            if isinstance(callback, EarlyStoppingCallback):
                callback.early_stopping_patience_counter = 0
            if isinstance(callback, BackboneWarmupCallback):
                callback.frozen = None
        logger.info(f"hp_search trial {self.models.params}: {METRIC} {score:.4f}")


def run_trials(ctx: RunContext, models: TrialModels, space: dict[str, tuple[float, float]]) -> optuna.Study:
    """Every trial through ``Trainer.hyperparameter_search`` over ``space`` (:func:`search_space`); returns
    the finished Optuna study."""
    config, search = ctx.config, ctx.config.hp_search
    epochs = search.trial_epochs or config.epochs
    trial_config = config.model_copy(
        update={"epochs": epochs, "warmup_epochs": min(config.warmup_epochs, epochs), "log": "none"}
    )
    trainer, _, best_metric, _ = build_trainer(replace(ctx, config=trial_config), model_init=models)
    trainer.args.output_dir = str(ctx.project / SEARCH_DIR)
    scorer = TrialScore(ctx, models)
    scorer.trainer = trainer
    trainer.add_callback(scorer)
    seed = config.seed if search.seed is None else search.seed
    sampler = optuna.samplers.TPESampler if search.sampler == "tpe" else optuna.samplers.RandomSampler
    storage = optuna.storages.InMemoryStorage()

    def hp_space(trial: optuna.Trial) -> dict[str, float]:
        suggest(trial, space)  # none is a TrainingArguments field: read back from trial.params
        return {}

    trainer.hyperparameter_search(
        hp_space=hp_space,
        compute_objective=lambda metrics: metrics.get(f"eval_{best_metric}", 0.0),
        n_trials=search.n_trials,
        direction="maximize",
        backend="optuna",
        sampler=sampler(seed=seed),
        pruner=optuna.pruners.NopPruner(),  # intermediate field MRRs are at alpha 1, the objective is not
        storage=storage,
        study_name=SEARCH_DIR,
    )
    shutil.rmtree(ctx.project / SEARCH_DIR, ignore_errors=True)
    return optuna.load_study(study_name=SEARCH_DIR, storage=storage)


def trial_rows(study: optuna.Study, names: list[str]) -> list[dict[str, Any]]:
    """One row per trial: ``trial``, ``state``, ``field_val_mrr`` (None unless complete), the values."""
    return [
        {
            "trial": t.number,
            "state": t.state.name.lower(),
            "field_val_mrr": None if t.value is None else round(float(t.value), 6),
            **{n: t.params.get(n) for n in names},
            "seconds": round(t.duration.total_seconds(), 1) if t.duration else None,
        }
        for t in study.trials
    ]


def write_tables(ctx: RunContext, rows: list[dict[str, Any]], best: int) -> None:
    """``hp_search.csv`` and ``hp_search.md`` (the best trial marked) in the project folder."""
    columns = list(rows[0])
    csv_path, md_path = (ctx.project / name for name in TABLE_FILES)
    with open(csv_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)

    def cell(value: Any) -> str:
        return "" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = [
        f"# Hyperparameter search: {len(rows)} trials, scored on {METRIC}",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + " --- |" * len(columns),
    ]
    for row in rows:
        mark = " (best)" if row["trial"] == best else ""
        lines.append("| " + " | ".join(cell(row[c]) + (mark if c == "trial" else "") for c in columns) + " |")
    md_path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def use_best(ctx: RunContext, study: optuna.Study, start_score: float) -> dict[str, Any]:
    """Put the best trial's values into ``ctx.config`` and ``ctx.model`` for the normal run; returns
    ``metrics.json``'s ``hp_search``.

    ``start_score`` is the starting model's :data:`METRIC` (a trial at WiSE-FT alpha 0). When the best
    trial does not beat it (to 6 decimals), a warning is logged, ``beat_start`` is False and the searched
    alpha is not imposed: the normal run chooses its alpha on the field validation photos
    (``wise_ft_select``), so it saves the starting model unless its own training beats it.
    """
    best = study.best_trial
    beat_start = round(float(best.value), 6) > round(start_score, 6)
    update: dict[str, Any] = dict(best.params)
    if not beat_start:
        update.pop("wise_ft_alpha", None)
        update["wise_ft_select"] = True
        logger.warning(
            f"hp_search: no trial beat the starting model on the field validation photos (best {METRIC} "
            f"{best.value:.4f}, start {start_score:.4f}); the normal run keeps the starting model unless it "
            "beats it; more trial epochs, other ranges or more field photos may help"
        )
    elif "wise_ft_alpha" in update:
        update["wise_ft_select"] = False  # the searched alpha is the one saved
    ctx.config = ctx.config.model_copy(update=update)
    set_margin_and_scale(ctx.model, ctx.config.arcface_margin, ctx.config.arcface_scale)
    finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    logger.info(f"hp_search: best trial {best.number} ({METRIC} {best.value:.4f}): {best.params}")
    return {
        "n_trials": len(study.trials),
        "completed": len(finished),
        "metric": METRIC,
        "best_trial": best.number,
        "best_score": float(best.value),
        "start_score": float(start_score),
        "beat_start": beat_start,
        "params": dict(best.params),
        "trial_epochs": ctx.config.hp_search.trial_epochs or ctx.config.epochs,
        "tables": list(TABLE_FILES),
    }


def search_hyperparameters(ctx: RunContext) -> None:
    """Stage "hyperparameter search" when the config has ``hp_search`` (else nothing): the starting model's
    score, the trials, their table, and the best values in ``ctx.config``/``ctx.model``; the summary in
    ``ctx.hp_search``.

    Raises:
        DataInputError: no field validation photos (:func:`require_field_validation`).
    """
    if ctx.config.hp_search is None:
        return
    validation = require_field_validation(ctx)
    space = search_space(ctx.config)
    start_score = field_mrr(ctx.embedder(), validation, ctx.caches.evaluation[validation.name])
    models = TrialModels(ctx)
    study = run_trials(ctx, models, space)
    if ctx.is_main:
        write_tables(ctx, trial_rows(study, list(space)), study.best_trial.number)
    ctx.hp_search = use_best(ctx, study, start_score)
