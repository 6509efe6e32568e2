"""The stages before the Trainer runs, and the context every stage of a run shares.

:func:`training.run` calls, in order: :func:`start_run`, :func:`load_data`, :func:`build_model`,
:func:`decode_caches`, :func:`start_from_prototypes`, ``hp_search.search_hyperparameters`` (only with ``hp_search``), then
``wise_ft.keep_start_weights``,
``arcface_trainer.train_model`` and ``outputs.save_outputs`` / ``outputs.publish``. Each stage reads
what earlier stages put in the :class:`RunContext` and adds its own part, so a test can build a context
by hand and run one stage alone.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import PartialState
from transformers import set_seed

from autotrain import logger
from autotrain.trainers.image_classification_custom import metrics as M
from autotrain.trainers.image_classification_custom.dataset import (
    NormalizeCollator,
    cache_budget_note,
    decode_images,
    train_cache_size,
)
from autotrain.trainers.image_classification_custom.embedder import Embedder, HeadLogits, prototype_head
from autotrain.trainers.image_classification_custom.model_io import create_arcface_model
from autotrain.trainers.image_classification_custom.modeling_arcface import ArcFaceForImageClassification
from autotrain.trainers.image_classification_custom.params import ImageClassificationCustomParams
from autotrain.trainers.image_classification_custom.splits import PreparedData, SplitData, load_splits


@dataclass
class ImageCaches:
    """Images decoded once: ``train`` ``(N, S, S, 3)`` uint8 at the training cache size, each evaluation
    split at the model's size, and the seconds the decoding took."""

    train: np.ndarray
    evaluation: dict[str, np.ndarray]
    seconds: float


@dataclass
class RunContext:
    """What the stages of one run share; each stage fills its part.

    Attributes:
        config: the validated training parameters.
        state: accelerate's process state (rank, device, number of processes).
        resume: the checkpoint the run resumes from, or None.
        wall_start: ``time.perf_counter()`` at the start of the run.
        data: the splits and label order (:func:`load_data`).
        model: the ArcFace model (:func:`build_model`).
        collator: normalises uint8 batches with the model's mean/std (:func:`build_model`).
        batch_augment: training batches are augmented on the device (:class:`BatchAugment`), not in
            the DataLoader workers (:func:`build_model`).
        caches: decoded images (:func:`decode_caches`).
        baseline: the "no training" report per evaluation split (:func:`start_from_prototypes`).
        start_weights: state dict before fine-tuning, for WiSE-FT (``wise_ft.keep_start_weights``).
        hp_search: the hyperparameter search's summary, when there was one (``hp_search``).
    """

    config: ImageClassificationCustomParams
    state: PartialState
    resume: str | None = None
    wall_start: float = field(default_factory=time.perf_counter)
    data: PreparedData | None = None
    model: ArcFaceForImageClassification | None = None
    collator: NormalizeCollator | None = None
    batch_augment: bool = False
    caches: ImageCaches | None = None
    baseline: dict[str, Any] | None = None
    start_weights: dict[str, torch.Tensor] | None = None
    hp_search: dict[str, Any] | None = None

    @property
    def project(self) -> Path:
        """The project folder (the model folder)."""
        return Path(self.config.project_name)

    @property
    def is_main(self) -> bool:
        return self.state.is_main_process

    @property
    def image_size(self) -> int:
        """Side in pixels the model sees."""
        return int(self.model.config.image_size)

    @property
    def evaluated(self) -> list[SplitData]:
        """The evaluation splits present (validation, test)."""
        return [s for s in (self.data.validation, self.data.test) if s is not None]

    def report(self, logits: np.ndarray | M.ScoreRows, split: SplitData) -> dict[str, dict[str, float]]:
        """``metrics.evaluation_report`` of ``logits`` (N, C) on ``split``, by domain and class group (an
        array or a ``ScoreRows``, read in row chunks)."""
        return M.evaluation_report(logits, split.labels, split.domains, self.data.class_has_field)

    def embedder(self) -> Embedder:
        """The :class:`Embedder` of the current model (evaluation batch size: twice the training one)."""
        return Embedder(
            self.model,
            self.collator,
            2 * self.config.batch_size,
            self.image_size,
            self.model.config.image_interpolation,
            self.model.device,
        )


def resolve_resume(config: ImageClassificationCustomParams) -> str | None:
    """The checkpoint to resume from, or None.

    ``true`` picks the newest complete ``checkpoint-*`` of the project folder: one that has
    ``trainer_state.json``, which the Trainer writes last (a run killed while saving leaves an
    incomplete folder behind, which is skipped with a warning).

    Raises:
        FileNotFoundError: ``resume_from_checkpoint`` is a path that is not a complete checkpoint.
    """
    value = config.resume_from_checkpoint
    if value is False:
        return None
    if value is True:
        project = Path(config.project_name)
        found = sorted(
            (p for p in project.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()),
            key=lambda p: int(p.name.split("-")[-1]),
            reverse=True,
        )
        for candidate in found:
            if (candidate / "trainer_state.json").is_file():
                return str(candidate)
            logger.warning(f"resume_from_checkpoint: skipping incomplete {candidate} (no trainer_state.json)")
        logger.warning(f"resume_from_checkpoint: no checkpoint-* in {str(project)!r}; starting from scratch")
        return None
    if not (Path(value) / "trainer_state.json").is_file():
        raise FileNotFoundError(
            f"resume_from_checkpoint {value!r} is not a checkpoint folder (no trainer_state.json)"
        )
    return value


#: How long a rank waits for the others (NCCL's default is 10 minutes): at the end of a run the other
#: ranks wait while the main one evaluates the test split and draws the map, which takes longer than
#: that on a large collection.
PROCESS_GROUP_TIMEOUT = timedelta(hours=2)


def start_run(config: ImageClassificationCustomParams) -> RunContext:
    """Process group, seed, token, checkpoint to resume; the main process writes ``training_params.json``."""
    wall_start = time.perf_counter()
    # cpu=True without CUDA, so that several CPU processes (torchrun, `accelerate launch --multi_gpu
    # --num_processes 2`) form a gloo group instead of each training alone; with CUDA, accelerate picks
    # NCCL as usual. The group's timeout covers the other ranks' wait while the main one writes the outputs.
    state = PartialState(cpu=not torch.cuda.is_available(), timeout=PROCESS_GROUP_TIMEOUT)
    if config.token and not os.environ.get("HF_TOKEN"):
        os.environ["HF_TOKEN"] = config.token  # private backbones/datasets; the token is never written
    set_seed(config.seed)
    ctx = RunContext(config, state, resolve_resume(config), wall_start)
    if ctx.is_main:
        config.save(str(ctx.project))
        logger.info(f"Training parameters: {config}")  # AutoTrainParams.__str__ masks the token
    return ctx


def load_data(ctx: RunContext) -> None:
    """Stage "data": ``ctx.data`` from ``data_path`` (see ``splits.load_splits`` for the errors)."""
    config = ctx.config
    ctx.data = data = load_splits(
        config.resolved_data_path,
        train_split=config.train_split,
        valid_split=config.valid_split,
        test_split=config.test_split,
        image_column=config.image_column,
        target_column=config.target_column,
        domain_column=config.domain_column,
        token=config.token,
        test_split_required="test_split" in config.model_fields_set and config.test_split is not None,
        valid_split_required="valid_split" in config.model_fields_set,
    )
    logger.info(
        f"{len(data.class_names)} classes ({int(data.class_has_field.sum())} with field training photos); "
        f"train {len(data.train)}, validation {len(data.validation) if data.validation else 0}, test "
        f"{len(data.test) if data.test else 0} images"
    )


def build_model(ctx: RunContext) -> None:
    """Stage "model": ``ctx.model`` (pretrained unless resuming), ``ctx.batch_augment``, ``ctx.collator``."""
    config = ctx.config
    model = create_arcface_model(
        config.model,
        id2label=ctx.data.class_names,
        backbone_source=config.backbone_source,
        pretrained=ctx.resume is None,
        embedding_dim=config.embedding_dim,
        arcface_scale=config.arcface_scale,
        arcface_margin=config.arcface_margin,
        arcface_subcenters=config.arcface_subcenters,
        image_size=config.image_size,
    )
    ctx.model = model.to(memory_format=torch.channels_last)
    use_cuda = torch.cuda.is_available()
    batch_aug = config.augmentation_device == "gpu" or (config.augmentation_device == "auto" and use_cuda)
    if batch_aug and not use_cuda:
        logger.warning(
            "augmentation_device 'gpu' without CUDA: batches are augmented on the CPU in the main process "
            "(usually slower than `cpu`, which augments in DataLoader workers)"
        )
    ctx.batch_augment = batch_aug
    # with batch augmentation the Trainer's batches stay uint8 until ArcFaceTrainer._prepare_inputs;
    # the Embedder calls collator.normalize directly either way
    ctx.collator = NormalizeCollator(
        model.config.image_mean, model.config.image_std, channels_last=True, keep_uint8=batch_aug
    )


def decode_caches(ctx: RunContext) -> None:
    """Stage "caches": every image decoded once (``ctx.caches``); training images a little larger, for
    the random crops."""
    config, size = ctx.config, ctx.image_size
    t0 = time.perf_counter()
    train_size = train_cache_size(size, config.augmentation)
    decode = dict(
        image_column=config.image_column,
        interpolation=ctx.model.config.image_interpolation,
        memory_budget_mb=config.cache_memory_mb,
        spill_dir=str(ctx.project / "cache" / f"rank{ctx.state.process_index}"),
    )
    train = decode_images(ctx.data.train.dataset, size=train_size, draft=True, **decode)
    evaluation = {split.name: decode_images(split.dataset, size=size, **decode) for split in ctx.evaluated}
    ctx.caches = ImageCaches(train, evaluation, time.perf_counter() - t0)
    logger.info(
        f"Decoded images once in {ctx.caches.seconds:.1f}s: train {cache_budget_note(len(train), train_size)}"
        + "".join(f"; {k} {cache_budget_note(len(v), size)}" for k, v in evaluation.items())
    )


def start_from_prototypes(ctx: RunContext) -> None:
    """Stage "prototypes and baseline": with ``head_init: prototypes`` (and not resuming), the projection
    starts from the pooled features of the un-augmented training images and the ArcFace centres at their
    class means; the main process also reports the "no training" line (``ctx.baseline``)."""
    if ctx.config.head_init != "prototypes" or ctx.resume is not None:
        return
    t0 = time.perf_counter()
    model = ctx.model.to(ctx.state.device)
    features = ctx.embedder().features(ctx.caches.train)
    how = model.init_projection(torch.from_numpy(features))
    with torch.no_grad():
        embeddings = model.projection(torch.from_numpy(features).to(ctx.state.device)).float().cpu()
    model.head.init_from_prototypes(embeddings, torch.from_numpy(ctx.data.train.labels))
    logger.info(
        f"Projection started as {how}, ArcFace centres at class-mean embeddings: before training the "
        f"model ranks like frozen-feature prototypes ({time.perf_counter() - t0:.1f}s)"
    )
    if ctx.is_main:
        ctx.baseline = baseline_report(ctx, features)
    model.train()


def baseline_report(ctx: RunContext, train_features: np.ndarray) -> dict[str, Any]:
    """The "no training" line: nearest-class-mean on the pooled backbone features (reported, never
    selected on). ``train_features``: ``(N_train, feature_dim)``. Returns a report per evaluation split;
    the logits are computed from the split's features a chunk of rows at a time (``HeadLogits``)."""
    embedder, baseline = ctx.embedder(), {}
    head = prototype_head(
        train_features, ctx.data.train.labels, len(ctx.data.class_names), ctx.config.arcface_scale
    )
    for split in ctx.evaluated:
        features = embedder.features(ctx.caches.evaluation[split.name])
        baseline[split.name] = ctx.report(HeadLogits.of(head, features), split)
        logger.info(
            f"Before training (frozen-feature prototypes), {split.name}: {M.readable(baseline[split.name])}"
        )
    return baseline
