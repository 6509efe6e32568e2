"""Small generated inputs for tests and benchmarks: tiny images in each layout and a bad-file corpus."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def image_bytes(seed: int, size: tuple[int, int] = (48, 40), fmt: str = "JPEG", mode: str = "RGB") -> bytes:
    """Encoded noise image, unique per ``seed`` (so no two generated files are duplicates)."""
    rng = np.random.default_rng(seed)
    w, h = size
    arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    arr[: h // 2] = rng.integers(
        0, 256, 3, dtype=np.uint8
    )  # a flat band compresses well and keeps files small
    im = Image.fromarray(arr).convert(mode) if mode != "RGB" else Image.fromarray(arr)
    buf = io.BytesIO()
    im.save(buf, format=fmt, **({"quality": 85} if fmt == "JPEG" else {}))
    return buf.getvalue()


def write_image(
    path: Path, seed: int, size: tuple[int, int] = (48, 40), fmt: str = "JPEG", mode: str = "RGB"
) -> Path:
    """Write :func:`image_bytes` to ``path`` (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(image_bytes(seed, size, fmt, mode))
    return path


def make_folder_tree(
    root: Path,
    counts: dict[str, tuple[int, int, int]],
    field_name: str = "field",
    size: tuple[int, int] = (48, 40),
) -> Path:
    """``root/herbarium|<field_name>|test/<species>/*.jpg`` with ``counts[species] = (herbarium, field, test)``."""
    seed = 0
    for species, (n_h, n_f, n_t) in counts.items():
        for sub, n in (("herbarium", n_h), (field_name, n_f), ("test", n_t)):
            for j in range(n):
                seed += 1
                write_image(root / sub / species / f"{sub[:1]}{j:02d}.jpg", seed, size)
    return root


def png_with_size(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` (a decompression bomb for Pillow when large)."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = bytes(data[12:16]) + struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(ihdr) & 0xFFFFFFFF)
    return bytes(data)


def make_bad_corpus(root: Path) -> dict[str, str]:
    """Write a folders-layout tree mixing good files with every kind of bad file the builder handles.

    Returns:
        ``{relative path: expected reason}`` for each bad or fixed file; good files are
        ``herbarium|field|test/<species>/good*.jpg``. Also creates ``herbarium/Beta/locked/``,
        a folder that tests make unreadable (as root, ``chmod`` does not stop reads).
    """
    expected: dict[str, str] = {}

    def put(rel: str, data: bytes, reason: str | None = None) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        if reason:
            expected[rel] = reason

    seed = 1000
    for species in ("Alpha", "Beta", "Gamma"):
        for sub, n in (("herbarium", 4), ("field", 3), ("test", 2)):
            for j in range(n):
                seed += 1
                put(f"{sub}/{species}/good{j}.jpg", image_bytes(seed))
    big = image_bytes(7, size=(900, 600))
    truncated = image_bytes(8, size=(200, 160))
    rgb = np.random.default_rng(9).integers(0, 256, (40, 48, 3), dtype=np.uint8)

    def encode(im: Image.Image, fmt: str, **kw: object) -> bytes:
        buf = io.BytesIO()
        im.save(buf, format=fmt, **kw)
        return buf.getvalue()

    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    frames = [Image.fromarray(rgb).convert("P"), Image.fromarray(255 - rgb).convert("P")]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:])
    sixteen = (np.arange(40 * 48, dtype=np.uint16).reshape(40, 48) * 13 + 20000).astype(np.uint16)
    rgba = np.dstack([rgb, np.full((40, 48), 128, np.uint8)])

    put("herbarium/Alpha/empty.jpg", b"", "zero_byte")
    put("herbarium/Alpha/notes.txt", b"collector: J. Smith\n", "not_an_image")
    put(
        "herbarium/Alpha/garbage.jpg",
        bytes(np.random.default_rng(3).integers(0, 256, 500, dtype=np.uint8)),
        "corrupt",
    )
    put("herbarium/Alpha/broken_header.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "corrupt")
    put("herbarium/Alpha/cut.jpg", truncated[: len(truncated) * 2 // 3], "truncated")
    put("herbarium/Beta/bomb.png", png_with_size(20000, 20000), "decompression_bomb")  # 400 MP > 250 MP limit
    # 100 MP is within the limit (real scans reach 200 MP): decoded, and this one has no pixel data
    put("herbarium/Beta/claims_100mp.png", png_with_size(10000, 10000), "truncated")
    put("herbarium/Beta/tiny.jpg", image_bytes(10, size=(12, 10)), "too_small")
    put("herbarium/Beta/cmyk.jpg", encode(Image.fromarray(rgb).convert("CMYK"), "JPEG"), "converted_mode")
    put("herbarium/Gamma/sixteen.png", encode(Image.fromarray(sixteen, mode="I;16"), "PNG"), "converted_mode")
    put("herbarium/Gamma/palette.png", encode(Image.fromarray(rgb).convert("P"), "PNG"), "converted_mode")
    put("herbarium/Gamma/alpha.png", encode(Image.fromarray(rgba, mode="RGBA"), "PNG"), "converted_mode")
    put("herbarium/Gamma/gray.png", encode(Image.fromarray(rgb).convert("L"), "PNG"), "converted_mode")
    put("field/Alpha/rotated.jpg", encode(Image.fromarray(rgb), "JPEG", exif=exif), "exif_orientation")
    put("field/Beta/animated.gif", gif.getvalue(), "multi_frame")
    put("herbarium/Gamma/big_scan.jpg", big)  # kept, downsized
    put(
        "herbarium/Alpha/zz_copy_of_good0.jpg", (root / "herbarium/Alpha/good0.jpg").read_bytes(), "duplicate"
    )
    put("field/Gamma/leaked.jpg", (root / "test/Gamma/good0.jpg").read_bytes(), "leakage")
    put("herbarium/stray.jpg", image_bytes(11), "outside_class_folder")
    put("herbarium/Beta/locked/inside.jpg", image_bytes(12))  # unreadable_folder (see docstring)
    put("field/Gamma/.DS_Store", b"\x00\x00\x00\x01Bud1")  # OS metadata: ignored, counted
    (root / "field" / "Delta").mkdir(parents=True, exist_ok=True)  # empty_folder
    return expected
