"""Write a folder ready to push as a Hugging Face Space (Gradio SDK).

Usage::

    python -m inference_app.export_space space-out --model-id user/herbarium-arcface [--reference user/data]
    cd space-out && git init && ... (or `huggingface-cli upload user/my-space . --repo-type space`)

The Space holds this app's code, copies of the shipped model code (``configuration_arcface.py`` and
``modeling_arcface.py``, which imports the former relatively) and of the image policy
(``data_prep/images.py``) taken from this checkout, so the Space runs code its owner deployed:
nothing from the model repository is executed.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODEL_CODE = HERE.parent / "autotrain" / "trainers" / "image_classification_custom"
#: The shipped model files (the same pair every saved model folder carries).
MODEL_FILES = ("configuration_arcface.py", "modeling_arcface.py")
# The one t-SNE fit (openTSNE), shared with the trainer's model card: tsne_map.py imports the copy.
EMBEDDING_MAP = MODEL_CODE / "embedding_map.py"
# The image policy shared with data_prep and the trainer (Pillow and numpy only): the app imports it
# as ``data_prep.images``, so the Space carries it (and the content-type sniffing it imports) in a
# ``data_prep`` package of its own.
IMAGE_POLICY = tuple(
    HERE.parent / "data_prep" / name
    for name in ("images.py", "image_errors.py", "image_modes.py", "filetype.py", "contract.py")
)
APP_MODULES = (
    "__init__.py",
    "app.py",
    "evaluation_view.py",
    "identification.py",
    "images.py",
    "map_figure.py",
    "options.py",
    "predictor.py",
    "reference.py",
    "taxonomy.py",
    "tsne_map.py",
)
LAUNCHER = '''"""Hugging Face Space entry point (written by inference_app/export_space.py)."""

import os
import sys

{defaults}
from inference_app.app import main

sys.exit(main())
'''


def export_space(out: Path, model_id: str | None = None, reference: str | None = None) -> Path:
    """Copy the app, its requirements and README (Space front matter) and the model code into ``out``."""
    out = Path(out)
    package = out / "inference_app"
    package.mkdir(parents=True, exist_ok=True)
    for name in APP_MODULES:
        source = HERE / name
        if source.is_file():
            shutil.copyfile(source, package / name)
        elif name == "__init__.py":
            (package / name).write_text("")
    for name in MODEL_FILES:
        shutil.copyfile(MODEL_CODE / name, package / name)
    shutil.copyfile(EMBEDDING_MAP, package / "embedding_map.py")
    policy = out / "data_prep"
    policy.mkdir(exist_ok=True)
    (policy / "__init__.py").write_text(
        '"""The image policy and the cross-stage contract of the herbarium project (copied from data_prep)."""\n'
    )
    for source in IMAGE_POLICY:
        shutil.copyfile(source, policy / source.name)
    shutil.copyfile(HERE / "requirements.txt", out / "requirements.txt")
    shutil.copyfile(HERE / "README.md", out / "README.md")
    defaults = "".join(
        f"os.environ.setdefault({key!r}, {value!r})\n"
        for key, value in (("MODEL_ID", model_id), ("REFERENCE", reference))
        if value
    )
    (out / "app.py").write_text(LAUNCHER.format(defaults=defaults))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to write")
    parser.add_argument("--model-id", help="Hub model repo the Space serves (else set MODEL_ID in the Space)")
    parser.add_argument("--reference", help="Hub dataset repo for reference specimens (else REFERENCE)")
    args = parser.parse_args(argv)
    print(export_space(args.out, args.model_id, args.reference))
    return 0


if __name__ == "__main__":
    sys.exit(main())
