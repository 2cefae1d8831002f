"""What every local service of :mod:`kingest.dev` shares: errors, lifecycle, cleanup.

The broker, PostgreSQL and mock cluster classes (:mod:`kingest.dev.tansu`,
:mod:`kingest.dev.postgres`, :mod:`kingest.dev.mock_cluster`) are all driven the same
way, and this module holds that common ground:

* :class:`ServiceError`, the one exception a service raises when it cannot be started,
  reached or used; its message says why (with the end of the service's log if any);
* :class:`LocalService`, the base that makes ``with service:`` start it and release it
  on the way out, even on error;
* :data:`exit_guard`, an ``atexit`` hook that stops whatever is still running when the
  interpreter exits, so an interrupted test session leaves no broker or postmaster
  behind: owners register a stop callable when their process starts and unregister it
  once it has stopped;
* the small tools of starting a subprocess: polling for readiness (:func:`wait_until`),
  probing a TCP port (:func:`free_port`, :func:`accepts_connections`), quoting the end
  of a log in an error (:func:`log_tail`), stopping with escalation to SIGKILL
  (:func:`stop_process`), and importing an optional extra with a useful message
  (:func:`optional_module`): the service packages are optional extras
  (``kingest[embedded]``, ``kingest[test]``), so they are imported when needed.

The service classes are meant to be driven from one thread.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import os
import re
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Self

__all__ = [
    "LOG_TAIL_CHARS",
    "ExitGuard",
    "LocalService",
    "ServiceError",
    "accepts_connections",
    "clean_env",
    "exit_guard",
    "free_port",
    "log_tail",
    "optional_module",
    "stop_process",
    "wait_until",
]

#: How much of a service's log an error message quotes.
LOG_TAIL_CHARS = 2000
_POLL_INTERVAL_S = 0.02
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class ServiceError(RuntimeError):
    """A local service could not be started, reached or used; the message says why."""


def optional_module(name: str, extra: str) -> ModuleType:
    """Import a module of an optional extra, or say which extra to install."""
    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise ServiceError(
            f"{name.split('.', maxsplit=1)[0]} is not installed; install kingest[{extra}]"
        ) from error


class ExitGuard:
    """Stops what is still running when the interpreter exits.

    Owners register a stop callable when their process starts and unregister it once it
    has stopped; the ``atexit`` hook calls whatever is left, newest first, and never lets
    one failure prevent the other stops.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stops: dict[int, Callable[[], None]] = {}
        self._hooked = False

    def register(self, owner: object, stop: Callable[[], None]) -> None:
        with self._lock:
            if not self._hooked:
                atexit.register(self.stop_all)
                self._hooked = True
            self._stops[id(owner)] = stop

    def unregister(self, owner: object) -> None:
        with self._lock:
            self._stops.pop(id(owner), None)

    def stop_all(self) -> None:
        with self._lock:
            stops = list(self._stops.values())
            self._stops.clear()
        for stop in reversed(stops):
            with contextlib.suppress(Exception):
                stop()


#: The process's one guard: every service registers with it while its process runs.
exit_guard = ExitGuard()


def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    """Poll ``condition`` until it holds (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_INTERVAL_S)


def free_port(host: str) -> int:
    """A TCP port nobody listens on right now (the caller retries if it gets taken)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def accepts_connections(host: str, port: int) -> bool:
    """Whether something accepts a TCP connection on ``host:port`` within half a second."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def log_tail(path: Path | None) -> str:
    """The end of a service log, without colour codes, for error messages."""
    if path is None:
        return "<no log>"
    try:
        text = path.read_text(errors="replace")
    except OSError as error:
        return f"<log {path} unreadable: {error}>"
    text = _ANSI_ESCAPE.sub("", text).strip()
    if not text:
        return "<empty log>"
    return text[-LOG_TAIL_CHARS:]


def clean_env() -> dict[str, str]:
    """This environment without KINGEST_* variables: each kingest started here sets its own."""
    return {k: v for k, v in os.environ.items() if not k.startswith("KINGEST_")}


def stop_process(process: subprocess.Popen[bytes], first_signal: int, timeout: float) -> None:
    """Send ``first_signal`` and wait; escalate to SIGKILL after ``timeout`` seconds."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(first_signal)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
    process.wait()


class LocalService:
    """``with service:`` starts it and releases it on the way out, even on error."""

    #: The service's process once started (a subclass sets it in ``start``).
    _process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The service's process id while it runs, else None."""
        if self._process is None or self._process.poll() is not None:
            return None
        return self._process.pid

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def _release(self) -> None:
        """What leaving a ``with`` block does: stop (subclasses may also clean up)."""
        self.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._release()
