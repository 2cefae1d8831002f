"""``kingest bench``: end-to-end throughput, CPU, memory and latency on real services.

Every case produces its topic before anything is timed, then runs ``kingest start`` as
its own process (a fresh consumer group and a fresh migrated database per run) until
every offset is committed, and reads:

* events/s from the first message received to the last row committed (the summary
  line each pipeline process logs when it stops; with ``--processes N`` the events of
  all children over the longest child's time);
* CPU microseconds per event of the kingest process tree, and its peak RSS (VmHWM of
  the largest process);
* when the bench started the services itself, the CPU the broker and PostgreSQL spent
  meanwhile, per event: on a shared machine that is the rest of the bill.

The baseline (:mod:`kingest.dev.baseline`) is a plain loop over the same topic into a
fresh database, run the same way in its own process; every case's events/s is also
given as a ratio to it.

The latency case produces at a steady rate while kingest runs and measures, for every
event, the time from its Kafka timestamp (set by the producer) to the commit of the
transaction that stored it (``pg_xact_commit_timestamp``, which needs
``track_commit_timestamp = on``).

This module holds the options, the cases and the three kinds of measured run; the
services, databases and topics they stand on are in :mod:`kingest.dev.bench_services`,
and the figures and their summaries in :mod:`kingest.dev.bench_figures`.
"""

from __future__ import annotations

import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import confluent_kafka
import psycopg
from confluent_kafka import Consumer, Producer, TopicPartition
from psycopg import sql

from kingest import __version__
from kingest.dev.bench_figures import (
    peak_rss,
    percentile,
    process_tree,
    run_figures,
    summarize_runs,
    thread_cpu_figures,
    tree_cpu_seconds,
)
from kingest.dev.bench_services import (
    POSTGRES_SETTINGS,
    STORE_TABLES,
    BenchServices,
    drop_database,
    fresh_database,
    produce_events,
    provide_bench_services,
    stored_events,
)
from kingest.dev.lifecycle import clean_env, free_port
from kingest.dev.services import FAST_GROUP_SETTINGS
from kingest.dev.synth import SyntheticStream
from kingest.dev.topics import create_topic, delete_topic
from kingest.store import SCHEMA

__all__ = [
    "BenchError",
    "Case",
    "Options",
    "Progress",
    "cases",
    "parse_sweep",
    "run_bench",
]

_SUMMARY = re.compile(r"stopped: (\d+) messages consumed, (\d+) written.*?([\d.]+)s from first")
_MEMORY_BOUND = re.compile(r"memory bound for \d+ partitions: (\d+) MiB")
_RUN_TIMEOUT_S: Final = 900.0


class BenchError(RuntimeError):
    """A run that did not complete correctly (its log says why)."""


@dataclass(frozen=True)
class Case:
    """One configuration to measure: a name, a partition count, KINGEST_* overrides."""

    name: str
    partitions: int
    settings: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Options:
    """What ``kingest bench`` measures, how often, and against which services (None:
    start embedded ones)."""

    events: int = 1_000_000
    partitions: int = 8
    runs: int = 3
    baseline: bool = True
    latency_rate: int = 5000
    latency_seconds: float = 30.0
    latency: bool = True
    processes: int = 1
    settings: Mapping[str, str] = field(default_factory=dict)
    sweeps: Sequence[tuple[str, Sequence[str]]] = ()
    bootstrap_servers: str | None = None
    database_url: str | None = None
    workdir: Path | None = None


# --- cases ------------------------------------------------------------------------------


def parse_sweep(text: str) -> tuple[str, list[str]]:
    """``NAME=v1,v2`` (NAME: ``partitions`` or a KINGEST_* variable) as (NAME, values)."""
    name, sep, values = text.partition("=")
    items = [value.strip() for value in values.split(",") if value.strip()]
    if not sep or not items or not (name == "partitions" or name.startswith("KINGEST_")):
        raise ValueError(f"--sweep {text!r}: expected partitions=4,8 or KINGEST_NAME=v1,v2")
    if name == "partitions" and not all(item.isdigit() and int(item) > 0 for item in items):
        raise ValueError(f"--sweep {text!r}: partition counts are positive integers")
    return name, items


def cases(options: Options) -> list[Case]:
    """The default case, then one per swept value."""
    found = [Case("default", options.partitions, dict(options.settings))]
    for name, values in options.sweeps:
        for value in values:
            if name == "partitions":
                found.append(Case(f"partitions={value}", int(value), dict(options.settings)))
            else:
                settings = {**options.settings, name: value}
                found.append(Case(f"{name}={value}", options.partitions, settings))
    return found


# --- waiting for commits ------------------------------------------------------------------


class _CommitWatch:
    """One long-lived client asking a group's committed offsets (cheap to repeat)."""

    def __init__(self, bootstrap: str, group: str, topic: str, partitions: int) -> None:
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
        self._partitions = [TopicPartition(topic, p) for p in range(partitions)]

    def total(self) -> int:
        try:
            committed = self._consumer.committed(self._partitions, timeout=10)
        except confluent_kafka.KafkaException:
            return 0
        return sum(max(tp.offset, 0) for tp in committed)

    def close(self) -> None:
        self._consumer.close()


#: Reports progress: a label, the events done, the events expected.
Progress = Callable[[str, int, int], None]


def _wait_committed(
    watch: _CommitWatch,
    expected: int,
    *,
    processes: Sequence[subprocess.Popen[bytes]],
    log: Path,
    label: str,
    progress: Progress,
) -> None:
    deadline = time.monotonic() + _RUN_TIMEOUT_S
    while (done := watch.total()) < expected:
        progress(label, done, expected)
        # A process may exit right after its last commit: ask once more before failing.
        exited = any(p.poll() is not None for p in processes)
        if (exited and watch.total() < expected) or time.monotonic() > deadline:
            raise BenchError(f"{label}: stopped at {done} of {expected} events; see {log}")
        time.sleep(0.2)
    progress(label, expected, expected)


# --- kingest runs ----------------------------------------------------------------------------


def _kingest_env(
    found: BenchServices,
    topic: str,
    *,
    group: str,
    url: str,
    settings: Mapping[str, str],
    http: int,
) -> dict[str, str]:
    env = clean_env()
    env.update(
        KINGEST_KAFKA_BOOTSTRAP_SERVERS=found.bootstrap_servers,
        KINGEST_TOPICS=topic,
        KINGEST_GROUP_ID=group,
        KINGEST_DATABASE_URL=url,
        KINGEST_KAFKA_SESSION_TIMEOUT_MS=FAST_GROUP_SETTINGS["session.timeout.ms"],
        KINGEST_KAFKA_HEARTBEAT_INTERVAL_MS=FAST_GROUP_SETTINGS["heartbeat.interval.ms"],
        KINGEST_HTTP_HOST="127.0.0.1",
        KINGEST_HTTP_PORT=str(http),
    )
    env.update(settings)
    return env


def _start_kingest(env: Mapping[str, str], processes: int, log: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "kingest", "start"]
    if processes > 1:
        command += ["--processes", str(processes)]
    with log.open("wb") as out:
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)


def _stop(process: subprocess.Popen[bytes], log: Path) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(120)
    except subprocess.TimeoutExpired:
        process.kill()
        raise BenchError(f"did not stop within 120 s; see {log}") from None
    if code != 0:
        raise BenchError(f"exited {code}; see {log}")


@dataclass
class _Run:
    """One measured run: its group, log, fresh database, commit watch, CPU starting points."""

    found: BenchServices
    label: str
    group: str
    log: Path
    url: str
    watch: _CommitWatch
    broker0: float
    postgres0: float

    @classmethod
    def prepare(
        cls, found: BenchServices, topic: str, case: Case, *, slug: str, label: str, log: Path
    ) -> _Run:
        group = f"bench-{slug}"
        url = fresh_database(found.server_url, f"bench_{slug}"[:60])
        watch = _CommitWatch(found.bootstrap_servers, group, topic, case.partitions)
        return cls(found, label, group, log, url, watch, found.broker_cpu(), found.postgres_cpu())

    def wait(self, events: int, process: subprocess.Popen[bytes], progress: Progress) -> None:
        """Until every event is committed (the watch is closed afterwards)."""
        try:
            _wait_committed(
                self.watch,
                events,
                processes=[process],
                log=self.log,
                label=self.label,
                progress=progress,
            )
        finally:
            self.watch.close()

    def services_cpu(self) -> tuple[float, float]:
        """CPU seconds of the broker and of PostgreSQL since :meth:`prepare`."""
        return self.found.broker_cpu() - self.broker0, self.found.postgres_cpu() - self.postgres0

    def check_and_drop(self, events: int) -> None:
        """One row or dead letter per event, then the database goes."""
        stored = stored_events(self.url)
        if stored != events:
            raise BenchError(f"{self.label}: {stored} rows for {events} events; see {self.log}")
        drop_database(self.found.server_url, self.url)


def run_kingest(
    found: BenchServices,
    topic: str,
    case: Case,
    *,
    run: int,
    options: Options,
    workdir: Path,
    progress: Progress,
) -> dict[str, float]:
    """One measured run of ``kingest start`` over the whole topic."""
    slug = re.sub(r"[^a-z0-9]+", "_", f"{case.name}_{run}".lower())
    log = workdir / f"kingest-{slug}.log"
    measured = _Run.prepare(found, topic, case, slug=slug, label=f"{case.name} #{run + 1}", log=log)
    env = _kingest_env(
        found, topic, group=measured.group, url=measured.url, settings=case.settings, http=0
    )
    process = _start_kingest(env, options.processes, log)
    try:
        measured.wait(options.events, process, progress)
        tree = process_tree(process.pid)
        cpu, rss = tree_cpu_seconds(tree), max(map(peak_rss, tree))
        broker, postgres = measured.services_cpu()
        _stop(process, log)
    finally:
        if process.poll() is None:
            process.kill()
    text = log.read_text()
    summaries = [tuple(map(float, m)) for m in _SUMMARY.findall(text)]
    if not summaries:
        raise BenchError(f"{case.name}: kingest logged no summary line; see {log}")
    written, busy = sum(s[1] for s in summaries), max(s[2] for s in summaries)
    measured.check_and_drop(options.events)
    figures = run_figures(written, busy, cpu=cpu, rss=rss, broker=broker, postgres=postgres)
    figures.update(thread_cpu_figures(text, written))
    # The bound the process logged at its last assignment (with --processes N each
    # child logs its own, and which one the peak RSS belongs to is not known).
    bounds = [int(found) for found in _MEMORY_BOUND.findall(text)]
    if bounds and options.processes == 1:
        figures["memory_bound_mib"] = float(bounds[-1])
    return figures


# --- the baseline ------------------------------------------------------------------------


def run_baseline(
    found: BenchServices,
    topic: str,
    case: Case,
    *,
    run: int,
    options: Options,
    workdir: Path,
    progress: Progress,
) -> dict[str, float]:
    slug = f"baseline_{run}"
    log = workdir / f"{slug}.log"
    measured = _Run.prepare(found, topic, case, slug=slug, label=f"baseline #{run + 1}", log=log)
    command = [
        sys.executable,
        "-c",
        "from kingest.dev.baseline import baseline_main; baseline_main()",
    ]
    command += [found.bootstrap_servers, topic, measured.group, measured.url, str(options.events)]
    with log.open("wb") as err:
        process = subprocess.Popen(command, env=clean_env(), stdout=subprocess.PIPE, stderr=err)
        try:
            measured.wait(options.events, process, progress)
            broker, postgres = measured.services_cpu()
            out, _ = process.communicate(timeout=120)
        finally:
            if process.poll() is None:
                process.kill()
    if process.returncode != 0:
        raise BenchError(f"baseline exited {process.returncode}; see {log}")
    result = json.loads(out)
    measured.check_and_drop(options.events)
    return run_figures(
        result["events"],
        result["seconds"],
        cpu=result["cpu_seconds"],
        rss=result["peak_rss"],
        broker=broker,
        postgres=postgres,
    )


# --- latency ------------------------------------------------------------------------------------


def _wait_ready(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise BenchError(f"kingest did not become ready; see {log}")


#: How early the latency case's producer may send a message (poll() waits whole ms).
_PACING_SLACK_S: Final = 0.001


def _produce_paced(
    bootstrap: str, topic: str, rate: int, seconds: float, progress: Progress, *, label: str
) -> dict[tuple[int, int], int]:
    """Produce at ``rate`` events/s for ``seconds``; (partition, offset) -> timestamp ms."""
    count = int(rate * seconds)
    stamps: dict[tuple[int, int], int] = {}
    lock = threading.Lock()

    def delivered(error: Any, message: Any) -> None:
        if error is None:
            with lock:
                stamps[(message.partition(), message.offset())] = message.timestamp()[1]

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "all"})
    records = iter(SyntheticStream(seed=99))
    start = time.monotonic()
    for index in range(count):
        due = start + index / rate
        # poll() takes whole milliseconds: a wait shorter than one would be a poll(0) in
        # a loop, spinning a core the measured processes need (at 5,000/s the messages
        # are 0.2 ms apart). A message is sent up to a millisecond early instead; its
        # timestamp is when it is sent, so the latency measured is unchanged.
        while (ahead := due - time.monotonic()) >= _PACING_SLACK_S:
            producer.poll(ahead)
        record = next(records)
        headers: list[tuple[str, str | bytes | None]] = [(k, v) for k, v in record.headers]
        producer.produce(topic, record.value, record.key, headers=headers, on_delivery=delivered)
        if index % 500 == 0:
            progress(label, index, count)
    producer.flush(60)
    return stamps


def run_latency(
    found: BenchServices, options: Options, workdir: Path, progress: Progress, *, run: int = 0
) -> dict[str, float]:
    """One latency run: its own topic, consumer group and database."""
    name = f"bench-latency-{run + 1}"
    topic, group, log = name, name, workdir / f"kingest-latency-{run + 1}.log"
    create_topic(found.bootstrap_servers, topic, options.partitions)
    url = fresh_database(found.server_url, f"bench_latency_{run + 1}")
    port = free_port("127.0.0.1")
    env = _kingest_env(found, topic, group=group, url=url, settings=options.settings, http=port)
    process = _start_kingest(env, 1, log)
    watch = _CommitWatch(found.bootstrap_servers, group, topic, options.partitions)
    try:
        _wait_ready(port, process, log)
        stamps = _produce_paced(
            found.bootstrap_servers,
            topic,
            options.latency_rate,
            options.latency_seconds,
            progress,
            label=f"latency #{run + 1} at {options.latency_rate}/s",
        )
        _wait_committed(
            watch,
            len(stamps),
            processes=[process],
            log=log,
            label=f"latency #{run + 1}",
            progress=progress,
        )
        _stop(process, log)
    finally:
        watch.close()
        if process.poll() is None:
            process.kill()
    latencies = []
    with psycopg.connect(url) as conn:
        for name in STORE_TABLES:
            query = sql.SQL(
                "SELECT kafka_partition, kafka_offset,"
                " extract(epoch FROM pg_xact_commit_timestamp(xmin)) FROM {}"
            ).format(sql.Identifier(SCHEMA, name))
            rows = conn.execute(query).fetchall()
            for partition, offset, committed in rows:
                latencies.append(float(committed) * 1000 - stamps[(partition, offset)])
    if len(latencies) != len(stamps):
        raise BenchError(f"latency: {len(latencies)} rows for {len(stamps)} events; see {log}")
    drop_database(found.server_url, url)
    # Tansu's memory storage keeps every batch of every topic, and a fetch costs it more
    # the more batches it holds: the next run must not pay for this one's.
    delete_topic(found.bootstrap_servers, topic)
    return {
        "events": len(latencies),
        "rate": options.latency_rate,
        "p50_ms": percentile(latencies, 0.50),
        "p95_ms": percentile(latencies, 0.95),
        "p99_ms": percentile(latencies, 0.99),
        "max_ms": max(latencies),
    }


# --- the whole bench -----------------------------------------------------------------------------


def machine(found: BenchServices) -> dict[str, Any]:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    memory = Path("/proc/meminfo").read_text().split()[1]
    with psycopg.connect(found.server_url) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "memory_gib": round(int(memory) / 2**20, 1),
        "python": platform.python_version(),
        "kingest": __version__,
        "confluent_kafka": confluent_kafka.version(),
        "librdkafka": confluent_kafka.libversion()[0],
        "postgresql": row[0] if row else "?",
        "postgresql_settings": POSTGRES_SETTINGS if found.postgres_pid else "given server",
        "command": " ".join(["kingest", "bench", *sys.argv[2:]]),
    }


def run_bench(options: Options, progress: Progress) -> dict[str, Any]:
    """Every case (and the baseline, and the latency case); the JSON-ready results."""
    workdir = options.workdir or Path(tempfile.mkdtemp(prefix="kingest-bench-"))
    results: dict[str, Any] = {"options": asdict(options) | {"workdir": str(workdir)}}
    with provide_bench_services(options.bootstrap_servers, options.database_url, workdir) as found:
        results["machine"] = machine(found)
        topics: dict[int, str] = {}
        measured: dict[str, Any] = {}
        for case in cases(options):
            topic = topics.get(case.partitions)
            if topic is None:
                topic = topics[case.partitions] = f"bench-{case.partitions}p"
                create_topic(found.bootstrap_servers, topic, case.partitions)
                progress(f"producing {options.events:,} events", 0, options.events)
                produce_events(found.bootstrap_servers, topic, options.events, seed=1)
            runs = [
                run_kingest(
                    found, topic, case, run=run, options=options, workdir=workdir, progress=progress
                )
                for run in range(options.runs)
            ]
            measured[case.name] = {"runs": runs, "summary": summarize_runs(runs)}
            if options.baseline and case.name == "default":
                runs = [
                    run_baseline(
                        found,
                        topic,
                        case,
                        run=run,
                        options=options,
                        workdir=workdir,
                        progress=progress,
                    )
                    for run in range(options.runs)
                ]
                measured["baseline"] = {"runs": runs, "summary": summarize_runs(runs)}
        results["cases"] = measured
        if "baseline" in measured:
            base = measured["baseline"]["summary"]["events_per_s"]["median"]
            for case_result in measured.values():
                case_result["ratio_to_baseline"] = (
                    case_result["summary"]["events_per_s"]["median"] / base
                )
        if options.latency:
            if found.commit_timestamps:
                runs = [
                    run_latency(found, options, workdir, progress, run=run)
                    for run in range(options.runs)
                ]
                results["latency"] = {
                    "rate": options.latency_rate,
                    "runs": runs,
                    "summary": summarize_runs(runs),
                }
            else:
                results["latency"] = {"skipped": "track_commit_timestamp is off on this server"}
    return results
