"""The Gradio app, launched on a free port with a tiny model: API, bad uploads, file serving, CLI.

The browser test (headless Chromium via Playwright) and the load test live here too, so that they
reuse the same launched server; they are marked ``browser`` and ``slow``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from inference_app.app import (
    NO_MAP_TEXT,
    AppSettings,
    analyse_photos,
    build_demo,
    launch,
    load_components,
    main,
    parse_args,
)
from inference_app.identification import combine_probabilities
from inference_app.testing import SPECIES, free_port, make_reference_dataset, make_tiny_model, plant_image

REPO_ROOT = Path(__file__).resolve().parents[1]
# gradio's own use of a renamed Starlette constant; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:'HTTP_422_UNPROCESSABLE_ENTITY' is deprecated")
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, Path]:
    """A few uploads: good photos and bad ones."""
    folder = tmp_path_factory.mktemp("uploads")
    files = {}
    for i in range(len(SPECIES)):
        files[f"good{i}"] = folder / f"plant_{i}.jpg"
        plant_image(i, 7, size=(160, 120)).save(files[f"good{i}"], quality=90)
    files["corrupt"] = folder / "corrupt.jpg"
    files["corrupt"].write_bytes(files["good0"].read_bytes()[:200])
    files["text_as_jpg"] = folder / "notes.jpg"
    files["text_as_jpg"].write_text("not a photo at all")
    files["text"] = folder / "notes.txt"
    files["text"].write_text("not a photo at all")
    files["too_big"] = folder / "huge.png"
    files["too_big"].write_bytes(os.urandom(3 * 1024 * 1024))
    return files


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The app as the CLI builds it: model folder with its autotrain-data, genus from names."""
    root = tmp_path_factory.mktemp("app")
    model_dir = make_tiny_model(root / "herbarium-arcface")
    make_reference_dataset(model_dir / "autotrain-data")
    args = parse_args(["--model", str(model_dir), "--genus-from-name", "--threads", "1"])
    predictor, index, tsne_map, taxonomy, examples = load_components(args)
    settings = AppSettings(top_k=3, threshold=0.5, examples=examples)
    demo = build_demo(predictor, index, tsne_map, taxonomy, settings)
    port = free_port()
    launch(
        demo,
        port=port,
        max_file_size="2mb",
        concurrency=2,
        queue_size=64,
        prevent_thread_lock=True,
        quiet=True,
    )
    url = f"http://127.0.0.1:{port}/"
    yield {"url": url, "predictor": predictor, "index": index, "demo": demo, "model_dir": model_dir}
    demo.close()


def _client(url: str):
    from gradio_client import Client

    return Client(url, verbose=False, download_files=False)


def _gallery(*paths: Path) -> list[dict]:
    from gradio_client import handle_file

    return [{"image": handle_file(str(path)), "caption": None} for path in paths]


def test_every_event_has_an_api_name(server):
    names = {fn.api_name for fn in server["demo"].fns.values()}
    assert {"identify", "place_on_map", "reference_map", "load_example"} <= names
    assert None not in names
    endpoints = _client(server["url"]).view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert {"/identify", "/place_on_map", "/reference_map"} <= set(endpoints)


def test_identify_through_gradio_client(server, photos):
    client = _client(server["url"])
    status, species, genus, family, neighbours = client.predict(
        _gallery(photos["good2"]), api_name="/identify"
    )
    expected = server["predictor"].predict([photos["good2"]], k=3)[0]
    assert species["label"] == expected[0][0]
    assert [c["label"] for c in species["confidences"]] == [name for name, _ in expected]
    assert species["confidences"][0]["confidence"] == pytest.approx(expected[0][1], abs=1e-5)
    assert expected[0][0] in status
    assert genus["confidences"][0]["label"] in {"Quercus", "Fagus", "Acer"}
    assert len(neighbours) == 6 and "similarity" in neighbours[0]["caption"]

    plot = client.predict(api_name="/place_on_map")
    figure = json.loads(plot["plot"])
    query = [trace for trace in figure["data"] if trace.get("name") == "your photo"]
    assert len(query) == 1 and len(query[0]["x"]) == 1
    assert len(figure["data"]) > len(SPECIES)

    base = json.loads(client.predict(api_name="/reference_map")["plot"])
    assert [t.get("name") for t in base["data"]] == [t.get("name") for t in figure["data"]][:-1]


def test_queue_and_uploads_are_bounded(server):
    demo = server["demo"]
    assert demo._queue.default_concurrency_limit == 2 and demo._queue.max_size == 64
    assert demo.max_file_size == 2 * 1024 * 1024
    assert demo.allowed_paths == []


def test_several_photos_of_one_plant_are_combined(server, photos):
    paths = [photos["good1"], photos["good3"]]
    status, species, *_ = _client(server["url"]).predict(_gallery(*paths), api_name="/identify")
    probs = server["predictor"].predict_proba(paths)
    combined = combine_probabilities(probs, "mean_prob")
    assert species["confidences"][0]["confidence"] == pytest.approx(combined.max(), abs=1e-5)
    assert "Combined from 2 photos (mean of probabilities)" in status


def test_uncertain_state(server, photos):
    result, embeddings = analyse_photos(
        server["predictor"], [str(photos["good0"])], AppSettings(top_k=3, threshold=1.01)
    )
    assert result.level == "uncertain" and len(result.species) == 3
    assert "No confident match" in result.summary_markdown()
    assert embeddings.shape == (1, 32)


@pytest.mark.parametrize(
    ("name", "reason"),
    [("corrupt", "corrupt or incomplete"), ("text_as_jpg", "not an image"), ("text", "Invalid file type")],
)
def test_bad_uploads_get_a_clear_message_and_the_app_keeps_serving(server, photos, name, reason):
    from gradio_client.exceptions import AppError

    client = _client(server["url"])
    with pytest.raises(AppError, match=reason):
        client.predict(_gallery(photos[name]), api_name="/identify")
    status, species, *_ = client.predict(_gallery(photos["good0"]), api_name="/identify")
    assert species["label"] in SPECIES


def test_a_bad_photo_among_good_ones_is_skipped_with_its_reason(server, photos):
    status, species, *_ = _client(server["url"]).predict(
        _gallery(photos["good0"], photos["corrupt"]), api_name="/identify"
    )
    assert species["label"] in SPECIES
    assert "Skipped: photo 2: 'corrupt.jpg' is corrupt or incomplete" in status


def test_upload_size_is_limited(server, photos):
    with pytest.raises(ValueError, match="exceeds the maximum file size"):  # the client checks first
        _client(server["url"]).predict(_gallery(photos["too_big"]), api_name="/identify")
    with photos["too_big"].open("rb") as handle:  # and the server refuses a direct upload
        response = httpx.post(server["url"] + "gradio_api/upload", files={"files": handle}, timeout=30)
    assert response.status_code == 413


def test_only_the_apps_own_files_are_served(server):
    base = server["url"] + "gradio_api/file="
    for path in ("/etc/passwd", str(server["model_dir"] / "config.json"), str(REPO_ROOT / "pyproject.toml")):
        response = httpx.get(base + path, timeout=10)
        assert response.status_code == 403, path
    # a path that was not uploaded cannot be passed as an input either
    response = httpx.post(
        server["url"] + "gradio_api/call/identify",
        json={
            "data": [
                [{"image": {"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}}, "caption": None}]
            ]
        },
        timeout=10,
    )
    event_id = response.json()["event_id"]
    stream = httpx.get(server["url"] + f"gradio_api/call/identify/{event_id}", timeout=30).text
    assert "event: error" in stream and "root:" not in stream


def test_without_reference_the_map_tab_explains_what_to_pass(server):
    demo = build_demo(server["predictor"])
    values = [c.get("props", {}).get("value") for c in demo.config["components"]]
    assert NO_MAP_TEXT in values


def test_evaluation_tab_shows_the_models_per_species_figures(server, tmp_path):
    """The app shows the trainer's evaluation (metrics.json beside the model), worst species first."""
    from inference_app.evaluation_view import NO_METRICS_TEXT, species_rows, summary_markdown
    from inference_app.predictor import Predictor

    metrics = {
        "test": {"field": {"top1": 0.5, "top5": 0.75, "mrr": 0.6, "n": 4}},
        "per_species": {
            "split": "test",
            "rows": [
                {"species": "Acer rubrum", "images": 2, "top1": 1.0, "top5": 1.0, "mrr": 1.0},
                {
                    "species": "Quercus alba",
                    "images": 2,
                    "top1": 0.0,
                    "top5": 0.5,
                    "mrr": 0.2,
                    "herbarium_only": True,
                },
            ],
        },
        "silhouette": {"all": -0.1, "n": 12},
        "domain_gap": {
            "median": 0.4,
            "n_species": 2,
            "per_species": [{"species": "Acer rubrum", "distance": 0.3}],
        },
        "confused_pairs": {"pairs": [{"species_a": "Quercus alba", "species_b": "Acer rubrum", "count": 1}]},
    }
    assert species_rows(metrics) == [
        ["Quercus alba", 2, 0.0, 0.5, 0.2, "yes", None],
        ["Acer rubrum", 2, 1.0, 1.0, 1.0, "", 0.3],
    ]
    summary = summary_markdown(metrics)
    assert "top-1 0.500" in summary and "-0.100" in summary and "median 0.400" in summary
    assert "*Quercus alba* / *Acer rubrum* (1)" in summary

    folder = Path(
        shutil.copytree(
            server["predictor"].model_dir,
            tmp_path / "model",
            ignore=shutil.ignore_patterns("autotrain-data", ".*"),
        )
    )
    (folder / "metrics.json").write_text(json.dumps(metrics))
    demo = build_demo(Predictor.from_pretrained(folder, num_threads=1))
    values = [c.get("props", {}).get("value") for c in demo.config["components"]]
    assert summary in values and any(isinstance(v, dict) and "Quercus alba" in str(v) for v in values)
    assert (
        NO_METRICS_TEXT
        in [c.get("props", {}).get("value") for c in build_demo(server["predictor"]).config["components"]]
        or (server["predictor"].model_dir / "metrics.json").is_file()
    )


def test_missing_model_is_a_one_line_error(tmp_path, capsys):
    status = main(["--model", str(tmp_path / "herbarium-arcface")])
    err = capsys.readouterr().err.strip()
    assert status == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "does not exist" in err and "--training_config config.json" in err


@pytest.mark.slow
def test_script_missing_model_exits_cleanly(run_app_script):
    result = run_app_script({"MODEL_ID": None})
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: model folder")


@pytest.mark.slow
def test_exported_space_runs_without_the_project(server, tmp_path):
    """The Space folder loads the model and fits the map with its own copies of modeling_arcface.py and
    embedding_map.py, and opens images with its copy of data_prep's policy and contract (no autotrain)."""
    from inference_app.export_space import export_space

    out = export_space(tmp_path / "space", model_id=str(server["model_dir"]))
    assert "sdk: gradio" in (out / "README.md").read_text()
    code = (
        "import sys; sys.modules['autotrain'] = None\n"  # the project is not installed on a Space
        "import inference_app\n"
        "from inference_app.app import load_components, parse_args\n"
        "predictor, index, tsne_map, *_ = load_components(parse_args(['--threads', '1']))\n"
        "assert tsne_map.coords.shape == (len(index), 2)\n"
        "print(sys.modules['data_prep.contract'].__file__, sys.modules['inference_app.embedding_map'].__file__)\n"
        "print(inference_app.__file__, type(predictor.model).__module__, len(index))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MODEL_ID": str(server["model_dir"])}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=out, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    contract_file, tsne_file, package_file, module, n_reference = result.stdout.split()[-5:]
    assert all(Path(file).is_relative_to(out) for file in (contract_file, tsne_file, package_file))
    assert module == "inference_app.modeling_arcface"
    assert int(n_reference) == len(server["index"])


@pytest.mark.slow
def test_load_200_requests_20_at_a_time_plus_20_bad_uploads(server, photos):
    """Zero server errors; every bad upload is answered with a reason, never a generic error."""
    from gradio_client.exceptions import AppError

    local = threading.local()
    good = [photos[f"good{i}"] for i in range(len(SPECIES))]
    bad = [photos["corrupt"], photos["text_as_jpg"]]
    jobs = [("good", good[i % len(good)]) for i in range(200)] + [("bad", bad[i % 2]) for i in range(20)]
    np.random.default_rng(0).shuffle(jobs)

    def run(job):
        kind, path = job
        if not hasattr(local, "client"):
            local.client = _client(server["url"])
        start = time.perf_counter()
        try:
            _, species, *_ = local.client.predict(_gallery(path), api_name="/identify")
            return (
                kind,
                "ok" if species["label"] in SPECIES else f"bad answer {species}",
                time.perf_counter() - start,
            )
        except AppError as error:
            return kind, f"app-error: {error}", time.perf_counter() - start
        except Exception as error:  # transport or server failure
            return kind, f"failure: {type(error).__name__}: {error}", time.perf_counter() - start

    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(run, jobs))
    good_results = [outcome for kind, outcome, _ in results if kind == "good"]
    bad_results = [outcome for kind, outcome, _ in results if kind == "bad"]
    assert good_results == ["ok"] * 200, [r for r in good_results if r != "ok"][:5]
    assert len(bad_results) == 20
    assert all(
        r.startswith("app-error:") and ("corrupt or incomplete" in r or "not an image" in r)
        for r in bad_results
    ), bad_results[:5]


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (make install-browser)")
def test_browser_upload_shows_top1_species(server, photos, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    expected = server["predictor"].predict([photos["good1"]], k=1)[0][0][0]
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1100})
            page.goto(server["url"], wait_until="load", timeout=60_000)
            page.locator("#identify").wait_for(timeout=60_000)
            page.locator("#photos input[type=file]").set_input_files(str(photos["good1"]))
            page.locator("#photos img").first.wait_for(timeout=30_000)
            page.locator("#identify").click()
            page.locator("#status").get_by_text(expected).first.wait_for(timeout=60_000)
            shown = page.locator("#species [data-testid=label-output-value]").inner_text().strip()
            screenshot = tmp_path / "app_screenshot.png"
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    assert shown == expected
    assert screenshot.stat().st_size > 10_000
    if os.environ.get("SAVE_SCREENSHOT"):
        shutil.copyfile(screenshot, REPO_ROOT / "docs" / "app_screenshot.png")
