"""Ordered SQL migrations, applied once each, under a PostgreSQL advisory lock.

Migrations are the files ``NNNN_name.sql`` of the migrations directory, applied in
version order. Each one runs in its own transaction together with the row that records
it in ``kingest.schema_migrations``, so a migration is either fully applied and
recorded or not at all. (A migration therefore cannot use statements that refuse to run
in a transaction, such as ``CREATE INDEX CONCURRENTLY``.)

Several processes may start at once (replicas of the service, a deploy job): a
session-level advisory lock serialises them, and whoever gets the lock second finds
everything applied. A recorded migration whose file has changed since is an error, not
something to re-apply: the database no longer matches what the code was written for.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

__all__ = [
    "MIGRATION_LOCK_KEY",
    "Migration",
    "MigrationError",
    "apply_migrations",
    "load_migrations",
    "migration_lock",
    "migrations_dir",
    "pending_migrations",
]

_FILE_NAME = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.sql$")


def _advisory_lock_key(name: str) -> int:
    """A stable signed 64-bit key for pg_advisory_lock, derived from a name.

    Derived rather than hard-coded so the key documents itself and cannot collide by
    accident with a small integer some other application picked.
    """
    digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


MIGRATION_LOCK_KEY = _advisory_lock_key("kingest.migrate")

_BOOTSTRAP = """
CREATE SCHEMA IF NOT EXISTS kingest;
CREATE TABLE IF NOT EXISTS kingest.schema_migrations (
    version    text PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE kingest.schema_migrations IS
    'SQL migrations applied to this database by kingest (one row per sql/NNNN_name.sql).';
COMMENT ON COLUMN kingest.schema_migrations.checksum IS
    'SHA-256 of the migration file as applied; a later change to the file is an error.';
"""


class MigrationError(RuntimeError):
    """The migrations cannot be applied as they are (changed file, bad name, lock wait)."""


@dataclass(frozen=True)
class Migration:
    """One migration file: ``version`` orders it, ``checksum`` detects later edits."""

    version: str
    name: str
    sql: str
    checksum: str


def migrations_dir() -> Path:
    """Directory of the migration files, in an installed wheel or in a source tree.

    The wheel carries ``sql/`` as package data at ``kingest/_data/sql``; a source tree
    or an editable install reads the repository's ``sql/`` directly.
    """
    packaged = importlib.resources.files("kingest") / "_data" / "sql"
    if isinstance(packaged, Path) and packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "sql"


def load_migrations(directory: Path | None = None) -> list[Migration]:
    """Read every ``NNNN_name.sql`` file of ``directory``, ordered by version.

    Any other ``.sql`` file, or two files with one version, is an error: a misnamed
    migration would otherwise be skipped without anyone noticing.
    """
    root = migrations_dir() if directory is None else directory
    if not root.is_dir():
        raise MigrationError(f"migrations directory {root} does not exist")
    migrations: dict[str, Migration] = {}
    for path in sorted(root.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise MigrationError(
                f"migration file {path.name!r} is not named NNNN_name.sql "
                "(four digits, an underscore, lowercase letters, digits and underscores)"
            )
        data = path.read_bytes()
        migration = Migration(
            version=match["version"],
            name=match["name"],
            sql=data.decode("utf-8"),
            checksum=hashlib.sha256(data).hexdigest(),
        )
        if migration.version in migrations:
            other = migrations[migration.version]
            raise MigrationError(
                f"two migrations share version {migration.version}: "
                f"{other.version}_{other.name}.sql and {path.name}"
            )
        migrations[migration.version] = migration
    return [migrations[version] for version in sorted(migrations)]


def _applied_checksums(conn: psycopg.Connection[Any]) -> dict[str, str]:
    """version -> checksum of the recorded migrations (empty when none ever ran)."""
    exists = conn.execute("SELECT to_regclass('kingest.schema_migrations') IS NOT NULL")
    row = exists.fetchone()
    if row is None or not row[0]:
        return {}
    rows = conn.execute("SELECT version, checksum FROM kingest.schema_migrations").fetchall()
    return {str(version): str(checksum) for version, checksum in rows}


def _check_unchanged(migrations: list[Migration], applied: dict[str, str]) -> None:
    changed = [
        f"{m.version}_{m.name}.sql"
        for m in migrations
        if m.version in applied and applied[m.version] != m.checksum
    ]
    if changed:
        raise MigrationError(
            "migrations changed after they were applied: "
            + ", ".join(changed)
            + " (add a new migration instead of editing an applied one)"
        )


def pending_migrations(conninfo: str, *, directory: Path | None = None) -> list[str]:
    """Versions not yet applied to the database, in order (for a readiness check).

    Raises MigrationError when an applied migration's file has changed, like
    apply_migrations would.
    """
    migrations = load_migrations(directory)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        applied = _applied_checksums(conn)
    _check_unchanged(migrations, applied)
    return [m.version for m in migrations if m.version not in applied]


def apply_migrations(
    conninfo: str, *, directory: Path | None = None, lock_timeout_s: float = 60
) -> list[str]:
    """Apply the pending migrations in order; return the versions applied.

    Idempotent: a second call applies nothing and returns ``[]``. Concurrent callers
    queue on the advisory lock; ``lock_timeout_s`` bounds every lock wait (the advisory
    lock and the table locks the migrations' DDL takes), so a migration stuck behind a
    long transaction fails instead of blocking the tables' writers indefinitely.
    """
    migrations = load_migrations(directory)
    applied_now: list[str] = []
    with (
        psycopg.connect(conninfo, autocommit=True) as conn,
        migration_lock(conn, lock_timeout_s, MigrationError),
    ):
        with conn.transaction():
            conn.execute(_BOOTSTRAP)
        applied = _applied_checksums(conn)
        _check_unchanged(migrations, applied)
        for migration in migrations:
            if migration.version in applied:
                continue
            try:
                with conn.transaction():
                    conn.execute(migration.sql.encode())
                    conn.execute(
                        "INSERT INTO kingest.schema_migrations (version, name, checksum)"
                        " VALUES (%s, %s, %s)",
                        (migration.version, migration.name, migration.checksum),
                    )
            except psycopg.Error as exc:
                raise MigrationError(
                    f"migration {migration.version}_{migration.name}.sql failed: {exc}"
                ) from exc
            applied_now.append(migration.version)
    return applied_now


@contextmanager
def migration_lock(
    conn: psycopg.Connection[Any], lock_timeout_s: float, error: type[Exception]
) -> Iterator[None]:
    """Hold the migrations' advisory lock (``kingest migrate``, ``kingest schema apply``)
    on an autocommit connection, every lock wait bounded by ``lock_timeout_s`` while it
    is held; ``error`` is raised when the lock is not had in time."""
    timeout_ms = max(1, round(lock_timeout_s * 1000))
    conn.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(f"{timeout_ms}ms")))
    try:
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
    except psycopg.errors.LockNotAvailable as exc:
        raise error(
            f"another process held the migration lock for more than {lock_timeout_s} s"
        ) from exc
    try:
        yield
    finally:
        if not conn.closed and not conn.broken:
            conn.execute("RESET lock_timeout")
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
