"""Side by side with clip-retrieval 2.45: the same random ViT-B-32 checkpoint, the same photos.

Creates its own venv for clip-retrieval (PyPI, with `setuptools<81`, torch pinned like ours;
--venv, default $CLIP_RETRIEVAL_VENV or var/clip-retrieval-venv: point several checkouts at one),
writes one random-weight OpenCLIP ViT-B-32 checkpoint that both tools load, copies N Grocery
Store photos into one folder, then alternates, round after round, each run in a fresh output
or data dir and timed as wall clock around the whole command:

    clip-retrieval inference --input_dataset PHOTOS --clip_model open_clip:ViT-B-32/CKPT ...
    shopsearch index build --model openclip:ViT-B-32@CKPT          (our default: --precision auto)
    shopsearch index build --model openclip:ViT-B-32@CKPT+fp32
    shopsearch index build --model openclip:ViT-B-32@CKPT+bf16     (only where the CPU has bf16)

(the `catalogue import` before each build is timed separately: clip-retrieval has no such
step). The default row's precision probe is remembered in a cache dir made fresh for each
benchmark run (SHOPSEARCH_CACHE_DIR): its first build pays the probe, later ones do not, as on
a user's machine. Writes wall times, medians and ratios, the precision auto chose, the CPU model
and its bf16 flags and load averages to benchmarks/results/clip_retrieval_vs_shopsearch.json.
A benchmark, not a test:

    .venv/bin/python benchmarks/clip_retrieval_bench.py --images 1000 --rounds 2 --venv /work/cr-venv
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CLIP_RETRIEVAL = "clip-retrieval==2.45.0"
TORCH = ("torch==2.14.1", "torchvision==0.29.1")  # the versions this machine serves locally, as in the Makefile


def ensure_venv(venv: Path) -> Path:
    """clip-retrieval's own venv (created once, reused); returns its `clip-retrieval` executable."""
    exe = venv / "bin" / "clip-retrieval"
    if exe.is_file():
        return exe
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, *TORCH], check=True)
    # clip-retrieval's dependencies import pkg_resources, which setuptools 81 removed
    subprocess.run([*pip, "setuptools<81", CLIP_RETRIEVAL], check=True)
    return exe


def write_checkpoint(path: Path) -> None:
    """A random-weight OpenCLIP ViT-B-32 state dict (seed 0), loadable by both tools."""
    import open_clip
    import torch

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32", pretrained=None)
    torch.save(model.state_dict(), path)


def copy_photos(n: int, dest: Path, dataset: Path) -> int:
    """The first n Grocery Store photos (train then test split) as dest/<class>/<file>.jpg."""
    from shopsearch.evaluation.throughput import grocery_jpegs

    paths = grocery_jpegs(n, dataset)
    if len(paths) < n:
        raise SystemExit(f"only {len(paths)} Grocery Store photos found (wanted {n})")
    for p in paths:
        out = dest / p.parent.name / p.name
        out.parent.mkdir(parents=True, exist_ok=True)
        if not out.exists():
            shutil.copyfile(p, out)
    return len(paths)


def timed(cmd: list[str], env: dict[str, str], log: Path, stdout: Path | None = None) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system, its child processes included) of `cmd`; its
    stderr (and stdout, unless `stdout` names a file for it) go to `log`. Under load the CPU
    seconds compare better than the wall clock."""
    with open(log, "ab") as fh, open(stdout or os.devnull, "wb") as out:
        fh.write(("\n$ " + " ".join(cmd) + "\n").encode())
        fh.flush()
        r0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
        subprocess.run(cmd, check=True, env=env, stdout=out if stdout else fh, stderr=fh, cwd=REPO)
        r1, t1 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
        return t1 - t0, (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)


def cpu_info() -> dict:
    from shopsearch.evaluation.machine import cpu_model
    from shopsearch.embedders.precision import best_precision
    from shopsearch.config import available_cpus

    flags = set(Path("/proc/cpuinfo").read_text().split()) if Path("/proc/cpuinfo").is_file() else set()
    return {"cpu": cpu_model(), "cpus": available_cpus(), "bf16": best_precision("cpu") == "bf16",
            "cpu_flags": sorted(f for f in flags if f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile",
                                                          "avx512_vnni", "avx_vnni"))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--dataset", type=Path, default=Path(os.environ.get(
        "SHOPSEARCH_GROCERY_DIR", REPO.parent / "shared" / "datasets" / "grocerystore")), help="Grocery Store folder")
    ap.add_argument("--venv", type=Path, default=Path(os.environ.get("CLIP_RETRIEVAL_VENV")
                                                      or REPO / "var" / "clip-retrieval-venv"))
    ap.add_argument("--work-dir", type=Path, default=None, help="photos, checkpoint and outputs (default: a temp dir)")
    ap.add_argument("--batch-size", type=int, default=256,
                    help="clip-retrieval's batch (its default 256; capped at --images: it warms up with one full batch)")
    ap.add_argument("--no-bf16", action="store_true", help="skip the shopsearch +bf16 runs")
    ap.add_argument("--no-fp32", action="store_true", help="skip the shopsearch +fp32 runs")
    ap.add_argument("--note", default="", help="free text stored with the result (e.g. idle or loaded)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "clip_retrieval_vs_shopsearch.json")
    a = ap.parse_args()

    info = cpu_info()
    load_before = [round(x, 2) for x in os.getloadavg()]
    exe = ensure_venv(a.venv.resolve())
    tmp = tempfile.TemporaryDirectory(prefix="clip-bench-")
    work = (a.work_dir or Path(tmp.name)).resolve()
    work.mkdir(parents=True, exist_ok=True)
    photos, ckpt, log = work / f"photos{a.images}", work / "vit-b-32-random.pt", work / "runs.log"
    n = copy_photos(a.images, photos, a.dataset)
    if not ckpt.is_file():
        write_checkpoint(ckpt)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SHOPSEARCH_CACHE_DIR": str(work / f"cache-{time.time_ns()}")}
    for var in ("SHOPSEARCH_DATABASE_URL", "SHOPSEARCH_PRECISION", "SHOPSEARCH_MODEL"):
        env.pop(var, None)
    shop = [sys.executable, "-c", "from indexer.cli import main; main()"]
    workers = str(info["cpus"])
    cr_batch = min(a.batch_size, n)
    tools = {"clip-retrieval": None, "shopsearch": f"openclip:ViT-B-32@{ckpt}"}
    if not a.no_fp32:
        tools["shopsearch+fp32"] = f"openclip:ViT-B-32@{ckpt}+fp32"
    if info["bf16"] and not a.no_bf16:
        tools["shopsearch+bf16"] = f"openclip:ViT-B-32@{ckpt}+bf16"
    runs: dict[str, list[dict]] = {t: [] for t in tools}
    for r in range(a.rounds):
        for tool, model in tools.items():
            load = os.getloadavg()[0]
            if model is None:
                out = work / f"cr-out-{r}"
                secs, cpu = timed([str(exe), "inference", "--input_dataset", str(photos), "--output_folder",
                                   str(out), "--input_format", "files", "--enable_text", "False", "--clip_model",
                                   f"open_clip:ViT-B-32/{ckpt}", "--batch_size", str(cr_batch),
                                   "--num_prepro_workers", workers], env, log)
                runs[tool].append({"round": r, "wall_s": round(secs, 2), "cpu_s": round(cpu, 1),
                                   "loadavg_1m_before": round(load, 2)})
            else:
                data = work / f"data-{tool}-{r}"
                imp, _ = timed([*shop, "--data-dir", str(data), "catalogue", "import", str(photos), "--format",
                                "imagefolder", "--json"], env, log)
                report = data / "build.json"
                secs, cpu = timed([*shop, "--data-dir", str(data), "index", "build", "--model", model, "--json"],
                                  env, log, report)
                built = json.loads(report.read_text())
                runs[tool].append({"round": r, "wall_s": round(secs, 2), "cpu_s": round(cpu, 1),
                                   "import_s": round(imp, 2),
                                   "embed_s": built.get("seconds"), "model": built.get("model"),
                                   "loadavg_1m_before": round(load, 2)})
            print(f"round {r} {tool}: {secs:.1f} s, {cpu:.1f} CPU s (load {load:.2f})", flush=True)
            write(a.out, summary(runs, n, cr_batch, workers, a, info, load_before, done=False))
    result = summary(runs, n, cr_batch, workers, a, info, load_before, done=True)
    write(a.out, result)
    print(json.dumps(result, indent=2))
    tmp.cleanup()
    return 0


def write(out: Path, result: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


def summary(runs: dict[str, list[dict]], n: int, cr_batch: int, workers: str, a: argparse.Namespace, info: dict,
            load_before: list[float], done: bool) -> dict:
    """The result file's content: after every run (done=False: the rounds so far), then complete."""
    runs = {t: v for t, v in runs.items() if v}
    med = {t: statistics.median(x["wall_s"] for x in v) for t, v in runs.items()}
    cpu = {t: statistics.median(x["cpu_s"] for x in v) for t, v in runs.items()}
    base = "clip-retrieval"
    return {
        "benchmark": "clip_retrieval_vs_shopsearch", "images": n, "source": "grocerystore photos (train, then test)",
        "model": "OpenCLIP ViT-B-32, random weights (seed 0), one checkpoint file for both tools",
        "clip_retrieval": {"version": CLIP_RETRIEVAL, "batch_size": cr_batch, "num_prepro_workers": int(workers),
                           "command": "clip-retrieval inference --input_format files --enable_text False"},
        "shopsearch": {"command": "shopsearch index build (defaults, so --precision auto; catalogue import timed "
                                  "apart as import_s; embed_s: the build's own embedding seconds)"},
        "rounds": a.rounds, "order": "alternating, one run of each tool per round, fresh output/data dir each run",
        **({} if done else {"partial": f"written after each run: {sum(map(len, runs.values()))} runs so far"}),
        "runs": runs, "median_wall_s": {t: round(v, 2) for t, v in med.items()},
        "median_cpu_s": {t: round(v, 1) for t, v in cpu.items()},
        "speedup_vs_clip_retrieval": {t: round(med[base] / v, 2) for t, v in med.items() if base in med and t != base},
        "speedup_vs_clip_retrieval_with_import": {
            t: round(med[base] / statistics.median(x["wall_s"] + x["import_s"] for x in v), 2)
            for t, v in runs.items() if base in med and t != base},
        #: CPU seconds barely depend on how many other jobs share the cores: the steadier ratio under load
        "cpu_ratio_clip_retrieval_over": {t: round(cpu[base] / v, 2) for t, v in cpu.items() if base in cpu and t != base},
        "default_precision_chosen": sorted({x["model"].rpartition("+")[2] if "+" in x["model"] else "fp32"
                                            for x in runs.get("shopsearch", [])}),
        "note": a.note,
        "images_per_s": {t: round(n / v, 2) for t, v in med.items()},
        "machine": {**info, "loadavg_before": load_before, "loadavg_after": [round(x, 2) for x in os.getloadavg()],
                    "state": "loaded" if max(load_before[0], os.getloadavg()[0]) > info["cpus"] else "idle"},
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


if __name__ == "__main__":
    sys.exit(main())
