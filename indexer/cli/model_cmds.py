"""`shopsearch model ...`: derived forms of a model (int8 calibration)."""
from __future__ import annotations

from pathlib import Path

import click

from indexer.cli.context import Ctx, echo_json, pass_ctx


@click.group("model")
def model() -> None:
    """Prepare models: int8 calibration for fast CPU indexing."""


@model.command("quantize")
@click.option("--model", "spec", default="efficientnet-lite0", show_default=True,
              help="The fp32 model spec to make an int8 form of.")
@click.option("--images", "count", type=click.IntRange(8, 100_000), default=128, show_default=True,
              help="How many images to calibrate on (spread evenly over the catalogue).")
@click.option("--from", "source", type=click.Path(exists=True, file_okay=False), default=None,
              help="A folder of images to calibrate on instead of the catalogue's.")
@click.option("--force", is_flag=True, help="Replace an existing calibration (indexes built with it must be rebuilt).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@pass_ctx
def quantize(c: Ctx, spec: str, count: int, source: str | None, force: bool, as_json: bool) -> None:
    """Calibrate MODEL+int8 on the catalogue's images; then use `--model MODEL+int8` anywhere.

    int8 runs on CPUs only and is about twice as fast as fp32 where there is no bf16
    (AVX2-only x86). The calibration is saved under the data dir's models/ folder and
    recorded in every index built with it."""
    from shopsearch.catalogue.readers import IMAGE_SUFFIXES
    from shopsearch.embedding.calibrate import calibrate_int8

    if source:
        paths = sorted(str(p) for p in Path(source).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    else:  # by content hash: the same catalogue gives the same sample whatever the import order
        paths = [im.path for im in sorted(c.catalogue().indexable_images(), key=lambda im: im.sha256 or "")]
    report = calibrate_int8(spec, paths, count, models_dir=c.settings.models_dir, overwrite=force)
    if as_json:
        echo_json(report.to_dict())
        return
    click.echo(f"calibrated {report.model} on {report.images} images in {report.seconds:.0f} s "
               f"({report.skipped} skipped): {report.path}")
    click.echo(f"  fingerprint {report.fingerprint}")
    click.echo(f"  use it: shopsearch index build --model {report.model}")


def register(cli: click.Group) -> None:
    cli.add_command(model)
