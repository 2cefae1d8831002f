"""W3C Trace Context: ``traceparent`` headers, and what a batch gathers of them.

A partition actor opens a :class:`TraceCollector` with each batch (:func:`open_batch`,
None while tracing is off) and lets it :meth:`~TraceCollector.scan` every poll's
messages: the distinct ``traceparent`` values become the batch span's links, and the
messages whose value has the sampled flag may get a span of their own
(:mod:`kingest.telemetry.tracing.batches`). Values are kept raw and parsed only when
linked: most batches link far fewer contexts than they carry messages.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable
from typing import Any, Protocol

from opentelemetry.trace import Link, SpanContext, TraceFlags

from kingest.store import header_pairs, message_headers
from kingest.telemetry.tracing.conventions import TRACEPARENT_HEADER
from kingest.telemetry.tracing.setup import tracing_active

__all__ = ["TraceCollector", "open_batch", "parse_traceparent"]


def parse_traceparent(value: bytes | str) -> SpanContext | None:
    """The remote span context of a W3C ``traceparent`` value, or None when malformed."""
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
    parts = text.strip().split("-")
    if len(parts) < 4:
        return None
    version, trace_hex, span_hex, flags_hex = parts[:4]
    if (
        len(version) != 2
        or version == "ff"
        or len(trace_hex) != 32
        or len(span_hex) != 16
        or len(flags_hex) != 2
        or (version == "00" and len(parts) != 4)
    ):
        return None
    try:
        int(version, 16)
        trace_id = int(trace_hex, 16)
        span_id = int(span_hex, 16)
        flags = int(flags_hex, 16)
    except ValueError:
        return None
    if not trace_id or not span_id:
        return None
    return SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags & 0x01))


class _Headers(Protocol):
    def headers(self) -> Any: ...
    def offset(self) -> int | None: ...


class TraceCollector:
    """What one open batch gathers for its spans: when it opened, the distinct
    ``traceparent`` values of its messages, and its messages that carry a sampled one.

    Only created while tracing is active (:func:`open_batch`); :meth:`scan` looks at the
    headers of every message, a message without headers costs one call.
    """

    __slots__ = ("opened_ns", "sampled", "traceparents")

    def __init__(self) -> None:
        self.opened_ns = time.time_ns()
        #: Distinct traceparent values in arrival order (a dict as an ordered set).
        self.traceparents: dict[bytes, None] = {}
        #: (offset, traceparent, when it was received) of messages sampled upstream.
        self.sampled: list[tuple[int, bytes, int]] = []

    def scan(self, records: Iterable[_Headers]) -> None:
        traceparents = self.traceparents
        received_ns = 0
        for record in records:
            for key, value in header_pairs(message_headers(record)):
                if key != TRACEPARENT_HEADER or not value:
                    continue
                raw = value.encode() if isinstance(value, str) else value
                traceparents[raw] = None
                if _sampled_flag(raw):
                    if not received_ns:
                        received_ns = time.time_ns()
                    offset = record.offset()
                    self.sampled.append((-1 if offset is None else offset, raw, received_ns))
                break

    def links(self, limit: int) -> tuple[list[Link], int]:
        """Links to the distinct valid contexts, sampled ones first, at most ``limit``;
        and how many distinct values were left out (only those linked are parsed)."""
        sampled: list[bytes] = []
        others: list[bytes] = []
        for raw in self.traceparents:
            (sampled if _sampled_flag(raw) else others).append(raw)
        links: list[Link] = []
        considered = 0
        for raw in itertools.chain(sampled, others):
            if len(links) >= limit:
                break
            considered += 1
            context = parse_traceparent(raw)
            if context is not None:
                links.append(Link(context))
        return links, len(self.traceparents) - considered

    def pick_sampled(self, limit: int) -> list[tuple[int, bytes, int]]:
        """At most ``limit`` of the sampled messages, spread evenly over the batch."""
        sampled = self.sampled
        if len(sampled) <= limit:
            return sampled
        return [sampled[index * len(sampled) // limit] for index in range(limit)]


def _sampled_flag(raw: bytes) -> bool:
    """Whether a version-00 style traceparent has the sampled flag ("...-01"); cheap."""
    return len(raw) >= 55 and raw[54] in b"13579bdfBDF"


def open_batch() -> TraceCollector | None:
    """A collector for a batch being opened, or None when tracing is off."""
    return TraceCollector() if tracing_active() else None
