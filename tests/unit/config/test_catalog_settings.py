"""The catalog settings: KINGEST_CATALOG, KINGEST_TOPIC_TYPES, KINGEST_DATABASE_SCHEMA,
checked on their own and against the topics and the catalog, every problem listed."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest

import kingest.config.settings as settings_module
from kingest.catalog import BUILTIN_CATALOG_PATH, Catalog, load_catalog
from kingest.config import ConfigError, Settings, effective_settings, load_settings
from kingest.config.settings import BadEntriesError, parse_topic_types
from tests.catalog_support import compile_catalog

VALID = {
    "KINGEST_KAFKA_BOOTSTRAP_SERVERS": "broker-1:9092",
    "KINGEST_TOPICS": "ml-events,gpu",
    "KINGEST_GROUP_ID": "kingest",
    "KINGEST_DATABASE_URL": "postgresql://ingest@db.internal:5432/ml",
}

#: A team catalog with no envelope: each message comes from a topic of its own.
PER_TOPIC = """
syntax = "proto3";
package x.v1;
import "google/protobuf/timestamp.proto";

// Utilisation of one GPU.
message GpuSample {
  string event_id = 1;
  google.protobuf.Timestamp occurred_at = 2;
  string host = 3;
  double utilisation = 4;
}

// A training run ended.
message RunFinished {
  string run_id = 1;
  double loss = 2;
}
"""


@pytest.fixture(scope="module")
def per_topic_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The descriptor set of :data:`PER_TOPIC`, as `buf build -o catalog.binpb` writes it."""
    directory = tmp_path_factory.mktemp("per-topic")
    compile_catalog(directory, {"x/v1/a.proto": PER_TOPIC})
    return directory / "catalog.binpb"


def problems_of(environ: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ)
    return caught.value.problems


def test_the_defaults_give_the_built_in_catalog_in_the_kingest_schema() -> None:
    settings = load_settings(VALID)
    assert settings.catalog_source.file is None
    assert settings.catalog_source.topic_types == {}
    assert settings.database.schema == "kingest"
    catalog = settings.catalog
    assert catalog.digest == load_catalog(BUILTIN_CATALOG_PATH).digest
    assert (catalog.schema, catalog.envelope) == ("kingest", "kingest.schema.v1.Event")
    assert catalog.topic_types == {}
    shown = effective_settings(settings)
    assert (shown["KINGEST_CATALOG"], shown["KINGEST_TOPIC_TYPES"]) == ("", "")
    assert shown["KINGEST_DATABASE_SCHEMA"] == "kingest"


def test_empty_variables_mean_the_built_in_catalog() -> None:
    environ = {**VALID, "KINGEST_CATALOG": "", "KINGEST_TOPIC_TYPES": " "}
    assert load_settings(environ).catalog.envelope == "kingest.schema.v1.Event"


def test_the_catalog_checked_by_loading_is_the_one_the_settings_keep(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loads: list[Path | bytes | None] = []

    def counting_load(
        source: Path | bytes | None = None,
        *,
        schema: str = "kingest",
        topic_types: Mapping[str, str] | None = None,
    ) -> Catalog:
        loads.append(source)
        return load_catalog(source, schema=schema, topic_types=topic_types)

    monkeypatch.setattr(settings_module, "load_catalog", counting_load)
    settings = load_settings(VALID)
    assert loads == [None]  # loaded (and checked) by load_settings
    assert settings.catalog is settings.catalog
    assert loads == [None]  # not read again at start-up


def test_settings_built_without_loading_load_their_catalog_when_asked() -> None:
    loaded = load_settings(VALID)
    settings = Settings(kafka=loaded.kafka, database=loaded.database)
    assert settings.catalog.digest == loaded.catalog.digest


def test_a_missing_catalog_file_is_a_problem(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "catalog.binpb"
    assert problems_of({**VALID, "KINGEST_CATALOG": str(missing)}) == [
        f"KINGEST_CATALOG: {str(missing)!r}: no such file (build one with "
        "`buf build -o catalog.binpb`)"
    ]


def test_a_catalog_that_cannot_be_read_is_a_problem(tmp_path: Path) -> None:
    assert problems_of({**VALID, "KINGEST_CATALOG": str(tmp_path)}) == [
        f"KINGEST_CATALOG: {str(tmp_path)!r} cannot be read: Is a directory"
    ]


def test_a_file_that_is_not_a_descriptor_set_is_a_problem_of_the_catalog(tmp_path: Path) -> None:
    garbage = tmp_path / "catalog.binpb"
    garbage.write_bytes(b"\xff\xff not protobuf")
    problems = problems_of({**VALID, "KINGEST_CATALOG": str(garbage)})
    assert len(problems) == 1
    assert problems[0].startswith("KINGEST_CATALOG: not a FileDescriptorSet")


def test_malformed_topic_types_are_all_listed_with_the_other_problems() -> None:
    problems = problems_of(
        {
            **VALID,
            "KINGEST_TOPIC_TYPES": "ml-events, gpu:x.v1.A,:x.v1.B,runs:,gpu:x.v1.C,"
            "evals :x.v1.D,bad topic!:x.v1.E,logs:x.v1.F:G",
            "KINGEST_WRITERS": "0",
        }
    )
    assert problems == [
        "KINGEST_TOPIC_TYPES: 'ml-events' is not topic:package.Message (no colon)",
        "KINGEST_TOPIC_TYPES: ':x.v1.B' is not topic:package.Message (empty topic)",
        "KINGEST_TOPIC_TYPES: 'runs:' is not topic:package.Message (empty type)",
        "KINGEST_TOPIC_TYPES: topic gpu is listed twice",
        "KINGEST_TOPIC_TYPES: 'evals :x.v1.D' contains a blank",
        "KINGEST_TOPIC_TYPES: 'bad topic!:x.v1.E' contains a blank",
        "KINGEST_TOPIC_TYPES: 'x.v1.F:G' is not a full message name (package.Message)",
        "KINGEST_WRITERS: must be between 1 and 256",
    ]


def test_topic_types_are_written_as_in_kingest_topics() -> None:
    # Blanks around an entry are ignored, a leading dot is allowed, order is kept.
    assert parse_topic_types(" b:x.v1.B , a:.x.v1.A,") == {"b": "x.v1.B", "a": ".x.v1.A"}
    with pytest.raises(BadEntriesError) as caught:
        parse_topic_types("a!:x.v1.A,b:1x")
    assert caught.value.problems == [
        "'a!' is not a valid topic name",
        "'1x' is not a full message name (package.Message)",
    ]


def test_typed_topics_must_be_consumed(per_topic_catalog: Path) -> None:
    problems = problems_of(
        {
            **VALID,
            "KINGEST_TOPICS": "gpu",
            "KINGEST_CATALOG": str(per_topic_catalog),
            "KINGEST_TOPIC_TYPES": "gpu:x.v1.GpuSample,runs:x.v1.RunFinished,evals:x.v1.GpuSample",
        }
    )
    assert problems == [
        "KINGEST_TOPIC_TYPES: not in KINGEST_TOPICS, so never consumed: runs, evals",
    ]


def test_topics_left_without_a_type_need_an_envelope(per_topic_catalog: Path) -> None:
    problems = problems_of(
        {
            **VALID,
            "KINGEST_TOPICS": "gpu,runs,evals",
            "KINGEST_CATALOG": str(per_topic_catalog),
            "KINGEST_TOPIC_TYPES": "gpu:x.v1.GpuSample",
        }
    )
    assert problems == [
        "KINGEST_TOPIC_TYPES: runs, evals consumed without a type, and the catalog has no "
        "envelope message to read them with: give each a type here, or use a catalog with "
        "an envelope"
    ]


def test_a_catalog_with_no_envelope_and_no_topic_types_has_no_table(
    per_topic_catalog: Path,
) -> None:
    problems = problems_of({**VALID, "KINGEST_CATALOG": str(per_topic_catalog)})
    assert len(problems) == 1
    assert problems[0].startswith("KINGEST_CATALOG: no envelope message")


def test_each_catalog_problem_is_reported_under_the_variable_that_fixes_it() -> None:
    problems = problems_of(
        {**VALID, "KINGEST_TOPIC_TYPES": "gpu:x.v1.Nowhere,ml-events:kingest.schema.v1.Nope"}
    )
    assert problems == [
        "KINGEST_TOPIC_TYPES: topic gpu: message x.v1.Nowhere is not in the catalog",
        "KINGEST_TOPIC_TYPES: topic ml-events: message kingest.schema.v1.Nope is not in the "
        "catalog",
    ]


def test_a_user_catalog_in_per_topic_mode(per_topic_catalog: Path) -> None:
    settings = load_settings(
        {
            **VALID,
            "KINGEST_TOPICS": "gpu,runs",
            "KINGEST_CATALOG": str(per_topic_catalog),
            "KINGEST_TOPIC_TYPES": "gpu:x.v1.GpuSample,runs:.x.v1.RunFinished",
            "KINGEST_DATABASE_SCHEMA": "team_x",
        }
    )
    assert settings.catalog_source.file == per_topic_catalog
    assert settings.catalog_source.topic_types == {
        "gpu": "x.v1.GpuSample",
        "runs": ".x.v1.RunFinished",
    }
    catalog = settings.catalog
    assert catalog.schema == "team_x"
    assert catalog.envelope is None
    assert catalog.topic_types == {"gpu": "x.v1.GpuSample", "runs": "x.v1.RunFinished"}
    assert [(t.name, t.message) for t in catalog.fact_tables] == [
        ("gpu_sample", "x.v1.GpuSample"),
        ("run_finished", "x.v1.RunFinished"),
    ]
    assert catalog.descriptor_set == per_topic_catalog.read_bytes()
    shown = effective_settings(settings)
    assert shown["KINGEST_CATALOG"] == str(per_topic_catalog)
    assert shown["KINGEST_TOPIC_TYPES"] == "gpu:x.v1.GpuSample,runs:.x.v1.RunFinished"
    assert shown["KINGEST_DATABASE_SCHEMA"] == "team_x"


@pytest.mark.parametrize(
    ("schema", "problem"),
    [
        ("Kingest", "'Kingest' is not a lowercase SQL identifier ([a-z_][a-z0-9_]*, 63 at most)"),
        ("1team", "'1team' is not a lowercase SQL identifier ([a-z_][a-z0-9_]*, 63 at most)"),
        ("team-x", "'team-x' is not a lowercase SQL identifier ([a-z_][a-z0-9_]*, 63 at most)"),
        (
            "a" * 64,
            f"{'a' * 64!r} is not a lowercase SQL identifier ([a-z_][a-z0-9_]*, 63 at most)",
        ),
        ("pg_team", "'pg_team': PostgreSQL reserves the pg_ prefix for system schemas"),
    ],
)
def test_a_bad_schema_name_is_a_problem(schema: str, problem: str) -> None:
    assert problems_of({**VALID, "KINGEST_DATABASE_SCHEMA": schema}) == [
        f"KINGEST_DATABASE_SCHEMA: {problem}"
    ]


def test_the_longest_schema_name_postgresql_allows_is_accepted() -> None:
    settings = load_settings({**VALID, "KINGEST_DATABASE_SCHEMA": "_" + "a" * 62})
    assert settings.catalog.schema == "_" + "a" * 62
