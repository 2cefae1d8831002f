"""Regenerate the committed Python code for the ``.proto`` sources.

The generated ``*_pb2.py`` / ``*_pb2.pyi`` modules are committed so that an installed
kingest needs only the ``protobuf`` runtime, not a compiler. The price is that they can
go stale after a ``.proto`` edit; ``tests/unit/schema/test_codegen.py`` regenerates them into a
temporary directory and fails on any byte difference. Developers fix that with::

    python -m kingest.schema.codegen

The compiler is the one bundled with ``grpcio-tools`` (pinned in the ``test`` extra), run
in-process, so the output is byte-for-byte reproducible on every machine that has the
pinned version: no system ``protoc`` with its own version takes part.
"""

from __future__ import annotations

import importlib
import importlib.resources
import os
import sys
from pathlib import Path
from types import ModuleType

#: Root of the ``.proto`` sources in a source checkout; generated modules are written
#: under the matching package path of the output root (``proto/a/b.proto`` ->
#: ``<output_root>/a/b_pb2.py``).
PROTO_SOURCE_DIR = Path(__file__).resolve().parents[2] / "proto"

#: The built-in catalog: every source compiled to one ``FileDescriptorSet`` with its
#: imports and source info (comments), which :mod:`kingest.catalog` reads at start-up.
BUILTIN_CATALOG = Path("kingest/schema/v1/catalog.binpb")

#: Where ``python -m kingest.schema.codegen`` writes: the source tree root, so that the
#: committed modules are replaced in place.
SOURCE_TREE_ROOT = Path(__file__).resolve().parents[2]

_DYNAMIC_STUBS_SWITCH = "GRPC_PYTHON_DISABLE_DYNAMIC_STUBS"


class CodegenError(RuntimeError):
    """The compiler rejected a ``.proto`` file (its diagnostics went to stderr)."""


def _import_protoc() -> ModuleType:
    """Import ``grpc_tools.protoc`` without its import-time side effect.

    Importing that module normally appends an import hook to ``sys.meta_path`` and the
    bundled ``.proto`` directory to ``sys.path`` (so that ``import x_pb2`` compiles
    ``x.proto`` on the fly). kingest never wants that, and a test process that merely
    checks freshness should not have its import system changed, so the switch that
    disables the hook is set for the duration of the import.
    """
    previous = os.environ.get(_DYNAMIC_STUBS_SWITCH)
    os.environ[_DYNAMIC_STUBS_SWITCH] = "1"
    try:
        return importlib.import_module("grpc_tools.protoc")
    finally:
        if previous is None:
            del os.environ[_DYNAMIC_STUBS_SWITCH]
        else:
            os.environ[_DYNAMIC_STUBS_SWITCH] = previous


def proto_sources(proto_dir: Path = PROTO_SOURCE_DIR) -> list[Path]:
    """All ``.proto`` files under ``proto_dir``, sorted for a stable compile order."""
    return sorted(proto_dir.rglob("*.proto"))


def generate(output_root: Path, *, proto_dir: Path = PROTO_SOURCE_DIR) -> list[Path]:
    """Compile every ``.proto`` under ``proto_dir`` into ``output_root``.

    Returns the written ``*_pb2.py`` and ``*_pb2.pyi`` paths, then the descriptor set
    (:data:`BUILTIN_CATALOG` under ``output_root``). Raises ``CodegenError``
    when the compiler fails and ``ModuleNotFoundError`` when ``grpcio-tools`` is not
    installed.
    """
    protoc = _import_protoc()
    sources = proto_sources(proto_dir)
    if not sources:
        raise CodegenError(f"no .proto files under {proto_dir}")
    well_known_types = importlib.resources.files("grpc_tools") / "_proto"
    descriptor_set = output_root / BUILTIN_CATALOG
    descriptor_set.parent.mkdir(parents=True, exist_ok=True)
    arguments = [
        "protoc",  # argv[0]; ignored by the compiler
        f"-I{proto_dir}",
        f"-I{well_known_types}",
        f"--python_out={output_root}",
        f"--pyi_out={output_root}",
        f"--descriptor_set_out={descriptor_set}",
        "--include_imports",
        "--include_source_info",
        *(str(source) for source in sources),
    ]
    status = protoc.main(arguments)
    if status != 0:
        raise CodegenError(f"protoc exited with status {status} (diagnostics on stderr)")
    written: list[Path] = []
    for source in sources:
        module_base = source.relative_to(proto_dir).with_suffix("")
        stem = output_root / module_base.parent / f"{module_base.name}_pb2"
        written += [stem.with_suffix(".py"), stem.with_suffix(".pyi")]
    return [*written, descriptor_set]


def compile_descriptor_set(proto_dir: Path, output: Path) -> bytes:
    """Compile every ``.proto`` under ``proto_dir`` into one descriptor set (a catalog).

    Imports resolve against ``proto_dir``, the kingest options (this checkout's
    ``proto/``) and the well-known types; the set includes its imports and comments, as
    ``buf build`` makes it. Returns the bytes written to ``output``.
    """
    protoc = _import_protoc()
    sources = proto_sources(proto_dir)
    if not sources:
        raise CodegenError(f"no .proto files under {proto_dir}")
    well_known_types = importlib.resources.files("grpc_tools") / "_proto"
    status = protoc.main(
        [
            "protoc",
            f"-I{proto_dir}",
            f"-I{PROTO_SOURCE_DIR}",
            f"-I{well_known_types}",
            f"--descriptor_set_out={output}",
            "--include_imports",
            "--include_source_info",
            *(str(source) for source in sources),
        ]
    )
    if status != 0:
        raise CodegenError(f"protoc exited with status {status} (diagnostics on stderr)")
    return output.read_bytes()


def main() -> int:
    """Regenerate the committed modules in place (``python -m kingest.schema.codegen``)."""
    try:
        written = generate(SOURCE_TREE_ROOT)
    except ModuleNotFoundError as exc:
        if exc.name is None or not exc.name.startswith("grpc_tools"):
            raise
        print("grpcio-tools is not installed: pip install -e '.[test]'", file=sys.stderr)
        return 2
    except CodegenError as exc:
        print(exc, file=sys.stderr)
        return 1
    for path in written:
        print(path.relative_to(SOURCE_TREE_ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
