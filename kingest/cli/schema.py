"""``kingest schema plan/apply``: a catalog's tables on the database (logic: kingest.store).

``plan`` prints the statements that applying would run, or that the database already
holds the catalog; ``apply`` runs them and records the catalog. Both exit 1 listing every
breaking change when the catalog may not be applied as it is, 2 when the catalog does not
load (every problem listed), 1 on a database failure; never a traceback.

The catalog is ``--catalog`` (a compiled ``FileDescriptorSet``; default the built-in one),
its schema ``--schema`` and its typed topics ``--topic-types``; they fall back to
``KINGEST_CATALOG``, ``KINGEST_DATABASE_SCHEMA`` and ``KINGEST_TOPIC_TYPES``, as the
service reads them, without asking for the rest of its configuration (Kafka...).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NoReturn

import psycopg
import typer
from rich.console import Console

from kingest.cli.catalog_options import (
    CatalogPath,
    SchemaName,
    TopicTypesOption,
    cli_catalog,
    exit_listing,
)
from kingest.cli.dlq import DatabaseUrl
from kingest.config import redact_conninfo, safe_error_text
from kingest.runtime import EXIT_FAILED

if TYPE_CHECKING:
    from kingest.catalog import Catalog
    from kingest.store import SchemaPlan

__all__ = ["apply_catalog", "schema_app"]

schema_app = typer.Typer(
    name="schema",
    help="Plan and apply a catalog's tables (a compiled Protobuf descriptor set).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
_stderr = Console(stderr=True, soft_wrap=True)


@contextmanager
def _database(database_url: str, command: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection; a database failure is one line and exit 1."""
    try:
        with psycopg.connect(database_url, autocommit=True) as conn:
            yield conn
    except psycopg.Error as error:
        exit_listing(
            EXIT_FAILED,
            f"[bold red]kingest schema {command} failed[/] on {redact_conninfo(database_url)}:",
            [safe_error_text(error, database_url)],
        )


def _print_notes(plan: SchemaPlan) -> None:
    for note in plan.notes:
        _stderr.print(f"note: {note}", markup=False, highlight=False)


def _refuse(plan: SchemaPlan) -> NoReturn:
    _print_notes(plan)
    exit_listing(
        EXIT_FAILED,
        f"[bold red]kingest schema: refused[/], {len(plan.breaking)} breaking changes "
        f"in schema {plan.schema}:",
        [str(finding) for finding in plan.breaking],
    )


@schema_app.command("plan")
def plan_command(
    database_url: DatabaseUrl,
    catalog_path: CatalogPath = None,
    schema: SchemaName = "kingest",
    topic_types: TopicTypesOption = "",
) -> None:
    """Print the statements `kingest schema apply` would run (nothing is changed)."""
    from kingest.store import plan_schema  # noqa: PLC0415

    catalog = cli_catalog(catalog_path, schema, topic_types, command="schema")
    with _database(database_url, "plan") as conn:
        plan = plan_schema(conn, catalog)
    if plan.breaking:
        _refuse(plan)
    _print_notes(plan)
    if plan.holds_catalog:
        recorded = "" if plan.recorded else " (not recorded yet: `kingest schema apply` does)"
        typer.echo(f"the database already holds the catalog{recorded}")
        return
    for statement in plan.statements:
        typer.echo(f"{statement};\n")


@schema_app.command("apply")
def apply_command(
    database_url: DatabaseUrl,
    catalog_path: CatalogPath = None,
    schema: SchemaName = "kingest",
    topic_types: TopicTypesOption = "",
) -> None:
    """Create and extend the catalog's tables, then record the catalog (idempotent;
    waits for `kingest migrate` and other applies on their advisory lock)."""
    catalog = cli_catalog(catalog_path, schema, topic_types, command="schema")
    apply_catalog(database_url, catalog)


def apply_catalog(database_url: str, catalog: Catalog) -> None:
    """Apply ``catalog`` and say what was done; exit 1 listing every breaking change, or
    on a database failure (``kingest schema apply``, ``kingest migrate --catalog``)."""
    from kingest.store import SchemaPlanError, apply_schema  # noqa: PLC0415

    with _database(database_url, "apply") as conn:
        try:
            plan = apply_schema(conn, catalog)
        except SchemaPlanError as error:
            if error.plan is not None:
                _refuse(error.plan)
            exit_listing(EXIT_FAILED, "[bold red]kingest schema apply failed:[/]", [str(error)])
    _print_notes(plan)
    digest = catalog.digest[:12]
    if plan.statements:
        typer.echo(f"applied {len(plan.statements)} statements; recorded catalog {digest}")
    elif not plan.recorded:
        typer.echo(f"the database already holds the catalog; recorded catalog {digest}")
    else:
        typer.echo("the database already holds the catalog")
