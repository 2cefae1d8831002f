"""docs/troubleshooting.md stays true.

Every output block of the page must quote a message that exists in kingest's source (or a
metric kingest defines), every test the page names must exist, and each message the page
documents that no other test asserts is asserted here, by calling the code that produces
it. None of these tests needs a broker or a PostgreSQL server: unreachable peers are
closed local ports.
"""

from __future__ import annotations

import ast
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka import KafkaError
from typer.testing import CliRunner

from kingest import telemetry
from kingest.cli.commands import app
from kingest.config.loading import load_settings
from kingest.config.redaction import redact_conninfo
from kingest.dev import free_port
from kingest.pipeline.consumer import RunOutcome
from kingest.pipeline.writer import AbandonedError, WriterActor, _schema_error_text
from kingest.runtime import service
from kingest.runtime.service import StartupError, check_database, check_kafka
from kingest.telemetry import catalog
from kingest.telemetry import lag as lag_module
from kingest.telemetry.health import DatabaseProbe, HealthChecks
from kingest.telemetry.metrics import PartitionState, PipelineState
from kingest.telemetry.stats import PipelineStats

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "troubleshooting.md"
PASSWORD = "tr0ubleshoot-Pa55"

#: Distinctive fragments of kingest's messages: each output block of the page must
#: contain one, and each must occur in kingest/ (a message kingest really prints).
FRAGMENTS = (
    "invalid configuration",
    ": unknown variable",
    " (did you mean ",
    "cannot reach Kafka at ",
    "(last client error: ",
    "invalid Kafka client configuration: ",
    "topics not found on ",
    "cannot use PostgreSQL at ",
    "is missing migrations ",
    "run `kingest migrate` first",
    "run `kingest schema apply`",
    "PostgreSQL rejected kingest's SQL (",
    "is the schema migrated? run `kingest migrate`",
    " lacks privileges on the database at ",
    "the database role lacks a privilege (see docs/security.md for the grants)",
    "transient database error, retrying in ",
    "PostgreSQL unreachable: ",
    "oldest unacknowledged message ",
    "drain deadline passed; abandoning in-flight work (it will be redelivered)",
    "received: draining (send it again to exit at once)",
    "kingest stopped: ",
    "dead letters by stage and error class",
    "dead-lettered (UTC)",
    "today's verdict (decode, validate, map; nothing written)",
    "total lag: ",
    "cannot serve /metrics, /healthz and /readyz on ",
    "set KINGEST_DATABASE_PREPARED_STATEMENTS=false to start",
)

ENV = {
    "KINGEST_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092",
    "KINGEST_TOPICS": "ml-events",
    "KINGEST_GROUP_ID": "kingest",
    "KINGEST_DATABASE_URL": "postgresql://kingest@db.internal/ml",
}


def output_blocks() -> list[str]:
    """The page's fenced ``text`` and ``json`` blocks: what kingest prints."""
    return re.findall(r"^```(?:text|json)\n(.*?)^```$", DOC.read_text(), re.M | re.S)


def kingest_source() -> str:
    return "\n".join(p.read_text() for p in sorted((ROOT / "kingest").rglob("*.py")))


# ------------------------------------------------------------------------ the page itself


def test_every_output_block_quotes_a_message_kingest_prints() -> None:
    source = kingest_source()
    absent = [fragment for fragment in FRAGMENTS if fragment not in source]
    assert not absent, f"no longer in kingest/ (update docs/troubleshooting.md): {absent}"
    metric_names = {spec.prometheus_name for spec in catalog.ALL}
    blocks = output_blocks()
    assert len(blocks) >= 10
    for block in blocks:
        quoted = [f for f in FRAGMENTS if f in block]
        metrics = [name for name in metric_names if re.search(rf"^{name}\{{", block, re.M)]
        assert quoted or metrics, (
            "an output block of docs/troubleshooting.md quotes no message of kingest/ "
            f"(add its distinctive fragment to FRAGMENTS):\n{block}"
        )


def test_every_test_the_page_names_exists() -> None:
    text = DOC.read_text()
    named = re.findall(r"`(tests/[\w/]+\.py)(?:::(\w+))?`", text)
    named += [(None, name) for name in re.findall(r"`::(\w+)`", text)]
    assert len(named) >= 20
    defined: set[str] = set()
    for path in {p for p, _ in named if p}:
        assert (ROOT / path).is_file(), path
        tree = ast.parse((ROOT / path).read_text())
        defined |= {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    missing = sorted({name for _, name in named if name and name not in defined})
    assert not missing, f"docs/troubleshooting.md names tests that do not exist: {missing}"


# ------------------------------------------------------------------------ 1. configuration


def test_the_invalid_configuration_of_entry_1_prints_the_documented_lines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in [n for n in os.environ if n.startswith("KINGEST_")]:
        monkeypatch.delenv(name)
    env = {
        "KINGEST_KAFKA_BOOTSTRAP_SERVERS": "kafka-1",
        "KINGEST_TOPICS": "ml-events",
        "KINGEST_WRITERS": "four",
        "KINGEST_DRAIN_TIMEOUT_S": "soon",
        "KINGEST_KAFKA_AUTO_OFFSET_RESET": "sometimes",
        "KINGEST_WRITER": "8",
        "KINGEST_DATABASE_URL": f"postgresql://kingest:{PASSWORD}@db/ml?sslmod=verify-full",
    }
    result = CliRunner().invoke(app, ["start"], env=env)
    assert result.exit_code == 2, result.output
    documented = next(b for b in output_blocks() if b.startswith("kingest: invalid configuration"))
    printed = [line.rstrip() for line in result.output.splitlines() if line.strip()]
    assert printed == documented.rstrip("\n").splitlines()
    assert PASSWORD not in result.output


# ------------------------------------------------------------------------ 2. Kafka


def test_an_unreachable_broker_is_one_message_with_the_client_error() -> None:
    port = free_port("127.0.0.1")
    bootstrap = f"127.0.0.1:{port}"
    settings = load_settings({**ENV, "KINGEST_KAFKA_BOOTSTRAP_SERVERS": bootstrap})
    with pytest.raises(StartupError) as raised:
        check_kafka(settings, timeout_s=1.0)
    message = str(raised.value)
    assert message.startswith(f"cannot reach Kafka at {bootstrap}: Failed to get metadata: ")
    assert "(last client error: " in message
    assert "Connection refused" in message


def test_the_last_client_error_is_the_most_telling_one() -> None:
    errors = service._ClientErrors()
    assert errors.reason() == ""
    errors.on_error(KafkaError(KafkaError._TRANSPORT, "b:9092/bootstrap: Connection refused"))
    errors.on_error(KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"))
    assert errors.reason() == " (last client error: b:9092/bootstrap: Connection refused)"


@pytest.mark.parametrize(
    ("variables", "reason"),
    [
        ({"KINGEST_RDKAFKA_SSL_CA_LOCATIONS": "/etc/kingest/ca.pem"}, '"ssl.ca.locations"'),
        ({"KINGEST_RDKAFKA_SECURITY_PROTOCOL": "SASL_TLS"}, '"security.protocol"'),
    ],
)
def test_a_property_librdkafka_rejects_is_a_configuration_error(
    variables: dict[str, str], reason: str
) -> None:
    settings = load_settings({**ENV, **variables})
    with pytest.raises(StartupError) as raised:
        check_kafka(settings, timeout_s=1.0)
    assert str(raised.value).startswith("invalid Kafka client configuration: ")
    assert reason in str(raised.value)
    assert raised.value.exit_code == 2


# ------------------------------------------------------------------------ 4-6. PostgreSQL


def test_an_unreachable_database_is_one_redacted_message() -> None:
    port = free_port("127.0.0.1")
    url = f"postgresql://kingest:{PASSWORD}@127.0.0.1:{port}/ml"
    with pytest.raises(StartupError) as raised:
        check_database(load_settings({**ENV, "KINGEST_DATABASE_URL": url}))
    message = str(raised.value)
    assert message.startswith(
        f"cannot use PostgreSQL at user=kingest password=**redacted** dbname=ml "
        f"host=127.0.0.1 port={port}: connection failed: "
    )
    assert "Connection refused" in message
    assert PASSWORD not in message


def test_a_database_missing_migrations_says_to_run_migrate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(service, "pending_migrations", lambda url: ["0003", "0004"])
    with pytest.raises(StartupError) as raised:
        check_database(load_settings(ENV))
    assert str(raised.value) == (
        f"the database at {redact_conninfo(ENV['KINGEST_DATABASE_URL'])} is missing "
        "migrations 0003, 0004: run `kingest migrate` first"
    )


class _Rows(list[tuple[str, ...]]):
    def fetchone(self) -> tuple[str, ...] | None:
        return self[0] if self else None


class _PrivilegeConnection:
    """Answers the start-up check's two queries like a role without some grants."""

    def execute(self, query: str, params: Any = None) -> _Rows:
        if "current_user" in query:
            return _Rows([("kingest_app",)])
        return _Rows(
            [
                ("kingest.inferences", "INSERT"),
                ("kingest.training_runs", "INSERT"),
                ("kingest.training_runs", "UPDATE"),
            ]
        )


def test_a_role_lacking_privileges_gets_them_listed(monkeypatch: pytest.MonkeyPatch) -> None:
    @contextmanager
    def connect(*args: Any, **kwargs: Any) -> Iterator[_PrivilegeConnection]:
        yield _PrivilegeConnection()

    monkeypatch.setattr(service, "pending_migrations", lambda url: [])
    monkeypatch.setattr(service, "catalog_gaps", lambda conn, catalog: [])
    monkeypatch.setattr(psycopg, "connect", connect)
    with pytest.raises(StartupError) as raised:
        check_database(load_settings(ENV))
    assert str(raised.value) == (
        f"role kingest_app lacks privileges on the database at "
        f"{redact_conninfo(ENV['KINGEST_DATABASE_URL'])}: INSERT on kingest.inferences; "
        "INSERT, UPDATE on kingest.training_runs "
        "(grant them as in docs/security.md, 'Least-privilege roles')"
    )


def test_a_database_without_the_catalogs_tables_says_to_apply_the_schema(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    @contextmanager
    def connect(*args: Any, **kwargs: Any) -> Iterator[_PrivilegeConnection]:
        yield _PrivilegeConnection()

    gaps = [f"team.t{n}" for n in range(11)] + ["team.t.new_column"]
    monkeypatch.setattr(service, "pending_migrations", lambda url: [])
    monkeypatch.setattr(service, "catalog_gaps", lambda conn, catalog: gaps)
    monkeypatch.setattr(psycopg, "connect", connect)
    with pytest.raises(StartupError) as raised:
        check_database(load_settings(ENV))
    assert raised.value.exit_code == 1
    assert str(raised.value) == (
        f"the database at {redact_conninfo(ENV['KINGEST_DATABASE_URL'])} lacks the catalog's "
        + ", ".join(gaps[:10])
        + " and 2 more: run `kingest schema apply`"
    )


def test_schema_and_privilege_errors_at_runtime_say_what_to_do() -> None:
    missing = psycopg.errors.UndefinedTable('relation "kingest.metrics" does not exist')
    assert _schema_error_text(missing) == (
        'PostgreSQL rejected kingest\'s SQL (42P01: relation "kingest.metrics" does not '
        "exist); is the schema migrated? run `kingest migrate`"
    )
    denied = psycopg.errors.InsufficientPrivilege("permission denied for table metrics")
    assert _schema_error_text(denied) == (
        "PostgreSQL rejected kingest's SQL (42501: permission denied for table metrics); "
        "the database role lacks a privilege (see docs/security.md for the grants)"
    )


# ------------------------------------------------------------------------ 7. outage


class _DownPool:
    """A writers' pool whose database is gone; the first attempt also ends the wait."""

    def __init__(self, abandon: threading.Event) -> None:
        self._abandon = abandon

    @contextmanager
    def connection(self) -> Iterator[Any]:
        self._abandon.set()  # the retry's backoff returns at once: AbandonedError
        raise psycopg.OperationalError("connection to server failed: Connection refused")
        yield  # pragma: no cover


def test_a_transient_database_error_is_logged_with_its_backoff(
    caplog: pytest.LogCaptureFixture,
) -> None:
    abandon = threading.Event()
    writer = WriterActor(
        0,
        pool=_DownPool(abandon),  # type: ignore[arg-type]
        ack=lambda ack: None,
        stats=PipelineStats(),
        batch_size=10,
        retry_initial_s=0.2,
        retry_max_s=2.0,
        abandon=abandon,
    )
    with (
        caplog.at_level(logging.WARNING, logger="kingest.pipeline.writer"),
        pytest.raises(AbandonedError),
    ):
        writer._write_retrying(None)  # type: ignore[arg-type]
    messages = [r.getMessage() for r in caplog.records if r.name == "kingest.pipeline.writer"]
    assert len(messages) == 1, messages
    assert re.fullmatch(
        r"transient database error, retrying in \d+\.\d\ds \(attempt 1\): "
        r"connection to server failed: Connection refused",
        messages[0],
    ), messages


def test_readiness_names_an_unreachable_database_and_the_oldest_message() -> None:
    port = free_port("127.0.0.1")
    ok, detail = DatabaseProbe(f"postgresql://kingest@127.0.0.1:{port}/ml")()
    assert not ok
    assert detail.startswith("PostgreSQL unreachable: "), detail
    assert "Connection refused" in detail, detail

    class Source:
        def state(self) -> PipelineState:
            waiting = PartitionState(("ml-events", 0), 0, False, None, time.monotonic() - 120)
            return PipelineState((waiting,), phase="running", joined=True)

    settings = load_settings({**ENV, "KINGEST_HEALTH_MAX_UNACKED_AGE_S": "60"})
    report = HealthChecks(Source(), settings, database=lambda: (ok, detail)).readiness()
    body = report.as_json()
    assert body["failed"] == ["database", "progress"]
    assert body["checks"]["database"]["detail"] == detail
    assert re.fullmatch(
        r"oldest unacknowledged message consumed 12\d\.\d s ago \(limit 60 s\)",
        body["checks"]["progress"]["detail"],
    ), body


# ------------------------------------------------------------------------ 8. drain deadline


def test_an_abandoned_drain_is_exit_code_3() -> None:
    # service.run_service logs "kingest stopped: <outcome>" and returns int(outcome).
    assert int(RunOutcome.DRAIN_TIMEOUT) == 3
    assert RunOutcome.DRAIN_TIMEOUT.name.lower() == "drain_timeout"
    assert int(RunOutcome.DRAINED) == 0
    assert int(RunOutcome.FAILED) == 1


# ------------------------------------------------------------------------ 10. lag


def test_kingest_lag_prints_the_total(monkeypatch: pytest.MonkeyPatch) -> None:
    ends = {0: (998, 2268), 1: (1097, 2430), 2: (998, 2964), 3: (907, 2338)}

    def group_lag(*args: Any, **kwargs: Any) -> list[lag_module.PartitionLag]:
        return [
            lag_module.PartitionLag("ml-events", p, committed, 0, end)
            for p, (committed, end) in ends.items()
        ]

    monkeypatch.setattr(telemetry, "group_lag", group_lag)  # what `kingest lag` calls
    result = CliRunner().invoke(
        app, ["lag", "--group", "kingest", "--topic", "ml-events", "--bootstrap-servers", "b:1"]
    )
    assert result.exit_code == 0, result.output
    assert "consumer group kingest" in result.output
    assert re.search(r"│ ml-events │ 2 +│ 998 +│ 2964 +│ 1966 │", result.output), result.output
    assert "total lag: 6000 messages" in result.output
