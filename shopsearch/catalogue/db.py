"""Engines and schema versioning. Alembic migrations are the only way the schema is
made; code refuses to run against a schema newer than the migrations it knows."""
from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import re

from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import Connection, Engine, ExceptionContext, make_url
from sqlalchemy.exc import ArgumentError, InternalError, NoSuchModuleError, OperationalError, SQLAlchemyError

from shopsearch.errors import DatabaseUnavailableError, SchemaVersionError

log = logging.getLogger("shopsearch.catalogue")



def _migrations_dir() -> Path:
    """migrations/ of the repository, installed as the package shopsearch.migrations (an
    editable install maps the name to the folder; a wheel holds a copy)."""
    import shopsearch.migrations

    return Path(shopsearch.migrations.__file__).resolve().parent


MIGRATIONS_DIR = _migrations_dir()


#: seconds to wait for a PostgreSQL server before calling the database unreachable
CONNECT_TIMEOUT_S = 10
_EXAMPLES = "e.g. postgresql://user:password@host:5432/shop or sqlite:////abs/path/catalogue.db"


def _hide_password(url: str) -> str:
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def normalize_url(url: str) -> str:
    """The URL SQLAlchemy should get: `postgres://` (the spelling of libpq, Heroku and most
    hosting panels) and `postgresql://` both mean psycopg 3, the driver we ship (plain
    postgresql:// would look for psycopg2). An unparsable URL is a DatabaseUnavailableError."""
    url = url.strip()
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            url = "postgresql+psycopg://" + url[len(prefix):]
    try:
        make_url(url)
    except (ArgumentError, ValueError) as e:
        raise DatabaseUnavailableError(f"cannot parse the database URL {_hide_password(url)!r} ({e}); {_EXAMPLES}") \
            from None
    return url


def sqlite_file(url: str) -> Path | None:
    """The file a SQLite URL names (`sqlite:///file:PATH?mode=ro&uri=true` too); None for another
    database or an in-memory one."""
    url = normalize_url(url)
    if not url.startswith("sqlite"):
        return None
    path = url.split("///", 1)[-1]
    if path.startswith("file:"):
        path = path[len("file:"):].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def make_engine(url: str) -> Engine:
    """An engine for `url`; SQLite gets foreign keys, and WAL (synchronous NORMAL) so readers never block on a
    writer."""
    url = normalize_url(url)
    if url.startswith("sqlite"):
        path = sqlite_file(url)
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise DatabaseUnavailableError(f"cannot create the folder of the SQLite database {path}: "
                                               f"{e.strerror or e}") from None
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "handle_error", _as_domain_error)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):  # pragma: no cover - trivial
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")
            # with WAL, NORMAL syncs at checkpoints rather than at every commit: a killed process
            # loses nothing committed and the file stays consistent; only a power cut may undo
            # the last commits (never half of one). An import's commits stopped paying an fsync.
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    connect_args = {"connect_timeout": CONNECT_TIMEOUT_S} if url.startswith("postgresql+psycopg") \
        and "connect_timeout" not in url else {}
    try:
        engine = create_engine(url, pool_pre_ping=True, connect_args=connect_args)
    except (NoSuchModuleError, ArgumentError, ImportError) as e:
        raise DatabaseUnavailableError(f"unsupported database URL {_hide_password(url)!r} ({e}); {_EXAMPLES}") \
            from None
    event.listen(engine, "handle_error", _as_domain_error)
    return engine


def _failed(e: BaseException) -> DatabaseUnavailableError:
    return DatabaseUnavailableError(f"the catalogue database failed: {' '.join(str(e).split())[:300]}")


@contextmanager
def raw_cursor(conn: Connection) -> Iterator[Any]:
    """The driver's own cursor (rows as plain tuples, executemany, COPY), closed afterwards; a
    failing database under it is a DatabaseUnavailableError, as under SQLAlchemy (_as_domain_error)."""
    dbapi = conn.dialect.loaded_dbapi
    cur = conn.connection.dbapi_connection.cursor()
    try:
        yield cur
    except (dbapi.OperationalError, dbapi.InternalError) as e:
        raise _failed(e) from e
    finally:
        cur.close()


def _as_domain_error(context: ExceptionContext) -> None:
    """A database that fails under a running command (a read-only file or transaction, a dropped
    database, a server gone) is a DatabaseUnavailableError in one line, the driver's reason in it,
    like one that cannot be reached at start; constraint violations and SQL errors stay what
    they are (callers act on them)."""
    if isinstance(context.sqlalchemy_exception, (OperationalError, InternalError)) or context.is_disconnect:
        raise _failed(context.original_exception) from context.sqlalchemy_exception


def connect(url: str) -> Engine:
    """make_engine, then one round trip: a database that cannot be reached (refused, no such
    database, wrong password, unopenable SQLite file) is a DatabaseUnavailableError naming
    the URL, password hidden, and the driver's reason in one line."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except (SQLAlchemyError, DatabaseUnavailableError) as e:  # the latter: _as_domain_error's, from the driver's
        engine.dispose()
        cause = e.__cause__ if isinstance(e, DatabaseUnavailableError) and e.__cause__ is not None else e
        reason = " ".join(str(getattr(cause, "orig", None) or cause).split())[:300]
        raise DatabaseUnavailableError(f"cannot connect to the catalogue database "
                                       f"{engine.url.render_as_string(hide_password=True)}: {reason}") from None
    return engine


def _alembic_config(engine: Engine):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%"))
    return cfg


_REVISION_LINE = re.compile(r"^(down_revision|revision)\s*=\s*(?:[\"']([^\"']+)[\"']|None)\s*$", re.M)


def head_from_files() -> str | None:
    """The head revision read from the migration files' `revision` / `down_revision` lines,
    without importing Alembic (0.2-0.5 s of every command's start); None when the files do not
    form one plain chain (then Alembic decides). Only ever compared for equality with the
    database's revision: a mismatch takes the full Alembic path."""
    revs, downs = set(), set()
    for f in (MIGRATIONS_DIR / "versions").glob("*.py"):
        found = dict((k, v) for k, v in _REVISION_LINE.findall(f.read_text()))
        if "revision" not in found:
            return None
        revs.add(found["revision"])
        if found.get("down_revision"):
            downs.add(found["down_revision"])
    heads = revs - downs
    return heads.pop() if len(heads) == 1 else None


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision stamped in the database, or None for an empty database."""
    if not inspect(engine).has_table("alembic_version"):
        return None
    with engine.connect() as conn:
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def check_schema(engine: Engine) -> None:
    """Raise SchemaVersionError unless the database is exactly at our head revision."""
    from alembic.script import ScriptDirectory

    current = current_revision(engine)
    head = head_revision()
    if current == head:
        return
    if current is None:
        raise SchemaVersionError("the catalogue database is not initialised; run `shopsearch db upgrade`")
    cfg = _alembic_config(engine)
    known = {s.revision for s in ScriptDirectory.from_config(cfg).walk_revisions()}
    if current not in known:
        raise SchemaVersionError(
            f"the catalogue database is at schema revision {current!r}, newer than this ShopSearch "
            f"(knows up to {head!r}); upgrade ShopSearch instead of running an older version against it"
        )
    raise SchemaVersionError(f"the catalogue database is at revision {current!r}; run `shopsearch db upgrade` to reach {head!r}")


def upgrade(engine: Engine, revision: str = "head") -> str:
    """Run the Alembic migrations up to `revision`; returns the revision reached."""
    from alembic import command
    from alembic.script import ScriptDirectory

    current = current_revision(engine)
    cfg = _alembic_config(engine)
    known = {s.revision for s in ScriptDirectory.from_config(cfg).walk_revisions()}
    if current is not None and current not in known:
        check_schema(engine)  # raises the "newer than this code" error
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
    reached = current_revision(engine)
    if reached != current:
        log.info("catalogue schema migrated", extra={"from": current, "to": reached})
    return reached or ""


def downgrade(engine: Engine, revision: str) -> None:
    from alembic import command

    cfg = _alembic_config(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)
