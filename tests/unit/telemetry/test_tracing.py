"""Span structure built by the partition actor, the committer and the commit spans, on
test doubles (the end-to-end structure, with a broker and PostgreSQL, is in
tests/integration/test_tracing.py)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.trace import Link, SpanContext, SpanKind, StatusCode, TraceFlags

from actors import Actor, ActorSystem, Pool, current_correlation_id
from kingest.config import TracingConfig
from kingest.dev.synth import SyntheticStream
from kingest.pipeline.committer import OffsetCommitter
from kingest.pipeline.messages import Assigned, WriteBatch
from kingest.pipeline.partition import PartitionActor
from kingest.schema.codec import decode_event, encode_event
from kingest.store.rows import RowBatch
from kingest.telemetry import tracing
from kingest.telemetry.tracing import (
    CommitSpans,
    TraceCollector,
    end_message_spans,
    parse_traceparent,
)
from kingest.telemetry.tracing import setup as tracing_setup
from kingest.telemetry.tracing import traceparent as traceparent_module
from tests.fakes import FakeRecord
from tests.tracing_support import recording

TOPIC = "events"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    with recording() as exporter:
        yield exporter


def traceparent(trace_id: int, span_id: int, sampled: bool) -> bytes:
    return f"00-{trace_id:032x}-{span_id:016x}-{'01' if sampled else '00'}".encode()


class Collector(Actor[WriteBatch]):
    """Stands in for the writer pool: keeps batches and the correlation id it saw."""

    def __init__(self, index: int, out: list[tuple[WriteBatch, Any, str | None]]) -> None:
        super().__init__(f"collector-{index}")
        self._out = out

    def receive(self, message: WriteBatch) -> Any:
        context = trace.get_current_span().get_span_context()
        self._out.append((message, context, current_correlation_id()))


def run_partition(
    records: list[FakeRecord], *, batch_size: int = 1000
) -> tuple[list[tuple[WriteBatch, Any, str | None]], OffsetCommitter]:
    out: list[tuple[WriteBatch, Any, str | None]] = []
    system = ActorSystem("tracing-test")
    committer = system.spawn(OffsetCommitter())
    committer.tell(Assigned(((TOPIC, 0),), 1))
    writers: Pool[WriteBatch] = system.spawn(
        Pool("writers", lambda i: Collector(i, out), 1, capacity=100)
    )
    actor = PartitionActor(
        (TOPIC, 0),
        1,
        writers=writers,
        committer=committer,
        batch_size=batch_size,
        batch_bytes=1 << 30,
        batch_linger_s=60,
        max_bytes=1 << 30,
        consumer_group="group-a",
    )
    system.spawn(actor)
    for start in range(0, len(records), 7):
        actor.tell(records[start : start + 7])
    actor.stop(drain=True, timeout=10)
    assert actor.join(10)
    writers.stop(drain=True, timeout=10)
    assert committer.sync(10)
    system.stop(timeout=10)
    return out, committer


def make_records(count: int, headers_for: Any) -> list[FakeRecord]:
    stream = SyntheticStream(seed=3, wire_format_share=0.0).take(count)
    return [
        FakeRecord(r.value, offset=i, topic=TOPIC, partition=0, headers=headers_for(i))
        for i, r in enumerate(stream)
    ]


def test_a_batch_span_links_the_producers_and_sampled_messages_continue_their_trace(
    spans: InMemorySpanExporter,
) -> None:
    def headers(i: int) -> list[tuple[str, bytes | None]] | None:
        if i % 3 == 0:
            return [("traceparent", traceparent(1000 + i, 1 + i, sampled=i % 2 == 0))]
        if i == 4:  # the same producer span as message 0 (two messages, one send)
            return [("traceparent", traceparent(1000, 1, sampled=True))]
        if i == 5:
            return [("traceparent", b"not a traceparent")]
        return None

    records = make_records(20, headers)
    out, committer = run_partition(records)
    assert len(out) == 1
    batch, handed_context, _ = out[0]
    assert batch.trace is not None
    # The writer received the batch inside the batch span's context.
    assert handed_context == batch.trace.span_context
    end_message_spans([batch])

    finished = spans.get_finished_spans()
    (batch_span,) = [s for s in finished if "messaging.batch.message_count" in s.attributes]
    assert batch_span.name == f"process {TOPIC}"
    assert batch_span.kind is SpanKind.CONSUMER
    assert batch_span.parent is None
    assert batch_span.context == batch.trace.span_context
    attributes = batch_span.attributes
    assert attributes["messaging.system"] == "kafka"
    assert attributes["messaging.operation.type"] == "process"
    assert attributes["messaging.destination.name"] == TOPIC
    assert attributes["messaging.destination.partition.id"] == "0"
    assert attributes["messaging.consumer.group.name"] == "group-a"
    assert attributes["messaging.batch.message_count"] == 20
    assert (attributes["kingest.batch.first_offset"], attributes["kingest.batch.last_offset"]) == (
        0,
        19,
    )
    # One link per distinct valid producer context, sampled ones first; none for garbage.
    linked = [(link.context.trace_id, link.context.span_id) for link in batch_span.links]
    sampled = [(1000 + i, 1 + i) for i in range(0, 20, 6)]
    unsampled = [(1000 + i, 1 + i) for i in range(3, 20, 6)]
    assert linked == sampled + unsampled
    assert all(link.context.is_remote for link in batch_span.links)

    message_spans = [s for s in finished if "messaging.kafka.offset" in s.attributes]
    by_offset = {s.attributes["messaging.kafka.offset"]: s for s in message_spans}
    # Sampled upstream: offsets 0, 6, 12, 18 and 4 (same producer span as 0); no others.
    assert sorted(by_offset) == [0, 4, 6, 12, 18]
    events = SyntheticStream(seed=3, wire_format_share=0.0).take(20)
    for offset, span in by_offset.items():
        producer = (1000, 1) if offset == 4 else (1000 + offset, 1 + offset)
        assert span.parent is not None
        assert (span.parent.trace_id, span.parent.span_id) == producer
        assert span.context.trace_id == producer[0]  # the producer's trace continues
        assert span.kind is SpanKind.CONSUMER
        assert [link.context for link in span.links] == [batch_span.context]
        assert span.attributes["kingest.event.id"] == events[offset].event_id
        assert span.attributes["messaging.message.conversation_id"]
        assert span.start_time is not None
        assert batch_span.start_time is not None
        assert span.start_time >= batch_span.start_time

    # The committer kept the sampled batch span for the commit that settles it.
    assert committer.commit_links([((TOPIC, 0), 10)]) == []  # 19 is not settled by 10
    assert committer.commit_links([((TOPIC, 0), 20)]) == [batch_span.context]
    assert committer.commit_links([((TOPIC, 0), 20)]) == []  # given once


def test_a_batch_sharing_one_correlation_id_carries_it_to_the_writer(
    spans: InMemorySpanExporter,
) -> None:
    values = []
    for record in SyntheticStream(seed=4, wire_format_share=0.0).take(5):
        event = decode_event(record.value)
        event.correlation_id = "flow-42"
        values.append(encode_event(event))
    records = [FakeRecord(v, offset=i, topic=TOPIC, partition=0) for i, v in enumerate(values)]
    out, _ = run_partition(records)
    (_, _, correlation_id) = out[0]
    assert correlation_id == "flow-42"
    (batch_span,) = spans.get_finished_spans()
    assert batch_span.attributes["messaging.message.conversation_id"] == "flow-42"
    assert batch_span.links == ()  # no traceparent header at all


def test_a_poison_message_s_span_is_marked_dead_lettered(spans: InMemorySpanExporter) -> None:
    good = make_records(3, lambda i: None)
    poison = FakeRecord(
        b"\xff\x00garbage",
        offset=3,
        topic=TOPIC,
        partition=0,
        headers=[
            ("correlation-id", b"flow-poison"),
            ("traceparent", traceparent(77, 78, sampled=True)),
        ],
    )
    out, _ = run_partition([*good, poison])
    batch = out[0][0]
    end_message_spans([batch], batch.rows.rejections)
    (span,) = [s for s in spans.get_finished_spans() if "messaging.kafka.offset" in s.attributes]
    assert span.attributes["messaging.kafka.offset"] == 3
    assert span.attributes["messaging.message.conversation_id"] == "flow-poison"
    assert span.attributes["kingest.dead_letter.stage"] == "decode"
    assert span.attributes["error.type"] == batch.rows.rejections[0].error_class
    assert span.status.status_code is StatusCode.ERROR


def test_without_a_tracer_provider_nothing_is_collected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(traceparent_module, "tracing_active", lambda: False)
    records = make_records(4, lambda i: [("traceparent", traceparent(5, 6, sampled=True))])
    out, committer = run_partition(records)
    assert out[0][0].trace is None
    assert committer.commit_links([((TOPIC, 0), 100)]) == []


def test_links_beyond_the_limit_keep_the_sampled_ones_and_count_the_rest() -> None:
    collector = TraceCollector()
    records = [
        FakeRecord(b"", offset=i, headers=[("traceparent", traceparent(i + 1, 1, i % 10 == 0))])
        for i in range(300)
    ]
    collector.scan(records)
    links, dropped = collector.links(128)
    assert len(links) == 128
    assert dropped == 300 - 128
    sampled = [link for link in links if link.context.trace_flags.sampled]
    assert len(sampled) == 30  # every sampled context survives the cap
    assert links[:30] == sampled
    assert len(collector.sampled) == 30


def test_a_root_span_linked_to_a_sampled_context_is_sampled() -> None:
    sampler = tracing_setup._make_sampler(
        TracingConfig(exporters=("otlp",), exporters_reason="", sampler="parentbased_always_off")
    )
    sampled = parse_traceparent(traceparent(9, 9, sampled=True))
    unsampled = parse_traceparent(traceparent(8, 8, sampled=False))
    assert sampled is not None
    assert unsampled is not None
    decide = sampler.should_sample
    assert decide(None, 123, "process", links=[Link(sampled)]).decision is (
        Decision.RECORD_AND_SAMPLE
    )
    assert decide(None, 123, "process", links=[Link(unsampled)]).decision is Decision.DROP
    assert decide(None, 123, "process").decision is Decision.DROP
    # A span with a parent follows its parent, whatever it links to.
    parent = trace.set_span_in_context(trace.NonRecordingSpan(unsampled))
    assert decide(parent, 123, "process", links=[Link(sampled)]).decision is Decision.DROP
    ratio = tracing_setup._make_sampler(
        TracingConfig(
            exporters=("otlp",), exporters_reason="", sampler="traceidratio", sampler_ratio=0.0
        )
    )
    # Not parent-based: links do not matter.
    assert ratio.should_sample(None, 123, "x", links=[Link(sampled)]).decision is Decision.DROP


class FakeOffsets:
    def __init__(self, contexts: list[SpanContext]) -> None:
        self.contexts = contexts
        self.asked: list[Any] = []

    def commit_links(self, offsets: Any) -> list[SpanContext]:
        self.asked.append(list(offsets))
        return self.contexts


def test_commit_spans_end_with_their_asynchronous_result(spans: InMemorySpanExporter) -> None:
    batch = SpanContext(5, 6, is_remote=False, trace_flags=TraceFlags(1))
    commits = CommitSpans("group-a")
    offsets = [SimpleNamespace(topic=TOPIC, partition=1, offset=40, error=None)]
    source = FakeOffsets([batch])
    commits.started(offsets, source)
    assert source.asked == [[((TOPIC, 1), 40)]]
    assert spans.get_finished_spans() == ()  # waits for the broker's answer
    commits.finished(None, offsets)
    (span,) = spans.get_finished_spans()
    assert span.name == f"commit {TOPIC}"
    assert span.kind is SpanKind.CLIENT
    assert span.attributes["messaging.operation.type"] == "settle"
    assert span.attributes["messaging.operation.name"] == "commit"
    assert span.attributes["messaging.consumer.group.name"] == "group-a"
    assert span.attributes["kingest.commit.offsets"] == (f"{TOPIC}/1:40",)
    assert span.attributes["kingest.commit.result"] == "ok"
    assert [link.context for link in span.links] == [batch]

    failed = [SimpleNamespace(topic=TOPIC, partition=1, offset=41, error=None)]
    commits.started(failed, source)
    error = SimpleNamespace(name=lambda: "REBALANCE_IN_PROGRESS")
    commits.finished(error, failed)
    last = spans.get_finished_spans()[-1]
    assert last.status.status_code is StatusCode.ERROR
    assert last.attributes["error.type"] == "REBALANCE_IN_PROGRESS"

    commits.started([SimpleNamespace(topic=TOPIC, partition=2, offset=9, error=None)], None)
    commits.close()
    assert spans.get_finished_spans()[-1].attributes["kingest.commit.result"] == "unknown"

    with commits.sync([SimpleNamespace(topic=TOPIC, partition=3, offset=1)], None):
        pass
    sync = spans.get_finished_spans()[-1]
    assert sync.attributes["kingest.commit.asynchronous"] is False
    assert sync.attributes["kingest.commit.result"] == "ok"


def test_collector_reads_string_and_mapping_headers() -> None:
    collector = TraceCollector()

    class MappingRecord(FakeRecord):
        def headers(self) -> Any:
            return {"traceparent": traceparent(3, 4, sampled=True).decode()}

    collector.scan([MappingRecord(b"", offset=7)])
    assert collector.sampled[0][:2] == (7, traceparent(3, 4, sampled=True))
    assert list(collector.traceparents) == [traceparent(3, 4, sampled=True)]


def test_writer_threads_see_the_batch_context_only_inside_receive() -> None:
    # The actor runtime attaches the sender's context around receive only.
    seen: list[Any] = []
    done = threading.Event()

    class Probe(Actor[int]):
        def receive(self, message: int) -> Any:
            seen.append(trace.get_current_span().get_span_context())
            done.set()

        def on_stop(self) -> None:
            seen.append(trace.get_current_span().get_span_context())

    context = SpanContext(11, 12, is_remote=False, trace_flags=TraceFlags(1))
    with ActorSystem("probe") as system:
        probe = system.spawn(Probe("probe"))
        with trace.use_span(trace.NonRecordingSpan(context)):
            probe.tell(1)
        assert done.wait(5)
        probe.stop(timeout=5)
    assert seen[0] == context
    assert not seen[1].is_valid


def test_message_spans_per_batch_are_capped_and_spread_over_the_batch(
    spans: InMemorySpanExporter,
) -> None:
    records = make_records(40, lambda i: [("traceparent", traceparent(500 + i, 1, sampled=True))])
    rows = RowBatch()
    rows.add_records(records)
    collector = TraceCollector()
    collector.scan(records)
    with tracing.batch_span(
        (TOPIC, 0),
        group=None,
        first_offset=0,
        last_offset=39,
        message_count=40,
        rows=rows,
        collector=collector,
        max_message_spans=4,
    ) as batch_trace:
        pass
    assert sorted(batch_trace.message_spans) == [0, 10, 20, 30]
    end_message_spans([SimpleNamespace(tp=(TOPIC, 0), trace=batch_trace)])
    (batch_span,) = [
        s for s in spans.get_finished_spans() if "kingest.message_spans" in s.attributes
    ]
    assert batch_span.attributes["kingest.message_spans"] == 4
    assert batch_span.attributes["kingest.message_spans.skipped"] == 36
    assert len(batch_span.links) == 40  # every producer context is still linked
