"""Open user photos with the project's image policy (``data_prep/images.py``, shared with data_prep
and the trainer), so that an upload gives the model the same pixels as the same file in training.

Phones and scanners produce everything: CMYK JPEGs, 16-bit TIFFs, PNGs with alpha, EXIF-rotated
photos, 100-megapixel scans, truncated uploads, HEIC files and files that are not images at all.
``load_image`` turns each of these into an upright 8-bit RGB ``PIL.Image`` no larger than needed, or
raises ``InvalidImageError`` whose message (one line, naming the file and what to do) the app shows
as is. The model's own input path is ``Predictor.open_photo``/``open_model_image``.
"""

from __future__ import annotations

from PIL import Image, ImageOps

from data_prep.images import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MIN_SIDE,
    ImageError,
    ImageSource,
    default_max_pixels,
    open_image,
    open_model_image,
    resize_for_model,
)

# Thumbnails and previews: longest side after loading.
DEFAULT_MAX_SIDE = 1024

InvalidImageError = ImageError  # the app's name for the policy's error (a ValueError)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MAX_SIDE",
    "DEFAULT_MIN_SIDE",
    "ImageSource",
    "InvalidImageError",
    "default_max_pixels",
    "load_image",
    "open_model_image",
    "resize_for_model",
]


def load_image(
    source: ImageSource,
    max_side: int | None = DEFAULT_MAX_SIDE,
    max_pixels: int | None = None,
    min_side: int = 0,
) -> Image.Image:
    """Open ``source`` as an upright 8-bit RGB image whose longest side is at most ``max_side``.

    Args:
        source: a file path, raw bytes, a ``PIL.Image`` or an ``(H, W[, C])`` uint8 array.
        max_side: longest side after loading (large files are decoded at reduced scale, which keeps a
            100-megapixel photo fast and small in memory); ``None`` keeps the full size.
        max_pixels: images with more pixels than this are refused before decoding (default: the
            shared limit, ``IMAGE_MAX_PIXELS`` or 250 megapixels).
        min_side: images whose shorter side is below this are refused.

    Returns:
        An RGB ``PIL.Image``, EXIF orientation applied, alpha composited over white.

    Raises:
        InvalidImageError: empty, missing, not an image (the format named when known), corrupt or
            truncated, too large or too small.
    """
    image = open_image(source, reduce_to=max_side or None, max_pixels=max_pixels, min_side=min_side)
    if max_side and max(image.size) > max_side:
        image = ImageOps.contain(image, (max_side, max_side), Image.Resampling.BILINEAR)
    return image
