"""Propagation of the OpenTelemetry context and a correlation id across actor hops.

The correlation id is stored *inside* the OpenTelemetry `Context`, under a key of its
own. One object therefore carries both the trace context and the correlation id: the
sender's `opentelemetry.context.get_current()` captured at `tell` time, attached in the
receiving thread around `receive`, restores both, with no second mechanism to keep in
step.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import context as otel_context
from opentelemetry.context import Context

__all__ = [
    "CorrelationLogFilter",
    "correlation_scope",
    "current_correlation_id",
    "with_correlation_id",
]

_CORRELATION_ID_KEY = otel_context.create_key("actors.correlation_id")


def current_correlation_id() -> str | None:
    """The correlation id of the current context, or None."""
    value = otel_context.get_value(_CORRELATION_ID_KEY)
    return value if isinstance(value, str) else None


def with_correlation_id(correlation_id: str | None, ctx: Context | None = None) -> Context:
    """A copy of `ctx` (default: the current context) carrying `correlation_id`.

    None removes the id from the returned context's point of view, so a scope can
    explicitly run without one.
    """
    return otel_context.set_value(_CORRELATION_ID_KEY, correlation_id, ctx)


@contextmanager
def correlation_scope(correlation_id: str | None) -> Iterator[None]:
    """Make `correlation_id` current for the block (on top of the current trace context)."""
    token = otel_context.attach(with_correlation_id(correlation_id))
    try:
        yield
    finally:
        otel_context.detach(token)


class CorrelationLogFilter(logging.Filter):
    """Sets `record.correlation_id` from the current context (None when there is none).

    Install it on a handler so that every formatter can use `%(correlation_id)s`. A
    record that already carries a correlation id (passed with `extra=`) keeps it.
    The filter never drops a record.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "correlation_id", None) is None:
            record.correlation_id = current_correlation_id()
        return True
