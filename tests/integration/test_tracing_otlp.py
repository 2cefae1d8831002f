"""`kingest start` exports its trace over OTLP (HTTP/protobuf and gRPC) to a receiver
in the test, and flushes it when it stops on SIGTERM.

Run with ``pytest -s`` to see the received trace printed as a tree.
"""

from __future__ import annotations

import gzip
import random
import threading
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
from confluent_kafka import Producer
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from kingest import __version__
from kingest.dev.synth import SyntheticStream
from kingest.store.migrate import apply_migrations
from tests.integration.support import KingestProcess, all_committed, kingest_env, wait_for

pytestmark = [pytest.mark.integration]

PARTITIONS = 2
KIND = {
    Span.SPAN_KIND_INTERNAL: "INTERNAL",
    Span.SPAN_KIND_SERVER: "SERVER",
    Span.SPAN_KIND_CLIENT: "CLIENT",
    Span.SPAN_KIND_PRODUCER: "PRODUCER",
    Span.SPAN_KIND_CONSUMER: "CONSUMER",
}


def _value(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which == "array_value":
        return tuple(_value(v) for v in value.array_value.values)
    return getattr(value, which) if which else None


def attributes_of(pairs: Any) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs if isinstance(pair, KeyValue)}


@dataclass
class Received:
    span: Span
    resource: dict[str, Any]
    scope: str

    @property
    def attributes(self) -> dict[str, Any]:
        return attributes_of(self.span.attributes)


class Receiver:
    """Collects the spans of every ExportTraceServiceRequest it is sent."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests = 0
        self.spans: list[Received] = []

    def accept(self, request: trace_service_pb2.ExportTraceServiceRequest) -> None:
        with self._lock:
            self.requests += 1
            for resource_spans in request.resource_spans:
                resource = attributes_of(resource_spans.resource.attributes)
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.spans.append(Received(span, resource, scope_spans.scope.name))


@pytest.fixture
def http_receiver() -> Iterator[tuple[Receiver, str]]:
    receiver = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            encoding = self.headers.get("Content-Encoding", "")
            if encoding == "gzip":
                body = gzip.decompress(body)
            elif encoding == "deflate":
                body = zlib.decompress(body)
            if self.path != "/v1/traces":
                self.send_error(404)
                return
            receiver.accept(trace_service_pb2.ExportTraceServiceRequest.FromString(body))
            reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def grpc_receiver() -> Iterator[tuple[Receiver, str]]:
    receiver = Receiver()

    class Service(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(
            self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
        ) -> trace_service_pb2.ExportTraceServiceResponse:
            receiver.accept(request)
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield receiver, f"http://127.0.0.1:{port}"
    finally:
        server.stop(grace=None)


def produce_with_traceparents(bootstrap: str, topic: str, count: int) -> dict[bytes, int]:
    """``count`` events from sampled producer spans, then one undecodable message; returns
    each message's (trace id, span id) as hex bytes -> partition."""
    rng = random.Random(3)
    producer = Producer({"bootstrap.servers": bootstrap})
    contexts: dict[bytes, int] = {}
    records = SyntheticStream(seed=21, wire_format_share=0.0).take(count)
    values = [r.value for r in records] + [b"\xff\x00not an event"]
    for index, value in enumerate(values):
        trace_id, span_id = rng.getrandbits(128) | 1, rng.getrandbits(64) | 1
        traceparent = f"00-{trace_id:032x}-{span_id:016x}-01"
        partition = index % PARTITIONS
        producer.produce(
            topic, value=value, partition=partition, headers=[("traceparent", traceparent)]
        )
        contexts[f"{trace_id:032x}{span_id:016x}".encode()] = partition
    assert producer.flush(30) == 0
    return contexts


_LABELS = {
    "messaging.destination.partition.id": "partition",
    "messaging.batch.message_count": "messages",
    "messaging.kafka.offset": "offset",
    "messaging.message.conversation_id": "correlation",
    "db.operation.batch.size": "statements",
    "kingest.write.rows_inserted": "inserted",
    "kingest.write.dead_lettered": "dead_lettered",
    "kingest.bisect.depth": "depth",
    "kingest.commit.offsets": "offsets",
    "error.type": "error",
}


def render_tree(spans: list[Received], topic: str = "") -> str:
    """The spans as one tree per trace: name, kind, main attributes, links by name.
    ``topic`` is shortened to ``<topic>``."""
    by_id = {s.span.span_id: s for s in spans}
    children: dict[bytes, list[Received]] = defaultdict(list)
    roots: list[Received] = []
    for received in sorted(spans, key=lambda r: r.span.start_time_unix_nano):
        parent = received.span.parent_span_id
        if parent and parent in by_id:
            children[parent].append(received)
        else:
            roots.append(received)

    def short(text: str) -> str:
        return text.replace(topic, "<topic>") if topic else text

    def label(received: Received) -> list[str]:
        span, values = received.span, received.attributes
        shown = " ".join(
            f"{name}={short(str(values[key]))}" for key, name in _LABELS.items() if key in values
        )
        head = f"{short(span.name)} [{KIND.get(span.kind, span.kind)}] {shown}".rstrip()
        if span.parent_span_id and span.parent_span_id not in by_id:
            head += f" (child of the producer's span {span.parent_span_id.hex()[:8]})"
        lines = [head]
        for link in span.links:
            target = by_id.get(link.span_id)
            name = short(target.span.name) if target else "a producer's span"
            lines.append(
                f"~ link: {name} {link.span_id.hex()[:8]} (trace {link.trace_id.hex()[:8]})"
            )
        return lines

    out: list[str] = []

    def walk(received: Received, depth: int) -> None:
        head, *links = label(received)
        out.append(f"{'  ' * depth}- {head}")
        out.extend(f"{'  ' * depth}    {line}" for line in links)
        for child in children[received.span.span_id]:
            walk(child, depth + 1)

    for root in roots:
        out.append(f"trace {root.span.trace_id.hex()[:8]}")
        walk(root, 1)
    return "\n".join(out)


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_kingest_start_exports_its_trace_over_otlp_and_flushes_it_on_sigterm(
    protocol: str,
    request: pytest.FixtureRequest,
    kafka_bootstrap: str,
    database_url: str,
    topic_factory: Callable[[int], str],
    tmp_path: Path,
) -> None:
    fixture = "http_receiver" if protocol == "http/protobuf" else "grpc_receiver"
    receiver, endpoint = request.getfixturevalue(fixture)
    topic = topic_factory(PARTITIONS)
    apply_migrations(database_url)
    contexts = produce_with_traceparents(kafka_bootstrap, topic, 12)
    end_offsets = {p: list(contexts.values()).count(p) for p in range(PARTITIONS)}
    group = f"otlp-{protocol.replace('/', '-')}"
    env = kingest_env(kafka_bootstrap, database_url, topic, group)
    env.update(
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_PROTOCOL=protocol,
        OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
        OTEL_SERVICE_NAME="kingest-under-test",
        OTEL_RESOURCE_ATTRIBUTES="deployment.environment.name=test",
        # Nothing is exported on the way (the queue holds far fewer than a batch): all
        # of it arrives through the flush at exit.
        OTEL_BSP_SCHEDULE_DELAY="600000",
    )
    with KingestProcess(env, tmp_path / "kingest.log") as kingest:
        wait_for(
            lambda: all_committed(kafka_bootstrap, group, topic, end_offsets, PARTITIONS),
            timeout=60,
            what="every offset committed",
        )
        assert receiver.requests == 0
        assert kingest.terminate_and_wait(60) == 0, kingest.log
    assert "tracing on: otlp" in kingest.log

    spans = receiver.spans
    assert spans, kingest.log
    print(f"\n--- received over OTLP ({protocol}) ---\n{render_tree(spans, topic)}")
    for received in spans:
        assert received.resource["service.name"] == "kingest-under-test"
        assert received.resource["service.version"] == __version__
        assert received.resource["deployment.environment.name"] == "test"
        assert received.scope == "kingest"
    by_id = {r.span.span_id: r for r in spans}
    batches = [r for r in spans if "messaging.batch.message_count" in r.attributes]
    messages = [r for r in spans if "messaging.kafka.offset" in r.attributes]
    writes = [r for r in spans if r.attributes.get("db.system.name") == "postgresql"]
    commits = [r for r in spans if r.span.name == f"commit {topic}"]
    assert sum(r.attributes["messaging.batch.message_count"] for r in batches) == len(contexts)
    linked = {
        link.trace_id.hex().encode() + link.span_id.hex().encode()
        for b in batches
        for link in b.span.links
    }
    assert linked == set(contexts)
    # Every message was sampled upstream: each has its span, in its producer's trace.
    assert len(messages) == len(contexts)
    for received in messages:
        span = received.span
        assert span.kind == Span.SPAN_KIND_CONSUMER
        assert span.trace_id.hex().encode() + span.parent_span_id.hex().encode() in contexts
        (link,) = span.links
        assert by_id[link.span_id] in batches
    poison = [m for m in messages if m.span.status.code == m.span.status.STATUS_CODE_ERROR]
    assert len(poison) == 1
    assert poison[0].attributes["kingest.dead_letter.stage"] == "decode"
    assert writes
    for received in writes:
        assert received.span.kind == Span.SPAN_KIND_CLIENT
        assert by_id[received.span.parent_span_id] in batches
    assert sum(r.attributes["kingest.write.rows_inserted"] for r in writes) == len(contexts) - 1
    assert sum(r.attributes["kingest.write.dead_lettered"] for r in writes) == 1
    assert commits
    assert {link.span_id for c in commits for link in c.span.links} == {
        b.span.span_id for b in batches
    }
