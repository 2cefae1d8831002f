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

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import psycopg
import typer
from rich.console import Console

from kingest.cli.dlq import DatabaseUrl
from kingest.config import BadEntriesError, parse_topic_types, redact_conninfo, safe_error_text
from kingest.runtime import EXIT_BAD_CONFIG, EXIT_FAILED

if TYPE_CHECKING:
    from kingest.catalog import Catalog
    from kingest.store import SchemaPlan

__all__ = ["schema_app"]

schema_app = typer.Typer(
    name="schema",
    help="Plan and apply a catalog's tables (a compiled Protobuf descriptor set).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
_stderr = Console(stderr=True, soft_wrap=True)

CatalogPath = Annotated[
    Path | None,
    typer.Option(
        "--catalog",
        envvar="KINGEST_CATALOG",
        help="The catalog: a FileDescriptorSet (buf build -o, protoc --descriptor_set_out "
        "--include_imports --include_source_info). Default: the built-in catalog.",
        show_default=False,
    ),
]
SchemaName = Annotated[
    str,
    typer.Option(
        "--schema", envvar="KINGEST_DATABASE_SCHEMA", help="Schema of the catalog's tables."
    ),
]
TopicTypesOption = Annotated[
    str,
    typer.Option(
        "--topic-types",
        envvar="KINGEST_TOPIC_TYPES",
        help="Topics that carry one message type each, for a catalog without an envelope: "
        "topic:package.Message, comma-separated.",
    ),
]


def _exit(code: int, headline: str, lines: list[str]) -> NoReturn:
    _stderr.print(headline, highlight=False)
    for line in lines:
        _stderr.print(f"  - {line}", markup=False, highlight=False)
    raise typer.Exit(code)


def _catalog(path: Path | None, schema: str, topic_types: str) -> Catalog:
    """The catalog, or exit 2 listing every problem with it or with ``--topic-types``."""
    from kingest.catalog import CatalogError, load_catalog  # noqa: PLC0415

    problems: list[str] = []
    types: Mapping[str, str] = {}
    try:
        types = parse_topic_types(topic_types)
    except BadEntriesError as error:
        problems += [f"--topic-types: {problem}" for problem in error.problems]
    if path is not None and not path.is_file():
        problems.append(f"--catalog {path}: no such file")
    if problems:
        _exit(EXIT_BAD_CONFIG, "[bold red]kingest schema: bad input[/]", problems)
    try:
        return load_catalog(path, schema=schema, topic_types=types or None)
    except CatalogError as error:
        headline = "[bold red]kingest schema: the catalog does not load[/]"
        _exit(EXIT_BAD_CONFIG, headline, error.problems)


@contextmanager
def _database(database_url: str, command: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection; a database failure is one line and exit 1."""
    try:
        with psycopg.connect(database_url, autocommit=True) as conn:
            yield conn
    except psycopg.Error as error:
        _exit(
            EXIT_FAILED,
            f"[bold red]kingest schema {command} failed[/] on {redact_conninfo(database_url)}:",
            [safe_error_text(error, database_url)],
        )


def _print_notes(plan: SchemaPlan) -> None:
    for note in plan.notes:
        _stderr.print(f"note: {note}", markup=False, highlight=False)


def _refuse(plan: SchemaPlan) -> NoReturn:
    _print_notes(plan)
    _exit(
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

    catalog = _catalog(catalog_path, schema, topic_types)
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
    from kingest.store import SchemaPlanError, apply_schema  # noqa: PLC0415

    catalog = _catalog(catalog_path, schema, topic_types)
    with _database(database_url, "apply") as conn:
        try:
            plan = apply_schema(conn, catalog)
        except SchemaPlanError as error:
            if error.plan is not None:
                _refuse(error.plan)
            _exit(EXIT_FAILED, "[bold red]kingest schema apply failed:[/]", [str(error)])
    _print_notes(plan)
    digest = catalog.digest[:12]
    if plan.statements:
        typer.echo(f"applied {len(plan.statements)} statements; recorded catalog {digest}")
    elif not plan.recorded:
        typer.echo(f"the database already holds the catalog; recorded catalog {digest}")
    else:
        typer.echo("the database already holds the catalog")
