"""A plain image folder with hostile contents (issue 10): symlinks that resolve outside the folder are left
out with one warning naming them; a file that is not an image ends the run with exit status 2 and one line
that names the file and what to do."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from autotrain.trainers.image_classification_custom import splits as S
from data_prep.testing import write_image

SPECIES = ("Annona glabra", "Bursera simaruba")


def _image_folder(root: Path) -> Path:
    seed = 0
    for split, n in (("train", 3), ("validation", 1)):
        for species in SPECIES:
            for i in range(n):
                write_image(root / split / species / f"{i}.jpg", seed)
                seed += 1
    return root


def test_symlinks_leading_outside_the_folder_are_left_out_and_named(tmp_path: Path) -> None:
    root = _image_folder(tmp_path / "DATA")
    elsewhere = tmp_path / "elsewhere"
    write_image(elsewhere / "secret.jpg", 100)
    write_image(elsewhere / "folder" / "other.jpg", 101)
    os.symlink(elsewhere / "secret.jpg", root / "train" / "Annona glabra" / "outside.jpg")
    os.symlink(elsewhere / "folder", root / "train" / "Bursera simaruba" / "linked")
    # a link that stays inside the folder is an ordinary file
    os.symlink(root / "train" / "Annona glabra" / "0.jpg", root / "train" / "Annona glabra" / "inside.jpg")

    with pytest.warns(UserWarning, match="2 symlink\\(s\\) lead outside the data folder") as record:
        data = S.load_splits(str(root))
    message = next(str(w.message) for w in record if "symlink" in str(w.message))
    assert "\n" not in message
    assert "train/Annona glabra/outside.jpg" in message and "train/Bursera simaruba/linked" in message
    assert any("symlink" in n for n in data.notes)
    from datasets import Image

    paths = data.train.dataset.cast_column("image", Image(decode=False))["image"]
    names = sorted(Path(p["path"]).name for p in paths)
    assert "outside.jpg" not in names and "other.jpg" not in names
    assert len(data.train) == 7 and names.count("inside.jpg") == 1


def test_a_text_file_named_jpg_is_one_line_and_exit_2(
    tmp_path: Path, run_trainer_cli, make_tiny_timm
) -> None:
    root = _image_folder(tmp_path / "DATA")
    (root / "train" / "Annona glabra" / "notes.jpg").write_text("collector: J. Smith\n")
    config = {
        "project_name": "proj",
        "data_path": str(root),
        "model": str(make_tiny_timm(tmp_path / "tiny-timm")),
        "image_size": 32,
        "epochs": 1,
        "dataloader_num_workers": 0,
        "tsne": False,
    }
    code, messages = run_trainer_cli(config)
    assert code == 2
    level, last = messages[-1]
    assert level == "ERROR" and "\n" not in last, last
    assert "Annona glabra/notes.jpg" in last
    assert "detected type: text file" in last
    assert "remove it" in last and "python -m data_prep build" in last
    assert not any("Traceback" in text for _, text in messages)


def test_a_missing_data_path_is_one_line_and_exit_2(tmp_path: Path, run_trainer_cli) -> None:
    """Found by a new user: it exited 1 with a 13-line traceback."""
    code, messages = run_trainer_cli({"project_name": "proj", "data_path": "proj/autotrain-data"})
    assert code == 2
    level, last = messages[-1]
    assert level == "ERROR" and "\n" not in last, last
    assert "proj/autotrain-data" in last and "python -m data_prep build" in last
    assert not any("Traceback" in text for _, text in messages)
