"""App latency: predictor (single image), Gradio round trip through ``gradio_client``, t-SNE fit/placement.

Usage::

    python benchmarks/bench_app.py [--model DIR] [--quick]     # prints JSON

``run(model_dir, quick)`` is what ``benchmarks/run_all.py`` calls. Without a model folder it builds an
untrained ArcFace model on the embedded backbone (``efficientnet_lite0-offline``, ImageNet weights,
224 px, 100 classes): the latency is the same as for a trained one.

Targets on 2 CPU cores with the embedded backbone: predictor p50 <= 30 ms, Gradio round trip
p50 <= 150 ms, placing a query into the map <= 200 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
for _key, _value in {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "GRADIO_ANALYTICS_ENABLED": "False",
}.items():
    os.environ.setdefault(_key, _value)

import numpy as np  # noqa: E402

TARGETS_MS = {"predictor_p50": 30.0, "round_trip_p50": 150.0, "placement": 200.0}


def _stats(samples_s: list[float]) -> dict[str, float]:
    ms = sorted(1000.0 * s for s in samples_s)
    p95 = ms[min(len(ms) - 1, int(round(0.95 * (len(ms) - 1))))]
    return {"p50_ms": round(statistics.median(ms), 2), "p95_ms": round(p95, 2), "n": len(ms)}


def _timed(fn, repeats: int, warmup: int = 3) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return _stats(samples)


def _untrained_embedded_model(folder: Path, n_classes: int = 100) -> Path:
    from autotrain.trainers.image_classification_custom.modeling_arcface import (
        EMBEDDED_BACKBONE,
        create_arcface_model,
        save_arcface_model,
    )

    model = create_arcface_model(
        EMBEDDED_BACKBONE, id2label=[f"species {i:03d}" for i in range(n_classes)], pretrained=True, image_size=224
    )
    return save_arcface_model(model.eval(), folder)


def bench_predictor(predictor, repeats: int, work: Path) -> dict[str, Any]:
    """Single-image latency: a decoded photo (what the app passes), and a 12 MP phone JPEG from disk."""
    import torch

    from inference_app.images import load_image
    from inference_app.testing import plant_image

    photo = plant_image(1, 0, size=(640, 480))
    phone = work / "phone_12mp.jpg"
    plant_image(2, 0, size=(4032, 3024)).save(phone, quality=90)
    out: dict[str, Any] = {"device": str(predictor.device), "input": f"{predictor.preprocessing.size}"}

    variants = {}
    threads_default = torch.get_num_threads()
    for threads in sorted({1, threads_default}):
        for channels_last in (True, False):
            torch.set_num_threads(threads)
            predictor.memory_format = torch.channels_last if channels_last else torch.contiguous_format
            predictor.model.to(memory_format=predictor.memory_format)
            key = f"threads{threads}_{'channels_last' if channels_last else 'contiguous'}"
            variants[key] = _timed(lambda: predictor.embed_and_logits([photo]), repeats)
    best = min(variants, key=lambda k: variants[k]["p50_ms"])
    threads, layout = best.split("_", 1)
    torch.set_num_threads(int(threads.removeprefix("threads")))
    predictor.memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    predictor.model.to(memory_format=predictor.memory_format)
    out["variants"] = variants
    out["best_variant"] = best
    out["single_image_640x480"] = variants[best]
    out["phone_jpeg_4032x3024_from_disk"] = _timed(lambda: predictor.embed_and_logits([phone]), max(5, repeats // 3))
    out["decode_phone_jpeg_only"] = _timed(lambda: load_image(phone), max(5, repeats // 3))
    out["eager_no_inference_mode_for_reference"] = _timed(
        lambda: predictor.model(pixel_values=predictor.preprocessing([photo]).contiguous(memory_format=predictor.memory_format)),
        max(5, repeats // 3),
    )
    return out


def bench_round_trip(predictor, reference_root: Path, repeats: int, work: Path) -> dict[str, Any]:
    """``gradio_client`` -> launched app -> ``/identify`` (upload, predict, neighbours, JSON back)."""
    from gradio_client import Client, handle_file

    from inference_app.app import AppSettings, build_demo, launch
    from inference_app.reference import ReferenceIndex, load_reference_set
    from inference_app.testing import free_port, plant_image
    from inference_app.tsne_map import TSNEMap

    index = ReferenceIndex.build(predictor, load_reference_set(reference_root), cache_dir=work / "cache", progress=False)
    tsne_map = TSNEMap.load_or_fit(index.embeddings, work / "cache", n_jobs=2)
    tsne_map.prepare()
    demo = build_demo(predictor, index, tsne_map, None, AppSettings())
    port = free_port()
    launch(demo, port=port, prevent_thread_lock=True, quiet=True)
    photo = work / "query.jpg"
    plant_image(3, 5, size=(640, 480)).save(photo, quality=90)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=False)
        payload = [{"image": handle_file(str(photo)), "caption": None}]
        identify = _timed(lambda: client.predict(payload, api_name="/identify"), repeats)

        def identify_and_map():
            client.predict(payload, api_name="/identify")
            client.predict(api_name="/place_on_map")

        with_map = _timed(identify_and_map, max(5, repeats // 3))
    finally:
        demo.close()
    return {
        "reference_images": len(index),
        "identify": identify,
        "identify_then_place_on_map": with_map,
        "note": "client upload + queue + load_image + model + 6 neighbour thumbnails; files not downloaded",
    }


def bench_tsne(sizes: tuple[int, ...], dim: int, placements: int) -> dict[str, Any]:
    """Fit a map of ``n`` clustered embeddings, then place single queries (50 and 250 iterations)."""
    from inference_app.tsne_map import TSNEMap

    rng = np.random.default_rng(0)
    out: dict[str, Any] = {}
    for n in sizes:
        centres = rng.normal(size=(100, dim))
        labels = rng.integers(0, 100, n)
        x = centres[labels] + 0.6 * rng.normal(size=(n, dim))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        queries = x[rng.integers(0, n, placements)] + 0.05 * rng.normal(size=(placements, dim))
        start = time.perf_counter()
        tsne_map = TSNEMap.fit(x.astype(np.float32), n_jobs=2)
        fit_s = time.perf_counter() - start
        cached = TSNEMap(x, tsne_map.coords, n_jobs=2)  # as the app does after a restart
        start = time.perf_counter()
        cached.prepare()
        prepare_s = time.perf_counter() - start
        row: dict[str, Any] = {"fit_s": round(fit_s, 2), "prepare_after_cache_load_s": round(prepare_s, 3)}
        for n_iter in (50, 250):
            samples = []
            for q in queries:
                start = time.perf_counter()
                cached.place(q[None, :], n_iter=n_iter)
                samples.append(time.perf_counter() - start)
            row[f"place_one_n_iter{n_iter}"] = _stats(samples)
        out[str(n)] = row
    return out


def run(model_dir: Path | None, quick: bool = False) -> dict[str, Any]:
    """Measure everything; returns a JSON-able dict with the targets and whether they were met."""
    import torch

    from inference_app.predictor import Predictor, default_num_threads
    from inference_app.testing import make_reference_folder

    repeats = 10 if quick else 50
    with tempfile.TemporaryDirectory(prefix="bench_app_") as tmp:
        work = Path(tmp)
        built = model_dir is None
        if built:
            model_dir = _untrained_embedded_model(work / "model")
        predictor = Predictor.from_pretrained(Path(model_dir), num_threads=default_num_threads())
        result: dict[str, Any] = {
            "model": "untrained efficientnet_lite0-offline, 100 classes" if built else str(model_dir),
            "cores": default_num_threads(),
            "torch_threads": torch.get_num_threads(),
        }
        result["predictor"] = bench_predictor(predictor, repeats, work)
        reference = Path(model_dir) / "autotrain-data"
        if not reference.is_dir():
            reference = make_reference_folder(work / "reference", n_herbarium=3 if quick else 15, n_field=2 if quick else 10)
        result["round_trip"] = bench_round_trip(predictor, reference, repeats, work)
        dim = int(getattr(predictor.model.config, "embedding_dim", 512))
        result["tsne"] = bench_tsne((300,) if quick else (1000, 5000), dim, 5 if quick else 20)

    largest = result["tsne"][max(result["tsne"], key=int)]
    measured = {
        "predictor_p50": result["predictor"]["single_image_640x480"]["p50_ms"],
        "round_trip_p50": result["round_trip"]["identify"]["p50_ms"],
        "placement": largest["place_one_n_iter50"]["p50_ms"],
    }
    result["targets_ms"] = {
        name: {"measured": measured[name], "target": TARGETS_MS[name], "met": measured[name] <= TARGETS_MS[name]}
        for name in TARGETS_MS
    }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="model folder (default: untrained embedded backbone)")
    parser.add_argument("--quick", action="store_true", help="fewer repeats and a small map")
    args = parser.parse_args(argv)
    print(json.dumps(run(args.model, quick=args.quick), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
