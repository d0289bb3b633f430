"""`shopsearch bench ...`: retrieval benchmarks for analysts (and `throughput`, when present)."""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import click

from indexer.cli.context import Ctx, pass_ctx
from shopsearch.errors import ConfigError


@click.group("bench")
def bench() -> None:
    """Measure search quality and speed on labelled data."""


@bench.command("recall")
@click.option("--dataset", "dataset", default=None, type=click.Path(exists=True),
              help="Grocery Store root, ImageFolder root, or a catalogue manifest (or folder with products.csv).")
@click.option("--from-feedback", "from_feedback", is_flag=True,
              help="Instead of --dataset: the serving build on the feedback log's confirmed queries (their stored "
                   "vectors, so only queries logged with the build's model).")
@click.option("--since", default=None, help="With --from-feedback: only queries since then (7d, 12h, ISO date).")
@click.option("--layout", type=click.Choice(["grocerystore", "imagefolder", "manifest"]), default="grocerystore",
              show_default=True)
@click.option("--gallery", default=None,
              help="grocerystore: '+'-joined iconic/train/val (default iconic+train; 'iconic' = one image per "
                   "product); imagefolder: gallery sub-folder (default train, or a seeded split); manifest: all.")
@click.option("--queries", default=None,
              help="grocerystore: split (default test); imagefolder: sub-folder (default test) or 'auto'; "
                   "manifest: queries CSV with image,sku columns (default queries.csv beside the manifest).")
@click.option("--k", "ks", default="1,5,10", show_default=True, help="Cut-offs, comma-separated.")
@click.option("--model", default="efficientnet-lite0", show_default=True, help="Default model of the configurations.")
@click.option("--index", "index_type", default="flat", show_default=True,
              help="flat | hnsw | ivfpq | ivfflat | auto | a FAISS factory string.")
@click.option("--category-routing", type=click.Choice(["on", "off"]), default="off", show_default=True)
@click.option("--rerank", default="off", show_default=True,
              help="Re-ranking of the top candidates: off | qe | kr | qe+kr (settings: 'qe=5,kr=20,depth=200').")
@click.option("--tta", type=click.Choice(["on", "off"]), default="off", show_default=True,
              help="Queries embedded with their mirror image too.")
@click.option("--dba", type=click.IntRange(0, 50), default=0, show_default=True,
              help="Database-side augmentation of the gallery over this many neighbours (0 = off).")
@click.option("--shopper-views", type=click.IntRange(0, 64), default=0, show_default=True,
              help="Gallery vectors averaged with this many synthetic shopper photos of each catalogue image "
                   "(backgrounds, angle, light, partial views): for catalogues of studio photos.")
@click.option("--fusion", type=click.Choice(["on", "off"]), default="off", show_default=True,
              help="Fuse the category head into the ranking (its weight was chosen on validation by classify train).")
@click.option("--centre", type=click.Choice(["on", "off"]), default="off", show_default=True,
              help="Per-domain mean centring (catalogue photos vs shopper photos; no labels used).")
@click.option("--centre-sample", "centre_sample", default=None,
              help="Unlabelled shopper photos whose mean centres the queries (grocerystore: a split such as val; "
                   "other layouts: an image,sku CSV, the sku unused); default: the query photos themselves.")
@click.option("--adapt", type=click.IntRange(0, 10), default=0, show_default=True,
              help="With --centre on: rounds of catalogue adaptation toward the unlabelled shopper photos, as "
                   "`index build --adapt` makes for an iconic-only catalogue (0 = off; builds use 2).")
@click.option("--config", "configs", multiple=True,
              help="A configuration, e.g. 'model=efficientnet-lite0,index=hnsw,routing=off', or a TOML file; "
                   "repeat to compare side by side (unset keys take the options above).")
@click.option("--min-recall", default=None, help="Regression gate, e.g. 1=0.85,5=0.97: exit 1 if any config is below.")
@click.option("--category-depth", type=click.IntRange(0, 20), default=2, show_default=True,
              help="Per-category breakdown at this depth of the category path (0 = full path).")
@click.option("--latency-samples", type=click.IntRange(0, 100000), default=32, show_default=True,
              help="Queries embedded one at a time to time the embedding step.")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--workers", type=int, default=2, show_default=True, help="Decoding processes.")
@click.option("--no-cache", is_flag=True,
              help="Embed everything again into a throw-away vector cache (measures the gallery's images/s).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Also write results.json, report.md and PNG plots here.")
@click.option("--open-set", "open_set", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
              help="Also remove this seeded share of products from the gallery and score the calibrated "
                   "confidence on in- vs not-in-catalogue queries (AUROC, ECE, precision/coverage).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the --open-set product draw.")
@click.option("--calibrate-on", "calibrate_on", default=None,
              help="--open-set: fit the confidence on these labelled photos (grocerystore: a split such as val; "
                   "other layouts: an image,sku CSV) instead of the gallery's own photos. The same split as "
                   "--queries is scored out of fold (5 folds by product).")
@click.option("--near-duplicates", "near_duplicate", type=click.FloatRange(-1, 1), default=None,
              help="--open-set without --calibrate-on: the leave-one-out calibration also leaves out photos of "
                   "the same product at least this similar to the held-out one (0.85 chosen on Grocery val, "
                   "Lite0: benchmarks/results/open_set_feature_selection_val.json).")
@click.option("--json", "as_json", is_flag=True, help="Print exactly one JSON object.")
@pass_ctx
def recall_cmd(c: Ctx, dataset: str | None, from_feedback: bool, since: str | None, layout: str, gallery: str | None, queries: str | None, ks: str, model: str,
               index_type: str, category_routing: str, rerank: str, tta: str, dba: int, shopper_views: int, fusion: str,
               centre: str, centre_sample: str | None, adapt: int, configs: tuple[str, ...], min_recall: str | None,
               category_depth: int, latency_samples: int, batch_size: int, workers: int, no_cache: bool,
               out_dir: str | None, open_set: float | None, seed: int, calibrate_on: str | None,
               near_duplicate: float | None, as_json: bool) -> None:
    """Recall@k, precision@k, mAP@k, MRR, NDCG@k and latency of one or more configurations."""
    from shopsearch.app import load_model, load_router
    from shopsearch.evaluation import configs as cfgmod
    from shopsearch.evaluation import metrics, report
    from shopsearch.evaluation.datasets import load_dataset
    from shopsearch.evaluation.machine import machine_info
    from shopsearch.evaluation.runner import RunOptions, run_benchmark

    try:
        k_values = metrics.parse_ks(ks)
        floors = metrics.parse_thresholds(min_recall) if min_recall else {}
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    k_values = tuple(sorted(set(k_values) | set(floors)))  # a gated k is always measured
    if from_feedback:
        from indexer.cli.feedback_cmds import recall_from_feedback

        if dataset:
            raise click.UsageError("--from-feedback and --dataset exclude each other")
        recall_from_feedback(c, k_values, since, as_json)
        return
    if not dataset:
        raise click.UsageError("--dataset is required (or --from-feedback)")
    from shopsearch.rerank import parse_rerank

    parse_rerank(rerank)  # a malformed --rerank is refused before any embedding
    defaults = cfgmod.BenchConfig(model=model, index=index_type, routing=category_routing == "on",
                                  rerank=rerank.strip().lower(), tta=tta == "on", dba=dba, fusion=fusion == "on",
                                  shopper_views=shopper_views, centre=centre == "on", adapt=adapt)
    if adapt and centre != "on":
        raise click.UsageError("--adapt moves centred catalogue vectors: add --centre on")
    parsed = [cfg for text in configs for cfg in cfgmod.parse_config(text, defaults)] or [defaults]
    parsed = cfgmod.unique_labels(parsed)
    if any(p.gallery and layout != "grocerystore" for p in parsed):
        raise ConfigError("a per-configuration gallery is only supported for the grocerystore layout")

    calibration_queries = ()
    if calibrate_on:
        if open_set is None:
            raise click.BadParameter("--calibrate-on needs --open-set", param_hint="--calibrate-on")
        calibration_queries = load_dataset(dataset, layout, gallery, calibrate_on).queries
    sample = load_dataset(dataset, layout, gallery, centre_sample).queries if centre_sample else ()
    with tempfile.TemporaryDirectory(prefix="shopsearch-bench-vectors-") as scratch:
        results = run_benchmark(
            lambda g: load_dataset(dataset, layout, g or gallery, queries), parsed,
            Path(scratch) if no_cache else c.settings.vector_cache_dir,
            embedder_for=lambda spec: load_model(c.settings, spec),
            router_for=lambda emb: load_router(c.settings, emb),
            options=RunOptions(ks=k_values, batch_size=batch_size, workers=workers, latency_samples=latency_samples,
                               category_depth=category_depth, progress=sys.stderr.isatty(),
                               compile=c.settings.pipeline.compile, gpu=c.settings.gpu,
                               open_set=open_set, open_set_seed=seed, calibration_queries=calibration_queries,
                               near_duplicate=near_duplicate, centre_sample=sample),
        )
    machine = machine_info()
    for p in results[0].dataset.problems[:10]:
        click.echo(f"dataset problem: {p}", err=True)
    if as_json:
        click.echo(json.dumps(report.run_json(results, machine), indent=2))
    else:
        click.echo(report.text_table(results))
        for r in results:
            if r.open_set is not None:
                o = r.open_set
                click.echo(f"open set [{r.config.label}]: {o.removed_products} of "
                           f"{o.removed_products + o.kept_products} products removed; AUROC "
                           f"{o.auroc if o.auroc is None else round(o.auroc, 4)}, ECE "
                           f"{o.ece if o.ece is None else round(o.ece, 4)} ({o.queries_in} in / "
                           f"{o.queries_out} not in the catalogue)")
    if out_dir:
        written = report.write_outputs(results, machine, Path(out_dir))
        click.echo(f"wrote {', '.join(str(p) for p in written.values())}", err=True)
    if floors:
        failures = metrics.gate_failures({r.config.label: r.summary.recall_at for r in results}, floors)
        if failures:
            click.echo("recall below the minimum:\n  " + "\n  ".join(failures), err=True)
            raise SystemExit(1)
        click.echo("recall gate passed: " + ", ".join(f"recall@{k} >= {v}" for k, v in sorted(floors.items())),
                   err=True)


def register(cli: click.Group) -> None:
    from indexer.cli.throughput_cmds import throughput  # its own module: a different job, a different user

    from indexer.cli.feedback_cmds import bench_feedback

    bench.add_command(throughput)
    bench.add_command(bench_feedback)
    cli.add_command(bench)
