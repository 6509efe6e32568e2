"""Open user photos defensively: one function, one exception type with a reason a person can read.

Phones and scanners produce everything: CMYK JPEGs, 16-bit TIFFs, PNGs with alpha, EXIF-rotated
photos, 100-megapixel scans, truncated uploads, and files that are not images at all. ``load_image``
turns each of these into an RGB ``PIL.Image`` no larger than needed, or raises ``InvalidImageError``
whose message names the problem (the app shows it as is).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Our own limit replaces Pillow's decompression-bomb heuristics: reject above it, decode below it.
DEFAULT_MAX_PIXELS = 150_000_000
# Large photos are decoded at reduced scale (JPEG draft) and then shrunk to this longest side.
DEFAULT_MAX_SIDE = 1024

ImageSource = str | Path | bytes | Image.Image | np.ndarray


class InvalidImageError(ValueError):
    """An input that cannot be used as a photo; ``str(error)`` is a message for the user."""


def _describe(source: ImageSource) -> str:
    if isinstance(source, str | Path):
        return f"'{Path(source).name}'"
    return "the image"


def _reason(error: Exception) -> str:
    reason = str(error) or type(error).__name__
    if "truncated" in reason.lower():
        return "the file is truncated (an incomplete upload?)"
    return reason


def _to_8bit_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB: alpha over white, 16/32-bit and float rescaled, CMYK converted."""
    if image.mode == "RGB":
        return image
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode.startswith("I") or image.mode == "F":
        # 16-bit, 32-bit or float greyscale: Pillow's convert clips at 255; rescale instead.
        array = np.nan_to_num(np.asarray(image, dtype=np.float64))
        if image.mode.startswith("I;16"):
            low, high = 0.0, 65535.0
        else:
            low, high = float(array.min()), float(array.max())
        array = np.clip((array - low) / ((high - low) or 1.0) * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(array, mode="L").convert("RGB")
    return image.convert("RGB")


def load_image(
    source: ImageSource,
    max_side: int | None = DEFAULT_MAX_SIDE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Image.Image:
    """Open ``source`` as an upright 8-bit RGB image whose longest side is at most ``max_side``.

    Args:
        source: a file path, raw bytes, a ``PIL.Image`` or an ``(H, W[, C])`` uint8 array.
        max_side: longest side after loading (JPEGs are decoded at reduced scale, which keeps a
            100-megapixel photo fast and small in memory); ``None`` keeps the full size.
        max_pixels: images with more pixels than this are refused before decoding.

    Returns:
        An RGB ``PIL.Image``, EXIF orientation applied, alpha composited over white.

    Raises:
        InvalidImageError: empty, missing, not an image, corrupt or truncated, or too large.
    """
    name = _describe(source)
    opened = not isinstance(source, Image.Image | np.ndarray)
    if isinstance(source, np.ndarray):
        try:
            image = Image.fromarray(source)
        except (TypeError, ValueError) as error:
            raise InvalidImageError(f"{name} is an array of shape {source.shape}, not an image") from error
    elif isinstance(source, Image.Image):
        image = source
    else:
        if isinstance(source, bytes):
            if not source:
                raise InvalidImageError("the upload is empty (0 bytes)")
            stream = io.BytesIO(source)
        else:
            path = Path(source)
            if not path.is_file():
                raise InvalidImageError(f"{name} does not exist or is not a file")
            if path.stat().st_size == 0:
                raise InvalidImageError(f"{name} is empty (0 bytes)")
            stream = path
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image = Image.open(stream)
        except UnidentifiedImageError as error:
            raise InvalidImageError(
                f"{name} is not an image Pillow can read (unknown or corrupt format)"
            ) from error
        except Image.DecompressionBombError as error:
            raise InvalidImageError(f"{name} is too large to open safely ({error})") from error
        except OSError as error:
            raise InvalidImageError(f"{name} is corrupt or incomplete: {_reason(error)}") from error

    width, height = image.size
    if width < 1 or height < 1:
        raise InvalidImageError(f"{name} has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise InvalidImageError(
            f"{name} is too large: {width}x{height} = {width * height / 1e6:.0f} megapixels "
            f"(the limit is {max_pixels / 1e6:.0f} MP); please downscale it"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            if getattr(image, "n_frames", 1) > 1:
                image.seek(0)  # animated GIF/WebP, multi-page TIFF: the first frame
            if max_side and image.format == "JPEG" and max(width, height) > 2 * max_side:
                # Decode at 1/2, 1/4 or 1/8 scale directly from the DCT: a 100 MP JPEG in ~0.2 s.
                image.draft("RGB", (max_side, max_side))
            image.load()
            orientation = image.getexif().get(0x0112, 1)
            if orientation != 1:
                image = ImageOps.exif_transpose(image)
            image = _to_8bit_rgb(image)
            if max_side and max(image.size) > max_side:
                image = ImageOps.contain(image, (max_side, max_side), Image.Resampling.BILINEAR)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        if opened:
            image.close()
        raise InvalidImageError(f"{name} is corrupt or incomplete: {_reason(error)}") from error
    return image
