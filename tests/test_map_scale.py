"""Maps of large sets (issue 13): above ``max_points`` the t-SNE/UMAP map is fitted on a seeded sample with
every species in it and the other points are placed into it; at or below, the map is the full fit, as
before. The app's map (``--map-max-points``) caches the sample, places photos against it and draws it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from autotrain.trainers.image_classification_custom import embedding_map
from inference_app.tsne_map import TSNEMap, load_map


def _clusters(n: int, n_species: int, dim: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(n, dim)`` unit embeddings in ``n_species`` clusters of unequal sizes (a few species with one image)."""
    rng = np.random.default_rng(seed)
    sizes = rng.dirichlet(np.full(n_species, 0.7))
    labels = np.concatenate([np.arange(n_species), rng.choice(n_species, n - n_species, p=sizes)])
    centres = rng.normal(size=(n_species, dim))
    embeddings = 3 * centres[labels] + rng.normal(size=(n, dim))
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    return embeddings.astype(np.float32), np.array([f"species {i:02d}" for i in labels])


def test_sample_has_every_species_and_is_seeded():
    _, labels = _clusters(600, 40)
    assert (np.unique(labels, return_counts=True)[1] == 1).any()  # singletons must be sampled too
    sample = embedding_map.sample_indices(600, 200, labels, seed=3)
    assert len(sample) == 200 == len(np.unique(sample)) and np.all(np.diff(sample) > 0)
    assert set(labels[sample]) == set(labels)
    np.testing.assert_array_equal(sample, embedding_map.sample_indices(600, 200, labels, seed=3))
    assert not np.array_equal(sample, embedding_map.sample_indices(600, 200, labels, seed=4))
    # more species than points: one image each of max_points species
    few = embedding_map.sample_indices(600, 10, labels, seed=0)
    assert len(few) == 10 == len(set(labels[few]))
    np.testing.assert_array_equal(embedding_map.sample_indices(150, 200, labels[:150]), np.arange(150))
    assert len(embedding_map.sample_indices(600, 200)) == 200  # no labels: a uniform sample
    with pytest.raises(ValueError, match="labels has 5 entries for 600 points"):
        embedding_map.sample_indices(600, 200, labels[:5])
    with pytest.raises(ValueError, match="max_points must be at least 4"):
        embedding_map.sample_indices(600, 2)


def test_tsne_above_max_points_fits_a_sample_and_places_the_rest():
    embeddings, labels = _clusters(600, 12)
    fitted = embedding_map.fit_map(embeddings, "tsne", labels, max_points=200, n_iter=150, progress=False)
    assert fitted.sampled and fitted.coords.shape == (600, 2) and np.isfinite(fitted.coords).all()
    np.testing.assert_array_equal(fitted.sample, embedding_map.sample_indices(600, 200, labels, 0))
    assert set(labels[fitted.sample]) == set(labels)

    # the sampled points keep the layout of a fit on the sample alone (centred on its bounding box)
    alone = np.asarray(embedding_map.fit_tsne(embeddings[fitted.sample], n_iter=150), dtype=np.float64)
    alone -= (alone.max(axis=0) + alone.min(axis=0)) / 2
    np.testing.assert_allclose(fitted.coords[fitted.sample], alone, atol=1e-9)

    # placed points land among their own species (the nearest fitted point has the same species)
    placed = np.setdiff1d(np.arange(600), fitted.sample)
    reference = fitted.coords[fitted.sample]
    distances = np.linalg.norm(fitted.coords[placed, None] - reference[None], axis=2)
    nearest_species = labels[fitted.sample][distances.argmin(axis=1)]
    assert np.mean(nearest_species == labels[placed]) > 0.9

    again = embedding_map.fit_map(embeddings, "tsne", labels, max_points=200, n_iter=150, progress=False)
    np.testing.assert_array_equal(again.coords, fitted.coords)  # same seed, same map


def test_at_or_below_max_points_the_map_is_the_full_fit_as_before():
    embeddings, labels = _clusters(60, 4)
    before = np.asarray(embedding_map.fit_tsne(embeddings, n_iter=100), dtype=np.float64)
    fitted = embedding_map.fit_map(embeddings, "tsne", labels, max_points=60, n_iter=100)
    assert not fitted.sampled
    np.testing.assert_array_equal(fitted.sample, np.arange(60))
    np.testing.assert_array_equal(fitted.coords, before)
    default = embedding_map.map_coordinates(embeddings, "tsne", labels=labels)
    np.testing.assert_array_equal(default, np.asarray(embedding_map.fit_tsne(embeddings), dtype=np.float64))


def test_app_map_of_a_sample_is_cached_placed_against_the_sample_and_drawn(tmp_path, monkeypatch):
    embeddings, labels = _clusters(300, 6)
    tsne_map = load_map("tsne", embeddings, tmp_path, labels=list(labels), max_points=100)
    assert isinstance(tsne_map, TSNEMap) and len(tsne_map.sample) == 100 and not tsne_map.from_cache
    assert np.isfinite(tsne_map.coords).all() and tsne_map.coords.shape == (300, 2)
    assert tsne_map._embedding.shape == (100, 2)  # placement works against the fitted sample only

    import openTSNE

    def no_refit(*args, **kwargs):
        raise AssertionError("the cached map must not be refitted")

    monkeypatch.setattr(openTSNE.TSNE, "fit", no_refit)
    cached = load_map("tsne", embeddings, tmp_path, labels=list(labels), max_points=100)
    assert cached.from_cache
    np.testing.assert_array_equal(cached.sample, tsne_map.sample)
    np.testing.assert_array_equal(cached.coords, tsne_map.coords)
    placed = cached.place(embeddings[[0, 150]] + 0.01)
    for point, i in zip(placed, (0, 150)):
        assert labels[np.argmin(np.linalg.norm(cached.coords - point, axis=1))] == labels[i]

    figure = cached.figure(list(labels), ["herbarium"] * 300)
    drawn = sum(len(trace.x) for trace in figure.data if trace.name in set(labels))
    assert (
        drawn == 100
        and "showing the 100 reference images the map was fitted on (all 6 species) of 300"
        in figure.layout.title.text
    )
    small = TSNEMap(embeddings[:50], cached.coords[:50])  # a map of all its points: all drawn, no note
    figure = small.figure(list(labels[:50]), ["field"] * 50)
    assert (
        sum(len(t.x) for t in figure.data if t.name in set(labels)) == 50 and figure.layout.title.text is None
    )


def test_app_with_a_small_map_max_points_end_to_end(tmp_path, monkeypatch):
    """``--map-max-points 8`` on the 20-image test reference set: the map is fitted on 8 images with all 4
    species, the figure draws them and a photo is placed on it."""
    from inference_app.app import MapRenderer, load_components, parse_args
    from inference_app.testing import SPECIES, make_reference_dataset, make_tiny_model

    model_dir = make_tiny_model(tmp_path / "model")
    make_reference_dataset(model_dir / "autotrain-data")
    monkeypatch.setenv("MAP_MAX_POINTS", "8")
    args = parse_args(["--model", str(model_dir), "--threads", "1"])
    assert args.map_max_points == 8
    assert parse_args(["--model", "m", "--map-max-points", "12"]).map_max_points == 12
    with pytest.raises(SystemExit):
        parse_args(["--model", "m", "--map-max-points", "3"])
    predictor, index, tsne_map, *_ = load_components(args)
    assert len(index) == 20 and len(tsne_map.sample) == 8
    assert {index.reference.species[i] for i in tsne_map.sample} == set(SPECIES)

    renderer = MapRenderer(tsne_map, index)
    base = json.loads(renderer.base.plot)
    assert sum(len(t["x"]) for t in base["data"] if t.get("name") in SPECIES) == 8
    assert "of 20" in base["layout"]["title"]["text"]
    figure = json.loads(renderer.place(predictor.embed(index.reference.loader(0))).plot)
    query = [t for t in figure["data"] if t.get("name") == "your photo"]
    assert len(query) == 1 and np.isfinite(query[0]["x"]).all()


@pytest.mark.slow
def test_umap_above_max_points_fits_a_sample_and_places_the_rest():
    embeddings, labels = _clusters(300, 6)
    fitted = embedding_map.fit_map(embeddings, "umap", labels, max_points=100, progress=False)
    assert fitted.sampled and np.isfinite(fitted.coords).all()
    np.testing.assert_allclose(fitted.coords[fitted.sample], fitted.model.embedding_)
    assert set(labels[fitted.sample]) == set(labels)


def test_reference_index_embeds_in_batches_and_searches_with_one_product(tmp_path):
    """Start-up stays bounded for a large reference set: images are decoded and embedded one batch at a
    time (never all at once), and a query's neighbours come from one ``(N, D) @ (D,)`` product."""
    from inference_app.reference import ReferenceIndex, load_reference_set
    from inference_app.testing import make_reference_dataset

    reference = load_reference_set(make_reference_dataset(tmp_path / "data"))
    rng = np.random.default_rng(0)

    class BatchRecorder:
        model_dir, from_hub, model_hash = None, False, "stub"

        def __init__(self):
            self.batches: list[int] = []

        def embed(self, images):
            self.batches.append(len(images))
            vectors = rng.normal(size=(len(images), 8)).astype(np.float32)
            return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    recorder = BatchRecorder()
    index = ReferenceIndex.build(
        recorder, reference, cache_dir=tmp_path / "cache", batch_size=8, progress=False
    )
    assert recorder.batches == [8, 8, 4] and index.embeddings.shape == (20, 8)
    query = index.embeddings[13]
    best = index.neighbours(query, n=3)
    assert best[0].index == 13 and best[0].similarity == pytest.approx(1.0, abs=1e-6)
    assert [n.index for n in best] == list(np.argsort(-(index.embeddings @ query), kind="stable")[:3])


def test_all_zero_embeddings_get_finite_map_coordinates(caplog):
    # at a tiny image size the backbone gave some images all-zero features and the trainer's t-SNE
    # crashed with "Input X contains NaN" (a zero vector has no cosine distance)
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(40, 16)).astype(np.float32)
    embeddings[[3, 17, 29]] = 0.0
    with caplog.at_level("WARNING"):
        coords = embedding_map.fit_tsne(embeddings, n_iter=50)
    assert np.isfinite(np.asarray(coords)).all()
    assert "3 of 40 embeddings are all zero" in caplog.text
    # the zero rows sit together: closer to each other than to the typical point
    spread = np.linalg.norm(np.asarray(coords) - np.asarray(coords).mean(0), axis=1).mean()
    assert np.linalg.norm(np.asarray(coords)[3] - np.asarray(coords)[17]) < spread


def test_a_sample_smaller_than_the_species_count_warns_at_start_up(tmp_path, caplog):
    """50 points for 100 species cannot hold every species: the map draws 50 of them and start-up says so;
    with as many points as species, or no sampling at all, there is no warning."""
    embeddings, labels = _clusters(200, 100)
    with caplog.at_level("WARNING", logger="inference_app.tsne_map"):
        tsne_map = load_map("tsne", embeddings, tmp_path, labels=list(labels), max_points=50)
    assert len({labels[i] for i in tsne_map.sample}) == 50
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "the map's sample of 50 points holds 50 of 100 species; raise --map-max-points" in warning
    caplog.clear()
    with caplog.at_level("WARNING", logger="inference_app.tsne_map"):
        load_map("tsne", embeddings, tmp_path, labels=list(labels), max_points=100)
        load_map("tsne", embeddings[:50], tmp_path, labels=list(labels[:50]), max_points=50)
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
