"""Every inference pass of the trainer over cached images: pooled features, embeddings and logits.

The prototype start, the "no training" baseline, WiSE-FT, calibration, the reports and the t-SNE map
all run the model over decoded uint8 images; :class:`Embedder` is the one place that batches,
resizes, normalises and puts the model in evaluation mode for them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from autotrain.trainers.image_classification_custom.dataset import NormalizeCollator, resize_uint8
from autotrain.trainers.image_classification_custom.modeling_arcface import ArcFaceForImageClassification


@dataclass
class Embedder:
    """Runs ``model`` over cached uint8 images ``(N, H, W, 3)``, resized to ``image_size`` if needed.

    Args:
        model: the ArcFace model (its weights may change between calls: WiSE-FT, temperature).
        collator: normalises uint8 batches with the model's mean/std.
        batch_size: images per forward pass.
        image_size: side in pixels the model sees.
        interpolation: resize filter (``bilinear`` or ``bicubic``) for cached images of another size.
        device: where the batches go (the model's device).
    """

    model: ArcFaceForImageClassification
    collator: NormalizeCollator
    batch_size: int
    image_size: int
    interpolation: str
    device: torch.device

    def batches(self, images: np.ndarray, indices: np.ndarray | None = None) -> Iterator[torch.Tensor]:
        """Normalised float batches ``(B, 3, image_size, image_size)`` on ``device``, in ``indices`` order
        (all images when None)."""
        order = np.arange(len(images)) if indices is None else np.asarray(indices)
        for start in range(0, len(order), self.batch_size):
            batch = resize_uint8(
                images[order[start : start + self.batch_size]], self.image_size, self.interpolation
            )
            yield self.collator.normalize(batch).to(self.device)

    @torch.inference_mode()
    def _each_batch(
        self,
        images: np.ndarray,
        indices: np.ndarray | None,
        step: Callable[[torch.Tensor], tuple[torch.Tensor, ...]],
    ) -> list[np.ndarray]:
        """``step`` on every batch with the model in eval mode (its mode restored after); the outputs of
        each position concatenated as float32 numpy arrays."""
        was_training = self.model.training
        self.model.eval()
        try:
            outputs = [tuple(t.float().cpu() for t in step(x)) for x in self.batches(images, indices)]
        finally:
            self.model.train(was_training)
        return [torch.cat(parts).numpy() for parts in zip(*outputs)]

    def features(self, images: np.ndarray, indices: np.ndarray | None = None) -> np.ndarray:
        """Pooled backbone features ``(N, feature_dim)`` float32 (before the projection)."""
        (features,) = self._each_batch(images, indices, lambda x: (self.model.forward_features(x),))
        return features

    def embed_and_logits(
        self, images: np.ndarray, indices: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Unit embeddings ``(N, D)`` and logits ``(N, C)`` (no margin, divided by the model's
        temperature), both float32."""

        embeddings, logits = self._each_batch(images, indices, self.model.embed_and_logits)
        return embeddings, logits

    def logits(self, images: np.ndarray, indices: np.ndarray | None = None) -> np.ndarray:
        """Logits ``(N, C)`` float32, as :meth:`embed_and_logits`."""
        return self.embed_and_logits(images, indices)[1]


def prototype_logits(
    train_features: np.ndarray, train_labels: np.ndarray, features: np.ndarray, num_classes: int, scale: float
) -> np.ndarray:
    """``scale * cos`` between ``features`` (N, D) and the class-mean prototypes of ``train_features``.

    The "no training" line: nearest-class-mean on the backbone's pooled features, no projection.

    Args:
        train_features: ``(M, D)`` pooled features of the training images.
        train_labels: ``(M,)`` their class ids.
        features: ``(N, D)`` pooled features to score.
        num_classes: ``C``.
        scale: ArcFace scale ``s``.

    Returns:
        ``(N, C)`` float32 logits.
    """
    from autotrain.trainers.image_classification_custom.modeling_arcface import ArcFaceHead

    head = ArcFaceHead(train_features.shape[1], num_classes, scale=scale, margin=0.0)
    head.init_from_prototypes(torch.from_numpy(train_features), torch.from_numpy(train_labels))
    with torch.no_grad():
        return head.get_logits(torch.from_numpy(features)).numpy()
