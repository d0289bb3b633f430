"""Generate benchmarks/RESULTS.md from benchmarks/results/*.json.

    python benchmarks/make_results.py            # rewrites benchmarks/RESULTS.md

Knows the recall benchmark (`shopsearch bench recall --json`), the ANN benchmark
(benchmarks/ann_bench.py) and renders any other results file (e.g. the embedding
throughput benchmark's) generically: its scalar fields and its lists of rows as tables.
Every section names the machine its figures came from."""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

#: the commands behind the files in results/ (run from the repository root), one shell line each
REPRODUCE = (HERE / "reproduce.txt").read_text().splitlines()


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 10 else f"{v:,.1f}"
    if isinstance(v, dict):
        return ", ".join(f"{k}={_fmt(x)}" for k, x in v.items())
    if isinstance(v, list):
        return ", ".join(_fmt(x) for x in v)
    return str(v).replace("|", "\\|")


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
           ["| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows]


def machine_line(m: dict | str | None, obj: dict | None = None) -> str:
    if isinstance(m, str):
        return f"Machine: {m}."
    if not m:
        hints = {k: obj[k] for k in ("device", "cpus", "load_avg_1m", "measured_at") if obj and k in obj}
        return (f"Machine (from the file's own fields): {_fmt(hints)}." if hints else "_Machine not recorded._")
    if "cpu_model" not in m:
        return f"Machine: {_fmt(m)}."
    return (f"Machine: {m.get('cpu_model', '?')}, {m.get('cpu_count', '?')} cores"
            f"{', ' + str(m['memory_gib']) + ' GiB RAM' if m.get('memory_gib') else ''}, {m.get('platform', '?')}; "
            f"Python {m.get('python', '?')}, torch {m.get('torch', '?')}, faiss {m.get('faiss', '?')}; "
            f"recorded {m.get('recorded_at', '?')}"
            f"{'; load average ' + str(m['load_avg_1m']) + ' (shared machine: latencies vary with it)' if m.get('load_avg_1m') is not None else ''}.")


# -- recall ----------------------------------------------------------------------------
_RECALL_KEYS = {"recall_at", "map_at", "mrr", "ndcg_at", "queries", "gallery", "model", "index"}


def is_recall(obj: dict) -> bool:
    """The shape `shopsearch bench recall --json` prints (one configuration or several)."""
    configs = obj.get("configs") if "configs" in obj else [obj]
    return isinstance(configs, list) and bool(configs) and all(
        isinstance(c, dict) and _RECALL_KEYS <= set(c) for c in configs)


def render_recall(name: str, obj: dict) -> list[str]:
    configs = obj["configs"] if "configs" in obj else [obj]
    machine = obj.get("machine") or configs[0].get("machine")
    d = configs[0].get("dataset", {})
    ks = sorted({int(k) for c in configs for k in c["recall_at"]})
    kmax = str(max(ks))
    lines = [f"### {name}", "",
             f"Dataset `{d.get('name')}` ({d.get('layout')}, relevance: {d.get('relevance')} match), "
             f"queries `{d.get('queries')}`: {configs[0]['queries']} scored. Recall@k = share of queries with a "
             "relevant product among the first k distinct products.", ""]
    header = ["configuration", "gallery"] + [f"R@{k}" for k in ks] + \
             [f"mAP@{kmax}", "MRR", f"NDCG@{kmax}", "search p50/p95/p99 ms", "total p50/p95/p99 ms", "gallery img/s"]
    rows = []
    for c in configs:
        lat = c.get("latency_ms", {})
        trip = lambda s: "/".join("-" if lat.get(s, {}).get(p) is None else f"{lat[s][p]:.1f}"  # noqa: E731
                                  for p in ("p50", "p95", "p99"))
        g = c.get("gallery_build", {})
        rows.append([c.get("name", c["model"]), f"{c.get('dataset', {}).get('gallery')} ({c['gallery']} img)"]
                    + [c["recall_at"].get(str(k)) for k in ks]
                    + [c["map_at"].get(kmax), c["mrr"], c["ndcg_at"].get(kmax), trip("search"), trip("total"),
                       f"{g['images_per_s']:.1f}" if g.get("images_per_s") else "cached"])
    lines += _table(header, rows)
    lines += ["", "Total latency = one query image decoded + embedded alone, plus the grouped search "
                  f"(sampled on {configs[0].get('latency_ms', {}).get('embed_samples', '?')} queries).", ""]
    lines += _open_set_lines(configs)
    lines += [machine_line(machine), ""]
    return lines


def _open_set_lines(configs: list[dict]) -> list[str]:
    """`--open-set`: how well the calibrated confidence says "no close match"."""
    rows = [[c.get("name", c["model"]), _calibrated_on(o.get("calibration", {})), o["fraction"], o["seed"],
             f"{o['queries_in_catalogue']}/{o['queries_not_in_catalogue']}", o["auroc"], o["ece"],
             o.get("top1_accuracy_in_catalogue"), o["match_shares"]["in_catalogue"].get("none"),
             o["match_shares"]["not_in_catalogue"].get("none")]
            for c in configs if (o := c.get("open_set"))]
    if not rows:
        return []
    return ["Open set: a seeded share of products removed from the gallery; the confidence is calibrated on "
            "the rest and scored on photos of kept and removed products.", ""] + _table(
        ["configuration", "calibrated on", "removed", "seed", "queries in/out", "AUROC", "ECE (15 bins)",
         "top-1 acc (in)", "'none' share (in)", "'none' share (out)"], rows) + [""]


def _calibrated_on(cal: dict) -> str:
    """How the open set's calibration was fitted (older files: leave-one-out, features score+lead)."""
    if cal.get("method") == "labelled":
        how = f"labelled photos ({cal.get('samples')})"
    else:
        near = cal.get("near_duplicate")
        how = "leave-one-out" + (f", near-duplicates >= {near:g} left out" if near is not None else "")
    return f"{how}; {'+'.join(cal.get('features') or ['score', 'lead'])}"


# -- ANN -------------------------------------------------------------------------------
def render_ann(name: str, obj: dict) -> list[str]:
    lines = [f"### {name}: {obj['n']:,} x {obj['dim']}-d, {obj['queries']} queries, k={obj['k']}", "",
             f"Data: {obj.get('data')}; seed {obj.get('seed')}; FAISS threads {obj.get('faiss_threads')}. "
             "Recall@10 is measured against exact (flat) search of the same queries.", ""]
    rows = []
    for r in obj["indexes"]:
        for s in r["settings"]:
            setting = ", ".join(f"{k}={v}" for k, v in s.items() if k in ("ef_search", "nprobe")) or "exact"
            rows.append([r["index"], r["factory"], setting, s["recall_at_10"], s["qps_batch"],
                         s["single_query_ms"].get("p50"), (s.get("single_query_ms_1thread") or {}).get("p50"),
                         r["build_seconds"], r.get("train_vectors") or "-",
                         r["bytes_per_vector"]])
    lines += _table(["index", "FAISS", "setting", "recall@10", "q/s (batch)", "single p50 ms", "1-thread p50 ms", "build s",
                     "train vectors", "bytes/vector"], rows)
    stale = [(r["index"], r["factory"], now) for r in obj["indexes"]
             if (now := _shipped_factory(r["index"], obj["dim"], obj["n"])) and now != r["factory"]]
    for itype, then, now in stale:
        lines += ["", f"Note: `{itype}` was measured as `{then}`; the code now builds `{now}` for it, so rerun "
                      "this benchmark for current figures."]
    meet = obj.get("smallest_setting_meeting_target", {})
    if meet:
        lines += ["", f"Smallest setting reaching {obj.get('target', 'the target')}: " + "; ".join(
            f"{k}: " + (", ".join(f"{a}={b}" for a, b in v.items() if a in ("ef_search", "nprobe")) or "exact"
                        if v else "none measured") for k, v in meet.items()) + "."]
    lines += ["", machine_line(obj.get("machine")), ""]
    return lines


def _shipped_factory(index_type: str, dim: int, n: int) -> str | None:
    """What VectorIndex builds for this type today (None when the package cannot be imported)."""
    try:
        sys.path.insert(0, str(HERE.parent))
        from shopsearch.index.sizing import factory_string  # noqa: PLC0415
    except ImportError:
        return None
    return factory_string(index_type, dim, n)


# -- anything else (e.g. embedding throughput) ----------------------------------------------
def render_generic(name: str, obj: Any) -> list[str]:
    lines = [f"### {name}", ""]
    if not isinstance(obj, dict):
        return lines + ["```", json.dumps(obj, indent=2)[:4000], "```", ""]
    scalars = [(k, v) for k, v in obj.items() if k != "machine" and not isinstance(v, (dict, list))]
    if scalars:
        lines += _table(["field", "value"], [[k, v] for k, v in scalars]) + [""]
    for key, val in obj.items():
        if key == "machine":
            continue
        if isinstance(val, list) and val and all(isinstance(x, dict) for x in val):
            cols = list(dict.fromkeys(c for x in val for c in x if c != "machine"))
            lines += [f"**{key}**", ""] + _table(cols, [[x.get(c) for c in cols] for x in val]) + [""]
        elif isinstance(val, dict):
            text = _fmt(val)
            if len(text) > 400:  # deep structures stay in the JSON file
                text = text[:400].rsplit(",", 1)[0] + ", … (see the JSON file)"
            lines += [f"**{key}**: {text}", ""]
    return lines + [machine_line(obj.get("machine"), obj), ""]


def is_scale(name: str, obj: Any) -> bool:
    """A scale_bench.py result: runs with per-step seconds."""
    return name.startswith("scale_") and isinstance(obj, dict) and isinstance(obj.get("runs"), list) \
        and all(isinstance(r, dict) and "seconds" in r for r in obj["runs"])


def render_scale(name: str, obj: dict) -> list[str]:
    """The growth table scale_bench.py prints (scale_report.py) (each figure with its factor from the smallest size
    of the same database and run), then the full fields."""
    spec = importlib.util.spec_from_file_location("scale_report", Path(__file__).with_name("scale_report.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    table = bench.markdown(obj["runs"]).split("\n")
    return render_generic(name, obj)[:2] + table + [""] + render_generic(name, obj)[2:]


def generate(results: Path) -> str:
    files = sorted(p for p in results.glob("*.json"))
    recall, ann, other = [], [], []
    for p in files:
        try:
            obj = json.loads(p.read_text())
        except (OSError, ValueError) as e:
            other.append((p.stem, {"error": f"unreadable: {e}"}))
            continue
        if isinstance(obj, dict) and obj.get("benchmark") == "ann":
            ann.append((p.stem, obj))
        elif isinstance(obj, dict) and is_recall(obj):
            recall.append((p.stem, obj))
        else:
            other.append((p.stem, obj))
    lines = ["# Benchmark results", "",
             "_Generated by `python benchmarks/make_results.py` from `benchmarks/results/*.json`; do not edit by "
             "hand. Each section names the machine its figures came from._", ""]
    if recall:
        lines += ["## Retrieval quality (`shopsearch bench recall`)", ""]
        for n, o in recall:
            try:
                lines += render_recall(n, o)
            except (KeyError, TypeError, ValueError, AttributeError):  # a hand-edited file: show it as it is
                lines += render_generic(n, o)
    if ann:
        lines += ["## Approximate nearest-neighbour search (`benchmarks/ann_bench.py`)", ""]
        for n, o in ann:
            lines += render_ann(n, o)
    if other:
        lines += ["## Other results", ""]
        for n, o in other:
            lines += render_scale(n, o) if is_scale(n, o) else render_generic(n, o)
    if not files:
        lines += ["No results yet: run the benchmarks first."]
    lines += ["## Reproducing", "", "```bash", *REPRODUCE, "```"]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", type=Path, default=HERE / "results")
    ap.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    a = ap.parse_args(argv)
    text = generate(a.results)
    a.out.write_text(text)
    print(f"wrote {a.out} ({len(text.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
