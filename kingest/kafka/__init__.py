"""Kafka clients built from the settings.

Contract: :func:`consumer_config` is the one place where kingest's librdkafka consumer
configuration is assembled (the settings, the pass-through ``KINGEST_RDKAFKA_*``
properties and the properties kingest must own, such as manual offset commits);
:func:`client_config` is the common part every client of kingest's (producer, admin,
lag sampler) shares.
"""

from __future__ import annotations

from kingest.kafka.consumer import client_config, consumer_config
from kingest.kafka.coordinates import TopicPartitionKey

__all__ = ["TopicPartitionKey", "client_config", "consumer_config"]
