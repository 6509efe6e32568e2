"""Evaluation in row chunks gives the metrics of the whole (N, C) matrix, and never holds that matrix.

The one-piece numbers are the same functions with one chunk (``score_rows.CHUNK_ELEMENTS`` above N x C)
and, for the per-image quantities, the formulas the metrics used before they were chunked (whole-matrix
ranks, softmax and genus sums), written out below.
"""

import json
import tracemalloc

import numpy as np
import pytest
import torch

from autotrain.trainers.image_classification_custom import evaluation as E
from autotrain.trainers.image_classification_custom import metrics as M
from autotrain.trainers.image_classification_custom import score_rows

SEEDS = (0, 1, 2)
N, C = 1001, 300  # N is no multiple of the chunk sizes below


def random_case(seed: int, n: int = N, c: int = C):
    """Logits with some signal, labels, domains (about half field photos), class groups and a taxonomy."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, n)
    logits = (rng.normal(size=(n, c)) * 2.0).astype(np.float32)
    logits[np.arange(n), labels] += rng.uniform(0, 4, n).astype(np.float32)
    logits[: n // 10, 0] = logits[: n // 10, 1]  # ties
    domains = rng.integers(0, 2, n)
    has_field = rng.random(c) < 0.6
    names = [f"species{i}" for i in range(c)]
    genus = {name: f"genus{i // 7}" for i, name in enumerate(names) if i % 13}  # some species unlisted
    family = {name: f"family{i // 40}" for i, name in enumerate(names)}
    return logits, labels, domains, has_field, names, (genus, family)


def one_piece(monkeypatch):
    monkeypatch.setattr(score_rows, "CHUNK_ELEMENTS", 1 << 40)


def in_chunks(monkeypatch, rows: int, c: int = C):
    monkeypatch.setattr(score_rows, "CHUNK_ELEMENTS", rows * c)


def everything(logits, labels, domains, has_field, names, taxonomy):
    """Every evaluation number of the outputs stage on one split."""
    return {
        "report": M.evaluation_report(logits, labels, domains, has_field),
        "species": E.species_evaluation("test", logits, labels, domains, names, has_field, taxonomy),
        "reliability": M.reliability_bins(logits, labels),
        "ece": M.expected_calibration_error(logits, labels),
        "nll": M.temperature_nll(logits, labels, [0.5, 1.0, 2.0]),
    }


def assert_same(a, b, nll_rtol: float = 0.0):
    nll_a, nll_b = a.pop("nll"), b.pop("nll")
    np.testing.assert_allclose(nll_a, nll_b, rtol=nll_rtol, atol=0)
    assert a == b or _nan_equal(a, b)


def _nan_equal(a, b) -> bool:
    """``a == b`` with NaN equal to NaN (a missing metric is NaN in both)."""
    import json

    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("rows", [7, 64, 333])
def test_chunked_metrics_equal_the_one_piece_ones(monkeypatch, seed, rows):
    """Every number is exact but the NLL of the temperature fit: chunk sums of per-image NLLs are added
    instead of numpy's pairwise sum over all images (another float summation order, ~1e-16 relative)."""
    case = random_case(seed)
    one_piece(monkeypatch)
    whole = everything(*case)
    in_chunks(monkeypatch, rows)
    chunked = everything(*case)
    assert_same(whole, chunked, nll_rtol=1e-12)
    assert whole["report"]["field"]["n"] + whole["report"]["herbarium"]["n"] == N
    assert whole["species"]["taxonomy_top1"]["genus"]["n"] > 0


@pytest.mark.parametrize("seed", SEEDS[:2])
def test_chunked_temperature_fit_equals_the_one_piece_fit(monkeypatch, seed):
    logits, labels = random_case(seed, n=301, c=50)[:2]
    one_piece(monkeypatch)
    whole = M.fit_temperature(logits, labels)
    assert M.fit_temperature(logits, labels, rows=7) == whole
    assert whole == reference_fit_temperature(logits, labels)


@pytest.mark.parametrize("seed", SEEDS)
def test_summary_is_what_the_whole_matrix_formulas_give(seed):
    """Ranks, top-1, softmax confidence and genus argmax, chunk by chunk, equal the whole-matrix formulas
    the metrics used before (float64 ranks, float64 softmax, probabilities summed per genus)."""
    logits, labels, _, _, names, (genus, _) = random_case(seed)
    index, _, _ = E.taxonomy_groups(names, genus)
    summary = score_rows.summarize(logits, labels, {"genus": index}, rows=7)
    z = logits.astype(np.float64)
    np.testing.assert_array_equal(summary.rank, 1 + (z > z[np.arange(N), labels][:, None]).sum(axis=1))
    np.testing.assert_array_equal(summary.prediction, logits.argmax(axis=1))
    e = np.exp(z - z.max(axis=1, keepdims=True))
    probs = e / e.sum(axis=1, keepdims=True)
    np.testing.assert_array_equal(summary.confidence, probs.max(axis=1))
    np.testing.assert_array_equal(summary.softmax_prediction, probs.argmax(axis=1))
    membership = np.eye(index.max() + 1)[index]  # (C, G) 0/1: the old dense sum per genus
    np.testing.assert_array_equal(summary.groups["genus"], (probs @ membership).argmax(axis=1))


def test_summary_names_bad_labels():
    with pytest.raises(ValueError, match=r"labels must be class ids in \[0, 3\)"):
        score_rows.summarize(np.zeros((2, 3)), np.array([0, -100]))
    with pytest.raises(ValueError, match="3 labels for 2 rows"):
        score_rows.summarize(np.zeros((2, 3)), np.array([0, 1, 2]))


@pytest.mark.parametrize("seed", SEEDS)
def test_confused_pairs_without_a_confusion_matrix_equal_the_matrix_ones(seed):
    """Pairs counted from the wrong answers (O(N)) equal those of sklearn's (C, C) confusion matrix."""
    from sklearn.metrics import confusion_matrix

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 12, 400)
    answers = np.where(rng.random(400) < 0.5, labels, rng.integers(0, 12, 400))
    names = [f"s{i}" for i in range(15)]  # three species without images
    matrix = confusion_matrix(labels, answers, labels=range(15))
    both = np.triu(matrix + matrix.T, k=1)
    a, b = np.nonzero(both)
    expected = [
        {"species_a": names[a[i]], "species_b": names[b[i]], "a_as_b": int(matrix[a[i], b[i]]),
         "b_as_a": int(matrix[b[i], a[i]]), "count": int(both[a[i], b[i]])}
        for i in np.lexsort((b, a, -both[a, b]))[:10]
    ]  # fmt: skip
    assert E.confused_pairs(answers, labels, names) == expected and len(expected) == 10
    assert E.confused_pairs(answers, labels, names, top=1000) != expected  # more than 10 pairs


def reference_fit_temperature(logits, labels):
    """The whole-matrix temperature fit the metrics used before chunking."""
    z, labels = logits.astype(np.float64), np.asarray(labels)

    def nll(t):
        q = z / t
        q = q - q.max(axis=1, keepdims=True)
        return float((np.log(np.exp(q).sum(axis=1)) - q[np.arange(len(labels)), labels]).mean())

    grid = np.exp(np.linspace(np.log(0.05), np.log(20.0), 400))
    best = grid[int(np.argmin([nll(t) for t in grid]))]
    fine = best * np.exp(np.linspace(-0.02, 0.02, 41))
    return float(fine[int(np.argmin([nll(t) for t in fine]))])


def test_head_logits_are_the_same_numbers_however_they_are_read(tiny_model):
    """Logits computed from embeddings in blocks: any chunking, a subset or a temperature gives the
    numbers of the whole matrix (the head always runs on the same blocks)."""
    from autotrain.trainers.image_classification_custom.embedder import HeadLogits

    model = tiny_model()
    embeddings = torch.nn.functional.normalize(
        torch.randn(50, 16, generator=torch.Generator().manual_seed(0))
    )
    lazy = HeadLogits.of(model.head, embeddings.numpy(), block=8)
    whole = lazy.rows(0, 50)
    with torch.no_grad():
        np.testing.assert_allclose(whole, model.head.get_logits(embeddings).numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(np.concatenate([b for _, b in lazy.chunks(7)]), whole)
    subset = np.array([49, 3, 17, 18, 0])
    np.testing.assert_array_equal(lazy.take(subset).rows(0, 5), whole[subset])
    np.testing.assert_array_equal(lazy.take(subset).take([4, 0]).rows(0, 2), whole[[0, 49]])
    np.testing.assert_array_equal(lazy.divided_by(1.7).take(subset).rows(1, 4), whole[subset[1:4]] / 1.7)
    model.set_logit_temperature(2.0)  # a later temperature leaves these logits as they were
    np.testing.assert_array_equal(lazy.rows(0, 50), whole)


def _trainer_metrics(tmp_path, make_trainer, tiny_model, summarized: bool, batch: int):
    from autotrain.trainers.image_classification_custom.dataset import CachedImageDataset

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (23, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 4, 23)
    domains = np.arange(23) % 2
    seen = []
    compute = M.make_compute_metrics(domains, np.array([True, True, False, True]), summarized=summarized)

    def compute_metrics(prediction):
        seen.append(np.asarray(prediction.predictions).shape)
        return compute(prediction)

    trainer = make_trainer(
        tmp_path / str(summarized),
        tiny_model(),
        eval_dataset=CachedImageDataset(images, labels),
        compute_metrics=compute_metrics,
        preprocess_logits_for_metrics=M.summarize_logits_for_metrics if summarized else None,
    )
    trainer.args.per_device_eval_batch_size = batch
    metrics = trainer.evaluate()
    return {
        k: v for k, v in metrics.items() if not k.endswith(("runtime", "per_second", "preparation_time"))
    }, seen[0]


def test_trainer_evaluation_in_batches_of_7_gives_the_one_piece_metrics(tmp_path, make_trainer, tiny_model):
    """The Trainer's evaluation loop: each batch of 7 images summarised before gathering gives exactly
    the metrics of the concatenated (N, C) logits (the former path)."""
    whole, shape = _trainer_metrics(tmp_path, make_trainer, tiny_model, summarized=False, batch=7)
    assert shape == (23, 4)  # the logits: 4 classes
    chunked, shape = _trainer_metrics(tmp_path, make_trainer, tiny_model, summarized=True, batch=7)
    assert shape == (23, len(score_rows.RowSummary.COLUMNS))
    assert _nan_equal(whole, chunked) and "eval_field_mrr" in chunked and "eval_herbarium_only_ece" in chunked


def test_outputs_stage_in_chunks_of_7_gives_the_one_piece_numbers(monkeypatch, tiny_model):
    """Calibration, the split reports, the reliability bins and the species evaluation of the outputs
    stage, through the Embedder's chunked logits: chunks of 7 rows give the numbers of one piece."""
    from autotrain.trainers.image_classification_custom import outputs
    from autotrain.trainers.image_classification_custom.dataset import NormalizeCollator
    from autotrain.trainers.image_classification_custom.params import load_params
    from autotrain.trainers.image_classification_custom.splits import PreparedData, SplitData
    from autotrain.trainers.image_classification_custom.stages import ImageCaches, RunContext

    model = tiny_model()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (30, 32, 32, 3), dtype=np.uint8)
    labels, domains = rng.integers(0, 4, 30), np.arange(30) % 3 % 2
    split = SplitData("validation", None, labels, domains)
    names = ["acer", "betula", "carex", "dianthus"]
    ctx = RunContext(
        load_params({"project_name": "p", "batch_size": 4}),
        state=None,
        data=PreparedData(names, train=SplitData("train", None, labels, domains), validation=split),
        model=model,
        collator=NormalizeCollator(model.config.image_mean, model.config.image_std),
        caches=ImageCaches(None, {"validation": images}, 0.0),
    )
    taxonomy = ({"acer": "Acer", "betula": "Betula", "carex": "Carex"}, {})

    def numbers():
        model.set_logit_temperature(1.0)
        logits = ctx.embedder().logits(images)
        raw = {"validation": (logits.embeddings, logits)}
        calibration = outputs.calibrate(model, ctx.config, split, raw)
        t = model.config.logit_temperature
        evaluation = outputs.evaluate_splits(ctx, raw, t)
        species = E.species_evaluation(
            "validation", logits.divided_by(t), labels, domains, names, None, taxonomy
        )
        return {
            "calibration": calibration,
            "reports": evaluation.reports,
            "bins": evaluation.reliability,
            **species,
        }

    one_piece(monkeypatch)
    whole = numbers()
    in_chunks(monkeypatch, 7, c=4)
    assert _nan_equal(whole, numbers())
    assert whole["calibration"]["source"].startswith(("fitted", "T = 1 kept"))


def test_evaluation_memory_stays_far_below_the_logits_matrix():
    """N = 20,000 images x C = 2,000 classes: the report and the species evaluation (genus and family)
    allocate well under N x C x 4 bytes (the float32 logits matrix; the whole-matrix code made float64
    copies of it)."""
    n, c = 20_000, 2_000
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((n, c), dtype=np.float32)
    labels, domains = rng.integers(0, c, n), rng.integers(0, 2, n)
    names = [f"s{i}" for i in range(c)]
    taxonomy = (
        {s: f"g{i // 5}" for i, s in enumerate(names)},
        {s: f"f{i // 50}" for i, s in enumerate(names)},
    )
    has_field = rng.random(c) < 0.5
    M.macro_f1(labels[:3], labels[:3])  # scikit-learn imported before measuring
    tracemalloc.start()
    try:
        report = M.evaluation_report(logits, labels, domains, has_field)
        species = E.species_evaluation("test", logits, labels, domains, names, has_field, taxonomy)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report["all"]["n"] == n and len(species["per_species"]["rows"]) > 0
    assert peak < n * c * 4 / 4, f"peak {peak / 2**20:.0f} MiB"


def test_temperature_fit_memory_stays_below_the_logits_matrix():
    """Chunks of 128 rows: well under half a float64 copy of the logits (the whole-matrix fit made
    three such copies at each temperature)."""
    n, c = 1_000, 2_000
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((n, c), dtype=np.float32)
    labels = rng.integers(0, c, n)
    tracemalloc.start()
    try:
        M.fit_temperature(logits, labels, rows=128)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < n * c * 8 / 2, f"peak {peak / 2**20:.0f} MiB"


@pytest.mark.slow
def test_a_training_run_in_chunks_of_7_reports_the_metrics_of_its_saved_model(
    tmp_path, monkeypatch, make_tiny_dataset, make_tiny_timm, tiny_config, class_names
):
    """A whole run in-process (prototype baseline, Trainer evaluation, WiSE-FT selection, temperature,
    reports, genus top-1) with chunks of 7 rows: metrics.json holds the numbers of the saved model's
    logits on the test split computed in one piece."""
    from datasets import load_from_disk

    from autotrain.trainers.image_classification_custom.__main__ import train
    from autotrain.trainers.image_classification_custom.dataset import decode_images
    from autotrain.trainers.image_classification_custom.modeling_arcface import ArcFaceForImageClassification

    in_chunks(monkeypatch, 7, c=len(class_names))
    data = make_tiny_dataset(tmp_path / "data")
    taxonomy = tmp_path / "taxonomy.csv"
    taxonomy.write_text("species,genus\nacer,Acer\nbetula,Betula\ncarex,Carex\n")
    config = tiny_config(
        "proj", str(data), str(make_tiny_timm(tmp_path / "timm")), tsne=False,
        wise_ft_select=True, taxonomy_file=str(taxonomy),
    )  # fmt: skip
    monkeypatch.chdir(tmp_path)
    train(config)
    metrics = json.loads((tmp_path / "proj" / "metrics.json").read_text())
    assert {"baseline_prototypes", "taxonomy_top1", "per_species"} <= set(metrics)
    assert metrics["wise_ft"]["selection"] is not None
    model = ArcFaceForImageClassification.from_pretrained(str(tmp_path / "proj")).eval()
    test = load_from_disk(str(data))["test"]
    pixels = decode_images(test, "image", model.config.image_size, model.config.image_interpolation)
    mean = torch.tensor(model.config.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(model.config.image_std).view(1, 3, 1, 1)
    x = (torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).float() / 255 - mean) / std
    with torch.no_grad():
        logits = model(pixel_values=x).logits.numpy()
    one_piece(monkeypatch)
    labels, domains = np.array(test["label"]), np.array(test["domain"])
    expected = M.evaluation_report(logits, labels, domains, np.array([True, True, True, False]))
    for subset, values in expected.items():
        for key in ("top1", "top5", "mrr", "n"):
            assert metrics["test"][subset][key] == pytest.approx(values[key], abs=1e-6), (subset, key)
