"""The input pipeline: split loading, the decoded-image cache, transforms, collator and samplers."""

import io
from collections import Counter

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value
from PIL import Image as PILImage
from torchvision.transforms import v2

from autotrain.trainers.image_classification_custom import dataset as D
from autotrain.trainers.image_classification_custom import splits as S
from autotrain.trainers.image_classification_custom.augment import create_train_transform

NAMES = ["acer", "betula", "carex"]


def _image(seed: int, size=(40, 30)) -> PILImage.Image:
    rng = np.random.default_rng(seed)
    return PILImage.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def _jpeg(seed: int) -> PILImage.Image:
    buffer = io.BytesIO()
    _image(seed, (80, 60)).save(buffer, format="JPEG")
    return PILImage.open(io.BytesIO(buffer.getvalue()))


def _split(rows, with_domain=True):
    features = {"image": Image(), "label": ClassLabel(names=NAMES), "path": Value("string")}
    if with_domain:
        features["domain"] = ClassLabel(names=["herbarium", "field"])
    data = {k: [] for k in features}
    for i, (label, domain) in enumerate(rows):
        data["image"].append(_image(i))
        data["label"].append(label)
        data["path"].append(f"{label}/{i}.png")
        if with_domain:
            data["domain"].append(domain)
    return Dataset.from_dict(data, features=Features(features))


@pytest.fixture
def saved_dataset(tmp_path):
    train = _split([(0, 0), (0, 1), (1, 0), (1, 0), (2, 0), (2, 1)])
    validation = _split([(0, 1), (2, 1)])  # no field photo of class 1: normal
    DatasetDict({"train": train, "validation": validation}).save_to_disk(str(tmp_path / "data"))
    return tmp_path / "data"


def test_load_splits_from_data_prep_folder(saved_dataset):
    data = S.load_splits(str(saved_dataset))
    assert data.class_names == NAMES
    assert data.train.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert data.train.domains.tolist() == [0, 1, 0, 0, 0, 1]
    assert data.validation.labels.tolist() == [0, 2]
    assert data.test is None  # absent test split is skipped
    assert data.class_has_field.tolist() == [True, False, True]
    assert data.train.dataset.column_names == ["image"]


def test_missing_data_path_names_the_path(tmp_path):
    missing = str(tmp_path / "nowhere" / "autotrain-data")
    with pytest.raises(FileNotFoundError, match="nowhere/autotrain-data"):
        S.load_splits(missing)


def test_missing_split_and_column_errors(saved_dataset):
    with pytest.raises(ValueError, match="valid_split 'val'"):
        S.load_splits(str(saved_dataset), valid_split="val")
    with pytest.raises(ValueError, match="test_split 'test'"):
        S.load_splits(str(saved_dataset), test_split_required=True)
    with pytest.raises(ValueError, match="target_column"):
        S.load_splits(str(saved_dataset), target_column="species")


def test_plain_image_folder_is_field_with_a_warning(tmp_path):
    for i, name in enumerate(NAMES):
        folder = tmp_path / "images" / name
        folder.mkdir(parents=True)
        for j in range(2):
            _image(10 * i + j).save(folder / f"{j}.png")
    with pytest.warns(UserWarning, match="field photo"):
        data = S.load_splits(str(tmp_path / "images"), valid_split=None)
    assert data.class_names == NAMES
    with pytest.warns(UserWarning) as caught:  # the default valid_split is absent: warned, not an error
        assert S.load_splits(str(tmp_path / "images"), valid_split_required=False).validation is None
    assert any("without validation" in str(w.message) for w in caught)
    assert not data.has_domains
    assert (data.train.domains == S.FIELD).all()


def test_string_labels_are_encoded_in_sorted_order(tmp_path):
    train = Dataset.from_dict(
        {"image": [_image(i) for i in range(4)], "label": ["b", "a", "b", "c"]},
        features=Features({"image": Image(), "label": Value("string")}),
    )
    DatasetDict({"train": train}).save_to_disk(str(tmp_path / "d"))
    with pytest.warns(UserWarning):
        data = S.load_splits(str(tmp_path / "d"), valid_split=None)
    assert data.class_names == ["a", "b", "c"]
    assert data.train.labels.tolist() == [1, 0, 1, 2]


def test_decoded_cache_matches_the_saved_image_processor(saved_dataset):
    from autotrain.trainers.image_classification_custom.configuration_arcface import ArcFaceConfig
    from autotrain.trainers.image_classification_custom.model_io import create_image_processor

    config = ArcFaceConfig(image_size=24, image_interpolation="bicubic", image_mean=[0.4, 0.5, 0.6])
    data = S.load_splits(str(saved_dataset))
    cache = D.decode_images(data.validation.dataset, "image", size=24, interpolation="bicubic")
    assert cache.shape == (2, 24, 24, 3) and cache.dtype == np.uint8
    collator = D.NormalizeCollator(config.image_mean, config.image_std)
    ours = collator([D.CachedImageDataset(cache, data.validation.labels)[0]])["pixel_values"]
    processor = create_image_processor(config)
    original = _image(0)  # validation image 0 was generated with seed 0
    reference = processor(original, return_tensors="pt")["pixel_values"]
    assert ours.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)


def test_cache_spills_to_a_memory_map_over_budget(saved_dataset, tmp_path):
    data = S.load_splits(str(saved_dataset))
    cache = D.decode_images(
        data.train.dataset, "image", size=16, memory_budget_mb=0, spill_dir=str(tmp_path / "spill")
    )
    assert isinstance(cache, np.memmap)
    assert list((tmp_path / "spill").iterdir())
    in_memory = D.decode_images(data.train.dataset, "image", size=16)
    np.testing.assert_array_equal(np.asarray(cache), in_memory)


def test_jpeg_draft_decoding(tmp_path):
    ds = Dataset.from_dict({"image": [_jpeg(0), _jpeg(1)]}, features=Features({"image": Image()}))
    cache = D.decode_images(ds, "image", size=32, draft=True)
    assert cache.shape == (2, 32, 32, 3)
    for i in range(2):  # reduced-scale decoding shows the same picture as a full decode and resize
        full = np.asarray(_jpeg(i).convert("RGB").resize((32, 32), PILImage.Resampling.BILINEAR), dtype=float)
        assert np.abs(cache[i] - full).mean() < 8  # another image: about 22


@pytest.mark.parametrize("strength", [0.0, 1.0, 2.0])
def test_train_transform_keeps_uint8_and_size_and_changes_pixels_only_when_augmenting(strength):
    torch.manual_seed(0)
    transform = create_train_transform(32, strength)
    image = torch.randint(0, 256, (3, 37, 37), dtype=torch.uint8)
    plain = v2.functional.resize(image, [32, 32], antialias=True)
    outs = torch.stack([transform(image) for _ in range(16)])
    assert outs.shape == (16, 3, 32, 32) and outs.dtype == torch.uint8
    changed = (outs.float() - plain.float()).abs().mean((1, 2, 3)) > 1.0
    if strength == 0:
        assert torch.equal(outs, plain.expand_as(outs))  # strength 0: the plain resize, nothing else
    else:
        assert changed.all()  # a random crop of noise never matches the resize of the whole image
        assert len({o.numpy().tobytes() for o in outs}) == 16  # and every draw differs


def test_train_cache_size():
    assert D.train_cache_size(224, 1.0) == 258
    assert D.train_cache_size(224, 0.0) == 224


def test_collator_normalises():
    collator = D.NormalizeCollator([0.5, 0.5, 0.5], [0.25, 0.5, 1.0], channels_last=False)
    batch = collator([{"pixel_values": torch.full((3, 2, 2), 255, dtype=torch.uint8), "labels": 1}])
    assert batch["labels"].tolist() == [1]
    torch.testing.assert_close(batch["pixel_values"][0, :, 0, 0], torch.tensor([2.0, 1.0, 0.5]))


# --- samplers ------------------------------------------------------------------------------------------

LABELS = np.array([0] * 80 + [1] * 15 + [2] * 5)  # 16:3:1 imbalance
DOMAINS = np.array([0] * 70 + [1] * 10 + [0] * 15 + [0] * 4 + [1])  # class 0: 70 herb / 10 field


def test_class_balanced_sampler_balances_classes():
    sampler = D.create_sampler("class_balanced", LABELS, DOMAINS, seed=0)
    sampler.num_samples = 30000
    counts = Counter(LABELS[list(iter(sampler))].tolist())
    for c in range(3):
        assert counts[c] / 30000 == pytest.approx(1 / 3, abs=0.02)


def test_class_domain_balanced_sampler_balances_domains_within_classes():
    sampler = D.create_sampler("class_domain_balanced", LABELS, DOMAINS, seed=0)
    sampler.num_samples = 30000
    drawn = np.array(list(iter(sampler)))
    for c in (0, 2):  # classes with both domains: half field, half herbarium
        in_class = drawn[LABELS[drawn] == c]
        assert (DOMAINS[in_class] == 1).mean() == pytest.approx(0.5, abs=0.03)
    assert (DOMAINS[drawn[LABELS[drawn] == 1]] == 0).all()  # class 1 has only herbarium
    assert Counter(LABELS[drawn].tolist())[1] / 30000 == pytest.approx(1 / 3, abs=0.02)


def test_sampler_is_seeded_and_epoch_aware():
    a = D.create_sampler("class_balanced", LABELS, DOMAINS, seed=7)
    b = D.create_sampler("class_balanced", LABELS, DOMAINS, seed=7)
    first = list(iter(a))
    assert first == list(iter(b))  # same seed, same epoch
    assert list(iter(a)) != first  # next epoch differs
    a.set_epoch(0)
    assert list(iter(a)) == first  # set_epoch replays (resume, distributed ranks)
    assert list(iter(D.create_sampler("class_balanced", LABELS, DOMAINS, seed=8))) != first


def test_epoch_length_rounds_up_to_whole_batches():
    sampler = D.create_sampler("none", LABELS, DOMAINS, seed=0, multiple_of=32)
    assert len(sampler) == 128
    drawn = list(iter(sampler))
    assert len(drawn) == 128
    assert sorted(drawn[:100]) == list(range(100))  # one full permutation, then a random top-up


def test_unknown_sampling_is_an_error():
    with pytest.raises(ValueError, match="sampling"):
        D.create_sampler("random", LABELS, DOMAINS, seed=0)
