"""The example catalog (examples/llm-serving) builds with buf, passes its lint, documents itself.

``buf`` comes from the ``buf-bin`` wheel of the ``test`` extra, so it is always there: in
the virtualenv's ``bin`` next to the interpreter when that is not on ``PATH``.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

from kingest.dev import CatalogSynth, load_descriptor_set_pool

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples/llm-serving"
EVENTS = "llmserving/v1/events.proto"
TOPICS = "llmserving/v1/topics.proto"
# FileDescriptorProto.message_type, DescriptorProto.field, .nested_type, .enum_type,
# EnumDescriptorProto.value: the source-info path components of what carries comments.
MESSAGE_TYPE, FIELD, NESTED_TYPE, ENUM_TYPE, ENUM_VALUE = 4, 2, 3, 5, 2


def _buf() -> str:
    found = shutil.which("buf") or shutil.which("buf", path=str(Path(sys.executable).parent))
    assert found, "buf is not installed: pip install -e '.[test]' (buf-bin)"
    return found


def _run_buf(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_buf(), *arguments], cwd=EXAMPLE, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> descriptor_pb2.FileDescriptorSet:
    output = tmp_path_factory.mktemp("buf") / "catalog.binpb"
    result = _run_buf("build", "-o", str(output))
    assert result.returncode == 0, result.stderr
    return descriptor_pb2.FileDescriptorSet.FromString(output.read_bytes())


def _file(built: descriptor_pb2.FileDescriptorSet, name: str) -> descriptor_pb2.FileDescriptorProto:
    (found,) = [file for file in built.file if file.name == name]
    return found


def _comments(file: descriptor_pb2.FileDescriptorProto) -> dict[tuple[int, ...], str]:
    return {
        tuple(location.path): location.leading_comments.strip()
        for location in file.source_code_info.location
        if location.leading_comments.strip()
    }


def test_buf_lint_passes() -> None:
    result = _run_buf("lint")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_catalog_holds_its_messages_and_every_import(
    built: descriptor_pb2.FileDescriptorSet,
) -> None:
    names = [file.name for file in built.file]
    assert {EVENTS, TOPICS, "kingest/options/v1/options.proto"} <= set(names)
    assert "google/protobuf/struct.proto" in names
    for index, file in enumerate(built.file):  # each file after the files it imports
        assert set(file.dependency) <= set(names[:index]), file.name
    events = {message.name for message in _file(built, EVENTS).message_type}
    assert {"LlmEvent", "PromptCompleted", "GuardrailTriggered", "FeedbackReceived"} <= events
    topics = _file(built, TOPICS)
    assert [m.name for m in topics.message_type] == [
        "GpuUtilizationSample",
        "DatasetVersionCreated",
    ]
    assert not [d for d in topics.dependency if d.startswith("kingest/")]


def test_every_message_field_and_enum_has_a_comment_kept_in_the_catalog(
    built: descriptor_pb2.FileDescriptorSet,
) -> None:
    undocumented: list[str] = []
    for name in (EVENTS, TOPICS):
        file = _file(built, name)
        comments = _comments(file)
        for index, message in enumerate(file.message_type):
            path = (MESSAGE_TYPE, index)
            if path not in comments:
                undocumented.append(message.name)
            undocumented += [
                f"{message.name}.{field.name}"
                for number, field in enumerate(message.field)
                if (*path, FIELD, number) not in comments
            ]
        undocumented += [
            enum.name
            for index, enum in enumerate(file.enum_type)
            if (ENUM_TYPE, index) not in comments
        ]
    assert not undocumented, undocumented
    comments = _comments(_file(built, EVENTS))
    assert comments[(MESSAGE_TYPE, 0)] == "The envelope of every event of the gateway."


def test_buf_output_feeds_the_synthetic_messages(built: descriptor_pb2.FileDescriptorSet) -> None:
    loaded = load_descriptor_set_pool(built.SerializeToString())
    for name in loaded.message_names():
        synth = CatalogSynth(loaded.message_type(name), random.Random(0))
        message = synth.message()
        assert type(message).FromString(message.SerializeToString()) == message
