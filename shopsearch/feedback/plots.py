"""PNG plots of a feedback report (matplotlib, headless)."""
from __future__ import annotations

from pathlib import Path

from shopsearch.feedback.figures import CTR_KS, Figures, FeedbackReport


def _bars(path: Path, title: str, groups: dict[str, Figures], series: dict[str, str]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(groups)
    x = np.arange(len(names))
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(names) + 2), 3.6))
    for i, (label, attr) in enumerate(series.items()):
        values = [_value(groups[n], attr) for n in names]
        ax.bar(x + i * width - 0.4 + width / 2, [v or 0.0 for v in values], width, label=label)
    ax.set_xticks(x, [n if len(n) <= 18 else n[:17] + "…" for n in names], rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _value(f: Figures, attr: str) -> float | None:
    if attr.startswith("ctr@"):
        return f.ctr[int(attr[4:])]
    return getattr(f, attr)


def write_plots(report: FeedbackReport, out: Path) -> list[Path]:
    """ctr_by_build.png, mrr_by_build.png, by_category.png under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    ctr = {f"CTR@{k}": f"ctr@{k}" for k in CTR_KS}
    mrr = {"MRR clicked": "mrr_clicked", "MRR confirmed": "mrr_confirmed", "no close match": "no_match"}
    return [_bars(out / "ctr_by_build.png", "Click-through by build", report.by_build, ctr),
            _bars(out / "mrr_by_build.png", "Reciprocal rank and 'no close match' by build", report.by_build, mrr),
            _bars(out / "by_category.png", "By category (first product shown)", report.by_category,
                  {"CTR@5": "ctr@5", **mrr})]
