"""kingest.dev's local services against the real services they start: Tansu, PostgreSQL,
librdkafka's mock cluster, and the choice between external, container and embedded
services."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import psutil  # type: ignore[import-untyped]
import psycopg
import pytest
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from kingest.dev import (
    FAST_GROUP_SETTINGS,
    LocalKafka,
    LocalPostgres,
    MockKafkaCluster,
    ServiceError,
    Services,
    create_topic,
    plan_services,
    provide_services,
)
from kingest.dev.services import (
    ENV_DATABASE_URL,
    ENV_KAFKA_BOOTSTRAP_SERVERS,
    ENV_SERVICES,
    docker_available,
)
from kingest.dev.topics import delete_topic

pytestmark = pytest.mark.integration

MESSAGES = 1000
KEYS = 50


def _accepts_connections(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


def _produce_keyed(bootstrap: str, topic: str, count: int, **settings: str) -> None:
    failures: list[KafkaError] = []

    def delivered(error: KafkaError | None, _message: Message) -> None:
        if error is not None:
            failures.append(error)

    producer = Producer({"bootstrap.servers": bootstrap, **settings})
    for i in range(count):
        producer.produce(topic, key=f"key-{i % KEYS}", value=str(i), on_delivery=delivered)
    assert producer.flush(30) == 0, "messages left undelivered"
    assert failures == []


def _consume(bootstrap: str, topic: str, group: str, count: int) -> list[Message]:
    """Consume ``count`` messages of ``topic`` as a member of ``group`` (deadline 30 s)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            **FAST_GROUP_SETTINGS,
        }
    )
    consumed: list[Message] = []
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + 30
        while len(consumed) < count and time.monotonic() < deadline:
            for message in consumer.consume(500, timeout=0.5):
                assert message.error() is None, message.error()
                consumed.append(message)
        if consumed:
            consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    return consumed


def _assert_keyed_round_trip(messages: list[Message]) -> None:
    values_by_key: dict[bytes, list[int]] = defaultdict(list)
    partitions_by_key: dict[bytes, set[int]] = defaultdict(set)
    for message in messages:
        key = message.key()
        value = message.value()
        assert isinstance(key, bytes)
        assert isinstance(value, bytes)
        partition = message.partition()
        assert partition is not None
        values_by_key[key].append(int(value))
        partitions_by_key[key].add(partition)
    assert sorted(v for values in values_by_key.values() for v in values) == list(range(MESSAGES))
    assert all(len(partitions) == 1 for partitions in partitions_by_key.values())
    assert all(values == sorted(values) for values in values_by_key.values()), "order per key"


# --------------------------------------------------------------------------- LocalKafka


def test_local_kafka_round_trip_with_a_group_then_stop_leaves_no_process(tmp_path: Path) -> None:
    log_path = tmp_path / "broker.log"
    kafka = LocalKafka(log_path=log_path)
    with kafka:
        pid = kafka.pid
        assert pid is not None
        assert psutil.pid_exists(pid)
        kafka.create_topic("round-trip", 3)
        _produce_keyed(kafka.bootstrap_servers, "round-trip", MESSAGES)
        consumed = _consume(kafka.bootstrap_servers, "round-trip", "round-trip-group", MESSAGES)
        _assert_keyed_round_trip(consumed)
        assert {m.partition() for m in consumed} == {0, 1, 2}
    assert kafka.pid is None
    assert not psutil.pid_exists(pid)
    assert not _accepts_connections(kafka.bootstrap_servers)
    kafka.stop()  # idempotent
    assert "listening on" in log_path.read_text()


def test_local_kafka_reports_why_it_could_not_start() -> None:
    with socket.socket() as occupant:
        occupant.bind(("127.0.0.1", 0))
        occupant.listen()
        port = occupant.getsockname()[1]
        kafka = LocalKafka(port=port)
        with pytest.raises(ServiceError, match=rf"(?s)127\.0\.0\.1:{port}.*Address in use"):
            kafka.start()
    assert kafka.pid is None


def test_create_topic_is_idempotent(
    kafka_bootstrap: str, topic_factory: Callable[[int], str]
) -> None:
    topic = topic_factory(2)
    create_topic(kafka_bootstrap, topic, 2)  # already exists: fine
    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": "metadata-only"})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    finally:
        consumer.close()
    assert sorted(partitions) == [0, 1]
    with pytest.raises(ValueError, match="at least 1"):
        create_topic(kafka_bootstrap, topic, 0)


def test_delete_topic_removes_a_topic_and_accepts_a_missing_one(
    kafka_bootstrap: str, topic_factory: Callable[[int], str]
) -> None:
    topic = topic_factory(2)
    delete_topic(kafka_bootstrap, topic)
    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": "metadata-only"})
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
    finally:
        consumer.close()
    assert metadata is None or metadata.error is not None  # gone
    delete_topic(kafka_bootstrap, topic)  # already gone: fine


# --------------------------------------------------------------------------- LocalPostgres


def test_local_postgres_keeps_rows_across_stop_and_start(local_postgres: LocalPostgres) -> None:
    with psycopg.connect(local_postgres.url, autocommit=True) as conn:
        conn.execute("CREATE TABLE survivors (id int PRIMARY KEY, note text)")
        conn.execute("INSERT INTO survivors VALUES (1, 'written before the stop')")
        max_connections = conn.execute("SHOW max_connections").fetchone()
    assert max_connections == ("200",)  # settings reach the server
    pid = local_postgres.pid
    assert pid is not None

    local_postgres.stop()
    assert local_postgres.pid is None
    assert not psutil.pid_exists(pid)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(local_postgres.url, connect_timeout=2).close()
    local_postgres.stop()  # idempotent

    local_postgres.start()
    with psycopg.connect(local_postgres.url) as conn:
        rows = conn.execute("SELECT id, note FROM survivors").fetchall()
    assert rows == [(1, "written before the stop")]


def test_local_postgres_creates_databases_and_cleans_up_its_own_directory() -> None:
    with LocalPostgres() as postgres:
        data_dir = postgres.data_dir
        url = postgres.create_database("kt_created")
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == ("kt_created",)
        with pytest.raises(ValueError, match="invalid database name"):
            postgres.create_database('bad"; DROP DATABASE postgres; --')
        assert data_dir.is_dir()
    assert not data_dir.exists()
    assert postgres.pid is None


def test_local_postgres_keeps_a_data_dir_it_did_not_create(tmp_path: Path) -> None:
    data_dir = tmp_path / "pgdata"
    data_dir.mkdir()
    postgres = LocalPostgres(data_dir)
    try:
        postgres.start()
        with psycopg.connect(postgres.url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        postgres.cleanup()
    assert postgres.pid is None
    assert (data_dir / "PG_VERSION").is_file()


# --------------------------------------------------------------------------- MockKafkaCluster


def test_mock_cluster_reports_true_watermarks_and_keeps_commit_metadata() -> None:
    with MockKafkaCluster() as mock:
        bootstrap = mock.bootstrap_servers
        create_topic(bootstrap, "batched", 3)
        # Many messages per produce request: the case where Tansu's watermark is wrong.
        _produce_keyed(bootstrap, "batched", MESSAGES, **{"linger.ms": "50"})
        consumed = _consume(bootstrap, "batched", "mock-group", MESSAGES)
        _assert_keyed_round_trip(consumed)
        per_partition: dict[int, int] = defaultdict(int)
        for message in consumed:
            partition = message.partition()
            assert partition is not None
            per_partition[partition] += 1

        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "metadata-group"})
        try:
            watermarks = {
                p: consumer.get_watermark_offsets(TopicPartition("batched", p), timeout=10)
                for p in range(3)
            }
            consumer.commit(
                offsets=[TopicPartition("batched", 0, 1, "kingest-metadata")], asynchronous=False
            )
            committed = consumer.committed([TopicPartition("batched", 0)], timeout=10)
        finally:
            consumer.close()
        assert watermarks == {p: (0, per_partition[p]) for p in range(3)}
        assert committed[0].offset == 1
        assert committed[0].metadata == "kingest-metadata"

        # Another process reaches the cluster while this one keeps it alive.
        probe = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from confluent_kafka import Consumer, TopicPartition; "
                "c = Consumer({'bootstrap.servers': sys.argv[1], 'group.id': 'probe'}); "
                "print(sum(c.get_watermark_offsets(TopicPartition('batched', p), timeout=10)[1] "
                "for p in range(3))); c.close()",
                bootstrap,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert probe.stdout.strip() == str(MESSAGES)
    assert not _accepts_connections(bootstrap)
    assert MockKafkaCluster.running_at(bootstrap) is None


# --------------------------------------------------------------------------- choosing services


def test_provide_services_uses_external_services_named_in_the_environment(
    kafka_bootstrap: str, postgres_server_url: str
) -> None:
    environ = {ENV_KAFKA_BOOTSTRAP_SERVERS: kafka_bootstrap, ENV_DATABASE_URL: postgres_server_url}
    children_before = {p.pid for p in psutil.Process().children()}
    with provide_services(environ=environ) as services:
        assert services == Services(kafka_bootstrap, postgres_server_url, "external", "external")
        assert services.kind == "external"
        started = {p.pid for p in psutil.Process().children()} - children_before
        assert started == set(), "external services must not start anything"


def test_provide_services_embeds_what_the_environment_does_not_name(
    postgres_server_url: str,
) -> None:
    environ = {ENV_DATABASE_URL: postgres_server_url, ENV_SERVICES: "embedded"}
    children_before = {p.pid for p in psutil.Process().children()}
    with provide_services(environ=environ) as services:
        assert (services.kafka_kind, services.postgres_kind, services.kind) == (
            "embedded",
            "external",
            "mixed",
        )
        assert services.database_url == postgres_server_url
        broker = [p for p in psutil.Process().children() if p.pid not in children_before]
        assert len(broker) == 1
        assert "tansu" in broker[0].name()
        create_topic(services.bootstrap_servers, "mixed", 1)
    assert not psutil.pid_exists(broker[0].pid)


def test_plan_services_rejects_an_unknown_choice() -> None:
    with pytest.raises(ServiceError, match="expected 'embedded' or 'containers'"):
        plan_services(environ={ENV_SERVICES: "docker"})
    with pytest.raises(ServiceError, match="prefer="):
        plan_services(prefer="vm", environ={})
    both = {ENV_KAFKA_BOOTSTRAP_SERVERS: "broker:9092", ENV_DATABASE_URL: "postgresql://db/x"}
    plan = plan_services(environ=both)
    assert (plan.kafka, plan.postgres) == ("external", "external")


def test_forcing_containers_without_an_engine_fails_clearly() -> None:
    if docker_available():
        pytest.skip("a Docker engine answers here")
    with pytest.raises(ServiceError, match="no Docker engine"):
        plan_services(environ={ENV_SERVICES: "containers"})
    plan = plan_services(prefer="containers", environ={})  # a preference falls back
    assert (plan.kafka, plan.postgres) == ("embedded", "embedded")


def test_docker_available_answers_quickly(monkeypatch: pytest.MonkeyPatch) -> None:
    started = time.monotonic()
    assert isinstance(docker_available(), bool)
    assert time.monotonic() - started < 5
    monkeypatch.setenv("DOCKER_HOST", f"unix://{os.devnull}-no-engine.sock")
    started = time.monotonic()
    assert docker_available() is False
    assert time.monotonic() - started < 5
