"""MkDocs hooks: the reference pages are generated from the code when the site is built.

* ``reference/cli.md`` does not exist in the repository: :func:`on_files` adds it, built
  from the Typer application (every command, its usage, arguments and options with their
  defaults and environment variables), so it cannot drift from ``kingest --help``.
* The tables between ``<!-- config-reference:start -->`` and ``<!-- ...:end -->`` (in
  ``configuration.md``) and between the ``metrics-reference`` markers (in ``metrics.md``)
  are replaced by :func:`kingest.config.reference_markdown` and the metric catalog's
  table. The committed copies are what GitHub shows; unit tests fail when they are stale.
* A link that leaves ``docs/`` (``../ops/README.md``) works on GitHub but not in the
  site: it must name a file of the repository (else the build warns, and ``--strict``
  fails), and the site shows its text without the link.
* The Mermaid fence of ``pymdownx.superfences`` is configured here rather than in
  ``mkdocs.yml``, which then stays plain YAML (no ``!!python/name`` tag).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import typer
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page
from pymdownx.superfences import fence_code_format

from kingest.cli import app
from kingest.config import reference_markdown as config_reference
from kingest.telemetry.metrics import metrics_reference_markdown as metrics_reference

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
CLI_PAGE = "reference/cli.md"

log = logging.getLogger("mkdocs.hooks.kingest")

#: Marked regions of the pages, and what fills them at build time.
MARKED: dict[str, Callable[[], str]] = {
    "config-reference": config_reference,
    "metrics-reference": metrics_reference,
}

_OUTSIDE_LINK = re.compile(r"\[(?P<text>[^\]]*)\]\((?P<target>\.\./[^)#\s]*)(?P<anchor>#[^)]*)?\)")


def on_config(config: MkDocsConfig) -> MkDocsConfig:
    """Render ```` ```mermaid ```` blocks as diagrams (mkdocs-material's Mermaid support)."""
    if "pymdownx.superfences" not in config.markdown_extensions:
        config.markdown_extensions.append("pymdownx.superfences")
    options = config.mdx_configs.setdefault("pymdownx.superfences", {})
    options["custom_fences"] = [
        {"name": "mermaid", "class": "mermaid", "format": fence_code_format}
    ]
    return config


def on_files(files: Files, config: MkDocsConfig) -> Files:
    files.append(File.generated(config, CLI_PAGE, content=cli_markdown()))
    return files


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    for name, render in MARKED.items():
        markdown = _fill(markdown, name, render())
    return _OUTSIDE_LINK.sub(lambda match: _outside_link(match, page), markdown)


def _fill(markdown: str, name: str, table: str) -> str:
    start, end = f"<!-- {name}:start -->\n", f"<!-- {name}:end -->"
    if start not in markdown:
        return markdown
    head, _, rest = markdown.partition(start)
    _, found, tail = rest.partition(end)
    if not found:
        log.warning("%s has no end marker", name)
        return markdown
    return head + start + table + end + tail


def _outside_link(match: re.Match[str], page: Page) -> str:
    source = Path(page.file.abs_src_path or DOCS / page.file.src_uri)
    target = (source.parent / match["target"]).resolve()
    if not target.is_relative_to(ROOT) or not target.exists():
        log.warning(
            "%s links to %s, which is not a file of the repository",
            page.file.src_uri,
            match["target"],
        )
    return match["text"]


# ------------------------------------------------------------------------- the CLI page


def cli_markdown() -> str:
    """The command-line reference, from the Typer application's click commands."""
    root = typer.main.get_command(app)
    context = typer.Context(root, info_name="kingest")
    lines = [
        "# Command line",
        "",
        "Generated from the command-line application when this site is built;",
        "`kingest COMMAND --help` prints the same. Every option that names an environment",
        "variable also reads it; the `KINGEST_*` settings themselves are in",
        "[Configuration](../configuration.md).",
        "",
    ]
    for path, command, ctx in _commands(root, context):
        if _is_group(command):
            continue
        lines += _command_section(path, command, ctx)
    return "\n".join(lines) + "\n"


def _is_group(command: Any) -> bool:
    return hasattr(command, "list_commands")


def _commands(
    command: Any, ctx: typer.Context, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], Any, typer.Context]]:
    yield path, command, ctx
    if _is_group(command):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is None or sub.hidden:
                continue
            sub_ctx = typer.Context(sub, info_name=name, parent=ctx)
            yield from _commands(sub, sub_ctx, (*path, name))


def _command_section(path: tuple[str, ...], command: Any, ctx: typer.Context) -> list[str]:
    name = " ".join(("kingest", *path))
    usage = " ".join((ctx.command_path, *command.collect_usage_pieces(ctx)))
    lines = [f"## `{name}`", "", _text(command.help or command.short_help or ""), ""]
    lines += ["```text", usage, "```", ""]
    rows = [_param_row(param, ctx) for param in command.get_params(ctx)]
    rows = [row for row in rows if row is not None]
    if rows:
        lines += [
            "| argument or option | default | environment | meaning |",
            "| --- | --- | --- | --- |",
        ]
        lines += rows
        lines.append("")
    return lines


def _param_row(param: Any, ctx: typer.Context) -> str | None:
    if getattr(param, "hidden", False) or param.name == "help":
        return None
    if param.param_type_name == "option":
        names = ", ".join(f"`{opt}`" for opt in (*param.opts, *param.secondary_opts))
    else:
        names = f"`{(param.metavar or param.name or '').upper()}`"
    default = _default(param, ctx)
    envvar = param.envvar if isinstance(param.envvar, str) else ", ".join(param.envvar or ())
    environment = f"`{envvar}`" if envvar else ""
    meaning = _cell(getattr(param, "help", None) or "")
    if param.required:
        meaning = f"Required. {meaning}".strip()
    return f"| {names} | {default} | {environment} | {meaning} |"


def _default(param: Any, ctx: typer.Context) -> str:
    value: Any = param.get_default(ctx, call=False)
    if value is None or value in ((), []) or callable(value):
        return ""
    if getattr(param, "is_flag", False) and value is False:
        return ""
    return f"`{value}`"


def _text(text: str) -> str:
    """A command's help text as Markdown paragraphs (click's ``\\b`` marks are dropped)."""
    return "\n".join(line for line in text.strip().splitlines() if line.strip() != "\b")


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")
