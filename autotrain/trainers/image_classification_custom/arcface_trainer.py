"""Stage "Trainer": one ``transformers.Trainer`` run for both stages of the fine-tuning.

Stage 1 trains only the head (projection + ArcFace) with the backbone frozen, BatchNorm statistics and
dropout included; stage 2 fine-tunes everything, the backbone at a lower learning rate than the head.
:class:`callbacks.BackboneWarmupCallback` switches from ``state.epoch``, which a resumed run restores,
and the optimizer holds every parameter from the start (a frozen parameter has no gradient, so the
optimizer leaves it alone). With field validation photos the checkpoint with the best field MRR is kept.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformers import EarlyStoppingCallback, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback, ProgressCallback, TrainerState

from autotrain import logger
from autotrain.trainers.common import TrainStartCallback
from autotrain.trainers.image_classification_custom import metrics as M
from autotrain.trainers.image_classification_custom.augment import AugmentationSpec, create_train_transform
from autotrain.trainers.image_classification_custom.batch_augment import BatchAugment
from autotrain.trainers.image_classification_custom.callbacks import (
    BackboneWarmupCallback,
    CheckpointPermissionsCallback,
    EpochProgressCallback,
    HubLogsCallback,
    ReadableLogCallback,
    ThroughputCallback,
)
from autotrain.trainers.image_classification_custom.dataset import (
    CachedImageDataset,
    NormalizeCollator,
    create_sampler,
)
from autotrain.trainers.image_classification_custom.params import ImageClassificationCustomParams
from autotrain.trainers.image_classification_custom.stages import PROCESS_GROUP_TIMEOUT, RunContext


class ArcFaceTrainer(Trainer):
    """``Trainer`` with a seeded balanced sampler, backbone/head learning rates and frozen-backbone BN.

    Args:
        sampler_factory: Returns the training sampler.
        backbone_lr: Learning rate of the backbone parameters.
        head_lr: Learning rate of the projection and the ArcFace head.
        *args, **kwargs: ``transformers.Trainer`` arguments.
    """

    def __init__(
        self,
        *args: Any,
        sampler_factory,
        backbone_lr: float,
        head_lr: float,
        freeze_batchnorm: bool = True,
        normalizer: NormalizeCollator | None = None,
        batch_augment: BatchAugment | None = None,
        **kwargs: Any,
    ):
        self.sampler_factory = sampler_factory
        self.normalizer = normalizer
        self.batch_augment = batch_augment
        self.backbone_lr = backbone_lr
        self.head_lr = head_lr
        self.freeze_batchnorm = freeze_batchnorm
        super().__init__(*args, **kwargs)

    def _hp_search_setup(self, trial):
        """As ``Trainer``'s; an Optuna trial's ``backbone_lr`` and ``head_lr`` (not ``TrainingArguments``
        fields) also become the learning rates of the optimizer groups (see ``hp_search``)."""
        super()._hp_search_setup(trial)
        params = getattr(trial, "params", None) or {}
        self.backbone_lr = params.get("backbone_lr", self.backbone_lr)
        self.head_lr = params.get("head_lr", self.head_lr)

    def _prepare_inputs(self, inputs):
        """Move the batch to the device; uint8 images (``keep_uint8`` collator) are augmented there when
        training with ``batch_augment``, then normalised."""
        inputs = super()._prepare_inputs(inputs)
        pixels = inputs.get("pixel_values") if isinstance(inputs, dict) else None
        if pixels is not None and pixels.dtype == torch.uint8 and self.normalizer is not None:
            if self.batch_augment is not None and self.model.training:
                inputs["pixel_values"] = self.normalizer.normalize_unit(self.batch_augment(pixels))
            else:
                inputs["pixel_values"] = self.normalizer.normalize(pixels)
        return inputs

    def _get_train_sampler(self, train_dataset=None) -> torch.utils.data.Sampler | None:
        return self.sampler_factory()

    def create_optimizer(self):
        """AdamW (or ``optim``) with four groups: backbone/head x decay/no-decay, every parameter included."""
        if self.optimizer is not None:
            return self.optimizer
        model = self.model
        decay = set(self.get_decay_parameter_names(model))
        backbone = {id(p) for p in model.backbone_parameters()}
        groups = []
        for part, lr in (("backbone", self.backbone_lr), ("head", self.head_lr)):
            for with_decay in (True, False):
                params = [
                    p
                    for n, p in model.named_parameters()
                    if (id(p) in backbone) == (part == "backbone") and (n in decay) == with_decay
                ]
                if params:
                    wd = self.args.weight_decay if with_decay else 0.0
                    groups.append({"params": params, "lr": lr, "weight_decay": wd, "group": part})
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # Trainer.training_step calls model.train() before this. A frozen backbone goes back to eval
        # mode (BatchNorm running statistics and dropout stay as pretrained); in stage 2 only its
        # BatchNorm layers do, unless backbone_batchnorm is "train".
        if model.training:
            unwrapped = self.accelerator.unwrap_model(model)
            first = next(unwrapped.backbone_parameters(), None)
            if first is not None and not first.requires_grad:
                unwrapped.backbone.eval()
            elif self.freeze_batchnorm:  # the model's own layers: model_init gives each trial a new one
                for norm in unwrapped.backbone.modules():
                    if isinstance(norm, torch.nn.modules.batchnorm._BatchNorm):
                        norm.eval()
        return super().compute_loss(
            model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
        )


def auto_logging_steps(n_train: int, config: ImageClassificationCustomParams, world_size: int) -> int:
    """About five loss logs per epoch, at least every 25 steps."""
    per_step = config.batch_size * config.gradient_accumulation * max(1, world_size)
    steps = max(1, math.ceil(n_train / per_step))
    return int(min(25, max(1, steps // 5)))


@dataclass
class TrainedRun:
    """What the Trainer stage hands to the outputs.

    Attributes:
        state: the Trainer's final state (global step, epoch, best checkpoint and metric).
        runtime_seconds: ``train_runtime`` of the Trainer.
        throughput: :meth:`ThroughputCallback.summary`.
        best_model_metric: the metric checkpoints were selected on, None without evaluation.
        mixed_precision: ``fp16``, ``bf16`` or None (float32).
    """

    state: TrainerState
    runtime_seconds: float
    throughput: dict[str, Any]
    best_model_metric: str | None
    mixed_precision: str | None


def mixed_precision(config: ImageClassificationCustomParams) -> str | None:
    """``fp16``/``bf16`` when asked for and CUDA is there; None (float32) otherwise, with a warning."""
    precision = config.mixed_precision if config.mixed_precision in ("fp16", "bf16") else None
    if precision and not torch.cuda.is_available():
        logger.warning(f"mixed_precision {precision!r} needs a CUDA GPU: training in float32 on CPU")
        precision = None
    return precision


def training_arguments(
    ctx: RunContext, best_metric: str | None, logging_steps: int, precision: str | None
) -> TrainingArguments:
    """The ``TrainingArguments`` of the run; ``best_metric`` None = no evaluation during training."""
    config, use_cuda, workers = ctx.config, torch.cuda.is_available(), ctx.config.dataloader_num_workers
    evaluate = best_metric is not None
    return TrainingArguments(
        output_dir=str(ctx.project),
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=2 * config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation,
        auto_find_batch_size=config.auto_find_batch_size,
        num_train_epochs=config.epochs,
        learning_rate=config.resolved_head_lr,
        lr_scheduler_type=config.scheduler,
        warmup_ratio=config.warmup_ratio,
        optim=config.optimizer,
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        seed=config.seed,
        data_seed=config.seed,
        eval_strategy="epoch" if evaluate else "no",
        save_strategy="epoch",
        save_total_limit=config.save_total_limit,
        load_best_model_at_end=evaluate,
        metric_for_best_model=best_metric,
        greater_is_better=True,
        logging_strategy="steps",
        logging_steps=logging_steps,
        report_to=config.log,
        fp16=precision == "fp16",
        bf16=precision == "bf16",
        dataloader_num_workers=workers,
        dataloader_persistent_workers=workers > 0,
        dataloader_pin_memory=use_cuda,
        use_cpu=not use_cuda,  # lets several CPU processes (torchrun, accelerate launch) form a gloo group
        ddp_timeout=int(PROCESS_GROUP_TIMEOUT.total_seconds()),
        torch_compile=config.torch_compile,
        remove_unused_columns=False,
        ddp_find_unused_parameters=config.warmup_epochs > 0,
        push_to_hub=False,
        disable_tqdm=False,
    )


def _callbacks(
    ctx: RunContext, evaluate: bool, dataset_len: int, logging_steps: int
) -> tuple[list[TrainerCallback], ThroughputCallback]:
    config = ctx.config
    throughput = ThroughputCallback(dataset_len, config.warmup_epochs)
    callbacks: list[TrainerCallback] = [BackboneWarmupCallback(config.warmup_epochs), throughput]
    if evaluate and config.early_stopping_patience is not None:
        callbacks.append(
            EarlyStoppingCallback(
                early_stopping_patience=config.early_stopping_patience,
                early_stopping_threshold=config.early_stopping_threshold,
            )
        )
    callbacks += [HubLogsCallback(config, logging_steps), ReadableLogCallback(), TrainStartCallback()]
    callbacks.append(CheckpointPermissionsCallback())
    return callbacks, throughput


def build_trainer(
    ctx: RunContext, model_init: Callable[..., Any] | None = None
) -> tuple[ArcFaceTrainer, ThroughputCallback, str | None, str | None]:
    """The Trainer over the cached images: ``(trainer, throughput callback, best-model metric or None
    without evaluation, mixed precision or None)``; with ``model_init`` (a hyperparameter search), each
    ``train`` starts from the model it returns instead of ``ctx.model``."""
    config, data, size = ctx.config, ctx.data, ctx.image_size
    interpolation = ctx.model.config.image_interpolation
    spec = AugmentationSpec.from_strength(config.augmentation, size)  # one spec for either path
    train_transform = (
        None
        if ctx.batch_augment
        else create_train_transform(size, config.augmentation, interpolation, spec=spec)
    )
    train_dataset = CachedImageDataset(ctx.caches.train, data.train.labels, train_transform)
    validation = data.validation
    evaluate = validation is not None and config.eval_strategy == "epoch"
    valid_dataset = (
        CachedImageDataset(ctx.caches.evaluation[validation.name], validation.labels) if evaluate else None
    )
    best_metric = M.best_model_metric(validation.domains) if evaluate else None
    logging_steps = config.logging_steps or auto_logging_steps(
        len(train_dataset), config, ctx.state.num_processes
    )
    precision = mixed_precision(config)

    def sampler_factory():
        return create_sampler(
            config.sampling,
            data.train.labels,
            data.train.domains,
            seed=config.seed,
            multiple_of=config.batch_size * ctx.state.num_processes,
        )

    callbacks, throughput = _callbacks(ctx, evaluate, len(sampler_factory()), logging_steps)
    trainer = ArcFaceTrainer(
        model=None if model_init else ctx.model,
        model_init=model_init,
        args=training_arguments(ctx, best_metric, logging_steps, precision),
        train_dataset=train_dataset,
        eval_dataset=valid_dataset,
        data_collator=ctx.collator,
        # each evaluation batch's logits are reduced to a per-image summary (rank, top-1, confidence)
        # before the Trainer gathers them: it never concatenates the (N, C) logits
        compute_metrics=M.make_compute_metrics(validation.domains, data.class_has_field, summarized=True)
        if evaluate
        else None,
        preprocess_logits_for_metrics=M.summarize_logits_for_metrics if evaluate else None,
        callbacks=callbacks,
        sampler_factory=sampler_factory,
        backbone_lr=config.resolved_backbone_lr,
        head_lr=config.resolved_head_lr,
        freeze_batchnorm=config.backbone_batchnorm == "frozen",
        normalizer=ctx.collator,
        batch_augment=BatchAugment(size, config.augmentation, spec=spec) if ctx.batch_augment else None,
    )
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)  # its on_log prints raw dicts over the bar
    trainer.add_callback(EpochProgressCallback())
    return trainer, throughput, best_metric, precision


def train_model(ctx: RunContext) -> TrainedRun:
    """Stage "Trainer": both training stages (resuming ``ctx.resume`` if set); ``ctx.model`` is the
    trained model afterwards (the best checkpoint's weights with evaluation)."""
    trainer, throughput, best_metric, precision = build_trainer(ctx)
    if ctx.resume:
        logger.info(f"Resuming from {ctx.resume}")
    output = trainer.train(resume_from_checkpoint=ctx.resume)
    ctx.model = trainer.model
    return TrainedRun(
        state=trainer.state,
        runtime_seconds=output.metrics.get("train_runtime", 0.0),
        throughput=throughput.summary(),
        best_model_metric=best_metric,
        mixed_precision=precision,
    )
