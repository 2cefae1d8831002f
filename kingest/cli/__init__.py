"""``kingest``: the command line (Typer).

Contract: commands parse arguments and call into the packages below; no command holds
logic of its own beyond presenting its result. Exit codes: 0 done, 1 failed, 2 bad input
or configuration (every problem listed).

* :mod:`kingest.cli.commands`: the application and ``start``, ``migrate``, ``config``,
  ``produce``, ``demo`` and ``lag``;
* :mod:`kingest.cli.dlq`: ``kingest dlq list/inspect/replay``;
* :mod:`kingest.cli.schema`: ``kingest schema plan/apply``;
* :mod:`kingest.cli.bench`: ``kingest bench``.
"""

from __future__ import annotations

from kingest.cli.commands import app, main

__all__ = ["app", "main"]
