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

#: the commands behind the files in results/ (run from the repository root)
REPRODUCE = [
    "# retrieval quality: the Grocery Store default protocol (iconic + train photos as gallery, test photos as queries)",
    "shopsearch bench recall --dataset ../shared/datasets/grocerystore --layout grocerystore --no-cache --json \\",
    "    > benchmarks/results/recall_grocerystore_efficientnet-lite0.json",
    "# the same queries against several configurations, side by side (+ report.md and plots under --out)",
    "shopsearch bench recall --dataset ../shared/datasets/grocerystore --config index=flat --config gallery=iconic \\",
    "    --config index=hnsw --config index=ivfflat --config index=ivfpq --json \\",
    "    --out benchmarks/results/recall_grocerystore_efficientnet-lite0 \\",
    "    > benchmarks/results/recall_grocerystore_efficientnet-lite0_configs.json",
    "# ANN recall vs exact search on synthetic vectors",
    "python benchmarks/ann_bench.py --n 100000",
    "python benchmarks/ann_bench.py --n 1000000 --queries 500 --single 50 --types flat,hnsw,ivfpq \\",
    "    --ef 16,32,64,128 --nprobe 4,16,64 --train-sample 40000",
    "# embedding throughput (see benchmarks/throughput_bench.py)",
    "python benchmarks/throughput_bench.py",
    "# int8 on a CPU without bf16: calibrate on the catalogue photos, then recall and throughput against fp32",
    "shopsearch --data-dir var model quantize --from ../shared/datasets/grocerystore/dataset/train --images 128",
    "shopsearch --data-dir var bench recall --dataset ../shared/datasets/grocerystore \\",
    "    --config model=efficientnet-lite0 --config model=efficientnet-lite0+int8 --json \\",
    "    > benchmarks/results/recall_grocerystore_efficientnet-lite0_int8.json",
    "SHOPSEARCH_DATA_DIR=var python benchmarks/throughput_bench.py --precision int8 --images 4096 --repeats 2",
    "# what a decoder crash costs (process pool replaced; threaded run killed, then recovered by the crash journal)",
    "python benchmarks/crash_bench.py",
    "python benchmarks/crash_bench.py --model efficientnet-lite0 --images 512",
    "# bf16 against fp32 (and the old autocast path), interleaved in one process",
    "python benchmarks/bf16_bench.py --model openclip:ViT-B-32 --images 64 --rounds 2 \\",
    "    --out benchmarks/results/bf16_openclip-ViT-B-32_cpu.json",
    "python benchmarks/bf16_bench.py --model efficientnet-lite0 --images 128 --rounds 2 \\",
    "    --out benchmarks/results/bf16_efficientnet-lite0_cpu.json",
    "# queries: stage times in process, then before/after over HTTP (one client, then 4), A B A B",
    "python benchmarks/query_profile.py --data-dir /tmp/speeddemo --out benchmarks/results/query_profile.json",
    "python benchmarks/load_bench.py --data-dir /tmp/speeddemo --no-prepare --server-repo /tmp/speed-base \\",
    "    --workers 1 --threads 4 --concurrency 4 --duration 15 --sequential 15 --out before-1.json",
    "# the same, several checkouts and server configurations in turns (NAME=CHECKOUT:WORKERSxTHREADS[:TORCH])",
    "python benchmarks/load_ab.py --data-dir /tmp/speeddemo --variant before=/tmp/speed-base:1x4 \\",
    "    --variant after=.:1x4 --variant after-2x2=.:2x2 --variant after-1x4-t1=.:1x4:1 --rounds 2",
    "# the query model chosen at start-up (bf16 where the CPU has it) against fp32: first products, Grocery test",
    "python benchmarks/query_model_check.py --data-dir /tmp/speeddemo --out benchmarks/results/query_model_check.json",
    "# issue 18's query figures on an idle machine: BASE=<checkout of main before> STEPS=queries \\",
    "#     DATA=<demo data dir> bash benchmarks/speed_rerun.sh",
    "# side by side with clip-retrieval 2.45 (its own venv under var/), same checkpoint, same photos",
    "python benchmarks/clip_retrieval_bench.py --images 1000 --rounds 2",
    "# search quality without a GPU, step by step (issue 13): head + fusion weight on train/val, then the steps",
    "shopsearch --data-dir var classify train --model efficientnet-lite0 \\",
    "    --train grocerystore:../shared/datasets/grocerystore:train+iconic --val grocerystore:../shared/datasets/grocerystore:val",
    "shopsearch --data-dir var bench recall --dataset ../shared/datasets/grocerystore \\",
    "    --config benchmarks/configs/quality_grocerystore.toml --json > benchmarks/results/recall_grocerystore_quality.json",
    "# iconic-only catalogue: per-domain mean centring (issue 13); val first (settings), then test",
    "shopsearch --data-dir var bench recall --dataset ../shared/datasets/grocerystore --gallery iconic --queries val \\",
    "    --config benchmarks/configs/quality_iconic_val_grocerystore.toml --json \\",
    "    > benchmarks/results/recall_grocerystore_quality_iconic_val.json",
    "shopsearch --data-dir var bench recall --dataset ../shared/datasets/grocerystore --gallery iconic \\",
    "    --centre-sample val --latency-samples 8 --config benchmarks/configs/quality_iconic_grocerystore.toml \\",
    "    --json > benchmarks/results/recall_grocerystore_quality_iconic.json",
    "# iconic-only catalogue + adaptation to unlabelled shopper photos (train split, labels unused); val, then test",
    "shopsearch --data-dir var bench recall --dataset ../shared/datasets/grocerystore --gallery iconic --queries val \\",
    "    --centre-sample train --latency-samples 4 --config benchmarks/configs/quality_iconic_adapt_val_grocerystore.toml \\",
    "    --json > benchmarks/results/recall_grocerystore_quality_iconic_adapt_val.json",
    "shopsearch --data-dir var bench recall --dataset ../shared/datasets/grocerystore --gallery iconic \\",
    "    --centre-sample train --latency-samples 4 --config benchmarks/configs/quality_iconic_adapt_grocerystore.toml \\",
    "    --json > benchmarks/results/recall_grocerystore_quality_iconic_adapt.json",
    "# iconic-only catalogue as `index build` serves it (centred, adapted, 8 shopper views blended: --views auto);",
    "# how to use the views chosen on val first (benchmarks/iconic_views_grocerystore.py), then val and test",
    "python benchmarks/iconic_views_grocerystore.py --dataset ../shared/datasets/grocerystore --extract",
    "python benchmarks/iconic_views_grocerystore.py --split val --out benchmarks/results/iconic_views_grocerystore_val.json",
    "shopsearch --data-dir var bench recall --dataset ../shared/datasets/grocerystore --gallery iconic --queries val \\",
    "    --centre-sample train --latency-samples 4 --config benchmarks/configs/quality_iconic_views_served_val_grocerystore.toml \\",
    "    --json > benchmarks/results/recall_grocerystore_quality_iconic_views_served_val.json",
    "shopsearch --data-dir var bench recall --dataset ../shared/datasets/grocerystore --gallery iconic \\",
    "    --centre-sample train --latency-samples 4 --config benchmarks/configs/quality_iconic_views_served_grocerystore.toml \\",
    "    --json > benchmarks/results/recall_grocerystore_quality_iconic_views_served.json",
    "# calibrated confidence, open set: 20% of the products removed (AUROC, ECE, precision/coverage plot)",
    "shopsearch bench recall --dataset ../shared/datasets/grocerystore --open-set 0.2 --json \\",
    "    --out benchmarks/results/open_set_grocerystore_efficientnet-lite0 \\",
    "    > benchmarks/results/open_set_grocerystore_efficientnet-lite0.json",
    "# how to fit the confidence (labelled val photos or leave-one-out, near-duplicates, features): chosen on val",
    "python benchmarks/open_set_features.py --dataset ../shared/datasets/grocerystore \\",
    "    --out benchmarks/results/open_set_feature_selection_val.json",
    "# fused searches (head trained on the kept products only, weight 0.5): features chosen on val, then test",
    "python benchmarks/open_set_features.py --dataset ../shared/datasets/grocerystore --fused 0.5 --val-only",
    "python benchmarks/open_set_features.py --dataset ../shared/datasets/grocerystore --fused 0.5 \\",
    "    --only lead_mean+score:0.1 --out benchmarks/results/open_set_feature_selection_fused.json",
    "# out-of-distribution detectors on val (kNN, head energy/max logit, Mahalanobis, relative Mahalanobis),",
    "# then the winner (shopsearch.density) as the calibration's `density` feature: candidates on val, best on test",
    "python benchmarks/open_set_density.py --dataset ../shared/datasets/grocerystore \\",
    "    --out benchmarks/results/open_set_density_val.json",
    "python benchmarks/open_set_features.py --dataset ../shared/datasets/grocerystore --fused 0.5 \\",
    "    --only head+score:0.1,density+head+score:0.1,density+score:0.1,density+head+lead_mean+score:0.1,\\",
    "density+head+score:0.2 --out benchmarks/results/open_set_density_fused.json",
    "python benchmarks/open_set_features.py --dataset ../shared/datasets/grocerystore --fused 0.5 \\",
    "    --only density+head+score:0.1 --out benchmarks/results/open_set_density_fused_served.json  # the demo's",
    "# the catalogue-only fallback (no labelled photos; its features chosen on val) beside the labelled fit, test",
    "SHOPSEARCH_DATA_DIR=/tmp/trust5 python benchmarks/open_set_features.py --dataset ../shared/datasets/grocerystore \\",
    "    --catalogue-only --only density+score:0.1 --out benchmarks/results/open_set_catalogue_only.json",
    "SHOPSEARCH_DATA_DIR=/tmp/trust5 python benchmarks/open_set_features.py --dataset ../shared/datasets/grocerystore \\",
    "    --fused 0.5 --catalogue-only --only density+head+score:0.1 \\",
    "    --out benchmarks/results/open_set_catalogue_only_fused.json  # as the demo serves",
    "# more readings for the confidence (margins, head agreement, kNN entropy, mirrored photo), val only",
    "SHOPSEARCH_DATA_DIR=/tmp/trust5 python benchmarks/confidence_more_features.py \\",
    "    --dataset ../shared/datasets/grocerystore --out benchmarks/results/confidence_more_features_val.json",
    "# what the confidence adds per photo search (ms), before and with the density model",
    "python benchmarks/confidence_cost.py --products 81,1000 --queries 100 --out benchmarks/results/confidence_cost.json",
    "# the demo's confidence: fused features chosen on val photos, then 50 seeded test photos through the service",
    "shopsearch --data-dir var demo --no-serve",
    "SHOPSEARCH_DATA_DIR=var python benchmarks/confidence_fused_features.py ../shared/datasets/grocerystore",
    "SHOPSEARCH_DATA_DIR=var python benchmarks/demo_confidence.py --dataset ../shared/datasets/grocerystore \\",
    "    --label 'val photos, fused' --out benchmarks/results/demo_confidence_grocerystore.json",
    "shopsearch --data-dir var index calibrate   # the catalogue-only fallback, then demo_confidence.py --append",
    "# the open set with the settings chosen on val (test, then val)",
    "shopsearch bench recall --dataset ../shared/datasets/grocerystore --open-set 0.2 --near-duplicates 0.85 \\",
    "    --latency-samples 0 --out benchmarks/results/open_set_grocerystore_efficientnet-lite0_near_duplicates",
    "shopsearch bench recall --dataset ../shared/datasets/grocerystore --open-set 0.2 --calibrate-on val \\",
    "    --latency-samples 0 --out benchmarks/results/open_set_grocerystore_efficientnet-lite0_labelled_val",
    "# several products in one photo: regions (objects=auto) vs the whole image",
    "python benchmarks/composite_bench.py --dataset ../shared/datasets/grocerystore --composites 60 \\",
    "    --out benchmarks/results/composite_regions_grocerystore.json",
    "# --engine ray against --engine local on the same JPEGs, and 1 vs 2 CPU nodes of a local Ray cluster",
    "python benchmarks/ray_bench.py",
    "# bytes per vector a search node holds, per index type",
    "python benchmarks/index_bytes_bench.py",
    "# what the feedback log costs a search (log on vs off, interleaved), SQLite then PostgreSQL",
    "python benchmarks/feedback_log_bench.py",
    "python benchmarks/feedback_log_bench.py --database-url postgresql://... \\",
    "    --out benchmarks/results/feedback_log_postgresql.json",
    "# no-op build, 10-image update and re-import of an unchanged manifest (main, then the branch)",
    "python benchmarks/build_update_bench.py --products 5000 --label main --out benchmarks/results/build_update_5k_main.json",
    "# the feedback adapter, simulated: val photos as confirmed queries, test photos unseen (issue 17)",
    "SHOPSEARCH_DATA_DIR=var python benchmarks/adapter_grocerystore.py --out benchmarks/results/adapter_grocerystore.json",
    "# a growing shop, 10k and 100k products, SQLite and PostgreSQL (issue 20); 1M: --sizes 1000000",
    "python benchmarks/scale_bench.py --sizes 10000,100000 --db sqlite,postgresql --scratch /tmp/scale",
    "nice -n 5 python benchmarks/scale_bench.py --sizes 10000,1000000 --db sqlite,postgresql --size-first \\",
    "    --scratch /tmp/scale3 --pg-schema scale3   # then, if stopped in its first build: --resume --index-type flat",
    "# issue 20 before/after (scale4): the same run from a copy of each checkout (git archive REV | tar -x -C DIR),",
    "# vectors synthetic at 100k, then the steps that should follow the change, timed in turns on one catalogue",
    "nice -n 5 python DIR/benchmarks/scale_bench.py --sizes 10000,100000 --db sqlite,postgresql --size-first \\",
    "    --synthetic-from 100000 --scratch /tmp/scale4-scratch --pg-schema scale4after --out DIR/results",
    "nice -n 5 python benchmarks/scale_ab.py --a MAIN_COPY --b BRANCH_COPY --size 100000 --scratch /tmp/scale4-ab",
    "# issue 20 (scale6): first imports too (--steps import: an empty catalogue each turn), and a first import's",
    "# CPU by phase (manifest read, main process, image-checking workers), main against the branch, interleaved",
    "nice -n 5 python benchmarks/scale_ab.py --a MAIN_COPY --b BRANCH_COPY --size 100000 \\",
    "    --steps import,reimport,update_10 --scratch /tmp/scale6-ab",
    "python benchmarks/import_cpu_ab.py --a MAIN_COPY --b . --manifest /tmp/scale6-ab/manifest_20000.csv",
    "nice -n 10 python benchmarks/scale_bench.py --sizes 10000,1000000 --db sqlite --scratch /tmp/scale6 \\",
    "    --tag xeon_loaded",
    "nice -n 10 python benchmarks/scale_ab.py --a MAIN_COPY --b BRANCH_COPY --size 100000 --scratch /tmp/rescan7-ab --steps noop_build,status,update_10  # issue 20, rescan7",
    "python benchmarks/scale_bench.py --sizes 1000000 --db sqlite,postgresql --scratch /data/scale --keep && python benchmarks/scale_bench.py --sizes 1000000 --db sqlite,postgresql --scratch /data/scale --rerun --tag rerun_xeon_idle",
    "python benchmarks/stat_walk_bench.py --a MAIN_COPY --scratch /tmp/statwalk --out benchmarks/results/rescan_1m_stat_walk.json; python benchmarks/unusable_count_bench.py --out benchmarks/results/unusable_count_pg_1m.json",
    "python benchmarks/make_results.py",
]


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
