"""The build report (``prep_report.json``) and its short console summary."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from data_prep.contract import SPLITS
from data_prep.discovery import Discovery
from data_prep.findings import FIXED, REASONS, SKIPPED, Finding
from data_prep.splits import VALIDATION_RULE


def per_class_counts(classes: list[str], rows: dict[str, list[tuple[str, str]]]) -> dict[str, dict[str, int]]:
    """``{class: {train_herbarium, train_field, validation, test}}`` from ``{split: [(label, domain)]}``."""
    counts = {c: {"train_herbarium": 0, "train_field": 0, "validation": 0, "test": 0} for c in classes}
    for split, pairs in rows.items():
        for label, domain in pairs:
            key = f"train_{domain}" if split == "train" else split
            counts[label][key] += 1
    return counts


def balance_figures(per_class: dict[str, dict[str, int]]) -> dict[str, Any]:
    """Imbalance summary of the training pool (train + validation): share of field photos, max/min ratio."""
    totals = {c: v["train_herbarium"] + v["train_field"] + v["validation"] for c, v in per_class.items()}
    herbarium = sum(v["train_herbarium"] for v in per_class.values())
    field = sum(v["train_field"] + v["validation"] for v in per_class.values())
    nonzero = [t for t in totals.values() if t > 0]
    return {
        "herbarium_images": herbarium,
        "field_images": field,
        "field_share": round(field / (herbarium + field), 4) if herbarium + field else 0.0,
        "largest_class": max(nonzero, default=0),
        "smallest_class": min(nonzero, default=0),
        "imbalance_ratio": round(max(nonzero) / min(nonzero), 2) if nonzero else 0.0,
    }


NO_VALIDATION = "none: no species has enough field photos"
NO_VALIDATION_EFFECT = (
    "the trainer runs without validation: no epoch selection (the last epoch is kept), no early stopping"
)


def validation_split_summary(per_class: dict[str, dict[str, int]], val_fraction: float | None) -> str:
    """One line on the validation split: its size, or ``none: <why>`` when it is empty."""
    with_val = [v["validation"] for v in per_class.values() if v["validation"]]
    if with_val:
        return f"{sum(with_val)} field photos of {len(with_val)} of {len(per_class)} species"
    if val_fraction is not None and val_fraction <= 0:
        return "none: val_fraction is 0"
    return f"{NO_VALIDATION} (a species needs at least 2 field photos outside the test set to give one to validation)"


def make_report(
    discovery: Discovery,
    out: Path | None,
    classes: list[str],
    rows: dict[str, list[tuple[str, str]]],
    findings: list[Finding],
    *,
    settings: dict[str, Any],
    stats: dict[str, Any],
) -> dict[str, Any]:
    """Assemble the JSON-serialisable report written to ``<out>/prep_report.json``.

    Args:
        discovery: what was read (its root and layout are reported).
        out: the output folder (None: nothing written).
        classes: the label names, in label order.
        rows: ``{split: [(label, domain), ...]}`` of the dataset's rows.
        findings: every finding, in report order.
        settings: the build options (``val_fraction``, ``max_side``, ...).
        stats: counters and timings.
    """
    per_class = per_class_counts(classes, rows)
    counts = {
        split: dict(Counter(domain for _, domain in rows[split]) | {"total": len(rows[split])})
        for split in SPLITS
        if split in rows
    }
    return {
        "source": str(discovery.root),
        "layout": discovery.layout,
        "out": str(out) if out is not None else None,
        "settings": settings,
        "classes": classes,
        "num_classes": len(classes),
        "splits": counts,
        "per_class": per_class,
        "classes_without_field_training_images": [
            c for c, v in per_class.items() if v["train_field"] + v["validation"] == 0
        ],
        "classes_without_training_images": [
            c for c, v in per_class.items() if v["train_herbarium"] + v["train_field"] + v["validation"] == 0
        ],
        "classes_left_out": [f.path for f in findings if f.reason == "class_without_images"],
        "balance": balance_figures(per_class),
        "validation_split": validation_split_summary(per_class, settings.get("val_fraction")),
        "validation_rule": VALIDATION_RULE,
        "findings": [f.to_dict() for f in findings],
        "finding_counts": dict(sorted(Counter(f.reason for f in findings).items())),
        "skipped": sum(f.action == SKIPPED for f in findings),
        "fixed": sum(f.action == FIXED for f in findings),
        "stats": stats,
    }


def format_summary(report: dict[str, Any], max_fixed: int = 10) -> str:
    """Short human summary: split and per-class counts, the validation split (or why there is none),
    classes without field images, every skipped file."""
    lines = [
        f"{report['num_classes']} classes, layout {report['layout']}: {report['source']}"
        + (f" -> {report['out']}" if report["out"] else "")
    ]
    lines.append(f"{'split':<12}{'herbarium':>10}{'field':>8}{'total':>8}")
    for split, c in report["splits"].items():
        lines.append(f"{split:<12}{c.get('herbarium', 0):>10}{c.get('field', 0):>8}{c['total']:>8}")
    validation = report.get("validation_split")
    if validation:
        lines.append(f"validation split: {validation}")
        if validation.startswith("none"):
            lines.append(f"  {NO_VALIDATION_EFFECT}")
    width = max([len(c) for c in report["classes"]] + [5]) + 2
    lines.append("")
    lines.append(f"{'class':<{width}}{'herb':>6}{'field':>7}{'val':>6}{'test':>6}")
    for name, v in report["per_class"].items():
        lines.append(
            f"{name:<{width}}{v['train_herbarium']:>6}{v['train_field']:>7}{v['validation']:>6}{v['test']:>6}"
        )
    missing = report["classes_without_field_training_images"]
    lines.append("")
    lines.append(f"classes without field training images ({len(missing)}): {', '.join(missing) or '-'}")
    untrained = report.get("classes_without_training_images", [])
    if untrained:
        lines.append(
            f"classes without any training image ({len(untrained)}, the trainer leaves them out): "
            + ", ".join(untrained)
        )
    left_out = report.get("classes_left_out", [])
    if left_out:
        lines.append(
            f"species left out of the label set, every file skipped ({len(left_out)}): {', '.join(left_out)}"
        )
    b = report["balance"]
    lines.append(
        f"balance: field share {b['field_share']:.1%}, class sizes {b['smallest_class']}..{b['largest_class']}"
        f" (ratio {b['imbalance_ratio']})"
    )
    skipped = [f for f in report["findings"] if f["action"] == SKIPPED]
    lines.append(f"skipped ({len(skipped)}):")
    for f in skipped:
        lines.append(f"  {f['path']}: {f['reason']}" + (f" ({f['detail']})" if f["detail"] else ""))
    fixed = [f for f in report["findings"] if f["action"] == FIXED]
    lines.append(
        f"fixed ({len(fixed)}):"
        + (f" first {max_fixed} shown, all in prep_report.json" if len(fixed) > max_fixed else "")
    )
    for f in fixed[:max_fixed]:
        lines.append(f"  {f['path']}: {f['reason']} ({f['detail']})")
    other = [f for f in report["findings"] if f["action"] not in (SKIPPED, FIXED)]
    for f in other:
        lines.append(f"note: {f['path']}: {f['reason']} - {REASONS.get(f['reason'], '')}")
    stats = report["stats"]
    if stats.get("images_per_s"):
        lines.append(
            f"{stats['files']} files in {stats['seconds']:.1f} s ({stats['images_per_s']:.0f} img/s); "
            f"{stats['resized']} downsized, {stats['stored_original']} stored as original bytes"
        )
    return "\n".join(lines)
