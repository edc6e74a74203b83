"""Where the registry's rows live: SQLite (the embedded default) or PostgreSQL, behind one small interface.

The registry's SQL is written once (SQLAlchemy, :mod:`central.server.registry`);
a :class:`Database` supplies what the two engines do differently:

- ``read()``: a session for reads;
- ``write(serial=False)``: a session that commits on success and rolls back on
  any exception. On SQLite every write transaction starts with
  ``BEGIN IMMEDIATE``, so it holds the one write lock from its first statement
  (no deferred-lock upgrade that fails under several processes). On PostgreSQL
  writes run concurrently under row locks and unique constraints; ``serial=True``
  also takes a transaction-scoped advisory lock, for the few writes that read
  then write a global fact (the next version number).

``open_database(url, data_dir)`` picks the backend: ``postgresql://...``
(driver psycopg 3) or ``sqlite:///path``; no URL means ``<data-dir>/registry.sqlite``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

ENV_URL = "CENTRAL_DATABASE_URL"
# Any fixed 64-bit key: the registry is the only user of advisory locks in its database.
_ADVISORY_KEY = 0x63656E7472616C  # "central"


class DatabaseUnavailable(OSError):
    """The database could not be reached or opened (retry later, or fix the URL)."""


class Database:
    """One registry database: sessions for reads, write transactions, and a few checks."""

    kind: str = "?"

    def __init__(self, engine: Engine, write_engine: Engine | None = None):
        self.engine = engine
        self._read = sessionmaker(engine, expire_on_commit=False)
        self._write = sessionmaker(write_engine or engine, expire_on_commit=False)

    @property
    def url(self) -> str:
        """The URL with any password hidden (safe to log)."""
        return self.engine.url.render_as_string(hide_password=True)

    @contextmanager
    def read(self) -> Iterator[Session]:
        with self._read() as s:
            yield s

    @contextmanager
    def write(self, serial: bool = False) -> Iterator[Session]:
        """A transaction committed when the block ends; any exception rolls it back."""
        with self._write() as s, s.begin():
            if serial:
                self._serialize(s)
            yield s

    def _serialize(self, s: Session) -> None:
        """Make this transaction wait for every other serial one (a no-op where all writes already are)."""

    def create_schema(self, metadata) -> None:
        with self.engine.begin() as c:
            metadata.create_all(c)

    def integrity_check(self) -> str:
        """``"ok"``, or what the engine found wrong."""
        raise NotImplementedError

    def dispose(self) -> None:
        self.engine.dispose()


# How long a write waits for a lock held by another process (a backup, the sqlite3 shell, a LOCK TABLE)
# before the request is answered 503: well under a client's timeout, so the device retries instead of hanging.
SQLITE_BUSY_TIMEOUT_S = 5
POSTGRES_LOCK_TIMEOUT_S = SQLITE_BUSY_TIMEOUT_S


class SQLiteDatabase(Database):
    """A file in WAL mode, ``synchronous=FULL``, foreign keys on, a short busy timeout; safe for several processes on one box."""

    kind = "sqlite"

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{self.path}"
        # The driver's own transaction handling is turned off so that BEGIN is ours to choose:
        # deferred for reads, IMMEDIATE for writes.
        args = {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S, "isolation_level": None}
        read, write = create_engine(url, connect_args=args), create_engine(url, connect_args=args)
        for engine, begin in ((read, "BEGIN"), (write, "BEGIN IMMEDIATE")):
            event.listen(engine, "connect", _sqlite_pragmas)
            event.listen(engine, "begin", lambda conn, b=begin: conn.exec_driver_sql(b))
        super().__init__(read, write)
        self._write_engine = write

    def create_schema(self, metadata) -> None:
        with self._write_engine.begin() as c:
            metadata.create_all(c)

    def integrity_check(self) -> str:
        with self.engine.connect() as c:
            return str(c.exec_driver_sql("PRAGMA integrity_check").scalar())

    def dispose(self) -> None:
        self.engine.dispose()
        self._write_engine.dispose()


class PostgresDatabase(Database):
    """PostgreSQL through psycopg 3; the choice when more than one box serves the same registry."""

    kind = "postgresql"

    def __init__(self, url: str, pool_size: int = 8):
        # lock_timeout: without it a statement waits for a lock forever (PostgreSQL's default).
        engine = create_engine(url, pool_size=pool_size, max_overflow=16, pool_pre_ping=True,
                               connect_args={"options": f"-c lock_timeout={POSTGRES_LOCK_TIMEOUT_S * 1000}"})
        super().__init__(engine)

    def _serialize(self, s: Session) -> None:
        s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _ADVISORY_KEY})

    def create_schema(self, metadata) -> None:
        # Several processes may start at once; CREATE TABLE is not safe to race.
        with self.engine.begin() as c:
            c.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _ADVISORY_KEY})
            metadata.create_all(c)

    def integrity_check(self) -> str:
        # Constraints are enforced by the server on every write; what can be checked from here is
        # that every table is readable end to end.
        with self.engine.connect() as c:
            for table in ("versions", "uploads", "kits", "devices"):
                c.execute(text(f"SELECT count(*) FROM {table}")).scalar()
        return "ok"


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    # FULL: an acknowledged upload survives a power cut, not only a process crash.
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
    cur.close()


def database_url(url: str | None) -> str | None:
    """``url``, else ``$CENTRAL_DATABASE_URL``, else None (the embedded SQLite file)."""
    return url or os.environ.get(ENV_URL) or None


def open_database(url: str | None, data_dir: str | os.PathLike) -> Database:
    """The registry database named by ``url`` (see :func:`database_url`); creates nothing yet.

    Raises ``ValueError`` for a URL that names neither backend.
    """
    if not url:
        return SQLiteDatabase(Path(data_dir) / "registry.sqlite")
    try:
        u = make_url(url)
    except ArgumentError:
        raise ValueError(f"--database-url: cannot parse {url!r} (expected postgresql://user@host/db or sqlite:///path)") from None
    backend = u.get_backend_name()
    if backend in ("postgresql", "postgres"):
        if u.drivername not in ("postgresql", "postgres", "postgresql+psycopg"):
            raise ValueError(f"--database-url: driver {u.drivername!r} is not supported; use postgresql:// (psycopg 3)")
        return PostgresDatabase(u.set(drivername="postgresql+psycopg").render_as_string(hide_password=False))
    if backend == "sqlite":
        if not u.database or u.database == ":memory:":
            raise ValueError("--database-url: SQLite needs a file path (sqlite:///path/registry.sqlite)")
        return SQLiteDatabase(Path(u.database))
    raise ValueError(f"--database-url: {backend!r} is not supported; use postgresql://... or sqlite:///path")


def connect(db: Database, metadata) -> None:
    """Create the schema if missing; a database that cannot be reached raises :class:`DatabaseUnavailable`."""
    try:
        db.create_schema(metadata)
    except OperationalError as e:
        first = (str(e.orig) if e.orig is not None else str(e)).strip().splitlines()[0]
        raise DatabaseUnavailable(f"cannot open the registry database {db.url}: {first}") from None
