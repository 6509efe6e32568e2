"""What an unusable image file is, and the :class:`ImageError` that says so (part of the image policy).

:mod:`data_prep.images` opens and decodes; this module names what went wrong: a format Pillow cannot
read here (HEIC, AVIF, SVG, PDF, camera raw) with what to do about it, data that is not an image at
all (described by its detected type, never by its bytes), corrupt or truncated data, an unreadable
path. Every message is one line that names the file. Depends on Pillow only (the Space carries a copy).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image

from data_prep.filetype import HEAD_BYTES, describe_content

IMAGE_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"II*\x00", b"MM\x00*", b"BM", b"RIFF")
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif", ".jp2", ".ppm", ".pgm"}
)
RAW_SUFFIXES = frozenset({".cr2", ".cr3", ".nef", ".arw", ".dng", ".raf", ".orf", ".rw2", ".pef", ".srw"})
FTYP_BRANDS = {
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


def unsupported_format(head: bytes, suffix: str) -> str | None:
    """The name of a known format that Pillow cannot read here, from the first bytes or the suffix."""
    if head[4:8] == b"ftyp" and head[8:12] in FTYP_BRANDS:
        return FTYP_BRANDS[head[8:12]]
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
    if suffix in RAW_SUFFIXES:
        return suffix[1:].upper()
    return None


def unidentified(data: bytes, suffix: str, label: str) -> ImageError:
    """The error for data Pillow cannot identify, from what the bytes are rather than the file's name.

    A format Pillow cannot read here (HEIC, AVIF, SVG, PDF; camera raw by its extension) is named with
    what to do; data that starts like an image Pillow reads, or unrecognisable binary data under an image
    extension, is ``corrupt``; anything else (a text file named ``.jpg``, a ZIP archive) is
    ``not_an_image`` with the detected type (never the bytes).
    """
    head = data[:1024]
    kind = describe_content(data[:HEAD_BYTES])
    fmt = unsupported_format(head, "")
    if fmt is None and suffix in RAW_SUFFIXES and kind in ("TIFF image", "unknown binary"):
        fmt = suffix[1:].upper()
    if fmt is not None:
        reason = "not_an_image" if fmt in ("SVG", "PDF", "PostScript") else "corrupt"
        return ImageError(reason, format_advice(fmt, label), f"{fmt} file: Pillow cannot read it")
    if head.startswith(IMAGE_SIGNATURES) or (suffix in IMAGE_SUFFIXES and kind == "unknown binary"):
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


def format_advice(fmt: str, name: str) -> str:
    """The message for a file in format ``fmt`` that Pillow cannot read here: what to convert it to."""
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


def decode_failure(error: BaseException, name: str) -> ImageError:
    """The ``truncated`` or ``corrupt`` error for a decoder failure on the file ``name``."""
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


def frame_too_large(error: Image.DecompressionBombError, name: str) -> ImageError:
    """The error for an animation frame larger than the image (over Pillow's own limit)."""
    return ImageError(
        "decompression_bomb",
        f"{name} has a frame too large to decode safely (over Pillow's limit): downscale it",
        str(error),
    )


def read_file(source: str | Path, name: str) -> bytes:
    """The bytes of the file ``source``; an ``unreadable`` :class:`ImageError` when it cannot be read."""
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
