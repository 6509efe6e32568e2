"""Any Pillow mode -> 8-bit RGB, box-reduced on the way (step 3 of the image policy).

16-bit (``I;16``, and ``I`` up to 65535, e.g. 16-bit PGM) is scaled by 255/65535; ``I`` above 65535
by its maximum; float in [0, 1] by 255 (other floats clipped to 0..255); transparency (RGBA, LA, PA,
P with a transparent colour) is composited onto white; CMYK, palette, grayscale and 1-bit are
converted. High bit depths are converted in strips, never as a full-size float array. Depends on
Pillow and numpy only (the Space carries a copy).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

_STRIP_PIXELS = 1 << 22  # high-bit-depth conversion works on strips of about 4 M pixels
# bytes per pixel of Pillow's in-memory storage (RGB is stored as 4 bytes)
_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}


def bytes_per_pixel(mode: str) -> int:
    """Bytes per pixel of Pillow's in-memory storage for ``mode`` (RGB is stored as 4 bytes)."""
    return _BYTES_PER_PIXEL.get(mode, 4)


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


def to_rgb8_noted(image: Image.Image, factor: int = 1) -> tuple[Image.Image, str | None]:
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
    return to_rgb8_noted(image)[0]
