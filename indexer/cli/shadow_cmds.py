"""`shopsearch index compare | promote`: the serving build against the shadow build, and
serving the shadow. (`index build --shadow` stages one, `index rollback` undoes a promote.)"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import click

# These commands take the group's Ctx through click.pass_obj and never import indexer.cli:
# the group imports its command modules, so an import back would close a cycle.
Ctx = Any


def echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


def hold_index_lock(c: Ctx, wait: bool, what: str) -> None:
    """This data dir's index writer lock until the command ends (IndexBusyError, exit 75, or wait)."""
    from shopsearch.index.lock import index_lock

    click.get_current_context().with_resource(index_lock(
        c.settings.index_dir, wait=wait, what=what,
        on_wait=lambda holder: click.echo(f"waiting for {holder} to finish ...", err=True)))


def confirmed_pairs(c: Ctx, pairs_file: str | None, from_feedback: bool) -> list:
    """Confirmed (query vector -> product) pairs from a --pairs file and/or the feedback log."""
    from shopsearch.adapter.train import ConfirmedPair, load_pairs

    out = load_pairs(Path(pairs_file)) if pairs_file else []
    if from_feedback:
        from shopsearch.feedback import FeedbackStore

        logged = FeedbackStore(c.catalogue().engine).confirmed_pairs()
        out += [ConfirmedPair(p.vector, p.sku, p.model_fingerprint) for p in logged]
    return out


@click.command("compare")
@click.option("--dataset", type=click.Path(exists=True), default=None,
              help="A labelled set to search with both builds (its SKUs must be the catalogue's).")
@click.option("--layout", type=click.Choice(["grocerystore", "imagefolder", "manifest"]), default="manifest",
              show_default=True, help="How --dataset is laid out (see `shopsearch bench recall --help`).")
@click.option("--queries", default=None, help="The query split (grocerystore: test|val|train) or queries CSV.")
@click.option("--limit", type=click.IntRange(1), default=None, help="At most this many labelled photos "
              "(evenly spread over the set).")
@click.option("--pairs", "pairs_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Confirmed feedback queries (.npz of vectors, skus, fingerprint) to replay on both builds.")
@click.option("--from-feedback", is_flag=True, help="Replay the feedback log's confirmed queries too.")
@click.option("--build", "shadow_id", default=None, help="The build to compare with (default: the shadow build).")
@click.option("-k", "ks", type=click.IntRange(1), multiple=True, default=(1, 5, 10), show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object, disagreeing queries included.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Also write compare.json, compare.md and disagreements.csv into this folder.")
@click.pass_obj
def compare_cmd(c: Ctx, dataset: str | None, layout: str, queries: str | None, limit: int | None,
                pairs_file: str | None, from_feedback: bool, shadow_id: str | None, ks: tuple[int, ...],
                as_json: bool, out: str | None) -> None:
    """Run the serving and the shadow build side by side: recall@k, agreement, latency, disagreements."""
    from shopsearch.app import open_search_service
    from shopsearch.errors import IndexNotFoundError
    from shopsearch.evaluation.compare import compare_feedback, compare_photos

    if dataset is None and not pairs_file and not from_feedback:
        raise click.UsageError("give a labelled set (--dataset) and/or confirmed queries (--pairs, --from-feedback)")
    store = c.index_store()
    shadow_id = shadow_id or store.shadow_id()
    serving_id = store.serving_id()
    if shadow_id is None or serving_id is None:
        raise IndexNotFoundError("there is no " + ("shadow build (`shopsearch index build --model M --shadow`)"
                                                   if serving_id else "serving build") + " to compare")
    ks = tuple(sorted(set(ks)))
    serving = open_search_service(c.settings, catalogue=c.catalogue(), build_id=serving_id, with_router=False)
    shadow = open_search_service(c.settings, catalogue=c.catalogue(), build_id=shadow_id, with_router=False)
    results, notes = [], []
    if dataset is not None:
        results.append(compare_photos(serving, shadow, _photos(dataset, layout, queries, limit), ks,
                                      progress=not as_json))
    pairs = confirmed_pairs(c, pairs_file, from_feedback) if (pairs_file or from_feedback) else []
    if pairs_file or from_feedback:
        fb = compare_feedback(serving, shadow, pairs, ks)
        if fb.skipped:
            notes.append(f"{fb.skipped} of {len(pairs)} feedback queries skipped: logged with another model than "
                         f"the builds' ({serving.embedder.fingerprint}, {shadow.embedder.fingerprint}); their "
                         "stored vectors cannot be replayed on a build of another model")
        results.append(fb)
    doc = {"serving": serving_id, "shadow": shadow_id, "comparisons": [r.to_dict() for r in results], "notes": notes}
    if out:
        _write_out(Path(out), doc, results)
    if as_json:
        echo_json(doc)
        return
    for line in _table(results, ks):
        click.echo(line)
    for n in notes:
        click.echo(f"note: {n}", err=True)


def _photos(dataset: str, layout: str, queries: str | None, limit: int | None):
    import numpy as np

    from shopsearch.evaluation.compare import LabelledPhoto
    from shopsearch.evaluation.datasets import load_dataset

    d = load_dataset(dataset, layout, queries=queries)
    photos = [LabelledPhoto(q.path, d.relevant(q)) for q in d.queries if d.relevant(q)]
    if limit and len(photos) > limit:
        photos = [photos[int(i)] for i in np.unique(np.linspace(0, len(photos) - 1, limit).astype(int))]
    return photos


def _table(results, ks) -> list[str]:
    """A markdown table per comparison (what `--out` writes to compare.md, too)."""
    lines = []
    for r in results:
        a, b = r.serving, r.shadow
        lines += [f"### {r.source}: {r.queries} queries ({r.skipped} skipped)", "",
                  f"| | serving {a.build_id} | shadow {b.build_id} |", "|---|---|---|",
                  f"| model | {a.model} | {b.model} |"]
        lines += [f"| recall@{k} | {a.recall[k]:.3f} | {b.recall[k]:.3f} |" for k in ks]
        p50 = [x.latency_ms["p50"] for x in (a, b)]
        lines.append("| latency p50 (ms) | " + " | ".join(f"{v:.1f}" if v is not None else "-" for v in p50) + " |")
        lines += [f"| agreement@1 | {r.agreement_at_1:.3f} | |",
                  f"| disagreements | {len(r.disagreements)} "
                  f"(serving right {sum(d.serving_right for d in r.disagreements)}, "
                  f"shadow right {sum(d.shadow_right for d in r.disagreements)}) | |", ""]
    return lines


def _write_out(folder: Path, doc: dict, results) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "compare.json").write_text(json.dumps(doc, indent=2) + "\n")
    ks = sorted(results[0].serving.recall) if results else []
    (folder / "compare.md").write_text("\n".join(_table(results, ks)) + "\n")
    with open(folder / "disagreements.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["source", "query", "expected", "serving_top", "shadow_top", "serving_right", "shadow_right"])
        for r in results:
            for d in r.disagreements:
                w.writerow([r.source, d.query, " ".join(d.expected), d.serving_top or "", d.shadow_top or "",
                            d.serving_right, d.shadow_right])


@click.command("promote")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--wait", is_flag=True, help="Wait for another build, update or rollback instead of exit code 75.")
@click.pass_obj
def promote_cmd(c: Ctx, as_json: bool, wait: bool) -> None:
    """Serve the shadow build (atomically); the serving build is kept for `index rollback`."""
    hold_index_lock(c, wait, "index promote")
    store = c.index_store()
    old = store.current_id()
    new = store.promote()
    manifest = store.current_manifest()
    if as_json:
        echo_json({"build_id": new, "previous_build": old, "model": manifest.model_name if manifest else None,
                   "vectors": manifest.count if manifest else None})
        return
    click.echo(f"now serving build {new} ({manifest.model_name if manifest else '?'}); {old} kept as previous "
               "(`shopsearch index rollback` returns to it). Running web servers switch on their next request.")


def register(cli: click.Group) -> None:
    """The commands join the `index` group (registered before, by index_cmds)."""
    group = cli.commands["index"]
    assert isinstance(group, click.Group)
    group.add_command(compare_cmd)
    group.add_command(promote_cmd)
