"""The exit codes of kingest's commands, in one place (scripts and orchestrators read them).

``kingest start`` also exits with its run's outcome (:class:`kingest.pipeline.RunOutcome`:
0 drained, 1 failed, 3 drain deadline passed).
"""

from __future__ import annotations

from typing import Final

__all__ = ["EXIT_BAD_CONFIG", "EXIT_FAILED", "EXIT_FORCED"]

#: The command failed (the reason is logged).
EXIT_FAILED: Final = 1
#: Bad input or configuration: every problem is listed, nothing was started.
EXIT_BAD_CONFIG: Final = 2
#: Stopped at once by a second SIGTERM/SIGINT (128 + SIGINT, as a shell reports Ctrl-C).
EXIT_FORCED: Final = 130
