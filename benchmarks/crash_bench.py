"""What a decoder crash costs: written to benchmarks/results/crash_recovery_<model>.json.

    .venv/bin/python benchmarks/crash_bench.py                       # colorhist: overheads only
    .venv/bin/python benchmarks/crash_bench.py --model efficientnet-lite0 --images 512

The crash is simulated by a decoder patched to crash its process (SIGSEGV, as a broken
decoder would) on one marked file in the middle of the run. (A SIGKILL is a kill from
outside, not a crash: the crash journal re-checks nothing after one, see journal.py.)

- process executor: the same files with and without the marked one, in one process:
  the pool is replaced, the interrupted jobs run again one per task, the culprit fails.
- thread executor (decoding inside the indexing process): a clean run against a run that
  dies at the marked file plus the rerun that finds it (crash journal), each a process.
Both figures compare runs over the same files in the same session, as ratios."""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("SHOPSEARCH_COMPILE", "off")

from shopsearch.evaluation.throughput import synthetic_jpegs  # noqa: E402
from shopsearch.evaluation.machine import machine_info  # noqa: E402

MARK = b"CRASH-ME"

# One embedding run in its own process, its decoder killed by MARK; prints the report as JSON.
RUN = r"""
import json, os, signal, sys, time
from pathlib import Path
from shopsearch.config import Settings
from shopsearch.embedders import load_embedder
from shopsearch.embedding import items as stages
from shopsearch.embedding.cache import VectorCache
from shopsearch.embedding.pipeline import WorkItem, embed_items

real = stages.decode_source
def decode_source(src, *a, **kw):
    if isinstance(src, str) and Path(src).read_bytes().endswith(b"CRASH-ME"):
        os.kill(os.getpid(), signal.SIGSEGV)
    return real(src, *a, **kw)
stages.decode_source = decode_source

model, executor, cache_dir, listing = sys.argv[1:5]
settings = Settings.from_env()  # this script is an edge: SHOPSEARCH_* reach the pipeline through it
emb = load_embedder(model, "cpu", settings.models_dir)
items = [WorkItem(*r) for r in json.loads(Path(listing).read_text())]
t0 = time.perf_counter()
rep = embed_items(emb, items, VectorCache(Path(cache_dir), emb.fingerprint, emb.dim), progress=False,
                  executor=executor, compile=settings.pipeline.compile, gpu=settings.gpu)
print(json.dumps({"seconds": time.perf_counter() - t0, "embedded": rep.embedded, "failed": len(rep.failed),
                  "reasons": sorted({r for _, r in rep.failed})}))
"""


def _items(paths: list[Path]) -> list[list]:
    import hashlib

    return [[hashlib.sha256(p.read_bytes()).hexdigest(), str(p), i + 1] for i, p in enumerate(paths)]


def _run(model: str, executor: str, cache: Path, listing: Path) -> tuple[int, float, dict | None]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", RUN, model, executor, str(cache), str(listing)], cwd=ROOT,
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    out = json.loads(proc.stdout) if proc.returncode == 0 else None
    if proc.returncode not in (0, -signal.SIGSEGV):
        raise SystemExit(f"run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.returncode, wall, out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="colorhist")
    ap.add_argument("--images", type=int, default=2048)
    ap.add_argument("--size", default="640x480")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    w, h = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory(prefix="shopsearch-crash-") as tmp:
        work = Path(tmp)
        paths = synthetic_jpegs(args.images, work / "jpegs", (w, h))
        poison = work / "jpegs" / "poison.jpg"
        poison.write_bytes(paths[len(paths) // 2].read_bytes() + MARK)  # decodes fine, but crashes "the decoder"
        clean = work / "clean.json"
        clean.write_text(json.dumps(_items(paths)))
        marked = work / "marked.json"
        rows = _items(paths)
        rows.insert(len(rows) // 2, _items([poison])[0])
        marked.write_text(json.dumps(rows))
        rows = []
        for executor in ("process", "thread"):
            rc, wall_clean, ok = _run(args.model, executor, work / f"{executor}-clean", clean)
            assert rc == 0 and ok is not None and ok["embedded"] == args.images, ok
            runs = []
            for attempt in range(3):  # the thread executor needs two: the crash, then the recovery
                rc, wall, out = _run(args.model, executor, work / f"{executor}-marked", marked)
                runs.append((rc, wall, out))
                if rc == 0:
                    break
            done = runs[-1][2]
            assert done is not None and done["failed"] == 1 and done["embedded"] > 0, runs
            total = sum(w for _, w, _ in runs)
            rows.append({
                "executor": executor, "clean_wall_s": round(wall_clean, 2), "clean_embed_s": round(ok["seconds"], 2),
                "processes_with_crash": len(runs), "exit_codes": [rc for rc, _, _ in runs],
                "wall_s_per_process": [round(w, 2) for _, w, _ in runs], "with_crash_wall_s": round(total, 2),
                "overhead_s": round(total - wall_clean, 2), "ratio": round(total / wall_clean, 3),
                "culprit_reason": done["reasons"][0],
            })
            print(f"{executor}: clean {wall_clean:.1f} s; with one crashing file {total:.1f} s over "
                  f"{len(runs)} process(es) ({total / wall_clean:.2f}x); culprit reported as: {done['reasons'][0][:60]}")
    result = {"benchmark": "crash_recovery", "model": args.model, "images": args.images, "image_size": args.size,
              "note": "wall time of whole processes (interpreter and model start included, once per process); "
                      "the thread executor's figure is the run that crashed plus the rerun that recovered",
              "rows": rows, "machine": machine_info(),
              "command": "python benchmarks/crash_bench.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"crash_recovery_{args.model.replace(':', '-')}.json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
