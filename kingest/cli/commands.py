"""The ``kingest`` command line."""

from __future__ import annotations

# First, before the imports that take most of a second: from here on a SIGTERM to
# `kingest start` is a stop request, not the end of the process.
from kingest.runtime import EXIT_BAD_CONFIG, EXIT_FAILED, EXIT_FORCED, early_stop

early_stop.install()

import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from kingest import __version__
from kingest.cli.bench import bench
from kingest.cli.catalog_options import CatalogPath, SchemaName, TopicTypesOption, cli_catalog
from kingest.cli.dlq import dlq_app
from kingest.cli.schema import apply_catalog, schema_app
from kingest.config import (
    ConfigError,
    Settings,
    effective_settings,
    load_settings,
    redact_conninfo,
    reference_markdown,
    safe_error_text,
)
from kingest.telemetry import configure_logging, secret_values

if TYPE_CHECKING:
    from kingest.dev import DemoCatalog, ProducibleRecord

__all__ = ["app", "main"]


app = typer.Typer(
    name="kingest",
    help="Kafka -> PostgreSQL ingest of AI/ML pipeline events, exactly once.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(dlq_app, name="dlq")
app.add_typer(schema_app, name="schema")
app.command("bench")(bench)
# Errors are never wrapped: a path or a server message stays one line to copy or grep.
err = Console(stderr=True, soft_wrap=True)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"kingest {__version__}")
        raise typer.Exit


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Configuration comes from KINGEST_* environment variables: see `kingest config`."""


def _settings_or_exit(problems: list[str] | None = None) -> Settings:
    """The settings, or exit 2 listing their problems and ``problems`` (all at once)."""
    problems = list(problems or [])
    try:
        settings = load_settings(os.environ)
    except ConfigError as error:
        problems += error.problems
    if problems:
        _exit_bad_config(problems)
    return settings


def _exit_bad_config(problems: list[str]) -> NoReturn:
    err.print(f"[bold red]kingest: invalid configuration[/] ({len(problems)} problems):")
    for problem in problems:
        err.print(f"  - {problem}", markup=False, highlight=False)
    raise typer.Exit(EXIT_BAD_CONFIG)


@app.command()
def start(
    processes: Annotated[
        int,
        typer.Option(
            "--processes",
            envvar="KINGEST_PROCESSES",
            help="Pipeline processes to run under a supervisor, about one core each "
            "(1: run the pipeline in this process). See docs/scaling.md.",
        ),
    ] = 1,
    reload: Annotated[
        bool,
        typer.Option(
            "--reload",
            help="Development: restart the pipeline (drained, as on SIGTERM) whenever a .py "
            "file of kingest changes. Needs the `reload` extra.",
        ),
    ] = False,
    reload_dirs: Annotated[
        list[Path] | None,
        typer.Option(
            "--reload-dir",
            help="With --reload: watch this directory instead of kingest's code (repeatable).",
        ),
    ] = None,
) -> None:
    """Consume the configured topics into PostgreSQL until SIGTERM/SIGINT, then drain."""
    from kingest.runtime import supervisor

    problems = supervisor.start_problems(processes, os.environ)
    watched: list[Path] = []
    if reload:
        from kingest.runtime import reload as reloading

        watched = list(reload_dirs or reloading.default_paths())
        problems += reloading.reload_problems(watched)
    elif reload_dirs:
        problems.append("--reload-dir: only with --reload")
    settings = _settings_or_exit(problems)
    configure_logging(settings.log_level, settings.log_format, secrets=secret_values(settings))
    if processes > 1 or reload:
        port_problem = supervisor.http_port_problem(settings, processes)
        if port_problem:
            _exit_bad_config([port_problem])
        if reload:
            raise typer.Exit(reloading.run_reloading(settings, processes, os.environ, watched))
        raise typer.Exit(supervisor.run_supervisor(settings, processes, os.environ))
    index = supervisor.process_index(os.environ)
    if index is not None:
        supervisor.tag_logs_with_process_index(index)
    from kingest.config import load_tracing_config
    from kingest.runtime import run_service
    from kingest.telemetry import configure_tracing

    # Validated with the settings above. Spans still queued are exported before the
    # process exits, whatever its exit code (a second signal's immediate exit skips it).
    tracing = configure_tracing(load_tracing_config(os.environ))
    try:
        code = run_service(settings)
    finally:
        tracing.shutdown()
    raise typer.Exit(code)


@app.command()
def config(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    reference: Annotated[
        bool, typer.Option("--reference", help="Print every variable with its meaning (Markdown).")
    ] = False,
) -> None:
    """Validate the environment and print the effective configuration, secrets redacted."""
    if reference:
        typer.echo(reference_markdown(), nl=False)
        return
    settings = _settings_or_exit()
    values = effective_settings(settings)
    from kingest.config import describe_tracing, load_tracing_config

    values.update(describe_tracing(load_tracing_config(os.environ)))
    if as_json:
        typer.echo(json.dumps(values, indent=2))
        return
    table = Table("variable", "value", title="kingest effective configuration")
    for name, value in values.items():
        table.add_row(name, str(value))
    Console().print(table)


@app.command()
def migrate(
    database_url: Annotated[
        str,
        typer.Option(envvar="KINGEST_DATABASE_URL", help="PostgreSQL URL.", show_default=False),
    ],
    catalog_path: CatalogPath = None,
    schema: SchemaName = "kingest",
    topic_types: TopicTypesOption = "",
) -> None:
    """Apply the SQL migrations (idempotent; concurrent runs wait on an advisory lock),
    then, with a catalog of your own (--catalog, KINGEST_CATALOG), its tables as
    `kingest schema apply` does."""
    import psycopg

    from kingest.store import MigrationError, apply_migrations

    catalog = None
    if catalog_path is not None:  # checked before anything is changed
        catalog = cli_catalog(catalog_path, schema, topic_types, command="migrate")
    configure_logging("INFO", "console")
    try:
        applied = apply_migrations(database_url)
    except (psycopg.Error, MigrationError) as error:
        err.print(f"[bold red]kingest migrate failed[/] on {redact_conninfo(database_url)}:")
        err.print(f"  {safe_error_text(error, database_url)}", markup=False, highlight=False)
        raise typer.Exit(EXIT_FAILED) from None
    if applied:
        typer.echo(f"applied {len(applied)} migrations: {', '.join(applied)}")
    else:
        typer.echo("database is up to date")
    if catalog is not None:
        apply_catalog(database_url, catalog)


_MAX_SCHEMA_ID = 2**31 - 1
#: What `kingest produce` frames a share of the built-in stream with, unless told.
_DEFAULT_WIRE_FORMAT_SHARE = 0.1


@app.command()
def produce(
    count: Annotated[int, typer.Option(min=1, help="Events to produce.")] = 10_000,
    topic: Annotated[str, typer.Option(help="Topic to produce to.")] = "ml-events",
    bootstrap_servers: Annotated[
        str, typer.Option(envvar="KINGEST_KAFKA_BOOTSTRAP_SERVERS", help="Kafka brokers.")
    ] = "127.0.0.1:9092",
    rate: Annotated[
        float | None,
        typer.Option(min=0.001, help="Events per second (default: as fast as possible)."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic stream.")] = 0,
    partitions: Annotated[
        int, typer.Option(min=1, help="Partitions when the topic has to be created.")
    ] = 8,
    wire_format_share: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Share of values in Schema Registry wire format (built-in stream only; "
            f"default {_DEFAULT_WIRE_FORMAT_SHARE}).",
            show_default=False,
        ),
    ] = None,
    catalog: Annotated[
        Path | None,
        typer.Option(
            "--catalog",
            help="Produce messages of this catalog (a FileDescriptorSet: buf build -o) "
            "instead of the built-in AI/ML stream.",
            show_default=False,
        ),
    ] = None,
    message: Annotated[
        str | None,
        typer.Option(
            "--message",
            help="With --catalog: the message type to produce, package.Message "
            "(default: the catalog's envelope).",
            show_default=False,
        ),
    ] = None,
    schema_id: Annotated[
        int | None,
        typer.Option(
            "--schema-id",
            min=0,
            max=_MAX_SCHEMA_ID,
            help="With --catalog: frame every value in Schema Registry wire format with "
            "this schema id and the message's index path in its file (default: plain).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Produce a realistic synthetic stream of AI/ML pipeline events (all event kinds),
    or with --catalog plausible messages of one type of your catalog."""
    from kingest.dev import create_topic, produce_records
    from kingest.telemetry import produce_with_progress

    stream, what = _produce_stream(catalog, message, schema_id, seed, wire_format_share)
    create_topic(bootstrap_servers, topic, partitions)
    report = produce_with_progress(
        lambda progress: produce_records(
            bootstrap_servers, topic, stream, count=count, rate=rate, progress=progress
        ),
        total=count,
        description=f"producing to {topic}",
    )
    typer.echo(
        f"delivered {report.delivered} of {report.requested} {what} to {topic} "
        f"in {report.elapsed_s:.1f}s ({report.delivered / max(report.elapsed_s, 1e-9):,.0f}/s)"
    )
    if report.failed:
        err.print(f"[red]{report.failed} events failed:[/] {'; '.join(report.errors[:3])}")
        raise typer.Exit(EXIT_FAILED)


def _produce_stream(
    catalog: Path | None,
    message: str | None,
    schema_id: int | None,
    seed: int,
    wire_format_share: float | None,
) -> tuple[Iterable[ProducibleRecord], str]:
    """The records `kingest produce` sends and what they are, or exit 2 listing every
    problem with its options."""
    from kingest.dev import CatalogStream, CatalogSynthError, SyntheticStream

    if catalog is None:
        _refuse_without_catalog("kingest produce", {"--message": message, "--schema-id": schema_id})
        share = _DEFAULT_WIRE_FORMAT_SHARE if wire_format_share is None else wire_format_share
        return SyntheticStream(seed=seed, wire_format_share=share), "events"
    problems = []
    if wire_format_share is not None:
        problems.append("--wire-format-share: only without --catalog (frame with --schema-id)")
    stream = None
    if not catalog.is_file():
        problems.append(f"--catalog {catalog}: no such file")
    else:
        try:
            stream = CatalogStream(catalog, message, seed=seed, schema_id=schema_id)
        except CatalogSynthError as error:
            problems.append(f"--catalog {catalog}: {error}")
    if stream is None or problems:
        _exit_bad_input("kingest produce", problems)
    return stream, f"{stream.message_name} messages"


def _refuse_without_catalog(command: str, options: dict[str, object]) -> None:
    """Exit 2 when an option that needs ``--catalog`` was given without it."""
    problems = [f"{option}: only with --catalog" for option, v in options.items() if v is not None]
    if problems:
        _exit_bad_input(command, problems)


def _exit_bad_input(command: str, problems: list[str]) -> NoReturn:
    err.print(f"[bold red]{command}: bad input[/] ({len(problems)} problems):")
    for problem in problems:
        indented = problem.replace("\n", "\n    ")
        err.print(f"  - {indented}", markup=False, highlight=False)
    raise typer.Exit(EXIT_BAD_CONFIG)


_DEMO_COUNT = 200_000
_DEMO_CATALOG_COUNT = 20_000


@app.command()
def demo(
    count: Annotated[
        int | None,
        typer.Option(
            min=1,
            help=f"Events in the demo stream (default {_DEMO_COUNT:,}; with --catalog: per "
            f"topic, default {_DEMO_CATALOG_COUNT:,}, as a catalog's messages take longer "
            "to make).",
            show_default=False,
        ),
    ] = None,
    partitions: Annotated[int, typer.Option(min=1, help="Partitions of the demo topic.")] = 8,
    rate: Annotated[
        float | None,
        typer.Option(min=1, help="Produce at this rate (default: as fast as possible)."),
    ] = None,
    exit_when_done: Annotated[
        bool, typer.Option("--exit-when-done", help="Stop once everything is ingested.")
    ] = False,
    catalog: Annotated[
        Path | None,
        typer.Option(
            "--catalog",
            help="Run on this catalog (a FileDescriptorSet: buf build -o) instead of the "
            "built-in one: its tables are applied, its envelope produced to the demo topic.",
            show_default=False,
        ),
    ] = None,
    schema: Annotated[
        str | None,
        typer.Option(
            "--schema",
            help="With --catalog: PostgreSQL schema of its tables (default: demo).",
            show_default=False,
        ),
    ] = None,
    topic_types: Annotated[
        str | None,
        typer.Option(
            "--topic-types",
            help="With --catalog: topics that carry one message type each, also produced "
            "and ingested: topic:package.Message, comma-separated.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run the real pipeline on embedded local services (a Kafka-protocol broker and
    PostgreSQL, both from PyPI): migrate, produce a demo stream, ingest it, show progress.
    Ctrl-C stops everything cleanly."""
    from kingest.dev import run_demo

    demo_catalog = _demo_catalog(catalog, schema, topic_types)
    raise typer.Exit(
        run_demo(
            count=count or (_DEMO_COUNT if demo_catalog is None else _DEMO_CATALOG_COUNT),
            partitions=partitions,
            rate=rate,
            exit_when_done=exit_when_done,
            catalog=demo_catalog,
        )
    )


def _demo_catalog(
    catalog: Path | None, schema: str | None, topic_types: str | None
) -> DemoCatalog | None:
    """The demo's catalog (None: the built-in one), or exit 2 listing every problem."""
    from kingest.dev import DEMO_SCHEMA, DEMO_TOPIC, DemoCatalogError, load_demo_catalog

    if catalog is None:
        _refuse_without_catalog("kingest demo", {"--schema": schema, "--topic-types": topic_types})
        return None
    try:
        return load_demo_catalog(
            catalog,
            schema=DEMO_SCHEMA if schema is None else schema,
            topic_types=topic_types or "",
            envelope_topic=DEMO_TOPIC,
        )
    except DemoCatalogError as error:
        _exit_bad_input("kingest demo", error.problems)


@app.command()
def lag(
    group: Annotated[
        str, typer.Option(envvar="KINGEST_GROUP_ID", help="Consumer group.", show_default=False)
    ],
    topic: Annotated[
        str,
        typer.Option(envvar="KINGEST_TOPICS", help="Topics, comma-separated.", show_default=False),
    ],
    bootstrap_servers: Annotated[
        str, typer.Option(envvar="KINGEST_KAFKA_BOOTSTRAP_SERVERS", help="Kafka brokers.")
    ] = "127.0.0.1:9092",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds to wait for the broker's answers.")
    ] = 10.0,
) -> None:
    """Committed offset, end offset and lag of every partition, for a consumer group
    (KINGEST_RDKAFKA_* properties apply, e.g. SASL/TLS)."""
    from kingest.config import rdkafka_properties
    from kingest.telemetry import LagError, group_lag

    config = rdkafka_properties(os.environ)
    config["bootstrap.servers"] = bootstrap_servers
    config["client.id"] = "kingest-lag"
    topics = [t.strip() for t in topic.split(",") if t.strip()]
    try:
        partitions = group_lag(config, group, topics, timeout_s=timeout)
    except LagError as error:
        err.print(f"[bold red]kingest lag:[/] {error}", highlight=False)
        raise typer.Exit(EXIT_FAILED) from None
    total = sum(p.lag for p in partitions)
    if as_json:
        rows = [p.as_dict() for p in partitions]
        typer.echo(json.dumps({"group": group, "partitions": rows, "total_lag": total}, indent=2))
        return
    table = Table(
        "topic", "partition", "committed", "end offset", "lag", title=f"consumer group {group}"
    )
    for p in partitions:
        committed = "-" if p.committed is None else str(p.committed)
        table.add_row(p.topic, str(p.partition), committed, str(p.end_offset), str(p.lag))
    table.caption = f"total lag: {total} messages"
    Console().print(table)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(EXIT_FORCED)
