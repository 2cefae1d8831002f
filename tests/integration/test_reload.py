"""`kingest start --reload` end to end: a code change restarts a real pipeline, which
drains first and resumes where it committed, so the stream is stored exactly once."""

from __future__ import annotations

import re
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from kingest.dev.demo import committed_total
from kingest.store.migrate import apply_migrations
from tests.integration.support import (
    KingestProcess,
    all_committed,
    assert_committed_are_stored,
    kingest_env,
    wait_for,
)
from tests.integration.test_bad_config import start
from tests.integration.test_process import BackgroundProducer, assert_exactly_once

PARTITIONS = 2
STARTED = re.compile(r"child 0 started: pid (\d+)")
ASSIGNED = re.compile(r"assigned [1-9]\d* partitions")


def test_reload_options_are_checked_with_the_configuration(tmp_path: Path) -> None:
    env = {"KINGEST_TOPICS": "bad topic"}
    result = start(env, "--reload", "--reload-dir", str(tmp_path / "gone"))
    assert result.returncode == 2
    assert f"--reload-dir {tmp_path / 'gone'}: not a directory" in result.stderr
    assert "KINGEST_TOPICS" in result.stderr  # listed together with the other problems
    result = start(env, "--reload-dir", str(tmp_path))
    assert result.returncode == 2
    assert "--reload-dir: only with --reload" in result.stderr


@pytest.mark.integration
@pytest.mark.slow
def test_a_code_change_restarts_the_pipeline_without_losing_or_doubling_events(
    kafka_bootstrap: str,
    database_url: str,
    topic_factory: Callable[[int], str],
    tmp_path: Path,
) -> None:
    topic = topic_factory(PARTITIONS)
    apply_migrations(database_url)
    group = "reloading"
    code = tmp_path / "code"
    code.mkdir()
    env = kingest_env(kafka_bootstrap, database_url, topic, group)
    log_path = tmp_path / "kingest.log"
    with KingestProcess(env, log_path, "--reload", "--reload-dir", str(code)) as kingest:
        wait_for(lambda: ASSIGNED.search(kingest.log), timeout=60, what="partitions assigned")
        # The stream keeps flowing across the restart.
        producer = BackgroundProducer(kafka_bootstrap, topic, seed=5, count=6_000, rate=1_500)
        wait_for(
            lambda: committed_total(kafka_bootstrap, group, topic, PARTITIONS) >= 1_000,
            timeout=60,
            what="part of the stream committed",
        )
        (code / "handlers.py").write_text("CHANGED = True\n")
        wait_for(
            lambda: len(STARTED.findall(kingest.log)) == 2,
            timeout=60,
            what="the pipeline started again",
        )
        first, second = STARTED.findall(kingest.log)
        before = kingest.log.split(f"started: pid {second}", 1)[0]
        assert "1 files changed" in before
        assert "handlers.py" in before
        assert f"child 0 (pid {first}) stopped with exit code 0" in before
        wait_for(
            lambda: ASSIGNED.search(kingest.log.split(f"started: pid {second}", 1)[1]),
            timeout=60,
            what="the new pipeline assigned partitions",
        )
        report = producer.join()
        wait_for(
            lambda: all_committed(kafka_bootstrap, group, topic, report.end_offsets, PARTITIONS),
            timeout=90,
            what="all offsets committed",
        )
        kingest.signal(signal.SIGINT)  # as Ctrl-C in a terminal
        assert kingest.wait(60) == 0, kingest.log
        log = kingest.log
    assert "Traceback" not in log
    assert log.count("stopped with exit code 0") == 2
    assert_exactly_once(database_url, producer)
    assert_committed_are_stored(database_url, kafka_bootstrap, group, topic, PARTITIONS)
