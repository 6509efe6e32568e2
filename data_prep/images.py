"""The image policy: how a file becomes pixels, in one place for data_prep, the trainer and the app.

data_prep (storing a file), the trainer (decoding a data_prep dataset, an image folder or a Hub
dataset) and the app (an upload, or a reference image) all open images here, so one file gives the
same pixels everywhere. Depends on Pillow and numpy only, so that the app's Space can carry a copy.

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
   never as a full-size float array.
4. **Orient** with the EXIF orientation tag.
5. **Resize for a model** (:func:`resize_for_model`): one resize to the model's input with the
   backbone's filter and no reducing gap, which is what the saved ``ViTImageProcessor`` does.

Every failure is an :class:`ImageError` with a data_prep reason code (``reason``), a short
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

from data_prep.filetype import HEAD_BYTES, describe_content

#: Default pixel limit (width x height as stored in the file); ``IMAGE_MAX_PIXELS`` overrides it.
DEFAULT_MAX_PIXELS = 250_000_000
MAX_PIXELS_ENV = "IMAGE_MAX_PIXELS"
#: Images whose shorter side is below this are refused (data_prep's ``--min-side``, the app's uploads).
DEFAULT_MIN_SIDE = 32
#: Decodes needing more memory than this (pixels x bytes per pixel) run one at a time per process.
LARGE_DECODE_BYTES = 256 * 2**20
_STRIP_PIXELS = 1 << 22  # high-bit-depth conversion works on strips of about 4 M pixels

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
# bytes per pixel of Pillow's in-memory storage (RGB is stored as 4 bytes)
_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}
_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
_IMAGE_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"II*\x00", b"MM\x00*", b"BM", b"RIFF")
_IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif", ".jp2", ".ppm", ".pgm"}
)
_RAW_SUFFIXES = frozenset({".cr2", ".cr3", ".nef", ".arw", ".dng", ".raf", ".orf", ".rw2", ".pef", ".srw"})
_FTYP_BRANDS = {
    b"heic": "HEIC",
    b"heix": "HEIC",
    b"heim": "HEIC",
    b"heis": "HEIC",
    b"hevc": "HEIC",
    b"hevx": "HEIC",
    b"mif1": "HEIF",
    b"msf1": "HEIF",
    b"avif": "AVIF",
    b"avis": "AVIF",
    b"crx ": "CR3",
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
    """A Pillow resampling filter from its name (``"bicubic"``) or number (3)."""
    if isinstance(resample, str):
        return _FILTERS.get(resample.lower(), Image.Resampling.BILINEAR)
    return int(resample)


class ImageError(ValueError):
    """An image that cannot be used; ``str(error)`` is one line naming the file and what to do.

    Attributes:
        reason: a data_prep reason code (``zero_byte``, ``unreadable``, ``not_an_image``, ``corrupt``,
            ``truncated``, ``decompression_bomb``, ``too_small``).
        detail: a short technical detail for reports.
    """

    def __init__(self, reason: str, message: str, detail: str = ""):
        super().__init__(message)
        self.reason = reason
        self.detail = detail or message


def describe_source(source: Any, name: str | None = None) -> str:
    """How messages refer to ``source``: ``'photo.jpg'`` for a path, else ``the upload``/``the image``."""
    if name:
        return f"'{Path(str(name)).name}'"
    if isinstance(source, dict):
        path = source.get("path")
        return f"'{Path(str(path)).name}'" if path else "the image"
    if isinstance(source, str | Path):
        return f"'{Path(source).name}'"
    return "the upload" if isinstance(source, bytes) else "the image"


def _unsupported_format(head: bytes, suffix: str) -> str | None:
    """The name of a known format that Pillow cannot read here, from the first bytes or the suffix."""
    if head[4:8] == b"ftyp" and head[8:12] in _FTYP_BRANDS:
        return _FTYP_BRANDS[head[8:12]]
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith(b"<svg") or (text.startswith(b"<?xml") and b"<svg" in head.lower()):
        return "SVG"
    if head.startswith(b"%PDF"):
        return "PDF"
    if head.startswith(b"%!PS"):
        return "PostScript"
    by_suffix = {".heic": "HEIC", ".heif": "HEIF", ".avif": "AVIF", ".svg": "SVG", ".pdf": "PDF"}
    if suffix in by_suffix:
        return by_suffix[suffix]
    if suffix in _RAW_SUFFIXES:
        return suffix[1:].upper()
    return None


def _unidentified(data: bytes, suffix: str, label: str) -> ImageError:
    """The error for data Pillow cannot identify, from what the bytes are rather than the file's name.

    A format Pillow cannot read here (HEIC, AVIF, SVG, PDF; camera raw by its extension) is named with
    what to do; data that starts like an image Pillow reads, or unrecognisable binary data under an image
    extension, is ``corrupt``; anything else (a text file named ``.jpg``, a ZIP archive) is
    ``not_an_image`` with the detected type (never the bytes).
    """
    head = data[:1024]
    kind = describe_content(data[:HEAD_BYTES])
    fmt = _unsupported_format(head, "")
    if fmt is None and suffix in _RAW_SUFFIXES and kind in ("TIFF image", "unknown binary"):
        fmt = suffix[1:].upper()
    if fmt is not None:
        reason = "not_an_image" if fmt in ("SVG", "PDF", "PostScript") else "corrupt"
        return ImageError(reason, _format_advice(fmt, label), f"{fmt} file: Pillow cannot read it")
    if head.startswith(_IMAGE_SIGNATURES) or (suffix in _IMAGE_SUFFIXES and kind == "unknown binary"):
        return ImageError(
            "corrupt",
            f"{label} is not an image Pillow can read: its data does not match an image format "
            "(corrupt, or a wrong extension); re-export or re-copy the file",
            "Pillow cannot identify the image data",
        )
    return ImageError(
        "not_an_image",
        f"{label} is not an image (detected type: {kind}): remove it, or use a JPEG, PNG, WebP or TIFF file",
        f"detected type: {kind}",
    )


def _format_advice(fmt: str, name: str) -> str:
    if fmt in ("HEIC", "HEIF"):
        return (
            f"{name} is a {fmt} photo (the iPhone default), which Pillow cannot read here: convert it to "
            "JPEG or PNG (iPhone: Settings > Camera > Formats > Most Compatible) and use that"
        )
    if fmt == "AVIF":
        return (
            f"{name} is an AVIF image, which this Pillow cannot read: convert it to JPEG or PNG and use that"
        )
    if fmt == "SVG":
        return (
            f"{name} is an SVG drawing (vector graphics), not a photo: export it as PNG or JPEG and use that"
        )
    if fmt in ("PDF", "PostScript"):
        return f"{name} is a {fmt} document, not an image: export the page as PNG or JPEG and use that"
    return (
        f"{name} is a {fmt} camera raw file, which Pillow cannot read: export it as JPEG or TIFF from "
        "the camera software and use that"
    )


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:.0f}" if pixels >= 10_000_000 else f"{pixels / 1e6:.3g}"


def _limit_message(name: str, size: tuple[int, int], max_pixels: int) -> str:
    pixels = size[0] * size[1]
    return (
        f"{name} is too large: {size[0]}x{size[1]} = {_megapixels(pixels)} megapixels, above the "
        f"{_megapixels(max_pixels)} MP limit; downscale it, or raise the limit ({MAX_PIXELS_ENV}, or "
        "--max-pixels of data_prep and the app)"
    )


def _decode_failure(error: BaseException, name: str) -> ImageError:
    text = str(error) or type(error).__name__
    if "truncated" in text.lower() or "premature end" in text.lower():
        return ImageError(
            "truncated",
            f"{name} is corrupt or incomplete: the file is truncated (an incomplete upload or copy?); "
            "use the complete file",
            f"{type(error).__name__}: {text}"[:300],
        )
    return ImageError(
        "corrupt",
        f"{name} is corrupt or incomplete ({type(error).__name__}: {text[:120]}); re-export or re-copy the file",
        f"{type(error).__name__}: {text}"[:300],
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


def _bytes_per_pixel(mode: str) -> int:
    return _BYTES_PER_PIXEL.get(mode, 4)


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
            raise _decode_failure(error, self.name) from error

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
            raise ImageError(
                "decompression_bomb",
                f"{self.name} has a frame too large to decode safely (over Pillow's limit): downscale it",
                str(error),
            ) from error
        except MemoryError as error:
            raise ImageError(
                "decompression_bomb",
                f"{self.name} does not fit in memory at {self.size[0]}x{self.size[1]}: downscale it",
                "out of memory while decoding",
            ) from error
        except Exception as error:  # noqa: BLE001 - any decoder failure is a property of the file
            raise _decode_failure(error, self.name) from error

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
        large = image.size[0] * image.size[1] * _bytes_per_pixel(image.mode) > LARGE_DECODE_BYTES
        with _LARGE_DECODES if large else nullcontext():
            image.load()
            # read after loading (a PNG's EXIF may follow its pixel data); in-memory images (no format)
            # are taken as they are, so an image this module returned is never rotated twice
            orientation = exif_orientation(image) if self.format else 1
            icc = image.info.get("icc_profile") if image.mode in ("RGB", "RGBA", "RGBX") else None
            factor = _reduce_factor(image.size, target)
            rgb, note = _to_rgb8(image, factor)
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


def _high_depth_scale(image: Image.Image) -> float:
    mode = image.mode
    if mode.startswith("I;16"):
        return 255.0 / 65535.0
    low, high = image.getextrema()  # type: ignore[misc]
    if mode == "I":
        if high <= 255:
            return 1.0
        return 255.0 / 65535.0 if high <= 65535 else 255.0 / float(high)
    return 255.0 if high is not None and high <= 1.0 else 1.0  # F


def _high_depth_to_l(image: Image.Image, factor: int) -> Image.Image:
    """``I;16*``, ``I`` or ``F`` -> 8-bit ``L`` (box-reduced by ``factor``), strip by strip."""
    scale = _high_depth_scale(image)
    width, height = image.size
    out = Image.new("L", (-(-width // factor), -(-height // factor)))
    rows = max(factor, (_STRIP_PIXELS // max(1, width)) // factor * factor)
    for top in range(0, height, rows):
        strip = image.crop((0, top, width, min(height, top + rows)))
        if image.mode == "F":
            values = np.asarray(strip.reduce(factor) if factor > 1 else strip, dtype=np.float32)
            values = np.nan_to_num(values * scale, nan=0.0, posinf=255.0, neginf=0.0)
            gray = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))
        else:  # integers: Pillow's C code (32-bit, box mean), then a rounded, clipped linear map
            strip = strip.convert("I") if strip.mode != "I" else strip
            strip = strip.reduce(factor) if factor > 1 else strip
            gray = strip.point(lambda value: value * scale + 0.5, "L")
        out.paste(gray, (0, top // factor))
    return out


def _reduce(image: Image.Image, factor: int) -> Image.Image:
    if factor <= 1:
        return image
    if image.mode in ("RGBA", "LA"):  # average premultiplied colours: transparent pixels add no colour
        premultiplied = {"RGBA": "RGBa", "LA": "La"}[image.mode]
        return image.convert(premultiplied).reduce(factor).convert(image.mode)
    try:
        return image.reduce(factor)
    except ValueError:  # a mode Pillow cannot reduce
        return image.convert("RGB").reduce(factor)


def _flatten(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def _to_rgb8(image: Image.Image, factor: int = 1) -> tuple[Image.Image, str | None]:
    """Any Pillow mode -> 8-bit RGB, box-reduced by ``factor``; returns a note when the mode changed."""
    mode = image.mode
    if mode.startswith("I") or mode == "F":
        gray = _high_depth_to_l(image, factor)
        return gray.convert("RGB"), f"{mode} (high bit depth) scaled to 8-bit RGB"
    if mode == "RGB":
        return _reduce(image, factor), None
    if mode == "P" and "transparency" not in image.info:
        return _reduce(image.convert("RGB"), factor), "palette (P) converted to RGB"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La", "P"):
        if mode in ("PA", "P"):
            image = image.convert("RGBA")
        elif mode in ("RGBa", "La"):
            image = image.convert({"RGBa": "RGBA", "La": "LA"}[mode])
        return _flatten(_reduce(image, factor)), f"{mode}: transparency flattened onto white"
    if mode == "1":
        image = image.convert("L")
    notes = {
        "CMYK": "CMYK converted to RGB",
        "L": "grayscale converted to RGB",
        "1": "1-bit converted to RGB",
    }
    return _reduce(image, factor).convert("RGB"), notes.get(mode, f"{mode} converted to RGB")


def to_rgb8(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB under the policy (no EXIF, no resizing)."""
    return _to_rgb8(image)[0]


def _read(source: str | Path, name: str) -> bytes:
    path = Path(source)
    try:
        data = path.read_bytes()
    except FileNotFoundError as error:
        raise ImageError("unreadable", f"{name} does not exist: check the path", "file not found") from error
    except IsADirectoryError as error:
        raise ImageError("unreadable", f"{name} is a folder, not an image file", "a folder") from error
    except OSError as error:
        raise ImageError(
            "unreadable",
            f"{name} cannot be read ({type(error).__name__}: {error.strerror or error}); check its permissions",
            f"{type(error).__name__}: {error.strerror or error}",
        ) from error
    return data


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
    limit = max_pixels or default_max_pixels()
    suffix = Path(str(name)).suffix.lower() if name else ""
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
            image: Image.Image = Image.fromarray(source)
        except (TypeError, ValueError) as error:
            raise ImageError(
                "not_an_image", f"{label} is an array of shape {source.shape}, not an image", "bad array"
            ) from error
    elif isinstance(source, Image.Image):
        image = source
    else:
        if isinstance(source, str | Path):
            suffix = suffix or Path(source).suffix.lower()
            data = _read(source, label)
        else:
            data = bytes(source)
        if not data:
            raise ImageError("zero_byte", f"{label} is empty (0 bytes): use the complete file", "0 bytes")
        try:
            with _pillow_bomb_check_off():
                image = Image.open(io.BytesIO(data))
        except UnidentifiedImageError as error:
            raise _unidentified(data, suffix, label) from error
        except Exception as error:  # noqa: BLE001 - a broken header is a property of the file
            raise _decode_failure(error, label) from error
    width, height = image.size
    if width * height > limit:
        raise ImageError(
            "decompression_bomb",
            _limit_message(label, image.size, limit),
            f"{width}x{height} = {_megapixels(width * height)} MP > limit {_megapixels(limit)} MP",
        )
    if width < 1 or height < 1 or min(width, height) < min_side:
        raise ImageError(
            "too_small",
            f"{label} is too small: {width}x{height} pixels, the shorter side must be at least {min_side}; "
            "use a larger or closer photo",
            f"{width}x{height} < min side {min_side}",
        )
    try:
        # EXIF read before decoding where it sits in the header (reading a PNG's would decode it)
        orientation = exif_orientation(image) if image.format in ("JPEG", "TIFF", "MPO", "WEBP") else 1
        n_frames = int(getattr(image, "n_frames", 1) or 1)  # a GIF is scanned to count its frames
    except Image.DecompressionBombError as error:  # an animation frame larger than the image
        raise ImageError(
            "decompression_bomb",
            f"{label} has a frame too large to decode safely (over Pillow's limit): downscale it",
            str(error),
        ) from error
    except Exception as error:  # noqa: BLE001 - a broken header is a property of the file
        raise _decode_failure(error, label) from error
    return ImageHeader(
        image=image,
        name=label,
        format=image.format,
        size=(width, height),
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


def open_image(
    source: ImageSource,
    *,
    name: str | None = None,
    reduce_to: int | tuple[int, int] | None = None,
    max_pixels: int | None = None,
    min_side: int = 0,
) -> Image.Image:
    """:func:`decode_image`, returning only the upright 8-bit RGB image."""
    return decode_image(
        source, name=name, reduce_to=reduce_to, max_pixels=max_pixels, min_side=min_side
    ).image


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
