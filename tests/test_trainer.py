"""Trainer pieces (fast): optimizer groups, the two stages, frozen BatchNorm, resume, Hub upload, card.

The tiny model and trainer come from conftest.py's fixtures.
"""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

# species names for the model-card and t-SNE tests below (any four names; the tiny dataset's are the
# `class_names` fixture in conftest.py)
CLASS_NAMES = ["acer", "betula", "carex", "dianthus"]


# --- optimizer, stages, frozen BatchNorm ---------------------------------------------------------------


def test_optimizer_has_backbone_and_head_groups(tmp_path, tiny_model, make_trainer):
    model = tiny_model()
    trainer = make_trainer(tmp_path, model)
    model.freeze_backbone(True)  # frozen parameters still belong to the optimizer (stage 2 needs them)
    optimizer = trainer.create_optimizer()
    groups = {(g["group"], g["weight_decay"]): g for g in optimizer.param_groups}
    assert {g["lr"] for g in optimizer.param_groups if g["group"] == "backbone"} == {1e-5}
    assert {g["lr"] for g in optimizer.param_groups if g["group"] == "head"} == {1e-3}
    in_groups = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert in_groups == {id(p) for p in model.parameters()}
    head_decay = {id(p) for p in groups[("head", 0.1)]["params"]}
    assert id(model.head.weight) in head_decay and id(model.projection.weight) in head_decay
    assert id(model.projection.bias) not in head_decay


def _batch(model, n=8):
    torch.manual_seed(1)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8)
    from autotrain.trainers.image_classification_custom.dataset import NormalizeCollator

    collator = NormalizeCollator(model.config.image_mean, model.config.image_std)
    return collator([{"pixel_values": images[i], "labels": i % 4} for i in range(n)])


@pytest.mark.parametrize("stage2_batchnorm", ["train", "frozen"])
def test_stage_one_freezes_backbone_and_its_batchnorm(tmp_path, stage2_batchnorm, tiny_model, make_trainer):
    from autotrain.trainers.image_classification_custom.callbacks import BackboneWarmupCallback

    model = tiny_model()
    trainer = make_trainer(tmp_path, model, freeze_batchnorm=stage2_batchnorm == "frozen")
    trainer.create_optimizer()
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train() in a real run
    bn = next(m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    backbone_weight = next(model.backbone.parameters())
    weight_before = backbone_weight.detach().clone()
    callback = BackboneWarmupCallback(warmup_epochs=1)
    state = SimpleNamespace(epoch=0.0, global_step=0, is_local_process_zero=True)
    callback.on_train_begin(None, state, None, model=model)
    assert not backbone_weight.requires_grad and model.head.weight.requires_grad

    trainer.training_step(model, _batch(model))  # calls model.train() then our compute_loss
    assert not bn.training  # frozen backbone stays in eval mode
    torch.testing.assert_close(bn.running_mean, before)  # statistics untouched
    assert backbone_weight.grad is None and model.head.weight.grad is not None
    trainer.optimizer.step()
    torch.testing.assert_close(backbone_weight.detach(), weight_before)

    state.epoch = 1.0  # stage 2, e.g. after resuming from an epoch-1 checkpoint
    callback.on_step_begin(None, state, None, model=model)
    assert backbone_weight.requires_grad
    trainer.training_step(model, _batch(model))
    assert backbone_weight.grad is not None
    assert bn.weight.grad is not None  # BatchNorm affine weights train in both modes
    if stage2_batchnorm == "train":
        assert bn.training
        assert not torch.allclose(bn.running_mean, before)
    else:  # running statistics stay as pretrained
        assert not bn.training
        torch.testing.assert_close(bn.running_mean, before)


def test_resolve_resume(tmp_path, monkeypatch):
    from autotrain.trainers.image_classification_custom.params import load_params
    from autotrain.trainers.image_classification_custom.stages import resolve_resume

    monkeypatch.chdir(tmp_path)
    assert resolve_resume(load_params({"project_name": "p"})) is None
    assert resolve_resume(load_params({"project_name": "p", "resume_from_checkpoint": True})) is None
    for step in (3, 12, 20):
        (tmp_path / "p" / f"checkpoint-{step}").mkdir(parents=True)
    for step in (3, 12):  # checkpoint-20 is incomplete: killed while saving
        (tmp_path / "p" / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    assert (
        resolve_resume(load_params({"project_name": "p", "resume_from_checkpoint": "true"}))
        == "p/checkpoint-12"
    )
    assert resolve_resume(load_params({"project_name": "p", "resume_from_checkpoint": "p/checkpoint-3"})) == (
        "p/checkpoint-3"
    )
    with pytest.raises(FileNotFoundError, match="p/checkpoint-99"):
        resolve_resume(load_params({"project_name": "p", "resume_from_checkpoint": "p/checkpoint-99"}))


def test_auto_logging_steps():
    from autotrain.trainers.image_classification_custom.arcface_trainer import auto_logging_steps
    from autotrain.trainers.image_classification_custom.params import load_params

    p = load_params({"batch_size": 8})
    assert auto_logging_steps(40, p, 1) == 1
    assert auto_logging_steps(800, p, 1) == 20
    assert auto_logging_steps(80000, p, 1) == 25


def test_throughput_summary():
    from autotrain.trainers.image_classification_custom.callbacks import ThroughputCallback

    cb = ThroughputCallback(dataset_len=100, warmup_epochs=1)
    cb.epochs = [
        {"stage": "head", "images": 100, "seconds": 2.0},
        {"stage": "full", "images": 100, "seconds": 5.0},
        {"stage": "full", "images": 100, "seconds": 5.0},
    ]
    summary = cb.summary()
    assert summary["head_images_per_second"] == 50.0
    assert summary["full_images_per_second"] == 20.0
    assert summary["images_per_second"] == pytest.approx(300 / 12, abs=0.01)


# --- Hub upload and model card -------------------------------------------------------------------------


class FakeHfApi:
    calls: list = []

    def __init__(self, token=None, **kwargs):
        FakeHfApi.calls.append(("init", {"token": token}))

    def create_repo(self, **kwargs):
        FakeHfApi.calls.append(("create_repo", kwargs))

    def upload_folder(self, **kwargs):
        FakeHfApi.calls.append(("upload_folder", kwargs))


def test_push_uses_repo_id_private_and_skips_checkpoints(monkeypatch, tmp_path):
    from autotrain.trainers.image_classification_custom import outputs
    from autotrain.trainers.image_classification_custom.params import load_params

    FakeHfApi.calls = []
    monkeypatch.setattr(outputs, "HfApi", FakeHfApi)
    config = load_params({"push_to_hub": True, "username": "me", "token": "hf_x", "project_name": "p"})
    assert outputs.push_folder_to_hub(config, str(tmp_path)) == "me/p"
    kinds = [c[0] for c in FakeHfApi.calls]
    assert kinds == ["init", "create_repo", "upload_folder"]
    create = FakeHfApi.calls[1][1]
    assert create["repo_id"] == "me/p" and create["private"] is True and create["exist_ok"] is True
    upload = FakeHfApi.calls[2][1]
    assert upload["folder_path"] == str(tmp_path) and upload["repo_id"] == "me/p"
    assert "checkpoint-*" in upload["ignore_patterns"]


def _metrics():
    report = {
        "all": {"top1": 0.5, "top5": 0.75, "mrr": 0.6, "macro_f1": 0.4, "n": 8},
        "field": {"top1": 0.5, "top5": 0.75, "mrr": 0.6, "macro_f1": 0.4, "n": 8},
        "herbarium_only": {"top1": 0.25, "top5": 0.5, "mrr": 0.4, "macro_f1": 0.2, "n": 2},
    }
    return {"validation": report, "test": report, "classes": {"with_field": 3, "herbarium_only": 1}}


def test_model_card_metadata_and_tables(tmp_path):
    import yaml

    from autotrain.trainers.image_classification_custom.model_card import format_metric, render_model_card
    from autotrain.trainers.image_classification_custom.params import load_params

    params = load_params(
        {"model": "timm/vit_base_patch16_224.augreg2_in21k_ft_in1k", "data_path": "me/plants"}
    )
    card = render_model_card(params.public_dict(), _metrics(), CLASS_NAMES, tsne_file="tsne.png")
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "image-classification"
    assert meta["base_model"] == "timm/vit_base_patch16_224.augreg2_in21k_ft_in1k"
    assert meta["datasets"] == ["me/plants"]
    assert {"arcface", "plant", "herbarium", "autotrain"} <= set(meta["tags"])
    results = meta["model-index"][0]["results"]
    values = {m["name"]: m["value"] for r in results for m in r["metrics"]}
    assert values["Field Top-1 (test)"] == 0.5 and values["Field MRR (validation)"] == 0.6
    assert "trust_remote_code=True" in card and "![t-SNE" in card
    assert f"| {format_metric(0.25)} |" in card  # the herbarium-only row

    local = load_params({"model": str(tmp_path), "data_path": str(tmp_path)})
    meta = yaml.safe_load(render_model_card(local.public_dict(), _metrics(), CLASS_NAMES).split("---")[1])
    assert "base_model" not in meta and "datasets" not in meta
    embedded = load_params({})
    meta = yaml.safe_load(render_model_card(embedded.public_dict(), _metrics(), CLASS_NAMES).split("---")[1])
    assert "base_model" not in meta


def test_tsne_plot_draws_each_embedding_in_its_species_colour_and_keeps_clusters_apart(tmp_path):
    """The figure's points are the embeddings' points: each drawn point sits at the t-SNE coordinates of
    one embedding, in its species' colour and its domain's marker, and four well-separated species in the
    input stay four separate clusters in the map."""
    from sklearn.metrics import silhouette_score

    from autotrain.trainers.image_classification_custom.model_card import plot_tsne, species_colour

    rng = np.random.default_rng(0)
    labels = rng.permutation(np.arange(40) % 4)
    domains = rng.integers(0, 2, 40)
    embeddings = 10 * np.eye(16)[labels] + rng.normal(0, 0.5, (40, 16))  # one direction per species
    plot = plot_tsne(embeddings, labels, domains, CLASS_NAMES, str(tmp_path / "t.png"))
    assert Path(plot.path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot.coordinates.shape == (40, 2) and plot.points.shape == (40, 2)
    gaps = np.linalg.norm(plot.points[:, None] - plot.coordinates[None], axis=2)
    which = gaps.argmin(axis=1)  # the embedding each drawn point belongs to
    np.testing.assert_allclose(gaps.min(axis=1), 0.0, atol=1e-6)
    assert sorted(which.tolist()) == list(range(40))  # every embedding drawn once
    np.testing.assert_allclose(plot.colours[:, :3], [species_colour(c, 4)[:3] for c in labels[which]])
    assert plot.domains.tolist() == domains[which].tolist()
    assert len({species_colour(c, 4) for c in range(4)}) == 4
    assert silhouette_score(plot.coordinates, labels) > 0.5  # the clusters stay apart, by species
    nearest = np.linalg.norm(plot.coordinates[:, None] - plot.coordinates[None], axis=2)
    np.fill_diagonal(nearest, np.inf)
    assert (labels[nearest.argmin(axis=1)] == labels).all()


def test_embedder_gives_the_numbers_of_a_direct_model_pass(tiny_model):
    from autotrain.trainers.image_classification_custom.dataset import NormalizeCollator
    from autotrain.trainers.image_classification_custom.embedder import Embedder

    model = tiny_model()
    model.train()
    images = np.random.default_rng(0).integers(0, 256, (7, 32, 32, 3), dtype=np.uint8)
    collator = NormalizeCollator(model.config.image_mean, model.config.image_std)
    embedder = Embedder(model, collator, 3, 32, "bilinear", torch.device("cpu"))
    features = embedder.features(images)
    embeddings, lazy = embedder.embed(images), embedder.logits(images)
    logits = lazy.rows(0, len(images))  # the HeadLogits of the embeddings, read here in one block
    order = np.array([5, 0, 3])
    some_embeddings, some_logits = embedder.embed(images, order), embedder.logits(images, order).rows(0, 3)
    assert model.training  # the mode is restored
    assert lazy.shape == (7, 4) and np.array_equal(lazy.embeddings, embeddings)
    np.testing.assert_array_equal(np.concatenate([b for _, b in lazy.chunks(2)]), logits)

    mean = torch.tensor(model.config.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(model.config.image_std).view(1, 3, 1, 1)
    x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - mean) / std
    model.eval()
    with torch.no_grad():
        np.testing.assert_allclose(features, model.forward_features(x).numpy(), atol=1e-4)
        np.testing.assert_allclose(embeddings, model.embed(x).numpy(), atol=1e-4)
        np.testing.assert_allclose(logits, model(pixel_values=x).logits.numpy(), atol=1e-3)
    np.testing.assert_allclose(some_embeddings, embeddings[order], atol=1e-5)
    np.testing.assert_allclose(some_logits, logits[order], atol=1e-4)
    assert features.dtype == embeddings.dtype == logits.dtype == np.float32


def test_tsne_points_sample_and_keep_labels_with_their_embeddings(monkeypatch):
    from autotrain.trainers.image_classification_custom import outputs
    from autotrain.trainers.image_classification_custom.splits import SplitData

    def points(labels, domains):  # an embedding that names its own label and domain
        return outputs.LabelledEmbeddings(np.stack([labels, domains], 1).astype(float), labels, domains)

    monkeypatch.setattr(outputs, "TSNE_MAX_EVAL", 5)
    validation = points(np.arange(8) % 3, np.ones(8, int))
    train = SplitData("train", None, np.arange(6) % 4, np.array([0, 1, 0, 0, 1, 0]))
    embedded = []

    def embed_train(indices):
        embedded.append(indices.tolist())
        return np.stack([train.labels[indices], train.domains[indices]], 1).astype(float)

    out = outputs.tsne_points({"validation": validation}, train, embed_train, seed=0)
    assert embedded == [[0, 2, 3, 5]]  # the training herbarium sheets only
    assert len(out) == 5 + 4
    assert out.labels.tolist() == out.embeddings[:, 0].astype(int).tolist()
    assert out.domains.tolist() == out.embeddings[:, 1].astype(int).tolist() == [1] * 5 + [0] * 4


def test_report_files_hold_the_summary(tmp_path):
    """The outputs stage's files from a summary alone: metrics.json, reliability.png and the card agree."""
    from autotrain.trainers.image_classification_custom.model_card import format_metric
    from autotrain.trainers.image_classification_custom.outputs import write_report_files
    from autotrain.trainers.image_classification_custom.params import load_params

    config = load_params({"project_name": "p"})
    row = {"lo": 0.6, "hi": 0.7, "n": 3, "confidence": 0.65, "accuracy": 2 / 3}
    summary = {**_metrics(), "calibration": {"temperature": 1.5, "source": "config", "reliability_field": {}}}
    write_report_files(tmp_path, config, summary, CLASS_NAMES, tsne_file=None)
    assert json.loads((tmp_path / "metrics.json").read_text()) == summary
    card = (tmp_path / "README.md").read_text()
    assert not (tmp_path / "reliability.png").exists() and "![t-SNE" not in card
    assert (
        f"| Classes without field training photos (herbarium only) (`herbarium_only`) | 2 | {format_metric(0.25)}"
        in card
    )
    assert "T = 1.5 (config)" in card

    summary["calibration"]["reliability_field"] = {"validation": [row], "test": []}
    summary["validation"]["all"]["mrr"] = np.float32(0.625)  # numpy scalars are written as numbers
    write_report_files(tmp_path, config, summary, CLASS_NAMES, tsne_file="tsne.png")
    assert json.loads((tmp_path / "metrics.json").read_text())["validation"]["all"]["mrr"] == 0.625
    card = (tmp_path / "README.md").read_text()
    assert (tmp_path / "reliability.png").is_file() and "(reliability.png)" in card and "(tsne.png)" in card


def test_saved_weights_use_wise_ft_alpha_after_a_report(tmp_path, tiny_model):
    """WiSE-FT stage alone: the report evaluates its alphas, and the saved weights still mix with
    ``wise_ft_alpha`` (without field validation photos there is no selection)."""
    from autotrain.trainers.image_classification_custom.dataset import NormalizeCollator
    from autotrain.trainers.image_classification_custom.params import load_params
    from autotrain.trainers.image_classification_custom.splits import PreparedData, SplitData
    from autotrain.trainers.image_classification_custom.stages import ImageCaches, RunContext
    from autotrain.trainers.image_classification_custom.wise_ft import choose_saved_weights

    model = tiny_model()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.projection.weight.add_(1.0)
    tuned = model.projection.weight.detach().clone()
    labels = np.arange(8) % 4
    test = SplitData("test", None, labels, np.ones(8, int))
    ctx = RunContext(
        load_params({"project_name": "p", "wise_ft_alpha": 0.25, "wise_ft_report": [0.0, 1.0]}),
        state=None,
        data=PreparedData(CLASS_NAMES, train=SplitData("train", None, labels, np.zeros(8, int)), test=test),
        model=model,
        collator=NormalizeCollator(model.config.image_mean, model.config.image_std),
        caches=ImageCaches(None, {"test": np.zeros((8, 32, 32, 3), np.uint8)}, 0.0),
        start_weights=start,
    )
    wise_ft = choose_saved_weights(ctx, ctx.embedder())
    assert wise_ft["alpha"] == 0.25 and wise_ft["selection"] is None
    assert [row["alpha"] for row in wise_ft["report"]] == [0.0, 1.0] and "test" in wise_ft["report"][0]
    expected = torch.lerp(start["projection.weight"], tuned, 0.25)
    torch.testing.assert_close(model.projection.weight.detach(), expected)


def test_failed_run_exits_non_zero(monkeypatch, tmp_path):
    """monitor swallows exceptions; train() must turn that into exit status 1, the error logged."""
    from autotrain import logger
    from autotrain.trainers.image_classification_custom import training
    from autotrain.trainers.image_classification_custom.__main__ import train

    def crash(config):
        raise RuntimeError("CUDA error: device-side assert triggered")

    monkeypatch.setattr(training, "run", crash)
    messages = []
    sink = logger.add(messages.append, level="ERROR")
    monkeypatch.chdir(tmp_path)
    try:
        with pytest.raises(SystemExit) as exit_info:
            train({"project_name": "p", "data_path": "data"})
    finally:
        logger.remove(sink)
    assert exit_info.value.code == 1  # a crash, not the user's data (that is exit 2: test_trainer_bad_inputs)
    assert any("device-side assert" in str(m) for m in messages)


def test_training_params_json_has_no_token(monkeypatch, tmp_path):
    from autotrain.trainers.image_classification_custom.__main__ import train

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        train({"project_name": "p", "data_path": "missing", "token": "hf_tokenvalue"})
    saved = json.loads((tmp_path / "p" / "training_params.json").read_text())
    assert "token" not in saved and "hf_tokenvalue" not in json.dumps(saved)


def test_card_and_log_say_when_training_was_discarded():
    """Found by a new user: alpha 0 was chosen, yet the card said "fine-tuned" and named a checkpoint."""
    from autotrain.trainers.image_classification_custom.model_card import render_model_card
    from autotrain.trainers.image_classification_custom.params import load_params

    params = load_params({"data_path": "data"}).public_dict()
    metrics = _metrics() | {
        "best_model_metric": "eval_field_mrr",
        "wise_ft": {"alpha": 0.0, "selection": {"validation_mrr": {"0.0": 0.445, "0.5": 0.44, "1.0": 0.43}}},
    }
    card = render_model_card(params, metrics, CLASS_NAMES)
    assert "**Training did not beat the starting model on the field validation photos**" in card
    assert "fine-tuned with AutoTrain" not in card and "fine-tuning was discarded" in card
    said = card.index('the results above equal the "before training" ones')  # the tables come first
    assert card.index("## Metrics: validation split") < said and "results below equal" not in card
    kept = metrics | {"wise_ft": {"alpha": 1.0, "selection": {"validation_mrr": {"0.0": 0.4, "1.0": 0.5}}}}
    card = render_model_card(params, kept, CLASS_NAMES)
    assert "fine-tuned with AutoTrain" in card and "did not beat" not in card


def test_a_temperature_that_raises_validation_ece_is_not_applied(monkeypatch, tiny_model):
    """Found by a new user: T fitted on 26 photos raised ECE 0.179 -> 0.257 and was applied anyway."""
    from autotrain.trainers.image_classification_custom import metrics as M
    from autotrain.trainers.image_classification_custom.outputs import calibrate
    from autotrain.trainers.image_classification_custom.params import load_params
    from autotrain.trainers.image_classification_custom.splits import SplitData

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 40)
    logits = rng.normal(size=(40, 4)) + 2.0 * np.eye(4)[labels]
    validation = SplitData("validation", None, labels, np.ones(40, int))
    model, config = tiny_model(), load_params({"data_path": "data"})
    monkeypatch.setattr(M, "fit_temperature", lambda *_: 50.0)  # a fit that flattens everything: ECE rises
    result = calibrate(model, config, validation, {"validation": (None, logits)})
    assert result["temperature"] == 1.0 and result["fitted_temperature_rejected"] == 50.0
    assert model.config.logit_temperature == 1.0 and "T = 1 kept" in result["source"]
    monkeypatch.undo()
    result = calibrate(model, config, validation, {"validation": (None, logits)})
    assert result["validation_field_ece_after"] <= result["validation_field_ece_before"]
    assert (
        model.config.logit_temperature == pytest.approx(result["temperature"], abs=1e-4)
        and result["temperature"] != 1.0
    )
