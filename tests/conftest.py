"""Shared fixtures: a real Kafka-protocol broker and a real PostgreSQL for the session.

Where they come from is decided once, by :func:`kingest.dev.services.plan_services`:
``KINGEST_TEST_KAFKA_BOOTSTRAP_SERVERS`` / ``KINGEST_TEST_DATABASE_URL`` point at external
services; otherwise Docker containers when an engine answers, else the embedded services
(Tansu and PostgreSQL from PyPI wheels). ``KINGEST_TEST_SERVICES=embedded|containers``
forces the choice. Each service starts on first use, so unit-test runs start nothing.

Store-level tests also run on the machine's system PostgreSQL 15 (``any_database_url``,
ids ``pg18`` and ``pg15``): the oldest server kingest supports, at
``KINGEST_TEST_SYSTEM_DATABASE_URL`` or else ``postgresql://postgres@127.0.0.1:5432/test``.
It is not started here; when it does not answer, the ``pg15`` cases fail (not skip).
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from functools import cache
from typing import Protocol

import psycopg
import pytest

from kingest.config.redaction import redact_conninfo, safe_error_text
from kingest.dev import (
    TEST_POSTGRES_SETTINGS,
    LocalPostgres,
    MockKafkaCluster,
    ServiceError,
    ServicePlan,
    create_topic,
    plan_services,
    provide_kafka,
    provide_postgres,
)
from tests.integration.support import fresh_database


class TopicFactory(Protocol):
    """Creates a uniquely named topic on the session broker and returns its name."""

    def __call__(self, partitions: int = 4) -> str: ...


@cache
def _session_plan() -> ServicePlan:
    return plan_services()


def pytest_report_header(config: pytest.Config) -> str:
    """Say in the header where the services come from (or why they cannot)."""
    try:
        plan = _session_plan()
    except ServiceError as error:
        return f"kingest test services: {error}"
    return f"kingest test services: kafka={plan.kafka}, postgres={plan.postgres}"


@pytest.fixture(scope="session")
def service_plan() -> ServicePlan:
    """Where this session's broker and PostgreSQL come from."""
    return _session_plan()


@pytest.fixture(scope="session")
def kafka_bootstrap(service_plan: ServicePlan) -> Iterator[str]:
    """bootstrap.servers of a Kafka-protocol broker for the session."""
    with provide_kafka(service_plan.kafka) as bootstrap:
        yield bootstrap


@pytest.fixture(scope="session")
def postgres_server_url(service_plan: ServicePlan) -> Iterator[str]:
    """URL of a PostgreSQL server (any database on it may be created)."""
    with provide_postgres(service_plan.postgres) as url:
        yield url


@pytest.fixture
def database_url(postgres_server_url: str) -> Iterator[str]:
    """URL of a new, empty database that exists only for this test."""
    with fresh_database(postgres_server_url) as url:
        yield url


SYSTEM_POSTGRES_URL_VARIABLE = "KINGEST_TEST_SYSTEM_DATABASE_URL"
DEFAULT_SYSTEM_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture(scope="session")
def system_postgres_url() -> str:
    """URL of the machine's system PostgreSQL 15 (any database on it may be created).

    Not started by the tests: CI and the development machines run it. When it does not
    answer, every test that needs it fails with the reason (a missing server must not
    pass for a green run).
    """
    url = os.environ.get(SYSTEM_POSTGRES_URL_VARIABLE) or DEFAULT_SYSTEM_POSTGRES_URL
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as error:
        problem = safe_error_text(error, url)
    else:
        return url
    pytest.fail(
        f"the system PostgreSQL at {redact_conninfo(url)} does not answer ({problem}): "
        f"start it, or set {SYSTEM_POSTGRES_URL_VARIABLE} to a server where the tests may "
        "create databases",
        pytrace=False,
    )


@pytest.fixture(params=["pg18", "pg15"])
def any_database_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """URL of a new, empty database for this test, once on each supported server:
    ``pg18`` the session's PostgreSQL 18 (as ``database_url``), ``pg15`` the system one."""
    server = "postgres_server_url" if request.param == "pg18" else "system_postgres_url"
    with fresh_database(request.getfixturevalue(server)) as url:
        yield url


@pytest.fixture
def topic_factory(kafka_bootstrap: str, request: pytest.FixtureRequest) -> TopicFactory:
    """Creates topics named after the test (plus a random suffix) on the session broker."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "-", request.node.name).strip("-")[:60]

    def make(partitions: int = 4) -> str:
        name = f"kt-{readable}-{uuid.uuid4().hex[:8]}"
        create_topic(kafka_bootstrap, name, partitions)
        return name

    return make


@pytest.fixture(scope="session")
def mock_cluster() -> Iterator[MockKafkaCluster]:
    """librdkafka's in-process mock cluster, for what Tansu does not do well (docs/design.md):
    cooperative rebalances, end offsets of batched produce requests."""
    with MockKafkaCluster() as cluster:
        yield cluster


@pytest.fixture
def local_postgres(service_plan: ServicePlan) -> Iterator[LocalPostgres]:
    """A dedicated, running embedded PostgreSQL that the test may stop and start."""
    if service_plan.postgres != "embedded":
        pytest.skip(
            "needs an embedded PostgreSQL to stop and start; this session's PostgreSQL is "
            f"{service_plan.postgres} (unset KINGEST_TEST_DATABASE_URL and set "
            "KINGEST_TEST_SERVICES=embedded to run it)"
        )
    postgres = LocalPostgres(settings=TEST_POSTGRES_SETTINGS)
    try:
        yield postgres.start()
    finally:
        postgres.cleanup()
