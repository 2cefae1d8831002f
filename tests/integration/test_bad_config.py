"""`kingest start` as a real process with a bad configuration or unreachable peers.

Each case must end with a clear message naming the problem, a documented non-zero exit
code (2: invalid configuration, 1: a start-up check failed), no Python traceback, the
password never printed, and nothing consumed: no committed offset for the group and no
row in PostgreSQL.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from confluent_kafka import Producer
from psycopg import sql
from psycopg.conninfo import make_conninfo

from kingest.dev import (
    LocalPostgres,
    SyntheticStream,
    committed_offsets,
    committed_total,
    produce_records,
)
from kingest.store.migrate import apply_migrations
from tests.integration.support import (
    KingestProcess,
    assert_committed_are_stored,
    count_rows,
    kingest_env,
    total_stored_rows,
    wait_for,
)

pytestmark = pytest.mark.integration

PARTITIONS = 2
STREAM_MESSAGES = 201
PASSWORD = "s3cret-Pa55word-h1"  # must never appear in any output
EXIT_BAD_CONFIG = 2
EXIT_STARTUP_FAILED = 1


@dataclass(frozen=True)
class Run:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def assert_clean_failure(self, code: int, *needles: str) -> None:
        """Exit ``code``, every ``needle`` in the output, no traceback, no password."""
        assert self.returncode == code, self.output
        for needle in needles:
            assert needle in self.output, f"{needle!r} not in:\n{self.output}"
        assert "Traceback" not in self.output, self.output
        assert PASSWORD not in self.output, self.output


def start(env: Mapping[str, str], *args: str, timeout: float = 120) -> Run:
    """Run `kingest start [args]` to completion with exactly ``env`` as its KINGEST_*
    variables.

    The timeout is the hang detector: every case must exit on its own.
    """
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("KINGEST_")}
    full_env.update(env)
    done = subprocess.run(
        [sys.executable, "-m", "kingest", "start", *args],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    run = Run(done.returncode, done.stdout, done.stderr)
    print(f"exit {run.returncode}\n{run.output}")  # shown by pytest -s or on failure
    return run


def closed_port() -> int:
    """A local TCP port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@dataclass(frozen=True)
class Stream:
    """A topic holding events, a migrated database, and a group that never consumed."""

    bootstrap: str
    database_url: str
    topic: str
    group: str

    def env(self, **overrides: str) -> dict[str, str]:
        return kingest_env(self.bootstrap, self.database_url, self.topic, self.group, **overrides)

    def assert_nothing_consumed(self, database_url: str | None = None) -> None:
        committed = committed_offsets(self.bootstrap, self.group, self.topic, PARTITIONS)
        assert all(offset < 0 for offset in committed.values()), committed
        assert total_stored_rows(database_url or self.database_url) == 0

    def wait_all_committed(self) -> None:
        wait_for(
            lambda: (
                committed_total(self.bootstrap, self.group, self.topic, PARTITIONS)
                >= STREAM_MESSAGES
            ),
            timeout=120,
            what="the stream committed",
        )


@pytest.fixture
def stream(kafka_bootstrap: str, database_url: str, topic_factory: Callable[[int], str]) -> Stream:
    topic = topic_factory(PARTITIONS)
    apply_migrations(database_url)
    records = SyntheticStream(seed=3).take(STREAM_MESSAGES - 1)
    report = produce_records(kafka_bootstrap, topic, records, count=len(records))
    assert report.delivered == len(records)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    producer.produce(topic, value=b"\xffpoison", partition=0)  # one dead letter too
    assert producer.flush(30) == 0
    return Stream(kafka_bootstrap, database_url, topic, f"bad-config-{uuid.uuid4().hex[:8]}")


def test_missing_required_variables_are_all_listed(stream: Stream) -> None:
    result = start({"KINGEST_LOG_LEVEL": "INFO"})
    result.assert_clean_failure(
        EXIT_BAD_CONFIG,
        "invalid configuration",
        "KINGEST_KAFKA_BOOTSTRAP_SERVERS: required, not set",
        "KINGEST_TOPICS: required, not set",
        "KINGEST_GROUP_ID: required, not set",
        "KINGEST_DATABASE_URL: required, not set",
    )


def test_several_malformed_values_are_all_listed_at_once(stream: Stream) -> None:
    env = stream.env(
        KINGEST_WRITERS="four",
        KINGEST_BATCH_SIZE="-5",
        KINGEST_KAFKA_AUTO_OFFSET_RESET="sometimes",
        KINGEST_ENV="moon",
        KINGEST_DRAIN_TIMEOUT_S="soon",
        KINGEST_WRITER="4",  # a typo of KINGEST_WRITERS
        KINGEST_DATABASE_URL=f"postgresql://kingest:{PASSWORD}@db/ml?no_such_option=1",
        KINGEST_KAFKA_BOOTSTRAP_SERVERS="kafka-without-port",
    )
    result = start(env)
    result.assert_clean_failure(
        EXIT_BAD_CONFIG,
        "KINGEST_WRITERS:",
        "KINGEST_BATCH_SIZE:",
        "KINGEST_KAFKA_AUTO_OFFSET_RESET:",
        "KINGEST_ENV:",
        "KINGEST_DRAIN_TIMEOUT_S:",
        "KINGEST_WRITER: unknown variable (did you mean KINGEST_WRITERS?)",
        "KINGEST_DATABASE_URL:",
        "KINGEST_KAFKA_BOOTSTRAP_SERVERS:",
    )
    problems = [line for line in result.stderr.splitlines() if line.strip().startswith("- ")]
    assert len(problems) == 8, result.stderr
    assert "(8 problems)" in result.stderr
    stream.assert_nothing_consumed()


def test_bad_topic_types_and_a_missing_catalog_are_listed_before_any_connection(
    tmp_path: Path,
) -> None:
    # Nothing listens at either address: a start that got past the configuration would
    # fail its start-up check with exit 1 instead.
    env = kingest_env(
        f"127.0.0.1:{closed_port()}",
        f"postgresql://kingest:{PASSWORD}@127.0.0.1:{closed_port()}/ml",
        "gpu,runs",
        "bad-config-catalog",
        KINGEST_CATALOG=str(tmp_path / "catalog.binpb"),
        KINGEST_TOPIC_TYPES="gpu,runs:x.v1.Run,runs:x.v1.Other",
    )
    result = start(env)
    result.assert_clean_failure(
        EXIT_BAD_CONFIG,
        "invalid configuration",
        "KINGEST_CATALOG: ",
        "no such file",
        "KINGEST_TOPIC_TYPES: 'gpu' is not topic:package.Message (no colon)",
        "KINGEST_TOPIC_TYPES: topic runs is listed twice",
    )
    assert "(3 problems)" in result.stderr


def test_an_unreachable_broker_fails_the_start_up_check(stream: Stream) -> None:
    bootstrap = f"127.0.0.1:{closed_port()}"
    result = start(stream.env(KINGEST_KAFKA_BOOTSTRAP_SERVERS=bootstrap))
    result.assert_clean_failure(
        EXIT_STARTUP_FAILED, f"cannot reach Kafka at {bootstrap}", "Connection refused"
    )
    # librdkafka's own reconnect lines stay off stderr (they are not in the log format).
    assert "|FAIL|" not in result.output
    stream.assert_nothing_consumed()


def test_an_unreachable_database_fails_the_start_up_check(stream: Stream) -> None:
    url = f"postgresql://kingest:{PASSWORD}@127.0.0.1:{closed_port()}/ml?connect_timeout=5"
    result = start(stream.env(KINGEST_DATABASE_URL=url))
    result.assert_clean_failure(EXIT_STARTUP_FAILED, "cannot use PostgreSQL at", "refused")
    stream.assert_nothing_consumed()


def test_a_database_that_never_answers_fails_within_the_connect_timeout(
    stream: Stream,
) -> None:
    """A peer that accepts TCP connections but never speaks (a hung server, a proxy to
    nowhere) must not hang the start: KINGEST_DATABASE_CONNECT_TIMEOUT_S bounds it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        url = f"postgresql://kingest:{PASSWORD}@127.0.0.1:{port}/ml"
        result = start(
            stream.env(KINGEST_DATABASE_URL=url, KINGEST_DATABASE_CONNECT_TIMEOUT_S="2"),
            timeout=60,
        )
    result.assert_clean_failure(EXIT_STARTUP_FAILED, "cannot use PostgreSQL at", "timeout")
    stream.assert_nothing_consumed()


def test_an_unmigrated_database_fails_the_start_up_check(
    stream: Stream, postgres_server_url: str
) -> None:
    with _scratch_database(postgres_server_url) as empty_url:
        result = start(stream.env(KINGEST_DATABASE_URL=empty_url))
        result.assert_clean_failure(EXIT_STARTUP_FAILED, "run `kingest migrate` first")
    stream.assert_nothing_consumed()


def test_a_missing_topic_fails_the_start_up_check(stream: Stream) -> None:
    result = start(stream.env(KINGEST_TOPICS=f"{stream.topic},no-such-topic-h1"))
    result.assert_clean_failure(EXIT_STARTUP_FAILED, "topics not found", "no-such-topic-h1")
    stream.assert_nothing_consumed()


# ------------------------------------------------------------------ password authentication


ROLE = "kingest_h1_app"


def require_passwords(postgres: LocalPostgres) -> None:
    """Switch a trust-auth embedded server to scram-sha-256 for every role but the
    superuser (which the fixtures keep using), and reload it."""
    (postgres.data_dir / "pg_hba.conf").write_text(
        "local all postgres trust\n"
        "local all all scram-sha-256\n"
        "host all all 127.0.0.1/32 scram-sha-256\n"
    )
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute("SELECT pg_reload_conf()")


@pytest.fixture
def password_database(local_postgres: LocalPostgres) -> tuple[str, str]:
    """``(url with the right password, the same with a wrong one)`` of a migrated database
    owned by a role that must authenticate with a password."""
    with psycopg.connect(local_postgres.url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(ROLE), sql.Literal(PASSWORD)
            )
        )
        conn.execute(sql.SQL("CREATE DATABASE ingest OWNER {}").format(sql.Identifier(ROLE)))
    require_passwords(local_postgres)
    base = local_postgres.url_for("ingest")
    right = make_conninfo(base, user=ROLE, password=PASSWORD)
    wrong = make_conninfo(base, user=ROLE, password="not-the-" + PASSWORD)
    apply_migrations(right)
    return right, wrong


def test_a_wrong_database_password_fails_the_start_up_check(
    stream: Stream, password_database: tuple[str, str]
) -> None:
    right, wrong = password_database
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(wrong).close()  # the server really checks passwords
    result = start(stream.env(KINGEST_DATABASE_URL=wrong))
    result.assert_clean_failure(
        EXIT_STARTUP_FAILED, "cannot use PostgreSQL at", "password authentication failed"
    )
    assert "not-the-" not in result.output
    stream.assert_nothing_consumed(right)


@contextmanager
def _scratch_database(server_url: str) -> Iterator[str]:
    """A new, empty (not migrated) database on the session server."""
    name = f"kt_h1_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_conninfo(server_url, dbname=name)
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


# ------------------------------------------------------------------ least privilege

#: docs/security.md, "Least-privilege roles": run once as a superuser, before migrating.
ROLE_SETUP = """
CREATE ROLE kingest_migrate LOGIN PASSWORD {migrate_password};
CREATE ROLE kingest_app LOGIN PASSWORD {app_password};
GRANT CONNECT, CREATE ON DATABASE {database} TO kingest_migrate;
GRANT CONNECT ON DATABASE {database} TO kingest_app;
ALTER DEFAULT PRIVILEGES FOR ROLE kingest_migrate
    GRANT USAGE ON SCHEMAS TO kingest_app;
ALTER DEFAULT PRIVILEGES FOR ROLE kingest_migrate
    GRANT SELECT, INSERT, UPDATE ON TABLES TO kingest_app;
ALTER DEFAULT PRIVILEGES FOR ROLE kingest_migrate
    GRANT USAGE ON SEQUENCES TO kingest_app;
"""


@dataclass(frozen=True)
class Roles:
    migrate_url: str
    app_url: str


@pytest.fixture
def least_privilege(local_postgres: LocalPostgres) -> Roles:
    """A database set up with the documented migrate and runtime roles, then migrated by
    the migrate role; passwords are required (scram-sha-256)."""
    database = "ml"
    with psycopg.connect(local_postgres.url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    with psycopg.connect(local_postgres.url_for(database), autocommit=True) as conn:
        for statement in ROLE_SETUP.strip().split(";"):
            if statement.strip():
                conn.execute(
                    sql.SQL(statement).format(
                        migrate_password=sql.Literal(PASSWORD + "-migrate"),
                        app_password=sql.Literal(PASSWORD),
                        database=sql.Identifier(database),
                    )
                )
    require_passwords(local_postgres)
    base = local_postgres.url_for(database)
    roles = Roles(
        migrate_url=make_conninfo(base, user="kingest_migrate", password=PASSWORD + "-migrate"),
        app_url=make_conninfo(base, user="kingest_app", password=PASSWORD),
    )
    apply_migrations(roles.migrate_url)
    return roles


def test_the_documented_runtime_role_ingests_everything_and_can_do_nothing_else(
    stream: Stream, least_privilege: Roles, tmp_path: Path
) -> None:
    env = stream.env(KINGEST_DATABASE_URL=least_privilege.app_url)
    with KingestProcess(env, tmp_path / "kingest.log") as kingest:
        stream.wait_all_committed()
        assert kingest.terminate_and_wait() == 0, kingest.log
        assert PASSWORD not in kingest.log
    # Every event (all kinds, state tables included) is stored by the runtime role.
    # (Counted as the owner: information_schema hides constraints from other roles.)
    assert total_stored_rows(least_privilege.migrate_url) == STREAM_MESSAGES
    assert count_rows(least_privilege.migrate_url, "dead_letters") == 1
    assert count_rows(least_privilege.migrate_url, "training_runs") > 0
    with psycopg.connect(least_privilege.app_url, autocommit=True) as conn:
        for forbidden in (
            "DELETE FROM kingest.inferences",
            "TRUNCATE kingest.dead_letters",
            "DROP TABLE kingest.metrics",
            "CREATE TABLE kingest.intruder (id int)",
            "ALTER TABLE kingest.inferences ADD COLUMN x int",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(forbidden)


def test_a_role_without_write_privileges_fails_the_start_up_check(
    stream: Stream, least_privilege: Roles
) -> None:
    with psycopg.connect(least_privilege.migrate_url, autocommit=True) as conn:
        conn.execute("REVOKE INSERT ON ALL TABLES IN SCHEMA kingest FROM kingest_app")
    result = start(stream.env(KINGEST_DATABASE_URL=least_privilege.app_url))
    result.assert_clean_failure(
        EXIT_STARTUP_FAILED,
        "role kingest_app lacks privileges",
        "INSERT on kingest.inferences",
        "docs/security.md",
    )
    stream.assert_nothing_consumed(least_privilege.migrate_url)


def test_a_privilege_revoked_while_running_stops_with_one_clear_line(
    stream: Stream, least_privilege: Roles, tmp_path: Path
) -> None:
    env = stream.env(KINGEST_DATABASE_URL=least_privilege.app_url)
    with KingestProcess(env, tmp_path / "kingest.log") as kingest:
        stream.wait_all_committed()
        with psycopg.connect(least_privilege.migrate_url, autocommit=True) as conn:
            conn.execute("REVOKE INSERT ON ALL TABLES IN SCHEMA kingest FROM kingest_app")
        more = SyntheticStream(seed=4).take(100)
        assert produce_records(stream.bootstrap, stream.topic, more, count=100).delivered == 100
        assert kingest.wait(120) == EXIT_STARTUP_FAILED, kingest.log
    log = kingest.log
    assert "the database role lacks a privilege" in log, log
    assert "Traceback" not in log, log
    assert PASSWORD not in log
    # Nothing written after the revoke was committed past what is stored.
    assert_committed_are_stored(
        least_privilege.migrate_url, stream.bootstrap, stream.group, stream.topic, PARTITIONS
    )
    assert total_stored_rows(least_privilege.migrate_url) == STREAM_MESSAGES
