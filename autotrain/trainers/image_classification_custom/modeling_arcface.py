"""ArcFace-headed image classifier on a timm or transformers backbone (shipped in every saved model folder).

The model is ``backbone -> pooled features -> Linear projection -> L2-normalised embedding -> ArcFace head``.
At inference the logits are ``scale * cos(theta)`` between the embedding and the class centres, so the
model also serves as an embedding extractor (``embed``) for nearest-specimen search and t-SNE maps.

This file and ``configuration_arcface.py`` are the model's inference code, copied into every saved model
folder (``auto_map`` points at them): ``AutoModelForImageClassification.from_pretrained(folder,
trust_remote_code=True)`` and ``pipeline("image-classification", model=folder, trust_remote_code=True)``
work without this project installed and without network access. It imports torch and transformers;
timm only when the backbone is a timm one (inside ``try``, so transformers' import check does not ask
for it), so a transformers-backbone folder loads where timm is missing. The backbone is rebuilt from
``config.backbone_config`` (an architecture description, no weights), then every weight comes from the
folder's safetensors file. Building a model on pretrained weights, and saving it, is build-time code
(``backbones.py``, ``model_io.py``) that is not shipped.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import AutoConfig, AutoModel, PreTrainedModel
from transformers.modeling_outputs import ImageClassifierOutput

from .configuration_arcface import ArcFaceConfig

__all__ = [
    "ArcFaceConfig",
    "ArcFaceHead",
    "ArcFacePreTrainedModel",
    "ArcFaceForImageClassification",
    "build_timm_backbone",
    "build_transformers_backbone",
]


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
                labels the result is ``s * cos(theta)`` (:meth:`get_logits` at temperature 1).

        Returns:
            ``(B, num_classes)`` float32 (float64 for float64 inputs), to be fed to cross-entropy.
        """
        return self.add_margin(self.cosine(embeddings), labels)

    def logits_with_margin(
        self, embeddings: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Training and inference logits from one cosine: ``(forward(e, labels), get_logits(e))``.

        Args:
            embeddings: ``(B, in_features)``.
            labels: ``(B,)`` class indices (negative entries get no margin).

        Returns:
            ``(margin_logits, logits)``, both ``(B, num_classes)`` float32 (float64 for float64 inputs):
            the loss's logits, and ``s * cos(theta) / temperature`` without margin.
        """
        cos = self.cosine(embeddings)
        return self.add_margin(cos, labels), cos * (self.scale / self.temperature)

    def add_margin(self, cos: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """``s * cos(theta + m)`` on each sample's target class, ``s * cos(theta)`` elsewhere.

        Args:
            cos: ``(B, num_classes)`` clamped cosines from :meth:`cosine`.
            labels: ``(B,)`` class indices, negative for no margin; None: no margin at all.

        Returns:
            ``(B, num_classes)`` in ``cos``'s dtype.
        """
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
# Backbone architectures, rebuilt from config.backbone_config (no weights)
# ----------------------------------------------------------------------------------------------------


def _import_timm() -> Any:
    """The timm module (imported on first use, so transformers backbones never need it)."""
    try:
        import timm
    except ImportError as err:
        raise ImportError(
            "this model's backbone is a timm model (backbone_source 'timm'): pip install timm"
        ) from err
    return timm


def build_timm_backbone(backbone_config: Mapping[str, Any]) -> nn.Module:
    """Rebuild a timm backbone (random weights, no classifier) from ``backbone_config``.

    Args:
        backbone_config: ``{"architecture": str, "model_kwargs": dict}``.

    Raises:
        ImportError: timm is not installed.
    """
    kwargs = dict(backbone_config.get("model_kwargs") or {})
    kwargs["num_classes"] = 0
    return _import_timm().create_model(backbone_config["architecture"], pretrained=False, **kwargs)


def build_transformers_backbone(backbone_config: Mapping[str, Any]) -> nn.Module:
    """Rebuild a transformers backbone (random weights) from ``backbone_config``.

    Args:
        backbone_config: ``{"config": dict with model_type, "model_kwargs": dict}``.
    """
    cfg = dict(backbone_config["config"])
    model_type = cfg.pop("model_type")
    config = AutoConfig.for_model(model_type, **cfg)
    return AutoModel.from_config(config, **dict(backbone_config.get("model_kwargs") or {}))


def accepts_kwarg(fn: Any, name: str) -> bool:
    """True when callable ``fn`` takes a parameter called ``name``."""
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


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
        construction (by the trainer's build-time code) or by ``from_pretrained``.
        """
        if isinstance(module, ArcFaceHead):
            module.reset_parameters()
        elif module is getattr(self, "projection", None):
            module.reset_parameters()


#: Feature rows per step when the projection's Gram matrix is summed (:meth:`init_projection`).
PROJECTION_CHUNK = 4096


class ArcFaceForImageClassification(ArcFacePreTrainedModel):
    """Backbone + linear projection + L2-normalised embedding + ArcFace head.

    Built from the config alone (random weights; the backbone's architecture from
    ``config.backbone_config``), or loaded with ``from_pretrained``. The trainer builds it on a
    pretrained backbone with its build-time code (``model_io.create_arcface_model``), which is not
    shipped with the model.

    Args:
        config: The model configuration.
    """

    def __init__(self, config: ArcFaceConfig) -> None:
        super().__init__(config)
        if not config.backbone_config:
            raise ValueError(
                f"config.backbone_config is empty: nothing describes the {config.backbone!r} backbone to rebuild"
            )
        if config.backbone_source == "timm":
            self.backbone = build_timm_backbone(config.backbone_config)
        else:
            self.backbone = build_transformers_backbone(config.backbone_config)
        self._interpolate_pos_encoding = config.backbone_source == "transformers" and accepts_kwarg(
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

    def embed_and_logits(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings and inference logits in one backbone pass (the app's and the evaluation's path).

        Args:
            pixel_values: ``(B, 3, H, W)`` normalised images.

        Returns:
            ``(embeddings (B, embedding_dim), logits (B, num_labels))``, both float32; the logits are
            ``s * cos(theta) / temperature`` without margin, as ``forward(pixel_values).logits``.
        """
        embeddings = self.embed(pixel_values)
        return embeddings, self.head.get_logits(embeddings)

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
        loss = None
        if labels is None:
            logits = self.head.get_logits(embeddings)
        else:  # one cosine for the loss's margin logits and the returned plain logits
            margin_logits, logits = self.head.logits_with_margin(embeddings, labels)
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
        # The right-singular vectors of the features are the eigenvectors of their (in_dim, in_dim) Gram
        # matrix, summed in float64 a chunk of rows at a time: memory O(in_dim^2), time O(N in_dim^2).
        # (A full SVD also builds the (N, N) left-singular matrix: 13 GB at 40,000 images.)
        gram = torch.zeros(in_dim, in_dim, dtype=torch.float64, device=features.device)
        for start in range(0, len(features), PROJECTION_CHUNK):
            chunk = features[start : start + PROJECTION_CHUNK].double()
            gram += chunk.t() @ chunk
        _, vectors = torch.linalg.eigh(gram)  # ascending eigenvalues; an orthonormal basis of R^in_dim
        basis = vectors.flip(1)[:, :out_dim].t()  # the out_dim directions of most energy, as rows
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


ArcFaceForImageClassification.register_for_auto_class("AutoModelForImageClassification")
