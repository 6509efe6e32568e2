"""The app's command line; on a Hugging Face Space the options come from environment variables.

``MODEL_ID``, ``REFERENCE``, ``REFERENCE_SPLIT``, ``TAXONOMY``, ``GENUS_FROM_NAME``, ``THRESHOLD``,
``TOP_K``, ``COMBINE``, ``MAP``, ``MAP_MAX_POINTS``, ``IMAGE_MAX_PIXELS``, ``MIN_SIDE``, ``KEEP_UPLOADS``,
``PORT`` (or ``GRADIO_SERVER_PORT``) and ``GRADIO_SERVER_NAME`` set the defaults of the matching options
(``python inference_app/app.py --help`` lists them all). A bad value in one of them is refused the way the
same bad flag is (a one-line error naming the variable and its value, exit status 2), before anything is
loaded and even with ``--help``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from inference_app.identification import COMBINE_METHODS
from inference_app.images import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE, default_max_pixels
from inference_app.predictor import DEFAULT_MODEL
from inference_app.tsne_map import default_max_points

# Uploads (and the files the app writes for the gallery) live in Gradio's cache folder: every
# CACHE_SWEEP_S seconds, files older than KEEP_UPLOADS_S are deleted; all of them when the app stops.
KEEP_UPLOADS_S = 3600

CACHE_SWEEP_S = 300


def _env(name: str, default=None):
    value = os.environ.get(name)
    return value if value not in (None, "") else default


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _flag_value(text) -> bool:
    """An on/off environment value (``GENUS_FROM_NAME``): 1/true/yes/on or 0/false/no/off."""
    word = str(text).strip().lower()
    if word not in _TRUE + _FALSE:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(_TRUE + _FALSE)}")
    return word in _TRUE


def _from_env(parser: argparse.ArgumentParser, name: str, flag: str, default=None, convert=None, choices=()):
    """The default of ``flag``: environment variable ``name`` converted and checked like the flag's own value
    (``convert``, ``choices``), else ``default``.

    Exits (``parser.error``: usage and one line naming the variable and its value, status 2) on a value the
    flag would refuse, so that a bad Space setting fails at once rather than after the model has loaded.
    """
    text = _env(name)
    if text is None:
        return default
    try:
        value = convert(text) if convert is not None else text
    except argparse.ArgumentTypeError as error:
        reason = str(error)
    except (TypeError, ValueError):
        reason = f"invalid {convert.__name__} value"
    else:
        if not choices or value in choices:
            return value
        reason = f"invalid choice (choose from {', '.join(choices)})"
    parser.error(f"environment variable {name}={text!r} (the default of {flag}): {reason}")


def _pixels(_text) -> int:
    """``IMAGE_MAX_PIXELS``, read by data_prep's shared :func:`default_max_pixels` (``2.5e8``, ``250_000_000``)."""
    try:
        return default_max_pixels()
    except ValueError:
        raise argparse.ArgumentTypeError("not a number of pixels (e.g. 250000000)") from None


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
        default=_from_env(parser, "MODEL_ID", "--model", DEFAULT_MODEL),
        help="model folder or Hub repo id (env MODEL_ID; default: %(default)s, the README's default run)",
    )
    parser.add_argument(
        "--reference",
        default=_from_env(parser, "REFERENCE", "--reference"),
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
    parser.add_argument(
        "--reference-split",
        default=_from_env(parser, "REFERENCE_SPLIT", "--reference-split"),
        help="use only this split of a dataset reference set, several as train,test, or 'all' (env "
        "REFERENCE_SPLIT; default: every split but 'test', the held-out photos the model is measured on)",
    )
    parser.add_argument("--no-reference", action="store_true", help="do not load any reference set")
    parser.add_argument("--no-map", action="store_true", help="skip the map of the reference set")
    parser.add_argument(
        "--map",
        choices=("tsne", "umap"),
        default=_from_env(parser, "MAP", "--map", "tsne", str, ("tsne", "umap")),
        help="the map of the reference set: t-SNE (openTSNE) or UMAP (umap-learn; ~20 s of numba "
        "compilation at start-up); new photos are placed into it (env MAP; default %(default)s)",
    )
    parser.add_argument(
        "--map-max-points",
        type=_map_points,
        default=_from_env(parser, "MAP_MAX_POINTS", "--map-max-points", default_max_points(), _map_points),
        help="a larger reference set's map is fitted on a sample of this many images, the others placed "
        "into it, and the figure draws that sample; the sample holds every species when there are at most "
        "this many species, else this many of them (a warning says so) (env MAP_MAX_POINTS; default "
        "%(default)s)",
    )
    parser.add_argument(
        "--taxonomy",
        default=_from_env(parser, "TAXONOMY", "--taxonomy"),
        help="CSV with columns species,genus[,family] (env TAXONOMY)",
    )
    parser.add_argument(
        "--genus-from-name",
        action="store_true",
        default=_from_env(parser, "GENUS_FROM_NAME", "--genus-from-name", False, _flag_value),
        help="take the genus as the first word of binomial species names (fills gaps in --taxonomy; env "
        "GENUS_FROM_NAME=1)",
    )
    parser.add_argument("--cache-dir", default=None, help="where reference embeddings and the map are cached")


def _add_answer_options(parser: argparse.ArgumentParser) -> None:
    """What an answer shows, and which photos are accepted."""
    parser.add_argument(
        "--threshold",
        type=float,
        default=_from_env(parser, "THRESHOLD", "--threshold", 0.5, float),
        help="below this probability the answer is 'uncertain' (env THRESHOLD; default %(default)s)",
    )
    parser.add_argument(
        "--top-k",
        type=int,
        default=_from_env(parser, "TOP_K", "--top-k", 5, int),
        help="species shown (env TOP_K; default %(default)s)",
    )
    parser.add_argument(
        "--neighbours", type=int, default=6, help="reference specimens shown (default %(default)s)"
    )
    parser.add_argument(
        "--combine",
        choices=COMBINE_METHODS,
        default=_from_env(parser, "COMBINE", "--combine", "mean_prob", str, COMBINE_METHODS),
        help="how several photos are combined: mean of probabilities (robust to one bad photo, default) "
        "or mean of log-probabilities (independent evidence) (env COMBINE)",
    )
    limits = (  # (flag, env, parse, default, help): checked before decoding, the same limits as data_prep's
        ("--max-pixels", "IMAGE_MAX_PIXELS", _pixels, DEFAULT_MAX_PIXELS, "refuse images with more pixels"),
        ("--min-side", "MIN_SIDE", int, DEFAULT_MIN_SIDE, "refuse a shorter side below this"),
    )
    for flag, name, convert, fallback, text in limits:
        default = _from_env(parser, name, flag, fallback, convert)
        help_text = f"{text} (env {name}; shared with data_prep and the trainer; default %(default)s)"
        parser.add_argument(flag, type=int, default=default, help=help_text)


def _add_server_options(parser: argparse.ArgumentParser) -> None:
    """Address, limits and threads of the server."""
    parser.add_argument(
        "--host",
        default=_from_env(parser, "GRADIO_SERVER_NAME", "--host", "127.0.0.1"),
        help="address to listen on (env GRADIO_SERVER_NAME; default %(default)s)",
    )
    port = _from_env(parser, "GRADIO_SERVER_PORT", "--port", 7860, int)
    parser.add_argument(
        "--port",
        type=int,
        default=_from_env(parser, "PORT", "--port", port, int),
        help="port to listen on (env PORT or GRADIO_SERVER_PORT; default %(default)s)",
    )
    parser.add_argument(
        "--max-file-size", default="25mb", help="largest upload accepted (default %(default)s)"
    )
    parser.add_argument(
        "--keep-uploads",
        type=int,
        default=_from_env(parser, "KEEP_UPLOADS", "--keep-uploads", KEEP_UPLOADS_S, int),
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
