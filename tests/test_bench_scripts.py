"""Smoke tests of the benchmark scripts on tiny inputs (the figures themselves live in benchmarks/)."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.preforked import run_script

REPO = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_synthetic_data_is_seeded_and_normalised():
    ann = _load("ann_bench")
    a, b = ann.synthetic(500, 32, seed=3, clusters=8), ann.synthetic(500, 32, seed=3, clusters=8)
    assert np.array_equal(a, b) and not np.array_equal(a, ann.synthetic(500, 32, seed=4, clusters=8))
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    exact = np.array([[1, 2, 3], [4, 5, 6]])
    assert ann.recall_vs_exact(np.array([[3, 2, 9], [-1, -1, -1]]), exact) == (2 / 3 + 0) / 2


def test_ann_bench_then_results_markdown(tmp_path):
    ann, make = _load("ann_bench"), _load("make_results")
    out = tmp_path / "results" / "ann_3k.json"
    assert ann.main(["--n", "3000", "--dim", "64", "--queries", "50", "--single", "5", "--types", "hnsw,flat",
                     "--ef", "8,64", "--nprobe", "4", "--out", str(out)]) == 0
    obj = json.loads(out.read_text())
    flat, hnsw = obj["indexes"]
    assert flat["index"] == "flat" and flat["settings"][0]["recall_at_10"] == 1.0  # flat is the ground truth
    assert [s["ef_search"] for s in hnsw["settings"]] == [8, 64]
    assert hnsw["settings"][1]["recall_at_10"] >= hnsw["settings"][0]["recall_at_10"]
    assert flat["bytes_per_vector"] >= 64 * 4 and obj["machine"]["cpu_count"] >= 1
    # a recall result, a multi-configuration one and a foreign (throughput-like) file
    one = {"name": "m flat", "model": "m", "index": "flat", "queries": 10, "gallery": 20,
           "recall_at": {"1": 0.5, "10": 0.9}, "precision_at": {}, "map_at": {"10": 0.6}, "mrr": 0.61,
           "ndcg_at": {"10": 0.7}, "per_category": {}, "latency_ms": {"p50": 1, "p95": 2, "p99": 3},
           "dataset": {"name": "toy", "gallery": "iconic"}, "machine": {"cpu_model": "ToyCPU", "cpu_count": 2}}
    (out.parent / "recall_toy.json").write_text(json.dumps(one))
    (out.parent / "recall_multi.json").write_text(json.dumps({"configs": [one, {**one, "name": "m hnsw"}]}))
    (out.parent / "throughput_cpu.json").write_text(json.dumps(
        {"device": "cpu", "rows": [{"model": "colorhist", "images_per_s": 812.5}], "machine": {"cpu_model": "X"}}))
    # someone else's summary that merely looks like ours (configs with recall_at but no counts)
    (out.parent / "summary.json").write_text(json.dumps({"configs": [{"model": "m", "recall_at": {"1": 0.5}}]}))
    md = tmp_path / "RESULTS.md"
    assert make.main(["--results", str(out.parent), "--out", str(md)]) == 0
    text = md.read_text()
    assert "| m flat | iconic (20 img) | 0.5000 | 0.9000 | 0.6000 | 0.6100 | 0.7000 |" in text
    assert "m hnsw" in text and "ToyCPU" in text
    assert "| hnsw | HNSW32,Flat | ef_search=8 |" in text and "1-thread p50 ms" in text
    assert "| colorhist | 812.5 |" in text
    assert "### summary" in text and "| m | 1=0.5000 |" in text  # rendered generically, not dropped


def test_crash_bench_recovers_in_both_executors(tmp_path):
    """The crash benchmark on a few tiny images: each executor ends with the culprit reported."""
    out = tmp_path / "crash.json"
    assert _load("crash_bench").main(["--images", "24", "--size", "64x48", "--out", str(out)]) == 0
    rows = {r["executor"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["process"]["exit_codes"] == [0]  # the pool was replaced inside the run
    assert rows["thread"]["exit_codes"] == [-11, 0]  # the run crashed (SIGSEGV), the next one recovered
    assert all(r["culprit_reason"].startswith("the decoding process died") for r in rows.values())


def test_bench_io_writes_the_result_json_with_its_machine_block(tmp_path, capsys):
    """The scripts' shared tail: the result indented, one newline at the end, its folder made,
    echoed on request; the short machine block keeps the keys make_results.py and readers expect."""
    bio = _load("_bench_io")
    block = bio.cpu_block(3.14159, "loaded")
    assert list(block) == ["cpu", "cpus", "loadavg_1m_before", "loadavg_1m_after", "note"]
    assert block["loadavg_1m_before"] == 3.14 and block["cpus"] >= 1 and block["cpu"]
    assert list(bio.cpu_block()) == ["cpu", "cpus"] and list(bio.cpu_block(note="")) == ["cpu", "cpus", "note"]
    assert list(bio.stamped_machine()) == ["machine", "load_avg_1m", "recorded_at"]
    out = tmp_path / "results" / "x.json"
    result = {"benchmark": "x", "machine": block, "when": bio.utc_now()}
    bio.write_result(result, out, echo=True)
    assert out.read_text() == json.dumps(result, indent=2) + "\n"
    assert json.loads(capsys.readouterr().out) == result
    bio.write_result(result, None)  # no --out: nothing written, nothing printed
    assert capsys.readouterr().out == ""
    a = bio.grocery_parser("Recall.\nmore", split=True).parse_args([])
    assert (a.dataset, a.cache, a.split) == (Path("../shared/datasets/grocerystore"), Path("var/vectors"), "val")
    assert bio.data_dir_parser("d", tmp_path).parse_args(["--data-dir", "v"]).dataset == tmp_path


# `python benchmarks/X.py --help` in a process forked from the preloaded fork server
# (tests/preforked.py): torch and numpy come imported, everything else the script imports it
# imports itself, with the sys.path a fresh `python benchmarks/X.py` has (its own folder, then
# the interpreter's; not the repository root that pytest adds), so a moved module still fails
HELP = r"""
import json, runpy, sys
script, path = sys.argv[1], json.loads(sys.argv[2])
sys.path[:] = path
sys.argv = [script, "--help"]
runpy.run_path(script, run_name="__main__")
"""


@pytest.fixture(scope="module")
def script_sys_path() -> list[str]:
    """sys.path after its first entry in a fresh interpreter here (the site's, PYTHONPATH's)."""
    r = subprocess.run([sys.executable, "-c", "import json, sys; print(json.dumps(sys.path[1:]))"],
                       capture_output=True, text=True, check=True, cwd=REPO / "benchmarks")
    return json.loads(r.stdout)


@pytest.mark.parametrize("script", sorted(p.name for p in (REPO / "benchmarks").glob("*.py")))
def test_every_benchmark_script_starts(script, script_sys_path):
    """`--help` runs each script's imports: a module moved elsewhere breaks it here, not on an
    analyst's machine (ray_bench.py still imported the old throughput module once)."""
    path = REPO / "benchmarks" / script
    r = run_script(HELP, str(path), json.dumps([str(path.parent), *script_sys_path]), cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


def test_speed_summary_reads_the_idle_script_files_against_the_goals(tmp_path):
    mod = _load("summarise_speed")
    tp = {"images_per_s": 120.0, "precision": "bf16", "batch_size": 16, "workers": 2, "cpu_s_per_image": 0.0161,
          "naive_images_per_s": 30.0, "load_avg_1m": 0.3}
    (tmp_path / "throughput_efficientnet-lite0_cpu_default_t.json").write_text(json.dumps(tp))
    (tmp_path / "throughput_efficientnet-lite0_cpu_bf16_b8_w2_t.json").write_text(
        json.dumps(tp | {"images_per_s": 151.0, "batch_size": 8, "naive_images_per_s": None}))
    (tmp_path / "bf16_openclip-ViT-B-32_t.json").write_text(json.dumps(
        {"median_images_per_s": {"fp32": 11.0, "bf16": 31.0}, "median_cpu_s_per_image": {"fp32": 0.18, "bf16": 0.06},
         "machine": {"cpu": "ToyXeon"}}))
    (tmp_path / "load_search_ab_t.json").write_text(json.dumps({"median": {
        "after": {"seq_p50_ms": 24.0, "c4_req_per_s": 70.0},
        "after-2x2": {"seq_p50_ms": 19.5, "c4_req_per_s": 61.0, "c4_server_cpu_ms_per_request": 30.0}}}))
    assert mod.main(["--suffix", "_t", "--results", str(tmp_path)]) == 0
    out = json.loads((tmp_path / "speed_summary_t.json").read_text())
    assert out["met"] == {"lite0_default": False, "lite0_best": True, "vit_b32_bf16": True, "queries": True}
    assert out["lite0_best"] == "bf16_b8_w2" and out["lite0"]["default"]["cpu_ms_per_image"] == 16.1
    assert out["queries"]["after-2x2"]["c4_server_cpu_ms_per_request"] == 30.0 and out["machine"]["cpu"] == "ToyXeon"
    assert out["lite0_cpu_ms_one_thread"] is None and out["query_stage_cpu_ms"] is None
