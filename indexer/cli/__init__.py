"""The `shopsearch` command. Domain errors become click.ClickException here and only here."""
from __future__ import annotations

import sys

import click

from indexer.cli import (adapter_cmds, bench_cmds, catalogue_cmds, classify_cmds, demo_cmds, feedback_cmds,
                         index_cmds, model_cmds, search_cmds, serve_cmds, shadow_cmds)
from indexer.cli.context import Ctx, ShopSearchGroup
from shopsearch import logs
from shopsearch.config import BULK_THREAD_ENV, Settings, pin_thread_env, quiet_tokenizers


@click.group(cls=ShopSearchGroup)
@click.option("--data-dir", envvar="SHOPSEARCH_DATA_DIR", default="var", show_default=True,
              type=click.Path(file_okay=False), help="Where the catalogue DB, index builds and caches live.")
@click.option("--database-url", envvar="SHOPSEARCH_DATABASE_URL", default=None,
              help="SQLAlchemy URL (default: SQLite in the data dir), e.g. postgresql://user@host/db.")
@click.option("--device", envvar="SHOPSEARCH_DEVICE", default="auto", show_default=True,
              help="auto | cpu | cuda | cuda:N")
@click.option("--log-level", envvar="SHOPSEARCH_LOG_LEVEL", default="WARNING", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], case_sensitive=False))
@click.option("--log-format", envvar="SHOPSEARCH_LOG_FORMAT", default="auto", show_default=True,
              type=click.Choice(logs.LOG_FORMATS, case_sensitive=False),
              help="How the library's log records reach stderr: text (one readable line each) or json (one "
                   "object per line, `extra` fields included). auto: json for `serve` and for --log-level "
                   "INFO/DEBUG, text otherwise.")
@click.version_option(package_name="shopsearch")
@click.pass_context
def cli(ctx: click.Context, data_dir: str, database_url: str | None, device: str, log_level: str,
        log_format: str) -> None:
    """ShopSearch: visual product search over your catalogue."""
    fmt = logs.choose_format(log_format.lower(), log_level, ctx.invoked_subcommand)
    logs.configure(log_level, json_lines=fmt == "json")
    # the one place the CLI reads SHOPSEARCH_* settings; everything below gets them passed
    ctx.obj = Ctx(Settings.from_env(data_dir=data_dir, database_url=database_url, device=device))
    ctx.call_on_close(ctx.obj.close)


# each command group lives in its own module and registers itself
for _mod in (catalogue_cmds, index_cmds, shadow_cmds, search_cmds, demo_cmds, serve_cmds, bench_cmds,
             classify_cmds, model_cmds, feedback_cmds, adapter_cmds):
    _mod.register(cli)


def main() -> None:
    quiet_tokenizers()
    pin_thread_env(BULK_THREAD_ENV)  # before torch loads (nothing above imports it)
    cli(prog_name="shopsearch")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
