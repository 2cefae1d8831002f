"""`kingest start` as a real process: signals, crashes, restarts and group sharing."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from kingest.dev.demo import committed_total
from kingest.dev.producer import ProduceReport, produce_records
from kingest.dev.synth import SyntheticStream
from kingest.store.migrate import apply_migrations
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

PARTITIONS = 6
EVENTS = 60_000


class BackgroundProducer:
    """Produces a stream at a steady rate while the test interrupts kingest."""

    def __init__(self, bootstrap: str, topic: str, seed: int, count: int, rate: float) -> None:
        self.records = SyntheticStream(seed=seed).take(count)
        self.report: ProduceReport | None = None
        self._thread = threading.Thread(
            target=self._run, args=(bootstrap, topic, rate), name="test-producer"
        )
        self._thread.start()

    def _run(self, bootstrap: str, topic: str, rate: float) -> None:
        self.report = produce_records(
            bootstrap, topic, self.records, count=len(self.records), rate=rate
        )

    def join(self) -> ProduceReport:
        self._thread.join(120)
        assert self.report is not None
        assert self.report.delivered == len(self.records)
        return self.report


def run_to_completion(
    env: dict[str, str], log: Path, bootstrap: str, topic: str, report: ProduceReport
) -> None:
    """Start kingest, wait until every produced offset is committed, stop it cleanly."""
    with KingestProcess(env, log) as kingest:
        wait_for(
            lambda: all_committed(
                bootstrap, env["KINGEST_GROUP_ID"], topic, report.end_offsets, PARTITIONS
            ),
            timeout=120,
            what=f"all offsets committed (log: {log})",
        )
        assert kingest.terminate_and_wait() == 0, kingest.log


def assert_exactly_once(url: str, producer: BackgroundProducer) -> None:
    stored = stored_event_ids(url)
    expected = {record.event_id for record in producer.records}
    assert len(expected - set(stored)) == 0, "events lost"
    assert set(stored) == expected
    assert max(stored.values()) == 1, "events doubled"


@pytest.mark.parametrize("interruption", ["sigterm", "sigkill"])
def test_interrupted_mid_stream_then_restarted_loses_and_doubles_nothing(
    interruption: str,
    kafka_bootstrap: str,
    database_url: str,
    topic_factory: Callable[[int], str],
    tmp_path: Path,
) -> None:
    topic = topic_factory(PARTITIONS)
    apply_migrations(database_url)
    group = f"interrupted-{interruption}"
    env = kingest_env(kafka_bootstrap, database_url, topic, group)

    with KingestProcess(env, tmp_path / "first.log") as first:
        # The stream starts once kingest consumes, so that however long its start-up
        # takes on this machine, the interruption comes a quarter into the stream.
        wait_for(lambda: "assigned" in first.log, timeout=60, what="partitions assigned")
        producer = BackgroundProducer(kafka_bootstrap, topic, seed=11, count=EVENTS, rate=8_000)
        wait_for(
            lambda: committed_total(kafka_bootstrap, group, topic, PARTITIONS) >= EVENTS // 4,
            timeout=90,
            what="a quarter of the stream committed",
        )
        if interruption == "sigterm":
            assert first.terminate_and_wait() == 0, first.log
            assert "kingest stopped: drained" in first.log
        else:
            first.proc.send_signal(signal.SIGKILL)
            assert first.wait() == -signal.SIGKILL

    # Whatever was committed before the interruption is durable (invariant 1 of docs/design.md).
    assert_committed_are_stored(database_url, kafka_bootstrap, group, topic, PARTITIONS)
    stored_before_restart = total_stored_rows(database_url)
    assert stored_before_restart < EVENTS, "the interruption came too late to mean anything"

    report = producer.join()
    run_to_completion(env, tmp_path / "second.log", kafka_bootstrap, topic, report)
    assert_exactly_once(database_url, producer)
    assert_committed_are_stored(database_url, kafka_bootstrap, group, topic, PARTITIONS)


def test_two_processes_in_one_group_share_the_partitions(
    kafka_bootstrap: str,
    database_url: str,
    topic_factory: Callable[[int], str],
    tmp_path: Path,
) -> None:
    topic = topic_factory(PARTITIONS)
    apply_migrations(database_url)
    env = kingest_env(kafka_bootstrap, database_url, topic, "shared")
    with (
        KingestProcess(env, tmp_path / "a.log") as a,
        KingestProcess(env, tmp_path / "b.log") as b,
    ):
        wait_for(
            lambda: "assigned" in a.log and "assigned" in b.log,
            timeout=60,
            what="both members assigned partitions",
        )
        producer = BackgroundProducer(kafka_bootstrap, topic, seed=21, count=EVENTS, rate=30_000)
        report = producer.join()
        wait_for(
            lambda: all_committed(kafka_bootstrap, "shared", topic, report.end_offsets, PARTITIONS),
            timeout=120,
            what="all offsets committed",
        )
        assert a.terminate_and_wait() == 0, a.log
        assert b.terminate_and_wait() == 0, b.log
    assert_exactly_once(database_url, producer)
    # Both members did real work.
    for member in (a, b):
        consumed = re.search(r"stopped: (\d+) messages consumed", member.log)
        assert consumed is not None, member.log
        assert int(consumed.group(1)) > 0, member.log


def test_bad_configuration_exits_2_listing_every_problem(tmp_path: Path) -> None:
    env = {"KINGEST_TOPICS": "bad topic", "KINGEST_WRITERS": "zero", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-m", "kingest", "start"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    for variable in (
        "KINGEST_KAFKA_BOOTSTRAP_SERVERS",
        "KINGEST_GROUP_ID",
        "KINGEST_DATABASE_URL",
        "KINGEST_TOPICS",
        "KINGEST_WRITERS",
    ):
        assert variable in result.stderr
    assert "Traceback" not in result.stderr


def test_unmigrated_database_is_refused_before_consuming(
    kafka_bootstrap: str, database_url: str, topic_factory: Callable[[int], str], tmp_path: Path
) -> None:
    topic = topic_factory(2)
    env = kingest_env(kafka_bootstrap, database_url, topic, "unmigrated")
    with KingestProcess(env, tmp_path / "kingest.log") as kingest:
        assert kingest.wait() == 1
    assert "run `kingest migrate`" in kingest.log
    assert "Traceback" not in kingest.log
