"""The evaluation botanists read: per-species numbers, confused pairs, silhouette, domain gap and genus/family
top-1 against hand-computed values; the card and its figures; UMAP maps in the trainer and the app; and
the trainer's metrics.json on a tiny run."""

import json
from pathlib import Path

import numpy as np
import pytest

from autotrain.trainers.image_classification_custom import evaluation as E
from data_prep.contract import TaxonomyError, read_taxonomy_csv

# the scores of tests/test_metrics.py: ranks of the true class [1, 2, 2, 1, 3], top-1 answers [0, 0, 3, 1, 2]
LABELS = np.array([0, 1, 2, 1, 0])
SCORES = np.array(
    [
        [0.90, 0.05, 0.03, 0.02],
        [0.50, 0.30, 0.10, 0.10],
        [0.10, 0.20, 0.30, 0.40],
        [0.10, 0.60, 0.20, 0.10],
        [0.20, 0.30, 0.40, 0.10],
    ]
)
CLASS_HAS_FIELD = np.array([True, False, True, False])
NAMES = ["acer", "betula", "carex", "dianthus"]
PNG = b"\x89PNG\r\n\x1a\n"


def test_per_species_by_hand():
    rows = E.per_species(SCORES, LABELS, NAMES, CLASS_HAS_FIELD)
    assert [r["species"] for r in rows] == ["acer", "betula", "carex"]  # dianthus has no image: no row
    acer, betula, carex = rows
    assert acer == pytest.approx(
        {
            "species": "acer",
            "herbarium_only": False,
            "images": 2,
            "top1": 0.5,
            "top5": 1.0,
            "mrr": (1 + 1 / 3) / 2,
        }
    )
    assert betula == pytest.approx(
        {"species": "betula", "herbarium_only": True, "images": 2, "top1": 0.5, "top5": 1.0, "mrr": 0.75}
    )
    assert carex == pytest.approx(
        {"species": "carex", "herbarium_only": False, "images": 1, "top1": 0.0, "top5": 1.0, "mrr": 0.5}
    )
    assert E.per_species(SCORES, LABELS, NAMES)[0]["herbarium_only"] is None
    assert E.per_species(SCORES[:0], LABELS[:0], NAMES) == []


def test_confused_pairs_by_hand():
    labels = np.array([0, 0, 0, 1, 1, 2, 2])
    answers = np.array([1, 1, 0, 0, 1, 2, 1])  # acer->betula twice, betula->acer once, carex->betula once
    pairs = E.confused_pairs(answers, labels, NAMES)
    assert pairs == [
        {"species_a": "acer", "species_b": "betula", "a_as_b": 2, "b_as_a": 1, "count": 3},
        {"species_a": "betula", "species_b": "carex", "a_as_b": 0, "b_as_a": 1, "count": 1},
    ]
    assert E.confused_pairs(answers, labels, NAMES, top=1) == pairs[:1]
    assert E.confused_pairs(labels, labels, NAMES) == []  # all right: nothing confused
    # ties keep label order: the three single confusions of the metrics example
    tied = E.confused_pairs(SCORES.argmax(axis=1), LABELS, NAMES)
    assert [(p["species_a"], p["species_b"], p["a_as_b"], p["b_as_a"]) for p in tied] == [
        ("acer", "betula", 0, 1),
        ("acer", "carex", 1, 0),
        ("carex", "dianthus", 1, 0),
    ]


def _at(degrees: float, length: float = 1.0) -> list[float]:
    return [length * np.cos(np.radians(degrees)), length * np.sin(np.radians(degrees))]


def test_silhouette_by_hand_with_cosine_distance():
    """Species A at 0 and 60 degrees, B at 180 and 240: for every point the mean cosine distance to its own
    species is 0.5 and to the other 1.75, so each silhouette is (1.75 - 0.5) / 1.75 = 5/7; lengths don't
    matter (cosine)."""
    embeddings = np.array([_at(0, 3.0), _at(60), _at(180), _at(240, 0.2)])
    assert E.species_silhouette(embeddings, np.array([0, 0, 1, 1])) == pytest.approx(5 / 7)
    assert np.isnan(E.species_silhouette(embeddings, np.array([0, 0, 0, 0])))  # one species
    assert np.isnan(E.species_silhouette(embeddings[:2], np.array([0, 1])))  # each point its own species


def test_domain_gap_by_hand():
    embeddings = np.array([_at(0), _at(0, 2.0), _at(90), _at(0), _at(45), _at(30)])
    labels = np.array([0, 0, 0, 1, 1, 2])
    domains = np.array([0, 0, 1, 0, 1, 0])  # carex: herbarium only -> no distance
    gap = E.domain_gap(embeddings, labels, domains, NAMES)
    expected = [1.0, 1 - np.sqrt(0.5)]
    assert [r["species"] for r in gap["per_species"]] == ["acer", "betula"]
    assert [r["distance"] for r in gap["per_species"]] == pytest.approx(expected)
    assert (gap["per_species"][0]["herbarium"], gap["per_species"][0]["field"]) == (2, 1)
    assert gap["mean"] == pytest.approx(np.mean(expected)) and gap["median"] == pytest.approx(
        np.median(expected)
    )
    assert gap["n_species"] == 2
    empty = E.domain_gap(embeddings[:2], labels[:2], domains[:2], NAMES)
    assert empty["n_species"] == 0 and np.isnan(empty["mean"])


def _taxonomy_file(tmp_path: Path) -> Path:
    path = tmp_path / "taxonomy.csv"
    path.write_text(
        "Species,Genus,Family\n"
        "Quercus robur,Quercus,Fagaceae\n"
        "Quercus ilex,Quercus,Fagaceae\n"
        "Fagus sylvatica,Fagus,Fagaceae\n"
    )
    return path


def test_genus_and_family_top1_by_hand(tmp_path):
    """Species probabilities summed per genus: image 1 is a wrong species but the right genus; image 3's
    most probable group is the species missing from the taxonomy (never right); image 4's true species has
    no genus (not counted)."""
    species = ["Quercus robur", "Quercus ilex", "Fagus sylvatica", "Acer sp"]
    probs = np.array(
        [
            [0.30, 0.30, 0.40, 1e-9],  # true Q. robur: species wrong (Fagus), genus Quercus 0.6 right
            [0.20, 0.20, 0.50, 0.10],  # true Fagus: right
            [0.10, 0.10, 0.20, 0.60],  # true Q. ilex: "(not in taxonomy)" 0.6 wins: wrong
            [0.10, 0.10, 0.10, 0.70],  # true Acer: not in the taxonomy, not counted
        ]
    )
    labels = np.array([0, 2, 1, 3])
    genus, family = read_taxonomy_csv(_taxonomy_file(tmp_path))
    assert genus["Quercus ilex"] == "Quercus" and family["Fagus sylvatica"] == "Fagaceae"
    assert E.rank_top1(np.log(probs), labels, species, genus) == pytest.approx(
        {"top1": 2 / 3, "n": 3, "groups": 2}
    )
    assert E.rank_top1(np.log(probs), labels, species, family) == pytest.approx(
        {"top1": 2 / 3, "n": 3, "groups": 1}
    )
    assert np.isnan(E.rank_top1(np.log(probs[3:]), labels[3:], species, genus)["top1"])

    out = E.species_evaluation(
        "test", np.log(probs), labels, np.ones(4, int), species, np.array([1, 1, 0, 0], bool), (genus, family)
    )
    assert out["taxonomy_top1"]["split"] == "test" and out["taxonomy_top1"]["images"] == "field"
    assert out["taxonomy_top1"]["genus"]["top1"] == pytest.approx(2 / 3)
    assert out["taxonomy_top1"]["of"] == 4 and out["taxonomy_top1"]["species_missing"] == 1
    assert out["per_species"]["rows"][2]["herbarium_only"] is True


def test_a_taxonomy_lacking_species_is_warned_about_in_one_line(tmp_path):
    """Found by a new user: a taxonomy_file covering 15 of 76 test photos was used without a word."""
    from types import SimpleNamespace

    from autotrain import logger
    from autotrain.trainers.image_classification_custom.outputs import read_taxonomy

    species = [
        "Quercus robur",
        "Acer campestre",
        "Fagus sylvatica",
        "Betula pendula",
        "Tilia cordata",
        "Ulmus minor",
    ]
    ctx = SimpleNamespace(
        config=SimpleNamespace(taxonomy_file=str(_taxonomy_file(tmp_path))),
        data=SimpleNamespace(class_names=species),
    )
    messages: list[tuple[str, str]] = []
    sink = logger.add(lambda m: messages.append((m.record["level"].name, str(m).rstrip("\n"))), level="DEBUG")
    try:
        genus, _ = read_taxonomy(ctx)
        ctx.data.class_names = ["Quercus robur", "Fagus sylvatica"]
        read_taxonomy(ctx)
    finally:
        logger.remove(sink)
    assert genus["Quercus robur"] == "Quercus"
    assert len(messages) == 1 and messages[0][0] == "WARNING" and "\n" not in messages[0][1]
    assert "lacks 4 of the 6 species (Acer campestre, Betula pendula, Tilia cordata, ...)" in messages[0][1]
    assert read_taxonomy(SimpleNamespace(config=SimpleNamespace(taxonomy_file=None))) is None


def test_species_evaluation_uses_field_photos_when_there_are_some():
    domains = np.array([1, 1, 0, 1, 1])  # image 2 (carex, rank 2) is a herbarium sheet
    out = E.species_evaluation("validation", SCORES, LABELS, domains, NAMES, CLASS_HAS_FIELD)
    assert out["per_species"]["images"] == "field" and "taxonomy_top1" not in out
    assert [r["species"] for r in out["per_species"]["rows"]] == ["acer", "betula"]
    herbarium = E.species_evaluation("validation", SCORES, LABELS, np.zeros(5, int), NAMES, CLASS_HAS_FIELD)
    assert herbarium["per_species"]["images"] == "all" and len(herbarium["per_species"]["rows"]) == 3


def test_taxonomy_file_errors_name_the_file(tmp_path):
    from autotrain.trainers.image_classification_custom.params import load_params

    bad = tmp_path / "bad.csv"
    bad.write_text("name,family\nQuercus robur,Fagaceae\n")
    with pytest.raises(TaxonomyError, match="bad.csv.*missing \\['genus', 'species'\\]"):
        read_taxonomy_csv(bad)
    with pytest.raises(ValueError, match="taxonomy_file.*bad.csv"):
        load_params({"taxonomy_file": str(bad)})
    with pytest.raises(ValueError, match="does not exist"):
        load_params({"taxonomy_file": str(tmp_path / "missing.csv")})
    assert load_params({"taxonomy_file": str(_taxonomy_file(tmp_path))}).taxonomy_file.endswith(
        "taxonomy.csv"
    )


def _summary() -> dict:
    scores, labels = SCORES, LABELS
    out = E.species_evaluation("test", scores, labels, np.ones(5, int), NAMES, CLASS_HAS_FIELD)
    embeddings = np.array([_at(0), _at(10), _at(90), _at(100), _at(200), _at(95)])
    out.update(
        E.embedding_structure(
            embeddings, np.array([0, 0, 1, 1, 2, 0]), np.array([0, 1, 0, 1, 1, 1]), NAMES, "test"
        )
    )
    report = {"all": {"top1": 0.4, "top5": 1.0, "mrr": 0.6, "macro_f1": 0.3, "ece": 0.1, "n": 5}}
    return {
        "test": report,
        "classes": {"with_field": 2, "herbarium_only": 2},
        "calibration": {"temperature": 1.0, "source": "config", "reliability_field": {}},
        **out,
    }


def test_card_shows_the_per_species_table_and_the_figures(tmp_path):
    from autotrain.trainers.image_classification_custom.model_card import format_metric
    from autotrain.trainers.image_classification_custom.outputs import write_report_files
    from autotrain.trainers.image_classification_custom.params import load_params

    summary = _summary()
    write_report_files(tmp_path, load_params({"project_name": "p"}), summary, NAMES, tsne_file="tsne.png")
    assert json.loads((tmp_path / "metrics.json").read_text())["per_species"] == json.loads(
        json.dumps(summary["per_species"])
    )
    assert (tmp_path / "confusions.png").read_bytes()[:8] == PNG
    card = (tmp_path / "README.md").read_text()
    assert "## By species: test split (field images)" in card
    betula = summary["per_species"]["rows"][1]
    distance = next(r["distance"] for r in summary["domain_gap"]["per_species"] if r["species"] == "betula")
    cells = [format_metric(betula[k]) for k in ("images", "top1", "top5", "mrr")] + [format_metric(distance)]
    assert "| betula | yes | " + " | ".join(cells) + " |" in card
    assert "| carex |  | 1 | " in card and "| n/a |" in card  # carex: no field photo among the map points
    assert "![Most-confused species pairs](confusions.png)" in card
    assert "- acer <-> betula: 1 (0 acer answered betula, 1 the reverse)" in card
    assert (
        f"Silhouette of the embeddings by species (cosine): {format_metric(summary['silhouette']['all'])}"
        in card
    )
    assert f"median {format_metric(summary['domain_gap']['median'])} over 2 species" in card
    assert "(tsne.png)" in card and "## Embeddings (t-SNE)" in card

    umap_params = load_params({"project_name": "p", "embedding_map": "umap"})
    perfect = {**summary, "confused_pairs": {"split": "test", "images": "field", "pairs": []}}
    (tmp_path / "confusions.png").unlink()
    write_report_files(tmp_path, umap_params, perfect, NAMES, tsne_file="umap.png")
    card = (tmp_path / "README.md").read_text()
    assert "## Embeddings (UMAP)" in card and "(umap.png)" in card
    assert not (tmp_path / "confusions.png").exists() and "Most-confused" not in card


def test_card_genus_and_family_lines():
    from autotrain.trainers.image_classification_custom.evaluation_card import evaluation_lines

    metrics = _summary()
    metrics["taxonomy_top1"] = {
        "split": "test",
        "images": "field",
        "genus": {"top1": 0.75, "n": 4, "groups": 3},
        "family": {"top1": 1.0, "n": 4, "groups": 2},
    }
    text = "\n".join(evaluation_lines(metrics))
    assert "Genus-level top-1 (species probabilities summed per genus): 0.7500 on 4 field images" in text
    assert "Family-level top-1 (species probabilities summed per family): 1.0000 on 4 field images" in text
    metrics["taxonomy_top1"] |= {"of": 76, "species_missing": 61}
    text = "\n".join(evaluation_lines(metrics))
    assert "0.7500 on 4 of 76 field images of the test split (3 genera); **61 species are not in the" in text
    assert evaluation_lines({"test": {}}) == []


# --- UMAP ------------------------------------------------------------------------------------------------


def _clusters(n_per: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(3), n_per)
    embeddings = 5 * np.eye(8)[labels] + rng.normal(0, 0.3, (len(labels), 8))
    return (embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)).astype(np.float32), labels


@pytest.mark.slow
def test_umap_map_fits_places_and_caches(tmp_path, monkeypatch):
    """The trainer's UMAP fit and the app's UMAPMap: clusters stay apart, a photo lands with its species,
    the cached map is not refitted for display and still places photos."""
    from sklearn.metrics import silhouette_score

    from autotrain.trainers.image_classification_custom import embedding_map
    from inference_app.tsne_map import UMAPMap, load_map

    embeddings, labels = _clusters()
    coords = embedding_map.map_coordinates(embeddings, "umap", random_state=0)
    assert coords.shape == (len(labels), 2) and silhouette_score(coords, labels) > 0.5
    with pytest.raises(ValueError, match="unknown map method"):
        embedding_map.map_coordinates(embeddings, "pca")

    umap_map = load_map("umap", embeddings, tmp_path)
    assert isinstance(umap_map, UMAPMap) and umap_map.title == "UMAP" and not umap_map.from_cache
    queries = embeddings[[0, 12, 30]] + 0.01
    placed = umap_map.place(queries)
    for point, label in zip(placed, labels[[0, 12, 30]]):
        assert labels[int(np.argmin(np.linalg.norm(umap_map.coords - point, axis=1)))] == label
    assert list(tmp_path.glob("umap-*.npz"))

    cached = UMAPMap.load_or_fit(embeddings, tmp_path)
    assert cached.from_cache
    np.testing.assert_array_equal(cached.coords, umap_map.coords)
    again = cached.place(queries)  # the neighbour graph rebuilt; the layout is the cached one
    for point, label in zip(again, labels[[0, 12, 30]]):
        assert labels[int(np.argmin(np.linalg.norm(cached.coords - point, axis=1)))] == label
    with pytest.raises(ValueError, match="unknown map"):
        load_map("pca", embeddings, tmp_path)


@pytest.mark.slow
def test_app_map_tab_with_umap(tmp_path):
    """``--map umap``: the app's map is a UMAP map, its tab says so, and photos are placed on it."""
    from inference_app.app import MapRenderer, build_demo, load_components, parse_args
    from inference_app.testing import make_reference_dataset, make_tiny_model
    from inference_app.tsne_map import TSNEMap, UMAPMap

    model_dir = make_tiny_model(tmp_path / "model")
    make_reference_dataset(model_dir / "autotrain-data")
    assert parse_args(["--model", str(model_dir)]).map == "tsne"
    predictor, index, umap_map, taxonomy, _ = load_components(
        parse_args(["--model", str(model_dir), "--map", "umap", "--threads", "1"])
    )
    assert isinstance(umap_map, UMAPMap) and not isinstance(umap_map, TSNEMap)
    demo = build_demo(predictor, index, umap_map, taxonomy)
    labels = {getattr(block, "label", None) for block in demo.blocks.values()}
    assert {"UMAP map", "Reference embeddings (UMAP)"} <= labels and "t-SNE map" not in labels
    plot = MapRenderer(umap_map, index).place(index.embeddings[:2])
    assert len(json.loads(plot.plot)["data"][-1]["x"]) == 2


# --- the trainer ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_trainer_writes_the_evaluation(
    tmp_path, monkeypatch, make_tiny_dataset, make_tiny_timm, tiny_config, class_names
):
    """A tiny run with a taxonomy and a UMAP map: metrics.json has the new keys, consistent with the test
    split's report, and the card and figures are written."""
    make_tiny_dataset(tmp_path / "data")
    make_tiny_timm(tmp_path / "tiny-timm")
    taxonomy = tmp_path / "taxonomy.csv"
    taxonomy.write_text(
        "species,genus,family\nacer,Acer,Sapindaceae\nbetula,Betula,Betulaceae\ncarex,Carex,Cyperaceae\n"
    )  # dianthus is missing: its images are not counted
    config = tiny_config(
        "proj",
        str(tmp_path / "data"),
        str(tmp_path / "tiny-timm"),
        taxonomy_file=str(taxonomy),
        embedding_map="umap",
    )
    from autotrain.trainers.image_classification_custom.__main__ import train

    monkeypatch.setenv("PAUSE_ON_FAILURE", "0")
    monkeypatch.chdir(tmp_path)
    summary = train(config)  # in-process: this checkout's trainer
    project = tmp_path / "proj"
    metrics = json.loads((project / "metrics.json").read_text())
    assert metrics["per_species"] == json.loads(json.dumps(summary["per_species"]))
    rows = metrics["per_species"]["rows"]
    assert metrics["per_species"]["split"] == "test" and metrics["per_species"]["images"] == "field"
    assert [r["species"] for r in rows] == class_names
    assert [r["herbarium_only"] for r in rows] == [False, False, False, True]
    field = metrics["test"]["field"]
    assert sum(r["images"] for r in rows) == field["n"]
    assert sum(r["images"] * r["top1"] for r in rows) / field["n"] == pytest.approx(field["top1"])
    assert sum(r["images"] * r["mrr"] for r in rows) / field["n"] == pytest.approx(field["mrr"])
    herbarium_only = rows[3]
    assert herbarium_only["images"] == metrics["test"]["herbarium_only"]["n"]
    assert herbarium_only["top1"] == pytest.approx(metrics["test"]["herbarium_only"]["top1"])
    assert all(p["count"] == p["a_as_b"] + p["b_as_a"] > 0 for p in metrics["confused_pairs"]["pairs"])
    assert -1 <= metrics["silhouette"]["all"] <= 1 and metrics["silhouette"]["metric"] == "cosine"
    assert metrics["domain_gap"]["n_species"] == 4  # train herbarium sheets + field test photos of all 4
    assert 0 <= metrics["domain_gap"]["median"] <= 2
    taxonomy_top1 = metrics["taxonomy_top1"]
    n_listed = sum(r["images"] for r in rows[:3])
    assert taxonomy_top1["genus"]["n"] == taxonomy_top1["family"]["n"] == n_listed
    # one species per genus: genus top-1 is species top-1 on the listed species' photos
    listed_top1 = sum(r["images"] * r["top1"] for r in rows[:3]) / n_listed
    assert taxonomy_top1["genus"]["top1"] == pytest.approx(listed_top1)
    assert metrics["embedding_map"] == {"method": "umap", "file": "umap.png"}
    assert (project / "umap.png").read_bytes()[:8] == PNG and not (project / "tsne.png").exists()
    card = (project / "README.md").read_text()
    assert "## By species: test split (field images)" in card and "(umap.png)" in card
    assert "Genus-level top-1" in card and "Family-level top-1" in card
    if metrics["confused_pairs"]["pairs"]:
        assert (project / "confusions.png").read_bytes()[:8] == PNG and "(confusions.png)" in card
