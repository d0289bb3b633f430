"""Benchmark results -> one JSON object, a side-by-side terminal table, Markdown and PNG plots."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from shopsearch.evaluation.open_set import plot_precision_coverage
from shopsearch.evaluation.runner import ConfigResult


def _r(x: float | None, n: int = 4) -> float | None:
    return None if x is None else round(float(x), n)


def _kmap(m: dict[int, float]) -> dict[str, float | None]:
    return {str(k): _r(v) for k, v in sorted(m.items())}


def config_json(r: ConfigResult, machine: dict | None = None) -> dict:
    """The flat per-configuration object (the --json output of a single-configuration run)."""
    s, d, lat = r.summary, r.dataset, r.latency_ms
    out = {
        "name": r.config.label,
        "recall_at": _kmap(s.recall_at), "precision_at": _kmap(s.precision_at), "map_at": _kmap(s.map_at),
        "mrr": _r(s.mrr), "ndcg_at": _kmap(s.ndcg_at),
        "per_category": {c: {"queries": v["queries"], "recall_at": _kmap(v["recall_at"]), "map_at": _kmap(v["map_at"]),
                             "mrr": _r(v["mrr"])} for c, v in s.per_category.items()},
        "latency_ms": {k: (_r(v, 3) if isinstance(v, float) or v is None else
                           {kk: _r(vv, 3) for kk, vv in v.items()} if isinstance(v, dict) else v)
                       for k, v in lat.items()},
        "queries": s.queries,
        "gallery": r.gallery_vectors,
        "model": r.model,
        "index": r.index_type,
        "fingerprint": r.fingerprint,
        "index_factory": r.factory,
        "index_params": {"ef_search": r.config.ef_search, "nprobe": r.config.nprobe},
        "routing": r.config.routing,
        "quality": {"tta": r.config.tta, "dba": r.config.dba, "rerank": r.config.rerank, "fusion": r.config.fusion,
                    "shopper_views": r.config.shopper_views, "centre": r.config.centre, "adapt": r.config.adapt,
                    **({"centring": r.centring} if r.centring else {})},
        "dataset": {"name": d.name, "layout": d.layout, "relevance": d.relevance,
                    "gallery": d.gallery_protocol, "queries": d.queries_protocol},
        "ks": list(s.ks),
        "gallery_products": len(d.products),
        "queries_total": r.queries_total,
        "queries_failed": r.queries_failed,
        "queries_unanswerable": s.unanswerable,
        "gallery_build": r.build.to_dict(),
    }
    if r.open_set is not None:
        out["open_set"] = r.open_set.to_dict()
    if machine is not None:
        out["machine"] = machine
    return out


def run_json(results: Sequence[ConfigResult], machine: dict) -> dict:
    """One configuration: its flat object. Several: {"configs": [flat, ...], "machine": ...}."""
    if len(results) == 1:
        return config_json(results[0], machine)
    return {"configs": [config_json(r) for r in results], "machine": machine,
            "ks": list(results[0].summary.ks), "queries": results[0].summary.queries}


# -- text ------------------------------------------------------------------------
def _rows(results: Sequence[ConfigResult]) -> list[tuple[str, list[str]]]:
    ks = results[0].summary.ks
    f = lambda x: "-" if x is None else f"{x:.4f}"  # noqa: E731
    ms = lambda x: "-" if x is None else f"{x:.1f}"  # noqa: E731
    rows = [("model", [r.model for r in results]), ("index", [r.index_type for r in results]),
            ("FAISS", [r.factory for r in results]),
            ("routing", ["on" if r.config.routing else "off" for r in results]),
            ("tta/dba/rerank/fusion", [f"{'on' if r.config.tta else 'off'}/{r.config.dba or 'off'}/{r.config.rerank}/"
                                       f"{'on' if r.config.fusion else 'off'}" for r in results]),
            ("gallery", [f"{r.dataset.gallery_protocol} ({r.gallery_vectors} img)" for r in results]),
            ("queries", [str(r.summary.queries) for r in results])]
    rows += [(f"recall@{k}", [f(r.summary.recall_at[k]) for r in results]) for k in ks]
    rows += [(f"precision@{k}", [f(r.summary.precision_at[k]) for r in results]) for k in ks]
    rows += [(f"mAP@{k}", [f(r.summary.map_at[k]) for r in results]) for k in ks]
    rows += [(f"NDCG@{k}", [f(r.summary.ndcg_at[k]) for r in results]) for k in ks]
    rows.append(("MRR", [f(r.summary.mrr) for r in results]))
    for stage in ("embed", "search", "total"):
        for p in ("p50", "p95", "p99"):
            rows.append((f"{stage} ms {p}", [ms(r.latency_ms[stage][p]) for r in results]))
    rows.append(("gallery img/s", [ms(r.build.images_per_s) if r.build.images_per_s else "cached" for r in results]))
    return rows


def text_table(results: Sequence[ConfigResult]) -> str:
    """Metrics down, configurations across."""
    header = ["metric"] + [r.config.label for r in results]
    rows = [[name] + vals for name, vals in _rows(results)]
    widths = [max(len(str(row[i])) for row in [header] + rows) for i in range(len(header))]
    line = lambda cells: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    out = [line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in rows]
    return "\n".join(out)


def markdown(results: Sequence[ConfigResult], machine: dict, plots: Sequence[str] = ()) -> str:
    d = results[0].dataset
    lines = [f"# Retrieval benchmark: {d.name} ({d.layout})", "",
             f"Relevance: **{d.relevance}** match. Queries: `{d.queries_protocol}` "
             f"({results[0].summary.queries} scored). Recall@k counts a query as found when a relevant product "
             "is among the first k distinct products.", "",
             f"Machine: {machine.get('cpu_model')}, {machine.get('cpu_count')} cores, {machine.get('platform')}; "
             f"torch {machine.get('torch')}, faiss {machine.get('faiss')}; {machine.get('recorded_at')}.", "",
             "| metric | " + " | ".join(r.config.label for r in results) + " |",
             "|---|" + "---|" * len(results)]
    lines += [f"| {name} | " + " | ".join(vals) + " |" for name, vals in _rows(results)]
    k0 = results[0].summary.ks[0]
    cats = sorted({c for r in results for c in r.summary.per_category})
    lines += ["", f"## Per category (recall@{k0}, queries)", "",
              "| category | queries | " + " | ".join(r.config.label for r in results) + " |",
              "|---|---|" + "---|" * len(results)]
    for c in cats:
        n = next((r.summary.per_category[c]["queries"] for r in results if c in r.summary.per_category), 0)
        vals = [f"{r.summary.per_category[c]['recall_at'][k0]:.3f}" if c in r.summary.per_category else "-"
                for r in results]
        lines.append(f"| {c} | {n} | " + " | ".join(vals) + " |")
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


# -- plots -------------------------------------------------------------------------
def plot(results: Sequence[ConfigResult], out: Path) -> list[str]:
    """recall_at_k.png (one curve per configuration) and per_category_recall.png (grouped bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for r in results:
        ks = list(r.summary.ks)
        ax.plot(ks, [r.summary.recall_at[k] for k in ks], marker="o", label=r.config.label)
    ax.set_xscale("log")
    ax.set_xticks(list(results[0].summary.ks))
    ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel("k (distinct products)")
    ax.set_ylabel("recall@k")
    ax.set_ylim(0, 1.02)
    ax.grid(True, alpha=0.3)
    ax.set_title(f"Recall@k: {results[0].dataset.name}, {results[0].summary.queries} queries")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "recall_at_k.png")
    plt.close(fig)
    names.append("recall_at_k.png")

    k0 = results[0].summary.ks[0]
    cats = sorted({c for r in results for c in r.summary.per_category})
    counts = {c: next((r.summary.per_category[c]["queries"] for r in results if c in r.summary.per_category), 0)
              for c in cats}
    labels = [f"{c} ({counts[c]})" for c in cats]
    if len(results) == 1:  # one configuration: bars
        r = results[0]
        fig, ax = plt.subplots(figsize=(8, max(3.0, 0.26 * len(cats) + 1.2)), dpi=110)
        ax.barh(range(len(cats)), [r.summary.per_category[c]["recall_at"][k0] for c in cats], color="#3b75af")
        ax.set_yticks(range(len(cats)))
        ax.set_yticklabels(labels, fontsize=8)
        ax.set_ylim(len(cats) - 0.5, -0.5)  # first category on top, no dead margins
        ax.set_xlim(0, 1)
        ax.set_xlabel(f"recall@{k0}")
        ax.grid(True, axis="x", alpha=0.3)
        ax.set_title(f"Recall@{k0} per category (queries): {r.config.label}", fontsize=10)
    else:  # several: a category x configuration heat map stays readable where grouped bars do not
        import numpy as np

        grid = np.array([[r.summary.per_category.get(c, {}).get("recall_at", {}).get(k0, np.nan) for r in results]
                         for c in cats])
        fig, ax = plt.subplots(figsize=(3.2 + 1.25 * len(results), max(3.0, 0.26 * len(cats) + 2.2)), dpi=110)
        im = ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
        for (i, j), v in np.ndenumerate(grid):
            if not np.isnan(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7)
        ax.set_yticks(range(len(cats)))
        ax.set_yticklabels(labels, fontsize=8)
        ax.set_xticks(range(len(results)))
        ax.set_xticklabels([r.config.label.replace(" ", "\n", 2) for r in results], fontsize=7)
        ax.xaxis.tick_top()
        fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02, label=f"recall@{k0}")
        ax.set_title(f"Recall@{k0} per category (queries)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "per_category_recall.png")
    plt.close(fig)
    names.append("per_category_recall.png")
    return names


def write_outputs(results: Sequence[ConfigResult], machine: dict, out: Path) -> dict[str, Path]:
    """results.json, report.md and the PNGs under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    plots = plot(results, out)
    for r in results:
        if r.open_set is not None:
            name = "precision_coverage.png" if len(results) == 1 else f"precision_coverage_{r.config.label}.png"
            plot_precision_coverage(r.open_set, out / name, r.config.label)
            plots.append(name)
    (out / "results.json").write_text(json.dumps(run_json(results, machine), indent=2) + "\n")
    (out / "report.md").write_text(markdown(results, machine, plots))
    return {"json": out / "results.json", "markdown": out / "report.md", **{p: out / p for p in plots}}
