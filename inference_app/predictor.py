"""Load a trained ArcFace model once and run it: ``predict`` (ranked species), ``embed``, batches.

No UI code here. The model class is the project's own ``ArcFaceForImageClassification``; a model
from the Hub is fetched with ``huggingface_hub.snapshot_download`` (weights and JSON only, so the
``modeling_arcface.py`` copy in the repository is never downloaded, let alone executed) and works
offline from the local Hugging Face cache.

Example::

    predictor = Predictor.from_pretrained("herbarium-arcface")
    predictor.predict(["photo.jpg"], k=5)   # [[("Quercus robur", 0.91), ...]]
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from data_prep.contract import is_hub_id
from inference_app.identification import softmax
from inference_app.images import ImageSource, open_model_image, resize_for_model

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "herbarium-arcface"
TRAIN_HINT = (
    "train it with `python -m autotrain.trainers.image_classification_custom --training_config config.json` "
    "(see the README), or pass --model PATH_OR_HUB_REPO_ID"
)
# What a model folder needs at inference time; the .py copy is deliberately not fetched.
_HUB_PATTERNS = ["config.json", "preprocessor_config.json", "*.safetensors", "*.safetensors.index.json"]


def _import_model_class():
    """The project's ArcFace model class, or the copy shipped next to the app in a Space."""
    try:
        from autotrain.trainers.image_classification_custom.modeling_arcface import (
            ArcFaceForImageClassification,
        )
    except ImportError:  # a Hugging Face Space: export_space.py puts the model code next to the app
        from inference_app.modeling_arcface import ArcFaceForImageClassification  # type: ignore
    return ArcFaceForImageClassification


class _EmbedAndLogits(torch.nn.Module):
    """``model.embed_and_logits`` as a module's forward (one backbone pass; what ``torch.jit.trace`` needs)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.embed_and_logits(pixel_values)


class EnrolmentError(ValueError):
    """``--enroll`` cannot be done; the message is one line naming the folder or species and the reason."""


class ModelNotFoundError(FileNotFoundError):
    """The model folder or Hub repository cannot be found; the message says how to get one."""


def resolve_model_dir(
    model: str | Path, revision: str | None = None, cache_dir: str | Path | None = None
) -> Path:
    """A local model folder for ``model``: the folder itself, or a (cached) Hub snapshot.

    Args:
        model: a local folder, or a Hub repo id such as ``"user/herbarium-arcface"``.
        revision: Hub branch, tag or commit.
        cache_dir: Hugging Face cache folder (default: the usual ``HF_HUB_CACHE``).

    Raises:
        ModelNotFoundError: neither a folder with a ``config.json`` nor a reachable/cached repo.
    """
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(
                f"{path} has no config.json, so it is not a trained model folder: {TRAIN_HINT}"
            )
        return path
    if not is_hub_id(str(model), namespaced=True):  # a bare name is a missing local folder here
        raise ModelNotFoundError(f"model folder '{model}' does not exist: {TRAIN_HINT}")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        folder = snapshot_download(
            repo_id=str(model), revision=revision, cache_dir=cache_dir, allow_patterns=_HUB_PATTERNS
        )
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as error:
        offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
        where = "in the local Hugging Face cache (HF_HUB_OFFLINE is set)" if offline else "on the Hub"
        raise ModelNotFoundError(
            f"'{model}' is neither a local folder nor a model found {where} ({type(error).__name__}): {TRAIN_HINT}"
        ) from error
    if not (Path(folder) / "config.json").is_file():
        raise ModelNotFoundError(f"Hub repository '{model}' has no config.json: {TRAIN_HINT}")
    return Path(folder)


@dataclass(frozen=True)
class Preprocessing:
    """Resize + rescale + normalise, as saved in ``preprocessor_config.json`` (or the model config).

    Args:
        size: ``(height, width)`` fed to the model.
        mean: per-channel mean (on the 0..1 scale).
        std: per-channel standard deviation.
        resample: Pillow resampling filter for the resize.
        shortest_edge: when set, resize the shortest edge to this and centre-crop ``size``.
    """

    size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resample: int = Image.Resampling.BILINEAR
    shortest_edge: int | None = None

    @classmethod
    def from_model_dir(cls, folder: Path, config) -> Preprocessing:
        """Read ``preprocessor_config.json`` when present; fall back to ``image_size``/mean/std in the config."""
        size = getattr(config, "image_size", None) or 224
        size = (size, size) if isinstance(size, int) else tuple(size)
        mean = tuple(getattr(config, "image_mean", None) or IMAGENET_DEFAULT_MEAN)
        std = tuple(getattr(config, "image_std", None) or IMAGENET_DEFAULT_STD)
        resample, shortest_edge = Image.Resampling.BILINEAR, None
        processor_file = folder / "preprocessor_config.json"
        if processor_file.is_file():
            processor = json.loads(processor_file.read_text())
            raw = processor.get("size")
            crop = processor.get("crop_size")
            if isinstance(raw, dict) and "height" in raw:
                size = (int(raw["height"]), int(raw["width"]))
            elif isinstance(raw, dict) and "shortest_edge" in raw:
                shortest_edge = int(raw["shortest_edge"])
                if processor.get("do_center_crop") and isinstance(crop, dict):
                    size = (int(crop["height"]), int(crop["width"]))
                else:
                    size = (shortest_edge, shortest_edge)
            elif isinstance(raw, int):
                size = (raw, raw)
            if processor.get("do_normalize", True):
                mean = tuple(processor.get("image_mean", mean))
                std = tuple(processor.get("image_std", std))
            else:
                mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
            resample = int(processor.get("resample", resample))
        return cls(size=size, mean=mean, std=std, resample=resample, shortest_edge=shortest_edge)

    def to_array(self, image: Image.Image) -> np.ndarray:
        """One RGB image -> ``(H, W, 3)`` uint8 at the model's input size."""
        height, width = self.size
        if self.shortest_edge:
            scale = self.shortest_edge / min(image.size)
            resized = image.resize(
                (max(width, round(image.width * scale)), max(height, round(image.height * scale))),
                self.resample,
            )
            left, top = (resized.width - width) // 2, (resized.height - height) // 2
            image = resized.crop((left, top, left + width, top + height))
        else:  # one resize with the model's filter, as the trainer's cache and ViTImageProcessor do
            image = resize_for_model(image, (height, width), self.resample)
        return np.asarray(image, dtype=np.uint8)

    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """RGB images -> normalised ``(B, 3, H, W)`` float32 tensor."""
        batch = torch.from_numpy(np.stack([self.to_array(image) for image in images]))
        batch = batch.permute(0, 3, 1, 2).float().div_(255.0)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, 3, 1, 1)
        return batch.sub_(mean).div_(std)


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_num_threads() -> int:
    """Intra-op threads for CPU inference: the cores this process may use, at most 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 8))


class Predictor:
    """A loaded model with its preprocessing; thread-safe for concurrent ``predict``/``embed`` calls.

    Args:
        model: an ``ArcFaceForImageClassification`` (put in eval mode and moved to ``device`` here).
        preprocessing: how images become tensors.
        model_dir: the folder it was loaded from (for cache keys and messages).
        device: ``"cpu"``, ``"cuda"``, ... (default: CUDA when present).
        batch_size: images per forward pass for ``embed``/``predict`` on many images.
        channels_last: use the channels-last memory format (faster convolutions on CPU).
        from_hub: the folder is a Hub snapshot (caches then go to a user cache folder).
        optimize: on CPU, run a frozen TorchScript copy (batch norm folded into convolutions, oneDNN
            kernels): about 1.7x faster for the embedded EfficientNet-Lite0. It is checked against the
            eager model at load time and skipped if it differs or cannot be built. ``model`` stays eager.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        preprocessing: Preprocessing,
        model_dir: Path | None = None,
        device: str | torch.device | None = None,
        batch_size: int = 32,
        channels_last: bool = True,
        from_hub: bool = False,
        optimize: bool = True,
    ):
        self.device = torch.device(device) if device is not None else default_device()
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.eval().to(self.device, memory_format=self.memory_format)
        self.preprocessing = preprocessing
        self.model_dir = Path(model_dir) if model_dir is not None else None
        self.batch_size = batch_size
        self.from_hub = from_hub
        self.optimize = optimize
        self.changed_in_memory = False  # True after enroll(): the folder no longer describes the model
        self._model_changed()

    def _model_changed(self) -> None:
        """Labels, enrolled species and the traced copy from the current model (after loading or enrolling)."""
        model = self.model
        id2label = {int(i): name for i, name in model.config.id2label.items()}
        self.labels: list[str] = [id2label[i] for i in range(len(id2label))]
        #: species enrolled without training (``config.enrolled_species``: name -> number of images)
        self.enrolled: dict[str, int] = dict(getattr(model.config, "enrolled_species", None) or {})
        self.__dict__.pop("model_hash", None)
        self.optimized = None
        if self.optimize and self.device.type == "cpu":
            self.optimized = self._build_optimized()

    def enroll(self, images_root: str | Path, replace: bool = False) -> dict[str, int]:
        """Add ``images_root/<species>/*`` as new species, in memory, without training (the app's ``--enroll``).

        Each new species gets the normalised mean embedding of its images as its class centre (see
        ``autotrain.trainers.image_classification_custom.enroll``); the saved folder is not changed.

        Returns:
            ``{species: number of usable images}`` of this call.

        Raises:
            EnrolmentError: one line: no species folders, an existing species without ``replace``, a
                species without a usable image, or the trainer package is not installed (a Space).
        """
        try:
            from autotrain.trainers.image_classification_custom.enroll import EnrolError, enroll_in_memory
        except ImportError as error:
            raise EnrolmentError(
                "--enroll needs this project installed (not available in a Space: enrol with `python -m "
                "autotrain.trainers.image_classification_custom.enroll` and push the enrolled model)"
            ) from error
        self.model.to("cpu", memory_format=torch.contiguous_format)
        try:
            _, added = enroll_in_memory(self.model, self.preprocessing, images_root, replace=replace)
        except EnrolError as error:
            raise EnrolmentError(str(error)) from error
        finally:
            self.model.eval().to(self.device, memory_format=self.memory_format)
        self.changed_in_memory = True
        self._model_changed()
        return added

    @classmethod
    def from_pretrained(
        cls,
        model: str | Path = DEFAULT_MODEL,
        device: str | torch.device | None = None,
        num_threads: int | None = None,
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        **kwargs,
    ) -> Predictor:
        """Load from a local folder or a Hub repo id (offline from the cache when HF_HUB_OFFLINE=1).

        Args:
            model: folder or repo id.
            device: default CUDA when present, else CPU.
            num_threads: CPU threads for torch (default: available cores, at most 8).
            revision: Hub revision.
            cache_dir: Hugging Face cache folder.
            **kwargs: passed to ``Predictor`` (``batch_size``, ``channels_last``).
        """
        folder = resolve_model_dir(model, revision=revision, cache_dir=cache_dir)
        from_hub = not Path(model).expanduser().is_dir()
        model_class = _import_model_class()
        torch.set_num_threads(num_threads or default_num_threads())
        start = time.perf_counter()
        network = model_class.from_pretrained(str(folder))
        preprocessing = Preprocessing.from_model_dir(folder, network.config)
        predictor = cls(network, preprocessing, model_dir=folder, device=device, from_hub=from_hub, **kwargs)
        logger.info(
            "loaded %s (%d species, input %s) on %s in %.1fs",
            folder,
            len(predictor.labels),
            preprocessing.size,
            predictor.device,
            time.perf_counter() - start,
        )
        return predictor

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @cached_property
    def model_hash(self) -> str:
        """A content hash of the weights, config and preprocessing (the reference cache key)."""
        digest = hashlib.sha256()
        if self.model_dir is not None and (self.model_dir / "config.json").is_file():
            names = ["config.json", "preprocessor_config.json"]
            names += sorted(p.name for p in self.model_dir.glob("*.safetensors"))
            for name in names:
                path = self.model_dir / name
                if path.is_file():
                    digest.update(name.encode())
                    with path.open("rb") as handle:
                        for chunk in iter(lambda: handle.read(1 << 22), b""):
                            digest.update(chunk)
        if self.changed_in_memory or self.model_dir is None or not (self.model_dir / "config.json").is_file():
            # an in-memory model, or centres enrolled at start-up: hash the parameters too
            for name, tensor in sorted(self.model.state_dict().items()):
                digest.update(name.encode())
                digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        digest.update(repr(self.preprocessing).encode())
        return digest.hexdigest()[:16]

    @property
    def max_side(self) -> int:
        """Longest side worth keeping for display: twice the model input, at least 256."""
        return max(2 * max(self.preprocessing.size), 256)

    @property
    def decode_size(self) -> tuple[int, int]:
        """``(height, width)`` that decoding at reduced scale must keep (the input, or the shortest edge)."""
        edge = self.preprocessing.shortest_edge
        return (edge, edge) if edge else self.preprocessing.size

    def open_photo(
        self, source: ImageSource, min_side: int = 0, max_pixels: int | None = None
    ) -> Image.Image:
        """``source`` opened under the project's image policy, as the trainer decodes the same file.

        Args:
            source: a path, bytes, ``PIL.Image`` or array.
            min_side: refuse images whose shorter side is below this (the app uses data_prep's 32).
            max_pixels: pixel limit (default: the shared ``IMAGE_MAX_PIXELS`` / 250 megapixels).

        Raises:
            InvalidImageError: with a one-line message that names the file and what to do.
        """
        return open_model_image(source, self.decode_size, min_side=min_side, max_pixels=max_pixels)

    def _to_images(self, images: Sequence[ImageSource] | ImageSource) -> list[Image.Image]:
        if isinstance(images, str | Path | bytes | Image.Image | np.ndarray):
            images = [images]
        return [self.open_photo(image) for image in images]

    def _build_optimized(self):
        """A frozen, traced copy of embed + logits, or None when it cannot be built or disagrees."""
        height, width = self.preprocessing.size
        generator = torch.Generator().manual_seed(0)
        sample = torch.randn(2, 3, height, width, generator=generator).contiguous(
            memory_format=self.memory_format
        )
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")  # TorchScript is deprecated in favour of torch.compile
                traced = torch.jit.trace(_EmbedAndLogits(self.model), sample[:1], check_trace=False)
                optimized = torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))
                expected = _EmbedAndLogits(self.model)(sample)
                got = optimized(sample)
            if all(torch.allclose(a, b, atol=1e-3, rtol=1e-4) for a, b in zip(got, expected)):
                return optimized
            logger.warning("optimized model disagrees with the eager model: using the eager model")
        except Exception as error:  # tracing is best effort: some backbones cannot be traced
            logger.info("running the eager model (tracing failed: %s)", error)
        return None

    @torch.inference_mode()
    def _forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One backbone pass -> (L2-normalised embeddings, logits without margin)."""
        pixel_values = pixel_values.to(self.device, memory_format=self.memory_format, non_blocking=True)
        if self.optimized is not None:
            embeddings, logits = self.optimized(pixel_values)
        else:
            embeddings, logits = _EmbedAndLogits(self.model)(pixel_values)
        return embeddings.float().cpu(), logits.float().cpu()

    def embed_and_logits(self, images: Sequence[ImageSource] | ImageSource) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings ``(N, D)`` (unit length) and logits ``(N, C)`` from one pass per batch."""
        pil = self._to_images(images)
        embeddings, logits = [], []
        for start in range(0, len(pil), self.batch_size):
            emb, log = self._forward(self.preprocessing(pil[start : start + self.batch_size]))
            embeddings.append(emb.numpy())
            logits.append(log.numpy())
        if not embeddings:
            return np.zeros((0, 0), np.float32), np.zeros((0, self.num_classes), np.float32)
        return np.concatenate(embeddings), np.concatenate(logits)

    def logits(self, images: Sequence[ImageSource] | ImageSource) -> np.ndarray:
        """Raw class logits ``(N, C)`` (``s * cos``, no margin)."""
        return self.embed_and_logits(images)[1]

    def predict_proba(self, images: Sequence[ImageSource] | ImageSource) -> np.ndarray:
        """Class probabilities ``(N, C)``: the softmax of the model's logits."""
        return softmax(self.logits(images)).astype(np.float32)

    def predict(
        self, images: Sequence[ImageSource] | ImageSource, k: int = 5
    ) -> list[list[tuple[str, float]]]:
        """Top-``k`` species per image, most probable first: ``[[(species, probability), ...], ...]``."""
        probs = self.predict_proba(images)
        k = max(1, min(k, self.num_classes))
        ranked = []
        for row in probs:
            order = np.argsort(-row, kind="stable")[:k]
            ranked.append([(self.labels[i], float(row[i])) for i in order])
        return ranked

    def embed(self, images: Sequence[ImageSource] | ImageSource) -> np.ndarray:
        """L2-normalised embeddings ``(N, D)`` float32."""
        return self.embed_and_logits(images)[0]
