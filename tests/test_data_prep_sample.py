"""The embedded sample: layout, determinism, and a real herbarium-to-field domain gap."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.neighbors import NearestCentroid

from data_prep import build_dataset, generate_sample
from data_prep.cli import main
from data_prep.sample import FIELD_SIZE, MARKER, SHEET_SIZE

SMALL = {"n_species": 8, "n_herbarium": 8, "n_field": 4, "n_test": 4}


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_sample(tmp_path_factory.mktemp("sample") / "s", seed=0, progress=False, **SMALL)


def _species(root: Path, kind: str) -> list[str]:
    return sorted(p.name for p in (root / kind).iterdir()) if (root / kind).is_dir() else []


def test_sample_layout(sample: Path) -> None:
    herbarium, field, test = (_species(sample, k) for k in ("herbarium", "field", "test"))
    assert len(herbarium) == 8 and herbarium == test
    missing = json.loads((sample / MARKER).read_text())["species_without_field_training_photos"]
    assert len(missing) == 2 and sorted(set(herbarium) - set(field)) == sorted(missing)
    for name in herbarium:
        assert 5 <= len(list((sample / "herbarium" / name).glob("*.jpg"))) <= 11
        assert len(list((sample / "test" / name).glob("*.jpg"))) == 4
    sheet = Image.open(next((sample / "herbarium").rglob("*.jpg")))
    photo = Image.open(next((sample / "field").rglob("*.jpg")))
    assert (sheet.size, sheet.mode, sheet.format) == (SHEET_SIZE, "RGB", "JPEG")
    assert photo.size == FIELD_SIZE


def test_sample_is_deterministic_and_a_subset(tmp_path: Path, sample: Path) -> None:
    kw = {"n_species": 2, "n_herbarium": 2, "n_field": 1, "n_test": 1, "progress": False}
    a = generate_sample(tmp_path / "a", seed=0, **kw)
    b = generate_sample(tmp_path / "b", seed=0, **kw)
    c = generate_sample(tmp_path / "c", seed=1, **kw)
    files = sorted(p.relative_to(a) for p in a.rglob("*.jpg"))
    assert files and files == sorted(p.relative_to(b) for p in b.rglob("*.jpg"))
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert all((sample / f).read_bytes() == (a / f).read_bytes() for f in files)  # same seed, fewer species
    c_files = {p.relative_to(c): p.read_bytes() for p in c.rglob("*.jpg")}
    assert all(c_files.get(f) != (a / f).read_bytes() for f in files)


def _features(path: Path) -> np.ndarray:
    """Hue histogram of saturated, non-foliage pixels (flower colour) + gradient-orientation histogram."""
    im = Image.open(path).convert("RGB").resize((64, 64))
    hsv = np.asarray(im.convert("HSV"), np.float32).reshape(-1, 3) / 255
    h, s, v = hsv.T
    mask = (s > 0.45) & (v > 0.25) & ((h < 0.16) | (h > 0.45))
    hue = np.histogram(h[mask], bins=24, range=(0, 1))[0].astype(np.float64)
    hue /= hue.sum() + 1e-6
    gray = np.asarray(im.convert("L"), np.float32) / 255
    gy, gx = np.gradient(gray)
    orient = np.histogram(
        np.mod(np.arctan2(gy, gx), np.pi), bins=9, range=(0, np.pi), weights=np.hypot(gx, gy)
    )[0]
    return np.concatenate([np.sqrt(hue), 0.5 * orient / (orient.sum() + 1e-6)])


@pytest.mark.filterwarnings("ignore:self.within_class_std_dev_:UserWarning")
def test_sample_has_a_real_domain_gap(sample: Path) -> None:
    """A classifier trained on herbarium sheets only does clearly worse on field photos than on held-out sheets."""
    names = _species(sample, "herbarium")
    groups: dict[str, tuple[list[np.ndarray], list[int]]] = {
        "train": ([], []),
        "sheets": ([], []),
        "field": ([], []),
    }
    for label, name in enumerate(names):
        for kind in ("herbarium", "field", "test"):
            for i, path in enumerate(
                sorted((sample / kind / name).glob("*.jpg")) if (sample / kind / name).is_dir() else []
            ):
                group = "field" if kind != "herbarium" else ("sheets" if i % 4 == 0 else "train")
                groups[group][0].append(_features(path))
                groups[group][1].append(label)
    clf = NearestCentroid().fit(*groups["train"])
    sheet_acc = clf.score(*groups["sheets"])
    field_acc = clf.score(*groups["field"])
    chance = 1 / len(names)
    print(f"held-out sheets {sheet_acc:.2f}, field photos {field_acc:.2f}, chance {chance:.2f}")
    assert sheet_acc >= 0.7
    assert field_acc >= 2 * chance, "species must stay recognisable across domains"
    assert sheet_acc - field_acc >= 0.3, "the sample must carry a domain gap"


def test_sample_builds_into_the_dataset(sample: Path) -> None:
    dsd, report = build_dataset(sample, num_proc=1, progress=False)
    missing = json.loads((sample / MARKER).read_text())["species_without_field_training_photos"]
    assert report["classes_without_field_training_images"] == sorted(missing)
    assert report["findings"] == [] and len(dsd["validation"]) == 6 and len(dsd["test"]) == 32


def test_cli_sample_refuses_foreign_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    args = ["sample", "--n-species", "1", "--n-herbarium", "1", "--n-field", "1", "--n-test", "1", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "mine")]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "s")]) == 0
    (tmp_path / "s" / "herbarium" / "stale.jpg").write_bytes(b"old")
    assert main([*args, "--out", str(tmp_path / "s")]) == 0  # an earlier sample is replaced
    assert not (tmp_path / "s" / "herbarium" / "stale.jpg").exists()
