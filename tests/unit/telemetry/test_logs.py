"""Log lines: JSON with trace and correlation ids, a readable console format, no secrets."""

from __future__ import annotations

import io
import json
import logging
import re
import socket
import time
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import pytest
from confluent_kafka import Producer
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from actors import Actor, ActorSystem, correlation_scope
from kingest.config.loading import load_settings
from kingest.config.redaction import REDACTED
from kingest.kafka.consumer import RDKAFKA_LOG
from kingest.telemetry.logs import JSON_FIELDS, configure_logging, secret_values

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
PASSWORD = 'pa55-w0rd"quoted\\slash'


@pytest.fixture(autouse=True)
def _restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


@pytest.fixture
def tracer() -> Iterator[trace.Tracer]:
    # A private provider: spans are real and valid without touching the global one.
    provider = TracerProvider()
    yield provider.get_tracer("test_logs")
    provider.shutdown()


def capture(fmt: str, **kwargs: Any) -> io.StringIO:
    stream = io.StringIO()
    configure_logging("DEBUG", fmt, stream, **kwargs)
    return stream


def json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


log = logging.getLogger("kingest.test_logs")


def test_a_json_line_has_every_field_and_null_ids_outside_any_scope() -> None:
    stream = capture("json")
    log.info("plain %s", "line")
    [line] = json_lines(stream)
    assert list(line)[: len(JSON_FIELDS)] == list(JSON_FIELDS)
    assert ISO_UTC.match(line["time"]), line["time"]
    assert line["level"] == "INFO"
    assert line["logger"] == "kingest.test_logs"
    assert line["message"] == "plain line"
    assert line["trace_id"] is None
    assert line["span_id"] is None
    assert line["correlation_id"] is None


def test_json_lines_carry_the_span_and_correlation_ids_of_their_scope(
    tracer: trace.Tracer,
) -> None:
    stream = capture("json")
    with tracer.start_as_current_span("batch") as span, correlation_scope("flow-42"):
        log.warning("inside")
        context = span.get_span_context()
        with tracer.start_as_current_span("child") as child:
            log.warning("nested")
    log.warning("after")
    inside, nested, after = json_lines(stream)
    assert inside["trace_id"] == f"{context.trace_id:032x}"
    assert inside["span_id"] == f"{context.span_id:016x}"
    assert re.fullmatch(r"[0-9a-f]{32}", inside["trace_id"])
    assert inside["correlation_id"] == "flow-42"
    assert nested["trace_id"] == inside["trace_id"]
    assert nested["span_id"] == f"{child.get_span_context().span_id:016x}"
    assert nested["correlation_id"] == "flow-42"
    assert (after["trace_id"], after["span_id"], after["correlation_id"]) == (None, None, None)


def test_message_coordinates_passed_with_extra_are_fields_of_the_line() -> None:
    stream = capture("json")
    with correlation_scope("batch-flow"):
        log.warning(
            "event rejected",
            extra={"topic": "ml-events", "partition": 3, "offset": 1207, "correlation_id": "c-1"},
        )
    [line] = json_lines(stream)
    assert (line["topic"], line["partition"], line["offset"]) == ("ml-events", 3, 1207)
    # The message's own correlation id wins over the one of the surrounding work.
    assert line["correlation_id"] == "c-1"


def test_a_traceback_stays_inside_its_json_line() -> None:
    stream = capture("json")
    try:
        raise ValueError("bad value")
    except ValueError:
        log.exception("failed")
    [line] = json_lines(stream)
    assert line["level"] == "ERROR"
    assert "ValueError: bad value" in line["exc_info"]


class _Logging(Actor[str]):
    def __init__(self, done: Future[None]) -> None:
        super().__init__("logging")
        self.done = done

    def receive(self, message: str) -> None:
        log.info("received %s", message)
        self.done.set_result(None)


def test_a_line_logged_by_an_actor_carries_the_senders_ids(tracer: trace.Tracer) -> None:
    stream = capture("json")
    system = ActorSystem("logs")
    done: Future[None] = Future()
    try:
        ref = system.spawn(_Logging(done))
        with tracer.start_as_current_span("send") as span, correlation_scope("hop-7"):
            ref.tell("hello")
        done.result(timeout=5)
    finally:
        assert system.stop(timeout=5)
    [line] = [entry for entry in json_lines(stream) if entry["message"] == "received hello"]
    assert line["trace_id"] == f"{span.get_span_context().trace_id:032x}"
    assert line["correlation_id"] == "hop-7"
    assert line["thread"] != "MainThread"


def test_the_console_format_shows_the_ids_only_when_present(tracer: trace.Tracer) -> None:
    stream = capture("console")
    log.info("no ids")
    with tracer.start_as_current_span("work") as span, correlation_scope("flow-9"):
        log.info("with ids", extra={"topic": "ml-events", "partition": 0, "offset": 5})
    plain, rich = stream.getvalue().splitlines()
    assert plain.endswith("INFO    kingest.test_logs: no ids")
    assert "with ids  topic=ml-events partition=0 offset=5 correlation_id=flow-9 " in rich
    assert f"trace_id={span.get_span_context().trace_id:032x}" in rich
    assert f"span_id={span.get_span_context().span_id:016x}" in rich


def test_a_console_field_with_spaces_or_newlines_stays_on_the_line() -> None:
    stream = capture("console")
    log.warning("rejected", extra={"error": "bad row\nDETAIL: x", "empty": ""})
    [line] = stream.getvalue().splitlines()
    assert line.endswith('rejected  error="bad row\\nDETAIL: x" empty=""')


SECRET_ENV = {
    "KINGEST_KAFKA_BOOTSTRAP_SERVERS": "kafka:9092",
    "KINGEST_TOPICS": "ml-events",
    "KINGEST_GROUP_ID": "kingest",
    "KINGEST_DATABASE_URL": "postgresql://kingest:db-secret-1@db.internal/ml",
    "KINGEST_RDKAFKA_SASL_USERNAME": "kingest-user",
    "KINGEST_RDKAFKA_SASL_PASSWORD": PASSWORD,
}


def test_secret_values_are_the_database_password_and_secret_properties() -> None:
    secrets = secret_values(load_settings(SECRET_ENV))
    assert sorted(secrets) == sorted(["db-secret-1", PASSWORD])


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_no_line_shows_a_secret(fmt: str) -> None:
    stream = capture(fmt, secrets=secret_values(load_settings(SECRET_ENV)))
    log.warning("connecting with %s", SECRET_ENV["KINGEST_DATABASE_URL"])
    log.warning("sasl %s", PASSWORD, extra={"detail": {"password": PASSWORD}})
    try:
        raise RuntimeError(f"auth failed for {PASSWORD}")
    except RuntimeError:
        log.exception("error")
    text = stream.getvalue()
    assert "db-secret-1" not in text
    assert PASSWORD not in text
    assert json.dumps(PASSWORD)[1:-1] not in text  # as escaped inside a JSON string
    assert text.count(REDACTED) >= 4
    if fmt == "json":
        assert all(isinstance(line, dict) for line in json_lines(stream))


def test_configuring_again_replaces_the_handler() -> None:
    first = capture("console")
    second = capture("json")
    log.info("once")
    assert first.getvalue() == ""
    assert [line["message"] for line in json_lines(second)] == ["once"]


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_librdkafka_lines_go_through_the_json_handler() -> None:
    stream = capture("json")
    producer = Producer(
        {
            "bootstrap.servers": f"127.0.0.1:{_closed_port()}",
            "logger": RDKAFKA_LOG,
            "reconnect.backoff.ms": 10,
        }
    )
    deadline = time.monotonic() + 10
    while "kingest.librdkafka" not in stream.getvalue() and time.monotonic() < deadline:
        producer.poll(0.1)
    lines = [line for line in json_lines(stream) if line["logger"] == "kingest.librdkafka"]
    assert lines, stream.getvalue()
    assert "Connection refused" in lines[0]["message"] or "failed" in lines[0]["message"]
    assert lines[0]["trace_id"] is None
