"""The project's map fits (t-SNE and UMAP): the model card's map figure and the app's map both use them.

t-SNE: openTSNE (Poličar et al., "openTSNE: a modular Python library for t-SNE dimensionality reduction and
embedding", JSS 2024) on cosine distances with PCA initialisation. The app keeps the returned
``TSNEEmbedding`` to place new photos into the fitted map (``TSNEEmbedding.transform``).

UMAP: umap-learn (McInnes, Healy and Melville, "UMAP: Uniform Manifold Approximation and Projection for
Dimension Reduction", arXiv:1802.03426) on cosine distances; the fitted ``umap.UMAP`` places new photos
with ``UMAP.transform``. UMAP keeps more of the global layout (which species groups sit near which) and
scales better than t-SNE; importing umap-learn costs ~20 s of numba compilation the first time.
"""

from __future__ import annotations

import logging
import time

import numpy as np

logger = logging.getLogger(__name__)

DEFAULT_PERPLEXITY = 30.0
DEFAULT_N_ITER = 500
MIN_POINTS = 4
DEFAULT_N_NEIGHBORS = 15
DEFAULT_MIN_DIST = 0.1
#: The map methods (the trainer's ``embedding_map`` and the app's ``--map``), the t-SNE default first.
MAP_METHODS = ("tsne", "umap")
MAP_TITLES = {"tsne": "t-SNE", "umap": "UMAP"}


def tsne_perplexity(n: int, perplexity: float = DEFAULT_PERPLEXITY) -> float:
    """The perplexity used for ``n`` points: openTSNE needs ``3 * perplexity < n``, so small sets get less."""
    return float(max(1.0, min(perplexity, (n - 1) / 3.0)))


def _map_input(embeddings: np.ndarray, method: str) -> np.ndarray:
    """``(N, D)`` embeddings as contiguous float32; ValueError naming ``method`` when ``N < MIN_POINTS``."""
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    if len(embeddings) < MIN_POINTS:
        raise ValueError(f"a {method} map needs at least {MIN_POINTS} images, got {len(embeddings)}")
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


def map_coordinates(embeddings: np.ndarray, method: str = "tsne", random_state: int = 0) -> np.ndarray:
    """``(N, 2)`` map coordinates of ``(N, D)`` embeddings by ``method`` (``"tsne"`` or ``"umap"``).

    Raises:
        ValueError: an unknown method, or fewer than 4 points.
    """
    if method == "tsne":
        return np.asarray(fit_tsne(embeddings, random_state=random_state), dtype=np.float64)
    if method == "umap":
        return np.asarray(fit_umap(embeddings, random_state=random_state).embedding_, dtype=np.float64)
    raise ValueError(f"unknown map method {method!r}; expected one of {', '.join(MAP_METHODS)}")
