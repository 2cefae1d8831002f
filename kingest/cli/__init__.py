"""``kingest``: the command line (Typer).

Contract: commands parse arguments and call into the packages below; no command holds
logic of its own beyond presenting its result. Exit codes: 0 done, 1 failed, 2 bad input
or configuration (every problem listed).

* :mod:`kingest.cli.main`: ``start``, ``migrate``, ``config``, ``check``, ``demo``,
  ``produce``, ``lag`` and the application itself;
* :mod:`kingest.cli.dlq`: ``kingest dlq list/inspect/replay``;
* :mod:`kingest.cli.bench`: ``kingest bench``.
"""

from __future__ import annotations

__all__ = []
