"""Process-wide pipeline counters, updated once per batch (never per message).

This is kingest's one counter system, keyed by the metric catalog
(:mod:`kingest.telemetry.catalog`): every counter is a catalog specification, and its
*series* are tuples of values of the specification's attributes. The exported counters
(:data:`~kingest.telemetry.catalog.ALL`) are read by the metrics exporter at scrape time
(:mod:`kingest.telemetry.metrics`); the internal totals
(:data:`~kingest.telemetry.catalog.INTERNAL`: messages written, transactions...) have no
attributes and are not exported.

The shutdown summary and the tests read totals by short name (``messages_consumed``,
``retries``, ``duplicates``, ``messages_written``...): :data:`SHORT_NAMES` says which
series of which catalog counter each one sums, so nothing is counted twice.
"""

from __future__ import annotations

import threading
from collections import Counter, defaultdict
from collections.abc import Mapping
from typing import Final

from kingest.telemetry import catalog
from kingest.telemetry.catalog import MetricSpec

__all__ = ["SHORT_NAMES", "PipelineStats"]

#: Short name -> (catalog counter, attribute name -> value the series must have).
SHORT_NAMES: Final[Mapping[str, tuple[MetricSpec, Mapping[str, str]]]] = {
    "messages_consumed": (catalog.MESSAGES_CONSUMED, {}),
    "rows_inserted": (catalog.EVENTS_PROCESSED, {"kingest.outcome": "stored"}),
    "duplicates": (catalog.EVENTS_PROCESSED, {"kingest.outcome": "duplicate"}),
    "dead_letters": (catalog.DEAD_LETTERS, {}),
    "write_rejections": (catalog.DEAD_LETTERS, {"kingest.error.stage": "write"}),
    "retries": (catalog.RETRIES, {}),
    "rebalances": (catalog.REBALANCES, {"kingest.rebalance.kind": "assign"}),
    "commits": (catalog.COMMITS, {"kingest.commit.result": "ok"}),
    "messages_written": (catalog.MESSAGES_WRITTEN, {}),
    "batches_written": (catalog.BATCHES_WRITTEN, {}),
    "transactions": (catalog.TRANSACTIONS, {}),
    "batches_abandoned": (catalog.BATCHES_ABANDONED, {}),
    "dead_letters_published": (catalog.DEAD_LETTERS_PUBLISHED, {}),
    "consume_errors": (catalog.CONSUME_ERRORS, {}),
    "pauses": (catalog.PARTITION_PAUSES, {}),
}


class PipelineStats:
    """Thread-safe counters; see the module docstring.

    Counters are bumped per batch (or per poll) by the thread that finished the work, so
    the lock is taken a few thousand times per second at most.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._series: defaultdict[str, Counter[tuple[str, ...]]] = defaultdict(Counter)
        #: time.monotonic() when the first message was consumed, and of the latest write.
        self.first_consumed_at: float | None = None
        self.last_written_at: float | None = None
        #: time.monotonic() and a description of the latest dead letter the dead-letter
        #: topic did not take (kept in kingest.dead_letters instead), for /readyz.
        self.dead_letter_fallback: tuple[float, str] | None = None

    def busy_seconds(self) -> float | None:
        """Seconds from the first consumed message to the latest committed write."""
        if self.first_consumed_at is None or self.last_written_at is None:
            return None
        return max(0.0, self.last_written_at - self.first_consumed_at)

    def count(self, spec: MetricSpec, counts: Mapping[tuple[str, ...], int]) -> None:
        """Bump the series of catalog counter ``spec``: attribute values -> delta.

        The values are given in the order of ``spec.attributes``.
        """
        with self._lock:
            series = self._series[spec.name]
            for key, delta in counts.items():
                series[key] += delta

    def increment(self, *deltas: tuple[MetricSpec, int]) -> None:
        """Bump catalog counters without attributes together:
        ``increment((catalog.MESSAGES_WRITTEN, 812), (catalog.TRANSACTIONS, 1))``."""
        with self._lock:
            for spec, delta in deltas:
                if spec.attributes:
                    raise ValueError(f"{spec.name} has attributes {spec.attributes}: use count()")
                self._series[spec.name][()] += delta

    def add(self, **deltas: int) -> None:
        """Bump counters without attributes by short name: ``add(pauses=2)``."""
        self.increment(*((_without_attributes(name), delta) for name, delta in deltas.items()))

    def series(self, spec: MetricSpec) -> dict[tuple[str, ...], int]:
        """A copy of the series of catalog counter ``spec`` (attribute values -> count)."""
        with self._lock:
            return dict(self._series.get(spec.name, {}))

    def get(self, name: str) -> int:
        """The total of the counter a short name (:data:`SHORT_NAMES`) stands for."""
        with self._lock:
            return self._total(name)

    def snapshot(self) -> dict[str, int]:
        """Every short name with its total."""
        with self._lock:
            return {name: self._total(name) for name in SHORT_NAMES}

    def _total(self, name: str) -> int:
        spec, wanted = SHORT_NAMES[name]
        series = self._series.get(spec.name)
        if not series:
            return 0
        if not wanted:
            return sum(series.values())
        positions = [(spec.attributes.index(k), v) for k, v in wanted.items()]
        return sum(n for key, n in series.items() if all(key[i] == v for i, v in positions))


def _without_attributes(name: str) -> MetricSpec:
    spec, wanted = SHORT_NAMES[name]
    if wanted:
        raise ValueError(f"{name!r} is a part of {spec.name}: count its series")
    return spec
