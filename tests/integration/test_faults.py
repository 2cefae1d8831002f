"""Fault tests: kill -9 storms, a PostgreSQL outage, consumers joining and leaving.

Each test proves invariants 1 (no loss), 2 (no duplicates), 5 (poison never stops the
stream; transient failures are retried, never dead-lettered) and 6 (rebalance and
shutdown drain) of docs/design.md under one fault, on the real broker and a real PostgreSQL,
and prints its figures (``pytest -s`` shows them; they are also attached to the test
report as properties): events checked, kills survived, lost, duplicated, recovery time.
"""

from __future__ import annotations

import random
import signal
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from kingest.config.loading import load_settings
from kingest.dev import LocalPostgres, create_topic
from kingest.pipeline.consumer import RunOutcome
from kingest.pipeline.resources import open_pool
from kingest.store.migrate import apply_migrations
from tests.integration.faulty_stream import (
    PARTITIONS,
    FaultyStreamProducer,
    RecordProperty,
    assert_committed_are_durable,
    check_exactly_once,
    committed,
    expected_training_runs,
    report,
    stored_training_runs,
    wait_until_committed,
)
from tests.integration.support import (
    InProcessKingest,
    KingestProcess,
    all_committed,
    count_rows,
    kingest_env,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# ---------------------------------------------------------------------------- 1. kill -9 storm

STORM_EVENTS = 200_000
STORM_KILLS = 10


def test_kill_9_storm_loses_and_doubles_nothing(
    kafka_bootstrap: str,
    database_url: str,
    topic_factory: Callable[[int], str],
    tmp_path: Path,
    record_property: RecordProperty,
) -> None:
    topic = topic_factory(PARTITIONS)
    apply_migrations(database_url)
    group = "kill-storm"
    # A killed member holds its partitions until its session expires: a short session
    # makes each restart's wait shorter (the storm tests crashes, not session timing).
    env = kingest_env(
        kafka_bootstrap,
        database_url,
        topic,
        group,
        KINGEST_KAFKA_SESSION_TIMEOUT_MS="3000",
        KINGEST_KAFKA_HEARTBEAT_INTERVAL_MS="1000",
    )
    rng = random.Random(20261128)
    producer = FaultyStreamProducer(
        kafka_bootstrap,
        topic,
        seed=31,
        minimum=STORM_EVENTS,
        rate=4_000,
        poison_share=0.02,
        duplicate_share=0.03,
    )
    recoveries: list[float] = []
    for kill in range(STORM_KILLS):
        before = committed(kafka_bootstrap, group, topic)
        # A random amount of progress, then a random moment within the next half second.
        target = before + rng.randint(1, 4_000)
        started = time.monotonic()
        with KingestProcess(env, tmp_path / f"run-{kill}.log") as kingest:
            wait_until_committed(
                kafka_bootstrap,
                group,
                topic,
                before,
                timeout=90,
                what=f"progress after restart {kill} (log: {kingest.log_path})",
            )
            recoveries.append(time.monotonic() - started)
            wait_until_committed(
                kafka_bootstrap,
                group,
                topic,
                target,
                timeout=90,
                what=f"{target - before} more offsets committed (log: {kingest.log_path})",
            )
            time.sleep(rng.uniform(0, 0.5))  # fault timing, not synchronisation
            kingest.proc.send_signal(signal.SIGKILL)
            assert kingest.wait() == -signal.SIGKILL
        # Whatever was committed before the crash is durable (invariant 1 of docs/design.md),
        # every time.
        assert_committed_are_durable(database_url, kafka_bootstrap, group, topic, producer.stream)

    stream = producer.finish()
    with KingestProcess(env, tmp_path / "final.log") as kingest:
        wait_for(
            lambda: all_committed(kafka_bootstrap, group, topic, stream.end_offsets, PARTITIONS),
            timeout=120,
            what=f"every offset committed (log: {kingest.log_path})",
        )
        assert kingest.terminate_and_wait() == 0, kingest.log
    assert_committed_are_durable(database_url, kafka_bootstrap, group, topic, stream)
    result = check_exactly_once(database_url, stream)
    assert result.checked >= STORM_EVENTS * 0.9
    assert len(stream.poison) > 0
    assert len(stream.duplicates) > 0
    report(
        record_property,
        "kill -9 storm",
        messages=stream.delivered,
        events_checked=result.checked,
        poison=len(stream.poison),
        duplicates_produced=len(stream.duplicates),
        kills_survived=STORM_KILLS,
        lost=result.lost,
        duplicated=result.duplicated,
        restart_to_first_commit_s_median=round(statistics.median(recoveries), 2),
        restart_to_first_commit_s_max=round(max(recoveries), 2),
    )


# ---------------------------------------------------------------------------- 2. PostgreSQL outage

OUTAGE_S = 20.0


def test_postgresql_outage_is_waited_out_in_the_group(
    kafka_bootstrap: str,
    local_postgres: LocalPostgres,
    topic_factory: Callable[[int], str],
    record_property: RecordProperty,
) -> None:
    topic = topic_factory(PARTITIONS)
    url = local_postgres.create_database("outage")
    apply_migrations(url)
    group = "pg-outage"
    env = kingest_env(kafka_bootstrap, url, topic, group)
    producer = FaultyStreamProducer(
        kafka_bootstrap, topic, seed=41, minimum=60_000, rate=2_000, poison_share=0.01
    )
    with InProcessKingest(env) as kingest:
        stats = kingest.pipeline.stats
        wait_for(
            lambda: committed(kafka_bootstrap, group, topic) >= 5_000,
            timeout=60,
            what="the stream flowing",
        )
        rebalances_before = stats.get("rebalances")
        local_postgres.stop()
        down_at = time.monotonic()
        wait_for(lambda: stats.get("retries") > 0, timeout=OUTAGE_S, what="writes retried")
        written_during_outage = stats.get("messages_written")
        committed_during_outage = committed(kafka_bootstrap, group, topic)
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))  # the fault's length
        assert stats.get("messages_written") == written_during_outage, "wrote while PG was down"
        local_postgres.start()
        back_at = time.monotonic()
        produced_before_back = dict(producer.stream.end_offsets)
        wait_for(
            lambda: (stats.last_written_at or 0) > back_at,
            timeout=60,
            what="a write after PostgreSQL came back",
        )
        first_write_s = (stats.last_written_at or 0) - back_at
        wait_for(
            lambda: all_committed(kafka_bootstrap, group, topic, produced_before_back, PARTITIONS),
            timeout=90,
            what="the backlog of the outage committed",
        )
        caught_up_s = time.monotonic() - back_at
        stream = producer.finish()
        wait_for(
            lambda: all_committed(kafka_bootstrap, group, topic, stream.end_offsets, PARTITIONS),
            timeout=90,
            what="every offset committed",
        )
        assert kingest.pipeline.stats.get("rebalances") == rebalances_before, "left the group"
        assert kingest.stop() is RunOutcome.DRAINED
    assert committed_during_outage < stream.delivered, "the outage came after the stream"
    result = check_exactly_once(url, stream)
    write_dead_letters = count_rows(url, "dead_letters", "error_stage = 'write'")
    assert write_dead_letters == 0, "an outage dead-lettered events"
    report(
        record_property,
        "PostgreSQL outage",
        outage_s=OUTAGE_S,
        events_checked=result.checked,
        lost=result.lost,
        duplicated=result.duplicated,
        retries=stats.get("retries"),
        rebalances=stats.get("rebalances"),
        back_to_first_write_s=round(first_write_s, 2),
        back_to_backlog_committed_s=round(caught_up_s, 2),
        backlog_messages=sum(produced_before_back.values()) - committed_during_outage,
    )


def test_writer_pool_reconnects_within_the_writers_backoff(database_url: str) -> None:
    # psycopg_pool's own reconnect backoff doubles without bound for reconnect_timeout
    # (300 s by default): after the 20 s outage above, kingest's first write came 10 s
    # after PostgreSQL was back (0.2-0.4 s with this setting). See resources.open_pool.
    env = kingest_env("127.0.0.1:9", database_url, "t", "g", KINGEST_RETRY_MAX_S="3.5")
    pool = open_pool(load_settings(env))
    try:
        assert pool.reconnect_timeout == 3.5
    finally:
        pool.close()


# ---------------------------------------------------------------------------- 3. joining/leaving

MEMBERSHIP_CHANGES = 10
MAX_MEMBERS = 3


@pytest.fixture(params=["tansu", "mock"])
def churn_broker(request: pytest.FixtureRequest) -> tuple[str, str, str]:
    """(broker kind, bootstrap servers, a new topic) for the joining/leaving test.

    Tansu gets stuck for good when a member leaves while another one's join is pending
    (measured: the group assigns nothing any more, even to new processes, while
    librdkafka's mock cluster reassigns within 5-9 s), so on Tansu each change waits
    until the group has settled, and the mock cluster gets changes in mid-rebalance.
    """
    kind: str = request.param
    if kind == "tansu":
        topic = request.getfixturevalue("topic_factory")(PARTITIONS)
        return kind, request.getfixturevalue("kafka_bootstrap"), str(topic)
    bootstrap = request.getfixturevalue("mock_cluster").bootstrap_servers
    topic = f"kt-churn-{uuid.uuid4().hex[:8]}"
    create_topic(bootstrap, topic, PARTITIONS)
    return kind, bootstrap, topic


def rebalances_seen(member: KingestProcess) -> int:
    """How many assignments the member has logged (every eager rebalance logs one)."""
    return member.log.count("kingest.pipeline.consumer: assigned ")


def test_consumers_joining_and_leaving_under_load(
    churn_broker: tuple[str, str, str],
    database_url: str,
    tmp_path: Path,
    record_property: RecordProperty,
) -> None:
    kind, bootstrap, topic = churn_broker
    apply_migrations(database_url)
    group = "churn"
    env = kingest_env(bootstrap, database_url, topic, group)
    rng = random.Random(7)
    producer = FaultyStreamProducer(
        bootstrap,
        topic,
        seed=51,
        minimum=80_000,
        rate=2_500,
        poison_share=0.01,
        duplicate_share=0.02,
    )
    members: list[KingestProcess] = []
    started = 0
    actions: Counter[str] = Counter()

    def start_member() -> None:
        nonlocal started
        members.append(KingestProcess(env, tmp_path / f"member-{started}.log"))
        started += 1
        actions["started"] += 1

    def settle(seen: dict[int, int]) -> None:
        """On Tansu: wait until every member has been assigned again since the change."""
        if kind == "tansu":
            wait_for(
                lambda: all(rebalances_seen(m) > seen.get(id(m), 0) for m in members),
                timeout=90,
                what="the group to settle",
            )

    try:
        start_member()
        seen: dict[int, int] = {}
        for _ in range(MEMBERSHIP_CHANGES):
            settle(seen)
            before = committed(bootstrap, group, topic)
            wait_until_committed(
                bootstrap, group, topic, before, timeout=90, what="the group's progress"
            )
            seen = {id(m): rebalances_seen(m) for m in members}
            # Between one and MAX_MEMBERS members: someone must be there to make progress.
            if len(members) <= 1 or (len(members) < MAX_MEMBERS and rng.random() < 0.5):
                start_member()
                continue
            member = members.pop(rng.randrange(len(members)))
            if rng.random() < 0.3:
                member.proc.send_signal(signal.SIGKILL)
                assert member.wait() == -signal.SIGKILL
                actions["killed"] += 1
            else:
                assert member.terminate_and_wait() == 0, member.log
                actions["stopped"] += 1
        settle(seen)
        stream = producer.finish()
        wait_for(
            lambda: all_committed(bootstrap, group, topic, stream.end_offsets, PARTITIONS),
            timeout=120,
            what="every offset committed",
        )
        for member in members:
            assert member.terminate_and_wait() == 0, member.log
    finally:
        for member in members:
            member.__exit__()
    assert_committed_are_durable(database_url, bootstrap, group, topic, stream)
    result = check_exactly_once(database_url, stream)
    expected_runs = expected_training_runs(stream.records)
    assert expected_runs, "the stream had no training runs"
    assert stored_training_runs(database_url) == expected_runs
    assert actions["killed"] > 0
    assert actions["stopped"] > 0
    report(
        record_property,
        f"consumers joining and leaving ({kind})",
        events_checked=result.checked,
        lost=result.lost,
        duplicated=result.duplicated,
        training_runs=len(expected_runs),
        members_started=actions["started"],
        members_stopped=actions["stopped"],
        members_killed=actions["killed"],
    )
