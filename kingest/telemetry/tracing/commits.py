"""Offset commit spans: ``commit {topic}`` (CLIENT, ``messaging.operation.type=settle``).

One span per commit of the consumer loop, linked to the sampled batch spans whose offsets
it commits (the offset committer keeps their contexts); an asynchronous commit's span
lasts until the broker's answer reaches the ``on_commit`` callback.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Final, Protocol

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, Span, SpanContext, SpanKind, Status, StatusCode

from kingest.telemetry.tracing.conventions import (
    ERROR_TYPE,
    MESSAGING_CONSUMER_GROUP,
    MESSAGING_DESTINATION_NAME,
    MESSAGING_OPERATION_NAME,
    MESSAGING_OPERATION_TYPE,
    MESSAGING_SYSTEM,
)
from kingest.telemetry.tracing.setup import link_limit, tracer, tracing_active

__all__ = ["CommitSpans"]


class _Offset(Protocol):
    topic: str
    partition: int
    offset: int


class _LinkSource(Protocol):
    def commit_links(self, offsets: Iterable[tuple[tuple[str, int], int]]) -> list[SpanContext]: ...


def _commit_key(offsets: Iterable[_Offset]) -> tuple[tuple[str, int, int], ...]:
    return tuple(sorted((o.topic, o.partition, o.offset) for o in offsets))


class CommitSpans:
    """Spans of the consumer loop's offset commits (all on the loop's thread).

    A synchronous commit's span covers the call. An asynchronous commit's span starts
    with the request and ends when its result reaches the ``on_commit`` callback (or at
    :meth:`close`); at most :attr:`MAX_PENDING` wait for their result.
    """

    MAX_PENDING: Final = 64

    def __init__(self, group: str | None) -> None:
        self._group = group
        self._pending: dict[tuple[tuple[str, int, int], ...], Span] = {}

    def _start(
        self, offsets: Sequence[_Offset], links: _LinkSource | None, asynchronous: bool
    ) -> Span:
        topics = list(dict.fromkeys(o.topic for o in offsets))
        attributes: dict[str, Any] = {
            MESSAGING_SYSTEM: "kafka",
            MESSAGING_OPERATION_TYPE: "settle",
            MESSAGING_OPERATION_NAME: "commit",
            "kingest.commit.asynchronous": asynchronous,
            "kingest.commit.partitions": len(offsets),
            "kingest.commit.offsets": [f"{o.topic}/{o.partition}:{o.offset}" for o in offsets],
        }
        if len(topics) == 1:
            attributes[MESSAGING_DESTINATION_NAME] = topics[0]
        if self._group:
            attributes[MESSAGING_CONSUMER_GROUP] = self._group
        contexts = (
            links.commit_links(((o.topic, o.partition), o.offset) for o in offsets)
            if links is not None
            else []
        )
        return tracer.start_span(
            f"commit {topics[0]}" if len(topics) == 1 else "commit",
            context=otel_context.Context(),
            kind=SpanKind.CLIENT,
            attributes=attributes,
            links=[Link(c, {"kingest.link": "batch"}) for c in contexts[: link_limit()]],
        )

    def started(self, offsets: Sequence[_Offset], links: _LinkSource | None) -> None:
        """An asynchronous commit of ``offsets`` was requested."""
        if not offsets or not tracing_active():
            return
        span = self._start(offsets, links, asynchronous=True)
        if not span.is_recording():
            return
        self._pending[_commit_key(offsets)] = span
        while len(self._pending) > self.MAX_PENDING:
            oldest = next(iter(self._pending))
            self._pending.pop(oldest).end()

    def finished(self, error: Any, partitions: Sequence[Any]) -> None:
        """The ``on_commit`` callback: end the matching asynchronous commit's span."""
        if not self._pending:
            return
        span = self._pending.pop(_commit_key(partitions), None)
        if span is None:
            return
        failure = error
        if failure is None:
            failure = next((p.error for p in partitions if p.error is not None), None)
        _end_commit(span, failure)

    @contextmanager
    def sync(self, offsets: Sequence[_Offset], links: _LinkSource | None) -> Iterator[None]:
        """Span of a synchronous commit of ``offsets`` (the block makes the call)."""
        if not offsets or not tracing_active():
            yield
            return
        span = self._start(offsets, links, asynchronous=False)
        try:
            with trace.use_span(span, end_on_exit=False, record_exception=True):
                yield
        except BaseException as error:
            _end_commit(span, error)
            raise
        _end_commit(span, None)

    def close(self) -> None:
        """End the spans of asynchronous commits whose result never came."""
        pending, self._pending = self._pending, {}
        for span in pending.values():
            span.set_attribute("kingest.commit.result", "unknown")
            span.end()


def _end_commit(span: Span, error: Any) -> None:
    if error is not None:
        name = getattr(error, "name", None)
        kafka_name = name() if callable(name) else None
        args = getattr(error, "args", ())
        if kafka_name is None and args and callable(getattr(args[0], "name", None)):
            kafka_name = args[0].name()  # a KafkaException wrapping a KafkaError
        span.set_attribute(ERROR_TYPE, kafka_name or type(error).__qualname__)
        span.set_status(Status(StatusCode.ERROR, str(error)[:200]))
        span.set_attribute("kingest.commit.result", "failed")
    else:
        span.set_attribute("kingest.commit.result", "ok")
    span.end()
