"""The DDL text: quoting, constraints, and the built-in catalog's tables."""

from __future__ import annotations

import pytest

from kingest.catalog import (
    Column,
    StateTable,
    catalog_ddl,
    column_definition,
    load_catalog,
    quote_identifier,
    quote_literal,
)


@pytest.mark.parametrize(
    ("name", "quoted"),
    [
        ("run_id", "run_id"),
        ("order", '"order"'),
        ("user", '"user"'),
        ("Mixed", '"Mixed"'),
        ('we"ird', '"we""ird"'),
        ("key", "key"),
        ("value", "value"),
    ],
)
def test_identifiers_are_quoted_only_where_postgresql_needs_it(name: str, quoted: str) -> None:
    assert quote_identifier(name) == quoted


def test_literals_double_their_quotes() -> None:
    assert quote_literal("the run's id") == "'the run''s id'"


def test_a_column_definition_carries_null_default_and_its_named_check() -> None:
    table = StateTable("runs", ("id",), (), (), None)
    column = Column("status", "text", not_null=True, default="'running'", check_values=("a", "b's"))
    assert column_definition(table, column) == (
        "status text NOT NULL DEFAULT 'running' "
        "CONSTRAINT runs_status_check CHECK (status IN ('a', 'b''s'))"
    )


def test_the_built_in_catalog_is_the_eight_fact_tables_and_two_state_tables() -> None:
    catalog = load_catalog()
    assert catalog.envelope == "kingest.schema.v1.Event"
    assert [(t.name, t.event_type) for t in catalog.fact_tables] == [
        ("training_run_starts", "training_run_started"),
        ("training_run_finishes", "training_run_finished"),
        ("metrics", "metric_logged"),
        ("model_versions", "model_version_registered"),
        ("deployments", "model_deployed"),
        ("inferences", "inference_completed"),
        ("evaluations", "evaluation_completed"),
        ("drift_alerts", "data_drift_detected"),
    ]
    runs = catalog.table("training_runs")
    assert isinstance(runs, StateTable)
    assert runs.primary_key == ("run_id",)
    status = runs.column("status")
    assert (status.not_null, status.check_values) == (
        True,
        ("running", "succeeded", "failed", "cancelled"),
    )
    assert not runs.column("started_at").not_null
    deployments = catalog.table("model_deployments")
    assert deployments.primary_key == ("model_name", "environment")
    assert not deployments.column("endpoint").not_null
    statements = catalog_ddl(catalog)
    assert statements[0] == "CREATE SCHEMA IF NOT EXISTS kingest"
    assert sum(s.startswith("CREATE TABLE") for s in statements) == 10
    assert (
        "CREATE INDEX training_runs_status_idx ON kingest.training_runs (status, status_at)"
        in statements
    )
