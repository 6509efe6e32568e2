"""Per-stage runners of the scaling benchmark: the trainer's stages and the app's start-up, each timed.

``bench_scale.py`` runs these as subprocesses (one per measurement, so that no memory carries over from
one command to the next)::

    python benchmarks/scale_stages.py trainer --dataset DS --project DIR --image-size 128 --json OUT.json \
        [--batch-size 32] [--epochs 1] [--warmup-epochs 1]
    python benchmarks/scale_stages.py app --model DIR --reference DS --json OUT.json [--cache DIR] \
        [--queries 5]

Both write ``{"command", "stages": {name: {"seconds", "peak_rss_mb", ...}}, "facts": {...}}``.

``trainer``: the shipped ``config.json`` (the embedded ``efficientnet_lite0-offline`` backbone, offline)
with ``data_path``, ``project_name``, ``image_size``, ``batch_size``, ``epochs`` (1) and ``warmup_epochs``
(default 1: the epoch is config.json's first, head-only epoch with the backbone frozen; 0: full fine-tuning), the map figure on, no push. The stage functions of
``training.run`` run in the same order, each inside :func:`scale_measure.measure`:

- ``setup``: ``start_run`` + ``load_data`` + ``build_model``;
- ``decode_cache``: ``decode_caches`` (every image decoded once; a split above ``cache_memory_mb`` is
  memory-mapped under ``DIR/cache``);
- ``prototypes``: ``start_from_prototypes`` (class-mean centres and the "no training" baseline);
- ``epoch``: ``search_hyperparameters`` (nothing without ``hp_search``) + ``keep_start_weights`` +
  ``train_model`` (one epoch's steps and its evaluation on the validation split);
- ``evaluation``, ``tsne_map``, ``save``: ``save_outputs`` + ``publish`` split by timing the functions
  it calls (:func:`save_parts`): the evaluation is WiSE-FT, the passes over the evaluation splits,
  calibration, the reports and the by-species evaluation; the map is its points (a sample of the
  training sheets embedded) and its figure (the t-SNE fit); ``save`` is the rest (model folder,
  ``metrics.json``, figures, card, clean-up). A timed call inside another timed call counts for the
  outer one. Each part's peak is the largest of its calls' peaks.

``app``: the app's start-up as ``inference_app/app.py`` does it (``load_components``, then ``build_demo``
without launching the server), in two fresh subprocesses over one cache folder: ``app_first_start``
(the cache empty: the reference set is embedded, the index and the t-SNE map are built) and
``app_cached_start`` (both read from the cache); then ``app_query`` in the second process: one photo
identified, its nearest specimens (with their thumbnails) and its place on the map, as the UI's
handlers do, averaged over ``--queries`` photos after one warm-up query. The query photos are reference
images (field photos first) written as JPEGs at their stored size. Each start also reports
``process_seconds`` and ``process_peak_rss_mb`` (the whole subprocess, Python imports included) and
``parts``: the seconds of loading the model, the reference set, the index, the example photos, the map
and the UI (:func:`start_parts`).

Peak memory is the resident set of the whole process tree (``scale_measure``); the peak of a later stage
includes what earlier stages still hold (the model, the decoded images): that is what a user sees.
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
for _path in (str(HERE), str(REPO_ROOT)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from scale_measure import MB, Measurement, load_average, measure, run_measured  # noqa: E402

TRAINER = "autotrain.trainers.image_classification_custom"
TRAINER_STAGES = ("setup", "decode_cache", "prototypes", "epoch", "evaluation", "tsne_map", "save")
APP_STAGES = ("app_first_start", "app_cached_start", "app_query")
DEFAULT_CACHE = "scale-bench-cache"


class _ThisCheckoutsTrainer(importlib.abc.MetaPathFinder):
    """Imports the trainer subpackage from this checkout (an editable install may map it to another
    worktree; ``tests/conftest.py`` does the same for the tests)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != TRAINER:
            return None
        folder = REPO_ROOT.joinpath(*TRAINER.split("."))
        return importlib.util.spec_from_file_location(
            fullname, folder / "__init__.py", submodule_search_locations=[str(folder)]
        )


sys.meta_path.insert(0, _ThisCheckoutsTrainer())


def _fail(message: str) -> None:
    raise SystemExit(f"scale_stages: {message}")


def _check_dataset(path: Path, what: str) -> None:
    """A one-line exit unless ``path`` is a dataset folder written by ``data_prep build``."""
    from data_prep.contract import is_saved_dataset

    if not path.is_dir():
        _fail(f"{what} {path} does not exist (build it with `python -m data_prep build CSV --out {path}`)")
    if not is_saved_dataset(path):
        _fail(f"{what} {path} is not a dataset written by `python -m data_prep build`")


# ------------------------------------------------------------------------------------------------------
# trainer
# ------------------------------------------------------------------------------------------------------


def trainer_params(
    dataset: Path, project: Path, image_size: int | None, batch_size: int, epochs: int, warmup_epochs: int = 1
):
    """The shipped ``config.json`` on ``dataset``, written to ``project``: ``epochs`` epochs, the first
    ``warmup_epochs`` of them head-only (backbone frozen), the rest full fine-tuning; map figure on, no push,
    no tracker. Returns ``ImageClassificationCustomParams``.

    The trainer takes a project *name* (letters, digits, hyphens) relative to the working directory: the
    process changes to ``project``'s parent folder."""
    from autotrain.trainers.image_classification_custom.params import ImageClassificationCustomParams

    config = json.loads((REPO_ROOT / "config.json").read_text())
    config.update(
        data_path=str(dataset.resolve()),
        project_name=project.name,
        batch_size=batch_size,
        epochs=epochs,
        warmup_epochs=warmup_epochs,
        tsne=True,
        push_to_hub=False,
        log="none",
    )
    if image_size:
        config["image_size"] = image_size
    project.parent.mkdir(parents=True, exist_ok=True)
    os.chdir(project.parent)
    try:
        return ImageClassificationCustomParams(**config)
    except ValueError as error:
        _fail(f"--project {project}: {str(error).splitlines()[-1]}")


class PartTimer:
    """Times the functions a stage calls (``save_outputs``'s, the app's start-up), by part, while
    installed (a context manager): ``targets`` maps a part to its ``(module or class, name)`` pairs;
    functions, class methods and static methods are wrapped, and put back on exit.

    ``parts[part]`` is a :class:`Measurement` (seconds summed, peak the largest) and ``calls[name]``
    the seconds per function; a function missing from its module is listed in ``missing``.
    """

    def __init__(self, targets: dict[str, list[tuple[Any, str]]]):
        self.targets = targets
        self.parts = {part: Measurement() for part in targets}
        self.calls: dict[str, float] = {}
        self.missing: list[str] = []
        self._inside = False
        self._restore: list[tuple[Any, str, Any]] = []

    def _timed(self, part: str, name: str, original: Callable) -> Callable:
        def timed(*args, **kwargs):
            if self._inside:  # counted in the outer call
                return original(*args, **kwargs)
            self._inside, seen = True, Measurement()
            try:
                with measure() as seen:
                    return original(*args, **kwargs)
            finally:
                self._inside = False
                total = self.parts[part]
                total.seconds += seen.seconds
                total.peak_rss_mb = max(total.peak_rss_mb, seen.peak_rss_mb)
                self.calls[name] = round(self.calls.get(name, 0.0) + seen.seconds, 3)

        return timed

    def __enter__(self) -> PartTimer:
        for part, functions in self.targets.items():
            for owner, attribute in functions:
                name = f"{owner.__name__.rsplit('.', 1)[-1]}.{attribute}"
                original = owner.__dict__.get(attribute)
                if original is None:
                    self.missing.append(name)
                    continue
                self._restore.append((owner, attribute, original))
                if isinstance(original, classmethod | staticmethod):
                    wrapped = type(original)(self._timed(part, name, original.__func__))
                else:
                    wrapped = self._timed(part, name, original)
                setattr(owner, attribute, wrapped)
        return self

    def __exit__(self, *exc) -> None:
        for owner, attribute, original in reversed(self._restore):
            setattr(owner, attribute, original)


def save_parts() -> dict[str, list[tuple[Any, str]]]:
    """Which functions of ``save_outputs``/``publish`` belong to which part (module or class, name)."""
    from autotrain.trainers.image_classification_custom import evaluation, outputs
    from autotrain.trainers.image_classification_custom.embedder import Embedder

    return {
        "evaluation": [
            (outputs, "choose_saved_weights"),
            (Embedder, "logits"),  # the evaluation splits' pass (inside WiSE-FT or the map: theirs)
            (outputs, "calibrate"),
            (outputs, "evaluate_splits"),
            (outputs, "species_report"),
            (evaluation, "species_evaluation"),
        ],
        "tsne_map": [(outputs, "_map_points"), (outputs, "_map_figure"), (outputs, "write_tsne")],
        "save": [
            (outputs, "save_arcface_model"),
            (outputs, "build_summary"),
            (outputs, "write_report_files"),
            (outputs, "publish"),
        ],
    }


def _cache_facts(ctx) -> dict[str, Any]:
    import numpy as np

    arrays = [ctx.caches.train, *ctx.caches.evaluation.values()]
    return {
        "decode_cache_bytes": int(sum(a.nbytes for a in arrays)),
        "decode_cache_spilled": any(isinstance(a, np.memmap) for a in arrays),
        "train_cache_side": int(ctx.caches.train.shape[1]),
        "cache_memory_mb": ctx.config.cache_memory_mb,
    }


def run_trainer(params) -> dict[str, Any]:
    """The stages of ``training.run`` on ``params``, each measured. Returns the JSON's content."""
    import torch

    from autotrain.trainers.image_classification_custom import outputs, stages, training
    from autotrain.trainers.image_classification_custom.arcface_trainer import train_model
    from autotrain.trainers.image_classification_custom.hp_search import search_hyperparameters
    from autotrain.trainers.image_classification_custom.wise_ft import keep_start_weights

    measured: dict[str, Measurement] = {}

    def stage(name: str, work: Callable[[], Any]) -> Any:
        with measure() as measured[name]:
            return work()

    def setup():
        ctx = stages.start_run(params)
        stages.load_data(ctx)
        stages.build_model(ctx)
        return ctx

    def epoch():
        search_hyperparameters(ctx)
        keep_start_weights(ctx)
        return train_model(ctx)

    ctx = stage("setup", setup)
    stage("decode_cache", lambda: stages.decode_caches(ctx))
    cache_facts = _cache_facts(ctx)
    stage("prototypes", lambda: stages.start_from_prototypes(ctx))
    trained = stage("epoch", epoch)
    with PartTimer(save_parts()) as split, measure() as whole:
        summary = outputs.save_outputs(ctx, trained)
        outputs.publish(ctx, summary)
    training.end_processes(ctx)
    for part in ("evaluation", "tsne_map"):
        if split.parts[part].seconds <= 0:
            _fail(
                f"no {part} function of save_outputs ran (timed: {sorted(split.calls)}); update save_parts()"
            )
        measured[part] = split.parts[part]
    rest = split.parts["save"]
    rest.seconds = whole.seconds - measured["evaluation"].seconds - measured["tsne_map"].seconds
    measured["save"] = rest
    data = ctx.data
    facts = {
        "train_images": len(data.train),
        "validation_images": len(data.validation) if data.validation else 0,
        "test_images": len(data.test) if data.test else 0,
        "classes": len(data.class_names),
        "image_size": ctx.image_size,
        "batch_size": params.batch_size,
        "epochs": params.epochs,
        "steps": int(trained.state.global_step),
        **cache_facts,
        "torch_threads": torch.get_num_threads(),
        "device": str(ctx.state.device),
        "dataloader_num_workers": params.dataloader_num_workers,
        "save_outputs_calls": split.calls,
        "untimed": split.missing,
        "project_mb": round(sum(f.stat().st_size for f in ctx.project.rglob("*") if f.is_file()) / MB, 1),
        "load_average": round(load_average(), 2),
    }
    return {
        "command": "trainer",
        "stages": {k: measured[k].as_dict() for k in TRAINER_STAGES},
        "facts": facts,
    }


# ------------------------------------------------------------------------------------------------------
# app
# ------------------------------------------------------------------------------------------------------


def _query_photos(reference, folder: Path, n: int) -> list[Path]:
    """Up to ``n`` reference images (field photos first) written as JPEGs at their stored size."""
    order = sorted(range(len(reference)), key=lambda i: (reference.domain[i] != "field", i))
    step = max(1, len(order) // max(1, n))
    files = []
    for rank, index in enumerate(order[::step][:n]):
        path = folder / f"query_{rank:02d}.jpg"
        reference.image(index, max_side=None).save(path, format="JPEG", quality=90)
        files.append(path)
    return files


def _time_queries(handlers, photos: list[Path]) -> Measurement:
    """One warm-up query, then the mean of one query per photo: identify, neighbours, place on the map."""

    def query(photo: Path) -> None:
        answer = handlers.predict([str(photo)])
        handlers.place_on_map(answer[-1])

    with measure() as first:
        query(photos[0])
    with measure() as timed:
        for photo in photos:
            query(photo)
    timed.seconds /= len(photos)
    timed.extra = {"queries": len(photos), "first_seconds": round(first.seconds, 3)}
    return timed


def start_parts() -> dict[str, list[tuple[Any, str]]]:
    """Which functions of the app's start-up belong to which part (module or class, name)."""
    from inference_app import app
    from inference_app.predictor import Predictor
    from inference_app.reference import ReferenceIndex

    return {
        "model": [(Predictor, "from_pretrained")],
        "reference_set": [(app, "load_reference_set")],
        "index": [(ReferenceIndex, "build")],
        "examples": [(ReferenceIndex, "example_files")],
        "map": [(app, "load_map")],
        "demo": [(app, "build_demo")],
    }


def app_start(model: Path, reference: Path, cache: Path, queries: int) -> dict[str, Any]:
    """One start of the app (``load_components`` + ``build_demo``), then ``queries`` timed queries.
    The start's ``parts`` are the seconds of each of :func:`start_parts`."""
    import torch

    from inference_app import app
    from inference_app.options import parse_args

    args = parse_args(["--model", str(model), "--reference", str(reference), "--cache-dir", str(cache)])
    with PartTimer(start_parts()) as split, measure() as start:
        predictor, index, tsne_map, taxonomy, examples = app.load_components(args)
        settings = app.AppSettings(examples=examples)
        app.build_demo(predictor, index, tsne_map, taxonomy, settings)
    start.extra = {"parts": {part: round(m.seconds, 3) for part, m in split.parts.items()}}
    out: dict[str, Any] = {
        "start": start.as_dict(),
        "facts": {
            "reference_images": len(index) if index is not None else 0,
            "species": predictor.num_classes,
            "embedding_dim": int(index.embeddings.shape[1]) if index is not None else 0,
            "index_from_cache": bool(index is not None and index.from_cache),
            "map_from_cache": bool(getattr(tsne_map, "from_cache", False)),
            "torch_threads": torch.get_num_threads(),
        },
    }
    if queries and index is not None and tsne_map is not None:
        handlers = app._Handlers(predictor, index, app.MapRenderer(tsne_map, index), taxonomy, settings)
        with tempfile.TemporaryDirectory() as folder:
            photos = _query_photos(index.reference, Path(folder), queries)
            out["query"] = _time_queries(handlers, photos).as_dict()
    return out


def _start_in_subprocess(args: argparse.Namespace, cache: Path, queries: int, name: str) -> dict[str, Any]:
    """:func:`app_start` in a fresh Python process; its result with the whole process's time and peak."""
    part = args.json.with_name(f"{args.json.stem}.{name}.json")
    log = args.json.with_name(f"{args.json.stem}.{name}.log")
    command = [sys.executable, str(Path(__file__).resolve()), "app-start", "--model", str(args.model)]
    command += ["--reference", str(args.reference), "--cache", str(cache), "--queries", str(queries)]
    try:
        process = run_measured([*command, "--json", str(part)], log)
    except subprocess.CalledProcessError as error:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
        _fail(f"{name} failed (exit {error.returncode}; log {log}): {tail[0]}")
    result = json.loads(part.read_text())
    part.unlink()
    result["start"].update(
        process_seconds=round(process.seconds, 3), process_peak_rss_mb=round(process.peak_rss_mb, 1)
    )
    return result


def run_app(args: argparse.Namespace) -> dict[str, Any]:
    """The first start (empty cache), the cached start and the queries. Returns the JSON's content."""
    if not (args.model / "config.json").is_file():
        _fail(f"model folder {args.model} does not exist or has no config.json (train one with `trainer`)")
    _check_dataset(args.reference, "reference set")
    cache = args.cache or args.model / DEFAULT_CACHE
    if args.cache is None:
        shutil.rmtree(cache, ignore_errors=True)
    elif cache.exists() and any(cache.iterdir()):
        _fail(f"--cache {cache} is not empty: a first start needs an empty cache folder")
    first = _start_in_subprocess(args, cache, 0, "app_first_start")
    cached = _start_in_subprocess(args, cache, args.queries, "app_cached_start")
    if "query" not in cached:
        _fail("no query was timed: the app started without a reference index or map")
    stages = {
        "app_first_start": first["start"],
        "app_cached_start": cached["start"],
        "app_query": cached["query"],
    }
    facts = {
        **first["facts"],
        "index_from_cache": {
            "first": first["facts"]["index_from_cache"],
            "cached": cached["facts"]["index_from_cache"],
        },
        "map_from_cache": {
            "first": first["facts"]["map_from_cache"],
            "cached": cached["facts"]["map_from_cache"],
        },
        "cache_dir": str(cache),
        "cache_mb": round(sum(f.stat().st_size for f in cache.rglob("*") if f.is_file()) / MB, 1),
        "load_average": round(load_average(), 2),
    }
    return {"command": "app", "stages": stages, "facts": facts}


# ------------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    trainer = commands.add_parser("trainer", help="the trainer's stages on a data_prep dataset")
    trainer.add_argument("--dataset", type=Path, required=True, help="dataset written by data_prep build")
    trainer.add_argument("--project", type=Path, required=True, help="the run's project (model) folder")
    trainer.add_argument("--image-size", type=int, default=None, help="default: config.json's")
    trainer.add_argument("--batch-size", type=int, default=32)
    trainer.add_argument("--epochs", type=int, default=1)
    trainer.add_argument(
        "--warmup-epochs", type=int, default=1, help="head-only epochs first (default 1; 0: full fine-tuning)"
    )
    app = commands.add_parser("app", help="the app's first and cached start-up and its queries")
    app.add_argument("--model", type=Path, required=True, help="a model folder written by the trainer")
    app.add_argument("--reference", type=Path, required=True, help="reference set: a data_prep dataset")
    app.add_argument(
        "--cache",
        type=Path,
        default=None,
        help=f"empty cache folder (default MODEL/{DEFAULT_CACHE}, emptied)",
    )
    app.add_argument("--queries", type=int, default=5, help="timed queries (after one warm-up)")
    start = commands.add_parser("app-start", help="internal: one start of the app (run by `app`)")
    start.add_argument("--model", type=Path, required=True)
    start.add_argument("--reference", type=Path, required=True)
    start.add_argument("--cache", type=Path, required=True)
    start.add_argument("--queries", type=int, default=0)
    for sub in (trainer, app, start):
        sub.add_argument("--json", type=Path, required=True, help="where to write the result")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    for name in ("json", "dataset", "project", "model", "reference", "cache"):  # the trainer changes folder
        if getattr(args, name, None) is not None:
            setattr(args, name, getattr(args, name).resolve())
    if args.command == "trainer":
        from autotrain.trainers.image_classification_custom.splits import DataInputError

        _check_dataset(args.dataset, "dataset")
        try:
            params = trainer_params(
                args.dataset, args.project, args.image_size, args.batch_size, args.epochs, args.warmup_epochs
            )
            result = run_trainer(params)
        except (DataInputError, FileNotFoundError) as error:  # the data must be fixed: one line
            _fail(f"dataset {args.dataset}: {error}")
    elif args.command == "app":
        result = run_app(args)
    else:
        result = app_start(args.model, args.reference, args.cache, args.queries)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.command != "app-start":
        print(json.dumps(result["stages"], indent=2))


if __name__ == "__main__":
    main()
