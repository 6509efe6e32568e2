"""A corpus of bad files goes through the builder: no crash, right reasons, every good file kept."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_prep import DataPrepError, StrictModeError, build_dataset
from data_prep.cli import main
from data_prep.findings import REASONS
from data_prep.testing import image_bytes, make_bad_corpus, write_image
from data_prep.validate import process_image


@pytest.fixture()
def locked_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every folder named ``locked`` unlistable (``chmod`` does not stop root, so patch scandir)."""
    real = os.scandir

    def scandir(path: os.PathLike[str] | str | int = ".") -> object:
        if not isinstance(path, int) and os.fspath(path).rstrip("/").endswith("locked"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)


@pytest.fixture()
def corpus(tmp_path: Path, locked_folder: None) -> tuple[Path, dict[str, str]]:
    root = tmp_path / "in"
    return root, make_bad_corpus(root)


def test_bad_corpus_reports_each_kind_and_keeps_every_good_file(
    corpus: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    root, expected = corpus
    dsd, report = build_dataset(root, tmp_path / "out", max_side=256, num_proc=2, progress=False)

    by_path: dict[str, set[str]] = {}
    for f in report["findings"]:
        by_path.setdefault(f["path"], set()).add(f["reason"])
        assert f["reason"] in REASONS
    for rel, reason in expected.items():
        assert reason in by_path.get(rel, set()), (rel, reason, by_path.get(rel))
    assert "unreadable_folder" in by_path["herbarium/Beta/locked"]
    assert "empty_folder" in by_path["field/Delta"]
    kinds = {r for reasons in by_path.values() for r in reasons}
    assert len(kinds) >= 12, kinds

    stored = {p for split in dsd.values() for p in split["path"]}
    good = {p.relative_to(root).as_posix() for p in root.rglob("good*.jpg")}
    fixed = {
        rel
        for rel, reason in expected.items()
        if reason in ("converted_mode", "exif_orientation", "multi_frame")
    }
    assert good | fixed | {"herbarium/Gamma/big_scan.jpg"} == stored
    assert report["stats"]["ignored_system_files"] == 1
    assert report["skipped"] == sum(f["action"] == "skipped" for f in report["findings"])

    rows = {p: i for i, p in enumerate(dsd["train"]["path"])}
    train = dsd["train"]
    big = train[rows["herbarium/Gamma/big_scan.jpg"]]["image"]
    assert max(big.size) == 256 and big.mode == "RGB"
    rotated_split = next(s for s in dsd.values() if "field/Alpha/rotated.jpg" in s["path"])
    rotated = rotated_split[rotated_split["path"].index("field/Alpha/rotated.jpg")]["image"]
    assert rotated.size == (40, 48)  # EXIF orientation 6 applied: width and height swapped
    sixteen = np.asarray(train[rows["herbarium/Gamma/sixteen.png"]]["image"])
    assert 60 < sixteen.mean() < 240, "16-bit image must be scaled, not clipped to white"
    for split in dsd.values():
        for im in split["image"]:
            assert im.mode == "RGB"

    saved = json.loads((tmp_path / "out" / "prep_report.json").read_text())
    assert saved["finding_counts"] == report["finding_counts"]


def test_strict_turns_findings_into_exit_1(
    corpus: tuple[Path, dict[str, str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, _ = corpus
    with pytest.raises(StrictModeError) as err:
        build_dataset(root, tmp_path / "o1", strict=True, num_proc=1, progress=False)
    assert err.value.report["skipped"] > 0
    code = main(["build", str(root), "--out", str(tmp_path / "o2"), "--strict", "--quiet", "--num-proc", "1"])
    assert code == 1
    captured = capsys.readouterr()
    assert "herbarium/Alpha/empty.jpg: zero_byte" in captured.out
    assert (tmp_path / "o2" / "prep_report.json").is_file()


def test_strict_passes_on_clean_input(tmp_path: Path) -> None:
    for i, (sub, sp) in enumerate([("herbarium", "A"), ("herbarium", "B"), ("field", "A"), ("field", "B")]):
        write_image(tmp_path / "in" / sub / sp / f"{i}.jpg", i)
    _, report = build_dataset(tmp_path / "in", strict=True, num_proc=1, progress=False)
    assert report["findings"] == []


def test_process_image_fast_path_keeps_original_bytes(tmp_path: Path) -> None:
    path = write_image(tmp_path / "a.jpg", 1, size=(64, 48))
    res = process_image(str(path), max_side=64)
    assert res.skip is None and not res.reencoded and res.image_bytes == path.read_bytes()
    res = process_image(str(path), max_side=32)
    assert res.reencoded and res.size == (32, 24) and res.resized


def test_large_jpeg_scan_is_downsized_via_draft(tmp_path: Path) -> None:
    path = write_image(tmp_path / "scan.jpg", 2, size=(2400, 1600))
    res = process_image(str(path), max_side=300)
    assert res.size == (300, 200) and res.original_size == (2400, 1600)
    assert Image.open(io.BytesIO(res.image_bytes)).format == "JPEG"


def test_truncated_images_fail_even_if_another_library_allows_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    data = image_bytes(5, size=(200, 160))
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    assert process_image(str(tmp_path / "t.jpg")).skip[0] == "truncated"
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True


def test_unreadable_file_is_reported(tmp_path: Path) -> None:
    res = process_image(str(tmp_path))  # a folder where a file was expected: open() fails
    assert res.skip is not None and res.skip[0] == "unreadable" and res.image_bytes is None


def test_no_images_at_all_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "herbarium" / "A").mkdir(parents=True)
    with pytest.raises(DataPrepError, match="no image files"):
        build_dataset(tmp_path, progress=False)
