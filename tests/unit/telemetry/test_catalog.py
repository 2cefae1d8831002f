"""The metric catalog against what the Prometheus exporter really serves, the counter
store behind the exported counters, and the health checks' verdicts (pure logic)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kingest.config.loading import load_settings
from kingest.config.settings import ConfigError
from kingest.telemetry import catalog
from kingest.telemetry.catalog import MetricSpec
from kingest.telemetry.health import HealthChecks
from kingest.telemetry.metrics import (
    PartitionState,
    PipelineState,
    create_instrument,
    metrics_reference_markdown,
)
from kingest.telemetry.stats import SHORT_NAMES, PipelineStats

VALID = {
    "KINGEST_KAFKA_BOOTSTRAP_SERVERS": "broker:9092",
    "KINGEST_TOPICS": "events",
    "KINGEST_GROUP_ID": "kingest",
    "KINGEST_DATABASE_URL": "postgresql://kingest@db/ml",
}


def _attributes(spec: MetricSpec) -> dict[str, str]:
    return {name: f"v{index}" for index, name in enumerate(spec.attributes)}


def test_every_catalog_metric_is_served_under_its_prometheus_name_and_labels() -> None:
    registry = CollectorRegistry(auto_describe=False)
    provider = MeterProvider(
        metric_readers=[PrometheusMetricReader(registry=registry)], shutdown_on_exit=False
    )
    meter = provider.get_meter("kingest-test")
    for spec in catalog.ALL:
        if spec.kind == "histogram":
            create_instrument(meter, spec).record(spec.buckets[0], _attributes(spec))
            continue

        def observe(_: CallbackOptions, spec: MetricSpec = spec) -> Iterable[Observation]:
            yield Observation(1, _attributes(spec))

        create_instrument(meter, spec, observe)
    families = {
        family.name: family
        for family in text_string_to_metric_families(generate_latest(registry).decode())
    }
    scope = {"otel_scope_name", "otel_scope_version", "otel_scope_schema_url"}
    for spec in catalog.ALL:
        samples = [s for f in families.values() for s in f.samples]
        if spec.kind == "histogram":
            names = {f"{spec.prometheus_name}_{suffix}" for suffix in ("bucket", "count", "sum")}
            bounds = {
                float(s.labels["le"]) for s in samples if s.name == f"{spec.prometheus_name}_bucket"
            }
            assert bounds == {*spec.buckets, float("inf")}, spec.name
        else:
            names = {spec.prometheus_name}
        found = [s for s in samples if s.name in names]
        assert {s.name for s in found} == names, spec.name
        for sample in found:
            labels = {k: v for k, v in sample.labels.items() if k not in scope | {"le"}}
            assert labels == {
                name.replace(".", "_"): value for name, value in _attributes(spec).items()
            }, spec.name


def test_the_reference_table_lists_every_metric_once() -> None:
    table = metrics_reference_markdown()
    for spec in catalog.ALL:
        assert table.count(f"| `{spec.prometheus_name}` |") == 1
    assert len(table.splitlines()) == 2 + len(catalog.ALL)


def test_short_totals_sum_the_catalog_series() -> None:
    stats = PipelineStats()
    stats.count(catalog.EVENTS_PROCESSED, {("metric_logged", "stored"): 7})
    stats.count(catalog.EVENTS_PROCESSED, {("metric_logged", "duplicate"): 2, ("x", "stored"): 1})
    stats.count(catalog.REBALANCES, {("assign",): 1, ("revoke",): 1})
    stats.count(catalog.DEAD_LETTERS, {("write", "StringDataRightTruncation"): 1})
    stats.count(catalog.DEAD_LETTERS, {("decode", "invalid_protobuf"): 3})
    stats.add(messages_written=13, transactions=1)
    stats.add(messages_written=2)
    assert stats.get("rows_inserted") == 8
    assert stats.get("duplicates") == 2
    assert stats.get("rebalances") == 1  # assignments, as before the catalog
    assert stats.get("write_rejections") == 1
    assert stats.get("dead_letters") == 4
    assert stats.get("retries") == 0
    assert stats.get("messages_written") == 15
    assert stats.series(catalog.EVENTS_PROCESSED) == {
        ("metric_logged", "stored"): 7,
        ("metric_logged", "duplicate"): 2,
        ("x", "stored"): 1,
    }
    snapshot = stats.snapshot()
    assert snapshot["messages_written"] == 15
    assert snapshot["transactions"] == 1
    assert snapshot["duplicates"] == 2


def test_every_counter_is_a_catalog_specification_and_internal_ones_are_not_exported() -> None:
    exported = {spec.name for spec in catalog.ALL}
    internal = {spec.name for spec in catalog.INTERNAL}
    assert not exported & internal
    assert len(internal) == len(catalog.INTERNAL)
    assert all(spec.kind == "counter" and not spec.attributes for spec in catalog.INTERNAL)
    assert not any(
        f"`{spec.prometheus_name}`" in metrics_reference_markdown() for spec in catalog.INTERNAL
    )
    # Every short name reads a catalog counter, exported or internal.
    assert {spec.name for spec, _ in SHORT_NAMES.values()} <= exported | internal
    stats = PipelineStats()
    stats.increment((catalog.TRANSACTIONS, 2), (catalog.MESSAGES_WRITTEN, 40))
    stats.add(pauses=3)
    assert stats.series(catalog.PARTITION_PAUSES) == {(): 3}
    assert stats.snapshot() == {
        **dict.fromkeys(SHORT_NAMES, 0),
        "transactions": 2,
        "messages_written": 40,
        "pauses": 3,
    }
    with pytest.raises(ValueError, match="count its series"):
        stats.add(duplicates=1)  # a part of kingest.events.processed
    with pytest.raises(ValueError, match="use count"):
        stats.increment((catalog.RETRIES, 1))
    with pytest.raises(KeyError):
        stats.get("no_such_counter")


@pytest.mark.parametrize(
    ("value", "enabled"), [("false", False), ("0", False), ("No", False), ("true", True)]
)
def test_the_http_endpoints_can_be_switched_off(value: str, enabled: bool) -> None:
    settings = load_settings({**VALID, "KINGEST_HTTP_ENABLED": value})
    assert settings.http.enabled is enabled
    assert (settings.http.host, settings.http.port) == ("0.0.0.0", 9464)


def test_bad_http_settings_are_reported_together() -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(
            {
                **VALID,
                "KINGEST_HTTP_ENABLED": "maybe",
                "KINGEST_HTTP_PORT": "70000",
                "KINGEST_HEALTH_LOOP_STALL_S": "0",
            }
        )
    problems = "\n".join(raised.value.problems)
    assert "KINGEST_HTTP_ENABLED: expected true or false, got 'maybe'" in problems
    assert "KINGEST_HTTP_PORT: must be between 0 and 65535" in problems
    assert "KINGEST_HEALTH_LOOP_STALL_S: must be positive" in problems


# ---------------------------------------------------------------------------- health


class States:
    def __init__(self, state: PipelineState) -> None:
        self.current = state

    def state(self) -> PipelineState:
        return self.current


def checks_for(state: PipelineState, database: tuple[bool, str] = (True, "ok")) -> HealthChecks:
    settings = load_settings(
        {**VALID, "KINGEST_HEALTH_LOOP_STALL_S": "5", "KINGEST_HEALTH_MAX_UNACKED_AGE_S": "60"}
    )
    return HealthChecks(States(state), settings, database=lambda: database)


def partition(unacked_for: float | None = None) -> PartitionState:
    since = None if unacked_for is None else time.monotonic() - unacked_for
    return PartitionState(("events", 0), 0, False, None, since)


def verdict(report: Any) -> tuple[bool, list[str]]:
    return report.ok, report.failed


def test_a_running_pipeline_is_live_and_ready() -> None:
    checks = checks_for(PipelineState((partition(1.0),), phase="running", joined=True))
    assert verdict(checks.liveness()) == (True, [])
    assert verdict(checks.readiness()) == (True, [])
    body = checks.readiness().as_json()
    assert body["status"] == "ok"
    assert body["checks"]["partitions"]["detail"] == "1 assigned, 0 paused"


def test_a_stalled_loop_or_a_failed_actor_is_not_live() -> None:
    stalled = checks_for(PipelineState(phase="running", joined=True, loop_idle_s=6.0))
    assert verdict(stalled.liveness()) == (False, ["consumer_loop"])
    failed = checks_for(
        PipelineState(phase="stopping", joined=True, failure="actor writer-1 failed: X: y")
    )
    assert verdict(failed.liveness()) == (False, ["actors"])
    assert (
        failed.liveness().as_json()["checks"]["actors"]["detail"] == "actor writer-1 failed: X: y"
    )
    dead = checks_for(PipelineState(phase="running", dead_actors=("writer-0",)))
    assert verdict(dead.liveness()) == (False, ["actors"])
    assert verdict(checks_for(PipelineState(phase="stopped")).liveness()) == (
        False,
        ["consumer_loop"],
    )
    assert verdict(checks_for(PipelineState(phase="starting")).liveness()) == (True, [])


def test_readiness_needs_the_group_the_database_and_progress() -> None:
    waiting = checks_for(PipelineState(phase="running"))
    assert verdict(waiting.readiness()) == (False, ["partitions"])
    no_database = checks_for(
        PipelineState(phase="running", joined=True), database=(False, "PostgreSQL unreachable")
    )
    assert verdict(no_database.readiness()) == (False, ["database"])
    stuck = checks_for(PipelineState((partition(90.0),), phase="running", joined=True))
    assert verdict(stuck.readiness()) == (False, ["progress"])
    assert verdict(stuck.liveness()) == (True, [])


def unfetched(tp: tuple[str, int], *, for_s: float, backlog: int, paused: bool) -> PartitionState:
    return PartitionState(
        tp,
        0,
        paused,
        None,
        None,
        fetched_at=time.monotonic() - for_s,
        fetch_backlog=backlog,
    )


def test_readiness_names_partitions_with_messages_that_are_not_fetched() -> None:
    settings = load_settings({**VALID, "KINGEST_HEALTH_MAX_FETCH_STALL_S": "30"})
    stalled = unfetched(("events", 3), for_s=45.0, backlog=10, paused=False)
    state = PipelineState(
        (
            stalled,
            unfetched(("events", 1), for_s=40.0, backlog=7, paused=False),
            # paused by kingest, at its end, or fetched recently: all fine
            unfetched(("events", 0), for_s=600.0, backlog=10, paused=True),
            unfetched(("events", 2), for_s=600.0, backlog=0, paused=False),
            unfetched(("events", 4), for_s=5.0, backlog=10, paused=False),
        ),
        phase="running",
        joined=True,
    )
    checks = HealthChecks(States(state), settings, database=lambda: (True, "ok"))
    report = checks.readiness()
    assert verdict(report) == (False, ["fetching"])
    detail = report.as_json()["checks"]["fetching"]["detail"]
    assert "limit 30 s" in detail
    assert detail.endswith(": events[1] (40 s), events[3] (45 s)")
    assert verdict(checks.liveness()) == (True, [])
    assert stalled.fetch_stall_s(time.monotonic()) >= 45.0
    assert state.partitions[2].fetch_stall_s() == 0.0
    assert state.partitions[3].fetch_stall_s() == 0.0


def test_the_metrics_page_embeds_the_current_metric_reference() -> None:
    page = (Path(__file__).parents[3] / "docs" / "metrics.md").read_text()
    start_marker = "<!-- metrics-reference:start -->\n"
    start = page.index(start_marker) + len(start_marker)
    end = page.index("<!-- metrics-reference:end -->")
    assert page[start:end] == metrics_reference_markdown(), (
        "paste kingest.telemetry.metrics.metrics_reference_markdown() into docs/metrics.md"
    )


def test_a_dead_letter_kept_in_the_table_instead_of_the_topic_is_ready_but_degraded() -> None:
    fallback = (time.monotonic() - 3.0, "events:0:17 MSG_SIZE_TOO_LARGE: Message size too large")
    state = PipelineState(
        (partition(1.0),),
        phase="running",
        joined=True,
        dead_letter_fallback=fallback,
        dead_letter_fallbacks=2,
    )
    report = checks_for(state).readiness()
    assert verdict(report) == (True, [])
    body = report.as_json()
    assert (body["status"], body["degraded"]) == ("degraded", ["dead_letter_topic"])
    detail = body["checks"]["dead_letter_topic"]["detail"]
    assert detail.startswith("degraded: 2 dead letters not taken by the dead-letter topic")
    assert "events:0:17 MSG_SIZE_TOO_LARGE" in detail
    old = PipelineState(
        phase="running", joined=True, dead_letter_fallback=(time.monotonic() - 3600, "x")
    )
    assert checks_for(old).readiness().as_json()["status"] == "ok"
