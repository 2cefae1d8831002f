"""Development tools: local services, a synthetic event stream, a producer, the benchmark.

Contract: nothing in the service depends on this package; it serves ``kingest demo``,
``kingest produce``, ``kingest bench`` and the test suite. The local services are a
Tansu broker and an embedded PostgreSQL (or ones you point at), librdkafka's mock
cluster, and the helpers to create topics and wait for them.

* :mod:`kingest.dev.lifecycle`: what the local services share (:class:`ServiceError`,
  ``with``-block lifecycle, the exit guard that stops leftovers, :func:`free_port`);
* :mod:`kingest.dev.tansu`: the Tansu broker as a subprocess (:class:`LocalKafka`);
* :mod:`kingest.dev.postgres`: the embedded PostgreSQL 18 (:class:`LocalPostgres`);
* :mod:`kingest.dev.mock_cluster`: librdkafka's in-process mock cluster
  (:class:`MockKafkaCluster`), where Tansu is wrong;
* :mod:`kingest.dev.topics`: creating a topic and waiting for its leaders
  (:func:`create_topic`);
* :mod:`kingest.dev.services`: where the test suite's services come from (external,
  containers or embedded: :func:`plan_services`, :func:`provide_services`);
* :mod:`kingest.dev.synth`: a reproducible synthetic stream of AI/ML events;
* :mod:`kingest.dev.catalog_synth`: plausible messages of any catalog's message types,
  from its descriptor set (:class:`CatalogSynth`, :func:`records_from_descriptor_set`),
  with the values of :mod:`kingest.dev.catalog_values`, as Kafka records of one message
  type by :mod:`kingest.dev.catalog_stream` (:class:`CatalogStream`);
* :mod:`kingest.dev.producer`: producing a stream to Kafka;
* :mod:`kingest.dev.demo`: ``kingest demo``, on a team's catalog with
  :mod:`kingest.dev.demo_catalog` (:func:`load_demo_catalog`);
* :mod:`kingest.dev.benchmark`: ``kingest bench`` (kingest against a baseline loop),
  with :mod:`kingest.dev.bench_figures` (what a run measures and how runs are summed
  up) and :mod:`kingest.dev.baseline` (the baseline loop, run in its own process).
"""

from __future__ import annotations

from kingest.dev.bench_figures import (
    TARGETS,
    THREAD_CPU_FIGURE,
    Target,
    TargetCheck,
    target_checks,
)
from kingest.dev.benchmark import BenchError, Options, parse_sweep, run_bench
from kingest.dev.catalog_stream import CatalogRecord, CatalogStream, default_message
from kingest.dev.catalog_synth import (
    CatalogSynth,
    DescriptorSetPool,
    load_descriptor_set_pool,
    messages_from_descriptor_set,
    record_key,
    records_from_descriptor_set,
)
from kingest.dev.catalog_values import CatalogSynthError
from kingest.dev.demo import DEMO_TOPIC, committed_offsets, committed_total, run_demo
from kingest.dev.demo_catalog import DEMO_SCHEMA, DemoCatalog, DemoCatalogError, load_demo_catalog
from kingest.dev.lifecycle import ServiceError, free_port
from kingest.dev.mock_cluster import MockKafkaCluster
from kingest.dev.postgres import LocalPostgres, database_url_for
from kingest.dev.producer import ProduceReport, ProducibleRecord, produce_records
from kingest.dev.services import (
    FAST_GROUP_SETTINGS,
    TEST_POSTGRES_SETTINGS,
    ServicePlan,
    Services,
    plan_services,
    provide_kafka,
    provide_postgres,
    provide_services,
)
from kingest.dev.synth import SyntheticRecord, SyntheticStream
from kingest.dev.tansu import LocalKafka
from kingest.dev.topics import create_topic

__all__ = [
    "DEMO_SCHEMA",
    "DEMO_TOPIC",
    "FAST_GROUP_SETTINGS",
    "TARGETS",
    "TEST_POSTGRES_SETTINGS",
    "THREAD_CPU_FIGURE",
    "BenchError",
    "CatalogRecord",
    "CatalogStream",
    "CatalogSynth",
    "CatalogSynthError",
    "DemoCatalog",
    "DemoCatalogError",
    "DescriptorSetPool",
    "LocalKafka",
    "LocalPostgres",
    "MockKafkaCluster",
    "Options",
    "ProduceReport",
    "ProducibleRecord",
    "ServiceError",
    "ServicePlan",
    "Services",
    "SyntheticRecord",
    "SyntheticStream",
    "Target",
    "TargetCheck",
    "committed_offsets",
    "committed_total",
    "create_topic",
    "database_url_for",
    "default_message",
    "free_port",
    "load_demo_catalog",
    "load_descriptor_set_pool",
    "messages_from_descriptor_set",
    "parse_sweep",
    "plan_services",
    "produce_records",
    "provide_kafka",
    "provide_postgres",
    "provide_services",
    "record_key",
    "records_from_descriptor_set",
    "run_bench",
    "run_demo",
    "target_checks",
]
