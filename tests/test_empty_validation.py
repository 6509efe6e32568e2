"""Herbarium-only collections train (issue 14, point 1).

An empty validation split (data_prep writes one when no species has two field photos) is treated like a
missing one: a warning that says what is lost, and training goes on. The inputs are built with the real
``python -m data_prep build`` and trained in-process with the shipped ``config.json``, overridden only
for speed (tiny local backbone, 32 px, 2 epochs, batch 8); ``valid_split`` stays unset, as shipped.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset, DatasetDict
from PIL import Image as PILImage

from autotrain.trainers.image_classification_custom import splits as S
from data_prep import build_dataset
from data_prep.cli import main as data_prep_main
from data_prep.contract import dataset_features
from data_prep.report import format_summary
from data_prep.testing import make_folder_tree

REPO_ROOT = Path(__file__).resolve().parents[1]
SPECIES = ["Abies alba", "Betula pendula", "Carex nigra"]
NO_VALIDATION = "none: no species has enough field photos"


def _build(root: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """``python -m data_prep build ROOT --out OUT``; returns its console output."""
    assert data_prep_main(["build", str(root), "--out", str(out), "--num-proc", "1", "--quiet"]) == 0
    return capsys.readouterr().out


def _train_shipped_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_tiny_timm
) -> tuple[dict, list[str]]:
    """Train ``herbarium-arcface/autotrain-data`` with config.json made fast; returns metrics.json, warnings."""
    from autotrain import logger
    from autotrain.trainers.image_classification_custom.__main__ import train

    shipped = json.loads((REPO_ROOT / "config.json").read_text())
    assert "valid_split" not in shipped  # the shipped default: an absent/empty split is not an error
    make_tiny_timm(tmp_path / "tiny-timm")
    config = {
        **shipped,
        "model": "tiny-timm",
        "image_size": 32,
        "embedding_dim": 32,
        "epochs": 2,
        "batch_size": 8,
    }
    monkeypatch.chdir(tmp_path)
    messages: list[str] = []
    sink = logger.add(lambda m: messages.append(str(m)), level="WARNING")
    try:
        train(config)
    finally:
        logger.remove(sink)
    project = tmp_path / shipped["project_name"]
    assert (project / "model.safetensors").is_file() and (project / "README.md").is_file()
    return json.loads((project / "metrics.json").read_text()), messages


def _empty_validation_warning(messages: list[str]) -> str:
    hits = [m for m in messages if "validation split" in m and "empty" in m]
    assert len(hits) == 1, messages
    assert "early stopping" in hits[0] and "last epoch" in hits[0]
    return hits[0]


def test_one_field_photo_builds_and_trains_with_shipped_config(tmp_path, monkeypatch, capsys, make_tiny_timm):
    """3 species x 6 herbarium sheets, a single field photo for one species, no test folder."""
    counts = {name: (6, 1 if i == 0 else 0, 0) for i, name in enumerate(SPECIES)}
    root = make_folder_tree(tmp_path / "plants", counts)
    summary = _build(root, tmp_path / "herbarium-arcface" / "autotrain-data", capsys)
    assert NO_VALIDATION in summary

    with pytest.warns(UserWarning, match="validation split 'validation' is empty"):
        metrics, messages = _train_shipped_config(tmp_path, monkeypatch, make_tiny_timm)
    _empty_validation_warning(messages)
    assert "validation" not in metrics and "test" not in metrics
    assert metrics["best_model_metric"] is None  # no epoch selection: the last epoch is kept
    assert metrics["classes"] == {"num_classes": 3, "with_field": 1, "herbarium_only": 2}
    assert metrics["training"]["epochs_completed"] == 2


def test_herbarium_and_test_folders_only_train_with_shipped_config(
    tmp_path, monkeypatch, capsys, make_tiny_timm
):
    """``herbarium/`` and ``test/`` only: no field training photo at all."""
    root = make_folder_tree(tmp_path / "plants", {name: (6, 0, 2) for name in SPECIES})
    assert not (root / "field").exists()
    summary = _build(root, tmp_path / "herbarium-arcface" / "autotrain-data", capsys)
    assert NO_VALIDATION in summary

    with pytest.warns(UserWarning, match="validation split 'validation' is empty"):
        metrics, messages = _train_shipped_config(tmp_path, monkeypatch, make_tiny_timm)
    _empty_validation_warning(messages)
    assert "validation" not in metrics
    assert metrics["test"]["all"]["n"] == 6 and metrics["test"]["herbarium_only"]["n"] == 6
    assert metrics["classes"] == {"num_classes": 3, "with_field": 0, "herbarium_only": 3}


# --- data_prep: the summary and the report say when there is no validation split -------------------------


def test_report_and_summary_say_there_is_no_validation_split(tmp_path, capsys):
    counts = {name: (6, 1 if i == 0 else 0, 0) for i, name in enumerate(SPECIES)}
    root = make_folder_tree(tmp_path / "plants", counts)
    summary = _build(root, tmp_path / "out", capsys)
    report = json.loads((tmp_path / "out" / "prep_report.json").read_text())
    assert report["splits"]["validation"]["total"] == 0
    assert report["validation_split"].startswith(NO_VALIDATION)
    assert "at least 2" in report["validation_split"]  # says what would be enough
    lines = summary.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("validation split:"))
    assert NO_VALIDATION in lines[at] and "no early stopping" in lines[at + 1]


def test_report_names_the_validation_split_when_there_is_one(tmp_path):
    root = make_folder_tree(tmp_path / "plants", {"A": (2, 5, 0), "B": (2, 2, 0), "C": (2, 1, 0)})
    _, report = build_dataset(root, num_proc=1, progress=False)
    assert report["validation_split"] == "2 field photos of 2 of 3 species"
    assert "validation split: 2 field photos of 2 of 3 species" in format_summary(report)


def test_report_says_val_fraction_zero_gives_no_validation_split(tmp_path):
    root = make_folder_tree(tmp_path / "plants", {"A": (2, 5, 0), "B": (2, 5, 0)})
    _, report = build_dataset(root, num_proc=1, progress=False, val_fraction=0.0)
    assert report["validation_split"].startswith("none: val_fraction is 0")


# --- load_splits: empty splits ------------------------------------------------------------------------


def _split(rows) -> Dataset:
    features = dataset_features(["a", "b"])  # the schema data_prep writes
    rng = np.random.default_rng(0)
    data = {"image": [], "label": [], "domain": [], "path": []}
    for i, (label, domain) in enumerate(rows):
        data["image"].append(PILImage.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)))
        data["label"].append(label)
        data["domain"].append(domain)
        data["path"].append(f"{i}.png")
    return Dataset.from_dict(data, features=features)


TRAIN = [(0, 0), (0, 0), (1, 0), (1, 1)]


def _save(path: Path, **splits) -> str:
    """``save_to_disk`` with explicit shard counts (its own size estimate divides by zero on an empty split)."""
    DatasetDict({k: _split(v) for k, v in splits.items()}).save_to_disk(
        str(path), num_shards=dict.fromkeys(splits, 1)
    )
    return str(path)


@pytest.mark.parametrize("required", [False, True])
def test_empty_validation_split_is_skipped_with_a_warning(tmp_path, required):
    path = _save(tmp_path / "d", train=TRAIN, validation=[], test=[(0, 1)])
    with pytest.warns(UserWarning, match="validation split 'validation' is empty") as caught:
        data = S.load_splits(path, valid_split_required=required)
    assert data.validation is None and len(data.test) == 1
    message = str(caught[0].message)
    assert "no epoch selection" in message and "no early stopping" in message
    assert data.notes == [message]


def test_empty_test_split_is_skipped_with_a_warning(tmp_path):
    path = _save(tmp_path / "d", train=TRAIN, validation=[(1, 1)], test=[])
    with pytest.warns(UserWarning, match="test split 'test' is empty"):
        data = S.load_splits(path, test_split_required=True)
    assert data.test is None and len(data.validation) == 1


def test_empty_train_split_is_an_error(tmp_path):
    path = _save(tmp_path / "d", train=[], validation=[(1, 1)])
    with pytest.raises(ValueError, match="train split 'train' is empty"):
        S.load_splits(path)


def test_validation_without_field_photos_is_kept(tmp_path):
    """Rows but no field photo: still a validation split (selection on ``mrr`` over herbarium sheets)."""
    data = S.load_splits(_save(tmp_path / "d", train=TRAIN, validation=[(0, 0), (1, 0)]))
    assert len(data.validation) == 2 and not (data.validation.domains == S.FIELD).any()


def test_validation_without_field_photos_trains_and_selects_on_mrr(tmp_path, monkeypatch, make_tiny_timm):
    """A validation split of herbarium sheets only, and a test split of herbarium sheets only: no crash."""
    herbarium = [(c, 0) for c in (0, 1) for _ in range(6)]
    _save(
        tmp_path / "herbarium-arcface" / "autotrain-data",
        train=herbarium,
        validation=TRAIN[:3],
        test=TRAIN[:3],
    )
    metrics, messages = _train_shipped_config(tmp_path, monkeypatch, make_tiny_timm)
    assert metrics["best_model_metric"] == "mrr" and metrics["validation"]["all"]["n"] == 3
    assert "field" not in metrics["test"]
    assert not [m for m in messages if "is empty" in m]


def test_push_leaves_the_empty_validation_split_out_and_says_so(tmp_path, monkeypatch):
    """``Dataset.push_to_hub`` divides by zero on an empty image split: data_prep pushes the others."""
    from data_prep import hub

    commits, pushed = [], []

    class FakeApi:
        def __init__(self, **_):
            pass

        def create_repo(self, repo_id, **_):
            return f"https://huggingface.co/datasets/{repo_id}"

        def create_commit(self, repo_id, operations, **_):
            commits.append({op.path_in_repo: op.path_or_fileobj for op in operations})

    def fake_push(self, repo_id, **_):
        for split in self.values():
            split._estimate_nbytes()  # what the real push_to_hub computes first, for every split
        pushed.append(sorted(self))

    monkeypatch.setattr(hub, "HfApi", FakeApi)
    monkeypatch.setattr(DatasetDict, "push_to_hub", fake_push)
    root = make_folder_tree(tmp_path / "plants", {name: (6, 0, 2) for name in SPECIES})
    dsd, report = build_dataset(root, tmp_path / "out", num_proc=1, progress=False)
    hub.push_dataset(dsd, "me/plants", report, token="hf_x")
    assert pushed == [["test", "train"]]
    card = commits[0]["README.md"].decode()
    assert (
        f"Validation split: {NO_VALIDATION}" in card and "Empty splits are not uploaded: validation" in card
    )
