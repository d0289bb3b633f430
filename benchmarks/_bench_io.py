"""What the benchmark scripts share around their figures: the first options of a script that
measures a prepared data dir or the grocery store data set, the time stamp and machine block
of a result, and writing the result JSON (benchmarks/make_results.py reads
benchmarks/results/*.json).

The scripts run as `python benchmarks/NAME.py`, so this folder is on sys.path and they import
it as `from _bench_io import ...`; shopsearch is imported only when a result is written.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def data_dir_parser(doc: str | None, dataset: Path) -> argparse.ArgumentParser:
    """A parser with the script's docstring as help, `--data-dir` (required: a prepared data dir)
    and `--dataset` (the grocery photos the queries come from)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--dataset", type=Path, default=dataset)
    return ap


def grocery_parser(doc: str, *, split: bool = False) -> argparse.ArgumentParser:
    """A parser with the docstring's first line as help, `--dataset` (the grocery store data set,
    from the repository root), `--cache` (the vector cache the recall scripts share) and, with
    `split`, `--split` (the query split, val unless told)."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--dataset", type=Path, default=Path("../shared/datasets/grocerystore"))
    ap.add_argument("--cache", type=Path, default=Path("var/vectors"))
    if split:
        ap.add_argument("--split", default="val")
    return ap


def utc_now() -> str:
    """The `when` / `recorded_at` stamp of a result: UTC, to the second."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def cpu_block(load_before: float | None = None, note: str | None = None) -> dict:
    """A result's short machine block: {"cpu", "cpus"}, then the 1-minute load average before the
    measurement and now when `load_before` is given, then `note` when given."""
    from shopsearch.evaluation.machine import cpu_model

    out: dict = {"cpu": cpu_model(), "cpus": os.cpu_count()}
    if load_before is not None:
        out["loadavg_1m_before"] = round(load_before, 2)
        out["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
    if note is not None:
        out["note"] = note
    return out


def stamped_machine() -> dict:
    """The long machine block (machine_info) with the load average and the stamp beside it, as the
    grocery recall scripts record them: {"machine", "load_avg_1m", "recorded_at"}."""
    from shopsearch.evaluation.machine import machine_info

    return {"machine": machine_info(), "load_avg_1m": round(os.getloadavg()[0], 2), "recorded_at": utc_now()}


def write_result(result: dict, out: Path | None, *, echo: bool = False) -> None:
    """Writes `result` as indented JSON to `out` (its folder made; nothing when `out` is None) and,
    with `echo`, prints the same text to stdout."""
    text = json.dumps(result, indent=2)
    if echo:
        print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")


def nearest_recall_at_1(xg, gallery, xq, queries) -> float:
    """Share of query vectors whose nearest gallery vector (inner product) has the query's category."""
    nn = (xq @ xg.T).argmax(1)
    return float(sum(gallery[j].category == q.category for j, q in zip(nn, queries)) / max(len(queries), 1))


def grocery_train_val_views(emb, dataset: Path, cache: Path, views: int) -> tuple:
    """(train + iconic vectors, their items, val vectors, val items, view vectors, which train images
    have views) of Grocery Store by classify's own code (embed_labelled, view_vectors), cached in
    `cache`: what the frozen-head scripts score on val."""
    from shopsearch.classify.data import grocery_split
    from shopsearch.classify.photo_views import view_vectors
    from shopsearch.classify.vectors import embed_labelled
    from shopsearch.images import sha256_file

    xs, train = embed_labelled(emb, grocery_split(dataset, "train") + grocery_split(dataset, "iconic"), cache,
                               progress=False)
    xv, val = embed_labelled(emb, grocery_split(dataset, "val"), cache, progress=False)
    vv, ok = view_vectors(emb, [(i.path, i.sha256 or sha256_file(i.path)) for i in train], views, cache,
                          progress=False)
    return xs, train, xv, val, vv, ok
