"""Compiling small catalogs in tests: ``.proto`` text to a FileDescriptorSet, in-process.

The compiler is grpcio-tools' (as for ``python -m kingest.schema.codegen``), with the
repository's ``proto/`` on the import path so a test file can import
``kingest/options/v1/options.proto``.
"""

from __future__ import annotations

import importlib
import importlib.resources
import os
from pathlib import Path
from types import ModuleType

from kingest.schema.codegen import PROTO_SOURCE_DIR


def _protoc() -> ModuleType:
    """grpc_tools.protoc, imported with the switch that keeps it from installing an
    import hook, the environment left as it was found."""
    previous = os.environ.get("GRPC_PYTHON_DISABLE_DYNAMIC_STUBS")
    os.environ["GRPC_PYTHON_DISABLE_DYNAMIC_STUBS"] = "1"
    try:
        return importlib.import_module("grpc_tools.protoc")
    finally:
        if previous is None:
            del os.environ["GRPC_PYTHON_DISABLE_DYNAMIC_STUBS"]
        else:
            os.environ["GRPC_PYTHON_DISABLE_DYNAMIC_STUBS"] = previous


_COMPILED: dict[tuple[str, str], bytes] = {}


def compile_catalog(directory: Path, source: str, name: str = "acme/v1/events.proto") -> bytes:
    """The descriptor set (with imports and comments) of one ``.proto`` file's text
    (compiled once per text and name in a test session)."""
    if (source, name) not in _COMPILED:
        _COMPILED[source, name] = _compile(directory, source, name)
    return _COMPILED[source, name]


def _compile(directory: Path, source: str, name: str) -> bytes:
    root = directory / f"protoc-{len(list(directory.glob('protoc-*')))}"
    path = root / name
    path.parent.mkdir(parents=True)
    path.write_text(source)
    output = root / "catalog.binpb"
    well_known = importlib.resources.files("grpc_tools") / "_proto"
    status = _protoc().main(
        [
            "protoc",
            f"-I{root}",
            f"-I{PROTO_SOURCE_DIR}",
            f"-I{well_known}",
            "--include_imports",
            "--include_source_info",
            f"--descriptor_set_out={output}",
            str(path),
        ]
    )
    assert status == 0, f"protoc failed on {name} (see stderr)"
    return output.read_bytes()


#: A small catalog the catalog tests change one thing at a time (by text replacement): an
#: envelope, one fact table with an enumeration, a state table keyed by order id.
ORDERS_V1 = """
syntax = "proto3";

package acme.v1;

import "google/protobuf/timestamp.proto";
import "kingest/options/v1/options.proto";

option (kingest.options.v1.catalog) = {
  state_tables: {
    name: "orders"
    comment: "The latest placement of each order."
  }
};

message Event {
  option (kingest.options.v1.table).envelope = true;

  string event_id = 1;
  string correlation_id = 2;
  google.protobuf.Timestamp occurred_at = 3 [(kingest.options.v1.column).required = true];
  string source = 4;

  oneof payload {
    OrderPlaced order_placed = 10;
  }
}

enum Channel {
  CHANNEL_UNSPECIFIED = 0;
  CHANNEL_WEB = 1;
  CHANNEL_STORE = 2;
}

// An order was placed.
message OrderPlaced {
  option (kingest.options.v1.table) = {
    updates: {
      table: "orders"
      key: ["order_id"]
      at_column: "placed_at"
      event_id_column: "event_id"
    }
  };

  // The order.
  string order_id = 1 [(kingest.options.v1.column).required = true];
  // The shop that took it.
  string shop = 2 [(kingest.options.v1.column).required = true];
  // Amount in cents.
  int64 amount_cents = 3;
  // Where the order came from.
  Channel channel = 4;
}
"""
