"""Helpers for end-to-end tests: run kingest (in-process or as a real process), inspect
what PostgreSQL holds and what Kafka has committed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from kingest.config.loading import load_settings
from kingest.dev import FAST_GROUP_SETTINGS, committed_offsets, database_url_for
from kingest.pipeline.consumer import Pipeline, RunOutcome


def kingest_env(
    bootstrap: str, database_url: str, topic: str, group: str, **overrides: str
) -> dict[str, str]:
    """KINGEST_* variables for a test instance: fast group joins, small batches."""
    env = {
        "KINGEST_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KINGEST_TOPICS": topic,
        "KINGEST_GROUP_ID": group,
        "KINGEST_DATABASE_URL": database_url,
        "KINGEST_KAFKA_SESSION_TIMEOUT_MS": FAST_GROUP_SETTINGS["session.timeout.ms"],
        "KINGEST_KAFKA_HEARTBEAT_INTERVAL_MS": FAST_GROUP_SETTINGS["heartbeat.interval.ms"],
        "KINGEST_KAFKA_MAX_POLL_INTERVAL_MS": "30000",
        "KINGEST_DRAIN_TIMEOUT_S": "20",
        "KINGEST_COMMIT_INTERVAL_MS": "200",
        "KINGEST_LOG_LEVEL": "INFO",
        # Several instances run at once: each serves /metrics on a free local port.
        "KINGEST_HTTP_HOST": "127.0.0.1",
        "KINGEST_HTTP_PORT": "0",
    }
    env.update(overrides)
    return env


@contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    """A new, empty database on the server of ``server_url``, dropped afterwards."""
    name = f"kt_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield database_url_for(server_url, name)
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def wait_for(
    condition: Callable[[], bool], *, timeout: float, interval: float = 0.2, what: str = ""
) -> None:
    """Poll ``condition`` until it holds; fail the test with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(interval)


class InProcessKingest:
    """The pipeline running on a thread of the test process (coverage, speed)."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.pipeline = Pipeline(load_settings(env))
        self.outcome: RunOutcome | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="kingest-under-test")

    def _run(self) -> None:
        try:
            self.outcome = self.pipeline.run()
        except BaseException as error:
            self.error = error
            raise

    def __enter__(self) -> InProcessKingest:
        self._thread.start()
        return self

    def stop(self, timeout: float = 60) -> RunOutcome | None:
        self.pipeline.request_stop()
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "pipeline did not stop"
        if self.error is not None:
            raise self.error
        return self.outcome

    def __exit__(self, *exc: object) -> None:
        if self._thread.is_alive():
            self.stop()


class KingestProcess:
    """``kingest start`` as a real child process, configured only by environment."""

    def __init__(self, env: Mapping[str, str], log_path: Path, *args: str) -> None:
        self.log_path = log_path
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("KINGEST_")}
        full_env.update(env)
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kingest", "start", *args],
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 60) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def terminate_and_wait(self, timeout: float = 60) -> int:
        self.signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        self._log.close()

    def __enter__(self) -> KingestProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.kill()


# ---------------------------------------------------------------------------- PostgreSQL


def stored_event_ids(url: str) -> Counter[str]:
    """How many rows each event id has across the append-only fact tables."""
    counts: Counter[str] = Counter()
    with psycopg.connect(url) as conn:
        for table in fact_tables(url):
            for (event_id,) in conn.execute(f"SELECT event_id::text FROM kingest.{table}"):
                counts[event_id] += 1
    return counts


def fact_tables(url: str) -> list[str]:
    """Event tables whose event_id is unique (one row per event), i.e. the fact tables."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT DISTINCT tc.table_name FROM information_schema.table_constraints tc "
            "JOIN information_schema.constraint_column_usage ccu "
            "USING (constraint_schema, constraint_name) "
            "WHERE tc.table_schema = 'kingest' AND tc.constraint_type IN ('PRIMARY KEY', 'UNIQUE') "
            "AND ccu.column_name = 'event_id' ORDER BY 1"
        ).fetchall()
    return [row[0] for row in rows]


def stored_offsets(url: str) -> dict[int, set[int]]:
    """kafka_offset values stored per partition (facts and dead letters together)."""
    result: dict[int, set[int]] = {}
    with psycopg.connect(url) as conn:
        for table in [*fact_tables(url), "dead_letters"]:
            for partition, offset in conn.execute(
                f"SELECT kafka_partition, kafka_offset FROM kingest.{table}"
            ):
                result.setdefault(partition, set()).add(offset)
    return result


def count_rows(url: str, table: str, where: str = "true", params: Iterable[Any] = ()) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            f"SELECT count(*) FROM kingest.{table} WHERE {where}", tuple(params)
        ).fetchone()
    assert row is not None
    return int(row[0])


def total_stored_rows(url: str) -> int:
    return sum(count_rows(url, table) for table in fact_tables(url)) + count_rows(
        url, "dead_letters"
    )


# ---------------------------------------------------------------------------- Kafka


def all_committed(
    bootstrap: str, group: str, topic: str, end_offsets: Mapping[int, int], partitions: int
) -> bool:
    committed = committed_offsets(bootstrap, group, topic, partitions)
    return all(committed.get(p, -1) >= end for p, end in end_offsets.items())


def assert_committed_are_stored(
    url: str, bootstrap: str, group: str, topic: str, partitions: int
) -> dict[int, int]:
    """Invariant 1 (docs/design.md): every offset below each committed offset is stored in
    PostgreSQL."""
    committed = committed_offsets(bootstrap, group, topic, partitions)
    stored = stored_offsets(url)
    for partition, offset in committed.items():
        if offset < 0:
            continue
        missing = set(range(offset)) - stored.get(partition, set())
        assert not missing, (
            f"partition {partition}: committed {offset} but {len(missing)} offsets missing"
        )
    return committed
