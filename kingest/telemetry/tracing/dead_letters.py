"""The dead-letter publication's span: ``send {dead-letter topic}`` (PRODUCER).

Its context is what the published dead letters carry in their ``traceparent`` header,
so a consumer of the dead-letter topic continues kingest's trace.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from opentelemetry.trace import Span, SpanKind

from kingest.telemetry.tracing.conventions import (
    MESSAGING_BATCH_COUNT,
    MESSAGING_DESTINATION_NAME,
    MESSAGING_OPERATION_NAME,
    MESSAGING_OPERATION_TYPE,
    MESSAGING_SYSTEM,
)
from kingest.telemetry.tracing.setup import tracer

__all__ = ["dead_letter_span"]


@contextmanager
def dead_letter_span(
    topics: Sequence[str], message_count: int, group: str | None
) -> Iterator[Span]:
    """The PRODUCER span of one publication to the dead-letter topic(s); its context is
    what the dead letters' ``traceparent`` header carries."""
    distinct = list(dict.fromkeys(topics))
    attributes: dict[str, Any] = {
        MESSAGING_SYSTEM: "kafka",
        MESSAGING_OPERATION_TYPE: "send",
        MESSAGING_OPERATION_NAME: "send",
        MESSAGING_BATCH_COUNT: message_count,
    }
    if len(distinct) == 1:
        attributes[MESSAGING_DESTINATION_NAME] = distinct[0]
    if group:
        attributes["kingest.dead_letter.consumer_group"] = group
    name = f"send {distinct[0]}" if len(distinct) == 1 else "send"
    with tracer.start_as_current_span(name, kind=SpanKind.PRODUCER, attributes=attributes) as span:
        yield span
