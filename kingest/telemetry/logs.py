"""Logging set-up: JSON lines for machines, a readable console format for people.

Every record carries, when there is one:

* ``trace_id`` and ``span_id``: the current OpenTelemetry span (lower-case hex, as in a
  W3C ``traceparent``), so a log line leads to its trace in Jaeger or Tempo;
* ``correlation_id``: the correlation id of the work being done, from the context the
  actors propagate (or passed with ``extra=``);
* ``topic``, ``partition``, ``offset``: passed with ``extra=`` by the log calls about a
  message or a batch (for a batch, ``offset`` is its first offset).

A JSON line always has ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message``,
``trace_id``, ``span_id``, ``correlation_id`` (null when unknown) and ``thread``, then any
other ``extra=`` field, then ``exc_info`` when there is a traceback. The console format
appends the fields that are set as ``key=value`` after the message.

Secret values (the database password and every other secret libpq parameter, secret
``KINGEST_RDKAFKA_*`` properties) handed to
:func:`configure_logging` are replaced by ``**redacted**`` wherever they would appear in
a line, traceback included.

The filter and formatters run only when a record is emitted; nothing here is on the
per-message path (no per-message log calls exist).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Final, TextIO
from urllib.parse import quote

from opentelemetry import trace
from pythonjsonlogger.json import JsonFormatter

from actors import CorrelationLogFilter
from kingest.config import REDACTED, Settings, conninfo_secrets, redact_property

__all__ = [
    "CONTEXT_FIELDS",
    "JSON_FIELDS",
    "MESSAGE_FIELDS",
    "ConsoleLogFormatter",
    "JsonLogFormatter",
    "LogContextFilter",
    "configure_logging",
    "secret_values",
]

#: Trace and correlation fields every record gets (None when unknown).
CONTEXT_FIELDS: Final = ("trace_id", "span_id", "correlation_id")
#: Fields of log calls about a message or a batch, passed with ``extra=``.
MESSAGE_FIELDS: Final = ("topic", "partition", "offset")
#: Keys of every JSON line, in order (other ``extra=`` fields follow).
JSON_FIELDS: Final = ("time", "level", "logger", "message", *CONTEXT_FIELDS, "thread")

#: Secrets shorter than this are not searched for: replacing every occurrence of a
#: one- or two-character string would make the logs unreadable.
MIN_SECRET_LENGTH: Final = 4

_RECORD_FIELDS: Final = ("asctime", "levelname", "name", "message", *CONTEXT_FIELDS, "threadName")
_RENAMES: Final = {
    "asctime": "time",
    "levelname": "level",
    "name": "logger",
    "threadName": "thread",
}
_CONSOLE_FORMAT: Final = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
#: Attributes every LogRecord has: anything else on a record came from ``extra=``.
_STANDARD_ATTRIBUTES: Final = frozenset(
    logging.LogRecord("", logging.INFO, "", 0, "", None, None).__dict__
) | {"message", "asctime"}
_CONSOLE_FIRST: Final = (*MESSAGE_FIELDS, "correlation_id", "trace_id", "span_id")


class LogContextFilter(CorrelationLogFilter):
    """Sets ``correlation_id``, ``trace_id`` and ``span_id`` on every record.

    The ids come from the current OpenTelemetry context of the logging thread (the
    actors attach the sender's context around ``receive``), unless the call passed them
    with ``extra=``. Ids of an invalid (non-recording, never started) span are None.
    The filter never drops a record.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        super().filter(record)
        if getattr(record, "trace_id", None) is None:
            span_context = trace.get_current_span().get_span_context()
            if span_context.is_valid:
                record.trace_id = format(span_context.trace_id, "032x")
                record.span_id = format(span_context.span_id, "016x")
            else:
                record.trace_id = None
                record.span_id = None
        elif getattr(record, "span_id", None) is None:
            record.span_id = None
        return True


class _Redactor:
    """Replaces each secret, as written or escaped (repr, URL, JSON), by REDACTED."""

    def __init__(self, secrets: Iterable[str]) -> None:
        forms: set[str] = set()
        for secret in secrets:
            if len(secret) >= MIN_SECRET_LENGTH:
                # As written, inside a repr() (a dict or tuple shown as text), in a URL,
                # and each of those as escaped inside a JSON string.
                written = {secret, repr(secret)[1:-1], quote(secret, safe="")}
                forms.update(written)
                forms.update(json.dumps(form)[1:-1] for form in written)
        # Longest first, so a secret containing another one is replaced whole.
        self._forms = sorted(forms, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for form in self._forms:
            if form in text:
                text = text.replace(form, REDACTED)
        return text


class JsonLogFormatter(JsonFormatter):
    """One JSON object per line: :data:`JSON_FIELDS`, then ``extra=`` fields."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__(list(_RECORD_FIELDS), rename_fields=dict(_RENAMES))
        self._redact = _Redactor(secrets)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        moment = datetime.fromtimestamp(record.created, UTC)
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def format(self, record: logging.LogRecord) -> str:
        return self._redact(super().format(record))


class ConsoleLogFormatter(logging.Formatter):
    """``time LEVEL logger: message key=value ...``: the ids and ``extra=`` fields that are
    set, message coordinates first; a traceback follows on the next lines."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__(_CONSOLE_FORMAT)
        self._redact = _Redactor(secrets)

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802
        line = super().formatMessage(record)
        fields = record.__dict__
        names = [name for name in _CONSOLE_FIRST if fields.get(name) is not None]
        names.extend(
            name
            for name, value in fields.items()
            if value is not None
            and name not in _STANDARD_ATTRIBUTES
            and name not in _CONSOLE_FIRST
            and not name.startswith("_")
        )
        if not names:
            return line
        return f"{line}  " + " ".join(f"{name}={_console_value(fields[name])}" for name in names)

    def format(self, record: logging.LogRecord) -> str:
        return self._redact(super().format(record))


def _console_value(value: Any) -> str:
    """A field value on one line, quoted when it holds spaces."""
    text = str(value).replace("\n", "\\n")
    return f'"{text}"' if not text or any(char.isspace() for char in text) else text


def secret_values(settings: Settings) -> list[str]:
    """The values in ``settings`` that must never appear in a log line."""
    secrets = [
        value
        for name, value in settings.kafka.properties.items()
        if redact_property(name, value) != value
    ]
    try:
        database = conninfo_secrets(settings.database.url)
    except Exception:  # an unparsable URL was refused by the configuration already
        database = []
    secrets.extend(secret for secret in database if secret not in secrets)
    return secrets


def configure_logging(
    level: str = "INFO",
    fmt: str = "console",
    stream: TextIO | None = None,
    *,
    secrets: Iterable[str] = (),
) -> None:
    """Route the root logger to ``stream`` (stderr) in the chosen format, replacing handlers.

    ``fmt`` is ``json`` (one object per line) or ``console``; ``secrets`` are values to
    redact from every line (see :func:`secret_values`).
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(LogContextFilter())
    secrets = tuple(secrets)
    formatter: logging.Formatter = (
        JsonLogFormatter(secrets) if fmt == "json" else ConsoleLogFormatter(secrets)
    )
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    # librdkafka's own lines reach the `kingest.librdkafka` logger (the clients' `logger`
    # property) and go through this handler like any other record.
    logging.getLogger("psycopg.pool").setLevel(max(logging.WARNING, root.level))
