"""`kingest bench` end to end on a real broker and PostgreSQL, at a tiny size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kingest.pipeline import THREAD_ROLES

pytestmark = pytest.mark.integration

EVENTS = 3000
RATE, SECONDS = 500, 2


def test_bench_measures_kingest_the_baseline_and_latency(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    out = tmp_path / "results.json"
    command = [sys.executable, "-m", "kingest", "bench", "--events", str(EVENTS), "--runs", "1"]
    command += ["--partitions", "2", "--latency-rate", str(RATE), "--latency-seconds", str(SECONDS)]
    command += ["--bootstrap-servers", kafka_bootstrap, "--json", str(out)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KINGEST_")}
    done = subprocess.run(
        command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())

    kingest, baseline = results["cases"]["default"], results["cases"]["baseline"]
    for case in (kingest, baseline):
        (run,) = case["runs"]
        # Each run checked its database holds exactly one row or dead letter per event.
        assert run["events_per_s"] > 0
        assert run["seconds"] > 0
        assert run["cpu_us_per_event"] > 0
        assert run["peak_rss_mib"] > 20
        assert run["postgres_cpu_us_per_event"] > 0  # the bench started PostgreSQL itself
        assert case["summary"]["events_per_s"]["median"] == run["events_per_s"]
    assert kingest["ratio_to_baseline"] == pytest.approx(
        kingest["runs"][0]["events_per_s"] / baseline["runs"][0]["events_per_s"]
    )
    # kingest's CPU by thread role, from the line it logged as it stopped: every actor
    # role is found by its threads' names, and together the roles are the whole process
    # (the bench's own figure was read before the stop, so it is at most their sum).
    (run,) = kingest["runs"]
    roles = {key: value for key, value in run.items() if key.startswith("cpu_us_per_event_")}
    assert set(roles) == {f"cpu_us_per_event_{role}" for role in THREAD_ROLES}
    for role in ("partitions", "writers", "loop", "native"):
        assert roles[f"cpu_us_per_event_{role}"] > 0, role
    assert 0.9 * run["cpu_us_per_event"] <= sum(roles.values()) <= 1.5 * run["cpu_us_per_event"]
    assert not any(key.startswith("cpu_us_per_event_") for key in baseline["runs"][0])
    assert "default: kingest CPU us/event by thread: partitions" in done.stdout
    # The bound the kingest process logged when it was assigned its partitions.
    assert kingest["runs"][0]["memory_bound_mib"] > kingest["runs"][0]["peak_rss_mib"]
    latency = results["latency"]
    (latency_run,) = latency["runs"]  # one latency run per --runs
    assert latency_run["events"] == RATE * SECONDS
    assert 0 < latency_run["p50_ms"] <= latency_run["p95_ms"]
    assert latency_run["p95_ms"] <= latency_run["p99_ms"] <= latency_run["max_ms"]
    assert results["machine"]["cpus"] == os.cpu_count()
    assert results["machine"]["postgresql_settings"]["track_commit_timestamp"] == "on"
    for name in ("default", "baseline", "p99", "target CPU per event", "target p99 latency"):
        assert name in done.stdout


def test_bench_refuses_a_malformed_sweep(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "kingest", "bench", "--sweep", "writers"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "KINGEST_NAME=v1,v2" in done.stderr
