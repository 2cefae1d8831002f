"""`kingest produce` and `kingest demo`: their options are checked before anything starts."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

import kingest.dev
from kingest.cli.commands import app
from tests.catalog_support import EXAMPLE_PROTO, compile_example_catalog
from tests.catalog_texts import compile_catalog


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_example_catalog(tmp_path_factory.mktemp("example"))


@pytest.fixture(autouse=True)
def no_services(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bad input must be refused before a topic is created or a service started."""

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a service was used despite bad input")

    monkeypatch.setattr(kingest.dev, "create_topic", refuse)
    monkeypatch.setattr(kingest.dev, "run_demo", refuse)


def _refused(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    return result.output


def test_produce_catalog_options_need_a_catalog() -> None:
    output = _refused("produce", "--message", "llmserving.v1.LlmEvent", "--schema-id", "3")
    assert "--message: only with --catalog" in output
    assert "--schema-id: only with --catalog" in output


def test_produce_lists_every_problem_with_a_catalog(tmp_path: Path) -> None:
    missing = tmp_path / "missing.binpb"
    output = _refused("produce", "--catalog", str(missing), "--wire-format-share", "0.5")
    assert "--wire-format-share: only without --catalog" in output
    assert f"--catalog {missing}: no such file" in output


def test_produce_refuses_a_file_that_is_no_catalog(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.binpb"
    garbage.write_bytes(b"\xff\xff")
    assert "not a FileDescriptorSet" in _refused("produce", "--catalog", str(garbage))


def test_produce_lists_the_catalogs_messages_for_an_unknown_one(example: Path) -> None:
    output = _refused("produce", "--catalog", str(example), "--message", "acme.v1.Nope")
    assert "no message type 'acme.v1.Nope'" in output
    assert "llmserving.v1.LlmEvent" in output
    assert "llmserving.v1.DatasetVersionCreated" in output


def test_produce_needs_a_message_when_the_catalog_has_no_envelope(tmp_path: Path) -> None:
    topics = EXAMPLE_PROTO / "llmserving/v1/topics.proto"
    catalog = tmp_path / "topics.binpb"
    catalog.write_bytes(compile_catalog(tmp_path, topics.read_text(), topics.name))
    output = _refused("produce", "--catalog", str(catalog))
    assert "no envelope message" in output
    assert "llmserving.v1.GpuUtilizationSample" in output


@pytest.mark.parametrize("schema_id", ["-1", str(2**31)])
def test_produce_refuses_a_schema_id_outside_int32(example: Path, schema_id: str) -> None:
    _refused("produce", "--catalog", str(example), "--schema-id", schema_id)


def test_demo_catalog_options_need_a_catalog() -> None:
    output = _refused("demo", "--schema", "llm", "--topic-types", "gpu:a.B")
    assert "--schema: only with --catalog" in output
    assert "--topic-types: only with --catalog" in output


def test_demo_lists_the_problems_of_its_catalog(example: Path) -> None:
    output = _refused(
        "demo", "--catalog", str(example), "--schema", "Llm", "--topic-types", "gpu:acme.Nope"
    )
    assert "schema name 'Llm' is not a lowercase SQL identifier" in output
    assert "topic gpu: message acme.Nope is not in the catalog" in output


def test_demo_refuses_a_typed_topic_named_as_the_envelope_topic(example: Path) -> None:
    output = _refused(
        "demo",
        "--catalog",
        str(example),
        "--topic-types",
        f"{kingest.dev.DEMO_TOPIC}:llmserving.v1.GpuUtilizationSample",
    )
    assert "is the demo's envelope topic" in output


def test_demo_hands_the_loaded_catalog_to_the_demo(
    example: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[dict[str, object]] = []

    def run_demo(**kwargs: object) -> int:
        calls.append(kwargs)
        return 0

    monkeypatch.setattr(kingest.dev, "run_demo", run_demo)
    types = "gpu:llmserving.v1.GpuUtilizationSample"
    result = CliRunner().invoke(
        app, ["demo", "--catalog", str(example), "--topic-types", types, "--count", "5"]
    )
    assert result.exit_code == 0, result.output
    (call,) = calls
    catalog = call["catalog"]
    assert isinstance(catalog, kingest.dev.DemoCatalog)
    assert catalog.catalog.schema == kingest.dev.DEMO_SCHEMA
    assert dict(catalog.topics) == {
        kingest.dev.DEMO_TOPIC: "llmserving.v1.LlmEvent",
        "gpu": "llmserving.v1.GpuUtilizationSample",
    }
    assert call["count"] == 5


@pytest.mark.parametrize(
    ("args", "count"),
    [([], 200_000), (["--catalog", "example"], 20_000)],
    ids=["builtin", "catalog"],
)
def test_demo_counts_default_to_what_each_stream_makes_quickly(
    example: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], count: int
) -> None:
    calls: list[dict[str, object]] = []

    def run_demo(**kwargs: object) -> int:
        calls.append(kwargs)
        return 0

    monkeypatch.setattr(kingest.dev, "run_demo", run_demo)
    args = [str(example) if arg == "example" else arg for arg in args]
    result = CliRunner().invoke(app, ["demo", *args])
    assert result.exit_code == 0, result.output
    assert calls[0]["count"] == count
    assert (calls[0]["catalog"] is None) == (not args)
