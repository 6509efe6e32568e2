"""The Hub model card (``README.md``) and the t-SNE figure of a trained ArcFace model.

The card's front matter is Hub metadata (``library_name``, ``pipeline_tag``, ``base_model`` and
``datasets`` only when they are Hub ids, tags and a ``model-index`` with the field metrics, written by
``huggingface_hub.ModelCardData``); the body has a usage snippet, the metrics tables (the same numbers
as ``metrics.json``, formatted by :func:`format_metric`) and the t-SNE picture. Nothing here sees the
Hub token.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from autotrain.trainers.image_classification_custom.embedding_map import MAP_TITLES, map_coordinates
from autotrain.trainers.image_classification_custom.evaluation_card import evaluation_lines
from autotrain.trainers.image_classification_custom.metrics import METRIC_NAMES
from data_prep.contract import FIELD, HERBARIUM, is_hub_id

CARD_TAGS = ["arcface", "plant", "herbarium", "autotrain", "image-classification", "plantclef"]
SUBSET_TITLES = {
    "all": "All images",
    "field": "Field photos",
    "herbarium": "Herbarium sheets",
    "with_field": "Classes with field training photos",
    "herbarium_only": "Classes without field training photos (herbarium only)",
}
METRIC_TITLES = {"top1": "Top-1", "top5": "Top-5", "mrr": "MRR", "macro_f1": "Macro-F1", "ece": "ECE"}


def format_metric(value: Any) -> str:
    """The one formatting used by the card tables (tests compare them with metrics.json)."""
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "n/a"
    return f"{float(value):.4f}"


def metrics_table(report: Mapping[str, Mapping[str, Any]]) -> str:
    """A Markdown table: one row per subset (all, field, herbarium, groups), one column per metric."""
    header = "| Subset | Images | " + " | ".join(METRIC_TITLES[m] for m in METRIC_NAMES) + " |"
    rows = [header, "|" + " --- |" * (2 + len(METRIC_NAMES))]
    for subset, values in report.items():
        cells = [format_metric(values.get(m)) for m in METRIC_NAMES]
        title = SUBSET_TITLES.get(subset, subset)
        rows.append(
            f"| {title} (`{subset}`) | {format_metric(values.get('n'))} | " + " | ".join(cells) + " |"
        )
    return "\n".join(rows)


def _card_data(params: Mapping[str, Any], metrics: Mapping[str, Any], project_name: str):
    from huggingface_hub import EvalResult, ModelCardData

    model = params.get("model")
    data_path = params.get("data_path") or f"{project_name}/autotrain-data"
    eval_results = []
    for split in ("test", "validation"):
        report = metrics.get(split)
        if not report:
            continue
        subset = "field" if "field" in report else "all"
        dataset_type = data_path if is_hub_id(data_path, namespaced=True) else "imagefolder"
        for key, mtype in (
            ("top1", "accuracy"),
            ("top5", "top_5_accuracy"),
            ("mrr", "mrr"),
            ("macro_f1", "f1"),
        ):
            value = report[subset].get(key)
            if value is None or (isinstance(value, float) and np.isnan(value)):
                continue
            eval_results.append(
                EvalResult(
                    task_type="image-classification",
                    task_name="Image Classification",
                    dataset_type=dataset_type,
                    dataset_name=f"{os.path.basename(data_path.rstrip('/')) or data_path} ({subset} photos)",
                    dataset_split=split,
                    metric_type=mtype,
                    metric_name=f"{'Field' if subset == 'field' else 'All'} {METRIC_TITLES[key]} ({split})",
                    metric_value=round(float(value), 4),
                )
            )
    return ModelCardData(
        library_name="transformers",
        pipeline_tag="image-classification",
        base_model=model.removeprefix("hf-hub:") if is_hub_id(model, namespaced=True) else None,
        datasets=[data_path] if is_hub_id(data_path, namespaced=True) else None,
        tags=CARD_TAGS,
        model_name=project_name,
        eval_results=eval_results or None,
    )


def render_model_card(
    params: Mapping[str, Any],
    metrics: Mapping[str, Any],
    class_names: Sequence[str],
    tsne_file: str | None = None,
    repo_id: str | None = None,
    reliability_file: str | None = None,
    confusions_file: str | None = None,
) -> str:
    """The ``README.md`` of the model folder.

    Args:
        params: The training parameters without the token (``params.public_dict()``).
        metrics: The content of ``metrics.json``.
        class_names: Label order.
        tsne_file: Relative path of the embedding map picture (t-SNE, or UMAP when
            ``params["embedding_map"]`` is ``"umap"``), when written.
        repo_id: Hub repository (for the usage snippet); default: the local folder.
        reliability_file: Relative path of the reliability diagram, when written.
        confusions_file: Relative path of the most-confused-pairs figure, when written.
    """
    project = params.get("project_name", "model")
    lines = ["---", _card_data(params, metrics, project).to_yaml(), "---", ""]
    lines += _intro_lines(params, metrics, class_names, project)
    lines += _usage_lines(repo_id or project)
    lines += _metrics_lines(metrics)
    lines += evaluation_lines(metrics, confusions_file)
    lines += _selection_and_calibration(params, metrics, reliability_file)
    if tsne_file:
        method = MAP_TITLES.get(params.get("embedding_map") or "tsne", "t-SNE")
        lines += [
            f"## Embeddings ({method})",
            "",
            f"![{method} of the embeddings, coloured by species; circles: field photos, triangles: herbarium "
            f"sheets]({tsne_file})",
            "",
        ]
    lines += ["## Training parameters", "", "```json", _json(params), "```", ""]
    return "\n".join(lines)


def _training_discarded(metrics: Mapping[str, Any]) -> bool:
    """True when WiSE-FT selection kept alpha 0: the saved weights are the starting model."""
    wise = metrics.get("wise_ft") or {}
    return bool(wise.get("selection")) and float(wise.get("alpha", 1.0)) == 0.0


def _intro_lines(
    params: Mapping[str, Any], metrics: Mapping[str, Any], class_names: Sequence[str], project: str
) -> list[str]:
    """Card lines: title, what the model is, classes, ArcFace and training settings."""
    classes = metrics.get("classes", {})
    return [
        f"# {project}: herbarium-to-field plant identification (ArcFace)",
        "",
        f"An ArcFace-headed `{params.get('model')}` backbone "
        + (
            "(its fine-tuning was discarded: see below) trained with"
            if _training_discarded(metrics)
            else "fine-tuned with"
        )
        + " AutoTrain's "
        "`image_classification_custom` trainer to recognise plant species in field photos, including "
        "species that were seen only as herbarium sheets during training. The logits are "
        "`s * cos(theta)` between the L2-normalised embedding and each class centre; the embedding "
        "(`model.embed(pixel_values)`) also serves nearest-specimen search.",
        "",
        f"- Classes: {len(class_names)} ({classes.get('with_field', '?')} with field training photos, "
        f"{classes.get('herbarium_only', '?')} herbarium only)",
        f"- ArcFace: scale {params.get('arcface_scale')}, margin {params.get('arcface_margin')} rad, "
        f"{params.get('arcface_subcenters')} sub-centre(s), embedding {params.get('embedding_dim')}, "
        f"head initialised from {params.get('head_init')}",
        f"- Training: {params.get('epochs')} epochs ({params.get('warmup_epochs')} head-only), sampling "
        f"`{params.get('sampling')}`, augmentation {params.get('augmentation')}, image size "
        f"{metrics.get('image_size', params.get('image_size'))}",
        "",
    ]


def _usage_lines(where: str) -> list[str]:
    """Card lines: the ``pipeline`` snippet for the model at ``where`` (Hub id or folder)."""
    return [
        "## Usage",
        "",
        "```python",
        "from transformers import pipeline",
        "",
        f'classifier = pipeline("image-classification", model="{where}", trust_remote_code=True)',
        'print(classifier("field_photo.jpg", top_k=5))',
        "```",
        "",
        "The model code (`configuration_arcface.py`, `modeling_arcface.py`: inference only) ships in this "
        "repository; it needs torch and transformers (and timm for a timm backbone) and never downloads the "
        "original backbone weights.",
        "",
    ]


def _metrics_lines(metrics: Mapping[str, Any]) -> list[str]:
    """Card lines: the metrics table of each evaluation split, then the "before training" tables."""
    lines = []
    for split in ("validation", "test"):
        report = metrics.get(split)
        if report:
            lines += [f"## Metrics: {split} split", "", metrics_table(report), ""]
    for split, report in (metrics.get("baseline_prototypes") or {}).items():
        lines += [
            f"### Before training: {split} split (frozen pretrained backbone, class-mean prototypes)",
            "",
            metrics_table(report),
            "",
        ]
    lines += [
        "MRR is the mean reciprocal rank of the true species (PlantCLEF's metric); macro-F1 averages the "
        "classes present in each subset; ECE is the expected calibration error of the top-1 confidence "
        "(15 bins).",
        "",
    ]
    return lines


def _search_lines(metrics: Mapping[str, Any]) -> list[str]:
    """Card lines on the hyperparameter search, when there was one."""
    search = metrics.get("hp_search")
    if not search:
        return []
    values = ", ".join(f"`{k}` {v:.3g}" for k, v in search["params"].items())
    lines = [
        f"- {values}: the best of a hyperparameter search of {search['n_trials']} trials (Optuna, "
        f"{search['metric']} {search['best_score']:.3f}; every trial in `hp_search.md`)."
    ]
    if search.get("beat_start") is False:
        lines.append(
            "- **Training did not beat the starting model on the field validation photos** in the "
            f"hyperparameter search (best trial {search['best_score']:.3f}, starting model "
            f"{search['start_score']:.3f}): the WiSE-FT alpha was then chosen on the field validation photos, "
            "alpha 0 being the starting model (pretrained backbone, class-mean prototypes)."
        )
    return lines


def _selection_and_calibration(
    params: Mapping[str, Any], metrics: Mapping[str, Any], reliability_file: str | None
) -> list[str]:
    """Card lines: how the weights were chosen (validation or not, WiSE-FT) and how confidences were set."""
    lines = ["## How the saved weights and confidences were chosen", "", *_search_lines(metrics)]
    if metrics.get("best_model_metric"):
        lines.append(f"- The epoch with the best validation `{metrics['best_model_metric']}` was kept.")
    else:
        lines.append(
            "- **No field validation photos were available**: no epoch could be selected and there was no "
            "early stopping; the last epoch was kept, with the defaults that the real-data benchmark showed "
            "safe without selection."
        )
    best = (metrics.get("training") or {}).get("best_checkpoint")
    if metrics.get("best_model_metric") and best:
        lines.append(f"- Checkpoint kept: `{os.path.basename(str(best))}`.")
    wise = metrics.get("wise_ft") or {}
    alpha = wise.get("alpha", 1.0)
    selection = wise.get("selection")
    if selection and alpha == 0.0:
        lines.append(
            "- **Training did not beat the starting model on the field validation photos** (MRR by WiSE-FT "
            "alpha: "
            + ", ".join(f"{float(a):g}: {m:.3f}" for a, m in selection["validation_mrr"].items())
            + "): the saved weights are the starting model (pretrained backbone, class-mean prototypes) and "
            'the fine-tuned weights were discarded, so the results above equal the "before training" ones.'
        )
    elif selection:
        scores = ", ".join(f"{float(a):g}: {m:.3f}" for a, m in selection["validation_mrr"].items())
        lines.append(
            f"- WiSE-FT alpha {alpha:g} chosen on the field validation photos (MRR by alpha: {scores}; alpha 0 "
            "is the starting model: pretrained backbone and class-mean prototypes)."
        )
    elif alpha < 1.0:
        lines.append(
            f"- WiSE-FT: the weights are {1 - alpha:g} x the starting model (pretrained backbone, class-mean "
            f"prototypes) + {alpha:g} x the fine-tuned one."
        )
    else:
        lines.append("- WiSE-FT alpha 1: the fine-tuned weights as they are.")
    cal = metrics.get("calibration") or {}
    if cal.get("temperature") is not None:
        lines.append(
            f"- Confidences: logits are divided by a temperature T = {float(cal['temperature']):.3g} "
            f"({cal.get('source', '')})."
        )
        herb = next(
            (
                metrics[s]["herbarium_only"]
                for s in ("test", "validation")
                if "herbarium_only" in (metrics.get(s) or {})
            ),
            None,
        )
        lines.append(
            "- **Confidence for species known only from herbarium sheets is not calibrated**: no field photo of "
            "them was available to fit T on"
            + (
                f" (their ECE here: {herb['ece']:.2f}, top-1 {herb['top1']:.2f})"
                if herb and "ece" in herb
                else ""
            )
            + "; treat a confident answer naming one of them with care."
        )
    lines.append("")
    if reliability_file:
        lines += [f"![Reliability diagram of the field photos]({reliability_file})", ""]
    return lines


def plot_reliability(reliability: Mapping[str, Sequence[Mapping[str, float]]], path: str) -> None:
    """Reliability diagram: accuracy against mean top-1 confidence per bin, one line per split."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=100)
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
    for split, rows in reliability.items():
        if rows:
            ax.plot(
                [r["confidence"] for r in rows],
                [r["accuracy"] for r in rows],
                marker="o",
                label=f"{split} (field)",
            )
    ax.set_xlabel("top-1 confidence")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title("Reliability of the field photos")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _json(params: Mapping[str, Any]) -> str:
    import json

    return json.dumps({k: v for k, v in params.items() if k != "token"}, indent=2)


@dataclass(frozen=True)
class TsnePlot:
    """What :func:`plot_tsne` drew, read back from the figure's scatter layers.

    Attributes:
        path: the PNG.
        coordinates: ``(N, 2)`` t-SNE map of the input embeddings, in input order.
        points: ``(M, 2)`` the scatter points as drawn (field photos first, then herbarium sheets).
        colours: ``(M, 4)`` RGBA face colour of each drawn point.
        domains: ``(M,)`` the domain each drawn point is marked as (``FIELD`` circle, ``HERBARIUM``
            triangle).
    """

    path: str
    coordinates: np.ndarray
    points: np.ndarray
    colours: np.ndarray
    domains: np.ndarray


def species_colour(label: int, num_classes: int) -> tuple[float, float, float, float]:
    """The RGBA colour of class ``label`` in the t-SNE figure (tab10, or tab20 above 10 classes; the
    colours repeat beyond them)."""
    import matplotlib

    cmap = matplotlib.colormaps["tab20" if num_classes > 10 else "tab10"]
    return cmap(int(label) % cmap.N)


_TSNE_LAYERS = ((FIELD, "o", "field"), (HERBARIUM, "^", "herbarium"))


def plot_tsne(
    embeddings: np.ndarray,
    labels: np.ndarray,
    domains: np.ndarray,
    class_names: Sequence[str],
    out_path: str,
    seed: int = 0,
    title: str = "t-SNE of the ArcFace embeddings",
    method: str = "tsne",
) -> TsnePlot:
    """2-D map (``embedding_map.map_coordinates``: t-SNE, or UMAP; above ``DEFAULT_MAX_POINTS`` fitted on a
    sample with every species, the rest placed) of ``embeddings``, coloured by species
    (:func:`species_colour`), marker by domain (o field, ^ herbarium).

    Args:
        embeddings: ``(N, D)``.
        labels: ``(N,)`` class ids.
        domains: ``(N,)`` 0 herbarium, 1 field.
        class_names: Label order (legend when there are at most 20 classes).
        out_path: PNG path.
        seed: map seed.
        title: Figure title.
        method: ``"tsne"`` or ``"umap"``.

    Returns:
        The drawn points (:class:`TsnePlot`).

    Raises:
        ValueError: fewer than 5 points.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(embeddings)
    if n < 5:
        raise ValueError(f"a map needs at least 5 points, got {n}")
    coords = map_coordinates(embeddings, method, random_state=seed, labels=labels)
    labels, domains = np.asarray(labels), np.asarray(domains)
    fig, ax = plt.subplots(figsize=(7.5, 6.5), dpi=120)
    for domain, marker, name in _TSNE_LAYERS:
        mask = domains == domain
        if mask.any():
            ax.scatter(
                coords[mask, 0],
                coords[mask, 1],
                c=[species_colour(c, len(class_names)) for c in labels[mask]],
                marker=marker,
                s=22,
                alpha=0.8,
                linewidths=0.3,
                edgecolors="black",
                label=name,
            )
    _tsne_legend(ax, labels, class_names)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(out_path, bbox_inches="tight")
    drawn = _drawn_points(ax)
    plt.close(fig)
    return TsnePlot(out_path, coords, *drawn)


def _tsne_legend(ax: Any, labels: np.ndarray, class_names: Sequence[str]) -> None:
    """The markers' meaning, and the species' colours when at most 20 species are plotted."""
    import matplotlib.pyplot as plt

    handles = [
        plt.Line2D([], [], marker="o", linestyle="", color="grey", label="field photo"),
        plt.Line2D([], [], marker="^", linestyle="", color="grey", label="herbarium sheet"),
    ]
    present = sorted(set(labels.tolist()))
    if len(present) <= 20:
        handles += [
            plt.Line2D(
                [],
                [],
                marker="s",
                linestyle="",
                color=species_colour(c, len(class_names)),
                label=class_names[c],
            )
            for c in present
        ]
    ax.legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)


def _drawn_points(ax: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(points (M, 2), colours (M, 4), domains (M,))`` of the scatter layers of ``ax``."""
    domain_of = {name: domain for domain, _, name in _TSNE_LAYERS}
    layers = [c for c in ax.collections if c.get_label() in domain_of]
    if not layers:
        return np.zeros((0, 2)), np.zeros((0, 4)), np.zeros(0, dtype=np.int64)
    return (
        np.concatenate([np.asarray(c.get_offsets()) for c in layers]),
        np.concatenate([c.get_facecolors() for c in layers]),
        np.concatenate([np.full(len(c.get_offsets()), domain_of[c.get_label()]) for c in layers]),
    )
