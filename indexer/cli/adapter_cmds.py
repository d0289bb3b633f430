"""`shopsearch adapter train`: learn a projection of the serving model's vectors from the
catalogue and confirmed shopper queries, and publish it as a new build (or the shadow)."""
from __future__ import annotations

import click

from indexer.cli.shadow_cmds import Ctx, confirmed_pairs, echo_json, hold_index_lock


@click.group("adapter")
def adapter() -> None:
    """Adapters: the serving model's vectors tuned on your catalogue and your shoppers' confirmations."""


@adapter.command("train")
@click.option("--pairs", "pairs_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Confirmed queries: an .npz of vectors, skus and the fingerprint of their model.")
@click.option("--from-feedback", is_flag=True, help="Learn from the feedback log's confirmed queries too.")
@click.option("--model", default=None, help="The model whose vectors are adapted (default: the serving build's).")
@click.option("--shadow", is_flag=True, help="Stage the adapted build as the shadow build instead of serving it.")
@click.option("--lam", type=click.FloatRange(0, min_open=True), default=0.1, show_default=True,
              help="How strongly the map is held near the identity (more: smaller changes; the default was "
                   "chosen on Grocery Store's val photos, benchmarks/adapter_grocerystore.py).")
@click.option("--steps", type=click.IntRange(1), default=200, show_default=True, help="Optimiser steps.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--wait", is_flag=True, help="Wait for another build, update or rollback instead of exit code 75.")
@click.pass_obj
def train_cmd(c: Ctx, pairs_file: str | None, from_feedback: bool, model: str | None, shadow: bool, lam: float,
              steps: int, as_json: bool, wait: bool) -> None:
    """Train an adapter (seconds to minutes on a CPU) and publish the adapted build atomically."""
    from indexer.adapter_build import train_and_build
    from shopsearch.adapter.train import AdapterOptions

    hold_index_lock(c, wait, "adapter train")
    store = c.index_store()
    serving = store.current_manifest()
    pairs = confirmed_pairs(c, pairs_file, from_feedback)
    embedder = c.model(model or (serving.model_name if serving else None))
    if not as_json:
        click.echo(f"training an adapter for {embedder.name} ({embedder.fingerprint}) on the catalogue and "
                   f"{len(pairs)} confirmed queries", err=True)
    report = train_and_build(c.index_builder(embedder, store), pairs, AdapterOptions(lam=lam, steps=steps),
                             shadow=shadow, progress=not as_json)
    if as_json:
        echo_json(report.to_dict())
        return
    t = report.train
    click.echo(f"{'shadow build' if shadow else 'build'} {report.build_id}: {report.vectors} vectors through adapter "
               f"{report.adapter_sha256[:12]} (trained on {t.catalogue_samples} catalogue images and "
               f"{report.pairs_used} confirmed queries in {t.seconds:.1f} s; loss {t.loss_start:.3f} -> "
               f"{t.loss_end:.3f})" + (f"; {report.pairs_skipped} pairs of another model or unknown product "
                                       "left out" if report.pairs_skipped else ""))


def register(cli: click.Group) -> None:
    cli.add_command(adapter)
