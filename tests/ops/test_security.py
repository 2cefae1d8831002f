"""Security properties that can regress silently: how SQL is built, and where secrets go.

1. SQL. Every statement kingest runs takes its values as parameters (``%s``/``%b``) or
   is composed with ``psycopg.sql``; no value is ever formatted into SQL text. A scan of
   the source (the AST, not regular expressions over text) fails on SQL built from
   f-strings, ``%`` or ``+`` concatenation, or ``str.format`` anywhere in ``kingest/``,
   except in :mod:`kingest.store.tables`, which generates the write statements from
   its own constant table definitions at import time: the tests below prove that its
   identifiers are plain names and that the statements never change with the data.
2. Secrets. The database password and secret librdkafka properties never appear in
   ``kingest config`` output, configuration errors or start-up failures (see
   docs/security.md).
"""

from __future__ import annotations

import ast
import io
import json
import logging
import re
import socket
from pathlib import Path

import psycopg
import pytest
from typer.testing import CliRunner

from kingest.cli.commands import app
from kingest.config.loading import load_settings
from kingest.config.redaction import (
    REDACTED,
    effective_settings,
    redact_conninfo,
    redact_property,
    safe_error_text,
)
from kingest.config.settings import ConfigError
from kingest.runtime.service import StartupError, check_database
from kingest.store import tables
from kingest.store.dead_letter_sql import INSERT_DEAD_LETTER
from kingest.store.rows import RowBatch
from kingest.telemetry.logs import configure_logging, secret_values
from tests.fakes import FakeRecord
from tests.poison_corpus import CORPUS_NOW, build_corpus

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted((ROOT / "kingest").rglob("*.py")) + sorted((ROOT / "actors").rglob("*.py"))
PASSWORD = "pa55-W0rd-h1-secret"

# ----------------------------------------------------------------------------- SQL


#: Modules allowed to build SQL text from Python strings, and why.
GENERATED_SQL_MODULES = {
    "kingest/store/tables.py": "write statements generated once from the catalog's tables",
    "kingest/store/dead_letter_sql.py": "dead-letter statements built from constant names",
    "kingest/catalog/ddl.py": "DDL of the operator's catalog: identifiers through "
    "quote_identifier, text through quote_literal",
    "kingest/store/schema_plan.py": "DDL that evolves the operator's catalog: identifiers "
    "through quote_identifier, column definitions from catalog.ddl, constraint definitions "
    "as PostgreSQL printed them",
}
# SQL keywords are upper case throughout kingest (a convention this scan relies on, so
# that English messages such as f"{path} is {value}, where ..." are not taken for SQL).
_SQL_START = re.compile(
    r"^\s*\(?\s*(SELECT|INSERT|UPDATE|DELETE|WITH|CREATE|DROP|ALTER|GRANT|SET|COPY|"
    r"TRUNCATE|LOCK|COMMENT)\b"
)
_SQL_INSIDE = re.compile(
    r"\b(SELECT .*FROM|INSERT INTO|UPDATE \S+ SET|DELETE FROM|ON CONFLICT|WHERE|ORDER BY)\b"
)
_EXECUTING_METHODS = {"execute", "executemany", "copy", "stream"}


def _literal_text(node: ast.AST) -> str:
    """The constant string parts of an f-string, a concatenation or a str constant."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(_literal_text(value) for value in node.values)
    if isinstance(node, ast.BinOp):
        return _literal_text(node.left) + _literal_text(node.right)
    return ""


def _looks_like_sql(text: str) -> bool:
    return bool(_SQL_START.search(text) or _SQL_INSIDE.search(text))


def _is_dynamic_string(node: ast.AST) -> bool:
    """An f-string with a value in it, ``"..." % x``, ``"..." + x`` or ``"...".format()``."""
    if isinstance(node, ast.JoinedStr):
        return any(isinstance(value, ast.FormattedValue) for value in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod | ast.Add):
        return bool(_literal_text(node))
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "format"
        and isinstance(node.func.value, ast.Constant)
        and isinstance(node.func.value.value, str)
    )


def _dynamic_sql(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, reason) for every SQL text built from Python values."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if _is_dynamic_string(node) and isinstance(node, ast.expr):
            text = node.func.value.value if isinstance(node, ast.Call) else _literal_text(node)  # type: ignore[attr-defined]
            if _looks_like_sql(text):
                found.append((node.lineno, f"SQL built from values: {text[:60]!r}"))
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in _EXECUTING_METHODS
            and node.args
            and _is_dynamic_string(node.args[0])
        ):
            found.append((node.lineno, f".{node.func.attr}() of a formatted string"))
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "SQL"
            and node.args
            and _is_dynamic_string(node.args[0])
        ):
            found.append((node.lineno, "sql.SQL() of a formatted string (use sql.Identifier)"))
    return found


def test_no_sql_is_built_from_values_outside_the_generated_statements() -> None:
    problems = []
    for path in SOURCES:
        relative = path.relative_to(ROOT).as_posix()
        if relative in GENERATED_SQL_MODULES or "/v1/" in relative:
            continue
        for line, reason in _dynamic_sql(ast.parse(path.read_text(), relative)):
            problems.append(f"{relative}:{line}: {reason}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    "source",
    [
        'conn.execute(f"SELECT * FROM t WHERE id = {x}")',
        'conn.execute("SELECT * FROM t WHERE id = %s" % x)',
        'conn.execute("DELETE FROM t WHERE id = " + x)',
        'query = "UPDATE t SET a = {}".format(x)',
        'query = f"INSERT INTO kingest.{table} (a) VALUES (1)"',
        "cursor.executemany(f'INSERT INTO t VALUES ({v})', rows)",
        'q = sql.SQL(f"SELECT {column} FROM t")',
    ],
)
def test_the_scan_catches_each_way_of_building_sql_from_values(source: str) -> None:
    assert _dynamic_sql(ast.parse(source))


@pytest.mark.parametrize(
    "source",
    [
        'conn.execute("SELECT * FROM t WHERE id = %s", (x,))',
        'conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("kingest", t)))',
        'log.info(f"stored {count} rows in {table}")',
        'message = f"{path} is {value}, allowed {allowed}"',
    ],
)
def test_the_scan_accepts_parameters_composition_and_plain_messages(source: str) -> None:
    assert not _dynamic_sql(ast.parse(source))


_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*")


def test_generated_statements_use_only_plain_identifiers() -> None:
    """The built-in catalog's names in SQL text are plain lower-case identifiers."""
    for table in tables.FACT_TABLES:
        assert _IDENTIFIER.fullmatch(table.name)
        for column in table.columns:
            assert _IDENTIFIER.fullmatch(column.name), column
    assert all(_IDENTIFIER.fullmatch(table.schema) for table in tables.FACT_TABLES)


def test_generated_statements_carry_values_only_as_parameters() -> None:
    """Each statement has one array parameter per column, and hostile data changes no SQL:
    the plan is built at import time, before any event exists."""
    for statement in tables.WRITE_PLAN:
        columns = sum(len(table.columns) for table in statement.fact_tables)
        assert statement.sql.count("%b") == columns
        assert "%s" not in statement.sql
        assert "%(" not in statement.sql
    assert INSERT_DEAD_LETTER.count("%s") >= 10
    plan_before = [statement.sql for statement in tables.WRITE_PLAN]
    rows = RowBatch(now=CORPUS_NOW)
    rows.add_records(
        FakeRecord(case.value, offset=n, headers=list(case.headers) or None)
        for n, case in enumerate(build_corpus())
    )
    assert rows.event_count > 0
    assert [statement.sql for statement in tables.WRITE_PLAN] == plan_before


# ----------------------------------------------------------------------------- secrets

URL_FORMS = [
    f"postgresql://kingest:{PASSWORD}@db.internal:5432/ml?sslmode=verify-full",
    f"postgresql://kingest:{PASSWORD.replace('-', '%2D')}@db.internal/ml",
    f"host=db.internal user=kingest password={PASSWORD} dbname=ml sslmode=require",
    f"host=db.internal user=kingest password='{PASSWORD}' dbname=ml",
    f"postgresql:///ml?host=/run/postgresql&user=kingest&password={PASSWORD}",
]


@pytest.mark.parametrize("url", URL_FORMS)
def test_redact_conninfo_removes_the_password_in_every_form(url: str) -> None:
    redacted = redact_conninfo(url)
    assert PASSWORD not in redacted
    assert PASSWORD.replace("-", "%2D") not in redacted
    assert REDACTED in redacted
    assert "db.internal" in redacted or "/run/postgresql" in redacted


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://kingest:{PASSWORD}@[db.internal/ml",  # libpq quotes this URI whole
        f"postgresql://kingest:{PASSWORD}%zz@db.internal/ml",  # ... and this token
        f"password='{PASSWORD} host=db",  # unterminated quote
    ],
)
def test_an_unparsable_conninfo_is_hidden_whole(url: str) -> None:
    assert redact_conninfo(url) == REDACTED


SECRET_PROPERTIES = [
    "sasl.password",
    "ssl.key.password",
    "ssl.keystore.password",
    "ssl.key.pem",
    "sasl.oauthbearer.client.secret",
    "sasl.oauthbearer.assertion.private.key.passphrase",
    "sasl.oauthbearer.assertion.private.key.pem",
]
PUBLIC_PROPERTIES = ["sasl.username", "sasl.mechanisms", "security.protocol", "ssl.ca.location"]


@pytest.mark.parametrize("name", SECRET_PROPERTIES)
def test_secret_librdkafka_properties_are_redacted(name: str) -> None:
    assert redact_property(name, PASSWORD) == REDACTED


@pytest.mark.parametrize("name", PUBLIC_PROPERTIES)
def test_public_librdkafka_properties_are_shown(name: str) -> None:
    assert redact_property(name, "value") == "value"


def _variable(prop: str) -> str:
    return "KINGEST_RDKAFKA_" + prop.replace("_", "__").replace(".", "_").upper()


def _env(**extra: str) -> dict[str, str]:
    env = {
        "KINGEST_KAFKA_BOOTSTRAP_SERVERS": "kafka:9092",
        "KINGEST_TOPICS": "ml-events",
        "KINGEST_GROUP_ID": "kingest",
        "KINGEST_DATABASE_URL": URL_FORMS[0],
    }
    env.update({_variable(name): f"{PASSWORD}-{n}" for n, name in enumerate(SECRET_PROPERTIES)})
    env[_variable("sasl.username")] = "kingest-user"
    env.update(extra)
    return env


def test_effective_settings_hold_no_secret() -> None:
    values = effective_settings(load_settings(_env()))
    assert PASSWORD not in json.dumps(values)
    assert values[_variable("sasl.username")] == "kingest-user"
    for name in SECRET_PROPERTIES:
        assert values[_variable(name)] == REDACTED


@pytest.mark.parametrize("as_json", [True, False])
def test_kingest_config_prints_no_secret(as_json: bool) -> None:
    result = CliRunner().invoke(app, ["config", *(["--json"] if as_json else [])], env=_env())
    assert result.exit_code == 0, result.output
    assert PASSWORD not in result.output
    assert REDACTED in result.output


@pytest.mark.parametrize(
    "bad",
    [
        {"KINGEST_DATABASE_URL": f"postgresql://kingest:{PASSWORD}@[db/ml"},
        {"KINGEST_DATABASE_URL": f"postgresql://kingest:{PASSWORD}%zz@db/ml"},
        {"KINGEST_DATABASE_URL": f"host=db password={PASSWORD} no_such_option=1"},
        {"KINGEST_DATABASE_PASSWORD": PASSWORD},  # unknown variable: its value is not shown
        {_variable("bootstrap.servers"): PASSWORD},  # refused pass-through property
    ],
)
def test_configuration_errors_print_no_secret(bad: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(_env(**bad))
    assert PASSWORD not in "\n".join(caught.value.problems)
    result = CliRunner().invoke(app, ["start"], env=_env(**bad))
    assert result.exit_code == 2
    assert PASSWORD not in result.output


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_a_failed_database_check_names_the_server_without_the_password() -> None:
    url = f"postgresql://kingest:{PASSWORD}@127.0.0.1:{_closed_port()}/ml"
    settings = load_settings(_env(KINGEST_DATABASE_URL=url))
    with pytest.raises(StartupError) as caught:
        check_database(settings)
    assert "127.0.0.1" in str(caught.value)
    assert PASSWORD not in str(caught.value)


def test_kingest_migrate_prints_no_password_of_an_unparsable_url() -> None:
    url = f"postgresql://kingest:{PASSWORD}@[db.internal/ml"
    result = CliRunner().invoke(app, ["migrate", "--database-url", url])
    assert result.exit_code == 1
    assert PASSWORD not in result.output


# Every libpq parameter that holds a secret, not only `password`: the TLS key passphrase,
# the OAuth client secret and the SCRAM keys, however the connection string spells them.
SSL_PASSWORD = "ssl-Key-pa55phrase"
FULLY_ENCODED = "".join(f"%{byte:02X}" for byte in SSL_PASSWORD.encode())
PARTLY_ENCODED = SSL_PASSWORD.replace("-", "%2d")
#: (connection string, the secret as libpq reads it, the secret as written in the string)
SECRET_PARAMETER_FORMS = [
    (
        f"postgresql://kingest@db.internal/ml?sslmode=verify-full&sslpassword={SSL_PASSWORD}",
        SSL_PASSWORD,
        SSL_PASSWORD,
    ),
    (
        f"postgresql://kingest@db.internal/ml?sslpassword={FULLY_ENCODED}&sslmode=require",
        SSL_PASSWORD,
        FULLY_ENCODED,
    ),
    (f"postgresql://db.internal/ml?sslpassword={PARTLY_ENCODED}", SSL_PASSWORD, PARTLY_ENCODED),
    (f"host=db.internal user=kingest sslpassword={SSL_PASSWORD} dbname=ml", SSL_PASSWORD, ""),
    (f"host=db.internal sslpassword='{SSL_PASSWORD}' password={PASSWORD}", SSL_PASSWORD, ""),
    (f"postgresql://db.internal/ml?oauth_client_secret={SSL_PASSWORD}", SSL_PASSWORD, ""),
    (f"postgresql://db.internal/ml?scram_client_key={SSL_PASSWORD}", SSL_PASSWORD, ""),
    (f"host=db.internal scram_server_key={SSL_PASSWORD}", SSL_PASSWORD, ""),
]
SECRET_PARAMETER_IDS = [
    "url",
    "url-encoded",
    "url-partly-encoded",
    "key-value",
    "key-value-quoted",
    "oauth-client-secret",
    "scram-client-key",
    "scram-server-key",
]


def _forms(read: str, written: str) -> list[str]:
    return [form for form in (read, written, PASSWORD) if form]


@pytest.mark.parametrize(
    ("url", "read", "written"), SECRET_PARAMETER_FORMS, ids=SECRET_PARAMETER_IDS
)
def test_redact_conninfo_removes_every_secret_parameter(url: str, read: str, written: str) -> None:
    redacted = redact_conninfo(url)
    for form in _forms(read, written):
        assert form not in redacted
    assert REDACTED in redacted
    assert "db.internal" in redacted


@pytest.mark.parametrize(
    ("url", "read", "written"), SECRET_PARAMETER_FORMS, ids=SECRET_PARAMETER_IDS
)
def test_an_error_quoting_a_secret_parameter_is_blanked(url: str, read: str, written: str) -> None:
    error = psycopg.OperationalError(
        f'connection failed: could not load private key "{read}" from {written or read}'
    )
    text = safe_error_text(error, url)
    for form in _forms(read, written):
        assert form not in text
    assert text.startswith("connection failed: could not load private key")


@pytest.mark.parametrize(
    ("url", "read", "written"), SECRET_PARAMETER_FORMS, ids=SECRET_PARAMETER_IDS
)
def test_kingest_config_prints_no_secret_parameter(url: str, read: str, written: str) -> None:
    result = CliRunner().invoke(app, ["config", "--json"], env=_env(KINGEST_DATABASE_URL=url))
    assert result.exit_code == 0, result.output
    for form in _forms(read, written):
        assert form not in result.output


@pytest.mark.parametrize(
    ("url", "read", "written"), SECRET_PARAMETER_FORMS, ids=SECRET_PARAMETER_IDS
)
def test_log_lines_show_no_secret_parameter(url: str, read: str, written: str) -> None:
    stream = io.StringIO()
    settings = load_settings(_env(KINGEST_DATABASE_URL=url))
    configure_logging("INFO", "console", stream, secrets=secret_values(settings))
    try:
        logging.getLogger("kingest.test").error("cannot connect with %s: %s", url, read)
    finally:
        configure_logging("INFO", "console")
    for form in _forms(read, written):
        assert form not in stream.getvalue()


def test_a_failed_connection_names_the_server_without_any_secret_parameter() -> None:
    port = _closed_port()
    for url in (
        f"postgresql://kingest@127.0.0.1:{port}/ml?sslmode=disable&sslpassword={SSL_PASSWORD}",
        f"host=127.0.0.1 port={port} dbname=ml sslmode=disable sslpassword={FULLY_ENCODED}",
    ):
        with pytest.raises(StartupError) as caught:
            check_database(load_settings(_env(KINGEST_DATABASE_URL=url)))
        assert "127.0.0.1" in str(caught.value)
        assert SSL_PASSWORD not in str(caught.value)
        assert FULLY_ENCODED not in str(caught.value)
        result = CliRunner().invoke(app, ["migrate", "--database-url", url])
        assert result.exit_code == 1
        assert "127.0.0.1" in result.output
        assert SSL_PASSWORD not in result.output
        assert FULLY_ENCODED not in result.output
