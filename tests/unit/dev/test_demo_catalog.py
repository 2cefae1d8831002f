"""The demo's catalog: loaded as the service loads it, every problem listed, its settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from kingest.config import load_settings
from kingest.dev.demo_catalog import DemoCatalogError, load_demo_catalog
from tests.catalog_support import compile_example_catalog
from tests.catalog_texts import compile_catalog

TYPES = "gpu:llmserving.v1.GpuUtilizationSample,datasets:.llmserving.v1.DatasetVersionCreated"


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_example_catalog(tmp_path_factory.mktemp("example"))


def test_envelope_topic_first_then_the_typed_topics(example: Path) -> None:
    demo = load_demo_catalog(example, schema="llm", topic_types=TYPES, envelope_topic="events")
    assert demo.topics == {
        "events": "llmserving.v1.LlmEvent",
        "gpu": "llmserving.v1.GpuUtilizationSample",
        "datasets": "llmserving.v1.DatasetVersionCreated",
    }
    streams = demo.streams(seed=1)
    assert {topic: stream.message_name for topic, stream in streams.items()} == demo.topics


def test_the_service_env_describes_the_same_catalog(example: Path) -> None:
    demo = load_demo_catalog(example, schema="llm", topic_types=TYPES, envelope_topic="events")
    env = {
        "KINGEST_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092",
        "KINGEST_GROUP_ID": "demo",
        "KINGEST_DATABASE_URL": "postgresql://localhost/demo",
        **demo.service_env(),
    }
    settings = load_settings(env)
    assert settings.kafka.topics == ("events", "gpu", "datasets")
    assert settings.catalog.digest == demo.catalog.digest
    assert settings.catalog.schema == "llm"
    assert dict(settings.catalog.topic_types) == dict(demo.catalog.topic_types)


def test_every_problem_with_the_options_is_listed(tmp_path: Path) -> None:
    with pytest.raises(DemoCatalogError) as caught:
        load_demo_catalog(
            tmp_path / "missing.binpb",
            schema="demo",
            topic_types="events:llmserving.v1.GpuUtilizationSample",
            envelope_topic="events",
        )
    assert caught.value.problems == [
        "--topic-types: events is the demo's envelope topic",
        f"--catalog {tmp_path / 'missing.binpb'}: no such file",
    ]


def test_the_catalogs_own_problems_are_listed(example: Path) -> None:
    with pytest.raises(DemoCatalogError) as caught:
        load_demo_catalog(example, schema="Bad", topic_types="gpu:acme.Nope", envelope_topic="e")
    problems = "\n".join(caught.value.problems)
    assert "schema name 'Bad'" in problems
    assert "message acme.Nope is not in the catalog" in problems


def test_a_file_that_is_no_descriptor_set_is_refused(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.binpb"
    garbage.write_bytes(b"\xff\xff")
    with pytest.raises(DemoCatalogError, match="not a FileDescriptorSet"):
        load_demo_catalog(garbage, schema="demo", topic_types="", envelope_topic="e")


UNSATISFIABLE = """
syntax = "proto3";
package acme.v1;
import "kingest/options/v1/options.proto";

message Reading {
  string sensor_id = 1;
  int32 level = 2 [(kingest.options.v1.column) = {gte: 10, lte: 5}];
}
"""


def test_a_type_no_message_can_be_made_of_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "unsatisfiable.binpb"
    path.write_bytes(compile_catalog(tmp_path, UNSATISFIABLE))
    with pytest.raises(DemoCatalogError) as caught:
        load_demo_catalog(path, schema="demo", topic_types="r:acme.v1.Reading", envelope_topic="e")
    assert "acme.v1.Reading.level" in "\n".join(caught.value.problems)
