"""`kingest start --processes N`: the supervisor's rules, its loop driven with stand-in
children, the command line, and two real pipelines under one supervisor."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import psutil
import pytest

from kingest.config.loading import load_settings
from kingest.dev.demo import committed_total
from kingest.runtime.supervisor import (
    EXIT_FORCED,
    MAX_PROCESSES,
    SUPERVISOR_VARIABLES,
    ChangeSource,
    ProcessSupervisor,
    RestartHistory,
    RestartPolicy,
    aggregate_exit_codes,
    child_environment,
    child_http_port,
    describe_exit,
    http_port_problem,
    process_index,
    start_problems,
)
from kingest.store.migrate import apply_migrations
from tests.integration.support import (
    KingestProcess,
    all_committed,
    assert_committed_are_stored,
    kingest_env,
    wait_for,
)
from tests.integration.test_process import BackgroundProducer, assert_exactly_once

BASE_ENV = {
    "KINGEST_KAFKA_BOOTSTRAP_SERVERS": "broker:9092",
    "KINGEST_TOPICS": "events",
    "KINGEST_GROUP_ID": "kingest",
    "KINGEST_DATABASE_URL": "postgresql://kingest@db/ml",
}


# --------------------------------------------------------------------------- pure logic


def test_backoff_doubles_from_1s_to_30s() -> None:
    policy = RestartPolicy()
    assert [policy.backoff_s(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 30, 30, 30]
    assert policy.backoff_s(10_000) == 30


def test_restart_history_resets_after_a_stable_run_and_stops_a_crash_loop() -> None:
    history = RestartHistory(RestartPolicy())
    assert history.record_exit(ran_s=0.5, now=0) == 1
    assert history.record_exit(ran_s=0.5, now=2) == 2
    assert history.record_exit(ran_s=0.5, now=5) == 4
    # Ran a minute: the backoff starts again from 1 s (still counted for the crash loop).
    assert history.record_exit(ran_s=61, now=70) == 1
    assert history.record_exit(ran_s=0.5, now=72) == 2
    # A sixth restart within five minutes is a crash loop.
    assert history.record_exit(ran_s=0.5, now=75) is None
    # Once the oldest restarts leave the window, restarting is allowed again.
    assert history.record_exit(ran_s=0.5, now=301) is not None


@pytest.mark.parametrize(
    ("codes", "expected"),
    [
        ([0, 0, 0], 0),
        ([], 0),
        ([0, 3], 3),
        ([3, 3], 3),
        ([0, 1], 1),
        ([3, 1], 1),  # a failure outranks a drain timeout
        ([0, -signal.SIGKILL], 1),
        ([0, 2], 1),
        ([0, 130], 1),
        ([0, -signal.SIGTERM], 0),  # stopped before it began consuming
    ],
)
def test_exit_codes_of_the_children_make_the_supervisors(codes: list[int], expected: int) -> None:
    assert aggregate_exit_codes(codes) == expected


def test_describe_exit_names_the_signal() -> None:
    assert describe_exit(1) == "exit code 1"
    assert describe_exit(-signal.SIGKILL) == "signal SIGKILL"


def test_each_child_gets_its_own_port_client_id_and_index() -> None:
    settings = load_settings({**BASE_ENV, "KINGEST_HTTP_PORT": "9464"})
    environ = {**BASE_ENV, "KINGEST_PROCESSES": "3", "OTEL_RESOURCE_ATTRIBUTES": "team=ml"}
    envs = [child_environment(environ, settings, i) for i in range(3)]
    assert [e["KINGEST_HTTP_PORT"] for e in envs] == ["9464", "9465", "9466"]
    assert [e["KINGEST_KAFKA_CLIENT_ID"] for e in envs] == ["kingest-0", "kingest-1", "kingest-2"]
    assert [e["KINGEST_PROCESS_INDEX"] for e in envs] == ["0", "1", "2"]
    assert {e["KINGEST_PROCESSES"] for e in envs} == {"1"}
    assert envs[2]["OTEL_RESOURCE_ATTRIBUTES"] == "team=ml,kingest.process.index=2"
    assert envs[1]["KINGEST_DATABASE_URL"] == BASE_ENV["KINGEST_DATABASE_URL"]
    # Each child's environment is a valid configuration once the command line's own
    # variables are set aside (as `kingest start` does).
    child = {k: v for k, v in envs[1].items() if k not in SUPERVISOR_VARIABLES}
    assert load_settings(child).http.port == 9465
    assert process_index(envs[1]) == 1
    assert process_index(BASE_ENV) is None


def test_port_zero_stays_zero_and_a_disabled_endpoint_gets_no_port() -> None:
    assert child_http_port(0, 5) == 0
    assert child_http_port(9000, 5) == 9005
    disabled = load_settings({**BASE_ENV, "KINGEST_HTTP_ENABLED": "false"})
    assert "KINGEST_HTTP_PORT" not in child_environment(BASE_ENV, disabled, 1)
    assert http_port_problem(disabled, MAX_PROCESSES) is None


def test_ports_past_65535_and_bad_process_counts_are_configuration_errors() -> None:
    settings = load_settings({**BASE_ENV, "KINGEST_HTTP_PORT": "65534"})
    assert http_port_problem(settings, 2) is None
    problem = http_port_problem(settings, 3)
    assert problem is not None
    assert "65534..65536" in problem
    assert start_problems(1, {}) == []
    assert start_problems(MAX_PROCESSES, {}) == []
    assert "between 1 and 64" in start_problems(0, {})[0]
    assert "between 1 and 64" in start_problems(MAX_PROCESSES + 1, {})[0]
    assert "KINGEST_PROCESS_INDEX" in start_problems(1, {"KINGEST_PROCESS_INDEX": "x"})[0]


# --------------------------------------------------------------------------- the loop

#: A stand-in child: records its start, then behaves as FAKE_MODE says. The start is
#: recorded once SIGTERM is handled, so a test that signals on that mark never kills a
#: child before its handler is in place.
FAKE_CHILD = r"""
import os, signal, sys, time
from pathlib import Path
marks = Path(os.environ["FAKE_DIR"]) / os.environ["KINGEST_PROCESS_INDEX"]
marks.mkdir(exist_ok=True)
mode, _, code = os.environ["FAKE_MODE"].partition(":")
received = []
def on_term(signum, frame):
    received.append(signum)
    (marks / f"signalled-{os.getpid()}").touch()
    if mode == "drain" or (mode == "stubborn" and len(received) == 2):
        (marks / f"stopped-{os.getpid()}").touch()
        sys.exit(int(code))
if mode != "exit":
    signal.signal(signal.SIGTERM, on_term if mode != "deaf" else signal.SIG_IGN)
(marks / f"started-{os.getpid()}").touch()
if mode == "exit":
    sys.exit(int(code))
while True:
    time.sleep(0.05)
"""

FAST = RestartPolicy(initial_backoff_s=0.05, max_backoff_s=0.2, max_restarts=3, window_s=60)


def fake_supervisor(
    tmp_path: Path,
    *modes: str,
    stop_timeout_s: float = 10,
    changes: ChangeSource | None = None,
) -> ProcessSupervisor:
    environments = [
        {
            **os.environ,
            "FAKE_DIR": str(tmp_path),
            "FAKE_MODE": mode,
            "KINGEST_PROCESS_INDEX": str(i),
        }
        for i, mode in enumerate(modes)
    ]
    return ProcessSupervisor(
        [sys.executable, "-c", FAKE_CHILD],
        environments,
        stop_timeout_s=stop_timeout_s,
        policy=FAST,
        kill_wait_s=2,
        poll_s=0.02,
        changes=changes,
    )


def marks(tmp_path: Path, index: int, kind: str) -> list[int]:
    """Pids of child ``index`` that left a ``kind`` mark (started, stopped)."""
    folder = tmp_path / str(index)
    if not folder.exists():
        return []
    return [int(p.name.split("-")[1]) for p in folder.glob(f"{kind}-*")]


def signal_self_when(*conditions: Callable[[], bool]) -> threading.Thread:
    """SIGTERM this process (the supervisor under test) once each condition holds."""

    def run() -> None:
        for condition in conditions:
            wait_for(condition, timeout=20, interval=0.02, what="the children's progress")
            os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def both(tmp_path: Path, kind: str) -> Callable[[], bool]:
    """Both stand-in children left a ``kind`` mark."""
    return lambda: bool(marks(tmp_path, 0, kind) and marks(tmp_path, 1, kind))


def test_a_child_exiting_2_stops_the_others_and_the_supervisor_exits_2(tmp_path: Path) -> None:
    supervisor = fake_supervisor(tmp_path, "drain:0", "exit:2")
    assert supervisor.run() == 2
    assert len(marks(tmp_path, 1, "started")) == 1, "a child with a bad configuration restarted"
    assert marks(tmp_path, 0, "stopped") == marks(tmp_path, 0, "started"), "child 0 not stopped"


def test_a_crashing_child_is_restarted_until_the_crash_loop_limit(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    supervisor = fake_supervisor(tmp_path, "drain:0", "exit:1")
    with caplog.at_level("INFO", logger="kingest.runtime.supervisor"):
        assert supervisor.run() == 1
    started = marks(tmp_path, 1, "started")
    assert len(started) == FAST.max_restarts + 1
    restarts = [r.getMessage() for r in caplog.records if "restarting it" in r.getMessage()]
    assert len(restarts) == FAST.max_restarts
    assert all("child 1 (pid " in line and "exit code 1" in line for line in restarts)
    assert any("crash loop" in r.getMessage() for r in caplog.records)
    assert len(marks(tmp_path, 0, "stopped")) == 1


def test_sigterm_is_forwarded_and_the_worst_drain_outcome_is_the_exit_code(
    tmp_path: Path,
) -> None:
    supervisor = fake_supervisor(tmp_path, "drain:0", "drain:3")
    signal_self_when(both(tmp_path, "started"))
    assert supervisor.run() == 3
    for index in (0, 1):
        assert marks(tmp_path, index, "stopped") == marks(tmp_path, index, "started")


def test_a_child_still_running_at_the_deadline_is_killed(tmp_path: Path) -> None:
    supervisor = fake_supervisor(tmp_path, "drain:0", "deaf:0", stop_timeout_s=0.5)
    signal_self_when(both(tmp_path, "started"))
    assert supervisor.run() == 1
    (pid,) = marks(tmp_path, 1, "started")
    assert not psutil.pid_exists(pid)


def test_a_second_signal_is_passed_on_and_the_supervisor_exits_130(tmp_path: Path) -> None:
    supervisor = fake_supervisor(tmp_path, "stubborn:130", "stubborn:130", stop_timeout_s=60)
    # The second signal once both children have had the first one.
    signal_self_when(both(tmp_path, "started"), both(tmp_path, "signalled"))
    assert supervisor.run() == EXIT_FORCED
    for index in (0, 1):
        assert marks(tmp_path, index, "stopped") == marks(tmp_path, index, "started")


class ChangesWhen:
    """A change source for reload mode: reports one changed file each time the next of
    ``conditions`` holds, nothing otherwise (one poll period per call)."""

    def __init__(self, *conditions: Callable[[], bool]) -> None:
        self.conditions = list(conditions)

    def __call__(self) -> set[str]:
        time.sleep(0.02)
        if self.conditions and self.conditions[0]():
            self.conditions.pop(0)
            return {"kingest/changed.py"}
        return set()


def test_a_change_drains_every_child_and_starts_them_all_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    changes = ChangesWhen(both(tmp_path, "started"))
    supervisor = fake_supervisor(tmp_path, "drain:0", "drain:0", changes=changes)
    signal_self_when(lambda: all(len(marks(tmp_path, i, "started")) == 2 for i in (0, 1)))
    with caplog.at_level("INFO", logger="kingest.runtime.supervisor"):
        assert supervisor.run() == 0
    assert supervisor.reloads == 1
    for index in (0, 1):
        # Two generations, both stopped by SIGTERM and drained: the first by the
        # reload, the second by the final stop.
        started = marks(tmp_path, index, "started")
        assert len(started) == 2
        assert sorted(marks(tmp_path, index, "stopped")) == sorted(started)
    assert any(
        "1 files changed (kingest/changed.py): restarting 2 processes" in r.getMessage()
        for r in caplog.records
    )


def test_in_reload_mode_a_failed_child_waits_for_the_next_change(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    changes = ChangesWhen()
    supervisor = fake_supervisor(tmp_path, "drain:0", "exit:1", changes=changes)
    polls_since_exit: list[int] = []

    def exited_then_quiet() -> bool:
        # Child 1 exited 1 and the loop has had 25 polls to (wrongly) restart it.
        if marks(tmp_path, 1, "started") and supervisor.children[1].proc is None:
            polls_since_exit.append(1)
        return len(polls_since_exit) > 25

    changes.conditions.append(exited_then_quiet)
    signal_self_when(
        lambda: len(marks(tmp_path, 1, "started")) == 2 and supervisor.children[1].proc is None
    )
    with caplog.at_level("INFO", logger="kingest.runtime.supervisor"):
        assert supervisor.run() == 0
    # Started at first, then only by the change: no backoff restarts in between.
    assert len(marks(tmp_path, 1, "started")) == 2
    assert supervisor.reloads == 1
    messages = [r.getMessage() for r in caplog.records]
    assert sum("starts again on the next change" in m for m in messages) == 2
    assert not any("restarting it in" in m for m in messages)


# --------------------------------------------------------------------------- command line


def run_kingest(env: Mapping[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kingest", *args],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_bad_configuration_exits_2_once_before_starting_children() -> None:
    result = run_kingest({"KINGEST_TOPICS": "bad topic", "KINGEST_PROCESSES": "3"}, "start")
    assert result.returncode == 2
    assert result.stderr.count("invalid configuration") == 1
    for variable in ("KINGEST_TOPICS", "KINGEST_GROUP_ID", "KINGEST_DATABASE_URL"):
        assert variable in result.stderr
    assert "supervising" not in result.stderr
    # An out-of-range count is listed with the other problems.
    result = run_kingest({"KINGEST_TOPICS": "bad topic"}, "start", "--processes", "0")
    assert result.returncode == 2
    assert "between 1 and 64" in result.stderr
    assert "KINGEST_TOPICS" in result.stderr
    # KINGEST_PROCESSES is not an unknown variable to the other commands.
    result = run_kingest({**BASE_ENV, "KINGEST_PROCESSES": "4"}, "config", "--json")
    assert result.returncode == 0, result.stderr


# --------------------------------------------------------------------------- end to end

PARTITIONS = 4
EVENTS = 24_000

STARTED = re.compile(r"child (\d+) started: pid (\d+)")
ASSIGNED = re.compile(r"assigned [1-9]\d* partitions.*process_index=(\d+)$", re.MULTILINE)


def child_pids(log: str, index: int) -> list[int]:
    return [int(pid) for i, pid in STARTED.findall(log) if int(i) == index]


def assigned_children(log: str) -> set[int]:
    return {int(index) for index in ASSIGNED.findall(log)}


@pytest.mark.integration
@pytest.mark.slow
def test_two_supervised_processes_share_the_group_and_survive_a_kill_9(
    kafka_bootstrap: str,
    database_url: str,
    topic_factory: Callable[[int], str],
    tmp_path: Path,
) -> None:
    topic = topic_factory(PARTITIONS)
    apply_migrations(database_url)
    group = "supervised"
    env = kingest_env(kafka_bootstrap, database_url, topic, group, KINGEST_PROCESSES="2")
    seen: set[int] = set()
    with KingestProcess(env, tmp_path / "kingest.log") as kingest:
        supervisor = psutil.Process(kingest.proc.pid)
        wait_for(
            lambda: assigned_children(kingest.log) == {0, 1},
            timeout=60,
            what="both children assigned partitions",
        )
        producer = BackgroundProducer(kafka_bootstrap, topic, seed=31, count=EVENTS, rate=6_000)
        wait_for(
            lambda: committed_total(kafka_bootstrap, group, topic, PARTITIONS) >= EVENTS // 6,
            timeout=60,
            what="part of the stream committed",
        )
        (victim,) = child_pids(kingest.log, 1)
        assert victim in {child.pid for child in supervisor.children()}
        seen.update(child.pid for child in supervisor.children())
        before = len(kingest.log)
        os.kill(victim, signal.SIGKILL)

        wait_for(
            lambda: len(child_pids(kingest.log, 1)) == 2,
            timeout=30,
            what="child 1 restarted",
        )
        replacement = child_pids(kingest.log, 1)[1]
        assert replacement != victim
        after_kill = kingest.log[before:]
        assert f"child 1 (pid {victim}) exited with signal SIGKILL" in after_kill
        assert replacement in {child.pid for child in supervisor.children()}
        seen.add(replacement)
        wait_for(
            lambda: 1 in assigned_children(kingest.log.split(f"started: pid {replacement} ", 1)[1]),
            timeout=60,
            what="the new child 1 assigned partitions",
        )

        report = producer.join()
        wait_for(
            lambda: all_committed(kafka_bootstrap, group, topic, report.end_offsets, PARTITIONS),
            timeout=90,
            what="all offsets committed",
        )
        assert kingest.terminate_and_wait() == 0, kingest.log
        log = kingest.log
    assert len(child_pids(log, 0)) == 1, "child 0 restarted"
    assert not [pid for pid in seen if psutil.pid_exists(pid)], "a child outlived the supervisor"
    assert log.count("stopped with exit code 0") == 2, log
    assert "Traceback" not in log
    assert_exactly_once(database_url, producer)
    assert_committed_are_stored(database_url, kafka_bootstrap, group, topic, PARTITIONS)
