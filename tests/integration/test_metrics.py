"""Metrics, health endpoints and `kingest lag`, scraped over HTTP from a running pipeline.

The lag figures run on librdkafka's mock cluster: Tansu under-reports end offsets when a
produce request carries several messages (docs/design.md), the mock cluster does not.
"""

from __future__ import annotations

import json
import logging
import random
import re
import socket
import threading
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import Result
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from typer.testing import CliRunner

from kingest.cli.commands import app
from kingest.config.loading import load_settings
from kingest.dev import LocalPostgres, MockKafkaCluster, SyntheticStream, create_topic
from kingest.pipeline.consumer import RunOutcome
from kingest.pipeline.fetching import FETCH_CHECK_INTERVAL_S
from kingest.runtime.http import TelemetryServer
from kingest.store.migrate import apply_migrations
from kingest.telemetry import catalog
from tests.integration.faulty_stream import invalid_event_value, undecodable_value
from tests.integration.support import (
    InProcessKingest,
    KingestProcess,
    all_committed,
    kingest_env,
    wait_for,
)

pytestmark = [pytest.mark.integration]

#: Labels the OpenTelemetry exporter adds to every series (the instrumentation scope).
SCOPE_LABELS = {"otel_scope_name", "otel_scope_version", "otel_scope_schema_url"}


# ---------------------------------------------------------------------------- helpers


def scrape(url: str) -> list[Sample]:
    """Every sample of ``url``/metrics, parsed by prometheus_client's own parser."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def values(samples: list[Sample], name: str, *by: str, **where: str) -> dict[Any, float]:
    """``{label values of by: value}`` of the samples called ``name`` matching ``where``."""
    found: dict[Any, float] = {}
    for sample in samples:
        if sample.name != name or any(sample.labels.get(k) != v for k, v in where.items()):
            continue
        key = tuple(sample.labels[label] for label in by)
        found[key[0] if len(by) == 1 else key] = sample.value
    return found


def value(samples: list[Sample], name: str, **where: str) -> float:
    found = values(samples, name, **where)
    assert len(found) == 1, f"{name} {where}: {found}"
    return next(iter(found.values()))


def get(url: str) -> tuple[int, dict[str, Any]]:
    """Status and JSON body of a health endpoint (503 is an answer, not an error)."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@dataclass
class Produced:
    """Where every delivered message landed."""

    end_offsets: Counter[int] = field(default_factory=Counter)
    delivered: int = 0

    def on_delivery(self, error: KafkaError | None, message: Message) -> None:
        assert error is None, error
        partition, offset = message.partition(), message.offset()
        assert partition is not None
        assert offset is not None
        self.delivered += 1
        self.end_offsets[partition] = max(self.end_offsets[partition], offset + 1)


def produce(
    bootstrap: str,
    topic: str,
    values_by_partition: Mapping[int, list[bytes]],
    produced: Produced | None = None,
) -> Produced:
    produced = produced or Produced()
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for partition, messages in values_by_partition.items():
        for payload in messages:
            producer.produce(
                topic, payload, b"k", partition=partition, on_delivery=produced.on_delivery
            )
    assert producer.flush(30) == 0
    return produced


def mock_topic(mock_cluster: MockKafkaCluster, partitions: int) -> str:
    topic = f"kt-metrics-{uuid.uuid4().hex[:8]}"
    create_topic(mock_cluster.bootstrap_servers, topic, partitions)
    return topic


def invoke_cli(env: Mapping[str, str], *args: str) -> Result:
    """Run a kingest command in this process, as the CLI would, without leaving its log
    handler (bound to the runner's captured, then closed, stream) on the root logger for
    the pipeline threads that keep logging after it."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        return CliRunner().invoke(app, list(args), env=dict(env))
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def lag_json(env: Mapping[str, str], *args: str) -> dict[str, Any]:
    result = invoke_cli(env, "lag", "--json", *args)
    assert result.exit_code == 0, result.output
    parsed: dict[str, Any] = json.loads(result.stdout)
    return parsed


def per_partition_lag(report: Mapping[str, Any]) -> dict[int, tuple[int | None, int, int]]:
    return {
        p["partition"]: (p["committed"], p["end_offset"], p["lag"]) for p in report["partitions"]
    }


@dataclass
class Running:
    kingest: InProcessKingest
    server: TelemetryServer

    @property
    def url(self) -> str:
        return self.server.url


@contextmanager
def running(env: Mapping[str, str]) -> Iterator[Running]:
    """The pipeline in-process, with its /metrics, /healthz and /readyz served."""
    with InProcessKingest(env) as kingest:
        server = TelemetryServer(kingest.pipeline, load_settings(env)).start()
        try:
            yield Running(kingest, server)
        finally:
            server.stop()


# ---------------------------------------------------------------------------- counts


def test_metrics_count_a_known_stream_exactly(
    mock_cluster: MockKafkaCluster, database_url: str
) -> None:
    bootstrap = mock_cluster.bootstrap_servers
    partitions = 4
    topic = mock_topic(mock_cluster, partitions)
    apply_migrations(database_url)
    rng = random.Random(11)
    records = SyntheticStream(seed=11).take(2_000)
    again = rng.sample(records, 150)  # second copies: duplicates of their event type
    poison = [undecodable_value(rng) for _ in range(20)] + [
        invalid_event_value(rng) for _ in range(12)
    ]
    plan: dict[int, list[bytes]] = {p: [] for p in range(partitions)}
    for index, record in enumerate(records):
        plan[index % partitions].append(record.value)
    for record in again:  # after the first copies, in the same partition
        plan[records.index(record) % partitions].append(record.value)
    for index, payload in enumerate(poison):
        plan[index % partitions].append(payload)
    produced = produce(bootstrap, topic, plan)
    assert produced.delivered == len(records) + len(again) + len(poison)

    group = "metrics-counts"
    env = kingest_env(bootstrap, database_url, topic, group, KINGEST_LAG_INTERVAL_S="0.3")
    with running(env) as run:
        kingest, url = run.kingest, run.url
        wait_for(
            lambda: all_committed(bootstrap, group, topic, produced.end_offsets, partitions),
            timeout=60,
            what="every offset committed",
        )

        def settled() -> bool:
            samples = scrape(url)
            lag = values(
                samples, catalog.CONSUMER_LAG.prometheus_name, "messaging_destination_partition_id"
            )
            return len(lag) == partitions and not any(lag.values())

        wait_for(settled, timeout=30, what="the lag gauge at 0 on every partition")
        samples = scrape(url)
        assert get(f"{url}/healthz")[0] == 200
        status, ready = get(f"{url}/readyz")
        assert status == 200, ready
        assert ready["status"] == "ok"
        stats = kingest.pipeline.stats.snapshot()
        print(f"/metrics after the stream:\n{len(samples)} samples; stats {stats}")

        # Every catalog metric is served under its Prometheus name with exactly its labels
        # (retries, dead letters the topic did not take and messages whose headers could
        # not be read have no series before the first one: see the outage test,
        # tests/integration/test_dead_letter_publish.py and test_hostile_metadata.py).
        for spec in catalog.ALL:
            if spec in (
                catalog.RETRIES,
                catalog.DEAD_LETTER_PUBLISH_FAILURES,
                catalog.UNREADABLE_HEADERS,
            ):
                continue
            names = (
                [f"{spec.prometheus_name}_{s}" for s in ("bucket", "count", "sum")]
                if spec.kind == "histogram"
                else [spec.prometheus_name]
            )
            for name in names:
                found = [s for s in samples if s.name == name]
                assert found, f"{spec.name}: no {name} on /metrics"
                for sample in found:
                    labels = set(sample.labels) - SCOPE_LABELS - {"le"}
                    assert labels == set(spec.prometheus_attributes), (name, sample.labels)

        tp = "messaging_destination_partition_id"
        # Consumed: every message, per partition, labelled with the group.
        consumed = values(
            samples,
            catalog.MESSAGES_CONSUMED.prometheus_name,
            tp,
            messaging_consumer_group_name=group,
            messaging_destination_name=topic,
        )
        assert consumed == {str(p): float(n) for p, n in produced.end_offsets.items()}

        # Processed by event type and outcome, as PostgreSQL holds them.
        processed = values(
            samples,
            catalog.EVENTS_PROCESSED.prometheus_name,
            "kingest_event_type",
            "kingest_outcome",
        )
        expected: Counter[tuple[str, str]] = Counter()
        for record in records:
            expected[(record.event_type, "stored")] += 1
        for record in again:
            expected[(record.event_type, "duplicate")] += 1
        with psycopg.connect(database_url) as conn:
            for event_type, count in conn.execute(
                "SELECT coalesce(event_type, 'unknown'), count(*) "
                "FROM kingest.dead_letters GROUP BY 1"
            ):
                expected[(event_type, "dead_lettered")] += count
            reasons = dict(
                conn.execute(
                    "SELECT error_stage || '/' || error_class, count(*) "
                    "FROM kingest.dead_letters GROUP BY 1"
                ).fetchall()
            )
        assert sum(reasons.values()) == len(poison)
        assert processed == {key: float(n) for key, n in expected.items()}
        assert sum(processed.values()) == produced.delivered

        # Dead letters by stage and reason, as stored.
        dead = values(
            samples, catalog.DEAD_LETTERS.prometheus_name, "kingest_error_stage", "error_type"
        )
        assert {f"{stage}/{reason}": n for (stage, reason), n in dead.items()} == {
            k: float(n) for k, n in reasons.items()
        }
        assert values(samples, catalog.RETRIES.prometheus_name) == {}

        # Batches: one size observation per transaction, summing to every message.
        size = catalog.BATCH_SIZE.prometheus_name
        assert value(samples, f"{size}_sum") == produced.delivered
        assert value(samples, f"{size}_count") == stats["transactions"]
        bounds = {s.labels["le"] for s in samples if s.name == f"{size}_bucket"}
        assert {float(b) for b in bounds} == {*catalog.BATCH_SIZE.buckets, float("inf")}
        duration = catalog.DB_WRITE_DURATION.prometheus_name
        assert (
            value(samples, f"{duration}_count", db_system_name="postgresql")
            == stats["transactions"]
        )
        latency = catalog.END_TO_END_LATENCY.prometheus_name
        assert value(samples, f"{latency}_count") == 2 * stats["batches_written"]
        assert value(samples, f"{latency}_sum") > 0

        # Commits, offsets and lag: everything consumed is committed, nothing waits.
        commits = values(samples, catalog.COMMITS.prometheus_name, "kingest_commit_result")
        assert commits["ok"] >= 1
        assert commits["failed"] == 0
        committed = values(
            samples, catalog.COMMITTED_OFFSET.prometheus_name, tp, messaging_destination_name=topic
        )
        assert committed == {str(p): float(n) for p, n in produced.end_offsets.items()}
        for gauge in (catalog.CONSUMER_LAG, catalog.MAILBOX_DEPTH, catalog.OLDEST_UNACKED_AGE):
            assert set(values(samples, gauge.prometheus_name, tp).values()) == {0.0}, gauge.name
        for gauge in (
            catalog.WRITER_QUEUE_DEPTH,
            catalog.BATCHES_IN_FLIGHT,
            catalog.PARTITIONS_PAUSED,
        ):
            assert value(samples, gauge.prometheus_name) == 0, gauge.name
        assert value(samples, catalog.PARTITIONS_ASSIGNED.prometheus_name) == partitions
        assert value(samples, catalog.READY.prometheus_name) == 1
        assert values(samples, catalog.REBALANCES.prometheus_name, "kingest_rebalance_kind") == {
            "assign": 1.0,
            "revoke": 0.0,
            "lost": 0.0,
        }
        cpu = values(samples, catalog.PROCESS_CPU_TIME.prometheus_name, "cpu_mode")
        assert set(cpu) == {"user", "system"}
        assert cpu["user"] > 0
        assert value(samples, catalog.PROCESS_MEMORY_USAGE.prometheus_name) > 50 * 2**20

        assert kingest.stop() is RunOutcome.DRAINED
        status, health = get(f"{url}/healthz")
        assert status == 503
        assert health["failed"] == ["consumer_loop"]
        assert health["checks"]["consumer_loop"]["detail"] == "stopped"


# ---------------------------------------------------------------------------- lag and health


class GroupMember:
    """A plain consumer joining the group (it never commits), polling on its own thread."""

    def __init__(self, bootstrap: str, group: str, topic: str) -> None:
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": group,
                "partition.assignment.strategy": "roundrobin",
                "session.timeout.ms": 6000,
                "heartbeat.interval.ms": 1000,
                "enable.auto.commit": False,
            }
        )
        self.assigned = threading.Event()
        self._consumer.subscribe([topic], on_assign=lambda *_: self.assigned.set())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._consumer.poll(0.2)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._consumer.close()


def test_lag_readiness_and_a_stalled_loop_through_a_database_outage(
    mock_cluster: MockKafkaCluster, local_postgres: LocalPostgres
) -> None:
    bootstrap = mock_cluster.bootstrap_servers
    partitions = 3
    topic = mock_topic(mock_cluster, partitions)
    database_url = local_postgres.create_database("kt_lag")
    apply_migrations(database_url)
    group = "metrics-lag"
    cli_env = {
        "KINGEST_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KINGEST_GROUP_ID": group,
        "KINGEST_TOPICS": topic,
    }
    stream = iter(SyntheticStream(seed=12))

    def batch(per_partition: int) -> dict[int, list[bytes]]:
        return {p: [next(stream).value for _ in range(per_partition)] for p in range(partitions)}

    produced = produce(bootstrap, topic, batch(100))
    # Before kingest ever ran: nothing committed, everything is lag.
    report = lag_json(cli_env)
    assert per_partition_lag(report) == dict.fromkeys(range(partitions), (None, 100, 100))
    assert report["total_lag"] == 3 * 100

    env = kingest_env(
        bootstrap,
        database_url,
        topic,
        group,
        KINGEST_LAG_INTERVAL_S="0.3",
        KINGEST_HEALTH_LOOP_STALL_S="1",
        KINGEST_RETRY_MAX_S="0.5",
        KINGEST_DATABASE_CONNECT_TIMEOUT_S="1",
    )
    tp = "messaging_destination_partition_id"
    lag_name = catalog.CONSUMER_LAG.prometheus_name
    committed_name = catalog.COMMITTED_OFFSET.prometheus_name
    everywhere = {str(p) for p in range(partitions)}

    with running(env) as run:
        url = run.url

        def gauges(name: str) -> dict[Any, float]:
            return values(scrape(url), name, tp)

        def caught_up(end: int) -> bool:
            return gauges(lag_name) == dict.fromkeys(everywhere, 0.0) and gauges(
                committed_name
            ) == dict.fromkeys(everywhere, float(end))

        wait_for(lambda: caught_up(100), timeout=60, what="lag 0, committed 100")
        assert per_partition_lag(lag_json(cli_env)) == dict.fromkeys(range(3), (100, 100, 0))
        assert get(f"{url}/readyz")[0] == 200

        # PostgreSQL goes away: new messages are consumed but cannot become durable.
        local_postgres.stop()
        produce(bootstrap, topic, batch(20), produced)
        wait_for(
            lambda: gauges(lag_name) == dict.fromkeys(everywhere, 20.0),
            timeout=30,
            what="the lag gauge at 20 on every partition",
        )
        wait_for(
            lambda: value(scrape(url), catalog.BATCHES_IN_FLIGHT.prometheus_name) > 0,
            timeout=10,
            what="batches in flight",
        )
        samples = scrape(url)
        assert values(samples, committed_name, tp) == dict.fromkeys(everywhere, 100.0)
        ages = values(samples, catalog.OLDEST_UNACKED_AGE.prometheus_name, tp)
        assert set(ages) == everywhere
        assert min(ages.values()) > 0
        retries = values(samples, catalog.RETRIES.prometheus_name, "kingest_operation")
        assert retries["write"] >= 1, retries
        assert per_partition_lag(lag_json(cli_env)) == dict.fromkeys(range(3), (100, 120, 20))
        # (a probe's answer is reused for up to two seconds)
        wait_for(lambda: get(f"{url}/readyz")[0] == 503, timeout=10, what="/readyz 503")
        status, ready = get(f"{url}/readyz")
        assert ready["failed"] == ["database"], ready
        assert "PostgreSQL unreachable" in ready["checks"]["database"]["detail"]
        assert value(scrape(url), catalog.READY.prometheus_name) == 0
        # The consumer loop keeps polling through the outage: alive.
        status, health = get(f"{url}/healthz")
        assert status == 200, health

        # A second member joins: the revoke waits for the writers, so the loop stalls.
        member = GroupMember(bootstrap, group, topic)
        try:
            wait_for(lambda: get(f"{url}/healthz")[0] == 503, timeout=30, what="/healthz 503")
            status, health = get(f"{url}/healthz")
            assert health["failed"] == ["consumer_loop"], health
            detail = health["checks"]["consumer_loop"]["detail"]
            assert re.search(r"no poll for [\d.]+ s", detail), detail
            local_postgres.start()
            wait_for(lambda: get(f"{url}/healthz")[0] == 200, timeout=60, what="/healthz 200")
            wait_for(member.assigned.is_set, timeout=30, what="the member's assignment")
        finally:
            member.close()  # leaves the group: kingest owns every partition again
        # Alone again with every partition (the revoke's commit may have come too late for
        # the rebalance; the redelivered messages are written again, idempotently).
        wait_for(lambda: caught_up(120), timeout=60, what="lag 0, committed 120")
        wait_for(lambda: get(f"{url}/readyz")[0] == 200, timeout=30, what="/readyz 200")
        assert run.kingest.stop() is RunOutcome.DRAINED
    assert per_partition_lag(lag_json(cli_env)) == dict.fromkeys(range(3), (120, 120, 0))
    assert dict(produced.end_offsets) == dict.fromkeys(range(partitions), 120)


class DeafToResume(Consumer):  # type: ignore[misc]
    """A real consumer that ignores kingest's resume of the partitions in ``deaf``: the
    state librdkafka leaves a partition in when its pause flag outlives kingest's record.

    Setting ``wake`` resumes them at the next poll, on the consumer loop's thread (a
    resume from another thread can wait for minutes on the loop's callbacks)."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.deaf: set[tuple[str, int]] = set()
        self.wake = threading.Event()

    def resume(self, partitions: list[TopicPartition]) -> None:
        heard = [p for p in partitions if (p.topic, p.partition) not in self.deaf]
        if heard:
            super().resume(heard)

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Message]:
        if self.wake.is_set() and self.deaf:
            deaf, self.deaf = self.deaf, set()
            super().resume([TopicPartition(*tp) for tp in deaf])
        messages: list[Message] = super().consume(num_messages, timeout)
        return messages


def test_readiness_and_a_gauge_name_a_partition_the_client_keeps_paused(
    mock_cluster: MockKafkaCluster, database_url: str
) -> None:
    # kingest pauses partition 0 (its writes are held back by a lock, so it stays paused)
    # and resumes it once the lock is gone, but the consumer keeps it paused: it has
    # messages and is never fetched. Nothing of it is unacknowledged, so only the fetch
    # check can see it.
    bootstrap = mock_cluster.bootstrap_servers
    topic = mock_topic(mock_cluster, 2)
    apply_migrations(database_url)
    records = SyntheticStream(seed=13).take(6_000)
    produced = produce(bootstrap, topic, {0: [r.value for r in records[:5_000]], 1: []})
    group = "fetch-stall"
    stall_s = 3.0
    env = kingest_env(
        bootstrap,
        database_url,
        topic,
        group,
        KINGEST_HEALTH_MAX_FETCH_STALL_S=str(stall_s),
        KINGEST_PARTITION_QUEUE_MESSAGES="100",
        KINGEST_KAFKA_POLL_BATCH_SIZE="100",
        KINGEST_BATCH_SIZE="100",
    )
    stuck = (topic, 0)
    consumers: list[DeafToResume] = []

    def deaf_consumer(config: dict[str, Any]) -> DeafToResume:
        consumer = DeafToResume(config)
        consumers.append(consumer)
        return consumer

    kingest = InProcessKingest(env)
    pipeline = kingest.pipeline
    pipeline._consumer_factory = deaf_consumer
    server = TelemetryServer(pipeline, load_settings(env)).start()
    url = server.url
    with psycopg.connect(database_url) as blocker, kingest:
        blocker.execute("LOCK TABLE kingest.inferences IN ACCESS EXCLUSIVE MODE")
        wait_for(
            lambda: pipeline.stats.get("pauses") > 0 and pipeline.state().paused_count == 1,
            timeout=60,
            what="kingest pausing partition 0",
        )
        (consumer,) = consumers
        consumer.deaf = {stuck}
        blocker.rollback()
        wait_for(
            lambda: pipeline.state().paused_count == 0,
            timeout=60,
            what="kingest resuming partition 0 (the consumer does not)",
        )

        def stall() -> dict[str, float]:
            return values(
                scrape(url),
                catalog.FETCH_STALL.prometheus_name,
                "messaging_destination_partition_id",
            )

        wait_for(lambda: get(f"{url}/readyz")[0] == 503, timeout=30, what="/readyz 503")
        ready = get(f"{url}/readyz")[1]
        assert ready["failed"] == ["fetching"], ready
        assert f"{topic}[0]" in ready["checks"]["fetching"]["detail"]
        assert f"{topic}[1]" not in ready["checks"]["fetching"]["detail"]
        gauge = stall()
        assert gauge["0"] > stall_s, gauge
        assert gauge["1"] == 0, gauge
        assert get(f"{url}/healthz")[0] == 200

        consumer.wake.set()
        wait_for(
            lambda: all_committed(bootstrap, group, topic, produced.end_offsets, 2),
            timeout=60,
            what="partition 0 consumed and committed once resumed",
        )
        wait_for(
            lambda: get(f"{url}/readyz")[0] == 200,
            timeout=10 + FETCH_CHECK_INTERVAL_S,
            what="/readyz 200 again",
        )
        assert stall()["0"] < stall_s
        assert kingest.stop() is RunOutcome.DRAINED
    server.stop()


def test_kingest_lag_says_when_the_broker_is_unreachable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = invoke_cli(
        {"KINGEST_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}"},
        *("lag", "--group", "g", "--topic", "t", "--timeout", "1"),
    )
    assert result.exit_code == 1
    assert f"cannot reach Kafka at 127.0.0.1:{port}" in result.output
    assert "Traceback" not in result.output


def test_healthz_fails_once_a_pipeline_actor_failed(
    mock_cluster: MockKafkaCluster, database_url: str
) -> None:
    bootstrap = mock_cluster.bootstrap_servers
    topic = mock_topic(mock_cluster, 2)
    apply_migrations(database_url)
    stream = iter(SyntheticStream(seed=13))

    def some_events(count: int) -> dict[int, list[bytes]]:
        return {p: [next(stream).value for _ in range(count)] for p in range(2)}

    produced = produce(bootstrap, topic, some_events(50))
    group = "metrics-failure"
    env = kingest_env(bootstrap, database_url, topic, group)
    with running(env) as run:
        url = run.url
        wait_for(
            lambda: all_committed(bootstrap, group, topic, produced.end_offsets, 2),
            timeout=60,
            what="the first events committed",
        )
        assert get(f"{url}/healthz")[0] == 200
        # A table disappears under the running service: the next write of a metric event
        # fails as a schema error, the writer actor fails, the pipeline stops.
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("ALTER TABLE kingest.metrics RENAME TO metrics_gone")
        produce(bootstrap, topic, some_events(200))
        wait_for(lambda: get(f"{url}/healthz")[0] == 503, timeout=30, what="/healthz 503")
        status, health = get(f"{url}/healthz")
        assert "actors" in health["failed"], health
        detail = health["checks"]["actors"]["detail"]
        assert re.match(r"actor writer-\d+ failed: SchemaNotReadyError: ", detail), detail
        assert "kingest migrate" in detail
        status, ready = get(f"{url}/readyz")
        assert status == 503
        assert "actors" in ready["failed"]
        assert value(scrape(url), catalog.READY.prometheus_name) == 0
        assert run.kingest.stop() is RunOutcome.FAILED


def test_kingest_start_serves_the_endpoints_on_its_port(
    kafka_bootstrap: str,
    database_url: str,
    topic_factory: Callable[[int], str],
    tmp_path: Path,
) -> None:
    topic = topic_factory(2)
    apply_migrations(database_url)
    env = kingest_env(kafka_bootstrap, database_url, topic, "metrics-process")
    # A taken port is a clear start-up failure.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = {**env, "KINGEST_HTTP_PORT": str(port)}
        with KingestProcess(busy, tmp_path / "busy.log") as kingest:
            assert kingest.wait(60) == 1, kingest.log
        assert f"cannot serve /metrics, /healthz and /readyz on 127.0.0.1:{port}" in kingest.log
        assert "Traceback" not in kingest.log

    with KingestProcess(env, tmp_path / "kingest.log") as kingest:
        pattern = re.compile(r"serving /metrics, /healthz and /readyz on (http://127\.0\.0\.1:\d+)")
        wait_for(lambda: pattern.search(kingest.log) is not None, timeout=60, what="the URL")
        match = pattern.search(kingest.log)
        assert match is not None
        url = match.group(1)
        wait_for(lambda: get(f"{url}/readyz")[0] == 200, timeout=60, what="/readyz 200")
        samples = scrape(url)
        assert value(samples, catalog.READY.prometheus_name) == 1
        assert value(samples, catalog.PARTITIONS_ASSIGNED.prometheus_name) == 2
        target = [s for s in samples if s.name == "target_info"]
        assert target
        assert target[0].labels["service_name"] == "kingest"
        assert kingest.terminate_and_wait() == 0, kingest.log
