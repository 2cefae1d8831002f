"""Compile a catalog from ``.proto`` text in a test, as ``buf build`` would."""

from __future__ import annotations

from pathlib import Path

from kingest.schema import codegen

OPTIONS_IMPORT = 'import "kingest/options/v1/options.proto";'


def compile_catalog(directory: Path, files: dict[str, str]) -> bytes:
    """Write ``files`` (relative path -> source) under ``directory`` and compile them."""
    source_dir = directory / "proto"
    for name, text in files.items():
        path = source_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return codegen.compile_descriptor_set(source_dir, directory / "catalog.binpb")


EXAMPLE_PROTO = Path(__file__).resolve().parents[1] / "examples/llm-serving/proto"


def compile_example_catalog(directory: Path) -> Path:
    """The example catalog (``examples/llm-serving``) compiled under ``directory``, as
    ``buf build`` makes it; returns the descriptor set's path."""
    output = directory / "llm-serving.binpb"
    codegen.compile_descriptor_set(EXAMPLE_PROTO, output)
    return output
