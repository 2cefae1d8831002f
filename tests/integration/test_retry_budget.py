"""Transient database errors that are not outages get a retry budget, then bisection.

A trigger that raises for some rows, or a statement timeout of a batch too large, is
"transient" by SQLSTATE but fails the same way on every retry: retrying the batch forever
would stall its partitions. The writer retries it ``KINGEST_RETRY_BUDGET`` times, then
splits the batch; halves that succeed are stored, a single row that still fails is
dead-lettered as ``retries_exhausted`` with its SQLSTATE. (Outages are still waited out
forever: tests/integration/test_faults.py.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import psycopg
import pytest

from kingest.dev.producer import produce_records
from kingest.dev.synth import SyntheticRecord, SyntheticStream
from kingest.pipeline.consumer import RunOutcome
from kingest.store.migrate import apply_migrations
from kingest.telemetry import catalog
from tests.integration.support import (
    InProcessKingest,
    all_committed,
    assert_committed_are_stored,
    count_rows,
    fact_tables,
    kingest_env,
    stored_event_ids,
    wait_for,
)

pytestmark = pytest.mark.integration

PARTITIONS = 2
#: Fast backoff: the budget, not the wait, is under test.
FAST_RETRIES = {"KINGEST_RETRY_INITIAL_S": "0.01", "KINGEST_RETRY_MAX_S": "0.05"}


def reject_rows_in_a_trigger(url: str, sqlstate: str, event_ids: Sequence[str]) -> None:
    """A BEFORE ROW trigger on every fact table raising ``sqlstate`` for ``event_ids``."""
    tables = fact_tables(url)
    ids = ", ".join(f"'{event_id}'" for event_id in event_ids)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            f"CREATE OR REPLACE FUNCTION kingest.reject_{sqlstate.lower()}() RETURNS trigger "
            "LANGUAGE plpgsql AS $$ BEGIN "
            "IF NEW.event_id::text = ANY (TG_ARGV) THEN "
            "RAISE EXCEPTION 'rejected by a trigger: %', NEW.event_id "
            f"USING ERRCODE = '{sqlstate}'; "
            "END IF; RETURN NEW; END $$"
        )
        for table in tables:
            conn.execute(
                f"CREATE TRIGGER reject_{sqlstate.lower()} BEFORE INSERT ON kingest.{table} "
                f"FOR EACH ROW EXECUTE FUNCTION kingest.reject_{sqlstate.lower()}({ids})"
            )


def cancel_statements_over(url: str, max_rows: int) -> None:
    """An AFTER STATEMENT trigger on every fact table that cancels a statement inserting
    more than ``max_rows`` rows, as a statement_timeout cancels one huge batch."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE FUNCTION kingest.cancel_large_statements() RETURNS trigger "
            "LANGUAGE plpgsql AS $$ BEGIN "
            "IF (SELECT count(*) FROM new_rows) > TG_ARGV[0]::int THEN "
            "RAISE EXCEPTION 'canceling statement due to statement timeout' "
            "USING ERRCODE = 'query_canceled'; "
            "END IF; RETURN NULL; END $$"
        )
        for table in fact_tables(url):
            conn.execute(
                f"CREATE TRIGGER cancel_large_statements AFTER INSERT ON kingest.{table} "
                "REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT "
                f"EXECUTE FUNCTION kingest.cancel_large_statements({max_rows})"
            )


def run_until_committed(
    env: dict[str, str], bootstrap: str, topic: str, end_offsets: dict[int, int]
) -> InProcessKingest:
    group = env["KINGEST_GROUP_ID"]
    with InProcessKingest(env) as kingest:
        wait_for(
            lambda: all_committed(bootstrap, group, topic, end_offsets, PARTITIONS),
            timeout=90,
            what="every offset committed",
        )
        assert kingest.stop() is RunOutcome.DRAINED
    return kingest


def run_with_a_budget_of_two(
    bootstrap: str, database_url: str, topic: str, group: str, records: list[SyntheticRecord]
) -> InProcessKingest:
    """Produce ``records`` and run kingest with a retry budget of 2 until every offset is
    committed."""
    report = produce_records(bootstrap, topic, records, count=len(records))
    env = kingest_env(
        bootstrap, database_url, topic, group, KINGEST_RETRY_BUDGET="2", **FAST_RETRIES
    )
    return run_until_committed(env, bootstrap, topic, report.end_offsets)


def test_rows_a_trigger_always_rejects_dead_letter_after_the_retry_budget(
    kafka_bootstrap: str, database_url: str, topic_factory: Callable[[int], str]
) -> None:
    topic = topic_factory(PARTITIONS)
    apply_migrations(database_url)
    records = SyntheticStream(seed=11).take(1_500)
    raised = [r.event_id for r in records[100::250]]  # P0001: a plain RAISE EXCEPTION
    custom = [r.event_id for r in records[170::400]]  # a SQLSTATE no class of ours knows
    reject_rows_in_a_trigger(database_url, "P0001", raised)
    reject_rows_in_a_trigger(database_url, "KG001", custom)
    report = produce_records(kafka_bootstrap, topic, records, count=len(records))
    env = kingest_env(kafka_bootstrap, database_url, topic, "retry-budget-trigger", **FAST_RETRIES)

    kingest = run_until_committed(env, kafka_bootstrap, topic, report.end_offsets)

    rejected = set(raised) | set(custom)
    assert set(stored_event_ids(database_url)) == {r.event_id for r in records} - rejected
    with psycopg.connect(database_url) as conn:
        dead = conn.execute(
            "SELECT event_id, error_stage, error_class, sqlstate, error_message"
            " FROM kingest.dead_letters"
        ).fetchall()
    assert {row[0]: row[3] for row in dead} == {
        **dict.fromkeys(raised, "P0001"),
        **dict.fromkeys(custom, "KG001"),
    }
    assert all(row[1:3] == ("write", "retries_exhausted") for row in dead)
    assert all("rejected by a trigger" in row[4] for row in dead)
    assert_committed_are_stored(database_url, kafka_bootstrap, "retry-budget-trigger", topic, 2)
    stats = kingest.pipeline.stats
    assert stats.get("retries") > 0
    assert stats.get("write_rejections") == len(rejected)


def test_a_batch_that_times_out_is_split_until_its_halves_succeed(
    kafka_bootstrap: str, database_url: str, topic_factory: Callable[[int], str]
) -> None:
    topic = topic_factory(PARTITIONS)
    apply_migrations(database_url)
    cancel_statements_over(database_url, max_rows=40)
    records = SyntheticStream(seed=12).take(1_500)

    kingest = run_with_a_budget_of_two(
        kafka_bootstrap, database_url, topic, "retry-budget-timeout", records
    )

    assert stored_event_ids(database_url) == dict.fromkeys((r.event_id for r in records), 1)
    assert count_rows(database_url, "dead_letters") == 0, "a statement timeout dead-lettered"
    assert_committed_are_stored(database_url, kafka_bootstrap, "retry-budget-timeout", topic, 2)
    retries = kingest.pipeline.stats.series(catalog.RETRIES)
    assert retries.get(("write", "57"), 0) > 0, retries


def fail_rows_with_io_errors(url: str, event_ids: Sequence[str], failures: int) -> None:
    """A BEFORE ROW trigger on every fact table raising SQLSTATE 58030 (io_error, as when
    the server cannot write a data file) for ``event_ids``, ``failures`` times in all: a
    sequence counts them, since a sequence is not rolled back with the failed write."""
    ids = ", ".join(f"'{event_id}'" for event_id in event_ids)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE SEQUENCE kingest.io_failures")
        conn.execute(
            "CREATE FUNCTION kingest.fail_with_io_error() RETURNS trigger "
            "LANGUAGE plpgsql AS $$ BEGIN "
            "IF NEW.event_id::text = ANY (TG_ARGV) "
            f"AND nextval('kingest.io_failures') <= {failures} THEN "
            "RAISE EXCEPTION 'could not extend file \"base/16384/16385\": No space left' "
            "USING ERRCODE = 'io_error'; "
            "END IF; RETURN NEW; END $$"
        )
        for table in fact_tables(url):
            conn.execute(
                f"CREATE TRIGGER fail_with_io_error BEFORE INSERT ON kingest.{table} "
                f"FOR EACH ROW EXECUTE FUNCTION kingest.fail_with_io_error({ids})"
            )


def test_a_system_error_of_the_server_is_waited_out_and_dead_letters_nothing(
    kafka_bootstrap: str, database_url: str, topic_factory: Callable[[int], str]
) -> None:
    topic = topic_factory(PARTITIONS)
    apply_migrations(database_url)
    records = SyntheticStream(seed=13).take(1_500)
    # Far more failures than the budget allows: only an outage may be waited out that long.
    fail_rows_with_io_errors(database_url, [r.event_id for r in records[50::300]], failures=40)

    kingest = run_with_a_budget_of_two(
        kafka_bootstrap, database_url, topic, "retry-budget-io-error", records
    )

    assert stored_event_ids(database_url) == dict.fromkeys((r.event_id for r in records), 1)
    assert count_rows(database_url, "dead_letters") == 0, "an I/O error dead-lettered"
    assert_committed_are_stored(database_url, kafka_bootstrap, "retry-budget-io-error", topic, 2)
    with psycopg.connect(database_url) as conn:
        raised = conn.execute("SELECT last_value FROM kingest.io_failures").fetchone()
    assert raised is not None
    assert raised[0] > 40, "the trigger did not raise every failure"
    retries = kingest.pipeline.stats.series(catalog.RETRIES)
    assert retries.get(("write", "58"), 0) >= 40, retries
