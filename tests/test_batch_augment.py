"""Batched training augmentation on the training device (``augmentation_device: gpu``), run on CPU."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from autotrain.trainers.image_classification_custom.augment import AugmentationSpec
from autotrain.trainers.image_classification_custom.batch_augment import BatchAugment
from autotrain.trainers.image_classification_custom.dataset import NormalizeCollator


def _images(n=16, size=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


def test_output_shape_range_and_reproducibility():
    x = _images()
    y1 = BatchAugment(32, 1.0, generator=torch.Generator().manual_seed(3))(x)
    y2 = BatchAugment(32, 1.0, generator=torch.Generator().manual_seed(3))(x)
    assert y1.shape == (16, 3, 32, 32) and y1.dtype == torch.float32
    assert float(y1.min()) >= 0.0 and float(y1.max()) <= 1.0
    torch.testing.assert_close(y1, y2)  # same generator state -> same draws
    y3 = BatchAugment(32, 1.0, generator=torch.Generator().manual_seed(4))(x)
    assert not torch.allclose(y1, y3)
    # the pixels change: each output is far from the plain resize of its input
    plain = F.interpolate(x.float() / 255, size=(32, 32), mode="bilinear", align_corners=False)
    assert (y1 - plain).abs().mean((1, 2, 3)).min() > 0.05


def test_strength_zero_is_a_plain_resize():
    x = _images(size=32)
    y = BatchAugment(32, 0.0)(x)
    torch.testing.assert_close(y * 255, x.float(), atol=0.05, rtol=0)


def test_each_image_gets_its_own_transform():
    # 64 copies of one image: a per-batch transform would give 64 identical outputs
    x = _images(n=1, size=48).expand(64, -1, -1, -1).contiguous()
    y = BatchAugment(32, 1.0, generator=torch.Generator().manual_seed(0))(x)
    flat = y.flatten(1)
    distinct = {tuple(torch.round(row[:50] * 1000).tolist()) for row in flat}
    assert len(distinct) > 50


def test_horizontal_flip_and_crop_geometry():
    # a left-dark / right-bright image: the affine must keep, or mirror, the gradient (never scramble it)
    ramp = torch.linspace(0, 255, 64).round().to(torch.uint8).view(1, 1, 1, 64).expand(256, 3, 64, 64)
    spec = AugmentationSpec.from_strength(0.5, 32)
    spec = dataclasses.replace(spec, p_rotate=0.0, p_jitter=0.0, p_gray=0.0, p_blur=0.0)
    aug = BatchAugment(spec=spec, generator=torch.Generator().manual_seed(1))
    y = aug(ramp.contiguous())[:, 0]
    slope = (y[:, :, -4:].mean((1, 2)) - y[:, :, :4].mean((1, 2))).sign()
    assert (slope != 0).all()
    share_flipped = float((slope < 0).float().mean())
    assert 0.35 < share_flipped < 0.65  # p = 0.5 horizontal flips


def test_trainer_normalises_uint8_batches_and_augments_only_when_training(tmp_path, tiny_model, make_trainer):
    model = tiny_model()
    normalizer = NormalizeCollator(model.config.image_mean, model.config.image_std)
    trainer = make_trainer(tmp_path, model, normalizer=normalizer, batch_augment=BatchAugment(24, 1.0))
    collate = NormalizeCollator(model.config.image_mean, model.config.image_std, keep_uint8=True)
    images = _images(n=8, size=32)
    batch = collate([{"pixel_values": images[i], "labels": i % 4} for i in range(8)])
    assert batch["pixel_values"].dtype == torch.uint8

    model.eval()
    evaluated = trainer._prepare_inputs(dict(batch))["pixel_values"]
    torch.testing.assert_close(evaluated, normalizer.normalize(images))  # eval: normalised, not augmented

    model.train()
    trained = trainer._prepare_inputs(dict(batch))["pixel_values"]
    assert trained.shape == (8, 3, 24, 24) and trained.dtype == torch.float32
    assert trained.is_contiguous(memory_format=torch.channels_last)
    loss = trainer.compute_loss(model, trainer._prepare_inputs(dict(batch)))
    assert torch.isfinite(loss)
