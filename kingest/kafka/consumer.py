"""librdkafka client configuration derived from :class:`kingest.config.settings.Settings`."""

from __future__ import annotations

import logging
from typing import Any

from kingest.config import Settings

__all__ = ["client_config", "consumer_config"]

log = logging.getLogger(__name__)
#: librdkafka's own log lines go through Python logging (JSON or console, like the rest)
#: instead of straight to stderr.
RDKAFKA_LOG = logging.getLogger("kingest.librdkafka")

#: librdkafka's default fetch.max.bytes (50 MiB): the most one fetch response carries.
FETCH_MAX_BYTES_DEFAULT = 52_428_800
#: librdkafka's consumer queue holds at most this many polls' worth of messages.
PREFETCH_POLLS = 4
#: How long librdkafka waits before fetching again once its queue is full (default 1 s).
FETCH_QUEUE_BACKOFF_MS = 50
FETCH_WAIT_MAX_MS = 100


def _log_client_error(error: Any) -> None:
    # Client-level errors (all brokers down, authentication failures) are reported here;
    # librdkafka keeps retrying by itself unless the error is fatal.
    log.warning("kafka client error: %s", error)


def client_config(settings: Settings, role: str) -> dict[str, Any]:
    """Properties of a helper client (admin check, dead-letter producer, replay): the
    brokers, a client.id naming its role, and every KINGEST_RDKAFKA_* pass-through
    property, so SASL and TLS apply to every connection kingest makes."""
    kafka = settings.kafka
    return {
        "bootstrap.servers": kafka.bootstrap_servers,
        "client.id": f"{kafka.client_id}-{role}",
        "logger": RDKAFKA_LOG,
        **kafka.properties,
    }


def consumer_config(settings: Settings) -> dict[str, Any]:
    """The consumer's properties: the seed's defaults, the KINGEST_KAFKA_* settings, then
    every KINGEST_RDKAFKA_* pass-through property (SASL, TLS...) on top."""
    kafka = settings.kafka
    config: dict[str, Any] = {
        "bootstrap.servers": kafka.bootstrap_servers,
        "group.id": kafka.group_id,
        "client.id": kafka.client_id,
        "partition.assignment.strategy": kafka.assignment_strategy,
        "auto.offset.reset": kafka.auto_offset_reset,
        "session.timeout.ms": kafka.session_timeout_ms,
        "heartbeat.interval.ms": kafka.heartbeat_interval_ms,
        "max.poll.interval.ms": kafka.max_poll_interval_ms,
        # The prefetch bound (docs/memory.md). With subscribe() every partition feeds ONE
        # consumer queue and queued.max.messages.kbytes bounds that queue as a whole
        # (librdkafka >= 1.5; CONFIGURATION.md, issue #4137); fetching stops once the
        # queue holds that many kilobytes or queued.min.messages messages. A fetch
        # response already under way is still queued in full, so a response may not be
        # bigger than the queue itself: fetch.max.bytes (default 50 MiB) is capped to
        # it. librdkafka raises it to message.max.bytes (1 MB) when it is lower.
        "queued.max.messages.kbytes": kafka.fetch_queue_kbytes,
        "fetch.max.bytes": min(FETCH_MAX_BYTES_DEFAULT, kafka.fetch_queue_kbytes * 1024),
        # The count bound of the same queue (librdkafka's default is 100,000 messages,
        # ~50 MiB of small events). Four polls' worth keeps the loop fed while
        # librdkafka fetches more; fetch.queue.backoff.ms (default 1 s) is how long it
        # waits before fetching again once a bound is reached, and 1 s is long enough
        # to drain such a queue and starve the loop (measured: -28 % throughput).
        "queued.min.messages": PREFETCH_POLLS * kafka.poll_batch_size,
        "fetch.queue.backoff.ms": FETCH_QUEUE_BACKOFF_MS,
        # How long a broker may hold a fetch that has less than fetch.min.bytes: part of
        # every message's latency when the stream is not a backlog (librdkafka's 500 ms
        # default alone was p50 324 ms at 5k events/s in `kingest bench`).
        "fetch.wait.max.ms": FETCH_WAIT_MAX_MS,
        # Offsets are committed explicitly, only once every message below them is durable.
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": False,
        "error_cb": _log_client_error,
        "logger": RDKAFKA_LOG,
    }
    config.update(kafka.properties)
    return config
