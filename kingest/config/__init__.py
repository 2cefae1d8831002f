"""Settings: what kingest is told, checked once, before anything starts.

Contract: :func:`load_settings` turns an environment (``KINGEST_*``, ``KINGEST_RDKAFKA_*``
and the standard ``OTEL_*`` tracing variables) into one immutable :class:`Settings`, or
raises :class:`ConfigError` listing every problem at once. Nothing else in kingest reads
the environment for configuration. The catalog the settings name (``KINGEST_CATALOG``,
``KINGEST_TOPIC_TYPES``, ``KINGEST_DATABASE_SCHEMA``) is loaded and checked with them,
and kept as :attr:`Settings.catalog` (a :class:`kingest.catalog.Catalog`, loaded once).
The redaction rules (what is secret in a conninfo or a librdkafka property) and the
generated reference (``kingest config --reference``) live here too, beside the settings
they describe.

* :mod:`kingest.config.settings`: the settings classes, one field per variable with its
  description and value check (the single declaration everything below reads);
* :mod:`kingest.config.loading`: from the environment to :class:`Settings`, every
  problem at once, and the ``KINGEST_RDKAFKA_*`` pass-through;
* :mod:`kingest.config.redaction`: secret conninfo parameters and librdkafka properties,
  hidden for display and scrubbed out of error text;
* :mod:`kingest.config.reference`: the Markdown reference of every variable;
* :mod:`kingest.config.otel`: the ``OTEL_*`` tracing variables (:class:`TracingConfig`).
"""

from __future__ import annotations

from kingest.config.loading import COMMAND_VARIABLES, load_settings, rdkafka_properties
from kingest.config.otel import TracingConfig, describe_tracing, load_tracing_config, redact_url
from kingest.config.redaction import (
    REDACTED,
    conninfo_secrets,
    effective_settings,
    redact_conninfo,
    redact_property,
    safe_error_text,
)
from kingest.config.reference import reference_markdown
from kingest.config.settings import (
    BadEntriesError,
    ConfigError,
    Settings,
    dead_letter_topic,
    parse_topic_types,
)

__all__ = [
    "COMMAND_VARIABLES",
    "REDACTED",
    "BadEntriesError",
    "ConfigError",
    "Settings",
    "TracingConfig",
    "conninfo_secrets",
    "dead_letter_topic",
    "describe_tracing",
    "effective_settings",
    "load_settings",
    "load_tracing_config",
    "parse_topic_types",
    "rdkafka_properties",
    "redact_conninfo",
    "redact_property",
    "redact_url",
    "reference_markdown",
    "safe_error_text",
]
