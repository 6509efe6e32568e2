"""The ``transformers.Trainer`` callbacks of a run: the two-stage switch, throughput, readable logs, Hub logs.

- :class:`BackboneWarmupCallback` freezes the backbone while ``state.epoch < warmup_epochs`` (stage 1)
  and unfreezes it after (stage 2), decided from the Trainer state so a resumed run lands in its stage;
- :class:`ThroughputCallback` measures training images per second per epoch;
- :class:`EpochProgressCallback` and :class:`ReadableLogCallback` replace the raw log dicts with a
  progress bar titled by epoch and one readable line per log;
- :class:`HubLogsCallback` uploads the TensorBoard logs to the model repository;
- :class:`CheckpointPermissionsCallback` makes checkpoint weights readable as the umask allows.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

from accelerate import PartialState
from huggingface_hub import HfApi
from transformers import TrainerCallback
from transformers.trainer_callback import ProgressCallback

from autotrain import logger
from autotrain.trainers.common import UploadLogs
from autotrain.trainers.image_classification_custom.model_io import respect_umask
from autotrain.trainers.image_classification_custom.params import ImageClassificationCustomParams


class CheckpointPermissionsCallback(TrainerCallback):
    """After each checkpoint save: weight files get ``0666 & ~umask`` (safetensors writes them ``0600``)."""

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            if os.path.isdir(folder):
                respect_umask(folder)


class BackboneWarmupCallback(TrainerCallback):
    """Stage 1 / stage 2 switch: backbone frozen while ``state.epoch < warmup_epochs``.

    Decided from the Trainer state before every optimisation step, so a resumed run lands in the right
    stage.
    """

    def __init__(self, warmup_epochs: int) -> None:
        self.warmup_epochs = warmup_epochs
        self.frozen: bool | None = None

    def _apply(self, state, model) -> None:
        frozen = (state.epoch or 0.0) < self.warmup_epochs - 1e-9
        if frozen != self.frozen:
            model.freeze_backbone(frozen)
            if frozen:
                model.backbone.eval()
            if state.is_local_process_zero:
                stage = "stage 1: head only, backbone frozen" if frozen else "stage 2: fine-tuning everything"
                logger.info(f"{stage} (epoch {state.epoch or 0.0:.2f}, step {state.global_step})")
            self.frozen = frozen

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._apply(state, model)

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        self._apply(state, model)


class ThroughputCallback(TrainerCallback):
    """Training images per second per epoch (data loading included, evaluation excluded)."""

    def __init__(self, dataset_len: int, warmup_epochs: int) -> None:
        self.dataset_len = dataset_len
        self.warmup_epochs = warmup_epochs
        self.epochs: list[dict[str, Any]] = []
        self._start = None

    def on_epoch_begin(self, args, state, control, **kwargs):
        self._start = (time.perf_counter(), state.global_step, state.epoch or 0.0)

    def on_epoch_end(self, args, state, control, **kwargs):
        if self._start is None:
            return
        t0, step0, epoch0 = self._start
        seconds = time.perf_counter() - t0
        fraction = (state.epoch or 0.0) - epoch0
        images = int(round(fraction * self.dataset_len))
        self.epochs.append(
            {
                "epoch": round(state.epoch or 0.0, 4),
                "stage": "head" if epoch0 < self.warmup_epochs - 1e-9 else "full",
                "steps": state.global_step - step0,
                "images": images,
                "seconds": round(seconds, 3),
                "images_per_second": round(images / seconds, 2) if seconds > 0 else None,
            }
        )
        if state.is_local_process_zero:
            logger.info(f"epoch throughput: {self.epochs[-1]}")

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"epochs": self.epochs}
        for stage in ("head", "full"):
            rows = [r for r in self.epochs if r["stage"] == stage and r["seconds"] > 0]
            if rows:
                images = sum(r["images"] for r in rows)
                seconds = sum(r["seconds"] for r in rows)
                out[f"{stage}_images_per_second"] = round(images / seconds, 2)
        rows = [r for r in self.epochs if r["seconds"] > 0]
        if rows:
            out["images_per_second"] = round(
                sum(r["images"] for r in rows) / sum(r["seconds"] for r in rows), 2
            )
        return out


class EpochProgressCallback(ProgressCallback):
    """The Trainer's progress bar (steps, rate, ETA), titled with the epoch, without the raw log dicts."""

    def on_step_end(self, args, state, control, **kwargs):
        super().on_step_end(args, state, control, **kwargs)
        if state.is_world_process_zero and self.training_bar is not None:
            epoch = min(int(state.epoch or 0) + 1, int(math.ceil(args.num_train_epochs)))
            self.training_bar.set_description(f"epoch {epoch}/{int(math.ceil(args.num_train_epochs))}")

    def on_log(self, args, state, control, logs=None, **kwargs):
        pass  # ReadableLogCallback writes one line per log instead


class ReadableLogCallback(TrainerCallback):
    """One readable log line per training log (loss, learning rate) and per evaluation (field top-1,
    top-5, MRR, ECE), instead of the raw metric dicts."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_local_process_zero or not logs:
            return
        epoch = logs.get("epoch", state.epoch or 0.0)
        if any(k.startswith("eval_") for k in logs):
            prefix = "eval_field_" if "eval_field_top1" in logs else "eval_"
            parts = [
                f"{title} {logs[prefix + key]:.3f}"
                for key, title in (("top1", "top-1"), ("top5", "top-5"), ("mrr", "MRR"), ("ece", "ECE"))
                if prefix + key in logs
            ]
            where = "field photos" if prefix == "eval_field_" else "all images"
            n = logs.get(prefix + "n")
            logger.info(
                f"epoch {epoch:.0f} validation ({where}{f', n={int(n)}' if n else ''}): " + ", ".join(parts)
            )
        elif "loss" in logs:
            lr = logs.get("learning_rate")
            logger.info(
                f"epoch {epoch:.2f}, step {state.global_step}: loss {logs['loss']:.4f}"
                + (f", learning rate {lr:.2e}" if lr is not None else "")
            )
        elif "train_runtime" in logs:
            logger.info(
                f"training loop done in {logs['train_runtime']:.0f}s "
                f"({logs.get('train_samples_per_second', 0):.1f} images/s)"
            )


class HubLogsCallback(UploadLogs):
    """AutoTrain's ``UploadLogs`` for our repository id (``repo_id``), creating it only if missing."""

    def __init__(self, config: ImageClassificationCustomParams, logging_steps: int) -> None:
        # not super().__init__: upstream creates f"{username}/{project_name}" and fails if it exists
        self.config = config
        self.repo_id = config.resolved_repo_id
        self.logging_steps = logging_steps
        self.api = None
        self.last_upload_time = 0.0
        if config.push_to_hub and config.log == "tensorboard" and PartialState().is_main_process:
            self.api = HfApi(token=config.token)
            self.api.create_repo(
                repo_id=self.repo_id, repo_type="model", private=config.hub_private, exist_ok=True
            )

    def on_step_end(self, args, state, control, **kwargs):
        runs = os.path.join(self.config.project_name, "runs")
        if self.api is None or not os.path.isdir(runs) or (state.global_step + 1) % self.logging_steps:
            return control
        if time.time() - self.last_upload_time >= 600:
            try:
                self.api.upload_folder(folder_path=runs, repo_id=self.repo_id, path_in_repo="runs")
            except Exception as err:  # logs are a convenience: keep training
                logger.warning(f"Failed to upload logs: {err}")
            self.last_upload_time = time.time()
        return control
