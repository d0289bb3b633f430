"""`shopsearch search IMAGE`."""
from __future__ import annotations

from decimal import Decimal
from typing import Any

import click

from indexer.cli.context import Ctx, echo_json, pass_ctx
from shopsearch.config import MAX_K
from shopsearch.results import SearchFilters, parse_price  # light: dataclasses only


class PriceType(click.ParamType):
    """A price filter: a plain finite number from 0 to 10^12, as the API takes it (usage error else)."""

    name = "price"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Decimal:
        if isinstance(value, Decimal):
            return value
        text = str(value).strip()
        try:
            d = parse_price(text)
        except ValueError:
            self.fail(f"{text!r} is not a number", param, ctx)
        if not SearchFilters.price_allowed(d):
            self.fail(f"{text!r} is not a price from 0 to {SearchFilters.MAX_PRICE:,}", param, ctx)
        return d


LIST_HINT = "`shopsearch search --list-categories` lists them"


def _list_categories(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    """--list-categories: every category, one a line, as --category takes it; then exit."""
    if not value or ctx.resilient_parsing:
        return
    from shopsearch.category_filter import display

    paths = sorted(cat.path for cat in ctx.find_object(Ctx).catalogue(create=False).categories())
    for path in paths:
        click.echo(display(path))
    if not paths:
        click.echo("this shop has no categories", err=True)
    ctx.exit()


def _category(catalogue, text: str) -> str:
    """The catalogue path `text` names. One that names none (or several) is a usage error, exit 2
    like the API's 400 (README: exit codes), in one line saying how to list the categories."""
    from shopsearch.category_filter import listing, resolve_category

    paths = [cat.path for cat in catalogue.categories()]
    return resolve_category(text, paths, how_to_list=f"{listing(paths)}" + (f" ({LIST_HINT})" if paths else ""))


def _json_shape(res, k: int, filters: SearchFilters) -> dict[str, Any]:
    """The result as the API's POST /api/v1/search answers it (webapp/params.py result_dict), the
    hits' local file paths kept: request_id is null, the CLI's searches are not logged."""
    lo, hi = filters.min_price, filters.max_price
    return {**res.to_dict(), "count": len(res.hits), "k": k, "crop": None, "request_id": None,
            "filters": {"category": filters.category, "min_price": float(lo) if lo is not None else None,
                        "max_price": float(hi) if hi is not None else None}}


@click.command("search")
@click.argument("image", type=click.Path(exists=True, dir_okay=False))
@click.option("-k", "k", type=click.IntRange(1, MAX_K), default=10, show_default=True,
              help="How many products to show, at most the API's cap on k.")
@click.option("--category", default=None,
              help="Only products under this category: a path ('Fruit > Apple', 'fruit/apple') or a leaf name "
                   "('Granny Smith'), any case, as the API takes it.")
@click.option("--list-categories", is_flag=True, is_eager=True, expose_value=False, callback=_list_categories,
              help="Print the catalogue's categories, one a line as --category takes them, and exit (no IMAGE).")
@click.option("--min-price", type=PriceType(), default=None)
@click.option("--max-price", type=PriceType(), default=None)
@click.option("--model", default=None, help="Must match the model that built the index (default: that model).")
@click.option("--no-routing", is_flag=True, help="Do not narrow the search to the predicted category.")
@click.option("--rerank", default=None, help="off | qe | kr | qe+kr (query expansion, k-reciprocal re-ranking "
              "of the top candidates; default SHOPSEARCH_RERANK or off).")
@click.option("--tta", is_flag=True, help="Also embed the mirrored photo (about twice the embedding time).")
@click.option("--fusion/--no-fusion", default=None,
              help="Fuse the category head into the ranking (default: SHOPSEARCH_FUSION, on); --no-fusion "
                   "filters by the predicted category's thresholds instead.")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object shaped as the API's /api/v1/search answer (request_id null: not logged).")
@pass_ctx
def search_cmd(c: Ctx, image: str, k: int, category: str | None, min_price: Decimal | None,
               max_price: Decimal | None, model: str | None, no_routing: bool, rerank: str | None, tta: bool,
               fusion: bool | None,
               as_json: bool) -> None:
    """Find the catalogue products that look most like IMAGE."""
    if min_price is not None and max_price is not None and min_price > max_price:
        raise click.UsageError(f"--min-price ({min_price}) is above --max-price ({max_price})")
    from shopsearch.embedding.preprocess import decode_query
    from shopsearch.errors import CatalogueEmptyError
    from shopsearch.rerank import parse_rerank

    rerank_options = None if rerank is None else parse_rerank(rerank)  # a typo costs no model load
    catalogue = c.catalogue(create=False)  # a mistyped --data-dir is said as such, and makes no empty catalogue
    products = catalogue.stats().products
    if category and products:  # resolved before the model loads: a typo costs no model time
        category = _category(catalogue, category)
    svc = c.search_service(model)
    if products == 0:  # else every hit is dropped and "no matching products" misleads
        raise CatalogueEmptyError(
            f"the catalogue database {catalogue.engine.url.render_as_string(hide_password=True)} holds no products, "
            f"but index build {svc.manifest.build_id} has {svc.manifest.count} vectors: is --database-url "
            "(SHOPSEARCH_DATABASE_URL) the database the index was built from?")
    if fusion and not hasattr(svc.router, "category_boost"):  # asked for by name, and nothing to fuse
        click.echo(f"warning: --fusion does nothing here: model {svc.manifest.model_name} has no category head "
                   "(`shopsearch classify train` makes one)", err=True)
    img = decode_query(image, svc.embedder)  # decoded as the index's images were
    filters = SearchFilters(category, min_price, max_price)
    res = svc.search_image(img, k=k, filters=filters, routing=not no_routing, rerank=rerank_options, tta=tta or None,
                           fusion=fusion)
    if as_json:
        echo_json(_json_shape(res, k, filters))
        return
    if res.predicted_category:
        p = res.predicted_category
        click.echo(f"predicted category: {p.category} ({p.confidence:.0%}, routing {p.routing})")
    if res.match is not None:
        click.echo(f"match: {res.match} ({res.confidence:.0%} that the first product is the one photographed)"
                   + ("; no close match in the catalogue, these are the nearest" if res.match == "none" else ""))
    if not res.hits:
        click.echo("no matching products")
    for rank, h in enumerate(res.hits, 1):
        price = f"{h.price} {h.currency or ''}".strip() if h.price is not None else "-"
        click.echo(f"{rank:>3}. {h.score:.3f}  {h.sku:<28} {h.title:<32} {h.category or '-':<30} {price}")


def register(cli: click.Group) -> None:
    cli.add_command(search_cmd)
