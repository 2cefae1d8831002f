"""What one poll of the consumer loop takes from the client, and how it is split.

:func:`next_messages` takes the messages the client holds without waiting for a full
batch (a stream slower than the batch would otherwise wait out the timeout in the
client); :func:`by_partition` splits a poll into each partition's messages in offset
order, with C loops over the message methods. Both run for every poll.
"""

from __future__ import annotations

import operator
from itertools import groupby
from typing import Any

from confluent_kafka import Consumer, Message

from kingest.kafka import TopicPartitionKey

__all__ = ["POLL_TIMEOUT_S", "by_partition", "next_messages"]

#: How long the loop waits for a message when the client has none; bounds the latency
#: of pause/resume and commits.
POLL_TIMEOUT_S = 0.02

_message_topic = operator.methodcaller("topic")
_message_partition = operator.methodcaller("partition")


def by_partition(
    messages: list[Message], topic: str | None = None
) -> dict[TopicPartitionKey, list[Message]]:
    """The messages of one poll grouped by partition, each group in offset order.

    A poll returns each partition's messages in runs (librdkafka hands them over fetch
    by fetch), so the work per message is one or two C calls; per run, one slice.
    ``topic`` is the only topic subscribed, when there is just one: every message is of
    it, so only partitions are read.
    """
    keys: list[Any]
    if topic is None:
        topics, partitions = map(_message_topic, messages), map(_message_partition, messages)
        keys = list(zip(topics, partitions, strict=True))
    else:
        keys = list(map(_message_partition, messages))
    groups: dict[TopicPartitionKey, list[Message]] = {}
    start = 0
    for key, run in groupby(keys):
        end = start + len(list(run))
        tp = key if topic is None else (topic, key)
        group = groups.get(tp)
        if group is None:
            groups[tp] = messages[start:end]
        else:
            group.extend(messages[start:end])
        start = end
    return groups


def next_messages(consumer: Consumer, batch_size: int) -> list[Message]:
    """Up to ``batch_size`` messages: those the client holds now, else the first one to
    arrive within :data:`POLL_TIMEOUT_S` and whatever came with it.

    ``consume(n, timeout)`` returns only once it has ``n`` messages or the timeout has
    passed, so in a stream slower than the batch every message would wait out the
    timeout in the client; a backlog fills every batch at once either way.
    """
    messages = consumer.consume(batch_size, 0)
    if messages:
        return messages
    first = consumer.poll(POLL_TIMEOUT_S)
    if first is None:
        return []
    if batch_size == 1:
        return [first]
    return [first, *consumer.consume(batch_size - 1, 0)]
