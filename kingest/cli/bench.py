"""``kingest bench``: the command around :mod:`kingest.dev.benchmark` (progress, table, JSON)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from kingest.dev import (
    THREAD_CPU_FIGURE,
    BenchError,
    Options,
    parse_sweep,
    run_bench,
    target_checks,
)
from kingest.runtime import EXIT_FAILED

__all__ = ["bench", "render"]


def _settings(items: list[str]) -> dict[str, str]:
    settings = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.startswith("KINGEST_"):
            raise typer.BadParameter(f"{item!r}: expected KINGEST_NAME=value", param_hint="--set")
        settings[name] = value
    return settings


def _range(summary: dict[str, float], digits: int = 0) -> str:
    return (
        f"{summary['median']:,.{digits}f} "
        f"({summary['min']:,.{digits}f}-{summary['max']:,.{digits}f})"
    )


def render(results: dict[str, Any]) -> Table:
    """The table of every case: medians with (min-max) over the runs."""
    table = Table(
        "case",
        "runs",
        "events/s",
        "x baseline",
        "CPU us/event",
        "peak RSS MiB",
        "PostgreSQL us/event",
        "broker us/event",
        title="kingest bench",
    )
    for name, case in results["cases"].items():
        summary = case["summary"]
        ratio = case.get("ratio_to_baseline")
        table.add_row(
            name,
            str(len(case["runs"])),
            _range(summary["events_per_s"]),
            "-" if ratio is None else f"{ratio:.2f}",
            _range(summary["cpu_us_per_event"], 1),
            _range(summary["peak_rss_mib"]),
            f"{summary['postgres_cpu_us_per_event']['median']:.1f}",
            f"{summary['broker_cpu_us_per_event']['median']:.1f}",
        )
    latency = results.get("latency")
    lines = []
    if latency and "skipped" not in latency:
        lines.append(f"latency at {latency['rate']:,} events/s, Kafka timestamp to row committed")
        for number, run in enumerate(latency["runs"], 1):
            lines.append(
                f"  run {number} ({run['events']:,} events): p50 {run['p50_ms']:.0f} ms, "
                f"p95 {run['p95_ms']:.0f} ms, p99 {run['p99_ms']:.0f} ms, "
                f"max {run['max_ms']:.0f} ms"
            )
    elif latency:
        lines.append(f"latency: skipped ({latency['skipped']})")
    for name, case in results["cases"].items():
        by_role = [
            f"{key.removeprefix(THREAD_CPU_FIGURE)} {figure['median']:.1f}"
            for key, figure in case["summary"].items()
            if key.startswith(THREAD_CPU_FIGURE)
        ]
        if by_role:
            lines.append(f"{name}: kingest CPU us/event by thread: {', '.join(by_role)}")
    for check in target_checks(results):
        target = check.target
        values = ", ".join(f"{value:,.2f}" for value in check.values)
        lines.append(
            f"target {target.name}: {values} {target.figure} (bound {target.compare} "
            f"{target.limit:g}): {'met' if check.met else 'NOT met'}"
        )
    if lines:
        table.caption = "\n".join(lines)
        table.caption_justify = "left"
    return table


def bench(
    *,
    events: Annotated[int, typer.Option(min=1, help="Events per run.")] = 1_000_000,
    partitions: Annotated[int, typer.Option(min=1, help="Partitions of the topic.")] = 8,
    runs: Annotated[int, typer.Option(min=1, help="Runs per case (median, min, max).")] = 3,
    baseline: Annotated[
        bool, typer.Option(help="Also run the plain consume-insert-commit loop.")
    ] = True,
    latency: Annotated[bool, typer.Option(help="Also run the fixed-rate latency case.")] = True,
    latency_rate: Annotated[int, typer.Option(min=1, help="Events/s of the latency case.")] = 5000,
    latency_seconds: Annotated[
        float, typer.Option(min=0.1, help="Duration of the latency case.")
    ] = 30.0,
    processes: Annotated[int, typer.Option(min=1, help="kingest start --processes.")] = 1,
    setting: Annotated[
        list[str] | None,
        typer.Option("--set", help="KINGEST_NAME=value for every kingest run (repeatable)."),
    ] = None,
    sweep: Annotated[
        list[str] | None,
        typer.Option(help="partitions=4,8,16 or KINGEST_NAME=v1,v2: one case per value."),
    ] = None,
    bootstrap_servers: Annotated[
        str | None, typer.Option(help="Use this broker instead of starting one.")
    ] = None,
    database_url: Annotated[
        str | None,
        typer.Option(help="Use this PostgreSQL server (the bench creates databases on it)."),
    ] = None,
    json_path: Annotated[Path, typer.Option("--json", help="Where to write every figure.")] = Path(
        "bench-results.json"
    ),
) -> None:
    """Measure kingest end to end: throughput, CPU and memory per case, baseline, latency."""
    try:
        sweeps = [parse_sweep(item) for item in sweep or []]
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--sweep") from None
    options = Options(
        events=events,
        partitions=partitions,
        runs=runs,
        baseline=baseline,
        latency=latency,
        latency_rate=latency_rate,
        latency_seconds=latency_seconds,
        processes=processes,
        settings=_settings(setting or []),
        sweeps=sweeps,
        bootstrap_servers=bootstrap_servers,
        database_url=database_url,
    )
    console = Console(stderr=True)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        tasks: dict[str, Any] = {}

        def progress(label: str, done: int, total: int) -> None:
            if label not in tasks:
                tasks[label] = bar.add_task(label, total=total)
            bar.update(tasks[label], completed=done, total=total)

        try:
            results = run_bench(options, progress)
        except BenchError as error:
            console.print(f"[bold red]kingest bench failed:[/] {error}")
            raise typer.Exit(EXIT_FAILED) from None
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    # Wide enough for every column whatever the terminal (or a pipe) says.
    Console(width=max(Console().width, 132)).print(render(results))
    machine = results["machine"]
    typer.echo(
        f"{machine['cpus']} CPUs ({machine['cpu']}), {machine['memory_gib']} GiB, Python "
        f"{machine['python']}, librdkafka {machine['librdkafka']}, PostgreSQL "
        f"{machine['postgresql']}; figures in {json_path}"
    )
