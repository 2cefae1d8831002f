"""Redaction: what is secret in the configuration, and how it is kept out of output.

Two kinds of secret reach kingest. A libpq connection string may carry a password (and
other secret parameters: the TLS key's passphrase, an OAuth client secret, SCRAM keys);
which parameters are secret is ours plus whatever the linked libpq marks as such
(:func:`secret_conninfo_parameters`). A librdkafka property is secret when its *name*
says so (``sasl.password``, ``ssl.key.pem``...), since there are too many to list.

:func:`redact_conninfo` and :func:`redact_property` replace such values by
:data:`REDACTED` for display (``kingest config``, :func:`effective_settings`).
:func:`conninfo_secrets` lists the secret values themselves, as libpq reads them and as
they are written in a URL, so that an error message quoting the string can be scrubbed
(:func:`safe_error_text`) and the log filter can blank them wherever they appear.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from psycopg import pq
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from kingest.config.settings import Settings, settings_fields, topic_types_text

REDACTED = "**redacted**"

# librdkafka properties whose values are secrets (matched on the property name).
_SECRET_PROPERTY = re.compile(r"(password|secret|jaas|token|\.pem$|private)", re.IGNORECASE)
# libpq parameters whose values are secrets, whatever the libpq linked: the password,
# the passphrase of the TLS key, the OAuth client secret and the SCRAM keys (which
# libpq marks as debug options, not as secrets, but which log in like a password).
_SECRET_CONNINFO_PARAMETERS = frozenset(
    {"password", "sslpassword", "oauth_client_secret", "scram_client_key", "scram_server_key"}
)


@cache
def secret_conninfo_parameters() -> frozenset[str]:
    """The libpq parameters whose values are secrets: ours, and those the linked libpq
    itself marks as secrets (``PQconndefaults`` display character ``*``)."""
    try:
        marked = {
            option.keyword.decode()
            for option in pq.Conninfo.get_defaults()
            if option.dispchar == b"*"
        }
    except Exception:  # a libpq without PQconndefaults: ours are the known ones
        marked = set()
    return _SECRET_CONNINFO_PARAMETERS | marked


def conninfo_secrets(conninfo: str) -> list[str]:
    """Every secret value of a connection string, as libpq reads it and, in a URL, as
    written there (percent-encoded), longest first; raises when it does not parse."""
    names = secret_conninfo_parameters()
    secrets = {
        str(value) for name, value in conninfo_to_dict(conninfo).items() if name in names and value
    }
    if conninfo.startswith(("postgresql://", "postgres://")):
        try:
            url = urlsplit(conninfo)
            written = [url.password or ""]
        except ValueError:  # libpq took it, urllib does not: the read values remain
            url, written = None, []
        if url is not None:
            for item in url.query.split("&"):
                name, _, value = item.partition("=")
                if unquote(name) in names:
                    written.append(value)
        secrets.update(value for value in written if value)
    return sorted(secrets, key=len, reverse=True)


def redact_conninfo(url: str) -> str:
    """The connection string with every secret parameter (password, sslpassword...)
    replaced; never raises."""
    try:
        params = conninfo_to_dict(url)
    except Exception:
        return REDACTED
    for name in secret_conninfo_parameters().intersection(params):
        params[name] = REDACTED
    return make_conninfo("", **params)


def safe_error_text(error: BaseException, conninfo: str) -> str:
    """The first line of ``error`` (raised while using ``conninfo``), safe to print.

    libpq quotes the connection string, or the token it could not parse, in some parse
    errors (``invalid percent-encoded token: "pa%zzss"``), password included. When the
    string does not parse, only a generic description is returned; otherwise every
    secret parameter's value (:func:`conninfo_secrets`) is blanked wherever it appears.
    """
    try:
        secrets = conninfo_secrets(conninfo)
    except Exception:
        return "not a valid libpq URL or key=value connection string"
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else type(error).__name__
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    return text


def redact_property(name: str, value: str) -> str:
    """The value of a librdkafka property, hidden when its name marks it as a secret."""
    return REDACTED if _SECRET_PROPERTY.search(name) else value


def effective_settings(settings: Settings) -> dict[str, Any]:
    """The configuration as ``{variable: value}`` with every secret redacted."""
    result: dict[str, Any] = {}
    for path, field in settings_fields():
        value: Any = settings
        for part in path:
            value = getattr(value, part)
        env = field.metadata["env"]
        if env == "KINGEST_RDKAFKA_*":
            for name, prop in sorted(value.items()):
                result[f"KINGEST_RDKAFKA_{name.replace('_', '__').replace('.', '_').upper()}"] = (
                    redact_property(name, prop)
                )
            continue
        if env == "KINGEST_DATABASE_URL":
            value = redact_conninfo(value)
        elif env == "KINGEST_TOPIC_TYPES":
            value = topic_types_text(value)
        elif isinstance(value, tuple):
            value = ",".join(value)
        elif isinstance(value, Path):
            value = str(value)
        elif value is None and env == "KINGEST_CATALOG":
            value = ""  # as the variable is written for the built-in catalog
        result[env] = value
    result["KINGEST_LOG_LEVEL"] = settings.log_level
    result["KINGEST_LOG_FORMAT"] = settings.log_format
    return result
