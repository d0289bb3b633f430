"""`shopsearch search IMAGE`."""
from __future__ import annotations

from decimal import Decimal

import click

from indexer.cli import Ctx, echo_json, pass_ctx


@click.command("search")
@click.argument("image", type=click.Path(exists=True, dir_okay=False))
@click.option("-k", "k", type=click.IntRange(1, 1000), default=10, show_default=True)
@click.option("--category", default=None, help="Only products under this category path, e.g. Fruit/Apple.")
@click.option("--min-price", type=Decimal, default=None)
@click.option("--max-price", type=Decimal, default=None)
@click.option("--model", default=None, help="Must match the model that built the index (default: that model).")
@click.option("--no-routing", is_flag=True, help="Do not narrow the search to the predicted category.")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def search_cmd(c: Ctx, image: str, k: int, category: str | None, min_price: Decimal | None,
               max_price: Decimal | None, model: str | None, no_routing: bool, as_json: bool) -> None:
    """Find the catalogue products that look most like IMAGE."""
    from shopsearch.app import open_search_service
    from shopsearch.embedding.preprocess import decode_query
    from shopsearch.results import SearchFilters

    svc = open_search_service(c.settings, catalogue=c.catalogue(), model=model)
    img = decode_query(image, svc.embedder)  # decoded as the index's images were
    res = svc.search_image(img, k=k, filters=SearchFilters(category, min_price, max_price), routing=not no_routing)
    if as_json:
        echo_json(res.to_dict())
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
