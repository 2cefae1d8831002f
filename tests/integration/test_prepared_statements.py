"""Server-side prepared statements behind a transaction-mode pooler (PgBouncer).

A pooler in transaction mode runs each transaction on whichever server session is free:
a statement psycopg prepared in one transaction is missing in the next (SQLSTATE 26000,
``prepared statement "_pg3_0" does not exist``), or its name is already taken on the
session by another client's statement (42P05). Neither says anything about the rows:
the writers must not dead-letter them (26000 would otherwise spend the retry budget) nor
stop as if the schema were missing (42P05 is of class 42).

No pooler runs here. The tests give the writers' connections what a pooler does to a
client's view of its session, on the real PostgreSQL, through the pool's two hooks and
libpq directly (``pgconn.exec_``, so psycopg's record of what it prepared is not told,
as it is not behind a pooler):

* the reset hook, run whenever a writer returns its connection, deallocates the
  session's prepared statements: the next transaction finds them gone, as on another
  server session;
* the configure hook, run for each new connection, prepares statements under the names
  psycopg will choose (``_pg3_0``, ``_pg3_1``...): the session already holds another
  client's, as a server session shared through the pooler does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg import pq

from kingest.dev.producer import produce_records
from kingest.dev.synth import SyntheticStream
from kingest.pipeline import resources as pipeline_module
from kingest.pipeline.consumer import RunOutcome
from kingest.store.migrate import apply_migrations
from kingest.telemetry import catalog
from tests.integration.support import (
    InProcessKingest,
    all_committed,
    assert_committed_are_stored,
    count_rows,
    kingest_env,
    stored_event_ids,
    wait_for,
)

pytestmark = pytest.mark.integration

PARTITIONS = 2
#: Small batches: many transactions, so a statement prepared in one is used in the next.
SMALL_BATCHES = {
    "KINGEST_BATCH_SIZE": "50",
    "KINGEST_KAFKA_POLL_BATCH_SIZE": "50",
    "KINGEST_RETRY_INITIAL_S": "0.01",
    "KINGEST_RETRY_MAX_S": "0.05",
}
#: What the writers log once when they stop using prepared statements.
ADVICE = "KINGEST_DATABASE_PREPARED_STATEMENTS=false"


def _exec_behind_psycopg(conn: psycopg.Connection[Any], statement: str) -> None:
    result = conn.pgconn.exec_(statement.encode())
    assert result.status == pq.ExecStatus.COMMAND_OK, result.error_message


def behind_a_pooler(
    monkeypatch: pytest.MonkeyPatch, *, lose_statements: bool = False, taken_names: int = 0
) -> None:
    """Open the writers' pool with the hooks described in the module docstring."""
    real_pool = pipeline_module.ConnectionPool

    def on_connect(conn: psycopg.Connection[Any]) -> None:
        for index in range(taken_names):
            _exec_behind_psycopg(conn, f"PREPARE _pg3_{index} AS SELECT {index}")

    def on_return(conn: psycopg.Connection[Any]) -> None:
        if lose_statements:
            _exec_behind_psycopg(conn, "DEALLOCATE ALL")

    def pool(*args: Any, **kwargs: Any) -> Any:
        configure = kwargs["configure"]

        def configured(conn: psycopg.Connection[Any]) -> None:
            configure(conn)
            on_connect(conn)

        return real_pool(*args, **{**kwargs, "configure": configured, "reset": on_return})

    monkeypatch.setattr(pipeline_module, "ConnectionPool", pool)


def run_stream(
    kafka_bootstrap: str,
    database_url: str,
    topic: str,
    group: str,
    seed: int,
    **overrides: str,
) -> tuple[InProcessKingest, set[str]]:
    apply_migrations(database_url)
    records = SyntheticStream(seed=seed).take(1_200)
    report = produce_records(kafka_bootstrap, topic, records, count=len(records))
    env = kingest_env(kafka_bootstrap, database_url, topic, group, **SMALL_BATCHES, **overrides)
    with InProcessKingest(env) as kingest:
        wait_for(
            lambda: all_committed(kafka_bootstrap, group, topic, report.end_offsets, PARTITIONS),
            timeout=90,
            what="every offset committed",
        )
        assert kingest.stop() is RunOutcome.DRAINED
    assert_committed_are_stored(database_url, kafka_bootstrap, group, topic, PARTITIONS)
    return kingest, {r.event_id for r in records}


def advice_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if ADVICE in r.getMessage()]


def test_statements_a_pooler_loses_between_transactions_turn_prepared_statements_off(
    kafka_bootstrap: str,
    database_url: str,
    topic_factory: Callable[[int], str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    behind_a_pooler(monkeypatch, lose_statements=True)
    topic = topic_factory(PARTITIONS)

    kingest, produced = run_stream(
        kafka_bootstrap,
        database_url,
        topic,
        "prepared-lost",
        seed=31,
        KINGEST_WRITERS="1",
    )

    assert stored_event_ids(database_url) == dict.fromkeys(produced, 1)
    assert count_rows(database_url, "dead_letters") == 0, "a lost prepared statement dead-lettered"
    stats = kingest.pipeline.stats
    assert stats.get("transactions") >= 10, "too few transactions to reuse a statement"
    retries = stats.series(catalog.RETRIES)
    # One failure, then the writer's connection no longer prepares anything.
    assert retries.get(("write", "26"), 0) == 1, retries
    [advice] = advice_logged(caplog)
    assert "26000" in advice, advice


def test_statement_names_another_client_took_on_the_session_do_not_stop_the_service(
    kafka_bootstrap: str,
    database_url: str,
    topic_factory: Callable[[int], str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    behind_a_pooler(monkeypatch, taken_names=8)
    topic = topic_factory(PARTITIONS)

    kingest, produced = run_stream(
        kafka_bootstrap, database_url, topic, "prepared-taken", seed=32, KINGEST_WRITERS="2"
    )

    assert stored_event_ids(database_url) == dict.fromkeys(produced, 1)
    assert count_rows(database_url, "dead_letters") == 0
    retries = kingest.pipeline.stats.series(catalog.RETRIES)
    assert 1 <= retries.get(("write", "42"), 0) <= 2, retries  # at most once per connection
    [advice] = advice_logged(caplog)
    assert "42P05" in advice, advice


def test_without_prepared_statements_a_pooler_changes_nothing(
    kafka_bootstrap: str,
    database_url: str,
    topic_factory: Callable[[int], str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    behind_a_pooler(monkeypatch, lose_statements=True, taken_names=8)
    topic = topic_factory(PARTITIONS)

    kingest, produced = run_stream(
        kafka_bootstrap,
        database_url,
        topic,
        "prepared-off",
        seed=33,
        KINGEST_WRITERS="2",
        KINGEST_DATABASE_PREPARED_STATEMENTS="false",
    )

    assert stored_event_ids(database_url) == dict.fromkeys(produced, 1)
    assert count_rows(database_url, "dead_letters") == 0
    assert kingest.pipeline.stats.series(catalog.RETRIES) == {}
    assert advice_logged(caplog) == []
