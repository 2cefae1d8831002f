"""A dead letter the topic cannot take is kept in kingest.dead_letters, and the stream goes on.

Each failure is injected for real: a value too large for the dead-letter producer (it
raises synchronously in produce()), Produce errors answered by librdkafka's mock cluster
(an authorization failure, which can never succeed, and a retriable error that never
clears), and a dead-letter topic that does not exist (deliveries fail until the publish
budget is spent). Tansu cannot stand in for a deleted topic: it accepts produce requests
for a topic it no longer lists.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from confluent_kafka import KafkaError, Producer
from typer.testing import CliRunner

from kingest.cli.main import app
from kingest.dev.demo import committed_offsets
from kingest.dev.producer import produce_records
from kingest.dev.services import MockKafkaCluster, create_topic
from kingest.dev.synth import SyntheticRecord, SyntheticStream
from kingest.pipeline.consumer import RunOutcome
from kingest.runtime.http import TelemetryServer
from kingest.store.migrate import apply_migrations
from kingest.telemetry import catalog
from tests.integration.support import (
    InProcessKingest,
    all_committed,
    kingest_env,
    stored_event_ids,
    stored_offsets,
    wait_for,
)
from tests.integration.test_dead_letter_topic import read_dead_letters
from tests.integration.test_metrics import get, scrape, values

pytestmark = pytest.mark.integration

PARTITIONS = 2
#: Undecodable and, with kingest's headers, over the producer's message.max.bytes (1e6).
OVERSIZED = b"\xff\x00" * 500_000
PRODUCE_API = 0


def produce(bootstrap: str, topic: str, values: list[tuple[int, bytes]]) -> dict[int, int]:
    """Produce ``(partition, value)`` pairs; return partition -> offset of each, in order."""
    producer = Producer({"bootstrap.servers": bootstrap, "message.max.bytes": 2_000_000})
    offsets: list[tuple[int, int]] = []

    def delivered(error: KafkaError | None, message: Any) -> None:
        assert error is None, error
        offsets.append((message.partition(), message.offset()))

    for partition, value in values:
        producer.produce(
            topic, value=value, key=b"poison", partition=partition, on_delivery=delivered
        )
        assert producer.flush(30) == 0
    return dict(offsets)


def dead_letter_rows(url: str) -> dict[tuple[int, int], dict[str, Any]]:
    with psycopg.connect(url) as conn, conn.cursor() as cursor:
        cursor.execute("SELECT * FROM kingest.dead_letters")
        names = [column.name for column in cursor.description or ()]
        rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    return {(row["kafka_partition"], row["kafka_offset"]): row for row in rows}


def assert_committed_are_durable(
    url: str, bootstrap: str, group: str, topic: str, published: set[tuple[int, int]]
) -> None:
    """No loss: every offset below a committed one is in PostgreSQL (a row or a dead
    letter) or is a dead letter the topic confirmed (``published``)."""
    stored = stored_offsets(url)
    for partition, offset in committed_offsets(bootstrap, group, topic, PARTITIONS).items():
        missing = set(range(max(offset, 0))) - stored.get(partition, set())
        assert {(partition, o) for o in missing} <= published, (partition, sorted(missing))


def end_offsets_after(*reports: dict[int, int]) -> dict[int, int]:
    ends: dict[int, int] = {}
    for report in reports:
        for partition, end in report.items():
            ends[partition] = max(ends.get(partition, 0), end)
    return ends


def produce_stream(
    bootstrap: str, topic: str, poison: list[tuple[int, bytes]], *, seed: int, count: int
) -> tuple[dict[int, int], list[SyntheticRecord], dict[int, int]]:
    """Produce the ``poison`` ``(partition, value)`` pairs, then ``count`` synthetic
    records; return the poison's offsets by partition, the records and the end offsets."""
    offsets = produce(bootstrap, topic, poison)
    records = SyntheticStream(seed=seed).take(count)
    report = produce_records(bootstrap, topic, records, count=len(records))
    ends = end_offsets_after(report.end_offsets, {p: o + 1 for p, o in offsets.items()})
    return offsets, records, ends


def drain(env: dict[str, str], group: str, topic: str, ends: dict[int, int]) -> InProcessKingest:
    """Run kingest until every offset below ``ends`` is committed, then stop it."""
    bootstrap = env["KINGEST_KAFKA_BOOTSTRAP_SERVERS"]
    with InProcessKingest(env) as kingest:
        wait_for(
            lambda: all_committed(bootstrap, group, topic, ends, PARTITIONS),
            timeout=90,
            what="every offset committed",
        )
        assert kingest.pipeline.state().failure is None
        assert kingest.stop() is RunOutcome.DRAINED
    return kingest


def failures_counted(kingest: InProcessKingest) -> dict[tuple[str, ...], int]:
    return kingest.pipeline.stats.series(catalog.DEAD_LETTER_PUBLISH_FAILURES)


def listed_by_cli(url: str) -> list[dict[str, Any]]:
    result = CliRunner().invoke(app, ["dlq", "list", "--json"], env={"KINGEST_DATABASE_URL": url})
    assert result.exit_code == 0, result.output
    rows: list[dict[str, Any]] = json.loads(result.stdout)
    return rows


@pytest.mark.parametrize("store", ["topic", "both"])
def test_a_dead_letter_too_large_for_the_topic_is_kept_in_the_table(
    kafka_bootstrap: str, database_url: str, topic_factory: Callable[[int], str], store: str
) -> None:
    topic = topic_factory(PARTITIONS)
    create_topic(kafka_bootstrap, f"{topic}.dlq", 1)
    apply_migrations(database_url)
    poison, records, ends = produce_stream(
        kafka_bootstrap, topic, [(0, OVERSIZED), (1, b"\xff\x00small")], seed=21, count=600
    )
    group = f"dlq-too-large-{store}"
    env = kingest_env(kafka_bootstrap, database_url, topic, group, KINGEST_DEAD_LETTER_STORE=store)

    with InProcessKingest(env) as kingest:
        server = TelemetryServer(kingest.pipeline, kingest.pipeline.settings).start()
        try:
            wait_for(
                lambda: all_committed(kafka_bootstrap, group, topic, ends, PARTITIONS),
                timeout=90,
                what="every offset committed",
            )
            assert kingest.pipeline.state().failure is None
            status, ready = get(f"{server.url}/readyz")
            served = values(
                scrape(server.url),
                catalog.DEAD_LETTER_PUBLISH_FAILURES.prometheus_name,
                "error_type",
            )
        finally:
            server.stop()
        assert kingest.stop() is RunOutcome.DRAINED

    assert set(stored_event_ids(database_url)) == {r.event_id for r in records}
    assert_committed_are_durable(database_url, kafka_bootstrap, group, topic, {(1, poison[1])})
    rows = dead_letter_rows(database_url)
    big = rows[(0, poison[0])]
    assert big["message_value"] == OVERSIZED
    assert big["error_stage"] == "decode"
    assert "MSG_SIZE_TOO_LARGE" in big["publish_error"]
    if store == "both":
        assert set(rows) == {(0, poison[0]), (1, poison[1])}
        assert rows[(1, poison[1])]["publish_error"] is None
    else:
        assert set(rows) == {(0, poison[0])}
    assert kingest.pipeline.stats.get("dead_letters_published") == 1
    assert failures_counted(kingest) == {("MSG_SIZE_TOO_LARGE",): 1}
    assert served == {"MSG_SIZE_TOO_LARGE": 1.0}
    assert status == 200, ready
    assert ready["status"] == "degraded", ready
    assert ready["degraded"] == ["dead_letter_topic"]
    detail = ready["checks"]["dead_letter_topic"]["detail"]
    assert "kingest.dead_letters" in detail
    assert f"{topic}:0:{poison[0]}" in detail
    (listed,) = [row for row in listed_by_cli(database_url) if row["partition"] == 0]
    assert "MSG_SIZE_TOO_LARGE" in listed["publish_error"]


@pytest.fixture
def private_mock_cluster() -> Iterator[MockKafkaCluster]:
    """A mock cluster of the test's own: injected errors must not leak into other tests."""
    with MockKafkaCluster() as cluster:
        yield cluster


@pytest.mark.parametrize(
    ("injected", "times", "reasons", "retried"),
    [
        # Can never succeed: to the table at once, no retry.
        (KafkaError.TOPIC_AUTHORIZATION_FAILED, 1, ("TOPIC_AUTHORIZATION_FAILED",), False),
        # librdkafka retries it until the message times out (the publish budget).
        (KafkaError.NOT_ENOUGH_REPLICAS, 100_000, ("_MSG_TIMED_OUT",), None),
        # No dead-letter topic at all: the first attempt fails within a second
        # (UNKNOWN_TOPIC_OR_PART), the next ones at once in produce() (_UNKNOWN_TOPIC);
        # kingest retries until the publish budget is spent. The last error is the one
        # the budget ends on: either, depending on when the client's metadata says so.
        (None, 0, ("_UNKNOWN_TOPIC", "UNKNOWN_TOPIC_OR_PART"), True),
    ],
    ids=["authorization", "never-clearing", "missing-topic"],
)
def test_delivery_errors_end_in_the_table_and_the_stream_goes_on(
    private_mock_cluster: MockKafkaCluster,
    database_url: str,
    injected: int | None,
    times: int,
    reasons: tuple[str, ...],
    retried: bool | None,
) -> None:
    bootstrap = private_mock_cluster.bootstrap_servers
    topic = "events"
    private_mock_cluster.create_topic(topic, PARTITIONS)
    if injected is not None:
        private_mock_cluster.create_topic(f"{topic}.dlq", 1)
    apply_migrations(database_url)
    poison, records, ends = produce_stream(
        bootstrap, topic, [(0, b"\xff\x00injected")], seed=23, count=400
    )
    # From now on only kingest's dead-letter producer sends Produce requests.
    if injected is not None:
        private_mock_cluster.push_request_errors(PRODUCE_API, *([injected] * times))
    group = f"dlq-injected-{reasons[0].lower()}"
    env = kingest_env(
        bootstrap,
        database_url,
        topic,
        group,
        KINGEST_DEAD_LETTER_STORE="topic",
        KINGEST_DEAD_LETTER_PUBLISH_TIMEOUT_S="3",
        KINGEST_RETRY_INITIAL_S="0.05",
        KINGEST_RETRY_MAX_S="0.2",
        # The mock cluster creates a topic a client asks for unless told not to.
        KINGEST_RDKAFKA_ALLOW_AUTO_CREATE_TOPICS="false",
        KINGEST_RDKAFKA_TOPIC_METADATA_PROPAGATION_MAX_MS="500",
    )

    kingest = drain(env, group, topic, ends)

    assert set(stored_event_ids(database_url)) == {r.event_id for r in records}
    assert_committed_are_durable(database_url, bootstrap, group, topic, set())
    rows = dead_letter_rows(database_url)
    assert set(rows) == {(0, poison[0])}
    [reason] = [r for r in reasons if rows[(0, poison[0])]["publish_error"].startswith(f"{r}:")]
    assert failures_counted(kingest) == {(reason,): 1}
    assert kingest.pipeline.stats.get("dead_letters_published") == 0
    if retried is not None:
        publish_retries = kingest.pipeline.stats.series(catalog.RETRIES)
        assert any(key[0] == "dead_letter_publish" for key in publish_retries) is retried


def test_a_dead_letter_topic_failing_for_a_while_gets_the_dead_letter_in_the_end(
    private_mock_cluster: MockKafkaCluster, database_url: str
) -> None:
    # A few retriable Produce errors, then the topic answers: within the publish budget
    # the dead letter reaches the topic, and nothing is kept in the table.
    bootstrap = private_mock_cluster.bootstrap_servers
    topic = "events"
    private_mock_cluster.create_topic(topic, PARTITIONS)
    private_mock_cluster.create_topic(f"{topic}.dlq", 1)
    apply_migrations(database_url)
    poison, records, ends = produce_stream(
        bootstrap, topic, [(0, b"\xff\x00briefly refused")], seed=24, count=200
    )
    private_mock_cluster.push_request_errors(PRODUCE_API, *([KafkaError.NOT_ENOUGH_REPLICAS] * 3))
    group = "dlq-briefly-refused"
    env = kingest_env(
        bootstrap,
        database_url,
        topic,
        group,
        KINGEST_DEAD_LETTER_STORE="topic",
        KINGEST_DEAD_LETTER_PUBLISH_TIMEOUT_S="20",
        KINGEST_RDKAFKA_ALLOW_AUTO_CREATE_TOPICS="false",
    )

    kingest = drain(env, group, topic, ends)

    [published] = read_dead_letters(bootstrap, f"{topic}.dlq", expected=1)
    assert (published.rejection.partition, published.rejection.offset) == (0, poison[0])
    assert published.rejection.value == b"\xff\x00briefly refused"
    assert dead_letter_rows(database_url) == {}
    assert failures_counted(kingest) == {}
    assert kingest.pipeline.stats.get("dead_letters_published") == 1
    assert set(stored_event_ids(database_url)) == {r.event_id for r in records}
    assert_committed_are_durable(database_url, bootstrap, group, topic, {(0, poison[0])})
