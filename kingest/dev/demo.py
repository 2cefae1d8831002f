"""``kingest demo``: the real pipeline on embedded local services, end to end.

Starts a Tansu broker and an embedded PostgreSQL (both shipped as PyPI wheels), applies
the migrations, starts ``kingest start`` as a child process configured only through
``KINGEST_*`` variables (exactly as in production), produces a synthetic stream and shows
two live bars: events produced, and events ingested (offsets committed by kingest, which
only happens once the rows are durable in PostgreSQL). Ctrl-C stops everything cleanly.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import FrameType
from typing import Any

import psycopg
from confluent_kafka import Consumer, KafkaException, TopicPartition
from psycopg import sql
from rich.console import Console
from rich.table import Table

from kingest.dev.demo_catalog import DemoCatalog
from kingest.dev.lifecycle import clean_env, free_port
from kingest.dev.postgres import LocalPostgres
from kingest.dev.producer import ProduceReport, ProducibleRecord, produce_records
from kingest.dev.services import FAST_GROUP_SETTINGS
from kingest.dev.synth import SyntheticStream
from kingest.dev.tansu import LocalKafka
from kingest.dev.topics import create_topic
from kingest.store import apply_migrations
from kingest.telemetry import new_progress

__all__ = ["DEMO_TOPIC", "committed_offsets", "committed_total", "run_demo"]

#: The demo's topic: the built-in stream's, or a catalog's envelope messages.
DEMO_TOPIC = "ml-events"
GROUP = "kingest-demo"


def committed_offsets(
    bootstrap_servers: str, group: str, topic: str, partitions: int
) -> dict[int, int]:
    """The group's committed offset per partition (negative: nothing committed)."""
    consumer = Consumer({"bootstrap.servers": bootstrap_servers, "group.id": group})
    try:
        committed = consumer.committed(
            [TopicPartition(topic, p) for p in range(partitions)], timeout=10
        )
    finally:
        consumer.close()
    return {tp.partition: tp.offset for tp in committed}


def committed_total(bootstrap_servers: str, group: str, topic: str, partitions: int) -> int:
    """Sum of the group's committed offsets over the topic's partitions (0 when none)."""
    try:
        committed = committed_offsets(bootstrap_servers, group, topic, partitions)
    except KafkaException:
        return 0
    return sum(max(offset, 0) for offset in committed.values())


def _service_env(
    kafka: LocalKafka, postgres: LocalPostgres, http_port: int, catalog: DemoCatalog | None
) -> dict[str, str]:
    env = clean_env()
    env.update(
        {
            "KINGEST_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
            "KINGEST_TOPICS": DEMO_TOPIC,
            "KINGEST_GROUP_ID": GROUP,
            "KINGEST_DATABASE_URL": postgres.url,
            "KINGEST_ENV": "dev",
            "KINGEST_KAFKA_SESSION_TIMEOUT_MS": FAST_GROUP_SETTINGS["session.timeout.ms"],
            "KINGEST_KAFKA_HEARTBEAT_INTERVAL_MS": FAST_GROUP_SETTINGS["heartbeat.interval.ms"],
            "KINGEST_KAFKA_MAX_POLL_INTERVAL_MS": "60000",
            # Metrics and health on loopback only, on a port free on this machine.
            "KINGEST_HTTP_HOST": "127.0.0.1",
            "KINGEST_HTTP_PORT": str(http_port),
        }
    )
    if catalog is not None:
        env.update(catalog.service_env())
    return env


def _table_counts(url: str, tables_like: str = "%") -> list[tuple[str, int]]:
    """Rows of each table of schema kingest (but its migrations) whose name is like
    ``tables_like``."""
    with psycopg.connect(url) as conn:
        tables = [
            row[0]
            for row in conn.execute(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = 'kingest' AND table_type = 'BASE TABLE' "
                "AND table_name NOT LIKE '%%migrations%%' AND table_name LIKE %s "
                "ORDER BY table_name",
                (tables_like,),
            )
        ]
        counts = []
        for table in tables:
            query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("kingest", table))
            row = conn.execute(query).fetchone()
            counts.append((table, int(row[0]) if row else 0))
        return counts


def run_demo(
    *,
    count: int,
    partitions: int,
    rate: float | None,
    exit_when_done: bool,
    console: Console | None = None,
    catalog: DemoCatalog | None = None,
) -> int:
    """Run the demo (on ``catalog`` when given, else the built-in one); returns the
    process exit code."""
    console = console or Console(stderr=True)
    workdir = Path(tempfile.mkdtemp(prefix="kingest-demo-"))
    kafka = LocalKafka(log_path=workdir / "broker.log")
    postgres = LocalPostgres(workdir / "pgdata")
    child: subprocess.Popen[bytes] | None = None
    log_path = workdir / "kingest.log"
    previous = _stop_on_sigterm()
    try:
        with console.status("starting a Kafka-protocol broker (Tansu) and PostgreSQL..."):
            kafka.start()
            postgres.start()
            topics = list(catalog.topics) if catalog is not None else [DEMO_TOPIC]
            for topic in topics:
                create_topic(kafka.bootstrap_servers, topic, partitions)
            applied = apply_migrations(postgres.url)
            statements = len(catalog.apply(postgres.url).statements) if catalog else 0
        console.print(
            f"broker    {kafka.bootstrap_servers}  topics {', '.join(topics)} "
            f"({partitions} partitions each)"
        )
        console.print(f"postgres  {postgres.url}  ({len(applied)} migrations applied)")
        if catalog is not None:
            console.print(
                f"catalog   {catalog.path}  schema {catalog.catalog.schema} "
                f"({statements} statements applied)",
                highlight=False,
            )
        http_port = free_port("127.0.0.1")
        console.print(f"metrics   http://127.0.0.1:{http_port}/metrics  (and /healthz, /readyz)")
        with log_path.open("wb") as log_file:
            child = subprocess.Popen(
                [sys.executable, "-m", "kingest", "start"],
                env=_service_env(kafka, postgres, http_port, catalog),
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches the demo, which stops kingest once
            )
        console.print(f"kingest   pid {child.pid}, log {log_path}")
        seed = int(time.time())
        streams: Mapping[str, Iterable[ProducibleRecord]] = (
            catalog.streams(seed)
            if catalog is not None
            else {DEMO_TOPIC: SyntheticStream(seed=seed)}
        )
        _produce_and_follow(
            kafka,
            streams,
            count=count,
            partitions=partitions,
            rate=rate,
            child=child,
            console=console,
        )
        if child.poll() is not None:
            console.print(f"[red]kingest exited with {child.returncode}; its log:[/]")
            console.print(log_path.read_text(errors="replace")[-4000:], markup=False)
            return 1
        if catalog is not None:
            _print_catalog_summary(console, postgres.url, catalog)
        else:
            _print_summary(console, postgres.url)
        if not exit_when_done:
            console.print(
                "\nkingest keeps running. Explore the tables with:\n"
                f"  {postgres.psql_path} '{postgres.url}'\nPress Ctrl-C to stop everything.",
                markup=False,
                highlight=False,
            )
            while child.poll() is None:
                time.sleep(0.5)
        return 0
    except KeyboardInterrupt:
        console.print("\nstopping...")
        return 0
    finally:
        code = _stop_child(child)
        if child is not None:
            console.print(f"kingest stopped (exit code {code})")
        postgres.cleanup()
        kafka.stop()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _stop_on_sigterm() -> signal.Handlers | Callable[[int, FrameType | None], Any] | int | None:
    """SIGTERM stops the demo as Ctrl-C does (kingest, the broker and PostgreSQL with it);
    Python's default would end the process and leave them running. Returns the handler
    it replaced (None off the main thread, where signals cannot be handled)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _interrupt)


def _produce_and_follow(
    kafka: LocalKafka,
    streams: Mapping[str, Iterable[ProducibleRecord]],
    *,
    count: int,
    partitions: int,
    rate: float | None,
    child: subprocess.Popen[bytes],
    console: Console,
) -> int:
    """Produce ``count`` records to each topic of ``streams`` (one topic after the other,
    in a thread); follow committed offsets until everything is ingested."""
    report: list[ProduceReport] = []
    total = count * len(streams)
    bootstrap = kafka.bootstrap_servers
    with new_progress(console) as progress:
        produced_task = progress.add_task("produced", total=total, rate="")
        ingested_task = progress.add_task("ingested", total=total, rate="")

        def advance(delta: int) -> None:
            progress.advance(produced_task, delta)

        def produce_all() -> None:
            for topic, stream in streams.items():
                report.append(
                    produce_records(
                        bootstrap, topic, stream, count=count, rate=rate, progress=advance
                    )
                )

        producer = threading.Thread(target=produce_all, name="demo-producer", daemon=True)
        producer.start()
        done = 0
        while child.poll() is None:
            done = sum(committed_total(bootstrap, GROUP, topic, partitions) for topic in streams)
            progress.update(ingested_task, completed=done)
            speed = progress.tasks[ingested_task].speed
            if speed:
                progress.update(ingested_task, rate=f"{speed:,.0f}/s")
            if done >= total:
                break
            time.sleep(0.5)
        producer.join(timeout=60)
    return done


def _write_window(url: str) -> tuple[int, float]:
    """Fact rows, and seconds from the first to the last write transaction's start."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*), "
            "coalesce(extract(epoch FROM max(ingested_at) - min(ingested_at)), 0) "
            "FROM (SELECT ingested_at FROM kingest.inferences UNION ALL "
            "SELECT ingested_at FROM kingest.metrics) AS busiest"
        ).fetchone()
    assert row is not None
    return int(row[0]), float(row[1])


def _print_summary(console: Console, url: str) -> None:
    console.print("\n[bold]stored in PostgreSQL[/] (schema kingest)")
    table = Table("table", "rows")
    for name, rows in _table_counts(url):
        table.add_row(name, f"{rows:,}")
    console.print(table)
    rows, seconds = _write_window(url)
    pace = f"over {seconds:.1f}s ({rows / seconds:,.0f} rows/s)" if seconds >= 1 else "in under 1s"
    console.print(f"inference and metric rows: {rows:,} written {pace}")


def _print_catalog_summary(console: Console, url: str, catalog: DemoCatalog) -> None:
    console.print(f"\n[bold]stored in PostgreSQL[/] (schema {catalog.catalog.schema})")
    table = Table("table", "rows")
    for name, rows in catalog.table_counts(url):
        table.add_row(name, f"{rows:,}")
    for name, rows in _table_counts(url, "dead_letters"):
        table.add_row(f"kingest.{name}", f"{rows:,}")
    console.print(table)


def _stop_child(child: subprocess.Popen[bytes] | None) -> int | None:
    if child is None:
        return None
    if child.poll() is None:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(timeout=60)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    return child.returncode
