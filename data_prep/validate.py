"""Per-file validation and normalisation: one file in, encoded RGB bytes (or a reason to skip) out.

:func:`process_image` is a pure, picklable function so that the builder can run it in worker
processes. It never raises for a bad file: everything becomes a reason code (see
:mod:`data_prep.findings`). Steps:

1. read the bytes (empty -> ``zero_byte``), hash them (BLAKE2b) for duplicate and leakage checks;
2. identify with Pillow, treating its decompression-bomb warning as an error;
3. reject images whose shorter side is below ``min_side``;
4. fast path: a small RGB JPEG/PNG/WebP with no EXIF rotation is verified (a JPEG at 1/8 scale,
   which still reads every byte) and stored as its original bytes;
5. otherwise: ``draft`` (JPEG DCT scaling, so a 6000-pixel scan decodes at 1/2-1/8 size), load,
   first frame, EXIF transpose, convert to 8-bit RGB (CMYK, 16-bit, palette, grayscale, alpha
   flattened onto white), downsize to ``max_side`` and re-encode as JPEG.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = frozenset(
    {
        ".jpg",
        ".jpeg",
        ".jpe",
        ".png",
        ".webp",
        ".tif",
        ".tiff",
        ".bmp",
        ".gif",
        ".jp2",
        ".ppm",
        ".pgm",
        ".heic",
    }
)
_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"II*\x00", b"MM\x00*", b"BM", b"RIFF")
_KEEP_ORIGINAL_FORMATS = frozenset({"JPEG", "PNG", "WEBP"})
_ORIENTATION_TAG = 0x0112


@dataclass
class ProcessResult:
    """Outcome of :func:`process_image`.

    Attributes:
        image_bytes: encoded RGB image to store, or ``None`` when the file is skipped.
        digest: hex BLAKE2b digest of the original file bytes (``None`` when unreadable/empty).
        skip: ``(reason, detail)`` when the file is left out.
        fixes: ``(reason, detail)`` for each fix applied to a kept file.
        original_size: (width, height) as stored in the file.
        size: (width, height) stored in the dataset.
        reencoded: False when the original bytes are stored unchanged.
    """

    image_bytes: bytes | None = None
    digest: str | None = None
    skip: tuple[str, str] | None = None
    fixes: list[tuple[str, str]] = field(default_factory=list)
    original_size: tuple[int, int] | None = None
    size: tuple[int, int] | None = None
    reencoded: bool = False

    @property
    def resized(self) -> bool:
        return (
            self.size is not None
            and self.original_size is not None
            and max(self.size) < max(self.original_size)
        )


def _skip(result: ProcessResult, reason: str, detail: str) -> ProcessResult:
    result.skip = (reason, detail)
    return result


def _looks_like_image(name: str, head: bytes) -> bool:
    suffix = name[name.rfind(".") :].lower() if "." in name else ""
    return suffix in IMAGE_EXTENSIONS or head.startswith(_SIGNATURES)


def _to_rgb(im: Image.Image) -> tuple[Image.Image, str | None]:
    """Convert any Pillow mode to 8-bit RGB; returns the image and a note when something changed."""
    mode = im.mode
    if mode == "RGB":
        return im, None
    if mode.startswith("I") or mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        if mode.startswith("I;16") or (mode == "I" and arr.max(initial=0) > 255):
            top = 65535.0 if arr.max(initial=0) <= 65535 else float(arr.max())
            arr = arr * (255.0 / top)
        elif mode == "F" and arr.max(initial=0) <= 1.0:
            arr = arr * 255.0
        gray = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")
        return gray.convert("RGB"), f"{mode} (high bit depth) scaled to 8-bit RGB"
    if mode == "P" and "transparency" not in im.info:
        return im.convert("RGB"), "palette (P) converted to RGB"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La", "P"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        flat = Image.alpha_composite(white, rgba).convert("RGB")
        return flat, f"{mode}: transparency flattened onto white"
    note = {"CMYK": "CMYK converted to RGB", "L": "grayscale converted to RGB", "1": "1-bit converted to RGB"}
    return im.convert("RGB"), note.get(mode, f"{mode} converted to RGB")


def process_image(path: str, max_side: int = 1024, min_side: int = 32, quality: int = 90) -> ProcessResult:
    """Validate one file and return the bytes to store (see the module docstring for the steps).

    Args:
        path: file to read.
        max_side: longer side after downsizing; 0 keeps the original size.
        min_side: images whose shorter side is below this are skipped as ``too_small``.
        quality: JPEG quality for re-encoded images.

    Returns:
        A :class:`ProcessResult`; ``skip`` is set when the file must be left out. Never raises
        for bad file contents.
    """
    result = ProcessResult()
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        return _skip(result, "unreadable", f"{type(exc).__name__}: {exc.strerror or exc}")
    if not data:
        return _skip(result, "zero_byte", "0 bytes")
    result.digest = hashlib.blake2b(data, digest_size=16).hexdigest()
    tolerant = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # truncated files must fail, whatever another library set
    try:
        return _decode(data, path, result, max_side, min_side, quality)
    except Image.DecompressionBombError as exc:
        return _skip(result, "decompression_bomb", str(exc).split(" could be")[0].rstrip(","))
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a property of the file
        text = f"{type(exc).__name__}: {exc}"
        reason = "truncated" if "truncated" in str(exc).lower() else "corrupt"
        return _skip(result, reason, text[:300])
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = tolerant


def _decode(
    data: bytes, path: str, result: ProcessResult, max_side: int, min_side: int, quality: int
) -> ProcessResult:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data))
        except Image.DecompressionBombWarning as exc:
            raise Image.DecompressionBombError(str(exc)) from None
        except UnidentifiedImageError:
            if _looks_like_image(path, data[:16]):
                return _skip(result, "corrupt", "Pillow cannot identify the image data")
            return _skip(result, "not_an_image", f"starts with {data[:8]!r}")
    result.original_size = im.size
    if min(im.size) < min_side:
        return _skip(result, "too_small", f"{im.size[0]}x{im.size[1]} < min side {min_side}")
    orientation = int(im.getexif().get(_ORIENTATION_TAG, 1) or 1)
    n_frames = int(getattr(im, "n_frames", 1))
    small = not max_side or max(im.size) <= max_side
    if (
        small
        and im.mode == "RGB"
        and im.format in _KEEP_ORIGINAL_FORMATS
        and orientation == 1
        and n_frames == 1
    ):
        if im.format == "JPEG":
            im.draft(None, (max(1, im.size[0] // 8), max(1, im.size[1] // 8)))
        im.load()
        result.image_bytes, result.size = data, result.original_size
        return result

    if max_side and im.format == "JPEG" and not small:
        factor = max_side / max(im.size)
        im.draft(None, (max(1, int(im.size[0] * factor)), max(1, int(im.size[1] * factor))))
    im.load()
    if n_frames > 1:
        result.fixes.append(("multi_frame", f"first of {n_frames} frames kept"))
    if orientation != 1:
        im = ImageOps.exif_transpose(im)
        result.fixes.append(("exif_orientation", f"orientation {orientation} applied"))
    im, note = _to_rgb(im)
    if note:
        result.fixes.append(("converted_mode", note))
    if max_side and max(im.size) > max_side:
        factor = max_side / max(im.size)
        new = (max(1, round(im.size[0] * factor)), max(1, round(im.size[1] * factor)))
        im = im.resize(new, Image.Resampling.LANCZOS, reducing_gap=2.0)
    out = io.BytesIO()
    im.save(out, format="JPEG", quality=quality, icc_profile=im.info.get("icc_profile"))
    result.image_bytes, result.size, result.reencoded = out.getvalue(), im.size, True
    return result
