"""Bounded memory (invariant 4 of docs/design.md): a 500k backlog meets a slowed PostgreSQL.

The whole backlog is in Kafka before kingest starts, and every INSERT statement on the
fact tables sleeps (a statement-level trigger calling ``pg_sleep``), so kingest can read
far faster than it can write: its queues fill, partitions are paused, and its memory is
whatever the bounds allow. The peak RSS of the real ``kingest start`` process must stay
under the bound :func:`kingest.pipeline.memory.memory_budget` computes for the settings.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import psutil  # type: ignore[import-untyped]
import psycopg
import pytest
from psycopg import sql

from kingest.config.loading import load_settings
from kingest.dev.demo import committed_offsets
from kingest.dev.producer import produce_records
from kingest.dev.synth import SyntheticRecord, SyntheticStream
from kingest.pipeline.consumer import Pipeline, RunOutcome
from kingest.pipeline.memory import memory_budget
from kingest.pipeline.partition import MESSAGE_OVERHEAD_BYTES
from kingest.store.migrate import apply_migrations
from kingest.telemetry import catalog
from tests.integration.support import (
    InProcessKingest,
    KingestProcess,
    all_committed,
    assert_committed_are_stored,
    fact_tables,
    kingest_env,
    stored_event_ids,
    total_stored_rows,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PARTITIONS = 8
BACKLOG = 500_000
WRITTEN_BEFORE_STOP = 150_000
#: Seconds every INSERT statement on a fact table sleeps (a batch writes up to 8 tables).
STATEMENT_DELAY_S = 0.1


class RssSampler:
    """Samples the RSS of a process and its children on a thread; keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self._process = psutil.Process(pid)
        self._interval = interval
        self._stop = threading.Event()
        self.peak = 0
        self.samples = 0
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    def _rss(self) -> int:
        total: int = self._process.memory_info().rss
        for child in self._process.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.NoSuchProcess:
                continue
        return total

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                rss = self._rss()
            except psutil.NoSuchProcess:
                return
            self.peak = max(self.peak, rss)
            self.samples += 1

    def high_water_mark(self) -> int:
        """The kernel's own peak (VmHWM) of the main process: misses no short spike."""
        for line in Path(f"/proc/{self._process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return 0

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(5)
        return self.peak


def slow_down_fact_tables(url: str, delay_s: float) -> None:
    """Make every INSERT statement on a fact table sleep for the delay in a settings row.

    A real slowdown, inside PostgreSQL: the writers' transactions take longer, nothing
    is mocked. The delay lives in a table so the test can lift it without taking a lock
    on the fact tables (which the writers hold).
    """
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.test_slowdown (delay_s float8 NOT NULL)")
        conn.execute("INSERT INTO public.test_slowdown VALUES (%s)", (delay_s,))
        conn.execute(
            "CREATE FUNCTION public.test_slow_statement() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN PERFORM pg_sleep((SELECT delay_s FROM public.test_slowdown)); "
            "RETURN NULL; END $$"
        )
        for table in fact_tables(url):
            conn.execute(
                sql.SQL(
                    "CREATE TRIGGER test_slow AFTER INSERT ON kingest.{} "
                    "FOR EACH STATEMENT EXECUTE FUNCTION public.test_slow_statement()"
                ).format(sql.Identifier(table))
            )


def lift_slowdown(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE public.test_slowdown SET delay_s = 0")


def _overrides_for_measurements() -> dict[str, str]:
    """KINGEST_* settings to measure besides the defaults, from KINGEST_TEST_MEMORY_SET
    (``KINGEST_X=1,KINGEST_Y=2``): the bound is computed for them all the same."""
    raw = os.environ.get("KINGEST_TEST_MEMORY_SET", "")
    pairs = (item.split("=", 1) for item in raw.split(",") if item.strip())
    return {name.strip(): value.strip() for name, value in pairs}


def mean_payload(records: Sequence[SyntheticRecord]) -> int:
    """Mean bytes of key, value and headers: the ``message_bytes`` of the bound."""
    total = 0
    for record in records:
        headers = sum(len(name) + len(value) for name, value in record.headers)
        total += len(record.value) + len(record.key or b"") + headers
    return max(1, round(total / len(records)))


def test_500k_backlog_on_a_slow_database_stays_within_the_memory_bound(
    kafka_bootstrap: str,
    database_url: str,
    topic_factory: Callable[[int], str],
    tmp_path: Path,
) -> None:
    topic = topic_factory(PARTITIONS)
    apply_migrations(database_url)
    records = SyntheticStream(seed=41).take(BACKLOG)
    report = produce_records(kafka_bootstrap, topic, records, count=BACKLOG)
    assert report.delivered == BACKLOG
    message_bytes = mean_payload(records)
    del records
    slow_down_fact_tables(database_url, STATEMENT_DELAY_S)
    # DEBUG makes the loop log each pause. The drain writes everything queued (a few
    # hundred thousand rows), so it gets a generous deadline on a loaded machine.
    env = kingest_env(
        kafka_bootstrap,
        database_url,
        topic,
        "backpressure",
        KINGEST_LOG_LEVEL="DEBUG",
        KINGEST_DRAIN_TIMEOUT_S="60",
        KINGEST_KAFKA_MAX_POLL_INTERVAL_MS="90000",
        **_overrides_for_measurements(),
    )
    budget = memory_budget(load_settings(env), PARTITIONS, message_bytes=message_bytes)

    with KingestProcess(env, tmp_path / "kingest.log") as kingest:
        sampler = RssSampler(kingest.proc.pid)
        wait_for(
            lambda: total_stored_rows(database_url) >= WRITTEN_BEFORE_STOP,
            timeout=120,
            interval=1.0,
            what=f"{WRITTEN_BEFORE_STOP:,} rows written (log: {kingest.log_path})",
        )
        # The writers were the bottleneck: partitions were paused, not buffered.
        paused = len(re.findall(r"DEBUG\s+\S+: paused ", kingest.log))
        high_water_mark = sampler.high_water_mark()
        lift_slowdown(database_url)  # so the drain of what is queued finishes quickly
        assert kingest.terminate_and_wait(timeout=90) == 0, kingest.log
        peak = max(sampler.stop(), high_water_mark)

    stored = total_stored_rows(database_url)
    print(
        f"\npeak RSS {peak / 2**20:.1f} MiB (sampled {sampler.peak / 2**20:.1f} MiB over "
        f"{sampler.samples} samples, VmHWM {high_water_mark / 2**20:.1f} MiB); "
        f"{paused} pauses; {stored:,} rows stored of a {BACKLOG:,} backlog\n"
        f"bound for {PARTITIONS} partitions, {message_bytes}-byte messages:\n"
        f"{budget.describe()}"
    )
    assert paused > 0, "no partition was paused: the test did not fill the queues"
    assert stored < BACKLOG, "kingest wrote everything: the database was not the bottleneck"
    assert f"memory bound for {PARTITIONS} partitions" in kingest.log
    assert peak <= budget.total_bytes, (
        f"peak RSS {peak / 2**20:.1f} MiB over the bound {budget.total_mib:.1f} MiB"
    )


#: The unacknowledged bound of the held-writes test, far below what the mailbox bound and
#: the writers' queue let one partition take in (5,000 + 8 batches + 4 writers' worth).
UNACKED_BOUND = 1_000
UNACKED_POLL = 100
UNACKED_EVENTS = 30_000


@contextmanager
def writes_held_until_paused(
    kafka_bootstrap: str,
    database_url: str,
    topic: str,
    *,
    group: str,
    seed: int,
    events: int,
    retries: int,
    **settings: str,
) -> Iterator[tuple[Pipeline, list[SyntheticRecord]]]:
    """Produce ``events`` to the two-partition ``topic``, run kingest on it with every
    write held by a lock on a table every batch writes to (nothing becomes durable, so
    nothing is committed) until both partitions are paused and the held writes have been
    retried ``retries`` more times; yield the pipeline and the records. Then release the
    lock and check that every event is stored exactly once, against the producer's record."""
    apply_migrations(database_url)
    records = SyntheticStream(seed=seed).take(events)
    produced = produce_records(kafka_bootstrap, topic, records, count=events, collect_ids=True)
    assert produced.delivered == events
    env = kingest_env(
        kafka_bootstrap,
        database_url,
        topic,
        group,
        KINGEST_KAFKA_POLL_BATCH_SIZE=str(UNACKED_POLL),
        KINGEST_BATCH_SIZE="200",
        # Held writes give up a statement after 2 s and are retried: retries prove time
        # passes with the writers stuck.
        KINGEST_DATABASE_STATEMENT_TIMEOUT_MS="2000",
        **settings,
    )
    kingest = InProcessKingest(env)
    pipeline = kingest.pipeline
    with psycopg.connect(database_url) as blocker, kingest:
        blocker.execute("LOCK TABLE kingest.inferences IN ACCESS EXCLUSIVE MODE")
        wait_for(
            lambda: len(pipeline.state().partitions) == 2 and pipeline.state().paused_count == 2,
            timeout=60,
            what="both partitions paused",
        )
        before = pipeline.stats.get("retries")
        wait_for(
            lambda: pipeline.stats.get("retries") >= before + retries,
            timeout=60,
            what="the held writes retried while the partitions stay paused",
        )
        yield pipeline, records
        blocker.rollback()
        wait_for(
            lambda: all_committed(kafka_bootstrap, group, topic, produced.end_offsets, 2),
            timeout=120,
            what="every offset committed once the lock is released",
        )
        assert kingest.stop() is RunOutcome.DRAINED
    assert_committed_are_stored(database_url, kafka_bootstrap, group, topic, 2)
    stored = stored_event_ids(database_url)
    assert set(stored) == produced.event_ids
    assert max(stored.values()) == 1


def test_a_partition_whose_writes_are_held_is_paused_at_its_unacknowledged_bound(
    kafka_bootstrap: str, database_url: str, topic_factory: Callable[[int], str]
) -> None:
    # Each partition must stop being consumed once what it has consumed and not seen
    # durable reaches KINGEST_PARTITION_UNACKED_MESSAGES (one poll may overshoot), not
    # only once its mailbox is full.
    topic = topic_factory(2)
    group = "unacked-bound"

    def consumed_uncommitted(pipeline: Pipeline) -> dict[int, int]:
        """Per partition, messages consumed (counted by the loop) minus the committed
        offset the broker holds (a fresh group starts at offset 0)."""
        consumed = {
            int(partition): count
            for (_, partition, _), count in pipeline.stats.series(catalog.MESSAGES_CONSUMED).items()
        }
        committed = committed_offsets(kafka_bootstrap, group, topic, 2)
        return {p: n - max(committed.get(p, -1), 0) for p, n in consumed.items()}

    with writes_held_until_paused(
        kafka_bootstrap,
        database_url,
        topic,
        group=group,
        seed=43,
        events=UNACKED_EVENTS,
        retries=4,
        KINGEST_PARTITION_UNACKED_MESSAGES=str(UNACKED_BOUND),
        KINGEST_PARTITION_QUEUE_MESSAGES="5000",
    ) as (pipeline, _):
        state = pipeline.state()
        held = consumed_uncommitted(pipeline)
        assert state.paused_count == 2
        assert all(n <= UNACKED_BOUND + UNACKED_POLL for n in held.values()), held
        assert all(p.unacked_messages <= UNACKED_BOUND + UNACKED_POLL for p in state.partitions), (
            state.partitions
        )
        assert sum(held.values()) < UNACKED_EVENTS
    print(f"\nheld per partition: {held}; unacked {[p.unacked_messages for p in state.partitions]}")


#: The process-wide bound of the held-writes test below: about 2,000 synthetic messages.
IN_FLIGHT_LIMIT = 1 << 20
IN_FLIGHT_EVENTS = 20_000


def test_the_process_takes_no_more_than_its_in_flight_bound_while_writes_are_held(
    kafka_bootstrap: str, database_url: str, topic_factory: Callable[[int], str]
) -> None:
    # The per-partition bounds are left at their defaults (10,000 messages, 16 MiB per
    # mailbox), which would take in the whole topic; only the process-wide
    # KINGEST_IN_FLIGHT_BYTES can stop the loop, first by not polling, then (past its
    # grace) by pausing every partition.
    topic = topic_factory(2)
    group = "in-flight-bound"
    with writes_held_until_paused(
        kafka_bootstrap,
        database_url,
        topic,
        group=group,
        seed=44,
        events=IN_FLIGHT_EVENTS,
        retries=3,
        KINGEST_IN_FLIGHT_BYTES=str(IN_FLIGHT_LIMIT),
    ) as (pipeline, records):
        # What the bound counts for one message (records_size): its overhead, key and value.
        smallest = min(MESSAGE_OVERHEAD_BYTES + len(r.value) + len(r.key or b"") for r in records)
        consumed = pipeline.stats.get("messages_consumed")
        committed = committed_offsets(kafka_bootstrap, group, topic, 2)
        held = consumed - sum(max(offset, 0) for offset in committed.values())
        unacked = sum(p.unacked_messages for p in pipeline.state().partitions)
        # The loop looks before each poll: the bound plus one poll at most.
        assert held <= IN_FLIGHT_LIMIT // smallest + UNACKED_POLL, (held, unacked)
        assert unacked <= IN_FLIGHT_LIMIT // smallest + UNACKED_POLL, (held, unacked)
    print(f"\nheld {held} messages in flight (bound {IN_FLIGHT_LIMIT // smallest} + a poll)")
