"""Shutdown while the database holds the writers back: the drain deadline and a second
signal both end the process with their documented exit codes, and lose nothing."""

from __future__ import annotations

import re
import signal
import socket
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kingest.dev.demo import committed_offsets
from kingest.dev.producer import produce_records
from kingest.dev.synth import SyntheticStream
from kingest.store.migrate import apply_migrations
from kingest.telemetry import catalog
from tests.integration.support import (
    KingestProcess,
    all_committed,
    assert_committed_are_stored,
    kingest_env,
    stored_event_ids,
    total_stored_rows,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PARTITIONS = 2
EVENTS = 10_000


@contextmanager
def metrics_table_locked(url: str) -> Iterator[None]:
    """Hold an exclusive lock on kingest.metrics: every write batch waits behind it."""
    with psycopg.connect(url) as conn:
        conn.execute("LOCK TABLE kingest.metrics IN ACCESS EXCLUSIVE MODE")
        yield
        conn.rollback()


def writers_waiting_on_a_lock(url: str) -> bool:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE application_name LIKE 'kingest:%' AND wait_event_type = 'Lock'"
        ).fetchone()
    return row is not None and row[0] > 0


@pytest.fixture
def stream(
    kafka_bootstrap: str, database_url: str, topic_factory: Callable[[int], str]
) -> tuple[str, dict[int, int], set[str]]:
    topic = topic_factory(PARTITIONS)
    apply_migrations(database_url)
    records = SyntheticStream(seed=11).take(EVENTS)
    report = produce_records(kafka_bootstrap, topic, records, count=len(records))
    assert report.delivered == EVENTS
    return topic, dict(report.end_offsets), {r.event_id for r in records}


@pytest.mark.parametrize(
    ("first", "drain_timeout", "expected_exit"),
    [
        pytest.param(signal.SIGINT, "3", 3, id="drain-deadline-passes-exit-3"),
        pytest.param(signal.SIGTERM, "120", 130, id="second-signal-forces-exit-130"),
    ],
)
def test_a_stuck_drain_ends_by_deadline_or_second_signal_and_loses_nothing(
    kafka_bootstrap: str,
    database_url: str,
    stream: tuple[str, dict[int, int], set[str]],
    tmp_path: Path,
    first: signal.Signals,
    drain_timeout: str,
    expected_exit: int,
) -> None:
    topic = stream[0]
    group = f"stuck-{expected_exit}"
    env = kingest_env(
        kafka_bootstrap,
        database_url,
        topic,
        group,
        KINGEST_DRAIN_TIMEOUT_S=drain_timeout,
        KINGEST_KAFKA_MAX_POLL_INTERVAL_MS="300000",
    )
    log = tmp_path / "kingest.log"
    with metrics_table_locked(database_url), KingestProcess(env, log) as kingest:
        wait_for(
            lambda: writers_waiting_on_a_lock(database_url),
            timeout=60,
            what=f"a writer blocked on the locked table (log: {log})",
        )
        kingest.signal(first)
        wait_for(lambda: "draining" in kingest.log, timeout=30, what="the drain to begin")
        if expected_exit == 130:
            assert kingest.proc.poll() is None, "exited although its writes are blocked"
            kingest.signal(signal.SIGTERM)
        assert kingest.wait(60) == expected_exit, kingest.log
    if expected_exit == 3:
        assert "drain deadline passed" in kingest.log
    else:
        assert "exiting without waiting" in kingest.log
    # Whatever was committed before the end is stored (nothing was, behind the lock).
    assert_committed_are_stored(database_url, kafka_bootstrap, group, topic, PARTITIONS)

    # A restart with the database free again stores everything exactly once.
    assert_a_restart_stores_everything_once(env, stream, tmp_path / "restart.log")


def assert_a_restart_stores_everything_once(
    env: dict[str, str], stream: tuple[str, dict[int, int], set[str]], log: Path
) -> None:
    """Run kingest again until every offset of ``stream`` is committed, stop it (exit 0),
    and check that PostgreSQL holds each event of ``stream`` exactly once."""
    bootstrap, group = env["KINGEST_KAFKA_BOOTSTRAP_SERVERS"], env["KINGEST_GROUP_ID"]
    topic, end_offsets, event_ids = stream
    with KingestProcess(env, log) as kingest:
        wait_for(
            lambda: all_committed(bootstrap, group, topic, end_offsets, PARTITIONS),
            timeout=120,
            what="every offset committed after the restart",
        )
        assert kingest.terminate_and_wait() == 0, kingest.log
    stored = stored_event_ids(env["KINGEST_DATABASE_URL"])
    assert set(stored) == event_ids
    assert max(stored.values()) == 1


def batches_in_flight(log: str) -> float:
    """The kingest.batches.in_flight gauge of the process whose log is ``log``."""
    match = re.search(r"serving /metrics, /healthz and /readyz on (http://127\.0\.0\.1:\d+)", log)
    if match is None:
        return 0.0
    with urllib.request.urlopen(f"{match.group(1)}/metrics", timeout=10) as response:
        text = response.read().decode()
    name = catalog.BATCHES_IN_FLIGHT.prometheus_name
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    )


def test_a_partition_blocked_on_the_full_writer_queue_at_the_deadline_exits_3(
    kafka_bootstrap: str,
    database_url: str,
    stream: tuple[str, dict[int, int], set[str]],
    tmp_path: Path,
) -> None:
    # One writer, a writers' queue of one batch and small batches: behind the locked
    # table the writer holds one batch, the queue another, and a third batch means that
    # its partition actor is blocked handing it over (batches count as in flight from
    # just before that hand-over). At the drain deadline it is still blocked there: the
    # work is abandoned, which is exit 3, not a failure.
    topic = stream[0]
    group = "blocked-partition"
    env = kingest_env(
        kafka_bootstrap,
        database_url,
        topic,
        group,
        KINGEST_DRAIN_TIMEOUT_S="2",
        KINGEST_WRITERS="1",
        KINGEST_WRITER_QUEUE_BATCHES="1",
        KINGEST_BATCH_SIZE="100",
    )
    log = tmp_path / "kingest.log"
    with metrics_table_locked(database_url), KingestProcess(env, log) as kingest:
        wait_for(
            lambda: batches_in_flight(kingest.log) >= 3,
            timeout=60,
            what=f"a partition actor blocked on the full writers' queue (log: {log})",
        )
        assert writers_waiting_on_a_lock(database_url)
        kingest.signal(signal.SIGTERM)
        assert kingest.wait(60) == 3, kingest.log
    assert "drain deadline passed" in kingest.log
    assert "failed" not in kingest.log, kingest.log
    assert_committed_are_stored(database_url, kafka_bootstrap, group, topic, PARTITIONS)

    assert_a_restart_stores_everything_once(env, stream, tmp_path / "restart.log")


@pytest.mark.parametrize("silent_peer", ["database", "kafka"])
def test_sigterm_while_a_start_up_check_waits_on_a_silent_peer_exits_0(
    kafka_bootstrap: str,
    database_url: str,
    stream: tuple[str, dict[int, int], set[str]],
    tmp_path: Path,
    silent_peer: str,
) -> None:
    # The peer accepts the TCP connection and never answers: once it has accepted,
    # kingest is known to be inside that start-up check, waiting (up to 60 s for the
    # database's connect timeout, 15 s for the broker's metadata). A SIGTERM then ends
    # the start-up at once, cleanly, with nothing consumed.
    topic, _, _ = stream
    group = f"stopped-at-start-{silent_peer}"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        silent.settimeout(60)
        port = silent.getsockname()[1]
        if silent_peer == "database":
            overrides = {
                "KINGEST_DATABASE_URL": f"postgresql://kingest@127.0.0.1:{port}/ml",
                "KINGEST_DATABASE_CONNECT_TIMEOUT_S": "60",
            }
        else:
            overrides = {"KINGEST_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}"}
        env = kingest_env(kafka_bootstrap, database_url, topic, group, **overrides)
        log = tmp_path / "kingest.log"
        with KingestProcess(env, log) as kingest:
            connection, _ = silent.accept()
            with connection:
                kingest.signal(signal.SIGTERM)
                started = time.monotonic()
                assert kingest.wait(60) == 0, kingest.log
                assert time.monotonic() - started < 10, "the stop waited for the check"
    assert "stop requested during start-up" in kingest.log, kingest.log
    # There is nothing to drain yet: the log says what happens instead.
    assert "SIGTERM received during start-up: stopping, nothing consumed" in kingest.log
    assert "draining" not in kingest.log, kingest.log
    assert "Traceback" not in kingest.log, kingest.log
    committed = committed_offsets(kafka_bootstrap, group, topic, PARTITIONS)
    assert all(offset < 0 for offset in committed.values()), committed
    assert total_stored_rows(database_url) == 0


def process_file(pid: int, name: str) -> str:
    """/proc/<pid>/<name>, or "" once the process has gone."""
    try:
        return Path(f"/proc/{pid}/{name}").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def catches(pid: int, signum: int) -> bool:
    """Whether the process has a handler for ``signum`` (the kernel's SigCgt mask)."""
    for line in process_file(pid, "status").splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (signum - 1)))
    return False


@pytest.mark.parametrize(
    ("args", "said"),
    [
        pytest.param((), "SIGTERM received during start-up", id="service"),
        pytest.param(("--processes", "2"), "SIGTERM received: stopping", id="supervisor"),
    ],
)
def test_sigterm_while_kingest_imports_its_dependencies_exits_0(
    kafka_bootstrap: str,
    database_url: str,
    stream: tuple[str, dict[int, int], set[str]],
    tmp_path: Path,
    args: tuple[str, ...],
    said: str,
) -> None:
    # Importing the command line, configuring logging and tracing take most of a second
    # before the service's handlers are in place. The kernel shows when the process is
    # in there: confluent-kafka's extension is mapped into it while kingest.cli.commands's imports
    # run. A SIGTERM from then on is a stop request: exit 0, nothing consumed.
    topic, _, _ = stream
    group = f"stopped-while-importing-{len(args)}"
    env = kingest_env(kafka_bootstrap, database_url, topic, group)
    log = tmp_path / "kingest.log"
    with KingestProcess(env, log, *args) as kingest:
        pid = kingest.proc.pid
        wait_for(
            lambda: (
                "confluent_kafka" in process_file(pid, "maps") or kingest.proc.poll() is not None
            ),
            timeout=30,
            interval=0.001,
            what="kingest importing confluent-kafka",
        )
        handled = catches(pid, signal.SIGTERM)
        kingest.signal(signal.SIGTERM)
        assert kingest.wait(60) == 0, kingest.log
    assert handled, "no SIGTERM handler while kingest imports its dependencies"
    assert "kingest starting" not in kingest.log, kingest.log
    assert said in kingest.log, kingest.log
    assert "Traceback" not in kingest.log, kingest.log
    committed = committed_offsets(kafka_bootstrap, group, topic, PARTITIONS)
    assert all(offset < 0 for offset in committed.values()), committed
    assert total_stored_rows(database_url) == 0
