"""The app's command line; on a Hugging Face Space the options come from environment variables.

``MODEL_ID``, ``REFERENCE``, ``REFERENCE_SPLIT``, ``TAXONOMY``, ``GENUS_FROM_NAME``, ``THRESHOLD``,
``TOP_K``, ``COMBINE``, ``MAP``, ``MAP_MAX_POINTS``, ``IMAGE_MAX_PIXELS``, ``MIN_SIDE``, ``KEEP_UPLOADS``, ``PORT`` set the
defaults of the matching options (``python inference_app/app.py --help`` lists them all).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from inference_app.identification import COMBINE_METHODS
from inference_app.images import DEFAULT_MIN_SIDE, default_max_pixels
from inference_app.predictor import DEFAULT_MODEL
from inference_app.tsne_map import default_max_points

# Uploads (and the files the app writes for the gallery) live in Gradio's cache folder: every
# CACHE_SWEEP_S seconds, files older than KEEP_UPLOADS_S are deleted; all of them when the app stops.
KEEP_UPLOADS_S = 3600

CACHE_SWEEP_S = 300


def _env(name: str, default=None):
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def _map_points(text) -> int:
    """``--map-max-points``: an integer of at least 4 (a map needs 4 points)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 4:
        raise argparse.ArgumentTypeError(f"--map-max-points must be an integer of at least 4, got {text!r}")
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The app's options; on a Space they come from environment variables (``MODEL_ID``, ``REFERENCE``, ...)."""
    parser = argparse.ArgumentParser(
        prog="python inference_app/app.py",
        description="Identify plants from field photos with a trained herbarium-to-field ArcFace model.",
    )
    _add_data_options(parser)
    _add_answer_options(parser)
    _add_server_options(parser)
    return parser.parse_args(argv)


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    """Model, reference set and taxonomy."""
    parser.add_argument(
        "--model",
        default=_env("MODEL_ID", DEFAULT_MODEL),
        help="model folder or Hub repo id (env MODEL_ID; default: %(default)s, the README's default run)",
    )
    parser.add_argument(
        "--reference",
        default=_env("REFERENCE"),
        help="reference set: data_prep dataset folder, image folder or Hub dataset id (env REFERENCE; "
        "default: <model>/autotrain-data when present)",
    )
    parser.add_argument(
        "--enroll",
        default=None,
        metavar="ROOT",
        help="add the species in ROOT/<species>/* to the model at start-up, without retraining (one class "
        "centre each from its images; marked '(enrolled)' in answers); the model folder is not changed",
    )
    parser.add_argument("--reference-split", default=_env("REFERENCE_SPLIT"), help="use only this split")
    parser.add_argument("--no-reference", action="store_true", help="do not load any reference set")
    parser.add_argument("--no-map", action="store_true", help="skip the map of the reference set")
    parser.add_argument(
        "--map",
        choices=("tsne", "umap"),
        default=_env("MAP", "tsne"),
        help="the map of the reference set: t-SNE (openTSNE) or UMAP (umap-learn; ~20 s of numba "
        "compilation at start-up); new photos are placed into it (env MAP; default %(default)s)",
    )
    parser.add_argument(
        "--map-max-points",
        type=_map_points,
        default=_map_points(_env("MAP_MAX_POINTS", default_max_points())),
        help="a larger reference set's map is fitted on a sample of this many images (every species in it), "
        "the others placed into it, and the figure draws that sample (env MAP_MAX_POINTS; default "
        "%(default)s)",
    )
    parser.add_argument(
        "--taxonomy", default=_env("TAXONOMY"), help="CSV with columns species,genus[,family]"
    )
    parser.add_argument(
        "--genus-from-name",
        action="store_true",
        default=_env("GENUS_FROM_NAME", "0") in ("1", "true", "True"),
        help="take the genus as the first word of binomial species names (fills gaps in --taxonomy)",
    )
    parser.add_argument("--cache-dir", default=None, help="where reference embeddings and the map are cached")


def _add_answer_options(parser: argparse.ArgumentParser) -> None:
    """What an answer shows, and which photos are accepted."""
    parser.add_argument(
        "--threshold",
        type=float,
        default=float(_env("THRESHOLD", 0.5)),
        help="below this probability the answer is 'uncertain' (default %(default)s)",
    )
    parser.add_argument(
        "--top-k", type=int, default=int(_env("TOP_K", 5)), help="species shown (default %(default)s)"
    )
    parser.add_argument(
        "--neighbours", type=int, default=6, help="reference specimens shown (default %(default)s)"
    )
    parser.add_argument(
        "--combine",
        choices=COMBINE_METHODS,
        default=_env("COMBINE", "mean_prob"),
        help="how several photos are combined: mean of probabilities (robust to one bad photo, default) "
        "or mean of log-probabilities (independent evidence)",
    )
    limits = (  # (flag, default, help): checked before decoding, the same limits as data_prep's
        ("--max-pixels", default_max_pixels(), "refuse images with more pixels (env IMAGE_MAX_PIXELS"),
        (
            "--min-side",
            int(_env("MIN_SIDE", DEFAULT_MIN_SIDE)),
            "refuse a shorter side below this (env MIN_SIDE",
        ),
    )
    for flag, default, text in limits:
        help_text = f"{text}; shared with data_prep and the trainer; default %(default)s)"
        parser.add_argument(flag, type=int, default=default, help=help_text)


def _add_server_options(parser: argparse.ArgumentParser) -> None:
    """Address, limits and threads of the server."""
    parser.add_argument("--host", default=_env("GRADIO_SERVER_NAME", "127.0.0.1"), help="default %(default)s")
    parser.add_argument("--port", type=int, default=int(_env("PORT", _env("GRADIO_SERVER_PORT", 7860))))
    parser.add_argument(
        "--max-file-size", default="25mb", help="largest upload accepted (default %(default)s)"
    )
    parser.add_argument(
        "--keep-uploads",
        type=int,
        default=int(_env("KEEP_UPLOADS", KEEP_UPLOADS_S)),
        help="seconds an upload stays in Gradio's cache before it is deleted (swept every 5 minutes, and "
        "all at shutdown; env KEEP_UPLOADS; default %(default)s)",
    )
    parser.add_argument(
        "--concurrency", type=int, default=2, help="requests computed at once (default %(default)s)"
    )
    parser.add_argument(
        "--queue-size", type=int, default=64, help="requests waiting at most (default %(default)s)"
    )
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads per request (default: cores // concurrency, so that concurrent requests "
        "do not fight over the cores)",
    )
