"""What a pipeline run opens and closes besides its actors: the writers' PostgreSQL
connection pool, the dead-letter topic's producer, and the Kafka consumer's close,
which after a drain deadline must not hold the process up.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from confluent_kafka import Consumer, KafkaException
from psycopg_pool import ConnectionPool

from kingest.config import Settings
from kingest.deadletters import DeadLetterPublisher
from kingest.kafka import client_config

__all__ = ["close_consumer", "close_within", "open_dead_letter_publisher", "open_pool"]

log = logging.getLogger(__name__)


def close_consumer(consumer: Consumer) -> None:
    try:
        consumer.close()
    except (KafkaException, RuntimeError) as error:
        log.warning("closing the consumer failed: %s", error)


def close_within(consumer: Consumer, timeout: float) -> None:
    """Close ``consumer``, waiting no longer than ``timeout``: after a drain deadline.

    librdkafka's close cannot be bounded: it waits until the coordinator has answered
    every offset commit request in flight (also when the consumer is destroyed without
    closing). Not waiting for it is safe: every offset kingest asked to commit is
    durably stored, so whether the coordinator stores it or not, nothing is lost, and
    nothing more will be committed. The close goes on, on a daemon thread, until the
    process exits; if it has not left the group by then, the coordinator reassigns the
    partitions after session.timeout.ms, as after a crash.
    """
    closing = threading.Thread(
        target=close_consumer, args=(consumer,), name="kingest-close", daemon=True
    )
    closing.start()
    closing.join(timeout)
    if closing.is_alive():
        log.warning(
            "the consumer did not close within %.0fs of the drain deadline (an offset commit "
            "is still unanswered); not waiting for it: nothing more is committed",
            timeout,
        )


def open_dead_letter_publisher(settings: Settings) -> DeadLetterPublisher | None:
    """The dead-letter topic's producer, when dead letters go to a topic."""
    if not settings.dead_letters.to_topic:
        return None
    return DeadLetterPublisher(
        client_config(settings, "dead-letters"),
        topic_template=settings.dead_letters.topic,
        consumer_group=settings.kafka.group_id,
        delivery_timeout_s=settings.dead_letters.publish_timeout_s,
    )


def open_pool(settings: Settings) -> ConnectionPool[Any]:
    """The writers' connection pool: one connection per writer, sessions configured."""
    database = settings.database

    def configure(conn: Any) -> None:
        if not database.prepared_statements:
            conn.prepare_threshold = None  # psycopg then prepares nothing, prepare=True too
        conn.autocommit = True
        conn.execute(
            "SELECT set_config('statement_timeout', %s, false), "
            "set_config('application_name', %s, false)",
            (str(database.statement_timeout_ms), f"kingest:{settings.kafka.group_id}"[:63]),
        )
        conn.autocommit = False

    pool: ConnectionPool[Any] = ConnectionPool(
        database.url,
        min_size=settings.pipeline.writers,
        max_size=settings.pipeline.writers,
        kwargs={"connect_timeout": max(1, round(database.connect_timeout_s))},
        configure=configure,
        timeout=database.connect_timeout_s,
        # The pool reconnects a lost connection on its own schedule, doubling the delay
        # after each failure for up to reconnect_timeout (default 300 s): after a 20 s
        # PostgreSQL outage its next attempt came ~9 s after the server was back, after
        # longer ones minutes later. Giving up after the writers' longest backoff instead
        # makes the waiting writers start a fresh attempt (the pool grows on demand), so
        # reconnecting follows the writers' bounded backoff (invariant 5, docs/design.md).
        reconnect_timeout=settings.pipeline.retry_max_s,
        name="kingest-writers",
        open=False,
    )
    pool.open(wait=True, timeout=database.connect_timeout_s)
    return pool
