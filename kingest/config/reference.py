"""The configuration reference: one Markdown table generated from the settings.

``kingest config --reference`` prints it and docs/configuration.md embeds it (a test
keeps the two equal), so the documentation of each variable (its default and meaning) is the
``doc`` of its field in :mod:`kingest.config.settings` and cannot drift from the code.
A default of ``None`` is shown as "by profile": its value follows ``KINGEST_ENV``, unless
the field says how to show it (``shown_default``: "built-in" for ``KINGEST_CATALOG``).
"""

from __future__ import annotations

import attrs

from kingest.config.settings import settings_fields


def reference_markdown() -> str:
    """The configuration reference as a Markdown table (embedded in docs/configuration.md)."""
    lines = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for _, field in settings_fields():
        default = field.default
        if field.metadata.get("shown_default") is not None:
            shown = field.metadata["shown_default"]
        elif default is attrs.NOTHING:
            shown = "required"
        elif isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            shown = ""
        elif default is None:
            shown = "by profile"
        elif isinstance(default, bool):
            shown = f"`{str(default).lower()}`"
        else:
            shown = f"`{default}`"
        lines.append(f"| `{field.metadata['env']}` | {shown} | {field.metadata['doc']} |")
    return "\n".join(lines) + "\n"
