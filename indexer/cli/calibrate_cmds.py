"""`shopsearch index calibrate`: refit the serving build's confidence calibration (joins the
`index` group, registered by index_cmds)."""
from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from indexer.cli.context import Ctx, echo_json, pass_ctx

if TYPE_CHECKING:
    from shopsearch.confidence import Calibration


@click.command("calibrate")
@click.option("--photos", "photos_csv", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Labelled shopper photos (CSV: image,sku), e.g. a validation split: a fairer fit than the "
                   "catalogue's own photos, whose near-duplicates make every match look certain. Remembered "
                   "(their paths, beside the index): later builds and calibrations refit on them.")
@click.option("--catalogue-only", is_flag=True,
              help="Forget remembered labelled photos and fit on the catalogue's own held-out photos.")
@click.option("--near-duplicates", "near_duplicate", type=click.FloatRange(-1, 1), default=None,
              help="Catalogue-only fits: also leave out same-product photos at least this similar to each held-out "
                   "one (burst shots make every match look certain; 0.85 suits EfficientNet-Lite0).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@pass_ctx
def calibrate_cmd(c: Ctx, photos_csv: str | None, catalogue_only: bool, near_duplicate: float | None,
                  as_json: bool) -> None:
    """Refit the serving build's confidence calibration (done by every build and update), on the
    search's default scoring path (SHOPSEARCH_RERANK): on --photos, else on the labelled photos
    remembered from an earlier --photos, else on the catalogue."""
    from shopsearch.app import embedder_for_index
    from shopsearch.calibration_source import forget_photos, remember_photos, remembered_photos
    from shopsearch.confidence_fit import calibrate_serving
    from shopsearch.rerank import parse_rerank

    if photos_csv and catalogue_only:
        raise click.UsageError("--photos and --catalogue-only exclude each other")
    store = c.index_store()
    if catalogue_only:
        forget_photos(store.root)
    labelled, fusion, rows = (), None, None
    if photos_csv:
        from shopsearch.labelled_photos import read_labelled_csv

        incomplete: list[int] = []
        rows = read_labelled_csv(photos_csv, incomplete)
        if incomplete:
            lines = ", ".join(map(str, incomplete[:10])) + (" …" if len(incomplete) > 10 else "")
            click.echo(f"skipped {len(incomplete)} row(s) without both an image and a sku (line {lines})", err=True)
    elif not catalogue_only:
        rows = remembered_photos(store.root)
        if rows is not None and not as_json:
            click.echo(f"calibrating on the {len(rows)} labelled photos remembered from an earlier --photos "
                       "(--catalogue-only forgets them)", err=True)
    if rows:
        from shopsearch.app import serving_fusion
        from shopsearch.labelled_photos import load_labelled_photos

        embedder = embedder_for_index(c.settings, store)
        photos = load_labelled_photos(rows, embedder, c.catalogue(), c.settings.vector_cache_dir,
                                      progress=sys.stderr.isatty())
        for line in photos.unreadable[:10]:
            click.echo(f"skipped photo: {line}", err=True)
        if len(photos.unreadable) > 10:
            click.echo(f"... and {len(photos.unreadable) - 10} more photos skipped", err=True)
        if photos.unknown_skus:
            click.echo(f"{photos.unknown_skus} photo(s) name a SKU the catalogue lacks: fitted as photos of "
                       "products this shop does not sell (a right answer for them is 'no close match')", err=True)
        labelled = photos.queries
        # searched as the shop serves them: fused with the category head when it is (the head never saw them)
        fusion = serving_fusion(c.settings, embedder, c.catalogue())
    build_id, cal = calibrate_serving(store, c.catalogue().indexable_images(), parse_rerank(c.settings.rerank),
                                      labelled, near_duplicate, fusion)
    if photos_csv and cal.fitted and cal.method == "labelled":
        remember_photos(store.root, rows)
    unused = near_duplicates_unused(near_duplicate, cal)
    if unused:
        click.echo(f"warning: {unused}", err=True)
    if as_json:
        said = cal.describe()
        echo_json({**cal.to_json(), "build_id": build_id,
                   "near_duplicates_used": near_duplicate is not None and not unused,
                   **{k: said[k] for k in ("source", "fallback") if k in said},
                   **({"warnings": [unused]} if unused else {})})
        return
    if cal.fitted:
        fallback = ("too few usable labelled photos: catalogue fallback" if labelled
                    else "catalogue-only fallback: no labelled photos given")
        source = "labelled shopper photos" if cal.method == "labelled" else f"held-out catalogue photos ({fallback})"
        click.echo(f"build {build_id}: calibrated on {cal.samples} {source} "
                   f"(top-1 accuracy {cal.loo_top1_accuracy:.3f}, scoring {cal.scoring}, features "
                   f"{'+'.join(cal.query_features)}); 'no close match' below "
                   f"{cal.none_below:.2f}, 'strong' from {cal.strong_at:.2f}. Running web servers use it "
                   "after a restart or the next build.")
    else:
        click.echo(f"build {build_id}: not calibrated: {cal.reason}")


def near_duplicates_unused(near_duplicate: float | None, cal: "Calibration") -> str | None:
    """Why --near-duplicates was not used by this fit (None when it was, or was not given): it
    leaves out a held-out catalogue photo's burst shots, and a fit on labelled shopper photos
    holds out no catalogue photo."""
    if near_duplicate is None or not (cal.fitted and cal.method == "labelled"):
        return None
    return (f"--near-duplicates {near_duplicate:g} was not used: the fit is on labelled shopper photos, which are "
            "not in the index, and it only applies to fits on held-out catalogue photos (--catalogue-only)")
