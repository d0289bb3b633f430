"""The scale benchmark's report (benchmarks/scale_bench.py): growth factors from the smallest
size and the markdown table it prints (benchmarks/make_results.py renders it into RESULTS.md)."""
from __future__ import annotations

#: the steps of a run, in table order (scale_bench.py times them)
STEPS = ("cli_start", "import", "first_build", "noop_build", "noop_build_files", "update_10", "reimport_unchanged",
         "status", "status_deep")
SEARCHES = ("unfiltered", "category", "price", "price_nothing", "department")


def growth(runs: list[dict]) -> None:
    """Each figure divided by the same figure at the smallest size of the same database."""
    for r in runs:
        base = min((b for b in runs if b["db"] == r["db"]), key=lambda b: b["size"])
        r["growth"] = {k: v / base["seconds"][k] for k, v in r["seconds"].items() if base["seconds"].get(k)}
        if "search" not in r or "search" not in base:
            continue
        for kind in SEARCHES:
            if kind not in r["search"] or kind not in base["search"]:  # runs made before the kind existed
                continue
            b = base["search"][kind]["p50_ms"]
            r["growth"][f"search_{kind}_p50"] = r["search"][kind]["p50_ms"] / b if b else None


def _recall(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def markdown(runs: list[dict]) -> str:
    cols = [f"{r['db']} {r['size']:,}" for r in runs]
    lines = ["| measure | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]

    def cell(v: float | None, g: float | None, unit: str) -> str:
        if v is None:
            return "not run"
        return f"{v:.2f} {unit}" + (f" (×{g:.1f})" if g is not None and g != 1.0 else "")

    # (older results timed a no-op build with --rescan-scope dirs: their rows stay readable)
    rows = (*STEPS[:5], "noop_build_dirs", *STEPS[5:])
    for k in [k for k in rows if any(k in r["seconds"] for r in runs)]:
        lines.append(f"| {k.replace('_', ' ')} | " + " | ".join(
            cell(r["seconds"].get(k), r.get("growth", {}).get(k), "s") for r in runs) + " |")
    for kind in SEARCHES:
        for p in ("p50", "p95"):
            lines.append(f"| search {kind.replace('_', ' ')} {p} | " + " | ".join(
                cell(r["search"][kind][f"{p}_ms"] if kind in r.get("search", {}) else None,
                     r.get("growth", {}).get(f"search_{kind}_p50") if p == "p50" else None, "ms")
                for r in runs) + " |")
    if any("ann_recall10" in r.get("search", {}).get("unfiltered", {}) for r in runs):
        lines.append("| unfiltered ANN recall@10 vs exact | " + " | ".join(
            _recall(r.get("search", {}).get("unfiltered", {}).get("ann_recall10")) for r in runs) + " |")
    lines.append("| import products/s | " + " | ".join(f"{r['detail'].get('import_products_per_s', 0):,.0f}"
                                                     for r in runs) + " |")
    lines.append("| index type | " + " | ".join(str(r["detail"].get("index_type")) for r in runs) + " |")
    def load(r: dict) -> str:
        seen = list((r.get("load_avg_1m") or {}).values())
        return f"{min(seen):.1f}-{max(seen):.1f}" if seen else "not recorded"

    lines.append("| load average (1 min) at the steps | " + " | ".join(load(r) for r in runs) + " |")
    return "\n".join(lines)
