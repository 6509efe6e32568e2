"""``dataset_balance.png``: per-class herbarium vs field training counts, sorted (matplotlib Agg)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERBARIUM_COLOUR = "#a0784a"
FIELD_COLOUR = "#3f8f3f"


def save_balance_figure(
    per_class: dict[str, dict[str, int]], path: str | Path, title: str | None = None
) -> Path:
    """Draw stacked horizontal bars (herbarium, field incl. validation) per class, largest at the top.

    Classes without any field training photo are marked with an asterisk.

    Args:
        per_class: ``report["per_class"]``.
        path: PNG to write.
        title: optional title.

    Returns:
        The written path.
    """
    items = sorted(
        per_class.items(),
        key=lambda kv: (kv[1]["train_herbarium"] + kv[1]["train_field"] + kv[1]["validation"], kv[0]),
    )
    names = [f"{n} *" if v["train_field"] + v["validation"] == 0 else n for n, v in items]
    herb = [v["train_herbarium"] for _, v in items]
    field = [v["train_field"] + v["validation"] for _, v in items]
    height = max(3.0, 0.22 * len(items) + 1.2)
    fig, ax = plt.subplots(figsize=(7.5, height))
    ax.barh(names, herb, color=HERBARIUM_COLOUR, label="herbarium")
    ax.barh(names, field, left=herb, color=FIELD_COLOUR, label="field (train + validation)")
    ax.set_xlabel("training images")
    ax.tick_params(axis="y", labelsize=7 if len(items) > 40 else 8)
    ax.margins(y=0.01)
    ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=2, fontsize=8, frameon=False)
    total_h, total_f = sum(herb), sum(field)
    share = total_f / (total_h + total_f) if total_h + total_f else 0.0
    fig.suptitle(
        title or f"Dataset balance: {len(items)} classes, field share {share:.0%} (* = no field photos)",
        fontsize=9,
    )
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
