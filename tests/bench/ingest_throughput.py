"""End-to-end ingest throughput and peak memory of `kingest start` on embedded services.

    .venv/bin/python tests/bench/ingest_throughput.py --events 1000000

Starts Tansu and an embedded PostgreSQL, produces the events with `kingest produce`
(before timing starts), runs `kingest start` as its own process and waits until every
offset is committed. Reports, per run, the events/s from the first message consumed to
the last row committed (kingest's own summary line), the process's CPU time per event,
and its peak RSS (VmHWM). Not collected by pytest: figures, not assertions.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kingest.demo import committed_total
from kingest.devstack import FAST_GROUP_SETTINGS, LocalKafka, LocalPostgres, create_topic
from kingest.store.migrate import apply_migrations

SUMMARY = re.compile(r"stopped: (\d+) messages consumed, (\d+) written.*?([\d.]+)s from first")


def proc_status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


def one_run(
    kafka: LocalKafka,
    postgres: LocalPostgres,
    events: int,
    partitions: int,
    run: int,
    workdir: Path,
    overrides: dict[str, str],
) -> dict[str, float]:
    topic, group = f"bench-{run}", f"bench-{run}"
    database = postgres.create_database(f"bench_{run}")
    apply_migrations(database)
    create_topic(kafka.bootstrap_servers, topic, partitions)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KINGEST_")}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "kingest",
            "produce",
            "--count",
            str(events),
            "--topic",
            topic,
            "--bootstrap-servers",
            kafka.bootstrap_servers,
            "--seed",
            str(run),
        ],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env.update(
        KINGEST_KAFKA_BOOTSTRAP_SERVERS=kafka.bootstrap_servers,
        KINGEST_TOPICS=topic,
        KINGEST_GROUP_ID=group,
        KINGEST_DATABASE_URL=database,
        KINGEST_KAFKA_SESSION_TIMEOUT_MS=FAST_GROUP_SETTINGS["session.timeout.ms"],
        KINGEST_KAFKA_HEARTBEAT_INTERVAL_MS=FAST_GROUP_SETTINGS["heartbeat.interval.ms"],
        # /metrics and the health endpoints are served as in production, on a free port.
        KINGEST_HTTP_HOST="127.0.0.1",
        KINGEST_HTTP_PORT="0",
    )
    env.update(overrides)
    log_path = workdir / f"kingest-{run}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kingest", "start"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 600
            while committed_total(kafka.bootstrap_servers, group, topic, partitions) < events:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"kingest did not finish; see {log_path}")
                time.sleep(0.25)
            peak_rss = proc_status(proc.pid, "VmHWM")
            cpu = cpu_seconds(proc.pid)
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()
    match = SUMMARY.search(log_path.read_text())
    if code != 0 or match is None:
        raise RuntimeError(f"kingest exited {code}; see {log_path}")
    written, busy = int(match.group(2)), float(match.group(3))
    return {
        "events/s": written / busy,
        "seconds": busy,
        "cpu_us_per_event": cpu / written * 1e6,
        "peak_rss_mib": peak_rss / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument(
        "--set", action="append", default=[], metavar="KINGEST_X=VALUE", help="extra setting"
    )
    args = parser.parse_args()
    overrides = dict(item.split("=", 1) for item in args.set)
    workdir = Path(tempfile.mkdtemp(prefix="kingest-bench-"))
    results = []
    with LocalKafka(log_path=workdir / "broker.log") as kafka, LocalPostgres(workdir / "pg") as pg:
        for run in range(args.runs):
            result = one_run(kafka, pg, args.events, args.partitions, run, workdir, overrides)
            results.append(result)
            print(f"run {run + 1}: " + ", ".join(f"{k} {v:,.1f}" for k, v in result.items()))
    print(f"\n{args.events:,} events, {args.partitions} partitions, {os.cpu_count()} CPUs")
    for key in results[0]:
        values = [r[key] for r in results]
        print(
            f"  {key:>18}: median {statistics.median(values):,.1f}"
            f"  min {min(values):,.1f}  max {max(values):,.1f}"
        )


if __name__ == "__main__":
    main()
