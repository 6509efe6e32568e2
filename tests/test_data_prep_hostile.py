"""Hostile input folders (issue 10, kinds 2 and 3): nothing outside the input root is read, no file
contents reach a report, and every input file ends up in the dataset or in the report with a reason."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import data_prep.build as build_module
import data_prep.filetype as filetype
from data_prep import DataPrepError, build_dataset
from data_prep.cli import main
from data_prep.filetype import describe_content, scrub_detail
from data_prep.findings import REASONS
from data_prep.images import ImageError, open_header
from data_prep.layouts import discover
from data_prep.report import format_summary
from data_prep.testing import make_folder_tree, write_image

SECRET_PASSWD = b"root:*:0:0:System Administrator:/var/root:/bin/sh\n"
SECRET_TOKEN = b"hf_TopSecretTokenValue0123456789\n"


def _outside(tmp_path: Path) -> Path:
    """A folder beside the input root that looks like /etc and a token cache, plus one image."""
    out = tmp_path / "outside"
    (out / "etc").mkdir(parents=True)
    (out / "etc" / "passwd").write_bytes(SECRET_PASSWD)
    (out / "etc" / "master.jpg").write_bytes(SECRET_PASSWD)
    (out / "token").write_bytes(SECRET_TOKEN)
    write_image(out / "photo.jpg", 900)
    return out


def _base_tree(root: Path) -> Path:
    return make_folder_tree(root, {"Abies alba": (3, 3, 1), "Betula pendula": (3, 2, 1)})


def _by_path(report: dict) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for f in report["findings"]:
        assert f["reason"] in REASONS, f
        found.setdefault(f["path"], set()).add(f["reason"])
    return found


def _stored_paths(dsd) -> set[str]:
    return {p for split in dsd.values() for p in split["path"]}


def _assert_no_secrets(*texts: str) -> None:
    for text in texts:
        for secret in ("root:*:0", "System Administrator", "hf_TopSecret", "/bin/sh"):
            assert secret not in text, (secret, text[:2000])


@pytest.fixture()
def opened(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every file the builder reads (the validator and the file-type sniffer, in-process)."""
    seen: list[str] = []
    real_process, real_describe = build_module.process_image, filetype.describe_file

    def process_image(path: str, **kw):
        seen.append(os.path.realpath(path))
        return real_process(path, **kw)

    def describe_file(path):
        seen.append(os.path.realpath(path))
        return real_describe(path)

    monkeypatch.setattr(build_module, "process_image", process_image)
    monkeypatch.setattr(build_module, "describe_file", describe_file)
    return seen


# --------------------------------------------------------------------------- kind 2: outside the root


def test_symlinked_etc_folder_is_not_read_and_no_bytes_are_published(
    tmp_path: Path, opened: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    outside = _outside(tmp_path)
    root = _base_tree(tmp_path / "in")
    (root / "herbarium" / "Etc species").symlink_to(outside / "etc", target_is_directory=True)
    (root / "herbarium" / "Abies alba" / "token.jpg").symlink_to(outside / "token")
    (root / "field" / "Abies alba" / "outside.jpg").symlink_to(outside / "photo.jpg")

    out = tmp_path / "out"
    assert main(["build", str(root), "--out", str(out), "--quiet", "--num-proc", "1"]) == 0
    console = capsys.readouterr()
    saved = (out / "prep_report.json").read_text()
    report = json.loads(saved)
    found = _by_path(report)

    assert found["herbarium/Etc species"] == {"outside_root"}
    assert found["herbarium/Abies alba/token.jpg"] == {"outside_root"}
    assert found["field/Abies alba/outside.jpg"] == {"outside_root"}
    assert "Etc species" not in report["classes"]
    dsd = build_module.load_from_disk(str(out))
    assert "field/Abies alba/outside.jpg" not in _stored_paths(dsd)
    real_root = os.path.realpath(root)
    assert opened and all(p.startswith(real_root + os.sep) for p in opened), opened
    _assert_no_secrets(saved, console.out, console.err)


def test_not_an_image_is_named_by_type_never_by_its_bytes(tmp_path: Path) -> None:
    root = _base_tree(tmp_path / "in")
    (root / "herbarium" / "Abies alba" / "token").write_bytes(SECRET_TOKEN)
    (root / "herbarium" / "Abies alba" / "passwd").write_bytes(SECRET_PASSWD)
    (root / "herbarium" / "Betula pendula" / "scan.pdf").write_bytes(b"%PDF-1.7\n" + SECRET_TOKEN)
    (root / "herbarium" / "Betula pendula" / "blob.bin").write_bytes(b"\x00\x01\x02\xfe" + SECRET_TOKEN)
    _, report = build_dataset(root, num_proc=1, progress=False)
    details = {f["path"]: f["detail"] for f in report["findings"] if f["reason"] == "not_an_image"}
    assert details == {
        "herbarium/Abies alba/passwd": "detected type: text file",
        "herbarium/Abies alba/token": "detected type: text file",
        "herbarium/Betula pendula/blob.bin": "detected type: unknown binary",
        "herbarium/Betula pendula/scan.pdf": "detected type: PDF document",
    }
    _assert_no_secrets(json.dumps(report), format_summary(report))


def test_text_named_as_an_image_is_not_an_image_with_its_type(tmp_path: Path) -> None:
    """A text file named .jpg or .HEIC is ``not_an_image`` (detected type), not ``corrupt`` from its name;
    real HEIC data (by its magic bytes) is named with the conversion advice (issue 10)."""
    root = _base_tree(tmp_path / "in")
    (root / "herbarium" / "Abies alba" / "notes.jpg").write_bytes(b"collector: J. Smith\n")
    (root / "herbarium" / "Abies alba" / "IMG_0002.HEIC").write_bytes(b"not a photo, just text\n")
    heic = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64)
    (root / "herbarium" / "Betula pendula" / "IMG_0003.HEIC").write_bytes(heic)
    _, report = build_dataset(root, num_proc=1, progress=False)
    found = {f["path"]: (f["reason"], f["detail"]) for f in report["findings"]}
    assert found["herbarium/Abies alba/notes.jpg"] == ("not_an_image", "detected type: text file")
    assert found["herbarium/Abies alba/IMG_0002.HEIC"] == ("not_an_image", "detected type: text file")
    reason, detail = found["herbarium/Betula pendula/IMG_0003.HEIC"]
    assert reason != "not_an_image" and detail.startswith("HEIC file: Pillow cannot read it")
    with pytest.raises(ImageError, match="convert it to JPEG"):
        open_header(str(root / "herbarium" / "Betula pendula" / "IMG_0003.HEIC"))
    with pytest.raises(ImageError, match="detected type: text file") as err:
        open_header(str(root / "herbarium" / "Abies alba" / "notes.jpg"))
    assert err.value.reason == "not_an_image" and "'notes.jpg'" in str(err.value)


def test_describe_content_and_scrub() -> None:
    assert describe_content(b"") == "empty"
    assert describe_content(b"\x00\x00\x00\x18ftypheic\x00\x00") == "HEIC image"
    assert describe_content(b"RIFF\x10\x00\x00\x00WEBPVP8 ") == "WebP image"
    assert describe_content("Gräser und Kräuter\n".encode()) == "text file"
    assert describe_content(b"\x7fELF\x02\x01") == "ELF executable"
    text = scrub_detail("ValueError: b'Token too long found in data: hf_abc'")
    assert "hf_abc" not in text and text.startswith("ValueError:")


def test_list_and_csv_paths_outside_the_root_are_not_read(tmp_path: Path, opened: list[str]) -> None:
    outside = _outside(tmp_path)
    root = tmp_path / "csvroot"
    pairs = [("A", "herbarium"), ("B", "herbarium"), ("A", "field"), ("B", "field")]
    rows = []
    for i, (label, domain) in enumerate(pairs):
        write_image(root / "img" / f"{i}.jpg", 300 + i)
        rows.append(f"img/{i}.jpg,{label},{domain}")
    rows += ["../outside/photo.jpg,A,field", f"{outside / 'token'},B,herbarium"]
    (root / "data.csv").write_text("path,label,domain\n" + "\n".join(rows) + "\n")
    _, report = build_dataset(root / "data.csv", num_proc=1, progress=False)
    found = _by_path(report)
    assert found["../outside/photo.jpg"] == {"outside_root"}
    assert found[str(outside / "token")] == {"outside_root"}
    assert all(p.startswith(os.path.realpath(root) + os.sep) for p in opened), opened


# --------------------------------------------------------------------------- kind 3: nothing dropped silently


def test_folder_symlink_inside_the_root_is_read(tmp_path: Path) -> None:
    root = _base_tree(tmp_path / "in")
    write_image(root / "extra" / "more abies" / "x1.jpg", 700)
    write_image(root / "extra" / "more abies" / "x2.jpg", 701)
    (root / "herbarium" / "Abies alba" / "more").symlink_to(
        Path("../../extra/more abies"), target_is_directory=True
    )
    dsd, report = build_dataset(root, num_proc=1, progress=False)
    stored = _stored_paths(dsd)
    assert {"herbarium/Abies alba/more/x1.jpg", "herbarium/Abies alba/more/x2.jpg"} <= stored
    assert _by_path(report)["extra"] == {"not_in_layout"}  # the real folder is not part of the layout


def test_folder_symlink_to_another_species_is_read_once_under_its_own_path(tmp_path: Path) -> None:
    root = _base_tree(tmp_path / "in")
    (root / "herbarium" / "Abies alba" / "alias").symlink_to(
        Path("../Betula pendula"), target_is_directory=True
    )
    dsd, report = build_dataset(root, num_proc=1, progress=False)
    train = dsd["train"]
    names = train.features["label"].names
    labels = {p: names[i] for p, i in zip(train["path"], train["label"])}
    assert labels["herbarium/Betula pendula/h00.jpg"] == "Betula pendula"
    assert not any(p.startswith("herbarium/Abies alba/alias/") for p in _stored_paths(dsd))
    same = {f["path"]: f["detail"] for f in report["findings"] if f["reason"] == "same_file"}
    assert same["herbarium/Abies alba/alias/h00.jpg"] == "same file as herbarium/Betula pendula/h00.jpg"


def test_odd_class_names_and_files_in_root_are_reported(tmp_path: Path) -> None:
    root = _base_tree(tmp_path / "in")
    write_image(root / "herbarium" / "..." / "a.jpg", 800)
    write_image(root / "herbarium" / "..\\..\\x" / "a.jpg", 801)
    write_image(root / "stray.jpg", 802)
    (root / "notes.txt").write_text("collected 2021\n")
    _, report = build_dataset(root, num_proc=1, progress=False)
    found = _by_path(report)
    assert found["herbarium/..."] == {"bad_class_name"}
    assert found["herbarium/..\\..\\x"] == {"bad_class_name"}
    assert found["stray.jpg"] == {"not_in_layout"} and found["notes.txt"] == {"not_in_layout"}
    assert report["stats"]["ignored_system_files"] == 0
    assert report["classes"] == ["Abies alba", "Betula pendula"]


def test_species_without_usable_images_leave_the_label_set(tmp_path: Path) -> None:
    """9 species folders, 5 of them with no usable image: 4 labels, 5 findings."""
    root = make_folder_tree(tmp_path / "in", {f"Good {i}": (2, 2, 0) for i in range(4)})
    for i in range(5):
        folder = root / "herbarium" / f"Empty {i}"
        folder.mkdir(parents=True)
        (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff" + b"\x00" * 30)
    dsd, report = build_dataset(root, num_proc=1, progress=False)
    names = dsd["train"].features["label"].names
    assert names == [f"Good {i}" for i in range(4)] == report["classes"]
    assert report["num_classes"] == 4
    assert sorted(report["classes_left_out"]) == [f"Empty {i}" for i in range(5)]
    assert sum(f["reason"] == "class_without_images" for f in report["findings"]) == 5
    for split in dsd.values():  # ids index the 4 names
        assert set(split["label"]) <= set(range(4))
    assert {names[i] for i in dsd["train"]["label"]} == set(names)


def test_species_only_in_test_is_a_finding(tmp_path: Path) -> None:
    root = make_folder_tree(tmp_path / "in", {"A": (2, 2, 1), "B": (2, 0, 1), "C": (0, 0, 2)})
    _, report = build_dataset(root, num_proc=1, progress=False)
    found = _by_path(report)
    assert found["C"] == {"class_without_training_images"}
    assert report["classes_without_training_images"] == ["C"]
    assert "the trainer leaves them out" in format_summary(report)


def test_fixed_file_dropped_as_leakage_is_not_listed_as_fixed(tmp_path: Path) -> None:
    root = make_folder_tree(tmp_path / "in", {"A": (2, 2, 1), "B": (2, 2, 1)})
    rgb = np.random.default_rng(5).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).convert("CMYK").save(buf, format="JPEG")
    (root / "test" / "A" / "cmyk.jpg").write_bytes(buf.getvalue())
    (root / "field" / "A" / "cmyk_copy.jpg").write_bytes(buf.getvalue())
    _, report = build_dataset(root, num_proc=1, progress=False)
    assert report["fixed"] == 1
    outcomes = {f["path"]: (f["reason"], f["action"]) for f in report["findings"]}
    assert outcomes == {
        "test/A/cmyk.jpg": ("converted_mode", "fixed"),
        "field/A/cmyk_copy.jpg": ("leakage", "skipped"),
    }


# --------------------------------------------------------------------------- the hostile folder


def _hostile_tree(tmp_path: Path) -> tuple[Path, Path]:
    outside = _outside(tmp_path)
    root = _base_tree(tmp_path / "in")
    herb = root / "herbarium"
    (herb / "Etc species").symlink_to(outside / "etc", target_is_directory=True)  # folder out of the root
    (herb / "Abies alba" / "token.jpg").symlink_to(outside / "token")  # file out of the root
    (herb / "Abies alba" / "escape").symlink_to(Path("../../..") / "outside", target_is_directory=True)
    (herb / "Abies alba" / "loop").symlink_to(Path(".."), target_is_directory=True)  # loop to an ancestor
    (herb / "Abies alba" / "self").symlink_to(Path("."), target_is_directory=True)  # loop to itself
    write_image(root / "pool" / "p1.jpg", 600)
    (herb / "Betula pendula" / "pool").symlink_to(
        Path("../../pool"), target_is_directory=True
    )  # inside: read
    (root / "pool" / "back").symlink_to(Path("../herbarium"), target_is_directory=True)  # loop through a link
    (herb / "Betula pendula" / "again.jpg").symlink_to(Path("h00.jpg"))  # second path to one file
    (herb / "Betula pendula" / "dangling.jpg").symlink_to(Path("nowhere.jpg"))
    os.mkfifo(herb / "Betula pendula" / "pipe.jpg")  # open() would block forever
    write_image(herb / "..." / "a.jpg", 800)
    write_image(herb / "..\\..\\x" / "a.jpg", 801)
    write_image(herb / "Abies alba" / ".thumbs" / "t.jpg", 802)
    write_image(root / "stray.jpg", 803)
    write_image(herb / "loose.jpg", 804)
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "link-to-etc").symlink_to(outside / "etc", target_is_directory=True)
    return root, outside


def _covered(rel: str, stored: set[str], finding_paths: set[str]) -> bool:
    """In the dataset (a file, or a followed folder link with files below it), or reported (itself or a
    folder above it)."""
    parts = rel.split("/")
    prefixes = {"/".join(parts[:i]) for i in range(1, len(parts) + 1)}
    below = any(p.startswith(rel + "/") for p in stored)
    return rel in stored or below or bool(prefixes & finding_paths)


def test_hostile_folder_reads_nothing_outside_and_accounts_for_every_file(
    tmp_path: Path, opened: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    root, outside = _hostile_tree(tmp_path)
    out = tmp_path / "out"
    assert main(["build", str(root), "--out", str(out), "--quiet", "--num-proc", "1"]) == 0
    console = capsys.readouterr()
    saved = (out / "prep_report.json").read_text()
    report = json.loads(saved)
    dsd = build_module.load_from_disk(str(out))
    stored = _stored_paths(dsd)
    found = _by_path(report)

    real_root = os.path.realpath(root)
    assert all(p.startswith(real_root + os.sep) for p in opened), opened
    _assert_no_secrets(saved, console.out, console.err)
    assert found["herbarium/Etc species"] == {"outside_root"}
    assert found["herbarium/Abies alba/token.jpg"] == {"outside_root"}
    assert found["herbarium/Abies alba/escape"] == {"outside_root"}
    assert found["link-to-etc"] == {"outside_root"}
    assert found["herbarium/Abies alba/loop"] == {"symlink_loop"}
    assert found["herbarium/Abies alba/self"] == {"symlink_loop"}
    assert found["herbarium/Betula pendula/pool/back"] == {"symlink_loop"}
    assert found["herbarium/Betula pendula/again.jpg"] == {"same_file"}
    assert found["herbarium/Betula pendula/dangling.jpg"] == {"broken_link"}
    assert found["herbarium/Betula pendula/pipe.jpg"] == {"not_a_regular_file"}
    assert found["herbarium/..."] == {"bad_class_name"}
    assert found["herbarium/..\\..\\x"] == {"bad_class_name"}
    assert found["herbarium/Abies alba/.thumbs"] == {"hidden_folder"}
    assert found["stray.jpg"] == {"not_in_layout"} and found["pool"] == {"not_in_layout"}
    assert found["herbarium/loose.jpg"] == {"outside_class_folder"}
    assert "herbarium/Betula pendula/pool/p1.jpg" in stored  # a folder link inside the root is followed
    assert report["classes"] == ["Abies alba", "Betula pendula"]
    assert report["stats"]["ignored_system_files"] == 1  # .DS_Store

    # every entry under the root (files and links, links not followed) is in the dataset or the report
    finding_paths = set(found)
    unaccounted = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            rel = Path(dirpath, name).relative_to(root).as_posix()
            if name == ".DS_Store":
                continue
            if not _covered(rel, stored, finding_paths):
                unaccounted.append(rel)
    assert unaccounted == []


def test_domain_folder_linked_outside_the_root_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outside = _outside(tmp_path)
    write_image(outside / "herb" / "A" / "1.jpg", 1)
    root = tmp_path / "in"
    root.mkdir()
    (root / "herbarium").symlink_to(outside / "herb", target_is_directory=True)
    with pytest.raises(DataPrepError, match="herbarium: symlink outside the input root"):
        discover(root)
    assert main(["build", str(root), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "Traceback" not in err


def test_plain_tree_has_no_new_findings(tmp_path: Path) -> None:
    root = _base_tree(tmp_path / "in")
    (root / ".data_prep_sample.json").write_text("{}")  # the sample's marker: hidden, counted, not a finding
    _, report = build_dataset(root, num_proc=1, progress=False, strict=True)
    assert report["findings"] == [] and report["stats"]["ignored_system_files"] == 1
