"""librdkafka client configuration derived from :class:`kingest.config.Settings`."""

from __future__ import annotations

import logging
from typing import Any

from kingest.config import Settings

__all__ = ["consumer_config"]

log = logging.getLogger(__name__)


def _log_client_error(error: Any) -> None:
    # Client-level errors (all brokers down, authentication failures) are reported here;
    # librdkafka keeps retrying by itself unless the error is fatal.
    log.warning("kafka client error: %s", error)


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
        "queued.max.messages.kbytes": kafka.fetch_queue_kbytes,
        # Offsets are committed explicitly, only once every message below them is durable.
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": False,
        "error_cb": _log_client_error,
    }
    config.update(kafka.properties)
    return config
