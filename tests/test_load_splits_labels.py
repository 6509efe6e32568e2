"""The trainer's label set (issue 10): labels with no training image are left out with a warning, so that
"herbarium only" counts only species that have herbarium sheets; an image folder without species
folders is a one-line error with exit status 2 (issue 10, kind 4)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
from PIL import Image as PILImage

from autotrain.trainers.image_classification_custom import splits as S
from data_prep import build_dataset
from data_prep.testing import make_folder_tree, write_image

# two species with sheets and field photos; four present only in test/ (no training image)
COUNTS = {
    "Abies alba": (4, 3, 1),
    "Betula pendula": (4, 3, 1),
    "Carex nigra": (0, 0, 2),
    "Dryas octopetala": (0, 0, 1),
    "Erica carnea": (0, 0, 1),
    "Fagus sylvatica": (0, 0, 1),
}
TEST_ONLY = ["Carex nigra", "Dryas octopetala", "Erica carnea", "Fagus sylvatica"]


@pytest.fixture()
def test_only_dataset(tmp_path: Path) -> Path:
    root = make_folder_tree(tmp_path / "plants", COUNTS)
    out = tmp_path / "proj" / "autotrain-data"
    _, report = build_dataset(root, out, num_proc=1, progress=False)
    assert report["classes_without_training_images"] == TEST_ONLY
    return out


def test_labels_without_training_images_are_left_out_with_a_warning(test_only_dataset: Path) -> None:
    with pytest.warns(UserWarning, match="4 label\\(s\\) .* have no training image") as record:
        data = S.load_splits(str(test_only_dataset))
    message = next(str(w.message) for w in record if "no training image" in str(w.message))
    for name in TEST_ONLY:
        assert name in message
    assert "5 test image(s) of them not evaluated" in message
    assert data.class_names == ["Abies alba", "Betula pendula"]
    herbarium_only = int((~data.class_has_field).sum())  # what metrics.json and the model card report
    assert herbarium_only == 0
    assert len(data.test) == 2 and set(data.test.labels.tolist()) == {0, 1}
    assert len(data.test.dataset) == 2
    assert any("no training image" in n for n in data.notes)


def test_unused_label_in_a_saved_dataset_is_left_out(tmp_path: Path) -> None:
    """A ClassLabel name with no image at all (an older build, a Hub dataset) is not a class."""
    features = Features(
        {
            "image": Image(),
            "label": ClassLabel(names=["A", "B", "Empty"]),
            "domain": ClassLabel(names=["herbarium", "field"]),
        }
    )
    images = [PILImage.new("RGB", (8, 8), (i * 40, 0, 0)) for i in range(4)]
    train = Dataset.from_dict(
        {"image": images, "label": [0, 0, 1, 1], "domain": [0, 1, 0, 0]}, features=features
    )
    DatasetDict({"train": train}).save_to_disk(str(tmp_path / "d"))
    with pytest.warns(UserWarning, match="Empty"):
        data = S.load_splits(str(tmp_path / "d"), valid_split=None)
    assert data.class_names == ["A", "B"]
    assert data.class_has_field.tolist() == [True, False]  # B: herbarium only; Empty: not counted at all


def test_string_label_seen_only_in_test_is_left_out(tmp_path: Path) -> None:
    images = [PILImage.new("RGB", (8, 8), (i * 40, 0, 0)) for i in range(5)]
    train = Dataset.from_dict({"image": images[:4], "label": ["a", "a", "b", "b"]})
    test = Dataset.from_dict({"image": images[:3], "label": ["a", "zz", "b"]})
    DatasetDict({"train": train, "test": test}).save_to_disk(str(tmp_path / "d"))
    with pytest.warns(UserWarning, match="zz; 1 test image"):
        data = S.load_splits(str(tmp_path / "d"), valid_split=None)
    assert data.class_names == ["a", "b"] and data.test.labels.tolist() == [0, 1]


def test_class_label_minus_one_is_an_unlabelled_image(tmp_path: Path) -> None:
    features = Features({"image": Image(), "label": ClassLabel(names=["A", "B"])})
    images = [PILImage.new("RGB", (8, 8), (i * 40, 0, 0)) for i in range(3)]
    train = Dataset.from_dict({"image": images, "label": [0, 1, -1]}, features=features)
    DatasetDict({"train": train}).save_to_disk(str(tmp_path / "d"))
    with pytest.raises(S.DataInputError, match="split 'train': 1 image\\(s\\) without a 'label' value"):
        S.load_splits(str(tmp_path / "d"), valid_split=None)


def test_only_one_trainable_class_is_refused(tmp_path: Path) -> None:
    root = make_folder_tree(tmp_path / "plants", {"A": (3, 2, 1), "B": (0, 0, 2)})
    build_dataset(root, tmp_path / "out", num_proc=1, progress=False)
    with pytest.raises(ValueError, match="need at least 2 classes with training images, found 1"):
        S.load_splits(str(tmp_path / "out"))


def _imagefolder_without_species(root: Path) -> Path:
    for split, seed in (("train", 0), ("validation", 10)):
        for i in range(3):
            write_image(root / split / f"{i}.jpg", seed + i)
    return root


def test_image_folder_without_species_folders_is_a_data_input_error(tmp_path: Path) -> None:
    root = _imagefolder_without_species(tmp_path / "images")
    with pytest.raises(S.DataInputError) as err:
        S.load_splits(str(root))
    text = str(err.value)
    assert "\n" not in text
    assert f"{root / 'train'}: 3 image(s) not inside a species folder" in text
    assert f"{root / 'train'}/<species>/<image>" in text


def test_trainer_cli_exits_2_with_one_line_for_a_folder_without_species(
    tmp_path: Path, run_trainer_cli, make_tiny_timm
) -> None:
    root = _imagefolder_without_species(tmp_path / "images")
    config = {
        "project_name": "proj",
        "data_path": str(root),
        "model": str(make_tiny_timm(tmp_path / "tiny-timm")),
        "image_size": 32,
        "epochs": 1,
    }
    code, messages = run_trainer_cli(config)
    assert code == 2
    level, last = messages[-1]
    assert level == "ERROR" and "\n" not in last
    assert f"{root / 'train'}: 3 image(s) not inside a species folder" in last and "Traceback" not in last
    assert not any("Traceback" in text for _, text in messages)  # no traceback without --debug
    code, messages = run_trainer_cli(config, "--debug")
    assert code == 2
    assert any(lvl == "DEBUG" and "Traceback" in text for lvl, text in messages[:-1])  # --debug logs it


def test_training_counts_no_test_only_species_as_herbarium_only(
    test_only_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_tiny_timm
) -> None:
    from autotrain.trainers.image_classification_custom.__main__ import train

    config = {
        "project_name": "proj",
        "model": str(make_tiny_timm(tmp_path / "tiny-timm")),
        "image_size": 32,
        "embedding_dim": 16,
        "epochs": 1,
        "warmup_epochs": 0,
        "batch_size": 4,
        "tsne": False,
    }
    monkeypatch.chdir(tmp_path)
    with pytest.warns(UserWarning, match="have no training image"):
        train(config)
    metrics = json.loads((tmp_path / "proj" / "metrics.json").read_text())
    assert metrics["classes"] == {"num_classes": 2, "with_field": 2, "herbarium_only": 0}
    assert "herbarium_only" not in metrics["test"]
    assert metrics["test"]["all"]["n"] == 2
    card = (tmp_path / "proj" / "README.md").read_text()
    assert "Classes: 2 (2 with field training photos, 0 herbarium only)" in card
    assert np.isfinite(metrics["test"]["all"]["top1"])


def test_evaluation_labels_in_another_order_are_aligned_by_name_and_nothing_is_written(
    tmp_path: Path,
) -> None:
    """A validation ``ClassLabel`` in another order (aligned by name, ``align_labels_with_mapping``) and
    string test labels (cast to the training ``ClassLabel``): ids follow the training split's names, a
    name the training split lacks is left out, and the data folder is left as it was (no cache files)."""
    images = [PILImage.new("RGB", (8, 8), (i * 30, 0, 0)) for i in range(6)]
    train_features = Features({"image": Image(), "label": ClassLabel(names=["A", "B", "C"])})
    train = Dataset.from_dict({"image": images[:3], "label": [0, 1, 2]}, features=train_features)
    reordered = Features({"image": Image(), "label": ClassLabel(names=["C", "zz", "A", "B"])})
    validation = Dataset.from_dict({"image": images[:5], "label": [0, 2, 3, 1, 0]}, features=reordered)
    test = Dataset.from_dict({"image": images[:4], "label": ["B", "C", "yy", "A"]})
    DatasetDict({"train": train, "validation": validation, "test": test}).save_to_disk(str(tmp_path / "d"))
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "d").rglob("*"))
    with pytest.warns(UserWarning, match="2 label\\(s\\) .* yy, zz; 1 validation image.*; 1 test image"):
        data = S.load_splits(str(tmp_path / "d"))
    assert data.class_names == ["A", "B", "C"]
    assert data.validation.labels.tolist() == [2, 0, 1, 2]  # C, A, B, C; the zz image left out
    assert data.test.labels.tolist() == [1, 2, 0]  # B, C, A; the yy image left out
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "d").rglob("*")) == before


def test_domain_words_follow_the_contract(tmp_path: Path) -> None:
    images = [PILImage.new("RGB", (8, 8), (i * 40, 0, 0)) for i in range(4)]
    train = Dataset.from_dict(
        {
            "image": images,
            "label": ["a", "a", "b", "b"],
            "domain": ["Herbarium", "photo", "field", "herbarium"],
        }
    )
    DatasetDict({"train": train}).save_to_disk(str(tmp_path / "d"))
    data = S.load_splits(str(tmp_path / "d"), valid_split=None)
    assert data.train.domains.tolist() == [0, 1, 1, 0] and data.class_has_field.tolist() == [True, True]
    bad = Dataset.from_dict({"image": images[:2], "label": ["a", "b"], "domain": ["field", "garden"]})
    DatasetDict({"train": bad}).save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(
        ValueError,
        match="split 'train': domain values must be \\['herbarium', 'field'\\], found \\['garden'\\]",
    ):
        S.load_splits(str(tmp_path / "bad"), valid_split=None)


def test_evaluation_label_names_that_differ_only_in_case_are_refused(tmp_path: Path) -> None:
    images = [PILImage.new("RGB", (8, 8), (i * 40, 0, 0)) for i in range(3)]
    train = Dataset.from_dict(
        {"image": images[:2], "label": [0, 1]},
        features=Features({"image": Image(), "label": ClassLabel(names=["Abies alba", "Betula"])}),
    )
    validation = Dataset.from_dict(
        {"image": images, "label": [0, 1, 2]},
        features=Features(
            {"image": Image(), "label": ClassLabel(names=["Betula", "abies alba", "Abies alba"])}
        ),
    )
    DatasetDict({"train": train, "validation": validation}).save_to_disk(str(tmp_path / "d"))
    with pytest.raises(
        S.DataInputError, match="split 'validation': label names differ only in case \\(Abies alba"
    ):
        S.load_splits(str(tmp_path / "d"))
