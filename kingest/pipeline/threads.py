"""Where the process's CPU went, by the role of each thread: logged when kingest stops.

Per event, decoding, validating and mapping run in the partition actors, COPY in the
writers, the client's ``consume`` and the hand-offs in the consumer loop, and fetching
in librdkafka's own threads. A profile samples; these are whole CPU seconds, from
:func:`actors.cpu_seconds_by_thread` (actor threads that ended included) and
:func:`time.process_time` for the rest, so ``kingest bench`` can report each role's CPU
per event beside the total.
"""

from __future__ import annotations

import time
from typing import Final

from actors import cpu_seconds_by_thread

__all__ = [
    "COMMITTER_THREAD",
    "PARTITION_THREAD_PREFIX",
    "ROLES",
    "WRITER_THREAD_PREFIX",
    "cpu_seconds_by_role",
    "describe_cpu",
    "thread_role",
]

#: Thread names of the actors (each partition's and writer's name goes on with its key).
PARTITION_THREAD_PREFIX: Final = "partition-"
WRITER_THREAD_PREFIX: Final = "writer-"
COMMITTER_THREAD: Final = "offset-committer"

#: The roles, in the order they are reported. ``loop``: the thread running the consumer
#: loop; ``other``: every other Python thread (HTTP, lag, connection pool...);
#: ``native``: the rest of the process's CPU, librdkafka's threads above all (and any
#: helper thread that ended before the count, which only actor threads survive).
ROLES: Final = ("partitions", "writers", "loop", "committer", "other", "native")


def thread_role(thread_name: str, loop_thread: str) -> str:
    """Which of :data:`ROLES` a thread of this name has (never ``native``)."""
    if thread_name.startswith(PARTITION_THREAD_PREFIX):
        return "partitions"
    if thread_name.startswith(WRITER_THREAD_PREFIX):
        return "writers"
    if thread_name == COMMITTER_THREAD:
        return "committer"
    if thread_name == loop_thread:
        return "loop"
    return "other"


def cpu_seconds_by_role(loop_thread: str) -> dict[str, float]:
    """CPU seconds of this process so far by :data:`ROLES`; ``loop_thread`` is the name
    of the thread that runs the consumer loop."""
    roles = dict.fromkeys(ROLES, 0.0)
    by_thread = cpu_seconds_by_thread()
    for name, seconds in by_thread.items():
        roles[thread_role(name, loop_thread)] += seconds
    roles["native"] = max(0.0, time.process_time() - sum(by_thread.values()))
    return roles


def describe_cpu(roles: dict[str, float]) -> str:
    """``partitions 5.59s, writers 3.05s, ...``: the log line's form, which ``kingest
    bench`` reads back."""
    return ", ".join(f"{role} {roles[role]:.2f}s" for role in ROLES)
