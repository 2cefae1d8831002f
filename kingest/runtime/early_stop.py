"""A stop requested in the first moments of ``kingest start``, before the service's own
signal handlers are in place, is recorded instead of killing the process.

Importing the command line and configuring logging and tracing take most of a second;
SIGTERM's default action there would end the process by the signal (a crash, to an
orchestrator) instead of exit 0. :func:`install` runs first thing in :mod:`kingest.cli.commands`
when the process is ``kingest start``; the service (:mod:`kingest.runtime.service`) or the
supervisor takes the recorded signals over with :func:`take` when it installs its
own handlers. Standard library only, and nothing heavy: it costs nothing before it is in
place.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from kingest.runtime.exit_codes import EXIT_FORCED

__all__ = ["install", "is_start_command", "take"]

#: The exit code of a second signal, as everywhere in ``kingest start``.

_received: list[int] = []


def is_start_command(argv: Sequence[str]) -> bool:
    """``argv`` is that of ``kingest start`` (the console script or ``python -m kingest``)."""
    if argv[1:2] != ["start"] or not argv:
        return False
    program = os.path.normpath(argv[0])
    name = os.path.basename(program)
    if name == "__main__.py":
        return os.path.basename(os.path.dirname(program)) == "kingest"
    return os.path.splitext(name)[0] == "kingest"


def install(argv: Sequence[str] | None = None) -> bool:
    """In ``kingest start``'s main thread, record SIGTERM/SIGINT from now on; whether it did.

    A second signal exits at once with :data:`EXIT_FORCED`, as it does later.
    """
    if not is_start_command(sys.argv if argv is None else argv):
        return False
    if threading.current_thread() is not threading.main_thread():
        return False
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _record)
    return True


def take() -> list[int]:
    """The signals recorded so far, oldest first, forgotten here: the caller has just
    replaced these handlers with its own and acts on them."""
    taken = list(_received)
    _received.clear()
    return taken


def _record(signum: int, _frame: FrameType | None) -> None:
    _received.append(signum)
    if len(_received) > 1:
        name = signal.Signals(signum).name
        os.write(2, f"kingest: {name} received again during start-up: exiting at once\n".encode())
        os._exit(EXIT_FORCED)
