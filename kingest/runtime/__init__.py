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

from kingest.runtime.exit_codes import EXIT_BAD_CONFIG, EXIT_FAILED, EXIT_FORCED
from kingest.runtime.service import run_service

__all__ = ["EXIT_BAD_CONFIG", "EXIT_FAILED", "EXIT_FORCED", "run_service"]
