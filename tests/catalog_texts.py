"""Catalogs as ``.proto`` text for tests, compiled once per text in a test session.

The compiler is :func:`tests.catalog_support.compile_catalog` (grpcio-tools' protoc,
with the repository's ``proto/`` on the import path for the kingest options).
"""

from __future__ import annotations

from pathlib import Path

from tests.catalog_support import compile_catalog as compile_files

_COMPILED: dict[tuple[str, str], bytes] = {}


def compile_catalog(directory: Path, source: str, name: str = "acme/v1/events.proto") -> bytes:
    """The descriptor set (with imports and comments) of one ``.proto`` file's text."""
    if (source, name) not in _COMPILED:
        root = directory / f"catalog-{len(_COMPILED)}"
        _COMPILED[source, name] = compile_files(root, {name: source})
    return _COMPILED[source, name]


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
