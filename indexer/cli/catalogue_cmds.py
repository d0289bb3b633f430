"""`shopsearch catalogue ...` and `shopsearch db ...`."""
from __future__ import annotations

from dataclasses import asdict, replace
from typing import TYPE_CHECKING

import click

from indexer.cli.context import Ctx, echo_json, pass_ctx
from shopsearch.catalogue.formats import FORMATS
from shopsearch.errors import ProductNotFoundError

if TYPE_CHECKING:
    from shopsearch.catalogue.importers import ImportReport


@click.group("catalogue")
def catalogue() -> None:
    """Import, show and delete catalogue products."""


@catalogue.command("import")
@click.argument("path", type=click.Path(exists=True))
@click.option("--format", "fmt", type=click.Choice(("auto",) + FORMATS), default="auto", show_default=True,
              help="auto: by the file's suffix (.csv, .jsonl); a folder is an ImageFolder tree, or the "
                   "Grocery Store dataset when it holds dataset/classes.csv.")
@click.option("--reference-split", type=click.Choice(["train", "val", "test"]), default=None,
              help="Grocery Store: add this split's shopper photos as reference images.")
@click.option("--workers", type=int, default=2, show_default=True)
@click.option("--strict", is_flag=True,
              help="Refuse the whole file (nothing imported) when a row is unreadable or repeats a SKU.")
@click.option("--refresh-downloads", is_flag=True,
              help="Download every image named by URL again (by default a URL downloaded before is not).")
@click.option("--json", "as_json", is_flag=True, help="Print the import report as JSON.")
@pass_ctx
def import_cmd(c: Ctx, path: str, fmt: str, reference_split: str | None, workers: int, strict: bool,
               refresh_downloads: bool, as_json: bool) -> None:
    """Import a manifest (CSV/JSONL), an ImageFolder tree or the Grocery Store dataset.

    Images may be named by path (relative to the manifest) or by http(s) URL: a URL is
    downloaded once into the data folder's downloads/ and imported like a file. A SKU on several
    rows is imported from its last row and reported. Exits 1 when no row gave a product, or
    when every image was unusable (the products are written, without one)."""
    from pathlib import Path

    from shopsearch.catalogue.downloads import ImageDownloader
    from shopsearch.catalogue.importers import import_catalogue
    from shopsearch.catalogue.readers import RowProblem, read_source

    problems: list[RowProblem] = []
    records = read_source(Path(path), fmt, problems, reference_split)
    downloader = ImageDownloader(c.settings.downloads_dir, c.settings.downloads)
    report = import_catalogue(c.catalogue(), records, problems, workers=workers, progress=not as_json,
                              strict=strict, downloader=downloader, refresh_downloads=refresh_downloads)
    # Products without a merchant category get a predicted one when a classifier exists
    # for the serving index's model (issue: category tagging).
    from shopsearch.classify.tagging import tag_after_import

    tagging = tag_after_import(c.settings, c.catalogue(), progress=not as_json)
    if as_json:
        echo_json({**report.to_dict(), "tagging": tagging.to_dict() if tagging else None})
        _fail_if_failed(report)
        return
    click.echo(f"products: {report.products_created} created, {report.products_updated} updated, "
               f"{report.products_unchanged} unchanged; images added: {report.images_added}, "
               f"failed: {report.images_failed}, removed: {report.images_removed}; "
               f"files read: {report.images_decoded}, unchanged on disk: {report.images_unchanged}"
               + (f"; downloaded: {report.images_downloaded}" if report.images_downloaded else ""))
    if report.images_replaced:
        listed = ", ".join(report.images_replaced[:10])
        more = f" and {len(report.images_replaced) - 10} more" if len(report.images_replaced) > 10 else ""
        click.echo(f"image sets replaced (rows naming other images): {listed}{more}")
    if tagging is not None:
        click.echo(f"tagged {tagging.tagged} uncategorised product(s) with a predicted category")
    for p in report.problems[:50]:
        # a repeated SKU's row is the one imported (the last row wins); a refresh that failed kept
        # the earlier image (its reason says so); other problems' rows are skipped
        verb, tail = {"duplicate": ("", "; imported from its last row"), "download": ("", "")}.get(p.kind, ("skipped ", ""))
        click.echo(f"  {verb}{p.where}" + (f" (sku {p.sku})" if p.sku else "") + f": {p.reason}{tail}", err=True)
    if len(report.problems) > 50:
        click.echo(f"  ... and {len(report.problems) - 50} more problems (use --json for all)", err=True)
    _fail_if_failed(report)


def _fail_if_failed(report: ImportReport) -> None:
    """Exit 1 (after the report) when no row gave a product or every image was unusable."""
    failure = report.failure()
    if failure is not None:
        raise failure


@catalogue.command("delete")
@click.argument("skus", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def delete_cmd(c: Ctx, skus: tuple[str, ...], as_json: bool) -> None:
    """Delete products by SKU (the index drops them at the next `index update`).
    Exits 1 when none of the SKUs exists."""
    found = c.catalogue().delete_products(skus)
    missing = sorted(set(skus) - set(found))
    if as_json:
        echo_json({"deleted": found, "not_found": missing})
    else:
        click.echo(f"deleted {len(found)} product(s)")
        if missing:
            click.echo(f"not found: {', '.join(missing)}", err=True)
    if not found:
        raise ProductNotFoundError(f"nothing was deleted: no product with SKU {', '.join(missing)}")


@catalogue.command("problems")
@click.option("--json", "as_json", is_flag=True, help="One JSON object: {\"images\": [...]}.")
@pass_ctx
def problems_cmd(c: Ctx, as_json: bool) -> None:
    """List the images that are not indexed (missing or unusable files) and why (a URL's password masked)."""
    from shopsearch.catalogue.download_http import mask_url

    # an image whose download failed is stored under its URL, password masked (older imports stored it whole)
    bad = [replace(b, path=mask_url(b.path), error=b.error and mask_url(b.error))
           for b in c.catalogue(create=False).unusable_images()]
    if as_json:
        echo_json({"images": [asdict(b) for b in bad]})
        return
    if not bad:
        click.echo("every catalogue image is usable")
        return
    for b in bad:
        click.echo(f"{b.sku}\t{b.status}\t{b.path}\t{b.error or ''}")
    click.echo(f"{len(bad)} image(s) not indexed; fix or replace the files, then `shopsearch index update`", err=True)


@catalogue.command("show")
@click.argument("sku")
@pass_ctx
def show_cmd(c: Ctx, sku: str) -> None:
    """Print one product as JSON (an image URL's password masked)."""
    from shopsearch.catalogue.download_http import mask_url

    product = c.catalogue(create=False).get_product(sku.strip()).to_dict()
    for image in product["images"]:  # a failed download keeps its URL as its path
        image["path"] = mask_url(image["path"])
    echo_json(product)


@click.group("db")
def db() -> None:
    """Catalogue database schema (Alembic migrations)."""


@db.command("upgrade")
@pass_ctx
def db_upgrade(c: Ctx) -> None:
    """Migrate the database to the newest schema."""
    from shopsearch.catalogue import db as dbmod

    engine = dbmod.connect(c.settings.db_url)
    click.echo(f"schema at revision {dbmod.upgrade(engine)}")


@db.command("current")
@pass_ctx
def db_current(c: Ctx) -> None:
    """Print the database's schema revision and the newest one this code knows."""
    from shopsearch.catalogue import db as dbmod

    engine = dbmod.connect(c.settings.db_url)
    click.echo(f"current: {dbmod.current_revision(engine)}  head: {dbmod.head_revision()}")


#: manifest.json's fields under the names /healthz and the other --json outputs give them
MANIFEST_NAMES = {"model_name": "model", "model_fingerprint": "fingerprint", "count": "vectors"}


@click.command("stats")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def stats_cmd(c: Ctx, as_json: bool) -> None:
    """Catalogue and index figures."""
    st = asdict(c.catalogue(create=False).stats())
    m = c.index_store().current_manifest()
    st["index"] = {MANIFEST_NAMES.get(k, k): v for k, v in asdict(m).items()} if m else None
    if as_json:
        echo_json(st)
        return
    for k, v in st.items():
        if k != "index":
            click.echo(f"{k:>14}: {v}")
    if m:
        click.echo(f"         index: build {m.build_id}, {m.count} vectors, {m.index_type}, model {m.model_name}")
    else:
        click.echo("         index: none built yet (run `shopsearch index build`)")


def register(cli: click.Group) -> None:
    cli.add_command(catalogue)
    cli.add_command(db)
    cli.add_command(stats_cmd)
