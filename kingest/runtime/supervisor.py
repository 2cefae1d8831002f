"""``kingest start --processes N``: N ``kingest start`` children under one supervisor.

One Python process runs on about one core (the GIL), so a host with several cores runs
several pipelines. The supervisor is the parent of N ordinary ``kingest start``
processes (``sys.executable -m kingest start``) that join the same consumer group, so
Kafka spreads the partitions over them exactly as over processes started by hand. It
runs no pipeline itself and only uses :mod:`subprocess` and :mod:`signal`.

Child ``i`` (0..N-1) gets the parent's environment plus:

* ``KINGEST_PROCESSES=1`` and ``KINGEST_PROCESS_INDEX=i`` (its log lines carry
  ``process_index``);
* ``KINGEST_KAFKA_CLIENT_ID=<client id>-i``, so the brokers tell the members apart;
* ``KINGEST_HTTP_PORT=<port>+i`` (children cannot share a port; port 0 stays 0, each
  child then logs the free port it got);
* ``kingest.process.index=i`` appended to ``OTEL_RESOURCE_ATTRIBUTES`` (traces and the
  metrics' ``target_info`` say which child), unless that key is set already.

Restarts: a child that exits while the supervisor is not stopping (a crash, ``kill
-9``, exit 1) is started again after a backoff of 1 s doubling to 30 s, reset once the
child has run 60 s; one log line per restart names the child, its pid and its exit code
or signal. More than 5 restarts of one child within 5 minutes is a crash loop: the
supervisor stops the others and exits 1. A child that exits 2 (invalid configuration)
is not restarted: the supervisor stops the others and exits 2.

Stopping: the children run in their own sessions, so a terminal's Ctrl-C reaches the
supervisor only; on SIGTERM/SIGINT it sends SIGTERM to every child, which drains and
commits as a single ``kingest start`` does, and waits ``KINGEST_DRAIN_TIMEOUT_S`` +
:data:`STOP_GRACE_S` before it kills what is left. Exit code: 0 when every child exited
0; 1 when any failed (exit 1, killed, or still running at the deadline); otherwise 3
when any abandoned in-flight work at its drain deadline. A second signal is passed on
(each child abandons its in-flight work and exits at once, as on a second signal of its
own) and the supervisor exits 130. On Linux a child also receives SIGTERM, and drains,
when the supervisor dies without stopping it (``kill -9`` of the supervisor).

Reloading (``kingest start --reload``, :mod:`kingest.runtime.reload`): given a source of
changed files, the supervisor stops every child as above when files change and starts
them all again at once. A child that exits on its own is then not restarted until the
next change (a syntax error waits for its fix instead of crash-looping).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any, Final

from kingest.config import COMMAND_VARIABLES, Settings
from kingest.runtime import early_stop
from kingest.runtime.exit_codes import EXIT_BAD_CONFIG, EXIT_FAILED, EXIT_FORCED

__all__ = [
    "MAX_PROCESSES",
    "PROCESSES_VARIABLE",
    "PROCESS_INDEX_VARIABLE",
    "STOP_GRACE_S",
    "SUPERVISOR_VARIABLES",
    "ChangeSource",
    "ProcessSupervisor",
    "RestartHistory",
    "RestartPolicy",
    "aggregate_exit_codes",
    "child_environment",
    "child_http_port",
    "describe_exit",
    "http_port_problem",
    "process_index",
    "run_supervisor",
    "start_problems",
    "tag_logs_with_process_index",
]

log = logging.getLogger("kingest.runtime.supervisor")

PROCESSES_VARIABLE: Final = "KINGEST_PROCESSES"
PROCESS_INDEX_VARIABLE: Final = "KINGEST_PROCESS_INDEX"
#: Variables of the command line and the supervisor, not of :class:`Settings`.
SUPERVISOR_VARIABLES: Final = COMMAND_VARIABLES
#: Most processes one supervisor runs (each is a whole pipeline with its own connections).
MAX_PROCESSES: Final = 64
#: How long after the drain deadline a stopping child may take (closing the consumer and
#: the pool, exporting queued spans) before it is killed.
STOP_GRACE_S: Final = 15.0
#: How long children get to exit after a second signal, or after SIGKILL.
KILL_WAIT_S: Final = 5.0
#: The supervisor's loop period: how soon an exit or a signal is acted on.
POLL_S: Final = 0.1

EXIT_DRAINED: Final = 0
EXIT_DRAIN_TIMEOUT: Final = 3

_RESOURCE_KEY: Final = "kingest.process.index"

#: Waits up to about one poll period for files to change; returns the changed paths
#: (empty when nothing changed). Drives ``--reload``.
ChangeSource = Callable[[], Collection[str]]


# --------------------------------------------------------------------------- pure logic


def start_problems(processes: int, environ: Mapping[str, str]) -> list[str]:
    """Problems of ``--processes`` and ``KINGEST_PROCESS_INDEX``, as configuration errors."""
    problems = []
    if not 1 <= processes <= MAX_PROCESSES:
        problems.append(
            f"{PROCESSES_VARIABLE} (--processes): must be between 1 and {MAX_PROCESSES}, "
            f"got {processes}"
        )
    raw = environ.get(PROCESS_INDEX_VARIABLE, "").strip()
    if raw and not raw.isdigit():
        problems.append(
            f"{PROCESS_INDEX_VARIABLE}: expected a non-negative integer (the supervisor "
            f"sets it), got {raw!r}"
        )
    return problems


def process_index(environ: Mapping[str, str]) -> int | None:
    """This process's index among its supervisor's children; None when not supervised."""
    raw = environ.get(PROCESS_INDEX_VARIABLE, "").strip()
    return int(raw) if raw.isdigit() else None


def child_http_port(base_port: int, index: int) -> int:
    """Child ``index`` serves on ``base_port + index``; 0 (any free port) stays 0."""
    return 0 if base_port == 0 else base_port + index


def http_port_problem(settings: Settings, processes: int) -> str | None:
    """Ports past 65535 for the last children, as a configuration error."""
    http = settings.http
    if not http.enabled or http.port == 0:
        return None
    last = child_http_port(http.port, processes - 1)
    if last <= 65_535:
        return None
    return (
        f"KINGEST_HTTP_PORT: {processes} processes need ports {http.port}..{last} "
        "(at most 65535; 0: free ports)"
    )


def child_environment(environ: Mapping[str, str], settings: Settings, index: int) -> dict[str, str]:
    """The environment of child ``index``: the parent's, and what tells the children apart."""
    env = dict(environ)
    env[PROCESSES_VARIABLE] = "1"
    env[PROCESS_INDEX_VARIABLE] = str(index)
    env["KINGEST_KAFKA_CLIENT_ID"] = f"{settings.kafka.client_id}-{index}"
    if settings.http.enabled:
        env["KINGEST_HTTP_PORT"] = str(child_http_port(settings.http.port, index))
    attributes = env.get("OTEL_RESOURCE_ATTRIBUTES", "").strip()
    keys = {item.partition("=")[0].strip() for item in attributes.split(",")}
    if _RESOURCE_KEY not in keys:
        tag = f"{_RESOURCE_KEY}={index}"
        env["OTEL_RESOURCE_ATTRIBUTES"] = f"{attributes},{tag}" if attributes else tag
    return env


def aggregate_exit_codes(codes: Iterable[int]) -> int:
    """The supervisor's exit code from its children's at a stop (``Popen.returncode``s).

    0 when every child drained; 1 when any failed (an exit code other than 0 and 3, or
    a signal: negative); otherwise 3 when any abandoned in-flight work at its deadline.
    A failure outranks a drain timeout: it is the one that needs someone to look. A child
    killed by the supervisor's SIGTERM had not started consuming yet (kingest handles
    SIGTERM from then on), so it counts as drained.
    """
    seen = {EXIT_DRAINED if code == -signal.SIGTERM else code for code in codes}
    if seen - {EXIT_DRAINED, EXIT_DRAIN_TIMEOUT}:
        return EXIT_FAILED
    return EXIT_DRAIN_TIMEOUT if EXIT_DRAIN_TIMEOUT in seen else EXIT_DRAINED


def describe_exit(returncode: int) -> str:
    """``exit code 1`` or ``signal SIGKILL`` (a negative ``Popen.returncode``)."""
    if returncode >= 0:
        return f"exit code {returncode}"
    try:
        return f"signal {signal.Signals(-returncode).name}"
    except ValueError:
        return f"signal {-returncode}"


@dataclass(frozen=True)
class RestartPolicy:
    """When a child that exited on its own is started again."""

    initial_backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    #: A child that ran this long before it exited starts the backoff afresh.
    stable_after_s: float = 60.0
    #: More restarts than this of one child within ``window_s`` is a crash loop.
    max_restarts: int = 5
    window_s: float = 300.0

    def backoff_s(self, failures: int) -> float:
        """The delay before the restart after the ``failures``-th exit in a row (1, 2...)."""
        exponent = min(max(failures, 1) - 1, 32)
        return float(min(self.max_backoff_s, self.initial_backoff_s * 2.0**exponent))


class RestartHistory:
    """One child's exits: the next backoff, and whether it is crash-looping."""

    def __init__(self, policy: RestartPolicy) -> None:
        self.policy = policy
        self.failures = 0
        self._restarts: deque[float] = deque()

    def record_exit(self, *, ran_s: float, now: float) -> float | None:
        """The delay before restarting a child that ran ``ran_s`` seconds, or None when
        restarting it would exceed the crash-loop limit."""
        policy = self.policy
        if ran_s >= policy.stable_after_s:
            self.failures = 0
        self.failures += 1
        while self._restarts and now - self._restarts[0] > policy.window_s:
            self._restarts.popleft()
        if len(self._restarts) >= policy.max_restarts:
            return None
        self._restarts.append(now)
        return policy.backoff_s(self.failures)


# --------------------------------------------------------------------------- children


class _ProcessIndexFilter(logging.Filter):
    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        record.process_index = self.index
        return True


def tag_logs_with_process_index(index: int) -> None:
    """Add ``process_index`` to every record of the root logger's handlers (a child)."""
    for handler in logging.getLogger().handlers:
        handler.addFilter(_ProcessIndexFilter(index))


def _child_preexec() -> Callable[[], None] | None:
    """On Linux, a function run in the child before exec that asks the kernel for a
    SIGTERM when the supervisor dies, so children never outlive it unsupervised."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes  # noqa: PLC0415 - Linux only

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGTERM))
        if os.getppid() != parent:  # the supervisor died before the request took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


@dataclass
class _Child:
    index: int
    env: Mapping[str, str]
    history: RestartHistory
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    restart_at: float | None = 0.0
    restarts: int = 0
    stop_code: int | None = None


class ProcessSupervisor:
    """Runs one child per environment in ``environments``; see the module docstring."""

    def __init__(
        self,
        command: Sequence[str],
        environments: Sequence[Mapping[str, str]],
        *,
        stop_timeout_s: float,
        policy: RestartPolicy | None = None,
        kill_wait_s: float = KILL_WAIT_S,
        poll_s: float = POLL_S,
        changes: ChangeSource | None = None,
    ) -> None:
        self.command = list(command)
        policy = policy or RestartPolicy()
        self.children = [
            _Child(index, env, RestartHistory(policy)) for index, env in enumerate(environments)
        ]
        self.stop_timeout_s = stop_timeout_s
        self.kill_wait_s = kill_wait_s
        self.poll_s = poll_s
        self.changes = changes
        self.reloads = 0
        self._signals: list[int] = []
        self._previous: dict[int, Any] = {}
        self._preexec = _child_preexec()

    # ------------------------------------------------------------------ signals

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._signals.append(signum)  # acted on by the loop, outside the handler

    def _install(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.signal(signum, self._on_signal)
        # A stop requested while `kingest start` was starting (kingest.runtime.early_stop).
        self._signals.extend(early_stop.take())

    def _uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    # ------------------------------------------------------------------ run

    def run(self) -> int:
        """Start the children, keep them running until a signal, stop them; exit code."""
        self._install()
        try:
            log.info("supervising %d kingest processes (pid %d)", len(self.children), os.getpid())
            reason = self._supervise()
            return self._stop(reason)
        finally:
            self._uninstall()
            self._kill_all()  # only on an unexpected error: _stop reaped every child

    def _supervise(self) -> int | None:
        """Run until a signal (None) or a reason to stop everything (its exit code)."""
        while not self._signals:
            now = time.monotonic()
            for child in self.children:
                if child.proc is None:
                    if child.restart_at is not None and now >= child.restart_at:
                        self._spawn(child)
                    continue
                code = child.proc.poll()
                if code is None:
                    continue
                reason = self._on_exit(child, code, now)
                if reason is not None:
                    return reason
            changed = self._wait()
            if changed and not self._signals:
                self._reload(changed)
        return None

    def _wait(self) -> Collection[str]:
        """One poll period: a sleep, or the change source's wait. Changed paths."""
        if self.changes is None:
            time.sleep(self.poll_s)
            return ()
        return self.changes()

    def _reload(self, changed: Collection[str]) -> None:
        """Stop every child (drained, as at a stop) and start them all again at once."""
        names = sorted(changed)
        log.info(
            "%d files changed (%s): restarting %d processes",
            len(names),
            ", ".join(names[:3]) + (", ..." if len(names) > 3 else ""),
            len(self._running()),
            extra={"changed": names},
        )
        self._stop_children()
        if self._signals:  # a signal during the reload's stop: stay stopped
            return
        self.reloads += 1
        now = time.monotonic()
        for child in self.children:
            child.proc, child.stop_code, child.restart_at = None, None, now

    def _spawn(self, child: _Child) -> None:
        child.proc = subprocess.Popen(
            self.command,
            env=dict(child.env),
            start_new_session=True,  # a terminal's Ctrl-C reaches the supervisor only
            preexec_fn=self._preexec,  # noqa: PLW1509 - the supervisor starts no threads
        )
        child.started = time.monotonic()
        child.restart_at = None
        log.info(
            "child %d started: pid %d",
            child.index,
            child.proc.pid,
            extra={"process_index": child.index, "child_pid": child.proc.pid},
        )

    def _on_exit(self, child: _Child, code: int, now: float) -> int | None:
        assert child.proc is not None
        pid, ran_s = child.proc.pid, now - child.started
        child.proc = None
        extra = {"process_index": child.index, "child_pid": pid, "exit_code": code}
        if code == EXIT_BAD_CONFIG:
            log.error(
                "child %d (pid %d) exited with %s (invalid configuration): stopping",
                child.index,
                pid,
                describe_exit(code),
                extra=extra,
            )
            return EXIT_BAD_CONFIG
        if self.changes is not None:
            log.error(
                "child %d (pid %d) exited with %s after %.1f s: it starts again on the next change",
                child.index,
                pid,
                describe_exit(code),
                ran_s,
                extra=extra,
            )
            return None
        delay = child.history.record_exit(ran_s=ran_s, now=now)
        if delay is None:
            policy = child.history.policy
            log.error(
                "child %d (pid %d) exited with %s after %.1f s; more than %d restarts "
                "within %.0f s: crash loop, stopping",
                child.index,
                pid,
                describe_exit(code),
                ran_s,
                policy.max_restarts,
                policy.window_s,
                extra=extra,
            )
            return EXIT_FAILED
        child.restarts += 1
        child.restart_at = now + delay
        log.warning(
            "child %d (pid %d) exited with %s after %.1f s: restarting it in %.0f s (restart %d)",
            child.index,
            pid,
            describe_exit(code),
            ran_s,
            delay,
            child.restarts,
            extra=extra,
        )
        return None

    # ------------------------------------------------------------------ stop

    def _running(self) -> list[_Child]:
        return [c for c in self.children if c.proc is not None and c.stop_code is None]

    def _signal_running(self, signum: int) -> None:
        for child in self._running():
            assert child.proc is not None
            child.proc.send_signal(signum)  # a no-op when it has exited in between

    def _stop(self, reason: int | None) -> int:
        """SIGTERM every child, wait (killing them at the deadline); the exit code."""
        if reason is None:
            name = signal.Signals(self._signals[0]).name
            log.info(
                "%s received: stopping %d processes (send it again to exit at once)",
                name,
                len(self._running()),
            )
        for child in self.children:
            child.restart_at = None  # a child waiting for its restart stays down
        # Two signals during a reload's stop forced the children out already.
        forced = self._stop_children() or len(self._signals) >= 2
        codes = [c.stop_code for c in self.children if c.stop_code is not None]
        if reason is not None:
            code = reason
        elif forced:
            code = EXIT_FORCED
        else:
            code = aggregate_exit_codes(codes)
        log.info("supervisor stopped: exit code %d", code)
        return code

    def _stop_children(self) -> bool:
        """SIGTERM every running child and wait for all, killing them at the deadline;
        whether a second signal forced them to exit without draining."""
        self._signal_running(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout_s
        forced = killed = False
        while self._running():
            now = time.monotonic()
            # The first signal asked for this stop (or came while children drain for
            # another reason); the second one means "now".
            if not forced and len(self._signals) >= 2:
                forced = True
                log.warning("signal received again: children exit without draining")
                self._signal_running(signal.SIGTERM)  # their second signal: exit 130
                deadline = min(deadline, now + self.kill_wait_s)
            if now >= deadline and not killed:
                killed = True
                for child in self._running():
                    assert child.proc is not None
                    log.error(
                        "child %d (pid %d) still running %.0f s after SIGTERM: killing it",
                        child.index,
                        child.proc.pid,
                        self.stop_timeout_s,
                        extra={"process_index": child.index, "child_pid": child.proc.pid},
                    )
                self._signal_running(signal.SIGKILL)
            for child in self._running():
                assert child.proc is not None
                code = child.proc.poll()
                if code is not None:
                    child.stop_code = code
                    log.info(
                        "child %d (pid %d) stopped with %s",
                        child.index,
                        child.proc.pid,
                        describe_exit(code),
                        extra={
                            "process_index": child.index,
                            "child_pid": child.proc.pid,
                            "exit_code": code,
                        },
                    )
            time.sleep(self.poll_s)
        return forced

    def _kill_all(self) -> None:
        for child in self._running():
            assert child.proc is not None
            child.proc.kill()
            child.proc.wait(self.kill_wait_s)
            child.stop_code = child.proc.returncode


def run_supervisor(
    settings: Settings,
    processes: int,
    environ: Mapping[str, str],
    changes: ChangeSource | None = None,
) -> int:
    """``kingest start --processes N`` (N > 1), or ``--reload`` given ``changes``: the
    supervisor's exit code."""
    supervisor = ProcessSupervisor(
        [sys.executable, "-m", "kingest", "start"],
        [child_environment(environ, settings, index) for index in range(processes)],
        stop_timeout_s=settings.pipeline.drain_timeout_s + STOP_GRACE_S,
        changes=changes,
    )
    return supervisor.run()
