"""What kingest shows of itself: traces, metrics, health, lag, logs and progress.

Contract: every metric is declared once in :mod:`~kingest.telemetry.catalog`; counters
are kept in :class:`PipelineStats` (bumped once per poll or batch, read at collection);
:class:`PipelineMetrics` exports them with the histograms and gauges; spans follow the
OpenTelemetry messaging and database conventions (:mod:`~kingest.telemetry.tracing`);
readiness is a list of named checks (:class:`HealthChecks`); logs are JSON or text with
the correlation id and secrets redacted. Telemetry never changes what the pipeline does.
"""

from __future__ import annotations

from kingest.telemetry import catalog, tracing
from kingest.telemetry.health import HealthChecks, Report
from kingest.telemetry.lag import LagError, LagSampler, group_lag
from kingest.telemetry.logs import configure_logging, secret_values
from kingest.telemetry.metrics import PartitionState, PipelineMetrics, PipelineState
from kingest.telemetry.progress import new_progress, produce_with_progress
from kingest.telemetry.stats import PipelineStats
from kingest.telemetry.tracing import BatchTrace, configure_tracing

__all__ = [
    "BatchTrace",
    "HealthChecks",
    "LagError",
    "LagSampler",
    "PartitionState",
    "PipelineMetrics",
    "PipelineState",
    "PipelineStats",
    "Report",
    "catalog",
    "configure_logging",
    "configure_tracing",
    "group_lag",
    "new_progress",
    "produce_with_progress",
    "secret_values",
    "tracing",
]
