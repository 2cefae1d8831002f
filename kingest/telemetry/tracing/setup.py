"""Tracing set-up: the tracer provider built from a :class:`~kingest.config.TracingConfig`.

:func:`configure_tracing` runs once, in ``kingest start``: it installs the global tracer
provider with the checked sampler (the parent-based ones extended to links), the
resource (``service.name`` kingest unless the environment names it) and one batch span
processor per exporter. The SDK and the exporters are imported only when tracing is on.
Every span module asks :func:`tracing_active` before looking at a header, and starts its
spans on :data:`tracer`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, NoOpTracerProvider, ProxyTracerProvider, SpanKind

from kingest import __version__
from kingest.config import TracingConfig, describe_tracing, redact_url
from kingest.telemetry.tracing.conventions import DEFAULT_MAX_LINKS, INSTRUMENTATION_NAME

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.sdk.trace.sampling import Sampler

__all__ = [
    "TracingHandle",
    "configure_tracing",
    "link_limit",
    "make_resource",
    "tracer",
    "tracing_active",
]

log = logging.getLogger(__name__)

#: kingest's tracer (a proxy: it uses whichever provider is installed when a span starts).
tracer = trace.get_tracer(INSTRUMENTATION_NAME, __version__)


@dataclass
class TracingHandle:
    """What :func:`configure_tracing` installed; :meth:`shutdown` flushes and stops it."""

    provider: TracerProvider | None = None

    def shutdown(self) -> None:
        """Export what is still queued and stop the exporters (idempotent)."""
        provider, self.provider = self.provider, None
        if provider is None:
            return
        try:
            provider.shutdown()
        except Exception:
            log.warning("shutting down tracing failed", exc_info=True)


def _make_sampler(config: TracingConfig) -> Sampler:
    # The SDK's TracerProvider reads OTEL_TRACES_SAMPLER and _ARG itself (the six
    # built-in names), but on an unknown name or a bad ratio it only logs a warning and
    # samples everything; kingest validates them (kingest.config.otel), builds the same
    # sampler from the checked values and extends the parent-based ones to links.
    from opentelemetry.sdk.trace import sampling  # noqa: PLC0415 - the SDK only when tracing

    ratio = 1.0 if config.sampler_ratio is None else config.sampler_ratio
    roots: dict[str, Sampler] = {
        "always_on": sampling.ALWAYS_ON,
        "always_off": sampling.ALWAYS_OFF,
        "traceidratio": sampling.TraceIdRatioBased(ratio),
    }
    name = config.sampler
    if not name.startswith("parentbased_"):
        return roots[name]
    delegate = sampling.ParentBased(roots[name.removeprefix("parentbased_")])

    class LinkedParentBased(sampling.Sampler):
        """ParentBased, extended to links: a span without a parent that links to a
        sampled span context is sampled (a batch holding a sampled message is recorded)."""

        def should_sample(  # noqa: PLR0917 - the SDK's signature
            self,
            parent_context: otel_context.Context | None,
            trace_id: int,
            name: str,
            kind: SpanKind | None = None,
            attributes: Any = None,
            links: Sequence[Link] | None = None,
            trace_state: Any = None,
        ) -> sampling.SamplingResult:
            if links and not trace.get_current_span(parent_context).get_span_context().is_valid:
                for link in links:
                    if link.context.trace_flags.sampled:
                        return sampling.SamplingResult(
                            sampling.Decision.RECORD_AND_SAMPLE, attributes
                        )
            return delegate.should_sample(
                parent_context, trace_id, name, kind, attributes, links, trace_state
            )

        def get_description(self) -> str:
            description: str = delegate.get_description()  # type: ignore[no-untyped-call]
            return f"LinkedParentBased{{{description}}}"

    return LinkedParentBased()


def make_resource() -> Any:
    """The OpenTelemetry resource of kingest's traces and metrics: ``service.name``
    "kingest" and ``service.version``, unless ``OTEL_SERVICE_NAME`` or
    ``OTEL_RESOURCE_ATTRIBUTES`` say otherwise."""
    from opentelemetry.sdk.resources import OTELResourceDetector, Resource  # noqa: PLC0415

    from_env = OTELResourceDetector().detect().attributes
    defaults = {"service.name": "kingest", "service.version": __version__}
    # Resource.create lets explicit attributes override the environment's: pass only the
    # defaults the environment does not set, so OTEL_SERVICE_NAME and
    # OTEL_RESOURCE_ATTRIBUTES win.
    return Resource.create({k: v for k, v in defaults.items() if k not in from_env})


def _make_exporter(name: str, config: TracingConfig) -> SpanExporter:
    # The exporters read the endpoint, headers, timeout, compression and TLS variables
    # themselves; the imports stay here so that kingest without tracing loads no exporter.
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter  # noqa: PLC0415

        return ConsoleSpanExporter(service_name=config.service_name)
    if config.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # noqa: PLC0415
            OTLPSpanExporter as GrpcSpanExporter,
        )

        return GrpcSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
        OTLPSpanExporter as HttpSpanExporter,
    )

    return HttpSpanExporter()


def configure_tracing(config: TracingConfig) -> TracingHandle:
    """Install the global tracer provider ``config`` describes (nothing when tracing is
    off) and return the handle that flushes it at exit."""
    if not config.enabled:
        log.info("tracing off (%s)", config.exporters_reason)
        return TracingHandle()
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415

    provider = TracerProvider(
        sampler=_make_sampler(config),
        resource=make_resource(),
    )
    for name in config.exporters:
        provider.add_span_processor(BatchSpanProcessor(_make_exporter(name, config)))
    trace.set_tracer_provider(provider)
    where = f" {config.protocol} to {redact_url(config.endpoint)}" if config.otlp else ""
    log.info(
        "tracing on: %s%s, sampler %s",
        ",".join(config.exporters),
        where,
        describe_tracing(config)["OTEL_TRACES_SAMPLER"],
    )
    return TracingHandle(provider)


def tracing_active() -> bool:
    """True once a real tracer provider is installed (the pipeline traces only then)."""
    return not isinstance(trace.get_tracer_provider(), (ProxyTracerProvider, NoOpTracerProvider))


_max_links: int | None = None


def link_limit() -> int:
    """The most links a span keeps: the installed SDK's limit (read once), else
    :data:`~kingest.telemetry.tracing.conventions.DEFAULT_MAX_LINKS`."""
    global _max_links  # noqa: PLW0603 - read once, lazily (the SDK's own env variable)
    if _max_links is None:
        provider = trace.get_tracer_provider()
        limits = getattr(provider, "_span_limits", None)
        value = getattr(limits, "max_links", None)
        _max_links = value if isinstance(value, int) and value >= 0 else DEFAULT_MAX_LINKS
    return _max_links
