"""A t-SNE (default) or UMAP map of the reference embeddings, fitted once (cached), with new photos placed
into it.

The map is fitted by the project's one t-SNE fit (``embedding_map.fit_tsne``: openTSNE on cosine
distances, also used for the model card's ``tsne.png``). A query photo is *placed* into the existing map
(``TSNEEmbedding.transform``: start at its most similar reference point, then a short optimisation
against the fixed reference points) rather than refitting: the map stays stable and placement takes
milliseconds. Only the 2-D coordinates are cached (``.npz``, no pickle); the
nearest-neighbour affinities needed for placement are rebuilt from the embeddings on load.

A UMAP map (``--map umap``; ``embedding_map.fit_umap``, umap-learn on cosine distances) is the same
kind of object (:class:`UMAPMap`): new photos are placed with ``UMAP.transform`` against the fixed
reference points; its cache holds the coordinates too, and the neighbour graph placement needs is
rebuilt from the embeddings on load (a one-epoch refit whose layout is then replaced by the cached one).
:func:`load_map` picks the class by name.

Large reference sets: above ``max_points`` (``embedding_map.DEFAULT_MAX_POINTS``, 10,000; the app's
``--map-max-points``) the map is fitted on a sample and the other images are placed into it
(``embedding_map.fit_map``). The sample holds every species when there are at most ``max_points`` species,
else ``max_points`` of them (one image each; :func:`load_map` warns at start-up). The sample's indices are
cached with the coordinates, and placement works against the sample only, so start-up from the cache and
each query stay bounded. The figure then draws the fitted sample only (a 50,000-point plotly figure is
~10 MB sent with every query and sluggish in the browser) and says so in its title.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from inference_app.map_figure import MapFigure

logger = logging.getLogger(__name__)


def _embedding_map():
    """The trainer's ``embedding_map`` module, or the copy shipped next to the app in a Space."""
    try:
        from autotrain.trainers.image_classification_custom import embedding_map
    except ImportError:  # a Hugging Face Space: export_space.py puts the module next to the app
        from inference_app import embedding_map  # type: ignore[no-redef]
    return embedding_map


def _cached_coords(cache_dir: Path | None, name: str, n: int) -> tuple[np.ndarray, np.ndarray | None] | None:
    """The ``(n, 2)`` coordinates cached as ``cache_dir/name`` and the fitted sample's indices (None: all
    points were fitted), or None (absent, unreadable or stale)."""
    if cache_dir is None:
        return None
    path = Path(cache_dir) / name
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as cached:
            coords = cached["coords"]
            sample = cached["sample"] if "sample" in cached.files else None
    except (OSError, ValueError, KeyError) as error:
        logger.warning("unreadable map cache %s (%s): refitting", path, error)
        return None
    if coords.shape != (n, 2) or (sample is not None and (sample.ndim != 1 or not np.all(sample < n))):
        return None
    logger.info("map from cache %s", path)
    return coords, sample


def _write_coords(cache_dir: Path | None, name: str, coords: np.ndarray, sample: np.ndarray) -> None:
    """Cache ``(N, 2)`` coordinates (and the ``(S,)`` fitted sample when ``S < N``) as ``cache_dir/name``
    (written to a temporary file, then renamed)."""
    if cache_dir is None:
        return
    path = Path(cache_dir) / name
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        with temporary.open("wb") as handle:
            arrays = {"sample": sample} if len(sample) < len(coords) else {}
            np.savez(handle, coords=coords, **arrays)
        temporary.replace(path)
    except OSError as error:
        logger.warning("could not write the map cache %s: %s", path, error)


def _embeddings_digest(
    embeddings: np.ndarray, settings: str, labels: Sequence[str] | None = None, max_points: int | None = None
) -> str:
    """The cache key of a map: the embeddings and settings, plus the labels and ``max_points`` when the
    map is sampled (so caches of maps at or below ``max_points`` keep their old keys)."""
    digest = hashlib.sha256(np.ascontiguousarray(embeddings, dtype=np.float32).tobytes())
    digest.update(settings.encode())
    if max_points is not None and len(embeddings) > max_points:
        digest.update(f":sample{max_points}:".encode())
        digest.update("\n".join(map(str, labels if labels is not None else [])).encode())
    return digest.hexdigest()[:20]


def default_max_points() -> int:
    """The most reference images a map is fitted on (``embedding_map.DEFAULT_MAX_POINTS``); more are
    placed into it. The app's ``--map-max-points`` default."""
    return int(_embedding_map().DEFAULT_MAX_POINTS)


def _max_points(max_points: int | None) -> int:
    """``max_points``, or :func:`default_max_points`."""
    return int(max_points) if max_points is not None else default_max_points()


def _fit(embeddings: np.ndarray, method: str, labels, max_points: int | None, random_state: int, **kwargs):
    """``embedding_map.fit_map`` (a full fit at or below ``max_points``, else sample + placement)."""
    labels = list(labels) if labels is not None else None
    return _embedding_map().fit_map(
        embeddings, method, labels, _max_points(max_points), random_state, **kwargs
    )


def _fitted_sample(n: int, sample: np.ndarray | None) -> np.ndarray:
    """``(S,)`` int64 indices of the fitted points (``sample``, or all ``n``)."""
    return np.arange(n, dtype=np.int64) if sample is None else np.asarray(sample, dtype=np.int64)


class TSNEMap(MapFigure):
    """2-D t-SNE coordinates of reference embeddings, able to place new points.

    Args:
        embeddings: ``(N, D)`` reference embeddings (unit length).
        coords: ``(N, 2)`` their map coordinates.
        perplexity: perplexity used for the fit (and the affinities rebuilt for placement).
        n_jobs: threads for openTSNE.
        random_state: seed.
        from_cache: whether ``coords`` came from the cache.
        sample: ``(S,)`` indices of the points the map was fitted on (None: all); the others were placed
            into it, and new photos are placed against the fitted points only.
    """

    title = "t-SNE"

    def __init__(
        self,
        embeddings: np.ndarray,
        coords: np.ndarray,
        perplexity: float = 30.0,
        n_jobs: int = 1,
        random_state: int = 0,
        from_cache: bool = False,
        sample: np.ndarray | None = None,
    ):
        self.embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        self.sample = _fitted_sample(len(self.embeddings), sample)
        coords = np.array(coords, dtype=np.float64)  # a copy: openTSNE moves its own array in place
        # openTSNE's transform first centres the fitted map on its bounding box: do it here, so that
        # the coordinates shown and the ones new points are placed against are the same.
        fitted = coords[self.sample]
        self.coords = coords - (fitted.max(axis=0) + fitted.min(axis=0)) / 2 if len(coords) else coords
        self.perplexity = _embedding_map().tsne_perplexity(len(self.sample), perplexity)
        self.n_jobs = n_jobs
        self.random_state = random_state
        self.from_cache = from_cache
        self._embedding = None  # openTSNE.TSNEEmbedding, built lazily for placement

    @classmethod
    def fit(
        cls,
        embeddings: np.ndarray,
        perplexity: float = 30.0,
        n_iter: int = 500,
        n_jobs: int = 1,
        random_state: int = 0,
        labels: Sequence[str] | None = None,
        max_points: int | None = None,
    ) -> TSNEMap:
        """Fit a new map with ``embedding_map.fit_map`` (openTSNE ``fit_tsne``: cosine metric, PCA
        initialisation; above ``max_points`` fitted on a sample stratified by ``labels``, the rest placed).

        Args:
            embeddings: ``(N, D)`` reference embeddings; N >= 4.
            perplexity: target perplexity (lowered automatically for small N).
            n_iter: optimisation iterations after early exaggeration.
            n_jobs: threads.
            random_state: seed.
            labels: ``(N,)`` species, for the sample.
            max_points: the most points fitted (default ``embedding_map.DEFAULT_MAX_POINTS``).

        Raises:
            ValueError: fewer than 4 embeddings.
        """
        fitted = _fit(
            embeddings,
            "tsne",
            labels,
            max_points,
            random_state,
            perplexity=perplexity,
            n_iter=n_iter,
            n_jobs=n_jobs,
        )
        tsne_map = cls(embeddings, fitted.coords, perplexity, n_jobs, random_state, sample=fitted.sample)
        embedding = fitted.model
        embedding[:] = tsne_map.coords[tsne_map.sample]  # keep the fitted affinities, centred coordinates
        tsne_map._embedding = embedding
        tsne_map._tsne_embedding()
        return tsne_map

    @staticmethod
    def cache_key(
        embeddings: np.ndarray,
        perplexity: float,
        n_iter: int,
        random_state: int,
        labels: Sequence[str] | None = None,
        max_points: int | None = None,
    ) -> str:
        settings = f"{perplexity}:{n_iter}:{random_state}"
        return _embeddings_digest(embeddings, settings, labels, _max_points(max_points))

    @classmethod
    def load_or_fit(
        cls,
        embeddings: np.ndarray,
        cache_dir: Path | None,
        perplexity: float = 30.0,
        n_iter: int = 500,
        n_jobs: int = 1,
        random_state: int = 0,
        labels: Sequence[str] | None = None,
        max_points: int | None = None,
    ) -> TSNEMap:
        """The cached map for these embeddings, or a new fit (:meth:`fit`) written to ``cache_dir``."""
        name = f"tsne-{cls.cache_key(embeddings, perplexity, n_iter, random_state, labels, max_points)}.npz"
        cached = _cached_coords(cache_dir, name, len(embeddings))
        if cached is not None:
            coords, sample = cached
            return cls(embeddings, coords, perplexity, n_jobs, random_state, from_cache=True, sample=sample)
        tsne_map = cls.fit(embeddings, perplexity, n_iter, n_jobs, random_state, labels, max_points)
        _write_coords(cache_dir, name, tsne_map.coords, tsne_map.sample)
        return tsne_map

    def _tsne_embedding(self):
        """The openTSNE embedding with affinities over the reference points (rebuilt once if cached)."""
        if self._embedding is None:
            from openTSNE import TSNEEmbedding
            from openTSNE.affinity import PerplexityBasedNN

            affinities = PerplexityBasedNN(
                self.embeddings[self.sample],
                perplexity=self.perplexity,
                metric="cosine",
                n_jobs=self.n_jobs,
                random_state=self.random_state,
                verbose=False,
            )
            fitted = self.coords[self.sample]  # a copy
            self._embedding = TSNEEmbedding(fitted, affinities, random_state=self.random_state)
        # Placing a handful of points: one thread (joblib/thread start-up costs more than it saves: 50
        # iterations took 34 ms of CPU with 1 thread and 1.4 s with 2 on a busy 2-core machine) and FFT
        # repulsion ("auto" picks Barnes-Hut below 10,000 points: 10x slower for one query among 5,000).
        self._embedding.gradient_descent_params.update(n_jobs=1, negative_gradient_method="fft")
        affinities = self._embedding.affinities
        affinities.n_jobs = 1
        if getattr(affinities, "knn_index", None) is not None:
            affinities.knn_index.n_jobs = 1
        return self._embedding

    def prepare(self) -> None:
        """Build what placement needs now (at start-up) rather than on the first query."""
        self._tsne_embedding()

    def place(self, queries: np.ndarray, n_iter: int = 50, perplexity: float = 5.0) -> np.ndarray:
        """Place new embeddings into the fixed map.

        Each query starts at the map position of its most similar reference embedding (cosine), then
        openTSNE's ``transform`` optimises it against the fixed fitted reference points. (openTSNE's default
        start, the median of the 25 nearest points, can sit between clusters in small maps.)

        Args:
            queries: ``(M, D)`` embeddings.
            n_iter: optimisation steps (openTSNE's default is 250; 50 gives the same neighbourhoods in
                a sixth of the time).
            perplexity: perplexity of the query-to-reference affinities.

        Returns:
            ``(M, 2)`` coordinates.
        """
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        embedding = self._tsne_embedding()
        nearest = np.argmax(queries @ self.embeddings.T, axis=1)
        scale = float(np.ptp(self.coords, axis=0).max()) or 1.0
        start = self.coords[nearest] + 1e-3 * scale  # a hair off the point itself
        k = int(min(len(self.sample), max(3, 3 * perplexity)))
        perplexity = _embedding_map().tsne_perplexity(k, perplexity)
        placed = embedding.transform(queries, perplexity=perplexity, k=k, n_iter=n_iter, initialization=start)
        return np.asarray(placed, dtype=np.float64)


class UMAPMap(MapFigure):
    """2-D UMAP coordinates of reference embeddings, able to place new points (``UMAP.transform``).

    Args:
        embeddings: ``(N, D)`` reference embeddings.
        coords: ``(N, 2)`` their map coordinates.
        n_neighbors: neighbourhood size of the fit (and of the graph rebuilt for placement).
        min_dist: minimum distance of the fit.
        random_state: seed.
        from_cache: whether ``coords`` came from the cache.
        sample: ``(S,)`` indices of the points the map was fitted on (None: all); the others were placed
            into it, and new photos are placed against the fitted points only.
    """

    title = "UMAP"

    def __init__(
        self,
        embeddings: np.ndarray,
        coords: np.ndarray,
        n_neighbors: int = 15,
        min_dist: float = 0.1,
        random_state: int = 0,
        from_cache: bool = False,
        sample: np.ndarray | None = None,
    ):
        self.embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        self.sample = _fitted_sample(len(self.embeddings), sample)
        self.coords = np.array(coords, dtype=np.float64)
        self.n_neighbors, self.min_dist, self.random_state = n_neighbors, min_dist, random_state
        self.from_cache = from_cache
        self._reducer = None  # umap.UMAP, rebuilt lazily for placement when the map came from the cache

    @classmethod
    def fit(
        cls,
        embeddings: np.ndarray,
        n_neighbors: int = 15,
        min_dist: float = 0.1,
        random_state: int = 0,
        labels: Sequence[str] | None = None,
        max_points: int | None = None,
    ) -> UMAPMap:
        """Fit a new map with ``embedding_map.fit_map`` (``fit_umap``, cosine metric; above ``max_points``
        fitted on a sample stratified by ``labels``, the rest placed with ``UMAP.transform``).

        Raises:
            ValueError: fewer than 4 embeddings.
        """
        fitted = _fit(
            embeddings, "umap", labels, max_points, random_state, n_neighbors=n_neighbors, min_dist=min_dist
        )
        umap_map = cls(embeddings, fitted.coords, n_neighbors, min_dist, random_state, sample=fitted.sample)
        umap_map._reducer = fitted.model
        return umap_map

    @classmethod
    def load_or_fit(
        cls,
        embeddings: np.ndarray,
        cache_dir: Path | None,
        n_neighbors: int = 15,
        min_dist: float = 0.1,
        random_state: int = 0,
        labels: Sequence[str] | None = None,
        max_points: int | None = None,
    ) -> UMAPMap:
        """The cached map for these embeddings, or a new fit (:meth:`fit`) written to ``cache_dir``."""
        settings = f"umap:{n_neighbors}:{min_dist}:{random_state}"
        name = f"umap-{_embeddings_digest(embeddings, settings, labels, _max_points(max_points))}.npz"
        cached = _cached_coords(cache_dir, name, len(embeddings))
        if cached is not None:
            coords, sample = cached
            return cls(
                embeddings, coords, n_neighbors, min_dist, random_state, from_cache=True, sample=sample
            )
        umap_map = cls.fit(embeddings, n_neighbors, min_dist, random_state, labels, max_points)
        _write_coords(cache_dir, name, umap_map.coords, umap_map.sample)
        return umap_map

    def _umap(self):
        """The fitted ``umap.UMAP`` whose layout is ``coords`` (after a cache hit: the neighbour graph
        rebuilt by a one-epoch fit, its layout replaced by the cached one)."""
        if self._reducer is None:
            reducer = _embedding_map().fit_umap(
                self.embeddings[self.sample],
                self.n_neighbors,
                self.min_dist,
                self.random_state,
                n_epochs=1,
                init="random",
            )
            reducer.embedding_ = self.coords[self.sample].astype(np.float32)
            reducer.n_epochs = None  # placement: umap-learn's default number of epochs
            self._reducer = reducer
        return self._reducer

    def prepare(self) -> None:
        """Build what placement needs now (at start-up) rather than on the first query."""
        self._umap()

    def place(self, queries: np.ndarray) -> np.ndarray:
        """Place new ``(M, D)`` embeddings into the fixed map (``UMAP.transform``); ``(M, 2)`` coordinates."""
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        return np.asarray(self._umap().transform(queries), dtype=np.float64)


MAPS = {"tsne": TSNEMap, "umap": UMAPMap}


def _warn_when_species_are_left_out(n: int, labels: Sequence[str] | None, max_points: int) -> bool:
    """Log a warning when the map of ``n`` points is fitted on a sample of ``max_points`` that cannot hold
    one image of each of the ``labels``' species (the left-out species are not drawn, and their images are
    placed into a map fitted without them). Returns whether it warned."""
    if labels is None or n <= max_points:
        return False
    kinds = len(set(labels))
    if kinds <= max_points:
        return False
    logger.warning(
        "the map's sample of %d points holds %d of %d species; raise --map-max-points (env MAP_MAX_POINTS) "
        "to at least %d to draw every species",
        max_points,
        max_points,
        kinds,
        kinds,
    )
    return True


ReferenceMap = TSNEMap | UMAPMap


def load_map(
    method: str,
    embeddings: np.ndarray,
    cache_dir: Path | None,
    labels: Sequence[str] | None = None,
    max_points: int | None = None,
) -> TSNEMap | UMAPMap:
    """The ``method`` map (``"tsne"`` or ``"umap"``) of the ``(N, D)`` reference embeddings, cached in
    ``cache_dir``, ready to place photos; above ``max_points`` (default
    ``embedding_map.DEFAULT_MAX_POINTS``) fitted on a sample stratified by ``labels`` (species): every
    species when there are at most ``max_points`` of them, else ``max_points`` species, with a warning.

    Raises:
        ValueError: an unknown method, or fewer than 4 embeddings.
    """
    if method not in MAPS:
        raise ValueError(f"unknown map {method!r}; expected one of {', '.join(MAPS)}")
    _warn_when_species_are_left_out(len(embeddings), labels, _max_points(max_points))
    embedding_map = MAPS[method].load_or_fit(embeddings, cache_dir, labels=labels, max_points=max_points)
    embedding_map.prepare()
    return embedding_map
