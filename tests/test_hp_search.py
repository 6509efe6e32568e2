"""Hyperparameter search (``hp_search``): Optuna trials through ``Trainer.hyperparameter_search``.

A 2-trial search on the tiny dataset and backbone writes its table, and the normal run that follows uses
the best trial's values (model config, WiSE-FT alpha, metrics.json, card); without field validation
photos the run is refused with one line and exit status 2; bad ranges fail when the config is loaded.
"""

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest

from autotrain.trainers.image_classification_custom.params import load_params


def _search_config(tmp_path: Path, make_tiny_dataset, make_tiny_timm, tiny_config, **search) -> dict:
    data = make_tiny_dataset(tmp_path / "data")
    model = make_tiny_timm(tmp_path / "tiny-timm")
    block = {"n_trials": 2, "trial_epochs": 1, **search}
    # no head-only epoch, so that a 1-epoch trial trains the backbone and backbone_lr is searched
    return tiny_config("proj", str(data), str(model), tsne=False, warmup_epochs=0, hp_search=block)


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
    if search["beat_start"]:
        assert metrics["wise_ft"]["alpha"] == pytest.approx(search["params"]["wise_ft_alpha"])
    assert isinstance(search["start_score"], float) and isinstance(search["beat_start"], bool)
    if search["beat_start"]:
        assert metrics["wise_ft"]["selection"] is None  # the searched alpha, not the grid
    else:  # no trial beat the start: the final run chose its alpha on the field validation photos
        assert metrics["wise_ft"]["selection"] is not None
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


def _logged(function, *args) -> tuple[object, list[tuple[str, str]]]:
    """``function(*args)`` and the ``(level, message)`` of every log line it wrote."""
    from autotrain import logger

    messages: list[tuple[str, str]] = []
    sink = logger.add(lambda m: messages.append((m.record["level"].name, str(m).rstrip("\n"))), level="DEBUG")
    try:
        return function(*args), messages
    finally:
        logger.remove(sink)


def _study(values: list[float]) -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    space = {"head_lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)}
    space["wise_ft_alpha"] = optuna.distributions.FloatDistribution(0.0, 1.0)
    for i, value in enumerate(values):
        params = {"head_lr": 1e-3 * (i + 1), "wise_ft_alpha": 0.5}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=space, value=value))
    return study


def test_a_search_that_does_not_beat_the_start_says_so_and_lets_the_final_run_keep_it(tiny_model):
    """Found by a new user: the best trial's MRR equalled the "before training" one, yet the card only said
    "the best of a hyperparameter search" and the searched alpha was imposed on the final run."""
    from autotrain.trainers.image_classification_custom.hp_search import use_best
    from autotrain.trainers.image_classification_custom.model_card import _selection_and_calibration

    ctx = SimpleNamespace(config=load_params({"hp_search": {}}), model=tiny_model())
    summary, messages = _logged(use_best, ctx, _study([0.40, 0.45]), 0.45)
    assert summary["beat_start"] is False and summary["start_score"] == pytest.approx(0.45)
    assert ctx.config.wise_ft_select is True and ctx.config.head_lr == pytest.approx(2e-3)
    assert ctx.config.wise_ft_alpha == load_params({}).wise_ft_alpha  # the searched alpha not imposed
    warnings = [m for level, m in messages if level == "WARNING"]
    assert (
        len(warnings) == 1 and "no trial beat the starting model" in warnings[0] and "\n" not in warnings[0]
    )
    card = "\n".join(_selection_and_calibration({}, {"hp_search": summary}, None))
    assert "**Training did not beat the starting model on the field validation photos** in the hyperp" in card
    assert "best trial 0.450, starting model 0.450" in card

    ctx = SimpleNamespace(config=load_params({"hp_search": {}}), model=tiny_model())
    summary, messages = _logged(use_best, ctx, _study([0.40, 0.50]), 0.45)
    assert summary["beat_start"] is True and not any(level == "WARNING" for level, _ in messages)
    assert ctx.config.wise_ft_select is False and ctx.config.wise_ft_alpha == pytest.approx(0.5)
    assert "did not beat" not in "\n".join(_selection_and_calibration({}, {"hp_search": summary}, None))


def test_backbone_lr_is_not_searched_when_every_trial_epoch_is_head_only():
    """Found by a new user: with trial_epochs <= warmup_epochs the backbone never trains in a trial, yet
    backbone_lr was searched and reported as chosen."""
    from autotrain.trainers.image_classification_custom.hp_search import search_space

    config = load_params({"epochs": 4, "warmup_epochs": 2, "hp_search": {"trial_epochs": 2}})
    space, messages = _logged(search_space, config)
    assert "backbone_lr" not in space and list(space) == [
        "head_lr",
        "arcface_margin",
        "arcface_scale",
        "wise_ft_alpha",
    ]
    assert [level for level, _ in messages] == ["WARNING"]
    assert "backbone_lr is not searched" in messages[0][1] and "warmup_epochs 2" in messages[0][1]
    config = load_params({"epochs": 4, "warmup_epochs": 2, "hp_search": {"trial_epochs": 3}})
    space, messages = _logged(search_space, config)
    assert "backbone_lr" in space and not messages
    config = load_params({"epochs": 2, "warmup_epochs": 2, "hp_search": {}})  # trial_epochs: the epochs
    assert "backbone_lr" not in _logged(search_space, config)[0]
