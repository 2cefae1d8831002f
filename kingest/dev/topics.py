"""Kafka topics for tests and tools: create one and wait until it is usable.

Brokers do not auto-create topics reliably, and kingest must not rely on it, so tests,
``kingest demo`` and ``kingest bench`` create theirs explicitly with :func:`create_topic`.
Creating is not enough: a CreateTopics reply comes before every partition has a leader,
and a client that produces or subscribes in between sees "unknown topic or partition".
So :func:`create_topic` waits until the metadata shows a leader for each partition.

It works on any Kafka-protocol broker (Tansu, Apache Kafka, a real cluster) through the
admin client, and on the address of a :class:`~kingest.dev.mock_cluster.MockKafkaCluster`
of this process through librdkafka's mock API, since the mock cluster does not implement
CreateTopics. :func:`kafka_metadata_ok` is the readiness probe the brokers started here
share: a broker is up once a client can fetch its metadata.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from kingest.dev.lifecycle import ServiceError, wait_until
from kingest.dev.mock_cluster import MockKafkaCluster

__all__ = ["create_topic", "delete_topic", "kafka_metadata_ok"]


def kafka_metadata_ok(bootstrap_servers: str, timeout: float) -> bool:
    """Whether a client can fetch cluster metadata within ``timeout`` seconds."""
    admin = AdminClient({"bootstrap.servers": bootstrap_servers, "log_level": 0})
    try:
        admin.list_topics(timeout=timeout)
    except KafkaException:
        return False
    return True


def _topic_ready(admin: AdminClient, name: str, partitions: int) -> bool:
    """The topic exists with at least ``partitions`` partitions, each with a leader."""
    try:
        metadata = admin.list_topics(topic=name, timeout=2).topics.get(name)
    except KafkaException:
        return False
    if metadata is None or metadata.error is not None:
        return False
    leaders = [p.leader for p in metadata.partitions.values()]
    return len(leaders) >= partitions and all(leader >= 0 for leader in leaders)


def create_topic(
    bootstrap_servers: str,
    name: str,
    partitions: int,
    *,
    config: Mapping[str, str] | None = None,
    timeout: float = 10,
    replication_factor: int = -1,
) -> None:
    """Create a topic and wait until its partitions have leaders; an existing one is fine.

    Brokers do not auto-create topics reliably (and kingest must not rely on it), so tests
    and ``kingest demo`` create them explicitly. The default replication factor (-1) lets
    the broker choose, which works on a single-node test broker and on a real cluster.
    An existing topic is left as it is, whatever its partition count. On the address of a
    :class:`MockKafkaCluster` of this process the topic is created through librdkafka's
    mock API, since the mock cluster does not implement CreateTopics.
    """
    if partitions < 1:
        raise ValueError(f"partitions must be at least 1, got {partitions}")
    if not name:
        raise ValueError("topic name must not be empty")
    mock = MockKafkaCluster.running_at(bootstrap_servers)
    if mock is not None:
        if config:
            raise ServiceError("the librdkafka mock cluster does not support topic configs")
        mock.create_topic(name, partitions)
        return
    admin = AdminClient({"bootstrap.servers": bootstrap_servers})
    request = NewTopic(
        name,
        num_partitions=partitions,
        replication_factor=replication_factor,
        config=dict(config or {}),
    )
    future = admin.create_topics([request], operation_timeout=timeout)[name]
    subject = f"topic {name!r} on {bootstrap_servers}"
    expected_partitions = partitions
    if _done_unless(future, KafkaError.TOPIC_ALREADY_EXISTS, "create", subject, timeout=timeout):
        expected_partitions = 1  # it existed: whatever it has
    if not wait_until(lambda: _topic_ready(admin, name, expected_partitions), timeout):
        raise ServiceError(
            f"{subject} has no leaders for its {expected_partitions} partitions after {timeout} s"
        )


def delete_topic(bootstrap_servers: str, name: str, *, timeout: float = 10) -> None:
    """Delete a topic (one that does not exist is fine), so that a broker keeping every
    topic in memory stops carrying it; raises :class:`ServiceError` otherwise."""
    admin = AdminClient({"bootstrap.servers": bootstrap_servers})
    future = admin.delete_topics([name], operation_timeout=timeout)[name]
    subject = f"topic {name!r} on {bootstrap_servers}"
    _done_unless(future, KafkaError.UNKNOWN_TOPIC_OR_PART, "delete", subject, timeout=timeout)


def _done_unless(future: Any, tolerated: int, verb: str, subject: str, *, timeout: float) -> bool:
    """Wait for an admin request (``verb`` a ``subject``, a topic); True when it failed
    with the error code ``tolerated`` (the topic already exists, or is already gone),
    False when it succeeded. Any other failure, or none within ``timeout``, is a
    :class:`ServiceError`."""
    try:
        future.result(timeout=timeout)
    except KafkaException as exc:
        error = exc.args[0]
        if not (isinstance(error, KafkaError) and error.code() == tolerated):
            raise ServiceError(f"cannot {verb} {subject}: {error}") from exc
        return True
    except TimeoutError as exc:
        raise ServiceError(f"{verb} {subject}: no answer within {timeout} s") from exc
    return False
