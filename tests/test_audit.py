"""``python -m data_prep audit``: label errors, near-duplicates and outliers of a small injected set, the
exclusion list round-trip through ``build --exclude``, and one-line errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from data_prep.build import REPORT_NAME, build_dataset
from data_prep.cli import main

COLOURS = {"acer": (200, 40, 40), "betula": (40, 170, 40), "carex": (40, 40, 200), "dianthus": (200, 180, 30)}
SWAPPED = {"herbarium/carex/swap_from_acer.png": "acer", "herbarium/acer/swap_from_carex.png": "carex"}
DUPLICATE = ("herbarium/betula/3.png", "test/betula/resized_copy_of_3.png")  # across splits: leakage
OFF_TOPIC = "herbarium/dianthus/checkerboard.png"


def _leaf_image(species: str, rng: np.random.Generator) -> Image.Image:
    """A pale sheet with 3-5 shapes of the species' own kind and colour (each image different)."""
    colour = COLOURS[species]
    image = Image.new("RGB", (128, 128), (245, 245, 240))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(3, 6)):
        x, y = (int(v) for v in rng.integers(5, 80, 2))
        w, h = (int(v) for v in rng.integers(25, 45, 2))
        fill = tuple(int(np.clip(v + rng.normal(0, 15), 0, 255)) for v in colour)
        if species == "acer":
            draw.ellipse((x, y, x + w, y + h), fill=fill)
        elif species == "betula":
            draw.rectangle((x, y, x + w, y + h // 3), fill=fill)
        elif species == "carex":
            draw.line((x, y + h, x + w // 3, y), fill=fill, width=3)
        else:
            draw.polygon([(x, y + h), (x + w // 2, y), (x + w, y + h)], fill=fill)
    return image


def make_injected_collection(root: Path) -> Path:
    """Folders layout, 4 shape- and colour-coded species (10 sheets + 3 test photos each), two swapped labels,
    a resized copy of a training sheet in ``test/`` and a black-and-white checkerboard among the sheets."""
    rng = np.random.default_rng(0)
    for species in COLOURS:
        for part, n in (("herbarium", 10), ("test", 3)):
            (root / part / species).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                _leaf_image(species, rng).save(root / part / species / f"{i}.png")
    for new, species in SWAPPED.items():
        (root / f"herbarium/{species}/0.png").rename(root / new)
    with Image.open(root / DUPLICATE[0]) as image:
        image.resize((112, 112), Image.Resampling.BICUBIC).save(root / DUPLICATE[1])
    board = np.random.default_rng(5).integers(0, 2, (16, 16)).repeat(8, 0).repeat(8, 1) * 255
    Image.fromarray(board.astype(np.uint8)).convert("RGB").save(root / OFF_TOPIC)
    return root


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """``(input root, audit folder, audit.json)`` of the injected collection, audited by the command line
    with the embedded backbone (no model) at 96 px."""
    tmp = tmp_path_factory.mktemp("audit")
    root = make_injected_collection(tmp / "raw")
    build_dataset(root, tmp / "data", num_proc=1, progress=False)
    out = tmp / "audit"
    assert main(["audit", str(tmp / "data"), "--out", str(out), "--image-size", "96", "--quiet"]) == 0
    return root, out, json.loads((out / "audit.json").read_text())


@pytest.mark.slow
def test_finds_the_swapped_labels(audited):
    _, _, audit = audited
    rows = {r["path"]: r for r in audit["findings"]["label_issues"]}
    assert set(SWAPPED) <= set(rows), rows.keys()
    for path, true_species in SWAPPED.items():
        assert rows[path]["suggested"] == true_species
        assert rows[path]["split"] == "train" and rows[path]["score"] < 0.5
    notes = audit["parameters"]["label_issues"]
    assert notes["domains"]["herbarium"]["folds"] == 5  # 10 sheets per species
    assert notes["domains"]["field"]["folds"] == 3  # 3 test photos per species
    assert notes["classes_not_checked"] == {"herbarium": [], "field": []}
    assert "within each domain" in notes["rule"]


@pytest.mark.slow
def test_finds_the_resized_duplicate_as_leakage(audited):
    _, _, audit = audited
    pairs = audit["findings"]["near_duplicates"]
    top = pairs[0]  # most similar first: the injected pair beats every pair of distinct images
    assert {top["path"], top["other_path"]} == set(DUPLICATE)
    assert (
        top["leakage"] and top["path"] == DUPLICATE[0] and top["other_split"] == "test"
    )  # the training copy goes
    assert top["score"] >= audit["parameters"]["near_duplicates"]["cosine_threshold"]
    assert audit["counts"]["leakage_pairs"] >= 1


@pytest.mark.slow
def test_finds_the_off_topic_image(audited):
    _, _, audit = audited
    outliers = audit["findings"]["outliers"]
    assert outliers and outliers[0]["path"] == OFF_TOPIC
    assert outliers[0]["score"] > audit["parameters"]["outliers"]["cutoff"]


@pytest.mark.slow
def test_report_and_exclusion_list(audited):
    _, out, audit = audited
    page = (out / "audit.html").read_text()
    assert page.count("data:image/jpeg;base64,") >= 4 and OFF_TOPIC in page
    lines = (out / "exclude.txt").read_text().splitlines()
    assert lines[0].startswith("#")
    listed = [line for line in lines if not line.startswith("#")]
    assert len(listed) == len(set(listed))
    assert set(SWAPPED) | {DUPLICATE[0], OFF_TOPIC} <= set(listed)
    assert not any(path.startswith("test/") for path in listed)  # never test-split images
    assert "inflate test scores" in "\n".join(lines[:8])
    assert "<ul class='params'>" in page and "&quot;" not in page.split("<table>")[0]  # readable parameters
    for rows in audit["findings"].values():  # paths and words only, never bytes
        assert all(set(r) >= {"path", "split", "label", "score", "reason"} for r in rows)


@pytest.mark.slow
def test_exclude_round_trips_through_build(audited, tmp_path):
    root, out, _ = audited
    listed = [line for line in (out / "exclude.txt").read_text().splitlines() if not line.startswith("#")]
    exclude = tmp_path / "exclude.txt"
    exclude.write_text((out / "exclude.txt").read_text() + "herbarium/acer/no_such_file.png\n")
    assert (
        main(["build", str(root), "--out", str(tmp_path / "data"), "--exclude", str(exclude), "--quiet"]) == 0
    )
    report = json.loads((tmp_path / "data" / REPORT_NAME).read_text())
    excluded = {f["path"] for f in report["findings"] if f["reason"] == "excluded"}
    assert excluded == set(listed)
    assert all(f["action"] == "skipped" for f in report["findings"] if f["reason"] == "excluded")
    assert [f["path"] for f in report["findings"] if f["reason"] == "exclude_unmatched"] == [
        "herbarium/acer/no_such_file.png"
    ]
    total = sum(split["total"] for split in report["splits"].values())
    assert total == sum(1 for p in root.rglob("*.png")) - len(listed)
    assert report["settings"]["exclude"] == str(exclude.resolve())


@pytest.mark.slow
def test_audit_with_a_saved_model(tmp_path, make_tiny_dataset, tiny_model):
    from autotrain.trainers.image_classification_custom.model_io import save_arcface_model

    save_arcface_model(tiny_model(), tmp_path / "model")
    data = make_tiny_dataset(tmp_path / "data")
    assert main(["audit", str(data), "--model", str(tmp_path / "model"), "--quiet"]) == 0
    audit = json.loads((tmp_path / "data-audit" / "audit.json").read_text())
    assert audit["embeddings"].startswith("model ") and audit["images"] == 47
    assert (tmp_path / "data-audit" / "exclude.txt").is_file()


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda t: [str(t / "missing")], "dataset folder not found"),
        (lambda t: [str(t)], "not a dataset folder"),
        (lambda t: [str(t), "--model", str(t / "no_model")], "model folder not found"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, make_args, message):
    (tmp_path / "some_file.txt").write_text("x")
    assert main(["audit", *make_args(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_not_a_model_folder_is_one_line(tmp_path, capsys, make_tiny_dataset):
    data = make_tiny_dataset(tmp_path / "data")
    (tmp_path / "model").mkdir()
    capsys.readouterr()  # the dataset's own progress bars
    assert main(["audit", str(data), "--model", str(tmp_path / "model")]) == 2
    err = capsys.readouterr().err.strip()
    assert "is not a model folder (no config.json)" in err and "\n" not in err


def test_unreadable_exclude_file_is_one_line(tmp_path, capsys):
    root = make_injected_collection(tmp_path / "raw")
    assert (
        main(["build", str(root), "--out", str(tmp_path / "d"), "--exclude", str(tmp_path / "nope.txt")]) == 2
    )
    err = capsys.readouterr().err.strip()
    assert "nope.txt" in err and "exclusion list cannot be read" in err and "\n" not in err


def _embedded(vectors, labels, splits, domains, classes, signatures=None):
    """A hand-made :class:`Embedded` (paths ``split/class/i.png``) for the audit's rules."""
    from data_prep.audit import Embedded

    paths = [f"{s}/{classes[c]}/{i}.png" for i, (s, c) in enumerate(zip(splits, labels))]
    n = len(labels)
    signatures = np.zeros((n, 256), np.float32) if signatures is None else signatures
    return Embedded(
        np.asarray(vectors, np.float32),
        signatures,
        paths,
        list(splits),
        np.asarray(labels),
        classes,
        "hand-made",
        domains=np.asarray(domains),
    )


def test_a_single_sheet_among_field_photos_is_no_label_error():
    """Four species with one sheet each among 8 field photos, plus a herbarium-only species: sheets look
    alike and unlike photos. Checked within each domain, the single sheets are left out, not flagged."""
    from data_prep.audit import find_label_issues

    rng = np.random.default_rng(0)
    centres = np.eye(16) * 3
    vectors, labels, domains = [], [], []
    for species in range(4):
        vectors += [centres[species] + rng.normal(0, 0.3, 16) for _ in range(8)]
        labels += [species] * 8
        domains += [1] * 8
        vectors.append(centres[8] + rng.normal(0, 0.3, 16))  # its one sheet
        labels.append(species)
        domains.append(0)
    vectors += [centres[8] + rng.normal(0, 0.3, 16) for _ in range(10)]
    labels += [4] * 10
    domains += [0] * 10
    classes = ["a", "b", "c", "d", "herbarium_only"]
    emb = _embedded(vectors, labels, ["train"] * len(labels), domains, classes)
    rows, notes = find_label_issues(emb)
    sheets = {p for p, d in zip(emb.paths, domains) if d == 0 and not p.startswith("train/herbarium_only")}
    assert not sheets & {r["path"] for r in rows}
    assert notes["classes_not_checked"]["herbarium"] == ["a", "b", "c", "d"]
    assert "skipped" in notes["domains"]["herbarium"] and notes["domains"]["field"]["folds"] == 5


def test_weak_model_warning_does_not_advise_a_model():
    from data_prep.audit import find_label_issues

    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(4), 6)
    emb = _embedded(rng.normal(size=(24, 8)), labels, ["train"] * 24, [0] * 24, list("abcd"))
    emb.trained = True
    _, notes = find_label_issues(emb)
    (warning,) = notes["warnings"]
    assert "--model" not in warning and "model's embeddings do not separate the species" in warning
    emb.trained = False
    assert "--model" in find_label_issues(emb)[1]["warnings"][0]


def test_cross_split_pair_with_two_labels_is_a_label_conflict():
    from data_prep.audit import find_near_duplicates
    from data_prep.audit_report import exclusion_plan

    vectors = np.eye(4)[[0, 0, 1, 1, 2, 3]]
    signatures = np.eye(256, dtype=np.float32)[[0, 0, 1, 1, 2, 3]]
    splits = ["train", "test", "train", "test", "train", "train"]
    emb = _embedded(vectors, [0, 1, 1, 1, 0, 1], splits, [0, 1, 0, 1, 0, 0], ["a", "b"], signatures)
    rows = {frozenset((r["path"], r["other_path"])): r for r in find_near_duplicates(emb)}
    conflict = rows[frozenset(emb.paths[:2])]
    assert conflict["label_conflict"] and not conflict["leakage"] and "label conflict" in conflict["reason"]
    leak = rows[frozenset(emb.paths[2:4])]
    assert leak["leakage"] and not leak["label_conflict"] and leak["path"] == emb.paths[2]
    listed, kept = exclusion_plan(emb, {"near_duplicates": list(rows.values())})
    assert listed == [emb.paths[2]]
    assert {r["path"] for r in kept} == set(emb.paths[:2])
    assert all("label conflict" in r["reason"] for r in kept)


def test_exclusion_never_loses_test_images_or_a_species_last_training_image():
    from data_prep.audit_report import exclusion_plan

    splits = ["train", "train", "train", "test", "train", "train"]
    domains = [0, 1, 1, 1, 0, 0]  # a: 1 sheet, 2 field photos, 1 test photo; b: 2 sheets only
    emb = _embedded(np.eye(6), [0, 0, 0, 0, 1, 1], splits, domains, ["a", "b"])
    flagged = [{"path": p} for p in emb.paths]
    listed, kept = exclusion_plan(emb, {"label_issues": flagged})
    assert listed == [emb.paths[1], emb.paths[2], emb.paths[4]]
    reasons = {r["path"]: r["reason"] for r in kept}
    assert reasons == {
        emb.paths[0]: "the last herbarium sheet of a",
        emb.paths[3]: "test split: removing hard test images would inflate test scores",
        emb.paths[5]: "the last training image of b",
    }


def test_exclude_lines_with_dot_or_absolute_paths_match(tmp_path):
    root = make_injected_collection(tmp_path / "raw")
    exclude = tmp_path / "exclude.txt"
    exclude.write_text(f"./herbarium/acer/1.png\n{root / 'herbarium/betula/2.png'}\n")
    _, report = build_dataset(root, None, num_proc=1, progress=False, exclude=exclude)
    excluded = {f["path"] for f in report["findings"] if f["reason"] == "excluded"}
    assert excluded == {"herbarium/acer/1.png", "herbarium/betula/2.png"}
    assert not [f for f in report["findings"] if f["reason"] == "exclude_unmatched"]
    assert report["settings"]["exclude"] == str(exclude.resolve())
