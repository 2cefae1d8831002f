"""CPU seconds by thread role (kingest/pipeline/threads.py) and how the bench reads them
back from the log (kingest/dev/bench_figures.py::thread_cpu_figures)."""

from __future__ import annotations

import json

import pytest

from kingest.dev.bench_figures import thread_cpu_figures
from kingest.pipeline import threads
from kingest.pipeline.committer import OffsetCommitter
from kingest.pipeline.threads import ROLES, cpu_seconds_by_role, describe_cpu, thread_role

BY_THREAD = {
    "partition-events-0": 2.0,
    "partition-my-topic-with-dashes-11": 3.5,
    "writer-0": 1.25,
    "writer-3": 1.75,
    "offset-committer": 0.25,
    "MainThread": 2.0,
    "kingest-http": 0.5,
    "kingest-writers-worker-0": 0.25,
}


@pytest.fixture
def measured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads, "cpu_seconds_by_thread", lambda: dict(BY_THREAD))
    monkeypatch.setattr(threads.time, "process_time", lambda: 14.0)


@pytest.mark.usefixtures("measured")
def test_threads_are_summed_by_role_and_the_rest_of_the_process_is_native() -> None:
    assert cpu_seconds_by_role(loop_thread="MainThread") == {
        "partitions": 5.5,
        "writers": 3.0,
        "loop": 2.0,
        "committer": 0.25,
        "other": 0.75,
        "native": 14.0 - 11.5,
    }


@pytest.mark.usefixtures("measured")
def test_the_loop_is_whichever_thread_runs_it() -> None:
    roles = cpu_seconds_by_role(loop_thread="kingest-http")
    assert roles["loop"] == 0.5
    assert roles["other"] == 2.25  # MainThread, and the pool's worker


def test_the_committer_is_named_as_its_role_is_read() -> None:
    # The partition actors' and writers' are checked in test_partition.py, test_writer.py.
    assert thread_role(OffsetCommitter().name, loop_thread="MainThread") == "committer"


def test_the_bench_reads_the_log_line_back_per_event_summed_over_processes() -> None:
    first = dict(zip(ROLES, (5.0, 3.0, 2.0, 0.02, 0.01, 1.2), strict=True))
    second = dict(zip(ROLES, (1.0, 1.0, 1.0, 0.0, 0.0, 0.8), strict=True))
    log = "\n".join(
        json.dumps({"message": f"CPU seconds by thread: {describe_cpu(roles)}", "level": "INFO"})
        for roles in (first, second)
    )
    figures = thread_cpu_figures("unrelated line\n" + log, events=1_000_000)
    assert figures == pytest.approx(
        {
            "cpu_us_per_event_partitions": 6.0,
            "cpu_us_per_event_writers": 4.0,
            "cpu_us_per_event_loop": 3.0,
            "cpu_us_per_event_committer": 0.02,
            "cpu_us_per_event_other": 0.01,
            "cpu_us_per_event_native": 2.0,
        }
    )


def test_a_log_without_the_line_gives_no_figures() -> None:
    assert thread_cpu_figures("stopped: 10 messages consumed, 10 written", events=10) == {}
