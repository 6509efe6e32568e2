"""Reference sets, the embedding cache, the t-SNE map and the honest-answer logic (no server)."""

from __future__ import annotations

import numpy as np
import pytest

from inference_app import reference as reference_module
from inference_app.identification import combine_probabilities, identify
from inference_app.predictor import Predictor
from inference_app.reference import ReferenceIndex, ReferenceSetError, load_reference_set
from inference_app.taxonomy import UNLISTED, Taxonomy, TaxonomyError, genus_from_binomial
from inference_app.testing import SPECIES, make_reference_dataset, make_reference_folder, make_tiny_model
from inference_app.tsne_map import TSNEMap


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    folder = make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")
    return Predictor.from_pretrained(folder, device="cpu", num_threads=1)


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    return make_reference_dataset(tmp_path_factory.mktemp("data") / "autotrain-data")


class CountingPredictor:
    """Wraps a predictor and counts the images it embeds."""

    def __init__(self, predictor):
        self.inner, self.embedded = predictor, 0
        self.model_dir, self.model_hash, self.from_hub = predictor.model_dir, predictor.model_hash, False

    def embed(self, images):
        self.embedded += len(images)
        return self.inner.embed(images)


# --- reference sets --------------------------------------------------------------------------------


def test_saved_dataset_uses_all_splits_or_one(dataset_dir):
    everything = load_reference_set(dataset_dir)
    assert len(everything) == len(SPECIES) * 5
    assert set(everything.species) == set(SPECIES)
    assert set(everything.domain) == {"herbarium", "field"}
    assert everything.ids[0].startswith(("herbarium/", "field/"))
    assert everything.image(len(everything) - 1).mode == "RGB"  # last item: index mapping over splits

    validation = load_reference_set(dataset_dir, split="validation")
    assert len(validation) == len(SPECIES) and set(validation.domain) == {"field"}
    with pytest.raises(ReferenceSetError, match="no split 'test'"):
        load_reference_set(dataset_dir, split="test")


def test_the_default_reference_set_leaves_out_the_test_split(dataset_dir, tmp_path, caplog):
    """data_prep's ``test`` split holds the held-out field photos: querying with one of them must not find
    the photo itself first (similarity 1.00), so the default uses every other split and says which."""
    from datasets import DatasetDict, load_from_disk

    loaded = load_from_disk(str(dataset_dir))
    test = loaded["validation"].map(lambda row: {"path": "test/" + row["path"]})
    with_test = tmp_path / "with-test"
    DatasetDict({**loaded, "test": test}).save_to_disk(str(with_test))
    n_test = len(test)

    with caplog.at_level("INFO", logger="inference_app.reference"):
        default = load_reference_set(with_test)
    assert len(default) == len(SPECIES) * 5 and not any(i.startswith("test/") for i in default.ids)
    assert f"reference set {with_test}: splits train, validation (test left out;" in caplog.text

    everything = load_reference_set(with_test, split="all")
    assert len(everything) == len(SPECIES) * 5 + n_test
    assert len(load_reference_set(with_test, split="test")) == n_test
    chosen = load_reference_set(with_test, split="train, test")
    assert len(chosen) == len(default) - len(SPECIES) + n_test
    assert chosen.fingerprint != default.fingerprint != everything.fingerprint  # separate embedding caches
    with pytest.raises(ReferenceSetError, match="no split 'tset'"):
        load_reference_set(with_test, split="train,tset")
    only_test = tmp_path / "only-test"
    DatasetDict({"test": test}).save_to_disk(str(only_test))
    assert len(load_reference_set(only_test)) == n_test  # nothing else to use


def test_folder_layouts(tmp_path):
    data_prep_layout = load_reference_set(
        make_reference_folder(tmp_path / "layout", n_herbarium=2, n_field=1)
    )
    assert len(data_prep_layout) == len(SPECIES) * 3
    assert data_prep_layout.domain.count("field") == len(SPECIES)
    assert data_prep_layout.species[0] in SPECIES

    flat = tmp_path / "flat"
    for name in SPECIES[:2]:
        (flat / name).mkdir(parents=True)
        (tmp_path / "layout" / "field" / name / "f00.jpg").rename(flat / name / "a.jpg")
    (flat / "notes.txt").write_text("ignored")
    by_species = load_reference_set(flat)
    assert by_species.species == sorted(SPECIES[:2]) and by_species.domain == ["unknown", "unknown"]

    (tmp_path / "nothing").mkdir()
    with pytest.raises(ReferenceSetError, match="no images"):
        load_reference_set(tmp_path / "nothing")
    with pytest.raises(ReferenceSetError, match="does not exist"):
        load_reference_set(tmp_path / "missing")


# --- embedding cache ---------------------------------------------------------------------------------


def test_embeddings_are_cached_and_reused(predictor, dataset_dir, tmp_path):
    reference = load_reference_set(dataset_dir)
    counting = CountingPredictor(predictor)
    first = ReferenceIndex.build(counting, reference, cache_dir=tmp_path, progress=False)
    assert counting.embedded == len(reference) and not first.from_cache
    assert first.cache_path.is_file()

    second = ReferenceIndex.build(
        counting, load_reference_set(dataset_dir), cache_dir=tmp_path, progress=False
    )
    assert counting.embedded == len(reference), "the second load must not recompute"
    assert second.from_cache
    np.testing.assert_array_equal(first.embeddings, second.embeddings)
    np.testing.assert_allclose(
        first.embeddings[:3], predictor.embed([reference.loader(i) for i in range(3)]), atol=1e-5
    )


def test_cache_key_changes_with_the_data(predictor, tmp_path):
    root = make_reference_folder(tmp_path / "ref", n_herbarium=1, n_field=1)
    counting = CountingPredictor(predictor)
    ReferenceIndex.build(counting, load_reference_set(root), cache_dir=tmp_path / "cache", progress=False)
    (root / "field" / SPECIES[0] / "f00.jpg").write_bytes(
        (root / "field" / SPECIES[1] / "f00.jpg").read_bytes()
    )
    rebuilt = ReferenceIndex.build(
        counting, load_reference_set(root), cache_dir=tmp_path / "cache", progress=False
    )
    assert not rebuilt.from_cache and counting.embedded == 2 * len(rebuilt)


def test_cache_goes_to_model_folder_or_user_cache_when_read_only(tmp_path, monkeypatch):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    assert reference_module.default_cache_dir(model_dir) == model_dir / ".reference_cache"
    monkeypatch.setenv("HERBARIUM_APP_CACHE", str(tmp_path / "user-cache"))
    monkeypatch.setattr(reference_module, "_writable_dir", lambda folder: False)
    assert reference_module.default_cache_dir(model_dir) == tmp_path / "user-cache" / "reference_cache"
    assert (
        reference_module.default_cache_dir(model_dir, from_hub=True)
        == tmp_path / "user-cache" / "reference_cache"
    )


def test_nearest_neighbour_of_a_reference_image_is_itself(predictor, dataset_dir, tmp_path):
    index = ReferenceIndex.build(
        predictor, load_reference_set(dataset_dir), cache_dir=tmp_path, progress=False
    )
    query = predictor.embed(index.reference.loader(7))[0]
    neighbours = index.neighbours(query, n=3)
    assert neighbours[0].index == 7 and neighbours[0].similarity == pytest.approx(1.0, abs=1e-4)
    assert [n.similarity for n in neighbours] == sorted((n.similarity for n in neighbours), reverse=True)
    assert index.thumbnail(7, size=32).size[0] <= 32


# --- t-SNE map ---------------------------------------------------------------------------------------


def test_tsne_placement_lands_next_to_its_own_point(predictor, dataset_dir, tmp_path, monkeypatch):
    index = ReferenceIndex.build(
        predictor, load_reference_set(dataset_dir), cache_dir=tmp_path, progress=False
    )
    tsne_map = TSNEMap.load_or_fit(index.embeddings, tmp_path, n_iter=250)
    assert tsne_map.coords.shape == (len(index), 2) and not tsne_map.from_cache

    species = np.array(index.reference.species)
    for i in (0, 9, len(index) - 1):
        placed = tsne_map.place(predictor.embed(index.reference.loader(i)))[0]
        nearest = int(np.argmin(np.linalg.norm(tsne_map.coords - placed, axis=1)))
        assert nearest == i or species[nearest] == species[i]

    import openTSNE

    def no_refit(*args, **kwargs):
        raise AssertionError("the cached map must not be refitted")

    monkeypatch.setattr(openTSNE.TSNE, "fit", no_refit)
    cached = TSNEMap.load_or_fit(index.embeddings, tmp_path, n_iter=250)
    assert cached.from_cache
    np.testing.assert_array_equal(cached.coords, tsne_map.coords)
    assert cached.place(index.embeddings[:2]).shape == (2, 2)  # placement works on a cached map


def test_map_figure_colours_species_and_shapes_domains(predictor, dataset_dir, tmp_path):
    index = ReferenceIndex.build(
        predictor, load_reference_set(dataset_dir), cache_dir=tmp_path, progress=False
    )
    tsne_map = TSNEMap(index.embeddings, np.random.default_rng(0).normal(size=(len(index), 2)))
    ref = index.reference
    figure = tsne_map.figure(ref.species, ref.domain, ref.ids, query_coords=np.zeros((1, 2)))
    names = [trace.name for trace in figure.data]
    assert set(SPECIES) <= set(names) and "your photo" in names
    symbols = {s for trace in figure.data if trace.name in SPECIES for s in trace.marker.symbol}
    assert symbols == {"circle", "diamond"}


# --- honest answers ---------------------------------------------------------------------------------

LABELS = ["Quercus robur", "Quercus ilex", "Quercus suber", "Fagus sylvatica"]


def test_confident_and_uncertain_states():
    confident = identify(np.array([0.8, 0.1, 0.05, 0.05]), LABELS, k=3, threshold=0.5)
    assert confident.level == "species" and confident.answer == "Quercus robur"
    assert "**Quercus robur**" in confident.summary_markdown()

    unsure = identify(np.array([0.3, 0.28, 0.22, 0.2]), LABELS, k=3, threshold=0.5)
    assert unsure.level == "uncertain" and unsure.answer is None
    assert [name for name, _ in unsure.species] == LABELS[:3], "best guesses are still shown"
    assert "No confident match" in unsure.summary_markdown()


def test_genus_roll_up_answers_when_no_species_is_confident(tmp_path):
    csv = tmp_path / "taxonomy.csv"
    csv.write_text(
        "Species,Genus,Family\n"
        "Quercus robur,Quercus,Fagaceae\nQuercus ilex,Quercus,Fagaceae\n"
        "Quercus suber,Quercus,Fagaceae\nFagus sylvatica,Fagus,Fagaceae\n"
    )
    taxonomy = Taxonomy.from_csv(csv)
    result = identify(np.array([0.3, 0.28, 0.22, 0.2]), LABELS, threshold=0.5, taxonomy=taxonomy)
    assert result.genus[0] == ("Quercus", pytest.approx(0.8))
    assert result.family == [("Fagaceae", pytest.approx(1.0))]
    assert result.level == "genus" and result.answer == "Quercus"
    assert "genus **Quercus**" in result.summary_markdown()


def test_taxonomy_from_names_only_when_asked_and_bad_files():
    assert genus_from_binomial("Quercus robur L.") == "Quercus"
    assert genus_from_binomial("Mentha x piperita") == "Mentha"
    assert genus_from_binomial("species_3") is None
    taxonomy = Taxonomy.from_species_names([*LABELS, "unknown sp"])
    assert taxonomy.genus["Fagus sylvatica"] == "Fagus" and "unknown sp" not in taxonomy.genus
    assert not taxonomy.has_family
    rolled = taxonomy.rollup([*LABELS, "unknown sp"], np.array([0.1, 0.1, 0.1, 0.3, 0.4]))
    assert rolled[0] == (UNLISTED, 0.4)
    assert (
        identify(np.array([0.1, 0.1, 0.1, 0.3, 0.4]), [*LABELS, "unknown sp"], taxonomy=taxonomy).level
        == "uncertain"
    )


def test_taxonomy_csv_errors(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("name,family\nQuercus robur,Fagaceae\n")
    with pytest.raises(TaxonomyError, match="missing"):
        Taxonomy.from_csv(bad)
    with pytest.raises(TaxonomyError, match="does not exist"):
        Taxonomy.from_csv(tmp_path / "nope.csv")


def test_multi_image_combination():
    photos = np.array([[0.9, 0.05, 0.05, 0.0], [0.1, 0.6, 0.3, 0.0]])
    mean = combine_probabilities(photos, "mean_prob")
    np.testing.assert_allclose(mean, [0.5, 0.325, 0.175, 0.0])
    geometric = combine_probabilities(photos, "mean_log")
    expected = np.sqrt(photos[0] * photos[1])
    np.testing.assert_allclose(geometric, expected / expected.sum(), atol=1e-12)
    # a species that one photo rules out is vetoed by the log mean, not by the plain mean
    assert geometric[3] == pytest.approx(0.0) and mean.sum() == pytest.approx(1.0)

    result = identify(photos, LABELS, k=2, threshold=0.45, combine="mean_prob")
    assert result.n_photos == 2 and result.species[0] == ("Quercus robur", pytest.approx(0.5))
    assert "Combined from 2 photos (mean of probabilities)" in result.summary_markdown()
    with pytest.raises(ValueError, match="unknown combine"):
        combine_probabilities(photos, "max")
