"""Gradio app: photograph a plant, get ranked species, the nearest reference specimens and a map (t-SNE or UMAP).

Run ``python inference_app/app.py`` (after training the README's default model into
``herbarium-arcface/``) or ``python inference_app/app.py --model user/repo --reference DATA``.
``--help`` lists every option; on a Hugging Face Space the options come from environment variables
(``MODEL_ID``, ``REFERENCE``, ``TAXONOMY``, ``THRESHOLD``, ...: see ``options.py``).

UI code only: options, loading, prediction, retrieval and the map live in ``options.py``,
``predictor.py``, ``reference.py``, ``tsne_map.py`` and ``identification.py``. ``build_demo`` builds the UI and is what tests import;
nothing launches unless the file is run as a script.
"""

from __future__ import annotations

import argparse
import html
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

if __package__ in (None, ""):  # `python inference_app/app.py`: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inference_app.options import CACHE_SWEEP_S, KEEP_UPLOADS_S, parse_args

if __name__ == "__main__":
    # Bad flags and environment values fail here, before gradio is imported (it reads GRADIO_SERVER_PORT
    # on import) and before anything is loaded; --help answers without gradio, torch or the model.
    parse_args()

import gradio as gr
import numpy as np
from gradio.components.plot import PlotData

from inference_app.evaluation_view import evaluation_tab
from inference_app.identification import ENROLLED_MARK, Identification, identify, softmax
from inference_app.images import DEFAULT_MIN_SIDE, InvalidImageError
from inference_app.predictor import (
    DEFAULT_MODEL,
    EnrolmentError,
    ModelNotFoundError,
    Predictor,
    default_num_threads,
)
from inference_app.reference import ReferenceIndex, ReferenceSetError, default_cache_dir, load_reference_set
from inference_app.taxonomy import Taxonomy, TaxonomyError
from inference_app.tsne_map import ReferenceMap, load_map

logger = logging.getLogger("inference_app")
REPO_ROOT = Path(__file__).resolve().parents[1]

MAX_PHOTOS = 8
NO_MAP_TEXT = (
    "No reference set, so there is no map. Start the app with `--reference DATA`, where DATA is the "
    "dataset written by `data_prep` (for example `herbarium-arcface/autotrain-data`), a folder "
    "`DATA/<species>/*.jpg` or `DATA/{herbarium,field}/<species>/*.jpg`, or a Hub dataset id. "
    "The map is computed once and cached."
)
NO_REFERENCE_TEXT = (
    "No reference set loaded: start the app with `--reference DATA` to see the nearest specimens."
)
INTRO = (
    "Upload one or several photos **of the same plant** (leaf, flower, fruit, bark). The model ranks "
    "the species it knows, says when it is not confident, and shows the reference specimens "
    "(herbarium sheets and field photos) that look most alike."
)


@dataclass
class AppSettings:
    """What the UI shows and how answers are formed."""

    top_k: int = 5
    threshold: float = 0.5
    n_neighbours: int = 6
    combine: str = "mean_prob"
    title: str = "Herbarium-to-field plant identification"
    examples: list[Path] = field(default_factory=list)
    min_side: int = DEFAULT_MIN_SIDE  # photos with a shorter side below this get a message, not an answer
    max_pixels: int | None = None  # refused above this (None: IMAGE_MAX_PIXELS or 250 megapixels)
    keep_uploads_s: int = KEEP_UPLOADS_S  # uploads and files the app wrote are deleted after this

    @property
    def delete_cache(self) -> tuple[int, int]:
        """Gradio's ``delete_cache``: (how often to sweep, age at which a file is deleted), in seconds."""
        keep = max(60, int(self.keep_uploads_s))
        return min(CACHE_SWEEP_S, keep), keep


class MapRenderer:
    """Plotly JSON for the reference map, with the base traces serialised once (5,000 points ~ 1 MB; a
    map fitted on a sample draws that sample, at most ``--map-max-points`` points)."""

    def __init__(self, tsne_map: ReferenceMap, index: ReferenceIndex):
        self.tsne_map = tsne_map
        reference = index.reference
        base = tsne_map.figure(reference.species, reference.domain, reference.ids)
        figure = json.loads(base.to_json())
        self._traces = ",".join(json.dumps(trace) for trace in figure["data"])
        self._layout = json.dumps(figure["layout"])
        self.base = PlotData(type="plotly", plot=self.render())

    def render(self, coords: np.ndarray | None = None, names: Sequence[str] = ()) -> str:
        traces = self._traces
        if coords is not None and len(coords):
            query = self.tsne_map.figure(
                [], [], query_coords=coords, query_names=list(names)
            ).to_plotly_json()
            query_trace = query["data"][-1]
            query_trace["x"], query_trace["y"] = coords[:, 0].tolist(), coords[:, 1].tolist()
            traces += "," + json.dumps(query_trace, default=lambda v: v.tolist())
        return f'{{"data":[{traces}],"layout":{self._layout}}}'

    def place(self, embeddings: np.ndarray) -> PlotData:
        coords = self.tsne_map.place(embeddings)
        names = [f"your photo {i + 1}" for i in range(len(coords))] if len(coords) > 1 else ["your photo"]
        return PlotData(type="plotly", plot=self.render(coords, names))


def _label_value(
    ranked: Sequence[tuple[str, float]], display: Callable[[str], str] = str
) -> dict[str, float] | None:
    return {display(name): float(p) for name, p in ranked} if ranked else None


def _photo_paths(photos) -> list[str]:
    """Gallery input (list of (path, caption)), or plain paths from API callers."""
    if not photos:
        return []
    paths = []
    for item in photos:
        if isinstance(item, tuple | list):
            item = item[0]
        if isinstance(item, dict):
            item = item.get("path") or (item.get("image") or {}).get("path")
        if item:
            paths.append(str(item))
    return paths


def analyse_photos(
    predictor: Predictor,
    photos: Sequence[str],
    settings: AppSettings,
    taxonomy: Taxonomy | None = None,
) -> tuple[Identification, np.ndarray]:
    """Identify one plant from its photos: the answer, and the embeddings of the usable photos.

    Raises:
        gr.Error: no photo given, too many photos, or none of them is a usable image (with the reason).
    """
    if not photos:
        raise gr.Error("Upload one or more photos of the plant first.", print_exception=False)
    if len(photos) > MAX_PHOTOS:
        raise gr.Error(f"At most {MAX_PHOTOS} photos of one plant at a time (got {len(photos)}).")
    images, skipped = [], []
    for number, photo in enumerate(photos, start=1):
        try:
            images.append(
                predictor.open_photo(photo, min_side=settings.min_side, max_pixels=settings.max_pixels)
            )
        except InvalidImageError as error:
            skipped.append(f"photo {number}: {error}" if len(photos) > 1 else str(error))
    if not images:
        reasons = html.escape("; ".join(skipped), quote=False)  # the message is rendered as HTML
        raise gr.Error(f"Cannot use this upload: {reasons}", print_exception=False)
    embeddings, logits = predictor.embed_and_logits(images)
    result = identify(
        softmax(logits),
        predictor.labels,
        k=settings.top_k,
        threshold=settings.threshold,
        taxonomy=taxonomy,
        combine=settings.combine,  # type: ignore[arg-type]
        skipped=skipped,
        enrolled=predictor.enrolled,
    )
    return result, embeddings


class _Handlers:
    """The UI's event handlers (each is an API endpoint: ``/identify``, ``/place_on_map``, ``/reference_map``)."""

    def __init__(
        self,
        predictor: Predictor,
        index: ReferenceIndex | None,
        renderer: MapRenderer | None,
        taxonomy: Taxonomy | None,
        settings: AppSettings,
    ):
        self.predictor, self.index, self.renderer = predictor, index, renderer
        self.taxonomy, self.settings = taxonomy, settings
        self.thumbnail = lru_cache(maxsize=512)(index.thumbnail) if index is not None else None

    def predict(self, photos):
        """Photos of one plant -> status text, top-k species, genus, family, neighbours, embeddings."""
        result, embeddings = analyse_photos(
            self.predictor, _photo_paths(photos), self.settings, self.taxonomy
        )
        neighbours = []
        if self.index is not None:
            plant = embeddings.mean(axis=0)
            for n in self.index.neighbours(plant, self.settings.n_neighbours):
                caption = f"{n.species} · {n.domain} · similarity {n.similarity:.2f}"
                neighbours.append((self.thumbnail(n.index), caption))
        return (
            result.summary_markdown(),
            _label_value(result.species, result.display),
            _label_value(result.genus),
            _label_value(result.family),
            neighbours,
            embeddings,
        )

    def place_on_map(self, embeddings):
        """The reference map with the last identified photos placed on it (stars)."""
        if self.renderer is None:
            return None
        if embeddings is None or len(embeddings) == 0:
            return self.renderer.base
        return self.renderer.place(np.asarray(embeddings))

    def reference_map(self):
        """The reference map without query photos (shown on page load)."""
        return self.renderer.base if self.renderer is not None else None


def _model_info(predictor: Predictor, index: ReferenceIndex | None, taxonomy, settings: AppSettings) -> str:
    n_ref = f"{len(index)} reference images" if index is not None else "no reference set"
    return (
        f"Model: `{predictor.model_dir.name if predictor.model_dir else 'in memory'}` · "
        f"{predictor.num_classes} species · {n_ref} · confidence threshold {settings.threshold:.0%}"
        + (f" · taxonomy: {taxonomy.source}" if taxonomy else "")
    )


def _photo_column(settings: AppSettings) -> tuple[gr.Gallery, gr.Button]:
    """The upload gallery, the Identify button and the examples."""
    with gr.Column(scale=1):
        photos = gr.Gallery(
            label=f"Photos of one plant (up to {MAX_PHOTOS})",
            type="filepath",
            file_types=["image"],
            interactive=True,
            columns=3,
            height=300,
            elem_id="photos",
        )
        button = gr.Button("Identify", variant="primary", elem_id="identify")
        if settings.examples:
            gr.Examples(
                examples=[[[str(path)]] for path in settings.examples],
                inputs=[photos],
                label="Examples from the reference set",
            )
    return photos, button


def _answer_column(settings: AppSettings, taxonomy: Taxonomy | None) -> list[gr.components.Component]:
    """The status text and the species, genus and family rankings."""
    with gr.Column(scale=1):
        status = gr.Markdown("Upload photos and press **Identify**.", elem_id="status")
        ranks = [
            gr.Label(num_top_classes=settings.top_k, label=rank.title(), visible=visible, elem_id=rank)
            for rank, visible in (
                ("species", True),
                ("genus", taxonomy is not None),
                ("family", taxonomy is not None and taxonomy.has_family),
            )
        ]
    return [status, *ranks]


def _result_tabs(
    settings: AppSettings,
    has_index: bool,
    has_map: bool,
    map_title: str = "t-SNE",
    model_dir: Path | None = None,
) -> tuple[gr.Gallery, gr.Plot]:
    """The nearest-specimens gallery and the map (``map_title``: t-SNE or UMAP), each with its explanation
    when absent."""
    with gr.Tabs():
        with gr.Tab("Nearest reference specimens"):
            if not has_index:
                gr.Markdown(NO_REFERENCE_TEXT)
            neighbours = gr.Gallery(
                label="Most similar reference specimens (cosine similarity of embeddings)",
                columns=settings.n_neighbours,
                height=320,
                format="jpeg",
                interactive=False,
                visible=has_index,
                elem_id="neighbours",
            )
        with gr.Tab(f"{map_title} map"):
            if not has_map:
                gr.Markdown(NO_MAP_TEXT, elem_id="no-map")
            plot = gr.Plot(label=f"Reference embeddings ({map_title})", visible=has_map, elem_id="map")
        with gr.Tab("Evaluation"):
            evaluation_tab(model_dir)
    return neighbours, plot


def build_demo(
    predictor: Predictor,
    index: ReferenceIndex | None = None,
    tsne_map: ReferenceMap | None = None,
    taxonomy: Taxonomy | None = None,
    settings: AppSettings | None = None,
) -> gr.Blocks:
    """The Gradio UI around a loaded predictor (and optional reference index, map and taxonomy).

    Events and their API names: ``/identify`` (photos -> status, species, genus, family,
    neighbours), then ``/place_on_map`` (the same photos on the t-SNE map); ``/reference_map`` on
    page load.
    """
    settings = settings or AppSettings()
    renderer = MapRenderer(tsne_map, index) if (tsne_map is not None and index is not None) else None
    handlers = _Handlers(predictor, index, renderer, taxonomy, settings)
    with gr.Blocks(title=settings.title, analytics_enabled=False, delete_cache=settings.delete_cache) as demo:
        gr.Markdown(f"# {settings.title}\n{INTRO}")
        gr.Markdown(_model_info(predictor, index, taxonomy, settings), elem_id="model-info")
        with gr.Row():
            photos, button = _photo_column(settings)
            answers = _answer_column(settings, taxonomy)
        map_title = tsne_map.title if tsne_map is not None else "t-SNE"
        neighbours, plot = _result_tabs(
            settings, index is not None, renderer is not None, map_title, predictor.model_dir
        )
        embeddings_state = gr.State(None)

        event = button.click(
            handlers.predict,
            inputs=[photos],
            outputs=[*answers, neighbours, embeddings_state],
            api_name="identify",
        )
        event.success(
            handlers.place_on_map, inputs=[embeddings_state], outputs=[plot], api_name="place_on_map"
        )
        demo.load(handlers.reference_map, outputs=[plot], api_name="reference_map")
    return demo


def load_components(args: argparse.Namespace):
    """Load the model, reference index, map and taxonomy that ``args`` asks for (with progress logs)."""
    model = args.model
    if model == DEFAULT_MODEL and not Path(model).exists() and (REPO_ROOT / DEFAULT_MODEL).is_dir():
        model = str(REPO_ROOT / DEFAULT_MODEL)  # the README's default run, started from another folder
    threads = args.threads or max(1, default_num_threads() // max(1, args.concurrency))
    predictor = Predictor.from_pretrained(model, device=args.device, num_threads=threads)
    if args.enroll:
        added = predictor.enroll(args.enroll)
        logger.info(
            "enrolled %d species from %s (marked %s in answers)", len(added), args.enroll, ENROLLED_MARK
        )
    taxonomy = None
    if args.taxonomy:
        taxonomy = Taxonomy.from_csv(args.taxonomy)
        if args.genus_from_name:
            taxonomy = taxonomy.with_names_as_fallback(predictor.labels)
        taxonomy.check(predictor.labels)
    elif args.genus_from_name:
        taxonomy = Taxonomy.from_species_names(predictor.labels)
        taxonomy.check(predictor.labels)

    reference_source = args.reference
    if reference_source is None and not args.no_reference and predictor.model_dir is not None:
        default = predictor.model_dir / "autotrain-data"
        if default.is_dir():
            reference_source = str(default)
    index = tsne_map = None
    examples: list[Path] = []
    if reference_source and not args.no_reference:
        reference = load_reference_set(reference_source, split=args.reference_split)
        cache_dir = (
            Path(args.cache_dir)
            if args.cache_dir
            else default_cache_dir(predictor.model_dir, predictor.from_hub)
        )
        logger.info("reference set %s: %d images", reference.source, len(reference))
        index = ReferenceIndex.build(predictor, reference, cache_dir=cache_dir)
        key = ReferenceIndex.cache_key(predictor.model_hash, reference)
        examples = index.example_files(cache_dir / f"examples-{key}")
        if not args.no_map and len(index) >= 4:
            tsne_map = load_map(
                args.map, index.embeddings, cache_dir, index.reference.species, args.map_max_points
            )
    return predictor, index, tsne_map, taxonomy, examples


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, load everything once, launch the server. Returns an exit status."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        predictor, index, tsne_map, taxonomy, examples = load_components(args)
    except (ModelNotFoundError, ReferenceSetError, TaxonomyError, EnrolmentError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    settings = AppSettings(
        top_k=args.top_k,
        threshold=args.threshold,
        n_neighbours=args.neighbours,
        combine=args.combine,
        examples=examples,
        min_side=args.min_side,
        max_pixels=args.max_pixels,
        keep_uploads_s=args.keep_uploads,
    )
    demo = build_demo(predictor, index, tsne_map, taxonomy, settings)
    launch(demo, args.host, args.port, args.max_file_size, args.concurrency, args.queue_size)
    return 0


def launch(
    demo: gr.Blocks,
    host: str = "127.0.0.1",
    port: int = 7860,
    max_file_size: str | int = "25mb",
    concurrency: int = 2,
    queue_size: int = 64,
    **kwargs,
):
    """Queue (bounded concurrency and waiting room) and serve; no extra file paths are served."""
    demo.queue(default_concurrency_limit=concurrency, max_size=queue_size)
    return demo.launch(
        server_name=host,
        server_port=port,
        max_file_size=max_file_size,
        allowed_paths=[],
        ssr_mode=False,
        show_error=False,
        footer_links=["api"],
        **kwargs,
    )


if __name__ == "__main__":
    sys.exit(main())
