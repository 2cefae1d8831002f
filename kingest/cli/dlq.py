"""``kingest dlq``: list, inspect and replay dead letters (the logic: kingest.deadletters).

Bad input (an unknown dead letter, a time that does not parse, an unknown stage) is one
line on stderr and exit code 2; a database or broker failure is one line and exit 1;
never a traceback. ``list`` and ``inspect`` need only the database
(``--database-url`` or ``KINGEST_DATABASE_URL``); ``replay`` reads the whole ``KINGEST_*``
configuration, like ``kingest start``, since it talks to the same broker and database.

Like ``kingest.cli.commands``, the commands import their heavy dependencies (Kafka client,
Protobuf) when they run, so that ``kingest --help`` stays fast.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import attrs
import psycopg
import typer
from rich.console import Console
from rich.progress import Progress, TaskID
from rich.table import Table
from rich.text import Text

from kingest.cli.catalog_options import CatalogPath, SchemaName, TopicTypesOption, cli_catalog
from kingest.config import (
    ConfigError,
    Settings,
    dead_letter_topic,
    load_settings,
    redact_conninfo,
    safe_error_text,
)
from kingest.kafka import client_config
from kingest.runtime import EXIT_BAD_CONFIG, EXIT_FAILED

if TYPE_CHECKING:
    from kingest.deadletters import (
        DeadLetterFilter,
        ReplayPlan,
        ReplaySummary,
        StoredDeadLetter,
    )
    from kingest.store import WritePlan

__all__ = ["dlq_app"]

dlq_app = typer.Typer(
    name="dlq",
    help="List, inspect and replay dead letters (messages kingest could not store).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# --- shared options ----------------------------------------------------------------------

DatabaseUrl = Annotated[
    str,
    typer.Option(envvar="KINGEST_DATABASE_URL", help="PostgreSQL URL.", show_default=False),
]
Since = Annotated[
    str | None,
    typer.Option(help="Dead-lettered at or after: ISO 8601 or relative (30m, 2h, 7d ago)."),
]
Until = Annotated[
    str | None, typer.Option(help="Dead-lettered before: ISO 8601 or relative (2h ago).")
]
ErrorClasses = Annotated[
    list[str] | None,
    typer.Option("--error-class", help="Only this error class (repeat for several)."),
]
EventType = Annotated[
    str | None, typer.Option(help="Only this event type, e.g. inference_completed.")
]
Stage = Annotated[str | None, typer.Option(help="Only this stage: decode, validate or write.")]
Topic = Annotated[str | None, typer.Option(help="Only dead letters from this source topic.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


def _selection(
    *,
    since: str | None,
    until: str | None,
    error_classes: list[str] | None,
    event_type: str | None,
    stage: str | None,
    topic: str | None,
    limit: int | None,
) -> DeadLetterFilter:
    from kingest.deadletters import DeadLetterFilter, parse_time  # noqa: PLC0415

    now = datetime.now(UTC)
    return DeadLetterFilter(
        since=None if since is None else parse_time(since, now=now),
        until=None if until is None else parse_time(until, now=now),
        error_classes=tuple(error_classes or ()),
        event_type=event_type,
        stage=stage,
        topic=topic,
        limit=limit,
    )


def _fail(code: int, message: str) -> typer.Exit:
    typer.echo(f"kingest dlq: {message}", err=True)
    return typer.Exit(code)


@contextmanager
def _reported(database_url: str) -> Iterator[None]:
    """Turn the expected failures into one line and an exit code, never a traceback."""
    from confluent_kafka import KafkaException  # noqa: PLC0415

    from kingest.deadletters import DlqError, DlqInputError  # noqa: PLC0415
    from kingest.store import is_schema_error  # noqa: PLC0415

    try:
        yield
    except DlqInputError as error:
        raise _fail(EXIT_BAD_CONFIG, str(error)) from None
    except psycopg.Error as error:
        if is_schema_error(error):
            raise _fail(
                EXIT_FAILED,
                f"the database schema is missing or older than this kingest "
                f"({safe_error_text(error, database_url)}): run `kingest migrate`",
            ) from None
        raise _fail(
            EXIT_FAILED,
            f"PostgreSQL at {redact_conninfo(database_url)}: "
            f"{safe_error_text(error, database_url)}",
        ) from None
    except (DlqError, KafkaException) as error:
        raise _fail(EXIT_FAILED, str(error)) from None


def _connect(database_url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(database_url, autocommit=True)


# --- list ------------------------------------------------------------------------------


def _console() -> Console:
    """The terminal's width on a terminal; wide enough not to fold rows in a pipe."""
    return Console() if sys.stdout.isatty() else Console(width=200)


def _replayed(dead_letter: StoredDeadLetter) -> str:
    if dead_letter.last_replay_outcome is None:
        return "-"
    return f"{dead_letter.last_replay_outcome} (x{dead_letter.replay_count})"


def _print_table(dead_letters: list[StoredDeadLetter]) -> None:
    table = Table(
        "id",
        "source",
        "stage",
        "error class",
        "event type",
        "dead-lettered (UTC)",
        "attempts",
        "replayed",
        "publish error",
        title=f"{len(dead_letters)} dead letters, newest first",
    )
    for d in dead_letters:
        r = d.rejection
        table.add_row(
            Text(str(d.id)),
            Text(d.coordinates),
            Text(r.error_stage),
            Text(r.error_class),
            Text(r.event_type or "-"),
            Text(d.dead_lettered_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")),
            Text(str(d.attempts)),
            Text(_replayed(d)),
            Text((d.publish_error or "-").split(":", 1)[0]),
        )
    _console().print(table)


def _print_summary(groups: list[dict[str, Any]]) -> None:
    table = Table("stage", "error class", "count", "pending", "first", "last")
    for group in groups:
        table.add_row(
            *(Text(str(group[name])) for name in ("error_stage", "error_class", "count")),
            Text(str(group["pending"])),
            Text(group["first"] or "-"),
            Text(group["last"] or "-"),
        )
    total = sum(group["count"] for group in groups)
    table.title = f"{total} dead letters by stage and error class"
    _console().print(table)


@dlq_app.command("list")
def list_command(
    *,
    database_url: DatabaseUrl,
    since: Since = None,
    until: Until = None,
    error_class: ErrorClasses = None,
    event_type: EventType = None,
    stage: Stage = None,
    topic: Topic = None,
    limit: Annotated[int, typer.Option(help="Show at most this many (newest first).")] = 50,
    as_json: AsJson = False,
    summary: Annotated[
        bool, typer.Option("--summary", help="Counts by stage and error class instead.")
    ] = False,
) -> None:
    """List dead letters, newest first, with their reason and replay state."""
    from kingest.deadletters import list_dead_letters, summarize  # noqa: PLC0415

    with _reported(database_url):
        selection = _selection(
            since=since,
            until=until,
            error_classes=error_class,
            event_type=event_type,
            stage=stage,
            topic=topic,
            limit=limit,
        )
        with _connect(database_url) as conn:
            if summary:
                groups = summarize(conn, selection)
                if as_json:
                    typer.echo(json.dumps(groups, indent=2))
                else:
                    _print_summary(groups)
                return
            dead_letters = list_dead_letters(conn, selection)
    if as_json:
        typer.echo(json.dumps([d.as_json() for d in dead_letters], indent=2))
    else:
        _print_table(dead_letters)


# --- inspect ---------------------------------------------------------------------------


def _header_text(value: bytes | None) -> str:
    if value is None:
        return "(no value)"
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        return f"0x{value.hex()}"
    return text if text.isprintable() else f"0x{value.hex()}"


def _inspect_lines(dead_letter: StoredDeadLetter, max_bytes: int, plan: WritePlan) -> Iterator[str]:
    from kingest.deadletters import hexdump, judge_now  # noqa: PLC0415

    r = dead_letter.rejection
    fields = dead_letter.as_json()
    yield f"dead letter {dead_letter.id} from {dead_letter.coordinates}"
    for name, value in fields.items():
        if name not in ("id", "topic", "partition", "offset"):
            yield f"  {name:<20} {'-' if value is None else value}"
    yield f"headers ({len(r.headers)})"
    for key, value in r.headers:
        yield f"  {key}: {_header_text(value)}"
    for name, data in (("key", r.key), ("value", r.value)):
        if data is None:
            yield f"{name}: null"
        else:
            yield f"{name} ({len(data)} bytes)"
            yield from (f"  {line}" for line in hexdump(data, limit=max_bytes).splitlines())
    verdict = judge_now(dead_letter, plan)
    if verdict.event_json is not None:
        yield "value as an Event (JSON)"
        yield from (f"  {line}" for line in verdict.event_json.splitlines())
    else:
        yield "value as an Event: does not decode"
    yield "today's verdict (decode, validate, map; nothing written)"
    if verdict.rejection is not None:
        now = verdict.rejection
        yield f"  still rejected at {now.error_stage}: {now.error_class}: {now.error_message}"
    else:
        yield f"  passes: would be stored in {verdict.table} as event_id {verdict.event_id}"


@dlq_app.command()
def inspect(
    reference: Annotated[str, typer.Argument(help="Dead-letter id, or TOPIC:PARTITION:OFFSET.")],
    *,
    database_url: DatabaseUrl,
    as_json: AsJson = False,
    max_bytes: Annotated[
        int, typer.Option(help="Hex-dump at most this many bytes of key and value.")
    ] = 4096,
    catalog_path: CatalogPath = None,
    schema: SchemaName = "kingest",
    topic_types: TopicTypesOption = "",
) -> None:
    """Show one dead letter: every field, headers, key and value, today's verdict.

    The value is hex-dumped and, when it decodes as an Event, rendered as JSON; the
    verdict is what today's decode and validation make of it (nothing is written).
    """
    from kingest.deadletters import get_dead_letter, judge_now, parse_reference  # noqa: PLC0415
    from kingest.store import write_plan  # noqa: PLC0415

    plan = write_plan(cli_catalog(catalog_path, schema, topic_types, command="dlq inspect"))
    with _reported(database_url):
        ref = parse_reference(reference)
        with _connect(database_url) as conn:
            dead_letter = get_dead_letter(conn, ref)
    if as_json:
        data = dead_letter.as_json(with_content=True)
        verdict = judge_now(dead_letter, plan)
        data["event"] = None if verdict.event_json is None else json.loads(verdict.event_json)
        data["verdict_now"] = (
            {"outcome": "stored", "table": verdict.table, "event_id": verdict.event_id}
            if verdict.rejection is None
            else {
                "outcome": "rejected",
                "error_stage": verdict.rejection.error_stage,
                "error_class": verdict.rejection.error_class,
                "error_message": verdict.rejection.error_message,
            }
        )
        typer.echo(json.dumps(data, indent=2))
        return
    for line in _inspect_lines(dead_letter, max_bytes, plan):
        typer.echo(line)


# --- replay ----------------------------------------------------------------------------


def _settings() -> Settings:
    try:
        return load_settings(os.environ)
    except ConfigError as error:
        typer.echo(
            f"kingest dlq: invalid configuration ({len(error.problems)} problems):", err=True
        )
        for problem in error.problems:
            typer.echo(f"  - {problem}", err=True)
        raise typer.Exit(EXIT_BAD_CONFIG) from None


def _would_replay(
    dead_letter: StoredDeadLetter, destination: str, plan: WritePlan | None = None
) -> dict[str, Any]:
    """What a dry run says of one dead letter (for --to pipeline: today's verdict)."""
    from kingest.deadletters import judge_now  # noqa: PLC0415

    r = dead_letter.rejection
    item: dict[str, Any] = {
        "id": dead_letter.id,
        "coordinates": dead_letter.coordinates,
        "error_stage": r.error_stage,
        "error_class": r.error_class,
    }
    if destination == "pipeline":
        verdict = judge_now(dead_letter, plan)
        if verdict.rejection is None:
            item["verdict"] = {"outcome": "stored", "table": verdict.table}
            item["verdict"]["event_id"] = verdict.event_id
        else:
            item["verdict"] = {
                "outcome": "rejected",
                "error_stage": verdict.rejection.error_stage,
                "error_class": verdict.rejection.error_class,
            }
    return item


def _would_replay_line(item: dict[str, Any], destination: str) -> str:
    shown_id = "-" if item["id"] is None else item["id"]
    line = (
        f"would replay {shown_id} {item['coordinates']} "
        f"({item['error_stage']}/{item['error_class']}) to {destination}"
    )
    verdict = item.get("verdict")
    if verdict is None:
        return line
    if verdict["outcome"] == "stored":
        return f"{line}: would be stored in {verdict['table']} as {verdict['event_id']}"
    return f"{line}: would fail again ({verdict['error_stage']}/{verdict['error_class']})"


def _summary_lines(summary: ReplaySummary, plan: ReplayPlan) -> Iterator[str]:
    verb = "dry run: would replay" if plan.dry_run else "replayed"
    yield f"{verb} {summary.replayed} dead letters from {plan.source} to {plan.destination}"
    counts: dict[str, int] = {}
    if not plan.dry_run and plan.destination == "pipeline":
        counts["stored (new rows)"] = summary.stored
        counts["duplicates (already stored)"] = summary.duplicates
        counts["still failing"] = summary.still_failing
    elif not plan.dry_run:
        counts["produced"] = summary.produced
        counts["failed deliveries"] = summary.failed_deliveries
    optional = {
        "skipped (already replayed; --again replays them)": summary.skipped,
        "not dead letters (no kingest headers)": summary.not_dead_letters,
        "repeated on the topic": summary.repeated,
    }
    counts.update({name: value for name, value in optional.items() if value})
    yield from (f"  {name}: {value}" for name, value in counts.items())
    yield from (f"  error: {error}" for error in summary.errors)


class _LazyProgress:
    """A progress bar shown from the first replayed page on, so that an error found
    before anything is replayed (a missing topic) stays the only line on stderr."""

    def __init__(self, description: str, total: int | None) -> None:
        self._description = description
        self._total = total
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def advance(self, count: int) -> None:
        if self._progress is None:
            from kingest.telemetry import new_progress  # noqa: PLC0415

            self._progress = new_progress()
            self._progress.start()
            self._task = self._progress.add_task(self._description, total=self._total, rate="")
        assert self._task is not None
        self._progress.advance(self._task, count)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()


@dlq_app.command("replay")
def replay_command(
    *,
    source: Annotated[
        str, typer.Option("--from", help="Where the dead letters come from: table or topic.")
    ] = "table",
    destination: Annotated[
        str,
        typer.Option(
            "--to",
            help="source: produce back to the source topic, for the running pipeline; "
            "pipeline: decode, validate and write them here and now.",
        ),
    ] = "source",
    since: Since = None,
    until: Until = None,
    error_class: ErrorClasses = None,
    event_type: EventType = None,
    stage: Stage = None,
    topic: Topic = None,
    limit: Annotated[int | None, typer.Option(help="Replay at most this many.")] = None,
    rate: Annotated[
        float | None, typer.Option(help="At most this many dead letters per second.")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print what would be replayed; change nothing.")
    ] = False,
    again: Annotated[
        bool, typer.Option("--again", help="Also replay dead letters already replayed.")
    ] = False,
    batch_size: Annotated[int, typer.Option(help="Dead letters per page and write.")] = 500,
    dlq_topic: Annotated[
        list[str] | None,
        typer.Option(
            "--dlq-topic",
            help="Dead-letter topic to read with --from topic (repeatable; default: "
            "KINGEST_DEAD_LETTER_TOPIC for each of KINGEST_TOPICS, or for --topic).",
        ),
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Replay dead letters to their source topic or into the tables, idempotently.

    A replayed event is stored once however often it is replayed; dead letters already
    replayed successfully are skipped unless --again.
    """
    from kingest.deadletters import ReplayPlan, count_to_replay, replay  # noqa: PLC0415
    from kingest.store import write_plan  # noqa: PLC0415

    settings = _settings()
    tables = write_plan(settings.catalog)
    database_url = settings.database.url
    with _reported(database_url):
        selection = _selection(
            since=since,
            until=until,
            error_classes=error_class,
            event_type=event_type,
            stage=stage,
            topic=topic,
            limit=limit,
        )
        sources = (topic,) if topic else settings.kafka.topics
        topics = tuple(dlq_topic or ()) or tuple(
            dead_letter_topic(settings.dead_letters.topic, name) for name in sources
        )
        plan = ReplayPlan(
            source=source,
            destination=destination,
            selection=selection,
            again=again,
            dry_run=dry_run,
            rate=rate,
            batch_size=batch_size,
            dead_letter_topics=topics,
        )
        options: dict[str, Any] = {
            "database_url": database_url,
            "kafka_config": client_config(settings, "dlq-replay"),
            "consumer_group": settings.kafka.group_id,
            "write_plan": tables,
        }
        announced: list[dict[str, Any]] = []
        if dry_run:

            def announce(dead_letter: StoredDeadLetter) -> None:
                item = _would_replay(dead_letter, destination, tables)
                if as_json:
                    announced.append(item)
                else:
                    typer.echo(_would_replay_line(item, destination))

            summary = replay(plan, announce=announce, **options)
        else:
            bar = _LazyProgress(f"replaying to {destination}", count_to_replay(database_url, plan))
            try:
                summary = replay(plan, progress=bar.advance, **options)
            finally:
                bar.close()
    if as_json:
        data = {**attrs.asdict(summary), "dry_run": dry_run}
        if dry_run:
            data["would_replay"] = announced
        typer.echo(json.dumps(data, indent=2))
    else:
        for line in _summary_lines(summary, plan):
            typer.echo(line)
    if summary.failed_deliveries:
        raise typer.Exit(EXIT_FAILED)
