"""The params class: validation errors name the field, every shipped config loads, no token on disk."""

import json
from pathlib import Path

import pytest

from autotrain.trainers.image_classification_custom import params as P
from autotrain.trainers.image_classification_custom.params import ImageClassificationCustomParams, load_params

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO_ROOT / "configs").glob("*.json")) + [REPO_ROOT / "config.json"]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    assert path.is_file(), path
    params = load_params(path)
    assert params.project_name


def test_configs_folder_is_not_empty():
    assert len(CONFIGS) >= 6


def test_embedded_default_config():
    params = load_params(REPO_ROOT / "config.json")
    assert params.model == P.EMBEDDED_BACKBONE
    assert params.project_name == "herbarium-arcface"
    assert params.resolved_data_path == "herbarium-arcface/autotrain-data"


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"no_such_key": 1}, "no_such_key"),
        ({"sampling": "uniform"}, "sampling"),
        ({"backbone_source": "keras"}, "backbone_source"),
        ({"head_init": "zeros"}, "head_init"),
        ({"mixed_precision": "fp8"}, "mixed_precision"),
        ({"arcface_margin": 2.0}, "arcface_margin"),
        ({"arcface_subcenters": 0}, "arcface_subcenters"),
        ({"augmentation": 3}, "augmentation"),
        ({"epochs": 0}, "epochs"),
        ({"batch_size": "many"}, "batch_size"),
        ({"epochs": 2, "warmup_epochs": 3}, "warmup_epochs"),
        ({"lr": 1e-3, "backbone_lr": 1e-4, "head_lr": 1e-2}, "lr"),
        ({"push_to_hub": True}, "push_to_hub"),
        ({"eval_strategy": "no", "early_stopping_patience": 3}, "early_stopping_patience"),
        ({"valid_split": None, "early_stopping_threshold": 0.1}, "early_stopping_threshold"),
        ({"hub_private": False}, "hub_private"),
    ],
)
def test_invalid_values_fail_naming_the_field(config, field):
    with pytest.raises(ValueError) as err:
        load_params(config)
    assert field in str(err.value)


def test_project_name_must_be_a_plain_name():
    with pytest.raises(ValueError, match="project_name"):
        load_params({"project_name": "../escape"})


def test_defaults_and_derived_values():
    p = load_params({})
    assert p.model == P.EMBEDDED_BACKBONE
    assert p.resolved_backbone_lr == p.lr
    assert p.resolved_head_lr == pytest.approx(10 * p.lr)
    assert p.resume_from_checkpoint is False
    p = load_params({"backbone_lr": 1e-5, "head_lr": 1e-3, "username": "me", "push_to_hub": True})
    assert (p.resolved_backbone_lr, p.resolved_head_lr) == (1e-5, 1e-3)
    assert p.resolved_repo_id == "me/herbarium-arcface"
    assert load_params({"repo_id": "org/x", "push_to_hub": True}).resolved_repo_id == "org/x"


@pytest.mark.parametrize(
    ("value", "expected"), [("true", True), (True, True), ("false", False), (None, False)]
)
def test_resume_flag(value, expected):
    assert load_params({"resume_from_checkpoint": value}).resume_from_checkpoint is expected


def test_resume_path_kept():
    assert (
        load_params({"resume_from_checkpoint": "p/checkpoint-3"}).resume_from_checkpoint == "p/checkpoint-3"
    )


def test_token_is_never_saved(tmp_path):
    p = load_params({"token": "hf_secret_value", "username": "me"})
    assert "token" not in p.public_dict()
    assert "hf_secret_value" not in str(p)
    path = p.save(str(tmp_path))
    assert "hf_secret_value" not in Path(path).read_text()
    assert json.loads(Path(path).read_text())["username"] == "me"


def test_params_accepts_params_and_dicts():
    p = ImageClassificationCustomParams(epochs=2)
    assert load_params(p) is p
    assert load_params({"epochs": 2}).epochs == 2


def test_config_file_errors_name_the_file(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_params(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        load_params(bad)


def test_every_field_has_a_title_and_appears_in_the_markdown_reference():
    table = P.markdown_reference()
    for name, field in ImageClassificationCustomParams.model_fields.items():
        assert field.title, name
        assert f"| `{name}` |" in table


def test_stock_fields_that_make_sense_are_kept():
    from autotrain.trainers.image_classification.params import ImageClassificationParams

    dropped = {"target_column"}  # kept, with the data_prep default "label" (checked below)
    ours = set(ImageClassificationCustomParams.model_fields)
    assert set(ImageClassificationParams.model_fields) - dropped <= ours
    assert ImageClassificationCustomParams.model_fields["target_column"].default == "label"


def test_params_module_does_not_import_torch():
    import ast

    tree = ast.parse(Path(P.__file__).read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"torch", "torchvision", "timm", "transformers"}, imported


def test_embedded_backbone_name_matches_the_model():
    from autotrain.trainers.image_classification_custom.configuration_arcface import EMBEDDED_BACKBONE

    assert P.EMBEDDED_BACKBONE == EMBEDDED_BACKBONE


def test_cli_markdown_and_check(capsys, tmp_path):
    P.main(["--markdown"])
    assert "| `arcface_margin` |" in capsys.readouterr().out
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"epochs": 1}))
    P.main(["--check", str(cfg)])
    assert "ok" in capsys.readouterr().out
    cfg.write_text(json.dumps({"epoch": 1}))
    with pytest.raises(SystemExit, match="epoch"):
        P.main(["--check", str(cfg)])
