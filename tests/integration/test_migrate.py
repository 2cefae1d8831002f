"""Migrations against a real PostgreSQL: once each, in order, under an advisory lock."""

from __future__ import annotations

import datetime as dt
import re
import shutil
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest

from kingest.store.migrate import (
    MIGRATION_LOCK_KEY,
    MigrationError,
    apply_migrations,
    load_migrations,
    migrations_dir,
    pending_migrations,
)
from kingest.store.tables import FACT_TABLES

pytestmark = pytest.mark.integration

ALL_VERSIONS = [migration.version for migration in load_migrations()]


def fetch(any_database_url: str, query: str) -> list[tuple[object, ...]]:
    with psycopg.connect(any_database_url) as conn:
        return conn.execute(query.encode()).fetchall()


def test_migrations_dir_holds_the_ordered_sql_files() -> None:
    directory = migrations_dir()
    assert (directory / "0001_events.sql").is_file()
    migrations = load_migrations()
    assert [m.version for m in migrations] == sorted(m.version for m in migrations)
    assert ALL_VERSIONS[:3] == ["0001", "0002", "0003"]
    assert all(len(m.checksum) == 64 for m in migrations)


def test_applies_on_an_empty_database_then_nothing(any_database_url: str) -> None:
    assert pending_migrations(any_database_url) == ALL_VERSIONS
    assert apply_migrations(any_database_url) == ALL_VERSIONS
    assert apply_migrations(any_database_url) == []
    assert pending_migrations(any_database_url) == []
    recorded = fetch(any_database_url, "SELECT version FROM kingest.schema_migrations ORDER BY 1")
    assert [row[0] for row in recorded] == ALL_VERSIONS


def test_concurrent_callers_both_succeed_and_each_migration_runs_once(
    any_database_url: str,
) -> None:
    start = threading.Barrier(2)

    def migrate() -> list[str]:
        start.wait()
        return apply_migrations(any_database_url)

    with ThreadPoolExecutor(2) as pool:
        results = [future.result(timeout=60) for future in [pool.submit(migrate) for _ in "ab"]]
    applied = sorted(version for result in results for version in result)
    assert applied == ALL_VERSIONS  # each version applied by exactly one caller
    assert [] in results  # the caller that waited for the lock found everything done
    (count,) = fetch(any_database_url, "SELECT count(*) FROM kingest.schema_migrations")[0]
    assert count == len(ALL_VERSIONS)


def test_a_changed_applied_migration_is_an_error(any_database_url: str, tmp_path: Path) -> None:
    directory = tmp_path / "sql"
    shutil.copytree(migrations_dir(), directory)
    apply_migrations(any_database_url, directory=directory)
    edited = directory / "0002_state.sql"
    edited.write_text(edited.read_text() + "\n-- an innocent-looking edit\n")
    with pytest.raises(MigrationError, match=re.escape("0002_state.sql")):
        apply_migrations(any_database_url, directory=directory)
    with pytest.raises(MigrationError, match=re.escape("0002_state.sql")):
        pending_migrations(any_database_url, directory=directory)


def test_a_new_migration_is_applied_after_the_others(any_database_url: str, tmp_path: Path) -> None:
    directory = tmp_path / "sql"
    shutil.copytree(migrations_dir(), directory)
    apply_migrations(any_database_url, directory=directory)
    (directory / "9000_extra.sql").write_text("CREATE TABLE kingest.extra (id int);")
    assert pending_migrations(any_database_url, directory=directory) == ["9000"]
    assert apply_migrations(any_database_url, directory=directory) == ["9000"]
    assert fetch(any_database_url, "SELECT to_regclass('kingest.extra') IS NOT NULL") == [(True,)]


def test_the_running_version_accepts_a_schema_migrated_by_the_next(
    any_database_url: str, tmp_path: Path
) -> None:
    # A rolling upgrade migrates first, while the previous version still runs: a
    # migration this version does not know is no reason for it to refuse to start.
    directory = tmp_path / "sql"
    shutil.copytree(migrations_dir(), directory)
    (directory / "9000_next_release.sql").write_text("ALTER TABLE kingest.metrics ADD note text;")
    assert apply_migrations(any_database_url, directory=directory)[-1] == "9000"
    assert pending_migrations(any_database_url) == []


def test_a_failing_migration_is_not_recorded(any_database_url: str, tmp_path: Path) -> None:
    directory = tmp_path / "sql"
    shutil.copytree(migrations_dir(), directory)
    (directory / "9000_broken.sql").write_text(
        "CREATE TABLE kingest.half_done (id int);\nSELECT * FROM kingest.no_such_table;"
    )
    with pytest.raises(MigrationError, match=re.escape("9000_broken.sql")):
        apply_migrations(any_database_url, directory=directory)
    # The earlier migrations committed; the broken one left nothing behind.
    assert pending_migrations(any_database_url, directory=directory) == ["9000"]
    assert fetch(any_database_url, "SELECT to_regclass('kingest.half_done')") == [(None,)]


def test_waiting_for_the_lock_is_bounded(any_database_url: str) -> None:
    with psycopg.connect(any_database_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        with pytest.raises(MigrationError, match="migration lock"):
            apply_migrations(any_database_url, lock_timeout_s=0.2)
    assert apply_migrations(any_database_url) == ALL_VERSIONS


def test_misnamed_migration_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "0001_ok.sql").write_text("SELECT 1;")
    (tmp_path / "2_missing_digits.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match=re.escape("2_missing_digits.sql")):
        load_migrations(tmp_path)


def test_duplicate_version_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "0001_one.sql").write_text("SELECT 1;")
    (tmp_path / "0001_other.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="share version 0001"):
        load_migrations(tmp_path)


def test_schema_has_the_tables_and_an_idempotency_key_on_every_fact_table(
    any_database_url: str,
) -> None:
    apply_migrations(any_database_url)
    tables = {
        row[0]
        for row in fetch(
            any_database_url,
            "SELECT tablename FROM pg_tables WHERE schemaname = 'kingest'",
        )
    }
    fact_tables = {table.name for table in FACT_TABLES}
    assert tables == fact_tables | {
        "training_runs",
        "model_deployments",
        "dead_letters",
        "schema_migrations",
        "catalogs",
    }
    # Tables whose event_id column alone is covered by a unique index (PK or UNIQUE).
    unique_event_id = {
        row[0]
        for row in fetch(
            any_database_url,
            """
            SELECT c.relname
            FROM pg_index AS i
            JOIN pg_class AS c ON c.oid = i.indrelid
            JOIN pg_namespace AS n ON n.oid = c.relnamespace
            JOIN pg_attribute AS a ON a.attrelid = c.oid AND a.attnum = i.indkey[0]
            WHERE n.nspname = 'kingest' AND i.indisunique AND i.indnkeyatts = 1
              AND a.attname = 'event_id'
            """,
        )
    }
    assert unique_event_id == fact_tables
    event_id_types = set(
        fetch(
            any_database_url,
            """
            SELECT DISTINCT data_type FROM information_schema.columns
            WHERE table_schema = 'kingest' AND column_name = 'event_id'
              AND table_name <> 'dead_letters'
            """,
        )
    )
    assert event_id_types == {("uuid",)}
    dead_letter_key = fetch(
        any_database_url,
        """
        SELECT pg_get_constraintdef(oid) FROM pg_constraint
        WHERE conname = 'dead_letters_kafka_coordinates_key'
        """,
    )
    assert dead_letter_key == [("UNIQUE (kafka_topic, kafka_partition, kafka_offset)",)]


def test_every_table_and_column_is_documented(any_database_url: str) -> None:
    apply_migrations(any_database_url)
    undocumented = fetch(
        any_database_url,
        """
        SELECT c.relname, a.attname
        FROM pg_class AS c
        JOIN pg_namespace AS n ON n.oid = c.relnamespace
        JOIN pg_attribute AS a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
        WHERE n.nspname = 'kingest' AND c.relkind = 'r' AND c.relname <> 'schema_migrations'
          AND (col_description(c.oid, a.attnum) IS NULL OR obj_description(c.oid) IS NULL)
        ORDER BY 1, 2
        """,
    )
    assert undocumented == []


def test_state_precedence_repairs_ties_the_event_id_decided(
    any_database_url: str, tmp_path: Path
) -> None:
    # Rows as kingest wrote them before 0006, where the greater event id won a tie.
    directory = tmp_path / "sql"
    directory.mkdir()
    for migration in migrations_dir().glob("*.sql"):
        if migration.name < "0006":
            shutil.copy(migration, directory)
    apply_migrations(any_database_url, directory=directory)
    start, finish = "kingest.training_run_starts", "kingest.training_run_finishes"
    facts = [  # (table, event id, run, seconds, status, duration)
        (start, 2, "tie-start", 30, None, None),
        (finish, 1, "tie-start", 30, "failed", 1.0),
        (finish, 4, "tie-finishes", 30, "succeeded", 2.0),
        (finish, 3, "tie-finishes", 30, "failed", 3.0),
        (start, 5, "plain", 10, None, None),
        (finish, 6, "plain", 20, "succeeded", 4.0),
        (finish, 7, "restarted", 20, "cancelled", 5.0),
        (start, 8, "restarted", 40, None, None),
    ]
    # (run, status, status event, finish event, duration): the state the earlier rule kept.
    before = [
        ("tie-start", "running", 2, 1, 1.0),
        ("tie-finishes", "succeeded", 4, 4, 2.0),
        ("plain", "succeeded", 6, 6, 4.0),
        ("restarted", "running", 8, 7, 5.0),
    ]
    seconds_of = {n: seconds for _, n, _, seconds, _, _ in facts}
    start_of = {run: n for table, n, run, _, _, _ in facts if table == start}

    def moment(n: int | None) -> dt.datetime | None:
        return None if n is None else dt.datetime.fromtimestamp(seconds_of[n], dt.UTC)

    with psycopg.connect(any_database_url, autocommit=True) as conn:
        for table, n, run, _, status, duration in facts:
            values = [uuid.UUID(int=n), moment(n), run]
            if table == start:
                conn.execute(
                    "INSERT INTO kingest.training_run_starts (event_id, occurred_at, run_id,"
                    " correlation_id, source, kafka_topic, kafka_partition, kafka_offset,"
                    " gpu_count) VALUES (%s, %s, %s, 'c', 's', 't', 0, 0, 1)",
                    values,
                )
            else:
                conn.execute(
                    "INSERT INTO kingest.training_run_finishes (event_id, occurred_at, run_id,"
                    " status, duration_seconds, correlation_id, source, kafka_topic,"
                    " kafka_partition, kafka_offset)"
                    " VALUES (%s, %s, %s, %s, %s, 'c', 's', 't', 0, 0)",
                    [*values, status, duration],
                )
        for run, status, status_n, finish_n, duration in before:
            conn.execute(
                "INSERT INTO kingest.training_runs (run_id, status, status_at, status_event_id,"
                " started_at, finished_at, finish_event_id, duration_seconds)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                [
                    run,
                    status,
                    moment(status_n),
                    uuid.UUID(int=status_n),
                    moment(start_of.get(run)),
                    moment(finish_n),
                    uuid.UUID(int=finish_n),
                    duration,
                ],
            )

    assert "0006" in apply_migrations(any_database_url)
    rows = fetch(
        any_database_url,
        "SELECT run_id, status, status_event_id, finish_event_id, finish_status,"
        " duration_seconds FROM kingest.training_runs ORDER BY run_id",
    )
    assert rows == [
        ("plain", "succeeded", uuid.UUID(int=6), uuid.UUID(int=6), "succeeded", 4.0),
        ("restarted", "running", uuid.UUID(int=8), uuid.UUID(int=7), "cancelled", 5.0),
        ("tie-finishes", "failed", uuid.UUID(int=3), uuid.UUID(int=3), "failed", 3.0),
        ("tie-start", "failed", uuid.UUID(int=1), uuid.UUID(int=1), "failed", 1.0),
    ]
