"""The app's model side: loading, preprocessing, ranking, robust image loading (tiny model, CPU)."""

from __future__ import annotations

import io
import shutil
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from inference_app.images import InvalidImageError, load_image
from inference_app.predictor import ModelNotFoundError, Predictor, resolve_model_dir
from inference_app.testing import SPECIES, make_tiny_model, plant_image


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def predictor(model_dir):
    return Predictor.from_pretrained(model_dir, device="cpu", num_threads=1)


def test_ranking_is_softmax_of_model_logits(predictor):
    images = [plant_image(i, 0) for i in range(len(SPECIES))]
    pixels = predictor.preprocessing(images)
    with torch.no_grad():
        logits = predictor.model(pixel_values=pixels).logits
    expected = torch.softmax(logits.double(), dim=-1).numpy()

    ranked = predictor.predict(images, k=len(SPECIES))
    for row, ranking in zip(expected, ranked):
        order = np.argsort(-row, kind="stable")
        assert [name for name, _ in ranking] == [SPECIES[i] for i in order]
        np.testing.assert_allclose([p for _, p in ranking], row[order], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(predictor.predict_proba(images), expected, rtol=1e-5, atol=1e-6)


def test_predict_k_and_embeddings(predictor):
    images = [plant_image(i, 1) for i in range(3)]
    assert [len(r) for r in predictor.predict(images, k=2)] == [2, 2, 2]
    assert len(predictor.predict(images[0], k=99)[0]) == len(SPECIES)
    embeddings = predictor.embed(images)
    assert embeddings.shape == (3, 32) and embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)


def test_batches_give_the_same_answer_as_single_images(predictor):
    images = [plant_image(i % 4, i) for i in range(5)]
    batch_size = predictor.batch_size
    try:
        predictor.batch_size = 2  # 5 images -> batches of 2, 2, 1
        batched = predictor.embed(images)
    finally:
        predictor.batch_size = batch_size
    single = np.concatenate([predictor.embed(image) for image in images])
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_preprocessing_matches_saved_image_processor(predictor, model_dir):
    from transformers import ViTImageProcessor

    processor = ViTImageProcessor.from_pretrained(model_dir)
    image = plant_image(2, 3, size=(120, 90))
    ours = predictor.preprocessing([image])
    theirs = processor(images=[image], return_tensors="pt")["pixel_values"]
    assert ours.shape == theirs.shape == (1, 3, 64, 64)
    torch.testing.assert_close(ours, theirs.float(), atol=1e-4, rtol=1e-4)


def test_missing_model_folder_says_how_to_train(tmp_path):
    with pytest.raises(ModelNotFoundError, match="training_config config.json"):
        resolve_model_dir(tmp_path / "herbarium-arcface")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        resolve_model_dir(tmp_path / "empty")


def test_hub_repo_loads_offline_from_cache_without_running_remote_code(model_dir, tmp_path, monkeypatch):
    """A Hub id resolves to the cached snapshot offline; the repo's .py file is never executed."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--tiny-arcface"
    snapshot = repo / "snapshots" / commit
    shutil.copytree(model_dir, snapshot)
    (snapshot / "modeling_arcface.py").write_text("raise RuntimeError('remote code was executed')\n")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)

    loaded = Predictor.from_pretrained("someone/tiny-arcface", cache_dir=tmp_path / "hub", device="cpu")
    assert loaded.model_dir == snapshot and loaded.from_hub
    assert loaded.labels == list(SPECIES)
    with pytest.raises(ModelNotFoundError, match="local Hugging Face cache"):
        resolve_model_dir("someone/not-cached", cache_dir=tmp_path / "hub")


# --- robust image loading ---------------------------------------------------------------------------


def _save(image: Image.Image, path, **kwargs):
    image.save(path, **kwargs)
    return path


def test_odd_modes_become_rgb(tmp_path):
    base = plant_image(1, 0, size=(40, 30))
    cmyk = _save(base.convert("CMYK"), tmp_path / "cmyk.jpg")
    rgba = base.convert("RGBA")
    rgba.putalpha(0)  # fully transparent: must come out white, not black
    alpha = _save(rgba, tmp_path / "alpha.png")
    sixteen = _save(Image.fromarray(np.full((30, 40), 65535, np.uint16)), tmp_path / "grey16.png")
    palette = _save(base.convert("P"), tmp_path / "palette.gif")
    for path in (cmyk, alpha, sixteen, palette):
        image = load_image(path)
        assert image.mode == "RGB" and image.size == (40, 30), path
    assert np.asarray(load_image(alpha)).min() == 255
    assert np.asarray(load_image(sixteen)).min() == 255  # 65535 is white, not clipped garbage


def test_exif_rotation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), "green")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif)
    assert load_image(path).size == (20, 40)


def _png_claiming(width: int, height: int) -> bytes:
    """A valid-looking PNG that claims a size but holds almost no data (a decompression-bomb stand-in)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty"),
        (b"this is a text file, not a photo", "not an image"),
        ("truncated-header", "corrupt or incomplete"),
        ("truncated-pixels", "truncated"),
        (_png_claiming(20_000, 20_000), "too large"),
    ],
    ids=["empty", "text", "truncated-header", "truncated-pixels", "decompression-bomb"],
)
def test_bad_files_raise_a_clear_reason(tmp_path, content, reason):
    if isinstance(content, str):
        buffer = io.BytesIO()
        plant_image(0, 0, size=(200, 200)).save(buffer, format="JPEG")
        full = buffer.getvalue()
        content = full[:300] if content == "truncated-header" else full[: len(full) * 2 // 3]
    path = tmp_path / "upload.jpg"
    path.write_bytes(content)
    with pytest.raises(InvalidImageError, match=reason) as error:
        load_image(path)
    assert "upload.jpg" in str(error.value)


def test_pixel_limit_is_checked_before_decoding(tmp_path):
    path = tmp_path / "claims_100mp.png"
    path.write_bytes(_png_claiming(10_000, 10_000))
    with pytest.raises(InvalidImageError, match="100 megapixels"):
        load_image(path, max_pixels=50_000_000)


def test_large_jpeg_is_decoded_small_and_fast(tmp_path):
    image = plant_image(3, 0, size=(4000, 3000))
    path = _save(image, tmp_path / "big.jpg", quality=80)
    loaded = load_image(path, max_side=512)
    assert max(loaded.size) == 512 and loaded.size == (512, 384)


@pytest.mark.slow
def test_100_megapixel_photo_is_accepted_and_downscaled(tmp_path):
    path = tmp_path / "huge.jpg"
    Image.new("RGB", (12_000, 8_400), (90, 140, 60)).save(path, quality=70)
    loaded = load_image(path)
    assert loaded.mode == "RGB" and max(loaded.size) <= 1024
