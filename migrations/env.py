"""Alembic environment. The database URL comes from the caller's Config
(`sqlalchemy.url`) or SHOPSEARCH_DATABASE_URL; a live connection may be passed in
config.attributes["connection"] so tests and the library reuse their engine."""
from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine

from shopsearch.catalogue.models import Base

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url") or os.environ.get("SHOPSEARCH_DATABASE_URL")
    if not url:
        raise RuntimeError("no database URL: set sqlalchemy.url or SHOPSEARCH_DATABASE_URL")
    return url


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(_url())
    with engine.connect() as conn:
        context.configure(connection=conn, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
