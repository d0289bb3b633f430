"""Engines and schema versioning. Alembic migrations are the only way the schema is
made; code refuses to run against a schema newer than the migrations it knows."""
from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import sqlite3
import threading
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Iterator

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


#: seconds a SQLite connection waits for a lock (busy timeout), and for switching a new file to WAL
SQLITE_TIMEOUT_S = 30


def _use_wal(cur: Any) -> None:
    """Put the file in WAL mode unless it is already. Switching needs the file to itself, and
    SQLite answers "database is locked" at once, without its busy timeout, when another connection
    is opening the same new file (several first runs at the same moment): so wait and retry."""
    cur.execute("PRAGMA journal_mode")
    if (cur.fetchone() or ("",))[0] == "wal":
        return
    deadline = time.monotonic() + SQLITE_TIMEOUT_S
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


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
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": SQLITE_TIMEOUT_S})
        event.listen(engine, "handle_error", _as_domain_error)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):  # pragma: no cover - trivial
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            _use_wal(cur)
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


#: Alembic keeps the running migration in module globals (alembic.context, alembic.op): two threads
#: of one process migrating at once, even different databases, would run in each other's context
_ALEMBIC_LOCK = threading.Lock()


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on `path`, waiting for as long as another holder migrates. flock,
    not lockf: it belongs to the open file, so two threads of one process exclude each other
    too, and the kernel drops it with a killed process."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise DatabaseUnavailableError(f"cannot create the migration lock file {path}: {e.strerror or e}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _pg_lock_key(conn: Connection) -> int:
    """The advisory lock key of the schema migrations go to: one per database and schema, so
    catalogues in different schemas (parallel tests) never wait for each other."""
    where = conn.execute(text("SELECT current_database() || '.' || coalesce(current_schema(), '')")).scalar()
    digest = hashlib.blake2b(f"shopsearch-migrations:{where}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


@contextmanager
def _migrating(engine: Engine) -> Iterator[Connection]:
    """A connection in a real transaction that holds the database's migration lock until it
    ends. SQLite: a flock on `<file>.migrate.lock` (waits without the 30 s busy timeout), then
    BEGIN IMMEDIATE, because pysqlite opens transactions only before DML and would otherwise
    commit each CREATE/DROP at once, leaving a half-applied schema when a migration fails.
    PostgreSQL: a transaction-level advisory lock, released at commit or rollback, even when
    the connection dies."""
    path = sqlite_file(engine.url.render_as_string(hide_password=False))
    file_lock = _file_lock(path.with_name(path.name + ".migrate.lock")) if path is not None else nullcontext()
    with _ALEMBIC_LOCK, file_lock, engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        elif conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _pg_lock_key(conn)})
        yield conn


def _revision_on(conn: Connection) -> str | None:
    if not inspect(conn).has_table("alembic_version"):
        return None
    return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def upgrade(engine: Engine, revision: str = "head") -> str:
    """Run the Alembic migrations up to `revision`, all in one transaction under the database's
    migration lock (several first runs at once: one migrates, the others then find the schema
    made); returns the revision reached."""
    from alembic import command
    from alembic.script import ScriptDirectory

    cfg = _alembic_config(engine)
    script = ScriptDirectory.from_config(cfg)
    known = {s.revision for s in script.walk_revisions()}
    with _migrating(engine) as conn:
        current = _revision_on(conn)  # read under the lock: another run may have just migrated
        if current is not None and current not in known:
            check_schema(engine)  # raises the "newer than this code" error
        if revision == "head" and current == script.get_current_head():
            return current
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
        reached = _revision_on(conn)
    if reached != current:
        log.info("catalogue schema migrated", extra={"from": current, "to": reached})
    return reached or ""


def downgrade(engine: Engine, revision: str) -> None:
    """Run the downgrades to `revision`, in one transaction under the migration lock."""
    from alembic import command

    cfg = _alembic_config(engine)
    with _migrating(engine) as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)
