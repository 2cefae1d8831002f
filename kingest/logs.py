"""Logging set-up: JSON lines for machines, a readable console format for people.

Every record carries the correlation id of the message being handled (from the actor's
propagated context) when there is one.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

from pythonjsonlogger.json import JsonFormatter

from actors import CorrelationLogFilter

__all__ = ["configure_logging"]

_CONSOLE_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
_JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(message)s %(threadName)s %(correlation_id)s"


def configure_logging(
    level: str = "INFO", fmt: str = "console", stream: TextIO | None = None
) -> None:
    """Route the root logger to ``stream`` (stderr) in the chosen format, replacing handlers."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(CorrelationLogFilter())
    if fmt == "json":
        handler.setFormatter(
            JsonFormatter(
                _JSON_FIELDS,
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                timestamp=False,
            )
        )
    else:
        handler.setFormatter(logging.Formatter(_CONSOLE_FORMAT))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    # librdkafka's own chatter is forwarded by the client only at WARNING and above.
    logging.getLogger("psycopg.pool").setLevel(max(logging.WARNING, root.level))
