"""Per-file validation and normalisation: one file in, encoded RGB bytes (or a reason to skip) out.

:func:`process_image` is a pure, picklable function so that the builder can run it in worker
processes. It never raises for a bad file: everything becomes a reason code (see
:mod:`data_prep.findings`). Steps:

1. read the bytes (empty -> ``zero_byte``), hash them (BLAKE2b) for duplicate and leakage checks;
2. open the header with the project's image policy (:mod:`data_prep.images`, shared with the trainer
   and the app): files over the pixel limit (``max_pixels``, default 250 MP or ``IMAGE_MAX_PIXELS``)
   are skipped as ``decompression_bomb``, images whose shorter side is below ``min_side`` as
   ``too_small``, formats Pillow cannot read are named;
3. fast path: a small RGB JPEG/PNG/WebP with no EXIF rotation is verified (a JPEG at 1/8 scale,
   which still reads every byte) and stored as its original bytes;
4. otherwise: decode under the policy at reduced scale (JPEG DCT scaling, so a 100-megapixel scan
   decodes at 1/2-1/8 size; other formats box-reduced to at least twice ``max_side``), first frame,
   8-bit RGB (CMYK, 16-bit, palette, grayscale, alpha flattened onto white), EXIF orientation; then
   downsize to ``max_side`` (Lanczos) and re-encode as JPEG.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field

from PIL import Image, ImageFile

from data_prep.images import DEFAULT_MIN_SIDE, ImageError, exif_orientation, open_header

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
_KEEP_ORIGINAL_FORMATS = frozenset({"JPEG", "PNG", "WEBP"})


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


def process_image(
    path: str,
    max_side: int = 1024,
    min_side: int = DEFAULT_MIN_SIDE,
    quality: int = 90,
    max_pixels: int | None = None,
) -> ProcessResult:
    """Validate one file and return the bytes to store (see the module docstring for the steps).

    Args:
        path: file to read.
        max_side: longer side after downsizing; 0 keeps the original size.
        min_side: images whose shorter side is below this are skipped as ``too_small``.
        quality: JPEG quality for re-encoded images.
        max_pixels: images with more pixels are skipped as ``decompression_bomb`` (default: the
            shared limit, :func:`data_prep.images.default_max_pixels`).

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
        return _decode(data, path, result, max_side, min_side, quality, max_pixels)
    except ImageError as exc:
        return _skip(result, exc.reason, exc.detail)
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a property of the file
        text = f"{type(exc).__name__}: {exc}"
        reason = "truncated" if "truncated" in str(exc).lower() else "corrupt"
        return _skip(result, reason, text[:300])
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = tolerant


def _decode(
    data: bytes,
    path: str,
    result: ProcessResult,
    max_side: int,
    min_side: int,
    quality: int,
    max_pixels: int | None,
) -> ProcessResult:
    header = open_header(data, name=path, max_pixels=max_pixels, min_side=min_side)
    result.original_size = header.size
    small = not max_side or max(header.size) <= max_side
    if (
        small
        and header.image.mode == "RGB"
        and header.format in _KEEP_ORIGINAL_FORMATS
        and header.orientation == 1
        and header.n_frames == 1
    ):
        header.verify()  # a PNG's EXIF may follow its pixels: read it again once they are decoded
        if header.format == "JPEG" or exif_orientation(header.image) == 1:
            result.image_bytes, result.size = data, result.original_size
            return result

    decoded = header.decode(reduce_to=max_side or None)
    result.fixes.extend(decoded.fixes)
    im = decoded.image
    if max_side and max(im.size) > max_side:
        factor = max_side / max(im.size)
        new = (max(1, round(im.size[0] * factor)), max(1, round(im.size[1] * factor)))
        im = im.resize(new, Image.Resampling.LANCZOS, reducing_gap=2.0)
    out = io.BytesIO()
    im.save(out, format="JPEG", quality=quality, icc_profile=decoded.icc_profile)
    result.image_bytes, result.size, result.reencoded = out.getvalue(), im.size, True
    return result
