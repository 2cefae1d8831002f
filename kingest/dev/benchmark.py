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

The baseline (:func:`baseline_main`) is a plain loop over the same topic into a fresh
database: consume 5000, map them with kingest's own decoding (so that the ratio
measures the pipeline and the write path, not the decoder), kingest's own
``INSERT ... SELECT FROM unnest(...) ON CONFLICT DO NOTHING`` statements (one per fact
table; those of training runs and deployments also keep their state tables, as kingest
does) with psycopg's list adaptation, commit, synchronous Kafka commit.

The latency case produces at a steady rate while kingest runs and measures, for every
event, the time from its Kafka timestamp (set by the producer) to the commit of the
transaction that stored it (``pg_xact_commit_timestamp``, which needs
``track_commit_timestamp = on``).
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import confluent_kafka
import psycopg
from confluent_kafka import Consumer, Producer, TopicPartition
from psycopg import sql

from kingest import __version__
from kingest.dev.services import (
    FAST_GROUP_SETTINGS,
    LocalKafka,
    LocalPostgres,
    create_topic,
    database_url_for,
    free_port,
)
from kingest.dev.synth import SyntheticStream
from kingest.store import (
    FACT_TABLES,
    INSERT_DEAD_LETTER,
    SCHEMA,
    WRITE_PLAN,
    RowBatch,
    apply_migrations,
    dead_letter_params,
)

__all__ = [
    "BASELINE_POLL",
    "BenchError",
    "Case",
    "Options",
    "baseline_main",
    "median_min_max",
    "percentile",
    "run_bench",
]

#: Server settings of the PostgreSQL the bench starts: commit timestamps for latency,
#: buffers and WAL sized for a 1M-event run. fsync and synchronous_commit stay on.
POSTGRES_SETTINGS: Final = {
    "track_commit_timestamp": "on",
    "shared_buffers": "512MB",
    "max_wal_size": "4GB",
}
BASELINE_POLL: Final = 5000
_SUMMARY = re.compile(r"stopped: (\d+) messages consumed, (\d+) written.*?([\d.]+)s from first")
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


# --- figures -----------------------------------------------------------------------------


def percentile(values: Sequence[float], fraction: float) -> float:
    """The ``fraction`` quantile of ``values`` (nearest rank: a value that occurred)."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(fraction * len(ordered))))
    return ordered[rank - 1]


def median_min_max(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max of a case's runs."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


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


# --- processes -----------------------------------------------------------------------------


def _process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, ()))
    return tree


def process_cpu_seconds(pid: int, *, reaped_children: bool = False) -> float:
    """utime + stime of a local process from /proc (0 when it is gone); with
    ``reaped_children``, of the children it has waited for instead (cutime + cstime:
    PostgreSQL's ended backends)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    first = 13 if reaped_children else 11
    return (int(fields[first]) + int(fields[first + 1])) / os.sysconf("SC_CLK_TCK")


def _peak_rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _tree_cpu(pids: Sequence[int]) -> float:
    return sum(map(process_cpu_seconds, pids))


# --- services ------------------------------------------------------------------------------


@dataclass
class BenchServices:
    bootstrap_servers: str
    server_url: str
    #: Processes whose CPU is the machine's rest of the bill (empty for given services).
    broker_pids: list[int] = field(default_factory=list)
    postgres_pid: int | None = None
    commit_timestamps: bool = True

    def postgres_cpu(self) -> float:
        """CPU of the server's live processes and of the backends that have ended."""
        if self.postgres_pid is None:
            return 0.0
        live = _tree_cpu(_process_tree(self.postgres_pid))
        return live + process_cpu_seconds(self.postgres_pid, reaped_children=True)

    def broker_cpu(self) -> float:
        return _tree_cpu(self.broker_pids)


@contextmanager
def services(options: Options, workdir: Path) -> Iterator[BenchServices]:
    """The broker and PostgreSQL: the given ones, or embedded ones started here."""
    with (
        (
            LocalKafka(log_path=workdir / "broker.log")
            if options.bootstrap_servers is None
            else _nothing()
        ) as kafka,
        (
            LocalPostgres(workdir / "pg", settings=POSTGRES_SETTINGS)
            if options.database_url is None
            else _nothing()
        ) as postgres,
    ):
        found = BenchServices(
            bootstrap_servers=options.bootstrap_servers or kafka.bootstrap_servers,
            server_url=options.database_url or postgres.url,
        )
        if options.bootstrap_servers is None and kafka.pid is not None:
            found.broker_pids = [kafka.pid]
        if options.database_url is None:
            found.postgres_pid = postgres.pid
        with psycopg.connect(found.server_url) as conn:
            row = conn.execute("SHOW track_commit_timestamp").fetchone()
            found.commit_timestamps = row is not None and row[0] == "on"
        yield found


@contextmanager
def _nothing() -> Iterator[Any]:
    yield None


def _fresh_database(server_url: str, name: str) -> str:
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = database_url_for(server_url, name)
    apply_migrations(url)
    return url


def _drop_database(server_url: str, url: str) -> None:
    """A measured run's database goes once checked: 1M events take about 1 GB."""
    name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(str(name))))


def _produce(bootstrap: str, topic: str, events: int, seed: int) -> None:
    subprocess.run(
        [
            *(sys.executable, "-m", "kingest", "produce", "--count", str(events)),
            *("--topic", topic, "--bootstrap-servers", bootstrap, "--seed", str(seed)),
        ],
        env=_clean_env(),
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("KINGEST_")}


_STORE_TABLES: Final = (*(table.name for table in FACT_TABLES), "dead_letters")


def stored_events(url: str) -> int:
    """Rows in every fact table plus dead letters: one per message, exactly once."""
    total = 0
    with psycopg.connect(url) as conn:
        for name in _STORE_TABLES:
            query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(SCHEMA, name))
            row = conn.execute(query).fetchone()
            total += row[0] if row else 0
    return total


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
    env = _clean_env()
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
        url = _fresh_database(found.server_url, f"bench_{slug}"[:60])
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
        _drop_database(self.found.server_url, self.url)


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
        tree = _process_tree(process.pid)
        cpu, rss = _tree_cpu(tree), max(map(_peak_rss, tree))
        broker, postgres = measured.services_cpu()
        _stop(process, log)
    finally:
        if process.poll() is None:
            process.kill()
    summaries = [tuple(map(float, m)) for m in _SUMMARY.findall(log.read_text())]
    if not summaries:
        raise BenchError(f"{case.name}: kingest logged no summary line; see {log}")
    written, busy = sum(s[1] for s in summaries), max(s[2] for s in summaries)
    measured.check_and_drop(options.events)
    return _figures(written, busy, cpu=cpu, rss=rss, broker=broker, postgres=postgres)


def _figures(
    events: float, busy: float, *, cpu: float, rss: int, broker: float, postgres: float
) -> dict[str, float]:
    return {
        "events_per_s": events / busy,
        "seconds": busy,
        "cpu_us_per_event": cpu / events * 1e6,
        "peak_rss_mib": rss / 2**20,
        "broker_cpu_us_per_event": broker / events * 1e6,
        "postgres_cpu_us_per_event": postgres / events * 1e6,
    }


# --- the baseline loop -------------------------------------------------------------------------


def baseline_loop(bootstrap: str, topic: str, group: str, url: str, events: int) -> dict[str, Any]:
    """The plain loop; returns its events, seconds (first message to last commit)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            **FAST_GROUP_SETTINGS,
        }
    )
    consumer.subscribe([topic])
    done, first = 0, None
    with psycopg.connect(url) as conn:
        while done < events:
            messages = [m for m in consumer.consume(BASELINE_POLL, 1.0) if m.error() is None]
            if not messages:
                continue
            first = first or time.monotonic()
            rows = RowBatch()
            rows.add_records(messages)
            with conn.cursor() as cursor:
                # kingest's own statements, parameters adapted by psycopg from the lists.
                counts = rows.counts_by_type
                for statement in WRITE_PLAN:
                    if any(table.event_type in counts for table in statement.fact_tables):
                        params = [c for t in statement.fact_tables for c in rows.columns(t)]
                        cursor.execute(statement.sql, params)
                if rows.rejection_count:
                    cursor.executemany(
                        INSERT_DEAD_LETTER, [dead_letter_params(r, group) for r in rows.rejections]
                    )
            conn.commit()
            consumer.commit(asynchronous=False)
            done += len(messages)
    seconds = time.monotonic() - (first or time.monotonic())
    consumer.close()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "events": done,
        "seconds": seconds,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "peak_rss": usage.ru_maxrss * 1024,
    }


def baseline_main() -> None:
    """Entry point of the baseline's own process (argv: bootstrap topic group url events)."""
    bootstrap, topic, group, url, events = sys.argv[1:6]
    print(json.dumps(baseline_loop(bootstrap, topic, group, url, int(events))), flush=True)


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
        "from kingest.dev.benchmark import baseline_main; baseline_main()",
    ]
    command += [found.bootstrap_servers, topic, measured.group, measured.url, str(options.events)]
    with log.open("wb") as err:
        process = subprocess.Popen(command, env=_clean_env(), stdout=subprocess.PIPE, stderr=err)
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
    return _figures(
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


def _produce_paced(
    bootstrap: str, topic: str, rate: int, seconds: float, progress: Progress
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
        while (ahead := due - time.monotonic()) > 0:
            producer.poll(min(ahead, 0.01))
        record = next(records)
        headers: list[tuple[str, str | bytes | None]] = [(k, v) for k, v in record.headers]
        producer.produce(topic, record.value, record.key, headers=headers, on_delivery=delivered)
        if index % 500 == 0:
            progress(f"latency at {rate}/s", index, count)
    producer.flush(60)
    return stamps


def run_latency(
    found: BenchServices, options: Options, workdir: Path, progress: Progress
) -> dict[str, float]:
    topic, group, log = "bench-latency", "bench-latency", workdir / "kingest-latency.log"
    create_topic(found.bootstrap_servers, topic, options.partitions)
    url = _fresh_database(found.server_url, "bench_latency")
    port = free_port("127.0.0.1")
    env = _kingest_env(found, topic, group=group, url=url, settings=options.settings, http=port)
    process = _start_kingest(env, 1, log)
    watch = _CommitWatch(found.bootstrap_servers, group, topic, options.partitions)
    try:
        _wait_ready(port, process, log)
        stamps = _produce_paced(
            found.bootstrap_servers, topic, options.latency_rate, options.latency_seconds, progress
        )
        _wait_committed(
            watch, len(stamps), processes=[process], log=log, label="latency", progress=progress
        )
        _stop(process, log)
    finally:
        watch.close()
        if process.poll() is None:
            process.kill()
    latencies = []
    with psycopg.connect(url) as conn:
        for name in _STORE_TABLES:
            query = sql.SQL(
                "SELECT kafka_partition, kafka_offset,"
                " extract(epoch FROM pg_xact_commit_timestamp(xmin)) FROM {}"
            ).format(sql.Identifier(SCHEMA, name))
            rows = conn.execute(query).fetchall()
            for partition, offset, committed in rows:
                latencies.append(float(committed) * 1000 - stamps[(partition, offset)])
    if len(latencies) != len(stamps):
        raise BenchError(f"latency: {len(latencies)} rows for {len(stamps)} events; see {log}")
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
    with services(options, workdir) as found:
        results["machine"] = machine(found)
        topics: dict[int, str] = {}
        measured: dict[str, Any] = {}
        for case in cases(options):
            topic = topics.get(case.partitions)
            if topic is None:
                topic = topics[case.partitions] = f"bench-{case.partitions}p"
                create_topic(found.bootstrap_servers, topic, case.partitions)
                progress(f"producing {options.events:,} events", 0, options.events)
                _produce(found.bootstrap_servers, topic, options.events, seed=1)
            runs = [
                run_kingest(
                    found, topic, case, run=run, options=options, workdir=workdir, progress=progress
                )
                for run in range(options.runs)
            ]
            measured[case.name] = {"runs": runs, "summary": _summary(runs)}
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
                measured["baseline"] = {"runs": runs, "summary": _summary(runs)}
        results["cases"] = measured
        if "baseline" in measured:
            base = measured["baseline"]["summary"]["events_per_s"]["median"]
            for case_result in measured.values():
                case_result["ratio_to_baseline"] = (
                    case_result["summary"]["events_per_s"]["median"] / base
                )
        if options.latency:
            if found.commit_timestamps:
                results["latency"] = run_latency(found, options, workdir, progress)
            else:
                results["latency"] = {"skipped": "track_commit_timestamp is off on this server"}
    return results


def _summary(runs: Sequence[Mapping[str, float]]) -> dict[str, dict[str, float]]:
    return {key: median_min_max([run[key] for run in runs]) for key in runs[0]}


if __name__ == "__main__":
    baseline_main()
