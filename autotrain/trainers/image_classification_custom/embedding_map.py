"""The project's map fits (t-SNE and UMAP): the model card's map figure and the app's map both use them.

t-SNE: openTSNE (Poličar et al., "openTSNE: a modular Python library for t-SNE dimensionality reduction and
embedding", JSS 2024) on cosine distances with PCA initialisation. The app keeps the returned
``TSNEEmbedding`` to place new photos into the fitted map (``TSNEEmbedding.transform``).

UMAP: umap-learn (McInnes, Healy and Melville, "UMAP: Uniform Manifold Approximation and Projection for
Dimension Reduction", arXiv:1802.03426) on cosine distances; the fitted ``umap.UMAP`` places new photos
with ``UMAP.transform``. UMAP keeps more of the global layout (which species groups sit near which) and
scales better than t-SNE; importing umap-learn costs ~20 s of numba compilation the first time.

Large sets (:func:`fit_map`): above ``max_points`` (:data:`DEFAULT_MAX_POINTS`) the map is fitted on a
seeded sample (:func:`sample_indices`: every species in it when there are at most ``max_points`` species,
else ``max_points`` of them, one image each) and the other points are placed into
the fitted map (``TSNEEmbedding.transform`` / ``UMAP.transform``, in batches with a progress bar), so
the fit costs the same at 50,000 points as at 10,000 and placing grows linearly. At or below
``max_points`` nothing changes: the map is the full fit.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

DEFAULT_PERPLEXITY = 30.0
DEFAULT_N_ITER = 500
MIN_POINTS = 4
DEFAULT_N_NEIGHBORS = 15
DEFAULT_MIN_DIST = 0.1
#: The map methods (the trainer's ``embedding_map`` and the app's ``--map``), the t-SNE default first.
MAP_METHODS = ("tsne", "umap")
MAP_TITLES = {"tsne": "t-SNE", "umap": "UMAP"}
#: Above this many points a map is fitted on a sample of this size and the rest are placed into it.
DEFAULT_MAX_POINTS = 10_000
#: Points placed per ``transform`` call when the rest of a large set is placed (one progress-bar step).
PLACE_BATCH = 5_000


def tsne_perplexity(n: int, perplexity: float = DEFAULT_PERPLEXITY) -> float:
    """The perplexity used for ``n`` points: openTSNE needs ``3 * perplexity < n``, so small sets get less."""
    return float(max(1.0, min(perplexity, (n - 1) / 3.0)))


def _map_input(embeddings: np.ndarray, method: str) -> np.ndarray:
    """``(N, D)`` embeddings as contiguous float32; ValueError naming ``method`` when ``N < MIN_POINTS``.

    A zero row has no cosine distance (openTSNE and UMAP then fail with "Input contains NaN"): zero rows
    (a backbone whose features are all zero for some images, e.g. at a tiny image size) are given one
    shared direction, so they sit together on the map, and a warning counts them.
    """
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    if len(embeddings) < MIN_POINTS:
        raise ValueError(f"a {method} map needs at least {MIN_POINTS} images, got {len(embeddings)}")
    zero = ~np.any(embeddings, axis=1)
    if zero.any():
        logger.warning(
            f"{int(zero.sum())} of {len(embeddings)} embeddings are all zero: drawn together on the map"
        )
        embeddings = embeddings.copy()
        embeddings[zero] = 1.0 / np.sqrt(embeddings.shape[1])
    return embeddings


def fit_tsne(
    embeddings: np.ndarray,
    perplexity: float = DEFAULT_PERPLEXITY,
    n_iter: int = DEFAULT_N_ITER,
    n_jobs: int = 1,
    random_state: int = 0,
):
    """Fit a 2-D t-SNE map.

    Args:
        embeddings: ``(N, D)`` embeddings (unit length for ArcFace models); ``N >= 4``.
        perplexity: target perplexity, lowered by :func:`tsne_perplexity` for small ``N``.
        n_iter: optimisation iterations after early exaggeration.
        n_jobs: threads.
        random_state: seed (the same seed and input give the same map).

    Returns:
        ``openTSNE.TSNEEmbedding`` of shape ``(N, 2)`` (a numpy array subclass that can ``transform``).

    Raises:
        ValueError: fewer than 4 points.
    """
    from openTSNE import TSNE

    embeddings = _map_input(embeddings, "t-SNE")
    start = time.perf_counter()
    tsne = TSNE(
        n_components=2,
        perplexity=tsne_perplexity(len(embeddings), perplexity),
        metric="cosine",
        initialization="pca",
        n_iter=n_iter,
        n_jobs=n_jobs,
        random_state=random_state,
        verbose=False,
    )
    embedding = tsne.fit(embeddings)
    logger.info("t-SNE map of %d embeddings fitted in %.1fs", len(embeddings), time.perf_counter() - start)
    return embedding


def umap_neighbours(n: int, n_neighbors: int = DEFAULT_N_NEIGHBORS) -> int:
    """The number of neighbours used for ``n`` points: at most ``n - 1`` (and at least 2)."""
    return int(max(2, min(n_neighbors, n - 1)))


def fit_umap(
    embeddings: np.ndarray,
    n_neighbors: int = DEFAULT_N_NEIGHBORS,
    min_dist: float = DEFAULT_MIN_DIST,
    random_state: int = 0,
    n_epochs: int | None = None,
    init: str | np.ndarray = "spectral",
):
    """Fit a 2-D UMAP map.

    Args:
        embeddings: ``(N, D)`` embeddings; ``N >= 4``.
        n_neighbors: neighbourhood size, lowered by :func:`umap_neighbours` for small ``N``.
        min_dist: how tightly points may pack in the map.
        random_state: seed (fixed seed: single-threaded and reproducible).
        n_epochs: optimisation epochs (None: umap-learn's default, 500 below 10,000 points).
        init: ``"spectral"``, ``"random"`` or an ``(N, 2)`` starting layout.

    Returns:
        The fitted ``umap.UMAP``: ``embedding_`` holds the ``(N, 2)`` map, ``transform(X)`` places new
        ``(M, D)`` embeddings into it.

    Raises:
        ValueError: fewer than 4 points.
    """
    try:
        import umap
    except ImportError as error:  # e.g. a Space whose requirements list only openTSNE
        raise ImportError(
            f"a UMAP map needs umap-learn ({error}): pip install umap-learn, or use t-SNE"
        ) from error

    embeddings = _map_input(embeddings, "UMAP")
    start = time.perf_counter()
    reducer = umap.UMAP(
        n_components=2,
        n_neighbors=umap_neighbours(len(embeddings), n_neighbors),
        min_dist=min_dist,
        metric="cosine",
        random_state=random_state,
        n_jobs=1,  # a fixed seed makes umap-learn single-threaded anyway (it warns when told otherwise)
        n_epochs=n_epochs,
        init=init,
        verbose=False,
    )
    reducer.fit(embeddings)
    logger.info("UMAP map of %d embeddings fitted in %.1fs", len(embeddings), time.perf_counter() - start)
    return reducer


def sample_indices(
    n: int, max_points: int = DEFAULT_MAX_POINTS, labels: np.ndarray | None = None, seed: int = 0
) -> np.ndarray:
    """Sorted indices of the points a map of ``n`` points is fitted on.

    All ``n`` when ``n <= max_points``; otherwise a seeded sample of ``max_points``: with ``labels``,
    one image of every species first (a random one; when there are more species than ``max_points``,
    a random ``max_points`` of them get one), then the rest drawn uniformly, so each species keeps
    about its share of the sample; without labels, a uniform sample.

    Args:
        n: number of points.
        max_points: largest sample (>= :data:`MIN_POINTS`).
        labels: ``(n,)`` species (names or ids), or None.
        seed: sampling seed (the same seed and labels give the same sample).

    Returns:
        ``(min(n, max_points),)`` int64 indices, ascending.

    Raises:
        ValueError: ``max_points`` below :data:`MIN_POINTS`, or ``labels`` of another length than ``n``.
    """
    if max_points < MIN_POINTS:
        raise ValueError(f"max_points must be at least {MIN_POINTS}, got {max_points}")
    if n <= max_points:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(seed)
    if labels is None:
        return np.sort(rng.choice(n, max_points, replace=False)).astype(np.int64)
    labels = np.asarray(labels)
    if len(labels) != n:
        raise ValueError(f"labels has {len(labels)} entries for {n} points")
    species = np.unique(labels, return_inverse=True)[1].reshape(-1)
    order = rng.permutation(n)
    one_each = order[np.unique(species[order], return_index=True)[1]]  # a random image of every species
    if len(one_each) >= max_points:
        return np.sort(rng.choice(one_each, max_points, replace=False)).astype(np.int64)
    taken = np.zeros(n, dtype=bool)
    taken[one_each] = True
    others = order[~taken[order]][: max_points - len(one_each)]
    return np.sort(np.concatenate([one_each, others])).astype(np.int64)


@dataclass
class MapFit:
    """A fitted map of ``N`` points.

    Attributes:
        coords: ``(N, 2)`` float64 map coordinates of every point.
        sample: ``(S,)`` ascending indices of the points the map was fitted on (all ``N`` when
            ``N <= max_points``); the others were placed into it.
        model: what places new points: the ``openTSNE.TSNEEmbedding`` ``(S, 2)`` or the fitted
            ``umap.UMAP`` (fitted on the sample).
    """

    coords: np.ndarray
    sample: np.ndarray
    model: Any

    @property
    def sampled(self) -> bool:
        """Whether the map was fitted on a sample (``S < N``)."""
        return len(self.sample) < len(self.coords)


def _place(model, method: str, points: np.ndarray, progress: bool) -> np.ndarray:
    """``(M, D)`` points placed into a fitted map, :data:`PLACE_BATCH` at a time; ``(M, 2)`` float64.

    t-SNE: openTSNE's ``transform`` with its defaults (start at the median of the 25 nearest fitted
    points, 250 steps against the fixed fitted points) and FFT repulsion; UMAP: ``UMAP.transform``.
    Each new point is optimised against the fitted points only, never against the other new points.
    """
    if method == "tsne":
        model.gradient_descent_params.update(negative_gradient_method="fft")
    placed = []
    bar = tqdm(total=len(points), desc=f"placing points into the {MAP_TITLES[method]} map", unit="pt")
    bar.disable = not progress
    for start in range(0, len(points), PLACE_BATCH):
        batch = points[start : start + PLACE_BATCH]
        placed.append(np.asarray(model.transform(batch), dtype=np.float64))
        bar.update(len(batch))
    bar.close()
    return np.concatenate(placed)


def fit_map(
    embeddings: np.ndarray,
    method: str = "tsne",
    labels: np.ndarray | None = None,
    max_points: int = DEFAULT_MAX_POINTS,
    random_state: int = 0,
    progress: bool = True,
    **fit_kwargs,
) -> MapFit:
    """A 2-D map of ``(N, D)`` embeddings that stays affordable for large ``N``.

    ``N <= max_points``: the full fit (:func:`fit_tsne` / :func:`fit_umap`), exactly as before.
    Above: fitted on :func:`sample_indices` (with ``labels``, every species in it when there are at most
    ``max_points`` species, else a random ``max_points`` of them, one image each), then the
    other points placed into that map (:func:`_place`); the fitted points keep their layout (a t-SNE
    map is centred on its bounding box first, as openTSNE's ``transform`` does).

    Args:
        embeddings: ``(N, D)``; ``N >= 4``.
        method: ``"tsne"`` or ``"umap"``.
        labels: ``(N,)`` species per point, for the stratified sample (optional).
        max_points: the most points fitted; more are placed.
        random_state: seed of the sample and of the fit.
        progress: a tqdm bar while placing.
        **fit_kwargs: passed to the fit (``perplexity``, ``n_iter``, ``n_jobs``; ``n_neighbors``, ...).

    Returns:
        :class:`MapFit`.

    Raises:
        ValueError: an unknown method, fewer than 4 points, ``max_points < 4`` or mislabelled input.
    """
    if method not in MAP_METHODS:
        raise ValueError(f"unknown map method {method!r}; expected one of {', '.join(MAP_METHODS)}")
    embeddings = _map_input(embeddings, MAP_TITLES[method])
    sample = sample_indices(len(embeddings), max_points, labels, random_state)
    fitted = embeddings if len(sample) == len(embeddings) else embeddings[sample]
    fit = fit_tsne if method == "tsne" else fit_umap
    model = fit(fitted, random_state=random_state, **fit_kwargs)
    coords = np.empty((len(embeddings), 2), dtype=np.float64)
    if len(sample) < len(embeddings):
        start = time.perf_counter()
        rest = np.setdiff1d(np.arange(len(embeddings)), sample, assume_unique=True)
        coords[rest] = _place(model, method, embeddings[rest], progress)
        logger.info(
            "%s map: %d points fitted, %d placed into it in %.1fs",
            MAP_TITLES[method],
            len(sample),
            len(rest),
            time.perf_counter() - start,
        )
    coords[sample] = np.asarray(model if method == "tsne" else model.embedding_, dtype=np.float64)
    return MapFit(coords, sample, model)


def map_coordinates(
    embeddings: np.ndarray,
    method: str = "tsne",
    random_state: int = 0,
    labels: np.ndarray | None = None,
    max_points: int = DEFAULT_MAX_POINTS,
) -> np.ndarray:
    """``(N, 2)`` map coordinates of ``(N, D)`` embeddings by ``method`` (``"tsne"`` or ``"umap"``);
    above ``max_points`` fitted on a sample stratified by ``labels`` (see :func:`fit_map`).

    Raises:
        ValueError: an unknown method, or fewer than 4 points.
    """
    return fit_map(embeddings, method, labels, max_points, random_state).coords
