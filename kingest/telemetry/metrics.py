"""The metrics of one pipeline, through the OpenTelemetry metrics API, served to Prometheus.

Every instrument is created from its :mod:`kingest.telemetry.catalog` specification by
:func:`create_instrument` (names, units, descriptions and histogram bounds are never
typed twice). What is recorded where:

* **counters** are read at collection time from :class:`~kingest.telemetry.stats.
  PipelineStats` (observable counters): the pipeline bumps those once per poll or per
  batch, so counting costs nothing per message and there is one counter system;
* **histograms** (batch size, write duration, end-to-end latency) are recorded by the
  writers once per transaction, with the catalog's explicit bucket bounds;
* **gauges** are observed at collection time from a :class:`PipelineState` snapshot
  (mailbox and queue depths, committed offsets, age of the oldest unacknowledged
  message), from the lag sampler's end offsets (:mod:`kingest.telemetry.lag`), from the
  readiness check, and from the process itself (CPU time, resident memory).

Each :class:`PipelineMetrics` has its own ``MeterProvider`` and its own Prometheus
``CollectorRegistry``, nothing global: several pipelines in one process (tests) never
see each other's series, and ``/metrics`` serves :meth:`PipelineMetrics.render`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final, Protocol

import attrs
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Histogram, Meter, Observation
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import CollectorRegistry, generate_latest

from kingest import __version__
from kingest.kafka import TopicPartitionKey
from kingest.telemetry import catalog
from kingest.telemetry.catalog import MetricSpec
from kingest.telemetry.stats import PipelineStats
from kingest.telemetry.tracing.conventions import (
    DB_OPERATION_NAME,
    DB_SYSTEM_NAME,
    MESSAGING_DESTINATION_NAME,
    MESSAGING_PARTITION_ID,
)
from kingest.telemetry.tracing.setup import make_resource

__all__ = [
    "EndOffsets",
    "PartitionState",
    "PipelineMetrics",
    "PipelineState",
    "consumer_lag",
    "create_instrument",
    "metrics_reference_markdown",
    "process_rss_bytes",
]

Callback = Callable[[CallbackOptions], Iterable[Observation]]

#: Attributes of the database write duration (OpenTelemetry database conventions).
DB_ATTRIBUTES: Final = {DB_SYSTEM_NAME: "postgresql", DB_OPERATION_NAME: "INSERT"}


class AcknowledgedBatch(Protocol):
    """What the metrics read of a write batch the writers acknowledged."""

    @property
    def message_count(self) -> int: ...

    @property
    def timestamps_ms(self) -> tuple[int, ...]: ...


@attrs.frozen(slots=True)
class PartitionState:
    """One assigned partition, as the consumer loop last left it."""

    tp: TopicPartitionKey
    mailbox_depth: int
    paused: bool
    #: Offset of the latest commit the broker confirmed in this process (None: none yet).
    committed: int | None
    #: time.monotonic() when the oldest unacknowledged message was consumed (None: none).
    unacked_since: float | None
    #: Messages consumed and not yet known durable (counted in whole polls).
    unacked_messages: int = 0
    #: time.monotonic() of the partition's latest fetched messages, resume or assignment.
    fetched_at: float | None = None
    #: Messages the consumer could fetch (its cached high watermark minus its position),
    #: as last checked while kingest had not paused the partition (0: none or unknown).
    fetch_backlog: int = 0

    def fetch_stall_s(self, now: float | None = None) -> float:
        """Seconds the partition has gone unfetched with messages to fetch while kingest
        had not paused it (0 when it is paused, has nothing to fetch or is fetched)."""
        if self.paused or self.fetch_backlog <= 0 or self.fetched_at is None:
            return 0.0
        now = time.monotonic() if now is None else now
        return max(0.0, now - self.fetched_at)


@attrs.frozen(slots=True)
class PipelineState:
    """A snapshot of the pipeline, safe to take from any thread."""

    partitions: tuple[PartitionState, ...] = ()
    writer_queue_depth: int = 0
    batches_in_flight: int = 0
    #: True once the group assigned partitions to this member (possibly none).
    joined: bool = False
    #: "starting", "running", "stopping" (draining) or "stopped".
    phase: str = "starting"
    #: Seconds since the consumer loop last completed an iteration.
    loop_idle_s: float = 0.0
    #: Why the pipeline failed (an actor, a fatal Kafka error), None while healthy.
    failure: str | None = None
    #: Actors whose thread is gone although the pipeline runs.
    dead_actors: tuple[str, ...] = ()
    #: time.monotonic() and a description of the latest dead letter the dead-letter topic
    #: did not take (kept in kingest.dead_letters), and how many there were in all.
    dead_letter_fallback: tuple[float, str] | None = None
    dead_letter_fallbacks: int = 0

    @property
    def paused_count(self) -> int:
        return sum(p.paused for p in self.partitions)

    def oldest_unacked_age_s(self, now: float | None = None) -> float:
        """Age of the oldest unacknowledged message over all partitions (0 when none)."""
        now = time.monotonic() if now is None else now
        since = [p.unacked_since for p in self.partitions if p.unacked_since is not None]
        return max(0.0, now - min(since)) if since else 0.0


@attrs.frozen(slots=True)
class EndOffsets:
    """What the broker said about a partition at ``sampled_at`` (time.monotonic())."""

    low: int
    high: int
    #: The group's committed offset on the broker (None: nothing committed).
    committed: int | None
    sampled_at: float


def consumer_lag(low: int, high: int, committed: int | None) -> int:
    """Messages between the end offset ``high`` and ``committed``; a partition never
    committed counts from its first retained offset ``low`` (what
    ``auto.offset.reset=earliest`` consumes)."""
    start = low if committed is None else committed
    return max(0, high - start)


class StateSource(Protocol):
    def state(self) -> PipelineState: ...


class EndOffsetSource(Protocol):
    def end_offsets(self) -> Mapping[TopicPartitionKey, EndOffsets]: ...


def create_instrument(meter: Meter, spec: MetricSpec, callback: Callback | None = None) -> Any:
    """The instrument of ``spec``: observable when a ``callback`` is given (counters and
    gauges), a histogram with the catalog's explicit bucket bounds otherwise."""
    common: dict[str, Any] = {"unit": spec.unit, "description": spec.description}
    if spec.kind == "histogram":
        return meter.create_histogram(
            spec.name, explicit_bucket_boundaries_advisory=list(spec.buckets), **common
        )
    if spec.kind == "counter":
        if callback is None:
            return meter.create_counter(spec.name, **common)
        return meter.create_observable_counter(spec.name, callbacks=[callback], **common)
    if callback is None:
        return meter.create_up_down_counter(spec.name, **common)
    return meter.create_observable_gauge(spec.name, callbacks=[callback], **common)


def process_rss_bytes() -> int:
    """Resident memory of this process (Linux: /proc/self/statm; else the peak)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            pages = int(statm.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource  # noqa: PLC0415 - fallback only

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _tp_attributes(tp: TopicPartitionKey) -> dict[str, str]:
    return {
        MESSAGING_DESTINATION_NAME: tp[0],
        MESSAGING_PARTITION_ID: str(tp[1]),
    }


class PipelineMetrics:
    """The instruments of one pipeline and the registry ``/metrics`` serves."""

    def __init__(self, stats: PipelineStats, source: StateSource) -> None:
        self._stats = stats
        self._source = source
        self._end_offsets: EndOffsetSource | None = None
        self._ready: Callable[[], bool] | None = None
        self.registry = CollectorRegistry(auto_describe=False)
        reader = PrometheusMetricReader(registry=self.registry)
        self._provider = MeterProvider(
            metric_readers=[reader], resource=make_resource(), shutdown_on_exit=False
        )
        meter = self._provider.get_meter("kingest", __version__)
        callbacks: dict[MetricSpec, Callback] = {
            catalog.MAILBOX_DEPTH: self._observe_mailboxes,
            catalog.WRITER_QUEUE_DEPTH: self._observe_writer_queue,
            catalog.BATCHES_IN_FLIGHT: self._observe_in_flight,
            catalog.COMMITTED_OFFSET: self._observe_committed,
            catalog.CONSUMER_LAG: self._observe_lag,
            catalog.OLDEST_UNACKED_AGE: self._observe_unacked_age,
            catalog.FETCH_STALL: self._observe_fetch_stall,
            catalog.PARTITIONS_ASSIGNED: self._observe_assigned,
            catalog.PARTITIONS_PAUSED: self._observe_paused,
            catalog.READY: self._observe_ready,
            catalog.PROCESS_CPU_TIME: _observe_cpu,
            catalog.PROCESS_MEMORY_USAGE: _observe_memory,
        }
        for spec in catalog.ALL:
            if spec.kind == "counter" and spec not in callbacks:
                callbacks[spec] = self._counter_callback(spec)
        instruments = {
            spec: create_instrument(meter, spec, callbacks.get(spec)) for spec in catalog.ALL
        }
        self.batch_size: Histogram = instruments[catalog.BATCH_SIZE]
        self.db_write_duration: Histogram = instruments[catalog.DB_WRITE_DURATION]
        self.end_to_end_latency: Histogram = instruments[catalog.END_TO_END_LATENCY]

    # ------------------------------------------------------------------ wiring

    def use_end_offsets(self, source: EndOffsetSource | None) -> None:
        """Where lag comes from (the lag sampler), or None to stop reporting it."""
        self._end_offsets = source

    def use_readiness(self, ready: Callable[[], bool] | None) -> None:
        """The readiness check behind the ``kingest.ready`` gauge."""
        self._ready = ready

    def render(self) -> bytes:
        """Every metric in the Prometheus text format (collects the observable ones)."""
        return generate_latest(self.registry)

    # ------------------------------------------------------------------ recording (per batch)

    def record_transaction(self, seconds: float) -> None:
        """One committed write transaction took ``seconds``."""
        self.db_write_duration.record(seconds, DB_ATTRIBUTES)

    def record_batches(self, batches: Sequence[AcknowledgedBatch]) -> None:
        """Write batches acknowledged together (one writer message, one transaction
        unless a rejected row made it bisect): their size, and the end-to-end latency
        of each batch's first and last message."""
        self.batch_size.record(sum(batch.message_count for batch in batches))
        now_ms = time.time() * 1000
        latency = self.end_to_end_latency
        for batch in batches:
            for timestamp_ms in batch.timestamps_ms:
                latency.record(max(0.0, (now_ms - timestamp_ms) / 1000))

    # ------------------------------------------------------------------ observation

    def _counter_callback(self, spec: MetricSpec) -> Callback:
        stats = self._stats
        names = spec.attributes

        def observe(_options: CallbackOptions) -> Iterable[Observation]:
            for key, value in stats.series(spec).items():
                yield Observation(value, dict(zip(names, key, strict=True)))

        return observe

    def _observe_mailboxes(self, _options: CallbackOptions) -> Iterable[Observation]:
        for p in self._source.state().partitions:
            yield Observation(p.mailbox_depth, _tp_attributes(p.tp))

    def _observe_writer_queue(self, _options: CallbackOptions) -> Iterable[Observation]:
        yield Observation(self._source.state().writer_queue_depth)

    def _observe_in_flight(self, _options: CallbackOptions) -> Iterable[Observation]:
        yield Observation(self._source.state().batches_in_flight)

    def _observe_assigned(self, _options: CallbackOptions) -> Iterable[Observation]:
        yield Observation(len(self._source.state().partitions))

    def _observe_paused(self, _options: CallbackOptions) -> Iterable[Observation]:
        yield Observation(self._source.state().paused_count)

    def _observe_unacked_age(self, _options: CallbackOptions) -> Iterable[Observation]:
        now = time.monotonic()
        for p in self._source.state().partitions:
            age = 0.0 if p.unacked_since is None else max(0.0, now - p.unacked_since)
            yield Observation(age, _tp_attributes(p.tp))

    def _observe_fetch_stall(self, _options: CallbackOptions) -> Iterable[Observation]:
        now = time.monotonic()
        for p in self._source.state().partitions:
            yield Observation(p.fetch_stall_s(now), _tp_attributes(p.tp))

    def _committed(self) -> list[tuple[PartitionState, int | None, EndOffsets | None]]:
        """Per assigned partition: the newest committed offset known, and its end offsets."""
        sampled = self._end_offsets.end_offsets() if self._end_offsets is not None else {}
        result = []
        for p in self._source.state().partitions:
            ends = sampled.get(p.tp)
            known = [c for c in (p.committed, ends.committed if ends else None) if c is not None]
            result.append((p, max(known) if known else None, ends))
        return result

    def _observe_committed(self, _options: CallbackOptions) -> Iterable[Observation]:
        for p, committed, _ends in self._committed():
            if committed is not None:
                yield Observation(committed, _tp_attributes(p.tp))

    def _observe_lag(self, _options: CallbackOptions) -> Iterable[Observation]:
        for p, committed, ends in self._committed():
            if ends is not None:
                lag = consumer_lag(ends.low, ends.high, committed)
                yield Observation(lag, _tp_attributes(p.tp))

    def _observe_ready(self, _options: CallbackOptions) -> Iterable[Observation]:
        if self._ready is not None:
            yield Observation(int(self._ready()))


def _observe_cpu(_options: CallbackOptions) -> Iterable[Observation]:
    times = os.times()
    yield Observation(times.user, {"cpu.mode": "user"})
    yield Observation(times.system, {"cpu.mode": "system"})


def _observe_memory(_options: CallbackOptions) -> Iterable[Observation]:
    yield Observation(process_rss_bytes())


def metrics_reference_markdown() -> str:
    """The metric catalog as a Markdown table (the reference of docs/metrics.md)."""
    lines = ["| metric | type | labels | meaning |", "| --- | --- | --- | --- |"]
    for spec in catalog.ALL:
        labels = ", ".join(f"`{label}`" for label in spec.prometheus_attributes) or "-"
        lines.append(f"| `{spec.prometheus_name}` | {spec.kind} | {labels} | {spec.description} |")
    return "\n".join(lines) + "\n"
