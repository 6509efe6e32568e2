"""Run a training command unchanged and time every step of the ``transformers.Trainer`` inside it.

Usage::

    python benchmarks/trainer_probe.py --out timings.json -m autotrain.trainers.image_classification \
        --training_config config.json

The probe patches three ``transformers.Trainer`` methods at class level before the command's module
runs (``runpy``), so it measures the stock AutoTrain trainer and this project's trainer in exactly the
same way, without changing either:

- ``get_batch_samples``: time spent waiting for the next batch(es) from the DataLoader (decoding and
  augmentation when ``dataloader_num_workers=0``, queue wait otherwise);
- ``training_step``: forward, loss and backward of one micro-batch; its batch size; and how many
  parameters were trainable (so that a frozen-backbone stage can be told apart from full fine-tuning);
- ``log``: the Trainer's own ``train_samples_per_second`` (a cross-check that includes start-up).

Between the end of one ``training_step`` and the end of the next lie the data wait, the optimizer step,
gradient clipping and callbacks: the interval is one full training step. On CUDA the probe synchronises
at the first step of each stage, every ``SYNC_EVERY`` steps and at the last step, and throughput is only
taken between synchronised points, so asynchronous kernels cannot inflate it.

The JSON written to ``--out`` holds ``steps`` (one record per micro-batch), ``trainer_logs``,
``wall_s`` (the whole command, model loading and saving included) and ``error`` (``None`` on success).
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import sys
import time
import traceback
from typing import Any

SYNC_EVERY = 10


def _install(records: list[dict[str, Any]], logs: list[dict[str, Any]]) -> None:
    import torch
    from transformers import Trainer

    original_step = Trainer.training_step
    original_batches = Trainer.get_batch_samples
    original_log = Trainer.log
    pending: dict[str, float] = {"data_s": 0.0}
    last_trainable: dict[str, Any] = {"value": None}
    cuda = torch.cuda.is_available()

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        t0 = time.perf_counter()
        out = original_batches(self, epoch_iterator, num_batches, device)
        pending["data_s"] += time.perf_counter() - t0
        return out

    def training_step(self, model, inputs, *args, **kwargs):
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        t0 = time.perf_counter()
        loss = original_step(self, model, inputs, *args, **kwargs)
        state = getattr(self, "state", None)
        last = state is not None and state.max_steps and state.global_step >= state.max_steps - 1
        changed = trainable != last_trainable["value"]
        last_trainable["value"] = trainable
        synced = not cuda
        if cuda and (changed or last or len(records) % SYNC_EVERY == 0):
            torch.cuda.synchronize()
            synced = True
        t1 = time.perf_counter()
        pixels = inputs.get("pixel_values") if isinstance(inputs, dict) else None
        labels = inputs.get("labels") if isinstance(inputs, dict) else None
        batch = int(pixels.shape[0]) if pixels is not None else int(labels.shape[0])
        records.append(
            {
                "end": t1,
                "step_s": t1 - t0,
                "data_s": pending["data_s"],
                "batch": batch,
                "image_size": list(pixels.shape[-2:]) if pixels is not None else None,
                "trainable": trainable,
                "total": total,
                "synced": synced,
            }
        )
        pending["data_s"] = 0.0
        return loss

    def log(self, logs_dict, *args, **kwargs):
        if isinstance(logs_dict, dict) and any(k.startswith("train_") for k in logs_dict):
            logs.append({k: v for k, v in logs_dict.items() if isinstance(v, (int, float, str))})
        return original_log(self, logs_dict, *args, **kwargs)

    Trainer.get_batch_samples = get_batch_samples
    Trainer.training_step = training_step
    Trainer.log = log


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON file for the timings")
    parser.add_argument("-m", dest="module", required=True, help="module to run as __main__")
    args, rest = parser.parse_known_args(argv)
    records: list[dict[str, Any]] = []
    logs: list[dict[str, Any]] = []
    start = time.perf_counter()
    error = None
    try:
        _install(records, logs)
        sys.argv = [args.module, *rest]
        runpy.run_module(args.module, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        if exc.code not in (None, 0):
            error = f"SystemExit({exc.code!r})"
    except BaseException:  # noqa: BLE001 - reported in the JSON and by the exit status
        error = traceback.format_exc()
    result = {
        "module": args.module,
        "argv": rest,
        "wall_s": time.perf_counter() - start,
        "steps": records,
        "trainer_logs": logs,
        "error": error,
        "pid": os.getpid(),
    }
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    if error:
        print(error, file=sys.stderr)
    return 1 if error else 0


if __name__ == "__main__":
    sys.exit(main())
