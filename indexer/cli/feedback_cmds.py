"""`shopsearch feedback prune` (the log's retention) and `shopsearch bench feedback` (analysts'
figures from the log); `bench recall --from-feedback` calls `recall_from_feedback` here."""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:  # the group's context object; importing indexer.cli here would close an import cycle
    from indexer.cli import Ctx

pass_ctx = click.pass_obj


def echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


def _store(c: Ctx):
    from shopsearch.feedback import FeedbackStore

    return FeedbackStore(c.catalogue().engine)


def _since(text: str | None):
    from shopsearch.feedback.figures import parse_since

    return parse_since(text) if text else None


@click.group("feedback")
def feedback() -> None:
    """The feedback log: searches and what shoppers did with their results."""


@feedback.command("prune")
@click.option("--days", type=click.IntRange(min=1), default=None,
              help="Keep this many days (default: SHOPSEARCH_FEEDBACK_RETENTION_DAYS, 90).")
@click.option("--json", "as_json", is_flag=True, help="Print exactly one JSON object.")
@pass_ctx
def prune(c: Ctx, days: int | None, as_json: bool) -> None:
    """Delete logged searches (and their feedback) older than the retention; run it daily (cron, a timer)."""
    days = days or c.settings.feedback_retention_days
    removed = _store(c).prune(days)
    if as_json:
        echo_json({"removed_searches": removed, "retention_days": days})
    else:
        click.echo(f"removed {removed} logged search{'' if removed == 1 else 'es'} older than {days} days")


@click.command("feedback")
@click.option("--since", default=None, help="Only searches since then: 7d, 12h or an ISO date (UTC).")
@click.option("--category-depth", type=click.IntRange(0, 20), default=1, show_default=True,
              help="Group by the first product's category cut to this many levels (0 = the whole path).")
@click.option("--json", "as_json", is_flag=True, help="Print exactly one JSON object.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Also write feedback.json and PNG plots here.")
@pass_ctx
def bench_feedback(c: Ctx, since: str | None, category_depth: int, as_json: bool, out_dir: str | None) -> None:
    """Click-through at 1/5/10, reciprocal rank of clicked and confirmed products, share of
    "no close match" answers: overall, per build and per category, from the feedback log."""
    from shopsearch.feedback.figures import feedback_report, text_table

    start = _since(since)
    report = feedback_report(_store(c).searches(start), start, category_depth)
    if as_json:
        echo_json(report.to_dict())
    else:
        click.echo(text_table(report))
    if out_dir:
        from shopsearch.feedback.plots import write_plots

        out = Path(out_dir)
        written = write_plots(report, out)
        (out / "feedback.json").write_text(json.dumps(report.to_dict(), indent=2))
        click.echo(f"wrote {out / 'feedback.json'}, {', '.join(str(p) for p in written)}", err=True)


def recall_from_feedback(c: Ctx, ks: tuple[int, ...], since: str | None, as_json: bool) -> None:
    """The serving build on the confirmed queries of the log (their stored vectors)."""
    from shopsearch.feedback.replay import replay_confirmed

    res = replay_confirmed(c.search_service(), _store(c), ks, _since(since))
    if as_json:
        echo_json(res.to_dict())
        return
    click.echo(f"build {res.build_id} on {res.queries} confirmed quer{'y' if res.queries == 1 else 'ies'} "
               f"of the feedback log")
    for k in res.ks:
        click.echo(f"  recall@{k}: {res.recall_at[k]:.4f}   (as shown then: {res.logged_recall_at[k]:.4f})")
    click.echo(f"  MRR@{max(res.ks)}: {res.mrr:.4f}")
    if res.other_models:
        click.echo(f"left out, logged with another model: {res.other_models}", err=True)


def register(cli: click.Group) -> None:
    cli.add_command(feedback)
