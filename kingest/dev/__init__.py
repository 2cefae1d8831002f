"""Development tools: local services, a synthetic event stream, a producer, the benchmark.

Contract: nothing in the service depends on this package; it serves ``kingest demo``,
``kingest produce``, ``kingest bench`` and the test suite. The local services are a
Tansu broker and an embedded PostgreSQL (or ones you point at), librdkafka's mock
cluster, and the helpers to create topics and wait for them.

* :mod:`kingest.dev.services`: the broker and PostgreSQL services;
* :mod:`kingest.dev.synth`: a reproducible synthetic stream of AI/ML events;
* :mod:`kingest.dev.producer`: producing a stream to Kafka;
* :mod:`kingest.dev.demo`: ``kingest demo``;
* :mod:`kingest.dev.benchmark`: ``kingest bench`` (kingest against a baseline loop).
"""

from __future__ import annotations

from kingest.dev.benchmark import BenchError, Options, parse_sweep, run_bench
from kingest.dev.demo import run_demo
from kingest.dev.producer import produce_records
from kingest.dev.services import create_topic
from kingest.dev.synth import SyntheticStream

__all__ = [
    "BenchError",
    "Options",
    "SyntheticStream",
    "create_topic",
    "parse_sweep",
    "produce_records",
    "run_bench",
    "run_demo",
]
