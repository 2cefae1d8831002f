"""Trace structure end to end, in-process, on the real broker and PostgreSQL: producers'
contexts linked by batch spans, sampled messages continuing their producer's trace,
database writes as children of their batch, commits and dead letters in the trace."""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import psycopg
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from psycopg.conninfo import conninfo_to_dict

from kingest.dev import SyntheticStream, create_topic
from kingest.pipeline.consumer import RunOutcome
from kingest.schema.codec import encode_event
from kingest.schema.v1.events_pb2 import Event, InferenceCompleted, InferenceStatus
from kingest.schema.validate import EventValidator, payload_of
from kingest.store.migrate import apply_migrations
from kingest.telemetry.tracing import parse_traceparent
from tests.integration.support import InProcessKingest, all_committed, kingest_env, wait_for
from tests.tracing_support import recording

pytestmark = [pytest.mark.integration]

PARTITIONS = 2
GROUP = "traced"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    with recording() as exporter:
        yield exporter


@dataclass
class Sent:
    partition: int
    offset: int
    correlation_id: str
    context: tuple[int, int] | None  # the producer's (trace id, span id)
    sampled: bool
    kind: str  # "event", "poison" or "nul"


def _ids(span: ReadableSpan) -> tuple[int, int]:
    return (span.context.trace_id, span.context.span_id)


def produce_traced(bootstrap: str, topic: str) -> list[Sent]:
    """40 events (a quarter each: sampled producer span, unsampled traceparent, no header,
    sampled again), one undecodable message and one event PostgreSQL rejects (NUL), both
    sent from sampled producer spans."""
    tracer = trace.get_tracer("test-producer")
    rng = random.Random(7)
    producer = Producer({"bootstrap.servers": bootstrap})
    sent: list[Sent] = []
    next_offset = dict.fromkeys(range(PARTITIONS), 0)

    def send(
        value: bytes, correlation_id: str, mode: str, kind: str, extra: list[tuple[str, bytes]]
    ) -> None:
        partition = len(sent) % PARTITIONS
        headers = list(extra)
        context: tuple[int, int] | None = None
        if mode == "sampled":
            with tracer.start_as_current_span(f"send {topic}", kind=SpanKind.PRODUCER) as span:
                carrier: dict[str, str] = {}
                propagate.inject(carrier)
                headers.append(("traceparent", carrier["traceparent"].encode()))
                context = (span.get_span_context().trace_id, span.get_span_context().span_id)
        elif mode == "unsampled":
            context = (rng.getrandbits(128) | 1, rng.getrandbits(64) | 1)
            headers.append(("traceparent", f"00-{context[0]:032x}-{context[1]:016x}-00".encode()))
        producer.produce(topic, value=value, key=b"k", partition=partition, headers=headers)
        sent.append(
            Sent(
                partition,
                next_offset[partition],
                correlation_id,
                context,
                mode == "sampled",
                kind,
            )
        )
        next_offset[partition] += 1

    modes = ["sampled", "unsampled", "none", "sampled"]
    for index, record in enumerate(SyntheticStream(seed=11, wire_format_share=0.0).take(40)):
        event = Event.FromString(record.value)
        send(record.value, event.correlation_id, modes[index % 4], "event", [])
    send(
        b"\xff\x00garbage", "flow-poison", "sampled", "poison", [("correlation-id", b"flow-poison")]
    )
    nul = Event(
        event_id=str(uuid.uuid4()),
        correlation_id="flow-nul",
        source="serving/gateway",
        inference_completed=InferenceCompleted(
            model_name="bad\x00model", status=InferenceStatus.INFERENCE_STATUS_OK
        ),
    )
    nul.occurred_at.GetCurrentTime()
    send(encode_event(nul), "flow-nul", "sampled", "nul", [])
    assert producer.flush(30) == 0
    return sent


def read_raw(bootstrap: str, topic: str, expected: int) -> list[list[tuple[str, bytes | None]]]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "reader"})
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])  # no group join
    found: list[list[tuple[str, bytes | None]]] = []
    try:

        def read_some() -> bool:
            for message in consumer.consume(100, 0.5):
                if message.error() is None:
                    found.append(list(message.headers() or []))
            return len(found) >= expected

        wait_for(read_some, timeout=60, interval=0, what=f"{expected} messages on {topic}")
    finally:
        consumer.close()
    return found


def test_a_traced_stream_end_to_end(
    kafka_bootstrap: str,
    database_url: str,
    topic_factory: Callable[[int], str],
    spans: InMemorySpanExporter,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The validator refuses a NUL character itself; blinded, the event reaches PostgreSQL,
    # which rejects it: the writer bisects and dead-letters it (write stage).
    monkeypatch.setattr(EventValidator, "validate", lambda _s, event, *_, **__: payload_of(event))
    topic = topic_factory(PARTITIONS)
    dlq = f"{topic}.dlq"
    create_topic(kafka_bootstrap, dlq, 1)
    apply_migrations(database_url)
    sent = produce_traced(kafka_bootstrap, topic)
    end_offsets = {p: sum(1 for s in sent if s.partition == p) for p in range(PARTITIONS)}
    env = kingest_env(
        kafka_bootstrap,
        database_url,
        topic,
        GROUP,
        KINGEST_DEAD_LETTER_STORE="both",
        KINGEST_DATABASE_STATEMENT_TIMEOUT_MS="300",
        KINGEST_RETRY_INITIAL_S="0.05",
    )
    # A table locked by another session: the first writes time out (a transient error,
    # SQLSTATE 57014) and are retried until the lock is gone.
    with psycopg.connect(database_url) as blocker:
        blocker.execute("LOCK TABLE kingest.inferences IN ACCESS EXCLUSIVE MODE")
        with InProcessKingest(env) as kingest:
            wait_for(
                lambda: kingest.pipeline.stats.get("retries") >= 2,
                timeout=60,
                what="retried writes",
            )
            blocker.rollback()
            wait_for(
                lambda: all_committed(kafka_bootstrap, GROUP, topic, end_offsets, PARTITIONS),
                timeout=60,
                what="every offset committed",
            )
            assert kingest.stop() is RunOutcome.DRAINED
    dead_letter_headers = read_raw(kafka_bootstrap, dlq, 2)

    finished = spans.get_finished_spans()
    by_span_id = {s.context.span_id: s for s in finished}
    batches = [
        s
        for s in finished
        if s.name == f"process {topic}" and "messaging.batch.message_count" in s.attributes
    ]
    messages = [s for s in finished if "messaging.kafka.offset" in s.attributes]
    writes = [s for s in finished if s.attributes.get("db.system.name") == "postgresql"]
    bisects = [s for s in finished if s.name == "kingest.bisect"]
    commits = [s for s in finished if s.name == f"commit {topic}"]
    dead_letter_sends = [s for s in finished if s.name == f"send {dlq}"]
    batch_ids = {s.context.span_id for s in batches}

    def batch_of(span: ReadableSpan) -> int:
        """The batch span a write (or bisection) descends from."""
        while span.context.span_id not in batch_ids:
            assert span.parent is not None
            span = by_span_id[span.parent.span_id]
        return span.context.span_id

    # A writer writes batches already queued together in one transaction: its spans
    # descend from the first batch and link to the others.
    writes_of: dict[int, list[ReadableSpan]] = {batch_id: [] for batch_id in batch_ids}
    for write in writes:
        writes_of[batch_of(write)].append(write)
        for link in write.links:
            writes_of[link.context.span_id].append(write)
    assert all(writes_of.values())

    # --- batch spans: one per partition batch, linked to every producer context
    assert batches
    assert sum(s.attributes["messaging.batch.message_count"] for s in batches) == len(sent)
    for span in batches:
        assert span.name == f"process {topic}"
        assert span.kind is SpanKind.CONSUMER
        assert span.parent is None
        assert span.attributes["messaging.system"] == "kafka"
        assert span.attributes["messaging.operation.type"] == "process"
        assert span.attributes["messaging.destination.name"] == topic
        assert span.attributes["messaging.destination.partition.id"] in {"0", "1"}
        assert span.attributes["messaging.consumer.group.name"] == GROUP
    linked = {(link.context.trace_id, link.context.span_id) for s in batches for link in s.links}
    assert linked == {s.context for s in sent if s.context is not None}

    # --- per-message spans: exactly the sampled messages, each continuing its producer's
    # trace (parent = the producer's span) and linked to a batch span that links back.
    sampled = {(s.partition, s.offset): s for s in sent if s.sampled}
    by_coordinates = {
        (
            int(s.attributes["messaging.destination.partition.id"]),
            s.attributes["messaging.kafka.offset"],
        ): s
        for s in messages
    }
    assert set(by_coordinates) == set(sampled)
    assert len(messages) == len(sampled)
    for coordinates, span in by_coordinates.items():
        source = sampled[coordinates]
        assert span.parent is not None
        assert (span.parent.trace_id, span.parent.span_id) == source.context
        assert by_span_id[span.parent.span_id].name == f"send {topic}"  # the producer span
        assert span.context.trace_id == source.context[0]
        assert span.kind is SpanKind.CONSUMER
        assert span.attributes["messaging.message.conversation_id"] == source.correlation_id
        (link,) = span.links
        batch = by_span_id[link.context.span_id]
        assert batch.context.span_id in batch_ids
        assert source.context in {(lk.context.trace_id, lk.context.span_id) for lk in batch.links}
        # It ends once its transaction committed: after a write of its batch.
        assert span.end_time >= min(w.end_time for w in writes_of[batch.context.span_id])

    # --- database writes: CLIENT children of their batch (or of a bisection inside it)
    database = conninfo_to_dict(database_url)["dbname"]
    bisect_ids = {s.context.span_id for s in bisects}
    for span in writes:
        assert span.kind is SpanKind.CLIENT
        assert span.parent is not None
        assert span.parent.span_id in batch_ids | bisect_ids
        assert span.attributes["db.namespace"] == database
        assert span.attributes["db.operation.name"] in {"INSERT", "BATCH INSERT"}
        assert span.name == f"{span.attributes['db.operation.name']} {database}"
        assert span.context.trace_id == by_span_id[span.parent.span_id].context.trace_id
    for span in bisects:
        assert span.parent is not None
        assert span.parent.span_id in batch_ids | bisect_ids
    failed = [s for s in writes if s.status.status_code is StatusCode.ERROR]
    assert failed
    # Retried transactions are one span each: none ended on the transient error.
    assert all(s.attributes["db.response.status_code"] == "22021" for s in failed)
    assert bisects
    ok = [s for s in writes if s.status.status_code is not StatusCode.ERROR]
    retries = [e for s in writes for e in s.events if e.name == "retry"]
    assert len(retries) >= 2
    for event in retries:
        assert event.attributes["error.type"] == "57014"
        assert event.attributes["db.response.status_code"] == "57014"
        assert event.attributes["kingest.retry.attempt"] >= 1
    events = sum(1 for s in sent if s.kind == "event")
    assert sum(s.attributes["kingest.write.rows_inserted"] for s in ok) == events
    assert sum(s.attributes["kingest.write.dead_lettered"] for s in ok) == 2
    assert sum(s.attributes["kingest.write.duplicates"] for s in ok) == 0

    # --- commits: settle spans linking every batch exactly once, ending at the end offsets
    assert commits
    for span in commits:
        assert span.kind is SpanKind.CLIENT
        assert span.attributes["messaging.operation.type"] == "settle"
        assert span.attributes["messaging.operation.name"] == "commit"
        assert span.attributes["messaging.consumer.group.name"] == GROUP
        assert span.attributes["kingest.commit.result"] == "ok"
    committed = {o for s in commits for o in s.attributes["kingest.commit.offsets"]}
    assert {f"{topic}/{p}:{end}" for p, end in end_offsets.items()} <= committed
    commit_links = sorted(link.context.span_id for s in commits for link in s.links)
    assert commit_links == sorted(batch_ids)

    # --- dead letters: the topic's traceparent header is the publishing span's context
    assert dead_letter_sends
    for span in dead_letter_sends:
        assert span.kind is SpanKind.PRODUCER
        assert span.parent is not None
        assert span.parent.span_id in batch_ids
        assert span.attributes["messaging.operation.type"] == "send"
    send_contexts = {_ids(s) for s in dead_letter_sends}
    for headers in dead_letter_headers:
        ours = [value for key, value in headers if key == "traceparent"][-1]
        assert ours is not None
        context = parse_traceparent(ours)
        assert context is not None
        assert (context.trace_id, context.span_id) in send_contexts

    # --- the poison and the rejected event: their message spans say how they ended, and
    # the dead-letter row keeps the producer's traceparent, the parent of that span.
    poison = next(s for s in sent if s.kind == "poison")
    nul = next(s for s in sent if s.kind == "nul")
    poison_span = by_coordinates[(poison.partition, poison.offset)]
    assert poison_span.status.status_code is StatusCode.ERROR
    assert poison_span.attributes["kingest.dead_letter.stage"] == "decode"
    assert poison_span.attributes["messaging.message.conversation_id"] == "flow-poison"
    nul_span = by_coordinates[(nul.partition, nul.offset)]
    assert nul_span.status.status_code is StatusCode.ERROR
    assert nul_span.attributes["kingest.dead_letter.stage"] == "write"
    assert nul_span.attributes["db.response.status_code"] == "22021"
    for source, span in ((poison, poison_span), (nul, nul_span)):
        with psycopg.connect(database_url) as conn:
            row = conn.execute(
                "SELECT header_keys, header_values, correlation_id FROM kingest.dead_letters "
                "WHERE kafka_partition = %s AND kafka_offset = %s",
                (source.partition, source.offset),
            ).fetchone()
        assert row is not None
        keys, values, correlation_id = row
        stored = parse_traceparent(values[keys.index("traceparent")])
        assert stored is not None
        assert span.parent is not None
        assert (stored.trace_id, stored.span_id) == (span.parent.trace_id, span.parent.span_id)
        assert correlation_id == source.correlation_id
