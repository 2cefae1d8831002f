"""The standard ``OTEL_*`` tracing variables: parsed, checked and described.

Invalid values are configuration problems reported with the ``KINGEST_*`` ones
(:func:`tracing_problems`, called by :func:`kingest.config.load_settings`); the
tracer provider built from a :class:`TracingConfig` is :mod:`kingest.telemetry.tracing`'s.
When ``OTEL_TRACES_EXPORTER`` is unset, kingest exports over OTLP only if an OTLP endpoint
variable is set, and traces nothing otherwise: the specification's default (OTLP to
``localhost``) would make every process without a collector beside it log a failed
export every few seconds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote, urlsplit, urlunsplit

from kingest.config.redaction import REDACTED

__all__ = [
    "EXPORTERS",
    "PROTOCOLS",
    "SAMPLERS",
    "TracingConfig",
    "TracingConfigError",
    "describe_tracing",
    "load_tracing_config",
    "parse_tracing_config",
    "redact_url",
    "tracing_problems",
]

EXPORTERS: Final = ("otlp", "console", "none")
PROTOCOLS: Final = ("http/protobuf", "grpc")
SAMPLERS: Final = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)
_RATIO_SAMPLERS: Final = ("traceidratio", "parentbased_traceidratio")
_COMPRESSIONS: Final = ("gzip", "deflate", "none")
_HTTP_DEFAULT_ENDPOINT: Final = "http://localhost:4318"
_GRPC_DEFAULT_ENDPOINT: Final = "http://localhost:4317"
#: Span-limit and batch-processor variables the SDK reads as integers; the span limits
#: fail the provider's construction when they are not integers.
_INTEGER_VARIABLES: Final = (
    "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT",
    "OTEL_ATTRIBUTE_COUNT_LIMIT",
    "OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT",
    "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT",
    "OTEL_SPAN_EVENT_COUNT_LIMIT",
    "OTEL_SPAN_LINK_COUNT_LIMIT",
    "OTEL_EVENT_ATTRIBUTE_COUNT_LIMIT",
    "OTEL_LINK_ATTRIBUTE_COUNT_LIMIT",
    "OTEL_BSP_SCHEDULE_DELAY",
    "OTEL_BSP_EXPORT_TIMEOUT",
    "OTEL_BSP_MAX_QUEUE_SIZE",
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
)
_POSITIVE_VARIABLES: Final = ("OTEL_BSP_MAX_QUEUE_SIZE", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE")


class TracingConfigError(ValueError):
    """Invalid ``OTEL_*`` tracing variables; ``problems`` lists each one."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid tracing configuration:\n" + "\n".join(problems))


@dataclass(frozen=True, slots=True)
class TracingConfig:
    """The effective tracing set-up read from the environment.

    ``exporters`` is empty when tracing is off; ``exporters_reason`` says why these
    exporters (set explicitly, or the default and what it depended on).
    """

    exporters: tuple[str, ...]
    exporters_reason: str
    protocol: str = "http/protobuf"
    endpoint: str = ""
    header_names: tuple[str, ...] = ()
    sampler: str = "parentbased_always_on"
    sampler_ratio: float | None = None
    service_name: str = "kingest"
    resource_attributes: tuple[tuple[str, str], ...] = ()

    @property
    def enabled(self) -> bool:
        return bool(self.exporters)

    @property
    def otlp(self) -> bool:
        return "otlp" in self.exporters


def _get(environ: Mapping[str, str], name: str) -> str | None:
    """A variable's value, stripped; None when unset or blank (blank means unset)."""
    value = environ.get(name)
    if value is None or not value.strip():
        return None
    return value.strip()


def _parse_pairs(text: str) -> tuple[list[tuple[str, str]], list[str]]:
    """``k=v,k2=v2`` (W3C baggage style, percent-encoded): the pairs and the bad entries."""
    pairs: list[tuple[str, str]] = []
    bad: list[str] = []
    for raw in text.split(","):
        entry = raw.strip()
        if not entry:
            continue
        key, sep, value = entry.partition("=")
        if not sep or not key.strip():
            bad.append(entry)
            continue
        pairs.append((unquote(key).strip(), unquote(value).strip()))
    return pairs, bad


def _check_endpoint(name: str, value: str) -> str | None:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"{name}: {redact_url(value)!r} is not an http:// or https:// URL"
    try:
        _ = parts.port
    except ValueError:
        return f"{name}: {redact_url(value)!r} has an invalid port"
    return None


def redact_url(url: str) -> str:
    """``url`` without a password in its user info."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return REDACTED
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:{REDACTED}@{parts.hostname or ''}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def _exporters(environ: Mapping[str, str], problems: list[str]) -> tuple[tuple[str, ...], str]:
    if (_get(environ, "OTEL_SDK_DISABLED") or "").lower() == "true":
        return (), "OTEL_SDK_DISABLED=true"
    raw = _get(environ, "OTEL_TRACES_EXPORTER")
    if raw is None:
        for variable in ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"):
            if _get(environ, variable) is not None:
                return ("otlp",), f"default: {variable} is set"
        return (), "default: no OTLP endpoint variable is set"
    names = [name.strip().lower() for name in raw.split(",") if name.strip()]
    unknown = [name for name in names if name not in EXPORTERS]
    if unknown:
        problems.append(
            f"OTEL_TRACES_EXPORTER: {', '.join(map(repr, unknown))} is not supported "
            f"(one or more of {', '.join(EXPORTERS)})"
        )
        return (), "invalid"
    if "none" in names and len(names) > 1:
        problems.append("OTEL_TRACES_EXPORTER: none cannot be combined with other exporters")
        return (), "invalid"
    chosen = tuple(dict.fromkeys(name for name in names if name != "none"))
    return chosen, "OTEL_TRACES_EXPORTER"


def _protocol(environ: Mapping[str, str], problems: list[str]) -> str:
    chosen: str | None = None
    for variable in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        value = _get(environ, variable)
        if value is None:
            continue
        if value not in PROTOCOLS:
            hint = " (kingest's exporters speak protobuf)" if value == "http/json" else ""
            problems.append(
                f"{variable}: {value!r} is not supported{hint}; use http/protobuf or grpc"
            )
        elif chosen is None:
            chosen = value
    return chosen or "http/protobuf"


def _endpoint(environ: Mapping[str, str], protocol: str, problems: list[str]) -> str:
    traces = _get(environ, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    base = _get(environ, "OTEL_EXPORTER_OTLP_ENDPOINT")
    for variable, value in (
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", traces),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", base),
    ):
        if value is not None and (problem := _check_endpoint(variable, value)):
            problems.append(problem)
    # As the exporters resolve it: the signal's URL as is; else, over HTTP, the base
    # URL plus /v1/traces; over gRPC the base URL itself.
    if traces is not None:
        return traces
    if protocol == "grpc":
        return base or _GRPC_DEFAULT_ENDPOINT
    return f"{(base or _HTTP_DEFAULT_ENDPOINT).removesuffix('/')}/v1/traces"


def _otlp_details(environ: Mapping[str, str], problems: list[str]) -> tuple[str, ...]:
    """Check the OTLP headers, timeout and compression; return the header names."""
    names: list[str] = []
    for variable in ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS"):
        value = _get(environ, variable)
        if value is None:
            continue
        pairs, bad = _parse_pairs(value)
        if bad:
            # The entries may hold a token: only say how many are malformed.
            problems.append(f"{variable}: {len(bad)} entries are not name=value")
        if not names:
            names = [key.lower() for key, _ in pairs]
    for variable in ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"):
        value = _get(environ, variable)
        if value is None:
            continue
        try:
            seconds = float(value)
        except ValueError:
            seconds = math.nan
        if not math.isfinite(seconds) or seconds <= 0:
            problems.append(f"{variable}: {value!r} is not a positive number")
    for variable in ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "OTEL_EXPORTER_OTLP_COMPRESSION"):
        value = _get(environ, variable)
        if value is not None and value.lower() not in _COMPRESSIONS:
            problems.append(f"{variable}: {value!r} is not one of {', '.join(_COMPRESSIONS)}")
    return tuple(names)


def _sampler(environ: Mapping[str, str], problems: list[str]) -> tuple[str, float | None]:
    raw = _get(environ, "OTEL_TRACES_SAMPLER")
    name = raw.lower() if raw is not None else "parentbased_always_on"
    if name not in SAMPLERS:
        problems.append(
            f"OTEL_TRACES_SAMPLER: {raw!r} is not supported (one of {', '.join(SAMPLERS)})"
        )
        return "parentbased_always_on", None
    if name not in _RATIO_SAMPLERS:
        return name, None  # the argument only applies to the ratio samplers
    arg = _get(environ, "OTEL_TRACES_SAMPLER_ARG")
    if arg is None:
        return name, 1.0
    try:
        ratio = float(arg)
    except ValueError:
        ratio = math.nan
    if not 0.0 <= ratio <= 1.0:
        problems.append(f"OTEL_TRACES_SAMPLER_ARG: {arg!r} is not a ratio between 0 and 1")
        return name, 1.0
    return name, ratio


def _resource(environ: Mapping[str, str], problems: list[str]) -> tuple[str, list[tuple[str, str]]]:
    attributes: list[tuple[str, str]] = []
    raw = _get(environ, "OTEL_RESOURCE_ATTRIBUTES")
    if raw is not None:
        attributes, bad = _parse_pairs(raw)
        if bad:
            problems.append(
                f"OTEL_RESOURCE_ATTRIBUTES: {', '.join(map(repr, bad))} is not key=value"
            )
    service = _get(environ, "OTEL_SERVICE_NAME")
    if service is None:
        service = dict(attributes).get("service.name") or "kingest"
    return service, attributes


def _integers(environ: Mapping[str, str], problems: list[str]) -> None:
    for variable in _INTEGER_VARIABLES:
        value = _get(environ, variable)
        if value is None:
            continue
        low = 1 if variable in _POSITIVE_VARIABLES else 0
        if not value.isdigit() or int(value) < low:
            kind = "a positive" if low else "a non-negative"
            problems.append(f"{variable}: {value!r} is not {kind} integer")


def parse_tracing_config(environ: Mapping[str, str]) -> tuple[TracingConfig, list[str]]:
    """The tracing set-up the environment describes, and every problem with it."""
    problems: list[str] = []
    exporters, reason = _exporters(environ, problems)
    # Every variable that is set is checked, used by the chosen exporters or not: a
    # mistake shows before the day the exporter changes.
    protocol = _protocol(environ, problems)
    endpoint = _endpoint(environ, protocol, problems)
    header_names = _otlp_details(environ, problems)
    sampler, ratio = _sampler(environ, problems)
    service, attributes = _resource(environ, problems)
    _integers(environ, problems)
    config = TracingConfig(
        exporters=exporters,
        exporters_reason=reason,
        protocol=protocol,
        endpoint=endpoint,
        header_names=header_names,
        sampler=sampler,
        sampler_ratio=ratio,
        service_name=service,
        resource_attributes=tuple(attributes),
    )
    return config, problems


def tracing_problems(environ: Mapping[str, str]) -> list[str]:
    """Every problem with the ``OTEL_*`` tracing variables (empty when they are valid)."""
    return parse_tracing_config(environ)[1]


def load_tracing_config(environ: Mapping[str, str]) -> TracingConfig:
    """The tracing set-up; raises :class:`TracingConfigError` listing every problem."""
    config, problems = parse_tracing_config(environ)
    if problems:
        raise TracingConfigError(problems)
    return config


def describe_tracing(config: TracingConfig) -> dict[str, str]:
    """The effective set-up as ``{variable: value}`` for ``kingest config`` (no secrets:
    header values and URL passwords are redacted)."""
    exporters = ",".join(config.exporters) or "none"
    shown = {"OTEL_TRACES_EXPORTER": f"{exporters} ({config.exporters_reason})"}
    if config.otlp:
        shown["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"] = config.protocol
        shown["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = redact_url(config.endpoint)
        if config.header_names:
            shown["OTEL_EXPORTER_OTLP_HEADERS"] = ",".join(
                f"{name}={REDACTED}" for name in config.header_names
            )
    sampler = config.sampler
    if config.sampler_ratio is not None:
        sampler += f" ({config.sampler_ratio:g})"
    shown["OTEL_TRACES_SAMPLER"] = sampler
    shown["OTEL_SERVICE_NAME"] = config.service_name
    if config.resource_attributes:
        shown["OTEL_RESOURCE_ATTRIBUTES"] = ",".join(
            f"{key}={value}" for key, value in config.resource_attributes
        )
    return shown
