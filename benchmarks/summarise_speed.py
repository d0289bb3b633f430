"""The figures of issue 18's CPU points from the files benchmarks/speed_idle_xeon.sh wrote, against their
goals, printed and written to benchmarks/results/speed_summary<SUFFIX>.json:

    .venv/bin/python benchmarks/summarise_speed.py --suffix _xeon_amx_idle

Lite0: images/s and CPU ms per image (all threads and processes) of each run, "best" the fastest;
ViT-B-32: bf16 end to end; queries: each load_ab variant's sequential p50 and 4-client requests/s,
with the server's CPU ms per request."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

R = Path(__file__).resolve().parent / "results"
GOALS = {"lite0_images_per_s": 150.0, "vit_b32_bf16_images_per_s": 25.0, "seq_p50_ms": 20.0, "c4_req_per_s": 60.0}


def _read(results: Path, name: str) -> dict | None:
    p = results / name
    return json.loads(p.read_text()) if p.is_file() else None


def summarise(suffix: str, results: Path = R) -> dict:
    lite = {}
    for tag in ("default", "bf16_b8_w2", "bf16_b32_w2", "bf16_b16_w1"):
        r = _read(results, f"throughput_efficientnet-lite0_cpu_{tag}{suffix}.json")
        if r:
            lite[tag] = {"images_per_s": r["images_per_s"], "precision": r["precision"], "batch": r["batch_size"],
                         "decode_threads": r["workers"],
                         "cpu_ms_per_image": round(1000 * (r["cpu_s_per_image"] or 0), 2),
                         "naive_images_per_s": r.get("naive_images_per_s"), "load_avg_1m": r["load_avg_1m"]}
    best = max(lite, key=lambda k: lite[k]["images_per_s"]) if lite else None
    vit = _read(results, f"bf16_openclip-ViT-B-32{suffix}.json")
    vit_fig = None if vit is None else {
        "images_per_s": vit["median_images_per_s"],
        "cpu_ms_per_image": {k: round(1000 * v, 2) for k, v in vit["median_cpu_s_per_image"].items()}}
    load = _read(results, f"load_search_ab{suffix}.json")
    queries = None if load is None else {
        name: {k: m.get(k) for k in ("seq_p50_ms", "seq_p99_ms", "seq_server_cpu_ms_per_request", "c4_req_per_s",
                                      "c4_p50_ms", "c4_server_cpu_ms_per_request")}
        for name, m in load["median"].items()}
    prof = _read(results, f"query_profile{suffix}.json")
    stages = _read(results, f"lite0_cpu_profile{suffix}.json")
    met = {
        "lite0_default": bool(lite.get("default")) and lite["default"]["images_per_s"] >= GOALS["lite0_images_per_s"],
        "lite0_best": bool(best) and lite[best]["images_per_s"] >= GOALS["lite0_images_per_s"],
        "vit_b32_bf16": bool(vit) and vit["median_images_per_s"]["bf16"] >= GOALS["vit_b32_bf16_images_per_s"],
        "queries": bool(queries) and any((q["seq_p50_ms"] or 1e9) <= GOALS["seq_p50_ms"]
                                         and (q["c4_req_per_s"] or 0) >= GOALS["c4_req_per_s"]
                                         for q in queries.values()),
    }
    return {"suffix": suffix, "goals": GOALS, "met": met, "lite0": lite, "lite0_best": best,
            "lite0_cpu_ms_one_thread": None if stages is None else {
                **stages["stage_cpu_ms_per_image"], "model": stages["model_cpu_ms_per_image"]},
            "vit_b32": vit_fig,
            "queries": queries,
            "query_stage_cpu_ms": prof.get("stage_cpu_ms_median") if prof else None,
            "query_model": prof.get("query_model") if prof else None,
            "machine": (load or {}).get("machine") or (vit or {}).get("machine")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suffix", default="_xeon_amx_idle")
    ap.add_argument("--results", type=Path, default=R)
    a = ap.parse_args(argv)
    out = summarise(a.suffix, a.results)
    text = json.dumps(out, indent=2)
    print(text)
    (a.results / f"speed_summary{a.suffix}.json").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
