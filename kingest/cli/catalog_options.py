"""The catalog options shared by the commands that read events: ``--catalog``,
``--schema`` and ``--topic-types``, falling back to ``KINGEST_CATALOG``,
``KINGEST_DATABASE_SCHEMA`` and ``KINGEST_TOPIC_TYPES`` as the service reads them,
without asking for the rest of its configuration (Kafka...).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console

from kingest.config import BadEntriesError, parse_topic_types
from kingest.runtime import EXIT_BAD_CONFIG

if TYPE_CHECKING:
    from kingest.catalog import Catalog

__all__ = ["CatalogPath", "SchemaName", "TopicTypesOption", "cli_catalog", "exit_listing"]

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


def exit_listing(code: int, headline: str, lines: list[str]) -> NoReturn:
    """Print ``headline`` and each line as a list item on stderr, then exit ``code``."""
    _stderr.print(headline, highlight=False)
    for line in lines:
        _stderr.print(f"  - {line}", markup=False, highlight=False)
    raise typer.Exit(code)


def cli_catalog(path: Path | None, schema: str, topic_types: str, *, command: str) -> Catalog:
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
        exit_listing(EXIT_BAD_CONFIG, f"[bold red]kingest {command}: bad input[/]", problems)
    try:
        return load_catalog(path, schema=schema, topic_types=types or None)
    except CatalogError as error:
        headline = f"[bold red]kingest {command}: the catalog does not load[/]"
        exit_listing(EXIT_BAD_CONFIG, headline, error.problems)
