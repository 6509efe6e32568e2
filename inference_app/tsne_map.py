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
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

DOMAIN_SYMBOLS = {"herbarium": "circle", "field": "diamond", "unknown": "square"}
QUERY_SYMBOL = "star"


def _embedding_map():
    """The trainer's ``embedding_map`` module, or the copy shipped next to the app in a Space."""
    try:
        from autotrain.trainers.image_classification_custom import embedding_map
    except ImportError:  # a Hugging Face Space: export_space.py puts the module next to the app
        from inference_app import embedding_map  # type: ignore[no-redef]
    return embedding_map


def _cached_coords(cache_dir: Path | None, name: str, n: int) -> np.ndarray | None:
    """The ``(n, 2)`` coordinates cached as ``cache_dir/name``, or None (absent, unreadable or stale)."""
    if cache_dir is None:
        return None
    path = Path(cache_dir) / name
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as cached:
            coords = cached["coords"]
    except (OSError, ValueError, KeyError) as error:
        logger.warning("unreadable map cache %s (%s): refitting", path, error)
        return None
    if coords.shape != (n, 2):
        return None
    logger.info("map from cache %s", path)
    return coords


def _write_coords(cache_dir: Path | None, name: str, coords: np.ndarray) -> None:
    """Cache ``(N, 2)`` coordinates as ``cache_dir/name`` (written to a temporary file, then renamed)."""
    if cache_dir is None:
        return
    path = Path(cache_dir) / name
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        with temporary.open("wb") as handle:
            np.savez(handle, coords=coords)
        temporary.replace(path)
    except OSError as error:
        logger.warning("could not write the map cache %s: %s", path, error)


def _embeddings_digest(embeddings: np.ndarray, settings: str) -> str:
    digest = hashlib.sha256(np.ascontiguousarray(embeddings, dtype=np.float32).tobytes())
    digest.update(settings.encode())
    return digest.hexdigest()[:20]


class MapFigure:
    """The interactive figure of a 2-D map: subclasses set ``coords`` ``(N, 2)`` and ``title``."""

    coords: np.ndarray
    title = "map"

    def figure(
        self,
        species: Sequence[str],
        domain: Sequence[str],
        ids: Sequence[str] | None = None,
        query_coords: np.ndarray | None = None,
        query_names: Sequence[str] | None = None,
        title: str | None = None,
    ):
        """An interactive plotly scatter: colour = species, marker = domain, star = query photos.

        Args:
            species: species of each reference point (``N`` names, in ``coords`` order).
            domain: ``"herbarium"``, ``"field"`` or ``"unknown"`` per point (the marker shape).
            ids: hover text per point (default: the index).
            query_coords: ``(M, 2)`` placed query photos, drawn as stars.
            query_names: their labels (default ``"your photo 1"``, ...).
            title: figure title.

        Returns:
            ``plotly.graph_objects.Figure``.
        """
        import plotly.graph_objects as go

        species, domain = list(species), list(domain)
        ids = list(ids) if ids is not None else [str(i) for i in range(len(species))]
        fig = go.Figure()
        for trace in self._species_traces(species, domain, ids):
            fig.add_trace(trace)
        for domain_name in sorted(set(domain)):  # legend entries for the marker shapes
            fig.add_trace(
                go.Scatter(
                    x=[None],
                    y=[None],
                    mode="markers",
                    name=f"shape: {domain_name}",
                    marker={"symbol": DOMAIN_SYMBOLS.get(domain_name, "square"), "color": "grey", "size": 8},
                    hoverinfo="skip",
                )
            )
        if query_coords is not None and len(query_coords):
            fig.add_trace(_query_trace(np.atleast_2d(query_coords), query_names))
        fig.update_layout(
            title=title,
            template="plotly_white",
            height=560,
            margin={"l": 10, "r": 10, "t": 40 if title else 10, "b": 10},
            legend={"itemsizing": "constant", "font": {"size": 10}},
            xaxis={"visible": False},
            yaxis={"visible": False, "scaleanchor": "x"},
        )
        return fig

    def _species_traces(self, species: list[str], domain: list[str], ids: list[str]) -> list:
        """One scatter trace per species (colour), with a marker shape per point's domain."""
        import plotly.graph_objects as go
        from plotly.colors import qualitative

        palette = qualitative.Dark24 + qualitative.Light24 + qualitative.Alphabet
        traces = []
        for colour_index, name in enumerate(sorted(set(species))):
            rows = [i for i, s in enumerate(species) if s == name]
            traces.append(
                go.Scatter(
                    x=self.coords[rows, 0],
                    y=self.coords[rows, 1],
                    mode="markers",
                    name=name,
                    legendgroup=name,
                    marker={
                        "color": palette[colour_index % len(palette)],
                        "symbol": [DOMAIN_SYMBOLS.get(domain[i], "square") for i in rows],
                        "size": 7,
                        "opacity": 0.8,
                        "line": {"width": 0.5, "color": "white"},
                    },
                    customdata=[[domain[i], ids[i]] for i in rows],
                    hovertemplate=f"<b>{name}</b><br>%{{customdata[0]}}<br>%{{customdata[1]}}<extra></extra>",
                )
            )
        return traces


class TSNEMap(MapFigure):
    """2-D t-SNE coordinates of reference embeddings, able to place new points.

    Args:
        embeddings: ``(N, D)`` reference embeddings (unit length).
        coords: ``(N, 2)`` their map coordinates.
        perplexity: perplexity used for the fit (and the affinities rebuilt for placement).
        n_jobs: threads for openTSNE.
        random_state: seed.
        from_cache: whether ``coords`` came from the cache.
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
    ):
        self.embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        coords = np.array(coords, dtype=np.float64)  # a copy: openTSNE moves its own array in place
        # openTSNE's transform first centres the reference map on its bounding box: do it here, so that
        # the coordinates shown and the ones new points are placed against are the same.
        self.coords = coords - (coords.max(axis=0) + coords.min(axis=0)) / 2 if len(coords) else coords
        self.perplexity = _embedding_map().tsne_perplexity(len(embeddings), perplexity)
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
    ) -> TSNEMap:
        """Fit a new map with ``embedding_map.fit_tsne`` (openTSNE, cosine metric, PCA initialisation).

        Args:
            embeddings: ``(N, D)`` reference embeddings; N >= 4.
            perplexity: target perplexity (lowered automatically for small N).
            n_iter: optimisation iterations after early exaggeration.
            n_jobs: threads.
            random_state: seed.

        Raises:
            ValueError: fewer than 4 embeddings.
        """
        embedding = _embedding_map().fit_tsne(embeddings, perplexity, n_iter, n_jobs, random_state)
        tsne_map = cls(embeddings, np.asarray(embedding), perplexity, n_jobs, random_state)
        embedding[:] = tsne_map.coords  # keep the fitted affinities, with the centred coordinates
        tsne_map._embedding = embedding
        tsne_map._tsne_embedding()
        return tsne_map

    @staticmethod
    def cache_key(embeddings: np.ndarray, perplexity: float, n_iter: int, random_state: int) -> str:
        return _embeddings_digest(embeddings, f"{perplexity}:{n_iter}:{random_state}")

    @classmethod
    def load_or_fit(
        cls,
        embeddings: np.ndarray,
        cache_dir: Path | None,
        perplexity: float = 30.0,
        n_iter: int = 500,
        n_jobs: int = 1,
        random_state: int = 0,
    ) -> TSNEMap:
        """The cached map for these embeddings, or a new fit written to ``cache_dir``."""
        key = cls.cache_key(embeddings, perplexity, n_iter, random_state)
        coords = _cached_coords(cache_dir, f"tsne-{key}.npz", len(embeddings))
        if coords is not None:
            return cls(embeddings, coords, perplexity, n_jobs, random_state, from_cache=True)
        tsne_map = cls.fit(embeddings, perplexity, n_iter, n_jobs, random_state)
        _write_coords(cache_dir, f"tsne-{key}.npz", tsne_map.coords)
        return tsne_map

    def _tsne_embedding(self):
        """The openTSNE embedding with affinities over the reference points (rebuilt once if cached)."""
        if self._embedding is None:
            from openTSNE import TSNEEmbedding
            from openTSNE.affinity import PerplexityBasedNN

            affinities = PerplexityBasedNN(
                self.embeddings,
                perplexity=self.perplexity,
                metric="cosine",
                n_jobs=self.n_jobs,
                random_state=self.random_state,
                verbose=False,
            )
            self._embedding = TSNEEmbedding(self.coords.copy(), affinities, random_state=self.random_state)
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
        openTSNE's ``transform`` optimises it against the fixed reference points. (openTSNE's default
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
        k = int(min(len(self.embeddings), max(3, 3 * perplexity)))
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
    ):
        self.embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        self.coords = np.array(coords, dtype=np.float64)
        self.n_neighbors, self.min_dist, self.random_state = n_neighbors, min_dist, random_state
        self.from_cache = from_cache
        self._reducer = None  # umap.UMAP, rebuilt lazily for placement when the map came from the cache

    @classmethod
    def fit(
        cls, embeddings: np.ndarray, n_neighbors: int = 15, min_dist: float = 0.1, random_state: int = 0
    ) -> UMAPMap:
        """Fit a new map with ``embedding_map.fit_umap`` (cosine metric).

        Raises:
            ValueError: fewer than 4 embeddings.
        """
        reducer = _embedding_map().fit_umap(embeddings, n_neighbors, min_dist, random_state)
        umap_map = cls(embeddings, reducer.embedding_, n_neighbors, min_dist, random_state)
        umap_map._reducer = reducer
        return umap_map

    @classmethod
    def load_or_fit(
        cls,
        embeddings: np.ndarray,
        cache_dir: Path | None,
        n_neighbors: int = 15,
        min_dist: float = 0.1,
        random_state: int = 0,
    ) -> UMAPMap:
        """The cached map for these embeddings, or a new fit written to ``cache_dir``."""
        name = f"umap-{_embeddings_digest(embeddings, f'umap:{n_neighbors}:{min_dist}:{random_state}')}.npz"
        coords = _cached_coords(cache_dir, name, len(embeddings))
        if coords is not None:
            return cls(embeddings, coords, n_neighbors, min_dist, random_state, from_cache=True)
        umap_map = cls.fit(embeddings, n_neighbors, min_dist, random_state)
        _write_coords(cache_dir, name, umap_map.coords)
        return umap_map

    def _umap(self):
        """The fitted ``umap.UMAP`` whose layout is ``coords`` (after a cache hit: the neighbour graph
        rebuilt by a one-epoch fit, its layout replaced by the cached one)."""
        if self._reducer is None:
            reducer = _embedding_map().fit_umap(
                self.embeddings, self.n_neighbors, self.min_dist, self.random_state, n_epochs=1, init="random"
            )
            reducer.embedding_ = self.coords.astype(np.float32)
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
ReferenceMap = TSNEMap | UMAPMap


def load_map(method: str, embeddings: np.ndarray, cache_dir: Path | None) -> TSNEMap | UMAPMap:
    """The ``method`` map (``"tsne"`` or ``"umap"``) of the reference embeddings, cached in ``cache_dir``,
    ready to place photos.

    Raises:
        ValueError: an unknown method, or fewer than 4 embeddings.
    """
    if method not in MAPS:
        raise ValueError(f"unknown map {method!r}; expected one of {', '.join(MAPS)}")
    embedding_map = MAPS[method].load_or_fit(embeddings, cache_dir)
    embedding_map.prepare()
    return embedding_map


def _query_trace(query_coords: np.ndarray, query_names: Sequence[str] | None):
    """The placed query photos ``(M, 2)`` as labelled stars."""
    import plotly.graph_objects as go

    names = list(query_names) if query_names else [f"your photo {i + 1}" for i in range(len(query_coords))]
    return go.Scatter(
        x=query_coords[:, 0],
        y=query_coords[:, 1],
        mode="markers+text",
        name="your photo",
        text=names,
        textposition="top center",
        marker={"symbol": QUERY_SYMBOL, "size": 20, "color": "black", "line": {"width": 2, "color": "gold"}},
        hovertemplate="<b>%{text}</b><extra></extra>",
    )
