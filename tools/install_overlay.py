"""Write the `.pth` file that makes the `autotrain/` overlay importable from any directory.

Run by `make install` with the virtual environment's Python. The file puts this checkout on
`sys.path` just before `site-packages`, so `import autotrain` finds the overlay, which then joins
the installed autotrain-advanced package (see `autotrain/__init__.py`).
"""

import sysconfig
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
LINE = (
    "import sys; sys.path.insert(next((i for i, p in enumerate(sys.path) "
    "if p.rstrip('/').endswith('site-packages')), len(sys.path)), {root!r})\n"
)


def main() -> Path:
    """Write the file and return its path."""
    target = Path(sysconfig.get_paths()["purelib"]) / "herbarium_arcface_overlay.pth"
    target.write_text(LINE.format(root=str(REPO_ROOT)), encoding="utf-8")
    print(f"overlay: {target} -> {REPO_ROOT}")
    return target


if __name__ == "__main__":
    main()
