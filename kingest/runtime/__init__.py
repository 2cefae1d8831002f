"""Running kingest: the service, its processes, its HTTP endpoints and reloads.

Contract: :func:`run_service` checks Kafka and PostgreSQL, starts the pipeline and the
``/metrics``, ``/healthz`` and ``/readyz`` server, and drains on SIGTERM; the process
supervisor (``--processes N``) runs and restarts N such services; a reload re-reads the
settings and restarts on change. Nothing here handles a message: that is the pipeline's.

* :mod:`kingest.runtime.service`: start-up checks and the service's life cycle;
* :mod:`kingest.runtime.supervisor`: child processes and their restarts;
* :mod:`kingest.runtime.reload`: configuration reloads;
* :mod:`kingest.runtime.http`: the metrics and health endpoints;
* :mod:`kingest.runtime.early_stop`: the SIGTERM handler installed before anything else.
"""

from __future__ import annotations

from kingest.runtime.service import run_service

__all__ = ["run_service"]
