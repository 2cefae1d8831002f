"""Writes ops/grafana/dashboards/kingest.json, the kingest Grafana dashboard.

The panels are listed below, one line of PromQL each; layout, ids and the JSON boilerplate
are generated. After editing, run

    python ops/grafana/dashboard.py

tests/ops/test_ops_stack.py fails while the committed JSON differs from what this
writes, and checks every expression against kingest/telemetry/catalog.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OUTPUT = Path(__file__).parent / "dashboards" / "kingest.json"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}

# Selectors: every query is limited to the chosen instances; per-topic metrics to the
# chosen topics too.
INST = 'job="kingest", instance=~"$instance"'
TOPIC = f'{INST}, messaging_destination_name=~"$topic"'
RATE = "[$__rate_interval]"
TP_LEGEND = "{{messaging_destination_name}}[{{messaging_destination_partition_id}}]"


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    title: str
    description: str
    queries: tuple[Query, ...]
    unit: str = "short"
    kind: str = "timeseries"  # or "stat"
    width: int = 12
    height: int = 8
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Row:
    title: str
    panels: tuple[Panel, ...]


def q(expr: str, legend: str = "") -> Query:
    return Query(expr, legend)


def quantiles(metric: str) -> tuple[Query, ...]:
    """p50, p95 and p99 of a histogram over all its series."""
    return tuple(
        q(
            f"histogram_quantile({quantile}, sum by (le) (rate({metric}_bucket{{{INST}}}{RATE})))",
            f"p{round(quantile * 100)}",
        )
        for quantile in (0.5, 0.95, 0.99)
    )


READY_MAPPINGS = {
    "mappings": [
        {
            "type": "value",
            "options": {
                "0": {"text": "not ready", "color": "red", "index": 0},
                "1": {"text": "ready", "color": "green", "index": 1},
            },
        }
    ],
    "color": {"mode": "thresholds"},
    "thresholds": {
        "mode": "absolute",
        "steps": [{"color": "red", "value": None}, {"color": "green", "value": 1}],
    },
}
UP_MAPPINGS = {
    **READY_MAPPINGS,
    "mappings": [
        {
            "type": "value",
            "options": {
                "0": {"text": "down", "color": "red", "index": 0},
                "1": {"text": "up", "color": "green", "index": 1},
            },
        }
    ],
}
MSG_PER_S = "suffix: msg/s"

ROWS = (
    Row(
        "Overview",
        (
            Panel(
                "Ready",
                "kingest_ready per instance: 1 while /readyz answers 200.",
                (q(f"kingest_ready{{{INST}}}", "{{instance}}"),),
                kind="stat",
                width=4,
                height=4,
                extra=READY_MAPPINGS,
            ),
            Panel(
                "Scraped",
                "Whether Prometheus reaches /metrics of each instance (up).",
                (q(f"up{{{INST}}}", "{{instance}}"),),
                kind="stat",
                width=4,
                height=4,
                extra=UP_MAPPINGS,
            ),
            Panel(
                "Consumed",
                "Kafka messages consumed per second, all instances.",
                (q(f"sum(rate(messaging_client_consumed_messages_total{{{TOPIC}}}{RATE}))"),),
                unit=MSG_PER_S,
                kind="stat",
                width=4,
                height=4,
            ),
            Panel(
                "Lag",
                "Messages between the end of each partition and kingest's committed offset.",
                (q(f"sum(kingest_partition_lag{{{TOPIC}}})"),),
                kind="stat",
                width=4,
                height=4,
            ),
            Panel(
                "Dead letters",
                "Messages dead-lettered per second.",
                (q(f"sum(rate(kingest_dead_letters_total{{{INST}}}{RATE}))"),),
                unit=MSG_PER_S,
                kind="stat",
                width=4,
                height=4,
            ),
            Panel(
                "Oldest unacknowledged",
                "Age of the oldest consumed message not yet in PostgreSQL, worst partition.",
                (q(f"max(kingest_partition_oldest_unacked_age_seconds{{{TOPIC}}})"),),
                unit="s",
                kind="stat",
                width=4,
                height=4,
            ),
        ),
    ),
    Row(
        "Throughput",
        (
            Panel(
                "Messages consumed by topic",
                "Kafka messages consumed and handed to their partition's actor, per second.",
                (
                    q(
                        "sum by (messaging_destination_name) "
                        f"(rate(messaging_client_consumed_messages_total{{{TOPIC}}}{RATE}))",
                        "{{messaging_destination_name}}",
                    ),
                ),
                unit=MSG_PER_S,
            ),
            Panel(
                "Events processed by type and outcome",
                "Messages whose batch was committed to PostgreSQL, per second: stored, "
                "duplicate (event_id already stored) or dead_lettered.",
                (
                    q(
                        "sum by (kingest_event_type, kingest_outcome) "
                        f"(rate(kingest_events_processed_total{{{INST}}}{RATE}))",
                        "{{kingest_event_type}} {{kingest_outcome}}",
                    ),
                ),
                unit=MSG_PER_S,
            ),
            Panel(
                "Dead letters by stage and reason",
                "Messages stored as dead letters per second, by stage (decode, validate, "
                "write) and reason. `kingest dlq list --summary` lists them.",
                (
                    q(
                        "sum by (kingest_error_stage, error_type) "
                        f"(rate(kingest_dead_letters_total{{{INST}}}{RATE}))",
                        "{{kingest_error_stage}} {{error_type}}",
                    ),
                ),
                unit=MSG_PER_S,
            ),
            Panel(
                "Retries by operation and reason",
                "Transient failures retried with backoff per second, by operation and "
                "reason (SQLSTATE class or Kafka error). A database outage (connection "
                "lost, server starting or shutting down, out of resources, system error) "
                "is retried until it ends and dead-letters nothing. Other transient errors "
                "(deadlock, lock or statement timeout, a trigger's RAISE) are retried "
                "KINGEST_RETRY_BUDGET times per write, then the batch is split and a row "
                "that still fails is dead-lettered as retries_exhausted. Dead letters "
                "the topic keeps refusing are kept in the table (see the panel Dead letters "
                "the topic did not take).",
                (
                    q(
                        "sum by (kingest_operation, error_type) "
                        f"(rate(kingest_retries_total{{{INST}}}{RATE}))",
                        "{{kingest_operation}} {{error_type}}",
                    ),
                ),
                unit="suffix: /s",
            ),
            Panel(
                "Dead letters the topic did not take",
                "Dead letters kept in kingest.dead_letters because the dead-letter topic "
                "refused them (too large, not authorized) or kept failing for the publish "
                "budget, per second, by Kafka error. Their publish_error column says why.",
                (
                    q(
                        "sum by (error_type) "
                        f"(rate(kingest_dead_letter_publish_failures_total{{{INST}}}{RATE}))",
                        "{{error_type}}",
                    ),
                ),
                unit=MSG_PER_S,
            ),
            Panel(
                "Messages with unreadable headers",
                "Messages per second whose Kafka headers could not be read (a header name "
                "that is not UTF-8), processed without any header; logged with offsets.",
                (
                    q(
                        "sum by (messaging_destination_name) "
                        f"(rate(kingest_unreadable_headers_total{{{TOPIC}}}{RATE}))",
                        "{{messaging_destination_name}}",
                    ),
                ),
                unit=MSG_PER_S,
            ),
        ),
    ),
    Row(
        "Latency and batches",
        (
            Panel(
                "DB write duration",
                "One batch's write transaction in PostgreSQL, commit included.",
                quantiles("db_client_operation_duration_seconds"),
                unit="s",
                width=6,
            ),
            Panel(
                "End-to-end latency",
                "From a message's Kafka timestamp to the commit of the transaction that stored it.",
                quantiles("kingest_end_to_end_latency_seconds"),
                unit="s",
                width=6,
            ),
            Panel(
                "Batch size",
                "Messages per batch written in one transaction.",
                (
                    *quantiles("kingest_batch_size")[::2],
                    q(
                        f"sum(rate(kingest_batch_size_sum{{{INST}}}{RATE})) / "
                        f"sum(rate(kingest_batch_size_count{{{INST}}}{RATE}))",
                        "mean",
                    ),
                ),
                width=6,
            ),
            Panel(
                "Write transactions",
                "Batches written per second, and write transactions by operation.",
                (
                    q(f"sum(rate(kingest_batch_size_count{{{INST}}}{RATE}))", "batches"),
                    q(
                        "sum by (db_operation_name) "
                        f"(rate(db_client_operation_duration_seconds_count{{{INST}}}{RATE}))",
                        "{{db_operation_name}}",
                    ),
                ),
                unit="suffix: /s",
                width=6,
            ),
        ),
    ),
    Row(
        "Queues and backpressure",
        (
            Panel(
                "Mailbox depth per partition",
                "Messages waiting in each partition actor's mailbox. A partition over its "
                "bound is paused on the consumer.",
                (q(f"kingest_partition_mailbox_depth{{{TOPIC}}}", TP_LEGEND),),
                width=8,
            ),
            Panel(
                "Writer queue and batches in flight",
                "Batches waiting for a database writer, and batches handed to the writers "
                "and not yet acknowledged.",
                (
                    q(f"kingest_writer_queue_depth{{{INST}}}", "{{instance}} queued"),
                    q(f"kingest_batches_in_flight{{{INST}}}", "{{instance}} in flight"),
                ),
                width=8,
            ),
            Panel(
                "Partitions assigned and paused",
                "Partitions assigned to each instance, and those paused because their "
                "backlog is over its bound.",
                (
                    q(f"kingest_partitions_assigned{{{INST}}}", "{{instance}} assigned"),
                    q(f"kingest_partitions_paused{{{INST}}}", "{{instance}} paused"),
                ),
                width=8,
            ),
        ),
    ),
    Row(
        "Offsets and lag",
        (
            Panel(
                "Lag per partition",
                "Messages between the partition's end offset and kingest's committed offset "
                "(also while paused).",
                (q(f"kingest_partition_lag{{{TOPIC}}}", TP_LEGEND),),
                width=8,
            ),
            Panel(
                "Oldest unacknowledged message per partition",
                "Age of the oldest consumed message not yet durable in PostgreSQL (0 when "
                "everything consumed is acknowledged); and how long a partition with "
                "messages to fetch, not paused by kingest, has gone unfetched.",
                (
                    q(f"kingest_partition_oldest_unacked_age_seconds{{{TOPIC}}}", TP_LEGEND),
                    q(
                        f"kingest_partition_fetch_stall_seconds{{{TOPIC}}} > 0",
                        f"not fetched {TP_LEGEND}",
                    ),
                ),
                unit="s",
                width=8,
            ),
            Panel(
                "Committed offset per partition",
                "The last offset kingest committed (the next message to consume).",
                (q(f"kingest_partition_committed_offset{{{TOPIC}}}", TP_LEGEND),),
                width=8,
            ),
            Panel(
                "Offset commits by result",
                "Offset commits sent to the group coordinator per second.",
                (
                    q(
                        "sum by (kingest_commit_result) "
                        f"(rate(kingest_commits_total{{{INST}}}{RATE}))",
                        "{{kingest_commit_result}}",
                    ),
                ),
                unit="suffix: /s",
            ),
            Panel(
                "Rebalances by kind",
                "Rebalance callbacks (assign, revoke, lost) per interval.",
                (
                    q(
                        "sum by (kingest_rebalance_kind) "
                        f"(increase(kingest_rebalances_total{{{INST}}}{RATE}))",
                        "{{kingest_rebalance_kind}}",
                    ),
                ),
                extra={"custom": {"drawStyle": "bars", "fillOpacity": 60}},
            ),
        ),
    ),
    Row(
        "Process",
        (
            Panel(
                "CPU",
                "CPU time of each kingest process by mode (100 % = one core busy).",
                (
                    q(
                        "sum by (instance, cpu_mode) "
                        f"(rate(process_cpu_time_seconds_total{{{INST}}}{RATE}))",
                        "{{instance}} {{cpu_mode}}",
                    ),
                ),
                unit="percentunit",
                extra={"custom": {"stacking": {"mode": "normal", "group": "A"}}},
            ),
            Panel(
                "Resident memory",
                "RSS of each kingest process (docs/memory.md computes its bound).",
                (q(f"process_memory_usage_bytes{{{INST}}}", "{{instance}}"),),
                unit="bytes",
            ),
        ),
    ),
)

TEMPLATE_QUERIES = {
    "instance": 'label_values(kingest_ready{job="kingest"}, instance)',
    "topic": f"label_values(kingest_partition_lag{{{INST}}}, messaging_destination_name)",
}

ANNOTATION_EXPR = (
    f"sum by (kingest_rebalance_kind) (increase(kingest_rebalances_total{{{INST}}}[1m])) > 0"
)


def _panel_json(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    extra = dict(panel.extra)
    custom = extra.pop("custom", {})
    defaults: dict[str, Any] = {"unit": panel.unit, **extra}
    if panel.kind == "timeseries":
        defaults["custom"] = {"fillOpacity": 10, "showPoints": "never", **custom}
        defaults.setdefault("min", 0)
        options: dict[str, Any] = {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    else:
        options = {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "none" if "mappings" in extra else "area",
            "textMode": "auto",
            "justifyMode": "auto",
            "orientation": "auto",
        }
    return {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": options,
        "targets": [
            {
                "refId": chr(ord("A") + index),
                "datasource": DATASOURCE,
                "expr": query.expr,
                "legendFormat": query.legend or "__auto",
                "range": True,
            }
            for index, query in enumerate(panel.queries)
        ],
    }


def _template(name: str, query: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": name,
        "type": "query",
        "datasource": DATASOURCE,
        "definition": query,
        "query": {"query": query, "refId": f"{name}-values"},
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
    }


def build() -> dict[str, Any]:
    """The dashboard as a dict (what OUTPUT holds)."""
    panels: list[dict[str, Any]] = []
    panel_id, y = 1, 0
    for row in ROWS:
        panels.append(
            {
                "id": panel_id,
                "type": "row",
                "title": row.title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        panel_id, y = panel_id + 1, y + 1
        x, line_height = 0, 0
        for panel in row.panels:
            if x + panel.width > 24:
                x, y, line_height = 0, y + line_height, 0
            panels.append(_panel_json(panel, panel_id, x, y))
            panel_id += 1
            x += panel.width
            line_height = max(line_height, panel.height)
        y += line_height
    return {
        "uid": "kingest",
        "title": "kingest",
        "description": "Kafka -> PostgreSQL ingest; metrics of kingest/telemetry/catalog.py",
        "tags": ["kingest", "kafka", "postgresql"],
        "timezone": "browser",
        "editable": False,
        "graphTooltip": 1,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "schemaVersion": 39,
        "version": 1,
        "links": [
            {
                "title": "Traces in Jaeger",
                "type": "link",
                "url": "http://localhost:16686/search?service=kingest",
                "targetBlank": True,
                "icon": "external link",
            },
            {
                "title": "Traces in Tempo (Explore)",
                "type": "link",
                "url": "/explore?left=%7B%22datasource%22:%22tempo%22%7D",
                "targetBlank": True,
                "icon": "external link",
            },
        ],
        "annotations": {
            "list": [
                {
                    "name": "Rebalances",
                    "datasource": DATASOURCE,
                    "enable": True,
                    "iconColor": "orange",
                    "expr": ANNOTATION_EXPR,
                    "titleFormat": "rebalance: {{kingest_rebalance_kind}}",
                    "step": "1m",
                }
            ]
        },
        "templating": {
            "list": [_template(name, query) for name, query in TEMPLATE_QUERIES.items()]
        },
        "panels": panels,
    }


def render() -> str:
    return json.dumps(build(), indent=2) + "\n"


if __name__ == "__main__":
    OUTPUT.write_text(render())
    print(f"wrote {OUTPUT}")
