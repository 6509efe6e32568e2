"""The image policy: how a file becomes pixels, in one place for data_prep, the trainer and the app.

data_prep (storing a file), the trainer (decoding a data_prep dataset, an image folder or a Hub
dataset) and the app (an upload, or a reference image) all open images here, so one file gives the
same pixels everywhere. Depends on Pillow and numpy only, so that the app's Space can carry a copy
(with :mod:`data_prep.image_errors`, :mod:`data_prep.image_modes`, :mod:`data_prep.filetype` and
:mod:`data_prep.contract`, which this module imports).

1. **Open** the header and refuse, before any pixel is decoded, files over ``max_pixels``
   (:func:`default_max_pixels`: 250 megapixels, or the ``IMAGE_MAX_PIXELS`` environment variable;
   this replaces Pillow's decompression-bomb heuristics, which warn at 89.5 MP and fail at 179 MP)
   and files whose shorter side is below ``min_side`` (:data:`DEFAULT_MIN_SIDE`, 32 pixels). A format
   Pillow cannot read is named (HEIC, AVIF, SVG, PDF, camera raw) with what to do about it.
2. **Decode** the first frame, at reduced scale when the caller needs fewer pixels (``reduce_to``):
   JPEG DCT scaling (``Image.draft``) and JPEG 2000 resolution levels keep at least ``reduce_to``;
   other formats are box-reduced by an integer factor (``Image.reduce``) that keeps at least twice
   ``reduce_to``, so that the final filter still has room to work (Pillow's ``reducing_gap=2``).
   A decode that needs more than :data:`LARGE_DECODE_BYTES` runs one at a time per process, so two
   huge uploads do not double the peak memory.
3. **Convert** every mode to 8-bit RGB: 16-bit (``I;16``, and ``I`` up to 65535, e.g. 16-bit PGM)
   scaled by 255/65535; ``I`` above 65535 scaled by its maximum; float in [0, 1] scaled by 255 (other
   floats clipped to 0..255); transparency (RGBA, LA, PA, P with a transparent colour) composited
   onto white; CMYK, palette, grayscale and 1-bit converted. High bit depths are converted in strips,
   never as a full-size float array (:mod:`data_prep.image_modes`).
4. **Orient** with the EXIF orientation tag.
5. **Resize for a model** (:func:`resize_for_model`): one resize to the model's input with the
   backbone's filter and no reducing gap, which is what the saved ``ViTImageProcessor`` does.

Every failure is an :class:`ImageError` (:mod:`data_prep.image_errors`) with a data_prep reason code (``reason``), a short
``detail`` for reports, and a one-line message that names the file and says what to do.
"""

from __future__ import annotations

import io
import math
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from data_prep.contract import resampling
from data_prep.image_errors import (
    ImageError,
    decode_failure,
    describe_source,
    frame_too_large,
    read_file,
    unidentified,
)
from data_prep.image_modes import bytes_per_pixel, to_rgb8, to_rgb8_noted

#: Default pixel limit (width x height as stored in the file); ``IMAGE_MAX_PIXELS`` overrides it.
DEFAULT_MAX_PIXELS = 250_000_000
MAX_PIXELS_ENV = "IMAGE_MAX_PIXELS"
#: Images whose shorter side is below this are refused (data_prep's ``--min-side``, the app's uploads).
DEFAULT_MIN_SIDE = 32
#: Decodes needing more memory than this (pixels x bytes per pixel) run one at a time per process.
LARGE_DECODE_BYTES = 256 * 2**20

ImageSource = str | Path | bytes | Image.Image | np.ndarray | dict

_ORIENTATION_TAG = 0x0112
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_OPEN_LOCK = threading.Lock()
_LARGE_DECODES = threading.BoundedSemaphore(1)


def default_max_pixels() -> int:
    """The pixel limit: ``IMAGE_MAX_PIXELS`` from the environment, else :data:`DEFAULT_MAX_PIXELS`."""
    value = os.environ.get(MAX_PIXELS_ENV, "").strip().replace("_", "")
    if not value:
        return DEFAULT_MAX_PIXELS
    try:
        return max(1, int(float(value)))
    except ValueError:
        raise ValueError(f"{MAX_PIXELS_ENV}={value!r} is not a number of pixels (e.g. 250000000)") from None


def pil_filter(resample: int | str) -> int:
    """A Pillow resampling filter from its name (``"bicubic"``; see ``contract.RESAMPLING``) or number (3)."""
    return resampling(resample) if isinstance(resample, str) else int(resample)


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:.0f}" if pixels >= 10_000_000 else f"{pixels / 1e6:.3g}"


def _limit_message(name: str, size: tuple[int, int], max_pixels: int) -> str:
    pixels = size[0] * size[1]
    return (
        f"{name} is too large: {size[0]}x{size[1]} = {_megapixels(pixels)} megapixels, above the "
        f"{_megapixels(max_pixels)} MP limit; downscale it, or raise the limit ({MAX_PIXELS_ENV}, or "
        "--max-pixels of data_prep and the app)"
    )


@contextmanager
def _pillow_bomb_check_off() -> Iterator[None]:
    """Pillow's own decompression-bomb check, off while a header is read (our pixel limit applies)."""
    with _OPEN_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


@dataclass
class DecodedImage:
    """An image decoded under the policy.

    Attributes:
        image: upright 8-bit RGB.
        format: the file's format (``"JPEG"``, ``"PNG"``, ...; None for arrays and new images).
        original_size: (width, height) as stored in the file.
        fixes: ``(reason, detail)`` for each change a report should mention (``exif_orientation``,
            ``converted_mode``, ``multi_frame``).
        icc_profile: the embedded ICC profile when it describes RGB pixels (kept when re-encoding).
    """

    image: Image.Image
    format: str | None
    original_size: tuple[int, int]
    fixes: list[tuple[str, str]] = field(default_factory=list)
    icc_profile: bytes | None = None


@dataclass
class ImageHeader:
    """An opened image whose pixels are not decoded yet (see :func:`open_header`).

    Attributes:
        image: the lazily opened Pillow image.
        name: how messages refer to it (``'photo.jpg'``).
        format: Pillow's format name.
        size: (width, height) as stored.
        orientation: the EXIF orientation (1: upright; read from the header, 1 when unknown).
        n_frames: frames or pages in the file.
    """

    image: Image.Image
    name: str
    format: str | None
    size: tuple[int, int]
    orientation: int
    n_frames: int

    def verify(self) -> None:
        """Decode every byte (a JPEG at 1/8 scale, which still reads all of it) without keeping pixels.

        Raises:
            ImageError: ``corrupt`` or ``truncated``.
        """
        try:
            if self.format == "JPEG":
                self.image.draft(None, (max(1, self.size[0] // 8), max(1, self.size[1] // 8)))
            self.image.load()
        except Exception as error:  # noqa: BLE001 - any decoder failure is a property of the file
            raise decode_failure(error, self.name) from error

    def decode(self, reduce_to: int | tuple[int, int] | None = None) -> DecodedImage:
        """Decode to upright 8-bit RGB (first frame), at reduced scale when ``reduce_to`` allows.

        Args:
            reduce_to: what the caller will resize to: an int is a longest side, a ``(width, height)``
                pair a size both sides must keep (a model's input). None decodes at full size.

        Raises:
            ImageError: ``corrupt``, ``truncated`` or ``decompression_bomb`` (a frame over the limit).
        """
        try:
            return self._decode(reduce_to)
        except ImageError:
            raise
        except Image.DecompressionBombError as error:  # an animation frame larger than the image
            raise frame_too_large(error, self.name) from error
        except MemoryError as error:
            raise ImageError(
                "decompression_bomb",
                f"{self.name} does not fit in memory at {self.size[0]}x{self.size[1]}: downscale it",
                "out of memory while decoding",
            ) from error
        except Exception as error:  # noqa: BLE001 - any decoder failure is a property of the file
            raise decode_failure(error, self.name) from error

    def _decode(self, reduce_to: int | tuple[int, int] | None) -> DecodedImage:
        image = self.image
        fixes: list[tuple[str, str]] = []
        if self.n_frames > 1:
            if image.tell() != 0:
                image.seek(0)
            fixes.append(("multi_frame", f"first of {self.n_frames} frames kept"))
        target = _target_size(self.size, reduce_to)
        if target is not None and _not_loaded(image):
            if self.format == "JPEG":
                image.draft(None, target)  # DCT scaling: 1/2, 1/4 or 1/8, never below target
            elif self.format == "JPEG2000":
                levels = int(math.floor(math.log2(max(1.0, min(s / t for s, t in zip(self.size, target))))))
                if levels > 0:
                    image.reduce = levels  # type: ignore[assignment,method-assign] # wavelet levels
        large = image.size[0] * image.size[1] * bytes_per_pixel(image.mode) > LARGE_DECODE_BYTES
        with _LARGE_DECODES if large else nullcontext():
            image.load()
            # read after loading (a PNG's EXIF may follow its pixel data); in-memory images (no format)
            # are taken as they are, so an image this module returned is never rotated twice
            orientation = exif_orientation(image) if self.format else 1
            icc = image.info.get("icc_profile") if image.mode in ("RGB", "RGBA", "RGBX") else None
            factor = _reduce_factor(image.size, target)
            rgb, note = to_rgb8_noted(image, factor)
        if note:
            fixes.append(("converted_mode", note))
        if orientation in _TRANSPOSE:
            rgb = rgb.transpose(_TRANSPOSE[orientation])
            fixes.append(("exif_orientation", f"orientation {orientation} applied"))
        if rgb is not self.image:
            rgb.info.pop("exif", None)  # the pixels are upright now
        return DecodedImage(rgb, self.format, self.size, fixes, icc)


def _not_loaded(image: Image.Image) -> bool:
    return bool(getattr(image, "tile", None))


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation of ``image`` (1, upright, when absent or unreadable)."""
    try:
        return int(image.getexif().get(_ORIENTATION_TAG, 1) or 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not make the image unusable
        return 1


def _target_size(size: tuple[int, int], reduce_to: int | tuple[int, int] | None) -> tuple[int, int] | None:
    """The smallest (width, height) decoding may produce, or None for full size."""
    if not reduce_to:
        return None
    if isinstance(reduce_to, int):
        factor = reduce_to / max(size)
        if factor >= 1:
            return None
        return max(1, int(size[0] * factor)), max(1, int(size[1] * factor))
    width, height = (int(v) for v in reduce_to)
    return max(1, width), max(1, height)


def _reduce_factor(size: tuple[int, int], target: tuple[int, int] | None) -> int:
    """Integer box-reduction factor that keeps at least twice ``target`` on both sides (1: none)."""
    if target is None:
        return 1
    return max(1, int(min(size[0] / (2 * target[0]), size[1] / (2 * target[1]))))


def _open_source(source: ImageSource, label: str, suffix: str) -> Image.Image:
    """``source`` opened lazily as a Pillow image (header only for files and bytes)."""
    if isinstance(source, dict):
        if source.get("bytes") is not None:
            suffix = suffix or Path(str(source.get("path") or "")).suffix.lower()
            source = source["bytes"]
        elif source.get("path"):
            source = source["path"]
        else:
            raise ImageError("unreadable", f"{label} has neither bytes nor a path", "no bytes, no path")
    if isinstance(source, np.ndarray):
        try:
            return Image.fromarray(source)
        except (TypeError, ValueError) as error:
            raise ImageError(
                "not_an_image", f"{label} is an array of shape {source.shape}, not an image", "bad array"
            ) from error
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, str | Path):
        suffix = suffix or Path(source).suffix.lower()
        data = read_file(source, label)
    else:
        data = bytes(source)
    if not data:
        raise ImageError("zero_byte", f"{label} is empty (0 bytes): use the complete file", "0 bytes")
    try:
        with _pillow_bomb_check_off():
            return Image.open(io.BytesIO(data))
    except UnidentifiedImageError as error:
        raise unidentified(data, suffix, label) from error
    except Exception as error:  # noqa: BLE001 - a broken header is a property of the file
        raise decode_failure(error, label) from error


def _check_size(size: tuple[int, int], label: str, limit: int, min_side: int) -> None:
    """Refuse ``size`` (width, height) above the pixel ``limit`` or with a side below ``min_side``."""
    width, height = size
    if width * height > limit:
        raise ImageError(
            "decompression_bomb",
            _limit_message(label, size, limit),
            f"{width}x{height} = {_megapixels(width * height)} MP > limit {_megapixels(limit)} MP",
        )
    if width < 1 or height < 1 or min(width, height) < min_side:
        raise ImageError(
            "too_small",
            f"{label} is too small: {width}x{height} pixels, the shorter side must be at least {min_side}; "
            "use a larger or closer photo",
            f"{width}x{height} < min side {min_side}",
        )


def open_header(
    source: ImageSource,
    *,
    name: str | None = None,
    max_pixels: int | None = None,
    min_side: int = 0,
) -> ImageHeader:
    """Open ``source`` (header only) and apply the limits that need no pixels.

    Args:
        source: a path, raw bytes, a ``datasets`` image dict (``{"bytes", "path"}``), a ``PIL.Image``
            or an ``(H, W[, C])`` array.
        name: file name for messages (default: taken from ``source``).
        max_pixels: pixel limit (default :func:`default_max_pixels`).
        min_side: refuse images whose shorter side is below this (0: no minimum).

    Raises:
        ImageError: empty, unreadable, not an image (the format named when known), corrupt, too
            large or too small.
    """
    label = describe_source(source, name)
    suffix = Path(str(name)).suffix.lower() if name else ""
    image = _open_source(source, label, suffix)
    _check_size(image.size, label, max_pixels or default_max_pixels(), min_side)
    try:
        # EXIF read before decoding where it sits in the header (reading a PNG's would decode it)
        orientation = exif_orientation(image) if image.format in ("JPEG", "TIFF", "MPO", "WEBP") else 1
        n_frames = int(getattr(image, "n_frames", 1) or 1)  # a GIF is scanned to count its frames
    except Image.DecompressionBombError as error:  # an animation frame larger than the image
        raise frame_too_large(error, label) from error
    except Exception as error:  # noqa: BLE001 - a broken header is a property of the file
        raise decode_failure(error, label) from error
    return ImageHeader(
        image=image,
        name=label,
        format=image.format,
        size=image.size,
        orientation=orientation,
        n_frames=n_frames,
    )


def decode_image(
    source: ImageSource,
    *,
    name: str | None = None,
    reduce_to: int | tuple[int, int] | None = None,
    max_pixels: int | None = None,
    min_side: int = 0,
) -> DecodedImage:
    """Open and decode ``source`` under the policy (see the module docstring).

    Args:
        source: see :func:`open_header`.
        name: file name for messages.
        reduce_to: see :meth:`ImageHeader.decode`.
        max_pixels: pixel limit (default :func:`default_max_pixels`).
        min_side: refuse images whose shorter side is below this.

    Raises:
        ImageError: see :func:`open_header` and :meth:`ImageHeader.decode`.
    """
    header = open_header(source, name=name, max_pixels=max_pixels, min_side=min_side)
    return header.decode(reduce_to)


def open_image(source: ImageSource, **options: Any) -> Image.Image:
    """:func:`decode_image`, returning only the upright 8-bit RGB image.

    Args:
        source: see :func:`open_header`.
        **options: :func:`decode_image`'s keywords (``name``, ``reduce_to``, ``max_pixels``, ``min_side``).
    """
    return decode_image(source, **options).image


def _height_width(size: int | tuple[int, int]) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def resize_for_model(
    image: Image.Image, size: int | tuple[int, int], resample: int | str = "bilinear"
) -> Image.Image:
    """One resize to a model's input, as the saved ``ViTImageProcessor`` does it (no reducing gap).

    Args:
        image: an RGB image (from :func:`open_image`).
        size: the input side, or ``(height, width)``.
        resample: the backbone's filter (name or Pillow number).
    """
    height, width = _height_width(size)
    if image.size == (width, height):
        return image
    return image.resize((width, height), pil_filter(resample))


def load_for_model(
    source: ImageSource,
    size: int | tuple[int, int],
    resample: int | str = "bilinear",
    *,
    name: str | None = None,
    max_pixels: int | None = None,
    min_side: int = 0,
) -> np.ndarray:
    """``source`` as the model sees it: ``(height, width, 3)`` uint8 (decoded, reduced, resized once).

    The trainer's decoded-image cache and the app's predictor both call this (the app in two steps:
    :func:`open_model_image`, then :func:`resize_for_model`), so the same file gives the same pixels.
    """
    image = open_model_image(source, size, name=name, max_pixels=max_pixels, min_side=min_side)
    return np.asarray(resize_for_model(image, size, resample), dtype=np.uint8)


def open_model_image(
    source: ImageSource,
    size: int | tuple[int, int],
    *,
    name: str | None = None,
    max_pixels: int | None = None,
    min_side: int = 0,
) -> Image.Image:
    """:func:`open_image` with the reduced-scale decoding a model input of ``size`` allows."""
    height, width = _height_width(size)
    return open_image(source, name=name, reduce_to=(width, height), max_pixels=max_pixels, min_side=min_side)


__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MIN_SIDE",
    "MAX_PIXELS_ENV",
    "DecodedImage",
    "ImageError",
    "ImageHeader",
    "decode_image",
    "default_max_pixels",
    "describe_source",
    "exif_orientation",
    "load_for_model",
    "open_header",
    "open_image",
    "open_model_image",
    "pil_filter",
    "resize_for_model",
    "to_rgb8",
]
