"""Training augmentation for a whole batch on the training device (``augmentation_device: gpu``).

On a GPU, per-image augmentation in DataLoader workers (``augment.create_train_transform``, about 10 ms
per 224 px image on one CPU core) caps throughput at roughly 100 images/s per worker, far below what a
GPU trains at. :class:`BatchAugment` draws the same kinds of random transforms, independently per
image, but applies them to a uint8 batch already on the device: one ``grid_sample`` for random resized
crop + flips + rotation (composed into one affine matrix per image), then brightness, contrast,
saturation, random grayscale and Gaussian blur as batched tensor arithmetic. The workers only stack
uint8 arrays, and the host-to-device copy is 4x smaller than float32.

Both paths read their ranges and probabilities from one :class:`~.augment.AugmentationSpec`; the
implementation differs (bilinear ``grid_sample`` without antialiasing, a fixed jitter order), so
results are close to, not bit-identical with, the CPU path.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from autotrain.trainers.image_classification_custom.augment import AugmentationSpec

_GRAY = (0.299, 0.587, 0.114)


class BatchAugment:
    """Random resized crop, flips, rotation, colour jitter, grayscale and blur on a ``(B, 3, H, W)`` batch.

    Args:
        image_size: Output side (ignored when ``spec`` is given).
        strength: 0 (resize only) .. 2; 1 is the default, as in ``create_train_transform`` (ignored when
            ``spec`` is given).
        generator: Optional ``torch.Generator`` on the batch's device (reproducible draws in tests).
        spec: The augmentation to apply; default ``AugmentationSpec.from_strength(strength, image_size)``.
    """

    def __init__(
        self,
        image_size: int | None = None,
        strength: float = 1.0,
        generator: torch.Generator | None = None,
        *,
        spec: AugmentationSpec | None = None,
    ):
        self.spec = spec if spec is not None else AugmentationSpec.build(image_size, strength)
        self.size = self.spec.image_size
        self.generator = generator
        self._gray: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}  # per device, made once

    def _rand(self, n: int, device: torch.device) -> torch.Tensor:
        return torch.rand(n, device=device, generator=self.generator)

    def _uniform(self, n: int, low: float, high: float, device: torch.device) -> torch.Tensor:
        return low + (high - low) * self._rand(n, device)

    def affine(self, n: int, device: torch.device) -> torch.Tensor:
        """``(n, 2, 3)`` matrices mapping output to input coordinates (``affine_grid`` convention)."""
        spec = self.spec
        if spec.identity:
            return torch.eye(2, 3, device=device).expand(n, 2, 3).clone()
        scale = self._uniform(n, *spec.crop_scale, device)
        log_ratio = self._uniform(n, *(math.log(r) for r in spec.crop_ratio), device)
        ratio = torch.exp(log_ratio)
        w = torch.sqrt(scale * ratio).clamp(max=1.0)  # crop width / image width
        h = torch.sqrt(scale / ratio).clamp(max=1.0)
        cx = (2 * self._rand(n, device) - 1) * (1 - w)  # crop centre in [-1, 1] coordinates
        cy = (2 * self._rand(n, device) - 1) * (1 - h)
        hflip = torch.where(self._rand(n, device) < spec.p_hflip, -1.0, 1.0)
        vflip = torch.where(self._rand(n, device) < spec.p_vflip, -1.0, 1.0)
        angle = self._uniform(n, -spec.rotation_degrees, spec.rotation_degrees, device) * (math.pi / 180)
        angle = torch.where(self._rand(n, device) < spec.p_rotate, angle, torch.zeros_like(angle))
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.zeros(n, 2, 3, device=device)
        # input = crop(flip(rotate(output))): rotate the output grid, flip, then scale into the crop box
        theta[:, 0, 0] = w * hflip * cos
        theta[:, 0, 1] = -w * hflip * sin
        theta[:, 1, 0] = h * vflip * sin
        theta[:, 1, 1] = h * vflip * cos
        theta[:, 0, 2] = cx
        theta[:, 1, 2] = cy
        return theta

    def colour(self, x: torch.Tensor) -> torch.Tensor:
        """Brightness, contrast, saturation jitter (together, with ``p_jitter``), grayscale, on [0, 1]."""
        n, device, spec = x.shape[0], x.device, self.spec
        gray_w = self._gray.get((device, x.dtype))
        if gray_w is None:
            gray_w = torch.tensor(_GRAY, dtype=x.dtype).view(1, 3, 1, 1).to(device)
            self._gray[(device, x.dtype)] = gray_w
        if spec.p_jitter > 0:
            on = (self._rand(n, device) < spec.p_jitter).view(n, 1, 1, 1)
            fb, fc, fs = (
                self._uniform(n, *spec.factor_range(amount), device).view(n, 1, 1, 1)
                for amount in (spec.brightness, spec.contrast, spec.saturation)
            )
            y = (x * fb).clamp_(0, 1)
            mean = (y * gray_w).sum(1, keepdim=True).mean((2, 3), keepdim=True)
            y = ((y - mean) * fc + mean).clamp_(0, 1)
            gray = (y * gray_w).sum(1, keepdim=True)
            y = ((y - gray) * fs + gray).clamp_(0, 1)
            x = torch.where(on, y, x)
        if spec.p_gray > 0:
            on = (self._rand(n, device) < spec.p_gray).view(n, 1, 1, 1)
            gray = (x * gray_w).sum(1, keepdim=True).expand_as(x)
            x = torch.where(on, gray, x)
        return x

    def blur(self, x: torch.Tensor) -> torch.Tensor:
        """Gaussian blur of a random subset, each image with its own sigma (separable, grouped conv)."""
        n, spec = x.shape[0], self.spec
        if spec.p_blur <= 0:
            return x
        chosen = torch.nonzero(self._rand(n, x.device) < spec.p_blur).flatten()
        if chosen.numel() == 0:
            return x
        m, k = chosen.numel(), spec.blur_kernel
        sigma = self._uniform(m, *spec.blur_sigma, x.device).view(m, 1)
        t = torch.arange(k, device=x.device, dtype=x.dtype) - (k - 1) / 2
        kernel = torch.exp(-(t.view(1, k) ** 2) / (2 * sigma.to(x.dtype) ** 2))
        kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(3, 0)  # (m*3, k)
        sub = x[chosen].reshape(1, m * 3, *x.shape[-2:])
        sub = F.pad(sub, (k // 2, k // 2, k // 2, k // 2), mode="reflect")
        sub = F.conv2d(sub, kernel.view(m * 3, 1, 1, k), groups=m * 3)
        sub = F.conv2d(sub, kernel.view(m * 3, 1, k, 1), groups=m * 3)
        x = x.clone()
        x[chosen] = sub.reshape(m, 3, *x.shape[-2:])
        return x

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (or [0, 1] float) ``(B, 3, H, W)`` -> float32 ``(B, 3, size, size)`` in [0, 1]."""
        x = images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()
        n = x.shape[0]
        grid = F.affine_grid(self.affine(n, x.device), [n, 3, self.size, self.size], align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if not self.spec.identity:
            x = self.blur(self.colour(x))
        return x
