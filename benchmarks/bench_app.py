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
import contextlib
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


def _stats(samples_s: list[float], cpu_s: list[float] | None = None) -> dict[str, float]:
    ms = sorted(1000.0 * s for s in samples_s)
    p95 = ms[min(len(ms) - 1, int(round(0.95 * (len(ms) - 1))))]
    out = {"p50_ms": round(statistics.median(ms), 2), "p95_ms": round(p95, 2), "n": len(ms)}
    if cpu_s:
        out["cpu_p50_ms"] = round(1000.0 * statistics.median(cpu_s), 2)
    return out


def _timed(fn, repeats: int, warmup: int = 3) -> dict[str, float]:
    """Wall-clock p50/p95, and the process CPU time p50 (all threads; less sensitive to a busy machine)."""
    for _ in range(warmup):
        fn()
    samples, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        samples.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return _stats(samples, cpu)


def _untrained_embedded_model(folder: Path, n_classes: int = 100) -> Path:
    from autotrain.trainers.image_classification_custom.model_io import (
        create_arcface_model,
        save_arcface_model,
    )
    from data_prep.contract import EMBEDDED_BACKBONE

    model = create_arcface_model(
        EMBEDDED_BACKBONE,
        id2label=[f"species {i:03d}" for i in range(n_classes)],
        pretrained=True,
        image_size=224,
    )
    return save_arcface_model(model.eval(), folder)


def bench_predictor(predictor, repeats: int, work: Path, app_threads: int) -> dict[str, Any]:
    """Single-image latency: a decoded photo (what the app passes), and a 12 MP phone JPEG from disk.

    Variants: 1 thread and all cores, eager (contiguous / channels-last) and traced+frozen. The
    headline figure is the app's configuration (``app_threads``, traced when it could be built).
    """
    import torch

    from inference_app.images import load_image
    from inference_app.testing import plant_image

    photo = plant_image(1, 0, size=(640, 480))
    phone = work / "phone_12mp.jpg"
    plant_image(2, 0, size=(4032, 3024)).save(phone, quality=90)
    out: dict[str, Any] = {"device": str(predictor.device), "input": f"{predictor.preprocessing.size}"}

    variants = {}
    optimized = predictor.optimized
    threads_all = torch.get_num_threads()
    settings = {
        "eager_contiguous": (None, torch.contiguous_format),
        "eager_channels_last": (None, torch.channels_last),
        "traced_frozen_channels_last": (optimized, torch.channels_last),
    }
    for threads in sorted({1, app_threads, threads_all}):
        torch.set_num_threads(threads)
        for name, (module, memory_format) in settings.items():
            if name.startswith("traced") and module is None:
                continue
            predictor.optimized, predictor.memory_format = module, memory_format
            predictor.model.to(memory_format=memory_format)
            variants[f"threads{threads}_{name}"] = _timed(
                lambda: predictor.embed_and_logits([photo]), repeats
            )
    default = f"threads{app_threads}_" + (
        "traced_frozen_channels_last" if optimized is not None else "eager_channels_last"
    )
    torch.set_num_threads(app_threads)  # what the app runs
    predictor.optimized, predictor.memory_format = optimized, torch.channels_last
    predictor.model.to(memory_format=torch.channels_last)
    out["variants"] = variants
    out["best_variant"] = min(variants, key=lambda k: variants[k]["p50_ms"])
    out["default_variant"] = default
    out["single_image_640x480"] = variants[default]
    out["phone_jpeg_4032x3024_from_disk"] = _timed(
        lambda: predictor.embed_and_logits([phone]), max(5, repeats // 3)
    )
    out["decode_phone_jpeg_only"] = _timed(
        lambda: load_image(phone, max_side=predictor.max_side), max(5, repeats // 3)
    )
    return out


ECHO_APP = """
import sys
import gradio as gr
with gr.Blocks() as demo:
    photos, out = gr.Gallery(type="filepath", interactive=True), gr.Markdown()
    gr.Button().click(lambda p: "ok", [photos], [out], api_name="echo")
demo.queue(default_concurrency_limit=2).launch(server_port=int(sys.argv[1]), ssr_mode=False, quiet=True)
"""


def _serve(command: list[str], port: int, work: Path, name: str):
    """Start a server process and wait until it answers; returns the process."""
    import subprocess

    import httpx

    log = (work / f"{name}.log").open("w")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=work)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 600
    while True:
        if server.poll() is not None:
            raise RuntimeError(
                f"{name} exited with {server.returncode}: {(work / f'{name}.log').read_text()[-2000:]}"
            )
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        if time.time() > deadline:
            server.terminate()
            raise TimeoutError(f"{name} did not start within 600 s")
        time.sleep(1)


def _stop(server) -> None:
    server.terminate()
    server.wait(timeout=60)


def bench_round_trip(
    predictor, model_dir: Path, reference_root: Path, repeats: int, work: Path
) -> dict[str, Any]:
    """``gradio_client`` -> the app started by its CLI in another process -> ``/identify``.

    Also times the ``/identify`` handler alone, in this process (decode, model, neighbours), so that
    the rest of the round trip (upload, queue, HTTP, JSON) shows.
    """
    from gradio_client import Client, handle_file

    from inference_app.app import AppSettings, build_demo
    from inference_app.reference import ReferenceIndex, load_reference_set
    from inference_app.testing import free_port, plant_image

    photo = work / "query.jpg"
    plant_image(3, 5, size=(640, 480)).save(photo, quality=90)
    cache = work / "cache"
    index = ReferenceIndex.build(
        predictor, load_reference_set(reference_root), cache_dir=cache, progress=False
    )
    demo = build_demo(predictor, index, None, None, AppSettings())
    handler = next(fn.fn for fn in demo.fns.values() if fn.api_name == "identify")
    handler_only = _timed(lambda: handler([(str(photo), None)]), repeats)

    payload = [{"image": handle_file(str(photo)), "caption": None}]
    port = free_port()
    echo = _serve([sys.executable, "-c", ECHO_APP, str(port)], port, work, "echo")
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=False, ssl_verify=False)
        echo_baseline = _timed(lambda: client.predict(payload, api_name="/echo"), repeats)
    finally:
        _stop(echo)

    port = free_port()
    command = [sys.executable, str(REPO_ROOT / "inference_app" / "app.py"), "--model", str(model_dir)]
    command += ["--reference", str(reference_root), "--cache-dir", str(cache), "--port", str(port)]
    server = _serve(command, port, work, "app")
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=False)
        identify_default_client = _timed(lambda: client.predict(payload, api_name="/identify"), repeats)
        # gradio_client builds three httpx clients per call, each loading the CA bundle (~45 ms of CPU
        # each here) even for http:// URLs; ssl_verify=False skips that for this local http server.
        client = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=False, ssl_verify=False)
        identify = _timed(lambda: client.predict(payload, api_name="/identify"), repeats)

        def identify_and_map():
            client.predict(payload, api_name="/identify")
            client.predict(api_name="/place_on_map")

        with_map = _timed(identify_and_map, max(5, repeats // 3))
    finally:
        _stop(server)
    return {
        "reference_images": len(index),
        "identify_handler_only_in_process": handler_only,
        "gradio_echo_baseline_same_upload": echo_baseline,
        "identify": identify,
        "identify_default_client": identify_default_client,
        "identify_then_place_on_map": with_map,
        "note": "app started by its CLI in a separate process (default threads and concurrency); "
        "client in this process, output files not downloaded; cpu_p50_ms is the client's CPU; "
        "`identify` and the echo baseline use Client(..., ssl_verify=False) (plain http on localhost: "
        "no TLS either way, but with the default ssl_verify=True gradio_client loads the CA bundle into "
        "three new httpx clients per call); `identify_default_client` is the same call with the default "
        "Client; the echo baseline is a Gradio app that returns 'ok' for the same upload",
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
        tsne_map = TSNEMap.fit(x.astype(np.float32))
        fit_s = time.perf_counter() - start
        cached = TSNEMap(x, tsne_map.coords)  # as the app does after a restart
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
            "load_average_1m_at_start": round(os.getloadavg()[0], 2),
        }
        app_threads = max(1, default_num_threads() // 2)  # the app's default: cores // concurrency (2)
        result["app_threads_per_request"] = app_threads
        result["predictor"] = bench_predictor(predictor, repeats, work, app_threads)
        reference = Path(model_dir) / "autotrain-data"
        if quick or not reference.is_dir():
            reference = make_reference_folder(
                work / "reference", n_herbarium=3 if quick else 15, n_field=2 if quick else 10
            )
        result["round_trip"] = bench_round_trip(predictor, Path(model_dir), reference, repeats, work)
        dim = int(getattr(predictor.model.config, "embedding_dim", 512))
        result["tsne"] = bench_tsne((300,) if quick else (1000, 5000), dim, 5 if quick else 20)

    result["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    largest = result["tsne"][max(result["tsne"], key=int)]
    measured = {
        "predictor_p50": result["predictor"]["single_image_640x480"]["p50_ms"],
        "round_trip_p50": result["round_trip"]["identify"]["p50_ms"],
        "placement": largest["place_one_n_iter50"]["p50_ms"],
    }
    result["targets_ms"] = {
        name: {
            "measured": measured[name],
            "target": TARGETS_MS[name],
            "met": measured[name] <= TARGETS_MS[name],
        }
        for name in TARGETS_MS
    }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", type=Path, default=None, help="model folder (default: untrained embedded backbone)"
    )
    parser.add_argument("--quick", action="store_true", help="fewer repeats and a small map")
    args = parser.parse_args(argv)
    with contextlib.redirect_stdout(sys.stderr):  # gradio and libraries print; stdout is the JSON
        result = run(args.model, quick=args.quick)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
