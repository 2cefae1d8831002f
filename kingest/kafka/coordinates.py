"""Where a Kafka record lives."""

from __future__ import annotations

from typing import TypeAlias

__all__ = ["TopicPartitionKey"]

#: A partition as kingest keys its state: ``(topic, partition)``.
TopicPartitionKey: TypeAlias = tuple[str, int]
