"""`shopsearch index ...`: build the FAISS index from the catalogue."""
from __future__ import annotations

import click

from indexer.cli import Ctx, echo_json, pass_ctx


@click.group("index")
def index() -> None:
    """Build and manage the vector index."""


@index.command("build")
@click.option("--model", envvar="SHOPSEARCH_MODEL", default="auto", show_default=True,
              help="efficientnet-lite0 | openclip:ARCH/PRETRAINED | openclip:ARCH@CHECKPOINT | colorhist | auto")
@click.option("--index", "index_type", default="auto", show_default=True,
              help="auto | flat | hnsw | ivfpq | any FAISS factory string")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--workers", type=int, default=2, show_default=True, help="Decoding processes.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@pass_ctx
def build_cmd(c: Ctx, model: str, index_type: str, batch_size: int, workers: int, as_json: bool) -> None:
    """Embed every catalogue image (reusing cached vectors) and publish a new index build."""
    from indexer.build import IndexBuilder
    from shopsearch.embedders import load_embedder

    embedder = load_embedder(model, c.settings.device)
    builder = IndexBuilder(embedder, c.catalogue(), c.index_store(), c.settings.vector_cache_dir)
    if not as_json:
        click.echo(f"model: {embedder.name} ({embedder.fingerprint}) on {embedder.device}", err=True)
    report = builder.build(index_type=index_type, batch_size=batch_size, workers=workers, progress=not as_json)
    if as_json:
        echo_json(report.to_dict())
        return
    click.echo(f"build {report.build_id}: {report.vectors} vectors ({report.index_type}), "
               f"embedded {report.embedded}, reused {report.skipped}, failed {len(report.failed)}, "
               f"{report.seconds:.1f}s ({report.images_per_s:.1f} img/s)")
    for image_id, path, reason in report.failed[:20]:
        click.echo(f"  failed image {image_id} {path}: {reason}", err=True)


def register(cli: click.Group) -> None:
    cli.add_command(index)
