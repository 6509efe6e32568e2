"""Command line: ``python -m data_prep {sample,build,join,audit} ...`` (see ``--help``)."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shlex
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from data_prep.images import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE, MAX_PIXELS_ENV
from data_prep.layouts import LAYOUTS, DataPrepError

DEFAULT_PROJECT = "herbarium-arcface"

LAYOUT_HELP = """\
input layouts (auto-detected, or --layout):
  folders    ROOT/herbarium/<species>/*   herbarium sheets
             ROOT/field/<species>/*       field photos ("photo/" is a synonym)
             ROOT/test/<species>/*        optional: fixed field test set
             species name = folder name; sub-folders inside a species folder are included;
             symlinks are followed only when they resolve inside ROOT (never outside it)
  plantclef  ROOT/list/train.txt          "relative/path class_id" per line; the domain is the
                                          path's herbarium/ or photo/ folder
             ROOT/list/groundtruth.txt    "relative/path class_id": the test set
             ROOT/list/test.txt           test paths (used when groundtruth.txt is missing)
             ROOT/list/species_list.txt   "class_id; species name" (else the id is the name)
  csv        a CSV (or a folder with one) with columns path,label,domain[,split];
             paths relative to the CSV; domain herbarium|field|photo; split train|test

output: a DatasetDict (train, validation, optional test; features image, label, domain, path)
saved with save_to_disk to --out, plus prep_report.json and dataset_balance.png.
validation = field photos only, stratified per species; species with 0 or 1 field photo keep
them in train. When no species has 2 (e.g. herbarium/ and test/ only), the validation split is
empty, the summary says so, and the trainer runs without validation (no epoch selection, no early
stopping). Bad files are skipped or fixed and reported, never silently: every file under ROOT is
a dataset row or a finding in prep_report.json, which names a non-image's type, never its bytes.
exit codes: 0 ok, 1 --strict and something was reported, 2 bad input (message names the file).
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m data_prep",
        description="Herbarium + field images -> validated Hugging Face DatasetDict (and an embedded sample).",
        epilog=LAYOUT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_sample_command(sub)
    _add_build_command(sub)
    _add_join_command(sub)
    _add_audit_command(sub)
    return parser


def _add_sample_command(sub: argparse._SubParsersAction) -> None:
    """``sample``: write the embedded synthetic dataset."""
    s = sub.add_parser(
        "sample",
        help="write the embedded synthetic herbarium + field dataset (folders layout)",
        description="Write a small, seeded, synthetic herbarium + field dataset in the folders layout.",
    )
    s.add_argument("--out", required=True, type=Path, help="target folder")
    s.add_argument("--seed", type=int, default=0, help="same seed -> identical files (default 0)")
    s.add_argument("--n-species", type=int, default=20, help="number of species (default 20)")
    s.add_argument(
        "--n-herbarium", type=int, default=16, help="herbarium sheets per species, on average (default 16)"
    )
    s.add_argument(
        "--n-field",
        type=int,
        default=5,
        help="field training photos per species that has them, on average (default 5)",
    )
    s.add_argument("--n-test", type=int, default=6, help="field test photos per species (default 6)")
    s.add_argument(
        "--no-field-every",
        type=int,
        default=4,
        help="every k-th species has no field training photos (default 4; 0: none)",
    )
    s.add_argument(
        "--overwrite", action="store_true", help="write into a non-empty folder that is not an earlier sample"
    )
    s.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_build_command(sub: argparse._SubParsersAction) -> None:
    """``build``: input layout -> validated DatasetDict (and optionally a Hub push)."""
    b = sub.add_parser(
        "build",
        help="build, validate and save the DatasetDict",
        description="Build the DatasetDict from SOURCE.",
        epilog=LAYOUT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    b.add_argument("source", type=Path, help="input folder, or a CSV file")
    b.add_argument(
        "--out", type=Path, default=None, help="output folder (default: <project-name>/autotrain-data)"
    )
    b.add_argument(
        "--project-name", default=DEFAULT_PROJECT, help=f"AutoTrain project name (default {DEFAULT_PROJECT})"
    )
    b.add_argument("--layout", choices=LAYOUTS, default="auto", help="input layout (default auto)")
    b.add_argument(
        "--val-fraction",
        type=float,
        default=0.2,
        help="share of each species' field photos for validation (default 0.2)",
    )
    b.add_argument(
        "--max-side", type=int, default=1024, help="downsize longer sides above this (default 1024; 0: never)"
    )
    b.add_argument(
        "--min-side",
        type=int,
        default=DEFAULT_MIN_SIDE,
        help=f"skip images whose shorter side is below this (default {DEFAULT_MIN_SIDE}; the app uses the same)",
    )
    b.add_argument(
        "--max-pixels",
        type=int,
        default=None,
        help=f"skip images with more pixels than this, checked before decoding (default: ${MAX_PIXELS_ENV} "
        f"or {DEFAULT_MAX_PIXELS:_}, shared with the trainer and the app); scans below it are kept and "
        "downsized to --max-side (JPEGs decoded at reduced scale)",
    )
    b.add_argument("--quality", type=int, default=90, help="JPEG quality of re-encoded images (default 90)")
    b.add_argument(
        "--num-proc", type=int, default=None, help="decoding processes (default: CPU count, at most 8)"
    )
    b.add_argument("--seed", type=int, default=0, help="seed of the validation draw (default 0)")
    b.add_argument(
        "--strict", action="store_true", help="exit 1 if anything was skipped or fixed (same report)"
    )
    b.add_argument(
        "--push-to-hub",
        metavar="REPO",
        default=None,
        help="push to this Hub dataset repo (token: HF_TOKEN or huggingface-cli login)",
    )
    b.add_argument("--public", action="store_true", help="create the Hub repo public (default private)")
    b.add_argument(
        "--exclude",
        type=Path,
        default=None,
        metavar="FILE",
        help="leave out the files listed in FILE (paths relative to SOURCE, one a line, '#' comments; "
        "e.g. the exclude.txt of `data_prep audit`); each is reported as 'excluded'",
    )
    b.add_argument(
        "--num-shards",
        type=int,
        default=None,
        metavar="K",
        help="sharded build: validate only every K-th file (with --shard-index) and write a part to --out; "
        "`data_prep join` makes the dataset of all K parts",
    )
    b.add_argument(
        "--shard-index",
        type=int,
        default=None,
        metavar="I",
        help="which shard this is, 0..K-1 (with --num-shards)",
    )
    b.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_join_command(sub: argparse._SubParsersAction) -> None:
    """``join``: the parts of a sharded build -> the DatasetDict the single build writes."""
    j = sub.add_parser(
        "join",
        help="join the parts of a sharded build (build --num-shards K --shard-index I) into the DatasetDict",
        description="Join the parts written by `build --num-shards K --shard-index I` (I = 0..K-1): drop "
        "duplicates and leakage across parts, draw the field validation split, write the DatasetDict, "
        "prep_report.json and dataset_balance.png: the same dataset as one `build` of the source.",
    )
    j.add_argument("parts", type=Path, nargs="+", metavar="PART", help="every part folder, in any order")
    j.add_argument("--out", type=Path, required=True, help="output folder of the dataset")
    j.add_argument(
        "--strict", action="store_true", help="exit 1 if anything was skipped or fixed (same report)"
    )
    j.add_argument("--push-to-hub", metavar="REPO", default=None, help="push to this Hub dataset repo")
    j.add_argument("--public", action="store_true", help="create the Hub repo public (default private)")
    j.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_audit_command(sub: argparse._SubParsersAction) -> None:
    """``audit``: likely label errors, near-duplicates and outliers of a built dataset."""
    from data_prep.audit import DUPLICATE_THRESHOLD

    a = sub.add_parser(
        "audit",
        help="find likely label errors, near-duplicates and outliers in a built dataset (deletes nothing)",
        description="Embed every image of DATASET and report likely label errors (cleanlab), near-duplicates "
        "within and across splits, and outliers; writes audit.json, audit.html and exclude.txt "
        "(for build --exclude). Exit 2 with a one-line message for bad input.",
    )
    a.add_argument("dataset", type=Path, help="a folder written by `python -m data_prep build`")
    a.add_argument(
        "--model", type=Path, default=None, help="saved ArcFace model folder (default: the embedded backbone)"
    )
    a.add_argument("--out", type=Path, default=None, help="output folder (default: DATASET-audit beside it)")
    a.add_argument(
        "--duplicate-threshold",
        type=float,
        default=DUPLICATE_THRESHOLD,
        help=f"cosine similarity of a near-duplicate pair (default {DUPLICATE_THRESHOLD})",
    )
    a.add_argument("--seed", type=int, default=0, help="seed of the cross-validation folds (default 0)")
    a.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    a.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="input side for embedding (default: the model's; smaller is faster)",
    )
    a.add_argument("--quiet", action="store_true", help="no progress bar")


# options passed on by name: the parser's dest names are the functions' keyword names
_SAMPLE_OPTIONS = ("seed", "n_species", "n_herbarium", "n_field", "n_test", "no_field_every", "overwrite")
_BUILD_OPTIONS = ("val_fraction", "max_side", "min_side", "quality", "num_proc", "seed", "strict", "exclude")


def _options(args: argparse.Namespace, names: Sequence[str]) -> dict[str, Any]:
    return {name: getattr(args, name) for name in names}


def _sample(args: argparse.Namespace) -> int:
    from data_prep.sample import generate_sample

    out = generate_sample(args.out, progress=not args.quiet, **_options(args, _SAMPLE_OPTIONS))
    n = sum(1 for p in out.rglob("*.jpg"))
    print(f"wrote {n} images to {out}")
    return 0


@contextlib.contextmanager
def _pixel_limit(max_pixels: int | None) -> Iterator[None]:
    """``IMAGE_MAX_PIXELS`` set to ``max_pixels`` inside the block (None: unchanged).

    The limit is shared with the trainer and the app through the environment, which is also how the
    worker processes of the build read it.
    """
    if not max_pixels:
        yield
        return
    saved = os.environ.get(MAX_PIXELS_ENV)
    os.environ[MAX_PIXELS_ENV] = str(max_pixels)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(MAX_PIXELS_ENV, None)
        else:
            os.environ[MAX_PIXELS_ENV] = saved


def _build(args: argparse.Namespace) -> int:
    from data_prep.build import build_dataset

    if args.num_shards is not None or args.shard_index is not None:
        return _build_part(args)
    out = args.out or Path(args.project_name) / "autotrain-data"
    with _pixel_limit(args.max_pixels):
        return _finish(
            args,
            out,
            lambda: build_dataset(
                args.source, out, args.layout, progress=not args.quiet, **_options(args, _BUILD_OPTIONS)
            ),
        )


def _build_part(args: argparse.Namespace) -> int:
    """``build --num-shards K --shard-index I``: write one part (see :mod:`data_prep.shards`)."""
    from data_prep.shards import build_part, is_part

    if args.num_shards is None or args.shard_index is None:
        raise DataPrepError("a sharded build needs both --num-shards K and --shard-index I (0..K-1)")
    if args.strict or args.push_to_hub:
        raise DataPrepError("--strict and --push-to-hub apply to the dataset: give them to `data_prep join`")
    if args.out is None:
        raise DataPrepError("a sharded build needs --out, the folder of this shard's part")
    options = {k: v for k, v in _options(args, _BUILD_OPTIONS).items() if k != "strict"}
    replacing = is_part(args.out)
    with _pixel_limit(args.max_pixels):
        part = build_part(
            args.source,
            args.out,
            args.layout,
            num_shards=args.num_shards,
            shard_index=args.shard_index,
            progress=not args.quiet,
            **options,
        )
    if replacing:
        print(f"replaced the earlier part in {args.out}")
    k = part["num_shards"]
    print(
        f"shard {part['shard_index']} of {k}: {part['stats']['files']} of {part['files']} files, "
        f"{len(part['rows'])} kept, {len(part['skips'])} skipped -> {args.out}\n"
        f"once all {k} parts are written: "
        + join_hint(args.out, k, part["shard_index"], Path(args.project_name) / "autotrain-data")
    )
    return 0


#: up to this many shards the join hint lists every part; above, a bash brace range (part-{0..63})
_HINT_LISTED = 8


def join_hint(out: Path, num_shards: int, shard_index: int, dataset: Path) -> str:
    """The ``python -m data_prep join ...`` command that joins the parts of shard ``out``'s build.

    When ``out``'s last component holds the shard index once as a number (``parts/part-3``), the
    other parts' folders are that pattern with ``0..num_shards-1``; otherwise the command names ``out``
    and a placeholder for the other parts. Paths are shell-quoted; ``dataset`` is the ``--out`` given.
    """
    text, name = str(out), out.name
    found = list(re.finditer(rf"(?<!\d){shard_index}(?!\d)", name))
    if len(found) != 1:
        others = f" <the other {num_shards - 1} part folders>" if num_shards > 1 else ""
        parts = shlex.quote(text) + others
    else:
        start, end = len(text) - len(name) + found[0].start(), len(text) - len(name) + found[0].end()
        before, after = text[:start], text[end:]
        if num_shards <= _HINT_LISTED:
            parts = " ".join(shlex.quote(f"{before}{i}{after}") for i in range(num_shards))
        else:
            parts = "".join(
                [shlex.quote(before), f"{{0..{num_shards - 1}}}", shlex.quote(after) if after else ""]
            )
    return f"python -m data_prep join {parts} --out {shlex.quote(str(dataset))}"


def _join(args: argparse.Namespace) -> int:
    from data_prep.shards import join_parts

    return _finish(
        args, args.out, lambda: join_parts(args.parts, args.out, strict=args.strict, progress=not args.quiet)
    )


def _finish(args: argparse.Namespace, out: Path, make: Callable[[], tuple[Any, dict[str, Any]]]) -> int:
    """Run ``make`` (a build or a join), print the summary, push when asked; 1 for ``--strict`` findings."""
    from data_prep.build import FIGURE_NAME, StrictModeError
    from data_prep.contract import is_saved_dataset_dict
    from data_prep.report import format_summary

    replacing = is_saved_dataset_dict(out)
    replaced = f"replaced the earlier build in {out}"
    try:
        dsd, report = make()
    except StrictModeError as exc:
        print(format_summary(exc.report) + ("\n" + replaced if replacing else ""))
        print(f"error: {exc} (report: {out}/prep_report.json)", file=sys.stderr)
        return 1
    print(format_summary(report) + ("\n" + replaced if replacing else ""))
    return _push(args, dsd, report, out / FIGURE_NAME) if args.push_to_hub else 0


def _push(args: argparse.Namespace, dsd: Any, report: dict[str, Any], figure: Path) -> int:
    """Push the built dataset to ``--push-to-hub``; 2 with a one-line message when the push fails."""
    from data_prep.hub import push_dataset

    try:
        url = push_dataset(dsd, args.push_to_hub, report, figure, private=not args.public)
    except OSError as exc:  # network and Hub HTTP errors (HfHubHTTPError is an OSError)
        print(
            f"error: push to {args.push_to_hub} failed ({type(exc).__name__}: {exc}); saved in {figure.parent}",
            file=sys.stderr,
        )
        return 2
    print(f"pushed to {url} ({'public' if args.public else 'private'})")
    return 0


def _audit(args: argparse.Namespace) -> int:
    from data_prep.audit import audit_dataset
    from data_prep.audit_report import format_audit_summary

    audit = audit_dataset(
        args.dataset,
        args.model,
        args.out,
        duplicate_threshold=args.duplicate_threshold,
        seed=args.seed,
        batch_size=args.batch_size,
        image_size=args.image_size,
        progress=not args.quiet,
    )
    print(format_audit_summary(audit, Path(audit["out"])))
    return 0


_COMMANDS = {"sample": _sample, "build": _build, "join": _join, "audit": _audit}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (2 with a one-line message for bad input)."""
    args = _parser().parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except (DataPrepError, OSError) as exc:  # bad input, unwritable output: one line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
