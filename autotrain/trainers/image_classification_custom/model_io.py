"""Build-time model code: create an ArcFace model on a pretrained backbone, its image processor, and save it.

Not shipped in model folders. A saved folder holds ``config.json`` (``auto_map`` pointing at the two
shipped files), ``model.safetensors``, ``configuration_arcface.py``, ``modeling_arcface.py`` and
``preprocessor_config.json``; it loads offline with plain transformers (``trust_remote_code=True``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from transformers import ViTImageProcessor

from autotrain.trainers.image_classification_custom.backbones import (
    create_timm_backbone,
    create_transformers_backbone,
    resolve_backbone_source,
)
from autotrain.trainers.image_classification_custom.configuration_arcface import ArcFaceConfig
from autotrain.trainers.image_classification_custom.modeling_arcface import ArcFaceForImageClassification
from data_prep.contract import resampling

__all__ = ["AUTO_MAP", "create_arcface_model", "create_image_processor", "save_arcface_model"]

#: ``config.json``'s ``auto_map``: the shipped configuration and modeling files.
AUTO_MAP = {
    "AutoConfig": "configuration_arcface.ArcFaceConfig",
    "AutoModelForImageClassification": "modeling_arcface.ArcFaceForImageClassification",
}


def _normalise_labels(id2label: Mapping[int, str] | Sequence[str]) -> dict[int, str]:
    """``{index: name}`` from a mapping or a sequence of names; raises ValueError unless keys are 0..C-1."""
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
            ``data_prep.contract.EMBEDDED_BACKBONE``.
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

    Raises:
        ValueError: bad ``id2label`` or ``backbone_source``.
    """
    labels = _normalise_labels(id2label)
    source = resolve_backbone_source(backbone) if backbone_source == "auto" else backbone_source
    if source == "timm":
        pretrained_backbone, backbone_config, data = create_timm_backbone(backbone, pretrained, image_size)
        feature_dim = int(getattr(pretrained_backbone, "head_hidden_size", pretrained_backbone.num_features))
    elif source == "transformers":
        pretrained_backbone, backbone_config, data = create_transformers_backbone(
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
        config: The model configuration (``image_size``, ``image_interpolation``, ``image_mean``/``image_std``).

    Returns:
        The processor the saved folder's ``preprocessor_config.json`` describes (the pipeline's input path).
    """
    return ViTImageProcessor(
        do_resize=True,
        size={"height": config.image_size, "width": config.image_size},
        resample=int(resampling(config.image_interpolation)),
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(config.image_mean),
        image_std=list(config.image_std),
    )


def save_arcface_model(model: ArcFaceForImageClassification, out_dir: str | os.PathLike) -> Path:
    """Save a model folder that loads offline with plain transformers (``trust_remote_code=True``).

    Writes ``config.json`` (with ``auto_map`` = :data:`AUTO_MAP`), ``model.safetensors``, copies of the
    shipped ``configuration_arcface.py`` and ``modeling_arcface.py`` (``save_pretrained`` copies the
    model's file and its relative imports) and ``preprocessor_config.json`` (``ViTImageProcessor``). A
    model loaded from an older folder (one ``modeling_arcface.py`` holding everything) is saved in this
    layout.

    Args:
        model: The model.
        out_dir: Target folder (created if needed).

    Returns:
        The folder.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.config.auto_map = dict(AUTO_MAP)
    model.save_pretrained(out, safe_serialization=True)
    create_image_processor(model.config).save_pretrained(out)
    respect_umask(out)
    return out


def respect_umask(folder: str | os.PathLike) -> None:
    """Give the weight files in ``folder`` the permissions the user's umask asks for.

    ``safetensors`` writes its files owner-only (``0600``, through a temporary file), whatever the umask,
    so a model saved on a shared server could not be read by the group; this sets ``0666 & ~umask``.
    """
    mask = os.umask(0)
    os.umask(mask)
    for path in Path(folder).glob("*.safetensors"):
        path.chmod(0o666 & ~mask)
