"""Enrolment of new species into a saved model folder, without retraining (issue 12, item 1)."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from autotrain.trainers.image_classification_custom import enroll as E
from autotrain.trainers.image_classification_custom.model_io import save_arcface_model
from autotrain.trainers.image_classification_custom.modeling_arcface import ArcFaceForImageClassification

NEW = {"rosa canina": (230, 60, 160), "urtica dioica": (20, 20, 20)}


def _species_image(path: Path, colour, seed: int, stripes: bool) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = np.empty((48, 64, 3), np.float32)
    pixels[:] = colour
    if stripes:
        pixels[::6] = 255 - np.asarray(colour, np.float32)
    pixels += rng.normal(0, 10, pixels.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)
    return path


def make_species_root(root: Path, per_species: int = 3, species=NEW) -> Path:
    """ROOT/<species>/<n>.png, colour- and pattern-coded per species."""
    for s, (name, colour) in enumerate(species.items()):
        for i in range(per_species):
            _species_image(root / name / f"{i}.png", colour, seed=10 * s + i, stripes=s % 2 == 1)
    return root


@pytest.fixture
def base_dir(tiny_model, tmp_path_factory):
    """A tiny saved model (4 classes, random backbone, 16-d embedding, 32 px)."""
    return save_arcface_model(tiny_model().eval(), tmp_path_factory.mktemp("base") / "model")


@pytest.fixture
def model_dir(base_dir, tmp_path):
    return Path(shutil.copytree(base_dir, tmp_path / "model"))


def _logits(folder: Path, pixels: torch.Tensor) -> torch.Tensor:
    model = ArcFaceForImageClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        return model(pixels).logits


def test_enrol_two_species_in_place(model_dir, tmp_path, capsys, class_names):
    pixels = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    before = _logits(model_dir, pixels)
    root = make_species_root(tmp_path / "new")
    (model_dir / "checkpoint-1").mkdir()
    (model_dir / "checkpoint-1" / "model.safetensors").write_bytes(b"old weights")
    (model_dir / "metrics.json").write_text("{}")
    assert E.main(["--model", str(model_dir), "--images", str(root), "--quiet"]) == 0
    assert "enrolled 2 species (6 images, 0 skipped)" in capsys.readouterr().out
    assert (model_dir / "checkpoint-1" / "model.safetensors").read_bytes() == b"old weights"
    assert (model_dir / "metrics.json").is_file() and (model_dir / "preprocessor_config.json").is_file()
    config = json.loads((model_dir / "config.json").read_text())
    assert config["id2label"] == {
        **{str(i): n for i, n in enumerate(class_names)},
        "4": "rosa canina",
        "5": "urtica dioica",
    }
    assert config["label2id"]["urtica dioica"] == 5
    assert config[E.CONFIG_KEY] == {"rosa canina": 3, "urtica dioica": 3}
    after = _logits(model_dir, pixels)
    assert after.shape == (5, 6)
    torch.testing.assert_close(after[:, :4], before, rtol=0, atol=1e-5)
    card = (model_dir / "README.md").read_text()
    assert "| rosa canina | 3 | 4 |" in card and "| urtica dioica | 3 | 5 |" in card
    assert card.count(E.CARD_START) == 1
    assert not [p for p in model_dir.parent.iterdir() if ".enroll-" in p.name]  # no temporary folders left

    # a second enrolment keeps the first one's entry and replaces the card section
    more = make_species_root(tmp_path / "more", per_species=2, species={"viola odorata": (90, 40, 200)})
    assert E.main(["--model", str(model_dir), "--images", str(more), "--quiet"]) == 0
    config = json.loads((model_dir / "config.json").read_text())
    assert config[E.CONFIG_KEY] == {"rosa canina": 3, "urtica dioica": 3, "viola odorata": 2}
    card = (model_dir / "README.md").read_text()
    assert card.count(E.CARD_START) == 1 and "| viola odorata | 2 | 6 |" in card
    assert "The model now has 7 classes, 3 of them enrolled" in card

    # a new folder (--out) leaves the pre-enrolment training checkpoints behind
    out = tmp_path / "out"
    assert (
        E.main(
            [
                "--model",
                str(model_dir),
                "--images",
                str(make_species_root(tmp_path / "x", 1, {"ulmus": (5, 90, 5)})),
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    assert not (out / "checkpoint-1").exists() and (out / "metrics.json").is_file()


def test_enrolled_centre_is_the_normalised_mean_embedding(model_dir, tmp_path):
    root = make_species_root(tmp_path / "new")
    model, processor = E.load_model_folder(model_dir)
    pixels = processor([_open(p) for p in sorted((root / "rosa canina").iterdir())], return_tensors="pt")
    with torch.no_grad():
        emb = model.embed(pixels["pixel_values"]).double()
    expected = emb.mean(0) / emb.mean(0).norm()
    model, enrolled = E.enroll_in_memory(model, processor, root, progress=False)
    assert enrolled == {"rosa canina": 3, "urtica dioica": 3}
    centre = model.head.weight[4].double()
    torch.testing.assert_close(centre, expected, rtol=0, atol=1e-5)


def _open(path):
    from data_prep.images import open_image

    return open_image(path)


OFFLINE_SCRIPT = textwrap.dedent(
    """
    import sys
    from transformers import pipeline

    folder, pairs = sys.argv[1], sys.argv[2:]
    classify = pipeline("image-classification", model=folder, trust_remote_code=True, top_k=3)
    for image, expected in zip(pairs[::2], pairs[1::2]):
        result = classify(image)
        assert result[0]["label"] == expected, (image, result)
    assert not any(name.startswith("autotrain") for name in sys.modules)
    print("OFFLINE_OK")
    """
)


@pytest.mark.slow
def test_enrolled_folder_loads_with_pipeline_in_a_fresh_process(model_dir, tmp_path):
    root = make_species_root(tmp_path / "new", per_species=4)
    out = tmp_path / "enrolled"
    assert E.main(["--model", str(model_dir), "--images", str(root), "--out", str(out), "--quiet"]) == 0
    assert len(json.loads((model_dir / "config.json").read_text())["id2label"]) == 4  # source untouched
    script = tmp_path / "elsewhere" / "check.py"
    script.parent.mkdir()
    script.write_text(OFFLINE_SCRIPT)
    pairs = [arg for name in NEW for arg in (str(root / name / "0.png"), name)]
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # no project on the path
    offline = dict(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"))
    done = subprocess.run(
        [sys.executable, "-P", str(script), str(out), *pairs],
        env=clean | offline,
        cwd=script.parent,
        text=True,
        capture_output=True,
        timeout=300,
    )
    assert done.returncode == 0 and "OFFLINE_OK" in done.stdout, done.stderr[-3000:]


def test_existing_species_refused_without_replace(model_dir, tmp_path, capsys):
    root = make_species_root(tmp_path / "again", species={"betula": (10, 200, 30)})
    config_before = (model_dir / "config.json").read_text()
    assert E.main(["--model", str(model_dir), "--images", str(root), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "betula" in err and "--replace" in err
    assert (model_dir / "config.json").read_text() == config_before

    old = ArcFaceForImageClassification.from_pretrained(model_dir).head.weight.detach().clone()
    assert E.main(["--model", str(model_dir), "--images", str(root), "--replace", "--quiet"]) == 0
    model = ArcFaceForImageClassification.from_pretrained(model_dir)
    assert model.config.num_labels == 4 and model.config.label2id["betula"] == 1
    new = model.head.weight.detach()
    torch.testing.assert_close(new[[0, 2, 3]], old[[0, 2, 3]], rtol=0, atol=0)
    assert not torch.allclose(new[1], old[1])
    assert model.config.enrolled_species == {"betula": 3}


def test_bad_images_are_reported_and_skipped(model_dir, tmp_path, capsys, caplog):
    root = make_species_root(tmp_path / "new")
    (root / "rosa canina" / "empty.jpg").write_bytes(b"")
    (root / "rosa canina" / "notes.txt").write_text("collected 1998")
    (root / "rosa canina" / ".DS_Store").write_bytes(b"\0\0")
    assert E.main(["--model", str(model_dir), "--images", str(root), "--quiet"]) == 0
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "empty.jpg" in logged and "notes.txt" in logged and ".DS_Store" not in logged
    assert "2 skipped" in out.out
    assert json.loads((model_dir / "config.json").read_text())[E.CONFIG_KEY]["rosa canina"] == 3


def test_species_without_a_usable_image_is_an_error(model_dir, tmp_path, capsys):
    root = make_species_root(tmp_path / "new")
    (root / "empty species").mkdir()
    (root / "empty species" / "broken.png").write_bytes(b"\x89PNG broken")
    assert E.main(["--model", str(model_dir), "--images", str(root), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "empty species" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "case, message",
    [
        ("no_model", "model folder not found"),
        ("no_species", "no species folders"),
        ("out_taken", "not empty"),
    ],
)
def test_bad_input_is_one_line_exit_2(model_dir, tmp_path, capsys, case, message):
    root = make_species_root(tmp_path / "new", per_species=1)
    args = ["--model", str(model_dir), "--images", str(root), "--quiet"]
    if case == "no_model":
        args[1] = str(tmp_path / "missing")
    elif case == "no_species":
        (tmp_path / "flat").mkdir()
        args[3] = str(tmp_path / "flat")
    else:
        (tmp_path / "taken").mkdir()
        (tmp_path / "taken" / "file").write_text("x")
        args += ["--out", str(tmp_path / "taken")]
    assert E.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_subcenters_get_kmeans_centres_in_class_major_rows(tmp_path, class_names):
    from autotrain.trainers.image_classification_custom.model_io import create_arcface_model

    torch.manual_seed(0)
    k = 3
    model = create_arcface_model(
        "test_efficientnet",
        class_names,
        pretrained=False,
        embedding_dim=16,
        image_size=32,
        arcface_subcenters=k,
    ).eval()
    folder = save_arcface_model(model, tmp_path / "model")
    pixels = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    before = _logits(folder, pixels)
    old = model.head.weight.detach().clone()
    root = make_species_root(tmp_path / "new", per_species=2)  # rosa canina: 2 images < k
    for i in range(2, 6):
        _species_image(
            root / "urtica dioica" / f"{i}.png", NEW["urtica dioica"], seed=100 + i, stripes=i % 2 == 0
        )
    assert E.main(["--model", str(folder), "--images", str(str(root)), "--quiet"]) == 0
    loaded = ArcFaceForImageClassification.from_pretrained(folder)
    weight = loaded.head.weight.detach()
    assert weight.shape == (6 * k, 16) and loaded.head.num_classes == 6
    torch.testing.assert_close(weight[: 4 * k], old, rtol=0, atol=0)
    torch.testing.assert_close(weight[4 * k :].norm(dim=1), torch.ones(2 * k), rtol=0, atol=1e-5)
    rosa, urtica = weight[4 * k : 5 * k], weight[5 * k :]
    torch.testing.assert_close(rosa[2], rosa[0], rtol=0, atol=0)  # 2 clusters, repeated to fill k
    assert not torch.allclose(rosa[0], rosa[1])
    assert len({tuple(r.round(decimals=4).tolist()) for r in urtica}) == k  # 6 images: k distinct centres
    torch.testing.assert_close(_logits(folder, pixels)[:, :4], before, rtol=0, atol=1e-5)


def test_class_centres_single_and_repeated():
    emb = np.array([[3.0, 0.0], [0.0, 1.0]])
    np.testing.assert_allclose(E.class_centres(emb, 1), [[2**-0.5, 2**-0.5]])
    centres = E.class_centres(emb[:1], 4)
    np.testing.assert_allclose(centres, np.tile([[1.0, 0.0]], (4, 1)))


def test_model_card_section_is_replaced_not_duplicated():
    section = E.enrolled_section({"b": 2, "a|x": 5}, {"a|x": 7, "b": 8})
    assert "| a\\|x | 5 | 7 |" in section
    card = E.update_model_card("# Model\n\ntext\n", section, "m")
    again = E.update_model_card(card + "\n## Later\n", E.enrolled_section({"c": 1}, {"c": 9}), "m")
    assert again.count(E.CARD_START) == 1 and "| c | 1 | 9 |" in again and "## Later" in again
    assert "| b |" not in again
    assert E.update_model_card(None, section, "my-model").startswith("---\nlibrary_name: transformers")


def test_app_enrols_at_start_up_and_marks_enrolled_species(model_dir, tmp_path):
    """``app.py --enroll ROOT``: the new species are ranked (first on one of their own photos) and marked."""
    from inference_app.app import AppSettings, analyse_photos, load_components
    from inference_app.options import parse_args

    root = make_species_root(tmp_path / "new")
    args = parse_args(["--model", str(model_dir), "--enroll", str(root), "--no-reference", "--no-map"])
    predictor, *_ = load_components(args)
    assert predictor.labels[-2:] == list(NEW) and predictor.enrolled == {name: 3 for name in NEW}
    before = json.loads((model_dir / "config.json").read_text())
    assert "enrolled_species" not in before and len(before["id2label"]) == 4  # the folder is not changed

    result, _ = analyse_photos(predictor, [str(root / "urtica dioica" / "0.png")], AppSettings(threshold=0.0))
    assert result.species[0][0] == "urtica dioica"
    assert "**urtica dioica (enrolled)**" in result.summary_markdown()
    assert result.display("urtica dioica") == "urtica dioica (enrolled)" and result.display("acer") == "acer"


def test_app_enrol_error_is_one_line_exit_2(model_dir, tmp_path, capsys, class_names):
    from inference_app.app import main

    root = make_species_root(tmp_path / "new", species={class_names[0]: (10, 200, 10)})
    assert main(["--model", str(model_dir), "--enroll", str(root), "--no-reference"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        err[-1].startswith("error: ")
        and "already in the model" in err[-1]
        and "Traceback" not in "".join(err)
    )


def test_names_differing_only_in_case_spaces_or_underscores_are_the_existing_species(
    model_dir, tmp_path, class_names
):
    """'ACER ' or 'Acer_' is the model's 'acer', not a new species beside it; two such folders are an error."""
    variant = class_names[0].upper() + " "
    root = make_species_root(tmp_path / "new", species={variant: (10, 200, 10)})
    with pytest.raises(E.EnrolError, match=rf"'{variant}' \(= existing '{class_names[0]}'\).*--replace"):
        E.enroll_folder(model_dir, root, progress=False)
    folder, added, _ = E.enroll_folder(model_dir, root, tmp_path / "out", replace=True, progress=False)
    config = json.loads((folder / "config.json").read_text())
    assert added == {class_names[0]: 3} and len(config["id2label"]) == len(class_names)

    twins = make_species_root(
        tmp_path / "twins", species={"rosa canina": (1, 2, 3), "Rosa_canina": (4, 5, 6)}
    )
    with pytest.raises(E.EnrolError, match="two folders name species"):
        E.enroll_folder(model_dir, twins, tmp_path / "out2", progress=False)
