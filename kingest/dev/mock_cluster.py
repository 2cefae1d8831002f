"""librdkafka's mock Kafka cluster, started in this process through ctypes.

librdkafka ships a mock cluster for its own tests: brokers on threads of the process,
speaking the Kafka protocol on local ports, so that other clients and even other
processes can reach them. kingest uses it where the embedded Tansu broker
(:mod:`kingest.dev.tansu`) is wrong: Tansu's high watermark and commit metadata are not
Kafka's, while the mock cluster gets them right, and it can inject faults at the
protocol level (an error code or a delay for the next requests of one Kafka API).

The Python client does not expose the mock API, so :func:`_librdkafka` finds the very
librdkafka that confluent-kafka loaded (the copy bundled in the wheel, or a system one)
and declares the C signatures used here. The cluster lives as long as the librdkafka
handle that created it; :meth:`MockKafkaCluster.stop` destroys both, and the exit guard
of :mod:`kingest.dev.lifecycle` does so at interpreter exit if nobody did.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache
from pathlib import Path
from typing import ClassVar

import confluent_kafka
from confluent_kafka import KafkaError

from kingest.dev.lifecycle import LocalService, ServiceError, exit_guard

__all__ = ["MockKafkaCluster"]

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


class MockKafkaCluster(LocalService):
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
    :meth:`create_topic` (or :func:`kingest.dev.topics.create_topic`) creates them with the
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
        exit_guard.register(self, self.stop)
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
        exit_guard.unregister(self)
