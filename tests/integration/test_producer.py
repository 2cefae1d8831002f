"""produce_records against a real broker: its report matches what a consumer reads back;
`kingest produce --catalog` puts messages of the catalog's type on the topic."""

from __future__ import annotations

import socket
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from google.protobuf import message_factory
from typer.testing import CliRunner

from kingest.cli.commands import app
from kingest.dev.catalog_synth import load_descriptor_set_pool
from kingest.dev.producer import produce_records
from kingest.dev.synth import SyntheticStream
from kingest.schema.codec import MessageDecoder, decode_event, split_wire_format
from tests.catalog_support import compile_example_catalog

pytestmark = pytest.mark.integration

PARTITIONS = 4


@pytest.fixture
def fresh_topic(request: pytest.FixtureRequest, kafka_bootstrap: str) -> str:
    """A new topic with PARTITIONS partitions (via the shared ``topic_factory`` if any)."""
    try:
        topic_factory: Callable[[int], str] = request.getfixturevalue("topic_factory")
    except pytest.FixtureLookupError:
        topic = f"producer-test-{uuid.uuid4().hex[:10]}"
        admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
        admin.create_topics([NewTopic(topic, PARTITIONS, 1)])[topic].result(timeout=30)
        return topic
    return topic_factory(PARTITIONS)


def consume_all(
    bootstrap: str, topic: str, expected: int, timeout: float = 60.0
) -> dict[int, list[tuple[int, bytes, bytes | None]]]:
    """Read every partition from offset 0 until ``expected`` messages arrived.

    Returns ``partition -> [(offset, key, value)]`` in the order consumed.
    """
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"producer-test-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
        }
    )
    consumed: dict[int, list[tuple[int, bytes, bytes | None]]] = defaultdict(list)
    total = 0
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
        deadline = time.monotonic() + timeout
        while total < expected and time.monotonic() < deadline:
            for message in consumer.consume(num_messages=5000, timeout=0.5):
                assert message.error() is None, message.error()
                partition, offset, key = message.partition(), message.offset(), message.key()
                assert partition is not None
                assert offset is not None
                assert key is not None
                consumed[partition].append((offset, key, message.value()))
                total += 1
    finally:
        consumer.close()
    return consumed


def test_report_matches_what_is_consumed(kafka_bootstrap: str, fresh_topic: str) -> None:
    records = SyntheticStream(seed=21).take(20_000)
    progress: list[int] = []
    report = produce_records(
        kafka_bootstrap,
        fresh_topic,
        records,
        count=len(records),
        collect_ids=True,
        progress=progress.append,
    )
    assert (report.requested, report.delivered, report.failed) == (20_000, 20_000, 0)
    assert report.errors == []
    assert report.event_ids == {r.event_id for r in records}
    assert sum(progress) == report.delivered

    consumed = consume_all(kafka_bootstrap, fresh_topic, expected=len(records))
    consumed_ids = [
        decode_event(value).event_id for messages in consumed.values() for _, _, value in messages
    ]
    assert len(consumed_ids) == len(set(consumed_ids)), "a record was written twice"
    assert set(consumed_ids) == report.event_ids

    # The report's end offsets are exactly what each partition holds: offsets 0..end-1.
    assert set(report.end_offsets) == set(range(PARTITIONS))
    for partition, messages in consumed.items():
        offsets = [offset for offset, _, _ in messages]
        assert offsets == list(range(report.end_offsets[partition]))

    # One key, one partition: an entity's events keep their order.
    partitions_of_key: dict[bytes, set[int]] = defaultdict(set)
    for partition, messages in consumed.items():
        for _, key, _ in messages:
            partitions_of_key[key].add(partition)
    assert all(len(partitions) == 1 for partitions in partitions_of_key.values())


def test_rate_limited_produce_keeps_the_schedule_and_reports_progress(
    kafka_bootstrap: str, fresh_topic: str
) -> None:
    count, rate = 400, 400.0
    progress_calls: list[tuple[float, int]] = []
    records = SyntheticStream(seed=22).take(count)
    report = produce_records(
        kafka_bootstrap,
        fresh_topic,
        iter(records),
        count=count,
        rate=rate,
        progress=lambda delta: progress_calls.append((time.monotonic(), delta)),
    )
    assert report.delivered == count, report.errors
    assert report.elapsed_s >= (count - 1) / rate
    assert sum(delta for _, delta in progress_calls) == count, progress_calls
    assert all(delta > 0 for _, delta in progress_calls), progress_calls
    # At most about ten calls per second. The reporter spaces calls 0.1 s apart by its
    # own clock readings; the times recorded here are taken a little later, and the
    # process may be descheduled in between, hence the loose bound. The last call
    # reports the remainder when the flush completes and may come sooner.
    gaps = [b - a for (a, _), (b, _) in pairwise(progress_calls[:-1])]
    assert all(gap >= 0.05 for gap in gaps), gaps
    assert len(progress_calls) <= report.elapsed_s / 0.1 + 2
    assert len(progress_calls) >= 2, progress_calls


def test_count_limits_what_is_taken_from_an_infinite_stream(
    kafka_bootstrap: str, fresh_topic: str
) -> None:
    stream = iter(SyntheticStream(seed=23))
    report = produce_records(kafka_bootstrap, fresh_topic, stream, count=50, collect_ids=True)
    assert (report.requested, report.delivered) == (50, 50)
    assert sum(report.end_offsets.values()) == 50
    # The 51st record was not consumed from the iterator.
    assert next(stream).event_id == SyntheticStream(seed=23).take(51)[50].event_id


def test_undeliverable_records_are_counted_as_failed() -> None:
    with socket.socket() as placeholder:  # a port nobody listens on
        placeholder.bind(("127.0.0.1", 0))
        dead_address = f"127.0.0.1:{placeholder.getsockname()[1]}"
    records = SyntheticStream(seed=24).take(20)
    started = time.monotonic()
    report = produce_records(
        dead_address, "nowhere", records, count=len(records), flush_timeout=1.0
    )
    assert (report.requested, report.delivered, report.failed) == (20, 0, 20)
    assert report.errors
    assert report.end_offsets == {}
    assert time.monotonic() - started < 10


@pytest.fixture(scope="module")
def example_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_example_catalog(tmp_path_factory.mktemp("example"))


@pytest.mark.parametrize("schema_id", [None, 17], ids=["plain", "framed"])
def test_produce_catalog_puts_messages_of_the_type_on_the_topic(
    kafka_bootstrap: str, fresh_topic: str, example_catalog: Path, schema_id: int | None
) -> None:
    framing = [] if schema_id is None else ["--schema-id", str(schema_id)]
    result = CliRunner().invoke(
        app,
        [
            "produce",
            *("--catalog", str(example_catalog), "--message", "llmserving.v1.LlmEvent"),
            *("--topic", fresh_topic, "--count", "200", "--seed", "4"),
            *("--bootstrap-servers", kafka_bootstrap, *framing),
        ],
    )
    assert result.exit_code == 0, result.output
    assert f"delivered 200 of 200 llmserving.v1.LlmEvent messages to {fresh_topic}" in (
        result.output
    )

    pool = load_descriptor_set_pool(example_catalog)
    llm_event = message_factory.GetMessageClass(pool.message_type("llmserving.v1.LlmEvent"))
    decoder = MessageDecoder(llm_event, {(0,): llm_event})
    consumed = consume_all(kafka_bootstrap, fresh_topic, expected=200)
    values = [value for messages in consumed.values() for _, _, value in messages]
    assert len(values) == 200
    members = set()
    for value in values:
        assert value is not None
        assert split_wire_format(value)[:2] == ((None, ()) if schema_id is None else (17, (0,)))
        event = decoder.decode(value)
        assert event.event_id
        members.add(event.WhichOneof("event"))
    assert len(members) >= 3  # every kind of the envelope's events, in turn
