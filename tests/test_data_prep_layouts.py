"""Build datasets from each input layout; check splits, features, label order, domains, validation rule, report."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest
from datasets import ClassLabel, Image, Value, load_from_disk

from data_prep import DataPrepError, build_dataset
from data_prep.cli import main
from data_prep.layouts import detect_layout
from data_prep.splits import validation_count
from data_prep.testing import make_folder_tree, write_image

# species -> (herbarium, field, test); names chosen so that sorted order != insertion order
COUNTS = {
    "Zea mays": (3, 10, 2),
    "Abies alba": (2, 5, 2),
    "Mentha aquatica": (2, 2, 1),
    "Betula pendula": (2, 1, 1),
    "Carex nigra": (3, 0, 2),
}
NAMES = sorted(COUNTS)


def _split_counts(dsd, split: str) -> Counter:
    names = dsd[split].features["label"].names
    return Counter(names[i] for i in dsd[split]["label"])


def test_validation_rule() -> None:
    assert [validation_count(n, 0.2) for n in range(7)] == [0, 0, 1, 1, 1, 1, 1]
    assert validation_count(10, 0.2) == 2 and validation_count(10, 0.5) == 5
    assert validation_count(3, 0.9) == 2  # always keeps one field photo in train
    assert validation_count(5, 0.0) == 0


def test_folders_layout(tmp_path: Path) -> None:
    root = make_folder_tree(tmp_path / "in", COUNTS, field_name="photo")
    assert detect_layout(root) == "folders"
    dsd, report = build_dataset(root, tmp_path / "out", num_proc=1, progress=False)

    assert set(dsd) == {"train", "validation", "test"}
    features = dsd["train"].features
    assert isinstance(features["image"], Image) and features["path"] == Value("string")
    assert features["label"] == ClassLabel(names=NAMES)
    assert features["domain"] == ClassLabel(names=["herbarium", "field"])

    domains = dsd["train"].features["domain"].names
    assert {domains[d] for d in dsd["validation"]["domain"]} == {"field"}
    assert {domains[d] for d in dsd["test"]["domain"]} == {"field"}
    assert _split_counts(dsd, "validation") == {"Zea mays": 2, "Abies alba": 1, "Mentha aquatica": 1}
    assert _split_counts(dsd, "test") == {n: c[2] for n, c in COUNTS.items()}
    train = Counter((NAMES[lab], domains[d]) for lab, d in zip(dsd["train"]["label"], dsd["train"]["domain"]))
    for name, (n_h, n_f, _) in COUNTS.items():
        assert train[(name, "herbarium")] == n_h
        assert train[(name, "field")] == n_f - validation_count(n_f, 0.2)

    # paths are relative to the input root and the label matches the folder
    for row in dsd["train"].select(range(5)):
        assert not row["path"].startswith("/") and row["path"].split("/")[1] == NAMES[row["label"]]
    assert set(dsd["train"]["path"]).isdisjoint(dsd["validation"]["path"])

    assert report["classes"] == NAMES
    assert report["classes_without_field_training_images"] == ["Carex nigra"]
    assert report["per_class"]["Zea mays"] == {
        "train_herbarium": 3,
        "train_field": 8,
        "validation": 2,
        "test": 2,
    }
    assert report["splits"]["validation"] == {"field": 4, "total": 4}
    assert report["findings"] == [] and "validation" in report["validation_rule"]

    out = tmp_path / "out"
    assert json.loads((out / "prep_report.json").read_text())["classes"] == NAMES
    assert (out / "dataset_balance.png").stat().st_size > 1000
    again = load_from_disk(str(out))
    assert again["train"].features == features and again["train"][0]["image"].mode == "RGB"


def test_empty_validation_split_is_saved(tmp_path: Path) -> None:
    root = make_folder_tree(tmp_path / "in", {"A": (2, 1, 0), "B": (2, 0, 0)})
    dsd, report = build_dataset(root, tmp_path / "out", num_proc=1, progress=False)
    assert len(dsd["validation"]) == 0 and len(dsd["train"]) == 5
    assert load_from_disk(str(tmp_path / "out"))["validation"].features["label"].names == ["A", "B"]


def test_validation_draw_is_seeded(tmp_path: Path) -> None:
    root = make_folder_tree(tmp_path / "in", {"A": (1, 10, 0), "B": (1, 10, 0)})
    paths = [
        sorted(build_dataset(root, seed=s, num_proc=1, progress=False)[0]["validation"]["path"])
        for s in (0, 0, 1)
    ]
    assert paths[0] == paths[1] and paths[0] != paths[2]
    assert "test" not in build_dataset(root, num_proc=1, progress=False)[0]


def _plantclef_tree(root: Path) -> None:
    ids = {"101": "Quercus robur", "202": "Acer campestre", "303": "Fagus sylvatica"}
    lines, gt, test = [], [], []
    seed = 0
    for cid in ids:
        for dom, n in (("herbarium", 3), ("photo", 2 if cid != "303" else 0)):
            for j in range(n):
                seed += 1
                rel = f"train/{dom}/{cid}/{j}.jpg"
                write_image(root / rel, seed)
                lines.append(f"{rel} {cid}")
        seed += 1
        rel = f"test/{cid}_{seed}.jpg"
        write_image(root / rel, seed)
        gt.append(f"{rel} {cid}")
        test.append(rel)
    write_image(root / "test/unlabelled.jpg", 999)
    test.append("test/unlabelled.jpg")
    write_image(root / "train/herbarium/999/x.jpg", 998)
    write_image(root / "train/other/101/y.jpg", 997)
    lines += [
        "train/herbarium/999/x.jpg 999",
        "train/herbarium/101/missing.jpg 101",
        "just-one-field",
        "train/other/101/y.jpg 101",
    ]
    (root / "list").mkdir(parents=True)
    (root / "list/train.txt").write_text("\n".join(lines) + "\n")
    (root / "list/groundtruth.txt").write_text("\n".join(gt) + "\n")
    (root / "list/test.txt").write_text("\n".join(test) + "\n")
    (root / "list/species_list.txt").write_text("".join(f"{k}; {v}\n" for k, v in ids.items()))


def test_plantclef_layout(tmp_path: Path) -> None:
    root = tmp_path / "clef"
    _plantclef_tree(root)
    assert detect_layout(root) == "plantclef"
    dsd, report = build_dataset(root, num_proc=1, progress=False)
    assert report["layout"] == "plantclef"
    assert dsd["train"].features["label"].names == ["Acer campestre", "Fagus sylvatica", "Quercus robur"]
    assert len(dsd["test"]) == 3 and len(dsd["validation"]) == 2
    assert report["classes_without_field_training_images"] == ["Fagus sylvatica"]
    reasons = {(f["path"], f["reason"]) for f in report["findings"]}
    assert ("train/herbarium/999/x.jpg", "unknown_class_id") in reasons
    assert ("train/herbarium/101/missing.jpg", "missing_file") in reasons
    assert ("list/train.txt:16", "malformed_line") in reasons
    assert ("train/other/101/y.jpg", "unknown_domain") in reasons
    assert ("test/unlabelled.jpg", "unlabelled_test") in reasons
    domains = dsd["train"].features["domain"].names
    herb = [p for p, d in zip(dsd["train"]["path"], dsd["train"]["domain"]) if domains[d] == "herbarium"]
    assert all(p.startswith("train/herbarium/") for p in herb) and len(herb) == 9


def test_csv_layout(tmp_path: Path) -> None:
    root = tmp_path / "csvroot"
    rows = []
    for i, (label, domain, split) in enumerate(
        [
            ("b", "herbarium", "train"),
            ("a", "herbarium", "train"),
            ("a", "photo", "train"),
            ("a", "field", "train"),
            ("a", "field", "test"),
        ]
    ):
        write_image(root / "img" / f"{i}.jpg", i)
        rows.append({"path": f"img/{i}.jpg", "label": label, "domain": domain, "split": split})
    rows.append({"path": "img/nope.jpg", "label": "a", "domain": "field", "split": "train"})
    rows.append({"path": "img/0.jpg", "label": "a", "domain": "leaf", "split": "train"})
    with (root / "data.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "label", "domain", "split"])
        writer.writeheader()
        writer.writerows(rows)
    assert detect_layout(root) == "csv" and detect_layout(root / "data.csv") == "csv"
    dsd, report = build_dataset(root / "data.csv", num_proc=1, progress=False)
    assert dsd["train"].features["label"].names == ["a", "b"]
    assert (len(dsd["train"]), len(dsd["validation"]), len(dsd["test"])) == (3, 1, 1)
    assert {(f["path"], f["reason"]) for f in report["findings"]} == {
        ("img/nope.jpg", "missing_file"),
        ("img/0.jpg", "unknown_domain"),
    }

    (root / "bad.csv").write_text("file,label\nx.jpg,a\n")
    with pytest.raises(DataPrepError, match=r"bad\.csv: missing column\(s\) domain, path"):
        build_dataset(root / "bad.csv", progress=False)


def test_forced_layout_mismatch_and_unknown_input(tmp_path: Path) -> None:
    _plantclef_tree(tmp_path / "clef")
    with pytest.raises(DataPrepError, match="no herbarium"):
        build_dataset(tmp_path / "clef", layout="folders", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataPrepError, match="cannot tell the layout"):
        build_dataset(tmp_path / "empty", progress=False)


def test_cli_build_default_out_and_rebuild(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    make_folder_tree(tmp_path / "in", {"A": (2, 3, 1), "B": (2, 0, 1)})
    monkeypatch.chdir(tmp_path)
    for _ in range(2):  # a second build replaces the first
        assert main(["build", "in", "--project-name", "proj", "--quiet", "--num-proc", "1"]) == 0
    out = capsys.readouterr().out
    assert "classes without field training images (1): B" in out and "skipped (0):" in out
    assert load_from_disk(str(tmp_path / "proj" / "autotrain-data"))["train"].num_rows == 6
    assert not [p for p in (tmp_path / "proj").iterdir() if p.name.startswith(".")]  # temp folders removed

    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("mine")
    assert main(["build", "in", "--out", "other", "--quiet"]) == 2
    assert "does not hold an earlier build" in capsys.readouterr().err
    assert (tmp_path / "other" / "keep.txt").is_file()


def test_cli_bad_input_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["build", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "input not found" in err and "Traceback" not in err


def test_cli_help_explains_layouts(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["build", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for word in (
        "herbarium/<species>",
        "list/train.txt",
        "species_list.txt",
        "path,label,domain",
        "--push-to-hub",
        "--strict",
    ):
        assert word in text


def test_in_memory_build_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_folder_tree(tmp_path / "in", {"A": (2, 2, 0)})
    monkeypatch.chdir(tmp_path)
    dsd, report = build_dataset(root, num_proc=1, progress=False)
    assert report["out"] is None and dsd["train"][0]["image"].size == (48, 40)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]
