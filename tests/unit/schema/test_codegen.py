"""The committed generated code matches what the pinned compiler makes of the .proto files."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from kingest.schema import codegen

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("grpc_tools") is None,
    reason="grpcio-tools is not installed (pip install -e '.[test]'); cannot check freshness",
)

FIX = "the generated code is stale: run `python -m kingest.schema.codegen` and commit the result"


def test_committed_generated_code_is_fresh(tmp_path: Path) -> None:
    written = codegen.generate(tmp_path)
    assert written, "no .proto sources were compiled"
    for generated in written:
        relative = generated.relative_to(tmp_path)
        committed = codegen.SOURCE_TREE_ROOT / relative
        assert committed.exists(), f"{relative} is not committed; {FIX}"
        assert generated.read_bytes() == committed.read_bytes(), f"{relative} differs; {FIX}"


def test_every_proto_source_yields_a_module_and_its_stub(tmp_path: Path) -> None:
    written = {p.relative_to(tmp_path).as_posix() for p in codegen.generate(tmp_path)}
    assert {"kingest/schema/v1/events_pb2.py", "kingest/schema/v1/events_pb2.pyi"} <= written
    assert "kingest/schema/v1/catalog.binpb" in written
    assert len(written) == 2 * len(codegen.proto_sources()) + 1


def test_compiling_installs_no_import_hook(tmp_path: Path) -> None:
    # grpc_tools.protoc, imported normally, adds a meta-path finder and its .proto dir.
    codegen.generate(tmp_path)
    assert not [f for f in sys.meta_path if type(f).__module__.startswith("grpc_tools")]
    assert not [p for p in sys.path if "grpc_tools" in p]


def test_a_broken_proto_is_reported(tmp_path: Path) -> None:
    source_dir = tmp_path / "proto"
    source_dir.mkdir()
    (source_dir / "broken.proto").write_text('syntax = "proto3";\nmessage Broken { int32 = 1; }\n')
    with pytest.raises(codegen.CodegenError, match="status"):
        codegen.generate(tmp_path / "out", proto_dir=source_dir)
