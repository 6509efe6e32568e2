"""Hyperparameter search (``hp_search``): Optuna trials through ``Trainer.hyperparameter_search``.

A 2-trial search on the tiny dataset and backbone writes its table, and the normal run that follows uses
the best trial's values (model config, WiSE-FT alpha, metrics.json, card); without field validation
photos the run is refused with one line and exit status 2; bad ranges fail when the config is loaded.
"""

import csv
import json
from pathlib import Path

import optuna
import pytest

from autotrain.trainers.image_classification_custom.params import load_params


def _search_config(tmp_path: Path, make_tiny_dataset, make_tiny_timm, tiny_config, **search) -> dict:
    data = make_tiny_dataset(tmp_path / "data")
    model = make_tiny_timm(tmp_path / "tiny-timm")
    block = {"n_trials": 2, "trial_epochs": 1, **search}
    return tiny_config("proj", str(data), str(model), tsne=False, hp_search=block)


@pytest.mark.slow
def test_two_trials_write_the_table_and_the_best_values_train_the_final_model(
    tmp_path, monkeypatch, make_tiny_dataset, make_tiny_timm, tiny_config
):
    from autotrain.trainers.image_classification_custom.__main__ import train

    config = _search_config(tmp_path, make_tiny_dataset, make_tiny_timm, tiny_config)
    monkeypatch.chdir(tmp_path)
    returned = train(config)
    project = tmp_path / "proj"
    with open(project / "hp_search.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["trial"] for r in rows] == ["0", "1"] and {r["state"] for r in rows} == {"complete"}
    searched = ["backbone_lr", "head_lr", "arcface_margin", "arcface_scale", "wise_ft_alpha"]
    assert list(rows[0]) == ["trial", "state", "field_val_mrr", *searched, "seconds"]
    assert rows[0]["backbone_lr"] != rows[1]["backbone_lr"]  # two different trials
    markdown = (project / "hp_search.md").read_text(encoding="utf-8")
    trial_lines = [line for line in markdown.splitlines() if line[:3] in ("| 0", "| 1")]
    assert len(trial_lines) == 2 and sum("(best)" in line for line in trial_lines) == 1
    assert not (project / "hp_search").exists()  # the trials' checkpoints are deleted

    metrics = json.loads((project / "metrics.json").read_text())
    assert returned["hp_search"] == metrics["hp_search"]
    search = metrics["hp_search"]
    best = max(rows, key=lambda r: float(r["field_val_mrr"]))
    assert search["n_trials"] == 2 and search["best_trial"] == int(best["trial"])
    assert search["best_score"] == pytest.approx(float(best["field_val_mrr"]), abs=1e-6)
    assert search["params"] == pytest.approx({k: float(best[k]) for k in searched})
    saved = json.loads((project / "config.json").read_text())
    assert saved["arcface_margin"] == pytest.approx(search["params"]["arcface_margin"])
    assert saved["arcface_scale"] == pytest.approx(search["params"]["arcface_scale"])
    assert metrics["wise_ft"]["alpha"] == pytest.approx(search["params"]["wise_ft_alpha"])
    assert metrics["wise_ft"]["selection"] is None  # the searched alpha, not the grid
    card = (project / "README.md").read_text(encoding="utf-8")
    assert "hyperparameter search of 2 trials" in card and "hp_search.md" in card


def test_the_trials_learning_rates_reach_the_optimizer_groups(tmp_path, tiny_model, make_trainer):
    trainer = make_trainer(tmp_path, tiny_model())
    trial = optuna.trial.FixedTrial({"backbone_lr": 2e-5, "head_lr": 3e-3})
    for name in ("backbone_lr", "head_lr"):  # what the search's hp_space does before
        trial.suggest_float(name, 1e-6, 1e-2, log=True)
    trainer._hp_search_setup(trial)
    groups = {g["group"]: g["lr"] for g in trainer.create_optimizer().param_groups}
    assert groups == {"backbone": 2e-5, "head": 3e-3}


def test_search_without_field_validation_is_refused_with_one_line_and_exit_2(
    tmp_path, run_trainer_cli, make_tiny_dataset, make_tiny_timm, tiny_config
):
    config = _search_config(tmp_path, make_tiny_dataset, make_tiny_timm, tiny_config)
    config["valid_split"] = None
    code, messages = run_trainer_cli(config)
    assert code == 2
    level, last = messages[-1]
    assert level == "ERROR" and "\n" not in last, last
    assert "hp_search" in last and "no validation split" in last and "field photos" in last
    assert not (tmp_path / "proj" / "hp_search.csv").exists()


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        ({"n_trials": 0}, "hp_search.n_trials"),
        ({"backbone_lr": [1e-3, 1e-5]}, "hp_search.backbone_lr: Value error, low must be below high"),
        ({"head_lr": [0, 1e-3]}, "hp_search.head_lr: Value error, the range must be positive"),
        ({"arcface_margin": [0.1, 2.0]}, "hp_search.arcface_margin: Value error, the range must be within"),
        ({"wise_ft_alpha": [0.5, 1.5]}, "hp_search.wise_ft_alpha: Value error, the range must be within"),
        ({"trials": 3}, "hp_search.trials: unknown parameter"),
    ],
)
def test_bad_search_blocks_fail_at_load_naming_the_key(block, expected):
    with pytest.raises(ValueError) as err:
        load_params({"hp_search": block})
    assert expected in str(err.value)


def test_a_search_cannot_resume_from_a_checkpoint():
    with pytest.raises(ValueError, match="hp_search: a search cannot resume from a checkpoint"):
        load_params({"hp_search": {}, "resume_from_checkpoint": True})


def test_default_block_searches_all_five_values_and_null_ranges_are_left_out():
    search = load_params({"hp_search": {}}).hp_search
    assert search.n_trials == 8 and search.sampler == "tpe"
    assert list(search.searched) == [
        "backbone_lr",
        "head_lr",
        "arcface_margin",
        "arcface_scale",
        "wise_ft_alpha",
    ]
    search = load_params({"hp_search": {"wise_ft_alpha": None, "arcface_scale": None}}).hp_search
    assert list(search.searched) == ["backbone_lr", "head_lr", "arcface_margin"]
    assert load_params({}).hp_search is None
