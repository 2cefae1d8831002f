"""Context propagation: trace parentage and correlation id across actor hops."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from actors import (
    Actor,
    ActorSystem,
    CorrelationLogFilter,
    Directive,
    OneForOneSupervisor,
    Pool,
    correlation_scope,
    current_correlation_id,
    with_correlation_id,
)


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracer(exporter: InMemorySpanExporter) -> Iterator[trace.Tracer]:
    # A private provider, not the global one: tests must not fight over global state.
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider.get_tracer("test_actors_context")
    provider.shutdown()


@pytest.fixture
def system() -> Iterator[ActorSystem]:
    actor_system = ActorSystem("context")
    yield actor_system
    assert actor_system.stop(timeout=5)
    assert actor_system.failures == []


class Observation:
    """What a receiving actor saw of its context."""

    def __init__(self, correlation_id: str | None, span: trace.Span) -> None:
        self.correlation_id = correlation_id
        self.span_context = span.get_span_context()


class Sink(Actor[str]):
    """Last hop: starts a span, reports what it saw."""

    def __init__(self, name: str, tracer: trace.Tracer) -> None:
        super().__init__(name)
        self.tracer = tracer
        self.seen: Future[Observation] = Future()

    def receive(self, message: str) -> None:
        with self.tracer.start_as_current_span("sink") as span:
            self.seen.set_result(Observation(current_correlation_id(), span))


class Forwarder(Actor[str]):
    """First hop: starts a span and forwards the message to `downstream`."""

    def __init__(self, name: str, tracer: trace.Tracer, downstream: Pool[str]) -> None:
        super().__init__(name)
        self.tracer = tracer
        self.downstream = downstream
        self.seen: list[str | None] = []

    def receive(self, message: str) -> None:
        self.seen.append(current_correlation_id())
        with self.tracer.start_as_current_span("forward"):
            self.downstream.tell(message)


def spans_by_name(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    return {span.name: span for span in exporter.get_finished_spans()}


def test_trace_and_correlation_id_flow_across_two_hops(
    system: ActorSystem, tracer: trace.Tracer, exporter: InMemorySpanExporter
) -> None:
    sinks: list[Sink] = []

    def make_sink(index: int) -> Sink:
        sinks.append(Sink(f"sink-{index}", tracer))
        return sinks[-1]

    pool = system.spawn(Pool("sinks", make_sink, 1, capacity=10))
    forwarder = system.spawn(Forwarder("forwarder", tracer, pool))

    with correlation_scope("corr-42"), tracer.start_as_current_span("send"):
        forwarder.tell("hello")
    observation = sinks[0].seen.result(timeout=5)

    assert forwarder.seen == ["corr-42"]
    assert observation.correlation_id == "corr-42"
    assert system.stop(timeout=5)
    spans = spans_by_name(exporter)
    send, forward, sink = spans["send"], spans["forward"], spans["sink"]
    assert forward.parent is not None
    assert sink.parent is not None
    assert forward.parent.span_id == send.context.span_id
    assert sink.parent.span_id == forward.context.span_id
    assert send.context.trace_id == forward.context.trace_id == sink.context.trace_id
    assert observation.span_context.span_id == sink.context.span_id


def test_context_is_detached_after_receive(system: ActorSystem, tracer: trace.Tracer) -> None:
    observed: list[tuple[str | None, bool, dict[str, Any]]] = []
    idle_context: Future[dict[str, Any]] = Future()

    class Observer(Actor[str]):
        def receive(self, message: str) -> None:
            observed.append(
                (
                    current_correlation_id(),
                    trace.get_current_span().get_span_context().is_valid,
                    dict(otel_context.get_current()),
                )
            )
            if message == "fail":
                raise RuntimeError("failing with the sender's context attached")

        def on_receive_timeout(self) -> None:
            if len(observed) == 2 and not idle_context.done():  # idle after both messages
                idle_context.set_result(dict(otel_context.get_current()))

    observer = system.spawn(
        Observer(
            "observer",
            receive_timeout=0.01,
            supervisor=OneForOneSupervisor(decider=lambda _: Directive.RESUME),
        )
    )
    with correlation_scope("first"), tracer.start_as_current_span("send"):
        observer.tell("fail")
    observer.ask("second").result(timeout=5)  # sent without any context

    assert observed[0][:2] == ("first", True)
    assert observed[1] == (None, False, {})  # nothing left over from the failed message
    assert idle_context.result(timeout=5) == {}


def test_correlation_scope_nests_and_restores() -> None:
    assert current_correlation_id() is None
    with correlation_scope("outer"):
        assert current_correlation_id() == "outer"
        with correlation_scope("inner"):
            assert current_correlation_id() == "inner"
        with correlation_scope(None):
            assert current_correlation_id() is None
        assert current_correlation_id() == "outer"
    assert current_correlation_id() is None


def test_with_correlation_id_returns_a_new_context() -> None:
    base = otel_context.get_current()
    marked = with_correlation_id("abc")
    assert current_correlation_id() is None
    assert dict(base) == {}
    token = otel_context.attach(marked)
    try:
        assert current_correlation_id() == "abc"
        remarked = with_correlation_id("def", marked)
    finally:
        otel_context.detach(token)
    token = otel_context.attach(remarked)
    try:
        assert current_correlation_id() == "def"
    finally:
        otel_context.detach(token)


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, ListHandler]]:
    logger = logging.getLogger("test_actors_context.correlation")
    handler = ListHandler()
    handler.addFilter(CorrelationLogFilter())
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    yield logger, handler
    logger.removeHandler(handler)


def test_correlation_log_filter_stamps_records(
    captured: tuple[logging.Logger, ListHandler],
) -> None:
    logger, handler = captured
    logger.info("outside")
    with correlation_scope("log-1"):
        logger.info("inside")
        logger.info("explicit", extra={"correlation_id": "given"})
    assert [getattr(record, "correlation_id", "missing") for record in handler.records] == [
        None,
        "log-1",
        "given",
    ]


def test_correlation_log_filter_sees_the_senders_id_inside_receive(
    system: ActorSystem, captured: tuple[logging.Logger, ListHandler]
) -> None:
    logger, handler = captured
    logged = threading.Event()

    class Logs(Actor[str]):
        def receive(self, message: str) -> None:
            logger.info("handling %s", message)
            logged.set()

    actor = system.spawn(Logs("logs"))
    with correlation_scope("from-sender"):
        actor.tell("m")
    assert logged.wait(timeout=5)
    assert [getattr(record, "correlation_id", None) for record in handler.records] == [
        "from-sender"
    ]
    assert handler.records[0].threadName == "logs"
