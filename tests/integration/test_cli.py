"""The `kingest` command line against real services."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from typer.testing import CliRunner

from kingest.cli.commands import app
from kingest.store.migrate import load_migrations
from tests.catalog_support import EXAMPLE_PROTO, compile_catalog, compile_example_catalog
from tests.integration.support import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_migrate_applies_once_then_reports_up_to_date(runner: CliRunner, database_url: str) -> None:
    first = runner.invoke(app, ["migrate"], env={"KINGEST_DATABASE_URL": database_url})
    assert first.exit_code == 0, first.output
    assert f"applied {len(load_migrations())} migrations" in first.output
    second = runner.invoke(app, ["migrate", "--database-url", database_url])
    assert second.exit_code == 0
    assert "database is up to date" in second.output


def test_migrate_with_a_catalog_also_applies_its_tables_once(
    runner: CliRunner, database_url: str, tmp_path: Path
) -> None:
    catalog = compile_example_catalog(tmp_path)
    env = {
        "KINGEST_DATABASE_URL": database_url,
        "KINGEST_CATALOG": str(catalog),
        "KINGEST_DATABASE_SCHEMA": "llm",
    }
    first = runner.invoke(app, ["migrate"], env=env)
    assert first.exit_code == 0, first.output
    assert f"applied {len(load_migrations())} migrations" in first.output
    assert re.search(r"applied \d+ statements; recorded catalog [0-9a-f]{12}", first.output)
    second = runner.invoke(app, ["migrate"], env=env)
    assert second.exit_code == 0, second.output
    assert "database is up to date" in second.output
    assert "the database already holds the catalog" in second.output
    bad = runner.invoke(app, ["migrate", "--catalog", str(tmp_path / "none.binpb")], env=env)
    assert bad.exit_code == 2, bad.output
    assert "no such file" in bad.output


def test_migrate_reports_an_unreachable_database_without_a_traceback(runner: CliRunner) -> None:
    url = "postgresql://kingest:hunter2@127.0.0.1:1/nowhere?connect_timeout=2"
    result = runner.invoke(app, ["migrate", "--database-url", url])
    assert result.exit_code == 1
    assert "kingest migrate failed" in result.output
    assert "hunter2" not in result.output
    assert "Traceback" not in result.output


def test_config_prints_the_effective_values_as_json_with_secrets_redacted(
    runner: CliRunner,
) -> None:
    env = {
        "KINGEST_KAFKA_BOOTSTRAP_SERVERS": "kafka:9092",
        "KINGEST_TOPICS": "ml-events",
        "KINGEST_GROUP_ID": "kingest",
        "KINGEST_DATABASE_URL": "postgresql://u:topsecret@db/ml",
        "KINGEST_RDKAFKA_SASL_PASSWORD": "also-secret",
    }
    result = runner.invoke(app, ["config", "--json"], env=env)
    assert result.exit_code == 0, result.output
    values = json.loads(result.output)
    assert values["KINGEST_TOPICS"] == "ml-events"
    assert values["KINGEST_KAFKA_ASSIGNMENT_STRATEGY"] == "roundrobin"
    assert "topsecret" not in result.output
    assert "also-secret" not in result.output
    table = runner.invoke(app, ["config"], env=env)
    assert table.exit_code == 0
    assert "KINGEST_GROUP_ID" in table.output


def test_config_exits_2_on_bad_configuration(runner: CliRunner) -> None:
    result = runner.invoke(app, ["config"], env={"KINGEST_WRITERS": "-1"})
    assert result.exit_code == 2
    assert "KINGEST_WRITERS: must be between 1 and 256" in result.output


def test_version(runner: CliRunner) -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.startswith("kingest ")


def test_produce_writes_the_requested_events(
    runner: CliRunner, kafka_bootstrap: str, topic_factory: Callable[[int], str]
) -> None:
    topic = topic_factory(3)
    result = runner.invoke(
        app,
        ["produce", "--count", "3000", "--topic", topic, "--bootstrap-servers", kafka_bootstrap],
    )
    assert result.exit_code == 0, result.output
    assert "delivered 3000 of 3000 events" in result.output


def test_demo_ingests_its_stream_and_stops_cleanly(runner: CliRunner) -> None:
    result = runner.invoke(
        app, ["demo", "--count", "4000", "--partitions", "2", "--exit-when-done"]
    )
    assert result.exit_code == 0, result.output
    assert "inferences" in result.output
    assert "inference and metric rows:" in result.output
    assert "kingest stopped (exit code 0)" in result.output


def test_sigterm_stops_the_demo_and_everything_it_started(tmp_path: Path) -> None:
    """As Ctrl-C does: kingest drains, the broker and PostgreSQL stop, nothing is left."""
    output = tmp_path / "demo.out"
    with output.open("wb") as out:
        demo = subprocess.Popen(
            [sys.executable, "-m", "kingest", "demo", "--count", "2000", "--partitions", "2"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(
            lambda: b"Press Ctrl-C" in output.read_bytes() or demo.poll() is not None,
            timeout=120,
            what="the demo to ingest its stream",
        )
        started = psutil.Process(demo.pid).children(recursive=True)
        assert started  # kingest start, the broker, PostgreSQL and its backends
        demo.send_signal(signal.SIGTERM)
        assert demo.wait(60) == 0, output.read_text(errors="replace")[-3000:]
    finally:
        if demo.poll() is None:
            demo.kill()
    assert "kingest stopped (exit code 0)" in output.read_text(errors="replace")
    _, alive = psutil.wait_procs(started, timeout=10)
    assert not alive, [process.name() for process in alive]


TOPIC_TYPES = (
    "gpu-samples:llmserving.v1.GpuUtilizationSample,datasets:llmserving.v1.DatasetVersionCreated"
)


@pytest.mark.parametrize(
    ("proto", "topic_types", "expected"),
    [
        (
            "events.proto",
            None,
            {"prompt_completions": 100, "guardrail_hits": 100, "feedback": 100},
        ),
        (
            "topics.proto",
            TOPIC_TYPES,
            {"gpu_utilization_sample": 300, "dataset_version_created": 300},
        ),
    ],
    ids=["envelope", "typed-topics"],
)
def test_demo_ingests_a_catalogs_messages_into_its_schema(
    runner: CliRunner,
    tmp_path: Path,
    proto: str,
    topic_types: str | None,
    expected: dict[str, int],
) -> None:
    """Envelope mode (the envelope's events in turn) and per-topic mode, each table filled."""
    if proto == "events.proto":
        catalog = compile_example_catalog(tmp_path)
    else:  # a catalog without envelope: the typed topics' file alone
        catalog = tmp_path / "topics.binpb"
        name = f"llmserving/v1/{proto}"
        catalog.write_bytes(compile_catalog(tmp_path, {name: (EXAMPLE_PROTO / name).read_text()}))
    types = [] if topic_types is None else ["--topic-types", topic_types]
    result = runner.invoke(
        app,
        [
            *("demo", "--catalog", str(catalog), "--count", "300", "--partitions", "2"),
            *("--schema", "llm", "--exit-when-done", *types),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "schema llm" in result.output
    for table, rows in expected.items():
        assert re.search(rf"│ {table}\s+│ {rows}\s+│", result.output), result.output
    assert re.search(r"│ kingest\.dead_letters\s+│ 0\s+│", result.output), result.output
    assert "kingest stopped (exit code 0)" in result.output
