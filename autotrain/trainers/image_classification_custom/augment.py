"""The training augmentation: one spec, and the per-image CPU transform built from it.

:class:`AugmentationSpec` holds every range and probability of the training augmentation for one
``augmentation`` strength. Both augmentation paths read it and nothing else:

- :func:`create_train_transform`: ``torchvision.transforms.v2`` on one uint8 ``(3, H, W)`` image, in
  DataLoader workers (``augmentation_device: cpu``);
- :class:`~autotrain.trainers.image_classification_custom.batch_augment.BatchAugment`: the same draws for
  a whole uint8 batch on the training device (``augmentation_device: gpu``).

``tests/test_augmentation_spec.py`` checks that both paths draw from the spec's ranges and probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass

from torchvision.transforms import v2


@dataclass(frozen=True, kw_only=True)
class AugmentationSpec:
    """Every range and probability of the training augmentation (both paths draw independently per image).

    Herbarium sheets are flat, pale, dried and arbitrarily oriented; field photos are green, cluttered
    and partial. Random resized crops, flips, rotation, brightness/contrast/saturation jitter, random
    grayscale and blur make the model rely on shape and venation rather than framing, lighting and paper
    tone. Hue is left alone: flower colour identifies species (and hue jitter costs ~10 ms per image).
    The costly ops (rotation, blur) are kept occasional by their probabilities.

    Attributes:
        image_size: Output side in pixels (square).
        strength: The ``augmentation`` parameter it was built from; ``<= 0`` means no augmentation (a
            plain resize to ``image_size``), whatever the other fields say.
        crop_scale: ``(min, max)`` area of the random crop, as a fraction of the image area.
        crop_ratio: ``(min, max)`` width / height of the crop, drawn log-uniformly.
        p_hflip: Probability of a horizontal flip.
        p_vflip: Probability of a vertical flip.
        rotation_degrees: Rotation angle drawn uniformly from ``[-rotation_degrees, rotation_degrees]``.
        p_rotate: Probability of a rotation.
        brightness, contrast, saturation: Jitter amounts ``a``: a factor drawn uniformly from
            :meth:`factor_range` ``(a)`` = ``[max(0, 1 - a), 1 + a]`` (1 = unchanged).
        p_jitter: Probability of the colour jitter (the three factors together).
        p_gray: Probability of converting to grayscale (kept as 3 channels).
        blur_kernel: Gaussian blur kernel side in pixels (odd).
        blur_sigma: ``(min, max)`` of the blur's standard deviation in pixels, drawn uniformly.
        p_blur: Probability of the blur.
    """

    image_size: int
    strength: float
    crop_scale: tuple[float, float]
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    p_hflip: float = 0.5
    p_vflip: float
    rotation_degrees: float
    p_rotate: float
    brightness: float
    contrast: float
    saturation: float
    p_jitter: float
    p_gray: float
    blur_kernel: int
    blur_sigma: tuple[float, float]
    p_blur: float

    @classmethod
    def from_strength(cls, augmentation: float, image_size: int) -> AugmentationSpec:
        """The spec of the ``augmentation`` parameter: 0 (none) .. 2 (strongest); 1 is the default.

        Every probability and range grows with ``augmentation`` (probabilities capped at 1, vertical
        flips at 0.5, rotation at 180 degrees, the crop area at no less than 8% of the image).
        """
        a = max(0.0, float(augmentation))
        return cls(
            image_size=int(image_size),
            strength=float(augmentation),
            crop_scale=(max(0.08, 1.0 - 0.65 * a), 1.0),
            p_vflip=min(0.5, 0.1 * a),
            rotation_degrees=min(180.0, 20.0 * a),
            p_rotate=min(1.0, 0.25 * a),
            brightness=0.4 * a,
            contrast=0.4 * a,
            saturation=0.5 * a,
            p_jitter=min(1.0, 0.8 * a),
            p_gray=min(1.0, 0.15 * a),
            blur_kernel=max(3, (int(image_size) // 32) | 1),
            blur_sigma=(0.1, max(0.1, 1.5 * a)),
            p_blur=min(1.0, 0.2 * a),
        )

    @classmethod
    def build(cls, image_size: int | None, strength: float) -> AugmentationSpec:
        """:meth:`from_strength` for the ``(image_size, strength)`` arguments of the two paths.

        Raises:
            TypeError: ``image_size`` is None (give it, or a spec).
        """
        if image_size is None:
            raise TypeError("give image_size (and strength) or spec")
        return cls.from_strength(strength, image_size)

    @property
    def identity(self) -> bool:
        """True when nothing is augmented (``strength <= 0``): both paths only resize."""
        return self.strength <= 0

    @staticmethod
    def factor_range(amount: float) -> tuple[float, float]:
        """``(low, high)`` of a jitter factor for jitter ``amount`` (torchvision's ``ColorJitter`` rule)."""
        return max(0.0, 1.0 - amount), 1.0 + amount


def interpolation_mode(interpolation: str) -> v2.InterpolationMode:
    """The torchvision mode for a filter name: bicubic, else bilinear (tensors have no lanczos or box)."""
    return v2.InterpolationMode.BICUBIC if interpolation == "bicubic" else v2.InterpolationMode.BILINEAR


def create_train_transform(
    image_size: int | None = None,
    strength: float = 1.0,
    interpolation: str = "bilinear",
    *,
    spec: AugmentationSpec | None = None,
) -> v2.Compose:
    """Augmentation of one uint8 ``(3, H, W)`` tensor to uint8 ``(3, image_size, image_size)``.

    Random resized crop, flips, rotation, colour jitter, grayscale and blur, with the ranges and
    probabilities of :class:`AugmentationSpec`; strength 0 returns a plain resize. About 10 ms per
    224 px image on one CPU core at strength 1.

    Args:
        image_size: Output side (ignored when ``spec`` is given: the spec's side is used).
        strength: 0 (none) .. 2 (strongest); 1 is the default (ignored when ``spec`` is given).
        interpolation: Resize filter name (``bicubic``; anything else is bilinear).
        spec: The augmentation to apply; default ``AugmentationSpec.from_strength(strength, image_size)``.
    """
    spec = spec if spec is not None else AugmentationSpec.build(image_size, strength)
    mode = interpolation_mode(interpolation)
    size = spec.image_size
    if spec.identity:
        return v2.Compose([v2.Resize((size, size), interpolation=mode, antialias=True)])
    jitter = v2.ColorJitter(
        brightness=spec.factor_range(spec.brightness),
        contrast=spec.factor_range(spec.contrast),
        saturation=spec.factor_range(spec.saturation),
    )
    return v2.Compose(
        [
            v2.RandomResizedCrop(
                size, scale=spec.crop_scale, ratio=spec.crop_ratio, interpolation=mode, antialias=True
            ),
            v2.RandomHorizontalFlip(p=spec.p_hflip),
            v2.RandomVerticalFlip(p=spec.p_vflip),
            v2.RandomApply([v2.RandomRotation(degrees=spec.rotation_degrees)], p=spec.p_rotate),
            v2.RandomApply([jitter], p=spec.p_jitter),
            v2.RandomGrayscale(p=spec.p_gray),
            v2.RandomApply([v2.GaussianBlur(spec.blur_kernel, sigma=spec.blur_sigma)], p=spec.p_blur),
        ]
    )
