"""`kingest start` with KINGEST_LOG_FORMAT=json: every line it writes (librdkafka's
included) is a JSON object with the required keys, and the line about a message
PostgreSQL rejected carries that message's topic, partition, offset and correlation id,
and the trace and span ids of a span kingest exported."""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka import Producer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from kingest.dev.synth import SyntheticStream
from kingest.schema.codec import encode_event
from kingest.schema.v1.events_pb2 import Event, InferenceCompleted, InferenceStatus
from kingest.store.migrate import apply_migrations
from kingest.telemetry.logs import JSON_FIELDS
from tests.integration.support import (
    KingestProcess,
    all_committed,
    count_rows,
    kingest_env,
    wait_for,
)

pytestmark = [pytest.mark.integration]

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
REJECTED_MODEL = "rejected-by-check"
CORRELATION_ID = "flow-json-logs"
GOOD_BEFORE, GOOD_AFTER = 120, 79


def _rejected_event() -> bytes:
    event = Event(
        event_id=str(uuid.uuid4()),
        correlation_id=CORRELATION_ID,
        source="serving/gateway",
        inference_completed=InferenceCompleted(
            model_name=REJECTED_MODEL, status=InferenceStatus.INFERENCE_STATUS_OK
        ),
    )
    event.occurred_at.GetCurrentTime()
    return encode_event(event)


class _TraceSink(ThreadingHTTPServer):
    """An OTLP/HTTP traces endpoint that keeps the (trace id, span id) of every span."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _TraceSinkHandler)
        self.spans: set[tuple[str, str]] = set()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1/traces"


class _TraceSinkHandler(BaseHTTPRequestHandler):
    server: _TraceSink

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = ExportTraceServiceRequest.FromString(body)
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.server.spans.add((span.trace_id.hex(), span.span_id.hex()))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def trace_sink() -> Iterator[_TraceSink]:
    server = _TraceSink()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


def _parse(log: str) -> list[dict[str, Any]]:
    lines = [line for line in log.splitlines() if line.strip()]
    parsed = []
    for line in lines:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON line: {line!r}")
        assert isinstance(entry, dict), line
        parsed.append(entry)
    return parsed


def test_kingest_start_logs_json_lines_and_the_rejected_message_is_identified(
    kafka_bootstrap: str,
    database_url: str,
    topic_factory: Callable[[int], str],
    tmp_path: Path,
    trace_sink: _TraceSink,
) -> None:
    topic = topic_factory(1)
    apply_migrations(database_url)
    # A rule PostgreSQL enforces and validation does not know: the event that breaks it
    # is rejected at write time (SQLSTATE 23514), bisected out and dead-lettered.
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "ALTER TABLE kingest.inferences ADD CONSTRAINT inferences_not_rejected"
            f" CHECK (model_name <> '{REJECTED_MODEL}')"
        )
    good = SyntheticStream(seed=11, wire_format_share=0.0).take(GOOD_BEFORE + GOOD_AFTER)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for index, record in enumerate(good):
        if index == GOOD_BEFORE:
            producer.produce(topic, key=b"rejected", value=_rejected_event(), partition=0)
        producer.produce(topic, key=record.key, value=record.value, partition=0)
    assert producer.flush(30) == 0
    end = len(good) + 1

    # A producer property passed to every client: librdkafka warns the consumer ignores
    # it, in one of its own log lines, which must come out as JSON too.
    env = kingest_env(
        kafka_bootstrap,
        database_url,
        topic,
        "json-logs",
        KINGEST_LOG_FORMAT="json",
        KINGEST_RDKAFKA_LINGER_MS="5",
    )
    # Traces exported over OTLP/HTTP to the sink, so log lines carry trace and span ids.
    env |= {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": trace_sink.endpoint,
        "OTEL_TRACES_SAMPLER": "parentbased_always_on",
    }
    with KingestProcess(env, tmp_path / "kingest.log") as kingest:
        wait_for(
            lambda: all_committed(kafka_bootstrap, "json-logs", topic, {0: end}, 1),
            timeout=60,
            what="every offset committed",
        )
        assert kingest.terminate_and_wait() == 0, kingest.log

    entries = _parse(kingest.log)
    for entry in entries:
        missing = set(JSON_FIELDS) - set(entry)
        assert not missing, (missing, entry)
        assert ISO_UTC.match(entry["time"]), entry
        assert entry["level"] in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}, entry
    loggers = {entry["logger"] for entry in entries}
    assert "kingest.pipeline.consumer" in loggers, loggers
    assert "kingest.librdkafka" in loggers, loggers
    assert any("CONFWARN" in e["message"] for e in entries if e["logger"] == "kingest.librdkafka")

    [rejected] = [e for e in entries if e["message"].startswith("event rejected by PostgreSQL")]
    assert rejected["level"] == "WARNING"
    assert rejected["logger"] == "kingest.pipeline.writer"
    assert (rejected["topic"], rejected["partition"], rejected["offset"]) == (
        topic,
        0,
        GOOD_BEFORE,
    )
    assert rejected["correlation_id"] == CORRELATION_ID
    assert rejected["sqlstate"] == "23514"
    # The line leads to its trace: the ids are those of a span kingest exported.
    assert re.fullmatch(r"[0-9a-f]{32}", rejected["trace_id"] or ""), rejected
    assert re.fullmatch(r"[0-9a-f]{16}", rejected["span_id"] or ""), rejected
    assert (rejected["trace_id"], rejected["span_id"]) in trace_sink.spans, rejected
    assert (
        count_rows(
            database_url,
            "dead_letters",
            "error_stage = 'write' AND sqlstate = '23514' AND kafka_offset = %s",
            (GOOD_BEFORE,),
        )
        == 1
    )
