"""The HTTP endpoints of ``kingest start``: ``/metrics``, ``/healthz`` and ``/readyz``.

One stdlib ``ThreadingHTTPServer`` on a daemon thread, at ``KINGEST_HTTP_HOST`` and
``KINGEST_HTTP_PORT`` (port 0 picks a free port: :attr:`TelemetryServer.port` and the
log line say which). ``/metrics`` is the Prometheus text format; ``/healthz`` and
``/readyz`` answer 200 or 503 with a JSON body naming every check and what it saw.
The server also runs the lag sampler (:class:`kingest.telemetry.lag.LagSampler`) whose figures the
lag gauges report.
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST

from kingest.config import Settings
from kingest.kafka import client_config
from kingest.telemetry import HealthChecks, LagSampler, Report

if TYPE_CHECKING:
    from kingest.pipeline import Pipeline

__all__ = ["TelemetryServer"]

log = logging.getLogger(__name__)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        owner = self.server.owner
        try:
            if path == "/metrics":
                self._send(200, owner.pipeline.metrics.render(), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                self._report(owner.checks.liveness())
            elif path == "/readyz":
                self._report(owner.checks.readiness())
            else:
                self._send(404, b"not found: try /metrics, /healthz or /readyz\n", "text/plain")
        except Exception:
            log.exception("%s failed", path)
            self._send(500, b"internal error\n", "text/plain")

    def _report(self, report: Report) -> None:
        body = json.dumps(report.as_json(), indent=2).encode() + b"\n"
        self._send(200 if report.ok else 503, body, "application/json")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s - " + format, self.address_string(), *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: TelemetryServer


class TelemetryServer:
    """Serves a pipeline's metrics and health, and samples its consumer lag."""

    def __init__(
        self,
        pipeline: Pipeline,
        settings: Settings,
        *,
        checks: HealthChecks | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.checks = checks or HealthChecks(pipeline, settings)
        self._settings = settings
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._sampler = LagSampler(
            client_config(settings, "lag"),
            settings.kafka.group_id,
            pipeline.assigned,
            interval_s=settings.http.lag_interval_s,
        )

    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        assert self._server is not None, "not started"
        host = str(self._server.server_address[0])
        return f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{self.port}"  # noqa: S104

    def start(self) -> TelemetryServer:
        """Bind (raises OSError when the address is taken), then serve on a daemon thread."""
        http = self._settings.http
        server = _Server((http.host, http.port), _Handler)
        server.owner = self
        self._server = server
        self.pipeline.metrics.use_readiness(self.checks.ready)
        self.pipeline.metrics.use_end_offsets(self._sampler)
        self._sampler.start()
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="kingest-http"
        )
        self._thread.daemon = True
        self._thread.start()
        log.info(
            "serving /metrics, /healthz and /readyz on http://%s:%d",
            http.host,
            self.port,
            extra={"http_port": self.port},
        )
        return self

    def stop(self) -> None:
        self._sampler.stop()
        self.pipeline.metrics.use_end_offsets(None)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> TelemetryServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
