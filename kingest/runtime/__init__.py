"""Running kingest: the service, its processes, its HTTP endpoints and reloads.

Contract: :func:`run_service` checks Kafka and PostgreSQL, starts the pipeline and the
``/metrics``, ``/healthz`` and ``/readyz`` server, and drains on SIGTERM; the process
supervisor (``--processes N``) runs and restarts N such services; a reload re-reads the
settings and restarts on change. Nothing here handles a message: that is the pipeline's.

* :mod:`kingest.runtime.service`: start-up checks and the service's life cycle;
* :mod:`kingest.runtime.supervisor`: child processes and their restarts;
* :mod:`kingest.runtime.reload`: configuration reloads;
* :mod:`kingest.runtime.http`: the metrics and health endpoints;
* :mod:`kingest.runtime.early_stop`: the SIGTERM handler installed before anything else;
* :mod:`kingest.runtime.exit_codes`: the exit codes of kingest's commands.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kingest.runtime.exit_codes import EXIT_BAD_CONFIG, EXIT_FAILED, EXIT_FORCED

if TYPE_CHECKING:
    from kingest.runtime.service import run_service


def __getattr__(name: str) -> Any:
    """The service, imported on first use: this front stays light because ``kingest
    start`` imports :mod:`kingest.runtime.early_stop` through it before anything heavy,
    so that a SIGTERM in its first second is a stop request (the service imports the
    whole pipeline, confluent-kafka and psycopg)."""
    if name == "run_service":
        from kingest.runtime.service import run_service  # noqa: PLC0415

        return run_service
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["EXIT_BAD_CONFIG", "EXIT_FAILED", "EXIT_FORCED", "run_service"]
