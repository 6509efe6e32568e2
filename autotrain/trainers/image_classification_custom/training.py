"""The training run: data -> model -> two-stage Trainer run -> model folder, metrics, t-SNE, card, push.

Philosophy: keep what the pretrained features know and add to it. Fine-tuning a freshly initialised
softmax head on herbarium sheets can make field accuracy *worse* than frozen ImageNet features with
class-mean prototypes, so this trainer

1. starts the ArcFace class centres at those prototypes (``head_init: prototypes``): epoch 0 is already
   the nearest-class-mean classifier;
2. trains only the head (projection + ArcFace) for ``warmup_epochs`` with the backbone frozen, BatchNorm
   statistics and dropout included (stage 1);
3. then fine-tunes everything, the backbone at a lower learning rate than the head (stage 2),
4. and keeps the checkpoint with the best field-validation MRR.

:func:`run` is the list of stages; each is a function of the shared :class:`stages.RunContext`:

- :mod:`stages`: start, data, model, decoded-image caches, prototypes and the "no training" baseline;
- :mod:`hp_search`: with ``hp_search``, Optuna trials first; the best values go to the normal run;
- :mod:`wise_ft`: the starting weights kept for WiSE-FT, and the mix saved after training;
- :mod:`arcface_trainer`: the ``transformers.Trainer`` run (both stages; :mod:`callbacks`);
- :mod:`outputs`: temperature, model folder, ``metrics.json``, figures, card; Hub upload and clean-up.

Every pass of the model over cached images goes through :class:`embedder.Embedder`.
"""

from __future__ import annotations

from typing import Any

from autotrain.trainers.image_classification_custom.arcface_trainer import train_model
from autotrain.trainers.image_classification_custom.hp_search import search_hyperparameters
from autotrain.trainers.image_classification_custom.outputs import publish, save_outputs
from autotrain.trainers.image_classification_custom.params import ImageClassificationCustomParams
from autotrain.trainers.image_classification_custom.stages import (
    RunContext,
    build_model,
    decode_caches,
    load_data,
    start_from_prototypes,
    start_run,
)
from autotrain.trainers.image_classification_custom.wise_ft import keep_start_weights


def run(config: ImageClassificationCustomParams) -> dict[str, Any]:
    """Train, evaluate and save; returns the content of ``metrics.json`` (main process) or ``{}``.

    Raises:
        splits.DataInputError: the data must be fixed first (see ``splits.load_splits``; ``hp_search``
            without field validation photos).
        FileNotFoundError: ``data_path`` or ``resume_from_checkpoint`` does not exist.
    """
    ctx = start_run(config)
    load_data(ctx)
    build_model(ctx)
    decode_caches(ctx)
    start_from_prototypes(ctx)
    search_hyperparameters(ctx)
    keep_start_weights(ctx)
    trained = train_model(ctx)
    summary: dict[str, Any] = {}
    if ctx.is_main:
        summary = save_outputs(ctx, trained)
        publish(ctx, summary)
    end_processes(ctx)
    return summary


def end_processes(ctx: RunContext) -> None:
    """In a multi-process run, every rank waits until the main one has written the outputs, then the
    process group is destroyed: a rank that exited early with the group alive aborted at interpreter exit
    ("terminate called without an active exception") about one run in six, failing the launch."""
    import torch.distributed as dist

    if ctx.state.num_processes > 1:
        ctx.state.wait_for_everyone()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


__all__ = ["run"]
