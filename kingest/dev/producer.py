"""Produce a stream of records to Kafka, optionally at a fixed rate, and account for it.

Used by the demo and the benchmarks to load a topic, and by the tests as the reference
of what was sent. The report is built from delivery reports only: what the broker
acknowledged, per partition, is the ground truth a consumer-side check compares with.
High watermarks are not used, because some Kafka-protocol brokers (Tansu 0.6) report
them too low after produce requests that carry several messages.

Delivery guarantees: idempotence on and ``acks=all``, so librdkafka's internal retries
never duplicate or reorder a partition's messages. Compression is lz4 (cheap on CPU;
Tansu 0.6 and Apache Kafka both accept lz4, zstd, snappy and gzip batches).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Final, Protocol, cast

from confluent_kafka import KafkaError, KafkaException, Message, Producer

__all__ = ["DEFAULT_PRODUCER_CONFIG", "ProduceReport", "ProducibleRecord", "produce_records"]

DEFAULT_PRODUCER_CONFIG: Final[Mapping[str, str]] = {
    "enable.idempotence": "true",
    "acks": "all",
    "compression.type": "lz4",
    # Long enough to fill batches at high rates, short enough not to be noticed at low ones.
    "linger.ms": "10",
}


class ProducibleRecord(Protocol):
    """What ``produce_records`` needs of a record: the built-in stream's
    :class:`~kingest.dev.synth.SyntheticRecord` and a catalog's records alike."""

    @property
    def key(self) -> bytes | None: ...

    @property
    def value(self) -> bytes: ...

    @property
    def headers(self) -> list[tuple[str, bytes]]: ...

    @property
    def event_id(self) -> str: ...


# What Producer.produce is annotated to take (a list is invariant, so ours must be cast).
_Headers = list[tuple[str, str | bytes | None]]

#: How many error strings the report keeps (a broken broker fails every message).
MAX_REPORTED_ERRORS: Final = 10
#: Minimum interval between two ``progress`` calls (at most ten per second).
PROGRESS_INTERVAL_S: Final = 0.1
#: Serve delivery callbacks after this many produce calls, so none pile up unread.
_POLL_EVERY: Final = 500
#: The shortest wait when the rate limiter is ahead of schedule; shorter waits would spin.
_MIN_WAIT_S: Final = 0.001
#: How long to wait for queue space when librdkafka's local queue is full.
_QUEUE_FULL_WAIT_S: Final = 0.05
#: After a purge, how long to wait for the purged messages' delivery reports.
_PURGE_GRACE_S: Final = 1.0


@dataclass
class ProduceReport:
    """What happened to the records handed to ``produce_records``.

    ``requested`` counts the records taken from the iterable (fewer than ``count`` if it
    ran out); every one of them ends up ``delivered`` or ``failed``.
    ``end_offsets`` maps each partition to its highest delivered offset + 1.
    ``event_ids`` holds the ids of the delivered records, when asked for.
    """

    requested: int
    delivered: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    end_offsets: dict[int, int] = field(default_factory=dict)
    event_ids: set[str] | None = None
    elapsed_s: float = 0.0

    def record_failure(self, error: str) -> None:
        self.failed += 1
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append(error)


class _DeliveryTracker:
    """Turns delivery reports into the report's counters (called on the producing thread)."""

    def __init__(self, report: ProduceReport) -> None:
        self.report = report

    def on_delivery(self, error: KafkaError | None, message: Message) -> None:
        report = self.report
        if error is not None:
            report.record_failure(str(error))
            return
        report.delivered += 1
        partition, offset = message.partition(), message.offset()
        # A successful report always carries both; the types merely allow None.
        if partition is not None and offset is not None:
            end_offsets = report.end_offsets
            if offset >= end_offsets.get(partition, 0):
                end_offsets[partition] = offset + 1

    def delivery_callback_for(
        self, event_id: str, delivered_ids: set[str]
    ) -> Callable[[KafkaError | None, Message], None]:
        """A per-message callback that also adds ``event_id`` once it is delivered."""

        def on_delivery(error: KafkaError | None, message: Message) -> None:
            self.on_delivery(error, message)
            if error is None:
                delivered_ids.add(event_id)

        return on_delivery


class _ProgressReporter:
    """Calls ``progress`` with the newly delivered count, at most every 0.1 s."""

    def __init__(self, report: ProduceReport, progress: Callable[[int], None] | None) -> None:
        self._report = report
        self._progress = progress
        self._reported = 0
        self._next_call = time.monotonic() + PROGRESS_INTERVAL_S

    def maybe_report(self, now: float) -> None:
        if self._progress is not None and now >= self._next_call:
            self._next_call = now + PROGRESS_INTERVAL_S
            self.report_now()

    def report_now(self) -> None:
        delivered = self._report.delivered
        if self._progress is not None and delivered > self._reported:
            self._progress(delivered - self._reported)
            self._reported = delivered


def produce_records(
    bootstrap_servers: str,
    topic: str,
    records: Iterable[ProducibleRecord],
    *,
    count: int,
    rate: float | None = None,
    extra_config: Mapping[str, str] | None = None,
    progress: Callable[[int], None] | None = None,
    collect_ids: bool = False,
    flush_timeout: float = 60.0,
) -> ProduceReport:
    """Produce the first ``count`` records to ``topic`` and wait for their delivery.

    ``rate`` (records per second) follows an absolute schedule: record ``i`` is not sent
    before ``start + i / rate``, so waits never accumulate drift and a late start is
    caught up in a burst. ``extra_config`` overrides or extends the librdkafka settings
    (SASL/TLS, other compression). Messages still undelivered after ``flush_timeout``
    seconds are counted as failed.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if rate is not None and not rate > 0:
        raise ValueError(f"rate must be > 0 records/s, got {rate}")
    config: dict[str, Any] = {**DEFAULT_PRODUCER_CONFIG, **(extra_config or {})}
    config["bootstrap.servers"] = bootstrap_servers
    producer = Producer(config)
    report = ProduceReport(requested=0, event_ids=set() if collect_ids else None)
    tracker = _DeliveryTracker(report)
    reporter = _ProgressReporter(report, progress)
    interval = 1.0 / rate if rate is not None else 0.0

    deliver = tracker.on_delivery
    delivered_ids = report.event_ids
    start = time.monotonic()
    for index, record in enumerate(islice(records, count)):
        if rate is not None:
            _wait_for_schedule(producer, start + index * interval, reporter)
        callback = (
            deliver
            if delivered_ids is None
            else tracker.delivery_callback_for(record.event_id, delivered_ids)
        )
        _produce_one(producer, topic, record, callback, report)
        report.requested += 1
        if index % _POLL_EVERY == 0:
            producer.poll(0)
            reporter.maybe_report(time.monotonic())
    _flush(producer, flush_timeout, reporter, report)
    report.elapsed_s = time.monotonic() - start
    reporter.report_now()
    return report


def _wait_for_schedule(producer: Producer, due: float, reporter: _ProgressReporter) -> None:
    """Until ``due``, serve delivery callbacks and progress instead of sleeping.

    ``poll`` returns early when callbacks were served, hence the loop. No wait is
    shorter than a millisecond (librdkafka's timer resolution; shorter would spin), so
    a record may leave up to that much late, never early; the records due meanwhile
    then leave back to back, which keeps the average rate exact with one wait per
    millisecond instead of one per record.
    """
    while (remaining := due - time.monotonic()) > 0:
        producer.poll(min(max(remaining, _MIN_WAIT_S), PROGRESS_INTERVAL_S))
        reporter.maybe_report(time.monotonic())


def _produce_one(
    producer: Producer,
    topic: str,
    record: ProducibleRecord,
    on_delivery: Callable[[KafkaError | None, Message], None],
    report: ProduceReport,
) -> None:
    while True:
        try:
            producer.produce(
                topic,
                value=record.value,
                key=record.key,
                headers=cast(_Headers, record.headers),
                on_delivery=on_delivery,
            )
        except BufferError:
            # The local queue is full: deliveries free space, so serve them and retry.
            producer.poll(_QUEUE_FULL_WAIT_S)
            continue
        except KafkaException as exc:
            # Rejected before queueing (e.g. larger than message.max.bytes): no delivery
            # report will follow, so it is accounted here.
            report.record_failure(str(exc.args[0] if exc.args else exc))
        return


def _flush(
    producer: Producer, timeout: float, reporter: _ProgressReporter, report: ProduceReport
) -> None:
    """Wait for outstanding deliveries, reporting progress meanwhile, up to ``timeout``.

    Whatever is still undelivered then is purged; the purge produces failed delivery
    reports, so those records count as failed (an in-flight one may still have been
    written by the broker: its fate is unknown, which is a failure to the caller).
    """
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        if producer.flush(min(remaining, PROGRESS_INTERVAL_S)) == 0:
            return
        reporter.maybe_report(time.monotonic())
    producer.purge()
    for _ in range(producer.flush(_PURGE_GRACE_S)):
        report.record_failure(f"not delivered within the {timeout} s flush timeout")
