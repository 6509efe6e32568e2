"""One augmentation spec for both paths (issue 11, item 4): the CPU transform (``create_train_transform``)
and the batch path (``BatchAugment``) take every range and probability from ``AugmentationSpec``, and the
pixels they produce stay within the spec's ranges, at the spec's rates.

The statistical checks run a few hundred draws with a fixed seed through each path on images whose
pixels encode their coordinates, and read back what was drawn (crop box, flips, angle, brightness).
Specs with values ``from_strength`` never produces (``p_vflip=0.3``...) show the draws come from the spec.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from autotrain.trainers.image_classification_custom.augment import AugmentationSpec, create_train_transform
from autotrain.trainers.image_classification_custom.batch_augment import BatchAugment

N = 400  # draws per check: a rate p is within 0.08 of its expectation (more than 3 standard deviations)
PATHS = ("cpu", "batch")


def _only(spec: AugmentationSpec, **fields) -> AugmentationSpec:
    """``spec`` with every random op off (full-image crop, no flip...) except ``fields``."""
    off = dict(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), p_hflip=0.0, p_vflip=0.0, p_rotate=0.0)
    off.update(p_jitter=0.0, p_gray=0.0, p_blur=0.0)
    return dataclasses.replace(spec, **{**off, **fields})


def _augment(path: str, spec: AugmentationSpec, image: torch.Tensor, n: int = N) -> np.ndarray:
    """``n`` independent draws of ``spec`` on one uint8 ``(3, H, W)`` image -> float ``(n, 3, S, S)`` in 0..255."""
    if path == "cpu":
        torch.manual_seed(0)
        transform = create_train_transform(spec=spec)
        out = torch.stack([transform(image) for _ in range(n)])
        assert out.dtype == torch.uint8
        return out.double().numpy()
    batch = image.expand(n, -1, -1, -1).contiguous()
    out = BatchAugment(spec=spec, generator=torch.Generator().manual_seed(0))(batch)
    assert out.dtype == torch.float32
    return out.double().numpy() * 255


def _coordinates(size: int, step: int = 2) -> torch.Tensor:
    """uint8 ``(3, size, size)``: red = step * column, green = step * row, blue = 60 (pixels name their place)."""
    ramp = torch.arange(size, dtype=torch.int64) * step
    red = ramp.view(1, 1, -1).expand(1, size, size)
    green = ramp.view(1, -1, 1).expand(1, size, size)
    return torch.cat([red, green, torch.full((1, size, size), 60)]).to(torch.uint8)


def test_from_strength_is_the_documented_augmentation():
    spec = AugmentationSpec.from_strength(1.0, 224)
    assert spec.crop_scale == pytest.approx((0.35, 1.0)) and spec.crop_ratio == pytest.approx((3 / 4, 4 / 3))
    assert (spec.p_hflip, spec.p_vflip, spec.rotation_degrees, spec.p_rotate) == pytest.approx(
        (0.5, 0.1, 20, 0.25)
    )
    assert (spec.brightness, spec.contrast, spec.saturation, spec.p_jitter) == pytest.approx(
        (0.4, 0.4, 0.5, 0.8)
    )
    assert (spec.p_gray, spec.p_blur, spec.blur_kernel) == pytest.approx((0.15, 0.2, 7))
    assert spec.blur_sigma == pytest.approx((0.1, 1.5))
    strong = AugmentationSpec.from_strength(2.0, 224)
    assert strong.crop_scale[0] == 0.08 and strong.p_vflip == pytest.approx(0.2) and strong.p_jitter == 1.0
    assert AugmentationSpec.from_strength(0.0, 32).identity and not spec.identity
    weak = AugmentationSpec.from_strength(0.02, 32)  # a blur sigma range that torchvision accepts
    assert weak.blur_sigma[0] <= weak.blur_sigma[1]
    create_train_transform(spec=weak)(torch.zeros(3, 40, 40, dtype=torch.uint8))


def test_the_cpu_transform_takes_every_parameter_from_the_spec():
    spec = dataclasses.replace(
        AugmentationSpec.from_strength(1.3, 64), p_hflip=0.3, crop_ratio=(0.9, 1.1), blur_sigma=(0.2, 0.7)
    )
    ops = create_train_transform(spec=spec).transforms
    crop = next(t for t in ops if isinstance(t, v2.RandomResizedCrop))
    assert tuple(crop.size) == (64, 64) and tuple(crop.scale) == spec.crop_scale
    assert tuple(crop.ratio) == spec.crop_ratio
    assert next(t for t in ops if isinstance(t, v2.RandomHorizontalFlip)).p == spec.p_hflip
    assert next(t for t in ops if isinstance(t, v2.RandomVerticalFlip)).p == spec.p_vflip
    assert next(t for t in ops if isinstance(t, v2.RandomGrayscale)).p == spec.p_gray
    applied = {type(t.transforms[0]): t for t in ops if isinstance(t, v2.RandomApply)}
    rotation, jitter, blur = (applied[k] for k in (v2.RandomRotation, v2.ColorJitter, v2.GaussianBlur))
    assert (rotation.p, jitter.p, blur.p) == (spec.p_rotate, spec.p_jitter, spec.p_blur)
    assert list(rotation.transforms[0].degrees) == [-spec.rotation_degrees, spec.rotation_degrees]
    colour = jitter.transforms[0]
    for name in ("brightness", "contrast", "saturation"):
        assert tuple(getattr(colour, name)) == pytest.approx(spec.factor_range(getattr(spec, name)))
    assert colour.hue is None  # flower colour identifies species
    assert list(blur.transforms[0].kernel_size) == [spec.blur_kernel] * 2
    assert list(blur.transforms[0].sigma) == pytest.approx(list(spec.blur_sigma))
    assert BatchAugment(spec=spec).spec is spec and BatchAugment(spec=spec).size == 64


@pytest.mark.parametrize("path", PATHS)
def test_strength_zero_is_a_plain_resize(path):
    image = _coordinates(40)
    out = _augment(path, AugmentationSpec.from_strength(0.0, 40), image, n=4)
    np.testing.assert_allclose(out, image.double().expand(4, -1, -1, -1).numpy(), atol=0.01)


@pytest.mark.parametrize("path", PATHS)
def test_flips_are_exact_and_at_the_spec_rates(path):
    spec = _only(AugmentationSpec.from_strength(1.0, 32), p_hflip=0.5, p_vflip=0.3)
    image = _coordinates(32)
    out = _augment(path, spec, image)
    versions = {
        (h, v): np.flip(image.double().numpy(), axis=tuple(a for a, on in ((2, h), (1, v)) if on))
        for h in (False, True)
        for v in (False, True)
    }
    kinds = []
    for y in out:
        kind = [k for k, ref in versions.items() if np.abs(y - ref).max() < 0.01]
        assert len(kind) == 1  # each output is the image or an exact flip of it, nothing else
        kinds.append(kind[0])
    hflips, vflips = (np.mean([k[i] for k in kinds]) for i in (0, 1))
    assert hflips == pytest.approx(spec.p_hflip, abs=0.08)
    assert vflips == pytest.approx(spec.p_vflip, abs=0.08)


@pytest.mark.parametrize("path", PATHS)
def test_crop_area_and_aspect_stay_in_the_spec_ranges(path):
    spec = _only(AugmentationSpec.from_strength(1.0, 64))
    spec = dataclasses.replace(spec, crop_scale=(0.35, 1.0), crop_ratio=(3 / 4, 4 / 3))
    out = _augment(path, spec, _coordinates(128), n=300)
    # an output pixel centre samples input column u at 2u - 1 (red); the 64 centres span 63/64 of the crop
    width = (out[:, 0].max((1, 2)) - out[:, 0].min((1, 2))) / (2 * 128 * 63 / 64)
    height = (out[:, 1].max((1, 2)) - out[:, 1].min((1, 2))) / (2 * 128 * 63 / 64)
    area, aspect = width * height, width / height
    assert area.min() >= spec.crop_scale[0] - 0.04 and area.max() <= 1.02
    assert area.min() < spec.crop_scale[0] + 0.08 and area.max() > 0.9  # the whole range is drawn
    assert aspect.min() >= 3 / 4 - 0.04 and aspect.max() <= 4 / 3 + 0.04
    assert aspect.min() < 0.85 and aspect.max() > 1.15


@pytest.mark.parametrize("path", PATHS)
def test_rotation_angles_are_within_the_spec_and_at_its_rate(path):
    spec = _only(AugmentationSpec.from_strength(1.0, 32), rotation_degrees=30.0, p_rotate=0.6)
    out = _augment(path, spec, _coordinates(32, step=8), n=300)
    # the red ramp's direction, fitted over a central disk (always inside the image, whatever the angle;
    # torchvision rotates with nearest-neighbour sampling, so one-pixel differences would be too coarse)
    yy, xx = np.mgrid[:32, :32] - 15.5
    disk = xx**2 + yy**2 < 12**2
    design = np.stack([xx[disk], yy[disk], np.ones(disk.sum())], 1)
    (gx, gy, _), *_ = np.linalg.lstsq(design, out[:, 0][:, disk].T, rcond=None)
    angle = np.degrees(np.abs(np.arctan2(gy, gx)))  # 0 unless rotated
    assert angle.max() <= 30.0 + 1.5 and angle.max() > 25.0
    rotated = angle > 1.0
    assert rotated.mean() == pytest.approx(spec.p_rotate * (1 - 1 / 30), abs=0.08)
    assert angle[rotated].mean() == pytest.approx(15.5, abs=2.0)  # uniform on [-30, 30]


@pytest.mark.parametrize("path", PATHS)
def test_brightness_factor_stays_in_the_stated_range(path):
    spec = _only(AugmentationSpec.from_strength(1.0, 24), p_jitter=0.6)
    spec = dataclasses.replace(spec, brightness=0.4, contrast=0.0, saturation=0.0)
    grey = torch.full((3, 24, 24), 100, dtype=torch.uint8)
    factor = _augment(path, spec, grey).mean((1, 2, 3)) / 100.0
    low, high = spec.factor_range(spec.brightness)
    assert factor.min() >= low - 0.01 and factor.max() <= high + 0.01
    changed = np.abs(factor - 1) > 0.01
    assert changed.mean() == pytest.approx(spec.p_jitter * (1 - 0.02 / (high - low)), abs=0.08)
    assert factor[changed].min() < low + 0.05 and factor[changed].max() > high - 0.05
    assert factor[changed].mean() == pytest.approx(1.0, abs=0.05)  # uniform around 1


@pytest.mark.parametrize("path", PATHS)
def test_grayscale_rate(path):
    strong = AugmentationSpec.from_strength(2.0, 16)
    spec = _only(strong, p_gray=strong.p_gray)
    assert spec.p_gray == pytest.approx(0.3)
    colour = torch.stack([torch.full((16, 16), v, dtype=torch.uint8) for v in (200, 50, 120)])
    out = _augment(path, spec, colour)
    grey = np.abs(out - out[:, :1]).max((1, 2, 3)) < 1.0
    assert grey.mean() == pytest.approx(spec.p_gray, abs=0.08)
    assert np.abs(out[~grey] - colour.double().numpy()).max() < 0.01  # the others are untouched
