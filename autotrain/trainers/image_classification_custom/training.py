"""The training run: data -> model -> two-stage Trainer run -> model folder, metrics, t-SNE, card, push.

Philosophy: keep what the pretrained features know and add to it. Fine-tuning a freshly initialised
softmax head on herbarium sheets can make field accuracy *worse* than frozen ImageNet features with
class-mean prototypes, so this trainer

1. starts the ArcFace class centres at those prototypes (``head_init: prototypes``): epoch 0 is already
   the nearest-class-mean classifier;
2. trains only the head (projection + ArcFace) for ``warmup_epochs`` with the backbone frozen, BatchNorm
   statistics and dropout included (stage 1);
3. then fine-tunes everything, the backbone at a lower learning rate than the head (stage 2),
4. and keeps the checkpoint with the best field-validation MRR.

Both stages are one ``transformers.Trainer`` run: :class:`BackboneWarmupCallback` freezes and unfreezes
from ``state.epoch``, which a resumed run restores, and the optimizer holds every parameter from the
start (a frozen parameter has no gradient, so the optimizer leaves it alone).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import PartialState
from huggingface_hub import HfApi
from safetensors.torch import load_file, save_file
from transformers import EarlyStoppingCallback, Trainer, TrainerCallback, TrainingArguments, set_seed
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from autotrain import logger
from autotrain.trainers.common import TrainStartCallback, UploadLogs, pause_space
from autotrain.trainers.image_classification_custom import metrics as M
from autotrain.trainers.image_classification_custom.batch_augment import BatchAugment
from autotrain.trainers.image_classification_custom.dataset import (
    DOMAIN_NAMES,
    FIELD,
    CachedImageDataset,
    NormalizeCollator,
    PreparedData,
    cache_budget_note,
    create_sampler,
    create_train_transform,
    decode_images,
    load_splits,
    resize_uint8,
    train_cache_size,
)
from autotrain.trainers.image_classification_custom.model_card import (
    plot_reliability,
    plot_tsne,
    render_model_card,
)
from autotrain.trainers.image_classification_custom.modeling_arcface import (
    ArcFaceForImageClassification,
    create_arcface_model,
    save_arcface_model,
)
from autotrain.trainers.image_classification_custom.params import ImageClassificationCustomParams

WISE_FT_START = "wise_ft_start.safetensors"
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


# ------------------------------------------------------------------------------------------------------
# Trainer pieces
# ------------------------------------------------------------------------------------------------------


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
        self._backbone_norms = [
            m for m in self.model.backbone.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
        ]

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
            elif self.freeze_batchnorm:
                for norm in self._backbone_norms:
                    norm.eval()
        return super().compute_loss(
            model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
        )


class BackboneWarmupCallback(TrainerCallback):
    """Stage 1 / stage 2 switch: backbone frozen while ``state.epoch < warmup_epochs``.

    Decided from the Trainer state before every optimisation step, so a resumed run lands in the right
    stage.
    """

    def __init__(self, warmup_epochs: int) -> None:
        self.warmup_epochs = warmup_epochs
        self.frozen: bool | None = None

    def _apply(self, state, model) -> None:
        frozen = (state.epoch or 0.0) < self.warmup_epochs - 1e-9
        if frozen != self.frozen:
            model.freeze_backbone(frozen)
            if frozen:
                model.backbone.eval()
            if state.is_local_process_zero:
                stage = "stage 1: head only, backbone frozen" if frozen else "stage 2: fine-tuning everything"
                logger.info(f"{stage} (epoch {state.epoch or 0.0:.2f}, step {state.global_step})")
            self.frozen = frozen

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._apply(state, model)

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        self._apply(state, model)


class ThroughputCallback(TrainerCallback):
    """Training images per second per epoch (data loading included, evaluation excluded)."""

    def __init__(self, dataset_len: int, warmup_epochs: int) -> None:
        self.dataset_len = dataset_len
        self.warmup_epochs = warmup_epochs
        self.epochs: list[dict[str, Any]] = []
        self._start = None

    def on_epoch_begin(self, args, state, control, **kwargs):
        self._start = (time.perf_counter(), state.global_step, state.epoch or 0.0)

    def on_epoch_end(self, args, state, control, **kwargs):
        if self._start is None:
            return
        t0, step0, epoch0 = self._start
        seconds = time.perf_counter() - t0
        fraction = (state.epoch or 0.0) - epoch0
        images = int(round(fraction * self.dataset_len))
        self.epochs.append(
            {
                "epoch": round(state.epoch or 0.0, 4),
                "stage": "head" if epoch0 < self.warmup_epochs - 1e-9 else "full",
                "steps": state.global_step - step0,
                "images": images,
                "seconds": round(seconds, 3),
                "images_per_second": round(images / seconds, 2) if seconds > 0 else None,
            }
        )
        if state.is_local_process_zero:
            logger.info(f"epoch throughput: {self.epochs[-1]}")

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"epochs": self.epochs}
        for stage in ("head", "full"):
            rows = [r for r in self.epochs if r["stage"] == stage and r["seconds"] > 0]
            if rows:
                images = sum(r["images"] for r in rows)
                seconds = sum(r["seconds"] for r in rows)
                out[f"{stage}_images_per_second"] = round(images / seconds, 2)
        rows = [r for r in self.epochs if r["seconds"] > 0]
        if rows:
            out["images_per_second"] = round(
                sum(r["images"] for r in rows) / sum(r["seconds"] for r in rows), 2
            )
        return out


class EpochProgressCallback(ProgressCallback):
    """The Trainer's progress bar (steps, rate, ETA), titled with the epoch, without the raw log dicts."""

    def on_step_end(self, args, state, control, **kwargs):
        super().on_step_end(args, state, control, **kwargs)
        if state.is_world_process_zero and self.training_bar is not None:
            epoch = min(int(state.epoch or 0) + 1, int(math.ceil(args.num_train_epochs)))
            self.training_bar.set_description(f"epoch {epoch}/{int(math.ceil(args.num_train_epochs))}")

    def on_log(self, args, state, control, logs=None, **kwargs):
        pass  # ReadableLogCallback writes one line per log instead


class ReadableLogCallback(TrainerCallback):
    """One readable log line per training log (loss, learning rate) and per evaluation (field top-1,
    top-5, MRR, ECE), instead of the raw metric dicts."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_local_process_zero or not logs:
            return
        epoch = logs.get("epoch", state.epoch or 0.0)
        if any(k.startswith("eval_") for k in logs):
            prefix = "eval_field_" if "eval_field_top1" in logs else "eval_"
            parts = [
                f"{title} {logs[prefix + key]:.3f}"
                for key, title in (("top1", "top-1"), ("top5", "top-5"), ("mrr", "MRR"), ("ece", "ECE"))
                if prefix + key in logs
            ]
            where = "field photos" if prefix == "eval_field_" else "all images"
            n = logs.get(prefix + "n")
            logger.info(
                f"epoch {epoch:.0f} validation ({where}{f', n={int(n)}' if n else ''}): " + ", ".join(parts)
            )
        elif "loss" in logs:
            lr = logs.get("learning_rate")
            logger.info(
                f"epoch {epoch:.2f}, step {state.global_step}: loss {logs['loss']:.4f}"
                + (f", learning rate {lr:.2e}" if lr is not None else "")
            )
        elif "train_runtime" in logs:
            logger.info(
                f"training loop done in {logs['train_runtime']:.0f}s "
                f"({logs.get('train_samples_per_second', 0):.1f} images/s)"
            )


class HubLogsCallback(UploadLogs):
    """AutoTrain's ``UploadLogs`` for our repository id (``repo_id``), creating it only if missing."""

    def __init__(self, config: ImageClassificationCustomParams, logging_steps: int) -> None:
        # not super().__init__: upstream creates f"{username}/{project_name}" and fails if it exists
        self.config = config
        self.repo_id = config.resolved_repo_id
        self.logging_steps = logging_steps
        self.api = None
        self.last_upload_time = 0.0
        if config.push_to_hub and config.log == "tensorboard" and PartialState().is_main_process:
            self.api = HfApi(token=config.token)
            self.api.create_repo(
                repo_id=self.repo_id, repo_type="model", private=config.hub_private, exist_ok=True
            )

    def on_step_end(self, args, state, control, **kwargs):
        runs = os.path.join(self.config.project_name, "runs")
        if self.api is None or not os.path.isdir(runs) or (state.global_step + 1) % self.logging_steps:
            return control
        if time.time() - self.last_upload_time >= 600:
            try:
                self.api.upload_folder(folder_path=runs, repo_id=self.repo_id, path_in_repo="runs")
            except Exception as err:  # logs are a convenience: keep training
                logger.warning(f"Failed to upload logs: {err}")
            self.last_upload_time = time.time()
        return control


# ------------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------------


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


def auto_logging_steps(n_train: int, config: ImageClassificationCustomParams, world_size: int) -> int:
    """About five loss logs per epoch, at least every 25 steps."""
    per_step = config.batch_size * config.gradient_accumulation * max(1, world_size)
    steps = max(1, math.ceil(n_train / per_step))
    return int(min(25, max(1, steps // 5)))


def _cached_batches(images, collator, batch_size, device, image_size, interpolation, indices=None):
    """Normalised device batches of cached uint8 images (in ``indices`` order), resized if needed."""
    order = np.arange(len(images)) if indices is None else np.asarray(indices)
    for start in range(0, len(order), batch_size):
        batch = resize_uint8(images[order[start : start + batch_size]], image_size, interpolation)
        yield collator.normalize(batch).to(device)


@torch.inference_mode()
def compute_features(
    model: ArcFaceForImageClassification,
    images: np.ndarray,
    collator: NormalizeCollator,
    batch_size: int,
    device: torch.device,
    image_size: int,
    interpolation: str,
) -> np.ndarray:
    """Pooled backbone features ``(N, feature_dim)`` float32 of cached uint8 images (before the projection)."""
    was_training = model.training
    model.eval()
    out = [
        model.forward_features(x).float().cpu()
        for x in _cached_batches(images, collator, batch_size, device, image_size, interpolation)
    ]
    model.train(was_training)
    return torch.cat(out).numpy()


def prototype_logits(
    train_features: np.ndarray, train_labels: np.ndarray, features: np.ndarray, num_classes: int, scale: float
) -> np.ndarray:
    """``scale * cos`` between ``features`` (N, D) and the class-mean prototypes of ``train_features``.

    The "no training" line: nearest-class-mean on the backbone's pooled features, no projection.
    """
    from autotrain.trainers.image_classification_custom.modeling_arcface import ArcFaceHead

    head = ArcFaceHead(train_features.shape[1], num_classes, scale=scale, margin=0.0)
    head.init_from_prototypes(torch.from_numpy(train_features), torch.from_numpy(train_labels))
    with torch.no_grad():
        return head.get_logits(torch.from_numpy(features)).numpy()


@torch.inference_mode()
def compute_embeddings(
    model: ArcFaceForImageClassification,
    images: np.ndarray,
    collator: NormalizeCollator,
    batch_size: int,
    device: torch.device,
    image_size: int,
    interpolation: str,
    indices: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings and logits (no margin) of cached uint8 images, resized to ``image_size`` if needed.

    Returns:
        ``(embeddings (N, D) float32, logits (N, C) float32)``.
    """
    was_training = model.training
    model.eval()
    embeddings, logits = [], []
    for x in _cached_batches(images, collator, batch_size, device, image_size, interpolation, indices):
        emb = model.embed(x).float()
        embeddings.append(emb.cpu())
        logits.append(model.head.get_logits(emb).float().cpu())
    model.train(was_training)
    return torch.cat(embeddings).numpy(), torch.cat(logits).numpy()


def write_json(path: Path, payload: Any) -> None:
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


# ------------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------------


def run(config: ImageClassificationCustomParams) -> dict[str, Any]:
    """Train, evaluate and save; returns the content of ``metrics.json`` (main process) or ``{}``."""
    wall_start = time.perf_counter()
    # cpu=True without CUDA, so that several CPU processes (torchrun, `accelerate launch --cpu`) form a
    # gloo group instead of each training alone; with CUDA, accelerate picks NCCL as usual.
    state = PartialState(cpu=not torch.cuda.is_available())
    is_main = state.is_main_process
    project = Path(config.project_name)
    if config.token and not os.environ.get("HF_TOKEN"):
        os.environ["HF_TOKEN"] = config.token  # private backbones/datasets; the token is never written
    set_seed(config.seed)
    resume = resolve_resume(config)
    if is_main:
        config.save(str(project))
        logger.info(f"Training parameters: {config}")  # AutoTrainParams.__str__ masks the token

    # --- data ---------------------------------------------------------------------------------------
    data: PreparedData = load_splits(
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
    class_names = data.class_names
    class_has_field = data.class_has_field
    logger.info(
        f"{len(class_names)} classes ({int(class_has_field.sum())} with field training photos); train "
        f"{len(data.train)}, validation {len(data.validation) if data.validation else 0}, test "
        f"{len(data.test) if data.test else 0} images"
    )

    # --- model --------------------------------------------------------------------------------------
    model = create_arcface_model(
        config.model,
        id2label=class_names,
        backbone_source=config.backbone_source,
        pretrained=resume is None,
        embedding_dim=config.embedding_dim,
        arcface_scale=config.arcface_scale,
        arcface_margin=config.arcface_margin,
        arcface_subcenters=config.arcface_subcenters,
        image_size=config.image_size,
    )
    model = model.to(memory_format=torch.channels_last)
    size = int(model.config.image_size)
    interp = model.config.image_interpolation
    use_cuda = torch.cuda.is_available()
    batch_aug = config.augmentation_device == "gpu" or (config.augmentation_device == "auto" and use_cuda)
    if batch_aug and not use_cuda:
        logger.warning(
            "augmentation_device 'gpu' without CUDA: batches are augmented on the CPU in the main process "
            "(usually slower than `cpu`, which augments in DataLoader workers)"
        )
    # with batch augmentation the Trainer's batches stay uint8 until ArcFaceTrainer._prepare_inputs;
    # compute_embeddings calls collator.normalize directly either way
    collator = NormalizeCollator(
        model.config.image_mean, model.config.image_std, channels_last=True, keep_uint8=batch_aug
    )

    # --- decoded-image caches -----------------------------------------------------------------------
    t0 = time.perf_counter()
    spill = str(project / "cache" / f"rank{state.process_index}")
    train_size = train_cache_size(size, config.augmentation)
    decode = dict(
        image_column=config.image_column,
        interpolation=interp,
        memory_budget_mb=config.cache_memory_mb,
        spill_dir=spill,
    )
    train_images = decode_images(data.train.dataset, size=train_size, draft=True, **decode)
    eval_images = {}
    for split in (data.validation, data.test):
        if split is not None:
            eval_images[split.name] = decode_images(split.dataset, size=size, **decode)
    decode_seconds = time.perf_counter() - t0
    logger.info(
        f"Decoded images once in {decode_seconds:.1f}s: train {cache_budget_note(len(train_images), train_size)}"
        + "".join(f"; {k} {cache_budget_note(len(v), size)}" for k, v in eval_images.items())
    )

    # --- start: projection and centres from un-augmented training images, skipped when resuming -------
    device = state.device
    baseline = None
    start_weights = None
    evaluated = [s for s in (data.validation, data.test) if s is not None]
    if config.head_init == "prototypes" and resume is None:
        t0 = time.perf_counter()
        model.to(device)
        feats = compute_features(model, train_images, collator, 2 * config.batch_size, device, size, interp)
        how = model.init_projection(torch.from_numpy(feats))
        with torch.no_grad():
            emb = model.projection(torch.from_numpy(feats).to(device)).float().cpu()
        model.head.init_from_prototypes(emb, torch.from_numpy(data.train.labels))
        logger.info(
            f"Projection started as {how}, ArcFace centres at class-mean embeddings: before training the "
            f"model ranks like frozen-feature prototypes ({time.perf_counter() - t0:.1f}s)"
        )
        if is_main:  # the "no training" line: pooled-feature prototypes (reported, never selected on)
            baseline = {}
            for split in evaluated:
                feats_eval = compute_features(
                    model, eval_images[split.name], collator, 2 * config.batch_size, device, size, interp
                )
                logits = prototype_logits(
                    feats, data.train.labels, feats_eval, len(class_names), config.arcface_scale
                )
                baseline[split.name] = M.evaluation_report(
                    logits, split.labels, split.domains, class_has_field
                )
                logger.info(
                    f"Before training (frozen-feature prototypes), {split.name}: "
                    f"{M.readable(baseline[split.name])}"
                )
        model.train()
    has_field_validation = data.validation is not None and bool(np.any(data.validation.domains == FIELD))
    select_alpha = config.wise_ft_select and has_field_validation
    wants_start = config.wise_ft_alpha < 1.0 or bool(config.wise_ft_report) or select_alpha
    if resume is None and wants_start:
        start_weights = {
            k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()
        }
        if is_main:
            save_file(start_weights, str(project / WISE_FT_START))
    elif wants_start:
        if (project / WISE_FT_START).is_file():
            start_weights = load_file(str(project / WISE_FT_START))
        else:
            logger.warning(
                f"WiSE-FT: resuming without {WISE_FT_START} in {str(project)!r}: the starting weights are "
                "unknown, so the fine-tuned weights are saved as they are (wise_ft_alpha ignored)"
            )

    # --- Trainer ------------------------------------------------------------------------------------
    train_transform = None if batch_aug else create_train_transform(size, config.augmentation, interp)
    train_dataset = CachedImageDataset(train_images, data.train.labels, train_transform)
    valid_dataset = None
    if data.validation is not None:
        valid_dataset = CachedImageDataset(eval_images[data.validation.name], data.validation.labels)
    evaluate = valid_dataset is not None and config.eval_strategy == "epoch"
    best_metric = M.best_model_metric(data.validation.domains if data.validation is not None else None)
    logging_steps = config.logging_steps or auto_logging_steps(
        len(train_dataset), config, state.num_processes
    )
    precision = config.mixed_precision if config.mixed_precision in ("fp16", "bf16") else None
    if precision and not use_cuda:
        logger.warning(f"mixed_precision {precision!r} needs a CUDA GPU: training in float32 on CPU")
        precision = None
    workers = config.dataloader_num_workers
    args = TrainingArguments(
        output_dir=str(project),
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
        metric_for_best_model=best_metric if evaluate else None,
        greater_is_better=True,
        logging_strategy="steps",
        logging_steps=logging_steps,
        report_to=config.log,
        fp16=precision == "fp16",
        bf16=precision == "bf16",
        dataloader_num_workers=workers,
        dataloader_persistent_workers=workers > 0,
        dataloader_pin_memory=use_cuda,
        use_cpu=not use_cuda,  # lets several CPU processes (torchrun) form a gloo group
        torch_compile=config.torch_compile,
        remove_unused_columns=False,
        ddp_find_unused_parameters=config.warmup_epochs > 0,
        push_to_hub=False,
        disable_tqdm=False,
    )

    def sampler_factory():
        return create_sampler(
            config.sampling,
            data.train.labels,
            data.train.domains,
            seed=config.seed,
            multiple_of=config.batch_size * state.num_processes,
        )

    callbacks: list[TrainerCallback] = [BackboneWarmupCallback(config.warmup_epochs)]
    throughput = ThroughputCallback(len(sampler_factory()), config.warmup_epochs)
    callbacks.append(throughput)
    if evaluate and config.early_stopping_patience is not None:
        callbacks.append(
            EarlyStoppingCallback(
                early_stopping_patience=config.early_stopping_patience,
                early_stopping_threshold=config.early_stopping_threshold,
            )
        )
    callbacks += [HubLogsCallback(config, logging_steps), ReadableLogCallback(), TrainStartCallback()]

    trainer = ArcFaceTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=valid_dataset if evaluate else None,
        data_collator=collator,
        compute_metrics=M.make_compute_metrics(
            data.validation.domains if data.validation is not None else None, class_has_field
        )
        if evaluate
        else None,
        callbacks=callbacks,
        sampler_factory=sampler_factory,
        backbone_lr=config.resolved_backbone_lr,
        head_lr=config.resolved_head_lr,
        freeze_batchnorm=config.backbone_batchnorm == "frozen",
        normalizer=collator,
        batch_augment=BatchAugment(size, config.augmentation) if batch_aug else None,
    )
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)  # its on_log prints raw dicts over the bar
    trainer.add_callback(EpochProgressCallback())
    if resume:
        logger.info(f"Resuming from {resume}")
    train_output = trainer.train(resume_from_checkpoint=resume)

    if not is_main:
        return {}

    # --- outputs (main process only) ----------------------------------------------------------------
    model = trainer.model
    eval_kwargs = dict(collator=collator, batch_size=2 * config.batch_size, image_size=size, interp=interp)
    wise_ft = None
    alpha, wise_ft_selection = (config.wise_ft_alpha if start_weights is not None else 1.0), None
    if start_weights is not None:
        tuned = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
        if config.wise_ft_report:
            wise_ft = []
            for alpha in config.wise_ft_report:
                apply_wise_ft(model, start_weights, tuned, alpha)
                row: dict[str, Any] = {"alpha": float(alpha)}
                for split in evaluated:
                    _, logits = _embed_split(model, eval_images[split.name], **eval_kwargs)
                    row[split.name] = M.evaluation_report(
                        logits, split.labels, split.domains, class_has_field
                    )
                wise_ft.append(row)
                logger.info(
                    f"WiSE-FT alpha {alpha:g}: "
                    + "; ".join(f"{k} {M.readable(row[k])}" for k in row if k != "alpha")
                )
        if select_alpha:
            wise_ft_selection = select_wise_ft_alpha(
                model, start_weights, tuned, data.validation, eval_images[data.validation.name], eval_kwargs
            )
            alpha = wise_ft_selection["alpha"]
        apply_wise_ft(model, start_weights, tuned, alpha)
        if alpha < 1.0:
            logger.info(f"WiSE-FT: saved weights = {1 - alpha:g} x start + {alpha:g} x fine-tuned")
    # each evaluation split embedded once, at T = 1: the temperature is fitted on these logits and the
    # reports divide them by it (the same numbers as embedding again with T set)
    model.set_logit_temperature(1.0)
    raw = {split.name: _embed_split(model, eval_images[split.name], **eval_kwargs) for split in evaluated}
    calibration = calibrate(model, config, data.validation, raw)
    temperature = model.config.logit_temperature
    logger.info("Finished training, saving the model folder...")
    save_arcface_model(model, project)
    summary: dict[str, Any] = {
        "image_size": size,
        "classes": {
            "num_classes": len(class_names),
            "with_field": int(class_has_field.sum()),
            "herbarium_only": int((~class_has_field).sum()),
        },
        "best_model_metric": best_metric if evaluate else None,
        "notes": list(getattr(data, "notes", []) or []),
    }
    embeddings: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    reliability: dict[str, list[dict[str, float]]] = {}
    for split in evaluated:
        emb, logits = raw[split.name][0], raw[split.name][1] / temperature
        summary[split.name] = M.evaluation_report(logits, split.labels, split.domains, class_has_field)
        field = split.domains == FIELD
        reliability[split.name] = M.reliability_bins(logits[field], split.labels[field])
        embeddings[split.name] = (emb, split.labels, split.domains)
        logger.info(f"{split.name}: {M.readable(summary[split.name])}")
    if baseline is not None:
        summary["baseline_prototypes"] = baseline
    summary["wise_ft"] = {"alpha": alpha, "selection": wise_ft_selection, "report": wise_ft}
    summary["calibration"] = {**calibration, "reliability_field": reliability}
    resumed_step = int(resume.rsplit("-", 1)[-1]) if resume and resume.rsplit("-", 1)[-1].isdigit() else None
    summary["training"] = {
        "global_step": trainer.state.global_step,
        "num_processes": state.num_processes,
        "epochs_completed": round(trainer.state.epoch or 0.0, 4),
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "best_metric": trainer.state.best_metric,
        "resumed_from": resume,
        "resumed_from_step": resumed_step,
        "train_runtime_seconds": round(train_output.metrics.get("train_runtime", 0.0), 2),
        "decode_seconds": round(decode_seconds, 2),
        "device": str(device),
        "mixed_precision": precision,
        "augmentation_device": "gpu" if batch_aug else "cpu",
        "torch_compile": config.torch_compile,
        "dataloader_num_workers": workers,
        "throughput": throughput.summary(),
    }

    tsne_file = None
    if config.tsne:
        tsne_file = _write_tsne(
            config, model, data, train_images, embeddings, collator, size, interp, class_names
        )
    summary["training"]["wall_seconds"] = round(time.perf_counter() - wall_start, 2)
    write_json(project / "metrics.json", summary)
    reliability_file = None
    if any(reliability.values()):
        plot_reliability(reliability, str(project / "reliability.png"))
        reliability_file = "reliability.png"
    card = render_model_card(
        config.public_dict(),
        summary,
        class_names,
        tsne_file=tsne_file,
        repo_id=config.resolved_repo_id,
        reliability_file=reliability_file,
    )
    (project / "README.md").write_text(card, encoding="utf-8")
    if config.push_to_hub:
        push_folder_to_hub(config, str(project))
    shutil.rmtree(project / "cache", ignore_errors=True)
    (project / WISE_FT_START).unlink(missing_ok=True)
    pause_space(config)
    logger.info(f"Done in {summary['training']['wall_seconds']:.0f}s: {project.resolve()}")
    return summary


def _embed_split(model, images, *, collator, batch_size, image_size, interp):
    return compute_embeddings(model, images, collator, batch_size, model.device, image_size, interp)


@torch.no_grad()
def apply_wise_ft(
    model: torch.nn.Module, start: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor], alpha: float
) -> None:
    """Load ``(1 - alpha) * start + alpha * tuned`` into ``model`` (WiSE-FT weight-space ensembling).

    Wortsman et al., "Robust fine-tuning of zero-shot models", CVPR 2022. Floating-point tensors are
    interpolated; integer buffers (BatchNorm's ``num_batches_tracked``) are taken from ``tuned``.

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


WISE_FT_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)


def select_wise_ft_alpha(model, start, tuned, validation, images, eval_kwargs) -> dict[str, Any]:
    """Choose the WiSE-FT alpha of :data:`WISE_FT_GRID` with the best field-validation MRR.

    Alpha 0 is the starting model (the frozen-feature prototype line), so a run whose fine-tuning lost
    what the pretrained features knew falls back towards them instead of saving a worse model. Ties go to
    the larger alpha. Returns ``{"alpha", "by", "validation_mrr": {alpha: mrr}}``.
    """
    field = validation.domains == FIELD
    scores = {}
    for a in WISE_FT_GRID:
        apply_wise_ft(model, start, tuned, a)
        _, logits = _embed_split(model, images[field], **eval_kwargs)
        scores[a] = M.mean_reciprocal_rank(logits, validation.labels[field])
    best = max(scores, key=lambda a: (round(scores[a], 6), a))
    logger.info(
        "WiSE-FT alpha chosen on the field validation photos: "
        + ", ".join(f"{a:g}: MRR {m:.3f}" for a, m in scores.items())
        + f" -> {best:g}"
    )
    return {
        "alpha": best,
        "by": "field validation MRR",
        "validation_mrr": {str(a): m for a, m in scores.items()},
    }


def calibrate(model, config, validation, raw: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """Set the inference temperature: ``config.temperature``, else fitted on the field validation photos
    (their logits at T = 1 in ``raw[validation.name]``), else :data:`FALLBACK_TEMPERATURE`. Returns what
    was done (for ``metrics.json`` and the card)."""
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
    logits = raw[validation.name][1][field]
    labels = validation.labels[field]
    temperature = M.fit_temperature(logits, labels)
    model.set_logit_temperature(temperature)
    result = {
        "temperature": round(temperature, 4),
        "source": f"fitted on {int(field.sum())} field validation photos",
        "validation_field_ece_before": M.expected_calibration_error(logits, labels),
        "validation_field_ece_after": M.expected_calibration_error(logits / temperature, labels),
    }
    logger.info(
        f"Temperature {temperature:.3g} fitted on the field validation photos: ECE "
        f"{result['validation_field_ece_before']:.3f} -> {result['validation_field_ece_after']:.3f}"
    )
    return result


def _write_tsne(
    config, model, data, train_images, embeddings, collator, size, interp, class_names
) -> str | None:
    """``tsne.png``: evaluation embeddings (field and herbarium) plus a sample of training herbarium."""
    parts_emb, parts_lab, parts_dom = [], [], []
    rng = np.random.default_rng(config.seed)
    for emb, labels, domains in embeddings.values():
        keep = np.arange(len(labels))
        if len(keep) > TSNE_MAX_EVAL:
            keep = np.sort(rng.choice(keep, TSNE_MAX_EVAL, replace=False))
        parts_emb.append(emb[keep])
        parts_lab.append(labels[keep])
        parts_dom.append(domains[keep])
    herb = np.flatnonzero(data.train.domains != FIELD)
    if len(herb):
        if len(herb) > TSNE_MAX_TRAIN_HERBARIUM:
            herb = np.sort(rng.choice(herb, TSNE_MAX_TRAIN_HERBARIUM, replace=False))
        emb, _ = compute_embeddings(
            model, train_images, collator, 2 * config.batch_size, model.device, size, interp, indices=herb
        )
        parts_emb.append(emb)
        parts_lab.append(data.train.labels[herb])
        parts_dom.append(data.train.domains[herb])
    if not parts_emb or sum(len(p) for p in parts_emb) < 5:
        logger.warning("tsne: fewer than 5 images to plot; tsne.png not written")
        return None
    path = Path(config.project_name) / "tsne.png"
    plot_tsne(
        np.concatenate(parts_emb),
        np.concatenate(parts_lab),
        np.concatenate(parts_dom),
        class_names,
        str(path),
        seed=config.seed,
        title=f"{config.project_name}: embeddings by species ({' + '.join([*embeddings, 'train herbarium'])})",
    )
    return path.name


__all__ = ["ArcFaceTrainer", "BackboneWarmupCallback", "ThroughputCallback", "run", "DOMAIN_NAMES"]
