"""Liveness and readiness of a running pipeline (``/healthz`` and ``/readyz``).

Liveness asks "should this process be restarted?": the consumer loop completed an
iteration within ``KINGEST_HEALTH_LOOP_STALL_S`` (it polls at least every 0.1 s while it
runs; only a revoke or shutdown drain, at most ``KINGEST_DRAIN_TIMEOUT_S``, or a hang
keeps it away longer), every pipeline actor is alive, and nothing failed (an actor, a
fatal Kafka error).

Readiness asks "is this process doing its job?": it is live, the group assigned it its
partitions (possibly none, when the group has more members than partitions), PostgreSQL
answers a ``SELECT 1`` (probed at most every two seconds, with a two-second connect
timeout, on a connection of its own), no consumed message has waited longer than
``KINGEST_HEALTH_MAX_UNACKED_AGE_S`` to become durable, and no assigned partition that
has messages to fetch and that kingest has not paused has gone unfetched for longer than
``KINGEST_HEALTH_MAX_FETCH_STALL_S`` (a partition the client keeps paused on its own is
never consumed, so nothing of it is ever unacknowledged).

A pipeline that works around a failure stays ready but says so: when a dead letter the
dead-letter topic did not take was kept in ``kingest.dead_letters`` within the last
:data:`DEGRADED_FOR_S`, readiness has a passing ``dead_letter_topic`` check marked
degraded (the JSON status is then ``degraded``, the response still 200). A pipeline that
stalls instead fails the ``progress`` check.

Both are computed from a :class:`~kingest.telemetry.metrics.PipelineState` snapshot: the
HTTP thread never touches the consumer or the writers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import attrs
import psycopg
from psycopg.conninfo import make_conninfo

from kingest.config import Settings, safe_error_text
from kingest.store import first_line
from kingest.telemetry.metrics import PipelineState, StateSource

__all__ = ["DEGRADED_FOR_S", "DatabaseProbe", "HealthChecks", "ReadinessCheck", "Report"]

#: How long a database probe's answer is reused, and its connect timeout (libpq's least).
PROBE_CACHE_S = 2.0
PROBE_TIMEOUT_S = 2
#: How long readiness reports a dead letter kept in the table instead of the topic.
DEGRADED_FOR_S = 900.0


@attrs.frozen
class ReadinessCheck:
    name: str
    ok: bool
    detail: str
    #: Passing, but working around a failure (see the module docstring).
    degraded: bool = False


@attrs.frozen
class Report:
    """The checks of one endpoint; the response is 200 when every check passed."""

    checks: tuple[ReadinessCheck, ...]

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    @property
    def failed(self) -> list[str]:
        return [check.name for check in self.checks if not check.ok]

    @property
    def degraded(self) -> list[str]:
        return [check.name for check in self.checks if check.degraded]

    def as_json(self) -> dict[str, Any]:
        status = "fail" if not self.ok else "degraded" if self.degraded else "ok"
        return {
            "status": status,
            "failed": self.failed,
            "degraded": self.degraded,
            "checks": {c.name: {"ok": c.ok, "detail": c.detail} for c in self.checks},
        }


class DatabaseProbe:
    """``SELECT 1`` on a fresh connection, answered from cache for ``cache_s`` seconds."""

    def __init__(self, url: str, *, cache_s: float = PROBE_CACHE_S) -> None:
        self._url = url
        self._bounded = make_conninfo(url, connect_timeout=PROBE_TIMEOUT_S)
        self._cache_s = cache_s
        self._lock = threading.Lock()
        self._last: tuple[float, bool, str] | None = None

    def __call__(self) -> tuple[bool, str]:
        with self._lock:  # one probe at a time; concurrent requests share its answer
            now = time.monotonic()
            if self._last is not None and now - self._last[0] < self._cache_s:
                return self._last[1], self._last[2]
            result = self._probe()
            self._last = (time.monotonic(), *result)
            return result

    def _probe(self) -> tuple[bool, str]:
        started = time.monotonic()
        try:
            with psycopg.connect(self._bounded, autocommit=True) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error as error:
            return False, f"PostgreSQL unreachable: {safe_error_text(error, self._url)}"
        except OSError as error:
            return False, f"PostgreSQL unreachable: {first_line(error)}"
        return True, f"answered in {1000 * (time.monotonic() - started):.0f} ms"


class HealthChecks:
    """Evaluates liveness and readiness of the pipeline behind ``source``."""

    def __init__(
        self,
        source: StateSource,
        settings: Settings,
        *,
        database: Callable[[], tuple[bool, str]] | None = None,
    ) -> None:
        self._source = source
        self._stall_s = settings.http.loop_stall_s
        self._max_unacked_s = settings.http.max_unacked_age_s
        self._max_fetch_stall_s = settings.http.max_fetch_stall_s
        self._database = database or DatabaseProbe(settings.database.url)

    def liveness(self, state: PipelineState | None = None) -> Report:
        state = state or self._source.state()
        return Report((self._loop(state), self._actors(state)))

    def readiness(self) -> Report:
        state = self._source.state()
        live = self.liveness(state).checks
        ok, detail = self._database()
        fallback = self._dead_letter_topic(state)
        return Report(
            (
                *live,
                self._partitions(state),
                ReadinessCheck("database", ok, detail),
                self._progress(state),
                self._fetching(state),
                *((fallback,) if fallback is not None else ()),
            )
        )

    def ready(self) -> bool:
        return self.readiness().ok

    def _loop(self, state: PipelineState) -> ReadinessCheck:
        if state.phase == "starting":
            return ReadinessCheck("consumer_loop", True, "starting")
        if state.phase == "stopped":
            return ReadinessCheck("consumer_loop", False, "stopped")
        idle = state.loop_idle_s
        if idle > self._stall_s:
            return ReadinessCheck(
                "consumer_loop",
                False,
                f"{state.phase}: no poll for {idle:.1f} s (limit {self._stall_s:g} s)",
            )
        return ReadinessCheck("consumer_loop", True, f"{state.phase}: last poll {idle:.1f} s ago")

    @staticmethod
    def _actors(state: PipelineState) -> ReadinessCheck:
        if state.failure is not None:
            return ReadinessCheck("actors", False, state.failure)
        if state.dead_actors:
            return ReadinessCheck("actors", False, f"not running: {', '.join(state.dead_actors)}")
        return ReadinessCheck("actors", True, "all running")

    @staticmethod
    def _partitions(state: PipelineState) -> ReadinessCheck:
        if not state.joined:
            return ReadinessCheck("partitions", False, "waiting for the group to assign partitions")
        count = len(state.partitions)
        return ReadinessCheck("partitions", True, f"{count} assigned, {state.paused_count} paused")

    @staticmethod
    def _dead_letter_topic(state: PipelineState) -> ReadinessCheck | None:
        if state.dead_letter_fallback is None:
            return None
        at, last = state.dead_letter_fallback
        age = time.monotonic() - at
        if age > DEGRADED_FOR_S:
            return None
        return ReadinessCheck(
            "dead_letter_topic",
            True,
            f"degraded: {state.dead_letter_fallbacks} dead letters not taken by the "
            f"dead-letter topic were kept in kingest.dead_letters; the latest {age:.0f} s "
            f"ago: {last}",
            degraded=True,
        )

    def _progress(self, state: PipelineState) -> ReadinessCheck:
        age = state.oldest_unacked_age_s()
        if age > self._max_unacked_s:
            return ReadinessCheck(
                "progress",
                False,
                f"oldest unacknowledged message consumed {age:.1f} s ago "
                f"(limit {self._max_unacked_s:g} s)",
            )
        return ReadinessCheck("progress", True, f"oldest unacknowledged message {age:.1f} s old")

    def _fetching(self, state: PipelineState) -> ReadinessCheck:
        now = time.monotonic()
        stalled = sorted(
            (p.tp, stall)
            for p in state.partitions
            if (stall := p.fetch_stall_s(now)) > self._max_fetch_stall_s
        )
        if stalled:
            names = ", ".join(
                f"{topic}[{partition}] ({s:.0f} s)" for (topic, partition), s in stalled
            )
            return ReadinessCheck(
                "fetching",
                False,
                f"not fetched although messages wait and kingest did not pause them "
                f"(limit {self._max_fetch_stall_s:g} s): {names}",
            )
        return ReadinessCheck(
            "fetching", True, "every partition with messages to fetch is fetched or paused"
        )
