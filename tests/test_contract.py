"""The cross-stage contract (``data_prep.contract``): its rules, and that every stage uses its objects."""

import importlib
import pkgutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import data_prep
import data_prep.contract as contract
import inference_app
from data_prep.testing import make_folder_tree

REPO_ROOT = Path(__file__).resolve().parents[1]
TRAINER = "autotrain.trainers.image_classification_custom"
# the names the contract defines: its constants and its functions (not what it imports)
SHARED = {
    name: value
    for name, value in vars(contract).items()
    if (name.isupper() and name != "TYPE_CHECKING")
    or (callable(value) and getattr(value, "__module__", None) == contract.__name__)
}


# --- rules -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "namespaced", "expected"),
    [
        ("user/herbarium-arcface", False, True),
        ("user/herbarium-arcface", True, True),
        ("hf-hub:timm/vit_small_patch16_224.augreg_in21k", True, True),
        ("efficientnet_lite0", False, True),  # a bare name is an id (a timm model name, a legacy repo)
        ("efficientnet_lite0", True, False),  # ... but not an owner/name one
        ("user/a--b", False, False),
        ("user/a..b", False, False),
        ("user/name/extra", False, False),
        ("./user/name", False, False),
        ("/abs/path", False, False),
        ("user/" + "x" * 97, False, False),
        ("", False, False),
        (None, False, False),
    ],
)
def test_is_hub_id(name, namespaced, expected):
    assert contract.is_hub_id(name, namespaced=namespaced) is expected


def test_an_existing_local_path_is_not_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert contract.is_hub_id("user/model", namespaced=True)
    (tmp_path / "user" / "model").mkdir(parents=True)
    assert not contract.is_hub_id("user/model", namespaced=True)


def test_canonical_domain():
    assert contract.DOMAINS[contract.HERBARIUM] == "herbarium" and contract.DOMAINS[contract.FIELD] == "field"
    for word, domain in [
        ("herbarium", "herbarium"),
        (" Photo ", "field"),
        ("PHOTOS", "field"),
        ("field", "field"),
    ]:
        assert contract.canonical_domain(word) == domain
    for word in ("test", "leaf", "", "herbaria"):
        assert contract.canonical_domain(word) is None
    assert set(contract.DOMAIN_SYNONYMS.values()) == set(contract.DOMAINS)


def test_resampling_names_round_trip():
    for name, member in contract.RESAMPLING.items():
        assert contract.resampling(name) is member
        assert contract.resampling(name.upper()) is member
        assert contract.resampling_name(int(member)) == name
    assert contract.resampling("no-such-filter") is Image.Resampling.BILINEAR
    assert contract.resampling_name(99) == "bilinear"


def test_dataset_features_are_what_data_prep_writes(tmp_path):
    root = make_folder_tree(tmp_path / "in", {"Quercus robur": (2, 2, 1), "Acer campestre": (2, 2, 1)})
    dsd, report = data_prep.build_dataset(root, tmp_path / "out", num_proc=1, progress=False)
    expected = contract.dataset_features(report["classes"])
    assert report["classes"] == ["Acer campestre", "Quercus robur"]
    for split in dsd.values():
        assert split.features == expected
    assert list(expected) == [
        contract.IMAGE_COLUMN,
        contract.LABEL_COLUMN,
        contract.DOMAIN_COLUMN,
        contract.PATH_COLUMN,
    ]
    assert expected[contract.DOMAIN_COLUMN].names == list(contract.DOMAINS)
    assert set(dsd) <= set(contract.SPLITS)

    # what data_prep wrote is a saved DatasetDict; a single split saved alone is a saved dataset too
    assert contract.is_saved_dataset_dict(tmp_path / "out") and contract.is_saved_dataset(tmp_path / "out")
    dsd["train"].save_to_disk(str(tmp_path / "single"))
    assert contract.is_saved_dataset(tmp_path / "single")
    assert not contract.is_saved_dataset_dict(tmp_path / "single")
    assert not contract.is_saved_dataset(root) and not contract.is_saved_dataset(tmp_path / "missing")


def test_the_apps_test_dataset_has_the_contract_features(tmp_path):
    from datasets import load_from_disk

    from inference_app.testing import SPECIES, make_reference_dataset

    dsd = load_from_disk(str(make_reference_dataset(tmp_path / "ref")))
    assert all(split.features == contract.dataset_features(sorted(SPECIES)) for split in dsd.values())


# --- one owner: every stage uses the contract's objects --------------------------------------------


def _modules(package) -> list:
    names = [info.name for info in pkgutil.iter_modules(package.__path__) if info.name != "__main__"]
    return [importlib.import_module(f"{package.__name__}.{name}") for name in names]


def test_data_prep_and_the_app_use_the_contracts_objects():
    """Any data_prep or app module that has a contract name holds the contract's object (no copies)."""
    checked = 0
    for module in _modules(data_prep) + _modules(inference_app):
        if module is contract:
            continue
        for name, value in SHARED.items():
            if hasattr(module, name):
                assert getattr(module, name) is value, f"{module.__name__}.{name} is a copy"
                checked += 1
    assert checked >= 5


def test_aliases_and_rules_built_on_the_contract():
    import data_prep.build as build
    import data_prep.images as images
    import data_prep.layouts as layouts
    from inference_app import predictor, reference

    assert build.create_features is contract.dataset_features
    assert layouts.DOMAINS is contract.DOMAINS
    # the reference set's own rule: the contract's synonyms, plus data_prep's test/ folder of field photos
    assert reference.DOMAIN_FOLDERS == {**contract.DOMAIN_SYNONYMS, "test": "field"}
    for name, member in contract.RESAMPLING.items():
        assert images.pil_filter(name) == member
    assert predictor.is_hub_id is contract.is_hub_id and reference.is_hub_id is contract.is_hub_id
    assert reference.is_saved_dataset is contract.is_saved_dataset


def test_the_app_fits_its_map_with_the_trainers_tsne():
    embedding_map = importlib.import_module(f"{TRAINER}.embedding_map")
    from inference_app import tsne_map

    assert tsne_map._embedding_map() is embedding_map
    embeddings = np.random.default_rng(0).normal(size=(7, 5)).astype(np.float32)
    fitted = tsne_map.TSNEMap.fit(embeddings, n_iter=50)
    assert fitted.perplexity == embedding_map.tsne_perplexity(7) == 2.0
    expected = np.asarray(embedding_map.fit_tsne(embeddings, n_iter=50), dtype=np.float64)
    centred = expected - (expected.max(axis=0) + expected.min(axis=0)) / 2
    np.testing.assert_allclose(fitted.coords, centred)


def test_trainer_constants_agree_with_the_contract():
    """Trainer modules (the shipped model code included, which keeps its own copies) agree on shared values."""
    import autotrain.trainers.image_classification_custom as trainer

    checked = 0
    for module in _modules(trainer):
        for name, value in SHARED.items():
            if hasattr(module, name) and not callable(value):
                assert getattr(module, name) == value, f"{module.__name__}.{name} differs from the contract"
                checked += 1
        if hasattr(module, "DOMAIN_NAMES"):
            assert tuple(module.DOMAIN_NAMES) == contract.DOMAINS
    assert checked >= 1
