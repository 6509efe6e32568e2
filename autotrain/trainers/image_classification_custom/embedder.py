"""Every inference pass of the trainer over cached images: pooled features, embeddings and logits.

The prototype start, the "no training" baseline, WiSE-FT, calibration, the reports and the t-SNE map
all run the model over decoded uint8 images; :class:`Embedder` is the one place that batches,
resizes, normalises and puts the model in evaluation mode for them.

Logits are never held as an ``(N, C)`` matrix: the embeddings ``(N, D)`` are kept and
:class:`HeadLogits` computes the ArcFace head's logits from them a chunk of rows at a time, as the
metrics read them (:mod:`score_rows`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import numpy as np
import torch

from autotrain.trainers.image_classification_custom.dataset import NormalizeCollator, resize_uint8
from autotrain.trainers.image_classification_custom.modeling_arcface import (
    ArcFaceForImageClassification,
    ArcFaceHead,
)
from autotrain.trainers.image_classification_custom.score_rows import ScoreRows

LOGIT_BLOCK = 256
"""Rows per head pass of :class:`HeadLogits` when no batch size is given."""


@dataclass(frozen=True)
class HeadLogits(ScoreRows):
    """Inference logits ``(N, C)`` of embeddings ``(M, D)`` under an ArcFace head, computed a block of
    rows at a time (never all at once): ``head.cosine(e) * factor`` in float32 on the head's device, then
    divided by ``temperature`` in numpy.

    The head runs on fixed blocks of ``block`` consecutive embeddings (the :class:`Embedder`'s batches),
    and whatever rows are read are cut out of those blocks: a float32 matrix product's last bits depend
    on how many rows it has, so this way every logit is the same number however the rows are read, in
    chunks of any size or after :meth:`take`, and the same as the model's forward over those batches.

    ``factor`` is fixed when the object is made (``s / T`` of the head then: :meth:`of`), so a later
    change of the head's temperature leaves these logits as they were; the head's centres are read when
    the rows are.

    Args:
        head: the ArcFace head.
        embeddings: ``(M, D)`` float32 unit embeddings.
        factor: multiplies the clamped cosines (``ArcFaceHead.get_logits`` uses ``s / T``).
        temperature: divides the float32 logits afterwards (1: none).
        index: the embedding rows these logits are of, in order (None: all ``M``).
        block: embeddings per head pass.
    """

    head: ArcFaceHead
    embeddings: np.ndarray
    factor: float
    temperature: float = 1.0
    index: np.ndarray | None = None
    block: int = LOGIT_BLOCK

    @classmethod
    def of(cls, head: ArcFaceHead, embeddings: np.ndarray, block: int = LOGIT_BLOCK) -> HeadLogits:
        """The logits ``head.get_logits`` gives ``embeddings`` at the head's current temperature."""
        return cls(head, np.asarray(embeddings), head.scale / head.temperature, block=int(block))

    @property
    def shape(self) -> tuple[int, int]:
        n = len(self.embeddings) if self.index is None else len(self.index)
        return (n, self.head.num_classes)

    @torch.inference_mode()
    def _head_block(self, b: int) -> np.ndarray:
        lo, hi = b * self.block, min(len(self.embeddings), (b + 1) * self.block)
        x = torch.from_numpy(np.ascontiguousarray(self.embeddings[lo:hi])).to(self.head.weight.device)
        return (self.head.cosine(x) * self.factor).float().cpu().numpy()

    def rows(self, start: int, stop: int) -> np.ndarray:
        wanted = np.arange(start, stop) if self.index is None else self.index[start:stop]
        out = np.empty((len(wanted), self.head.num_classes), dtype=np.float32)
        which = wanted // self.block
        for b in np.unique(which):
            here = which == b
            out[here] = self._head_block(int(b))[wanted[here] - b * self.block]
        return out if self.temperature == 1.0 else out / self.temperature

    def take(self, indices: np.ndarray) -> HeadLogits:
        positions = np.arange(len(self)) if self.index is None else self.index
        return replace(self, index=positions[np.asarray(indices)])

    def divided_by(self, temperature: float) -> ScoreRows:
        """These logits divided by ``temperature`` (chunk by chunk, as ``logits / temperature``)."""
        if self.temperature == 1.0:
            return replace(self, temperature=float(temperature))
        return super().divided_by(temperature)


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

    def embed(self, images: np.ndarray, indices: np.ndarray | None = None) -> np.ndarray:
        """Unit embeddings ``(N, D)`` float32."""
        (embeddings,) = self._each_batch(images, indices, lambda x: (self.model.embed(x),))
        return embeddings

    def logits(self, images: np.ndarray, indices: np.ndarray | None = None) -> HeadLogits:
        """Logits ``(N, C)`` (no margin, divided by the model's temperature now) as a :class:`HeadLogits`
        over the images' embeddings: read in row chunks, never held whole; the head runs on the same
        batches as the backbone, so they are the numbers of the model's forward pass."""
        return HeadLogits.of(self.model.head, self.embed(images, indices), self.batch_size)


def prototype_head(
    train_features: np.ndarray, train_labels: np.ndarray, num_classes: int, scale: float
) -> ArcFaceHead:
    """An ArcFace head (no margin) whose centres are the class means of ``train_features`` ``(M, D)``
    (classes ``train_labels`` ``(M,)``): the "no training" nearest-class-mean line on the backbone's pooled
    features, no projection."""
    head = ArcFaceHead(train_features.shape[1], num_classes, scale=scale, margin=0.0)
    head.init_from_prototypes(torch.from_numpy(train_features), torch.from_numpy(train_labels))
    return head


def prototype_logits(
    train_features: np.ndarray, train_labels: np.ndarray, features: np.ndarray, num_classes: int, scale: float
) -> np.ndarray:
    """``scale * cos`` between ``features`` (N, D) and the class-mean prototypes of ``train_features``.

    The whole ``(N, C)`` matrix at once (for small sets; the baseline report reads
    ``HeadLogits.of(prototype_head(...), features)`` in chunks instead).

    Args:
        train_features: ``(M, D)`` pooled features of the training images.
        train_labels: ``(M,)`` their class ids.
        features: ``(N, D)`` pooled features to score.
        num_classes: ``C``.
        scale: ArcFace scale ``s``.

    Returns:
        ``(N, C)`` float32 logits.
    """
    head = prototype_head(train_features, train_labels, num_classes, scale)
    with torch.no_grad():
        return head.get_logits(torch.from_numpy(features)).numpy()
