"""Process-wide pipeline counters, updated once per batch (never per message).

This is kingest's one counter system. Every counter is a set of *series*: a name and a
tuple of attribute values. The counters of the metric catalog
(:mod:`kingest.telemetry.catalog`) are kept under their catalog name with the catalog's
attributes (:meth:`PipelineStats.count`), and the metrics exporter reads them at scrape
time (:mod:`kingest.telemetry.metrics`); internal totals (``messages_written``,
``transactions``...) are series without attributes (:meth:`PipelineStats.add`).

:meth:`PipelineStats.get` and :meth:`PipelineStats.snapshot` also answer the short names
the pipeline used before the catalog existed (``messages_consumed``, ``retries``,
``duplicates``...) by summing the matching catalog series, so nothing is counted twice.
"""

from __future__ import annotations

import threading
from collections import Counter, defaultdict
from collections.abc import Mapping
from typing import Final

from kingest.telemetry import catalog
from kingest.telemetry.catalog import MetricSpec

__all__ = ["PipelineStats"]

#: Short name -> (catalog metric, attribute name -> value the series must have).
_TOTALS: Final[Mapping[str, tuple[MetricSpec, Mapping[str, str]]]] = {
    "messages_consumed": (catalog.MESSAGES_CONSUMED, {}),
    "rows_inserted": (catalog.EVENTS_PROCESSED, {"kingest.outcome": "stored"}),
    "duplicates": (catalog.EVENTS_PROCESSED, {"kingest.outcome": "duplicate"}),
    "dead_letters": (catalog.DEAD_LETTERS, {}),
    "write_rejections": (catalog.DEAD_LETTERS, {"kingest.error.stage": "write"}),
    "retries": (catalog.RETRIES, {}),
    "rebalances": (catalog.REBALANCES, {"kingest.rebalance.kind": "assign"}),
    "commits": (catalog.COMMITS, {"kingest.commit.result": "ok"}),
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

    def add(self, **deltas: int) -> None:
        """Bump counters without attributes: ``add(messages_written=812, transactions=1)``."""
        with self._lock:
            for name, delta in deltas.items():
                self._series[name][()] += delta

    def count(self, spec: MetricSpec, counts: Mapping[tuple[str, ...], int]) -> None:
        """Bump the series of catalog counter ``spec``: attribute values -> delta.

        The values are given in the order of ``spec.attributes``.
        """
        with self._lock:
            series = self._series[spec.name]
            for key, delta in counts.items():
                series[key] += delta

    def series(self, spec: MetricSpec) -> dict[tuple[str, ...], int]:
        """A copy of the series of catalog counter ``spec`` (attribute values -> count)."""
        with self._lock:
            return dict(self._series.get(spec.name, {}))

    def get(self, name: str) -> int:
        """The total of counter ``name`` (a short name or a counter without attributes)."""
        with self._lock:
            return self._total(name)

    def snapshot(self) -> dict[str, int]:
        """Every counter without attributes and every short name, with its total."""
        with self._lock:
            totals = {name: s[()] for name, s in self._series.items() if () in s}
            totals.update((name, self._total(name)) for name in _TOTALS)
            return totals

    def _total(self, name: str) -> int:
        alias = _TOTALS.get(name)
        if alias is None:
            return self._series[name][()] if name in self._series else 0
        spec, wanted = alias
        series = self._series.get(spec.name)
        if not series:
            return 0
        if not wanted:
            return sum(series.values())
        positions = [(spec.attributes.index(k), v) for k, v in wanted.items()]
        return sum(n for key, n in series.items() if all(key[i] == v for i, v in positions))
