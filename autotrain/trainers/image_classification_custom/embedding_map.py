"""The one t-SNE fit of the project: the model card's ``tsne.png`` and the app's map both use it.

openTSNE (Poličar et al., "openTSNE: a modular Python library for t-SNE dimensionality reduction and
embedding", JSS 2024) on cosine distances with PCA initialisation. The app keeps the returned
``TSNEEmbedding`` to place new photos into the fitted map (``TSNEEmbedding.transform``).
"""

from __future__ import annotations

import logging
import time

import numpy as np

logger = logging.getLogger(__name__)

DEFAULT_PERPLEXITY = 30.0
DEFAULT_N_ITER = 500
MIN_POINTS = 4


def tsne_perplexity(n: int, perplexity: float = DEFAULT_PERPLEXITY) -> float:
    """The perplexity used for ``n`` points: openTSNE needs ``3 * perplexity < n``, so small sets get less."""
    return float(max(1.0, min(perplexity, (n - 1) / 3.0)))


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

    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    if len(embeddings) < MIN_POINTS:
        raise ValueError(f"a t-SNE map needs at least {MIN_POINTS} images, got {len(embeddings)}")
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
