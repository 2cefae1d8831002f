"""One OpenTelemetry tracer provider for the whole test session, recording on demand.

The global tracer provider can be set once per process, so the first test that needs
spans installs it (parent-based, always-on sampler: what kingest builds by default) and
every later one reuses it. Its exporter keeps spans in memory only while a test records
(:func:`recording`), so the tests that run afterwards with tracing on do not pile spans
up in memory.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased


class _GatedExporter(SpanExporter):
    def __init__(self) -> None:
        self.memory = InMemorySpanExporter()
        self.enabled = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self.enabled:
            return self.memory.export(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self.memory.shutdown()


_lock = threading.Lock()
_exporter: _GatedExporter | None = None


def _session_exporter() -> _GatedExporter:
    global _exporter  # noqa: PLW0603 - one provider per process
    with _lock:
        if _exporter is None:
            exporter = _GatedExporter()
            provider = TracerProvider(sampler=ParentBased(ALWAYS_ON))
            provider.add_span_processor(SimpleSpanProcessor(exporter))
            trace.set_tracer_provider(provider)
            if trace.get_tracer_provider() is not provider:
                raise RuntimeError("another tracer provider was installed before the tests'")
            _exporter = exporter
        return _exporter


@contextmanager
def recording() -> Iterator[InMemorySpanExporter]:
    """Spans ended inside the block (none from before it)."""
    exporter = _session_exporter()
    exporter.memory.clear()
    exporter.enabled = True
    try:
        yield exporter.memory
    finally:
        exporter.enabled = False
        exporter.memory.clear()
