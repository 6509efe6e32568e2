"""Name what a file is from its first bytes, so that reports never quote file contents.

A report (``prep_report.json``, the console summary, a dataset card pushed to the Hub) names the
detected type of a file that is not an image (``"text file"``, ``"PDF document"``, ``"unknown
binary"``), never its bytes: a stray token file or ``/etc/passwd`` must not end up published.
:func:`scrub_detail` removes quoted bytes from other messages (some Pillow decoder errors quote the
header token that they could not parse).
"""

from __future__ import annotations

import re
from pathlib import Path

HEAD_BYTES = 64

# (signature at offset 0, name); longer / more specific signatures first
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "PNG image"),
    (b"\xff\xd8\xff", "JPEG image"),
    (b"GIF87a", "GIF image"),
    (b"GIF89a", "GIF image"),
    (b"II*\x00", "TIFF image"),
    (b"MM\x00*", "TIFF image"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000 image"),
    (b"%PDF", "PDF document"),
    (b"%!PS", "PostScript document"),
    (b"PK\x03\x04", "ZIP archive (or an Office/OpenDocument file)"),
    (b"PK\x05\x06", "ZIP archive (empty)"),
    (b"\x1f\x8b", "gzip archive"),
    (b"BZh", "bzip2 archive"),
    (b"\xfd7zXZ\x00", "xz archive"),
    (b"7z\xbc\xaf\x27\x1c", "7-Zip archive"),
    (b"Rar!\x1a\x07", "RAR archive"),
    (b"\x28\xb5\x2f\xfd", "zstd archive"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "Microsoft Office (OLE) document"),
    (b"{\\rtf", "RTF document"),
    (b"SQLite format 3\x00", "SQLite database"),
    (b"\x7fELF", "ELF executable"),
    (b"MZ", "Windows executable"),
    (b"\xca\xfe\xba\xbe", "Mach-O or Java class file"),
    (b"\xcf\xfa\xed\xfe", "Mach-O executable"),
    (b"\x93NUMPY", "NumPy array file"),
    (b"\x89HDF\r\n\x1a\n", "HDF5 file"),
    (b"ARROW1", "Arrow file"),
    (b"PAR1", "Parquet file"),
    (b"ID3", "MP3 audio"),
    (b"OggS", "Ogg media"),
    (b"fLaC", "FLAC audio"),
    (b"\x1aE\xdf\xa3", "Matroska/WebM video"),
    (b"8BPS", "Photoshop document"),
    (b"\x00\x00\x01\x00", "Windows icon"),
)
_RIFF = {b"WEBP": "WebP image", b"WAVE": "WAV audio", b"AVI ": "AVI video"}
_FTYP = {
    b"heic": "HEIC image",
    b"heix": "HEIC image",
    b"heim": "HEIC image",
    b"heis": "HEIC image",
    b"hevc": "HEIC image sequence",
    b"mif1": "HEIF image",
    b"msf1": "HEIF image sequence",
    b"avif": "AVIF image",
    b"avis": "AVIF image sequence",
    b"qt  ": "QuickTime video",
}
_BYTES_LITERAL = re.compile(r"""b'(?:[^'\\]|\\.)*'|b"(?:[^"\\]|\\.)*\"""")


def describe_content(head: bytes) -> str:
    """Name the type of a file from its first bytes (about :data:`HEAD_BYTES` of them).

    Returns:
        A short type name such as ``"PDF document"``, ``"HEIC image"``, ``"text file"``,
        ``"empty"`` or ``"unknown binary"``; never any of the bytes themselves.
    """
    if not head:
        return "empty"
    for signature, name in _MAGIC:
        if head.startswith(signature):
            return name
    if head.startswith(b"RIFF") and len(head) >= 12:
        return _RIFF.get(head[8:12], "RIFF container")
    if head[4:8] == b"ftyp" and len(head) >= 12:
        return _FTYP.get(head[8:12], "MP4/ISO media file")
    return _text_kind(head) or "unknown binary"


def _text_kind(head: bytes) -> str | None:
    """``"... text file"`` when ``head`` decodes as text, else None."""
    body = head
    if body.startswith(b"\xef\xbb\xbf"):
        body = body[3:]
    elif body.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "text file (UTF-16)"
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(body) - 3:  # a bad byte before the last (possibly cut) character
            return None
        text = body[: exc.start].decode("utf-8")
    if any(ord(c) < 32 and c not in "\t\n\r\f\v" for c in text):
        return None
    stripped = text.lstrip().lower()
    if stripped.startswith(("<?xml", "<svg")):
        return "SVG image" if "<svg" in stripped else "XML document"
    if stripped.startswith(("<!doctype html", "<html")):
        return "HTML document"
    if stripped.startswith(("{", "[")):
        return "text file (JSON?)"
    return "text file"


def describe_file(path: str | Path) -> str:
    """:func:`describe_content` of the first bytes of ``path``; ``"unreadable"`` when it cannot be read."""
    try:
        with open(path, "rb") as fh:
            return describe_content(fh.read(HEAD_BYTES))
    except OSError:
        return "unreadable"


def scrub_detail(detail: str, limit: int = 300) -> str:
    """Drop quoted bytes (``b'...'``) from a message and cap its length."""
    return _BYTES_LITERAL.sub("<bytes withheld>", detail)[:limit]
