"""Push a built ``DatasetDict`` to the Hugging Face Hub with a dataset card (private by default).

Order: create the (private) repo, commit the card + ``dataset_balance.png`` + ``prep_report.json``,
then ``DatasetDict.push_to_hub``, which keeps the card's text and adds its own metadata
(features, splits, ``configs``). The token comes from the argument, ``HF_TOKEN`` or the
``huggingface-cli login`` cache, and is never printed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from datasets import DatasetDict
from huggingface_hub import CommitOperationAdd, HfApi, get_token

from data_prep.layouts import DataPrepError


def resolve_token(token: str | None = None) -> str | None:
    """The explicit token, else ``HF_TOKEN``, else the one saved by ``huggingface-cli login``."""
    return token or os.environ.get("HF_TOKEN") or get_token()


def dataset_card(report: dict[str, Any], repo_id: str, empty_splits: Sequence[str] = ()) -> str:
    """Markdown dataset card: split counts, balance figure and numbers, classes without field photos.

    ``empty_splits`` are named as not uploaded (see :func:`push_dataset`).
    """
    b = report["balance"]
    validation = report.get("validation_split")
    validation_line = f"\n\nValidation split: {validation}." if validation else ""
    if empty_splits:
        validation_line += (
            f"\n\nEmpty splits are not uploaded: {', '.join(empty_splits)} (a trainer treats a missing"
            " validation split like an empty one: no epoch selection, no early stopping)."
        )
    missing = report["classes_without_field_training_images"]
    rows = "\n".join(
        f"| {split} | {c.get('herbarium', 0)} | {c.get('field', 0)} | {c['total']} |"
        for split, c in report["splits"].items()
    )
    per_class = "\n".join(
        f"| {name} | {v['train_herbarium']} | {v['train_field']} | {v['validation']} | {v['test']} |"
        for name, v in report["per_class"].items()
    )
    findings = ", ".join(f"{k}: {v}" for k, v in report["finding_counts"].items()) or "none"
    return f"""---
task_categories:
- image-classification
tags:
- herbarium
- plants
- domain-adaptation
- plantclef
pretty_name: {repo_id.split("/")[-1]}
---

# {repo_id.split("/")[-1]}

Herbarium sheets and field photos of {report["num_classes"]} plant species, prepared by `data_prep`
for cross-domain (herbarium-to-field) identification. Columns: `image`, `label` (`ClassLabel`,
species names in sorted order), `domain` (`ClassLabel(["herbarium", "field"])`), `path` (relative
to the source folder). Images larger than {report["settings"]["max_side"]} px were downsized once.

## Splits

| split | herbarium | field | total |
|---|---|---|---|
{rows}

Validation rule: {report["validation_rule"]}{validation_line}

## Balance

![dataset balance](dataset_balance.png)

Field share of the training pool: {b["field_share"]:.1%} ({b["field_images"]} field,
{b["herbarium_images"]} herbarium); class sizes {b["smallest_class"]} to {b["largest_class"]}
(ratio {b["imbalance_ratio"]}).

**Classes without field training images ({len(missing)}):** {", ".join(missing) or "none"}.

| class | train herbarium | train field | validation | test |
|---|---|---|---|---|
{per_class}

## Preparation report

Findings: {findings}. Every skipped or fixed file is listed in `prep_report.json`.
"""


def push_dataset(
    dsd: DatasetDict,
    repo_id: str,
    report: dict[str, Any],
    figure: str | Path | None = None,
    *,
    private: bool = True,
    token: str | None = None,
    api: HfApi | None = None,
) -> str:
    """Push ``dsd`` and its card to ``repo_id`` (a dataset repo); returns the repo URL.

    Args:
        dsd: the built dataset.
        repo_id: ``user/name`` or ``org/name``.
        report: the build report (see :func:`data_prep.build_dataset`).
        figure: ``dataset_balance.png`` to upload beside the card.
        private: create the repository private (default).
        token: explicit token; else ``HF_TOKEN`` or the login cache.
        api: an ``HfApi`` (tests pass a fake).

    Empty splits (the validation split when no species has enough field photos) are not uploaded:
    ``push_to_hub`` cannot write an empty image split; the card names them.

    Raises:
        DataPrepError: when no token can be found, or every split is empty.
    """
    token = resolve_token(token)
    if not token:
        raise DataPrepError("no Hugging Face token: set HF_TOKEN or run `huggingface-cli login`")
    # ``Dataset.push_to_hub`` divides by zero on an empty split with an ``Image`` column (its size
    # estimate), e.g. the validation split of a herbarium-only collection: such splits stay local.
    empty = [name for name, split in dsd.items() if len(split) == 0]
    if len(empty) == len(dsd):
        raise DataPrepError("nothing to push: every split is empty")
    api = api or HfApi(token=token)
    url = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True, token=token)
    ops = [
        CommitOperationAdd("README.md", dataset_card(report, repo_id, empty).encode()),
        CommitOperationAdd("prep_report.json", json.dumps(report, indent=2, ensure_ascii=False).encode()),
    ]
    if figure is not None and Path(figure).is_file():
        ops.append(CommitOperationAdd("dataset_balance.png", str(figure)))
    api.create_commit(
        repo_id, ops, commit_message="data_prep: dataset card and report", repo_type="dataset", token=token
    )
    if empty:
        dsd = DatasetDict({name: split for name, split in dsd.items() if name not in empty})
    dsd.push_to_hub(repo_id, private=private, token=token, commit_message="data_prep: upload dataset")
    return str(url)
