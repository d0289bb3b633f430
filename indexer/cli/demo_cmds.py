"""`shopsearch demo`: import the Grocery Store catalogue, index it, then serve the app."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from indexer.cli.context import Ctx, pass_ctx
from indexer.cli.datasets import default_grocery


@click.command("demo")
@click.option("--dataset", envvar="SHOPSEARCH_DEMO_DATASET", type=click.Path(file_okay=False), default=None,
              help="Grocery Store dataset folder. Default: ../shared/datasets/grocerystore beside the "
                   "repository, from any directory.")
@click.option("--model", envvar="SHOPSEARCH_MODEL", default="auto", show_default=True)
@click.option("--reference-split", default="train", show_default=True,
              type=click.Choice(["none", "train", "val", "test"]))
@click.option("--classifier/--no-classifier", default=True, show_default=True,
              help="Train the category head on the catalogue's categories when the model has none: search "
                   "fuses it into the ranking (SHOPSEARCH_FUSION), the largest measured gain without a GPU.")
@click.option("--calibration-split", default="val", show_default=True,
              type=click.Choice(["none", "train", "val", "test"]),
              help="Labelled shopper photos the confidence is calibrated on (searched as the shop serves them, "
                   "fused with the category head); 'none': leave-one-out over the catalogue's own photos.")
@click.option("--serve/--no-serve", default=True, show_default=True,
              help="Serve the web app after indexing (else run one sample search).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--workers", envvar="SHOPSEARCH_WORKERS", type=click.IntRange(1, 64), default=2, show_default=True,
              help="Gunicorn worker processes.")
@pass_ctx
def demo_cmd(c: Ctx, dataset: str | None, model: str, reference_split: str, calibration_split: str, classifier: bool,
             serve: bool, host: str, port: int, workers: int) -> None:
    """Import + index the Grocery Store catalogue, then serve it (idempotent: reruns are quick)."""
    from shopsearch.catalogue.importers import import_catalogue
    from shopsearch.catalogue.readers import RowProblem, read_source
    from shopsearch.embedding.preprocess import decode_query
    from shopsearch.errors import ManifestError

    root = Path(dataset) if dataset else default_grocery()
    if not (root / "dataset" / "classes.csv").is_file():
        raise ManifestError(f"Grocery Store dataset not found at {root.resolve()} "
                            "(pass --dataset or set SHOPSEARCH_DEMO_DATASET)")
    problems: list[RowProblem] = []
    split = None if reference_split == "none" else reference_split
    report = import_catalogue(c.catalogue(), read_source(root, "grocerystore", problems, split), problems)
    click.echo(f"catalogue: {report.products_created} new, {report.products_updated} updated, "
               f"{report.products_unchanged} unchanged products; {report.images_failed} image problems")
    from shopsearch.app import model_for_build

    store = c.index_store()
    # as `index build` picks it: a serving build's precision is kept, else the faster one here
    embedder, choice = model_for_build(c.settings, store, model)
    click.echo(f"model: {embedder.name} on {embedder.device}"
               + (f" (precision auto: {choice.precision}, faster here)" if choice.probe_ms else ""))
    current = store.current_manifest()
    n_images = len(c.catalogue().indexable_images())
    if current and current.model_fingerprint == embedder.fingerprint and current.count == n_images:
        click.echo(f"index: build {current.build_id} is up to date ({current.count} vectors)")
    else:
        from shopsearch.index.lock import index_lock

        with index_lock(c.settings.index_dir, what="demo index build"):  # no build of another run is pruned
            b = c.index_builder(embedder, store).build(compile=c.settings.pipeline.compile)
        click.echo(f"index: build {b.build_id}, {b.vectors} vectors, {b.embedded} embedded in {b.seconds:.0f}s")
    if classifier:
        _train_head_if_missing(c, embedder, root, None if calibration_split in ("none", reference_split)
                               else calibration_split)
    if calibration_split not in ("none", reference_split):
        _calibrate_on_photos(c, store, root, calibration_split)
    else:
        _calibrate_if_missing(c, store, store.current_id())
    sample = root / "dataset" / "test" / "Fruit" / "Banana" / "Banana_004.jpg"
    if sample.is_file():
        svc = c.search_service(model if model != "auto" else None)
        res = svc.search_image(decode_query(sample, svc.embedder), k=3)
        click.echo(f"sample search {sample.name}: "
                   + ", ".join(f"{rank}. {_shown(h)}" for rank, h in enumerate(res.hits, 1))
                   + (f"; match {res.match}, confidence {res.confidence:.2f}" if res.confidence is not None else ""))
    if not serve:
        return
    from webapp.server import run_server
    click.echo(f"serving on http://{host}:{port}/  (Ctrl-C to stop)")
    run_server(c.settings, host=host, port=port, workers=workers)


def _train_head_if_missing(c: Ctx, embedder, root: Path, photo_split: str | None) -> None:
    """The fast head on the catalogue's own categories, unless one exists for this model. Its
    settings (regularisation, fusion weight) are chosen on the labelled shopper photos of
    `photo_split` when given, as `classify train --val` does: on a held-out tenth of the
    catalogue instead, whose photos have near-duplicate twins in the gallery, plain retrieval
    looks almost perfect and fusion is given next to no weight. The head is not refitted on
    those photos, because the confidence is calibrated on them next."""
    from indexer.cli.classify_cmds import train_head_for
    from shopsearch.classify.data import catalogue_images, grocery_split, stratified_holdout
    from shopsearch.classify.router import find_artefact

    if find_artefact(c.settings, embedder) is not None:
        click.echo("classifier: already trained for this model")
        return
    items = catalogue_images(c.catalogue())
    if len({i.category for i in items}) < 2:
        click.echo("classifier: not trained (the catalogue has fewer than two categories)")
        return
    if photo_split is not None:
        art, path = train_head_for(c, embedder, items, grocery_split(root, photo_split), refit=False)
    else:
        art, path = train_head_for(c, embedder, *stratified_holdout(items, 0.1))
    top1 = art.metrics.get("val", {}).get("fine", {}).get("top1")
    click.echo(f"classifier: {len(art.labels.fine)} categories, {photo_split or 'held-out'} top-1 "
               f"{'n/a' if top1 is None else f'{top1:.0%}'}, fusion weight {art.thresholds.fusion:g} ({path})")


def _calibrate_if_missing(c: Ctx, store, build_id: str) -> None:
    """A build made before confidence calibration existed gets one (every new build has its own)."""
    from shopsearch.confidence import CALIBRATION_FILE
    from shopsearch.confidence_fit import calibrate_serving

    if (store.build_dir(build_id) / CALIBRATION_FILE).is_file():
        return
    _, cal = calibrate_serving(store, c.catalogue().indexable_images())
    click.echo(f"index: calibrated confidence on {cal.samples} held-out catalogue photos" if cal.fitted
               else f"index: confidence not calibrated: {cal.reason}")


def _calibrate_on_photos(c: Ctx, store, root: Path, split: str) -> None:
    """Calibrate the confidence on a split of labelled shopper photos, searched as the shop serves
    them (fused with the head): catalogue photos of one product are near-duplicates of each other,
    so a fit on them alone calls shoppers' right answers unsure (unless already done for this build)."""
    from shopsearch.app import embedder_for_index, serving_fusion
    from shopsearch.calibration_source import remember_photos
    from shopsearch.confidence import load_calibration, scoring_key
    from shopsearch.confidence_fit import calibrate_serving
    from shopsearch.evaluation.datasets import load_dataset
    from shopsearch.labelled_photos import load_labelled_photos
    from shopsearch.rerank import parse_rerank

    build_id = store.current_id()
    embedder = embedder_for_index(c.settings, store)
    fusion = serving_fusion(c.settings, embedder, c.catalogue())
    rerank = parse_rerank(c.settings.rerank)
    rows = [(Path(q.path), q.sku) for q in load_dataset(root, "grocerystore", "iconic", split).queries if q.sku]
    remember_photos(store.root, rows)  # later builds (`index build`, a model switch) refit on them too
    have = load_calibration(store.build_dir(build_id), build_id)
    if have.fitted and have.method == "labelled" and have.scoring == scoring_key(rerank.spec, fusion is not None) \
            and have.density is not None:  # a fit from before the density model is refitted
        return
    photos = load_labelled_photos(rows, embedder, c.catalogue(), c.settings.vector_cache_dir)
    _, cal = calibrate_serving(store, c.catalogue().indexable_images(), rerank, photos.queries, fusion=fusion)
    click.echo(f"index: confidence calibrated on {cal.samples} {split} photos ({cal.scoring}; features "
               f"{'+'.join(cal.query_features)}); 'no close match' below {cal.none_below:.2f}" if cal.fitted and cal.method == "labelled"
               else f"index: confidence calibrated on the catalogue ({cal.reason or cal.method})")


def register(cli: click.Group) -> None:
    cli.add_command(demo_cmd)


def _shown(hit: Any) -> str:
    """A sample hit: its calibrated chance, which follows the ranking (a fused score mixes in a
    log-probability and reads as nonsense; the plain similarity is not what ranked it)."""
    if hit.calibrated is None:
        return f"{hit.sku} (similarity {hit.plain_score:.2f})"
    return f"{hit.sku} ({100 * hit.calibrated:.0f}% likely)"
