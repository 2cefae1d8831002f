"""Consumer lag: end offsets and committed offsets from the broker.

Lag needs the brokers' end offsets (high watermarks), and the pipeline's ``Consumer``
belongs to the consumer loop's thread. So lag is measured with a client of its own:

* :class:`LagSampler` is a daemon thread of ``kingest start`` that, every
  ``KINGEST_LAG_INTERVAL_S``, asks the broker for the end offsets and the group's
  committed offsets of the partitions assigned to this process (paused ones included),
  with a consumer that never subscribes, so it never joins the group. The metrics read
  its latest sample (:mod:`kingest.telemetry.metrics`);
* :func:`group_lag` does the same once for every partition of some topics, for the
  ``kingest lag`` command.

Lag is the end offset minus the committed offset; a partition the group never committed
counts from its first retained offset (what ``auto.offset.reset=earliest`` consumes).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

import attrs
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from kingest.kafka import TopicPartitionKey
from kingest.telemetry.metrics import EndOffsets, consumer_lag

__all__ = ["LagError", "LagSampler", "PartitionLag", "group_lag", "lag_client_config"]

log = logging.getLogger(__name__)


class LagError(RuntimeError):
    """The broker could not be asked (unreachable, unknown topic...); says which."""


@attrs.frozen
class PartitionLag:
    """One partition of a group: committed offset (None: never), end offset, lag."""

    topic: str
    partition: int
    committed: int | None
    start_offset: int
    end_offset: int

    @property
    def lag(self) -> int:
        return consumer_lag(self.start_offset, self.end_offset, self.committed)

    def as_dict(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "partition": self.partition,
            "committed": self.committed,
            "end_offset": self.end_offset,
            "lag": self.lag,
        }


def lag_client_config(base: Mapping[str, Any], group: str) -> dict[str, Any]:
    """Properties of a consumer that reads a group's offsets without joining it."""
    return {
        **base,
        "group.id": group,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": False,
    }


def _query(
    consumer: Consumer, tps: Sequence[TopicPartitionKey], timeout_s: float
) -> dict[TopicPartitionKey, EndOffsets]:
    """End offsets and committed offsets of ``tps`` (raises KafkaException)."""
    committed = consumer.committed([TopicPartition(t, p) for t, p in tps], timeout=timeout_s)
    by_tp: dict[TopicPartitionKey, int | None] = {}
    for tp in committed:
        if tp.error is not None:
            raise KafkaException(tp.error)
        by_tp[(tp.topic, tp.partition)] = tp.offset if tp.offset >= 0 else None
    now = time.monotonic()
    result = {}
    for topic, partition in tps:
        low, high = consumer.get_watermark_offsets(
            TopicPartition(topic, partition), timeout=timeout_s, cached=False
        )
        result[(topic, partition)] = EndOffsets(low, high, by_tp.get((topic, partition)), now)
    return result


class LagSampler:
    """Samples end and committed offsets of the assigned partitions on its own thread."""

    def __init__(
        self,
        client_config: Mapping[str, Any],
        group: str,
        partitions: Callable[[], Collection[TopicPartitionKey]],
        *,
        interval_s: float,
        timeout_s: float = 5.0,
    ) -> None:
        self._config = lag_client_config(client_config, group)
        self._partitions = partitions
        self._interval = interval_s
        self._timeout = timeout_s
        self._samples: dict[TopicPartitionKey, EndOffsets] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kingest-lag", daemon=True)
        self._failing = False

    def start(self) -> LagSampler:
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def end_offsets(self) -> Mapping[TopicPartitionKey, EndOffsets]:
        """The latest sample of each assigned partition (any thread)."""
        return self._samples

    def sample_once(self, consumer: Consumer) -> None:
        tps = sorted(self._partitions())
        if not tps:
            self._samples = {}
            return
        try:
            samples = _query(consumer, tps, self._timeout)
        except KafkaException as error:
            if not self._failing:
                log.warning("cannot sample consumer lag: %s", _error_text(error))
            self._failing = True
            # Keep what is still assigned; it is refreshed once the broker answers.
            self._samples = {tp: s for tp, s in self._samples.items() if tp in set(tps)}
            return
        if self._failing:
            log.info("consumer lag sampling works again")
        self._failing = False
        self._samples = samples

    def _run(self) -> None:
        consumer = Consumer(self._config)
        try:
            while not self._stop.is_set():
                self.sample_once(consumer)
                self._stop.wait(self._interval)
        finally:
            consumer.close()


def _error_text(error: KafkaException) -> str:
    if error.args and isinstance(error.args[0], KafkaError):
        return str(error.args[0].str())
    return str(error)


def group_lag(
    client_config: Mapping[str, Any],
    group: str,
    topics: Iterable[str],
    *,
    timeout_s: float = 10.0,
) -> list[PartitionLag]:
    """Committed offset, end offset and lag of every partition of ``topics`` for ``group``.

    Raises :class:`LagError` when the broker does not answer or a topic does not exist.
    """
    errors: list[KafkaError] = []
    quiet = logging.Logger("kingest.telemetry.lag.librdkafka")
    quiet.addHandler(logging.NullHandler())
    config = {
        **lag_client_config(client_config, group),
        "error_cb": errors.append,
        "logger": quiet,
    }
    consumer = Consumer(config)
    try:
        try:
            metadata = consumer.list_topics(timeout=timeout_s)
        except KafkaException as error:
            consumer.poll(0)  # serves the queued error callbacks
            reasons = [e.str() for e in errors if e.code() != KafkaError._ALL_BROKERS_DOWN]
            detail = f" (last client error: {reasons[-1]})" if reasons else ""
            raise LagError(
                f"cannot reach Kafka at {client_config.get('bootstrap.servers')}: "
                f"{_error_text(error)}{detail}"
            ) from None
        tps: list[TopicPartitionKey] = []
        missing = []
        for topic in dict.fromkeys(topics):
            found = metadata.topics.get(topic)
            if found is None or found.error is not None:
                missing.append(topic)
                continue
            tps += [(topic, p) for p in sorted(found.partitions)]
        if missing:
            raise LagError(f"topics not found: {', '.join(missing)}")
        try:
            offsets = _query(consumer, tps, timeout_s)
        except KafkaException as error:
            raise LagError(
                f"cannot read the offsets of group {group}: {_error_text(error)}"
            ) from None
    finally:
        consumer.close()
    return [
        PartitionLag(topic, partition, ends.committed, ends.low, ends.high)
        for (topic, partition), ends in offsets.items()
    ]
