"""Tiny models and reference sets for the app's tests and benchmarks (seeded, CPU, seconds).

Not used by the app itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SPECIES = ("Quercus robur", "Quercus ilex", "Fagus sylvatica", "Acer campestre")


def make_tiny_model(
    folder: Path, species: Sequence[str] = SPECIES, image_size: int = 64, seed: int = 0
) -> Path:
    """A randomly initialised ``resnet10t`` ArcFace model saved with ``save_arcface_model``."""
    import torch

    from autotrain.trainers.image_classification_custom.model_io import (
        create_arcface_model,
        save_arcface_model,
    )

    torch.manual_seed(seed)
    model = create_arcface_model(
        "resnet10t",
        id2label=dict(enumerate(species)),
        backbone_source="timm",
        pretrained=False,
        embedding_dim=32,
        image_size=image_size,
    )
    return save_arcface_model(model.eval(), folder)


def plant_image(
    species_index: int, variant: int, domain: str = "field", size: tuple[int, int] = (96, 80)
) -> Image.Image:
    """A synthetic picture whose colours and shape depend on the species (and a little on ``variant``)."""
    rng = np.random.default_rng([species_index, variant, domain == "field"])
    hue = np.array(
        [(70 * species_index) % 256, (150 + 40 * species_index) % 256, (30 * species_index + 90) % 256]
    )
    background = (235, 228, 205) if domain == "herbarium" else tuple(int(v) for v in rng.integers(40, 120, 3))
    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    for _ in range(3 + species_index):
        x, y = rng.integers(0, size[0] - 20), rng.integers(0, size[1] - 20)
        colour = tuple(int(v) for v in np.clip(hue + rng.normal(0, 12, 3), 0, 255))
        radius = 6 + 3 * species_index
        draw.ellipse((x, y, x + radius, y + radius * 2), fill=colour)
    return image


def make_reference_folder(
    root: Path, species: Sequence[str] = SPECIES, n_herbarium: int = 3, n_field: int = 2
) -> Path:
    """``root/{herbarium,field}/<species>/*.jpg``: the ``data_prep`` folder layout."""
    for i, name in enumerate(species):
        for domain, count in (("herbarium", n_herbarium), ("field", n_field)):
            folder = root / domain / name
            folder.mkdir(parents=True, exist_ok=True)
            for j in range(count):
                plant_image(i, j, domain).save(folder / f"{domain[0]}{j:02d}.jpg", quality=92)
    return root


def make_reference_dataset(
    path: Path, species: Sequence[str] = SPECIES, n_herbarium: int = 3, n_field: int = 2
) -> Path:
    """A ``DatasetDict`` saved with ``save_to_disk``, with the features ``data_prep`` writes."""
    from datasets import Dataset, DatasetDict

    from data_prep.contract import DOMAINS, dataset_features

    features = dataset_features(sorted(species))
    order = sorted(species)
    splits: dict[str, dict[str, list]] = {
        name: {column: [] for column in features} for name in ("train", "validation")
    }
    for i, name in enumerate(species):
        for domain, count in (("herbarium", n_herbarium), ("field", n_field)):
            for j in range(count):
                split = "validation" if domain == "field" and j == 0 else "train"
                rows = splits[split]
                rows["image"].append(plant_image(i, j, domain))
                rows["label"].append(order.index(name))
                rows["domain"].append(DOMAINS.index(domain))
                rows["path"].append(f"{domain}/{name}/{domain[0]}{j:02d}.jpg")
    DatasetDict({k: Dataset.from_dict(v, features=features) for k, v in splits.items()}).save_to_disk(
        str(path)
    )
    return path


def free_port() -> int:
    """A TCP port that is free right now on 127.0.0.1."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
