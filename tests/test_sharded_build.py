"""The sharded build (``build --num-shards K --shard-index I`` + ``join``) gives the single build's dataset."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from datasets import DatasetDict, load_from_disk

from data_prep.build import REPORT_NAME, build_dataset
from data_prep.cli import join_hint, main
from data_prep.layouts import discover
from data_prep.shards import build_part, join_parts
from data_prep.testing import image_bytes, make_folder_tree

REPO = Path(__file__).resolve().parents[1]


def _collection(root: Path) -> Path:
    """A folders tree with a duplicate and a leakage pair split across the two shards, a class whose only
    file is bad (it leaves the label set: the labels are renumbered), a fixed file and a non-image."""
    make_folder_tree(root, {"Acer": (3, 5, 2), "Betula": (2, 4, 1), "Carex": (2, 0, 1), "Dryas": (1, 3, 0)})
    shutil.copy(root / "herbarium/Acer/h00.jpg", root / "herbarium/Betula/copy_of_acer.jpg")
    shutil.copy(root / "test/Acer/t00.jpg", root / "field/Betula/leaked.jpg")
    (root / "herbarium/Erica").mkdir()
    (root / "herbarium/Erica/notes.jpg").write_bytes(b"not an image")
    gray = root / "field/Dryas/gray.png"
    from io import BytesIO

    from PIL import Image

    buf = BytesIO()
    Image.open(BytesIO(image_bytes(99))).convert("L").save(buf, format="PNG")
    gray.write_bytes(buf.getvalue())
    position = {e.rel: i for i, e in enumerate(discover(root).entries)}
    for a, b in (
        ("herbarium/Acer/h00.jpg", "herbarium/Betula/copy_of_acer.jpg"),
        ("test/Acer/t00.jpg", "field/Betula/leaked.jpg"),
    ):
        assert position[a] % 2 != position[b] % 2, "the pair must fall into different shards"
    return root


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _collection(tmp_path_factory.mktemp("sharded") / "in")


def _rows(dsd: DatasetDict) -> dict[str, list[tuple]]:
    """``{split: [(path, image bytes, label name, label id, domain id)]}`` sorted by path."""
    out = {}
    for split, ds in dsd.items():
        names = ds.features["label"].names
        table = ds.with_format("arrow")[:]
        rows = zip(
            table["path"].to_pylist(),
            [im["bytes"] for im in table["image"].to_pylist()],
            [names[i] for i in table["label"].to_pylist()],
            table["label"].to_pylist(),
            table["domain"].to_pylist(),
        )
        out[split] = sorted(rows)
    return out


def _same_dataset(single: Path, joined: Path) -> None:
    a, b = load_from_disk(str(single)), load_from_disk(str(joined))
    assert list(a) == list(b)
    for split in a:
        assert a[split].features == b[split].features, split
        assert a[split]["path"] == b[split]["path"], split  # same order, not only the same set
    assert _rows(a) == _rows(b)
    ra, rb = (json.loads((p / REPORT_NAME).read_text()) for p in (single, joined))
    for key in (
        "classes",
        "splits",
        "per_class",
        "findings",
        "finding_counts",
        "settings",
        "validation_split",
    ):
        assert ra[key] == rb[key], key
    assert (joined / "dataset_balance.png").is_file()


def test_two_concurrent_shards_join_to_the_single_build(collection: Path, tmp_path: Path) -> None:
    assert (
        main(["build", str(collection), "--out", str(tmp_path / "single"), "--quiet", "--num-proc", "1"]) == 0
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    shards = [
        subprocess.Popen(
            [sys.executable, "-m", "data_prep", "build", str(collection), "--out", str(tmp_path / f"part{i}")]
            + ["--num-shards", "2", "--shard-index", str(i), "--num-proc", "1", "--quiet"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    for i, proc in enumerate(shards):
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
        assert f"shard {i} of 2" in out
        # the closing hint is a command to paste: this build's part folders, not placeholders
        parts = f"{tmp_path / 'part0'} {tmp_path / 'part1'}"
        assert f"python -m data_prep join {parts} --out herbarium-arcface/autotrain-data" in out, out
    parts = [str(tmp_path / "part1"), str(tmp_path / "part0")]  # any order
    assert main(["join", *parts, "--out", str(tmp_path / "joined"), "--quiet"]) == 0
    _same_dataset(tmp_path / "single", tmp_path / "joined")
    report = json.loads((tmp_path / "joined" / REPORT_NAME).read_text())
    counts = report["finding_counts"]
    assert counts["duplicate"] == 1 and counts["leakage"] == 1 and counts["converted_mode"] == 1
    assert report["classes_left_out"] == ["Erica"] and len(report["stats"]["shard_seconds"]) == 2
    assert load_from_disk(str(tmp_path / "joined"))["validation"].num_rows > 0


def test_more_shards_than_files_leaves_empty_parts(tmp_path: Path) -> None:
    root = make_folder_tree(tmp_path / "in", {"A": (1, 2, 1), "B": (1, 0, 0)})
    build_dataset(root, tmp_path / "single", num_proc=1, progress=False)
    k = len(discover(root).entries) + 2
    parts = [tmp_path / f"p{i}" for i in range(k)]
    for i, part in enumerate(parts):
        build_part(root, part, num_shards=k, shard_index=i, num_proc=1, progress=False)
    join_parts(parts, tmp_path / "joined", progress=False)
    _same_dataset(tmp_path / "single", tmp_path / "joined")
    # a part folder is shared between machines or users: the umask's permissions, like the dataset's
    assert {p.stat().st_mode & 0o777 for p in parts} == {(tmp_path / "joined").stat().st_mode & 0o777}
    assert not list(tmp_path.glob(".data_prep-*"))


def _error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "Traceback" not in err
    return err


def test_bad_shard_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = str(make_folder_tree(tmp_path / "in", {"A": (1, 1, 0)}))
    out = ["--out", str(tmp_path / "part"), "--quiet"]
    assert "out of range for --num-shards 2 (0..1)" in _error(
        ["build", root, *out, "--num-shards", "2", "--shard-index", "2"], capsys
    )
    assert "at least 1" in _error(["build", root, *out, "--num-shards", "0", "--shard-index", "0"], capsys)
    assert "both --num-shards" in _error(["build", root, *out, "--shard-index", "0"], capsys)
    assert "give them to `data_prep join`" in _error(
        ["build", root, *out, "--num-shards", "2", "--shard-index", "0", "--strict"], capsys
    )
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("mine")
    argv = ["build", root, "--out", str(tmp_path / "mine"), "--num-shards", "2", "--shard-index", "0"]
    assert "does not hold an earlier part" in _error(argv, capsys)
    assert (tmp_path / "mine" / "keep.txt").is_file()
    assert not list(tmp_path.glob(".data_prep-*"))


def test_join_refuses_parts_that_do_not_make_one_build(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_folder_tree(tmp_path / "in", {"A": (2, 2, 1), "B": (2, 0, 0)})
    other = make_folder_tree(tmp_path / "other", {"A": (2, 2, 1), "C": (1, 0, 0)})

    def part(name: str, source: Path = root, index: int = 0, num_shards: int = 2, **kw) -> str:
        build_part(
            source,
            tmp_path / name,
            num_shards=num_shards,
            shard_index=index,
            num_proc=1,
            progress=False,
            **kw,
        )
        return str(tmp_path / name)

    p0, p1 = part("p0"), part("p1", index=1)
    out = ["--out", str(tmp_path / "joined"), "--quiet"]
    assert "missing shard(s) 1 of 2" in _error(["join", p0, *out], capsys)
    assert "both shard 0" in _error(["join", p0, p0, p1, *out], capsys)
    # each differing option is named with both values, never a cut JSON dump
    seed7 = part("seed7", index=1, seed=7)
    assert (
        f"{seed7}: built with --seed 7, {p0} with --seed 0; build every shard with the same options"
        in _error(["join", p0, seed7, *out], capsys)
    )
    small = part("small", index=1, max_side=512, seed=7)
    assert f"built with --max-side 512 and --seed 7, {p0} with --max-side 1024 and --seed 0" in _error(
        ["join", p0, small, *out], capsys
    )
    three = part("three", index=1, num_shards=3)
    assert f"{three}: built with --num-shards 3, {p0} with --num-shards 2" in _error(
        ["join", p0, three, *out], capsys
    )
    o1 = part("o1", other, 1)
    assert f"{o1}: built from {other.resolve()}, {p0} from {root.resolve()}" in _error(
        ["join", p0, o1, *out], capsys
    )
    monkeypatch.setenv("IMAGE_MAX_PIXELS", "1000000")
    limited = part("limited", index=1)
    monkeypatch.delenv("IMAGE_MAX_PIXELS")
    assert f"{limited}: built with a pixel limit of 1_000_000 (--max-pixels" in _error(
        ["join", p0, limited, *out], capsys
    )
    assert "is not a part" in _error(["join", p0, str(tmp_path / "in"), *out], capsys)
    assert f"{tmp_path / 'nowhere'} does not exist" in _error(
        ["join", p0, str(tmp_path / "nowhere"), *out], capsys
    )
    n = len(discover(root).entries)
    (tmp_path / "in" / "herbarium" / "B" / "new.jpg").write_bytes(image_bytes(500))  # the input changed
    changed = part("changed", index=1)
    assert (
        f"the source's files changed between the shard builds ({p0} saw {n} files, {changed} saw {n + 1}); "
        "rebuild every shard"
    ) in _error(["join", p0, changed, *out], capsys)
    for name in ("Dryas", "Erica", "Fagus", "Galium"):  # new species: how many, and the first few named
        (tmp_path / "in" / "herbarium" / name).mkdir()
        (tmp_path / "in" / "herbarium" / name / "h.jpg").write_bytes(image_bytes(600))
    species = part("species", index=1)
    assert f"{species} has 4 species {p0} lacks (Dryas, Erica, Fagus, ...)); rebuild every shard" in _error(
        ["join", p0, species, *out], capsys
    )
    assert not (tmp_path / "joined").exists()
    assert main(["join", p0, p1, *out]) == 0
    assert "replaced the earlier" not in capsys.readouterr().out
    assert main(["join", p0, p1, *out]) == 0  # an earlier build is replaced, and the join says so
    assert f"replaced the earlier build in {tmp_path / 'joined'}" in capsys.readouterr().out
    shard = ["--num-shards", "2", "--shard-index", "1", "--num-proc", "1", "--quiet"]
    assert main(["build", str(root), "--out", p1, *shard]) == 0
    assert f"replaced the earlier part in {p1}" in capsys.readouterr().out


def test_join_error_is_the_last_line_printed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_folder_tree(tmp_path / "in", {"A": (1, 1, 0)})
    p0 = tmp_path / "p0"
    build_part(root, p0, num_shards=2, shard_index=0, num_proc=1, progress=False)
    for missing in (tmp_path / "nowhere", tmp_path / "in"):  # the progress bar is shown (no --quiet)
        assert main(["join", str(p0), str(missing), "--out", str(tmp_path / "joined")]) == 2
        err = capsys.readouterr().err
        assert "reading parts" in err
        assert err.strip().splitlines()[-1].startswith(f"error: {missing}"), err


@pytest.mark.parametrize(
    ("out", "k", "i", "parts"),
    [
        ("parts/part-3", 4, 3, "parts/part-0 parts/part-1 parts/part-2 parts/part-3"),
        ("part1.d", 2, 1, "part0.d part1.d"),
        ("0-part", 2, 0, "0-part 1-part"),
        ("parts/3", 4, 3, "parts/0 parts/1 parts/2 parts/3"),
        ("my parts/p-0", 2, 0, "'my parts/p-0' 'my parts/p-1'"),
        ("parts/p-5.d", 16, 5, "parts/p-{0..15}.d"),
        ("runs/shard3/part", 4, 3, "runs/shard3/part <the other 3 part folders>"),  # index not in the name
        ("parts/part-13", 20, 3, "parts/part-13 <the other 19 part folders>"),  # 13 is not shard 3
        ("out", 1, 0, "out"),
    ],
)
def test_join_hint_is_a_command_to_paste(out: str, k: int, i: int, parts: str) -> None:
    hint = join_hint(Path(out), k, i, Path("herbarium-arcface/autotrain-data"))
    assert hint == f"python -m data_prep join {parts} --out herbarium-arcface/autotrain-data"


def test_join_strict_exits_1_after_writing(collection: Path, tmp_path: Path) -> None:
    parts = [tmp_path / f"p{i}" for i in range(2)]
    for i, part in enumerate(parts):
        build_part(collection, part, num_shards=2, shard_index=i, num_proc=1, progress=False)
    assert main(["join", *map(str, parts), "--out", str(tmp_path / "joined"), "--quiet", "--strict"]) == 1
    assert (tmp_path / "joined" / REPORT_NAME).is_file()


def test_build_says_it_replaced_an_earlier_build(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = str(make_folder_tree(tmp_path / "in", {"A": (1, 1, 0)}))
    argv = ["build", root, "--out", str(tmp_path / "ds"), "--quiet", "--num-proc", "1"]
    assert main(argv) == 0
    assert "replaced the earlier" not in capsys.readouterr().out
    assert main(argv) == 0
    assert capsys.readouterr().out.rstrip().endswith(f"replaced the earlier build in {tmp_path / 'ds'}")
